//! Explicit conversions between the domain types and their column encodings.
//!
//! Domain types do not derive serde, so every encoding the schema uses is spelled out here once: f32 vectors as
//! little-endian BLOBs, shapes as `64x128` text, enums as fixed lowercase words. Decoders are strict: anything
//! a writer of this crate could not have produced is an error, never a guess.

use signature::{Dtype, ValueSource};

/// Little-endian f32s, four bytes each. Bit-exact, NaN payloads included.
pub(crate) fn encode_f32s(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * 4);
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Inverse of [`encode_f32s`]; `None` when the length is not a multiple of four.
pub(crate) fn decode_f32s(bytes: &[u8]) -> Option<Vec<f32>> {
    let chunks = bytes.chunks_exact(4);
    if !chunks.remainder().is_empty() {
        return None;
    }
    Some(chunks.map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

/// `[64, 128]` → `"64x128"`; a scalar (empty shape) is the empty string.
pub(crate) fn encode_shape(shape: &[u64]) -> String {
    let dims: Vec<String> = shape.iter().map(u64::to_string).collect();
    dims.join("x")
}

/// Inverse of [`encode_shape`]. Only canonical spellings are accepted (digits without sign or leading zeros), so
/// one shape has exactly one text.
pub(crate) fn decode_shape(text: &str) -> Option<Vec<u64>> {
    if text.is_empty() {
        return Some(Vec::new());
    }
    text.split('x')
        .map(|dim| {
            let canonical =
                !dim.is_empty() && dim.bytes().all(|b| b.is_ascii_digit()) && (dim == "0" || !dim.starts_with('0'));
            if canonical { dim.parse().ok() } else { None }
        })
        .collect()
}

pub(crate) fn encode_source(source: ValueSource) -> &'static str {
    match source {
        ValueSource::Raw => "raw",
        ValueSource::Dequantized => "dequantized",
        ValueSource::AdapterDelta => "adapter_delta",
    }
}

pub(crate) fn decode_source(text: &str) -> Option<ValueSource> {
    Some(match text {
        "raw" => ValueSource::Raw,
        "dequantized" => ValueSource::Dequantized,
        "adapter_delta" => ValueSource::AdapterDelta,
        _ => return None,
    })
}

/// Dtypes use the safetensors spelling, which [`Dtype`] already owns.
pub(crate) fn decode_dtype(text: &str) -> Option<Dtype> {
    Dtype::parse(text)
}

/// SQLite cannot store NaN in a REAL column (it binds as NULL), so a NaN moment is written as NULL and read
/// back as NaN. Infinities are stored as they are.
pub(crate) fn real_or_null(value: f64) -> Option<f64> {
    if value.is_nan() { None } else { Some(value) }
}

pub(crate) fn null_as_nan(value: Option<f64>) -> f64 {
    value.unwrap_or(f64::NAN)
}

/// Integers the schema stores are SQLite's i64; values above `i64::MAX` are refused rather than wrapped.
pub(crate) fn to_i64(value: u64) -> Option<i64> {
    i64::try_from(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_shape(shape: &[u64], text: &str) {
        assert_eq!(encode_shape(shape), text);
        assert_eq!(decode_shape(text).as_deref(), Some(shape));
    }

    #[test]
    fn shapes_round_trip() {
        check_shape(&[], "");
        check_shape(&[0], "0");
        check_shape(&[7], "7");
        check_shape(&[64, 128], "64x128");
        check_shape(&[1, 2, 3, 4], "1x2x3x4");
        check_shape(&[u64::MAX, 1], "18446744073709551615x1");
    }

    fn check_bad_shape(text: &str) {
        assert_eq!(decode_shape(text), None, "{text:?} should be rejected");
    }

    #[test]
    fn non_canonical_shapes_are_rejected() {
        for text in ["x", "64x", "x64", "64xx128", "064", "+1", "-1", "1 x2", "1X2", "18446744073709551616", "a"] {
            check_bad_shape(text);
        }
    }

    #[test]
    fn f32_blobs_are_bit_exact() {
        let values =
            [0.0f32, -0.0, 1.5, f32::MIN_POSITIVE, f32::INFINITY, f32::NEG_INFINITY, f32::from_bits(0x7fc0_1234)];
        let bytes = encode_f32s(&values);
        assert_eq!(bytes.len(), 28);
        assert_eq!(&bytes[8..12], &1.5f32.to_le_bytes());
        let back = decode_f32s(&bytes).expect("length is a multiple of 4");
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back), bits(&values));
        assert_eq!(decode_f32s(&[]), Some(Vec::new()));
        assert_eq!(decode_f32s(&[1, 2, 3]), None);
        assert_eq!(decode_f32s(&[0; 5]), None);
    }

    #[test]
    fn value_sources_round_trip() {
        for source in [ValueSource::Raw, ValueSource::Dequantized, ValueSource::AdapterDelta] {
            assert_eq!(decode_source(encode_source(source)), Some(source));
        }
        assert_eq!(decode_source("Raw"), None);
        assert_eq!(decode_source(""), None);
    }

    #[test]
    fn nan_moments_map_to_null() {
        assert_eq!(real_or_null(f64::NAN), None);
        assert_eq!(real_or_null(f64::INFINITY), Some(f64::INFINITY));
        assert!(null_as_nan(None).is_nan());
        assert_eq!(null_as_nan(Some(-0.5)), -0.5);
    }
}
