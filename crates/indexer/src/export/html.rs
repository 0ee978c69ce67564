//! The self-contained HTML report: the forest laid out here and drawn as inline SVG, the audit findings beside it,
//! a legend and a search box. No external asset of any kind (the page's Content-Security-Policy forbids them), so
//! the file can be mailed, archived or opened offline.
//!
//! Layout: each model sits in the column of its longest path from a root, so every parent is left of its
//! children. The tree used for placement takes, per model, the deepest parent (a merge has several); the other
//! parents' edges are drawn as well. Placement is the simple tidy layout: leaves take one row each in depth-first
//! order, a parent is centred on its children, trees are stacked with a gap, and models in no edge come last.

use std::{collections::BTreeMap, fmt::Write as _};

use lineage::{Edge, Relation};

use super::{CLASSES, Graph, class_colour, relation_colour, truncate, xml_escape};
use audit::{Finding, Severity};

const TEMPLATE: &str = include_str!("report.html");

/// Vertical distance between two leaves.
const ROW_H: f64 = 24.0;
/// Average advance of the 12px label font; only used to size columns, so an estimate is enough.
const CHAR_W: f64 = 6.6;
/// Labels are cut to this many characters (the full id is in the tooltip and searchable).
const LABEL_MAX: usize = 34;
const NODE_R: f64 = 6.0;
/// Between a node and its label.
const LABEL_GAP: f64 = 6.0;
const COL_GAP: f64 = 44.0;
const MARGIN: f64 = 20.0;
/// Blank rows between two trees.
const TREE_GAP: f64 = 0.75;

/// Where each node goes, in pixels, and the canvas size.
#[derive(Clone, Debug, PartialEq)]
pub struct Layout {
    /// Indexed like [`Graph::nodes`].
    pub pos: Vec<(f64, f64)>,
    /// Each node's label text.
    pub labels: Vec<String>,
    /// Where each node's label ends (estimated): edges leave a parent there, so they never cross its label.
    pub label_end: Vec<f64>,
    pub width: f64,
    pub height: f64,
    pub trees: usize,
    /// The y of the "no relative" caption, if there are models in no edge.
    pub loners_caption: Option<f64>,
}

/// Each node's label: the name without its org, unless another node has the same name (then the whole id), cut
/// to [`LABEL_MAX`] characters.
fn labels(graph: &Graph) -> Vec<String> {
    let name = |id: &str| id.rsplit('/').next().filter(|s| !s.is_empty()).unwrap_or(id).to_owned();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for node in &graph.nodes {
        *seen.entry(name(&node.id)).or_default() += 1;
    }
    graph
        .nodes
        .iter()
        .map(|node| {
            let short = name(&node.id);
            truncate(if seen.get(&short) == Some(&1) { &short } else { &node.id }, LABEL_MAX)
        })
        .collect()
}

/// Lays out the forest (see the module docs).
pub fn layout(graph: &Graph) -> Layout {
    let n = graph.nodes.len();
    let index: BTreeMap<&str, usize> = graph.nodes.iter().enumerate().map(|(i, node)| (node.id.as_str(), i)).collect();
    let ends: Vec<(usize, usize, &Edge)> = graph
        .edges
        .iter()
        .filter_map(|e| Some((*index.get(e.parent.as_str())?, *index.get(e.child.as_str())?, e)))
        .filter(|(p, c, _)| p != c)
        .collect();
    let mut in_edge = vec![false; n];
    let mut parents: Vec<Vec<(usize, &Edge)>> = vec![Vec::new(); n];
    let mut kids: Vec<Vec<usize>> = vec![Vec::new(); n];
    for &(p, c, e) in &ends {
        in_edge[p] = true;
        in_edge[c] = true;
        parents[c].push((p, e));
        kids[p].push(c);
    }
    let level = levels(&parents, &kids);

    // The placement tree: per model its deepest parent (ties: the more confident edge, then the smaller id).
    let mut tree_kids: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut has_tree_parent = vec![false; n];
    for c in 0..n {
        let best = parents[c].iter().filter(|(p, _)| level[*p] < level[c]).max_by(|(pa, ea), (pb, eb)| {
            level[*pa].cmp(&level[*pb]).then(ea.confidence.total_cmp(&eb.confidence)).then(pb.cmp(pa))
        });
        if let Some((p, _)) = best {
            tree_kids[*p].push(c);
            has_tree_parent[c] = true;
        }
    }
    for list in &mut tree_kids {
        list.sort_unstable();
        list.dedup();
    }
    let mut roots: Vec<usize> = (0..n).filter(|&i| in_edge[i] && !has_tree_parent[i]).collect();
    let size = |root: usize| {
        let (mut count, mut stack, mut seen) = (0usize, vec![root], vec![false; n]);
        while let Some(x) = stack.pop() {
            if !std::mem::replace(&mut seen[x], true) {
                count += 1;
                stack.extend(&tree_kids[x]);
            }
        }
        count
    };
    roots.sort_by_key(|&r| (std::cmp::Reverse(size(r)), r));

    let mut row_y = vec![0.0f64; n];
    let mut placed = vec![false; n];
    let mut next_row = 0.0f64;
    let mut trees = 0;
    for &root in &roots {
        if placed[root] {
            continue;
        }
        place_tree(root, &tree_kids, &mut placed, &mut row_y, &mut next_row);
        next_row += TREE_GAP;
        trees += 1;
    }
    // Anything left in an edge sits in a cycle the stored data should not hold; place it anyway.
    for i in 0..n {
        if in_edge[i] && !placed[i] {
            place_tree(i, &tree_kids, &mut placed, &mut row_y, &mut next_row);
            next_row += TREE_GAP;
            trees += 1;
        }
    }
    let loners: Vec<usize> = (0..n).filter(|&i| !placed[i]).collect();
    let loners_caption = (!loners.is_empty()).then(|| {
        let caption = MARGIN + next_row * ROW_H + ROW_H * 0.5;
        next_row += 1.0;
        caption
    });
    for &i in &loners {
        row_y[i] = next_row;
        placed[i] = true;
        next_row += 1.0;
    }

    // Columns: wide enough for the longest label placed in them.
    let labels = labels(graph);
    let column = |i: usize| if in_edge[i] { level[i] } else { 0 };
    let columns = (0..n).map(column).max().map_or(1, |m| m + 1);
    let mut label_chars = vec![0usize; columns];
    for (i, label) in labels.iter().enumerate() {
        let c = column(i);
        label_chars[c] = label_chars[c].max(label.chars().count());
    }
    let mut col_x = Vec::with_capacity(columns);
    let mut x = MARGIN + NODE_R;
    for chars in &label_chars {
        col_x.push(x);
        x += 2.0 * NODE_R + LABEL_GAP + *chars as f64 * CHAR_W + COL_GAP;
    }
    let width = (x - COL_GAP + MARGIN).max(320.0);
    let pos: Vec<(f64, f64)> = (0..n).map(|i| (col_x[column(i)], MARGIN + (row_y[i] + 0.5) * ROW_H)).collect();
    let label_end: Vec<f64> =
        (0..n).map(|i| pos[i].0 + NODE_R + LABEL_GAP + labels[i].chars().count() as f64 * CHAR_W).collect();
    let height = (MARGIN * 2.0 + next_row.max(1.0) * ROW_H).ceil();
    Layout { pos, labels, label_end, width: width.ceil(), height, trees, loners_caption }
}

/// Longest-path levels over the edges (Kahn's order). Models in a cycle, which a solve does not produce, are
/// released one at a time in index order so the walk always ends.
fn levels(parents: &[Vec<(usize, &Edge)>], kids: &[Vec<usize>]) -> Vec<usize> {
    let n = parents.len();
    let mut indegree: Vec<usize> = parents.iter().map(Vec::len).collect();
    let mut level = vec![0usize; n];
    let mut done = vec![false; n];
    let mut queue: std::collections::VecDeque<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
    let mut processed = 0;
    while processed < n {
        let next = match queue.pop_front() {
            Some(i) => i,
            None => match (0..n).find(|&i| !done[i]) {
                Some(i) => i,
                None => break,
            },
        };
        if std::mem::replace(&mut done[next], true) {
            continue;
        }
        processed += 1;
        for &c in &kids[next] {
            if done[c] {
                continue;
            }
            level[c] = level[c].max(level[next] + 1);
            indegree[c] = indegree[c].saturating_sub(1);
            if indegree[c] == 0 {
                queue.push_back(c);
            }
        }
    }
    level
}

/// Places one tree, iteratively (a long chain must not overflow the stack): leaves take the next row, a parent
/// the middle of its placed children.
fn place_tree(root: usize, kids: &[Vec<usize>], placed: &mut [bool], row_y: &mut [f64], next_row: &mut f64) {
    let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
    let mut first_last: BTreeMap<usize, (f64, f64)> = BTreeMap::new();
    placed[root] = true;
    while let Some(&(node, k)) = stack.last() {
        let top = stack.len() - 1;
        if let Some(&child) = kids[node].get(k) {
            stack[top].1 += 1;
            if !placed[child] {
                placed[child] = true;
                stack.push((child, 0));
            }
            continue;
        }
        stack.pop();
        let y = match first_last.get(&node) {
            Some(&(first, last)) => (first + last) / 2.0,
            None => {
                let y = *next_row;
                *next_row += 1.0;
                y
            }
        };
        row_y[node] = y;
        if let Some(&(parent, _)) = stack.last() {
            first_last.entry(parent).and_modify(|fl| fl.1 = y).or_insert((y, y));
        }
    }
}

fn severity_word(s: Severity) -> &'static str {
    match s {
        Severity::Error => "errors",
        Severity::Warning => "warnings",
        Severity::Info => "info",
    }
}

/// The forest as an SVG element.
fn forest_svg(graph: &Graph, layout: &Layout) -> String {
    let index: BTreeMap<&str, usize> = graph.nodes.iter().enumerate().map(|(i, node)| (node.id.as_str(), i)).collect();
    let by_child = graph.findings_by_child();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<svg id=\"forest\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" \
         aria-label=\"the recovered model forest\">",
        w = layout.width,
        h = layout.height
    );
    out.push_str("<g class=\"edges\">\n");
    for e in &graph.edges {
        let (Some(&p), Some(&c)) = (index.get(e.parent.as_str()), index.get(e.child.as_str())) else { continue };
        let ((x1, y1), (x2, y2)) = (layout.pos[p], layout.pos[c]);
        // Leave the parent after its label, unless the child sits left of that (an unusual merge).
        let sx = if layout.label_end[p] + 4.0 < x2 - NODE_R { layout.label_end[p] + 4.0 } else { x1 + NODE_R };
        let ex = x2 - NODE_R;
        let mid = (sx + ex) / 2.0;
        let _ = writeln!(
            out,
            "<path class=\"edge rel-{rel} src-{src}\" data-parent=\"{pid}\" data-child=\"{cid}\" stroke=\"{colour}\" \
             stroke-width=\"{sw:.2}\" d=\"M{sx:.1} {y1:.1} C{mid:.1} {y1:.1} {mid:.1} {y2:.1} {ex:.1} {y2:.1}\">\
             <title>{pid} → {cid}: {rel} {conf:.2} ({src})</title></path>",
            rel = e.relation.as_str(),
            src = e.source.as_str(),
            pid = xml_escape(&e.parent),
            cid = xml_escape(&e.child),
            colour = relation_colour(e.relation),
            sw = 1.2 + 1.3 * e.confidence.clamp(0.0, 1.0),
            conf = e.confidence,
        );
    }
    out.push_str("</g>\n<g class=\"nodes\">\n");
    for (i, node) in graph.nodes.iter().enumerate() {
        let (x, y) = layout.pos[i];
        let (count, worst) = by_child.get(node.id.as_str()).map_or((0, None), |(c, s)| (*c, Some(*s)));
        let sev = worst.map_or("none", Severity::as_str);
        let license_text = node.license.raw.as_deref().unwrap_or("");
        let _ = writeln!(
            out,
            "<g class=\"node sev-{sev} lic-{class}\" data-id=\"{id}\" data-license=\"{lic}\" \
             transform=\"translate({x:.1} {y:.1})\" tabindex=\"0\"><title>{id}&#10;license: {lic_desc}&#10;status: \
             {status}&#10;audit findings: {count}</title><circle r=\"{r}\" fill=\"{fill}\"/>\
             <text x=\"{tx:.1}\" y=\"4\">{label}</text></g>",
            class = node.license.class.as_str(),
            id = xml_escape(&node.id),
            lic = xml_escape(&format!("{} {}", license_text, node.license.id)),
            lic_desc = xml_escape(&match &node.license.raw {
                Some(raw) => format!("{} ({})", truncate(raw, 80), node.license.describe()),
                None => "missing".to_owned(),
            }),
            status = xml_escape(&node.status),
            r = NODE_R,
            tx = NODE_R + LABEL_GAP,
            fill = class_colour(node.license.class),
            label = xml_escape(&layout.labels[i]),
        );
    }
    out.push_str("</g>\n");
    if let Some(y) = layout.loners_caption {
        let _ = writeln!(
            out,
            "<text class=\"caption\" x=\"{MARGIN}\" y=\"{y:.1}\">no relative among the models seen</text>"
        );
    }
    out.push_str("</svg>");
    out
}

fn legend(graph: &Graph) -> String {
    let mut out = String::new();
    out.push_str("<div class=\"legend-group\"><span class=\"legend-title\">relation</span>");
    for r in Relation::ALL {
        let count = graph.edges.iter().filter(|e| e.relation == r).count();
        let _ = write!(
            out,
            "<span class=\"legend-item\"><svg width=\"26\" height=\"10\" aria-hidden=\"true\"><line x1=\"1\" y1=\"5\" \
             x2=\"25\" y2=\"5\" stroke=\"{}\" stroke-width=\"3\"/></svg>{} <span class=\"n\">{count}</span></span>",
            relation_colour(r),
            r.as_str()
        );
    }
    out.push_str(
        "<span class=\"legend-item\"><svg width=\"26\" height=\"10\" aria-hidden=\"true\"><line x1=\"1\" y1=\"5\" \
         x2=\"25\" y2=\"5\" stroke=\"#6b7280\" stroke-width=\"2\" stroke-dasharray=\"4 3\"/></svg>metadata only</span>",
    );
    out.push_str("</div><div class=\"legend-group\"><span class=\"legend-title\">license</span>");
    for c in CLASSES {
        let count = graph.nodes.iter().filter(|n| n.license.class == c).count();
        if count == 0 {
            continue;
        }
        let _ = write!(
            out,
            "<span class=\"legend-item\"><svg width=\"14\" height=\"14\" aria-hidden=\"true\"><circle cx=\"7\" cy=\"7\" \
             r=\"5.5\" fill=\"{}\" stroke=\"#374151\"/></svg>{} <span class=\"n\">{count}</span></span>",
            class_colour(c),
            c.as_str()
        );
    }
    out.push_str("</div><div class=\"legend-group\"><span class=\"legend-title\">audit</span>");
    for s in [Severity::Error, Severity::Warning] {
        let _ = write!(
            out,
            "<span class=\"legend-item\"><svg width=\"14\" height=\"14\" aria-hidden=\"true\"><circle class=\"ring-{s}\" \
             cx=\"7\" cy=\"7\" r=\"5\" fill=\"#fff\"/></svg>{s}</span>",
            s = s.as_str()
        );
    }
    out.push_str("</div>");
    out
}

fn findings_html(findings: &[Finding]) -> String {
    let mut out = String::new();
    if findings.is_empty() {
        out.push_str("<p class=\"empty\">No findings: every edge's licenses are compatible and every card agrees with the weights.</p>");
        return out;
    }
    for severity in [Severity::Error, Severity::Warning, Severity::Info] {
        let group: Vec<&Finding> = findings.iter().filter(|f| f.severity == severity).collect();
        if group.is_empty() {
            continue;
        }
        let open = if severity == Severity::Info { "" } else { " open" };
        let _ = writeln!(
            out,
            "<details class=\"group sev-{s}\"{open}><summary>{} <span class=\"n\">{}</span></summary><ol>",
            severity_word(severity),
            group.len(),
            s = severity.as_str()
        );
        for f in group {
            let mut evidence = Vec::new();
            if let Some(r) = f.relation {
                evidence.push(r.as_str().to_owned());
            }
            if let Some(s) = f.source {
                evidence.push(format!("from {}", s.as_str()));
            }
            if let Some(c) = f.confidence {
                evidence.push(format!("confidence {c:.2}"));
            }
            if let Some(p) = &f.parent_license {
                evidence.push(format!("parent {}", truncate(&p.describe(), 60)));
            }
            evidence.push(format!("child {}", truncate(&f.child_license.describe(), 60)));
            if !f.declared_bases.is_empty() {
                evidence.push(format!("declared {}", f.declared_bases.join(", ")));
            }
            let edge = match &f.parent {
                Some(p) => format!(
                    "<span class=\"id\">{}</span> → <span class=\"id\">{}</span>",
                    xml_escape(p),
                    xml_escape(&f.child)
                ),
                None => format!("<span class=\"id\">{}</span>", xml_escape(&f.child)),
            };
            let _ = writeln!(
                out,
                "<li class=\"finding\" tabindex=\"0\" data-child=\"{}\" data-parent=\"{}\"><div class=\"kind\">{}</div>\
                 <div class=\"edge\">{edge}</div><div class=\"msg\">{}</div><div class=\"ev\">{}</div></li>",
                xml_escape(&f.child),
                xml_escape(f.parent.as_deref().unwrap_or("")),
                f.kind.as_str(),
                xml_escape(&f.message),
                xml_escape(&evidence.join(" · ")),
            );
        }
        out.push_str("</ol></details>\n");
    }
    out
}

/// Fills `{{name}}` placeholders in one pass, so a value that itself contains `{{…}}` (a hostile id) is never
/// expanded.
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() + values.iter().map(|(_, v)| v.len()).sum::<usize>());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find("}}").and_then(|end| values.iter().find(|(k, _)| *k == &after[..end]).map(|(_, v)| (end, v))) {
            Some((end, value)) => {
                out.push_str(value);
                rest = &after[end + 2..];
            }
            None => {
                out.push_str("{{");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The whole report.
pub fn report(graph: &Graph) -> String {
    let layout = layout(graph);
    let count = |s: Severity| graph.findings.iter().filter(|f| f.severity == s).count();
    let summary = format!(
        "{} models · {} edges · {} trees · audit: <b class=\"t-error\">{}</b> {} · <b class=\"t-warning\">{}</b> {} · {} {}",
        graph.nodes.len(),
        graph.edges.len(),
        layout.trees,
        count(Severity::Error),
        severity_word(Severity::Error),
        count(Severity::Warning),
        severity_word(Severity::Warning),
        count(Severity::Info),
        severity_word(Severity::Info),
    );
    fill(
        TEMPLATE,
        &[
            ("summary", &summary),
            ("legend", &legend(graph)),
            ("forest", &forest_svg(graph, &layout)),
            ("findings", &findings_html(&graph.findings)),
            ("models", &graph.nodes.len().to_string()),
        ],
    )
}

#[cfg(test)]
mod tests {
    use lineage::EdgeSource;

    use super::*;
    use crate::export::Node;

    fn graph(ids: &[&str], edges: &[(&str, &str, Relation)]) -> Graph {
        let nodes = ids
            .iter()
            .map(|id| Node {
                id: (*id).into(),
                license: audit::normalize(Some("mit")),
                declared_bases: vec![],
                declared_relation: None,
                status: "indexed".into(),
            })
            .collect();
        let edges = edges
            .iter()
            .map(|(p, c, r)| Edge {
                parent: (*p).into(),
                child: (*c).into(),
                relation: *r,
                confidence: 0.9,
                source: EdgeSource::Weights,
            })
            .collect();
        Graph::new(nodes, edges, vec![])
    }

    /// Row (in leaf units) and column of each id, read back from pixels.
    fn check_layout(g: &Graph, expected: &[(&str, f64, usize)]) {
        let l = layout(g);
        let mut cols: Vec<f64> = l.pos.iter().map(|p| p.0).collect();
        cols.sort_by(f64::total_cmp);
        cols.dedup();
        for (id, row, col) in expected {
            let i = g.nodes.iter().position(|n| n.id == *id).expect("id");
            let (x, y) = l.pos[i];
            assert_eq!(((y - MARGIN) / ROW_H - 0.5, cols.iter().position(|c| *c == x)), (*row, Some(*col)), "{id}");
        }
    }

    #[test]
    fn tidy_layout_centres_parents_and_puts_merges_right_of_both_parents() {
        use Relation::*;
        let g = graph(
            &["r", "a", "b", "m", "q", "x", "s", "t"],
            &[
                ("r", "a", Finetune),
                ("r", "b", Lora),
                ("a", "q", Quantized),
                ("a", "m", Merge),
                ("q", "m", Merge),
                ("s", "t", Duplicate),
            ],
        );
        // r's tree first (the bigger one); m hangs under q (the deeper parent); then s's tree; then the loner x.
        check_layout(
            &g,
            &[
                ("m", 0.0, 3),
                ("q", 0.0, 2),
                ("a", 0.0, 1),
                ("b", 1.0, 1),
                ("r", 0.5, 0),
                ("t", 1.0 + TREE_GAP + 1.0, 1),
                ("s", 1.0 + TREE_GAP + 1.0, 0),
                ("x", 2.0 + 2.0 * TREE_GAP + 2.0, 0),
            ],
        );
        let l = layout(&g);
        assert_eq!(l.trees, 2);
        assert!(l.loners_caption.is_some());
    }

    #[test]
    fn layout_survives_cycles_and_long_chains() {
        let g = graph(&["a", "b"], &[("a", "b", Relation::Finetune), ("b", "a", Relation::Finetune)]);
        let l = layout(&g);
        assert!(l.pos.iter().all(|p| p.0.is_finite() && p.1.is_finite()));
        let ids: Vec<String> = (0..5000).map(|i| format!("c/{i:05}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let edges: Vec<(&str, &str, Relation)> = refs.windows(2).map(|w| (w[0], w[1], Relation::Finetune)).collect();
        let l = layout(&graph(&refs, &edges));
        assert_eq!(l.trees, 1);
    }

    #[test]
    fn fill_is_one_pass() {
        assert_eq!(fill("a{{x}}b{{y}}c{{z}}", &[("x", "{{y}}"), ("y", "Y")]), "a{{y}}bYc{{z}}");
        assert_eq!(fill("{{", &[]), "{{");
    }

    #[test]
    fn report_is_self_contained_and_escapes_hostile_ids() {
        let g = crate::export::tests::hostile_graph();
        let html = report(&g);
        assert!(!html.contains("<script>alert"), "hostile markup must be escaped");
        assert_eq!(html.matches("<svg id=\"forest\"").count(), 1);
        assert_eq!(html.matches("<g class=\"node ").count(), g.nodes.len());
        assert!(html.contains("evil/&quot;&gt;&lt;script&gt;"));
        // No external asset: nothing is fetched from a URL (the one in the hostile license is escaped text).
        for needle in ["src=", "href=", "@import", "url("] {
            assert!(!html.contains(needle), "{needle}");
        }
        assert!(html.contains("Content-Security-Policy"));
    }
}
