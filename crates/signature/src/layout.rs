//! How a tensor is read: as rows, in seeded row blocks, with seeded sample positions.
//!
//! Safetensors stores tensors row-major, so one row block (a run of rows along the first axis) is one contiguous
//! byte range. With `scheme.row_fraction < 1` only a seeded subset of row blocks is read; the subset depends on
//! `(scheme, name, shape)` only, so every model of an architecture reads the same rows and their signatures stay
//! comparable. A network reader turns [`selected_row_blocks`] into HTTP ranges; the local reader uses the same
//! function, so both paths feed a [`crate::TensorAccumulator`] the same bytes.
//!
//! Rank-0 and rank-1 tensors (norms, biases, scalars) are treated as columns of one-element rows and always read
//! whole: they are small, and a partial norm vector would say little.

use std::collections::HashSet;
use std::ops::Range;

use crate::hashing::{Purpose, below, derive_key, stream};
use crate::model::Scheme;

/// A row block has at least this many rows, so a partial read is a handful of reasonably large ranges.
pub const MIN_BLOCK_ROWS: u64 = 16;

/// A tensor is split into at most this many row blocks (blocks of `rows / 64` rows, at least
/// [`MIN_BLOCK_ROWS`]), the unit of row sampling.
pub const BLOCKS_PER_TENSOR: u64 = 64;

/// A tensor seen as `rows × row_len` elements: `shape[0] × ∏shape[1..]` for rank ≥ 2, otherwise `numel × 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowLayout {
    pub rows: u64,
    pub row_len: u64,
}

impl RowLayout {
    /// The layout of `shape`; `None` when the element count overflows `u64`.
    pub fn of(shape: &[u64]) -> Option<RowLayout> {
        match shape {
            [] => Some(RowLayout { rows: 1, row_len: 1 }),
            [n] => Some(RowLayout { rows: *n, row_len: 1 }),
            [rows, rest @ ..] => {
                let row_len = rest.iter().try_fold(1u64, |a, &d| a.checked_mul(d))?;
                rows.checked_mul(row_len)?;
                Some(RowLayout { rows: *rows, row_len })
            }
        }
    }

    pub fn numel(&self) -> u64 {
        self.rows * self.row_len
    }
}

/// Rows per block for a tensor of `rows` rows.
fn block_rows(rows: u64) -> u64 {
    rows.div_ceil(BLOCKS_PER_TENSOR).max(MIN_BLOCK_ROWS)
}

/// The row ranges (along the first axis; for rank ≤ 1 tensors, element ranges) that `scheme` reads of the tensor
/// `name` of this `shape`: sorted, disjoint, adjacent blocks merged. All rows when `scheme.row_fraction ≥ 1` or
/// the tensor has rank ≤ 1; otherwise at least one block. Byte range of rows `r`:
/// `data_start + begin + r.start × row_bytes .. data_start + begin + r.end × row_bytes`, with
/// `row_bytes = ∏shape[1..] × dtype size`.
pub fn selected_row_blocks(scheme: &Scheme, name: &str, shape: &[u64]) -> Vec<Range<u64>> {
    let rows = match shape {
        [] => 1,
        [first, ..] => *first,
    };
    if rows == 0 {
        return Vec::new();
    }
    // A NaN fraction reads everything rather than nothing (validate_scheme rejects it anyway).
    let partial = scheme.row_fraction.partial_cmp(&1.0) == Some(std::cmp::Ordering::Less);
    if shape.len() < 2 || !partial {
        return std::iter::once(0..rows).collect();
    }
    let per_block = block_rows(rows);
    let blocks = rows.div_ceil(per_block);
    let wanted = ((scheme.row_fraction.max(0.0) * blocks as f64).ceil() as u64).clamp(1, blocks);
    let key = derive_key(scheme.seed, Purpose::RowBlocks, name, shape);
    let mut order: Vec<u64> = (0..blocks).collect();
    order.sort_by_key(|&b| (stream(key, b), b));
    let mut chosen: Vec<u64> = order[..wanted as usize].to_vec();
    chosen.sort_unstable();
    let mut ranges: Vec<Range<u64>> = Vec::with_capacity(chosen.len());
    for b in chosen {
        let r = b * per_block..((b + 1) * per_block).min(rows);
        match ranges.last_mut() {
            Some(last) if last.end == r.start => last.end = r.end,
            _ => ranges.push(r),
        }
    }
    ranges
}

/// The element indices (row-major, over the whole tensor) whose values a signature keeps: `scheme.samples`
/// distinct positions drawn uniformly from the selected rows (all of them when there are fewer), sorted.
pub(crate) fn sample_positions(
    scheme: &Scheme,
    name: &str,
    shape: &[u64],
    blocks: &[Range<u64>],
    row_len: u64,
) -> Vec<u64> {
    let selected: u64 = blocks.iter().map(|r| (r.end - r.start).saturating_mul(row_len)).sum();
    let count = u64::from(scheme.samples).min(selected);
    let key = derive_key(scheme.seed, Purpose::Samples, name, shape);
    // Floyd's algorithm: `count` distinct ranks in 0..selected with `count` hash draws and a set of that size.
    let mut ranks = HashSet::with_capacity(count as usize);
    for j in (selected - count)..selected {
        let t = below(stream(key, j), j + 1);
        if !ranks.insert(t) {
            ranks.insert(j);
        }
    }
    let mut ranks: Vec<u64> = ranks.into_iter().collect();
    ranks.sort_unstable();
    // Ranks count elements of the selected rows only; map them to positions in the whole tensor.
    let mut positions = Vec::with_capacity(ranks.len());
    let mut ranks = ranks.into_iter().peekable();
    let mut before = 0u64;
    for r in blocks {
        let len = (r.end - r.start) * row_len;
        while let Some(&rank) = ranks.peek() {
            if rank >= before + len {
                break;
            }
            positions.push(r.start * row_len + (rank - before));
            ranks.next();
        }
        before += len;
    }
    positions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scheme(fraction: f64) -> Scheme {
        Scheme { row_fraction: fraction, ..Scheme::default() }
    }

    #[test]
    fn layouts() {
        assert_eq!(RowLayout::of(&[]), Some(RowLayout { rows: 1, row_len: 1 }));
        assert_eq!(RowLayout::of(&[7]), Some(RowLayout { rows: 7, row_len: 1 }));
        assert_eq!(RowLayout::of(&[3, 4, 5]), Some(RowLayout { rows: 3, row_len: 20 }));
        assert_eq!(RowLayout::of(&[2, u64::MAX]), None);
        assert_eq!(RowLayout::of(&[0, 4]), Some(RowLayout { rows: 0, row_len: 4 }));
    }

    #[test]
    fn whole_tensors_when_fraction_is_one_or_rank_is_low() {
        assert_eq!(selected_row_blocks(&scheme(1.0), "w", &[4096, 4096]), vec![0..4096]);
        assert_eq!(selected_row_blocks(&scheme(0.01), "b", &[4096]), vec![0..4096]);
        assert_eq!(selected_row_blocks(&scheme(0.01), "s", &[]), vec![0..1]);
        assert_eq!(selected_row_blocks(&scheme(0.01), "e", &[0, 8]), Vec::<Range<u64>>::new());
        assert_eq!(selected_row_blocks(&scheme(f64::NAN), "w", &[64, 64]), vec![0..64]);
    }

    #[test]
    fn partial_selection_is_seeded_sized_and_stable() {
        let s = scheme(0.1);
        let blocks = selected_row_blocks(&s, "model.layers.0.mlp.down_proj.weight", &[4096, 14336]);
        // 64 blocks of 64 rows; ceil(6.4) = 7 blocks chosen.
        let rows: u64 = blocks.iter().map(|r| r.end - r.start).sum();
        assert_eq!(rows, 7 * 64);
        assert!(blocks.iter().all(|r| r.start % 64 == 0 && r.end % 64 == 0 && r.end <= 4096));
        assert!(blocks.windows(2).all(|w| w[0].end < w[1].start), "sorted, disjoint, merged: {blocks:?}");
        assert_eq!(blocks, selected_row_blocks(&s, "model.layers.0.mlp.down_proj.weight", &[4096, 14336]));
        assert_ne!(blocks, selected_row_blocks(&s, "model.layers.1.mlp.down_proj.weight", &[4096, 14336]));
        let other_seed = Scheme { seed: 1, ..s };
        assert_ne!(blocks, selected_row_blocks(&other_seed, "model.layers.0.mlp.down_proj.weight", &[4096, 14336]));
        // Small tensors: blocks of 16 rows, at least one block, the last block clipped.
        let small = selected_row_blocks(&scheme(0.0001), "w", &[40, 8]);
        assert_eq!(small.len(), 1);
        assert!(small[0] == (0..16) || small[0] == (16..32) || small[0] == (32..40), "{small:?}");
    }

    #[test]
    fn samples_are_distinct_sorted_inside_the_selection() {
        let s = Scheme { samples: 500, ..scheme(0.1) };
        let shape = [1024u64, 300];
        let blocks = selected_row_blocks(&s, "w", &shape);
        let pos = sample_positions(&s, "w", &shape, &blocks, 300);
        assert_eq!(pos.len(), 500);
        assert!(pos.windows(2).all(|w| w[0] < w[1]));
        assert!(pos.iter().all(|p| blocks.iter().any(|r| (r.start * 300..r.end * 300).contains(p))));
        assert_eq!(pos, sample_positions(&s, "w", &shape, &blocks, 300));
        // Fewer elements than samples: every element, in order.
        let all = sample_positions(&s, "b", &[10], std::slice::from_ref(&(0..10)), 1);
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        // Positions spread over the whole selection rather than bunching at one end.
        let whole = sample_positions(
            &Scheme { samples: 1000, ..Scheme::default() },
            "w",
            &[100, 100],
            std::slice::from_ref(&(0..100)),
            100,
        );
        let low = whole.iter().filter(|&&p| p < 5000).count();
        assert!((430..=570).contains(&low), "{low}");
    }
}
