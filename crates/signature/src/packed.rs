//! Packed 4-bit weights as GPTQ and AWQ checkpoints store them, dequantised so they compare with the float weights
//! they were made from.
//!
//! A packed module `X` replaces `X.weight` (`[out, in]`) by integer words holding eight 4-bit values each, plus
//! per-group scales and zero points (a group is `g` consecutive input columns). Two layouts are on the Hub:
//!
//! - **GPTQ** (AutoGPTQ `QuantLinear.pack`, GPTQModel, transformers/optimum, `quant_method: gptq`): `X.qweight` I32
//!   `[in/8, out]`, nibble `j` (bits `4j..4j+4`) of word `(r, o)` holding input `8r + j` of output `o`;
//!   `X.qzeros` I32 `[G, out/8]`, nibble `j` of word `(g, c)` holding the zero of output `8c + j`; `X.scales`
//!   `[G, out]`; `X.g_idx` I32 `[in]`, the group of each input (`i / g`, or a permutation's groups with
//!   `desc_act`). `W[o][i] = (q − z) · s` with `s`, `z` of group `g_idx[i]`. The zero point convention follows
//!   the checkpoint format ([`GptqFormat`]): AutoGPTQ's v1 format, which every GPTQ tool writes by default,
//!   stores `z − 1` and its reference dequantisation (`qlinear_cuda.py`, `qlinear_cuda_old.py`) adds the 1 back
//!   to the masked nibble (`z = nibble + 1`, so a stored 15 reads as 16); GPTQModel's `gptq_v2` stores `z`.
//! - **AWQ** (AutoAWQ `WQLinear_GEMM`, `quant_method: awq`, `version: gemm`): `X.qweight` I32 `[in, out/8]` packs
//!   eight *output* columns per word in the interleaved order [`AWQ_ORDER`] (nibble `k` of word `(i, c)` holds
//!   output `8c + AWQ_ORDER[k]`); `X.qzeros` I32 `[G, out/8]` in the same order, zeros stored as they are;
//!   `X.scales` `[G, out]`; `W[o][i] = (q − z) · s` with group `i / g` (`dequantize_gemm`: unpack, reverse the
//!   order, mask each nibble).
//!
//! Which layout a module uses follows from the shapes alone (`qweight` has as many columns as `scales`, or an
//! eighth of them), so [`packed_layout`] needs only the headers; it checks every shape against the others and
//! refuses widths other than 2, 4 and 8 bits (4 only for AWQ). [`packed_signature`] then signs the dequantised `[out, in]` matrix exactly as a
//! stored float tensor of that name and shape is signed (same sketch, same samples, same row blocks), with source
//! [`ValueSource::Dequantized`]. Packed words interleave output rows (GPTQ) or input columns (AWQ), so a row of
//! `W` is spread over the whole `qweight`: the packed tensors are always read whole (they are an eighth of the
//! f32 weight), and only the selected rows of `W` are formed, a batch at a time.

use serde_json::Value;

use crate::accumulate::{TensorError, ValueSketcher, validate_scheme};
use crate::adapter::TensorBytes;
use crate::decode::{DecodeError, decode_f32};
use crate::layout::{RowLayout, selected_row_blocks};
use crate::model::{Dtype, Scheme, TensorSignature, ValueSource};

/// AutoAWQ's packing order: nibble `k` of a word holds output column `8c + AWQ_ORDER[k]`.
pub const AWQ_ORDER: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];

/// The inverse of [`AWQ_ORDER`] (AutoAWQ's `AWQ_REVERSE_ORDER`): output column `8c + j` is nibble
/// `AWQ_REVERSE_ORDER[j]`.
pub const AWQ_REVERSE_ORDER: [usize; 8] = [0, 4, 1, 5, 2, 6, 3, 7];

/// Bits per packed value of AWQ checkpoints, and the usual GPTQ width.
pub const BITS: u64 = 4;

/// GPTQ widths dequantised: those that pack whole values into 32-bit words (3-bit GPTQ packs values across
/// words and is refused).
pub const GPTQ_BITS: [u64; 3] = [2, 4, 8];

/// Most elements of `W` formed at once before they are fed to the sketcher: 1 Mi f32 (4 MiB).
const BATCH_ELEMENTS: u64 = 1 << 20;

/// The two packed layouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PackedFormat {
    /// AutoGPTQ / GPTQModel: `qweight` `[in/8, out]`, with `g_idx`.
    Gptq,
    /// AutoAWQ GEMM: `qweight` `[in, out/8]`, interleaved.
    Awq,
}

/// How a GPTQ checkpoint stores its zero points: `quantization_config.checkpoint_format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GptqFormat {
    /// `"gptq"` (or absent): zero points stored minus one, as AutoGPTQ writes them and GPTQModel saves by default.
    #[default]
    V1,
    /// `"gptq_v2"`: zero points stored as they are.
    V2,
}

impl GptqFormat {
    /// The format a `config.json` `quantization_config` object declares: [`GptqFormat::V2`] for
    /// `checkpoint_format: "gptq_v2"`, otherwise [`GptqFormat::V1`].
    pub fn from_quantization_config(config: &Value) -> GptqFormat {
        match config.get("checkpoint_format").and_then(Value::as_str) {
            Some("gptq_v2") => GptqFormat::V2,
            _ => GptqFormat::V1,
        }
    }
}

/// The checked shapes of one packed module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackedLayout {
    pub format: PackedFormat,
    /// Output features: rows of `W`.
    pub out: u64,
    /// Input features: columns of `W`.
    pub inputs: u64,
    /// Quantisation groups: rows of `scales` and `qzeros`.
    pub groups: u64,
    /// Bits per packed value: 4 for AWQ; 2, 4 or 8 for GPTQ.
    pub bits: u64,
}

impl PackedLayout {
    /// The dequantised weight's shape, `[out, in]`.
    pub fn shape(&self) -> [u64; 2] {
        [self.out, self.inputs]
    }

    /// Values per 32-bit word.
    fn per_word(&self) -> u64 {
        32 / self.bits
    }
}

/// Why a module's packed tensors cannot be dequantised as GPTQ (2, 4 or 8 bits) or AWQ (4 bits).
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum PackedError {
    #[error("{tensor} has dtype {dtype}, not {expected}")]
    Dtype { tensor: &'static str, dtype: &'static str, expected: &'static str },
    #[error("{tensor} has shape {shape:?}, not {expected}")]
    Shape { tensor: &'static str, shape: Vec<u64>, expected: &'static str },
    #[error("qzeros of shape {qzeros:?} do not hold {groups} groups of {out} packed outputs")]
    Zeros { qzeros: Vec<u64>, groups: u64, out: u64 },
    #[error("{bits}-bit values are not dequantised (GPTQ: 2, 4 or 8 bits; AWQ: 4)")]
    Bits { bits: u64 },
    #[error(
        "qweight of shape {qweight:?} fits neither the gptq [in/8, out] nor the awq [in, out/8] layout of scales {scales:?}"
    )]
    Layout { qweight: Vec<u64>, scales: Vec<u64> },
    #[error("g_idx has {len} entries for {inputs} inputs")]
    GroupIndexLength { len: u64, inputs: u64 },
    #[error("{groups} groups do not split {inputs} inputs evenly")]
    Groups { groups: u64, inputs: u64 },
}

/// Dtype and shape of one stored tensor, as a header declares it.
#[derive(Clone, Copy, Debug)]
pub struct Declared<'a> {
    pub dtype: Dtype,
    pub shape: &'a [u64],
}

/// The tensors of one packed module (declared shapes, references or bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackedTensors<T> {
    pub qweight: T,
    pub qzeros: T,
    pub scales: T,
    /// GPTQ only, and optional there (groups are then `i / (in / G)`).
    pub g_idx: Option<T>,
}

impl<'a> PackedTensors<TensorBytes<'a>> {
    /// The declared dtypes and shapes of these tensors, for [`packed_layout`].
    pub fn declared(&self) -> PackedTensors<Declared<'a>> {
        let d = |t: TensorBytes<'a>| Declared { dtype: t.dtype, shape: t.shape };
        PackedTensors {
            qweight: d(self.qweight),
            qzeros: d(self.qzeros),
            scales: d(self.scales),
            g_idx: self.g_idx.map(d),
        }
    }
}

fn matrix(tensor: &'static str, shape: &[u64]) -> Result<[u64; 2], PackedError> {
    match shape {
        &[r, c] if r > 0 && c > 0 => Ok([r, c]),
        _ => Err(PackedError::Shape { tensor, shape: shape.to_vec(), expected: "a matrix with no empty dimension" }),
    }
}

fn dtype(tensor: &'static str, found: Dtype, ok: &[Dtype], expected: &'static str) -> Result<(), PackedError> {
    if ok.contains(&found) { Ok(()) } else { Err(PackedError::Dtype { tensor, dtype: found.as_str(), expected }) }
}

/// Checks a module's packed tensors against each other and decides its layout, from the headers alone.
///
/// # Errors
/// The [`PackedError`] of the first inconsistency: a wrong dtype (`qweight`, `qzeros`, `g_idx` must be I32,
/// `scales` F16/BF16/F32), a shape that is not a non-empty matrix (vector for `g_idx`), zero points that do not
/// match `scales`, a width other than 4 bits, a `qweight` that fits neither layout, a `g_idx` of the wrong
/// length, or groups that do not split the inputs evenly (required unless `g_idx` assigns them).
pub fn packed_layout(t: PackedTensors<Declared<'_>>) -> Result<PackedLayout, PackedError> {
    dtype("qweight", t.qweight.dtype, &[Dtype::I32], "I32")?;
    dtype("qzeros", t.qzeros.dtype, &[Dtype::I32], "I32")?;
    dtype("scales", t.scales.dtype, &[Dtype::F16, Dtype::BF16, Dtype::F32], "F16, BF16 or F32")?;
    if let Some(g) = t.g_idx {
        dtype("g_idx", g.dtype, &[Dtype::I32], "I32")?;
    }
    let [qw_rows, qw_cols] = matrix("qweight", t.qweight.shape)?;
    let [z_rows, z_cols] = matrix("qzeros", t.qzeros.shape)?;
    let [groups, out] = matrix("scales", t.scales.shape)?;
    // Zero points pack `out` values of `bits` bits into `32 / bits`-value words: that gives the width.
    let zeros = || PackedError::Zeros { qzeros: t.qzeros.shape.to_vec(), groups, out };
    let packed_bits = z_cols.checked_mul(32).ok_or_else(zeros)?;
    if z_rows != groups || !packed_bits.is_multiple_of(out) {
        return Err(zeros());
    }
    let bits = packed_bits / out;
    if !GPTQ_BITS.contains(&bits) {
        return Err(PackedError::Bits { bits });
    }
    let per_word = 32 / bits;
    let layout = || PackedError::Layout { qweight: t.qweight.shape.to_vec(), scales: t.scales.shape.to_vec() };
    let (format, inputs) = if qw_cols == out {
        (PackedFormat::Gptq, qw_rows.checked_mul(per_word).ok_or_else(layout)?)
    } else if qw_cols.checked_mul(per_word) == Some(out) {
        // AutoAWQ's GEMM layout exists only for 4 bits.
        if bits != BITS {
            return Err(PackedError::Bits { bits });
        }
        (PackedFormat::Awq, qw_rows)
    } else {
        return Err(layout());
    };
    let g_idx = match (format, t.g_idx) {
        (PackedFormat::Gptq, Some(g)) => match g.shape {
            &[len] if len == inputs => true,
            &[len] => return Err(PackedError::GroupIndexLength { len, inputs }),
            shape => return Err(PackedError::Shape { tensor: "g_idx", shape: shape.to_vec(), expected: "a vector" }),
        },
        _ => false,
    };
    // With g_idx any assignment of inputs to groups is possible (act-order); without it groups are contiguous runs
    // of `in / G` inputs, and AutoAWQ requires `in % group_size == 0`.
    if groups > inputs || (!g_idx && !inputs.is_multiple_of(groups)) {
        return Err(PackedError::Groups { groups, inputs });
    }
    Ok(PackedLayout { format, out, inputs, groups, bits })
}

/// The packed tensors' bytes, unpacked into words and floats once.
struct Unpacked {
    qweight: Vec<u32>,
    qzeros: Vec<u32>,
    scales: Vec<f32>,
    /// Group of each input.
    group: Vec<u32>,
}

fn words(t: TensorBytes<'_>, count: u64) -> Result<Vec<u32>, TensorError> {
    let mismatch = || DecodeError::LengthMismatch {
        dtype: t.dtype.as_str(),
        bytes: t.bytes.len(),
        elements: usize::try_from(count).unwrap_or(usize::MAX),
    };
    if Some(t.bytes.len() as u64) != count.checked_mul(4) {
        return Err(mismatch().into());
    }
    Ok(t.bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

fn unpack(layout: &PackedLayout, t: PackedTensors<TensorBytes<'_>>) -> Result<Unpacked, TensorError> {
    let PackedLayout { format, out, inputs, groups, .. } = *layout;
    let per_word = layout.per_word();
    let overflow = |shape: Vec<u64>| TensorError::ShapeOverflow { shape };
    let numel = inputs.checked_mul(out).ok_or_else(|| overflow(vec![out, inputs]))?;
    let n_scales = groups.checked_mul(out).ok_or_else(|| overflow(vec![groups, out]))?;
    let qweight = words(t.qweight, numel / per_word)?;
    let qzeros = words(t.qzeros, n_scales / per_word)?;
    let n_scales = usize::try_from(n_scales).map_err(|_| overflow(vec![groups, out]))?;
    let mut scales = vec![0f32; n_scales];
    decode_f32(t.scales.dtype, t.scales.bytes, &mut scales)?;
    let group = match (format, t.g_idx) {
        (PackedFormat::Gptq, Some(g)) => {
            let group = words(g, inputs)?;
            if let Some((input, &value)) = group.iter().enumerate().find(|(_, v)| u64::from(**v) >= groups) {
                return Err(TensorError::GroupIndex { input: input as u64, group: i64::from(value as i32), groups });
            }
            group
        }
        _ => (0..inputs).map(|i| (i / (inputs / groups)) as u32).collect(),
    };
    Ok(Unpacked { qweight, qzeros, scales, group })
}

/// Forms rows `rows` of `W` into `buf` (row-major, `rows.len() × in`), walking `qweight` in storage order.
fn dequantize_rows(
    layout: &PackedLayout,
    gptq: GptqFormat,
    u: &Unpacked,
    rows: std::ops::Range<u64>,
    buf: &mut Vec<f32>,
) {
    let (out, inputs) = (layout.out as usize, layout.inputs as usize);
    let (first, n) = (rows.start as usize, (rows.end - rows.start) as usize);
    buf.clear();
    buf.resize(n * inputs, 0.0);
    let per_word = layout.per_word() as usize;
    let words_per_row = out / per_word;
    let bits = layout.bits as usize;
    let mask = (1u32 << bits) - 1;
    let nibble = |w: u32, k: usize| (w >> (bits * k)) & mask;
    // Zero points per (group, output) are read from their word on the fly; the +1 of the v1 format is applied to
    // the masked nibble, as AutoGPTQ's reference dequantisation does.
    let zero_bias = match (layout.format, gptq) {
        (PackedFormat::Gptq, GptqFormat::V1) => 1.0,
        _ => 0.0,
    };
    for i in 0..inputs {
        let g = u.group[i] as usize;
        for (r, o) in (first..first + n).enumerate() {
            let (q, z) = match layout.format {
                PackedFormat::Gptq => {
                    let w = u.qweight[(i / per_word) * out + o];
                    (nibble(w, i % per_word), nibble(u.qzeros[g * words_per_row + o / per_word], o % per_word))
                }
                PackedFormat::Awq => {
                    let k = AWQ_REVERSE_ORDER[o % 8];
                    (nibble(u.qweight[i * words_per_row + o / 8], k), nibble(u.qzeros[g * words_per_row + o / 8], k))
                }
            };
            // (q − z) is a small integer and the scale a stored f16/bf16/f32: the product is the same in any
            // order of evaluation, and exact for 16-bit scales.
            buf[r * inputs + i] = (q as f32 - (z as f32 + zero_bias)) * u.scales[g * out + o];
        }
    }
}

/// The whole dequantised `W` (`[out, in]`, row-major).
///
/// # Errors
/// [`TensorError::Decode`] when a tensor's bytes do not fit the layout, [`TensorError::GroupIndex`] for a
/// `g_idx` entry outside `0..groups`.
pub fn dequantize(
    layout: &PackedLayout,
    gptq: GptqFormat,
    t: PackedTensors<TensorBytes<'_>>,
) -> Result<Vec<f32>, TensorError> {
    let u = unpack(layout, t)?;
    let mut buf = Vec::new();
    dequantize_rows(layout, gptq, &u, 0..layout.out, &mut buf);
    Ok(buf)
}

/// The signature of the dequantised weight `name` (canonical, `X.weight`): that of a float tensor of shape
/// `[out, in]` holding `W`, with source [`ValueSource::Dequantized`], dtype I32 (the stored payload), and
/// `content_hash` / `byte_len` over the packed tensors' bytes (`qweight`, `qzeros`, `scales`, `g_idx`, in
/// that order).
///
/// # Errors
/// As [`dequantize`], plus scheme errors.
pub fn packed_signature(
    scheme: &Scheme,
    name: &str,
    layout: &PackedLayout,
    gptq: GptqFormat,
    t: PackedTensors<TensorBytes<'_>>,
) -> Result<TensorSignature, TensorError> {
    validate_scheme(scheme)?;
    let shape = layout.shape();
    let overflow = || TensorError::ShapeOverflow { shape: shape.to_vec() };
    let row_layout = RowLayout::of(&shape).ok_or_else(overflow)?;
    let u = unpack(layout, t)?;
    let blocks = selected_row_blocks(scheme, name, &shape);
    let mut sketcher = ValueSketcher::new(scheme, name, &shape, row_layout, &blocks);
    let batch_rows = (BATCH_ELEMENTS / layout.inputs).max(1);
    let mut buf = Vec::new();
    for block in &blocks {
        let mut start = block.start;
        while start < block.end {
            let end = (start + batch_rows).min(block.end);
            dequantize_rows(layout, gptq, &u, start..end, &mut buf);
            for (r, row) in buf.chunks_exact(layout.inputs as usize).enumerate() {
                sketcher.feed((start + r as u64) * layout.inputs, row);
            }
            start = end;
        }
    }
    let (moments, sketch, samples) = sketcher.finish();
    let mut hasher = blake3::Hasher::new();
    let mut byte_len = 0u64;
    for part in [Some(t.qweight), Some(t.qzeros), Some(t.scales), t.g_idx].into_iter().flatten() {
        hasher.update(part.bytes);
        byte_len += part.bytes.len() as u64;
    }
    Ok(TensorSignature {
        name: name.to_owned(),
        dtype: Dtype::I32,
        shape: shape.to_vec(),
        byte_len,
        content_hash: *hasher.finalize().as_bytes(),
        source: ValueSource::Dequantized,
        moments: Some(moments),
        sketch,
        samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accumulate::TensorAccumulator;
    use crate::corpus::{PackedModule, Tensor, f32_bytes, pack, pack_int4, packed_cases};

    fn by_suffix<'a>(m: &'a PackedModule, suffix: &str) -> Option<&'a Tensor<'static>> {
        m.tensors.iter().find(|t| t.name.ends_with(suffix))
    }

    fn b<'a>(t: &'a Tensor<'static>) -> TensorBytes<'a> {
        TensorBytes { dtype: t.dtype, shape: &t.shape, bytes: &t.bytes }
    }

    fn d(t: TensorBytes<'_>) -> Declared<'_> {
        Declared { dtype: t.dtype, shape: t.shape }
    }

    fn declared((dtype, shape): &(Dtype, Vec<u64>)) -> Declared<'_> {
        Declared { dtype: *dtype, shape }
    }

    fn parts(m: &PackedModule) -> PackedTensors<TensorBytes<'_>> {
        let get = |s| by_suffix(m, s).map(b).expect("packed tensor");
        PackedTensors {
            qweight: get(".qweight"),
            qzeros: get(".qzeros"),
            scales: get(".scales"),
            g_idx: by_suffix(m, ".g_idx").map(b),
        }
    }

    fn layout_of(m: &PackedModule) -> Result<PackedLayout, PackedError> {
        let p = parts(m);
        packed_layout(PackedTensors {
            qweight: d(p.qweight),
            qzeros: d(p.qzeros),
            scales: d(p.scales),
            g_idx: p.g_idx.map(d),
        })
    }

    /// Packs random 4-bit values with the reference packer and checks they dequantise to `(q − z) · s` exactly.
    fn check(format: PackedFormat, gptq: GptqFormat, (out, inp, groups): (usize, usize, usize), g_idx: &[u32]) {
        let m = pack_int4("m", format, gptq == GptqFormat::V1, (out, inp, groups), g_idx, 7);
        let layout = layout_of(&m).expect("a valid layout");
        assert_eq!(
            layout,
            PackedLayout { format, out: out as u64, inputs: inp as u64, groups: groups as u64, bits: 4 }
        );
        let w = dequantize(&layout, gptq, parts(&m)).expect("dequantises");
        assert_eq!(w.len(), out * inp);
        for (k, (got, expected)) in w.iter().zip(&m.weight).enumerate() {
            assert_eq!(got.to_bits(), expected.to_bits(), "{format:?} {gptq:?} [{}, {}]", k / inp, k % inp);
        }
    }

    #[test]
    fn reference_packings_dequantise_exactly() {
        let contiguous = |inp: usize, g: usize| (0..inp).map(|i| (i / g) as u32).collect::<Vec<_>>();
        for gptq in [GptqFormat::V1, GptqFormat::V2] {
            check(PackedFormat::Gptq, gptq, (32, 64, 4), &contiguous(64, 16));
            // desc_act: groups assigned out of order (a permutation's groups), one partial group (ceil(in / g)).
            let act_order: Vec<u32> = (0..72u32).map(|i| (i * 29 % 72) / 32).collect();
            check(PackedFormat::Gptq, gptq, (16, 72, 3), &act_order);
        }
        check(PackedFormat::Awq, GptqFormat::V1, (48, 32, 2), &contiguous(32, 16));
        // 2- and 8-bit GPTQ: 16 and 4 values per word.
        for bits in [2, 8] {
            for gptq in [GptqFormat::V1, GptqFormat::V2] {
                let m =
                    pack("m", PackedFormat::Gptq, bits, gptq == GptqFormat::V1, (32, 64, 4), &contiguous(64, 16), 9);
                let layout = layout_of(&m).expect("a valid layout");
                assert_eq!((layout.bits, layout.inputs, layout.out), (bits as u64, 64, 32));
                let w = dequantize(&layout, gptq, parts(&m)).expect("dequantises");
                let same = w.iter().zip(&m.weight).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{bits}-bit {gptq:?}");
            }
        }
        check(PackedFormat::Awq, GptqFormat::V2, (8, 128, 1), &contiguous(128, 128));
    }

    #[test]
    fn gptq_v1_reads_a_stored_fifteen_as_zero_point_sixteen() {
        // AutoGPTQ adds 1 to the masked nibble: a true zero point of 0 (stored −1 → 15) reads back as 16.
        let word = |n: u32| (0..8).fold(0u32, |w, j| w | n << (4 * j));
        let layout = PackedLayout { format: PackedFormat::Gptq, out: 8, inputs: 8, groups: 1, bits: 4 };
        let qweight: Vec<u8> = (0..8).flat_map(|_| word(3).to_le_bytes()).collect();
        let qzeros = word(15).to_le_bytes();
        let scales: Vec<u8> = (0..8).flat_map(|_| half::f16::from_f32(0.5).to_le_bytes()).collect();
        let t = |dtype, shape: &'static [u64], bytes: &'static [u8]| TensorBytes { dtype, shape, bytes };
        let (qweight, scales): (&'static [u8], &'static [u8]) = (qweight.leak(), scales.leak());
        let qzeros: &'static [u8] = Box::leak(Box::new(qzeros));
        let parts = PackedTensors {
            qweight: t(Dtype::I32, &[1, 8], qweight),
            qzeros: t(Dtype::I32, &[1, 1], qzeros),
            scales: t(Dtype::F16, &[1, 8], scales),
            g_idx: None,
        };
        let v1 = dequantize(&layout, GptqFormat::V1, parts).expect("v1");
        let v2 = dequantize(&layout, GptqFormat::V2, parts).expect("v2");
        assert!(v1.iter().all(|&x| x == (3.0 - 16.0) * 0.5), "{v1:?}");
        assert!(v2.iter().all(|&x| x == (3.0 - 15.0) * 0.5), "{v2:?}");
    }

    #[test]
    fn the_signature_is_that_of_the_float_weight() {
        let (out, inp, groups) = (160, 64, 4);
        let g_idx: Vec<u32> = (0..inp as u32).map(|i| i / 16).collect();
        for format in [PackedFormat::Gptq, PackedFormat::Awq] {
            let m = pack_int4("m", format, true, (out, inp, groups), &g_idx, 11);
            let layout = layout_of(&m).expect("valid");
            for fraction in [1.0, 0.25] {
                let scheme = Scheme { row_fraction: fraction, sketch_k: 16, samples: 300, ..Scheme::default() };
                let name = "model.layers.0.mlp.up_proj.weight";
                let sig = packed_signature(&scheme, name, &layout, GptqFormat::V1, parts(&m)).expect("signature");
                let shape = [out as u64, inp as u64];
                let mut acc = TensorAccumulator::new(&scheme, name, Dtype::F32, &shape).expect("accumulator");
                let bytes = f32_bytes(&m.weight);
                let row_bytes = acc.row_bytes() as usize;
                for rows in acc.selected_rows().to_vec() {
                    let span = rows.start as usize * row_bytes..rows.end as usize * row_bytes;
                    acc.feed_rows(rows.start, &bytes[span]).expect("rows");
                }
                let float = acc.finish().expect("float signature");
                assert_eq!((sig.moments, &sig.sketch, &sig.samples), (float.moments, &float.sketch, &float.samples));
                assert_eq!((sig.name.as_str(), sig.shape.as_slice()), (name, &shape[..]));
                assert_eq!((sig.source, sig.dtype), (ValueSource::Dequantized, Dtype::I32));
                let packed: u64 = m.tensors.iter().map(|t| t.bytes.len() as u64).sum();
                assert_eq!(sig.byte_len, packed);
            }
        }
    }

    #[test]
    fn malformed_layouts_are_refused() {
        for case in packed_cases() {
            let got = packed_layout(PackedTensors {
                qweight: declared(&case.qweight),
                qzeros: declared(&case.qzeros),
                scales: declared(&case.scales),
                g_idx: case.g_idx.as_ref().map(declared),
            });
            assert_eq!(got, Err(case.expected.clone()), "{}", case.name);
        }
    }

    #[test]
    fn bad_bytes_are_errors_not_panics() {
        let g_idx: Vec<u32> = (0..64).map(|i| i / 16).collect();
        let m = pack_int4("m", PackedFormat::Gptq, true, (32, 64, 4), &g_idx, 3);
        let layout = layout_of(&m).expect("valid");
        // A g_idx entry outside the groups (here −1).
        let mut bad = parts(&m);
        let mut g = by_suffix(&m, ".g_idx").expect("g_idx").bytes.clone();
        g[8..12].copy_from_slice(&(-1i32).to_le_bytes());
        bad.g_idx = Some(TensorBytes { bytes: &g, ..bad.g_idx.expect("g_idx") });
        assert_eq!(
            dequantize(&layout, GptqFormat::V1, bad).err(),
            Some(TensorError::GroupIndex { input: 2, group: -1, groups: 4 })
        );
        // qweight bytes that do not hold the declared shape.
        let mut short = parts(&m);
        short.qweight.bytes = &short.qweight.bytes[4..];
        assert!(matches!(dequantize(&layout, GptqFormat::V1, short), Err(TensorError::Decode(_))));
        let scheme = Scheme::default();
        assert!(matches!(
            packed_signature(&scheme, "m.weight", &layout, GptqFormat::V1, short),
            Err(TensorError::Decode(_))
        ));
    }

    #[test]
    fn gptq_format_follows_the_checkpoint_format() {
        let check = |json: &str, expected| {
            let v: Value = serde_json::from_str(json).expect("json");
            assert_eq!(GptqFormat::from_quantization_config(&v), expected, "{json}");
        };
        check(r#"{"quant_method":"gptq","checkpoint_format":"gptq_v2"}"#, GptqFormat::V2);
        check(r#"{"quant_method":"gptq","checkpoint_format":"gptq"}"#, GptqFormat::V1);
        check(r#"{"quant_method":"gptq"}"#, GptqFormat::V1);
        check(r#"{"checkpoint_format":2}"#, GptqFormat::V1);
    }
}
