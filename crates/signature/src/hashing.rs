//! Seeded hashing shared by the sketch, the row-block selection and the sample positions.
//!
//! Everything random in a signature derives from `(scheme.seed, purpose, tensor name, shape)` through
//! [`derive_key`] (blake3, so keys are stable across platforms and releases), then from the key and an index
//! through the SplitMix64 finaliser [`mix64`], a good 64-bit mixer. Two models with the same tensor name and
//! shape therefore draw the same sketch matrices, rows and positions whatever their dtype or values.

/// Odd constant (2⁶⁴/φ) that spreads consecutive indices across the key space before mixing.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's finaliser (Stafford's mix 13): a bijection on `u64` with full avalanche.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The `index`-th hash of the stream keyed by `key`.
pub(crate) fn stream(key: u64, index: u64) -> u64 {
    mix64(key ^ index.wrapping_add(1).wrapping_mul(GOLDEN))
}

/// Maps a hash uniformly onto `0..n` (Lemire's multiply-shift; uses the high bits).
pub(crate) fn below(hash: u64, n: u64) -> u64 {
    ((u128::from(hash) * u128::from(n)) >> 64) as u64
}

/// What a derived key is used for; part of the hashed input so the streams are independent.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Purpose {
    SketchRows,
    SketchCols,
    RowBlocks,
    Samples,
}

/// A key for one `(seed, purpose, name, shape)`.
pub(crate) fn derive_key(seed: u64, purpose: Purpose, name: &str, shape: &[u64]) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(b"modeltree signature key v1\0");
    h.update(&seed.to_le_bytes());
    let tag: &[u8] = match purpose {
        Purpose::SketchRows => b"sketch-rows",
        Purpose::SketchCols => b"sketch-cols",
        Purpose::RowBlocks => b"row-blocks",
        Purpose::Samples => b"samples",
    };
    h.update(&(tag.len() as u64).to_le_bytes());
    h.update(tag);
    h.update(&(name.len() as u64).to_le_bytes());
    h.update(name.as_bytes());
    h.update(&(shape.len() as u64).to_le_bytes());
    for d in shape {
        h.update(&d.to_le_bytes());
    }
    let out = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&out.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_depend_on_every_input() {
        let base = derive_key(1, Purpose::SketchRows, "w", &[4, 4]);
        assert_eq!(base, derive_key(1, Purpose::SketchRows, "w", &[4, 4]));
        assert_ne!(base, derive_key(2, Purpose::SketchRows, "w", &[4, 4]));
        assert_ne!(base, derive_key(1, Purpose::SketchCols, "w", &[4, 4]));
        assert_ne!(base, derive_key(1, Purpose::SketchRows, "v", &[4, 4]));
        assert_ne!(base, derive_key(1, Purpose::SketchRows, "w", &[4, 5]));
        assert_ne!(base, derive_key(1, Purpose::SketchRows, "w", &[4, 4, 1]));
    }

    #[test]
    fn buckets_are_uniform_and_signs_balanced() {
        // 64 buckets over 64k indices: every bucket within 15% of 1024, signs within 2% of half.
        let key = derive_key(7, Purpose::SketchCols, "t", &[1 << 16]);
        let mut counts = [0u32; 64];
        let mut plus = 0u32;
        for i in 0..(1u64 << 16) {
            let h = stream(key, i);
            counts[below(h, 64) as usize] += 1;
            plus += (h & 1) as u32;
        }
        assert!(counts.iter().all(|&c| (870..=1180).contains(&c)), "{counts:?}");
        assert!((32_112..=33_424).contains(&plus), "{plus}");
    }

    #[test]
    fn below_stays_in_range() {
        for n in [1u64, 2, 3, 64, 1000, u64::MAX] {
            for h in [0u64, 1, u64::MAX, 1 << 63] {
                assert!(below(h, n) < n);
            }
        }
    }
}
