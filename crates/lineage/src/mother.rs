//! MoTHer (Horwitz et al., "Unsupervised Model Tree Heritage Recovery", ICLR 2025) on signatures.
//!
//! The recipe of the reference code (eliahuhorwitz/MoTHer, MoTHer_FullFT.py and MDST.py), with what signatures
//! force us to change:
//! - **Layers**: square 2-D weights only (q/o projections in a GQA Llama; all 2-D slots if none is square, as
//!   later reimplementations do for Gemma).
//! - **ℓ_FT distance**: per layer, the signed difference `Δ = W_i − W_j` (`i < j` in ascending id order),
//!   min-max normalised with that layer's minimum and maximum over all pairwise `Δ` in the cluster, then the
//!   maximum of the normalised `Δ` (the signed max, as the code has it, not `max|Δ|`); the model distance is
//!   the maximum over layers. We only hold values at the scheme's seeded sample positions (paired across
//!   models), so every max and min is taken over those positions: an L∞ proxy that sees a few hundred entries
//!   per layer rather than all of them. Without samples the sketch entries stand in.
//! - **Direction**: `ku` = summed population excess kurtosis (scipy's default) of the attention-output layers
//!   (`o_proj`, `out_proj`, `c_proj`, `wo`, `dense`; all square layers when none is named so), from the
//!   tensors' exact moments. `K_ij = 1[ku_j > ku_i]` for the edge `i → j`, cost `M = D + λ·mean(D)·K` with
//!   λ = 0.3 and `mean(D)` over the full matrix including its zero diagonal.
//! - **Solve**: Chu-Liu/Edmonds on the complete digraph of each cluster; the virtual root's edges cost more
//!   than any tree, so exactly one root per cluster, as networkx's minimum spanning arborescence gives.
//! - **Clusters**: MoTHer's Ward clustering needs the number of trees as an oracle; here the clusters are the
//!   same relatedness families the default method uses. Adapters and models without sketches are outside the
//!   recipe and get no edge; every edge is typed `finetune`, since MoTHer knows no types.

use crate::edmonds::min_arborescence;
use crate::index::{FamilySolve, FamilyView, Group, Placed};
use crate::solve::unplaced_full_by_group;
use crate::{EdgeSource, Options, Relation};

const OUTPUT_LAYER_NAMES: [&str; 5] = ["o_proj", "out_proj", "c_proj", ".wo.", "dense"];

/// Solves one family; `members` are node ids in id order, the order MoTHer's `i < j` refers to. MoTHer caches
/// nothing, so it learns nothing for the index to keep.
pub(crate) fn solve_family(ix: &FamilyView<'_, '_>, members: &[usize]) -> FamilySolve {
    let mut edges = Vec::new();
    for (g, positions) in unplaced_full_by_group(ix, members) {
        if positions.len() >= 2 {
            solve_cluster(ix, ix.group(g), &positions, ix.options(), &mut edges);
        }
    }
    FamilySolve { placed: edges, ..FamilySolve::default() }
}

/// Values standing in for a layer's weights: the paired samples, or the sketch when there are none.
fn layer_values<'g>(ix: &FamilyView<'g, '_>, member: usize, slot: usize) -> &'g [f32] {
    let node = ix.node(member);
    let t = node.tensor(slot);
    if t.samples.is_empty() { node.sketch(slot) } else { &t.samples }
}

fn solve_cluster(
    ix: &FamilyView<'_, '_>,
    group: &Group,
    positions: &[usize],
    options: &Options,
    edges: &mut Vec<Placed>,
) {
    let n = positions.len();
    let square: Vec<usize> = (0..group.slots.len()).filter(|&t| group.slots[t].is_square()).collect();
    let layers: Vec<usize> = if square.is_empty() { (0..group.slots.len()).collect() } else { square };
    let output: Vec<usize> = layers
        .iter()
        .copied()
        .filter(|&t| OUTPUT_LAYER_NAMES.iter().any(|name| group.slots[t].name.contains(name)))
        .collect();
    let kurtosis_layers = if output.is_empty() { &layers } else { &output };

    // Per-layer min and max of the signed pairwise differences over the cluster.
    let mut range = vec![(f64::INFINITY, f64::NEG_INFINITY); layers.len()];
    for (l, &t) in layers.iter().enumerate() {
        for i in 0..n {
            for j in i + 1..n {
                let (a, b) = (layer_values(ix, positions[i], t), layer_values(ix, positions[j], t));
                for (x, y) in a.iter().zip(b) {
                    let delta = f64::from(*x) - f64::from(*y);
                    range[l].0 = range[l].0.min(delta);
                    range[l].1 = range[l].1.max(delta);
                }
            }
        }
    }
    let mut dist = vec![0.0; n * n];
    for i in 0..n {
        for j in i + 1..n {
            let mut d = f64::NEG_INFINITY;
            for (l, &t) in layers.iter().enumerate() {
                let (lo, hi) = range[l];
                let width = hi - lo;
                let (a, b) = (layer_values(ix, positions[i], t), layer_values(ix, positions[j], t));
                let top = a.iter().zip(b).map(|(x, y)| f64::from(*x) - f64::from(*y)).fold(f64::NEG_INFINITY, f64::max);
                let normalised = if width > 0.0 && top.is_finite() { (top - lo) / width } else { 0.0 };
                d = d.max(normalised);
            }
            let d = if d.is_finite() { d } else { 0.0 };
            dist[i * n + j] = d;
            dist[j * n + i] = d;
        }
    }
    let mean = dist.iter().sum::<f64>() / (n * n) as f64;
    let ku: Vec<f64> = positions
        .iter()
        .map(|&q| {
            kurtosis_layers.iter().filter_map(|&t| ix.node(q).tensor(t).moments.map(|m| m.excess_kurtosis())).sum()
        })
        .collect();

    let cost = |i: usize, j: usize| dist[i * n + j] + if ku[j] > ku[i] { options.mother_lambda * mean } else { 0.0 };
    let mut all: Vec<(usize, usize, f64)> = Vec::with_capacity(n * n);
    for i in 0..n {
        for j in 0..n {
            if i != j {
                all.push((i, j, cost(i, j)));
            }
        }
    }
    let big = all.iter().map(|e| e.2.abs()).sum::<f64>() + 1.0;
    let root = n;
    all.extend((0..n).map(|j| (root, j, big)));
    let Some(parents) = min_arborescence(n + 1, root, &all) else { return };
    let unit = if mean > 0.0 { mean } else { 1.0 };
    for j in 0..n {
        let Some(i) = parents[j].filter(|&i| i != root) else { continue };
        let next = (0..n).filter(|&u| u != i && u != j).map(|u| cost(u, j)).fold(f64::INFINITY, f64::min);
        let margin = if next.is_finite() { ((next - cost(i, j)) / unit).clamp(0.0, 1.0) } else { 1.0 };
        let direction = ((cost(j, i) - cost(i, j)) / unit).clamp(0.0, 1.0);
        edges.push(Placed {
            parent: positions[i],
            child: positions[j],
            relation: Relation::Finetune,
            confidence: (margin + direction) / 2.0,
            source: EdgeSource::Weights,
        });
    }
}
