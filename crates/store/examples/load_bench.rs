//! Measures how long the store takes to write and to load a whole scheme's signatures.
//!
//! `cargo run --release -p modeltree-store --example load_bench -- [MODELS] [TENSORS] [K] [SAMPLES]`
//! (defaults 2000 30 64 1024). Every tensor gets moments, a `K×K` sketch and `SAMPLES` samples, which is the
//! worst case: real models carry sketches only on their 2-D tensors. The database lives in a temporary
//! directory and is deleted at exit.

use std::error::Error;
use std::time::Instant;

use signature::{Dtype, ModelSignature, Moments, Scheme, Sketch, TensorSignature, ValueSource};
use store::{ModelRecord, Store};

fn arg(index: usize, default: u32) -> Result<u32, Box<dyn Error>> {
    Ok(match std::env::args().nth(index) {
        Some(text) => text.parse()?,
        None => default,
    })
}

/// A cheap deterministic value stream; the numbers only need to look like weights to the encoder.
struct Lcg(u64);

impl Lcg {
    fn next_f32(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
    }

    fn f32s(&mut self, n: u32) -> Vec<f32> {
        (0..n).map(|_| self.next_f32()).collect()
    }
}

fn signature(scheme: Scheme, model: u32, tensors: u32) -> ModelSignature {
    let mut rng = Lcg(u64::from(model) + 1);
    let tensors = (0..tensors)
        .map(|i| TensorSignature {
            name: format!("model.layers.{i:03}.weight"),
            dtype: Dtype::BF16,
            shape: vec![1024, 1024],
            byte_len: 2 * 1024 * 1024,
            content_hash: [(model % 251) as u8; 32],
            source: ValueSource::Raw,
            moments: Some(Moments { n: 1 << 20, mean: 0.001, m2: 2.0, m3: 0.1, m4: 9.0, min: -0.2, max: 0.2 }),
            sketch: Some(Sketch { k: scheme.sketch_k, values: rng.f32s(scheme.sketch_k * scheme.sketch_k) }),
            samples: rng.f32s(scheme.samples),
        })
        .collect();
    ModelSignature { scheme, tensors }
}

fn main() -> Result<(), Box<dyn Error>> {
    let (models, tensors) = (arg(1, 2000)?, arg(2, 30)?);
    let scheme = Scheme { sketch_k: arg(3, 64)?, samples: arg(4, 1024)?, ..Scheme::default() };
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bench.db");

    let mut store = Store::open(&path)?;
    let start = Instant::now();
    for m in 0..models {
        let rec = ModelRecord {
            id: format!("org/model-{m:05}"),
            source: "bench".to_string(),
            revision: format!("{m:040x}"),
            ..ModelRecord::default()
        };
        store.put_indexed(&rec, &signature(scheme, m, tensors))?;
    }
    let write = start.elapsed();
    store.wal_checkpoint(store::WalCheckpoint::Truncate)?;
    drop(store);
    let size = std::fs::metadata(&path)?.len();

    let start = Instant::now();
    let store = Store::open(&path)?;
    let open = start.elapsed();

    let start = Instant::now();
    let mut streamed = 0usize;
    store.for_each_signature(&scheme.id(), |_, sig| {
        streamed += sig.tensors.len();
        Ok(())
    })?;
    let stream = start.elapsed();

    let start = Instant::now();
    let all = store.signatures_for_scheme(&scheme.id())?;
    let load = start.elapsed();
    let loaded: usize = all.iter().map(|(_, s)| s.tensors.len()).sum();
    assert_eq!(loaded, (models * tensors) as usize, "every tensor loaded");
    drop(all);

    println!(
        "{models} models x {tensors} tensors, k={}, samples={}: file {:.1} MiB",
        scheme.sketch_k,
        scheme.samples,
        size as f64 / (1024.0 * 1024.0)
    );
    println!(
        "write {:.2} s ({:.2} ms/model, one fsync'd transaction each)",
        write.as_secs_f64(),
        write.as_secs_f64() * 1e3 / f64::from(models)
    );
    println!("open (with quick_check) {:.2} s", open.as_secs_f64());
    println!(
        "signatures_for_scheme {:.2} s ({:.0} tensors/s); for_each_signature {:.2} s ({streamed} tensors)",
        load.as_secs_f64(),
        loaded as f64 / load.as_secs_f64(),
        stream.as_secs_f64()
    );
    Ok(())
}
