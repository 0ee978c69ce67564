//! PEFT LoRA adapters: the signature of the weight change `ΔW = B·A·scaling` an adapter applies.
//!
//! An adapter file stores, for each adapted module `X`, the factors `X.lora_A.weight` (`[r, in]`) and
//! `X.lora_B.weight` (`[out, r]`). Lineage compares the change with full models of the same architecture, so
//! [`lora_delta_signature`] produces a [`TensorSignature`] named `X.weight`, shaped `[out, in]`, with source
//! [`ValueSource::AdapterDelta`], whose moments, sketch and samples are those of `B·A·scaling`. The product is
//! formed one row at a time (`row_i = scaling · Σ_t B[i][t] · A[t]`), so memory stays at `A` plus one row.
//!
//! [`ValueSource::AdapterDelta`]: crate::model::ValueSource::AdapterDelta

use crate::accumulate::{TensorError, ValueSketcher, validate_scheme};
use crate::decode::decode_f32;
use crate::layout::{RowLayout, selected_row_blocks};
use crate::model::{Dtype, Scheme, TensorSignature, ValueSource};

/// A stored tensor: dtype, shape and raw little-endian bytes.
#[derive(Clone, Copy, Debug)]
pub struct TensorBytes<'a> {
    pub dtype: Dtype,
    pub shape: &'a [u64],
    pub bytes: &'a [u8],
}

/// The parts of a PEFT `adapter_config.json` that set the scale of a LoRA update.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoraConfig {
    /// `lora_alpha`.
    pub alpha: f64,
    /// `use_rslora`: scale by `alpha / √r` instead of `alpha / r`.
    pub use_rslora: bool,
}

impl LoraConfig {
    /// The factor PEFT multiplies `B·A` by for a module of rank `r`.
    pub fn scaling(&self, r: u64) -> f64 {
        let r = r.max(1) as f64;
        if self.use_rslora { self.alpha / r.sqrt() } else { self.alpha / r }
    }
}

/// The signature of `B·A·scaling` for the adapted weight `name` (already canonical, e.g.
/// `model.layers.0.self_attn.q_proj.weight`). `content_hash` is blake3 over A's bytes then B's, `byte_len` their
/// total, `dtype` A's.
///
/// # Errors
/// [`TensorError::FactorShapes`] unless `A` is `[r, in]` and `B` is `[out, r]`; [`TensorError::FactorDtype`]
/// for integer factors; [`TensorError::Decode`] when bytes and shapes disagree; scheme errors.
pub fn lora_delta_signature(
    scheme: &Scheme,
    name: &str,
    a: TensorBytes<'_>,
    b: TensorBytes<'_>,
    scaling: f64,
) -> Result<TensorSignature, TensorError> {
    validate_scheme(scheme)?;
    let shapes = || TensorError::FactorShapes { a: a.shape.to_vec(), b: b.shape.to_vec() };
    let (&[r, cols], &[rows, r_b]) = (a.shape, b.shape) else {
        return Err(shapes());
    };
    if r != r_b {
        return Err(shapes());
    }
    for f in [a.dtype, b.dtype] {
        if !f.is_float() {
            return Err(TensorError::FactorDtype { dtype: f.as_str() });
        }
    }
    let shape = [rows, cols];
    let layout = RowLayout::of(&shape).ok_or_else(shapes)?;
    let a_len = r.checked_mul(cols).and_then(|n| usize::try_from(n).ok()).ok_or_else(shapes)?;
    let r_len = usize::try_from(r).map_err(|_| shapes())?;
    let row_len = usize::try_from(cols).map_err(|_| shapes())?;

    let mut a_values = vec![0f32; a_len];
    decode_f32(a.dtype, a.bytes, &mut a_values)?;
    // Checks B's length once, up front, so the row loop below can slice without failing half way.
    let b_row_bytes = r_len * b.dtype.size() as usize;
    if Some(b.bytes.len() as u64) != rows.checked_mul(b_row_bytes as u64) {
        let elements = usize::try_from(rows * r).unwrap_or(usize::MAX);
        return Err(crate::decode::DecodeError::LengthMismatch {
            dtype: b.dtype.as_str(),
            bytes: b.bytes.len(),
            elements,
        }
        .into());
    }

    let blocks = if layout.numel() == 0 { Vec::new() } else { selected_row_blocks(scheme, name, &shape) };
    let mut sketcher = ValueSketcher::new(scheme, name, &shape, layout, &blocks);
    let scaling = scaling as f32;
    let mut b_row = vec![0f32; r_len];
    let mut out = vec![0f32; row_len];
    for block in &blocks {
        for i in block.clone() {
            let start = i as usize * b_row_bytes;
            // In bounds: B's length was checked against `rows × b_row_bytes` above.
            let row = b.bytes.get(start..start + b_row_bytes).unwrap_or_default();
            decode_f32(b.dtype, row, &mut b_row)?;
            out.iter_mut().for_each(|o| *o = 0.0);
            if row_len > 0 {
                for (&coef, a_row) in b_row.iter().zip(a_values.chunks_exact(row_len)) {
                    let coef = coef * scaling;
                    out.iter_mut().zip(a_row).for_each(|(o, &x)| *o += coef * x);
                }
            }
            sketcher.feed(i * cols, &out);
        }
    }
    let (moments, sketch, samples) = sketcher.finish();
    let mut hasher = blake3::Hasher::new();
    hasher.update(a.bytes);
    hasher.update(b.bytes);
    Ok(TensorSignature {
        name: name.to_owned(),
        dtype: a.dtype,
        shape: shape.to_vec(),
        byte_len: (a.bytes.len() + b.bytes.len()) as u64,
        content_hash: *hasher.finalize().as_bytes(),
        source: ValueSource::AdapterDelta,
        moments: Some(moments),
        sketch,
        samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accumulate::TensorAccumulator;
    use crate::corpus::{bf16_bytes, f32_bytes, values};

    fn bf16_round(v: &[f32]) -> Vec<f32> {
        v.iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect()
    }

    /// The signature of `B·A·scaling` formed densely and fed as an f32 tensor.
    fn dense(
        scheme: &Scheme,
        name: &str,
        a: &[f32],
        b: &[f32],
        (r, rows, cols): (usize, usize, usize),
        scaling: f32,
    ) -> TensorSignature {
        let mut delta = vec![0f32; rows * cols];
        for i in 0..rows {
            for t in 0..r {
                let coef = b[i * r + t] * scaling;
                for j in 0..cols {
                    delta[i * cols + j] += coef * a[t * cols + j];
                }
            }
        }
        let shape = [rows as u64, cols as u64];
        let mut acc = TensorAccumulator::new(scheme, name, Dtype::F32, &shape).expect("accumulator");
        acc.feed_rows(0, &f32_bytes(&delta)).expect("all rows");
        acc.finish().expect("complete")
    }

    #[test]
    fn delta_signature_is_that_of_the_dense_product() {
        let scheme = Scheme { samples: 300, sketch_k: 16, ..Scheme::default() };
        let (r, rows, cols) = (4usize, 48usize, 40usize);
        let a = bf16_round(&values(r * cols, 1, 0.1));
        let b = bf16_round(&values(rows * r, 2, 0.1));
        let (ab, bb) = (bf16_bytes(&a), bf16_bytes(&b));
        let name = "model.layers.0.self_attn.q_proj.weight";
        let sig = lora_delta_signature(
            &scheme,
            name,
            TensorBytes { dtype: Dtype::BF16, shape: &[r as u64, cols as u64], bytes: &ab },
            TensorBytes { dtype: Dtype::BF16, shape: &[rows as u64, r as u64], bytes: &bb },
            2.0,
        )
        .expect("delta");
        let reference = dense(&scheme, name, &a, &b, (r, rows, cols), 2.0);
        assert_eq!((sig.name.as_str(), sig.shape.as_slice()), (name, &[rows as u64, cols as u64][..]));
        assert_eq!((sig.source, sig.dtype), (ValueSource::AdapterDelta, Dtype::BF16));
        assert_eq!(sig.byte_len, (ab.len() + bb.len()) as u64);
        let mut h = blake3::Hasher::new();
        h.update(&ab);
        h.update(&bb);
        assert_eq!(sig.content_hash, *h.finalize().as_bytes());
        assert_eq!(sig.samples.len(), reference.samples.len());
        for (x, y) in sig.samples.iter().zip(&reference.samples) {
            assert!((x - y).abs() <= 1e-6 * (1.0 + y.abs()), "{x} vs {y}");
        }
        let (m, n) = (sig.moments.expect("moments"), reference.moments.expect("moments"));
        assert!((m.m2 - n.m2).abs() <= 1e-5 * n.m2 && (m.m4 - n.m4).abs() <= 1e-5 * n.m4, "{m:?} vs {n:?}");
        let (s, t) = (sig.sketch.expect("sketch"), reference.sketch.expect("sketch"));
        for (x, y) in s.values.iter().zip(&t.values) {
            assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{x} vs {y}");
        }
    }

    #[test]
    fn factors_must_fit() {
        let s = Scheme::default();
        let a = [0u8; 24];
        let check = |a_shape: &[u64], b_shape: &[u64], dtype: Dtype, expected: TensorError| {
            let got = lora_delta_signature(
                &s,
                "w",
                TensorBytes { dtype, shape: a_shape, bytes: &a },
                TensorBytes { dtype: Dtype::F32, shape: b_shape, bytes: &a },
                1.0,
            );
            assert_eq!(got.err(), Some(expected));
        };
        let shapes = |a: &[u64], b: &[u64]| TensorError::FactorShapes { a: a.to_vec(), b: b.to_vec() };
        check(&[2, 3], &[2, 3], Dtype::F32, shapes(&[2, 3], &[2, 3]));
        check(&[2, 3, 1], &[3, 2], Dtype::F32, shapes(&[2, 3, 1], &[3, 2]));
        check(&[6], &[3, 2], Dtype::F32, shapes(&[6], &[3, 2]));
        check(&[2, 3], &[3, 2], Dtype::I32, TensorError::FactorDtype { dtype: "I32" });
        // B's bytes must hold [out, r].
        let got = lora_delta_signature(
            &s,
            "w",
            TensorBytes { dtype: Dtype::F32, shape: &[2, 3], bytes: &a },
            TensorBytes { dtype: Dtype::F32, shape: &[4, 2], bytes: &a },
            1.0,
        );
        assert!(matches!(got, Err(TensorError::Decode(_))), "{got:?}");
    }

    #[test]
    fn scaling_follows_peft() {
        assert_eq!(LoraConfig { alpha: 16.0, use_rslora: false }.scaling(8), 2.0);
        assert_eq!(LoraConfig { alpha: 16.0, use_rslora: true }.scaling(4), 8.0);
        assert_eq!(LoraConfig { alpha: 16.0, use_rslora: false }.scaling(0), 16.0);
    }
}
