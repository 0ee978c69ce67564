//! Small numeric kernels on sketches and samples: exact dot products, sketch differences, singular values,
//! ranks, cast tolerance.
//!
//! Sketches are `k×k` matrices, handled as [`ndarray`] views over their stored row-major values
//! ([`crate::index`]'s nodes hand them out as `ArrayView2`). nalgebra appears only inside
//! [`singular_values`], where a decomposition is needed: the matrix is converted at that boundary.

use nalgebra::DMatrix;
use ndarray::{Array2, ArrayView2, Zip};
use signature::Dtype;

/// `Σ a·b` in f64. Products of two f32 are exact in f64, so the only error is the f64 summation: distances
/// derived from these dots stay accurate far below the 1e-3 duplicate threshold.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f64 {
    // Four independent accumulators let the compiler vectorise without reassociating one long chain.
    let mut acc = [0.0f64; 4];
    let mut chunks_a = a.chunks_exact(4);
    let mut chunks_b = b.chunks_exact(4);
    for (x, y) in chunks_a.by_ref().zip(chunks_b.by_ref()) {
        for lane in 0..4 {
            acc[lane] += f64::from(x[lane]) * f64::from(y[lane]);
        }
    }
    let tail: f64 =
        chunks_a.remainder().iter().zip(chunks_b.remainder()).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    acc[0] + acc[1] + acc[2] + acc[3] + tail
}

/// `a − b` element by element, in f64 (a sketched difference: sketches are linear in the weights).
pub(crate) fn difference(a: ArrayView2<'_, f32>, b: ArrayView2<'_, f32>) -> Array2<f64> {
    Zip::from(a).and(b).map_collect(|&p, &q| f64::from(p) - f64::from(q))
}

/// Singular values, largest first (empty for an empty matrix).
pub(crate) fn singular_values(m: ArrayView2<'_, f64>) -> Vec<f64> {
    let (rows, cols) = m.dim();
    if rows == 0 || cols == 0 {
        return Vec::new();
    }
    let matrix = DMatrix::from_fn(rows, cols, |i, j| m[[i, j]]);
    let mut sv: Vec<f64> = matrix.singular_values().iter().copied().collect();
    sv.sort_by(|a, b| b.total_cmp(a));
    sv
}

/// `exp(H(σ/Σσ))`, Roy & Vetterli's effective rank (what TensorLock uses for direction). 0 for a zero matrix.
pub(crate) fn effective_rank(sv: &[f64]) -> f64 {
    let total: f64 = sv.iter().sum();
    if total <= 0.0 {
        return 0.0;
    }
    let entropy: f64 = sv.iter().filter(|&&s| s > 0.0).map(|&s| s / total).map(|p| -p * p.ln()).sum();
    entropy.exp()
}

/// Number of singular values above `relative·σ₁`: a rank that survives low-precision storage, unlike numpy's
/// `matrix_rank` (a bf16 round trip makes every difference full rank in exact arithmetic).
pub(crate) fn numerical_rank(sv: &[f64], relative: f64) -> usize {
    match sv.first() {
        Some(&top) if top > 0.0 => sv.iter().filter(|&&s| s > relative * top).count(),
        _ => 0,
    }
}

/// Mantissa bits of a float dtype: the relative rounding step of a cast to it is `2^-bits`.
pub(crate) fn mantissa_bits(dtype: Dtype) -> Option<u32> {
    match dtype {
        Dtype::F64 => Some(52),
        Dtype::F32 => Some(23),
        Dtype::F16 => Some(10),
        Dtype::BF16 => Some(7),
        Dtype::F8E4M3 => Some(3),
        Dtype::F8E5M2 => Some(2),
        _ => None,
    }
}

/// True when every pair of samples agrees within one rounding step of `coarser` (whatever rounding mode the
/// cast used). Both slices must have the same, non-zero length.
pub(crate) fn cast_equal(a: &[f32], b: &[f32], coarser: Dtype) -> bool {
    let Some(bits) = mantissa_bits(coarser) else { return false };
    let step = (-(bits as f64)).exp2();
    // f16 flushes tiny values to subnormals with an absolute step of 2^-24; other float types have f32's range.
    let floor = if coarser == Dtype::F16 { 6.0e-8 } else { 1.0e-37 };
    !a.is_empty()
        && a.len() == b.len()
        && a.iter().zip(b).all(|(&x, &y)| {
            let (x, y) = (f64::from(x), f64::from(y));
            (x - y).abs() <= step * x.abs().max(y.abs()) + floor
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_is_exact_for_small_integers() {
        let a: Vec<f32> = (0..37).map(|i| i as f32).collect();
        let b: Vec<f32> = (0..37).map(|i| (i % 5) as f32 - 2.0).collect();
        let expected: f64 = a.iter().zip(&b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
        assert_eq!(dot(&a, &b), expected);
    }

    fn check_rank(values: &[f64], k: usize, expected_rank: usize, expected_effective: f64) {
        let sv = singular_values(ArrayView2::from_shape((k, k), values).expect("k×k"));
        assert_eq!(numerical_rank(&sv, 0.05), expected_rank, "sv {sv:?}");
        assert!((effective_rank(&sv) - expected_effective).abs() < 1e-9, "sv {sv:?}");
    }

    #[test]
    fn difference_is_elementwise() {
        let a = [1.5f32, -2.0, 0.25, 4.0];
        let b = [0.5f32, 1.0, 0.25, -4.0];
        let (a, b) = (ArrayView2::from_shape((2, 2), &a[..]), ArrayView2::from_shape((2, 2), &b[..]));
        let d = difference(a.expect("2×2"), b.expect("2×2"));
        assert_eq!(d, ndarray::arr2(&[[1.0, -3.0], [0.0, 8.0]]));
    }

    #[test]
    fn ranks() {
        check_rank(&[1.0, 0.0, 0.0, 1.0], 2, 2, 2.0);
        // Rank one: an outer product.
        check_rank(&[1.0, 2.0, 3.0, 2.0, 4.0, 6.0, 3.0, 6.0, 9.0], 3, 1, 1.0);
        check_rank(&[0.0; 4], 2, 0, 0.0);
        // Diagonal 1, 0.01: the small value is below 5 % of the large one.
        let p: [f64; 2] = [1.0 / 1.01, 0.01 / 1.01];
        let h = -(p[0] * p[0].ln() + p[1] * p[1].ln());
        check_rank(&[1.0, 0.0, 0.0, 0.01], 2, 1, h.exp());
    }

    fn check_cast(a: &[f32], b: &[f32], dtype: Dtype, expected: bool) {
        assert_eq!(cast_equal(a, b, dtype), expected, "{a:?} vs {b:?} as {dtype:?}");
    }

    #[test]
    fn cast_tolerance() {
        let x = [0.123_456_79f32, -3.75, 1.0e-3];
        // bf16 keeps 8 significant bits: truncate the f32 mantissa to 7 stored bits.
        let bf16: Vec<f32> = x.iter().map(|v| f32::from_bits(v.to_bits() & 0xffff_0000)).collect();
        check_cast(&x, &bf16, Dtype::BF16, true);
        check_cast(&x, &bf16, Dtype::F16, false);
        check_cast(&x, &x, Dtype::F32, true);
        check_cast(&x, &[0.13, -3.75, 1.0e-3], Dtype::BF16, false);
        check_cast(&[], &[], Dtype::BF16, false);
        check_cast(&x, &x, Dtype::I8, false);
    }
}
