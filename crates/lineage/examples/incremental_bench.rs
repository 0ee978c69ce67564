//! Times the incremental tree builder on one synthetic family of 10,000 models.
//!
//! The family is a tree of fine-tunes built directly in sketch space (sketches are linear, so a fine-tune that
//! adds dense noise to the weights adds noise to the sketch): k = 64 sketches of four 256×256 block weights,
//! a root with random sketches, and every later model a child of an earlier one (half of them of one of the
//! first twenty "popular bases", half of a uniformly chosen model) with 10 % relative noise per tensor, moved
//! norms, a summed kurtosis that drops a little per step and increasing upload times. All models share one
//! architecture, far above `lineage::limits::DENSE_LIMIT`, so the index screens candidate pairs (design §4.1)
//! rather than comparing all pairs, and the family is solved sparsely (`limits::SPARSE_ABOVE`).
//!
//! Figures: (a) median and p90 time of adding one model and re-solving its family, over 60 adds, with the
//! number of families re-solved per add; (b) a full re-solve of the family from the index's cached
//! comparisons, and a batch `recover` from scratch (screening and exact comparisons included). The recovered
//! edge accuracy against the generating tree is printed so the figures are about a meaningful instance.
//!
//! Run: `cargo run --release -p modeltree-lineage --example incremental_bench [-- MODELS ADDS]`

use std::time::Instant;

use lineage::{Index, ModelInput, Options, OwnedModelInput, Prior, recover};
use signature::{Dtype, ModelSignature, Moments, Scheme, Sketch, TensorSignature, ValueSource};

mod support;

use support::Rng;

const K: usize = 64;
const LAYERS: usize = 4;
const SIDE: u64 = 256;

/// What a model is in sketch space: one sketch per block weight, a norm vector and its summed kurtosis.
struct Raw {
    sketches: Vec<Vec<f32>>,
    norm: Vec<f32>,
    kurtosis: f64,
}

fn moments(kurtosis: f64, n: u64) -> Moments {
    // Unit variance: excess kurtosis = n·m4/m2² − 3 with m2 = n.
    let m2 = n as f64;
    Moments { n, mean: 0.0, m2, m3: 0.0, m4: (kurtosis + 3.0) * m2, min: -1.0, max: 1.0 }
}

fn hash(rng: &mut Rng) -> [u8; 32] {
    let mut h = [0u8; 32];
    for chunk in h.chunks_mut(8) {
        chunk.copy_from_slice(&rng.next().to_le_bytes());
    }
    h
}

fn signature(raw: &Raw, rng: &mut Rng) -> ModelSignature {
    let scheme = Scheme { sketch_k: K as u32, samples: 0, ..Scheme::default() };
    let mut tensors = Vec::new();
    for (l, sketch) in raw.sketches.iter().enumerate() {
        tensors.push(TensorSignature {
            name: format!("model.layers.{l}.mlp.down_proj.weight"),
            dtype: Dtype::BF16,
            shape: vec![SIDE, SIDE],
            byte_len: SIDE * SIDE * 2,
            content_hash: hash(rng),
            source: ValueSource::Raw,
            moments: Some(moments(raw.kurtosis / LAYERS as f64, SIDE * SIDE)),
            sketch: Some(Sketch { k: K as u32, values: sketch.clone() }),
            samples: Vec::new(),
        });
        tensors.push(TensorSignature {
            name: format!("model.layers.{l}.post_attention_layernorm.weight"),
            dtype: Dtype::BF16,
            shape: vec![SIDE],
            byte_len: SIDE * 2,
            content_hash: hash(rng),
            source: ValueSource::Raw,
            moments: Some(moments(0.0, SIDE)),
            sketch: None,
            samples: raw.norm.clone(),
        });
    }
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    ModelSignature { scheme, tensors }
}

/// Models `0..n` of a random fine-tune tree; `parent[v]` is the truth.
fn family(n: usize, rng: &mut Rng) -> (Vec<OwnedModelInput>, Vec<usize>) {
    let mut raws: Vec<Raw> = Vec::with_capacity(n);
    let mut parent = Vec::with_capacity(n);
    let mut models = Vec::with_capacity(n);
    for v in 0..n {
        let raw = if v == 0 {
            parent.push(usize::MAX);
            Raw {
                sketches: (0..LAYERS).map(|_| (0..K * K).map(|_| rng.normal() as f32).collect()).collect(),
                norm: (0..16).map(|_| 1.0).collect(),
                kurtosis: 40.0,
            }
        } else {
            let p = if rng.next().is_multiple_of(2) {
                (rng.next() % v.min(20) as u64) as usize
            } else {
                (rng.next() % v as u64) as usize
            };
            parent.push(p);
            let from = &raws[p];
            Raw {
                sketches: from
                    .sketches
                    .iter()
                    .map(|s| s.iter().map(|&x| x + (0.1 * rng.normal()) as f32).collect())
                    .collect(),
                norm: from.norm.iter().map(|&x| x + (0.01 * rng.normal()) as f32).collect(),
                kurtosis: from.kurtosis * (0.97 + 0.01 * rng.normal()),
            }
        };
        let prior = Prior { created_at: Some(v as i64 * 60), ..Prior::default() };
        models.push(OwnedModelInput { id: format!("org/model-{v:05}"), signature: signature(&raw, rng), prior });
        raws.push(raw);
    }
    (models, parent)
}

fn accuracy(edges: &[lineage::Edge], parent: &[usize], count: usize) -> f64 {
    let id = |v: usize| format!("org/model-{v:05}");
    let correct = (1..count).filter(|&v| edges.iter().any(|e| e.child == id(v) && e.parent == id(parent[v]))).count();
    correct as f64 / (count - 1) as f64
}

/// An order-independent digest of the edges (endpoints, relation, source, confidence bits), to compare two builds.
fn digest(edges: &[lineage::Edge]) -> u64 {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut h = DefaultHasher::new();
    for e in edges {
        (&e.parent, &e.child, e.relation.as_str(), e.source.as_str(), e.confidence.to_bits()).hash(&mut h);
    }
    h.finish()
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let n = args.first().copied().unwrap_or(10_000);
    let adds = args.get(1).copied().unwrap_or(60);
    let mut rng = Rng(7);
    let started = Instant::now();
    let (mut models, parent) = family(n + adds, &mut rng);
    let extra = models.split_off(n);
    println!(
        "generated {} models (k = {K}, {LAYERS} block weights) in {:.1} s",
        n + adds,
        started.elapsed().as_secs_f64()
    );

    let options = Options::default();
    let batch_inputs: Vec<ModelInput<'_>> =
        models.iter().map(|m| ModelInput { id: &m.id, signature: &m.signature, prior: m.prior.clone() }).collect();
    let started = Instant::now();
    let recovery = recover(&batch_inputs, &options);
    let batch = started.elapsed().as_secs_f64();
    println!(
        "batch recover of {n} models from scratch: {batch:.2} s, {} families, edge accuracy {:.3}, digest {:016x}",
        recovery.families.len(),
        accuracy(&recovery.edges, &parent, n),
        digest(&recovery.edges)
    );

    let mut index = Index::new(options);
    let started = Instant::now();
    index.add(models.clone());
    index.solve_touched();
    println!("index filled with {n} models and solved: {:.2} s", started.elapsed().as_secs_f64());
    assert_eq!(index.recovery(), recovery, "an index filled at once equals the batch recovery");

    let mut times = Vec::new();
    let mut add_times = Vec::new();
    let mut resolved = Vec::new();
    let mut touched_models = Vec::new();
    for model in extra {
        let started = Instant::now();
        index.add(vec![model]);
        let added = started.elapsed().as_secs_f64() * 1e3;
        let update = index.solve_touched();
        times.push(started.elapsed().as_secs_f64() * 1e3);
        add_times.push(added);
        resolved.push(update.families.len());
        touched_models.push(update.families.iter().map(|f| f.members.len()).sum::<usize>());
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "(a) add one model + re-solve its family, {} adds: median {:.1} ms, p90 {:.1} ms, max {:.1} ms; \
         families re-solved per add: {:?} (models in them: min {}, max {})",
        times.len(),
        percentile(&sorted, 0.5),
        percentile(&sorted, 0.9),
        sorted.last().copied().unwrap_or(0.0),
        {
            let mut r = resolved.clone();
            r.dedup();
            r
        },
        touched_models.iter().min().unwrap_or(&0),
        touched_models.iter().max().unwrap_or(&0),
    );

    add_times.sort_by(f64::total_cmp);
    println!("    of which the add itself (screen, compare, families): median {:.1} ms", percentile(&add_times, 0.5));
    let total = n + adds;
    let started = Instant::now();
    index.touch_all();
    let update = index.solve_touched();
    println!(
        "(b) full re-solve of the {}-model family from cached comparisons: {:.2} s ({} family), edge accuracy {:.3}, \
         digest {:016x}",
        total,
        started.elapsed().as_secs_f64(),
        update.families.len(),
        accuracy(&index.edges(), &parent, total),
        digest(&index.edges())
    );
}
