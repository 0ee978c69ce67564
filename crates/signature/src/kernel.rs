//! The hot loops of extraction: bf16 decoding, power sums for the moments, and row-bucket sketch updates.
//!
//! Each loop runs through [`pulp::Arch::dispatch`], which detects AVX2/FMA at run time and calls the loop inside
//! a function compiled for them, so a portable binary still gets 256-bit vectors (the `unsafe` of that
//! dispatch lives in `pulp`; this crate's only `unsafe` is the file mapping in `crate::mmap`). Without AVX2 the power
//! sums fall back to `wide`'s `f32x8`, which the baseline x86-64 target runs as two SSE registers.
//!
//! **Invariant:** every path adds the same values in the same order. The power sums keep exactly eight lanes
//! (AVX2's width, and `wide`'s), never contract `a·b + c` into an FMA, and reduce lanes in the same order, so a
//! signature is bit-for-bit the same on every CPU.

use pulp::{Arch, Simd, WithSimd, bytemuck};
use wide::f32x8;

/// Lanes of the power sums; fixed, see the module invariant.
pub(crate) const LANES: usize = 8;

/// Elements summed in `f32` before the lane sums are added into `f64` accumulators: with 64 terms per lane the
/// rounding of a partial sum stays near 1e-7 relative (random-walk growth, 4e-6 at worst), far below anything
/// lineage compares, while the lane reductions cost one per 512 elements. A run's last block may be shorter
/// (whole vectors only); fewer than [`LANES`] trailing values are summed in `f64`.
pub(crate) const BLOCK: usize = LANES * 64;

/// Power sums of `x − shift` over a run of values: `[Σd, Σd², Σd³, Σd⁴]`, with the min and max of `x` (NaN is
/// skipped by min and max; the sums carry it).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct PowerSums {
    pub s: [f64; 4],
    pub min: f32,
    pub max: f32,
}

impl PowerSums {
    const EMPTY: PowerSums = PowerSums { s: [0.0; 4], min: f32::INFINITY, max: f32::NEG_INFINITY };

    fn add_lanes(&mut self, sums: [[f32; LANES]; 4]) {
        for (total, lanes) in self.s.iter_mut().zip(sums) {
            *total += lanes.iter().map(|&v| f64::from(v)).sum::<f64>();
        }
    }

    fn add_min_max(&mut self, lo: [f32; LANES], hi: [f32; LANES]) {
        self.min = lo.iter().fold(self.min, |a, &b| a.min(b));
        self.max = hi.iter().fold(self.max, |a, &b| a.max(b));
    }

    fn add(&mut self, other: PowerSums) {
        for (s, o) in self.s.iter_mut().zip(other.s) {
            *s += o;
        }
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }
}

/// Power sums in `f32` lanes, flushed to `f64` every [`BLOCK`] values (and after the last, shorter block); the
/// last `len % LANES` values are summed in `f64`.
pub(crate) fn power_sums(values: &[f32], shift: f32) -> PowerSums {
    Arch::new().dispatch(PowerSumsOp { values, shift })
}

/// Power sums in `f64`: exact enough for any input, slow; for tails and for spreads `f32` cannot hold.
pub(crate) fn power_sums_f64(values: &[f32], shift: f64) -> PowerSums {
    let mut sums = PowerSums::EMPTY;
    for &x in values {
        sums.min = sums.min.min(x);
        sums.max = sums.max.max(x);
        let d = f64::from(x) - shift;
        let d2 = d * d;
        sums.s[0] += d;
        sums.s[1] += d2;
        sums.s[2] += d2 * d;
        sums.s[3] += d2 * d2;
    }
    sums
}

struct PowerSumsOp<'a> {
    values: &'a [f32],
    shift: f32,
}

impl WithSimd for PowerSumsOp<'_> {
    type Output = PowerSums;

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> PowerSums {
        let whole = self.values.len() / LANES * LANES;
        let (blocks, tail) = self.values.split_at(whole);
        let mut sums = if S::F32_LANES == LANES {
            power_sums_simd(simd, blocks, self.shift)
        } else {
            portable(blocks, self.shift)
        };
        sums.add(power_sums_f64(tail, f64::from(self.shift)));
        sums
    }
}

/// The power sums with `S`'s eight-lane vectors (AVX2).
#[inline(always)]
fn power_sums_simd<S: Simd>(simd: S, blocks: &[f32], shift: f32) -> PowerSums {
    let mut sums = PowerSums::EMPTY;
    let (vectors, _) = S::as_simd_f32s(blocks);
    let shift = simd.splat_f32s(shift);
    let mut lo = simd.splat_f32s(f32::INFINITY);
    let mut hi = simd.splat_f32s(f32::NEG_INFINITY);
    let zero = simd.splat_f32s(0.0);
    for block in vectors.chunks(BLOCK / LANES) {
        let (mut s1, mut s2, mut s3, mut s4) = (zero, zero, zero, zero);
        for &x in block {
            lo = simd.min_f32s(lo, x);
            hi = simd.max_f32s(hi, x);
            let d = simd.sub_f32s(x, shift);
            let d2 = simd.mul_f32s(d, d);
            s1 = simd.add_f32s(s1, d);
            s2 = simd.add_f32s(s2, d2);
            s3 = simd.add_f32s(s3, simd.mul_f32s(d2, d));
            s4 = simd.add_f32s(s4, simd.mul_f32s(d2, d2));
        }
        sums.add_lanes([lanes(s1), lanes(s2), lanes(s3), lanes(s4)]);
    }
    sums.add_min_max(lanes(lo), lanes(hi));
    sums
}

/// The eight lanes of an eight-lane vector.
#[inline(always)]
fn lanes<V: bytemuck::Pod>(v: V) -> [f32; LANES] {
    let mut out = [0f32; LANES];
    out.copy_from_slice(bytemuck::cast_slice(std::slice::from_ref(&v)));
    out
}

/// The power sums with `wide::f32x8`, for CPUs without AVX2 (two SSE registers per vector). `blocks` holds
/// whole vectors.
fn portable(blocks: &[f32], shift: f32) -> PowerSums {
    let mut sums = PowerSums::EMPTY;
    let shift = f32x8::splat(shift);
    let mut lo = f32x8::splat(f32::INFINITY);
    let mut hi = f32x8::splat(f32::NEG_INFINITY);
    for block in blocks.chunks(BLOCK) {
        let (mut s1, mut s2, mut s3, mut s4) = (f32x8::ZERO, f32x8::ZERO, f32x8::ZERO, f32x8::ZERO);
        for c in block.chunks_exact(LANES) {
            let mut lane = [0f32; LANES];
            lane.copy_from_slice(c);
            let x = f32x8::from(lane);
            // `fast_min`/`fast_max` are minps/maxps, like AVX2's: the same lanes win in both paths.
            lo = lo.fast_min(x);
            hi = hi.fast_max(x);
            let d = x - shift;
            let d2 = d * d;
            s1 += d;
            s2 += d2;
            s3 += d2 * d;
            s4 += d2 * d2;
        }
        sums.add_lanes([s1.to_array(), s2.to_array(), s3.to_array(), s4.to_array()]);
    }
    sums.add_min_max(lo.to_array(), hi.to_array());
    sums
}

/// A sketch row to update while summing: `T[bucket][cols]` and whether the row's sign is negative.
pub(crate) type RowUpdate<'a> = Option<(&'a mut [f32], bool)>;

/// The fused bf16 pass: decodes `bytes`, adds the values into `row` (if any) and returns their power sums about
/// `shift`. Gives exactly what [`decode_bf16`], [`add_row`] and [`power_sums`] give one after the other; it only
/// saves writing and re-reading the decoded values.
pub(crate) fn bf16_sums(bytes: &[u8], shift: f32, row: RowUpdate<'_>) -> PowerSums {
    Arch::new().dispatch(Bf16Sums { bytes, shift, row })
}

struct Bf16Sums<'a> {
    bytes: &'a [u8],
    shift: f32,
    row: RowUpdate<'a>,
}

/// What a fused pass does with each decoded vector besides summing it: nothing, or add it to / subtract it
/// from the sketch row (a compile-time choice, so the inner loop has no branch).
const KEEP: u8 = 0;
const ADD: u8 = 1;
const SUB: u8 = 2;

impl WithSimd for Bf16Sums<'_> {
    type Output = PowerSums;

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> PowerSums {
        let n = self.bytes.len() / 2;
        let whole = n / LANES * LANES;
        let (blocks, tail) = self.bytes.split_at(whole * 2);
        let mut empty: [f32; 0] = [];
        let (row, mode) = match self.row {
            None => (&mut empty[..], KEEP),
            Some((row, false)) => (row, ADD),
            Some((row, true)) => (row, SUB),
        };
        let (row_blocks, row_tail) = row.split_at_mut(if mode == KEEP { 0 } else { whole });
        let mut sums = if S::F32_LANES != LANES {
            // No AVX2: decode, then the portable kernel; the same values in the same order.
            let mut values = vec![0f32; whole];
            decode_bf16_plain(blocks, &mut values);
            if mode != KEEP {
                add_row_plain(row_blocks, &values, mode == SUB);
            }
            portable(&values, self.shift)
        } else {
            match mode {
                ADD => bf16_simd::<S, ADD>(simd, blocks, self.shift, row_blocks),
                SUB => bf16_simd::<S, SUB>(simd, blocks, self.shift, row_blocks),
                _ => bf16_simd::<S, KEEP>(simd, blocks, self.shift, row_blocks),
            }
        };
        let mut values = vec![0f32; tail.len() / 2];
        decode_bf16_plain(tail, &mut values);
        if mode != KEEP {
            add_row_plain(row_tail, &values, mode == SUB);
        }
        sums.add(power_sums_f64(&values, f64::from(self.shift)));
        sums
    }
}

/// The fused loop: `blocks` holds whole vectors of bf16 values, `row` as many `f32` (or none when `MODE` is
/// `KEEP`).
#[inline(always)]
fn bf16_simd<S: Simd, const MODE: u8>(simd: S, blocks: &[u8], shift: f32, row: &mut [f32]) -> PowerSums {
    let mut sums = PowerSums::EMPTY;
    let shift = simd.splat_f32s(shift);
    let mut lo = simd.splat_f32s(f32::INFINITY);
    let mut hi = simd.splat_f32s(f32::NEG_INFINITY);
    let zero = simd.splat_f32s(0.0);
    let mut row_vectors = row.chunks_exact_mut(LANES);
    for block in blocks.chunks(2 * BLOCK) {
        let (mut s1, mut s2, mut s3, mut s4) = (zero, zero, zero, zero);
        for c in block.chunks_exact(2 * LANES) {
            let mut lane = [0f32; LANES];
            for (l, b) in lane.iter_mut().zip(c.chunks_exact(2)) {
                *l = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16);
            }
            if MODE != KEEP
                && let Some(t) = row_vectors.next()
            {
                for (t, v) in t.iter_mut().zip(lane) {
                    if MODE == SUB {
                        *t -= v;
                    } else {
                        *t += v;
                    }
                }
            }
            let (x, _) = S::as_simd_f32s(&lane);
            let Some(&x) = x.first() else { continue };
            lo = simd.min_f32s(lo, x);
            hi = simd.max_f32s(hi, x);
            let d = simd.sub_f32s(x, shift);
            let d2 = simd.mul_f32s(d, d);
            s1 = simd.add_f32s(s1, d);
            s2 = simd.add_f32s(s2, d2);
            s3 = simd.add_f32s(s3, simd.mul_f32s(d2, d));
            s4 = simd.add_f32s(s4, simd.mul_f32s(d2, d2));
        }
        sums.add_lanes([lanes(s1), lanes(s2), lanes(s3), lanes(s4)]);
    }
    sums.add_min_max(lanes(lo), lanes(hi));
    sums
}

fn decode_bf16_plain(bytes: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16);
    }
}

fn add_row_plain(dst: &mut [f32], src: &[f32], negative: bool) {
    if negative {
        dst.iter_mut().zip(src).for_each(|(t, v)| *t -= v);
    } else {
        dst.iter_mut().zip(src).for_each(|(t, v)| *t += v);
    }
}

/// `dst += src` (or `dst −= src` when `negative`): one row segment added into its row bucket of the sketch.
pub(crate) fn add_row(dst: &mut [f32], src: &[f32], negative: bool) {
    Arch::new().dispatch(AddRow { dst, src, negative });
}

struct AddRow<'a> {
    dst: &'a mut [f32],
    src: &'a [f32],
    negative: bool,
}

impl WithSimd for AddRow<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _simd: S) {
        // A plain loop: compiled inside the dispatched function, it vectorises to its width.
        add_row_plain(self.dst, self.src, self.negative);
    }
}

/// bf16 (little-endian pairs of bytes) to `f32`: the upper half of the `f32` bits, exactly.
pub(crate) fn decode_bf16(bytes: &[u8], out: &mut [f32]) {
    Arch::new().dispatch(DecodeBf16 { bytes, out });
}

struct DecodeBf16<'a> {
    bytes: &'a [u8],
    out: &'a mut [f32],
}

impl WithSimd for DecodeBf16<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _simd: S) {
        decode_bf16_plain(self.bytes, self.out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corpus::values;

    #[test]
    fn every_path_gives_the_same_bits() {
        // The dispatched kernel (AVX2 on this machine and CI's) and the portable one, on lengths with and
        // without tails and on data with large and tiny spreads.
        let cases = [(BLOCK * 16, 0.02f32, 0.001f32), (1000, 3.0, -1.0), (BLOCK + 9, 1e-3, 0.0), (7, 1.0, 0.5)];
        for (n, scale, shift) in cases {
            let v = values(n, n as u64, scale);
            let whole = n / LANES * LANES;
            let mut expected = portable(&v[..whole], shift);
            expected.add(power_sums_f64(&v[whole..], f64::from(shift)));
            let got = power_sums(&v, shift);
            assert_eq!(got.s.map(f64::to_bits), expected.s.map(f64::to_bits), "n = {n}");
            assert_eq!((got.min, got.max), (expected.min, expected.max));
        }
    }

    #[test]
    fn the_fused_bf16_pass_equals_the_separate_passes() {
        for n in [0usize, 5, 128, 1000, 8192, BLOCK + 13] {
            let bytes = crate::corpus::bf16_bytes(&values(n, 3, 0.05));
            let mut decoded = vec![0f32; n];
            decode_bf16(&bytes, &mut decoded);
            for negative in [None, Some(false), Some(true)] {
                let start: Vec<f32> = values(n, 4, 1.0);
                let mut separate_row = start.clone();
                if let Some(neg) = negative {
                    add_row(&mut separate_row, &decoded, neg);
                }
                let separate = power_sums(&decoded, 0.01);
                let mut fused_row = start.clone();
                let fused = bf16_sums(&bytes, 0.01, negative.map(|neg| (&mut fused_row[..], neg)));
                assert_eq!(fused.s.map(f64::to_bits), separate.s.map(f64::to_bits), "n = {n}");
                assert_eq!((fused.min, fused.max), (separate.min, separate.max));
                assert_eq!(fused_row, separate_row);
            }
        }
    }

    #[test]
    fn power_sums_are_power_sums() {
        let v = values(5000, 1, 0.1);
        let got = power_sums(&v, 0.25);
        let exact = power_sums_f64(&v, 0.25);
        for (g, e) in got.s.iter().zip(exact.s) {
            assert!((g - e).abs() <= 1e-6 * e.abs().max(1e-3), "{g} vs {e}");
        }
        assert_eq!((got.min, got.max), (exact.min, exact.max));
    }

    #[test]
    fn row_updates_and_bf16_decoding() {
        let mut dst = vec![1.0f32; 37];
        let src: Vec<f32> = (0..37).map(|i| i as f32).collect();
        add_row(&mut dst, &src, false);
        assert!(dst.iter().enumerate().all(|(i, &v)| v == 1.0 + i as f32));
        add_row(&mut dst, &src, true);
        assert!(dst.iter().all(|&v| v == 1.0));
        let bytes: Vec<u8> = (0..=u16::MAX).step_by(97).flat_map(u16::to_le_bytes).collect();
        let mut out = vec![0f32; bytes.len() / 2];
        decode_bf16(&bytes, &mut out);
        for (c, v) in bytes.chunks_exact(2).zip(&out) {
            assert_eq!(v.to_bits(), u32::from(u16::from_le_bytes([c[0], c[1]])) << 16);
        }
    }
}
