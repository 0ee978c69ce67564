//! What the index remembers between solves so that a re-solve repeats no expensive work: per-slot sketch inner
//! products of compared pairs, the low-rank (LoRA) verdict of a pair, the merge fit of a model with the inputs
//! it depended on, and the work buffers of a family solve.
//!
//! Only the index writes these. A solver reads them through its [`super::FamilyView`] and hands back what it
//! computed as [`super::Learned`]; [`Caches::keep`] stores it. A removed model's entries are dropped at once
//! ([`Caches::forget`]), and node ids are never reused, so no entry ever describes a later model.

use std::collections::HashMap;
use std::sync::Arc;

use super::node::Node;
use super::view::Learned;
use crate::numeric::dot;

/// A merge found for a model, cached with the inputs that determined it.
#[derive(Clone, Debug)]
pub(crate) struct MergeMemo {
    /// The model's nearest active relatives, nearest first, and whether it declares each.
    pub key: (Vec<usize>, Vec<bool>),
    /// `(parents, regressors, confidence)` in node ids.
    pub found: Option<([usize; 2], Vec<usize>, f64)>,
}

/// The pair and per-model caches.
#[derive(Debug, Default)]
pub(crate) struct Caches {
    /// Per-slot sketch inner products of a pair (see [`sketch_dots`]).
    pub gram: PairMap<Arc<[f64]>>,
    /// Whether a pair's sketched difference is low-rank (`None`: no tensor changed).
    pub low_rank: PairMap<Option<bool>>,
    /// The last merge fit of each model.
    pub merges: HashMap<usize, MergeMemo, FastHash>,
}

impl Caches {
    /// Stores what a family solve computed. Per-model properties go to the nodes, which the caller owns.
    pub fn keep(&mut self, learned: &mut Learned) {
        self.gram.extend(learned.dots.drain());
        self.low_rank.extend(learned.low_rank.drain());
        self.merges.extend(learned.merges.drain());
    }

    /// Drops every entry that involves node `x` (removed).
    pub fn forget(&mut self, x: usize) {
        self.gram.retain(|&(a, b), _| a != x && b != x);
        self.low_rank.retain(|&(a, b), _| a != x && b != x);
        self.merges.remove(&x);
    }
}

/// `⟨S_x,t, S_y,t⟩` per slot `t` (0 where the sketches differ in size). The products run on the stored
/// row-major values: the Frobenius inner product of two `k×k` matrices is the dot product of their storage.
pub(crate) fn sketch_dots(x: &Node<'_>, y: &Node<'_>) -> Arc<[f64]> {
    let slots = x.block.len().min(y.block.len());
    (0..slots)
        .map(|t| {
            let (p, q) = (x.sketch(t), y.sketch(t));
            if p.len() == q.len() { dot(p, q) } else { 0.0 }
        })
        .collect()
}

/// The key of an unordered node pair.
pub(crate) fn pair(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

/// Work buffers of a family solve, kept between solves: a 10,000-model family's buffers are large, and a
/// fresh allocation per solve costs page faults.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    /// Node id → local index (or rank), `u32::MAX` elsewhere; all `u32::MAX` between uses.
    pub local: Vec<u32>,
    pub adj_start: Vec<usize>,
    pub adj_list: Vec<(usize, f64)>,
    pub near_list: Vec<(usize, f64)>,
    pub candidates: Vec<(usize, usize, f64)>,
    pub arborescence: crate::edmonds::Workspace,
}

/// Hashing for the caches keyed by node ids: small integers we assign ourselves, so no flooding concern,
/// and SipHash dominated the solve's profile.
pub(crate) type FastHash = std::hash::BuildHasherDefault<IdHasher>;

/// A cache keyed by an unordered node pair `(min, max)`.
pub(crate) type PairMap<V> = HashMap<(usize, usize), V, FastHash>;

/// A multiply-rotate hasher for integer keys (FxHash's recipe).
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}
