//! What the index keeps per model ([`Node`]) and per architecture group ([`Group`]), and the small records
//! that pass between the index and the solvers: a candidate pair's exact comparison ([`PairSummary`]), an
//! edge as a solver places it ([`Placed`]) and as the index keeps it ([`Solved`]).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use ndarray::ArrayView2;
use signature::{ModelSignature, TensorSignature};

use crate::prepare::{FixedParent, Kind, Slot};
use crate::{EdgeSource, Options, Prior, Relation};

/// Exact comparison of a candidate pair.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct PairSummary {
    /// Mean relative sketch distance over slots.
    pub distance: f64,
    pub related: bool,
}

/// An edge as the solvers produce it: endpoints are node ids, so a re-solve allocates no strings until it
/// reports (a 10,000-model family's ids and edges were a third of an incremental add).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Placed {
    pub parent: usize,
    pub child: usize,
    pub relation: Relation,
    pub confidence: f64,
    pub source: EdgeSource,
}

/// One edge of the last solve, kept by its child.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Solved {
    pub parent: usize,
    pub relation: Relation,
    pub confidence: f64,
    pub source: EdgeSource,
}

/// One model held by the index: the model itself, what is derived from it alone, and its place in the
/// candidate lists and families. The solvers read nodes through a [`crate::index::FamilyView`]; only the index
/// writes them.
#[derive(Debug)]
pub(crate) struct Node<'a> {
    pub id: Cow<'a, str>,
    pub signature: Cow<'a, ModelSignature>,
    pub prior: Prior,
    pub kind: Kind,
    pub quantized: bool,
    pub group: Option<usize>,
    /// Indices into `signature.tensors` of the block weights, in slot order.
    pub block: Vec<usize>,
    /// `⟨S_t, S_t⟩` per slot.
    pub norms: Vec<f64>,
    /// The screening vector (see `candidates`).
    pub screen: Vec<f32>,
    /// Summed excess kurtosis of the block weights (the direction prior).
    pub kurtosis: f64,
    /// Resolved declared bases (adapter base first, then card `base_model`), deduplicated.
    pub declared: Vec<usize>,
    /// Models declaring this one.
    pub declared_by: BTreeSet<usize>,
    pub fixed: Option<FixedParent>,
    /// Screened nearest neighbours in the group, nearest first: `(screen distance², node)`.
    pub knn: Vec<(f32, usize)>,
    /// Models that have this one among their screened neighbours.
    pub rknn: BTreeSet<usize>,
    /// Candidate partners in the group with their exact comparison.
    pub cands: BTreeMap<usize, PairSummary>,
    /// The related ones among them as `(node, distance)`, by id: what the solvers read, kept as a flat list
    /// because a family solve walks every member's list, and in id order because a family's local indices are.
    pub related: Vec<(usize, f64)>,
    /// The same list by distance, ties by id: nearest relatives first, kept so that a solve sorts nothing.
    pub near: Vec<(usize, f64)>,
    /// Edges of the last solve with this model as child.
    pub solved: Vec<Solved>,
    /// Family links (related candidate pairs and fixed parents), with multiplicity.
    pub links: BTreeMap<usize, u32>,
    /// Mean effective rank of the sketches, once a solve has needed it (a property of the model alone).
    pub effective_rank: Option<f64>,
    /// Widest mantissa in use by the 2-D float samples, once a solve has needed it.
    pub bits_in_use: Option<u32>,
}

impl Node<'_> {
    /// The block weight at `slot`.
    pub fn tensor(&self, slot: usize) -> &TensorSignature {
        &self.signature.tensors[self.block[slot]]
    }

    /// Sketch values at `slot` (empty when missing), as stored: row-major `k×k`.
    pub fn sketch(&self, slot: usize) -> &[f32] {
        self.tensor(slot).sketch.as_ref().map_or(&[], |s| s.values.as_slice())
    }

    /// The sketch at `slot` as a `k×k` matrix, `None` when it is missing or not `k×k`.
    pub fn sketch_matrix(&self, slot: usize, k: usize) -> Option<ArrayView2<'_, f32>> {
        ArrayView2::from_shape((k, k), self.sketch(slot)).ok()
    }
}

/// Full models sharing scheme and fingerprint.
#[derive(Debug)]
pub(crate) struct Group {
    pub k: usize,
    pub slots: Vec<Slot>,
    pub members: BTreeSet<usize>,
    /// Mean sketch cosine above which two members are related.
    pub related_threshold: f64,
    /// Per slot and sketch entry: bucket and sign of the screening CountSketch.
    pub projection: Vec<Vec<(u16, f32)>>,
}

impl Group {
    /// Whether the group compares all its pairs (see [`crate::limits::DENSE_LIMIT`]).
    pub fn dense(&self, options: &Options) -> bool {
        self.members.len() <= options.dense_limit
    }
}
