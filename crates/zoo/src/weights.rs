//! Named f32 weights and the real post-processing steps applied to them.
//!
//! [`Weights`] is the in-memory form of a checkpoint between candle training and the safetensors writer. The
//! transformations here are the ones a Hub user runs on a trained model: storage casts (bf16/f16/f32), int8 and fp8
//! per-channel quantisation, merging LoRA factors back (`W + (alpha/r)·B·A`), linear and task-arithmetic merges, and
//! resizing the embeddings for added tokens. The statistics the ground truth and the report need (excess kurtosis,
//! relative Frobenius distance) live here too, so the generator and the report compute them the same way.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail, ensure};

/// A dense row-major f32 tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Mat {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Mat {
    /// A tensor of `shape` holding `data`.
    ///
    /// # Errors
    /// When the element count does not match the shape.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Mat> {
        ensure!(shape.iter().product::<usize>() == data.len(), "shape {shape:?} does not hold {} values", data.len());
        Ok(Mat { shape, data })
    }

    /// Rows and columns of a 2-D tensor.
    ///
    /// # Errors
    /// When the tensor is not 2-D.
    pub fn dims2(&self) -> Result<(usize, usize)> {
        match self.shape[..] {
            [r, c] => Ok((r, c)),
            _ => bail!("expected a 2-D tensor, got shape {:?}", self.shape),
        }
    }
}

/// A checkpoint: tensor name → tensor, in name order (so every iteration is deterministic).
pub type Weights = BTreeMap<String, Mat>;

/// Storage dtype of a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreDtype {
    F32,
    F16,
    BF16,
}

impl StoreDtype {
    /// The `torch_dtype` spelling.
    pub fn torch_name(self) -> &'static str {
        match self {
            StoreDtype::F32 => "float32",
            StoreDtype::F16 => "float16",
            StoreDtype::BF16 => "bfloat16",
        }
    }

    /// Rounds a value the way storing it in this dtype would.
    pub fn round(self, x: f32) -> f32 {
        match self {
            StoreDtype::F32 => x,
            StoreDtype::F16 => half::f16::from_f32(x).to_f32(),
            StoreDtype::BF16 => half::bf16::from_f32(x).to_f32(),
        }
    }
}

/// Rounds every value to what `dtype` storage keeps (what a reader of the stored file sees).
pub fn cast(w: &Weights, dtype: StoreDtype) -> Weights {
    w.iter()
        .map(|(k, m)| {
            (k.clone(), Mat { shape: m.shape.clone(), data: m.data.iter().map(|&x| dtype.round(x)).collect() })
        })
        .collect()
}

/// True for the 2-D weights inside the decoder blocks (attention and MLP projections): the matrices every statistic
/// in the zoo is computed over.
pub fn is_block_matrix(name: &str) -> bool {
    name.starts_with("model.layers.") && name.ends_with("_proj.weight")
}

/// The projection kind of a block matrix name (`q_proj`, `down_proj`, …).
pub fn layer_kind(name: &str) -> Option<&str> {
    let stem = name.strip_suffix(".weight")?;
    let kind = stem.rsplit('.').next()?;
    kind.ends_with("_proj").then_some(kind)
}

/// Population excess kurtosis `n·Σ(x−μ)⁴ / (Σ(x−μ)²)² − 3` (scipy's default), in f64.
pub fn excess_kurtosis(x: &[f32]) -> f64 {
    let n = x.len() as f64;
    if n == 0.0 {
        return 0.0;
    }
    let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let (mut m2, mut m4) = (0.0, 0.0);
    for &v in x {
        let d = f64::from(v) - mean;
        let d2 = d * d;
        m2 += d2;
        m4 += d2 * d2;
    }
    if m2 == 0.0 { 0.0 } else { n * m4 / (m2 * m2) - 3.0 }
}

/// Summed excess kurtosis over all block matrices, plus the sum per projection kind.
pub fn kurtosis_summary(w: &Weights) -> (f64, BTreeMap<String, f64>) {
    let mut total = 0.0;
    let mut by_kind = BTreeMap::new();
    for (name, m) in w.iter().filter(|(n, _)| is_block_matrix(n)) {
        let k = excess_kurtosis(&m.data);
        total += k;
        if let Some(kind) = layer_kind(name) {
            *by_kind.entry(kind.to_string()).or_insert(0.0) += k;
        }
    }
    (total, by_kind)
}

/// Relative Frobenius distance `‖A−B‖/‖B‖` over all block matrices the two checkpoints share by name and shape.
///
/// # Errors
/// When they share no block matrix.
pub fn relative_distance(a: &Weights, b: &Weights) -> Result<f64> {
    let (mut diff, mut base, mut shared) = (0.0f64, 0.0f64, 0usize);
    for (name, mb) in b.iter().filter(|(n, _)| is_block_matrix(n)) {
        let Some(ma) = a.get(name).filter(|ma| ma.shape == mb.shape) else { continue };
        shared += 1;
        for (&x, &y) in ma.data.iter().zip(&mb.data) {
            let d = f64::from(x) - f64::from(y);
            diff += d * d;
            base += f64::from(y) * f64::from(y);
        }
    }
    ensure!(shared > 0 && base > 0.0, "no shared block matrices");
    Ok((diff / base).sqrt())
}

/// `out = a·P1 + (1−a)·P2` for every tensor.
///
/// # Errors
/// When the checkpoints differ in names or shapes.
pub fn merge_linear(p1: &Weights, p2: &Weights, a: f32) -> Result<Weights> {
    combine(&[(p1, a), (p2, 1.0 - a)])
}

/// Task arithmetic: `base + λ1·(P1 − base) + λ2·(P2 − base)`.
///
/// # Errors
/// When the checkpoints differ in names or shapes.
pub fn merge_task_arithmetic(base: &Weights, p1: &Weights, p2: &Weights, l1: f32, l2: f32) -> Result<Weights> {
    combine(&[(base, 1.0 - l1 - l2), (p1, l1), (p2, l2)])
}

fn combine(terms: &[(&Weights, f32)]) -> Result<Weights> {
    let (first, _) = terms.first().context("nothing to combine")?;
    let mut out = Weights::new();
    for (name, m0) in first.iter() {
        let mut data = vec![0.0f32; m0.data.len()];
        for (w, coef) in terms {
            let m = w.get(name).with_context(|| format!("{name} missing from a merge input"))?;
            ensure!(m.shape == m0.shape, "{name}: shapes {:?} and {:?} differ", m.shape, m0.shape);
            for (o, &x) in data.iter_mut().zip(&m.data) {
                *o += coef * x;
            }
        }
        out.insert(name.clone(), Mat { shape: m0.shape.clone(), data });
    }
    for w in terms.iter().map(|(w, _)| w) {
        ensure!(w.len() == first.len(), "merge inputs hold different tensor sets");
    }
    Ok(out)
}

/// Trained LoRA factors of one linear layer: `A` is `[r, in]`, `B` is `[out, r]`.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraFactors {
    pub a: Mat,
    pub b: Mat,
}

/// Merges LoRA factors into `w` in place: `W ← W + scale·B·A` for every adapted weight (`scale = alpha / r`).
///
/// # Errors
/// When a factor does not fit its weight.
pub fn merge_lora(w: &mut Weights, lora: &BTreeMap<String, LoraFactors>, scale: f32) -> Result<()> {
    for (name, f) in lora {
        let m = w.get_mut(name).with_context(|| format!("LoRA target {name} not in the model"))?;
        let (out, inp) = m.dims2()?;
        let (r, a_in) = f.a.dims2()?;
        let (b_out, b_r) = f.b.dims2()?;
        ensure!(a_in == inp && b_out == out && b_r == r, "{name}: LoRA factors do not fit [{out}, {inp}]");
        for i in 0..out {
            for k in 0..r {
                let bik = scale * f.b.data[i * r + k];
                if bik == 0.0 {
                    continue;
                }
                let arow = &f.a.data[k * inp..(k + 1) * inp];
                for (o, &a) in m.data[i * inp..(i + 1) * inp].iter_mut().zip(arow) {
                    *o += bik * a;
                }
            }
        }
    }
    Ok(())
}

/// Quantisation formats of the quantised children: compressed-tensors int8/fp8, and packed int4 (see
/// [`crate::int4`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quant {
    /// int8, symmetric per output channel, `scale = max|row| / 127`.
    Int8,
    /// float8 e4m3, per output channel, `scale = max|row| / 448`.
    Fp8,
    /// 4-bit GPTQ layout (AutoGPTQ v1 checkpoint format), round-to-nearest per group.
    Gptq4,
    /// 4-bit AWQ GEMM layout (AutoAWQ), round-to-nearest per group.
    Awq4,
}

impl Quant {
    /// The largest representable magnitude the row maximum is mapped to.
    pub fn qmax(self) -> f32 {
        match self {
            Quant::Int8 => 127.0,
            Quant::Fp8 => 448.0,
            Quant::Gptq4 | Quant::Awq4 => 15.0,
        }
    }

    /// The compressed-tensors `format` string.
    pub fn format(self) -> &'static str {
        match self {
            Quant::Int8 => "int-quantized",
            Quant::Fp8 => "float-quantized",
            Quant::Gptq4 => "gptq",
            Quant::Awq4 => "awq",
        }
    }

    /// Short name used in recipes.
    pub fn name(self) -> &'static str {
        match self {
            Quant::Int8 => "int8",
            Quant::Fp8 => "fp8",
            Quant::Gptq4 => "gptq-int4",
            Quant::Awq4 => "awq-int4",
        }
    }
}

/// One quantised matrix: the raw payload bytes (one byte per value) and its per-row scales.
#[derive(Clone, Debug, PartialEq)]
pub struct Quantized {
    pub payload: Vec<u8>,
    pub scales: Vec<f32>,
}

/// Quantises a 2-D matrix per output channel (int8/fp8; packed int4 is [`crate::int4::pack`]).
///
/// # Errors
/// When the tensor is not 2-D or `q` is a packed int4 format.
pub fn quantize(m: &Mat, q: Quant) -> Result<Quantized> {
    ensure!(matches!(q, Quant::Int8 | Quant::Fp8), "{q:?} is packed by crate::int4, not per channel");
    let (rows, cols) = m.dims2()?;
    let mut payload = Vec::with_capacity(rows * cols);
    let mut scales = Vec::with_capacity(rows);
    for r in 0..rows {
        let row = &m.data[r * cols..(r + 1) * cols];
        let amax = row.iter().fold(0.0f32, |a, &x| a.max(x.abs()));
        // An all-zero row gets scale 1 so dequantisation stays finite; its payload is zero either way.
        let scale = if amax > 0.0 { amax / q.qmax() } else { 1.0 };
        scales.push(scale);
        for &x in row {
            let v = x / scale;
            payload.push(match q {
                Quant::Int8 => (v.round().clamp(-127.0, 127.0) as i8).to_le_bytes()[0],
                Quant::Fp8 | Quant::Gptq4 | Quant::Awq4 => float8::F8E4M3::from_f32(v.clamp(-448.0, 448.0)).to_bits(),
            });
        }
    }
    Ok(Quantized { payload, scales })
}

/// Decodes one quantised value.
pub fn dequant_value(byte: u8, q: Quant) -> f32 {
    match q {
        Quant::Int8 => f32::from(i8::from_le_bytes([byte])),
        // Packed int4 is never stored a byte per value; fp8 is the only other one-byte payload.
        Quant::Fp8 | Quant::Gptq4 | Quant::Awq4 => float8::F8E4M3::from_bits(byte).to_f32(),
    }
}

/// Rebuilds the f32 matrix of `shape` from a quantised payload and per-row scales.
///
/// # Errors
/// When the payload or scales do not fit the shape.
pub fn dequantize(qz: &Quantized, shape: &[usize], q: Quant) -> Result<Mat> {
    let [rows, cols] = shape else { bail!("quantised tensor must be 2-D, got {shape:?}") };
    ensure!(qz.payload.len() == rows * cols && qz.scales.len() == *rows, "payload or scales do not fit {shape:?}");
    let data = qz
        .payload
        .chunks(*cols)
        .zip(&qz.scales)
        .flat_map(|(row, &s)| row.iter().map(move |&b| s * dequant_value(b, q)))
        .collect();
    Mat::new(shape.to_vec(), data)
}

/// Grows the vocabulary by `added` tokens: `embed_tokens` and `lm_head` get new rows set to the mean of the old rows
/// (what `resize_token_embeddings` with mean initialisation does).
///
/// # Errors
/// When the embedding tensors are missing or not 2-D.
pub fn resize_vocab(w: &mut Weights, added: usize) -> Result<()> {
    for name in ["model.embed_tokens.weight", "lm_head.weight"] {
        let m = w.get_mut(name).with_context(|| format!("{name} missing"))?;
        let (rows, cols) = m.dims2()?;
        let mut mean = vec![0.0f64; cols];
        for r in 0..rows {
            for (acc, &x) in mean.iter_mut().zip(&m.data[r * cols..(r + 1) * cols]) {
                *acc += f64::from(x);
            }
        }
        let mean: Vec<f32> = mean.iter().map(|&s| (s / rows as f64) as f32).collect();
        for _ in 0..added {
            m.data.extend_from_slice(&mean);
        }
        m.shape = vec![rows + added, cols];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mat(shape: &[usize], f: impl Fn(usize) -> f32) -> Mat {
        let n = shape.iter().product();
        Mat { shape: shape.to_vec(), data: (0..n).map(f).collect() }
    }

    fn wave(i: usize) -> f32 {
        ((i as f32) * 0.37).sin() * 0.05 + if i.is_multiple_of(17) { 0.3 } else { 0.0 }
    }

    fn check_quant_bound(q: Quant, rel_bound: f32) {
        let m = mat(&[12, 40], wave);
        let qz = quantize(&m, q).expect("quantize");
        assert_eq!(qz.payload.len(), 480);
        assert_eq!(qz.scales.len(), 12);
        let d = dequantize(&qz, &m.shape, q).expect("dequantize");
        for r in 0..12 {
            let row = &m.data[r * 40..(r + 1) * 40];
            let amax = row.iter().fold(0.0f32, |a, &x| a.max(x.abs()));
            assert!((qz.scales[r] - amax / q.qmax()).abs() <= 1e-9);
            for (c, &x) in row.iter().enumerate() {
                let err = (d.data[r * 40 + c] - x).abs();
                let bound = match q {
                    // Rounding to the nearest integer step: half a step.
                    Quant::Int8 => 0.5 * qz.scales[r] + 1e-7,
                    // e4m3 keeps 3 mantissa bits: relative error ≤ 2^-4, plus the subnormal floor.
                    Quant::Fp8 | Quant::Gptq4 | Quant::Awq4 => rel_bound * x.abs() + qz.scales[r] * 2f32.powi(-9),
                };
                assert!(err <= bound, "{q:?} r{r} c{c}: |{} - {}| = {err} > {bound}", d.data[r * 40 + c], x);
            }
            // The row maximum maps exactly onto the format's largest value.
            let argmax = (0..40).max_by(|&a, &b| row[a].abs().total_cmp(&row[b].abs())).expect("row");
            assert!((d.data[r * 40 + argmax] - row[argmax]).abs() <= 1e-6 * amax);
        }
    }

    #[test]
    fn quantisation_round_trip_error_is_bounded() {
        check_quant_bound(Quant::Int8, 0.0);
        check_quant_bound(Quant::Fp8, 1.0 / 16.0);
        assert_eq!(float8::F8E4M3::from_f32(448.0).to_bits(), 0x7E, "448 is e4m3fn's largest finite value");
        assert_eq!(dequant_value(0x81, Quant::Int8), -127.0);
    }

    #[test]
    fn lora_merge_equals_w_plus_scaled_ba() {
        let mut w = Weights::new();
        w.insert("x.weight".into(), mat(&[3, 4], |i| i as f32));
        let lora = LoraFactors { a: mat(&[2, 4], |i| (i as f32) - 3.0), b: mat(&[3, 2], |i| 0.5 * i as f32) };
        let mut expect = w["x.weight"].data.clone();
        for i in 0..3 {
            for j in 0..4 {
                let ba: f32 = (0..2).map(|k| lora.b.data[i * 2 + k] * lora.a.data[k * 4 + j]).sum();
                expect[i * 4 + j] += 2.0 * ba;
            }
        }
        merge_lora(&mut w, &BTreeMap::from([("x.weight".to_string(), lora.clone())]), 2.0).expect("merge");
        assert_eq!(w["x.weight"].data, expect);
        let bad = LoraFactors { a: mat(&[2, 5], |_| 0.0), b: lora.b };
        assert!(merge_lora(&mut w, &BTreeMap::from([("x.weight".to_string(), bad)]), 1.0).is_err());
    }

    #[test]
    fn merges_combine_parents() {
        let one = |v: f32| Weights::from([("a".to_string(), mat(&[2], |_| v))]);
        assert_eq!(merge_linear(&one(1.0), &one(3.0), 0.25).expect("linear")["a"].data, vec![2.5, 2.5]);
        let ta = merge_task_arithmetic(&one(1.0), &one(2.0), &one(5.0), 0.5, 1.0).expect("ta");
        assert_eq!(ta["a"].data, vec![1.0 + 0.5 + 4.0; 2]);
        let other = Weights::from([("b".to_string(), mat(&[2], |_| 0.0))]);
        assert!(merge_linear(&one(1.0), &other, 0.5).is_err());
    }

    #[test]
    fn kurtosis_matches_known_values() {
        // Two-point symmetric distribution: kurtosis 1, excess −2.
        assert!((excess_kurtosis(&[1.0, -1.0, 1.0, -1.0]) + 2.0).abs() < 1e-12);
        // Uniform on {0..n}: excess → −1.2.
        let u: Vec<f32> = (0..10_000).map(|i| i as f32).collect();
        assert!((excess_kurtosis(&u) + 1.2).abs() < 1e-3);
        let mut w = Weights::new();
        w.insert("model.layers.0.self_attn.q_proj.weight".into(), mat(&[2, 2], |i| [1.0, -1.0, 1.0, -1.0][i]));
        w.insert("model.layers.0.input_layernorm.weight".into(), mat(&[2], |_| 1.0));
        let (total, kinds) = kurtosis_summary(&w);
        assert!((total + 2.0).abs() < 1e-12);
        assert_eq!(kinds.keys().collect::<Vec<_>>(), vec!["q_proj"]);
    }

    #[test]
    fn resize_appends_mean_rows_and_distance_ignores_them() {
        let mut w = Weights::new();
        w.insert("model.embed_tokens.weight".into(), mat(&[2, 3], |i| i as f32));
        w.insert("lm_head.weight".into(), mat(&[2, 3], |i| 2.0 * i as f32));
        w.insert("model.layers.0.mlp.up_proj.weight".into(), mat(&[2, 2], |i| 1.0 + i as f32));
        let before = w.clone();
        resize_vocab(&mut w, 2).expect("resize");
        assert_eq!(w["model.embed_tokens.weight"].shape, vec![4, 3]);
        assert_eq!(&w["model.embed_tokens.weight"].data[6..9], &[1.5, 2.5, 3.5]);
        assert_eq!(&w["lm_head.weight"].data[9..12], &[3.0, 5.0, 7.0]);
        assert_eq!(relative_distance(&w, &before).expect("distance"), 0.0);
        let mut moved = before.clone();
        moved.get_mut("model.layers.0.mlp.up_proj.weight").expect("up").data[0] = 2.0;
        let d = relative_distance(&moved, &before).expect("distance");
        assert!((d - (1.0f64 / 30.0).sqrt()).abs() < 1e-12);
    }

    #[test]
    fn casts_round_like_storage() {
        let w = Weights::from([("a".to_string(), mat(&[1], |_| 1.0 + 1.0 / 1024.0))]);
        assert_eq!(cast(&w, StoreDtype::BF16)["a"].data[0], 1.0);
        assert_eq!(cast(&w, StoreDtype::F16)["a"].data[0], 1.0 + 1.0 / 1024.0);
        assert_eq!(cast(&w, StoreDtype::F32), w);
    }
}
