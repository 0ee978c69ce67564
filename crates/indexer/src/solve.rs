//! Runs lineage recovery over what the store holds and converts between the store's records and the lineage
//! crate's types (the one place where that mapping lives).

use std::collections::HashMap;

use anyhow::Context;
use lineage::{Edge, EdgeSource, Method, ModelInput, Prior, Recovery, Relation};
use signature::{ModelSignature, Scheme};
use store::{EdgeRecord, Store};

/// Recovers lineage for every indexed model signed with `scheme`.
///
/// # Errors
/// When the store cannot be read.
pub fn recover(store: &Store, scheme: &Scheme, method: Method) -> anyhow::Result<Recovery> {
    let signatures: Vec<(String, ModelSignature)> =
        store.signatures_for_scheme(&scheme.id()).context("cannot load signatures")?;
    let records = store.models().context("cannot load models")?;
    let mut priors: HashMap<String, Prior> =
        records.into_iter().map(|m| (m.record.id.clone(), prior(&m.record))).collect();
    let inputs: Vec<ModelInput<'_>> = signatures
        .iter()
        .map(|(id, sig)| ModelInput { id, signature: sig, prior: priors.remove(id).unwrap_or_default() })
        .collect();
    let options = lineage::Options { method, ..lineage::Options::default() };
    Ok(lineage::recover(&inputs, &options))
}

/// Recovers and stores the edges as the current lineage.
///
/// # Errors
/// When the store cannot be read or written.
pub fn recover_and_store(
    store: &mut Store,
    run: store::RunId,
    scheme: &Scheme,
    method: Method,
) -> anyhow::Result<usize> {
    let recovery = recover(store, scheme, method)?;
    let edges: Vec<EdgeRecord> = recovery.edges.iter().map(to_record).collect();
    store.replace_edges(run, method_name(method), &edges).context("cannot store edges")?;
    Ok(edges.len())
}

pub fn method_name(method: Method) -> &'static str {
    match method {
        Method::Default => "default",
        Method::Mother => "mother",
    }
}

pub fn to_record(e: &Edge) -> EdgeRecord {
    EdgeRecord {
        parent: e.parent.clone(),
        child: e.child.clone(),
        relation: e.relation.as_str().to_owned(),
        confidence: e.confidence,
        source: match e.source {
            EdgeSource::Weights => store::EdgeSource::Weights,
            EdgeSource::Metadata => store::EdgeSource::Metadata,
            EdgeSource::Both => store::EdgeSource::Both,
        },
    }
}

/// Converts stored edges back; rows the current code cannot read are skipped with a warning.
pub fn from_records(records: &[EdgeRecord]) -> Vec<Edge> {
    records
        .iter()
        .filter_map(|r| {
            let relation = Relation::parse(&r.relation);
            let source = EdgeSource::parse(r.source.as_str());
            if relation.is_none() || source.is_none() {
                tracing::warn!(parent = %r.parent, child = %r.child, "unreadable stored edge skipped");
            }
            Some(Edge {
                parent: r.parent.clone(),
                child: r.child.clone(),
                relation: relation?,
                confidence: r.confidence,
                source: source?,
            })
        })
        .collect()
}

fn parse_time(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp())
}

/// Lineage kept current across runs: an in-memory [`lineage::Index`] synchronised with the store. Each
/// [`Live::sync`] adds the models that are new or changed since the last one, removes the ones gone, and
/// re-solves only the families those touched. Its edges equal a batch [`recover`] of the same store (the
/// lineage crate's incremental == batch property).
pub struct Live {
    index: lineage::Index<'static>,
    method: Method,
    scheme: Scheme,
    scheme_id: String,
    /// What each held model was added with: its revision and prior. A change of either re-adds it.
    held: HashMap<String, String>,
}

/// What one [`Live::sync`] did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Synced {
    /// Families solved again: only those the added and removed models touched.
    pub families_resolved: usize,
    /// Families in the whole index.
    pub families: usize,
    /// `Some(edges written)` when the stored lineage was replaced, `None` when it was already current.
    pub edges: Option<usize>,
}

impl Live {
    pub fn new(scheme: &Scheme, method: Method) -> Live {
        let options = lineage::Options { method, ..lineage::Options::default() };
        Live {
            index: lineage::Index::new(options),
            method,
            scheme: *scheme,
            scheme_id: scheme.id(),
            held: HashMap::new(),
        }
    }

    /// Brings the index up to date with `store` and, when anything changed (or the stored lineage is not the
    /// index's), writes the current edges as the lineage of `run`.
    ///
    /// # Errors
    /// When the store cannot be read or written.
    pub fn sync(&mut self, store: &mut Store, run: store::RunId) -> anyhow::Result<Synced> {
        let suffix = format!("@{}", self.scheme_id);
        let mut wanted: HashMap<String, (String, Prior)> = HashMap::new();
        let models = store.models().context("cannot load models")?;
        for m in &models {
            // What a batch solve reads: every model with a signature under this scheme (a vanished parent still
            // explains its children).
            if !m.has_signature || !m.record.revision.ends_with(&suffix) {
                continue;
            }
            let prior = prior(&m.record);
            let key = format!("{}\u{0}{prior:?}", m.record.revision);
            wanted.insert(m.record.id.clone(), (key, prior));
        }
        let gone: Vec<String> = self.held.keys().filter(|id| !wanted.contains_key(*id)).cloned().collect();
        for id in &gone {
            self.index.remove(id);
            self.held.remove(id);
        }
        let mut fresh: Vec<(String, String, Prior)> = wanted
            .into_iter()
            .filter(|(id, (key, _))| self.held.get(id) != Some(key))
            .map(|(id, (key, prior))| (id, key, prior))
            .collect();
        fresh.sort_by(|a, b| a.0.cmp(&b.0));
        let mut inputs = Vec::with_capacity(fresh.len());
        for (id, key, prior) in fresh {
            let Some(signature) = store.signature(&id).with_context(|| format!("cannot load {id}'s signature"))? else {
                continue;
            };
            if signature.scheme.id() != self.scheme_id {
                continue;
            }
            self.held.insert(id.clone(), key);
            inputs.push(lineage::OwnedModelInput { id, signature, prior });
        }
        let added = inputs.len();
        if added > 0 {
            self.index.add(inputs);
        }
        let update = self.index.solve_touched();
        let families_resolved = update.families.len();
        let families = self.index.families().len();
        let current = crate::commands::fingerprint_of(&models, &self.scheme, self.method);
        let stored = store.get_checkpoint(crate::commands::SOLVED_INPUT).context("cannot read a checkpoint")?;
        let edges = if added == 0 && gone.is_empty() && stored.as_deref() == Some(current.as_str()) {
            None
        } else {
            let edges: Vec<EdgeRecord> = self.index.edges().iter().map(to_record).collect();
            store.replace_edges(run, method_name(self.method), &edges).context("cannot store edges")?;
            store.set_checkpoint(crate::commands::SOLVED_INPUT, &current).context("cannot write a checkpoint")?;
            Some(edges.len())
        };
        tracing::info!(
            added,
            removed = gone.len(),
            families_resolved,
            families,
            edges = ?edges,
            "lineage updated incrementally"
        );
        Ok(Synced { families_resolved, families, edges })
    }
}

/// The priors a model's stored card and configs give.
fn prior(r: &store::ModelRecord) -> Prior {
    Prior {
        declared_bases: r.declared_base_models.clone(),
        declared_relation: r.base_model_relation.as_deref().and_then(Relation::parse),
        adapter_base: r.adapter_base.clone(),
        created_at: r.created_at.as_deref().and_then(parse_time),
        quantized: r.quantization.is_some(),
    }
}
