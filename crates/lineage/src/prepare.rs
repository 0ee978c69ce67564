//! Shared preparation for both methods: architecture groups, Gram matrices of sketches, relatedness, families.
//!
//! Models are grouped by scheme and architecture fingerprint (the names and shapes of their sketched 2-D block
//! weights; embeddings and heads are left out so a resized vocabulary still matches). Inside a group every
//! tensor "slot" gets a Gram matrix of sketch inner products, `G[t][i][j] = ⟨S_i,t, S_j,t⟩`, computed once:
//! because the sketch is linear, cosines, distances `‖S_i − S_j‖`, least-squares merge fits and everything
//! else the solver asks for are a few arithmetic operations on `G`. Related pairs (mean sketch cosine far above
//! the null of independent weights) are joined in a union-find; adapters and models without sketches join the
//! family of their declared base when the weights cannot speak for them.

use std::collections::{BTreeMap, HashMap};

use signature::{Dtype, TensorSignature, ValueSource};

use crate::numeric::dot;
use crate::union_find::UnionFind;
use crate::{EdgeSource, ModelInput, Options};

/// What a model's signature lets us do with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Sketched 2-D weights: comparable within its group.
    Full,
    /// A PEFT adapter: only `B·A` deltas, related to a base by shape and declaration.
    Adapter,
    /// No sketched 2-D weight at all (e.g. packed integers that were not dequantised): metadata only.
    Opaque,
}

/// One matched tensor position of a group.
#[derive(Clone, Debug)]
pub(crate) struct Slot {
    pub name: String,
    pub shape: Vec<u64>,
}

impl Slot {
    pub fn is_square(&self) -> bool {
        self.shape.len() == 2 && self.shape[0] == self.shape[1]
    }
}

/// Models that share scheme and fingerprint, with their sketch Gram matrices.
#[derive(Debug)]
pub(crate) struct Group<'m> {
    pub k: usize,
    /// Model indices, ascending.
    pub members: Vec<usize>,
    pub slots: Vec<Slot>,
    /// `tensors[member position][slot]`.
    pub tensors: Vec<Vec<&'m TensorSignature>>,
    /// `gram[(slot·n + i)·n + j]` with `n = members.len()`.
    gram: Vec<f64>,
    /// Mean sketch cosine above which two members are related.
    pub related_threshold: f64,
}

impl Group<'_> {
    pub fn n(&self) -> usize {
        self.members.len()
    }

    pub fn g(&self, slot: usize, i: usize, j: usize) -> f64 {
        let n = self.n();
        self.gram[(slot * n + i) * n + j]
    }

    /// Cosine of the two sketches of `slot` (0 when either is zero).
    pub fn cosine(&self, slot: usize, i: usize, j: usize) -> f64 {
        let den = (self.g(slot, i, i) * self.g(slot, j, j)).sqrt();
        if den > 0.0 { self.g(slot, i, j) / den } else { 0.0 }
    }

    /// `‖S_i − S_j‖ / mean(‖S_i‖, ‖S_j‖)` for one slot: symmetric, so direction comes from priors only.
    pub fn relative_distance(&self, slot: usize, i: usize, j: usize) -> f64 {
        let (gii, gjj, gij) = (self.g(slot, i, i), self.g(slot, j, j), self.g(slot, i, j));
        let scale = (gii.sqrt() + gjj.sqrt()) / 2.0;
        if scale > 0.0 { (gii + gjj - 2.0 * gij).max(0.0).sqrt() / scale } else { 0.0 }
    }

    /// Mean over slots of [`Group::relative_distance`].
    pub fn distance(&self, i: usize, j: usize) -> f64 {
        if self.slots.is_empty() {
            return 0.0;
        }
        (0..self.slots.len()).map(|t| self.relative_distance(t, i, j)).sum::<f64>() / self.slots.len() as f64
    }

    /// Mean over slots of the sketch cosine.
    pub fn mean_cosine(&self, i: usize, j: usize) -> f64 {
        if self.slots.is_empty() {
            return 0.0;
        }
        (0..self.slots.len()).map(|t| self.cosine(t, i, j)).sum::<f64>() / self.slots.len() as f64
    }

    pub fn related(&self, i: usize, j: usize) -> bool {
        self.mean_cosine(i, j) > self.related_threshold
    }

    /// Sketch values of member `i` at `slot`.
    pub fn sketch(&self, i: usize, slot: usize) -> &[f32] {
        self.tensors[i][slot].sketch.as_ref().map_or(&[], |s| s.values.as_slice())
    }
}

/// A parent decided before the solve, from declarations and shapes (adapters, models without sketches).
#[derive(Clone, Copy, Debug)]
pub(crate) struct FixedParent {
    pub parent: usize,
    pub source: EdgeSource,
    pub confidence: f64,
}

#[derive(Debug)]
pub(crate) struct Prepared<'m> {
    pub models: &'m [ModelInput<'m>],
    pub kinds: Vec<Kind>,
    /// Any dequantised or fp8/integer 2-D tensor, or a declared `quantization_config`.
    pub quantized: Vec<bool>,
    pub groups: Vec<Group<'m>>,
    /// `(group, position)` for full models.
    pub place: Vec<Option<(usize, usize)>>,
    /// Parents fixed by declaration and shape, for adapters and opaque models.
    pub fixed: Vec<Option<FixedParent>>,
    /// Resolved declared bases (card `base_model` and adapter base), as model indices.
    pub declared: Vec<Vec<usize>>,
    /// Families: members ascending, families by first member, singletons included.
    pub families: Vec<Vec<usize>>,
}

impl Prepared<'_> {
    /// The family's full models that no typed rule has placed yet, as positions within their tensor group,
    /// grouped by group in first-seen order: the input of both arborescence solvers.
    pub(crate) fn unplaced_full_by_group(&self, family: &[usize]) -> Vec<(usize, Vec<usize>)> {
        let mut by_group: Vec<(usize, Vec<usize>)> = Vec::new();
        for &m in family {
            if self.kinds[m] != Kind::Full || self.fixed[m].is_some() {
                continue;
            }
            let Some((g, pos)) = self.place[m] else { continue };
            match by_group.iter_mut().find(|(gg, _)| *gg == g) {
                Some((_, positions)) => positions.push(pos),
                None => by_group.push((g, vec![pos])),
            }
        }
        by_group
    }

    pub fn declares(&self, child: usize, parent: usize) -> bool {
        self.declared[child].contains(&parent)
    }
}

/// Names and shapes of a model's block weights, in name order.
type Fingerprint = Vec<(String, Vec<u64>)>;

/// Names of tensors whose first dimension is the vocabulary: left out of fingerprints and slots.
fn is_vocab_tensor(name: &str) -> bool {
    ["embed_tokens", "lm_head", "wte", "word_embeddings", "embed_out", "output.weight", "tok_embeddings"]
        .iter()
        .any(|p| name.contains(p))
}

/// A 2-D tensor with a sketch that is the model's own weight matrix: not an adapter delta, not a vocabulary
/// matrix, and not an auxiliary such as a quantisation scale (`…weight_scale`, shape `[n, 1]`). Scales are all
/// positive, so unrelated models' scale sketches have cosines near 1 and would join every quantised model
/// into one family.
pub(crate) fn is_block_weight(t: &TensorSignature) -> bool {
    t.shape.len() == 2
        && t.shape.iter().all(|&d| d > 1)
        && t.name.ends_with("weight")
        && t.sketch.is_some()
        && t.source != ValueSource::AdapterDelta
        && !is_vocab_tensor(&t.name)
}

fn is_quantized(input: &ModelInput<'_>) -> bool {
    input.prior.quantized
        || input.signature.tensors.iter().any(|t| {
            t.shape.len() == 2
                && (t.source == ValueSource::Dequantized || matches!(t.dtype, Dtype::F8E4M3 | Dtype::F8E5M2))
        })
}

/// Resolves declared model names to indices: exact id, then case-insensitive, then a unique match on the last
/// path component (cards often name `org/model` where a local folder is `model`).
struct Resolver {
    exact: HashMap<String, usize>,
    lower: HashMap<String, Option<usize>>,
    tail: HashMap<String, Option<usize>>,
}

impl Resolver {
    fn new(models: &[ModelInput<'_>]) -> Resolver {
        let mut r = Resolver { exact: HashMap::new(), lower: HashMap::new(), tail: HashMap::new() };
        for (i, m) in models.iter().enumerate() {
            r.exact.entry(m.id.to_owned()).or_insert(i);
            let lower = m.id.to_ascii_lowercase();
            let tail = lower.rsplit('/').next().unwrap_or(&lower).to_owned();
            r.lower.entry(lower).and_modify(|e| *e = None).or_insert(Some(i));
            r.tail.entry(tail).and_modify(|e| *e = None).or_insert(Some(i));
        }
        r
    }

    fn resolve(&self, name: &str) -> Option<usize> {
        let name = name.trim().trim_end_matches('/');
        if let Some(&i) = self.exact.get(name) {
            return Some(i);
        }
        let lower = name.to_ascii_lowercase();
        if let Some(&hit) = self.lower.get(&lower) {
            return hit;
        }
        let tail = lower.rsplit('/').next().unwrap_or(&lower);
        self.tail.get(tail).copied().flatten()
    }
}

pub(crate) fn prepare<'m>(models: &'m [ModelInput<'m>], options: &Options) -> Prepared<'m> {
    let n = models.len();
    let resolver = Resolver::new(models);
    let declared: Vec<Vec<usize>> = models
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mut out: Vec<usize> = m
                .prior
                .adapter_base
                .iter()
                .chain(&m.prior.declared_bases)
                .filter_map(|name| resolver.resolve(name))
                .filter(|&p| p != i)
                .collect();
            let mut seen = Vec::new();
            out.retain(|p| {
                let fresh = !seen.contains(p);
                seen.push(*p);
                fresh
            });
            out
        })
        .collect();

    let kinds: Vec<Kind> = models
        .iter()
        .map(|m| {
            if m.signature.tensors.iter().any(|t| t.source == ValueSource::AdapterDelta) {
                Kind::Adapter
            } else if m.signature.tensors.iter().any(is_block_weight) {
                Kind::Full
            } else {
                Kind::Opaque
            }
        })
        .collect();
    let quantized: Vec<bool> = models.iter().map(is_quantized).collect();

    // Group full models by scheme and fingerprint. BTreeMap keeps group order deterministic.
    let mut by_fingerprint: BTreeMap<(String, Fingerprint), Vec<usize>> = BTreeMap::new();
    for (i, m) in models.iter().enumerate() {
        if kinds[i] != Kind::Full {
            continue;
        }
        let fingerprint: Fingerprint = m
            .signature
            .tensors
            .iter()
            .filter(|t| is_block_weight(t))
            .map(|t| (t.name.clone(), t.shape.clone()))
            .collect();
        by_fingerprint.entry((m.signature.scheme.id(), fingerprint)).or_default().push(i);
    }

    let mut uf = UnionFind::new(n);
    let mut groups = Vec::new();
    let mut place = vec![None; n];
    for ((_, fingerprint), members) in by_fingerprint {
        let group = build_group(models, members, &fingerprint, options);
        let g = groups.len();
        for (pos, &m) in group.members.iter().enumerate() {
            place[m] = Some((g, pos));
        }
        for i in 0..group.n() {
            for j in i + 1..group.n() {
                if group.related(i, j) {
                    uf.union(group.members[i], group.members[j]);
                }
            }
        }
        groups.push(group);
    }

    let mut fixed = vec![None; n];
    for i in 0..n {
        fixed[i] = match kinds[i] {
            Kind::Full => declared_across_groups(i, &declared, &place),
            Kind::Adapter => adapter_parent(i, models, &kinds, &quantized, &declared),
            Kind::Opaque => {
                declared[i].first().map(|&parent| FixedParent { parent, source: EdgeSource::Metadata, confidence: 0.5 })
            }
        };
        if let Some(f) = fixed[i] {
            uf.union(i, f.parent);
        }
    }

    let families = uf.components();
    Prepared { models, kinds, quantized, groups, place, fixed, declared, families }
}

/// A full model whose declared base has a different fingerprint cannot be tested by the weights; the
/// declaration stands as a metadata edge. A declared base in the same group is left to the weights.
fn declared_across_groups(i: usize, declared: &[Vec<usize>], place: &[Option<(usize, usize)>]) -> Option<FixedParent> {
    let group = place[i].map(|p| p.0);
    let mut comparable = declared[i].iter().filter(|&&p| place[p].is_some());
    if comparable.clone().any(|&p| place[p].map(|q| q.0) == group) {
        return None;
    }
    comparable.next().map(|&parent| FixedParent { parent, source: EdgeSource::Metadata, confidence: 0.3 })
}

/// True when every adapter delta of `adapter` names a tensor of `base` with the same shape.
fn shape_compatible(adapter: &ModelInput<'_>, base: &ModelInput<'_>) -> bool {
    adapter.signature.tensors.iter().filter(|t| t.source == ValueSource::AdapterDelta).all(|t| {
        base.signature.tensor(&t.name).is_some_and(|b| b.shape == t.shape && b.source != ValueSource::AdapterDelta)
    })
}

/// An adapter's parent: its declared base when the shapes fit (a metadata edge the shapes confirm), else the
/// earliest-created shape-compatible full, non-quantised model (a weak guess from shapes alone).
fn adapter_parent(
    i: usize,
    models: &[ModelInput<'_>],
    kinds: &[Kind],
    quantized: &[bool],
    declared: &[Vec<usize>],
) -> Option<FixedParent> {
    let adapter = &models[i];
    if let Some(&parent) =
        declared[i].iter().find(|&&p| kinds[p] != Kind::Adapter && shape_compatible(adapter, &models[p]))
    {
        return Some(FixedParent { parent, source: EdgeSource::Metadata, confidence: 0.9 });
    }
    let mut candidates: Vec<usize> = (0..models.len())
        .filter(|&p| p != i && kinds[p] == Kind::Full && !quantized[p] && shape_compatible(adapter, &models[p]))
        .collect();
    candidates.sort_by_key(|&p| (models[p].prior.created_at.unwrap_or(i64::MAX), models[p].id));
    let parent = *candidates.first()?;
    // With one candidate the shapes decide; with several this is a guess.
    let confidence = if candidates.len() == 1 { 0.6 } else { 0.1 };
    Some(FixedParent { parent, source: EdgeSource::Weights, confidence })
}

fn build_group<'m>(
    models: &'m [ModelInput<'m>],
    members: Vec<usize>,
    fingerprint: &[(String, Vec<u64>)],
    options: &Options,
) -> Group<'m> {
    let k = models[members[0]].signature.scheme.sketch_k as usize;
    let slots: Vec<Slot> =
        fingerprint.iter().map(|(name, shape)| Slot { name: name.clone(), shape: shape.clone() }).collect();
    let tensors: Vec<Vec<&TensorSignature>> =
        members.iter().map(|&m| models[m].signature.tensors.iter().filter(|t| is_block_weight(t)).collect()).collect();
    let n = members.len();
    let mut gram = vec![0.0; slots.len() * n * n];
    for t in 0..slots.len() {
        for i in 0..n {
            let a = tensors[i][t].sketch.as_ref().map_or(&[][..], |s| s.values.as_slice());
            for j in i..n {
                let b = tensors[j][t].sketch.as_ref().map_or(&[][..], |s| s.values.as_slice());
                let value = if a.len() == b.len() { dot(a, b) } else { 0.0 };
                gram[(t * n + i) * n + j] = value;
                gram[(t * n + j) * n + i] = value;
            }
        }
    }
    // Independent weights give per-slot sketch cosines with sd ≈ 1/k; the mean over T slots has sd 1/(k·√T).
    let null_sd = 1.0 / (k.max(1) as f64 * (slots.len().max(1) as f64).sqrt());
    let related_threshold = options.related_min_cosine.max(options.related_z * null_sd);
    Group { k, members, slots, tensors, gram, related_threshold }
}
