//! Test support: signatures of synthetic models built by real random-matrix processes.
//!
//! A root is a structured random matrix per tensor (a strong low-rank part plus heavy-tailed noise, roughly
//! what training leaves), a fine-tune adds small dense Gaussian noise, a LoRA adds `B·A` to the attention
//! q/v projections, a merge is a weighted sum, a cast rounds to bf16, a quantised child is an int8 round trip
//! and an adapter holds only the `B·A` deltas. Signatures are then computed from the values exactly as the
//! `signature` crate defines them: moments, a two-sided CountSketch keyed by name and shape, paired samples and
//! a content hash of the stored bytes.

use signature::{Dtype, ModelSignature, Moments, Scheme, Sketch, TensorSignature, ValueSource};

/// splitmix64: tiny, seedable, good enough for test matrices.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in (0, 1).
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// Laplace(0, 1/√2): unit variance, excess kurtosis 3.
    pub fn laplace(&mut self) -> f64 {
        let u = self.uniform() - 0.5;
        -u.signum() * (1.0 - 2.0 * u.abs()).ln() / std::f64::consts::SQRT_2
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn key(text: &str, shape: &[u64], salt: u64) -> u64 {
    let mut h = salt;
    for b in text.bytes() {
        h = mix(h ^ u64::from(b));
    }
    for &d in shape {
        h = mix(h ^ d);
    }
    h
}

/// One tensor's values, row-major.
#[derive(Clone, Debug)]
pub(crate) struct Tensor {
    pub name: String,
    pub shape: Vec<u64>,
    pub dtype: Dtype,
    pub source: ValueSource,
    pub values: Vec<f32>,
}

impl Tensor {
    fn rows(&self) -> usize {
        self.shape[0] as usize
    }

    fn cols(&self) -> usize {
        self.shape.get(1).copied().unwrap_or(1) as usize
    }
}

/// A model as its tensors.
#[derive(Clone, Debug)]
pub(crate) struct Weights {
    pub tensors: Vec<Tensor>,
}

const HIDDEN: u64 = 48;
const KV: u64 = 24;
const FFN: u64 = 96;
const VOCAB: u64 = 80;
const LAYERS: usize = 3;

/// Tensor names and shapes of the toy Llama: GQA attention, gated MLP, norms, embeddings and head.
fn layout() -> Vec<(String, Vec<u64>)> {
    let mut out = vec![
        ("lm_head.weight".to_owned(), vec![VOCAB, HIDDEN]),
        ("model.embed_tokens.weight".to_owned(), vec![VOCAB, HIDDEN]),
        ("model.norm.weight".to_owned(), vec![HIDDEN]),
    ];
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        out.push((format!("{p}.input_layernorm.weight"), vec![HIDDEN]));
        out.push((format!("{p}.mlp.down_proj.weight"), vec![HIDDEN, FFN]));
        out.push((format!("{p}.mlp.gate_proj.weight"), vec![FFN, HIDDEN]));
        out.push((format!("{p}.mlp.up_proj.weight"), vec![FFN, HIDDEN]));
        out.push((format!("{p}.self_attn.k_proj.weight"), vec![KV, HIDDEN]));
        out.push((format!("{p}.self_attn.o_proj.weight"), vec![HIDDEN, HIDDEN]));
        out.push((format!("{p}.self_attn.q_proj.weight"), vec![HIDDEN, HIDDEN]));
        out.push((format!("{p}.self_attn.v_proj.weight"), vec![KV, HIDDEN]));
    }
    out.sort();
    out
}

/// A root: per 2-D tensor `0.02·(U·V/√r + 0.5·Laplace)` with rank `r = 4`, norms near 1.
pub(crate) fn root(seed: u64) -> Weights {
    let mut rng = Rng::new(seed);
    let tensors = layout()
        .into_iter()
        .map(|(name, shape)| {
            let values = if shape.len() == 1 {
                (0..shape[0]).map(|_| (1.0 + 0.1 * rng.normal()) as f32).collect()
            } else {
                let (m, n, r) = (shape[0] as usize, shape[1] as usize, 4);
                let u: Vec<f64> = (0..m * r).map(|_| rng.normal()).collect();
                let v: Vec<f64> = (0..r * n).map(|_| rng.normal()).collect();
                (0..m * n)
                    .map(|idx| {
                        let (i, j) = (idx / n, idx % n);
                        let low: f64 = (0..r).map(|q| u[i * r + q] * v[q * n + j]).sum::<f64>() / (r as f64).sqrt();
                        (0.02 * (low + 0.5 * rng.laplace())) as f32
                    })
                    .collect()
            };
            Tensor { name, shape, dtype: Dtype::F32, source: ValueSource::Raw, values }
        })
        .collect();
    Weights { tensors }
}

/// Every float value plus Gaussian noise of `relative` times the tensor's RMS (a dense fine-tune).
pub(crate) fn finetune(parent: &Weights, seed: u64, relative: f64) -> Weights {
    let mut rng = Rng::new(seed);
    let mut out = parent.clone();
    for t in &mut out.tensors {
        let rms = (t.values.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / t.values.len() as f64).sqrt();
        for v in &mut t.values {
            *v = (f64::from(*v) + relative * rms * rng.normal()) as f32;
        }
    }
    out
}

/// The `B·A` delta (rank `rank`, Frobenius norm `relative·‖W‖`) of a LoRA on every q and v projection.
pub(crate) fn lora_deltas(parent: &Weights, seed: u64, rank: usize, relative: f64) -> Vec<Tensor> {
    let mut rng = Rng::new(seed);
    parent
        .tensors
        .iter()
        .filter(|t| t.name.contains("q_proj") || t.name.contains("v_proj"))
        .map(|t| {
            let (m, n) = (t.rows(), t.cols());
            let b: Vec<f64> = (0..m * rank).map(|_| rng.normal()).collect();
            let a: Vec<f64> = (0..rank * n).map(|_| rng.normal()).collect();
            let mut delta: Vec<f64> =
                (0..m * n).map(|idx| (0..rank).map(|q| b[(idx / n) * rank + q] * a[q * n + idx % n]).sum()).collect();
            let norm = delta.iter().map(|d| d * d).sum::<f64>().sqrt();
            let target = relative * t.values.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt();
            delta.iter_mut().for_each(|d| *d *= target / norm);
            Tensor {
                name: t.name.clone(),
                shape: t.shape.clone(),
                dtype: Dtype::F32,
                source: ValueSource::AdapterDelta,
                values: delta.iter().map(|&d| d as f32).collect(),
            }
        })
        .collect()
}

/// A full fine-tune whose update of every 2-D weight happens to be rank `rank`, while the norms move too.
pub(crate) fn low_rank_finetune(parent: &Weights, seed: u64, rank: usize, relative: f64) -> Weights {
    let mut out = parent.clone();
    let mut rng = Rng::new(seed ^ 0xabcd);
    for t in out.tensors.iter_mut() {
        if t.shape.len() == 1 {
            t.values.iter_mut().for_each(|v| *v += (0.02 * rng.normal()) as f32);
            continue;
        }
        let (m, n) = (t.rows(), t.cols());
        let b: Vec<f64> = (0..m * rank).map(|_| rng.normal()).collect();
        let a: Vec<f64> = (0..rank * n).map(|_| rng.normal()).collect();
        let norm = t.values.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt();
        let scale = relative * norm / ((m * n * rank) as f64).sqrt();
        for (idx, v) in t.values.iter_mut().enumerate() {
            let d: f64 = (0..rank).map(|q| b[(idx / n) * rank + q] * a[q * n + idx % n]).sum();
            *v += (scale * d) as f32;
        }
    }
    out
}

/// The parent with a LoRA merged into its q and v projections.
pub(crate) fn lora(parent: &Weights, seed: u64, rank: usize, relative: f64) -> Weights {
    let mut out = parent.clone();
    for delta in lora_deltas(parent, seed, rank, relative) {
        if let Some(t) = out.tensors.iter_mut().find(|t| t.name == delta.name) {
            t.values.iter_mut().zip(&delta.values).for_each(|(v, d)| *v += d);
        }
    }
    out
}

/// An adapter repository: only the deltas.
pub(crate) fn adapter(parent: &Weights, seed: u64, rank: usize, relative: f64) -> Weights {
    Weights { tensors: lora_deltas(parent, seed, rank, relative) }
}

/// `alpha·a + (1 − alpha)·b`, tensor by tensor.
pub(crate) fn merge(a: &Weights, b: &Weights, alpha: f32) -> Weights {
    let mut out = a.clone();
    for (t, u) in out.tensors.iter_mut().zip(&b.tensors) {
        t.values.iter_mut().zip(&u.values).for_each(|(x, y)| *x = alpha * *x + (1.0 - alpha) * y);
    }
    out
}

/// Task arithmetic: `base + l1·(a − base) + l2·(b − base)`.
pub(crate) fn task_arithmetic(base: &Weights, a: &Weights, b: &Weights, l1: f32, l2: f32) -> Weights {
    let mut out = base.clone();
    for ((t, x), y) in out.tensors.iter_mut().zip(&a.tensors).zip(&b.tensors) {
        for ((v, p), q) in t.values.iter_mut().zip(&x.values).zip(&y.values) {
            *v += l1 * (p - *v) + l2 * (q - *v);
        }
    }
    out
}

/// Round-to-nearest-even cast to bf16, stored as bf16.
pub(crate) fn cast_bf16(w: &Weights) -> Weights {
    let mut out = w.clone();
    for t in &mut out.tensors {
        t.dtype = Dtype::BF16;
        for v in &mut t.values {
            let bits = v.to_bits();
            let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) & 0xffff_0000;
            *v = f32::from_bits(rounded);
        }
    }
    out
}

/// Symmetric per-row int8 quantisation of every 2-D tensor, signed as its dequantised values.
pub(crate) fn quantize_int8(w: &Weights) -> Weights {
    let mut out = w.clone();
    for t in out.tensors.iter_mut().filter(|t| t.shape.len() == 2) {
        let n = t.cols();
        for row in t.values.chunks_mut(n) {
            let scale = row.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0;
            if scale > 0.0 {
                row.iter_mut().for_each(|v| *v = (*v / scale).round() * scale);
            }
        }
        t.dtype = Dtype::I8;
        t.source = ValueSource::Dequantized;
    }
    out
}

/// The scheme the tests use: a small sketch, so a rank-2 LoRA is clearly low-rank and a dense update is not.
pub(crate) fn scheme() -> Scheme {
    Scheme { sketch_k: 16, samples: 256, ..Scheme::default() }
}

/// Computes the signature of `w` under `scheme`.
pub(crate) fn sign(w: &Weights, scheme: &Scheme) -> ModelSignature {
    let k = scheme.sketch_k as usize;
    let mut tensors: Vec<TensorSignature> = w
        .tensors
        .iter()
        .map(|t| {
            let numel = t.values.len();
            let mean = t.values.iter().map(|&v| f64::from(v)).sum::<f64>() / numel as f64;
            let central = |p: i32| t.values.iter().map(|&v| (f64::from(v) - mean).powi(p)).sum::<f64>();
            let moments = Moments {
                n: numel as u64,
                mean,
                m2: central(2),
                m3: central(3),
                m4: central(4),
                min: t.values.iter().fold(f64::INFINITY, |m, &v| m.min(f64::from(v))),
                max: t.values.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v))),
            };
            let sketch = (t.shape.len() == 2).then(|| {
                let (rk, ck) = (key(&t.name, &t.shape, scheme.seed), key(&t.name, &t.shape, !scheme.seed));
                let mut s = vec![0.0f64; k * k];
                let n = t.cols();
                for (idx, &v) in t.values.iter().enumerate() {
                    let (hr, hc) = (mix(rk ^ (idx / n) as u64), mix(ck ^ (idx % n) as u64));
                    let sign = if (hr ^ hc) & 1 == 1 { -1.0 } else { 1.0 };
                    s[((hr >> 1) as usize % k) * k + (hc >> 1) as usize % k] += sign * f64::from(v);
                }
                Sketch { k: scheme.sketch_k, values: s.iter().map(|&v| v as f32).collect() }
            });
            let sample_key = key(&t.name, &t.shape, scheme.seed ^ 0x5a5a);
            let samples =
                (0..scheme.samples as u64).map(|s| t.values[(mix(sample_key ^ s) % numel as u64) as usize]).collect();
            let mut hash = [0u8; 32];
            let mut h = key(t.dtype.as_str(), &t.shape, 1);
            for &v in &t.values {
                h = mix(h ^ u64::from(v.to_bits()));
            }
            for (i, chunk) in hash.chunks_mut(8).enumerate() {
                chunk.copy_from_slice(&mix(h ^ i as u64).to_le_bytes());
            }
            TensorSignature {
                name: t.name.clone(),
                dtype: t.dtype,
                shape: t.shape.clone(),
                byte_len: numel as u64 * t.dtype.size(),
                content_hash: hash,
                source: t.source,
                moments: Some(moments),
                sketch,
                samples,
            }
        })
        .collect();
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    ModelSignature { scheme: *scheme, tensors }
}
