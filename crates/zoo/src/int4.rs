//! Packed 4-bit checkpoints laid out the way AutoGPTQ and AutoAWQ store them.
//!
//! The zoo's int4 children are quantised by round-to-nearest with one scale and zero point per group of
//! [`GROUP_SIZE`] input columns (RTN, not the GPTQ solver or AWQ's activation-aware scaling: the layout is the
//! tools', the rounding is the simplest), then packed eight nibbles to an `int32`:
//!
//! - **GPTQ** (AutoGPTQ `QuantLinear.pack`, `qlinear_cuda_old.py`; symmetric, `desc_act: false`): `qweight`
//!   `[in/8, out]` packs eight consecutive *input* rows, nibble `j` of word `(r, o)` holding `q[o][8r + j]`;
//!   `qzeros` `[in/g, out/8]` packs eight consecutive output columns the same way and stores `zero − 1` (the v1
//!   checkpoint format); `scales` `[in/g, out]` f16; `g_idx` `[in]` i32 with `g_idx[i] = i / g`. Dequantised:
//!   `W[o][i] = (q − (z_stored + 1)) · s[g_idx[i]][o]`.
//! - **AWQ** (AutoAWQ `WQLinear_GEMM.from_linear`, `version: gemm`, zero point on): `qweight` `[in, out/8]` packs
//!   eight output columns in the interleaved order `[0, 2, 4, 6, 1, 3, 5, 7]` (nibble `k` of word `(i, c)` holds
//!   output column `8c + ORDER[k]`); `qzeros` `[in/g, out/8]` the same way, zeros stored as they are; `scales`
//!   `[in/g, out]` f16. Dequantised: `W[o][i] = (q − z) · s`.
//!
//! [`pack`] writes a matrix's four (GPTQ) or three (AWQ) tensors, [`unpack`] reads them back; the zoo's own
//! reader uses it so a quantised child's evaluation sees exactly what is stored.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail, ensure};
use safetensors::Dtype;
use serde_json::{Value, json};

use crate::repo::Stored;
use crate::weights::{Mat, Quant};

/// Input columns per quantisation group. It divides every input dimension of the zoo's architectures (64, 176),
/// as AutoAWQ requires; real checkpoints mostly use 128, which these matrices are too small for.
pub const GROUP_SIZE: usize = 16;

/// AutoAWQ's packing order: nibble `k` of a word holds output column `8c + AWQ_ORDER[k]`.
pub const AWQ_ORDER: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];

const MAXQ: f32 = 15.0;

/// The `quantization_config` the tools write into `config.json`.
pub fn quantization_config(q: Quant) -> Value {
    match q {
        // AutoGPTQ's BaseQuantizeConfig.to_dict() as saved through transformers/optimum.
        Quant::Gptq4 => json!({
            "bits": 4,
            "group_size": GROUP_SIZE,
            "damp_percent": 0.01,
            "desc_act": false,
            "static_groups": false,
            "sym": true,
            "true_sequential": true,
            "model_file_base_name": "model",
            "quant_method": "gptq",
            "checkpoint_format": "gptq",
        }),
        // AutoAWQ's AwqConfig.to_transformers_dict().
        Quant::Awq4 => json!({
            "quant_method": "awq",
            "zero_point": true,
            "group_size": GROUP_SIZE,
            "bits": 4,
            "version": "gemm",
            "modules_to_not_convert": null,
        }),
        Quant::Int8 | Quant::Fp8 => Value::Null,
    }
}

/// The module prefix of a weight name (`….q_proj.weight` → `….q_proj`).
fn prefix(name: &str) -> Result<&str> {
    name.strip_suffix(".weight").with_context(|| format!("{name} is not a .weight tensor"))
}

fn i32_tensor(shape: Vec<usize>, words: &[u32]) -> Stored {
    Stored { dtype: Dtype::I32, shape, bytes: words.iter().flat_map(|w| w.to_le_bytes()).collect() }
}

/// Per-group scale (rounded to f16, as stored) and zero point of one output row's group `values`.
fn group_params(values: &[f32], q: Quant) -> (half::f16, u32) {
    let lo = values.iter().fold(0.0f32, |a, &x| a.min(x));
    let hi = values.iter().fold(0.0f32, |a, &x| a.max(x));
    match q {
        // AutoGPTQ's Quantizer with sym=True: the range is symmetric around 0 and the zero point is (maxq + 1) / 2.
        Quant::Gptq4 => {
            let m = hi.max(-lo);
            let m = if m == 0.0 { 1.0 } else { m };
            (half::f16::from_f32(2.0 * m / MAXQ), 8)
        }
        // AutoAWQ's pseudo_quantize_tensor with zero_point=True: scale over [min, max], zero = −round(min/scale).
        _ => {
            let (lo, hi) = (
                values.iter().fold(f32::INFINITY, |a, &x| a.min(x)),
                values.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x)),
            );
            let s = half::f16::from_f32(((hi - lo).max(1e-5)) / MAXQ);
            let z = (-(lo / s.to_f32()).round()).clamp(0.0, MAXQ) as u32;
            (s, z)
        }
    }
}

/// Quantises and packs the 2-D weight `name` (`[out, in]`): the tensors that replace it, keyed by name.
///
/// # Errors
/// When the matrix is not 2-D, `q` is not a 4-bit format, or `in` / `out` are not multiples of [`GROUP_SIZE`] / 8.
pub fn pack(name: &str, m: &Mat, q: Quant) -> Result<BTreeMap<String, Stored>> {
    ensure!(matches!(q, Quant::Gptq4 | Quant::Awq4), "{q:?} is not a packed 4-bit format");
    let p = prefix(name)?;
    let (out, inp) = m.dims2()?;
    ensure!(inp.is_multiple_of(GROUP_SIZE) && out.is_multiple_of(8), "{name}: {out}×{inp} cannot be packed");
    let groups = inp / GROUP_SIZE;
    // q[o][i], scales[g][o], zeros[g][o].
    let mut ints = vec![0u32; out * inp];
    let mut scales = vec![half::f16::ZERO; groups * out];
    let mut zeros = vec![0u32; groups * out];
    for o in 0..out {
        for g in 0..groups {
            let cols = g * GROUP_SIZE..(g + 1) * GROUP_SIZE;
            let row = &m.data[o * inp..(o + 1) * inp];
            let (s, z) = group_params(&row[cols.clone()], q);
            scales[g * out + o] = s;
            zeros[g * out + o] = z;
            for i in cols {
                ints[o * inp + i] = (row[i] / s.to_f32() + z as f32).round().clamp(0.0, MAXQ) as u32;
            }
        }
    }
    let mut t = BTreeMap::new();
    let scale_bytes = scales.iter().flat_map(|s| s.to_le_bytes()).collect();
    t.insert(format!("{p}.scales"), Stored { dtype: Dtype::F16, shape: vec![groups, out], bytes: scale_bytes });
    match q {
        Quant::Gptq4 => {
            let mut qweight = vec![0u32; inp / 8 * out];
            for r in 0..inp / 8 {
                for o in 0..out {
                    qweight[r * out + o] = (0..8).fold(0, |w, j| w | ints[o * inp + 8 * r + j] << (4 * j));
                }
            }
            // v1 format: zero − 1 (always 7 here, the symmetric zero point being 8).
            let mut qzeros = vec![0u32; groups * out / 8];
            for g in 0..groups {
                for c in 0..out / 8 {
                    qzeros[g * out / 8 + c] =
                        (0..8).fold(0, |w, j| w | (zeros[g * out + 8 * c + j].wrapping_sub(1) & 0xF) << (4 * j));
                }
            }
            let g_idx: Vec<u32> = (0..inp).map(|i| (i / GROUP_SIZE) as u32).collect();
            t.insert(format!("{p}.qweight"), i32_tensor(vec![inp / 8, out], &qweight));
            t.insert(format!("{p}.qzeros"), i32_tensor(vec![groups, out / 8], &qzeros));
            t.insert(format!("{p}.g_idx"), i32_tensor(vec![inp], &g_idx));
        }
        _ => {
            let mut qweight = vec![0u32; inp * out / 8];
            for i in 0..inp {
                for c in 0..out / 8 {
                    qweight[i * out / 8 + c] =
                        (0..8).fold(0, |w, k| w | ints[(8 * c + AWQ_ORDER[k]) * inp + i] << (4 * k));
                }
            }
            let mut qzeros = vec![0u32; groups * out / 8];
            for g in 0..groups {
                for c in 0..out / 8 {
                    qzeros[g * out / 8 + c] =
                        (0..8).fold(0, |w, k| w | zeros[g * out + 8 * c + AWQ_ORDER[k]] << (4 * k));
                }
            }
            t.insert(format!("{p}.qweight"), i32_tensor(vec![inp, out / 8], &qweight));
            t.insert(format!("{p}.qzeros"), i32_tensor(vec![groups, out / 8], &qzeros));
        }
    }
    Ok(t)
}

fn words(dtype: Dtype, shape: &[usize], bytes: &[u8]) -> Result<Vec<u32>> {
    ensure!(dtype == Dtype::I32, "packed tensor of dtype {dtype:?}");
    ensure!(bytes.len() == shape.iter().product::<usize>() * 4, "packed tensor bytes do not fit {shape:?}");
    Ok(bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

/// A raw stored tensor: dtype, shape, bytes.
pub type Raw = (Dtype, Vec<usize>, Vec<u8>);

/// Rebuilds the `[out, in]` f32 weight of module `p` from its packed tensors in `raw` (GPTQ when `qweight` has
/// as many columns as `scales`, AWQ when it has an eighth of them), and which format it was.
///
/// # Errors
/// When a tensor is missing or the shapes do not fit together.
pub fn unpack(p: &str, raw: &BTreeMap<String, Raw>) -> Result<(Mat, Quant)> {
    let get = |s: &str| raw.get(&format!("{p}.{s}")).with_context(|| format!("{p} has no {s}"));
    let (qd, qs, qb) = get("qweight")?;
    let (zd, zs, zb) = get("qzeros")?;
    let (sd, ss, sb) = get("scales")?;
    ensure!(*sd == Dtype::F16 && ss.len() == 2, "{p}.scales: {sd:?} {ss:?}");
    let (groups, out) = (ss[0], ss[1]);
    let scales: Vec<f32> = sb.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect();
    let qw = words(*qd, qs, qb)?;
    let qz = words(*zd, zs, zb)?;
    ensure!(zs[..] == [groups, out / 8], "{p}.qzeros shape {zs:?}");
    let nib = |w: u32, k: usize| (w >> (4 * k)) & 0xF;
    let (inp, format) = match qs[..] {
        [r, o] if o == out => (r * 8, Quant::Gptq4),
        [i, c] if c * 8 == out => (i, Quant::Awq4),
        _ => bail!("{p}.qweight shape {qs:?} fits neither layout"),
    };
    ensure!(groups > 0 && inp % groups == 0, "{p}: {inp} inputs in {groups} groups");
    let g_size = inp / groups;
    let g_idx: Vec<usize> = match (format, raw.get(&format!("{p}.g_idx"))) {
        (Quant::Gptq4, Some((gd, gs, gb))) => {
            ensure!(gs[..] == [inp], "{p}.g_idx shape {gs:?}");
            words(*gd, gs, gb)?.into_iter().map(|g| g as usize).collect()
        }
        _ => (0..inp).map(|i| i / g_size).collect(),
    };
    let mut data = vec![0f32; out * inp];
    for o in 0..out {
        for i in 0..inp {
            let g = *g_idx.get(i).filter(|&&g| g < groups).with_context(|| format!("{p}: bad g_idx"))?;
            let (q, z) = match format {
                Quant::Gptq4 => (nib(qw[i / 8 * out + o], i % 8), nib(qz[g * out / 8 + o / 8], o % 8) + 1),
                _ => {
                    let k = AWQ_ORDER.iter().position(|&x| x == o % 8).unwrap_or(0);
                    (nib(qw[i * out / 8 + o / 8], k), nib(qz[g * out / 8 + o / 8], k))
                }
            };
            data[o * inp + i] = (q as f32 - z as f32) * scales[g * out + o];
        }
    }
    Ok((Mat::new(vec![out, inp], data)?, format))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(t: &BTreeMap<String, Stored>) -> BTreeMap<String, Raw> {
        t.iter().map(|(k, v)| (k.clone(), (v.dtype, v.shape.clone(), v.bytes.clone()))).collect()
    }

    #[test]
    fn packing_round_trips_within_half_a_step() {
        let (out, inp) = (24, 48);
        let data: Vec<f32> = (0..out * inp).map(|k| ((k * 37 % 101) as f32 - 50.0) * 0.003).collect();
        let m = Mat::new(vec![out, inp], data).expect("matrix");
        for q in [Quant::Gptq4, Quant::Awq4] {
            let t = pack("l.weight", &m, q).expect("packs");
            let names: Vec<&str> = t.keys().map(String::as_str).collect();
            let expected: &[&str] = match q {
                Quant::Gptq4 => &["l.g_idx", "l.qweight", "l.qzeros", "l.scales"],
                _ => &["l.qweight", "l.qzeros", "l.scales"],
            };
            assert_eq!(names, expected);
            let qw = &t["l.qweight"].shape;
            assert_eq!(qw, &if q == Quant::Gptq4 { vec![inp / 8, out] } else { vec![inp, out / 8] });
            let (back, format) = unpack("l", &raw(&t)).expect("unpacks");
            assert_eq!((format, &back.shape), (q, &m.shape));
            for (k, (a, b)) in m.data.iter().zip(&back.data).enumerate() {
                let (o, i) = (k / inp, k % inp);
                let s = half::f16::from_le_bytes([
                    t["l.scales"].bytes[2 * ((i / GROUP_SIZE) * out + o)],
                    t["l.scales"].bytes[2 * ((i / GROUP_SIZE) * out + o) + 1],
                ]);
                // Half a step, a little more where GPTQ's symmetric grid [−8s, 7s] clips the group maximum
                // (7.5 steps away from zero, give or take the f16 rounding of the scale).
                assert!((a - b).abs() <= 0.51 * s.to_f32() + 1e-6, "{q:?} [{o},{i}]: {a} vs {b}");
            }
        }
        assert!(pack("l.weight", &Mat::new(vec![4, 16], vec![0.0; 64]).expect("m"), Quant::Awq4).is_err());
        assert!(pack("l.weight", &m, Quant::Int8).is_err());
    }

    #[test]
    fn awq_nibbles_follow_the_interleaved_order() {
        // Output row o: o at input 0, 15 at input 1, zeros elsewhere, so scale 1, zero 0 and q[o][0] = o.
        let (out, inp) = (8, 16);
        let data: Vec<f32> = (0..out * inp)
            .map(|k| match k % inp {
                0 => (k / inp) as f32,
                1 => 15.0,
                _ => 0.0,
            })
            .collect();
        let m = Mat::new(vec![out, inp], data).expect("matrix");
        let t = pack("l.weight", &m, Quant::Awq4).expect("packs");
        let w = u32::from_le_bytes(t["l.qweight"].bytes[..4].try_into().expect("word"));
        let expected = (0..8).fold(0u32, |acc, k| acc | (AWQ_ORDER[k] as u32) << (4 * k));
        assert_eq!((w, expected), (0x7531_6420, 0x7531_6420));
        assert_eq!(w, expected);
    }
}
