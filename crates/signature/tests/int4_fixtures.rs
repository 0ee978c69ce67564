//! Packed int4 files written by the reference packers (AutoGPTQ, AutoAWQ, transcribed into numpy by
//! `scripts/make-int4-fixtures.py`) dequantise here to exactly what the reference dequantisation gives for the same
//! bytes, and sign like the float weights they hold.

use std::path::{Path, PathBuf};

use safetensors::SafeTensors;
use signature::{
    Dtype, GptqFormat, PackedTensors, Scheme, SignOptions, TensorBytes, ValueSource, dequantize_packed, packed_layout,
    sign_files,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn dtype(d: safetensors::Dtype) -> Dtype {
    match d {
        safetensors::Dtype::F16 => Dtype::F16,
        safetensors::Dtype::F32 => Dtype::F32,
        safetensors::Dtype::I32 => Dtype::I32,
        other => panic!("unexpected dtype {other:?}"),
    }
}

/// Modules of `packed` (names without `.qweight`) and, per module, the numpy-dequantised `[out, in]` values.
fn check(packed: &str, expected: &str, modules: &[&str]) {
    let packed_bytes = std::fs::read(fixture(packed)).expect("fixture");
    let expected_bytes = std::fs::read(fixture(expected)).expect("fixture");
    let file = SafeTensors::deserialize(&packed_bytes).expect("valid safetensors");
    let reference = SafeTensors::deserialize(&expected_bytes).expect("valid safetensors");
    for module in modules {
        let shapes: Vec<(String, Dtype, Vec<u64>)> = ["qweight", "qzeros", "scales", "g_idx"]
            .iter()
            .filter_map(|s| file.tensor(&format!("{module}.{s}")).ok().map(|v| ((*s).to_owned(), v)))
            .map(|(s, v)| (s, dtype(v.dtype()), v.shape().iter().map(|&d| d as u64).collect()))
            .collect();
        let view = |s: &str| file.tensor(&format!("{module}.{s}")).ok();
        let part = |s: &str| {
            let (_, d, shape) = shapes.iter().find(|(n, ..)| n == s)?;
            Some(TensorBytes { dtype: *d, shape, bytes: view(s)?.data() })
        };
        let tensors = PackedTensors {
            qweight: part("qweight").expect("qweight"),
            qzeros: part("qzeros").expect("qzeros"),
            scales: part("scales").expect("scales"),
            g_idx: part("g_idx"),
        };
        let layout = packed_layout(tensors.declared()).expect("a valid layout");
        let got = dequantize_packed(&layout, GptqFormat::V1, tensors).expect("dequantises");
        let want = reference.tensor(&format!("{module}.weight")).expect("expected weight");
        assert_eq!(want.shape(), [layout.out as usize, layout.inputs as usize], "{module}");
        let want: Vec<f32> =
            want.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        assert_eq!(got.len(), want.len());
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "{packed} {module} element {k}: {g} vs {w}");
        }
    }

    // Signed through the reader, the packed file's weights equal the float file's in everything but provenance.
    let scheme = Scheme { sketch_k: 16, samples: 512, ..Scheme::default() };
    let sig = sign_files(&[fixture(packed)], &scheme, &SignOptions::default()).expect("signed");
    let float = sign_files(&[fixture(expected)], &scheme, &SignOptions::default()).expect("signed");
    assert_eq!(float.tensors.len(), modules.len());
    for f in &float.tensors {
        let t = sig.tensor(&f.name).expect("dequantised weight");
        assert_eq!((t.source, &t.shape), (ValueSource::Dequantized, &f.shape), "{}", f.name);
        assert_eq!((t.moments, &t.sketch, &t.samples), (f.moments, &f.sketch, &f.samples), "{}", f.name);
    }
}

#[test]
fn autogptq_packing_dequantises_like_the_reference() {
    check(
        "gptq.safetensors",
        "gptq-expected.safetensors",
        &["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj"],
    );
}

#[test]
fn autoawq_packing_dequantises_like_the_reference() {
    check(
        "awq.safetensors",
        "awq-expected.safetensors",
        &["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.up_proj"],
    );
}
