//! The malformed-safetensors corpus: hand-made files, each breaking one rule, with the error it must produce.
//!
//! Used by the header tests (`parse_header` must return exactly the expected variant), by the reader tests
//! (`sign_files` on each case written to disk must fail, never panic) and by the differential test against the
//! `safetensors` crate (which must reject them too, except where we are deliberately stricter).

use crate::header::{HeaderError, MAX_HEADER_LEN, MAX_JSON_DEPTH, MAX_NAME_LEN, MAX_RANK};

/// One malformed file.
pub(crate) struct Case {
    pub name: &'static str,
    pub bytes: Vec<u8>,
    pub expected: HeaderError,
    /// The `safetensors` crate accepts this file: a rule only we enforce.
    pub stricter_than_safetensors: bool,
}

/// A file with this header text and `data` zero bytes after it.
pub(crate) fn file(json: &str, data: usize) -> Vec<u8> {
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(json.as_bytes());
    out.resize(out.len() + data, 0);
    out
}

fn raw(prefix: u64, rest: &[u8]) -> Vec<u8> {
    let mut out = prefix.to_le_bytes().to_vec();
    out.extend_from_slice(rest);
    out
}

fn t(tensor: &str) -> String {
    tensor.to_owned()
}

/// A valid one-tensor file, cut or extended by `delta` bytes of data.
fn one_f32(delta: isize) -> Vec<u8> {
    let mut f = file(r#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#, 16);
    let len = (f.len() as isize + delta) as usize;
    f.resize(len, 0);
    f
}

pub(crate) fn cases() -> Vec<Case> {
    let case = |name, bytes, expected| Case { name, bytes, expected, stricter_than_safetensors: false };
    let stricter = |name, bytes, expected| Case { name, bytes, expected, stricter_than_safetensors: true };
    let valid = one_f32(0);
    let header_end = valid.len() as u64 - 16;
    let long_name = "n".repeat(MAX_NAME_LEN + 1);
    let deep_rank = vec!["1"; MAX_RANK + 1].join(",");
    let bomb = format!(r#"{{"a":{}1{}}}"#, "[".repeat(1000), "]".repeat(1000));
    let open_bomb = format!("{{{}", "[".repeat(100_000));
    vec![
        // --- the length prefix ---
        case("empty file", vec![], HeaderError::FileTooShort { len: 0 }),
        case("one byte", b"{".to_vec(), HeaderError::FileTooShort { len: 1 }),
        case("seven bytes", b"\x02\0\0\0\0\0\0".to_vec(), HeaderError::FileTooShort { len: 7 }),
        case("zero header length", raw(0, b""), HeaderError::EmptyHeader),
        case("zero header length with data", raw(0, b"{}"), HeaderError::EmptyHeader),
        case(
            "header length u64::MAX",
            raw(u64::MAX, b"{}"),
            HeaderError::HeaderTooLarge { declared: u64::MAX, cap: MAX_HEADER_LEN },
        ),
        case(
            "header length one over the cap",
            raw(MAX_HEADER_LEN + 1, b"{}"),
            HeaderError::HeaderTooLarge { declared: MAX_HEADER_LEN + 1, cap: MAX_HEADER_LEN },
        ),
        case(
            "html error page saved as safetensors",
            b"<!DOCTYPE html><html></html>".to_vec(),
            HeaderError::HeaderTooLarge { declared: u64::from_le_bytes(*b"<!DOCTYP"), cap: MAX_HEADER_LEN },
        ),
        case(
            "header length at the cap, file short",
            raw(MAX_HEADER_LEN, b"{}"),
            HeaderError::HeaderBeyondFile { header_end: MAX_HEADER_LEN + 8, file_len: 10 },
        ),
        case(
            "header length beyond file",
            raw(100, br#"{"a":1}"#),
            HeaderError::HeaderBeyondFile { header_end: 108, file_len: 15 },
        ),
        case("truncated after the prefix", raw(60, b""), HeaderError::HeaderBeyondFile { header_end: 68, file_len: 8 }),
        case(
            "truncated inside the header",
            valid[..30].to_vec(),
            HeaderError::HeaderBeyondFile { header_end, file_len: 30 },
        ),
        // --- the header text ---
        stricter("leading space", file(r#" {}"#, 0), HeaderError::BadHeaderStart { found: b' ' }),
        stricter("leading newline", file("\n{}", 0), HeaderError::BadHeaderStart { found: b'\n' }),
        case("not utf-8 in a key", raw(5, b"{\"\xff\"}"), HeaderError::NotUtf8 { valid_up_to: 2 }),
        case("utf-8 surrogate", raw(7, b"{\"\xed\xa0\x80\"}"), HeaderError::NotUtf8 { valid_up_to: 2 }),
        case("latin-1 byte", raw(2, b"\xe9}"), HeaderError::NotUtf8 { valid_up_to: 0 }),
        case("json bomb", file(&bomb, 0), HeaderError::TooDeep { limit: MAX_JSON_DEPTH }),
        case("unclosed json bomb", file(&open_bomb, 0), HeaderError::TooDeep { limit: MAX_JSON_DEPTH }),
        case("truncated json", file(r#"{"w":{"dtype":"F32""#, 0), syntax()),
        case("trailing garbage", file("{}x", 0), syntax()),
        case("nul padding", file("{}\0\0", 0), syntax()),
        case("byte order mark", file("\u{feff}{}", 0), syntax()),
        case("single quotes", file("{'w':1}", 0), syntax()),
        case("trailing comma", file(r#"{"__metadata__":{},}"#, 0), syntax()),
        case("number out of range", file(r#"{"w":{"dtype":"F32","shape":[1e999],"data_offsets":[0,4]}}"#, 4), syntax()),
        case("top-level array", file("[]", 0), HeaderError::NotAnObject { found: "array" }),
        case("top-level string", file(r#""{}""#, 0), HeaderError::NotAnObject { found: "string" }),
        case("top-level number", file("7", 0), HeaderError::NotAnObject { found: "number" }),
        // --- duplicate keys ---
        stricter(
            "duplicate tensor name",
            file(
                r#"{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#,
                1,
            ),
            HeaderError::DuplicateKey { key: t("w") },
        ),
        case(
            "duplicate field",
            file(r#"{"w":{"dtype":"F16","dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#, 1),
            HeaderError::DuplicateKey { key: t("dtype") },
        ),
        stricter(
            "duplicate metadata key",
            file(r#"{"__metadata__":{"format":"pt","format":"np"}}"#, 0),
            HeaderError::DuplicateKey { key: t("format") },
        ),
        // --- __metadata__ ---
        case(
            "metadata array",
            file(r#"{"__metadata__":["pt"]}"#, 0),
            HeaderError::MetadataNotObject { found: "array" },
        ),
        stricter(
            "metadata null",
            file(r#"{"__metadata__":null}"#, 0),
            HeaderError::MetadataNotObject { found: "null" },
        ),
        case(
            "metadata number value",
            file(r#"{"__metadata__":{"step":3}}"#, 0),
            HeaderError::MetadataValueNotString { key: t("step"), found: "number" },
        ),
        case(
            "metadata nested object",
            file(r#"{"__metadata__":{"cfg":{"a":"b"}}}"#, 0),
            HeaderError::MetadataValueNotString { key: t("cfg"), found: "object" },
        ),
        // --- tensor names and entries ---
        stricter(
            "empty name",
            file(r#"{"":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#, 1),
            HeaderError::EmptyName,
        ),
        stricter(
            "name too long",
            file(&format!(r#"{{"{long_name}":{{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}}}"#), 1),
            HeaderError::NameTooLong { len: MAX_NAME_LEN + 1, cap: MAX_NAME_LEN },
        ),
        case(
            "entry is a string",
            file(r#"{"w":"F32"}"#, 0),
            HeaderError::TensorNotObject { tensor: t("w"), found: "string" },
        ),
        case("entry is null", file(r#"{"w":null}"#, 0), HeaderError::TensorNotObject { tensor: t("w"), found: "null" }),
        stricter(
            "unknown field",
            file(r#"{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"extra":0}}"#, 1),
            HeaderError::UnknownField { tensor: t("w"), field: t("extra") },
        ),
        case(
            "missing dtype",
            file(r#"{"w":{"shape":[1],"data_offsets":[0,1]}}"#, 1),
            HeaderError::MissingField { tensor: t("w"), field: "dtype" },
        ),
        case(
            "missing shape",
            file(r#"{"w":{"dtype":"U8","data_offsets":[0,1]}}"#, 1),
            HeaderError::MissingField { tensor: t("w"), field: "shape" },
        ),
        case(
            "missing offsets",
            file(r#"{"w":{"dtype":"U8","shape":[1]}}"#, 1),
            HeaderError::MissingField { tensor: t("w"), field: "data_offsets" },
        ),
        case(
            "dtype is a number",
            file(r#"{"w":{"dtype":4,"shape":[1],"data_offsets":[0,4]}}"#, 4),
            HeaderError::DtypeNotString { tensor: t("w"), found: "number" },
        ),
        case(
            "lowercase dtype",
            file(r#"{"w":{"dtype":"bf16","shape":[1],"data_offsets":[0,2]}}"#, 2),
            HeaderError::UnknownDtype { tensor: t("w"), dtype: t("bf16") },
        ),
        case(
            "made-up dtype",
            file(r#"{"w":{"dtype":"F12","shape":[1],"data_offsets":[0,2]}}"#, 2),
            HeaderError::UnknownDtype { tensor: t("w"), dtype: t("F12") },
        ),
        // --- shapes ---
        case(
            "shape is a number",
            file(r#"{"w":{"dtype":"U8","shape":1,"data_offsets":[0,1]}}"#, 1),
            HeaderError::ShapeNotArray { tensor: t("w"), found: "number" },
        ),
        case(
            "negative shape",
            file(r#"{"w":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}}"#, 1),
            HeaderError::ShapeEntryNotU64 { tensor: t("w"), index: 0 },
        ),
        case(
            "float shape",
            file(r#"{"w":{"dtype":"U8","shape":[1,2.0],"data_offsets":[0,2]}}"#, 2),
            HeaderError::ShapeEntryNotU64 { tensor: t("w"), index: 1 },
        ),
        case(
            "string shape",
            file(r#"{"w":{"dtype":"U8","shape":["2"],"data_offsets":[0,2]}}"#, 2),
            HeaderError::ShapeEntryNotU64 { tensor: t("w"), index: 0 },
        ),
        case(
            "shape beyond u64",
            file(r#"{"w":{"dtype":"U8","shape":[18446744073709551616],"data_offsets":[0,1]}}"#, 1),
            HeaderError::ShapeEntryNotU64 { tensor: t("w"), index: 0 },
        ),
        stricter(
            "rank too large",
            file(&format!(r#"{{"w":{{"dtype":"U8","shape":[{deep_rank}],"data_offsets":[0,1]}}}}"#), 1),
            HeaderError::RankTooLarge { tensor: t("w"), rank: MAX_RANK + 1, cap: MAX_RANK },
        ),
        case(
            "element count overflows",
            file(r#"{"w":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,0]}}"#, 0),
            HeaderError::SizeOverflow { tensor: t("w") },
        ),
        case(
            "byte size overflows",
            file(r#"{"w":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,0]}}"#, 0),
            HeaderError::SizeOverflow { tensor: t("w") },
        ),
        // --- offsets ---
        case(
            "one offset",
            file(r#"{"w":{"dtype":"U8","shape":[1],"data_offsets":[1]}}"#, 1),
            HeaderError::OffsetsNotPair { tensor: t("w") },
        ),
        case(
            "three offsets",
            file(r#"{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1,2]}}"#, 1),
            HeaderError::OffsetsNotPair { tensor: t("w") },
        ),
        case(
            "negative offset",
            file(r#"{"w":{"dtype":"U8","shape":[1],"data_offsets":[-1,0]}}"#, 1),
            HeaderError::OffsetsNotPair { tensor: t("w") },
        ),
        case(
            "float offsets",
            file(r#"{"w":{"dtype":"U8","shape":[1],"data_offsets":[0.0,1.0]}}"#, 1),
            HeaderError::OffsetsNotPair { tensor: t("w") },
        ),
        case(
            "offsets object",
            file(r#"{"w":{"dtype":"U8","shape":[1],"data_offsets":{"begin":0,"end":1}}}"#, 1),
            HeaderError::OffsetsNotPair { tensor: t("w") },
        ),
        case(
            "reversed offsets",
            file(r#"{"w":{"dtype":"U8","shape":[1],"data_offsets":[1,0]}}"#, 1),
            HeaderError::OffsetsReversed { tensor: t("w"), begin: 1, end: 0 },
        ),
        case(
            "shape and size disagree",
            file(r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#, 4),
            HeaderError::SizeMismatch { tensor: t("w"), expected: 8, found: 4 },
        ),
        case(
            "dtype and size disagree",
            file(r#"{"w":{"dtype":"F16","shape":[2,2],"data_offsets":[0,16]}}"#, 16),
            HeaderError::SizeMismatch { tensor: t("w"), expected: 8, found: 16 },
        ),
        case(
            "overlapping offsets",
            file(
                r#"{"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[8],"data_offsets":[4,12]}}"#,
                12,
            ),
            HeaderError::OffsetsOverlap { tensor: t("b"), begin: 4, previous_end: 8 },
        ),
        case(
            "aliased tensors",
            file(
                r#"{"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[8],"data_offsets":[0,8]}}"#,
                8,
            ),
            HeaderError::OffsetsOverlap { tensor: t("b"), begin: 0, previous_end: 8 },
        ),
        case(
            "gap between tensors",
            file(
                r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[8,12]}}"#,
                12,
            ),
            HeaderError::OffsetsGap { tensor: t("b"), begin: 8, previous_end: 4 },
        ),
        case(
            "data not starting at zero",
            file(r#"{"w":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}}"#, 8),
            HeaderError::OffsetsGap { tensor: t("w"), begin: 4, previous_end: 0 },
        ),
        // --- coverage of the file ---
        case(
            "data truncated to nothing",
            one_f32(-16),
            HeaderError::DataTruncated { data_end: header_end + 16, file_len: header_end },
        ),
        case(
            "data truncated by one byte",
            one_f32(-1),
            HeaderError::DataTruncated { data_end: header_end + 16, file_len: header_end + 15 },
        ),
        case(
            "trailing byte after data",
            one_f32(1),
            HeaderError::TrailingBytes { data_end: header_end + 16, file_len: header_end + 17 },
        ),
        case(
            "polyglot: a zip appended",
            {
                let mut f = one_f32(0);
                f.extend_from_slice(b"PK\x03\x04");
                f
            },
            HeaderError::TrailingBytes { data_end: header_end + 16, file_len: header_end + 20 },
        ),
        case(
            "trailing bytes without tensors",
            file("{}", 3),
            HeaderError::TrailingBytes { data_end: 10, file_len: 13 },
        ),
        case(
            "data end overflows",
            file(r#"{"w":{"dtype":"U8","shape":[18446744073709551610],"data_offsets":[0,18446744073709551610]}}"#, 0),
            HeaderError::DataTruncated { data_end: u64::MAX, file_len: 99 },
        ),
    ]
}

fn syntax() -> HeaderError {
    // The message is serde_json's; tests compare this variant by kind only.
    HeaderError::JsonSyntax { message: String::new() }
}

/// A tensor to write into a test file.
pub(crate) struct Tensor<'a> {
    pub name: &'a str,
    pub dtype: crate::model::Dtype,
    pub shape: Vec<u64>,
    pub bytes: Vec<u8>,
}

/// A valid safetensors file holding `tensors` in the given order (offsets follow that order).
pub(crate) fn safetensors_file(tensors: &[Tensor<'_>]) -> Vec<u8> {
    let mut json = String::from("{");
    let mut offset = 0usize;
    for (i, t) in tensors.iter().enumerate() {
        let dims: Vec<String> = t.shape.iter().map(u64::to_string).collect();
        let sep = if i == 0 { "" } else { "," };
        json += &format!(
            r#"{sep}"{}":{{"dtype":"{}","shape":[{}],"data_offsets":[{offset},{}]}}"#,
            t.name,
            t.dtype.as_str(),
            dims.join(","),
            offset + t.bytes.len()
        );
        offset += t.bytes.len();
    }
    json.push('}');
    let mut out = file(&json, 0);
    for t in tensors {
        out.extend_from_slice(&t.bytes);
    }
    out
}

/// Deterministic pseudo-random values, roughly normal with standard deviation `scale`.
pub(crate) fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    (0..n as u64)
        .map(|i| {
            let h = crate::hashing::stream(seed, i);
            let u: u64 = (0..4).map(|k| (h >> (16 * k)) & 0xffff).sum();
            (u as f32 / 65536.0 - 2.0) * scale * 1.732
        })
        .collect()
}

pub(crate) fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(crate) fn bf16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect()
}

/// A packed 4-bit module written by [`pack_int4`]: its tensors and the `[out, in]` values they dequantise to.
pub(crate) struct PackedModule {
    pub tensors: Vec<Tensor<'static>>,
    pub weight: Vec<f32>,
}

/// Packs integer values `q[o][i]` (0..16) with zero points `z[g][o]` and f16 scales `s[g][o]` the way the reference
/// packers do (AutoGPTQ `QuantLinear.pack`, AutoAWQ `WQLinear_GEMM.from_linear`), under the names
/// `{module}.qweight` etc., `g_idx` giving each input's group (GPTQ only). `gptq_v1` stores GPTQ zeros minus one.
pub(crate) fn pack_int4(
    module: &'static str,
    format: crate::packed::PackedFormat,
    gptq_v1: bool,
    dims: (usize, usize, usize),
    g_idx: &[u32],
    seed: u64,
) -> PackedModule {
    pack(module, format, 4, gptq_v1, dims, g_idx, seed)
}

/// [`pack_int4`] for any width the format has: GPTQ packs `32 / bits` values of `bits` bits per word (AutoGPTQ's
/// `QuantLinear.pack` for 2, 4 and 8 bits), AWQ only 4.
pub(crate) fn pack(
    module: &'static str,
    format: crate::packed::PackedFormat,
    bits: usize,
    gptq_v1: bool,
    (out, inp, groups): (usize, usize, usize),
    g_idx: &[u32],
    seed: u64,
) -> PackedModule {
    use crate::model::Dtype;
    use crate::packed::{AWQ_ORDER, PackedFormat};
    assert!(format == PackedFormat::Gptq || bits == 4, "AWQ packs 4 bits");
    let (levels, per) = (1u64 << bits, 32 / bits);
    let name = |suffix: &str| -> &'static str { Box::leak(format!("{module}.{suffix}").into_boxed_str()) };
    let h = |i: u64, salt: u64| crate::hashing::stream(seed ^ salt, i);
    let q: Vec<u32> = (0..(out * inp) as u64).map(|i| (h(i, 1) % levels) as u32).collect();
    // The v1 format stores z − 1, so it holds zero points 1..=2^bits (AutoGPTQ's 0 wraps to 2^bits).
    let gptq_v1 = gptq_v1 && format == PackedFormat::Gptq;
    let z: Vec<u32> = (0..(groups * out) as u64)
        .map(|i| if gptq_v1 { 1 + (h(i, 2) % levels) } else { h(i, 2) % levels } as u32)
        .collect();
    let s: Vec<half::f16> =
        (0..(groups * out) as u64).map(|i| half::f16::from_f32(0.001 + (h(i, 3) % 1000) as f32 * 1e-5)).collect();
    let weight = (0..out * inp)
        .map(|k| {
            let (o, i) = (k / inp, k % inp);
            let g = g_idx[i] as usize;
            (q[k] as f32 - z[g * out + o] as f32) * s[g * out + o].to_f32()
        })
        .collect();
    let words = |w: Vec<u32>| w.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let mut tensors = Vec::new();
    match format {
        PackedFormat::Gptq => {
            let mask = (levels - 1) as u32;
            let mut qweight = vec![0u32; inp / per * out];
            for r in 0..inp / per {
                for o in 0..out {
                    for j in 0..per {
                        qweight[r * out + o] |= q[o * inp + per * r + j] << (bits * j);
                    }
                }
            }
            let mut qzeros = vec![0u32; groups * out / per];
            for g in 0..groups {
                for c in 0..out / per {
                    for j in 0..per {
                        let z = z[g * out + per * c + j];
                        let stored = if gptq_v1 { z.wrapping_sub(1) & mask } else { z };
                        qzeros[g * out / per + c] |= stored << (bits * j);
                    }
                }
            }
            tensors.push(Tensor {
                name: name("g_idx"),
                dtype: Dtype::I32,
                shape: vec![inp as u64],
                bytes: words(g_idx.to_vec()),
            });
            tensors.push(Tensor {
                name: name("qweight"),
                dtype: Dtype::I32,
                shape: vec![(inp / per) as u64, out as u64],
                bytes: words(qweight),
            });
            tensors.push(Tensor {
                name: name("qzeros"),
                dtype: Dtype::I32,
                shape: vec![groups as u64, (out / per) as u64],
                bytes: words(qzeros),
            });
        }
        PackedFormat::Awq => {
            let mut qweight = vec![0u32; inp * out / 8];
            for i in 0..inp {
                for c in 0..out / 8 {
                    for (k, &o) in AWQ_ORDER.iter().enumerate() {
                        qweight[i * out / 8 + c] |= q[(8 * c + o) * inp + i] << (4 * k);
                    }
                }
            }
            let mut qzeros = vec![0u32; groups * out / 8];
            for g in 0..groups {
                for c in 0..out / 8 {
                    for (k, &o) in AWQ_ORDER.iter().enumerate() {
                        qzeros[g * out / 8 + c] |= z[g * out + 8 * c + o] << (4 * k);
                    }
                }
            }
            tensors.push(Tensor {
                name: name("qweight"),
                dtype: Dtype::I32,
                shape: vec![inp as u64, (out / 8) as u64],
                bytes: words(qweight),
            });
            tensors.push(Tensor {
                name: name("qzeros"),
                dtype: Dtype::I32,
                shape: vec![groups as u64, (out / 8) as u64],
                bytes: words(qzeros),
            });
        }
    }
    let scales = s.iter().flat_map(|x| x.to_le_bytes()).collect();
    tensors.push(Tensor {
        name: name("scales"),
        dtype: Dtype::F16,
        shape: vec![groups as u64, out as u64],
        bytes: scales,
    });
    PackedModule { tensors, weight }
}

/// One malformed packed module: declared (dtype, shape) of `qweight`, `qzeros`, `scales` and an optional `g_idx`,
/// and the error it must produce.
pub(crate) struct PackedCase {
    pub name: &'static str,
    pub qweight: (crate::model::Dtype, Vec<u64>),
    pub qzeros: (crate::model::Dtype, Vec<u64>),
    pub scales: (crate::model::Dtype, Vec<u64>),
    pub g_idx: Option<(crate::model::Dtype, Vec<u64>)>,
    pub expected: crate::packed::PackedError,
}

/// Malformed packed modules, each breaking one rule of [`crate::packed_layout`] (a valid GPTQ module is
/// `qweight` I32 `[8, 32]`, `qzeros` I32 `[4, 4]`, `scales` F16 `[4, 32]`, `g_idx` I32 `[64]`).
pub(crate) fn packed_cases() -> Vec<PackedCase> {
    use crate::model::Dtype::{F16, F32, I32, I64, U8};
    use crate::packed::PackedError as E;
    let c =
        |name, qweight: (_, &[u64]), qzeros: (_, &[u64]), scales: (_, &[u64]), g_idx: Option<(_, &[u64])>, expected| {
            PackedCase {
                name,
                qweight: (qweight.0, qweight.1.to_vec()),
                qzeros: (qzeros.0, qzeros.1.to_vec()),
                scales: (scales.0, scales.1.to_vec()),
                g_idx: g_idx.map(|(d, s): (_, &[u64])| (d, s.to_vec())),
                expected,
            }
        };
    let g = Some((I32, &[64][..]));
    vec![
        c(
            "qweight not i32",
            (U8, &[8, 32]),
            (I32, &[4, 4]),
            (F16, &[4, 32]),
            g,
            E::Dtype { tensor: "qweight", dtype: "U8", expected: "I32" },
        ),
        c(
            "qzeros not i32",
            (I32, &[8, 32]),
            (I64, &[4, 4]),
            (F16, &[4, 32]),
            g,
            E::Dtype { tensor: "qzeros", dtype: "I64", expected: "I32" },
        ),
        c(
            "scales integer",
            (I32, &[8, 32]),
            (I32, &[4, 4]),
            (I32, &[4, 32]),
            g,
            E::Dtype { tensor: "scales", dtype: "I32", expected: "F16, BF16 or F32" },
        ),
        c(
            "g_idx float",
            (I32, &[8, 32]),
            (I32, &[4, 4]),
            (F16, &[4, 32]),
            Some((F32, &[64])),
            E::Dtype { tensor: "g_idx", dtype: "F32", expected: "I32" },
        ),
        c(
            "qweight a vector",
            (I32, &[256]),
            (I32, &[4, 4]),
            (F16, &[4, 32]),
            g,
            E::Shape { tensor: "qweight", shape: vec![256], expected: "a matrix with no empty dimension" },
        ),
        c(
            "qweight empty",
            (I32, &[0, 32]),
            (I32, &[4, 4]),
            (F16, &[4, 32]),
            g,
            E::Shape { tensor: "qweight", shape: vec![0, 32], expected: "a matrix with no empty dimension" },
        ),
        c(
            "scales rank 3",
            (I32, &[8, 32]),
            (I32, &[4, 4]),
            (F16, &[4, 32, 1]),
            g,
            E::Shape { tensor: "scales", shape: vec![4, 32, 1], expected: "a matrix with no empty dimension" },
        ),
        c(
            "qzeros group count",
            (I32, &[8, 32]),
            (I32, &[3, 4]),
            (F16, &[4, 32]),
            g,
            E::Zeros { qzeros: vec![3, 4], groups: 4, out: 32 },
        ),
        c(
            "qzeros not whole words",
            (I32, &[8, 32]),
            (I32, &[4, 3]),
            (F16, &[4, 34]),
            g,
            E::Zeros { qzeros: vec![4, 3], groups: 4, out: 34 },
        ),
        c("3-bit gptq", (I32, &[12, 32]), (I32, &[4, 3]), (F16, &[4, 32]), g, E::Bits { bits: 3 }),
        c("2-bit awq", (I32, &[64, 2]), (I32, &[4, 2]), (F16, &[4, 32]), None, E::Bits { bits: 2 }),
        c(
            "qweight fits no layout",
            (I32, &[8, 16]),
            (I32, &[4, 4]),
            (F16, &[4, 32]),
            g,
            E::Layout { qweight: vec![8, 16], scales: vec![4, 32] },
        ),
        c(
            "g_idx too short",
            (I32, &[8, 32]),
            (I32, &[4, 4]),
            (F16, &[4, 32]),
            Some((I32, &[63])),
            E::GroupIndexLength { len: 63, inputs: 64 },
        ),
        c(
            "g_idx a matrix",
            (I32, &[8, 32]),
            (I32, &[4, 4]),
            (F16, &[4, 32]),
            Some((I32, &[8, 8])),
            E::Shape { tensor: "g_idx", shape: vec![8, 8], expected: "a vector" },
        ),
        c(
            "more groups than inputs",
            (I32, &[1, 32]),
            (I32, &[9, 4]),
            (F16, &[9, 32]),
            Some((I32, &[8])),
            E::Groups { groups: 9, inputs: 8 },
        ),
        c(
            "awq groups uneven",
            (I32, &[64, 4]),
            (I32, &[5, 4]),
            (F16, &[5, 32]),
            None,
            E::Groups { groups: 5, inputs: 64 },
        ),
        c(
            "gptq without g_idx, uneven",
            (I32, &[8, 32]),
            (I32, &[3, 4]),
            (F16, &[3, 32]),
            None,
            E::Groups { groups: 3, inputs: 64 },
        ),
    ]
}

/// A file holding the declared tensors of a [`PackedCase`] (zero bytes of the declared sizes) under module `m`.
pub(crate) fn packed_case_file(case: &PackedCase) -> Vec<u8> {
    let tensor = |name: &'static str, (dtype, shape): &(crate::model::Dtype, Vec<u64>)| Tensor {
        name,
        dtype: *dtype,
        shape: shape.clone(),
        bytes: vec![0; (shape.iter().product::<u64>() * dtype.size()) as usize],
    };
    let mut tensors =
        vec![tensor("m.qweight", &case.qweight), tensor("m.qzeros", &case.qzeros), tensor("m.scales", &case.scales)];
    if let Some(g) = &case.g_idx {
        tensors.push(tensor("m.g_idx", g));
    }
    safetensors_file(&tensors)
}
