//! Lineage recovery: which model was made from which, recovered from weight signatures.
//!
//! The input is one [`ModelInput`] per model: its [`signature::ModelSignature`] (per-tensor moments, linear
//! sketches `S = R·W·Cᵀ` and paired samples) and a [`Prior`] read from its card and configs. [`recover`] returns
//! typed, directed [`Edge`]s and the families (clusters of related models) they live in. The pipeline:
//!
//! 1. An [`Index`] groups models by architecture fingerprint (`prepare`), picks candidate pairs inside a group
//!    (all pairs in small groups, screened nearest neighbours in large ones), compares them exactly by sketch
//!    inner products and joins significantly related pairs into families with a [`union_find::UnionFind`]. No
//!    oracle number of trees.
//! 2. `solve` types and orients the edges inside each family (duplicates, quantized and adapter children,
//!    merges, LoRA versus full fine-tunes) and places the rest with a minimum arborescence
//!    ([`edmonds::min_arborescence`]) over distance plus direction-prior costs, with a virtual root.
//! 3. `mother` is the MoTHer baseline (ℓ_FT distance, kurtosis direction, λ = 0.3) on the same families.
//!
//! [`recover`] is the batch entry point: an index filled at once and solved. The daemon keeps an [`Index`]
//! alive instead, adds and removes models as the Hub changes and re-solves only the families touched
//! ([`Index::solve_touched`]); the result is identical to a batch recovery of the same models.
//!
//! [`eval`] scores a recovery against ground truth. The crate does no IO of any kind: callers read files, cards
//! and clocks and hand the results in.

mod adapter_fit;
pub mod edmonds;
pub mod eval;
mod index;
pub mod limits;
mod mother;
mod numeric;
mod prepare;
#[cfg(test)]
mod scenarios;
mod solve;
#[cfg(test)]
mod testkit;
pub mod union_find;

use signature::ModelSignature;

pub use index::{FamilySolution, FamilyUpdate, Index, OwnedModelInput, Touched};

/// How a child was made from its parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Relation {
    /// Full (dense) fine-tune.
    Finetune,
    /// A LoRA fine-tune merged into the weights: the difference to the parent has low rank.
    Lora,
    /// A PEFT adapter repository holding only the LoRA factors.
    Adapter,
    /// Integer or fp8 payload, or a `quantization_config`.
    Quantized,
    /// One of several parents combined by a weighted sum; a merge child has one edge per parent.
    Merge,
    /// The same weights, possibly cast to another float type.
    Duplicate,
}

impl Relation {
    pub const ALL: [Relation; 6] = [
        Relation::Finetune,
        Relation::Lora,
        Relation::Adapter,
        Relation::Quantized,
        Relation::Merge,
        Relation::Duplicate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Relation::Finetune => "finetune",
            Relation::Lora => "lora",
            Relation::Adapter => "adapter",
            Relation::Quantized => "quantized",
            Relation::Merge => "merge",
            Relation::Duplicate => "duplicate",
        }
    }

    /// Parses the names above case-insensitively, plus the spellings found on Hub cards (`fine-tune`,
    /// `quantization`, `merged`, …). `None` for anything else.
    pub fn parse(s: &str) -> Option<Relation> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "finetune" | "fine-tune" | "fine_tune" | "finetuned" | "ft" => Relation::Finetune,
            "lora" => Relation::Lora,
            "adapter" | "peft" => Relation::Adapter,
            "quantized" | "quantization" | "quant" => Relation::Quantized,
            "merge" | "merged" => Relation::Merge,
            "duplicate" | "copy" => Relation::Duplicate,
            _ => return None,
        })
    }
}

/// What an edge rests on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EdgeSource {
    /// Found in the weights; no card or config declares it.
    Weights,
    /// Declared only (the weights could not test it, e.g. an adapter's base or a model without sketches).
    Metadata,
    /// Found in the weights and declared.
    Both,
}

impl EdgeSource {
    pub fn as_str(self) -> &'static str {
        match self {
            EdgeSource::Weights => "weights",
            EdgeSource::Metadata => "metadata",
            EdgeSource::Both => "both",
        }
    }

    pub fn parse(s: &str) -> Option<EdgeSource> {
        Some(match s {
            "weights" => EdgeSource::Weights,
            "metadata" => EdgeSource::Metadata,
            "both" => EdgeSource::Both,
            _ => return None,
        })
    }
}

/// What the model's card and configs say, all optional. Cards are dirty: the weights can override any of it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Prior {
    /// Card `base_model` (string or list), as model ids.
    pub declared_bases: Vec<String>,
    /// Card `base_model_relation`.
    pub declared_relation: Option<Relation>,
    /// `adapter_config.json` `base_model_name_or_path`.
    pub adapter_base: Option<String>,
    /// Creation time, unix seconds.
    pub created_at: Option<i64>,
    /// `config.json` has a `quantization_config`.
    pub quantized: bool,
}

/// One model to place.
#[derive(Clone, Debug)]
pub struct ModelInput<'a> {
    pub id: &'a str,
    pub signature: &'a ModelSignature,
    pub prior: Prior,
}

/// A directed, typed edge `parent → child`.
#[derive(Clone, Debug, PartialEq)]
pub struct Edge {
    pub parent: String,
    pub child: String,
    pub relation: Relation,
    /// In `[0, 1]`: how clearly this parent beat the alternatives and this direction beat the reverse.
    pub confidence: f64,
    pub source: EdgeSource,
}

/// Which recovery recipe to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Method {
    /// Typed edges, sketch distances and the direction cues that worked on the zoo (see [`Options`]).
    #[default]
    Default,
    /// MoTHer (Horwitz et al., ICLR 2025) as closely as signatures allow; every edge typed fine-tune.
    Mother,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Default => "default",
            Method::Mother => "mother",
        }
    }

    pub fn parse(s: &str) -> Option<Method> {
        Some(match s {
            "default" => Method::Default,
            "mother" => Method::Mother,
            _ => return None,
        })
    }
}

/// Thresholds and weights. The defaults are what the zoo evaluation settled on; each field says why.
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    pub method: Method,
    /// Two models are related when the mean cosine of their sketches over matched tensors exceeds
    /// `related_z` standard deviations of the null. Independent weights give per-tensor sketch cosines with
    /// sd ≈ 1/k, so the mean over `T` tensors has sd ≈ 1/(k·√T). Default 8.
    pub related_z: f64,
    /// An absolute floor on that mean cosine, because trained weights are not perfectly independent
    /// Gaussians. Default 0.2: on the bench zoo true parent/child pairs measure ≥ 0.83 and pairs from
    /// different trees (including a root trained on the same data from another init) ≤ 0.015.
    pub related_min_cosine: f64,
    /// Largest mean relative sketch distance for a cast-duplicate (the samples must also agree to the
    /// coarser dtype's rounding). Default 1e-3: bf16 rounding moves a tensor by ≈ 2⁻⁹ relative.
    pub duplicate_distance: f64,
    /// A singular value of a sketched difference counts toward its rank when it exceeds this share of the
    /// largest one. Default 0.05 (1e-2 already survives bf16 storage of a rank-16 update, see research).
    pub lora_relative_sv: f64,
    /// A difference whose median numerical rank over changed tensors is at most this share of `k` is a LoRA
    /// (provided the norms and embeddings did not move, which rules out full fine-tunes first). Default 0.3:
    /// merged LoRAs of rank 2–16 measure 1–16 at k = 64; full fine-tunes of the zoo measure 6–47, mostly
    /// above 20.
    pub lora_max_rank_share: f64,
    /// A merge is accepted when the least-squares residual (two parents, or three for task arithmetic) is
    /// below this share of the best single relative's; twice that (at most 0.6) when the card declares both
    /// parents. Default 0.25: the zoos' linear and task-arithmetic merges fit to ≤ 7 % of it, fine-tunes stay
    /// near 100 % because their update is independent of any relative.
    pub merge_residual_ratio: f64,
    /// Both merge coefficients must exceed this (averaged over tensors), so a near-copy of one parent is not a
    /// merge. Default 0.05.
    pub merge_min_coefficient: f64,
    /// Direction penalty, as a share of the family's mean distance, when the child has the higher excess
    /// kurtosis summed over all 2-D block weights (MoTHer's prior, on every layer kind rather than `o_proj`
    /// only). Graded: `weight · tanh(relative rise / 0.1)`, so a barely higher child costs little. Default 0.3
    /// (MoTHer's λ): on the zoos the parent has the higher sum on 78 % (bench, 63 edges) and 82–91 % (small)
    /// of true fine-tune/LoRA edges, where `o_proj` alone gives 57 % and 64–82 %.
    pub kurtosis_weight: f64,
    /// Direction penalty when the child has the lower mean effective rank of its sketches (TensorLock's
    /// prior). Default 0.0: on the zoos the parent has the lower effective rank on only 51 % (bench) and
    /// 45–55 % (small) of true edges, no better than a coin.
    pub effective_rank_weight: f64,
    /// Penalty when the parent was created after the child. Default 1.0: upload times are nearly always in
    /// order, re-uploads being the exception, and a distance margin larger than the family's mean still wins.
    pub created_at_weight: f64,
    /// Bonus (negative penalty) when the child declares the parent as `base_model` (or as its adapter base).
    /// Default 0.5: strong, yet a much closer undeclared relative still wins.
    pub declared_base_weight: f64,
    /// Cost multiplier for an edge whose difference is low-rank (LoRA): a merged LoRA moves the weights far in
    /// L2 yet is one low-rank step. Default 0.5.
    pub lora_cost_factor: f64,
    /// MoTHer's λ: the kurtosis penalty is `λ·mean(D)`. Default 0.3, as in the paper.
    pub mother_lambda: f64,
    /// Architecture groups up to this size compare every pair of models exactly; larger groups compare each
    /// model only with its screened nearest neighbours (design §4.1). Default [`limits::DENSE_LIMIT`], which
    /// says why. A field so that tests can drive a dozen models through the screened path.
    pub dense_limit: usize,
    /// Screened nearest neighbours per model in a large group. Default [`limits::SCREEN_NEIGHBOURS`], which says
    /// why.
    pub screen_neighbours: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            method: Method::Default,
            related_z: 8.0,
            related_min_cosine: 0.2,
            duplicate_distance: 1e-3,
            lora_relative_sv: 0.05,
            lora_max_rank_share: 0.3,
            merge_residual_ratio: 0.25,
            merge_min_coefficient: 0.05,
            kurtosis_weight: 0.3,
            effective_rank_weight: 0.0,
            created_at_weight: 1.0,
            declared_base_weight: 0.5,
            lora_cost_factor: 0.5,
            mother_lambda: 0.3,
            dense_limit: limits::DENSE_LIMIT,
            screen_neighbours: limits::SCREEN_NEIGHBOURS,
        }
    }
}

/// The recovered model graph.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Recovery {
    /// Sorted by (child, parent).
    pub edges: Vec<Edge>,
    /// Families of related models, singletons included; members sorted, families by first member.
    pub families: Vec<Vec<String>>,
}

/// Recovers typed lineage edges and families. Pure and deterministic: the result depends on the set of
/// models, not their order. Ids are expected to be unique; of models sharing an id the last one counts.
pub fn recover(models: &[ModelInput<'_>], options: &Options) -> Recovery {
    let mut index = Index::new(options.clone());
    index.add_borrowed(models);
    index.recovery()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for r in Relation::ALL {
            assert_eq!(Relation::parse(r.as_str()), Some(r));
        }
        assert_eq!(Relation::parse(" Fine-Tune "), Some(Relation::Finetune));
        assert_eq!(Relation::parse("distill"), None);
        for s in [EdgeSource::Weights, EdgeSource::Metadata, EdgeSource::Both] {
            assert_eq!(EdgeSource::parse(s.as_str()), Some(s));
        }
        for m in [Method::Default, Method::Mother] {
            assert_eq!(Method::parse(m.as_str()), Some(m));
        }
    }
}
