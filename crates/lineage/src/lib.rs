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
    use crate::testkit::{
        Weights, adapter, cast_bf16, finetune, lora, low_rank_finetune, merge, quantize_int8, root, scheme, sign,
        task_arithmetic,
    };
    use signature::Dtype;

    struct Spec {
        id: &'static str,
        weights: Weights,
        prior: Prior,
    }

    fn spec(id: &'static str, weights: Weights, created_at: Option<i64>) -> Spec {
        Spec { id, weights, prior: Prior { created_at, ..Prior::default() } }
    }

    /// Runs `recover` on the specs and compares edges as `(parent, child, relation)` and families.
    fn check(specs: &[Spec], options: &Options, edges: &[(&str, &str, Relation)], families: &[&[&str]]) -> Recovery {
        let signatures: Vec<ModelSignature> = specs.iter().map(|s| sign(&s.weights, &scheme())).collect();
        let inputs: Vec<ModelInput<'_>> = specs
            .iter()
            .zip(&signatures)
            .map(|(s, signature)| ModelInput { id: s.id, signature, prior: s.prior.clone() })
            .collect();
        let recovery = recover(&inputs, options);
        let got: Vec<(&str, &str, Relation)> =
            recovery.edges.iter().map(|e| (e.parent.as_str(), e.child.as_str(), e.relation)).collect();
        let mut expected = edges.to_vec();
        expected.sort_by(|a, b| (a.1, a.0).cmp(&(b.1, b.0)));
        assert_eq!(got, expected);
        let expected_families: Vec<Vec<String>> =
            families.iter().map(|f| f.iter().map(|m| (*m).to_owned()).collect()).collect();
        assert_eq!(recovery.families, expected_families);
        for e in &recovery.edges {
            assert!((0.0..=1.0).contains(&e.confidence), "{e:?}");
        }
        recovery
    }

    /// A family with every relation, plus an unrelated tree of the same architecture.
    fn zoo(with_time: bool) -> Vec<Spec> {
        let t = |s: i64| with_time.then_some(s);
        let r = root(1);
        let u = root(2);
        let f1 = finetune(&r, 10, 0.15);
        let f2 = finetune(&r, 11, 0.15);
        let l = lora(&r, 13, 2, 0.3);
        let mut a = spec("a", adapter(&r, 14, 4, 0.1), t(500));
        a.prior.adapter_base = Some("r".to_owned());
        vec![
            spec("r", r.clone(), t(100)),
            spec("u", u.clone(), t(100)),
            spec("f1", f1.clone(), t(200)),
            spec("f2", f2.clone(), t(210)),
            spec("g", finetune(&f1, 12, 0.1), t(300)),
            // A merged LoRA that moves q/v twice as far as the full fine-tunes move everything.
            spec("l", l.clone(), t(220)),
            spec("d", cast_bf16(&r), t(150)),
            spec("q", quantize_int8(&f1), t(250)),
            spec("m", merge(&f1, &f2, 0.5), t(400)),
            spec("ta", task_arithmetic(&r, &f2, &l, 0.7, 0.5), t(450)),
            a,
            spec("uf", finetune(&u, 15, 0.15), t(120)),
        ]
    }

    const ZOO_EDGES: [(&str, &str, Relation); 12] = [
        ("r", "f1", Relation::Finetune),
        ("r", "f2", Relation::Finetune),
        ("f1", "g", Relation::Finetune),
        ("r", "l", Relation::Lora),
        ("r", "d", Relation::Duplicate),
        ("f1", "q", Relation::Quantized),
        ("f1", "m", Relation::Merge),
        ("f2", "m", Relation::Merge),
        ("f2", "ta", Relation::Merge),
        ("l", "ta", Relation::Merge),
        ("r", "a", Relation::Adapter),
        ("u", "uf", Relation::Finetune),
    ];
    const ZOO_FAMILIES: [&[&str]; 2] = [&["a", "d", "f1", "f2", "g", "l", "m", "q", "r", "ta"], &["u", "uf"]];

    #[test]
    fn recovers_every_relation() {
        let recovery = check(&zoo(true), &Options::default(), &ZOO_EDGES, &ZOO_FAMILIES);
        let adapter = recovery.edges.iter().find(|e| e.child == "a").map(|e| e.source);
        assert_eq!(adapter, Some(EdgeSource::Metadata));
    }

    #[test]
    fn input_order_does_not_matter() {
        let mut specs = zoo(true);
        specs.reverse();
        specs.swap(1, 7);
        check(&specs, &Options::default(), &ZOO_EDGES, &ZOO_FAMILIES);
    }

    #[test]
    fn weights_alone_orient_the_tree() {
        // No creation times, no cards: direction comes from the effective-rank prior only.
        check(&zoo(false), &Options::default(), &ZOO_EDGES, &ZOO_FAMILIES);
    }

    #[test]
    fn a_merged_upload_names_an_adapters_base_against_its_card() {
        // The adapter was trained on f1; the same adapter merged into f1 was uploaded too.
        let r = root(1);
        let f1 = finetune(&r, 10, 0.15);
        let specs = |card: &str| {
            let mut a = spec("a", adapter(&f1, 21, 4, 0.1), Some(500));
            a.prior.adapter_base = Some(card.to_owned());
            vec![
                spec("r", r.clone(), Some(100)),
                spec("f1", f1.clone(), Some(200)),
                spec("f1-merged", cast_bf16(&lora(&f1, 21, 4, 0.1)), Some(510)),
                a,
            ]
        };
        let edges =
            [("r", "f1", Relation::Finetune), ("f1", "f1-merged", Relation::Lora), ("f1", "a", Relation::Adapter)];
        let families: [&[&str]; 1] = [&["a", "f1", "f1-merged", "r"]];
        // Its config names r: the weights override it.
        let recovery = check(&specs("r"), &Options::default(), &edges, &families);
        let adapter = recovery.edges.iter().find(|e| e.child == "a").expect("the adapter's edge");
        assert_eq!(adapter.source, EdgeSource::Weights);
        assert!(adapter.confidence > 0.9, "{adapter:?}");
        // With the card right, weights and metadata agree.
        let recovery = check(&specs("f1"), &Options::default(), &edges, &families);
        let adapter = recovery.edges.iter().find(|e| e.child == "a").expect("the adapter's edge");
        assert_eq!(adapter.source, EdgeSource::Both);
    }

    #[test]
    fn wrong_card_is_overridden_by_weights() {
        let mut specs = zoo(true);
        // f1 claims the unrelated u as its base (the sketches show no relation), and r claims to come from f2
        // (which was created after it and has the higher effective rank).
        specs[2].prior.declared_bases = vec!["u".to_owned()];
        specs[0].prior.declared_bases = vec!["f2".to_owned()];
        check(&specs, &Options::default(), &ZOO_EDGES, &ZOO_FAMILIES);
    }

    #[test]
    fn declared_base_marks_the_source() {
        let mut specs = zoo(true);
        specs[4].prior.declared_bases = vec!["f1".to_owned()];
        let recovery = check(&specs, &Options::default(), &ZOO_EDGES, &ZOO_FAMILIES);
        let g = recovery.edges.iter().find(|e| e.child == "g").map(|e| e.source);
        assert_eq!(g, Some(EdgeSource::Both));
    }

    #[test]
    fn independent_roots_are_unrelated() {
        let specs: Vec<Spec> =
            ["a", "b", "c", "d", "e"].iter().zip(1u64..).map(|(&id, seed)| spec(id, root(100 + seed), None)).collect();
        check(&specs, &Options::default(), &[], &[&["a"], &["b"], &["c"], &["d"], &["e"]]);
    }

    #[test]
    fn mother_orients_by_kurtosis() {
        let r = root(7);
        let f1 = finetune(&r, 1, 0.2);
        let specs = vec![
            spec("r", r.clone(), None),
            spec("f1", f1.clone(), None),
            spec("f2", finetune(&r, 2, 0.2), None),
            spec("g", finetune(&f1, 3, 0.2), None),
            spec("u", root(8), None),
        ];
        let options = Options { method: Method::Mother, ..Options::default() };
        let edges = [("r", "f1", Relation::Finetune), ("r", "f2", Relation::Finetune), ("f1", "g", Relation::Finetune)];
        check(&specs, &options, &edges, &[&["f1", "f2", "g", "r"], &["u"]]);
    }

    #[test]
    fn duplicate_direction_follows_the_information() {
        // A bf16 original re-uploaded as an exact f32 upcast: the upcast is the copy.
        let original = cast_bf16(&root(21));
        let mut upcast = original.clone();
        upcast.tensors.iter_mut().for_each(|t| t.dtype = Dtype::F32);
        // An f32 original re-uploaded rounded to bf16: the rounding is the copy.
        let f32_original = root(22);
        let rounded = cast_bf16(&f32_original);
        let specs = vec![
            spec("b-orig", original, None),
            spec("a-up", upcast, None),
            spec("c-f32", f32_original, None),
            spec("d-bf16", rounded, None),
        ];
        let edges = [("b-orig", "a-up", Relation::Duplicate), ("c-f32", "d-bf16", Relation::Duplicate)];
        let recovery = check(&specs, &Options::default(), &edges, &[&["a-up", "b-orig"], &["c-f32", "d-bf16"]]);
        assert!(recovery.edges.iter().all(|e| e.confidence == 0.9), "cast duplicates: {recovery:?}");
    }

    #[test]
    fn adapter_without_declaration_takes_the_only_compatible_base() {
        let r = root(31);
        let specs = vec![spec("r", r.clone(), None), spec("a", adapter(&r, 1, 4, 0.1), None)];
        let recovery = check(&specs, &Options::default(), &[("r", "a", Relation::Adapter)], &[&["a", "r"]]);
        assert_eq!(recovery.edges[0].source, EdgeSource::Weights);
    }

    #[test]
    fn model_without_sketches_rests_on_its_card() {
        let r = root(41);
        let mut opaque = spec("org/packed", quantize_int8(&r), None);
        opaque.prior.declared_bases = vec!["ORG/R".to_owned()];
        opaque.prior.quantized = true;
        let specs = [spec("org/r", r, None), opaque];
        let mut signatures: Vec<ModelSignature> = specs.iter().map(|s| sign(&s.weights, &scheme())).collect();
        // Packed integers the reader could not dequantise: no sketch, no moments.
        for t in &mut signatures[1].tensors {
            t.sketch = None;
            t.moments = None;
        }
        let inputs: Vec<ModelInput<'_>> = specs
            .iter()
            .zip(&signatures)
            .map(|(s, signature)| ModelInput { id: s.id, signature, prior: s.prior.clone() })
            .collect();
        let recovery = recover(&inputs, &Options::default());
        let edge = Edge {
            parent: "org/r".to_owned(),
            child: "org/packed".to_owned(),
            relation: Relation::Quantized,
            confidence: 0.5,
            source: EdgeSource::Metadata,
        };
        assert_eq!(recovery.edges, vec![edge]);
        assert_eq!(recovery.families, vec![vec!["org/packed".to_owned(), "org/r".to_owned()]]);
    }

    #[test]
    fn lora_needs_frozen_norms_not_just_low_rank() {
        let r = root(51);
        let specs = vec![
            spec("r", r.clone(), Some(1)),
            // Rank 2 everywhere, but the norms moved: a full fine-tune.
            spec("full", low_rank_finetune(&r, 2, 2, 0.2), Some(2)),
            // A merged LoRA re-saved in bf16: the untouched tensors differ from the parent only by rounding.
            spec("lora-bf16", cast_bf16(&lora(&r, 3, 2, 0.2)), Some(3)),
        ];
        let edges = [("r", "full", Relation::Finetune), ("r", "lora-bf16", Relation::Lora)];
        check(&specs, &Options::default(), &edges, &[&["full", "lora-bf16", "r"]]);
    }

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
