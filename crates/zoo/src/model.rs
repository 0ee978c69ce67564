//! The Llama decoder the zoo trains, written with candle's differentiable ops.
//!
//! Parameter names and shapes match `transformers`' `LlamaForCausalLM` exactly, so the checkpoints the zoo writes
//! look like any small Llama on the Hub. The forward pass uses only ops with a backward pass (RMSNorm, RoPE in the
//! rotate-half convention and softmax are spelled out from primitive ops, because candle's fused versions have no
//! gradient). A [`Net`] is a view over named tensors: full fine-tuning makes every tensor a `Var`, LoRA keeps the
//! base frozen and adds trainable `A`/`B` factors for the adapted projections.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use candle_core::{D, DType, Device, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::tasks::Batch;
use crate::weights::{Mat, Weights};

/// Architecture hyper-parameters (the essentials of `config.json`).
#[derive(Clone, Debug, PartialEq)]
pub struct Arch {
    pub vocab: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub ctx: usize,
    pub rms_eps: f64,
    pub rope_theta: f64,
}

impl Arch {
    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    /// Every parameter name with its shape, in `transformers` naming.
    pub fn parameter_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (h, i, v) = (self.hidden, self.intermediate, self.vocab);
        let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, h])];
        for l in 0..self.layers {
            let p = format!("model.layers.{l}");
            out.push((format!("{p}.input_layernorm.weight"), vec![h]));
            for proj in ["q_proj", "k_proj", "v_proj", "o_proj"] {
                out.push((format!("{p}.self_attn.{proj}.weight"), vec![h, h]));
            }
            out.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
            out.push((format!("{p}.mlp.gate_proj.weight"), vec![i, h]));
            out.push((format!("{p}.mlp.up_proj.weight"), vec![i, h]));
            out.push((format!("{p}.mlp.down_proj.weight"), vec![h, i]));
        }
        out.push(("model.norm.weight".to_string(), vec![h]));
        out.push(("lm_head.weight".to_string(), vec![v, h]));
        out
    }

    /// Total parameter count.
    pub fn parameter_count(&self) -> usize {
        self.parameter_shapes().iter().map(|(_, s)| s.iter().product::<usize>()).sum()
    }
}

/// A fresh initialisation: norms at 1, every matrix N(0, 0.02²) as `transformers` does (`initializer_range`).
pub fn init_weights(arch: &Arch, seed: u64) -> Weights {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    arch.parameter_shapes()
        .into_iter()
        .map(|(name, shape)| {
            let n = shape.iter().product();
            let data = if shape.len() == 1 { vec![1.0; n] } else { normal_vec(&mut rng, n, 0.02) };
            (name, Mat { shape, data })
        })
        .collect()
}

/// `n` draws from N(0, std²) by Box–Muller over the seeded stream (candle's CPU RNG cannot be seeded).
pub fn normal_vec(rng: &mut ChaCha8Rng, n: usize, std: f32) -> Vec<f32> {
    use rand::RngExt;
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1: f64 = rng.random::<f64>().max(1e-300);
        let u2: f64 = rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        out.push((r * t.cos()) as f32 * std);
        out.push((r * t.sin()) as f32 * std);
    }
    out.truncate(n);
    out
}

/// `n` draws from U(−bound, bound).
pub fn uniform_vec(rng: &mut ChaCha8Rng, n: usize, bound: f32) -> Vec<f32> {
    use rand::RngExt;
    (0..n).map(|_| (rng.random::<f32>() * 2.0 - 1.0) * bound).collect()
}

/// Converts a named f32 checkpoint to candle tensors.
///
/// # Errors
/// When candle rejects a shape.
pub fn to_tensors(w: &Weights, dev: &Device) -> Result<BTreeMap<String, Tensor>> {
    w.iter().map(|(k, m)| Ok((k.clone(), Tensor::from_vec(m.data.clone(), m.shape.as_slice(), dev)?))).collect()
}

/// Reads a candle tensor back into a [`Mat`].
///
/// # Errors
/// When the tensor is not f32.
pub fn to_mat(t: &Tensor) -> Result<Mat> {
    let shape = t.dims().to_vec();
    let data = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    Mat::new(shape, data)
}

/// Trainable LoRA factors for some projections: name → (A `[r, in]`, B `[out, r]`), applied with `scale`.
#[derive(Debug)]
pub struct LoraVars {
    pub factors: BTreeMap<String, (Var, Var)>,
    pub scale: f64,
}

/// The network as a view over named tensors, optionally with LoRA factors on top.
#[derive(Debug)]
pub struct Net<'a> {
    pub arch: &'a Arch,
    pub params: &'a BTreeMap<String, Tensor>,
    pub lora: Option<&'a LoraVars>,
    rope: (Tensor, Tensor),
    causal: Tensor,
}

impl<'a> Net<'a> {
    /// Builds the fixed RoPE tables and causal mask for `arch`.
    ///
    /// # Errors
    /// When candle cannot allocate the tables.
    pub fn new(arch: &'a Arch, params: &'a BTreeMap<String, Tensor>, lora: Option<&'a LoraVars>) -> Result<Self> {
        let dev = Device::Cpu;
        let (t, hd) = (arch.ctx, arch.head_dim());
        let half = hd / 2;
        let mut cos = Vec::with_capacity(t * hd);
        let mut sin = Vec::with_capacity(t * hd);
        for pos in 0..t {
            // Rotate-half layout: frequency i drives both dimension i and i + hd/2 (as `transformers` does).
            for j in 0..hd {
                let i = j % half;
                let inv = 1.0 / arch.rope_theta.powf(2.0 * i as f64 / hd as f64);
                let a = pos as f64 * inv;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        let cos = Tensor::from_vec(cos, (1, 1, t, hd), &dev)?;
        let sin = Tensor::from_vec(sin, (1, 1, t, hd), &dev)?;
        let mask: Vec<f32> = (0..t * t).map(|k| if k % t > k / t { -1e9 } else { 0.0 }).collect();
        let causal = Tensor::from_vec(mask, (t, t), &dev)?;
        Ok(Net { arch, params, lora, rope: (cos, sin), causal })
    }

    fn p(&self, name: &str) -> Result<&Tensor> {
        self.params.get(name).with_context(|| format!("parameter {name} missing"))
    }

    /// `x·Wᵀ` (+ `scale·(x·Aᵀ)·Bᵀ` when the projection carries LoRA factors); `x` is `[n, in]`.
    fn linear(&self, x: &Tensor, name: &str) -> Result<Tensor> {
        let w = self.p(name)?;
        let y = x.matmul(&w.t()?)?;
        match self.lora.and_then(|l| l.factors.get(name).map(|f| (f, l.scale))) {
            Some(((a, b), scale)) => {
                let delta = x.matmul(&a.as_tensor().t()?)?.matmul(&b.as_tensor().t()?)?;
                Ok((y + (delta * scale)?)?)
            }
            None => Ok(y),
        }
    }

    fn rms_norm(&self, x: &Tensor, name: &str) -> Result<Tensor> {
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = x.broadcast_div(&(ms + self.arch.rms_eps)?.sqrt()?)?;
        Ok(normed.broadcast_mul(self.p(name)?)?)
    }

    fn rope(&self, x: &Tensor) -> Result<Tensor> {
        let hd = self.arch.head_dim();
        let x1 = x.narrow(D::Minus1, 0, hd / 2)?;
        let x2 = x.narrow(D::Minus1, hd / 2, hd / 2)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        Ok((x.broadcast_mul(&self.rope.0)? + rotated.broadcast_mul(&self.rope.1)?)?)
    }

    /// Logits `[rows·ctx, vocab]` for a `[rows, ctx]` batch of ids.
    ///
    /// # Errors
    /// When a parameter is missing or shapes disagree.
    pub fn logits(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let a = self.arch;
        let (h, nh, hd) = (a.hidden, a.heads, a.head_dim());
        let mut x = self.p("model.embed_tokens.weight")?.embedding(&ids.flatten_all()?)?; // [b·t, h]
        for l in 0..a.layers {
            let p = format!("model.layers.{l}");
            let hn = self.rms_norm(&x, &format!("{p}.input_layernorm.weight"))?;
            let heads = |proj: &str| -> Result<Tensor> {
                let y = self.linear(&hn, &format!("{p}.self_attn.{proj}.weight"))?;
                Ok(y.reshape((b, t, nh, hd))?.transpose(1, 2)?.contiguous()?)
            };
            let q = self.rope(&heads("q_proj")?)?;
            let k = self.rope(&heads("k_proj")?)?;
            let v = heads("v_proj")?;
            let scores = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?.broadcast_add(&self.causal)?;
            let max = scores.max_keepdim(D::Minus1)?;
            let e = scores.broadcast_sub(&max)?.exp()?;
            let probs = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
            let att = probs.matmul(&v)?.transpose(1, 2)?.reshape((b * t, h))?;
            x = (x + self.linear(&att, &format!("{p}.self_attn.o_proj.weight"))?)?;
            let hn = self.rms_norm(&x, &format!("{p}.post_attention_layernorm.weight"))?;
            let gate = self.linear(&hn, &format!("{p}.mlp.gate_proj.weight"))?.silu()?;
            let up = self.linear(&hn, &format!("{p}.mlp.up_proj.weight"))?;
            x = (x + self.linear(&(gate * up)?, &format!("{p}.mlp.down_proj.weight"))?)?;
        }
        let x = self.rms_norm(&x, "model.norm.weight")?;
        self.linear(&x, "lm_head.weight")
    }

    /// Next-token cross-entropy (nats) averaged over the scored positions of each row, then over rows.
    ///
    /// Averaging per row first gives every sequence the same say whatever its task: a language row scores 30
    /// tokens and a copy row a handful, and a token-level mean would let the easy language statistics drown out
    /// the algorithmic tasks.
    ///
    /// # Errors
    /// When the forward pass fails.
    pub fn loss(&self, batch: &Batch) -> Result<Tensor> {
        let dev = Device::Cpu;
        let ids = Tensor::from_vec(batch.inputs.clone(), (batch.rows, batch.ctx), &dev)?;
        let targets = Tensor::from_vec(batch.targets.clone(), (batch.rows * batch.ctx, 1), &dev)?;
        let weights = row_weights(batch);
        let weights = Tensor::from_vec(weights, batch.rows * batch.ctx, &dev)?;
        let logits = self.logits(&ids)?;
        let max = logits.max_keepdim(D::Minus1)?;
        let shifted = logits.broadcast_sub(&max)?;
        let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
        let picked = shifted.gather(&targets, 1)?;
        let nll = (lse - picked)?.flatten_all()?;
        Ok((nll * weights)?.sum_all()?)
    }
}

/// Per-position loss weights: each scored position gets `1 / (scored in its row · rows with any scored position)`.
pub fn row_weights(batch: &Batch) -> Vec<f32> {
    let rows_scored = batch.mask.chunks(batch.ctx).filter(|r| r.iter().any(|&m| m > 0.0)).count().max(1) as f32;
    batch
        .mask
        .chunks(batch.ctx)
        .flat_map(|row| {
            let n = row.iter().sum::<f32>();
            row.iter().map(move |&m| if n > 0.0 { m / n / rows_scored } else { 0.0 })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn tiny_arch() -> Arch {
        Arch { vocab: 40, hidden: 16, layers: 1, heads: 2, intermediate: 24, ctx: 8, rms_eps: 1e-5, rope_theta: 1e4 }
    }

    #[test]
    fn parameters_use_transformers_names() {
        let a = tiny_arch();
        let names: Vec<String> = a.parameter_shapes().into_iter().map(|(n, _)| n).collect();
        assert!(names.contains(&"model.layers.0.self_attn.v_proj.weight".to_string()));
        assert!(names.contains(&"model.layers.0.mlp.down_proj.weight".to_string()));
        assert_eq!(a.parameter_count(), 2 * 40 * 16 + 4 * 256 + 3 * 16 * 24 + 3 * 16);
        let w = init_weights(&a, 1);
        assert_eq!(w["model.layers.0.mlp.down_proj.weight"].shape, vec![16, 24]);
        assert_eq!(w, init_weights(&a, 1));
        assert_ne!(w, init_weights(&a, 2));
    }

    #[test]
    fn causal_model_ignores_future_tokens_and_loss_is_near_uniform_at_init() {
        let a = tiny_arch();
        let params = to_tensors(&init_weights(&a, 3), &Device::Cpu).expect("tensors");
        let net = Net::new(&a, &params, None).expect("net");
        let ids1 = Tensor::new(&[[1u32, 5, 7, 9, 11, 13, 15, 17]], &Device::Cpu).expect("ids");
        let ids2 = Tensor::new(&[[1u32, 5, 7, 9, 30, 31, 32, 33]], &Device::Cpu).expect("ids");
        let l1 = to_mat(&net.logits(&ids1).expect("logits")).expect("mat");
        let l2 = to_mat(&net.logits(&ids2).expect("logits")).expect("mat");
        assert_eq!(l1.data[..4 * 40], l2.data[..4 * 40], "positions 0..4 see only tokens 0..4");
        assert_ne!(l1.data[4 * 40..], l2.data[4 * 40..]);
        let batch = Batch {
            rows: 1,
            ctx: 8,
            inputs: vec![1, 5, 7, 9, 11, 13, 15, 17],
            targets: vec![5, 7, 9, 11, 13, 15, 17, 19],
            mask: vec![1.0; 8],
        };
        let loss = net.loss(&batch).expect("loss").to_scalar::<f32>().expect("scalar");
        assert!((loss - (40f32).ln()).abs() < 0.1, "loss {loss} at init");
    }

    #[test]
    fn every_scored_row_weighs_the_same() {
        let batch = Batch {
            rows: 3,
            ctx: 4,
            inputs: vec![0; 12],
            targets: vec![0; 12],
            mask: vec![1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0],
        };
        assert_eq!(row_weights(&batch), vec![0.125, 0.125, 0.125, 0.125, 0.0, 0.0, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0]);
    }
}
