//! Scoring a [`Recovery`] against ground truth.
//!
//! Three views, as in the literature: MoTHer's edge accuracy (a truth edge counts when the recovery has the same
//! parent → child edge, whatever its type), typed-edge precision / recall / F1 (parent, child and relation must
//! all match; TensorLock's DF1), and the adjusted Rand index between the truth families (connected components of
//! the truth edges, singletons included) and the recovered families. A per-relation breakdown shows where the
//! typed errors sit.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::Recovery;
use crate::union_find::UnionFind;

/// One ground-truth entry: `model` was made from `parents` (empty for a root) by `relation`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truth {
    pub model: String,
    pub parents: Vec<String>,
    /// `finetune`, `lora`, `adapter`, `quantized`, `merge` or `duplicate`; compared case-insensitively. Anything
    /// for a root (it has no edges).
    pub relation: String,
}

/// Precision / recall / F1 of the typed edges of one relation.
#[derive(Clone, Debug, PartialEq)]
pub struct RelationScore {
    pub relation: String,
    pub tp: usize,
    pub fp: usize,
    pub fn_: usize,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

/// Sizes behind the ratios.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counts {
    /// Distinct models in the truth, the truth parents and the recovered families.
    pub models: usize,
    pub truth_edges: usize,
    pub recovered_edges: usize,
    /// Truth edges found with the right parent and direction (the numerator of edge accuracy).
    pub placed: usize,
    /// Edges whose parent, child and relation all match (typed true positives).
    pub typed_matches: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Score {
    /// MoTHer's metric: truth edges recovered with the right parent and direction, over all truth edges.
    pub edge_accuracy: f64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Adjusted Rand index between truth and recovered families.
    pub ari: f64,
    /// One row per relation seen in the truth or the recovery, sorted by name.
    pub per_relation: Vec<RelationScore>,
    pub counts: Counts,
}

/// Scores `recovery` against `truth`. Ratios with an empty denominator count as 1 (nothing to find, nothing
/// found wrongly), so an empty truth scored against an empty recovery is perfect.
pub fn score(truth: &[Truth], recovery: &Recovery) -> Score {
    let truth_edges: BTreeSet<(String, String, String)> = truth
        .iter()
        .flat_map(|t| {
            let relation = t.relation.trim().to_ascii_lowercase();
            t.parents.iter().map(move |p| (p.clone(), t.model.clone(), relation.clone()))
        })
        .collect();
    let recovered: BTreeSet<(String, String, String)> =
        recovery.edges.iter().map(|e| (e.parent.clone(), e.child.clone(), e.relation.as_str().to_owned())).collect();
    let recovered_pairs: BTreeSet<(&str, &str)> = recovered.iter().map(|(p, c, _)| (p.as_str(), c.as_str())).collect();
    let truth_pairs: BTreeSet<(&str, &str)> = truth_edges.iter().map(|(p, c, _)| (p.as_str(), c.as_str())).collect();

    let placed = truth_pairs.iter().filter(|pair| recovered_pairs.contains(*pair)).count();
    let typed_matches = truth_edges.intersection(&recovered).count();

    let mut per: BTreeMap<&str, (usize, usize, usize)> = BTreeMap::new();
    for edge in &truth_edges {
        let row = per.entry(edge.2.as_str()).or_default();
        if recovered.contains(edge) {
            row.0 += 1;
        } else {
            row.2 += 1;
        }
    }
    for edge in &recovered {
        if !truth_edges.contains(edge) {
            per.entry(edge.2.as_str()).or_default().1 += 1;
        }
    }
    let per_relation = per
        .into_iter()
        .map(|(relation, (tp, fp, fn_))| {
            let (precision, recall, f1) = prf(tp, fp, fn_);
            RelationScore { relation: relation.to_owned(), tp, fp, fn_, precision, recall, f1 }
        })
        .collect();

    let (precision, recall, f1) =
        prf(typed_matches, recovered.len() - typed_matches, truth_edges.len() - typed_matches);
    let (ari, models) = families_ari(truth, recovery);
    Score {
        edge_accuracy: ratio(placed, truth_pairs.len()),
        precision,
        recall,
        f1,
        ari,
        per_relation,
        counts: Counts {
            models,
            truth_edges: truth_edges.len(),
            recovered_edges: recovered.len(),
            placed,
            typed_matches,
        },
    }
}

fn ratio(num: usize, den: usize) -> f64 {
    if den == 0 { 1.0 } else { num as f64 / den as f64 }
}

fn prf(tp: usize, fp: usize, fn_: usize) -> (f64, f64, f64) {
    let precision = ratio(tp, tp + fp);
    let recall = ratio(tp, tp + fn_);
    let f1 = if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
    (precision, recall, f1)
}

/// ARI over every model named anywhere; a model missing from one side's partition is a singleton there.
fn families_ari(truth: &[Truth], recovery: &Recovery) -> (f64, usize) {
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut names: Vec<&str> = Vec::new();
    for t in truth {
        for name in std::iter::once(&t.model).chain(&t.parents) {
            if !index.contains_key(name.as_str()) {
                index.insert(name.as_str(), names.len());
                names.push(name.as_str());
            }
        }
    }
    for family in &recovery.families {
        for name in family {
            if !index.contains_key(name.as_str()) {
                index.insert(name.as_str(), names.len());
                names.push(name.as_str());
            }
        }
    }
    let n = names.len();
    let mut truth_uf = UnionFind::new(n);
    for t in truth {
        for p in &t.parents {
            truth_uf.union(index[t.model.as_str()], index[p.as_str()]);
        }
    }
    let mut recovered_uf = UnionFind::new(n);
    for family in &recovery.families {
        for pair in family.windows(2) {
            recovered_uf.union(index[pair[0].as_str()], index[pair[1].as_str()]);
        }
    }
    let a: Vec<usize> = (0..n).map(|x| truth_uf.find(x)).collect();
    let b: Vec<usize> = (0..n).map(|x| recovered_uf.find(x)).collect();
    (adjusted_rand_index(&a, &b), n)
}

/// Hubert–Arabie adjusted Rand index of two labelings of the same items. When the expected index equals the
/// maximum (fewer than two items, or both sides all singletons or all one cluster) it is 1 for equal partitions.
pub fn adjusted_rand_index(a: &[usize], b: &[usize]) -> f64 {
    let pairs = |x: usize| (x * x.saturating_sub(1) / 2) as f64;
    let mut joint: HashMap<(usize, usize), usize> = HashMap::new();
    let mut left: HashMap<usize, usize> = HashMap::new();
    let mut right: HashMap<usize, usize> = HashMap::new();
    for (&x, &y) in a.iter().zip(b) {
        *joint.entry((x, y)).or_default() += 1;
        *left.entry(x).or_default() += 1;
        *right.entry(y).or_default() += 1;
    }
    let index: f64 = joint.values().map(|&c| pairs(c)).sum();
    let sum_a: f64 = left.values().map(|&c| pairs(c)).sum();
    let sum_b: f64 = right.values().map(|&c| pairs(c)).sum();
    let total = pairs(a.len().min(b.len()));
    let expected = if total > 0.0 { sum_a * sum_b / total } else { 0.0 };
    let maximum = (sum_a + sum_b) / 2.0;
    if (maximum - expected).abs() < 1e-12 {
        return if joint.len() == left.len() && joint.len() == right.len() { 1.0 } else { 0.0 };
    }
    (index - expected) / (maximum - expected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Edge, EdgeSource, Relation};

    fn truth(rows: &[(&str, &[&str], &str)]) -> Vec<Truth> {
        rows.iter()
            .map(|(m, ps, r)| Truth {
                model: (*m).to_owned(),
                parents: ps.iter().map(|p| (*p).to_owned()).collect(),
                relation: (*r).to_owned(),
            })
            .collect()
    }

    fn recovery(edges: &[(&str, &str, Relation)], families: &[&[&str]]) -> Recovery {
        Recovery {
            edges: edges
                .iter()
                .map(|(p, c, r)| Edge {
                    parent: (*p).to_owned(),
                    child: (*c).to_owned(),
                    relation: *r,
                    confidence: 1.0,
                    source: EdgeSource::Weights,
                })
                .collect(),
            families: families.iter().map(|f| f.iter().map(|m| (*m).to_owned()).collect()).collect(),
        }
    }

    /// Checks (edge accuracy, precision, recall, ari) to 1e-9.
    fn check(truth: &[Truth], recovery: &Recovery, expected: (f64, f64, f64, f64)) -> Score {
        let s = score(truth, recovery);
        let got = (s.edge_accuracy, s.precision, s.recall, s.ari);
        let close = |x: f64, y: f64| (x - y).abs() < 1e-9;
        assert!(
            close(got.0, expected.0)
                && close(got.1, expected.1)
                && close(got.2, expected.2)
                && close(got.3, expected.3),
            "got {got:?}, expected {expected:?}"
        );
        s
    }

    fn base_truth() -> Vec<Truth> {
        truth(&[
            ("a", &[], "root"),
            ("b", &["a"], "finetune"),
            ("c", &["a"], "LoRA"),
            ("m", &["b", "c"], "merge"),
            ("z", &[], "root"),
        ])
    }

    #[test]
    fn perfect_recovery() {
        let r = recovery(
            &[
                ("a", "b", Relation::Finetune),
                ("a", "c", Relation::Lora),
                ("b", "m", Relation::Merge),
                ("c", "m", Relation::Merge),
            ],
            &[&["a", "b", "c", "m"], &["z"]],
        );
        let s = check(&base_truth(), &r, (1.0, 1.0, 1.0, 1.0));
        assert_eq!(s.counts, Counts { models: 5, truth_edges: 4, recovered_edges: 4, placed: 4, typed_matches: 4 });
        assert!((s.f1 - 1.0).abs() < 1e-12);
    }

    #[test]
    fn wrong_direction_and_wrong_type() {
        // b→a is reversed (not placed, and both an fp and an fn); a→c placed but typed finetune instead of lora.
        let r = recovery(
            &[("b", "a", Relation::Finetune), ("a", "c", Relation::Finetune), ("b", "m", Relation::Merge)],
            &[&["a", "b", "c", "m"], &["z"]],
        );
        let s = check(&base_truth(), &r, (0.5, 1.0 / 3.0, 0.25, 1.0));
        let rows: Vec<(&str, usize, usize, usize)> =
            s.per_relation.iter().map(|r| (r.relation.as_str(), r.tp, r.fp, r.fn_)).collect();
        assert_eq!(rows, vec![("finetune", 0, 2, 1), ("lora", 0, 0, 1), ("merge", 1, 0, 1)]);
    }

    #[test]
    fn ari_penalises_split_and_merged_families() {
        let t = truth(&[("a", &[], ""), ("b", &["a"], "finetune"), ("c", &[], ""), ("d", &["c"], "finetune")]);
        // Everything lumped into one family.
        let r = recovery(&[("a", "b", Relation::Finetune)], &[&["a", "b", "c", "d"]]);
        let s = check(&t, &r, (0.5, 1.0, 0.5, 0.0));
        assert_eq!(s.counts.models, 4);
        // Families exactly right, no edges: ari 1, nothing predicted so precision is vacuously 1.
        let r = recovery(&[], &[&["a", "b"], &["c", "d"]]);
        check(&t, &r, (0.0, 1.0, 0.0, 1.0));
    }

    #[test]
    fn ari_reference_values() {
        // sklearn.metrics.adjusted_rand_score([0,0,1,1],[0,0,1,2]) = 0.5714285714285715
        assert!((adjusted_rand_index(&[0, 0, 1, 1], &[0, 0, 1, 2]) - 0.571_428_571_428_571_5).abs() < 1e-12);
        // adjusted_rand_score([0,0,0,1,1,1],[0,0,1,1,2,2]) = 0.24242424242424243
        assert!(
            (adjusted_rand_index(&[0, 0, 0, 1, 1, 1], &[0, 0, 1, 1, 2, 2]) - 0.242_424_242_424_242_43).abs() < 1e-12
        );
        assert_eq!(adjusted_rand_index(&[0, 1, 2], &[5, 6, 7]), 1.0);
        assert_eq!(adjusted_rand_index(&[0, 0], &[1, 1]), 1.0);
        assert_eq!(adjusted_rand_index(&[], &[]), 1.0);
    }

    #[test]
    fn empty_truth_and_recovery_is_perfect() {
        check(&[], &recovery(&[], &[]), (1.0, 1.0, 1.0, 1.0));
    }
}
