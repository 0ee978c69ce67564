//! The boundary between the index and the solvers. A solver gets a [`FamilyView`], read-only access to the
//! index's nodes, groups, options and caches, and returns a [`FamilySolve`]: the edges it placed and, as
//! [`Learned`], what it computed that is worth keeping (sketch inner products, low-rank verdicts, merge fits,
//! per-model properties). The index applies both. A solve is thus a function of the view alone: it writes
//! nothing it is shown, so solving families in any order, or twice, gives the same edges.

use std::collections::HashMap;
use std::sync::Arc;

use super::cache::{Caches, FastHash, MergeMemo, PairMap, pair, sketch_dots};
use super::node::{Group, Node, Placed};
use crate::Options;

/// Read-only access to what a family solve needs.
#[derive(Clone, Copy)]
pub(crate) struct FamilyView<'v, 'a> {
    pub(super) nodes: &'v [Option<Box<Node<'a>>>],
    pub(super) groups: &'v [Option<Group>],
    pub(super) options: &'v Options,
    pub(super) caches: &'v Caches,
}

/// What a solve computed beyond its edges, for the index to keep. It also serves the solve itself as a memo:
/// lookups go to it first, then to the index's caches.
#[derive(Debug, Default)]
pub(crate) struct Learned {
    pub dots: PairMap<Arc<[f64]>>,
    pub low_rank: PairMap<Option<bool>>,
    pub merges: HashMap<usize, MergeMemo, FastHash>,
    pub effective_rank: HashMap<usize, f64, FastHash>,
    pub bits_in_use: HashMap<usize, u32, FastHash>,
}

/// The result of one family solve.
#[derive(Debug, Default)]
pub(crate) struct FamilySolve {
    /// Every edge whose child is a member, in no particular order.
    pub placed: Vec<Placed>,
    pub learned: Learned,
}

impl<'v, 'a> FamilyView<'v, 'a> {
    pub fn options(&self) -> &'v Options {
        self.options
    }

    /// A live node (every node id a solver meets is a family member or a member's relative).
    pub fn node(&self, x: usize) -> &'v Node<'a> {
        self.nodes.get(x).and_then(|n| n.as_deref()).expect("node ids handed to the solver are live")
    }

    pub fn group(&self, g: usize) -> &'v Group {
        self.groups[g].as_ref().expect("groups of live nodes exist")
    }

    pub fn declares(&self, child: usize, parent: usize) -> bool {
        self.node(child).declared.contains(&parent)
    }

    /// Per-slot sketch inner products of two members of one group: from the caches, or computed and learned.
    pub fn dots(&self, learned: &mut Learned, a: usize, b: usize) -> Arc<[f64]> {
        let key = pair(a, b);
        if let Some(d) = self.caches.gram.get(&key).or_else(|| learned.dots.get(&key)) {
            return d.clone();
        }
        let dots = sketch_dots(self.node(key.0), self.node(key.1));
        learned.dots.insert(key, dots.clone());
        dots
    }

    /// `‖S_a − S_b‖ / mean(‖S_a‖, ‖S_b‖)` at one slot, from the inner products.
    pub fn relative_distance(&self, dots: &[f64], a: usize, b: usize, t: usize) -> f64 {
        relative_distance(self.node(a), self.node(b), dots, t)
    }

    /// The cached low-rank verdict of a pair, if any.
    pub fn low_rank(&self, learned: &Learned, a: usize, b: usize) -> Option<Option<bool>> {
        let key = pair(a, b);
        learned.low_rank.get(&key).or_else(|| self.caches.low_rank.get(&key)).copied()
    }

    /// The last merge fit of `v`, if any (the caller checks its key).
    pub fn merge_memo<'l>(&self, learned: &'l Learned, v: usize) -> Option<&'l MergeMemo>
    where
        'v: 'l,
    {
        learned.merges.get(&v).or_else(|| self.caches.merges.get(&v))
    }
}

/// `‖S_a − S_b‖ / mean(‖S_a‖, ‖S_b‖)` at slot `t`, from the inner products: the Frobenius norm of the sketched
/// difference, `√(⟨a,a⟩ + ⟨b,b⟩ − 2⟨a,b⟩)`, without forming it.
pub(crate) fn relative_distance(a: &Node<'_>, b: &Node<'_>, dots: &[f64], t: usize) -> f64 {
    let (gaa, gbb, gab) = (a.norms[t], b.norms[t], dots[t]);
    let scale = (gaa.sqrt() + gbb.sqrt()) / 2.0;
    if scale > 0.0 { (gaa + gbb - 2.0 * gab).max(0.0).sqrt() / scale } else { 0.0 }
}
