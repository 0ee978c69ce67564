//! Decoding stored elements (little-endian, as safetensors mandates) into `f32` or `f64`, a chunk at a time.
//!
//! Every conversion here is exact: bf16, f16 and both fp8 formats widen to `f32` without rounding, and so do
//! integers up to 24 bits. Wider values (F64, I32 and up) round to nearest when decoded to `f32`; [`decode_f64`]
//! widens every float format exactly. fp8 decodes through 256-entry tables built at compile time from `float8`'s
//! own conversions, bf16 with a shift, f16 through `half` (which uses F16C when the CPU has it).

use float8::{F8E4M3, F8E5M2};
use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::model::Dtype;

/// Why a chunk could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("{bytes} bytes do not hold {elements} elements of {dtype}")]
    LengthMismatch { dtype: &'static str, bytes: usize, elements: usize },
}

const fn fp8_table(e4m3: bool) -> [f32; 256] {
    let mut table = [0.0f32; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = if e4m3 { F8E4M3::from_bits(i as u8).to_f32() } else { F8E5M2::from_bits(i as u8).to_f32() };
        i += 1;
    }
    table
}

/// Every F8_E4M3 (OCP "fn" variant: no infinities, 0x7f/0xff are NaN) value as `f32`.
static E4M3: [f32; 256] = fp8_table(true);
/// Every F8_E5M2 value as `f32`.
static E5M2: [f32; 256] = fp8_table(false);

fn check_len(dtype: Dtype, bytes: &[u8], elements: usize) -> Result<(), DecodeError> {
    let size = dtype.size() as usize;
    if elements.checked_mul(size) == Some(bytes.len()) {
        Ok(())
    } else {
        Err(DecodeError::LengthMismatch { dtype: dtype.as_str(), bytes: bytes.len(), elements })
    }
}

fn le<const N: usize>(chunk: &[u8]) -> [u8; N] {
    // `chunks_exact(N)` guarantees the length; the fallback is never taken.
    chunk.try_into().unwrap_or([0; N])
}

/// Decodes `bytes` (stored as `dtype`) into `out`, one value per element.
///
/// # Errors
/// [`DecodeError::LengthMismatch`] when `bytes.len() != out.len() × dtype.size()`.
pub fn decode_f32(dtype: Dtype, bytes: &[u8], out: &mut [f32]) -> Result<(), DecodeError> {
    check_len(dtype, bytes, out.len())?;
    match dtype {
        Dtype::BF16 => crate::kernel::decode_bf16(bytes, out),
        Dtype::F16 => {
            // half's slice conversion dispatches to F16C at run time; feed it native-endian halves first.
            const STEP: usize = 256;
            let mut halves = [f16::ZERO; STEP];
            for (o, c) in out.chunks_mut(STEP).zip(bytes.chunks(2 * STEP)) {
                let h = &mut halves[..o.len()];
                for (h, b) in h.iter_mut().zip(c.chunks_exact(2)) {
                    *h = f16::from_bits(u16::from_le_bytes(le(b)));
                }
                h.convert_to_f32_slice(o);
            }
        }
        Dtype::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes(le(c));
            }
        }
        Dtype::F64 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                *o = f64::from_le_bytes(le(c)) as f32;
            }
        }
        Dtype::F8E4M3 => {
            for (o, &b) in out.iter_mut().zip(bytes) {
                *o = E4M3[usize::from(b)];
            }
        }
        Dtype::F8E5M2 => {
            for (o, &b) in out.iter_mut().zip(bytes) {
                *o = E5M2[usize::from(b)];
            }
        }
        Dtype::Bool | Dtype::U8 => {
            for (o, &b) in out.iter_mut().zip(bytes) {
                *o = f32::from(b);
            }
        }
        Dtype::I8 => {
            for (o, &b) in out.iter_mut().zip(bytes) {
                *o = f32::from(b as i8);
            }
        }
        Dtype::I16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f32::from(i16::from_le_bytes(le(c)));
            }
        }
        Dtype::U16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f32::from(u16::from_le_bytes(le(c)));
            }
        }
        Dtype::I32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = i32::from_le_bytes(le(c)) as f32;
            }
        }
        Dtype::U32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = u32::from_le_bytes(le(c)) as f32;
            }
        }
        Dtype::I64 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                *o = i64::from_le_bytes(le(c)) as f32;
            }
        }
        Dtype::U64 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                *o = u64::from_le_bytes(le(c)) as f32;
            }
        }
    }
    Ok(())
}

/// Decodes `bytes` (stored as `dtype`) into `out` as `f64`: exact for every float format and for integers up to
/// 53 bits.
///
/// # Errors
/// [`DecodeError::LengthMismatch`] when `bytes.len() != out.len() × dtype.size()`.
pub fn decode_f64(dtype: Dtype, bytes: &[u8], out: &mut [f64]) -> Result<(), DecodeError> {
    check_len(dtype, bytes, out.len())?;
    match dtype {
        Dtype::F64 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                *o = f64::from_le_bytes(le(c));
            }
        }
        Dtype::I64 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                *o = i64::from_le_bytes(le(c)) as f64;
            }
        }
        Dtype::U64 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                *o = u64::from_le_bytes(le(c)) as f64;
            }
        }
        _ => {
            // Every other type fits in f32 exactly (I32/U32 excepted, handled here too), so widen from 32 bits.
            if matches!(dtype, Dtype::I32 | Dtype::U32) {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    let b = le(c);
                    *o = if dtype == Dtype::I32 {
                        f64::from(i32::from_le_bytes(b))
                    } else {
                        f64::from(u32::from_le_bytes(b))
                    };
                }
                return Ok(());
            }
            let mut tmp = [0f32; 256];
            let size = dtype.size() as usize;
            for (o, c) in out.chunks_mut(256).zip(bytes.chunks(256 * size)) {
                let t = &mut tmp[..o.len()];
                decode_f32(dtype, c, t)?;
                for (o, &t) in o.iter_mut().zip(t.iter()) {
                    *o = f64::from(t);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(dtype: Dtype, bytes: &[u8]) -> f32 {
        let mut out = [0f32];
        decode_f32(dtype, bytes, &mut out).expect("length matches");
        out[0]
    }

    /// `check(dtype, stored bytes, expected f32 bits)`: decoding must be bit-exact.
    fn check(dtype: Dtype, bytes: &[u8], expected: u32) {
        let got = one(dtype, bytes);
        assert_eq!(got.to_bits(), expected, "{dtype:?} {bytes:02x?}: got {got:e}, want {:e}", f32::from_bits(expected));
        let mut wide = [0f64];
        decode_f64(dtype, bytes, &mut wide).expect("length matches");
        let expected = f32::from_bits(expected);
        if expected.is_nan() {
            assert!(wide[0].is_nan());
        } else {
            assert_eq!(wide[0], f64::from(expected), "{dtype:?} {bytes:02x?} as f64");
        }
    }

    #[test]
    fn known_values_decode_bit_exactly() {
        // bf16 is the top half of an f32.
        check(Dtype::BF16, &[0x80, 0x3f], 0x3f80_0000); // 1.0
        check(Dtype::BF16, &[0x00, 0xc0], 0xc000_0000); // -2.0
        check(Dtype::BF16, &[0x80, 0x7f], 0x7f80_0000); // +inf
        check(Dtype::BF16, &[0x01, 0x00], 0x0001_0000); // smallest subnormal
        check(Dtype::BF16, &[0x7f, 0x7f], 0x7f7f_0000); // largest finite
        check(Dtype::BF16, &[0x49, 0x40], 0x4049_0000); // 3.140625
        // f16.
        check(Dtype::F16, &[0x00, 0x3c], 1.0f32.to_bits());
        check(Dtype::F16, &[0x00, 0xc0], (-2.0f32).to_bits());
        check(Dtype::F16, &[0xff, 0x7b], 65504.0f32.to_bits()); // largest finite
        check(Dtype::F16, &[0x01, 0x00], 5.960_464_5e-8f32.to_bits()); // 2^-24, smallest subnormal
        check(Dtype::F16, &[0x00, 0x04], 6.103_515_6e-5f32.to_bits()); // 2^-14, smallest normal
        check(Dtype::F16, &[0x00, 0x7c], f32::INFINITY.to_bits());
        check(Dtype::F16, &[0x00, 0x80], (-0.0f32).to_bits());
        // F8_E4M3 (OCP fn): bias 7, no infinities, 0x7f is NaN.
        check(Dtype::F8E4M3, &[0x38], 1.0f32.to_bits());
        check(Dtype::F8E4M3, &[0x7e], 448.0f32.to_bits());
        check(Dtype::F8E4M3, &[0xfe], (-448.0f32).to_bits());
        check(Dtype::F8E4M3, &[0x01], 0.001_953_125f32.to_bits()); // 2^-9
        check(Dtype::F8E4M3, &[0x08], 0.015_625f32.to_bits()); // 2^-6
        check(Dtype::F8E4M3, &[0x3c], 1.5f32.to_bits());
        assert!(one(Dtype::F8E4M3, &[0x7f]).is_nan());
        // F8_E5M2: bias 15, has infinities.
        check(Dtype::F8E5M2, &[0x3c], 1.0f32.to_bits());
        check(Dtype::F8E5M2, &[0x7b], 57344.0f32.to_bits());
        check(Dtype::F8E5M2, &[0x7c], f32::INFINITY.to_bits());
        check(Dtype::F8E5M2, &[0x01], 1.525_878_9e-5f32.to_bits()); // 2^-16
        check(Dtype::F8E5M2, &[0xc0], (-2.0f32).to_bits());
        assert!(one(Dtype::F8E5M2, &[0x7d]).is_nan());
        // Wider floats and integers.
        check(Dtype::F32, &0.1f32.to_le_bytes(), 0.1f32.to_bits());
        check(Dtype::F64, &0.5f64.to_le_bytes(), 0.5f32.to_bits());
        check(Dtype::I8, &[0x80], (-128.0f32).to_bits());
        check(Dtype::U8, &[0xff], 255.0f32.to_bits());
        check(Dtype::I16, &(-300i16).to_le_bytes(), (-300.0f32).to_bits());
        check(Dtype::U16, &60000u16.to_le_bytes(), 60000.0f32.to_bits());
        check(Dtype::I32, &(-7i32).to_le_bytes(), (-7.0f32).to_bits());
        check(Dtype::U32, &7u32.to_le_bytes(), 7.0f32.to_bits());
        check(Dtype::I64, &(-9i64).to_le_bytes(), (-9.0f32).to_bits());
        check(Dtype::U64, &9u64.to_le_bytes(), 9.0f32.to_bits());
        check(Dtype::Bool, &[1], 1.0f32.to_bits());
    }

    #[test]
    fn f64_keeps_what_f32_would_round() {
        let x = 0.1f64;
        let mut out = [0f64];
        decode_f64(Dtype::F64, &x.to_le_bytes(), &mut out).expect("length matches");
        assert_eq!(out[0].to_bits(), x.to_bits());
        decode_f64(Dtype::I64, &((1i64 << 40) + 1).to_le_bytes(), &mut out).expect("length matches");
        assert_eq!(out[0], ((1i64 << 40) + 1) as f64);
        decode_f64(Dtype::U32, &u32::MAX.to_le_bytes(), &mut out).expect("length matches");
        assert_eq!(out[0], f64::from(u32::MAX));
    }

    #[test]
    fn every_half_value_matches_the_reference_conversion() {
        // The f16 path goes through a staging buffer and runtime-dispatched SIMD: compare all 65,536 encodings
        // against half's scalar conversion, and bf16 against the bit definition, in chunks that straddle
        // the staging buffer's size.
        let bytes: Vec<u8> = (0..=u16::MAX).flat_map(u16::to_le_bytes).collect();
        let mut out = vec![0f32; 1 << 16];
        decode_f32(Dtype::F16, &bytes, &mut out).expect("length matches");
        for (bits, got) in (0..=u16::MAX).zip(&out) {
            let want = f16::from_bits(bits).to_f32();
            assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()), "f16 {bits:#06x}");
        }
        decode_f32(Dtype::BF16, &bytes, &mut out).expect("length matches");
        for (bits, got) in (0..=u16::MAX).zip(&out) {
            assert_eq!(got.to_bits(), u32::from(bits) << 16, "bf16 {bits:#06x}");
        }
    }

    #[test]
    fn length_must_match() {
        let mut out = [0f32; 2];
        assert_eq!(
            decode_f32(Dtype::BF16, &[0; 3], &mut out),
            Err(DecodeError::LengthMismatch { dtype: "BF16", bytes: 3, elements: 2 })
        );
        let mut out = [0f64; 1];
        assert!(decode_f64(Dtype::F32, &[0; 8], &mut out).is_err());
    }
}
