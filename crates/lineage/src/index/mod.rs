//! The incremental tree builder: an [`Index`] of models that keeps families and their solutions current as
//! models arrive and vanish, re-solving only the families a change touched.
//!
//! What the index keeps, and why each piece makes an add cheap:
//! - every model it holds as a [`node::Node`]: id, signature, [`Prior`], and what is derived from the model
//!   alone: its kind, architecture group, sketch norms, summed kurtosis and a screening vector;
//! - per architecture group the **candidate pairs** ([`candidates`]): every pair while the group has at most
//!   [`crate::Options::dense_limit`] members (exactly the all-pairs comparison of small zoos), else each
//!   member's screened nearest neighbours plus declared pairs. Exact sketch inner products, distances and the
//!   relatedness test run on candidate pairs only and are cached ([`cache`]);
//! - the **fixed parents** ([`fixed`]): declared names resolved to models, adapters' bases and metadata edges
//!   decided before any solve;
//! - a [`UnionFind`] over related candidate pairs and fixed parents: the families ([`families`]). A removal or
//!   a dropped candidate pair may split a family; the affected component is rebuilt from its remaining links;
//! - per model the edges of its last solve, and a dirty set: the models whose family's solve inputs changed.
//!
//! [`Index::solve_touched`] hands each dirty family to a solver as a read-only [`FamilyView`] and applies what
//! the solver returns ([`view`]). Every rule above is a function of the current model set, never of insertion
//! order, and each family is solved from its members in id order. So an index built by any sequence of adds
//! and removes gives exactly the [`Recovery`] that [`crate::recover`] gives for the surviving models (which is
//! itself an index filled at once), a property the tests check on random forests.

mod cache;
mod candidates;
mod families;
mod fixed;
mod node;
#[cfg(test)]
mod tests;
mod view;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use signature::ModelSignature;

use crate::numeric::dot;
use crate::prepare::{GroupKey, Kind, group_key, is_block_weight, is_quantized, kind_of, name_tail};
use crate::union_find::UnionFind;
use crate::{Edge, Method, ModelInput, Options, Prior, Recovery};

use cache::Caches;
pub(crate) use cache::{FastHash, MergeMemo, Scratch};
use candidates::{new_group, screen};
use node::Solved;
pub(crate) use node::{Group, Node, Placed};
pub(crate) use view::{FamilySolve, FamilyView, Learned};

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
    caches: Caches,
    uf: UnionFind,
    /// Family representative → members.
    members: HashMap<usize, Vec<usize>>,
    dirty: BTreeSet<usize>,
    removed: Vec<String>,
    /// Ids of models removed since the last solve, for edges of the last solve that still name them as parent.
    gone: HashMap<usize, String, FastHash>,
    /// Buffers reused from one family solve to the next (large ones: a fresh allocation costs page faults).
    scratch: Scratch,
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
            caches: Caches::default(),
            uf: UnionFind::default(),
            members: HashMap::new(),
            dirty: BTreeSet::new(),
            removed: Vec::new(),
            gone: HashMap::default(),
            scratch: Scratch::default(),
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
            let view =
                FamilyView { nodes: &self.nodes, groups: &self.groups, options: &self.options, caches: &self.caches };
            let FamilySolve { mut placed, mut learned } = match self.options.method {
                Method::Default => crate::solve::solve_family(&view, &members, &mut self.scratch),
                Method::Mother => crate::mother::solve_family(&view, &members),
            };
            self.keep(&mut learned);
            // Sorted by (child id, parent id) through the members' ranks in id order: integer comparisons.
            let mut rank = std::mem::take(&mut self.scratch.local);
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
            self.scratch.local = rank;
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

    /// Stores what a family solve learned: pair caches in [`Caches`], per-model properties in the nodes.
    fn keep(&mut self, learned: &mut Learned) {
        self.caches.keep(learned);
        for (x, rank) in learned.effective_rank.drain() {
            if let Some(n) = self.nodes.get_mut(x).and_then(|n| n.as_deref_mut()) {
                n.effective_rank = Some(rank);
            }
        }
        for (x, bits) in learned.bits_in_use.drain() {
            if let Some(n) = self.nodes.get_mut(x).and_then(|n| n.as_deref_mut()) {
                n.bits_in_use = Some(bits);
            }
        }
    }

    // ----- node access for the index's own modules -----

    fn node(&self, x: usize) -> &Node<'a> {
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

    fn group(&self, g: usize) -> &Group {
        self.groups[g].as_ref().expect("groups of live nodes exist")
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
            effective_rank: None,
            bits_in_use: None,
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
        self.caches.forget(x);
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
