//! End-to-end tests of `modeltree export` on the bundled small zoo: every format parses and agrees with the others
//! on the models and edges, `--out` writes the same bytes as standard output, and a model whose folder name and
//! card license are hostile markup comes back unchanged from every format that can carry it.

use std::{collections::BTreeSet, path::Path};

use crate::common::{copy_tree, modeltree, run_ok, zoo};

fn export(db: &Path, format: &str) -> String {
    run_ok(modeltree(db).args(["export", "--format", format]))
}

/// DOT structure: strings close, braces and brackets outside strings balance. Returns the quoted strings that
/// start a statement (node ids and edge tails).
fn check_dot(dot: &str) -> Vec<String> {
    let (mut braces, mut brackets) = (0i64, 0i64);
    let mut heads = Vec::new();
    for line in dot.lines() {
        let (mut in_string, mut current, mut strings) = (false, String::new(), Vec::new());
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match (in_string, c) {
                (true, '\\') => {
                    let next = chars.next().expect("escape at end of line");
                    current.push(next);
                }
                (true, '"') => {
                    in_string = false;
                    strings.push(std::mem::take(&mut current));
                }
                (true, c) => current.push(c),
                (false, '"') => in_string = true,
                (false, '{') => braces += 1,
                (false, '}') => braces -= 1,
                (false, '[') => brackets += 1,
                (false, ']') => brackets -= 1,
                _ => {}
            }
            assert!(braces >= 0 && brackets >= 0, "{line}");
        }
        assert!(!in_string, "a string left open on {line:?}");
        if line.trim_start().starts_with('"')
            && let Some(first) = strings.into_iter().next()
        {
            heads.push(first);
        }
    }
    assert_eq!((braces, brackets), (0, 0), "unbalanced DOT");
    heads
}

struct Exports {
    ids: BTreeSet<String>,
    edges: Vec<(String, String, String)>,
    findings: usize,
}

/// Reads every format back and checks it against the JSON export; returns what they agree on.
fn check_all_formats(db: &Path) -> Exports {
    let json: serde_json::Value = serde_json::from_str(&export(db, "json")).expect("json");
    let ids: BTreeSet<String> =
        json["models"].as_array().expect("models").iter().map(|m| m["id"].as_str().expect("id").to_owned()).collect();
    let edges: Vec<(String, String, String)> = json["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().expect("string").to_owned();
            (s("parent"), s("child"), s("relation"))
        })
        .collect();
    let audit: Vec<serde_json::Value> =
        serde_json::from_str(&run_ok(modeltree(db).args(["audit", "--json"]))).expect("audit json");

    // JSONL: one object per line, a type on each, as many models, edges and findings as the other outputs.
    let jsonl = export(db, "jsonl");
    let lines: Vec<serde_json::Value> = jsonl.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    let of_type = |t: &str| lines.iter().filter(|v| v["type"] == t).count();
    assert_eq!((of_type("model"), of_type("edge"), of_type("finding")), (ids.len(), edges.len(), audit.len()));
    assert_eq!(lines.len(), ids.len() + edges.len() + audit.len(), "every line has a known type");
    assert!(lines.iter().filter(|v| v["type"] == "model").all(|v| v["license_class"].is_string()));

    // CSV: a header, one row per edge and one per model with no parent; nine cells in every record.
    let csv = crate::common::csv::parse_csv(&export(db, "csv"));
    assert_eq!(
        csv[0],
        [
            "child",
            "parent",
            "relation",
            "confidence",
            "source",
            "child_license",
            "child_license_id",
            "parent_license",
            "parent_license_id"
        ]
    );
    assert!(csv.iter().all(|r| r.len() == 9), "ragged CSV");
    let children: BTreeSet<&str> = edges.iter().map(|e| e.1.as_str()).collect();
    let parentless = ids.iter().filter(|id| !children.contains(id.as_str())).count();
    assert_eq!(csv.len() - 1, edges.len() + parentless);
    let csv_edges = csv[1..].iter().filter(|r| !r[1].is_empty()).count();
    assert_eq!(csv_edges, edges.len());
    for r in csv[1..].iter().filter(|r| !r[1].is_empty()) {
        let c: f64 = r[3].parse().expect("confidence is a number");
        assert!((0.0..=1.0).contains(&c));
    }

    // GraphML: well-formed XML in the GraphML namespace, typed keys, the same nodes and edges.
    let graphml = export(db, "graphml");
    let doc = roxmltree::Document::parse(&graphml).expect("GraphML is well-formed XML");
    let ns = "http://graphml.graphdrawing.org/xmlns";
    assert_eq!(doc.root_element().tag_name().namespace(), Some(ns));
    let keys: Vec<(String, String)> = doc
        .descendants()
        .filter(|n| n.has_tag_name((ns, "key")))
        .map(|k| {
            (k.attribute("attr.name").expect("name").to_owned(), k.attribute("attr.type").expect("type").to_owned())
        })
        .collect();
    for (name, ty) in [("license", "string"), ("status", "string"), ("relation", "string"), ("confidence", "double")] {
        assert!(keys.contains(&(name.to_owned(), ty.to_owned())), "{name}: {keys:?}");
    }
    let nodes: BTreeSet<String> = doc
        .descendants()
        .filter(|n| n.has_tag_name((ns, "node")))
        .map(|n| n.attribute("id").expect("node id").to_owned())
        .collect();
    assert_eq!(nodes, ids);
    let gedges: Vec<(String, String, String)> = doc
        .descendants()
        .filter(|n| n.has_tag_name((ns, "edge")))
        .map(|e| {
            let data = |key: &str| {
                e.children()
                    .find(|d| d.has_tag_name((ns, "data")) && d.attribute("key") == Some(key))
                    .and_then(|d| d.text())
                    .expect("edge data")
                    .to_owned()
            };
            let c: f64 = data("confidence").parse().expect("double");
            assert!((0.0..=1.0).contains(&c));
            let (s, t) = (e.attribute("source").expect("source"), e.attribute("target").expect("target"));
            assert!(nodes.contains(s) && nodes.contains(t), "edge to an undeclared node");
            (s.to_owned(), t.to_owned(), data("relation"))
        })
        .collect();
    assert_eq!(gedges, edges);

    // DOT: balanced, one statement per model and per edge, plus the legend node.
    let dot = export(db, "dot");
    assert!(dot.starts_with("digraph modeltree {"));
    let heads = check_dot(&dot);
    let node_lines: BTreeSet<String> = heads.iter().filter(|h| ids.contains(*h)).cloned().collect();
    assert_eq!(node_lines, ids);
    assert_eq!(dot.matches(" -> ").count(), edges.len());
    assert!(dot.contains("cluster_legend"));

    // HTML: one SVG node group per model, no external asset, the findings beside it.
    let html = export(db, "html");
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert_eq!(html.matches("<g class=\"node ").count(), ids.len());
    assert_eq!(html.matches("<path class=\"edge ").count(), edges.len());
    assert_eq!(html.matches("<li class=\"finding\"").count(), audit.len());
    for needle in ["src=", "href=", "@import", "url(", "<link"] {
        assert!(!html.contains(needle), "external asset: {needle}");
    }
    assert!(html.contains("id=\"search\""));
    Exports { ids, edges, findings: audit.len() }
}

#[test]
fn every_format_parses_and_agrees() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = tmp.path().join("m.db");
    run_ok(modeltree(&db).arg("scan").arg(zoo()));
    let e = check_all_formats(&db);
    assert!(e.ids.len() >= 20 && e.edges.len() >= 20 && e.findings > 0, "{} {}", e.ids.len(), e.edges.len());

    // --out writes exactly what standard output gets.
    for format in ["json", "graphml", "html"] {
        let path = tmp.path().join(format!("out.{format}"));
        let printed = export(&db, format);
        let written = run_ok(modeltree(&db).args(["export", "--format", format, "--out"]).arg(&path));
        assert!(written.is_empty());
        assert_eq!(std::fs::read_to_string(&path).expect("written"), printed, "{format}");
    }
}

#[test]
fn hostile_ids_and_licenses_survive_every_format() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("zoo");
    copy_tree(&zoo(), &root);
    // A folder name (anything but `/`) and a card license that try to break out of XML, HTML, DOT, CSV and the report template.
    let hostile_name = "bf-pico \"dup\" <script>alert(1)<i> & {{forest}}, \\l ='x'";
    let hostile_license = "<b>custom</b> & \"terms\", =1+1 \\N {{findings}}";
    let from = root.join("reupload-bot/bf-pico-sort6-10-lora-r2-fp32");
    let to = root.join("reupload-bot").join(hostile_name);
    std::fs::rename(&from, &to).expect("rename");
    let readme = to.join("README.md");
    let card = std::fs::read_to_string(&readme).expect("card");
    let yaml_license = format!("license: '{}'\n", hostile_license.replace('\'', "''"));
    let card = card.replacen("---\n", &format!("---\n{yaml_license}"), 1);
    std::fs::write(&readme, card).expect("write card");
    let id = format!("reupload-bot/{hostile_name}");

    let db = tmp.path().join("m.db");
    run_ok(modeltree(&db).arg("scan").arg(&root));
    let e = check_all_formats(&db);
    assert!(e.ids.contains(&id), "{:?}", e.ids);
    assert!(e.edges.iter().any(|(_, c, _)| *c == id), "the renamed model still has its parent");

    // The exact strings come back from the formats that carry them.
    let json: serde_json::Value = serde_json::from_str(&export(&db, "json")).expect("json");
    let model = json["models"].as_array().expect("models").iter().find(|m| m["id"] == id.as_str()).expect("model");
    assert_eq!(model["license"], hostile_license);
    let graphml = export(&db, "graphml");
    let doc = roxmltree::Document::parse(&graphml).expect("xml");
    let node = doc.descendants().find(|n| n.attribute("id") == Some(id.as_str())).expect("node");
    let license = node.children().find(|d| d.attribute("key") == Some("license")).and_then(|d| d.text());
    assert_eq!(license, Some(hostile_license));
    let csv = crate::common::csv::parse_csv(&export(&db, "csv"));
    let row = csv.iter().find(|r| r[0] == id).expect("csv row");
    assert_eq!(row[5], hostile_license);
    let dot = export(&db, "dot");
    assert!(check_dot(&dot).contains(&id));
    let html = export(&db, "html");
    assert!(!html.contains("<script>alert") && !html.contains("<b>custom"), "markup must be escaped");
    assert_eq!(html.matches("<svg id=\"forest\"").count(), 1, "the template is filled once");
    assert!(html.contains("&lt;script&gt;alert(1)&lt;i&gt; &amp; {{forest}}"));
    // The audit sees the custom license under a community-licensed parent.
    let audit: Vec<serde_json::Value> =
        serde_json::from_str(&run_ok(modeltree(&db).args(["audit", "--json"]))).expect("audit");
    assert!(audit.iter().any(|f| f["child"] == id.as_str() && f["kind"] == "license-unverifiable"), "{audit:?}");
}
