//! What the commands print: the forest as text, edges and scores as JSON, the score table, and atomic writes.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    io::Write as _,
    path::Path,
};

use anyhow::Context;
use lineage::{Edge, eval::Score};

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

pub fn edges_json(edges: &[Edge]) -> serde_json::Value {
    let list: Vec<serde_json::Value> = edges
        .iter()
        .map(|e| {
            serde_json::json!({
                "parent": e.parent, "child": e.child, "relation": e.relation.as_str(),
                "confidence": (e.confidence * 1e4).round() / 1e4, "source": e.source.as_str(),
            })
        })
        .collect();
    serde_json::json!({ "edges": list })
}

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

/// Writes to a temporary file beside `path`, syncs it and renames it into place, so a reader never sees half a file.
pub fn write_atomically(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut builder = tempfile::Builder::new();
    // A temporary file is created private (0600); an export is an ordinary file that others may read (0644,
    // less whatever the umask removes).
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644));
    let mut tmp = builder.tempfile_in(dir).with_context(|| format!("cannot write in {}", dir.display()))?;
    tmp.write_all(data).context("cannot write the export")?;
    tmp.as_file().sync_all().context("cannot sync the export")?;
    tmp.persist(path).with_context(|| format!("cannot rename into {}", path.display()))?;
    Ok(())
}

pub fn score_json(label: &str, s: &Score) -> serde_json::Value {
    let per: Vec<serde_json::Value> = s
        .per_relation
        .iter()
        .map(|r| {
            serde_json::json!({
                "relation": r.relation, "tp": r.tp, "fp": r.fp, "fn": r.fn_,
                "precision": r.precision, "recall": r.recall, "f1": r.f1,
            })
        })
        .collect();
    serde_json::json!({
        "method": label,
        "edge_accuracy": s.edge_accuracy,
        "typed": { "precision": s.precision, "recall": s.recall, "f1": s.f1 },
        "ari": s.ari,
        "truth_edges": s.counts.truth_edges,
        "recovered_edges": s.counts.recovered_edges,
        "placed": s.counts.placed,
        "per_relation": per,
    })
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

pub fn audit_score_json(a: &crate::audit::AuditScore) -> serde_json::Value {
    serde_json::json!({ "license_conflicts": a.license.to_json(), "wrong_base_model": a.declared.to_json() })
}

/// Audit precision / recall per method: license conflicts and wrong `base_model` declarations, per model.
pub fn audit_score_table(rows: &[(String, crate::audit::AuditScore)]) -> String {
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

#[cfg(test)]
mod tests {
    use lineage::{EdgeSource, Relation};

    use super::*;

    fn edge(p: &str, c: &str, relation: Relation) -> Edge {
        Edge { parent: p.into(), child: c.into(), relation, confidence: 0.5, source: EdgeSource::Weights }
    }

    #[cfg(unix)]
    #[test]
    fn exports_are_readable_like_any_file_the_user_creates() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
        // What the umask leaves of 0666 for a plain file, without the write bits for others.
        let plain = dir.path().join("plain");
        std::fs::File::create(&plain).expect("create");
        let export = dir.path().join("export.json");
        write_atomically(&export, b"{}").expect("write");
        write_atomically(&export, b"{\"again\": true}").expect("replace");
        assert_eq!(std::fs::read(&export).expect("read"), b"{\"again\": true}");
        assert_eq!(mode(&export), mode(&plain) & 0o644);
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
}
