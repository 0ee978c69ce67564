//! Lineage sync: keeping the stored edges equal to a solve of the stored signatures, in batch or incrementally.
//!
//! The stored lineage carries a checkpoint, [`SOLVED_INPUT`]: a fingerprint of the models (id, revision, status),
//! scheme and method it was solved from. [`solve_if_needed`] (scan, crawl) solves in batch only when the
//! fingerprint changed, so a command killed between indexing and solving still solves next time, and a command
//! that changed nothing does no work. [`Live`] (the daemon) keeps a `lineage::Index` in memory across runs and
//! re-solves only the families its new, changed and removed models touched; it writes the same checkpoint, and its
//! edges equal a batch [`recover`] of the same store (the lineage crate's incremental == batch property).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use anyhow::Context;
use lineage::{Method, ModelInput, Prior, Recovery};
use signature::{ModelSignature, Scheme};
use store::{EdgeRecord, Store};

use crate::convert::{from_records, method_name, prior, to_record};

/// Checkpoint key: the fingerprint of the models, scheme and method the current edges were solved from.
pub const SOLVED_INPUT: &str = "lineage.solved_input";

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

/// The stored lineage as a [`Recovery`]: the current edges, and the families they imply over every stored model
/// (singletons included), so it can be scored like a fresh solve.
///
/// # Errors
/// When the store cannot be read.
pub fn stored(store: &Store) -> anyhow::Result<Recovery> {
    let ids: Vec<String> = store.models().context("cannot load models")?.into_iter().map(|m| m.record.id).collect();
    let edges = from_records(&store.current_edges().context("cannot read edges")?);
    Ok(Recovery { families: families(&ids, &edges), edges })
}

/// Connected components of `edges` over `ids` and the edges' endpoints; members sorted, families by first member.
fn families(ids: &[String], edges: &[lineage::Edge]) -> Vec<Vec<String>> {
    let mut names: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    names.extend(edges.iter().flat_map(|e| [e.parent.as_str(), e.child.as_str()]));
    let number: BTreeMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let mut sets = lineage::union_find::UnionFind::new(names.len());
    for e in edges {
        if let (Some(&p), Some(&c)) = (number.get(e.parent.as_str()), number.get(e.child.as_str())) {
            sets.union(p, c);
        }
    }
    let mut groups: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for (i, name) in names.iter().enumerate() {
        groups.entry(sets.find(i)).or_default().push((*name).to_owned());
    }
    let mut families: Vec<Vec<String>> = groups.into_values().collect();
    families.sort();
    families
}

/// Re-solves lineage in batch unless the current edges were solved from exactly the indexed models, scheme and
/// method there are now. Returns the number of edges when it solved.
///
/// # Errors
/// When the store cannot be read or written.
pub fn solve_if_needed(
    store: &mut Store,
    run: store::RunId,
    scheme: &Scheme,
    method: Method,
) -> anyhow::Result<Option<usize>> {
    let models = store.models().context("cannot list models")?;
    let input = fingerprint_of(&models, scheme, method);
    if store.get_checkpoint(SOLVED_INPUT).context("cannot read a checkpoint")?.as_deref() == Some(input.as_str()) {
        return Ok(None);
    }
    let recovery = recover(store, scheme, method)?;
    let edges: Vec<EdgeRecord> = recovery.edges.iter().map(to_record).collect();
    store.replace_edges(run, method_name(method), &edges).context("cannot store edges")?;
    store.set_checkpoint(SOLVED_INPUT, &input).context("cannot write a checkpoint")?;
    tracing::info!(edges = edges.len(), method = method_name(method), "lineage solved");
    Ok(Some(edges.len()))
}

/// The fingerprint [`SOLVED_INPUT`] holds, of models already read.
fn fingerprint_of(models: &[store::StoredModel], scheme: &Scheme, method: Method) -> String {
    let mut models: Vec<(&str, &str, &str)> =
        models.iter().map(|m| (m.record.id.as_str(), m.record.revision.as_str(), m.status.as_str())).collect();
    models.sort_unstable();
    let mut hasher = blake3::Hasher::new();
    hasher.update(scheme.id().as_bytes());
    hasher.update(method_name(method).as_bytes());
    for (id, revision, status) in &models {
        for part in [id, revision, status] {
            hasher.update(part.as_bytes());
            hasher.update(&[0]);
        }
    }
    hasher.finalize().to_hex().to_string()
}

/// Lineage kept current across runs: an in-memory [`lineage::Index`] synchronised with the store. Each
/// [`Live::sync`] adds the models that are new or changed since the last one, removes the ones gone, and
/// re-solves only the families those touched. Its edges equal a batch [`recover`] of the same store (the
/// lineage crate's incremental == batch property).
#[derive(Debug)]
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
        let current = fingerprint_of(&models, &self.scheme, self.method);
        let stored = store.get_checkpoint(SOLVED_INPUT).context("cannot read a checkpoint")?;
        let edges = if added == 0 && gone.is_empty() && stored.as_deref() == Some(current.as_str()) {
            None
        } else {
            let edges: Vec<EdgeRecord> = self.index.edges().iter().map(to_record).collect();
            store.replace_edges(run, method_name(self.method), &edges).context("cannot store edges")?;
            store.set_checkpoint(SOLVED_INPUT, &current).context("cannot write a checkpoint")?;
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

#[cfg(test)]
mod tests {
    use lineage::{Edge, EdgeSource, Relation};

    use super::*;

    #[test]
    fn families_of_stored_edges_include_singletons_and_unknown_endpoints() {
        let edge = |p: &str, c: &str| Edge {
            parent: p.into(),
            child: c.into(),
            relation: Relation::Finetune,
            confidence: 0.5,
            source: EdgeSource::Weights,
        };
        let ids: Vec<String> = ["d", "a", "b", "x"].iter().map(|s| s.to_string()).collect();
        let got = families(&ids, &[edge("b", "d"), edge("a", "c"), edge("c", "b")]);
        assert_eq!(got, [vec!["a", "b", "c", "d"], vec!["x"]]);
    }
}
