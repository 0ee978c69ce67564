//! What the commands print as text: the forest, a model's relatives, score tables, audit findings, crawl and
//! scan summaries, the runs table. JSON shapes live in `indexer::export`, shared with the export formats.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
};

use audit::{Finding, Severity};
use indexer::crawl::CrawlStats;
use indexer::human_bytes;
use lineage::{Edge, eval::Score};

/// The forest as an indented tree: every model with no parent starts a tree; a merge child appears under each
/// of its parents. Models in no edge are listed together at the end.
pub fn forest(ids: &[String], edges: &[Edge]) -> String {
    let mut children: BTreeMap<&str, Vec<&Edge>> = BTreeMap::new();
    let mut has_parent = BTreeSet::new();
    let mut in_edge = BTreeSet::new();
    for e in edges {
        children.entry(e.parent.as_str()).or_default().push(e);
        has_parent.insert(e.child.as_str());
        in_edge.insert(e.parent.as_str());
        in_edge.insert(e.child.as_str());
    }
    for list in children.values_mut() {
        list.sort_by(|a, b| a.child.cmp(&b.child));
    }
    let mut all: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    all.extend(in_edge.iter().copied());
    let mut out = String::new();
    let roots: Vec<&str> = all.iter().copied().filter(|id| in_edge.contains(id) && !has_parent.contains(id)).collect();
    for root in &roots {
        let _ = writeln!(out, "{root}");
        let mut path = vec![*root];
        draw(&children, root, "", &mut path, &mut out);
    }
    let alone: Vec<&str> = all.iter().copied().filter(|id| !in_edge.contains(id)).collect();
    if !alone.is_empty() {
        let _ = writeln!(out, "no relative among the models seen:");
        for id in alone {
            let _ = writeln!(out, "  {id}");
        }
    }
    let _ = writeln!(out, "{} models, {} edges, {} trees", all.len(), edges.len(), roots.len());
    out
}

fn draw<'a>(
    children: &BTreeMap<&'a str, Vec<&'a Edge>>,
    node: &'a str,
    indent: &str,
    path: &mut Vec<&'a str>,
    out: &mut String,
) {
    let Some(list) = children.get(node) else { return };
    for (i, e) in list.iter().enumerate() {
        let last = i + 1 == list.len();
        let (branch, next) = if last { ("└─", "   ") } else { ("├─", "│  ") };
        let _ = writeln!(
            out,
            "{indent}{branch} {} [{} {:.2} {}]",
            e.child,
            e.relation.as_str(),
            e.confidence,
            e.source.as_str()
        );
        // Stored data could in principle hold a cycle; never recurse into a node already on the path.
        if !path.contains(&e.child.as_str()) {
            path.push(&e.child);
            draw(children, &e.child, &format!("{indent}{next}"), path, out);
            path.pop();
        }
    }
}

/// The edges above (ancestors) and below (descendants) a model, nearest first.
pub fn relatives(model: &str, edges: &[Edge]) -> (Vec<Edge>, Vec<Edge>) {
    let walk = |up: bool| {
        let mut found = Vec::new();
        let mut seen = BTreeSet::from([model.to_owned()]);
        let mut frontier = vec![model.to_owned()];
        while let Some(node) = frontier.pop() {
            for e in edges {
                let (from, to) = if up { (&e.child, &e.parent) } else { (&e.parent, &e.child) };
                if *from == node {
                    found.push(e.clone());
                    if seen.insert(to.clone()) {
                        frontier.insert(0, to.clone());
                    }
                }
            }
        }
        found
    };
    (walk(true), walk(false))
}

pub fn score_table(rows: &[(String, Score)]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<18} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7}",
        "method", "edge acc", "typed P", "typed R", "typed F1", "ARI", "edges"
    );
    for (label, s) in rows {
        let _ = writeln!(
            out,
            "{:<18} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>7.3} {:>3}/{:<3}",
            label, s.edge_accuracy, s.precision, s.recall, s.f1, s.ari, s.counts.recovered_edges, s.counts.truth_edges
        );
    }
    for (label, s) in rows {
        let _ = writeln!(out, "\nper relation, {label}:");
        let _ =
            writeln!(out, "  {:<10} {:>4} {:>4} {:>4} {:>7} {:>7} {:>7}", "relation", "tp", "fp", "fn", "P", "R", "F1");
        for r in &s.per_relation {
            let _ = writeln!(
                out,
                "  {:<10} {:>4} {:>4} {:>4} {:>7.3} {:>7.3} {:>7.3}",
                r.relation, r.tp, r.fp, r.fn_, r.precision, r.recall, r.f1
            );
        }
    }
    out
}

/// Audit precision / recall per method: license conflicts and wrong `base_model` declarations, per model.
pub fn audit_score_table(rows: &[(String, audit::AuditScore)]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\naudit (per model):");
    let _ =
        writeln!(out, "  {:<18} {:<18} {:>4} {:>4} {:>4} {:>7} {:>7}", "method", "finding", "tp", "fp", "fn", "P", "R");
    for (label, a) in rows {
        for (name, pr) in [("license conflict", &a.license), ("wrong base_model", &a.declared)] {
            let _ = writeln!(
                out,
                "  {:<18} {:<18} {:>4} {:>4} {:>4} {:>7.3} {:>7.3}",
                label, name, pr.tp, pr.fp, pr.fn_, pr.precision, pr.recall
            );
        }
    }
    out
}

/// Findings as text, grouped by severity, most severe first, with a closing count.
pub fn findings(findings: &[Finding]) -> String {
    let mut out = String::new();
    for severity in [Severity::Error, Severity::Warning, Severity::Info] {
        let group: Vec<&Finding> = findings.iter().filter(|f| f.severity == severity).collect();
        if group.is_empty() {
            continue;
        }
        let _ = writeln!(out, "{} ({})", severity.as_str(), group.len());
        for f in group {
            let _ = writeln!(out, "  {}  {}", f.kind.as_str(), f.edge_label());
            let mut evidence = Vec::new();
            if let Some(r) = f.relation {
                evidence.push(r.as_str().to_owned());
            }
            if let Some(s) = f.source {
                evidence.push(s.as_str().to_owned());
            }
            if let Some(c) = f.confidence {
                evidence.push(format!("confidence {c:.2}"));
            }
            if let Some(p) = &f.parent_license {
                evidence.push(format!("parent {}", p.describe()));
            }
            evidence.push(format!("child {}", f.child_license.describe()));
            if !f.declared_bases.is_empty() {
                evidence.push(format!("declared {}", f.declared_bases.join(", ")));
            }
            let _ = writeln!(out, "    {}", f.message);
            let _ = writeln!(out, "    [{}]", evidence.join("; "));
        }
    }
    let count = |s| findings.iter().filter(|f| f.severity == s).count();
    let _ = writeln!(
        out,
        "{} findings: {} error, {} warning, {} info",
        findings.len(),
        count(Severity::Error),
        count(Severity::Warning),
        count(Severity::Info)
    );
    out
}

/// What a crawl did, in three lines.
pub fn crawl_summary(stats: &CrawlStats) -> String {
    let (r, i) = (&stats.requests, &stats.indexed);
    format!(
        "models: {} listed, {} new, {} changed, {} unchanged, {} failed\n\
         bytes: {} fetched of {} in the checkpoints signed ({:.2}%)\n\
         requests: {} api, {} resolvers, {} cdn; {} retries, {} rate-limited, {:.1} s waiting for budget",
        stats.listed,
        i.new,
        i.changed,
        i.unchanged,
        i.failed,
        human_bytes(i.bytes_fetched),
        human_bytes(i.checkpoint_bytes),
        if i.checkpoint_bytes == 0 { 0.0 } else { 100.0 * i.bytes_fetched as f64 / i.checkpoint_bytes as f64 },
        r.api_requests,
        r.resolver_requests,
        r.cdn_requests,
        r.retries,
        r.rate_limited,
        r.waited.as_secs_f64(),
    )
}

/// The runs table, oldest first.
pub fn runs_table(runs: &[store::RunRecord]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:>5}  {:<7}  {:<11}  {:<24}  {:<24}", "id", "kind", "status", "started", "finished");
    for r in runs {
        let _ = writeln!(
            out,
            "{:>5}  {:<7}  {:<11}  {:<24}  {:<24}",
            r.id.0,
            r.kind.as_str(),
            r.status.as_str(),
            r.started_at,
            r.finished_at.as_deref().unwrap_or("-")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use lineage::{EdgeSource, Relation};

    use super::*;

    fn edge(p: &str, c: &str, relation: Relation) -> Edge {
        Edge { parent: p.into(), child: c.into(), relation, confidence: 0.5, source: EdgeSource::Weights }
    }

    #[test]
    fn forest_draws_trees_merges_and_loners() {
        let ids: Vec<String> = ["r", "a", "b", "m", "x"].iter().map(|s| s.to_string()).collect();
        let edges = vec![
            edge("r", "a", Relation::Finetune),
            edge("r", "b", Relation::Lora),
            edge("a", "m", Relation::Merge),
            edge("b", "m", Relation::Merge),
        ];
        expect_test::expect![[r#"
            r
            ├─ a [finetune 0.50 weights]
            │  └─ m [merge 0.50 weights]
            └─ b [lora 0.50 weights]
               └─ m [merge 0.50 weights]
            no relative among the models seen:
              x
            5 models, 4 edges, 1 trees
        "#]]
        .assert_eq(&forest(&ids, &edges));
        let (up, down) = relatives("a", &edges);
        assert_eq!(up.len(), 1);
        assert_eq!(down.len(), 1);
        let (up, _) = relatives("m", &edges);
        assert_eq!(up.len(), 4, "both parents and their parents");
    }

    #[test]
    fn forest_survives_a_cycle() {
        let ids = vec!["a".to_string(), "b".to_string()];
        let edges = vec![edge("a", "b", Relation::Finetune), edge("b", "a", Relation::Finetune)];
        let text = forest(&ids, &edges);
        assert!(text.contains("2 models, 2 edges"), "{text}");
    }

    #[test]
    fn findings_are_grouped_by_severity_with_a_count() {
        let models: Vec<audit::Model> = [("nc/base", "cc-by-nc-4.0"), ("a/ft", "apache-2.0")]
            .iter()
            .map(|(id, license)| audit::Model {
                id: (*id).into(),
                license: Some((*license).into()),
                signed: true,
                ..audit::Model::default()
            })
            .collect();
        let found = audit::audit(&models, &[edge("nc/base", "a/ft", Relation::Finetune)]);
        let text = findings(&found);
        assert!(text.starts_with("error (1)\n  license-noncommercial-dropped  nc/base → a/ft\n"), "{text}");
        assert!(text.ends_with("2 findings: 1 error, 0 warning, 1 info\n"), "{text}");
    }
}
