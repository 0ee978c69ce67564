//! The incremental tree builder: an [`Index`] of models that keeps families and their solutions current as
//! models arrive and vanish, re-solving only the families a change touched.
//!
//! What the index keeps, and why each piece makes an add cheap:
//! - every model it holds (id, signature, [`Prior`]), with what is derived from the model alone: its kind,
//!   architecture group, sketch norms, summed kurtosis and a **screening vector** (a seeded CountSketch of its
//!   unit-normalised sketches, [`SCREEN_DIM`] numbers);
//! - per architecture group the **candidate pairs**: every pair while the group has at most [`DENSE_LIMIT`]
//!   members (exactly the all-pairs comparison of small zoos), else each member's [`SCREEN_NEIGHBOURS`] nearest
//!   by screening distance (ties broken by id) plus declared pairs. Exact sketch inner products, distances and
//!   the relatedness test run on candidate pairs only and are cached;
//! - a [`UnionFind`] over related candidate pairs and fixed parents (adapters, cross-architecture
//!   declarations): the families. A removal or a dropped candidate pair may split a family; the affected
//!   component is rebuilt from its remaining links;
//! - per model the edges of its last solve, and a dirty set: the models whose family's solve inputs changed.
//!
//! Every rule above is a function of the current model set, never of insertion order, and each family is
//! solved from its members in id order. So an index built by any sequence of adds and removes gives exactly
//! the [`Recovery`] that [`crate::recover`] gives for the surviving models (which is itself an index filled at
//! once), a property the tests check on random forests.

use std::borrow::Cow;
use std::cell::{OnceCell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use signature::{ModelSignature, TensorSignature};

use crate::adapter_fit;
use crate::numeric::dot;
use crate::prepare::{
    FixedParent, GroupKey, Kind, Slot, clean_name, group_key, is_block_weight, is_quantized, kind_of, name_tail,
    shape_compatible,
};
use crate::union_find::UnionFind;
use crate::{Edge, EdgeSource, Method, ModelInput, Options, Prior, Recovery, Relation};

/// Groups up to this size compare every pair exactly; larger ones compare only screened candidates. 300 keeps
/// every zoo (and most real architectures' families) on the exact path.
pub const DENSE_LIMIT: usize = 300;
/// Length of the screening vector. Its squared distance estimates `2·(1 − mean sketch cosine)` with a relative
/// error near `√(2/(SCREEN_DIM·slots))`, enough to keep parents, children and siblings among the nearest.
pub const SCREEN_DIM: usize = 64;
/// Screened nearest neighbours per model in a large group: above the solver's 12 candidate parents, so the
/// screen's error rarely hides one of them.
pub const SCREEN_NEIGHBOURS: usize = 32;

/// A model handed to the index by value (the daemon's case). [`ModelInput`] is the borrowed form.
#[derive(Clone, Debug)]
pub struct OwnedModelInput {
    pub id: String,
    pub signature: ModelSignature,
    pub prior: Prior,
}

/// What a call to [`Index::add`] or [`Index::remove`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Touched {
    /// Families that now wait for [`Index::solve_touched`] (a family counts once, however it was touched).
    pub families: usize,
    /// Unions of two existing families (a new model bridging them, or a new candidate pair), each counted once.
    pub merged: usize,
    /// Extra families created by splits (a vanished model or a dropped relation disconnecting one).
    pub split: usize,
}

/// One re-solved family.
#[derive(Clone, Debug, PartialEq)]
pub struct FamilySolution {
    /// Member ids, sorted.
    pub members: Vec<String>,
    /// Every edge whose child is a member, sorted by (child, parent). Parents are members too.
    pub edges: Vec<Edge>,
}

/// What [`Index::solve_touched`] did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FamilyUpdate {
    /// The re-solved families, ordered by first member. Their edges replace all earlier edges of their members.
    pub families: Vec<FamilySolution>,
    /// Ids removed since the previous solve: drop their edges (as child or parent) downstream.
    pub removed: Vec<String>,
}

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
struct Solved {
    parent: usize,
    relation: Relation,
    confidence: f64,
    source: EdgeSource,
}

/// One model held by the index.
#[derive(Debug)]
pub(crate) struct Node<'a> {
    pub id: Cow<'a, str>,
    pub signature: Cow<'a, ModelSignature>,
    pub prior: Prior,
    pub kind: Kind,
    pub quantized: bool,
    pub group: Option<usize>,
    /// Indices into `signature.tensors` of the block weights, in slot order.
    block: Vec<usize>,
    /// `⟨S_t, S_t⟩` per slot.
    pub norms: Vec<f64>,
    screen: Vec<f32>,
    /// Summed excess kurtosis of the block weights (the direction prior).
    pub kurtosis: f64,
    /// Resolved declared bases (adapter base first, then card `base_model`), deduplicated.
    pub declared: Vec<usize>,
    /// Models declaring this one.
    declared_by: BTreeSet<usize>,
    pub fixed: Option<FixedParent>,
    /// Screened nearest neighbours in the group, nearest first: `(screen distance², node)`.
    knn: Vec<(f32, usize)>,
    /// Models that have this one among their screened neighbours.
    rknn: BTreeSet<usize>,
    /// Candidate partners in the group with their exact comparison.
    pub cands: BTreeMap<usize, PairSummary>,
    /// The related ones among them as `(node, distance)`, by id: what the solvers read, kept as a flat list
    /// because a family solve walks every member's list, and in id order because a family's local indices are.
    pub related: Vec<(usize, f64)>,
    /// The same list by distance, ties by id: nearest relatives first, kept so that a solve sorts nothing.
    pub near: Vec<(usize, f64)>,
    /// Edges of the last solve with this model as child.
    solved: Vec<Solved>,
    /// Family links (related candidate pairs and fixed parents), with multiplicity.
    links: BTreeMap<usize, u32>,
    pub effective_rank: OnceCell<f64>,
    pub bits_in_use: OnceCell<u32>,
}

impl Node<'_> {
    /// The block weight at `slot`.
    pub fn tensor(&self, slot: usize) -> &TensorSignature {
        &self.signature.tensors[self.block[slot]]
    }

    /// Sketch values at `slot` (empty when missing).
    pub fn sketch(&self, slot: usize) -> &[f32] {
        self.tensor(slot).sketch.as_ref().map_or(&[], |s| s.values.as_slice())
    }
}

/// Full models sharing scheme and fingerprint.
#[derive(Debug)]
pub(crate) struct Group {
    pub k: usize,
    pub slots: Vec<Slot>,
    members: BTreeSet<usize>,
    /// Mean sketch cosine above which two members are related.
    pub related_threshold: f64,
    /// Per slot and sketch entry: bucket and sign of the screening CountSketch.
    projection: Vec<Vec<(u16, f32)>>,
}

impl Group {
    fn dense(&self, options: &Options) -> bool {
        self.members.len() <= options.dense_limit
    }
}

/// A merge found for a model, cached with the inputs that determined it.
#[derive(Clone, Debug)]
pub(crate) struct MergeMemo {
    /// The model's nearest active relatives, nearest first, and whether it declares each.
    pub key: (Vec<usize>, Vec<bool>),
    /// `(parents, regressors, confidence)` in node ids.
    pub found: Option<([usize; 2], Vec<usize>, f64)>,
}

/// An incrementally maintained lineage index. See the module documentation for what it keeps.
///
/// The lifetime is that of borrowed signatures ([`Index::add_borrowed`], used by [`crate::recover`]); an index
/// fed only through [`Index::add`] is an `Index<'static>`.
#[derive(Debug)]
pub struct Index<'a> {
    options: Options,
    /// Node ids are never reused, so caches keyed by them never alias a later model.
    nodes: Vec<Option<Box<Node<'a>>>>,
    by_id: HashMap<String, usize>,
    lower: HashMap<String, BTreeSet<usize>>,
    tail: HashMap<String, BTreeSet<usize>>,
    /// Name tail of a declared name → models declaring such a name.
    declarers: HashMap<String, BTreeSet<usize>>,
    adapters: BTreeSet<usize>,
    groups: Vec<Option<Group>>,
    group_ids: BTreeMap<GroupKey, usize>,
    gram: RefCell<PairMap<Arc<[f64]>>>,
    pub(crate) low_rank: RefCell<PairMap<Option<bool>>>,
    pub(crate) merges: RefCell<HashMap<usize, MergeMemo, FastHash>>,
    uf: UnionFind,
    /// Family representative → members.
    members: HashMap<usize, Vec<usize>>,
    dirty: BTreeSet<usize>,
    removed: Vec<String>,
    /// Ids of models removed since the last solve, for edges of the last solve that still name them as parent.
    gone: HashMap<usize, String, FastHash>,
    /// Buffers reused from one family solve to the next (large ones: a fresh allocation costs page faults).
    pub(crate) scratch: RefCell<Scratch>,
}

/// Work buffers of a family solve, kept between solves.
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
type PairMap<V> = HashMap<(usize, usize), V, FastHash>;

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

/// Bookkeeping of one mutation.
#[derive(Default)]
struct Change {
    fresh: BTreeSet<usize>,
    cands: BTreeSet<usize>,
    fixed: BTreeSet<usize>,
    suspects: BTreeSet<usize>,
    merged: usize,
    split: usize,
}

impl<'a> Index<'a> {
    /// An empty index solving with `options`.
    pub fn new(options: Options) -> Index<'a> {
        Index {
            options,
            nodes: Vec::new(),
            by_id: HashMap::new(),
            lower: HashMap::new(),
            tail: HashMap::new(),
            declarers: HashMap::new(),
            adapters: BTreeSet::new(),
            groups: Vec::new(),
            group_ids: BTreeMap::new(),
            gram: RefCell::new(HashMap::default()),
            low_rank: RefCell::new(HashMap::default()),
            merges: RefCell::new(HashMap::default()),
            uf: UnionFind::default(),
            members: HashMap::new(),
            dirty: BTreeSet::new(),
            removed: Vec::new(),
            gone: HashMap::default(),
            scratch: RefCell::new(Scratch::default()),
        }
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Number of models held.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn contains(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    /// Adds models (or replaces those whose id is already held: a new revision of a repo). Within one call a
    /// later duplicate id wins. Families are joined or merged at once; solving waits for
    /// [`Index::solve_touched`].
    pub fn add(&mut self, models: Vec<OwnedModelInput>) -> Touched {
        let inputs = models.into_iter().map(|m| (Cow::Owned(m.id), Cow::Owned(m.signature), m.prior)).collect::<Vec<(
            Cow<'a, str>,
            Cow<'a, ModelSignature>,
            Prior,
        )>>();
        self.add_inner(inputs)
    }

    /// [`Index::add`] for borrowed models: nothing is copied but the priors.
    pub fn add_borrowed(&mut self, models: &[ModelInput<'a>]) -> Touched {
        let inputs =
            models.iter().map(|m| (Cow::Borrowed(m.id), Cow::Borrowed(m.signature), m.prior.clone())).collect();
        self.add_inner(inputs)
    }

    /// Removes a model (a repo that vanished). Its family is re-solved at the next [`Index::solve_touched`]
    /// and may split. `None` when the id is not held.
    pub fn remove(&mut self, id: &str) -> Option<Touched> {
        let x = *self.by_id.get(id)?;
        let mut change = Change::default();
        self.remove_node(x, &mut change);
        Some(self.finish(change))
    }

    /// Re-solves every family touched since the last call and returns their new edges.
    pub fn solve_touched(&mut self) -> FamilyUpdate {
        let dirty = std::mem::take(&mut self.dirty);
        let mut roots = BTreeSet::new();
        for x in dirty {
            if self.node_opt(x).is_some() {
                roots.insert(self.uf.find(x));
            }
        }
        let mut families = Vec::new();
        for root in roots {
            let mut members = self.members.get(&root).cloned().unwrap_or_default();
            members.sort_by(|&a, &b| self.node(a).id.cmp(&self.node(b).id));
            // Kept sorted: after an add the next sort meets one sorted run plus a few newcomers.
            if let Some(kept) = self.members.get_mut(&root) {
                kept.clone_from(&members);
            }
            let mut placed = match self.options.method {
                Method::Default => crate::solve::solve_family(self, &members),
                Method::Mother => crate::mother::solve_family(self, &members),
            };
            // Sorted by (child id, parent id) through the members' ranks in id order: integer comparisons.
            let mut rank = std::mem::take(&mut self.scratch.borrow_mut().local);
            if rank.len() < self.nodes.len() {
                rank.resize(self.nodes.len(), u32::MAX);
            }
            for (r, &m) in members.iter().enumerate() {
                rank[m] = r as u32;
            }
            placed.sort_by(|a, b| {
                let by_rank = |x: usize, y: usize| match (rank.get(x), rank.get(y)) {
                    (Some(&rx), Some(&ry)) if rx != u32::MAX && ry != u32::MAX => rx.cmp(&ry),
                    _ => self.id_of(x).cmp(self.id_of(y)),
                };
                by_rank(a.child, b.child).then_with(|| by_rank(a.parent, b.parent))
            });
            for &m in &members {
                rank[m] = u32::MAX;
            }
            self.scratch.borrow_mut().local = rank;
            for &m in &members {
                self.node_mut(m).solved.clear();
            }
            for p in &placed {
                // Children are members, so live (a hash of every child's id here cost more than the check).
                if self.node_opt(p.child).is_some() {
                    let solved =
                        Solved { parent: p.parent, relation: p.relation, confidence: p.confidence, source: p.source };
                    self.node_mut(p.child).solved.push(solved);
                }
            }
            let ids = members.iter().map(|&m| self.node(m).id.to_string()).collect();
            let edges = placed
                .iter()
                .map(|p| Edge {
                    parent: self.id_of(p.parent).to_owned(),
                    child: self.id_of(p.child).to_owned(),
                    relation: p.relation,
                    confidence: p.confidence,
                    source: p.source,
                })
                .collect();
            families.push(FamilySolution { members: ids, edges });
        }
        // Every family that held a removed model has been re-solved: no kept edge names one any more.
        self.gone.clear();
        families.sort_by(|a, b| a.members.cmp(&b.members));
        let mut removed = std::mem::take(&mut self.removed);
        removed.retain(|id| !self.by_id.contains_key(id));
        removed.sort();
        removed.dedup();
        FamilyUpdate { families, removed }
    }

    /// Marks every family touched, so the next [`Index::solve_touched`] re-solves everything from the cached
    /// comparisons (a full re-solve without re-screening or re-comparing any pair).
    pub fn touch_all(&mut self) {
        self.dirty.extend(self.by_id.values().copied());
    }

    /// True when no family waits for a re-solve.
    pub fn is_solved(&self) -> bool {
        self.dirty.is_empty()
    }

    /// All edges of the last solves, sorted by (child, parent). Stale for families touched since (see
    /// [`Index::is_solved`]).
    pub fn edges(&self) -> Vec<Edge> {
        let mut edges: Vec<Edge> = Vec::new();
        for node in self.nodes.iter().flatten() {
            for s in &node.solved {
                let Some(parent) =
                    self.node_opt(s.parent).map(|p| p.id.as_ref()).or(self.gone.get(&s.parent).map(String::as_str))
                else {
                    continue;
                };
                edges.push(Edge {
                    parent: parent.to_owned(),
                    child: node.id.to_string(),
                    relation: s.relation,
                    confidence: s.confidence,
                    source: s.source,
                });
            }
        }
        edges.sort_by(|a, b| (&a.child, &a.parent).cmp(&(&b.child, &b.parent)));
        edges
    }

    /// All families, singletons included: members sorted, families by first member.
    pub fn families(&self) -> Vec<Vec<String>> {
        let mut families: Vec<Vec<String>> = self
            .members
            .values()
            .map(|m| {
                let mut ids: Vec<String> = m.iter().map(|&x| self.node(x).id.to_string()).collect();
                ids.sort();
                ids
            })
            .collect();
        families.sort();
        families
    }

    /// The family of `id` (sorted member ids), or `None` when the id is not held.
    pub fn family_of(&mut self, id: &str) -> Option<Vec<String>> {
        let x = *self.by_id.get(id)?;
        let root = self.uf.find(x);
        let mut ids: Vec<String> = self.members.get(&root)?.iter().map(|&m| self.node(m).id.to_string()).collect();
        ids.sort();
        Some(ids)
    }

    /// Solves what is touched, then returns the whole current result: equal to [`crate::recover`] over the
    /// models held.
    pub fn recovery(&mut self) -> Recovery {
        self.solve_touched();
        Recovery { edges: self.edges(), families: self.families() }
    }

    // ----- accessors for the solvers -----

    pub(crate) fn node(&self, x: usize) -> &Node<'a> {
        self.node_opt(x).expect("node ids handed to the solver are live")
    }

    /// The id of a live node, or of one removed since the last solve.
    fn id_of(&self, x: usize) -> &str {
        match self.node_opt(x) {
            Some(n) => &n.id,
            None => self.gone.get(&x).map_or("", String::as_str),
        }
    }

    fn node_opt(&self, x: usize) -> Option<&Node<'a>> {
        self.nodes.get(x).and_then(|n| n.as_deref())
    }

    fn node_mut(&mut self, x: usize) -> &mut Node<'a> {
        self.nodes[x].as_deref_mut().expect("node ids being changed are live")
    }

    pub(crate) fn group(&self, g: usize) -> &Group {
        self.groups[g].as_ref().expect("groups of live nodes exist")
    }

    pub(crate) fn declares(&self, child: usize, parent: usize) -> bool {
        self.node(child).declared.contains(&parent)
    }

    /// Per-slot sketch inner products of two members of one group, cached.
    pub(crate) fn dots(&self, a: usize, b: usize) -> Arc<[f64]> {
        let key = (a.min(b), a.max(b));
        if let Some(d) = self.gram.borrow().get(&key) {
            return d.clone();
        }
        let (x, y) = (self.node(key.0), self.node(key.1));
        let slots = x.block.len().min(y.block.len());
        let dots: Arc<[f64]> = (0..slots)
            .map(|t| {
                let (p, q) = (x.sketch(t), y.sketch(t));
                if p.len() == q.len() { dot(p, q) } else { 0.0 }
            })
            .collect();
        self.gram.borrow_mut().insert(key, dots.clone());
        dots
    }

    /// `‖S_a − S_b‖ / mean(‖S_a‖, ‖S_b‖)` at one slot, from the inner products.
    pub(crate) fn relative_distance(&self, dots: &[f64], a: usize, b: usize, t: usize) -> f64 {
        let (gaa, gbb, gab) = (self.node(a).norms[t], self.node(b).norms[t], dots[t]);
        let scale = (gaa.sqrt() + gbb.sqrt()) / 2.0;
        if scale > 0.0 { (gaa + gbb - 2.0 * gab).max(0.0).sqrt() / scale } else { 0.0 }
    }

    /// The exact comparison of two members of group `g`.
    fn compare(&self, g: usize, a: usize, b: usize) -> PairSummary {
        let group = self.group(g);
        let slots = group.slots.len();
        if slots == 0 {
            return PairSummary { distance: 0.0, related: false };
        }
        let dots = self.dots(a, b);
        let distance = (0..slots).map(|t| self.relative_distance(&dots, a, b, t)).sum::<f64>() / slots as f64;
        let cosine = (0..slots)
            .map(|t| {
                let den = (self.node(a).norms[t] * self.node(b).norms[t]).sqrt();
                if den > 0.0 { dots[t] / den } else { 0.0 }
            })
            .sum::<f64>()
            / slots as f64;
        PairSummary { distance, related: cosine > group.related_threshold }
    }

    // ----- mutation -----

    fn add_inner(&mut self, inputs: Vec<(Cow<'a, str>, Cow<'a, ModelSignature>, Prior)>) -> Touched {
        let mut change = Change::default();
        // A later duplicate id within the call wins.
        let mut last: HashMap<&str, usize> = HashMap::new();
        for (i, (id, _, _)) in inputs.iter().enumerate() {
            last.insert(id.as_ref(), i);
        }
        let keep: BTreeSet<usize> = last.into_values().collect();
        let inputs: Vec<_> = inputs.into_iter().enumerate().filter(|(i, _)| keep.contains(i)).map(|x| x.1).collect();
        for (id, _, _) in &inputs {
            if let Some(&x) = self.by_id.get(id.as_ref()) {
                self.remove_node(x, &mut change);
            }
        }

        let mut tails = BTreeSet::new();
        for (id, signature, prior) in inputs {
            let x = self.insert_node(id, signature, prior, &mut change);
            tails.insert(name_tail(&self.node(x).id));
        }
        // Declarations: the new models', and those an id with the same tail may now resolve differently.
        let mut redeclare: BTreeSet<usize> = change.fresh.clone();
        for t in &tails {
            redeclare.extend(self.declarers.get(t).into_iter().flatten().copied());
        }
        for x in redeclare {
            self.redeclare(x, &mut change);
        }
        // Adapters without a usable declared base take the earliest compatible full model: a new one may win.
        let fresh: Vec<usize> = change.fresh.iter().copied().collect();
        for x in fresh {
            self.adapters_near(x, &mut change);
            change.fixed.insert(x);
        }
        self.finish(change)
    }

    fn insert_node(
        &mut self,
        id: Cow<'a, str>,
        signature: Cow<'a, ModelSignature>,
        prior: Prior,
        change: &mut Change,
    ) -> usize {
        let x = self.nodes.len();
        let kind = kind_of(&signature);
        let quantized = is_quantized(&signature, &prior);
        let mut node = Node {
            id,
            signature,
            prior,
            kind,
            quantized,
            group: None,
            block: Vec::new(),
            norms: Vec::new(),
            screen: Vec::new(),
            kurtosis: 0.0,
            declared: Vec::new(),
            declared_by: BTreeSet::new(),
            fixed: None,
            knn: Vec::new(),
            rknn: BTreeSet::new(),
            cands: BTreeMap::new(),
            related: Vec::new(),
            near: Vec::new(),
            solved: Vec::new(),
            links: BTreeMap::new(),
            effective_rank: OnceCell::new(),
            bits_in_use: OnceCell::new(),
        };
        let mut group = None;
        if kind == Kind::Full {
            let key = group_key(&node.signature);
            let g = match self.group_ids.get(&key) {
                Some(&g) => g,
                None => {
                    let g = self.groups.len();
                    self.groups.push(Some(new_group(&node.signature, &key.1, &self.options)));
                    self.group_ids.insert(key, g);
                    g
                }
            };
            node.block =
                (0..node.signature.tensors.len()).filter(|&i| is_block_weight(&node.signature.tensors[i])).collect();
            node.norms = (0..node.block.len()).map(|t| dot(node.sketch(t), node.sketch(t))).collect();
            node.kurtosis =
                node.block.iter().filter_map(|&i| node.signature.tensors[i].moments.map(|m| m.excess_kurtosis())).sum();
            node.screen = screen(&node, self.group(g));
            node.group = Some(g);
            group = Some(g);
        }
        for name in node.prior.adapter_base.iter().chain(&node.prior.declared_bases) {
            self.declarers.entry(name_tail(name)).or_default().insert(x);
        }
        if kind == Kind::Adapter {
            self.adapters.insert(x);
        }
        let lower = node.id.to_ascii_lowercase();
        let tail = lower.rsplit('/').next().unwrap_or(&lower).to_owned();
        self.by_id.insert(node.id.to_string(), x);
        self.lower.entry(lower).or_default().insert(x);
        self.tail.entry(tail).or_default().insert(x);
        self.nodes.push(Some(Box::new(node)));
        let root = self.uf.add();
        debug_assert_eq!(root, x);
        self.members.insert(x, vec![x]);
        self.dirty.insert(x);
        change.fresh.insert(x);
        if let Some(g) = group {
            self.join_group(x, g, change);
        }
        x
    }

    /// Puts `x` into its group: screened neighbours both ways, and candidate pairs to settle.
    fn join_group(&mut self, x: usize, g: usize, change: &mut Change) {
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

    /// Sorts by (screen distance, id) and keeps the [`SCREEN_NEIGHBOURS`] nearest.
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

    fn remove_node(&mut self, x: usize, change: &mut Change) {
        change.fresh.remove(&x);
        // Screened neighbours: whoever listed x takes its next nearest.
        if let Some(g) = self.node(x).group {
            let was_dense = self.group(g).dense(&self.options);
            if let Some(group) = self.groups[g].as_mut() {
                group.members.remove(&x);
            }
            let knn: Vec<usize> = self.node(x).knn.iter().map(|e| e.1).collect();
            for u in knn {
                self.node_mut(u).rknn.remove(&x);
            }
            let rknn: Vec<usize> = self.node(x).rknn.iter().copied().collect();
            for v in rknn {
                self.node_mut(v).knn.retain(|e| e.1 != x);
                self.refill(v, g);
                change.cands.insert(v);
            }
            let partners: Vec<usize> = self.node(x).cands.keys().copied().collect();
            for b in partners {
                self.drop_pair(x, b, change);
            }
            if was_dense != self.group(g).dense(&self.options) {
                change.cands.extend(self.group(g).members.iter().copied());
            }
        }
        if let Some(f) = self.node(x).fixed {
            self.unlink(x, f.parent, change);
            self.node_mut(x).fixed = None;
        }
        for p in self.node(x).declared.clone() {
            self.node_mut(p).declared_by.remove(&x);
        }
        let names: Vec<String> = self
            .node(x)
            .prior
            .adapter_base
            .iter()
            .chain(&self.node(x).prior.declared_bases)
            .map(|n| name_tail(n))
            .collect();
        for t in names {
            if let Some(set) = self.declarers.get_mut(&t) {
                set.remove(&x);
                if set.is_empty() {
                    self.declarers.remove(&t);
                }
            }
        }
        self.adapters.remove(&x);
        // Adapters that may have had x as their guessed base.
        self.adapters_near(x, change);
        change.fixed.remove(&x);
        change.cands.remove(&x);

        let id = self.node(x).id.to_string();
        let lower = id.to_ascii_lowercase();
        let tail = lower.rsplit('/').next().unwrap_or(&lower).to_owned();
        self.by_id.remove(&id);
        for (map, key) in [(&mut self.lower, lower), (&mut self.tail, tail.clone())] {
            if let Some(set) = map.get_mut(&key) {
                set.remove(&x);
                if set.is_empty() {
                    map.remove(&key);
                }
            }
        }
        // Declarations that resolved to x (or were ambiguous because of it) resolve anew.
        let redeclare: Vec<usize> = self.declarers.get(&tail).into_iter().flatten().copied().collect();
        for d in redeclare {
            self.redeclare(d, change);
        }
        let fixed: Vec<usize> = change.fixed.iter().copied().collect();
        for v in fixed {
            self.refix(v, change);
        }
        change.fixed.clear();
        // Whatever still links to x (nothing, when the bookkeeping above is complete) goes too.
        let rest: Vec<usize> = self.node(x).links.keys().copied().collect();
        for b in rest {
            while self.node(x).links.contains_key(&b) {
                self.unlink(x, b, change);
            }
        }
        change.suspects.insert(x);
        self.dirty.remove(&x);
        self.gone.insert(x, id.clone());
        self.removed.push(id);
        self.gram.borrow_mut().retain(|&(a, b), _| a != x && b != x);
        self.low_rank.borrow_mut().retain(|&(a, b), _| a != x && b != x);
        self.merges.borrow_mut().remove(&x);
        if let Some(g) = self.node(x).group
            && self.group(g).members.is_empty()
        {
            let key = group_key(&self.node(x).signature);
            self.group_ids.remove(&key);
            self.groups[g] = None;
        }
        // Keep the node until the families are rebuilt (the union-find still knows it), then drop its data.
        self.rebuild(change);
        self.nodes[x] = None;
    }

    /// Refills `v`'s screened neighbours after one left.
    fn refill(&mut self, v: usize, g: usize) {
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

    /// Recomputes the resolved declarations of `x`; a change re-settles its candidate pairs and fixed parent.
    fn redeclare(&mut self, x: usize, change: &mut Change) {
        if self.node_opt(x).is_none() {
            return;
        }
        let names: Vec<String> = {
            let p = &self.node(x).prior;
            p.adapter_base.iter().chain(&p.declared_bases).cloned().collect()
        };
        let mut declared: Vec<usize> = Vec::new();
        for name in names {
            if let Some(p) = self.resolve(&name)
                && p != x
                && !declared.contains(&p)
            {
                declared.push(p);
            }
        }
        let old = std::mem::replace(&mut self.node_mut(x).declared, declared.clone());
        if old == declared && !change.fresh.contains(&x) {
            return;
        }
        for p in old {
            if let Some(n) = self.nodes.get_mut(p).and_then(|n| n.as_deref_mut()) {
                n.declared_by.remove(&x);
            }
        }
        for &p in &declared {
            self.node_mut(p).declared_by.insert(x);
            change.cands.insert(p);
        }
        self.dirty.insert(x);
        change.cands.insert(x);
        change.fixed.insert(x);
    }

    /// Resolves a declared model name: exact id, then case-insensitive, then a unique match on the last path
    /// component (cards often name `org/model` where a local folder is `model`).
    fn resolve(&self, name: &str) -> Option<usize> {
        let name = clean_name(name);
        if let Some(&i) = self.by_id.get(name) {
            return Some(i);
        }
        let unique = |set: &BTreeSet<usize>| if set.len() == 1 { set.first().copied() } else { None };
        let lower = name.to_ascii_lowercase();
        if let Some(set) = self.lower.get(&lower) {
            return unique(set);
        }
        let tail = lower.rsplit('/').next().unwrap_or(&lower);
        self.tail.get(tail).and_then(unique)
    }

    /// Marks the adapters whose guessed base may change because full model `x` arrived or left.
    fn adapters_near(&self, x: usize, change: &mut Change) {
        let node = self.node(x);
        if node.kind != Kind::Full || node.quantized {
            return;
        }
        for &a in &self.adapters {
            if a != x && shape_compatible(&self.node(a).signature, &node.signature) {
                change.fixed.insert(a);
            }
        }
    }

    fn compute_fixed(&self, i: usize) -> Option<FixedParent> {
        let node = self.node(i);
        match node.kind {
            Kind::Full => {
                // A declared base with another fingerprint cannot be tested by the weights: the declaration
                // stands as a metadata edge. A declared base in the same group is left to the weights.
                let mut comparable = node.declared.iter().filter(|&&p| self.node(p).group.is_some());
                if comparable.clone().any(|&p| self.node(p).group == node.group) {
                    return None;
                }
                comparable.next().map(|&parent| FixedParent { parent, source: EdgeSource::Metadata, confidence: 0.3 })
            }
            Kind::Adapter => self.adapter_parent(i),
            Kind::Opaque => node.declared.first().map(|&parent| FixedParent {
                parent,
                source: EdgeSource::Metadata,
                confidence: 0.5,
            }),
        }
    }

    /// An adapter's parent. First the weights: a shape-compatible model `P` such that another indexed model is `P`
    /// with this adapter merged in ([`adapter_fit`]); that overrides the card. Else its declared base when the
    /// shapes fit (a metadata edge the shapes confirm), else the earliest-created shape-compatible full,
    /// non-quantised model (a weak guess from shapes alone).
    fn adapter_parent(&self, i: usize) -> Option<FixedParent> {
        let adapter = self.node(i);
        let mut candidates: Vec<usize> = self
            .by_id
            .values()
            .copied()
            .filter(|&p| {
                let n = self.node(p);
                p != i && n.kind == Kind::Full && !n.quantized && shape_compatible(&adapter.signature, &n.signature)
            })
            .collect();
        let declared_fit = |p: usize| {
            self.node(p).kind != Kind::Adapter && shape_compatible(&adapter.signature, &self.node(p).signature)
        };
        if let Some((parent, residual)) = self.merged_upload_base(i, &candidates) {
            let source = if adapter.declared.contains(&parent) { EdgeSource::Both } else { EdgeSource::Weights };
            return Some(FixedParent { parent, source, confidence: (1.0 - residual).clamp(0.5, 0.99) });
        }
        if let Some(&parent) = adapter.declared.iter().find(|&&p| declared_fit(p)) {
            return Some(FixedParent { parent, source: EdgeSource::Metadata, confidence: 0.9 });
        }
        candidates.sort_by(|&a, &b| {
            let key = |p: usize| (self.node(p).prior.created_at.unwrap_or(i64::MAX), self.node(p).id.as_ref());
            key(a).cmp(&key(b))
        });
        let parent = *candidates.first()?;
        // With one candidate the shapes decide; with several this is a guess.
        let confidence = if candidates.len() == 1 { 0.6 } else { 0.1 };
        Some(FixedParent { parent, source: EdgeSource::Weights, confidence })
    }

    /// The base `P` among `candidates` (shape-compatible full models) for which some other candidate `M` is `P` with
    /// adapter `i` merged in, with the smallest residual under [`adapter_fit::MERGED_FIT`]; ties go to the first by
    /// id. Every pair is tried (a quick pass on a few sketch entries first) when the candidates are at most
    /// `dense_limit`; above that only declared bases are tried as `P`. A function of the model set alone, so the
    /// incremental and batch results agree; any full model added or removed re-fixes the adapters it fits.
    fn merged_upload_base(&self, i: usize, candidates: &[usize]) -> Option<(usize, f64)> {
        let adapter = &self.node(i).signature;
        let mut by_id: Vec<usize> = candidates.to_vec();
        by_id.sort_by(|&a, &b| self.node(a).id.cmp(&self.node(b).id));
        let bases: Vec<usize> = if by_id.len() <= self.options.dense_limit {
            by_id.clone()
        } else {
            by_id.iter().copied().filter(|p| self.node(i).declared.contains(p)).collect()
        };
        let mut best: Option<(usize, f64)> = None;
        for &p in &bases {
            let base = &self.node(p).signature;
            for &m in &by_id {
                if m == p {
                    continue;
                }
                let merged = &self.node(m).signature;
                let quick = adapter_fit::merged_residual(adapter, base, merged, adapter_fit::QUICK_ENTRIES);
                if quick.is_none_or(|q| q > 2.0 * adapter_fit::MERGED_FIT) {
                    continue;
                }
                let Some(r) = adapter_fit::merged_residual(adapter, base, merged, usize::MAX) else { continue };
                if r < adapter_fit::MERGED_FIT && best.is_none_or(|(_, b)| r < b) {
                    best = Some((p, r));
                }
            }
        }
        best
    }

    fn refix(&mut self, i: usize, change: &mut Change) {
        if self.node_opt(i).is_none() {
            return;
        }
        let new = self.compute_fixed(i);
        let old = self.node(i).fixed;
        if new == old {
            return;
        }
        if let Some(f) = old {
            self.unlink(i, f.parent, change);
            self.dirty.insert(f.parent);
        }
        if let Some(f) = new {
            self.link(i, f.parent, change);
            self.dirty.insert(f.parent);
        }
        self.node_mut(i).fixed = new;
        self.dirty.insert(i);
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

    fn settle_pairs(&mut self, a: usize, change: &mut Change) {
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

    fn drop_pair(&mut self, a: usize, b: usize, change: &mut Change) {
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

    fn link(&mut self, a: usize, b: usize, change: &mut Change) {
        *self.node_mut(a).links.entry(b).or_insert(0) += 1;
        *self.node_mut(b).links.entry(a).or_insert(0) += 1;
        let (ra, rb) = (self.uf.find(a), self.uf.find(b));
        if ra == rb {
            return;
        }
        let lone_fresh = |r: usize| self.members[&r].len() == 1 && change.fresh.contains(&self.members[&r][0]);
        if !lone_fresh(ra) && !lone_fresh(rb) {
            change.merged += 1;
        }
        self.uf.union(a, b);
        let root = self.uf.find(a);
        let other = if root == ra { rb } else { ra };
        let moved = self.members.remove(&other).unwrap_or_default();
        self.members.entry(root).or_default().extend(moved);
    }

    fn unlink(&mut self, a: usize, b: usize, change: &mut Change) {
        for (x, y) in [(a, b), (b, a)] {
            let links = &mut self.node_mut(x).links;
            if let Some(count) = links.get_mut(&y) {
                *count -= 1;
                if *count == 0 {
                    links.remove(&y);
                }
            }
        }
        change.suspects.insert(a);
        change.suspects.insert(b);
    }

    /// Splits the families of suspects that lost links into their true components.
    fn rebuild(&mut self, change: &mut Change) {
        // Endpoints of dropped links, by the family they were in.
        let mut by_root: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for s in std::mem::take(&mut change.suspects) {
            if s < self.uf.len() {
                by_root.entry(self.uf.find(s)).or_default().push(s);
            }
        }
        for (root, ends) in by_root {
            let Some(members) = self.members.get_mut(&root) else { continue };
            if ends.iter().any(|&e| !self.nodes.get(e).is_some_and(|n| n.is_some()))
                || ends.iter().any(|&e| {
                    // A node being removed is still in the arena but no longer in `by_id`.
                    self.nodes[e].as_deref().is_some_and(|n| self.by_id.get(n.id.as_ref()) != Some(&e))
                })
            {
                let by_id = &self.by_id;
                let nodes = &self.nodes;
                members.retain(|&m| nodes[m].as_deref().is_some_and(|n| by_id.get(n.id.as_ref()) == Some(&m)));
            }
            let alive: Vec<usize> = ends.iter().copied().filter(|&e| self.is_live(e)).collect();
            if self.members.get(&root).is_some_and(|m| m.is_empty()) {
                self.members.remove(&root);
                continue;
            }
            // Usually the endpoints are still connected by a short detour (screened neighbours share
            // neighbours): a search that stops once it has met them all is far cheaper than a rebuild.
            if alive.len() <= 1 || self.connected(&alive) {
                continue;
            }
            let Some(old) = self.members.remove(&root) else { continue };
            for &m in &old {
                self.uf.reset(m);
            }
            for &m in &old {
                let links: Vec<usize> = self.node(m).links.keys().copied().collect();
                for l in links {
                    self.uf.union(m, l);
                }
            }
            let mut parts: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
            for &m in &old {
                parts.entry(self.uf.find(m)).or_default().push(m);
            }
            change.split += parts.len().saturating_sub(1);
            for (r, ms) in parts {
                for &m in &ms {
                    self.dirty.insert(m);
                }
                self.members.insert(r, ms);
            }
        }
    }

    /// Whether all of `nodes` lie in one component of the link graph: a breadth-first search from the first
    /// that stops as soon as it has met every other one.
    fn connected(&self, nodes: &[usize]) -> bool {
        let mut wanted: BTreeSet<usize> = nodes[1..].iter().copied().collect();
        let mut seen: BTreeSet<usize> = BTreeSet::from([nodes[0]]);
        let mut queue = std::collections::VecDeque::from([nodes[0]]);
        while let Some(v) = queue.pop_front() {
            for &w in self.node(v).links.keys() {
                if seen.insert(w) {
                    wanted.remove(&w);
                    if wanted.is_empty() {
                        return true;
                    }
                    queue.push_back(w);
                }
            }
        }
        wanted.is_empty()
    }

    fn is_live(&self, x: usize) -> bool {
        self.node_opt(x).is_some_and(|n| self.by_id.get(n.id.as_ref()) == Some(&x))
    }

    /// Settles candidate pairs and fixed parents, rebuilds split families and reports.
    fn finish(&mut self, mut change: Change) -> Touched {
        let fixed: Vec<usize> = std::mem::take(&mut change.fixed).into_iter().collect();
        for i in fixed {
            self.refix(i, &mut change);
        }
        let cands: Vec<usize> = std::mem::take(&mut change.cands).into_iter().collect();
        for a in cands {
            self.settle_pairs(a, &mut change);
        }
        self.rebuild(&mut change);
        let mut roots = BTreeSet::new();
        for &x in &self.dirty {
            if self.is_live(x) {
                roots.insert(self.uf.find(x));
            }
        }
        Touched { families: roots.len(), merged: change.merged, split: change.split }
    }
}

/// A group for the first model of its key: threshold from the null of independent sketches, and the seeded
/// screening projection (the same for every model of the group, since it depends on slot names and shapes).
fn new_group(signature: &ModelSignature, slots: &[Slot], options: &Options) -> Group {
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
fn screen(node: &Node<'_>, group: &Group) -> Vec<f32> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recover;
    use crate::testkit::{
        Weights, adapter, cast_bf16, finetune, lora, merge, quantize_int8, root, scheme, sign, task_arithmetic,
    };
    use proptest::prelude::*;

    /// One generated model: id, weights and card.
    type Spec = (String, Weights, Prior);

    fn owned(specs: &[&Spec]) -> Vec<OwnedModelInput> {
        specs
            .iter()
            .map(|(id, w, prior)| OwnedModelInput {
                id: id.clone(),
                signature: sign(w, &scheme()),
                prior: prior.clone(),
            })
            .collect()
    }

    fn batch(specs: &[&Spec], options: &Options) -> Recovery {
        let signatures: Vec<ModelSignature> = specs.iter().map(|s| sign(&s.1, &scheme())).collect();
        let inputs: Vec<ModelInput<'_>> = specs
            .iter()
            .zip(&signatures)
            .map(|(s, signature)| ModelInput { id: &s.0, signature, prior: s.2.clone() })
            .collect();
        recover(&inputs, options)
    }

    /// A random forest: `ops` say, per model, how it is made (root, fine-tune, LoRA, cast, int8, merge, task
    /// arithmetic, adapter) and from which earlier models; some cards declare the parent, some carry times.
    fn forest(ops: &[(u8, usize, usize, u64)]) -> Vec<Spec> {
        let mut out: Vec<Spec> = Vec::new();
        let mut full: Vec<usize> = Vec::new();
        for (i, &(op, a, b, seed)) in ops.iter().enumerate() {
            let id = format!("org{}/m{i}", i % 3);
            let pick = |x: usize| full[x % full.len()];
            let mut prior = Prior { created_at: (seed % 3 != 0).then_some(i as i64 * 10), ..Prior::default() };
            let (weights, parent) = if full.is_empty() || op % 9 == 0 {
                (root(seed), None)
            } else {
                let p = pick(a);
                let w = &out[p].1;
                match op % 9 {
                    1 | 2 => (finetune(w, seed, 0.15), Some(p)),
                    // Half the LoRAs are a merged upload of an adapter drawn with the same seed class and
                    // parent, if one is made: the adapter's base then follows from the weights.
                    3 if seed % 2 == 0 => (lora(w, seed % 8, 4, 0.1), Some(p)),
                    3 => (lora(w, seed, 2, 0.3), Some(p)),
                    4 => (cast_bf16(w), Some(p)),
                    5 => (quantize_int8(w), Some(p)),
                    6 => (merge(w, &out[pick(b)].1, 0.5), Some(p)),
                    7 => (task_arithmetic(w, &out[pick(b)].1, &out[pick(a + b)].1, 0.6, 0.5), Some(p)),
                    _ => {
                        prior.adapter_base = (seed % 2 == 0).then(|| out[p].0.clone());
                        (adapter(w, seed % 8, 4, 0.1), None)
                    }
                }
            };
            if let Some(p) = parent
                && seed % 4 == 1
            {
                prior.declared_bases = vec![out[p].0.to_uppercase()];
            }
            if op % 9 != 8 {
                full.push(i);
            }
            out.push((id, weights, prior));
        }
        out
    }

    /// Adds `order` in the given batches, removing `removed` models after they have been added (solving at
    /// some steps), and compares the result with a batch recovery of the survivors.
    fn check_incremental(specs: &[Spec], order: &[usize], cuts: &[usize], removed: &[usize], options: &Options) {
        let mut index = Index::new(options.clone());
        let mut start = 0;
        let mut bounds: Vec<usize> = cuts.iter().map(|&c| c % (order.len() + 1)).collect();
        bounds.push(order.len());
        bounds.sort_unstable();
        for (step, &end) in bounds.iter().enumerate() {
            let chunk: Vec<&Spec> = order[start..end.max(start)].iter().map(|&i| &specs[i]).collect();
            start = end.max(start);
            index.add(owned(&chunk));
            for &r in removed {
                if order[..start].contains(&r) && index.contains(&specs[r].0) && (r + step) % 2 == 0 {
                    index.remove(&specs[r].0);
                }
            }
            if step % 2 == 1 {
                index.solve_touched();
            }
        }
        for &r in removed {
            index.remove(&specs[r].0);
        }
        let survivors: Vec<&Spec> = (0..specs.len()).filter(|i| !removed.contains(i)).map(|i| &specs[i]).collect();
        let expected = batch(&survivors, options);
        assert_eq!(index.recovery(), expected);
    }

    fn small_groups() -> Options {
        // Tiny limits so a dozen models exercise the screened path, its mode switches and the NN refills.
        Options { dense_limit: 4, screen_neighbours: 2, ..Options::default() }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn incremental_equals_batch(
            ops in proptest::collection::vec((0u8..9, 0usize..50, 0usize..50, 0u64..1000), 2..12),
            shuffle in proptest::collection::vec(0usize..1000, 12),
            cuts in proptest::collection::vec(0usize..20, 0..4),
            removed in proptest::collection::vec(0usize..12, 0..3),
            screened in any::<bool>(),
        ) {
            let specs = forest(&ops);
            let n = specs.len();
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by_key(|&i| (shuffle[i], i));
            let removed: Vec<usize> = removed.into_iter().filter(|&r| r < n).collect();
            let options = if screened { small_groups() } else { Options::default() };
            check_incremental(&specs, &order, &cuts, &removed, &options);
        }
    }

    #[test]
    fn bridging_model_merges_two_families() {
        let (x, y) = (root(501), root(502));
        let specs: Vec<Spec> = vec![
            ("x".into(), x.clone(), Prior::default()),
            ("xf".into(), finetune(&x, 1, 0.15), Prior::default()),
            ("y".into(), y.clone(), Prior::default()),
            ("yf".into(), finetune(&y, 2, 0.15), Prior::default()),
            ("m".into(), merge(&x, &y, 0.5), Prior::default()),
        ];
        let mut index = Index::new(Options::default());
        let first: Vec<&Spec> = specs[..4].iter().collect();
        let touched = index.add(owned(&first));
        assert_eq!(touched, Touched { families: 2, merged: 0, split: 0 });
        let update = index.solve_touched();
        assert_eq!(update.families.len(), 2);
        let touched = index.add(owned(&[&specs[4]]));
        assert_eq!(touched, Touched { families: 1, merged: 1, split: 0 });
        let update = index.solve_touched();
        assert_eq!(update.families.len(), 1);
        assert_eq!(update.families[0].members, ["m", "x", "xf", "y", "yf"]);
        let all: Vec<&Spec> = specs.iter().collect();
        assert_eq!(index.recovery(), batch(&all, &Options::default()));
        // The bridge vanishes: the family splits again and both halves are re-solved.
        let touched = index.remove("m");
        assert_eq!(touched, Some(Touched { families: 2, merged: 0, split: 1 }));
        let update = index.solve_touched();
        assert_eq!(update.removed, ["m"]);
        assert_eq!(index.families(), [vec!["x".to_owned(), "xf".to_owned()], vec!["y".to_owned(), "yf".to_owned()]]);
        assert_eq!(index.recovery(), batch(&first, &Options::default()));
    }

    #[test]
    fn only_the_touched_family_is_resolved() {
        let (x, y) = (root(511), root(512));
        let specs: Vec<Spec> = vec![
            ("x".into(), x.clone(), Prior::default()),
            ("y".into(), y.clone(), Prior::default()),
            ("yf".into(), finetune(&y, 3, 0.15), Prior::default()),
            ("xf".into(), finetune(&x, 4, 0.15), Prior::default()),
        ];
        let mut index = Index::new(Options::default());
        index.add(owned(&[&specs[0], &specs[1], &specs[2]]));
        index.solve_touched();
        assert_eq!(index.add(owned(&[&specs[3]])).families, 1);
        let update = index.solve_touched();
        assert_eq!(update.families.len(), 1);
        assert_eq!(update.families[0].members, ["x", "xf"]);
        assert_eq!(update.families[0].edges.len(), 1);
        assert!(index.solve_touched().families.is_empty());
    }

    #[test]
    fn replacing_a_model_keeps_one_copy() {
        let r = root(521);
        let specs: Vec<Spec> = vec![
            ("r".into(), r.clone(), Prior::default()),
            ("f".into(), finetune(&r, 5, 0.15), Prior::default()),
            ("f".into(), finetune(&r, 6, 0.15), Prior::default()),
        ];
        let mut index = Index::new(Options::default());
        index.add(owned(&[&specs[0], &specs[1]]));
        index.add(owned(&[&specs[2]]));
        assert_eq!(index.len(), 2);
        assert_eq!(index.recovery(), batch(&[&specs[0], &specs[2]], &Options::default()));
    }
}
