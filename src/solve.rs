//! Runs lineage recovery over what the store holds and converts between the store's records and the lineage
//! crate's types (the one place where that mapping lives).

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
    let mut priors = std::collections::HashMap::new();
    for m in records {
        let prior = Prior {
            declared_bases: m.record.declared_base_models.clone(),
            declared_relation: m.record.base_model_relation.as_deref().and_then(Relation::parse),
            adapter_base: m.record.adapter_base.clone(),
            created_at: m.record.created_at.as_deref().and_then(parse_time),
            quantized: m.record.quantization.is_some(),
        };
        priors.insert(m.record.id.clone(), prior);
    }
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
