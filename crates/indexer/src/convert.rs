//! The one place where the store's records become the lineage and audit crates' types and back: card priors,
//! edges (including `store::EdgeSource`, which mirrors `lineage::EdgeSource` so that `store` does not depend on
//! `lineage`), audit models and method names.

use lineage::{Edge, EdgeSource, Method, Prior, Relation};
use store::{EdgeRecord, ModelRecord, StoredModel};

/// The stored and configured name of a lineage method.
pub fn method_name(method: Method) -> &'static str {
    match method {
        Method::Default => "default",
        Method::Mother => "mother",
    }
}

/// An edge as the store keeps it.
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

/// The priors a model's stored card and configs give.
pub fn prior(r: &ModelRecord) -> Prior {
    Prior {
        declared_bases: r.declared_base_models.clone(),
        declared_relation: r.base_model_relation.as_deref().and_then(Relation::parse),
        adapter_base: r.adapter_base.clone(),
        created_at: r.created_at.as_deref().and_then(parse_time),
        quantized: r.quantization.is_some(),
    }
}

fn parse_time(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp())
}

/// What the audit knows of a stored model: its card, and whether its weights were signed.
pub fn audit_model(m: &StoredModel) -> audit::Model {
    audit::Model {
        id: m.record.id.clone(),
        license: m.record.license.clone(),
        declared_bases: m.record.declared_base_models.clone(),
        declared_relation: m.record.base_model_relation.clone(),
        signed: m.has_signature && m.status != store::ModelStatus::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_survive_the_store_and_unreadable_rows_are_skipped() {
        let edges: Vec<Edge> = [EdgeSource::Weights, EdgeSource::Metadata, EdgeSource::Both]
            .into_iter()
            .zip(Relation::ALL)
            .map(|(source, relation)| Edge { parent: "p".into(), child: "c".into(), relation, confidence: 0.5, source })
            .collect();
        let mut records: Vec<EdgeRecord> = edges.iter().map(to_record).collect();
        assert_eq!(from_records(&records), edges);
        records[0].relation = "cousin".into();
        assert_eq!(from_records(&records).len(), edges.len() - 1);
    }
}
