//! Candidate maintenance: which pairs of a group are compared exactly, and which of them are related.
//!
//! A group of at most [`crate::Options::dense_limit`] members compares every pair. A larger one compares each
//! member with its screened nearest neighbours ([`crate::Options::screen_neighbours`] of them, both ways) and
//! with the models it declares or that declare it. The screen is a seeded CountSketch of a model's
//! unit-normalised sketches, [`SCREEN_DIM`] numbers whose squared distance estimates `2·(1 − mean sketch
//! cosine)`; neighbours are ordered by (screen distance, id), so the lists are a function of the model set.
//!
//! Each candidate pair gets an exact [`PairSummary`] (mean relative sketch distance, and whether the mean
//! cosine clears the group's relatedness threshold). Related pairs are kept twice per node, by id and by
//! distance, because those are the orders the solvers read; they are also the family links.

use std::collections::BTreeSet;

use signature::ModelSignature;

use super::cache::{pair, sketch_dots};
use super::node::{Group, Node, PairSummary};
use super::view::relative_distance;
use super::{Change, Index};
use crate::Options;
use crate::limits::SCREEN_DIM;
use crate::prepare::Slot;

impl<'a> Index<'a> {
    /// The exact comparison of two members of group `g` (its sketch inner products are cached).
    fn compare(&mut self, g: usize, a: usize, b: usize) -> PairSummary {
        let slots = self.group(g).slots.len();
        if slots == 0 {
            return PairSummary { distance: 0.0, related: false };
        }
        let key = pair(a, b);
        let dots = match self.caches.gram.get(&key) {
            Some(d) => d.clone(),
            None => {
                let d = sketch_dots(self.node(key.0), self.node(key.1));
                self.caches.gram.insert(key, d.clone());
                d
            }
        };
        let (x, y) = (self.node(a), self.node(b));
        let distance = (0..slots).map(|t| relative_distance(x, y, &dots, t)).sum::<f64>() / slots as f64;
        let cosine = (0..slots)
            .map(|t| {
                let den = (x.norms[t] * y.norms[t]).sqrt();
                if den > 0.0 { dots[t] / den } else { 0.0 }
            })
            .sum::<f64>()
            / slots as f64;
        PairSummary { distance, related: cosine > self.group(g).related_threshold }
    }

    /// Puts `x` into its group: screened neighbours both ways, and candidate pairs to settle.
    pub(super) fn join_group(&mut self, x: usize, g: usize, change: &mut Change) {
        let was_dense = self.group(g).dense(&self.options);
        let others: Vec<usize> = self.group(g).members.iter().copied().collect();
        let mut all: Vec<(f32, usize)> =
            others.iter().map(|&v| (screen_distance(&self.node(x).screen, &self.node(v).screen), v)).collect();
        let mut mine = all.clone();
        self.nearest(&mut mine);
        for &(d, v) in &all {
            let node = self.node(v);
            let enters = node.knn.len() < self.options.screen_neighbours
                || node.knn.last().is_some_and(|&last| self.closer((d, x), last));
            if !enters {
                continue;
            }
            let pos = node.knn.partition_point(|&e| self.closer(e, (d, x)));
            let limit = self.options.screen_neighbours;
            let node = self.node_mut(v);
            node.knn.insert(pos, (d, x));
            let dropped = if node.knn.len() > limit { node.knn.pop() } else { None };
            if let Some((_, u)) = dropped {
                self.node_mut(u).rknn.remove(&v);
            }
            self.node_mut(x).rknn.insert(v);
            change.cands.insert(v);
        }
        all.clear();
        for &(_, u) in &mine {
            self.node_mut(u).rknn.insert(x);
        }
        self.node_mut(x).knn = mine;
        if let Some(group) = self.groups[g].as_mut() {
            group.members.insert(x);
        }
        change.cands.insert(x);
        if was_dense != self.group(g).dense(&self.options) {
            change.cands.extend(self.group(g).members.iter().copied());
        }
    }

    /// Sorts by (screen distance, id) and keeps the [`Options::screen_neighbours`] nearest.
    fn nearest(&self, list: &mut Vec<(f32, usize)>) {
        let k = self.options.screen_neighbours;
        if list.len() > k {
            list.select_nth_unstable_by(k, |&a, &b| self.order(a, b));
            list.truncate(k);
        }
        list.sort_by(|&a, &b| self.order(a, b));
    }

    fn order(&self, a: (f32, usize), b: (f32, usize)) -> std::cmp::Ordering {
        a.0.total_cmp(&b.0).then_with(|| self.node(a.1).id.cmp(&self.node(b.1).id))
    }

    fn closer(&self, a: (f32, usize), b: (f32, usize)) -> bool {
        self.order(a, b) == std::cmp::Ordering::Less
    }

    /// Refills `v`'s screened neighbours after one left.
    pub(super) fn refill(&mut self, v: usize, g: usize) {
        while self.node(v).knn.len() < self.options.screen_neighbours {
            let listed: BTreeSet<usize> = self.node(v).knn.iter().map(|e| e.1).collect();
            let best = self
                .group(g)
                .members
                .iter()
                .filter(|&&u| u != v && !listed.contains(&u))
                .map(|&u| (screen_distance(&self.node(v).screen, &self.node(u).screen), u))
                .min_by(|&a, &b| self.order(a, b));
            let Some(best) = best else { return };
            let pos = self.node(v).knn.partition_point(|&e| self.closer(e, best));
            self.node_mut(v).knn.insert(pos, best);
            self.node_mut(best.1).rknn.insert(v);
        }
    }

    /// The candidate partners `a` should have: everyone in a small group; screened neighbours (both ways) and
    /// declared pairs in a large one.
    fn desired(&self, a: usize) -> BTreeSet<usize> {
        let node = self.node(a);
        let Some(g) = node.group else { return BTreeSet::new() };
        let group = self.group(g);
        if group.dense(&self.options) {
            return group.members.iter().copied().filter(|&b| b != a).collect();
        }
        let same = |b: &usize| self.node(*b).group == Some(g);
        node.knn
            .iter()
            .map(|e| e.1)
            .chain(node.rknn.iter().copied())
            .chain(node.declared.iter().copied().filter(same))
            .chain(node.declared_by.iter().copied().filter(same))
            .filter(|&b| b != a)
            .collect()
    }

    pub(super) fn settle_pairs(&mut self, a: usize, change: &mut Change) {
        if self.node_opt(a).is_none() {
            return;
        }
        let desired = self.desired(a);
        let old: Vec<usize> = self.node(a).cands.keys().copied().collect();
        for &b in &old {
            if !desired.contains(&b) {
                self.drop_pair(a, b, change);
            }
        }
        let Some(g) = self.node(a).group else { return };
        for b in desired {
            if !self.node(a).cands.contains_key(&b) {
                let summary = self.compare(g, a, b);
                self.node_mut(a).cands.insert(b, summary);
                self.node_mut(b).cands.insert(a, summary);
                if summary.related {
                    let d = summary.distance;
                    for (x, y) in [(a, b), (b, a)] {
                        let id = self.node(y).id.as_ref();
                        let pos = self.node(x).related.partition_point(|e| self.node(e.0).id.as_ref() < id);
                        let near = self.node(x).near.partition_point(|e| {
                            e.1.total_cmp(&d).then_with(|| self.node(e.0).id.as_ref().cmp(id)).is_lt()
                        });
                        let node = self.node_mut(x);
                        node.related.insert(pos, (y, d));
                        node.near.insert(near, (y, d));
                    }
                }
                // Unrelated candidate pairs never reach the solver: only a new relation touches the family.
                if summary.related {
                    self.link(a, b, change);
                    self.dirty.insert(a);
                    self.dirty.insert(b);
                }
            }
        }
    }

    pub(super) fn drop_pair(&mut self, a: usize, b: usize, change: &mut Change) {
        let Some(summary) = self.node_mut(a).cands.remove(&b) else { return };
        self.node_mut(b).cands.remove(&a);
        if summary.related {
            for (x, y) in [(a, b), (b, a)] {
                let node = self.node_mut(x);
                node.related.retain(|e| e.0 != y);
                node.near.retain(|e| e.0 != y);
            }
        }
        if summary.related {
            self.unlink(a, b, change);
            self.dirty.insert(a);
            self.dirty.insert(b);
        }
    }
}

/// A group for the first model of its key: threshold from the null of independent sketches, and the seeded
/// screening projection (the same for every model of the group, since it depends on slot names and shapes).
pub(super) fn new_group(signature: &ModelSignature, slots: &[Slot], options: &Options) -> Group {
    let k = signature.scheme.sketch_k as usize;
    // Independent weights give per-slot sketch cosines with sd ≈ 1/k; the mean over T slots has sd 1/(k·√T).
    let null_sd = 1.0 / (k.max(1) as f64 * (slots.len().max(1) as f64).sqrt());
    let related_threshold = options.related_min_cosine.max(options.related_z * null_sd);
    let projection = slots
        .iter()
        .map(|slot| {
            let mut h = 0x7363_7265_656e_u64 ^ signature.scheme.seed;
            for b in slot.name.bytes() {
                h = mix(h ^ u64::from(b));
            }
            for &d in &slot.shape {
                h = mix(h ^ d);
            }
            (0..k * k)
                .map(|j| {
                    let r = mix(h ^ j as u64);
                    ((r % SCREEN_DIM as u64) as u16, if (r >> 32) & 1 == 1 { -1.0 } else { 1.0 })
                })
                .collect()
        })
        .collect();
    Group { k, slots: slots.to_vec(), members: BTreeSet::new(), related_threshold, projection }
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The screening vector: each slot's sketch scaled to unit norm, CountSketched to [`SCREEN_DIM`] numbers and
/// summed over slots (divided by `√T`). Squared distances then estimate `2·(1 − mean sketch cosine)`.
pub(super) fn screen(node: &Node<'_>, group: &Group) -> Vec<f32> {
    let mut acc = vec![0.0f64; SCREEN_DIM];
    let slots = node.block.len().min(group.projection.len());
    for t in 0..slots {
        let s = node.sketch(t);
        let norm = node.norms[t].sqrt();
        if norm <= 0.0 || s.len() != group.projection[t].len() {
            continue;
        }
        for (&v, &(bucket, sign)) in s.iter().zip(&group.projection[t]) {
            acc[bucket as usize] += f64::from(sign) * f64::from(v) / norm;
        }
    }
    let scale = 1.0 / (slots.max(1) as f64).sqrt();
    acc.iter().map(|&v| (v * scale) as f32).collect()
}

/// Squared Euclidean distance; symmetric to the bit, since `(a − b)² = (b − a)²` and the order is fixed.
fn screen_distance(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for lane in 0..8 {
            let d = x[lane] - y[lane];
            acc[lane] += d * d;
        }
    }
    let tail: f32 =
        a.chunks_exact(8).remainder().iter().zip(b.chunks_exact(8).remainder()).map(|(x, y)| (x - y) * (x - y)).sum();
    acc.iter().sum::<f32>() + tail
}
