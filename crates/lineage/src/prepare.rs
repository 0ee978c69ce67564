//! Per-model analysis shared by both methods: what a signature lets us do with a model, and its architecture.
//!
//! Models are grouped by scheme and architecture fingerprint (the names and shapes of their sketched 2-D block
//! weights; embeddings and heads are left out so a resized vocabulary still matches). A group's tensor
//! positions are its [`Slot`]s. Adapters and models without sketches belong to no group: they join the family
//! of their declared base (a [`FixedParent`]) when the weights cannot speak for them. The [`crate::Index`]
//! keeps the groups, the sketch inner products of candidate pairs and the families.

use signature::{Dtype, ModelSignature, TensorSignature, ValueSource};

use crate::{EdgeSource, Prior};

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
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Slot {
    pub name: String,
    pub shape: Vec<u64>,
}

impl Slot {
    pub fn is_square(&self) -> bool {
        self.shape.len() == 2 && self.shape[0] == self.shape[1]
    }
}

/// A parent decided before the solve, from declarations and shapes (adapters, models without sketches).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct FixedParent {
    pub parent: usize,
    pub source: EdgeSource,
    pub confidence: f64,
}

/// Scheme id and the block weights' names and shapes, in name order: models with equal keys share a group.
pub(crate) type GroupKey = (String, Vec<Slot>);

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

pub(crate) fn kind_of(signature: &ModelSignature) -> Kind {
    if signature.tensors.iter().any(|t| t.source == ValueSource::AdapterDelta) {
        Kind::Adapter
    } else if signature.tensors.iter().any(is_block_weight) {
        Kind::Full
    } else {
        Kind::Opaque
    }
}

/// Any dequantised or fp8/integer 2-D tensor, or a declared `quantization_config`.
pub(crate) fn is_quantized(signature: &ModelSignature, prior: &Prior) -> bool {
    prior.quantized
        || signature.tensors.iter().any(|t| {
            t.shape.len() == 2
                && (t.source == ValueSource::Dequantized || matches!(t.dtype, Dtype::F8E4M3 | Dtype::F8E5M2))
        })
}

/// The group key of a full model.
pub(crate) fn group_key(signature: &ModelSignature) -> GroupKey {
    let slots = signature
        .tensors
        .iter()
        .filter(|t| is_block_weight(t))
        .map(|t| Slot { name: t.name.clone(), shape: t.shape.clone() })
        .collect();
    (signature.scheme.id(), slots)
}

/// True when every adapter delta of `adapter` names a tensor of `base` with the same shape.
pub(crate) fn shape_compatible(adapter: &ModelSignature, base: &ModelSignature) -> bool {
    adapter
        .tensors
        .iter()
        .filter(|t| t.source == ValueSource::AdapterDelta)
        .all(|t| base.tensor(&t.name).is_some_and(|b| b.shape == t.shape && b.source != ValueSource::AdapterDelta))
}

/// The key under which declared names and model ids meet: the lowercased last path component. Every way a
/// declared name can resolve to a model (exact, case-insensitive, unique tail) implies equal keys, so a new or
/// vanished model can only change the resolution of declarations with its key.
pub(crate) fn name_tail(name: &str) -> String {
    let lower = clean_name(name).to_ascii_lowercase();
    lower.rsplit('/').next().unwrap_or(&lower).to_owned()
}

/// A declared name as it is matched: surrounding space and trailing slashes dropped.
pub(crate) fn clean_name(name: &str) -> &str {
    name.trim().trim_end_matches('/')
}
