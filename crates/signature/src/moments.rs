//! Mergeable moments: one-value updates, merges of two summaries, and a fast chunk kernel.
//!
//! [`Moments::push`] is Terriberry's one-pass update and [`Moments::merge`] the Chan/Pébay pairwise formulas, so
//! a tensor's moments can be built from chunks and row blocks in any grouping. The hot path does not push values
//! one by one: `chunk_moments` takes power sums of `x − shift` over a chunk (`kernel`: eight `f32`
//! lanes flushed into `f64` every 128 values), turns them into central moments and merges the chunk into the
//! running summary. Shifting by the running mean keeps the power sums small, which is what keeps the conversion
//! to central moments free of cancellation even for LayerNorm weights centred near 1.

use crate::kernel::{PowerSums, power_sums, power_sums_f64};
use crate::model::Moments;

impl Moments {
    /// Adds one value (Terriberry's update of Welford's algorithm to the fourth moment).
    pub fn push(&mut self, x: f64) {
        let n1 = self.n as f64;
        self.n += 1;
        let n = self.n as f64;
        let delta = x - self.mean;
        let delta_n = delta / n;
        let delta_n2 = delta_n * delta_n;
        let term1 = delta * delta_n * n1;
        self.mean += delta_n;
        self.m4 += term1 * delta_n2 * (n * n - 3.0 * n + 3.0) + 6.0 * delta_n2 * self.m2 - 4.0 * delta_n * self.m3;
        self.m3 += term1 * delta_n * (n - 2.0) - 3.0 * delta_n * self.m2;
        self.m2 += term1;
        self.min = self.min.min(x);
        self.max = self.max.max(x);
    }

    /// Combines two summaries as if all values had been pushed into one (Chan et al., Pébay 2008).
    pub fn merge(&mut self, other: &Moments) {
        if other.n == 0 {
            return;
        }
        if self.n == 0 {
            *self = *other;
            return;
        }
        let (na, nb) = (self.n as f64, other.n as f64);
        let n = na + nb;
        let delta = other.mean - self.mean;
        let delta2 = delta * delta;
        let m2 = self.m2 + other.m2 + delta2 * na * nb / n;
        let m3 = self.m3
            + other.m3
            + delta2 * delta * na * nb * (na - nb) / (n * n)
            + 3.0 * delta * (na * other.m2 - nb * self.m2) / n;
        let m4 = self.m4
            + other.m4
            + delta2 * delta2 * na * nb * (na * na - na * nb + nb * nb) / (n * n * n)
            + 6.0 * delta2 * (na * na * other.m2 + nb * nb * self.m2) / (n * n)
            + 4.0 * delta * (na * other.m3 - nb * self.m3) / n;
        self.mean += delta * nb / n;
        self.m2 = m2;
        self.m3 = m3;
        self.m4 = m4;
        self.n += other.n;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }
}

/// `|x − shift|` range inside which `f32` power sums are safe: `d⁴` neither overflows (`d < 4e9`) nor turns
/// the significant terms subnormal (`d > 1e-9`). Chunks outside it take the `f64` path.
const F32_SAFE: std::ops::RangeInclusive<f32> = 1e-8..=1e8;

/// The shift for the next chunk: the running mean, or the chunk's first finite value when there is none yet.
pub(crate) fn chunk_shift(into: &Moments, first_finite: impl FnOnce() -> Option<f32>) -> f32 {
    if into.n > 0 && into.mean.is_finite() { into.mean as f32 } else { first_finite().unwrap_or(0.0) }
}

/// Merges a chunk of `n` values, summarised by `sums` (power sums about `shift`), into `into`. When the chunk's
/// spread around the shift could overflow or underflow in `f32`, or it holds NaN or infinities, `exact` is
/// asked for the sums in `f64` instead.
pub(crate) fn merge_sums(
    into: &mut Moments,
    n: usize,
    shift: f32,
    mut sums: PowerSums,
    exact: impl FnOnce(f64) -> PowerSums,
) {
    if n == 0 {
        return;
    }
    let spread = (sums.max - shift).max(shift - sums.min);
    let out_of_range = !sums.s.iter().all(|s| s.is_finite()) || !F32_SAFE.contains(&spread);
    if out_of_range && spread != 0.0 {
        sums = exact(f64::from(shift));
    }
    let (mut min, mut max) = (sums.min, sums.max);
    if sums.s[1].is_nan() {
        // Only a NaN input makes a sum of squares NaN. The comparisons skip NaN; the moments below become NaN,
        // and min/max should say so too.
        (min, max) = (f32::NAN, f32::NAN);
    }
    let count = n as f64;
    let [s1, s2, s3, s4] = sums.s;
    // Central moments of the chunk from power sums about `shift`; `d` is the chunk mean minus the shift.
    let d = s1 / count;
    let m2 = s2 - count * d * d;
    let m3 = s3 - 3.0 * d * s2 + 2.0 * count * d * d * d;
    let m4 = s4 - 4.0 * d * s3 + 6.0 * d * d * s2 - 3.0 * count * d * d * d * d;
    let chunk = Moments {
        n: n as u64,
        mean: f64::from(shift) + d,
        // Rounding can push a zero central sum slightly negative; `if` rather than `max` so NaN survives.
        m2: if m2 < 0.0 { 0.0 } else { m2 },
        m3,
        m4: if m4 < 0.0 { 0.0 } else { m4 },
        min: f64::from(min),
        max: f64::from(max),
    };
    into.merge(&chunk);
}

/// Merges the moments of `values` into `into`.
///
/// The values are shifted by the running mean (or by the chunk's first finite value when `into` is empty)
/// before their power sums are taken, then converted to central moments of the chunk and merged. The sums
/// run in `f32` lanes flushed to `f64` (see `kernel`); a chunk whose spread around the shift could overflow
/// or underflow in `f32`, or that holds NaN or infinities, is summed again in `f64`.
pub(crate) fn chunk_moments(into: &mut Moments, values: &[f32]) {
    let shift = chunk_shift(into, || values.iter().copied().find(|v| v.is_finite()));
    let sums = power_sums(values, shift);
    merge_sums(into, values.len(), shift, sums, |shift| power_sums_f64(values, shift));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two-pass reference: mean first, then central sums.
    fn naive(values: &[f64]) -> Moments {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let central = |p: i32| values.iter().map(|v| (v - mean).powi(p)).sum::<f64>();
        Moments {
            n: values.len() as u64,
            mean,
            m2: central(2),
            m3: central(3),
            m4: central(4),
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        }
    }

    /// Relative tolerance of the f64 update and merge formulas.
    const EXACT: f64 = 1e-9;
    /// Relative tolerance of the chunk kernel, whose short sums run in f32 (see `kernel::BLOCK`).
    const KERNEL: f64 = 2e-6;

    fn close(a: f64, b: f64, scale: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * scale.max(1e-300)
    }

    fn assert_close(got: &Moments, want: &Moments, tol: f64) {
        assert_eq!(got.n, want.n);
        let sd = (want.m2 / want.n as f64).sqrt();
        // The mean is compared on the scale of the spread: a mean of ~0 has no meaningful relative error.
        assert!(close(got.mean, want.mean, want.mean.abs() + sd, tol), "mean {} vs {}", got.mean, want.mean);
        assert!(close(got.m2, want.m2, want.m2, tol), "m2 {} vs {}", got.m2, want.m2);
        let m3_scale = want.m2.powf(1.5) / (want.n as f64).sqrt();
        assert!(close(got.m3, want.m3, m3_scale + want.m3.abs(), tol), "m3 {} vs {}", got.m3, want.m3);
        assert!(close(got.m4, want.m4, want.m4, tol), "m4 {} vs {}", got.m4, want.m4);
        assert_eq!(got.min, want.min);
        assert_eq!(got.max, want.max);
    }

    /// Deterministic values with a skewed, heavy-tailed shape around `centre`.
    fn values(n: usize, centre: f64, spread: f64, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = crate::hashing::mix64(s.wrapping_add(0x9E37_79B9_7F4A_7C15));
                let u = (s >> 11) as f64 / (1u64 << 53) as f64;
                let t = (u - 0.3) * 2.0;
                (centre + spread * t * t * t) as f32
            })
            .collect()
    }

    #[test]
    fn push_matches_two_pass() {
        for (centre, spread) in [(0.0, 0.02), (1.0, 0.01), (-3.0, 5.0)] {
            let v = values(5000, centre, spread, 7);
            let wide: Vec<f64> = v.iter().map(|&x| f64::from(x)).collect();
            let mut m = Moments::default();
            for &x in &wide {
                m.push(x);
            }
            assert_close(&m, &naive(&wide), EXACT);
        }
    }

    #[test]
    fn merge_in_any_grouping_matches_two_pass() {
        let v = values(10_007, 1.0, 0.01, 3);
        let wide: Vec<f64> = v.iter().map(|&x| f64::from(x)).collect();
        let want = naive(&wide);
        for split in [1usize, 7, 64, 1000, 4096] {
            let mut total = Moments::default();
            for part in wide.chunks(split) {
                let mut m = Moments::default();
                part.iter().for_each(|&x| m.push(x));
                total.merge(&m);
            }
            assert_close(&total, &want, EXACT);
        }
        // Merging into and from empty summaries is the identity.
        let mut m = Moments::default();
        m.merge(&want);
        m.merge(&Moments::default());
        assert_eq!(m, want);
    }

    #[test]
    fn chunk_kernel_matches_two_pass() {
        // The last two take the f64 path: spreads whose fourth powers underflow or overflow in f32.
        for (centre, spread) in [(0.0, 0.02), (1.0, 0.001), (100.0, 3.0), (0.0, 1e-12), (1e12, 1e10)] {
            let v = values(20_011, centre, spread, 11);
            let wide: Vec<f64> = v.iter().map(|&x| f64::from(x)).collect();
            let want = naive(&wide);
            for chunk in [3usize, 8, 1000, 8192, 20_011] {
                let mut got = Moments::default();
                for part in v.chunks(chunk) {
                    chunk_moments(&mut got, part);
                }
                assert_close(&got, &want, KERNEL);
            }
        }
    }

    #[test]
    fn derived_statistics_match_their_definitions() {
        // Values 1, 2, 3, 4: variance 1.25, skew 0, excess kurtosis −1.36.
        let mut m = Moments::default();
        chunk_moments(&mut m, &[1.0, 2.0, 3.0, 4.0]);
        assert!((m.variance() - 1.25).abs() < 1e-12);
        assert!(m.skewness().abs() < 1e-12);
        assert!((m.excess_kurtosis() + 1.36).abs() < 1e-12);
        assert!((m.l2_norm() - 30f64.sqrt()).abs() < 1e-12);
        assert_eq!((m.min, m.max), (1.0, 4.0));
    }

    #[test]
    fn nan_propagates() {
        let mut m = Moments::default();
        chunk_moments(&mut m, &[1.0, f32::NAN, 3.0]);
        assert!(m.mean.is_nan() && m.min.is_nan() && m.max.is_nan());
    }
}
