//! Test data: a small seeded generator and builders for records and signatures that exercise every encoding.

use signature::{Dtype, ModelSignature, Moments, Scheme, Sketch, TensorSignature, ValueSource};

use crate::types::{FileRecord, ModelRecord};

pub(crate) const ALL_DTYPES: [Dtype; 15] = [
    Dtype::Bool,
    Dtype::U8,
    Dtype::I8,
    Dtype::I16,
    Dtype::U16,
    Dtype::I32,
    Dtype::U32,
    Dtype::I64,
    Dtype::U64,
    Dtype::F8E4M3,
    Dtype::F8E5M2,
    Dtype::F16,
    Dtype::BF16,
    Dtype::F32,
    Dtype::F64,
];

pub(crate) const ALL_SOURCES: [ValueSource; 3] =
    [ValueSource::Raw, ValueSource::Dequantized, ValueSource::AdapterDelta];

/// SplitMix64: deterministic, dependency-free, good enough to spread bits.
#[derive(Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Any f32 bit pattern except NaN: infinities, subnormals and -0 included.
    pub(crate) fn f32_any(&mut self) -> f32 {
        loop {
            let v = f32::from_bits((self.next_u64() >> 32) as u32);
            if !v.is_nan() {
                return v;
            }
        }
    }

    /// Any f64 bit pattern except NaN.
    pub(crate) fn f64_any(&mut self) -> f64 {
        loop {
            let v = f64::from_bits(self.next_u64());
            if !v.is_nan() {
                return v;
            }
        }
    }

    pub(crate) fn f32s(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f32_any()).collect()
    }
}

/// A scheme whose seed has the top bit set, so the i64 reinterpretation is exercised.
pub(crate) fn odd_scheme() -> Scheme {
    Scheme { version: 1, sketch_k: 8, samples: 16, seed: 0xfedc_ba98_7654_3210, row_fraction: 0.25 }
}

/// A NaN-free random signature with `n` tensors that cycles through every dtype and value source, with and
/// without moments and sketches.
pub(crate) fn random_signature(rng: &mut Rng, scheme: Scheme, n: usize) -> ModelSignature {
    let tensors = (0..n)
        .map(|i| {
            let dims = rng.below(4) as usize;
            let shape: Vec<u64> = (0..dims).map(|_| rng.below(5000)).collect();
            let mut content_hash = [0u8; 32];
            for b in &mut content_hash {
                *b = rng.next_u64() as u8;
            }
            let moments = (i % 4 != 3).then(|| Moments {
                n: rng.below(1 << 62),
                mean: rng.f64_any(),
                m2: rng.f64_any(),
                m3: rng.f64_any(),
                m4: rng.f64_any(),
                min: rng.f64_any(),
                max: rng.f64_any(),
            });
            let sketch = (i % 3 != 2).then(|| {
                let k = 1 + rng.below(8) as u32;
                Sketch { k, values: rng.f32s((k * k) as usize) }
            });
            let samples_len = rng.below(40) as usize;
            TensorSignature {
                name: format!("model.layers.{i:03}.weight"),
                dtype: ALL_DTYPES[i % ALL_DTYPES.len()],
                shape,
                byte_len: rng.below(i64::MAX as u64),
                content_hash,
                source: ALL_SOURCES[i % ALL_SOURCES.len()],
                moments,
                sketch,
                samples: rng.f32s(samples_len),
            }
        })
        .collect();
    ModelSignature { scheme, tensors }
}

/// A record with every optional field filled in.
pub(crate) fn full_record(id: &str, revision: &str) -> ModelRecord {
    ModelRecord {
        id: id.to_string(),
        source: "/data/models".to_string(),
        revision: revision.to_string(),
        license: Some("apache-2.0".to_string()),
        declared_base_models: vec!["org/base-b".to_string(), "org/base-a".to_string()],
        base_model_relation: Some("merge".to_string()),
        model_type: Some("llama".to_string()),
        architectures: vec!["LlamaForCausalLM".to_string(), "Other".to_string()],
        hidden_size: Some(64),
        num_layers: Some(2),
        vocab_size: Some(128),
        config_json: Some(r#"{"model_type":"llama","hidden_size":64}"#.to_string()),
        quantization: Some(r#"{"quant_method":"bitsandbytes","load_in_4bit":true}"#.to_string()),
        adapter_base: Some("org/base-a".to_string()),
        created_at: Some("2024-05-01T00:00:00.000Z".to_string()),
        last_modified: Some("2024-06-01T00:00:00.000Z".to_string()),
        files: vec![
            FileRecord { path: "model.safetensors".to_string(), size: 4096, fingerprint: "sha256:ab12".to_string() },
            FileRecord { path: "config.json".to_string(), size: 300, fingerprint: "1717000000".to_string() },
        ],
    }
}

/// A record with only the required fields.
pub(crate) fn bare_record(id: &str, revision: &str) -> ModelRecord {
    ModelRecord {
        id: id.to_string(),
        source: "/data".to_string(),
        revision: revision.to_string(),
        ..ModelRecord::default()
    }
}

/// What generation `generation` of model `id` looks like in the crash test: everything, including the tensor
/// count, is a function of the pair, so a reader can tell a whole model from a partial or mixed one.
pub(crate) fn generation(id: &str, generation: u64) -> (ModelRecord, ModelSignature) {
    let mut record = full_record(id, &format!("gen-{generation}"));
    record.files.truncate(1 + (generation % 2) as usize);
    record.num_layers = Some(generation);
    let seed = generation ^ id.bytes().fold(0u64, |h, b| h.wrapping_mul(131).wrapping_add(u64::from(b)));
    let mut rng = Rng::new(seed);
    let n = 1 + (generation % 23) as usize;
    (record, random_signature(&mut rng, odd_scheme(), n))
}

/// The generation a crash-test revision names.
pub(crate) fn generation_of(revision: &str) -> Option<u64> {
    revision.strip_prefix("gen-")?.parse().ok()
}

/// `Debug` prints the shortest text that round-trips each float, so equal text means bit-equal NaN-free floats
/// (unlike `==`, which calls `-0.0` and `0.0` equal).
pub(crate) fn assert_bit_equal(a: &ModelSignature, b: &ModelSignature) {
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
    assert_eq!(a, b);
}
