//! The two-sided CountSketch `S = R·W·Cᵀ` of a matrix, built row segment by row segment.
//!
//! Row `i` of `W` goes to bucket `hr(i)` with sign `sr(i)`, column `j` to bucket `hc(j)` with sign `sc(j)`, and
//! `S[hr(i)][hc(j)] += sr(i)·sc(j)·W[i][j]`. The hashes come from `hashing`, keyed by the scheme seed,
//! the tensor name and its shape, so `S` is linear in `W` with the same `R` and `C` for every model of an
//! architecture: `S(A) − S(B) = S(A − B)`, and `‖S(A) − S(B)‖_F` estimates `‖A − B‖_F`.
//!
//! Two accumulation strategies give the same `S` up to float rounding; which one a tensor uses depends only on
//! its shape and `k`, so the result is deterministic:
//! - **row buckets** (the fast path): keep `T = R·W` (`k × columns` in `f32`): every row is one contiguous,
//!   vectorisable `T[hr(i)] ± row`; the column hashing `S = T·Cᵀ` runs once, in `SketchState::finish`.
//! - **direct**: for very wide matrices, where `T` would be large, scatter every element straight into `S`.

use crate::hashing::{Purpose, below, derive_key, stream};
use crate::kernel::add_row;
use crate::model::Sketch;

/// Largest `T = R·W` buffer (in `f32` values, so 8 MiB) a tensor may use; wider tensors take the direct path.
/// Covers `k = 64` up to 32,768 columns, i.e. every projection of Llama-class models up to 70B.
const MAX_ROW_BUCKET_FLOATS: u64 = 1 << 21;

/// Widest matrix whose column hashes are tabulated for the direct path (16 MiB of `u32`); beyond it they are
/// recomputed per element, trading speed for bounded memory on pathological shapes.
const MAX_COLUMN_TABLE: u64 = 1 << 22;

/// Marks a negative sign in a packed column hash (the low bits hold the bucket).
const NEG: u32 = 1 << 31;

enum Accumulator {
    /// `T = R·W`, row-major `k × cols`.
    RowBuckets(Vec<f32>),
    /// `S` directly, row-major `k × k`, plus the column hashes when the table is affordable.
    Direct { s: Vec<f64>, table: Option<Vec<u32>> },
}

/// A sketch under construction.
pub(crate) struct SketchState {
    k: u64,
    cols: u64,
    row_key: u64,
    col_key: u64,
    acc: Accumulator,
    scratch: Vec<u32>,
}

impl std::fmt::Debug for SketchState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.acc {
            Accumulator::RowBuckets(_) => "row-buckets",
            Accumulator::Direct { .. } => "direct",
        };
        f.debug_struct("SketchState").field("k", &self.k).field("cols", &self.cols).field("mode", &mode).finish()
    }
}

impl SketchState {
    /// A zero sketch of side `k ≥ 1` for the `rows × cols` view of tensor `name` with this `shape`.
    pub(crate) fn new(seed: u64, k: u32, name: &str, shape: &[u64], cols: u64) -> SketchState {
        let k = u64::from(k.max(1));
        let row_key = derive_key(seed, Purpose::SketchRows, name, shape);
        let col_key = derive_key(seed, Purpose::SketchCols, name, shape);
        let acc = match k.checked_mul(cols) {
            Some(n) if n <= MAX_ROW_BUCKET_FLOATS => Accumulator::RowBuckets(vec![0.0; n as usize]),
            _ => {
                let table = (cols <= MAX_COLUMN_TABLE).then(|| (0..cols).map(|j| col_hash(col_key, k, j)).collect());
                Accumulator::Direct { s: vec![0.0; (k * k) as usize], table }
            }
        };
        SketchState { k, cols, row_key, col_key, acc, scratch: Vec::new() }
    }

    /// Adds `values = W[row][col0 .. col0 + values.len()]`.
    pub(crate) fn add(&mut self, row: u64, col0: u64, values: &[f32]) {
        let h = stream(self.row_key, row);
        let bucket = below(h, self.k);
        let negative = h & 1 == 1;
        match &mut self.acc {
            Accumulator::RowBuckets(t) => {
                let start = (bucket * self.cols + col0) as usize;
                let Some(dst) = t.get_mut(start..start + values.len()) else { return };
                // One branch per segment, none per element: the loop vectorises.
                add_row(dst, values, negative);
            }
            Accumulator::Direct { s, table } => {
                let row_sign = if negative { -1.0 } else { 1.0 };
                let s_row = &mut s[(bucket * self.k) as usize..((bucket + 1) * self.k) as usize];
                let hashes: &[u32] = match table {
                    Some(table) => &table[col0 as usize..col0 as usize + values.len()],
                    None => {
                        self.scratch.clear();
                        self.scratch
                            .extend((col0..col0 + values.len() as u64).map(|j| col_hash(self.col_key, self.k, j)));
                        &self.scratch
                    }
                };
                for (&h, &v) in hashes.iter().zip(values) {
                    let sign = if h & NEG == 0 { row_sign } else { -row_sign };
                    s_row[(h & !NEG) as usize] += sign * f64::from(v);
                }
            }
        }
    }

    /// Whether this sketch keeps `T = R·W` (the fast path).
    pub(crate) fn has_row_buckets(&self) -> bool {
        matches!(self.acc, Accumulator::RowBuckets(_))
    }

    /// The slice of `T` that `W[row][col0 .. col0 + len]` is added into, and whether it is subtracted; `None`
    /// on the direct path. Lets a fused pass update `T` as it decodes (see [`SketchState::add`]).
    pub(crate) fn row_bucket(&mut self, row: u64, col0: u64, len: usize) -> Option<(&mut [f32], bool)> {
        let h = stream(self.row_key, row);
        let bucket = below(h, self.k);
        let start = (bucket * self.cols + col0) as usize;
        match &mut self.acc {
            Accumulator::RowBuckets(t) => t.get_mut(start..start + len).map(|dst| (dst, h & 1 == 1)),
            Accumulator::Direct { .. } => None,
        }
    }

    /// Applies the column hashing still pending and returns `S`.
    pub(crate) fn finish(mut self) -> Sketch {
        let k = self.k as usize;
        let s = match std::mem::replace(&mut self.acc, Accumulator::RowBuckets(Vec::new())) {
            Accumulator::Direct { s, .. } => s,
            Accumulator::RowBuckets(t) => {
                let mut s = vec![0f64; k * k];
                let cols = self.cols as usize;
                const STEP: usize = 4096;
                let mut hashes = Vec::with_capacity(STEP.min(cols));
                for c0 in (0..cols).step_by(STEP) {
                    let c1 = (c0 + STEP).min(cols);
                    hashes.clear();
                    hashes.extend((c0..c1).map(|j| col_hash(self.col_key, self.k, j as u64)));
                    for (r, s_row) in s.chunks_exact_mut(k).enumerate() {
                        let t_row = &t[r * cols + c0..r * cols + c1];
                        for (&h, &v) in hashes.iter().zip(t_row) {
                            let v = f64::from(v);
                            s_row[(h & !NEG) as usize] += if h & NEG == 0 { v } else { -v };
                        }
                    }
                }
                s
            }
        };
        Sketch { k: self.k as u32, values: s.into_iter().map(|v| v as f32).collect() }
    }
}

/// Bucket and sign of column `j`, packed.
fn col_hash(key: u64, k: u64, j: u64) -> u32 {
    let h = stream(key, j);
    below(h, k) as u32 | if h & 1 == 1 { NEG } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sketch(seed: u64, k: u32, name: &str, rows: usize, cols: usize, w: &[f32]) -> Vec<f32> {
        let mut s = SketchState::new(seed, k, name, &[rows as u64, cols as u64], cols as u64);
        for (i, row) in w.chunks(cols).enumerate() {
            // Feed each row in two uneven segments to exercise column offsets.
            let split = cols / 3;
            s.add(i as u64, 0, &row[..split]);
            s.add(i as u64, split as u64, &row[split..]);
        }
        s.finish().values
    }

    fn random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        (0..n as u64)
            .map(|i| {
                let h = crate::hashing::stream(seed, i);
                // Sum of two uniforms: a bounded, roughly bell-shaped value in (−scale, scale).
                let u = (h >> 40) as f32 / (1u64 << 24) as f32 + (h & 0xff_ffff) as f32 / (1u64 << 24) as f32;
                (u - 1.0) * scale
            })
            .collect()
    }

    fn frobenius(v: &[f32]) -> f64 {
        v.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt()
    }

    #[test]
    fn sketch_is_linear() {
        let (rows, cols) = (256, 256);
        let a = random(rows * cols, 1, 0.05);
        let b = random(rows * cols, 2, 0.05);
        let diff: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x - y).collect();
        let (sa, sb, sd) = (
            sketch(9, 64, "w", rows, cols, &a),
            sketch(9, 64, "w", rows, cols, &b),
            sketch(9, 64, "w", rows, cols, &diff),
        );
        let err: Vec<f32> = sa.iter().zip(&sb).zip(&sd).map(|((x, y), d)| x - y - d).collect();
        assert!(frobenius(&err) <= 1e-5 * frobenius(&sd), "{} vs {}", frobenius(&err), frobenius(&sd));
    }

    #[test]
    fn sketch_distance_estimates_frobenius_distance() {
        // A parent and a child that differs by a small dense update: ‖S(A)−S(B)‖_F vs ‖A−B‖_F, k = 64 on 256×256.
        // The CountSketch preserves the norm in expectation; its spread over seeds is a few percent here.
        let (rows, cols) = (256, 256);
        let a = random(rows * cols, 3, 0.05);
        let update = random(rows * cols, 4, 0.01);
        let b: Vec<f32> = a.iter().zip(&update).map(|(x, u)| x + u).collect();
        let exact = frobenius(&update);
        let mut worst = 0f64;
        for seed in 0..8 {
            let sa = sketch(seed, 64, "w", rows, cols, &a);
            let sb = sketch(seed, 64, "w", rows, cols, &b);
            let d: Vec<f32> = sa.iter().zip(&sb).map(|(x, y)| x - y).collect();
            worst = worst.max((frobenius(&d) / exact - 1.0).abs());
        }
        assert!(worst < 0.05, "worst relative error {worst}");
    }

    #[test]
    fn both_strategies_agree() {
        // Same name, shape and seed: the row-bucket path and the direct path compute the same S.
        let (rows, cols) = (64usize, 100usize);
        let w = random(rows * cols, 5, 1.0);
        let fast = sketch(1, 16, "w", rows, cols, &w);
        for table in [true, false] {
            let col_key = derive_key(1, Purpose::SketchCols, "w", &[rows as u64, cols as u64]);
            let mut s = SketchState::new(1, 16, "w", &[rows as u64, cols as u64], cols as u64);
            s.acc = Accumulator::Direct {
                s: vec![0.0; 256],
                table: table.then(|| (0..cols as u64).map(|j| col_hash(col_key, 16, j)).collect()),
            };
            for (i, row) in w.chunks(cols).enumerate() {
                s.add(i as u64, 0, row);
            }
            let direct = s.finish().values;
            for (x, y) in fast.iter().zip(&direct) {
                assert!((x - y).abs() <= 1e-4 * (1.0 + x.abs()), "{x} vs {y}");
            }
        }
    }

    #[test]
    fn wide_matrices_take_the_direct_path() {
        let s = SketchState::new(0, 64, "w", &[2, 1 << 20], 1 << 20);
        assert!(matches!(s.acc, Accumulator::Direct { table: Some(_), .. }));
        let s = SketchState::new(0, 64, "w", &[2, 1 << 23], 1 << 23);
        assert!(matches!(s.acc, Accumulator::Direct { table: None, .. }));
        let s = SketchState::new(0, 64, "w", &[4096, 4096], 4096);
        assert!(matches!(s.acc, Accumulator::RowBuckets(_)));
    }
}
