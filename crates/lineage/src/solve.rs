//! The default method: typed edges inside each family, then a minimum arborescence for the rest.
//!
//! Inside one family (and one architecture group) the order is:
//! 1. **duplicates**: equal bytes, or equal up to rounding to the coarser float type. Each duplicate set keeps
//!    one representative, the original: the one whose values use the most mantissa bits (an f32 original
//!    beats its bf16 rounding; a bf16 original and its exact f32 upcast tie, and the narrower stored type
//!    wins), then the earliest upload, then the one not declaring another member, then the smallest id. The
//!    others become its `duplicate` children and leave the solve.
//! 2. **quantized** children hang from their closest non-quantised relative and leave the solve.
//! 3. **merges**: a least-squares fit `S(v) ≈ a·S(p₁) + b·S(p₂)` (linear merges) or with a third regressor,
//!    the base of a task-arithmetic merge, with one coefficient set for the whole model, from the Gram
//!    matrices. Accepted when it explains `v` far better than any single relative does; the base of a
//!    three-regressor fit becomes a direction hint (it precedes both parents).
//! 4. **arborescence** over the remaining models: cost = mean relative sketch distance (discounted for a
//!    low-rank difference) plus direction penalties, a virtual root, Chu-Liu/Edmonds. Each edge is then typed
//!    `lora` (low-rank sketched difference) or `finetune`.

use std::collections::HashMap;
use std::sync::Arc;

use ndarray::Array2;
use signature::ValueSource;

use crate::edmonds::min_arborescence_in;
use crate::index::{FamilySolve, FamilyView, Group, Learned, MergeMemo, Placed, Scratch};
use crate::limits::{
    LOW_RANK_TESTED, MERGE_CANDIDATES, MERGE_REPAIRS, MERGE_TRIPLE_CANDIDATES, NEAREST_PARENTS, RANK_SLOTS,
    SPARSE_ABOVE,
};
use crate::numeric::{cast_equal, difference, effective_rank, mantissa_bits, numerical_rank, singular_values};
use crate::prepare::{Kind, is_block_weight};
use crate::union_find::UnionFind;
use crate::{EdgeSource, Options, Relation};

/// Merge recipes weight a parent by at most 1 (task arithmetic's λ ≤ 1, convex linear weights); a fit that
/// needs more is some other affine relation among relatives.
const MERGE_MAX_COEFFICIENT: f64 = 1.25;
/// Relative kurtosis rise at which the kurtosis penalty reaches 76 % (tanh 1) of its weight.
const KURTOSIS_SOFTNESS: f64 = 0.1;
/// Largest relative sketch distance at which a related pair is tested as a cast duplicate: rounding to bf16
/// moves a tensor by well under 1 %, so anything farther cannot be a cast.
const DUPLICATE_SCREEN: f64 = 0.02;
/// A quantised model's candidate parents within this factor of the closest one's distance are a tie (a bf16
/// copy and its f32 original are equally close to their int8 child), which a declared base wins.
const QUANTIZED_TIE: f64 = 1.05;

/// Solves one family: `members` are node ids in id order (so the result depends on the member set only).
/// `scratch` holds work buffers only: nothing in it carries from one solve to the next.
pub(crate) fn solve_family(ix: &FamilyView<'_, '_>, members: &[usize], scratch: &mut Scratch) -> FamilySolve {
    // Merges give a child two edges; every other child has one at most.
    let mut edges = Vec::with_capacity(members.len() + members.len() / 8);
    let mut learned = Learned::default();
    for &i in members {
        let node = ix.node(i);
        let Some(f) = node.fixed else { continue };
        let relation = match node.kind {
            Kind::Adapter => Relation::Adapter,
            _ if node.quantized && !ix.node(f.parent).quantized => Relation::Quantized,
            _ => node.prior.declared_relation.unwrap_or(Relation::Finetune),
        };
        edges.push(edge(f.parent, i, relation, f.confidence, f.source));
    }
    for (g, models) in unplaced_full_by_group(ix, members) {
        if models.len() >= 2 {
            Subset::new(*ix, g, models, scratch).solve(scratch, &mut learned, &mut edges);
        }
    }
    FamilySolve { placed: edges, learned }
}

/// The family's full models that no typed rule has placed yet, grouped by architecture group in first-seen
/// order: the input of both arborescence solvers.
pub(crate) fn unplaced_full_by_group(ix: &FamilyView<'_, '_>, members: &[usize]) -> Vec<(usize, Vec<usize>)> {
    let mut by_group: Vec<(usize, Vec<usize>)> = Vec::new();
    for &m in members {
        let node = ix.node(m);
        if node.kind != Kind::Full || node.fixed.is_some() {
            continue;
        }
        let Some(g) = node.group else { continue };
        match by_group.iter_mut().find(|(gg, _)| *gg == g) {
            Some((_, models)) => models.push(m),
            None => by_group.push((g, vec![m])),
        }
    }
    by_group
}

fn edge(parent: usize, child: usize, relation: Relation, confidence: f64, source: EdgeSource) -> Placed {
    Placed { parent, child, relation, confidence: confidence.clamp(0.0, 1.0), source }
}

/// The full models of one family inside one architecture group, indexed locally `0..n` in id order.
struct Subset<'v, 'a> {
    ix: FamilyView<'v, 'a>,
    group: &'v Group,
    options: &'v Options,
    /// Node ids of the local nodes.
    model: Vec<usize>,
    /// Related candidate partners of each local node with their distance, by local index: node `a`'s list is
    /// `adj_list[adj_start[a]..adj_start[a + 1]]` (one flat array, since a 10,000-model family has ~10⁶ entries).
    adj_start: Vec<usize>,
    adj_list: Vec<(usize, f64)>,
    /// The same lists ordered by distance (ties by local index): nearest relatives first.
    near_list: Vec<(usize, f64)>,
    /// Per local node, copied out of the index so the per-edge work touches no node records.
    created: Vec<Option<i64>>,
    quantized: Vec<bool>,
    /// Mean distance over related pairs: the unit of every direction penalty.
    scale: f64,
    /// `(ancestor, descendant)` pairs implied by task-arithmetic merges (their base precedes both parents).
    ancestors: Vec<(usize, usize)>,
}

/// A merge found by least squares.
#[derive(Clone, Debug)]
struct Merge {
    /// The two regressors with the largest coefficients, larger first.
    parents: [usize; 2],
    /// Every model in the fit (the parents, plus the base of a task-arithmetic merge).
    regressors: Vec<usize>,
    confidence: f64,
}

/// Sketch inner products among a model and its nearest relatives, for least-squares fits: the Gram matrix of
/// their sketches, one per slot.
struct Table {
    /// Local indices; the first is the model being explained.
    nodes: Vec<usize>,
    /// `dots[[i, j]][t]`: the inner product of `nodes[i]`'s and `nodes[j]`'s sketches at slot `t`.
    dots: Array2<Arc<[f64]>>,
}

impl Table {
    fn g(&self, t: usize, x: usize, y: usize) -> f64 {
        let pos = |a: usize| self.nodes.iter().position(|&b| b == a).unwrap_or(0);
        self.dots[[pos(x), pos(y)]][t]
    }
}

impl<'v, 'a> Subset<'v, 'a> {
    fn new(ix: FamilyView<'v, 'a>, g: usize, model: Vec<usize>, scratch: &mut Scratch) -> Subset<'v, 'a> {
        let n = model.len();
        // Node id → local index, as a flat table: the family's lookups are the solve's inner loop.
        let mut local = std::mem::take(&mut scratch.local);
        let size = model.iter().copied().max().map_or(0, |m| m + 1);
        if local.len() < size {
            local.resize(size, u32::MAX);
        }
        for (a, &m) in model.iter().enumerate() {
            local[m] = a as u32;
        }
        let mut adj_start = std::mem::take(&mut scratch.adj_start);
        let mut adj_list = std::mem::take(&mut scratch.adj_list);
        let mut near_list = std::mem::take(&mut scratch.near_list);
        adj_start.clear();
        adj_list.clear();
        near_list.clear();
        adj_start.push(0);
        // Local indices follow id order, and each node keeps its relatives in id order and by distance (ties by
        // id): filtering both lists to the family gives the adjacency by local index and nearest first.
        let local_of = |b: usize| local.get(b).copied().filter(|&lb| lb != u32::MAX);
        for &m in &model {
            let node = ix.node(m);
            adj_list.extend(node.related.iter().filter_map(|&(b, d)| Some((local_of(b)? as usize, d))));
            near_list.extend(node.near.iter().filter_map(|&(b, d)| Some((local_of(b)? as usize, d))));
            adj_start.push(adj_list.len());
        }
        debug_assert_eq!(adj_list.len(), near_list.len());
        debug_assert!(adj_start.windows(2).all(|w| adj_list[w[0]..w[1]].windows(2).all(|p| p[0].0 < p[1].0)));
        for &m in &model {
            local[m] = u32::MAX;
        }
        scratch.local = local;
        let (mut sum, mut count) = (0.0, 0usize);
        for a in 0..n {
            for &(b, d) in &adj_list[adj_start[a]..adj_start[a + 1]] {
                if b > a {
                    sum += d;
                    count += 1;
                }
            }
        }
        let scale = if count > 0 && sum > 0.0 { sum / count as f64 } else { 1.0 };
        let created = model.iter().map(|&m| ix.node(m).prior.created_at).collect();
        let quantized = model.iter().map(|&m| ix.node(m).quantized).collect();
        Subset {
            ix,
            group: ix.group(g),
            options: ix.options(),
            model,
            adj_start,
            adj_list,
            near_list,
            created,
            quantized,
            scale,
            ancestors: Vec::new(),
        }
    }

    fn n(&self) -> usize {
        self.model.len()
    }

    fn adj(&self, a: usize) -> &[(usize, f64)] {
        &self.adj_list[self.adj_start[a]..self.adj_start[a + 1]]
    }

    /// `adj(a)` nearest first.
    fn near(&self, a: usize) -> &[(usize, f64)] {
        &self.near_list[self.adj_start[a]..self.adj_start[a + 1]]
    }

    fn find(&self, a: usize, b: usize) -> Option<f64> {
        let adj = self.adj(a);
        adj.binary_search_by_key(&b, |e| e.0).ok().map(|i| adj[i].1)
    }

    /// Distance of a related pair (the only pairs the solver compares).
    fn d(&self, a: usize, b: usize) -> f64 {
        self.find(a, b).unwrap_or(f64::INFINITY)
    }

    fn declares(&self, child: usize, parent: usize) -> bool {
        self.ix.declares(self.model[child], self.model[parent])
    }

    fn created(&self, a: usize) -> Option<i64> {
        self.created[a]
    }

    fn id(&self, a: usize) -> &str {
        &self.ix.node(self.model[a]).id
    }

    fn quantized(&self, a: usize) -> bool {
        self.quantized[a]
    }

    fn source(&self, parent: usize, child: usize) -> EdgeSource {
        if self.declares(child, parent) { EdgeSource::Both } else { EdgeSource::Weights }
    }

    /// Places the subset's models, then hands the large buffers back to `scratch` for the next solve.
    fn solve(mut self, scratch: &mut Scratch, learned: &mut Learned, edges: &mut Vec<Placed>) {
        self.place(scratch, learned, edges);
        scratch.adj_start = std::mem::take(&mut self.adj_start);
        scratch.adj_list = std::mem::take(&mut self.adj_list);
        scratch.near_list = std::mem::take(&mut self.near_list);
    }

    fn place(&mut self, scratch: &mut Scratch, learned: &mut Learned, edges: &mut Vec<Placed>) {
        let n = self.n();
        let mut active = vec![true; n];

        // 1. Duplicates.
        let duplicates = self.duplicates(learned);
        for (child, parent, exact) in duplicates {
            active[child] = false;
            let confidence = if exact { 1.0 } else { 0.9 };
            edges.push(edge(
                self.model[parent],
                self.model[child],
                Relation::Duplicate,
                confidence,
                self.source(parent, child),
            ));
        }

        // 2. Quantized children of a non-quantised relative.
        let plain: Vec<usize> = (0..n).filter(|&a| !self.quantized(a)).collect();
        if !plain.is_empty() {
            let children: Vec<usize> = (0..n).filter(|&v| active[v] && self.quantized(v)).collect();
            for v in children {
                if let Some((parent, confidence)) = self.quantized_parent(v, &active) {
                    active[v] = false;
                    edges.push(edge(
                        self.model[parent],
                        self.model[v],
                        Relation::Quantized,
                        confidence,
                        self.source(parent, v),
                    ));
                }
            }
        }

        // 3. Merges among the remaining models.
        let nodes: Vec<usize> = (0..n).filter(|&a| active[a]).collect();
        let features = self.direction_features(learned, &nodes);
        let found: Vec<Option<Merge>> =
            (0..n).map(|v| if active[v] { self.merge(learned, v, &active) } else { None }).collect();
        let merges = self.resolve_merges(found, &features);
        for m in merges.iter().flatten() {
            for &base in m.regressors.iter().filter(|r| !m.parents.contains(r)) {
                self.ancestors.extend(m.parents.iter().map(|&p| (base, p)));
            }
        }

        // 4. Arborescence.
        let buffer = std::mem::take(&mut scratch.candidates);
        let mut candidates = self.candidate_edges(learned, buffer, &nodes, &active, &features, &merges);
        let root = n;
        let mut repairs = 0;
        let parents = loop {
            // The root edges follow the candidates in the same list, so a repair only rewrites their cost.
            let tau = root_cost(&candidates, self.scale);
            let count = candidates.len();
            candidates.extend(nodes.iter().map(|&v| (root, v, tau)));
            // Inactive nodes get a free root edge so the arborescence spans every index.
            candidates.extend((0..n).filter(|&v| !active[v]).map(|v| (root, v, 0.0)));
            let found = min_arborescence_in(&mut scratch.arborescence, n + 1, root, &candidates);
            candidates.truncate(count);
            let Some(parents) = found else {
                scratch.candidates = candidates;
                return;
            };
            match merge_cycle(&parents, &merges, root) {
                Some(bad) if repairs < MERGE_REPAIRS => {
                    repairs += 1;
                    candidates.retain(|&(a, b, _)| (a, b) != bad);
                }
                _ => break parents,
            }
        };

        let tau = root_cost(&candidates, self.scale);
        let incoming = Incoming::new(n, &candidates);
        scratch.candidates = candidates;
        for &v in &nodes {
            if let Some(m) = &merges[v] {
                for parent in m.parents {
                    let source = self.source(parent, v);
                    edges.push(edge(self.model[parent], self.model[v], Relation::Merge, m.confidence, source));
                }
                continue;
            }
            let Some(parent) = parents[v].filter(|&u| u != root) else { continue };
            let relation = if self.quantized(v) && !self.quantized(parent) {
                Relation::Quantized
            } else if self.low_rank_pair(learned, parent, v) == Some(true) {
                Relation::Lora
            } else {
                Relation::Finetune
            };
            let confidence = self.confidence(parent, v, &incoming, tau);
            edges.push(edge(self.model[parent], self.model[v], relation, confidence, self.source(parent, v)));
        }
    }

    /// `(child, parent, exact)` for every non-representative duplicate.
    fn duplicates(&self, learned: &mut Learned) -> Vec<(usize, usize, bool)> {
        let n = self.n();
        let mut uf = UnionFind::new(n);
        let mut exact_pairs = HashMap::new();
        // Only related pairs: a distance under 2 % means a mean sketch cosine near 1.
        for a in 0..n {
            for &(b, d) in self.adj(a).iter().filter(|e| e.0 > a) {
                // Rounding to bf16 moves a tensor by well under 1 %; anything farther cannot be a cast.
                if d > DUPLICATE_SCREEN {
                    continue;
                }
                if let Some(exact) = self.duplicate_pair(a, b) {
                    uf.union(a, b);
                    exact_pairs.insert((a, b), exact);
                }
            }
        }
        let mut out = Vec::new();
        for set in sets_of(&mut uf, &exact_pairs) {
            let bits: Vec<u32> = set.iter().map(|&a| self.bits_in_use(learned, a)).collect();
            // The original carries the most information: the most mantissa bits in use (a bf16 → f32 upcast
            // uses no more than its source), then the narrower stored type (an exact upcast is the copy), then
            // the earlier upload, then the one not declaring another member, then the smaller id.
            let key = |a: usize| {
                let declares_member = set.iter().any(|&b| b != a && self.declares(a, b));
                let bits_in_use = set.iter().position(|&b| b == a).map_or(0, |at| bits[at]);
                (
                    std::cmp::Reverse(bits_in_use),
                    self.precision(a),
                    self.created(a).unwrap_or(i64::MAX),
                    declares_member,
                    self.id(a),
                )
            };
            let Some(&rep) = set.iter().min_by(|&&a, &&b| key(a).cmp(&key(b))) else { continue };
            for &child in set.iter().filter(|&&c| c != rep) {
                // A declared base inside the set is honoured when it ranks before the child.
                let parent = set
                    .iter()
                    .copied()
                    .find(|&q| q != child && self.declares(child, q) && key(q) < key(child))
                    .unwrap_or(rep);
                let exact = exact_pairs.get(&(parent.min(child), parent.max(child))).copied().unwrap_or(false);
                out.push((child, parent, exact));
            }
        }
        out
    }

    /// Mantissa bits of the model's 2-D float tensors (the coarsest one): an f32 original outranks its bf16 cast.
    fn precision(&self, a: usize) -> u32 {
        self.ix
            .node(self.model[a])
            .signature
            .tensors
            .iter()
            .filter(|t| t.shape.len() == 2)
            .filter_map(|t| mantissa_bits(t.dtype))
            .min()
            .unwrap_or(0)
    }

    /// The widest mantissa actually used by the samples of the 2-D float tensors (f32 view).
    /// A property of the model alone: computed once per model and kept by the index.
    fn bits_in_use(&self, learned: &mut Learned, a: usize) -> u32 {
        let m = self.model[a];
        let node = self.ix.node(m);
        if let Some(bits) = node.bits_in_use.or_else(|| learned.bits_in_use.get(&m).copied()) {
            return bits;
        }
        let bits = node
            .signature
            .tensors
            .iter()
            .filter(|t| t.shape.len() == 2 && t.dtype.is_float())
            .flat_map(|t| t.samples.iter())
            .map(|x| {
                let mantissa = x.to_bits() & 0x007f_ffff;
                if mantissa == 0 { 0 } else { 23 - mantissa.trailing_zeros() }
            })
            .max()
            .unwrap_or(0);
        learned.bits_in_use.insert(m, bits);
        bits
    }

    /// `Some(exact)` when `a` and `b` hold the same tensors, byte-equal (`exact`) or equal up to a cast.
    fn duplicate_pair(&self, a: usize, b: usize) -> Option<bool> {
        let ta = &self.ix.node(self.model[a]).signature.tensors;
        let tb = &self.ix.node(self.model[b]).signature.tensors;
        if ta.len() != tb.len() {
            return None;
        }
        let mut exact = true;
        let mut coarsest = u32::MAX;
        for (x, y) in ta.iter().zip(tb) {
            if x.name != y.name || x.shape != y.shape {
                return None;
            }
            if x.content_hash == y.content_hash && x.dtype == y.dtype {
                continue;
            }
            exact = false;
            let (bx, by) = (mantissa_bits(x.dtype)?, mantissa_bits(y.dtype)?);
            if bx == by || x.source == ValueSource::Dequantized || y.source == ValueSource::Dequantized {
                // Same float type with different bytes is a different model, not a cast.
                return None;
            }
            let coarser = if bx < by { x.dtype } else { y.dtype };
            coarsest = coarsest.min(bx.min(by));
            if !cast_equal(&x.samples, &y.samples, coarser) {
                return None;
            }
        }
        if !exact {
            // The samples agree; the sketch distance confirms it for the values between samples.
            let limit = self.options.duplicate_distance.max(2.0 * (-(coarsest as f64)).exp2());
            if self.d(a, b) > limit {
                return None;
            }
        }
        Some(exact)
    }

    /// The closest non-quantised relative; within 5 % of the closest, a declared base wins the tie (a bf16 copy
    /// and its f32 original are equally close to their int8 child).
    fn quantized_parent(&self, v: usize, active: &[bool]) -> Option<(usize, f64)> {
        let ranked: Vec<usize> = self.near(v).iter().map(|e| e.0).filter(|&u| !self.quantized(u)).collect();
        let best = *ranked.first()?;
        let near: Vec<usize> =
            ranked.iter().copied().filter(|&u| self.d(u, v) <= QUANTIZED_TIE * self.d(best, v)).collect();
        let parent = near
            .iter()
            .copied()
            .find(|&u| self.declares(v, u))
            .or_else(|| near.iter().copied().find(|&u| active[u]))
            .unwrap_or(best);
        // Margin to the closest candidate that is not a near-tie.
        let confidence = ranked
            .iter()
            .find(|&&u| self.d(u, v) > QUANTIZED_TIE * self.d(best, v))
            .map_or(1.0, |&u| 1.0 - self.d(best, v) / self.d(u, v).max(f64::MIN_POSITIVE));
        Some((parent, confidence))
    }

    /// The best least-squares explanation of `v` by two relatives (a linear merge), or by three (task
    /// arithmetic: `base + λ₁(P₁ − base) + λ₂(P₂ − base)` is linear in `P₁, P₂, base`), if it beats every single
    /// relative clearly. The parents are the two regressors with the largest coefficients (the base's
    /// coefficient `1 − λ₁ − λ₂` is the smallest in every recipe we know).
    fn merge(&self, learned: &mut Learned, v: usize, active: &[bool]) -> Option<Merge> {
        // On the stack: this runs for every model of the family on every solve.
        let mut buffer = [0usize; MERGE_CANDIDATES];
        let mut len = 0;
        for u in self.near(v).iter().map(|e| e.0).filter(|&u| active[u]).take(MERGE_CANDIDATES) {
            buffer[len] = u;
            len += 1;
        }
        let near = &buffer[..len];
        if near.len() < 2 || self.group.slots.is_empty() {
            return None;
        }
        // The fit depends on the model, these relatives and its declarations only: reuse an earlier answer.
        let same_key = |memo: &MergeMemo| {
            memo.key.0.len() == near.len()
                && memo.key.0.iter().zip(near).all(|(&m, &u)| m == self.model[u])
                && memo.key.1.iter().zip(near).all(|(&declared, &u)| declared == self.declares(v, u))
        };
        if let Some(memo) = self.ix.merge_memo(learned, self.model[v])
            && same_key(memo)
        {
            let local = |m: usize| near.iter().copied().find(|&u| self.model[u] == m);
            return memo.found.as_ref().and_then(|(parents, regressors, confidence)| {
                Some(Merge {
                    parents: [local(parents[0])?, local(parents[1])?],
                    regressors: regressors.iter().map(|&r| local(r)).collect::<Option<Vec<usize>>>()?,
                    confidence: *confidence,
                })
            });
        }
        let key = (
            near.iter().map(|&u| self.model[u]).collect::<Vec<usize>>(),
            near.iter().map(|&u| self.declares(v, u)).collect::<Vec<bool>>(),
        );
        let found = self.fit_merge(learned, v, near);
        let memo = found.as_ref().map(|m| {
            (
                [self.model[m.parents[0]], self.model[m.parents[1]]],
                m.regressors.iter().map(|&r| self.model[r]).collect(),
                m.confidence,
            )
        });
        learned.merges.insert(self.model[v], MergeMemo { key, found: memo });
        found
    }

    fn fit_merge(&self, learned: &mut Learned, v: usize, near: &[usize]) -> Option<Merge> {
        let mut nodes = vec![v];
        nodes.extend_from_slice(near);
        let m = nodes.len();
        let mut dots = Vec::with_capacity(m * m);
        for &x in &nodes {
            for &y in &nodes {
                let (a, b) = (self.model[x], self.model[y]);
                dots.push(if a == b {
                    Arc::from(self.ix.node(a).norms.as_slice())
                } else {
                    self.ix.dots(learned, a, b)
                });
            }
        }
        let dots = Array2::from_shape_vec((m, m), dots).ok()?;
        let table = Table { nodes, dots };
        let single = near.iter().map(|&u| self.fit(&table, v, &[u]).0).fold(f64::INFINITY, f64::min);

        let mut best: Option<(f64, Vec<usize>, Vec<f64>)> = None;
        for (i, &p1) in near.iter().enumerate() {
            for &p2 in &near[i + 1..] {
                let (resid, coef) = self.fit(&table, v, &[p1, p2]);
                if best.as_ref().is_none_or(|b| resid < b.0) {
                    best = Some((resid, vec![p1, p2], coef));
                }
            }
        }
        let (mut resid, mut regressors, mut coef) = best?;
        let few = &near[..near.len().min(MERGE_TRIPLE_CANDIDATES)];
        for (i, &p1) in few.iter().enumerate() {
            for (j, &p2) in few.iter().enumerate().skip(i + 1) {
                for &p3 in &few[j + 1..] {
                    let (r3, c3) = self.fit(&table, v, &[p1, p2, p3]);
                    // A third regressor must earn its place: half the two-parent residual at least.
                    if r3 < 0.5 * resid {
                        (resid, regressors, coef) = (r3, vec![p1, p2, p3], c3);
                    }
                }
            }
        }
        let mut order: Vec<usize> = (0..regressors.len()).collect();
        order.sort_by(|&x, &y| coef[y].total_cmp(&coef[x]));
        let (first, second) = (order[0], order[1]);
        let parents = [regressors[first], regressors[second]];

        let ratio = resid / single.max(f64::MIN_POSITIVE);
        let declared = parents.iter().all(|&u| self.declares(v, u));
        // A declared merge may fit less tightly (nonlinear merge methods), but must still beat single parents.
        let limit = if declared {
            (2.0 * self.options.merge_residual_ratio).min(0.6)
        } else {
            self.options.merge_residual_ratio
        };
        let min = self.options.merge_min_coefficient;
        if ratio < limit && coef[second] > min && coef[first] <= MERGE_MAX_COEFFICIENT {
            Some(Merge { parents, regressors, confidence: 1.0 - ratio / limit })
        } else {
            None
        }
    }

    /// Keeps a consistent set of merges. Four models in an exact affine relation (a task-arithmetic merge, its
    /// two parents and their base) let more than one of them pass as "the merge of the others"; the real merge
    /// is the one that sits below all its regressors, so candidates are taken in order of their summed
    /// direction penalty (then fit quality), and a candidate that is a regressor of an accepted merge, or has
    /// an accepted merge among its own regressors, is dropped.
    fn resolve_merges(&self, found: Vec<Option<Merge>>, f: &[Features]) -> Vec<Option<Merge>> {
        let mut order: Vec<(f64, f64, usize)> = found
            .iter()
            .enumerate()
            .filter_map(|(v, m)| {
                let m = m.as_ref()?;
                let penalty: f64 = m.regressors.iter().map(|&r| self.direction_penalty(r, v, f)).sum();
                Some((penalty, -m.confidence, v))
            })
            .collect();
        order.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)).then(a.2.cmp(&b.2)));
        let mut kept: Vec<Option<Merge>> = vec![None; found.len()];
        for (_, _, v) in order {
            let Some(m) = found[v].clone() else { continue };
            let clashes = kept
                .iter()
                .enumerate()
                .any(|(w, k)| k.as_ref().is_some_and(|k| k.regressors.contains(&v) || m.regressors.contains(&w)));
            if !clashes {
                kept[v] = Some(m);
            }
        }
        kept
    }

    /// Least-squares fit `S(v) ≈ Σ c_r·S(r)` with one coefficient per regressor for the whole model (merge
    /// recipes use one weight for every tensor), each slot weighted by `1/‖S_v,t‖²` so every layer counts the
    /// same. Built from summed Gram entries. Returns the relative residual (root mean square over slots) and
    /// the coefficients; a singular system explains nothing (residual 1).
    fn fit(&self, g: &Table, v: usize, regressors: &[usize]) -> (f64, Vec<f64>) {
        let m = regressors.len();
        let pv = v;
        let mut a = [[0.0f64; 4]; 3];
        let mut gvv_sum = 0.0;
        let mut slots = 0usize;
        for t in 0..self.group.slots.len() {
            let gvv = g.g(t, pv, pv);
            if gvv <= 0.0 {
                continue;
            }
            slots += 1;
            gvv_sum += 1.0;
            for (r, &x) in regressors.iter().enumerate() {
                for (c, &y) in regressors.iter().enumerate() {
                    a[r][c] += g.g(t, x, y) / gvv;
                }
                a[r][3] += g.g(t, x, pv) / gvv;
            }
        }
        let rhs: Vec<f64> = (0..m).map(|r| a[r][3]).collect();
        // The normal equations keep `m` in the last used column for solve_small.
        for row in a.iter_mut().take(m) {
            row[m] = row[3];
        }
        match solve_small(&mut a, m) {
            Some(x) if slots > 0 => {
                let explained: f64 = (0..m).map(|r| x[r] * rhs[r]).sum();
                (((gvv_sum - explained).max(0.0) / gvv_sum).sqrt(), x[..m].to_vec())
            }
            _ => (1.0, vec![0.0; m]),
        }
    }

    /// Whether the sketched difference of `a` and `b` is low-rank (`None` when no tensor changed).
    /// Cached in the index by node pair; computed with the pair in id order so the answer never depends on
    /// which edge asked first.
    fn low_rank_pair(&self, learned: &mut Learned, a: usize, b: usize) -> Option<bool> {
        let (ma, mb) = (self.model[a], self.model[b]);
        if let Some(known) = self.ix.low_rank(learned, ma, mb) {
            return known;
        }
        let (a, b) = if self.id(a) <= self.id(b) { (a, b) } else { (b, a) };
        let result = self.compute_low_rank(learned, a, b);
        learned.low_rank.insert((ma.min(mb), ma.max(mb)), result);
        result
    }

    fn compute_low_rank(&self, learned: &mut Learned, a: usize, b: usize) -> Option<bool> {
        if !self.frozen_outside_blocks(a, b) {
            // Norms, embeddings or biases moved: every parameter was trained, whatever the rank of the update.
            return Some(false);
        }
        let g = self.group;
        let (x, y) = (self.ix.node(self.model[a]), self.ix.node(self.model[b]));
        let dots = self.ix.dots(learned, self.model[a], self.model[b]);
        let slots = g.slots.len();
        let k = g.k;
        let step = slots.div_ceil(RANK_SLOTS).max(1);
        let rounding = 2.0 * (-(self.precision(a).min(self.precision(b)) as f64)).exp2();
        let mut ranks = Vec::new();
        for t in (0..slots).step_by(step) {
            if x.tensor(t).content_hash == y.tensor(t).content_hash
                || self.ix.relative_distance(&dots, self.model[a], self.model[b], t)
                    <= rounding.max(self.options.duplicate_distance)
            {
                // Untouched (LoRA leaves most modules alone) or moved only by a cast.
                continue;
            }
            let (Some(sa), Some(sb)) = (x.sketch_matrix(t, k), y.sketch_matrix(t, k)) else { continue };
            let diff = difference(sa, sb);
            ranks.push(numerical_rank(&singular_values(diff.view()), self.options.lora_relative_sv));
        }
        if ranks.is_empty() {
            return None;
        }
        ranks.sort_unstable();
        let median = ranks[ranks.len() / 2] as f64;
        Some(median <= self.options.lora_max_rank_share * k as f64)
    }

    /// True when every tensor outside the block weights (norms, embeddings, head, biases) that `a` and `b`
    /// share is unchanged: byte-equal, or equal up to a cast. A merged LoRA trains only its target matrices;
    /// a full fine-tune moves the norms too, even when its update of the matrices is numerically low-rank.
    fn frozen_outside_blocks(&self, a: usize, b: usize) -> bool {
        let sa = &self.ix.node(self.model[a]).signature;
        let sb = &self.ix.node(self.model[b]).signature;
        sa.tensors.iter().filter(|t| !is_block_weight(t)).all(|x| {
            let Some(y) = sb.tensor(&x.name).filter(|y| y.shape == x.shape) else { return true };
            if x.dtype == y.dtype {
                return x.content_hash == y.content_hash;
            }
            match (mantissa_bits(x.dtype), mantissa_bits(y.dtype)) {
                (Some(bx), Some(by)) => {
                    let coarser = if bx < by { x.dtype } else { y.dtype };
                    cast_equal(&x.samples, &y.samples, coarser)
                }
                // An integer tensor in one and a float in the other: not comparable, so no evidence.
                _ => true,
            }
        })
    }

    fn direction_features(&self, learned: &mut Learned, nodes: &[usize]) -> Vec<Features> {
        let g = self.group;
        let mut out = vec![Features::default(); self.n()];
        for &a in nodes {
            let x = self.ix.node(self.model[a]);
            let kurtosis = x.kurtosis;
            let effective = if self.options.effective_rank_weight != 0.0 && !g.slots.is_empty() {
                // A property of the model alone: computed once per model and kept by the index.
                let m = self.model[a];
                match x.effective_rank.or_else(|| learned.effective_rank.get(&m).copied()) {
                    Some(known) => known,
                    None => {
                        let ranks: Vec<f64> = (0..g.slots.len())
                            .filter_map(|t| x.sketch_matrix(t, g.k))
                            .map(|sketch| effective_rank(&singular_values(sketch.mapv(f64::from).view())))
                            .collect();
                        let mean = if ranks.is_empty() { 0.0 } else { ranks.iter().sum::<f64>() / ranks.len() as f64 };
                        learned.effective_rank.insert(m, mean);
                        mean
                    }
                }
            } else {
                0.0
            };
            out[a] = Features { kurtosis, effective_rank: effective };
        }
        out
    }

    /// Cost of `u → v` from the priors alone, in units of the family's mean distance.
    fn direction_penalty(&self, u: usize, v: usize, f: &[Features]) -> f64 {
        let o = self.options;
        let mut penalty = 0.0;
        // Graded: a child barely above its parent is weak evidence against the edge, a large rise strong.
        let level = ((f[u].kurtosis.abs() + f[v].kurtosis.abs()) / 2.0).max(f64::MIN_POSITIVE);
        let rise = (f[v].kurtosis - f[u].kurtosis) / level;
        penalty += o.kurtosis_weight * (rise / KURTOSIS_SOFTNESS).tanh().max(0.0);
        if self.ancestors.contains(&(v, u)) {
            // The base of a task-arithmetic merge is an ancestor of both merged models.
            penalty += 1.0;
        }
        if f[v].effective_rank < f[u].effective_rank {
            penalty += o.effective_rank_weight;
        }
        if let (Some(tu), Some(tv)) = (self.created(u), self.created(v))
            && tu > tv
        {
            penalty += o.created_at_weight;
        }
        // Only a bonus: a parent's card naming its own child is a dirty-card cycle, and penalising the true
        // edge for it would let one bad card move a model under a sibling.
        if self.declares(v, u) {
            penalty -= o.declared_base_weight;
        }
        if self.quantized(u) && !self.quantized(v) {
            // Fine-tuning a dequantised checkpoint happens, but far more rarely than the reverse.
            penalty += 1.0;
        }
        penalty * self.scale
    }

    fn candidate_edges(
        &self,
        learned: &mut Learned,
        mut out: Vec<(usize, usize, f64)>,
        nodes: &[usize],
        active: &[bool],
        f: &[Features],
        merges: &[Option<Merge>],
    ) -> Vec<(usize, usize, f64)> {
        out.clear();
        for &v in nodes {
            if let Some(m) = &merges[v] {
                // A merge child hangs from its main parent; the second parent must not end up below it.
                out.push((m.parents[0], v, 0.0));
                continue;
            }
            // Nearest first, with the distance (symmetric) carried along rather than looked up again; in a large
            // family only the NEAREST_PARENTS nearest, plus declared bases farther away.
            let sparse = nodes.len() > SPARSE_ABOVE;
            let parents = self
                .near(v)
                .iter()
                .copied()
                .filter(|e| active[e.0])
                .enumerate()
                .filter(|&(rank, (u, _))| !sparse || rank < NEAREST_PARENTS || self.declares(v, u))
                .map(|(_, e)| e);
            for (rank, (u, d)) in parents.enumerate() {
                if merges[u].as_ref().is_some_and(|m| m.parents.contains(&v)) {
                    continue;
                }
                // The rank test costs SVDs: run it on the nearest few and on declared parents.
                let low_rank = if rank < LOW_RANK_TESTED || self.declares(v, u) {
                    self.low_rank_pair(learned, u, v) == Some(true)
                } else {
                    false
                };
                let distance = d * if low_rank { self.options.lora_cost_factor } else { 1.0 };
                out.push((u, v, distance + self.direction_penalty(u, v, f)));
            }
        }
        out
    }

    /// Margin of the chosen parent over the next-best one (virtual root included) and over the reverse edge,
    /// each in units of the family's mean distance and capped at 1; the confidence is their mean.
    /// `incoming` holds the candidate edges into each node as `(parent, cost)`; `tau` is the virtual root's cost.
    fn confidence(&self, parent: usize, child: usize, incoming: &Incoming, tau: f64) -> f64 {
        let cost = |a: usize, b: usize| incoming.of(b).iter().find(|&&(x, _)| x == a).map(|e| e.1);
        let Some(chosen) = cost(parent, child) else { return 0.0 };
        let next = incoming.of(child).iter().filter(|&&(a, _)| a != parent).map(|e| e.1).fold(tau, f64::min);
        let reverse = cost(child, parent).unwrap_or(tau);
        let margin = ((next - chosen) / self.scale).clamp(0.0, 1.0);
        let direction = ((reverse - chosen) / self.scale).clamp(0.0, 1.0);
        (margin + direction) / 2.0
    }
}

/// Candidate edges grouped by child, each group in candidate order: `(parent, cost)`.
struct Incoming {
    start: Vec<usize>,
    edges: Vec<(usize, f64)>,
}

impl Incoming {
    fn new(n: usize, candidates: &[(usize, usize, f64)]) -> Incoming {
        let mut start = vec![0usize; n + 1];
        for &(_, b, _) in candidates {
            start[b + 1] += 1;
        }
        for v in 0..n {
            start[v + 1] += start[v];
        }
        let mut fill = start.clone();
        let mut edges = vec![(0, 0.0); candidates.len()];
        for &(a, b, w) in candidates {
            edges[fill[b]] = (a, w);
            fill[b] += 1;
        }
        Incoming { start, edges }
    }

    fn of(&self, v: usize) -> &[(usize, f64)] {
        &self.edges[self.start[v]..self.start[v + 1]]
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Features {
    kurtosis: f64,
    effective_rank: f64,
}

/// The union-find's sets of two or more members (each sorted ascending, ordered by smallest member, as
/// [`UnionFind::components`] lists them), found from the joined pairs alone: a family is mostly singletons.
fn sets_of(uf: &mut UnionFind, pairs: &HashMap<(usize, usize), bool>) -> Vec<Vec<usize>> {
    let mut joined: Vec<usize> = pairs.keys().flat_map(|&(a, b)| [a, b]).collect();
    joined.sort_unstable();
    joined.dedup();
    let mut sets: Vec<Vec<usize>> = Vec::new();
    let mut slot: HashMap<usize, usize> = HashMap::new();
    for x in joined {
        let root = uf.find(x);
        let at = *slot.entry(root).or_insert_with(|| {
            sets.push(Vec::new());
            sets.len() - 1
        });
        sets[at].push(x);
    }
    sets
}

/// τ for the virtual root: above every candidate edge, so a model without any related candidate is a root and
/// every other model takes a parent (a related model shares an origin with it).
fn root_cost(candidates: &[(usize, usize, f64)], scale: f64) -> f64 {
    candidates.iter().map(|e| e.2).fold(0.0, f64::max) + scale
}

/// The first edge on a path from a merge child down to one of its own parents, if the arborescence made one.
fn merge_cycle(parents: &[Option<usize>], merges: &[Option<Merge>], root: usize) -> Option<(usize, usize)> {
    for (v, merge) in merges.iter().enumerate() {
        let Some(m) = merge else { continue };
        for &target in &m.parents {
            // Walk up from the merge parent; if the walk meets v, the edge leaving v on that path is the culprit.
            let mut node = target;
            for _ in 0..parents.len() {
                match parents[node] {
                    Some(up) if up == v => return Some((v, node)),
                    Some(up) if up != root => node = up,
                    _ => break,
                }
            }
        }
    }
    None
}

/// Solves the `m × m` system held in the augmented rows `a[r] = [A_r0 … A_r(m−1), b_r]` (m ≤ 3) by Gaussian
/// elimination with partial pivoting; `None` when it is singular relative to its scale.
fn solve_small(a: &mut [[f64; 4]; 3], m: usize) -> Option<[f64; 3]> {
    let scale = (0..m).map(|r| a[r][r].abs()).fold(0.0, f64::max);
    if scale <= 0.0 {
        return None;
    }
    for col in 0..m {
        let pivot = (col..m).max_by(|&x, &y| a[x][col].abs().total_cmp(&a[y][col].abs()))?;
        a.swap(col, pivot);
        if a[col][col].abs() <= 1e-13 * scale {
            return None;
        }
        let pivot_row = a[col];
        for row in a.iter_mut().take(m).skip(col + 1) {
            let factor = row[col] / pivot_row[col];
            for (x, p) in row.iter_mut().zip(pivot_row).take(m + 1).skip(col) {
                *x -= factor * p;
            }
        }
    }
    let mut x = [0.0; 3];
    for row in (0..m).rev() {
        let tail: f64 = (row + 1..m).map(|c| a[row][c] * x[c]).sum();
        x[row] = (a[row][m] - tail) / a[row][row];
    }
    Some(x)
}
