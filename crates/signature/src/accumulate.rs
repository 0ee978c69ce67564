//! Building one [`TensorSignature`] from a stream of row blocks.
//!
//! [`TensorAccumulator`] is the single extraction path: the local reader feeds it slices of the file, a
//! network reader will feed it HTTP range bodies, and both must feed exactly the rows that
//! [`selected_row_blocks`] names, in order. Per piece it hashes the raw bytes (blake3), decodes them a chunk at a
//! time into a small `f32` buffer, optionally multiplies by quantisation scales, and hands the values to a
//! `ValueSketcher` (moments, CountSketch, seeded samples). Memory is `O(k² + samples + chunk)`, plus the
//! `k × columns` row-bucket buffer of the sketch (bounded, see [`crate::sketch`]); it never grows with the
//! number of rows.

use std::ops::Range;

use crate::decode::{DecodeError, decode_f32};
use crate::kernel::{bf16_sums, power_sums_f64};
use crate::layout::{RowLayout, sample_positions, selected_row_blocks};
use crate::model::{Dtype, Moments, SCHEME_VERSION, Scheme, Sketch, TensorSignature, ValueSource};
use crate::moments::{chunk_moments, chunk_shift, merge_sums};
use crate::sketch::SketchState;

/// Elements decoded at a time: 8,192 `f32` values (32 KiB) stay in L1/L2 between the decode, moments and sketch
/// passes, and 16 KiB of bf16 input is a whole number of blake3 chunks for its SIMD path.
pub(crate) const CHUNK: usize = 8192;

/// Bytes hashed per blake3 `update` call: large enough that the single-lane tail of each call is rare, small
/// enough to stay in L2 until it is decoded.
const HASH_PIECE: usize = 256 * 1024;

/// Largest sketch side accepted in a scheme: `k²` values are stored per tensor.
pub const MAX_SKETCH_K: u32 = 1024;

/// Most samples per tensor accepted in a scheme.
pub const MAX_SAMPLES: u32 = 1 << 20;

/// Why a scheme cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SchemeError {
    #[error("scheme version {found} is not the version {supported} this build computes")]
    Version { found: u32, supported: u32 },
    #[error("sketch side {k} exceeds the cap of {cap}")]
    SketchTooLarge { k: u32, cap: u32 },
    #[error("{samples} samples per tensor exceed the cap of {cap}")]
    TooManySamples { samples: u32, cap: u32 },
    #[error("row fraction {fraction} is not in (0, 1]")]
    RowFraction { fraction: f64 },
}

/// Checks that this build can compute signatures of `scheme`.
///
/// # Errors
/// The [`SchemeError`] of the first unusable parameter.
pub fn validate_scheme(scheme: &Scheme) -> Result<(), SchemeError> {
    if scheme.version != SCHEME_VERSION {
        return Err(SchemeError::Version { found: scheme.version, supported: SCHEME_VERSION });
    }
    if scheme.sketch_k > MAX_SKETCH_K {
        return Err(SchemeError::SketchTooLarge { k: scheme.sketch_k, cap: MAX_SKETCH_K });
    }
    if scheme.samples > MAX_SAMPLES {
        return Err(SchemeError::TooManySamples { samples: scheme.samples, cap: MAX_SAMPLES });
    }
    if !(scheme.row_fraction > 0.0 && scheme.row_fraction <= 1.0) {
        return Err(SchemeError::RowFraction { fraction: scheme.row_fraction });
    }
    Ok(())
}

/// Why a tensor's bytes could not be turned into a signature.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TensorError {
    #[error(transparent)]
    Scheme(#[from] SchemeError),
    #[error("element count of shape {shape:?} overflows 64 bits")]
    ShapeOverflow { shape: Vec<u64> },
    #[error("piece of {len} bytes is not a whole number of {row_bytes}-byte rows")]
    PartialRow { len: usize, row_bytes: u64 },
    #[error("piece starts at row {found} but row {expected} is next")]
    RowOutOfOrder { expected: u64, found: u64 },
    #[error("piece of {rows} rows starting at row {first_row} runs past the selected rows")]
    RowsOutsideSelection { first_row: u64, rows: u64 },
    #[error("only {fed_rows} of the {expected_rows} selected rows were fed")]
    Incomplete { fed_rows: u64, expected_rows: u64 },
    #[error("{dtype} tensors are not dequantised (only I8, F8_E4M3 and F8_E5M2 are)")]
    NotQuantized { dtype: &'static str },
    #[error("{scales} scales for a tensor of {rows} rows")]
    ScaleLength { scales: usize, rows: u64 },
    #[error("scale tensor of dtype {dtype} and shape {shape:?} is not a per-tensor or per-row scale")]
    ScaleLayout { dtype: &'static str, shape: Vec<u64> },
    #[error("lora factors A {a:?} and B {b:?} do not multiply to a matrix")]
    FactorShapes { a: Vec<u64>, b: Vec<u64> },
    #[error("lora factor of dtype {dtype} is not a float tensor")]
    FactorDtype { dtype: &'static str },
    #[error("g_idx puts input {input} in group {group}, outside the {groups} groups")]
    GroupIndex { input: u64, group: i64, groups: u64 },
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// Quantisation scales applied to a stored integer or fp8 payload: `value = q × scale`.
#[derive(Clone, Debug, PartialEq)]
pub enum Scales {
    /// One scale for the whole tensor (scale shape `[]` or `[1]`).
    PerTensor(f32),
    /// One scale per output channel, i.e. per row (scale shape `[rows]` or `[rows, 1]`).
    PerRow(Vec<f32>),
}

impl Scales {
    /// How scales stored as `scale_dtype`/`scale_shape` apply to a weight of `weight_shape`: `Some(false)` for
    /// one scale (shape `[]` or `[1]`), `Some(true)` for one per row (`[rows]` or `[rows, 1]`, weight of rank
    /// ≥ 2); `None` for any other dtype than F32/BF16/F16 or any other shape (block-wise scales, for one).
    pub fn per_row(weight_shape: &[u64], scale_dtype: Dtype, scale_shape: &[u64]) -> Option<bool> {
        if !matches!(scale_dtype, Dtype::F32 | Dtype::BF16 | Dtype::F16) {
            return None;
        }
        let rows = RowLayout::of(weight_shape)?.rows;
        match scale_shape {
            [] | [1] => Some(false),
            [n] | [n, 1] if weight_shape.len() >= 2 && *n == rows => Some(true),
            _ => None,
        }
    }

    /// The scales of a weight of `weight_shape`, read from the stored scale tensor.
    ///
    /// # Errors
    /// [`TensorError::ScaleLayout`] when [`Scales::per_row`] does not understand the scale tensor,
    /// [`TensorError::Decode`] when `bytes` does not hold it.
    pub fn from_tensor(
        weight_shape: &[u64],
        scale_dtype: Dtype,
        scale_shape: &[u64],
        bytes: &[u8],
    ) -> Result<Scales, TensorError> {
        let layout = || TensorError::ScaleLayout { dtype: scale_dtype.as_str(), shape: scale_shape.to_vec() };
        let per_row = Scales::per_row(weight_shape, scale_dtype, scale_shape).ok_or_else(layout)?;
        let mut values = vec![0f32; bytes.len() / scale_dtype.size() as usize];
        decode_f32(scale_dtype, bytes, &mut values)?;
        let expected = scale_shape.iter().product::<u64>();
        if values.len() as u64 != expected {
            return Err(layout());
        }
        Ok(if per_row {
            Scales::PerRow(values)
        } else {
            Scales::PerTensor(values.first().copied().unwrap_or(f32::NAN))
        })
    }
}

/// Moments, sketch and samples of a stream of values, fed in row-major order.
#[derive(Debug)]
pub(crate) struct ValueSketcher {
    row_len: u64,
    numel: u64,
    moments: Moments,
    sketch: Option<SketchState>,
    positions: Vec<u64>,
    samples: Vec<f32>,
}

impl ValueSketcher {
    /// A sketcher for tensor `name` of `shape`, reading the rows `blocks`.
    pub(crate) fn new(
        scheme: &Scheme,
        name: &str,
        shape: &[u64],
        layout: RowLayout,
        blocks: &[Range<u64>],
    ) -> ValueSketcher {
        let sketch = (shape.len() >= 2 && scheme.sketch_k > 0)
            .then(|| SketchState::new(scheme.seed, scheme.sketch_k, name, shape, layout.row_len));
        let positions = sample_positions(scheme, name, shape, blocks, layout.row_len);
        ValueSketcher {
            row_len: layout.row_len,
            numel: layout.numel(),
            moments: Moments::default(),
            sketch,
            samples: Vec::with_capacity(positions.len()),
            positions,
        }
    }

    /// Length of the segment starting at element `e`, at most `max`: segments end at multiples of [`CHUNK`]
    /// and, for sketched tensors, at row ends. Moments are merged per segment, so fixing segment boundaries
    /// by absolute position makes the signature bit-for-bit independent of how the bytes were split into
    /// pieces (a local file and an HTTP stream give the same result).
    fn segment_len(&self, e: u64, max: usize) -> usize {
        (self.natural_len(e) as usize).min(max)
    }

    /// Length of the whole segment starting at element `e`: to the next multiple of [`CHUNK`], the end of
    /// the row for sketched tensors, the end of the tensor.
    fn natural_len(&self, e: u64) -> u64 {
        let chunk = CHUNK as u64;
        let mut end = ((e / chunk + 1) * chunk).min(self.numel);
        if self.sketch.is_some() {
            end = end.min((e / self.row_len + 1) * self.row_len);
        }
        end.saturating_sub(e)
    }

    /// Adds `values`, the elements starting at row-major index `first`. Calls come in increasing `first`.
    pub(crate) fn feed(&mut self, first: u64, values: &[f32]) {
        let mut e = first;
        let mut rest = values;
        while !rest.is_empty() {
            let (segment, tail) = rest.split_at(self.segment_len(e, rest.len()));
            self.feed_segment(e, segment);
            e += segment.len() as u64;
            rest = tail;
        }
    }

    /// Adds one segment (see [`ValueSketcher::segment_len`]) starting at element `first`.
    fn feed_segment(&mut self, first: u64, values: &[f32]) {
        chunk_moments(&mut self.moments, values);
        self.take_samples(first, values.len(), |i| values[i]);
        if let Some(sketch) = &mut self.sketch {
            sketch.add(first / self.row_len, first % self.row_len, values);
        }
    }

    /// Whether bf16 segments can take the fused pass (no sketch, or a row-bucket sketch).
    fn fuses_bf16(&self) -> bool {
        self.sketch.as_ref().is_none_or(SketchState::has_row_buckets)
    }

    /// Adds one segment of raw bf16 bytes in a single fused pass; the same result as decoding it and calling
    /// [`ValueSketcher::feed_segment`].
    fn feed_bf16_segment(&mut self, first: u64, bytes: &[u8]) {
        let n = bytes.len() / 2;
        let value = |i: usize| f32::from_bits(u32::from(u16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]])) << 16);
        let shift = chunk_shift(&self.moments, || (0..n).map(value).find(|v| v.is_finite()));
        let row = match &mut self.sketch {
            Some(sketch) => sketch.row_bucket(first / self.row_len, first % self.row_len, n),
            None => None,
        };
        let sums = bf16_sums(bytes, shift, row);
        merge_sums(&mut self.moments, n, shift, sums, |shift| {
            let values: Vec<f32> = (0..n).map(value).collect();
            power_sums_f64(&values, shift)
        });
        self.take_samples(first, n, value);
    }

    /// Keeps the values at sample positions inside `first .. first + n`; `value(i)` is element `first + i`.
    fn take_samples(&mut self, first: u64, n: usize, value: impl Fn(usize) -> f32) {
        let end = first + n as u64;
        while let Some(&p) = self.positions.get(self.samples.len()) {
            // Positions before `first` would mean rows were skipped; finish() reports the missing samples.
            if p >= end || p < first {
                break;
            }
            self.samples.push(value((p - first) as usize));
        }
    }

    pub(crate) fn finish(self) -> (Moments, Option<Sketch>, Vec<f32>) {
        (self.moments, self.sketch.map(SketchState::finish), self.samples)
    }
}

/// Turns one segment of stored bytes into values for a [`ValueSketcher`].
struct Decoder<'a> {
    dtype: Dtype,
    /// bf16 without scales and with a row-bucket sketch (or none): decode, sum and sketch in one pass.
    fused: bool,
    scales: Option<&'a Scales>,
    row_len: u64,
    buf: &'a mut Vec<f32>,
}

impl Decoder<'_> {
    fn segment(&mut self, values: &mut ValueSketcher, element: u64, bytes: &[u8]) -> Result<(), TensorError> {
        if self.fused {
            values.feed_bf16_segment(element, bytes);
            return Ok(());
        }
        self.buf.resize(bytes.len() / self.dtype.size() as usize, 0.0);
        decode_f32(self.dtype, bytes, self.buf)?;
        match self.scales {
            None => {}
            Some(Scales::PerTensor(s)) => self.buf.iter_mut().for_each(|v| *v *= s),
            Some(Scales::PerRow(scales)) => {
                // One multiplier per run of the segment that lies in one row (the whole segment when the tensor
                // is sketched, since segments then end at row ends).
                let mut e = element;
                let mut rest = &mut self.buf[..];
                while !rest.is_empty() {
                    let take = ((self.row_len - e % self.row_len) as usize).min(rest.len());
                    let s = scales.get((e / self.row_len) as usize).copied().unwrap_or(f32::NAN);
                    let (head, tail) = rest.split_at_mut(take);
                    head.iter_mut().for_each(|v| *v *= s);
                    rest = tail;
                    e += take as u64;
                }
            }
        }
        values.feed(element, self.buf);
        Ok(())
    }
}

/// Builds the signature of one tensor from its selected rows, fed in order as raw stored bytes.
///
/// ```text
/// let mut acc = TensorAccumulator::new(&scheme, name, dtype, &shape)?;
/// for rows in acc.selected_rows().to_vec() {            // fetch or map these rows
///     acc.feed_rows(rows.start, bytes_of(rows))?;        // any split into whole rows, in order
/// }
/// let signature = acc.finish()?;
/// ```
#[derive(Debug)]
pub struct TensorAccumulator {
    name: String,
    dtype: Dtype,
    shape: Vec<u64>,
    source: ValueSource,
    layout: RowLayout,
    blocks: Vec<Range<u64>>,
    /// Index in `blocks` of the block being read, and the next row expected in it.
    block: usize,
    next_row: u64,
    fed_rows: u64,
    hasher: blake3::Hasher,
    values: Option<ValueSketcher>,
    scales: Option<Scales>,
    buf: Vec<f32>,
    /// Bytes of a segment that the last piece ended inside of (see `consume`).
    pending: Vec<u8>,
}

impl TensorAccumulator {
    /// An accumulator for the stored tensor `name`. Float tensors are decoded; integer and bool tensors are
    /// only hashed (their signature keeps dtype, shape and hash).
    ///
    /// # Errors
    /// [`TensorError::Scheme`] for an unusable scheme, [`TensorError::ShapeOverflow`] for an impossible shape.
    pub fn new(scheme: &Scheme, name: &str, dtype: Dtype, shape: &[u64]) -> Result<TensorAccumulator, TensorError> {
        TensorAccumulator::build(scheme, name, dtype, shape, None)
    }

    /// An accumulator whose values are the stored I8/F8 payload multiplied by `scales`; the signature has
    /// source [`ValueSource::Dequantized`] and keeps the stored dtype.
    ///
    /// # Errors
    /// As [`TensorAccumulator::new`], plus [`TensorError::NotQuantized`] for other dtypes and
    /// [`TensorError::ScaleLength`] when per-row scales do not match the rows.
    pub fn dequantized(
        scheme: &Scheme,
        name: &str,
        dtype: Dtype,
        shape: &[u64],
        scales: Scales,
    ) -> Result<TensorAccumulator, TensorError> {
        if !matches!(dtype, Dtype::I8 | Dtype::F8E4M3 | Dtype::F8E5M2) {
            return Err(TensorError::NotQuantized { dtype: dtype.as_str() });
        }
        TensorAccumulator::build(scheme, name, dtype, shape, Some(scales))
    }

    fn build(
        scheme: &Scheme,
        name: &str,
        dtype: Dtype,
        shape: &[u64],
        scales: Option<Scales>,
    ) -> Result<TensorAccumulator, TensorError> {
        validate_scheme(scheme)?;
        let overflow = || TensorError::ShapeOverflow { shape: shape.to_vec() };
        let layout = RowLayout::of(shape).ok_or_else(overflow)?;
        layout.numel().checked_mul(dtype.size()).ok_or_else(overflow)?;
        if let Some(Scales::PerRow(s)) = &scales
            && s.len() as u64 != layout.rows
        {
            return Err(TensorError::ScaleLength { scales: s.len(), rows: layout.rows });
        }
        // An empty tensor has no bytes to feed, whatever its row count.
        let blocks = if layout.numel() == 0 { Vec::new() } else { selected_row_blocks(scheme, name, shape) };
        let decoded = dtype.is_float() || scales.is_some();
        let source = if scales.is_some() { ValueSource::Dequantized } else { ValueSource::Raw };
        let values = decoded.then(|| ValueSketcher::new(scheme, name, shape, layout, &blocks));
        let next_row = blocks.first().map_or(0, |b| b.start);
        Ok(TensorAccumulator {
            name: name.to_owned(),
            dtype,
            shape: shape.to_vec(),
            source,
            layout,
            blocks,
            block: 0,
            next_row,
            fed_rows: 0,
            hasher: blake3::Hasher::new(),
            values,
            scales,
            buf: Vec::new(),
            pending: Vec::new(),
        })
    }

    /// The rows to feed, in order (see [`selected_row_blocks`]).
    pub fn selected_rows(&self) -> &[Range<u64>] {
        &self.blocks
    }

    /// Bytes per row: `∏shape[1..] × dtype size` (the dtype size for rank ≤ 1).
    pub fn row_bytes(&self) -> u64 {
        self.layout.row_len * self.dtype.size()
    }

    /// Feeds the stored bytes of rows `first_row ..`, a whole number of rows that continues exactly where the
    /// previous piece stopped (pieces may split or span selected blocks, never skip into unselected rows).
    ///
    /// # Errors
    /// [`TensorError::PartialRow`], [`TensorError::RowOutOfOrder`] or [`TensorError::RowsOutsideSelection`];
    /// the accumulator is unchanged by a rejected piece.
    pub fn feed_rows(&mut self, first_row: u64, bytes: &[u8]) -> Result<(), TensorError> {
        if bytes.is_empty() {
            return Ok(());
        }
        let row_bytes = self.row_bytes();
        if row_bytes == 0 || !(bytes.len() as u64).is_multiple_of(row_bytes) {
            return Err(TensorError::PartialRow { len: bytes.len(), row_bytes });
        }
        let rows = bytes.len() as u64 / row_bytes;
        let Some(block) = self.blocks.get(self.block) else {
            return Err(TensorError::RowsOutsideSelection { first_row, rows });
        };
        if first_row != self.next_row {
            return Err(TensorError::RowOutOfOrder { expected: self.next_row, found: first_row });
        }
        // Selected blocks are merged when adjacent, so a piece must end inside the current block.
        if rows > block.end - first_row {
            return Err(TensorError::RowsOutsideSelection { first_row, rows });
        }
        self.next_row += rows;
        self.fed_rows += rows;
        if self.next_row == block.end {
            self.block += 1;
            if let Some(next) = self.blocks.get(self.block) {
                self.next_row = next.start;
            }
        }
        self.consume(first_row * self.layout.row_len, bytes)
    }

    /// Hashes, decodes and sketches `bytes`, whose first element has row-major index `first`.
    ///
    /// Values are processed in segments whose boundaries depend only on positions in the tensor (see
    /// `ValueSketcher::segment_len`); a segment cut short by the end of a piece is kept in `pending` and
    /// completed by the next piece, so the result never depends on how the rows were split into pieces.
    fn consume(&mut self, first: u64, bytes: &[u8]) -> Result<(), TensorError> {
        let Some(values) = &mut self.values else {
            self.hasher.update(bytes);
            return Ok(());
        };
        let size = self.dtype.size() as usize;
        let mut decoder = Decoder {
            dtype: self.dtype,
            fused: self.dtype == Dtype::BF16 && self.scales.is_none() && values.fuses_bf16(),
            scales: self.scales.as_ref(),
            row_len: self.layout.row_len,
            buf: &mut self.buf,
        };
        let (mut element, mut offset, mut hashed) = (first, 0usize, 0usize);
        if !self.pending.is_empty() {
            let start = first - (self.pending.len() / size) as u64;
            let missing = values.natural_len(start) as usize * size - self.pending.len();
            let take = missing.min(bytes.len());
            self.pending.extend_from_slice(&bytes[..take]);
            self.hasher.update(&bytes[..take]);
            (hashed, offset, element) = (take, take, first + (take / size) as u64);
            if take == missing {
                decoder.segment(values, start, &self.pending)?;
                self.pending.clear();
            }
        }
        while offset < bytes.len() {
            let available = (bytes.len() - offset) / size;
            let n = values.segment_len(element, available);
            let end = offset + n * size;
            // blake3 hashes 1 KiB chunks in parallel lanes but finishes the last chunk of every `update` call in
            // a single lane, so it is given large pieces, a little ahead of the decoding that then finds them
            // in cache.
            while hashed < end {
                let next = (hashed + HASH_PIECE).min(bytes.len());
                self.hasher.update(&bytes[hashed..next]);
                hashed = next;
            }
            let segment = &bytes[offset..end];
            if n as u64 == values.natural_len(element) {
                decoder.segment(values, element, segment)?;
            } else {
                self.pending.extend_from_slice(segment);
            }
            element += n as u64;
            offset = end;
        }
        Ok(())
    }

    /// The signature of everything fed.
    ///
    /// # Errors
    /// [`TensorError::Incomplete`] when some selected rows were never fed.
    pub fn finish(self) -> Result<TensorSignature, TensorError> {
        let expected_rows: u64 = self.blocks.iter().map(|r| r.end - r.start).sum();
        if self.fed_rows != expected_rows {
            return Err(TensorError::Incomplete { fed_rows: self.fed_rows, expected_rows });
        }
        let (moments, sketch, samples) = match self.values {
            Some(v) => {
                let (m, s, p) = v.finish();
                (Some(m), s, p)
            }
            None => (None, None, Vec::new()),
        };
        Ok(TensorSignature {
            name: self.name,
            dtype: self.dtype,
            byte_len: self.layout.numel() * self.dtype.size(),
            shape: self.shape,
            content_hash: *self.hasher.finalize().as_bytes(),
            source: self.source,
            moments,
            sketch,
            samples,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corpus::{bf16_bytes, f32_bytes, values};
    use crate::decode::decode_f64;

    /// Signs a whole tensor fed in pieces of `rows_per_piece` rows.
    fn sign(
        scheme: &Scheme,
        name: &str,
        dtype: Dtype,
        shape: &[u64],
        bytes: &[u8],
        rows_per_piece: u64,
    ) -> TensorSignature {
        let mut acc = TensorAccumulator::new(scheme, name, dtype, shape).expect("accumulator");
        feed_all(&mut acc, bytes, rows_per_piece);
        acc.finish().expect("complete")
    }

    fn feed_all(acc: &mut TensorAccumulator, bytes: &[u8], rows_per_piece: u64) {
        let rb = acc.row_bytes() as usize;
        for block in acc.selected_rows().to_vec() {
            let mut row = block.start;
            while row < block.end {
                let n = rows_per_piece.min(block.end - row);
                let piece = &bytes[row as usize * rb..(row + n) as usize * rb];
                acc.feed_rows(row, piece).expect("in order");
                row += n;
            }
        }
    }

    fn naive(values: &[f64]) -> (f64, f64, f64) {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let m2 = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>();
        let m4 = values.iter().map(|v| (v - mean).powi(4)).sum::<f64>();
        (mean, m2, m4)
    }

    fn rel(a: f64, b: f64) -> f64 {
        (a - b).abs() / b.abs().max(1e-30)
    }

    #[test]
    fn float_tensor_signature_holds_everything() {
        let scheme = Scheme { samples: 100, sketch_k: 16, ..Scheme::default() };
        let v = values(64 * 48, 1, 0.02);
        let bytes = bf16_bytes(&v);
        let sig = sign(&scheme, "w", Dtype::BF16, &[64, 48], &bytes, 7);
        assert_eq!((sig.name.as_str(), sig.dtype, sig.shape.as_slice()), ("w", Dtype::BF16, &[64u64, 48][..]));
        assert_eq!(sig.byte_len, bytes.len() as u64);
        assert_eq!(sig.content_hash, *blake3::hash(&bytes).as_bytes());
        assert_eq!(sig.source, ValueSource::Raw);
        let mut exact = vec![0f64; v.len()];
        decode_f64(Dtype::BF16, &bytes, &mut exact).expect("decode");
        let m = sig.moments.expect("float tensors have moments");
        let (mean, m2, m4) = naive(&exact);
        assert_eq!(m.n, 64 * 48);
        assert!(rel(m.mean, mean) < 1e-4 && rel(m.m2, m2) < 1e-5 && rel(m.m4, m4) < 1e-5, "{m:?}");
        assert_eq!(m.min, exact.iter().copied().fold(f64::INFINITY, f64::min));
        assert_eq!(m.max, exact.iter().copied().fold(f64::NEG_INFINITY, f64::max));
        let sketch = sig.sketch.expect("2-D float tensors are sketched");
        assert_eq!((sketch.k, sketch.values.len()), (16, 256));
        // Samples are the values at the seeded positions, in position order.
        let positions = sample_positions(&scheme, "w", &[64, 48], std::slice::from_ref(&(0..64)), 48);
        let expected: Vec<f32> = positions.iter().map(|&p| exact[p as usize] as f32).collect();
        assert_eq!(sig.samples, expected);
    }

    #[test]
    fn pieces_do_not_change_the_result() {
        // Moments are merged per segment at fixed positions, so any split into pieces gives the same bits: a
        // local file and an HTTP stream agree exactly. Rows of 3000 elements straddle the 8192-element grid.
        let scheme = Scheme::default();
        for (dtype, bytes) in [
            (Dtype::F32, f32_bytes(&values(300 * 3000, 2, 0.05))),
            (Dtype::BF16, bf16_bytes(&values(300 * 3000, 2, 0.05))),
        ] {
            let whole = sign(&scheme, "w", dtype, &[300, 3000], &bytes, 300);
            for rows in [1, 3, 64, 299] {
                assert_eq!(sign(&scheme, "w", dtype, &[300, 3000], &bytes, rows), whole, "{dtype:?}, {rows} rows");
            }
            // A 1-D tensor fed in odd pieces.
            let whole = sign(&scheme, "b", dtype, &[300 * 3000], &bytes, 900_000);
            assert_eq!(sign(&scheme, "b", dtype, &[300 * 3000], &bytes, 10_007), whole);
        }
    }

    #[test]
    fn integer_tensors_are_hashed_only() {
        let bytes: Vec<u8> = (0..40u8).collect();
        let sig = sign(&Scheme::default(), "ids", Dtype::I32, &[10], &bytes, 3);
        assert_eq!(sig.content_hash, *blake3::hash(&bytes).as_bytes());
        assert_eq!((sig.moments, sig.sketch, sig.samples.len()), (None, None, 0));
    }

    #[test]
    fn low_rank_and_empty_tensors() {
        // Rank 0 and 1: moments and samples, no sketch.
        let sig = sign(&Scheme::default(), "s", Dtype::F32, &[], &2.5f32.to_le_bytes(), 1);
        assert_eq!(sig.moments.map(|m| (m.n, m.mean)), Some((1, 2.5)));
        assert_eq!((sig.sketch, sig.samples), (None, vec![2.5]));
        let sig = sign(&Scheme::default(), "b", Dtype::F32, &[5], &f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0]), 2);
        assert_eq!(sig.moments.map(|m| (m.n, m.mean)), Some((5, 3.0)));
        assert!(sig.sketch.is_none());
        // Empty tensors need no bytes at all.
        let sig = sign(&Scheme::default(), "e", Dtype::BF16, &[0, 8], &[], 1);
        assert_eq!(sig.moments.map(|m| m.n), Some(0));
        assert_eq!(sig.sketch.map(|s| s.values.iter().all(|&v| v == 0.0)), Some(true));
    }

    #[test]
    fn feeding_rules_are_enforced() {
        let scheme = Scheme::default();
        let mut acc = TensorAccumulator::new(&scheme, "w", Dtype::F32, &[4, 2]).expect("accumulator");
        assert_eq!(acc.row_bytes(), 8);
        assert_eq!(acc.feed_rows(0, &[0; 12]), Err(TensorError::PartialRow { len: 12, row_bytes: 8 }));
        assert_eq!(acc.feed_rows(1, &[0; 8]), Err(TensorError::RowOutOfOrder { expected: 0, found: 1 }));
        assert_eq!(acc.feed_rows(0, &[0; 40]), Err(TensorError::RowsOutsideSelection { first_row: 0, rows: 5 }));
        acc.feed_rows(0, &[0; 16]).expect("rows 0 and 1");
        assert_eq!(acc.feed_rows(0, &[0; 8]), Err(TensorError::RowOutOfOrder { expected: 2, found: 0 }));
        acc.feed_rows(2, &[]).expect("an empty piece is a no-op");
        assert_eq!(acc.finish().err(), Some(TensorError::Incomplete { fed_rows: 2, expected_rows: 4 }));
        let mut acc = TensorAccumulator::new(&scheme, "w", Dtype::F32, &[1, 2]).expect("accumulator");
        acc.feed_rows(0, &[0; 8]).expect("the only row");
        assert_eq!(acc.feed_rows(1, &[0; 8]), Err(TensorError::RowsOutsideSelection { first_row: 1, rows: 1 }));
    }

    #[test]
    fn scheme_is_validated() {
        let check = |scheme: Scheme, expected: SchemeError| {
            assert_eq!(
                TensorAccumulator::new(&scheme, "w", Dtype::F32, &[1]).err(),
                Some(TensorError::Scheme(expected))
            );
        };
        let s = Scheme::default();
        check(Scheme { version: 99, ..s }, SchemeError::Version { found: 99, supported: SCHEME_VERSION });
        check(Scheme { sketch_k: 5000, ..s }, SchemeError::SketchTooLarge { k: 5000, cap: MAX_SKETCH_K });
        check(Scheme { samples: u32::MAX, ..s }, SchemeError::TooManySamples { samples: u32::MAX, cap: MAX_SAMPLES });
        check(Scheme { row_fraction: 0.0, ..s }, SchemeError::RowFraction { fraction: 0.0 });
        check(Scheme { row_fraction: 1.5, ..s }, SchemeError::RowFraction { fraction: 1.5 });
        assert!(matches!(
            TensorAccumulator::new(&Scheme { row_fraction: f64::NAN, ..s }, "w", Dtype::F32, &[1]),
            Err(TensorError::Scheme(SchemeError::RowFraction { .. }))
        ));
        assert_eq!(
            TensorAccumulator::new(&s, "w", Dtype::F64, &[1 << 62, 4]).err(),
            Some(TensorError::ShapeOverflow { shape: vec![1 << 62, 4] })
        );
    }

    #[test]
    fn row_sampling_reads_only_the_selected_blocks() {
        let scheme = Scheme { row_fraction: 0.1, samples: 64, sketch_k: 8, ..Scheme::default() };
        let (rows, cols) = (1024u64, 16u64);
        let a = values((rows * cols) as usize, 3, 0.02);
        let blocks = selected_row_blocks(&scheme, "w", &[rows, cols]);
        let selected: u64 = blocks.iter().map(|r| r.end - r.start).sum();
        assert!(selected < rows / 5, "{blocks:?}");
        // A second model that differs only outside the selected rows has the same signature.
        let mut b = a.clone();
        for (i, v) in b.iter_mut().enumerate() {
            if !blocks.iter().any(|r| r.contains(&(i as u64 / cols))) {
                *v += 1.0;
            }
        }
        let sa = sign(&scheme, "w", Dtype::F32, &[rows, cols], &f32_bytes(&a), 5);
        let sb = sign(&scheme, "w", Dtype::F32, &[rows, cols], &f32_bytes(&b), 5);
        assert_eq!(sa, sb);
        // And its moments are those of the selected rows.
        let chosen: Vec<f64> = a
            .iter()
            .enumerate()
            .filter(|(i, _)| blocks.iter().any(|r| r.contains(&(*i as u64 / cols))))
            .map(|(_, &v)| f64::from(v))
            .collect();
        let m = sa.moments.expect("moments");
        assert_eq!(m.n, chosen.len() as u64);
        assert!(rel(m.m2, naive(&chosen).1) < 1e-6);
        assert_eq!(sa.samples.len(), 64);
        // A changed selected row changes it.
        let mut c = a.clone();
        c[(blocks[0].start * cols) as usize] += 1.0;
        assert_ne!(sa, sign(&scheme, "w", Dtype::F32, &[rows, cols], &f32_bytes(&c), 5));
    }

    #[test]
    fn dequantised_signature_matches_the_float_tensor_it_encodes() {
        let scheme = Scheme { samples: 200, sketch_k: 16, ..Scheme::default() };
        let (rows, cols) = (32usize, 24usize);
        let q: Vec<i8> = (0..rows * cols).map(|i| ((i * 37 + 11) % 255) as i8).collect();
        let scales: Vec<f32> = (0..rows).map(|r| 0.001 * (r + 1) as f32).collect();
        let dense: Vec<f32> = q.iter().enumerate().map(|(i, &x)| f32::from(x) * scales[i / cols]).collect();
        let reference = sign(&scheme, "l.weight", Dtype::F32, &[rows as u64, cols as u64], &f32_bytes(&dense), 4);
        let qbytes: Vec<u8> = q.iter().map(|&x| x as u8).collect();
        let mut acc = TensorAccumulator::dequantized(
            &scheme,
            "l.weight",
            Dtype::I8,
            &[rows as u64, cols as u64],
            Scales::PerRow(scales),
        )
        .expect("accumulator");
        feed_all(&mut acc, &qbytes, 5);
        let sig = acc.finish().expect("complete");
        assert_eq!((sig.dtype, sig.source), (Dtype::I8, ValueSource::Dequantized));
        assert_eq!(sig.content_hash, *blake3::hash(&qbytes).as_bytes());
        assert_eq!(sig.byte_len, (rows * cols) as u64);
        assert_eq!(sig.samples, reference.samples);
        let (a, b) = (sig.moments.expect("moments"), reference.moments.expect("moments"));
        assert!(rel(a.m2, b.m2) < 1e-6 && rel(a.m4, b.m4) < 1e-6);
        let (sa, sb) = (sig.sketch.expect("sketch"), reference.sketch.expect("sketch"));
        assert!(sa.values.iter().zip(&sb.values).all(|(x, y)| (x - y).abs() <= 1e-5 * (1.0 + y.abs())));

        // fp8 with one scale for the whole tensor.
        let fp8: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(5) & 0x77).collect();
        let mut decoded = vec![0f32; 64];
        decode_f32(Dtype::F8E4M3, &fp8, &mut decoded).expect("decode");
        let dense: Vec<f32> = decoded.iter().map(|v| v * 0.5).collect();
        let reference = sign(&scheme, "m.weight", Dtype::F32, &[8, 8], &f32_bytes(&dense), 8);
        let mut acc =
            TensorAccumulator::dequantized(&scheme, "m.weight", Dtype::F8E4M3, &[8, 8], Scales::PerTensor(0.5))
                .expect("accumulator");
        feed_all(&mut acc, &fp8, 3);
        let sig = acc.finish().expect("complete");
        assert_eq!(sig.samples, reference.samples);
        assert_eq!(sig.sketch, reference.sketch);
    }

    #[test]
    fn scales_are_read_from_scale_tensors_of_known_layouts() {
        let bytes = f32_bytes(&[0.5, 0.25]);
        assert_eq!(Scales::from_tensor(&[2, 3], Dtype::F32, &[2, 1], &bytes), Ok(Scales::PerRow(vec![0.5, 0.25])));
        assert_eq!(Scales::from_tensor(&[2, 3], Dtype::F32, &[2], &bytes), Ok(Scales::PerRow(vec![0.5, 0.25])));
        assert_eq!(Scales::from_tensor(&[2, 3], Dtype::F32, &[], &bytes[..4]), Ok(Scales::PerTensor(0.5)));
        assert_eq!(Scales::from_tensor(&[2, 3], Dtype::BF16, &[1], &bf16_bytes(&[2.0])), Ok(Scales::PerTensor(2.0)));
        let layout = |dtype: &'static str, shape: &[u64]| TensorError::ScaleLayout { dtype, shape: shape.to_vec() };
        // Block-wise scales, integer scales, per-row scales of a vector, and a shape the bytes do not hold.
        assert_eq!(Scales::from_tensor(&[4, 4], Dtype::F32, &[2, 2], &[0; 16]), Err(layout("F32", &[2, 2])));
        assert_eq!(Scales::from_tensor(&[2, 3], Dtype::I32, &[2], &[0; 8]), Err(layout("I32", &[2])));
        assert_eq!(Scales::from_tensor(&[2], Dtype::F32, &[2], &bytes), Err(layout("F32", &[2])));
        assert_eq!(Scales::from_tensor(&[2, 3], Dtype::F32, &[2, 1], &bytes[..4]), Err(layout("F32", &[2, 1])));
        assert!(matches!(Scales::from_tensor(&[2, 3], Dtype::F32, &[2], &bytes[..5]), Err(TensorError::Decode(_))));
    }

    #[test]
    fn dequantisation_needs_a_quantised_payload_and_matching_scales() {
        let s = Scheme::default();
        assert_eq!(
            TensorAccumulator::dequantized(&s, "w", Dtype::BF16, &[2, 2], Scales::PerTensor(1.0)).err(),
            Some(TensorError::NotQuantized { dtype: "BF16" })
        );
        assert_eq!(
            TensorAccumulator::dequantized(&s, "w", Dtype::I8, &[3, 2], Scales::PerRow(vec![1.0; 2])).err(),
            Some(TensorError::ScaleLength { scales: 2, rows: 3 })
        );
    }

    #[test]
    fn the_same_values_in_another_dtype_give_the_same_signature() {
        // A bf16 parent and its f32 upcast: same positions, same sketch matrices, same values, hence equal
        // signatures but for hash, dtype and length. This also pins the fused bf16 pass to the generic one.
        let scheme = Scheme { samples: 50, sketch_k: 8, ..Scheme::default() };
        for shape in [vec![40u64, 400], vec![2 * 8192 + 77], vec![3, 9000]] {
            let n = shape.iter().product::<u64>() as usize;
            let v: Vec<f32> = bf16_bytes(&values(n, 4, 0.1))
                .chunks_exact(2)
                .map(|c| f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16))
                .collect();
            let a = sign(&scheme, "w", Dtype::BF16, &shape, &bf16_bytes(&v), 9);
            let b = sign(&scheme, "w", Dtype::F32, &shape, &f32_bytes(&v), 9);
            assert_ne!(a.content_hash, b.content_hash);
            let same = TensorSignature { dtype: a.dtype, content_hash: a.content_hash, byte_len: a.byte_len, ..b };
            assert_eq!(a, same, "{shape:?}");
        }
    }
}
