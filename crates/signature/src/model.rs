//! The signature data model: what modeltree keeps of a model's weights.
//!
//! A [`ModelSignature`] is a list of [`TensorSignature`]s, sorted by name, plus the [`Scheme`] that produced
//! them. Everything here is plain data: extraction lives in the reader modules, comparison in the `lineage`
//! crate, persistence in `store`. Domain types do not derive serde; `store` converts them explicitly.

/// Bumped whenever any computed quantity changes meaning. Signatures of different versions are never compared.
pub const SCHEME_VERSION: u32 = 1;

/// The parameters that determine a signature. Two signatures are comparable only when their schemes are equal.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scheme {
    pub version: u32,
    /// Side of the square linear sketch `S = R·W·Cᵀ` kept for every 2-D float tensor.
    pub sketch_k: u32,
    /// Number of values kept at seeded positions per tensor.
    pub samples: u32,
    /// Seed for sketch hashes, sample positions and row sampling.
    pub seed: u64,
    /// Share of row blocks read (1.0 = whole tensors). Partial fetches use the same rows for every model.
    pub row_fraction: f64,
}

impl Default for Scheme {
    fn default() -> Scheme {
        Scheme { version: SCHEME_VERSION, sketch_k: 64, samples: 1024, seed: 0x6d6f_6465_6c74_7265, row_fraction: 1.0 }
    }
}

impl Scheme {
    /// A stable textual id, stored beside every signature.
    pub fn id(&self) -> String {
        format!("v{}-k{}-s{}-seed{:x}-f{}", self.version, self.sketch_k, self.samples, self.seed, self.row_fraction)
    }
}

/// Element types found in safetensors files on the Hub.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dtype {
    Bool,
    U8,
    I8,
    I16,
    U16,
    I32,
    U32,
    I64,
    U64,
    F8E4M3,
    F8E5M2,
    F16,
    BF16,
    F32,
    F64,
}

impl Dtype {
    /// The safetensors spelling (`"BF16"`, `"F8_E4M3"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Dtype::Bool => "BOOL",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::I16 => "I16",
            Dtype::U16 => "U16",
            Dtype::I32 => "I32",
            Dtype::U32 => "U32",
            Dtype::I64 => "I64",
            Dtype::U64 => "U64",
            Dtype::F8E4M3 => "F8_E4M3",
            Dtype::F8E5M2 => "F8_E5M2",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::F32 => "F32",
            Dtype::F64 => "F64",
        }
    }

    /// Parses the safetensors spelling; `None` for anything else.
    pub fn parse(s: &str) -> Option<Dtype> {
        Some(match s {
            "BOOL" => Dtype::Bool,
            "U8" => Dtype::U8,
            "I8" => Dtype::I8,
            "I16" => Dtype::I16,
            "U16" => Dtype::U16,
            "I32" => Dtype::I32,
            "U32" => Dtype::U32,
            "I64" => Dtype::I64,
            "U64" => Dtype::U64,
            "F8_E4M3" => Dtype::F8E4M3,
            "F8_E5M2" => Dtype::F8E5M2,
            "F16" => Dtype::F16,
            "BF16" => Dtype::BF16,
            "F32" => Dtype::F32,
            "F64" => Dtype::F64,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            Dtype::Bool | Dtype::U8 | Dtype::I8 | Dtype::F8E4M3 | Dtype::F8E5M2 => 1,
            Dtype::I16 | Dtype::U16 | Dtype::F16 | Dtype::BF16 => 2,
            Dtype::I32 | Dtype::U32 | Dtype::F32 => 4,
            Dtype::I64 | Dtype::U64 | Dtype::F64 => 8,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, Dtype::F8E4M3 | Dtype::F8E5M2 | Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64)
    }
}

/// Mergeable central moments in f64 (Chan/Terriberry), so chunks and row blocks can be combined in any order.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Moments {
    pub n: u64,
    pub mean: f64,
    pub m2: f64,
    pub m3: f64,
    pub m4: f64,
    pub min: f64,
    pub max: f64,
}

impl Default for Moments {
    fn default() -> Moments {
        Moments { n: 0, mean: 0.0, m2: 0.0, m3: 0.0, m4: 0.0, min: f64::INFINITY, max: f64::NEG_INFINITY }
    }
}

impl Moments {
    /// Population variance.
    pub fn variance(&self) -> f64 {
        if self.n == 0 { 0.0 } else { self.m2 / self.n as f64 }
    }

    /// Population excess kurtosis, as `scipy.stats.kurtosis` computes it with its defaults (what MoTHer uses).
    pub fn excess_kurtosis(&self) -> f64 {
        if self.n == 0 || self.m2 == 0.0 {
            return 0.0;
        }
        self.n as f64 * self.m4 / (self.m2 * self.m2) - 3.0
    }

    pub fn skewness(&self) -> f64 {
        if self.n == 0 || self.m2 == 0.0 {
            return 0.0;
        }
        (self.n as f64).sqrt() * self.m3 / self.m2.powf(1.5)
    }

    /// Euclidean norm of the values: `sqrt(Σx²)`.
    pub fn l2_norm(&self) -> f64 {
        (self.m2 + self.n as f64 * self.mean * self.mean).max(0.0).sqrt()
    }
}

/// A `k×k` linear sketch `S = R·W·Cᵀ`, row-major. `R` and `C` depend only on the scheme, the tensor name and its
/// shape, so `S(A) − S(B) = S(A − B)` for two tensors of the same name and shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Sketch {
    pub k: u32,
    pub values: Vec<f32>,
}

/// Where a tensor's values came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueSource {
    /// Decoded from the stored element type.
    Raw,
    /// An integer or fp8 payload multiplied by its stored scales (per channel or per tensor).
    Dequantized,
    /// `B·A·scaling` reconstructed from a PEFT LoRA adapter's factors; named after the base tensor it changes.
    AdapterDelta,
}

/// What is kept of one tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSignature {
    /// Canonical name (adapter and wrapper prefixes removed).
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    pub byte_len: u64,
    /// blake3 of the raw stored bytes: exact duplicates and frozen layers.
    pub content_hash: [u8; 32],
    pub source: ValueSource,
    /// Moments of the (decoded or dequantised) values; `None` for integer tensors that were not dequantised.
    pub moments: Option<Moments>,
    /// For float (or dequantised) tensors of rank ≥ 2, seen as the matrix `shape[0] × ∏shape[1..]` (conv
    /// kernels and stacked experts are sketched too).
    pub sketch: Option<Sketch>,
    /// Values at the scheme's seeded positions, in position order.
    pub samples: Vec<f32>,
}

/// What is kept of one model: every tensor of every safetensors file, sorted by name.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSignature {
    pub scheme: Scheme,
    pub tensors: Vec<TensorSignature>,
}

impl ModelSignature {
    pub fn tensor(&self, name: &str) -> Option<&TensorSignature> {
        self.tensors.binary_search_by(|t| t.name.as_str().cmp(name)).ok().map(|i| &self.tensors[i])
    }

    /// Number of elements over all tensors.
    pub fn total_params(&self) -> u64 {
        self.tensors.iter().map(|t| t.shape.iter().product::<u64>()).sum()
    }
}
