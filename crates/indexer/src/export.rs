//! Exports: the models, the recovered edges and the audit written for other tools, and the JSON shapes of edges
//! and findings that the binary prints too.
//!
//! [`Graph`] gathers what every format needs (models with normalised licenses, edges, findings) from the store;
//! [`render`] writes one [`Format`]; [`write`] renders a store's graph into a file atomically, which is what
//! `modeltree export --out` and the daemon's configured exports both call. JSON keeps the shape the command always had; JSONL is one object per model,
//! edge and finding; CSV is the lineage as a table; GraphML is typed for networkx and Gephi; DOT is for Graphviz;
//! HTML is a self-contained report drawn by [`html`].
//!
//! Model ids and licenses come from the network, so each format escapes them by its own rules: [`xml_escape`]
//! (GraphML, HTML, SVG), [`dot_escape`], [`csv_field`]; JSON goes through serde_json.

mod html;

use std::{collections::BTreeMap, fmt::Write as _, io::Write as _, path::Path};

use anyhow::Context;
use audit::{Finding, License, Severity};
use lineage::{Edge, Relation, eval::Score};
use store::Store;

use crate::convert::{audit_model, from_records};

/// The export formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `{"models": […], "edges": […]}`, pretty-printed.
    Json,
    /// One JSON object per line: models, edges and audit findings, each with a `type` field.
    Jsonl,
    /// The lineage as a table: one row per edge, plus one row with an empty parent per model with no parent.
    Csv,
    /// GraphML with typed keys (networkx `read_graphml`, Gephi).
    Graphml,
    /// Graphviz DOT, coloured by relation and license class, with a legend.
    Dot,
    /// A self-contained HTML report: the forest as SVG, the audit beside it, a search box.
    Html,
}

impl Format {
    pub const ALL: [Format; 6] = [Format::Json, Format::Jsonl, Format::Csv, Format::Graphml, Format::Dot, Format::Html];

    /// The name in `--format` and `[[exports]] format`.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Jsonl => "jsonl",
            Format::Csv => "csv",
            Format::Graphml => "graphml",
            Format::Dot => "dot",
            Format::Html => "html",
        }
    }

    pub fn parse(name: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.as_str() == name)
    }
}

/// Renders the store's graph in `format` and writes it to `path` atomically.
///
/// # Errors
/// When the store cannot be read or the file cannot be written.
pub fn write(store: &Store, format: Format, path: &Path) -> anyhow::Result<()> {
    let graph = Graph::from_store(store)?;
    write_atomically(path, render(format, &graph)?.as_bytes())
}

/// Writes to a temporary file beside `path`, syncs it and renames it into place, so a reader never sees half a file.
///
/// # Errors
/// When the folder cannot be written or the rename fails.
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

/// `{"edges": […]}`, confidences rounded to four places.
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

/// A license as JSON: raw, canonical id and class.
pub fn license_json(l: &License) -> serde_json::Value {
    serde_json::json!({ "raw": l.raw, "id": l.id, "class": l.class.as_str() })
}

/// A finding as JSON, with its evidence.
pub fn finding_json(f: &Finding) -> serde_json::Value {
    serde_json::json!({
        "severity": f.severity.as_str(),
        "kind": f.kind.as_str(),
        "child": f.child,
        "parent": f.parent,
        "relation": f.relation.map(Relation::as_str),
        "source": f.source.map(lineage::EdgeSource::as_str),
        "confidence": f.confidence.map(|c| (c * 1e4).round() / 1e4),
        "message": f.message,
        "evidence": {
            "child_license": license_json(&f.child_license),
            "parent_license": f.parent_license.as_ref().map(license_json),
            "declared_base_models": f.declared_bases,
            "declared_relation": f.declared_relation,
            "declared": f.declared,
        },
    })
}

/// A lineage score as JSON (`eval --json`).
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

/// An audit score as JSON (`eval --json`).
pub fn audit_score_json(a: &audit::AuditScore) -> serde_json::Value {
    let pr = |p: &audit::Pr| serde_json::json!({ "tp": p.tp, "fp": p.fp, "fn": p.fn_, "precision": p.precision, "recall": p.recall });
    serde_json::json!({ "license_conflicts": pr(&a.license), "wrong_base_model": pr(&a.declared) })
}

/// A model as exported.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub id: String,
    pub license: License,
    pub declared_bases: Vec<String>,
    pub declared_relation: Option<String>,
    /// `indexed`, `failed`, `vanished`, or `unknown` for an edge endpoint the store holds no record of.
    pub status: String,
}

/// Everything an export shows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Graph {
    /// Sorted by id; every edge endpoint is among them.
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
    pub findings: Vec<Finding>,
}

impl Graph {
    /// Reads the models and current edges, and runs the audit.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub fn from_store(store: &Store) -> anyhow::Result<Graph> {
        let models = store.models().context("cannot list models")?;
        let edges = from_records(&store.current_edges().context("cannot read edges")?);
        let audit_models: Vec<audit::Model> = models.iter().map(audit_model).collect();
        let findings = audit::audit(&audit_models, &edges);
        let nodes = models
            .iter()
            .map(|m| Node {
                id: m.record.id.clone(),
                license: audit::normalize(m.record.license.as_deref()),
                declared_bases: m.record.declared_base_models.clone(),
                declared_relation: m.record.base_model_relation.clone(),
                status: m.status.as_str().to_owned(),
            })
            .collect();
        Ok(Graph::new(nodes, edges, findings))
    }

    /// Sorts the nodes and adds any edge endpoint missing from them, so every format can rely on both.
    pub fn new(mut nodes: Vec<Node>, edges: Vec<Edge>, findings: Vec<Finding>) -> Graph {
        let mut known: std::collections::BTreeSet<String> = nodes.iter().map(|n| n.id.clone()).collect();
        for e in &edges {
            for id in [&e.parent, &e.child] {
                if known.insert(id.clone()) {
                    nodes.push(Node {
                        id: id.clone(),
                        license: audit::normalize(None),
                        declared_bases: Vec::new(),
                        declared_relation: None,
                        status: "unknown".into(),
                    });
                }
            }
        }
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Graph { nodes, edges, findings }
    }

    fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.binary_search_by(|n| n.id.as_str().cmp(id)).ok().and_then(|i| self.nodes.get(i))
    }

    /// Per model: the number of findings on it as the child, and the worst severity.
    fn findings_by_child(&self) -> BTreeMap<&str, (usize, Severity)> {
        let mut map: BTreeMap<&str, (usize, Severity)> = BTreeMap::new();
        for f in &self.findings {
            let entry = map.entry(f.child.as_str()).or_insert((0, f.severity));
            entry.0 += 1;
            entry.1 = entry.1.max(f.severity);
        }
        map
    }
}

/// Writes `graph` in `format`.
///
/// # Errors
/// Only when JSON serialisation fails, which it does not for these values.
pub fn render(format: Format, graph: &Graph) -> anyhow::Result<String> {
    Ok(match format {
        Format::Json => json(graph)?,
        Format::Jsonl => jsonl(graph)?,
        Format::Csv => csv(graph),
        Format::Graphml => graphml(graph),
        Format::Dot => dot(graph),
        Format::Html => html::report(graph),
    })
}

fn json(graph: &Graph) -> anyhow::Result<String> {
    let models: Vec<serde_json::Value> = graph
        .nodes
        .iter()
        .map(|n| {
            serde_json::json!({
                "id": n.id,
                "license": n.license.raw,
                "declared_base_models": n.declared_bases,
                "status": n.status,
            })
        })
        .collect();
    let doc = serde_json::json!({ "models": models, "edges": edges_json(&graph.edges)["edges"] });
    Ok(serde_json::to_string_pretty(&doc)? + "\n")
}

fn jsonl(graph: &Graph) -> anyhow::Result<String> {
    let mut out = String::new();
    for n in &graph.nodes {
        let v = serde_json::json!({
            "type": "model",
            "id": n.id,
            "license": n.license.raw,
            "license_id": n.license.id,
            "license_class": n.license.class.as_str(),
            "declared_base_models": n.declared_bases,
            "base_model_relation": n.declared_relation,
            "status": n.status,
        });
        out.push_str(&serde_json::to_string(&v)?);
        out.push('\n');
    }
    for e in &graph.edges {
        let mut v = edges_json(std::slice::from_ref(e))["edges"][0].take();
        v["type"] = "edge".into();
        out.push_str(&serde_json::to_string(&v)?);
        out.push('\n');
    }
    for f in &graph.findings {
        let mut v = finding_json(f);
        v["type"] = "finding".into();
        out.push_str(&serde_json::to_string(&v)?);
        out.push('\n');
    }
    Ok(out)
}

/// The CSV header; [`csv`] writes one row per edge and one per parentless model.
pub const CSV_HEADER: &str =
    "child,parent,relation,confidence,source,child_license,child_license_id,parent_license,parent_license_id";

fn csv(graph: &Graph) -> String {
    let mut out = String::from(CSV_HEADER);
    out.push_str("\r\n");
    let license = |id: &str| graph.node(id).map(|n| n.license.clone()).unwrap_or_else(|| audit::normalize(None));
    let row = |out: &mut String, fields: &[&str]| {
        let cells: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        out.push_str(&cells.join(","));
        out.push_str("\r\n");
    };
    let mut edges: Vec<&Edge> = graph.edges.iter().collect();
    edges.sort_by(|a, b| (&a.child, &a.parent).cmp(&(&b.child, &b.parent)));
    let has_parent: std::collections::BTreeSet<&str> = edges.iter().map(|e| e.child.as_str()).collect();
    for n in graph.nodes.iter().filter(|n| !has_parent.contains(n.id.as_str())) {
        let raw = n.license.raw.as_deref().unwrap_or("");
        row(&mut out, &[&n.id, "", "", "", "", raw, &n.license.id, "", ""]);
    }
    for e in edges {
        let (cl, pl) = (license(&e.child), license(&e.parent));
        let confidence = format!("{:.4}", e.confidence);
        row(
            &mut out,
            &[
                &e.child,
                &e.parent,
                e.relation.as_str(),
                &confidence,
                e.source.as_str(),
                cl.raw.as_deref().unwrap_or(""),
                &cl.id,
                pl.raw.as_deref().unwrap_or(""),
                &pl.id,
            ],
        );
    }
    out
}

/// One CSV cell (RFC 4180): quoted when it holds a comma, quote, CR or LF, quotes doubled. A cell a spreadsheet
/// would run as a formula (leading `=`, `+`, `-`, `@`, tab or CR) gets a leading `'`, the usual defence against
/// CSV injection: licenses and ids are whatever a stranger typed.
pub fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{s}") } else { s.to_owned() };
    if s.contains([',', '"', '\n', '\r']) || s.starts_with(' ') || s.ends_with(' ') {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// Escapes text for XML and HTML, in content and in quoted attributes. Characters XML 1.0 cannot hold at all
/// (C0 controls other than tab, LF, CR; U+FFFE, U+FFFF) become U+FFFD; tab, LF and CR become character
/// references so attribute-value normalisation keeps them.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c if (c as u32) < 0x20 || c == '\u{7f}' || c == '\u{fffe}' || c == '\u{ffff}' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// Escapes text for a double-quoted DOT string: `"` and `\` are escaped (so a hostile id cannot end the string
/// or smuggle a `\l`-style label escape), and control characters become spaces.
pub fn dot_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// The colour of each relation, shared by DOT and HTML.
pub fn relation_colour(r: Relation) -> &'static str {
    match r {
        Relation::Finetune => "#2563eb",
        Relation::Lora => "#7c3aed",
        Relation::Adapter => "#059669",
        Relation::Quantized => "#d97706",
        Relation::Merge => "#dc2626",
        Relation::Duplicate => "#6b7280",
    }
}

/// The fill of each license class, shared by DOT and HTML.
pub fn class_colour(c: audit::LicenseClass) -> &'static str {
    use audit::LicenseClass as C;
    match c {
        C::Permissive => "#bbf7d0",
        C::WeakCopyleft => "#fef9c3",
        C::ShareAlike => "#fde68a",
        C::NonCommercial => "#fecaca",
        C::NoDerivatives => "#fca5a5",
        C::Community => "#bfdbfe",
        C::OpenRail => "#e9d5ff",
        C::Other => "#e5e7eb",
        C::Unknown => "#e5e7eb",
        C::Missing => "#ffffff",
    }
}

/// The license classes in legend order.
pub const CLASSES: [audit::LicenseClass; 10] = {
    use audit::LicenseClass as C;
    [
        C::Permissive,
        C::WeakCopyleft,
        C::ShareAlike,
        C::NonCommercial,
        C::NoDerivatives,
        C::Community,
        C::OpenRail,
        C::Other,
        C::Unknown,
        C::Missing,
    ]
};

fn severity_colour(s: Severity) -> &'static str {
    match s {
        Severity::Error => "#b91c1c",
        Severity::Warning => "#d97706",
        Severity::Info => "#2563eb",
    }
}

fn graphml(graph: &Graph) -> String {
    let mut out = String::new();
    out.push_str(concat!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n",
        "<graphml xmlns=\"http://graphml.graphdrawing.org/xmlns\" ",
        "xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" ",
        "xsi:schemaLocation=\"http://graphml.graphdrawing.org/xmlns ",
        "http://graphml.graphdrawing.org/xmlns/1.0/graphml.xsd\">\n",
    ));
    for (id, for_, ty) in [
        ("label", "node", "string"),
        ("license", "node", "string"),
        ("license_id", "node", "string"),
        ("license_class", "node", "string"),
        ("status", "node", "string"),
        ("declared_base_models", "node", "string"),
        ("findings", "node", "int"),
        ("worst_finding", "node", "string"),
        ("relation", "edge", "string"),
        ("confidence", "edge", "double"),
        ("source", "edge", "string"),
    ] {
        let _ = writeln!(out, "  <key id=\"{id}\" for=\"{for_}\" attr.name=\"{id}\" attr.type=\"{ty}\"/>");
    }
    out.push_str("  <graph id=\"modeltree\" edgedefault=\"directed\">\n");
    let by_child = graph.findings_by_child();
    for n in &graph.nodes {
        let _ = writeln!(out, "    <node id=\"{}\">", xml_escape(&n.id));
        let data = |out: &mut String, key: &str, value: &str| {
            let _ = writeln!(out, "      <data key=\"{key}\">{}</data>", xml_escape(value));
        };
        data(&mut out, "label", &n.id);
        if let Some(raw) = &n.license.raw {
            data(&mut out, "license", raw);
        }
        data(&mut out, "license_id", &n.license.id);
        data(&mut out, "license_class", n.license.class.as_str());
        data(&mut out, "status", &n.status);
        data(&mut out, "declared_base_models", &n.declared_bases.join(" "));
        let (count, worst) = by_child.get(n.id.as_str()).map_or((0, ""), |(c, s)| (*c, s.as_str()));
        data(&mut out, "findings", &count.to_string());
        if !worst.is_empty() {
            data(&mut out, "worst_finding", worst);
        }
        out.push_str("    </node>\n");
    }
    for (i, e) in graph.edges.iter().enumerate() {
        let _ = writeln!(
            out,
            "    <edge id=\"e{i}\" source=\"{}\" target=\"{}\">\n      <data key=\"relation\">{}</data>\n      \
             <data key=\"confidence\">{}</data>\n      <data key=\"source\">{}</data>\n    </edge>",
            xml_escape(&e.parent),
            xml_escape(&e.child),
            e.relation.as_str(),
            (e.confidence * 1e4).round() / 1e4,
            e.source.as_str()
        );
    }
    out.push_str("  </graph>\n</graphml>\n");
    out
}

fn dot(graph: &Graph) -> String {
    let mut out = String::new();
    out.push_str("digraph modeltree {\n");
    out.push_str("  graph [rankdir=LR, fontname=\"Helvetica\", nodesep=0.15, ranksep=0.6];\n");
    out.push_str("  node [shape=box, style=\"rounded,filled\", fontname=\"Helvetica\", fontsize=10];\n");
    out.push_str("  edge [fontname=\"Helvetica\", fontsize=8];\n");
    let by_child = graph.findings_by_child();
    for n in &graph.nodes {
        let license = n.license.raw.as_deref().map_or_else(|| "no license".to_owned(), |raw| truncate(raw, 40));
        let mut attrs = format!(
            "label=\"{}\\n{}\", fillcolor=\"{}\", tooltip=\"{}\"",
            dot_escape(&n.id),
            dot_escape(&license),
            class_colour(n.license.class),
            dot_escape(&format!("{} ({}), {}", n.id, n.license.class.as_str(), n.status)),
        );
        if let Some((_, worst)) = by_child.get(n.id.as_str())
            && *worst >= Severity::Warning
        {
            let _ = write!(attrs, ", color=\"{}\", penwidth=2", severity_colour(*worst));
        }
        if n.status != "indexed" {
            attrs.push_str(", style=\"rounded,filled,dashed\"");
        }
        let _ = writeln!(out, "  \"{}\" [{attrs}];", dot_escape(&n.id));
    }
    for e in &graph.edges {
        let style = match e.source {
            lineage::EdgeSource::Metadata => "dashed",
            _ => "solid",
        };
        let _ = writeln!(
            out,
            "  \"{}\" -> \"{}\" [color=\"{c}\", fontcolor=\"{c}\", label=\"{} {:.2}\", style={style}, \
             tooltip=\"{} ({})\"];",
            dot_escape(&e.parent),
            dot_escape(&e.child),
            e.relation.as_str(),
            e.confidence,
            e.relation.as_str(),
            e.source.as_str(),
            c = relation_colour(e.relation),
        );
    }
    // The legend is an HTML-like label: only our own fixed names and colours go into it.
    out.push_str("  subgraph cluster_legend {\n    label=\"legend\"; fontsize=10; color=\"#9ca3af\";\n");
    out.push_str(
        "    \"modeltree:legend\" [shape=plaintext, style=\"\", label=<<table border=\"0\" cellspacing=\"2\">",
    );
    out.push_str("<tr><td colspan=\"2\"><b>relation</b></td></tr>");
    for r in Relation::ALL {
        let _ = write!(
            out,
            "<tr><td><font color=\"{c}\">&#9472;&#9472;&#9654;</font></td><td align=\"left\">{}</td></tr>",
            r.as_str(),
            c = relation_colour(r)
        );
    }
    out.push_str("<tr><td colspan=\"2\"><b>license class</b></td></tr>");
    for c in CLASSES {
        let _ = write!(
            out,
            "<tr><td bgcolor=\"{}\" border=\"1\"> </td><td align=\"left\">{}</td></tr>",
            class_colour(c),
            c.as_str()
        );
    }
    out.push_str("<tr><td colspan=\"2\">dashed edge: metadata only</td></tr>");
    out.push_str("<tr><td colspan=\"2\">red / amber border: audit error / warning</td></tr>");
    out.push_str("</table>>];\n  }\n}\n");
    out
}

/// At most `max` characters, with an ellipsis when cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// The integration tests' strict RFC 4180 reader.
#[cfg(test)]
#[path = "../../../tests/common/csv.rs"]
mod test_csv;

#[cfg(test)]
mod tests {
    use lineage::EdgeSource;

    use super::*;

    /// Ids and licenses that try to break out of every format.
    pub(crate) const HOSTILE_ID: &str = "evil/\"><script>alert(1)</script>\\l,=cmd|' /C calc'!A0\n{{svg}}&amp;";
    pub(crate) const HOSTILE_LICENSE: &str = "=HYPERLINK(\"http://x\")<b>\u{1}'";

    pub(crate) fn hostile_graph() -> Graph {
        let node = |id: &str, license: Option<&str>| Node {
            id: id.into(),
            license: audit::normalize(license),
            declared_bases: vec![],
            declared_relation: None,
            status: "indexed".into(),
        };
        let nodes = vec![node("good/base", Some("cc-by-nc-4.0")), node(HOSTILE_ID, Some(HOSTILE_LICENSE))];
        let edges = vec![Edge {
            parent: "good/base".into(),
            child: HOSTILE_ID.into(),
            relation: Relation::Finetune,
            confidence: 0.75,
            source: EdgeSource::Weights,
        }];
        let models: Vec<audit::Model> = nodes
            .iter()
            .map(|n| audit::Model {
                id: n.id.clone(),
                license: n.license.raw.clone(),
                signed: true,
                ..audit::Model::default()
            })
            .collect();
        let findings = audit::audit(&models, &edges);
        assert!(!findings.is_empty(), "the hostile license is not non-commercial");
        Graph::new(nodes, edges, findings)
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
    fn escapes() {
        assert_eq!(xml_escape("a<b>&\"c'\n\u{0}"), "a&lt;b&gt;&amp;&quot;c&#39;&#10;\u{fffd}");
        assert_eq!(dot_escape("a\"b\\l\nc"), "a\\\"b\\\\l c");
        assert_eq!(csv_field("plain/id"), "plain/id");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=1+1"), "'=1+1");
        assert_eq!(csv_field("-x,y"), "\"'-x,y\"");
        assert_eq!(csv_field("line\nbreak"), "\"line\nbreak\"");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
    }

    #[test]
    fn hostile_ids_stay_inside_their_strings() {
        let g = hostile_graph();
        // GraphML: no raw markup from the id, and the escaped id is there.
        let xml = render(Format::Graphml, &g).expect("graphml");
        assert!(!xml.contains("<script>"), "{xml}");
        assert!(xml.contains("evil/&quot;&gt;&lt;script&gt;"), "{xml}");
        assert!(!xml.contains('\u{1}'));
        // DOT: every quote inside a string is escaped, so strings close on their line and braces outside
        // strings balance.
        let dot = render(Format::Dot, &g).expect("dot");
        let mut depth = 0i32;
        for line in dot.lines() {
            let mut in_string = false;
            let mut chars = line.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' if in_string => {
                        chars.next();
                    }
                    '"' => in_string = !in_string,
                    '{' if !in_string => depth += 1,
                    '}' if !in_string => depth -= 1,
                    _ => {}
                }
                assert!(depth >= 0, "{line:?}");
            }
            assert!(!in_string, "unbalanced quotes in {line:?}");
        }
        assert_eq!(depth, 0);
        // CSV: the hostile id is one quoted cell; a parser sees the right number of cells per record.
        let csv = render(Format::Csv, &g).expect("csv");
        let records = parse_csv(&csv);
        assert_eq!(records.len(), 3, "header, the root row, the edge: {csv}");
        assert!(records.iter().all(|r| r.len() == 9), "{records:?}");
        assert_eq!(records[2][0], HOSTILE_ID);
        assert_eq!(records[2][5], format!("'{HOSTILE_LICENSE}"), "formula neutralised");
        // JSONL: every line parses and gives the id back unchanged.
        let jsonl = render(Format::Jsonl, &g).expect("jsonl");
        let values: Vec<serde_json::Value> =
            jsonl.lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
        assert!(values.iter().any(|v| v["type"] == "model" && v["id"] == HOSTILE_ID));
        assert!(values.iter().any(|v| v["type"] == "finding" && v["child"] == HOSTILE_ID));
    }

    use super::test_csv::parse_csv;

    #[test]
    fn json_keeps_its_shape() {
        let g = hostile_graph();
        let v: serde_json::Value = serde_json::from_str(&render(Format::Json, &g).expect("json")).expect("parses");
        let keys: Vec<&String> = v["models"][0].as_object().expect("object").keys().collect();
        assert_eq!(keys, ["declared_base_models", "id", "license", "status"]);
        assert_eq!(v["edges"][0]["child"], HOSTILE_ID);
        assert_eq!(v["edges"][0]["relation"], "finetune");
    }
}
