//! Signing models on local disk: one or several safetensors files, a sharded checkpoint with its index, or a
//! PEFT adapter directory.
//!
//! This is the local wrapper of the signing engine: [`sign_model_dir`] lists the directory and drives a
//! [`Checkpoint`] (which decides the layout and what to read), reading the small files it asks for and each
//! weights file's header through [`read_header`] with positioned reads ([`crate::file`]); then the
//! [`SignPlan`](crate::SignPlan) runs in parallel over tensors
//! ([`SignPlan::run_parallel`](crate::SignPlan::run_parallel) on a [`LocalSource`]), each task reading
//! windows of at most [`WINDOW_BYTES`] into buffers dropped as soon as they are consumed. A file truncated while
//! it is being signed is [`SignError::Truncated`], never a signal. Nothing here decides anything about the
//! model; it only does the IO.

use std::collections::BTreeSet;
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};

use crate::checkpoint::{Checkpoint, HeaderStep, Layout, ModelError, Need, read_header};
use crate::file::LocalFile;
use crate::header::{Header, MAX_HEADER_LEN};
use crate::mmap::MappedFile;
use crate::model::{ModelSignature, Scheme};
use crate::source::{LocalSource, MappedSource, ReadLimits, RunError, SignOptions};

/// Most bytes of tensor data read at once per task. Small enough that a window copied from the page cache is
/// still in the core's cache when the accumulator reads it (with 8 MiB windows, as when files were mapped,
/// reading cost 20% of single-thread signing throughput; with 256 KiB windows 8%, measured with
/// `examples/bench.rs sign` on a 1.7 GB checkpoint), large enough that a read's system call costs nothing next to
/// the work.
pub const WINDOW_BYTES: u64 = 256 << 10;

/// The plan's limits for local files: windows of [`WINDOW_BYTES`], no gaps (nothing is coalesced), and no cap
/// on a single row or whole small tensor (scales, LoRA factors, packed modules): those are as large as the model
/// makes them, and a local file's pieces are read one per task.
const LOCAL_LIMITS: ReadLimits = ReadLimits { max_read: WINDOW_BYTES, max_gap: 0, max_whole: u64::MAX };

/// A file a signature was computed from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileUsed {
    pub path: PathBuf,
    pub len: u64,
}

/// A signed model directory.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelDir {
    pub signature: ModelSignature,
    /// Every weights file read, with its length, sorted by path.
    pub files: Vec<FileUsed>,
    pub layout: Layout,
}

/// Why a local model could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The engine refused the files of `dir` (named relative to it).
    #[error("{}: {source}", dir.display())]
    InDir { dir: PathBuf, source: ModelError },
    /// The engine refused the files given to [`sign_files`] (named by their paths).
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("cannot list {}: {source}", dir.display())]
    ListDir { dir: PathBuf, source: io::Error },
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    /// The file became shorter than it was when signing opened it: another process truncated or rewrote it.
    #[error("{} was truncated while being signed (it had {len} bytes when opened)", path.display())]
    Truncated { path: PathBuf, len: u64 },
}

impl SignError {
    /// A read error of `file` (opened at `path`): a read past the current end is a truncation.
    fn read(path: &Path, file: &LocalFile, source: io::Error) -> SignError {
        if source.kind() == io::ErrorKind::UnexpectedEof {
            SignError::Truncated { path: path.to_owned(), len: file.len() }
        } else {
            SignError::Read { path: path.to_owned(), source }
        }
    }
}

/// What [`sign`] reports: the engine's refusals, to be given context by the caller, or IO errors.
enum Failed {
    Model(ModelError),
    Io(SignError),
}

impl From<ModelError> for Failed {
    fn from(e: ModelError) -> Failed {
        Failed::Model(e)
    }
}

/// How the tensor data of local files is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    /// Positioned reads into pooled buffers: for files anyone may change or truncate while they are signed.
    Read,
    /// Memory maps (`memmap2`, [`crate::mmap`]): only for files that never change underneath, such as a Hugging
    /// Face cache snapshot, whose blobs are content-addressed and renamed into place whole.
    Map,
}

/// Drives `checkpoint` over local files; `path` turns a name the checkpoint uses into a path.
fn sign(mut checkpoint: Checkpoint, path: &dyn Fn(&str) -> PathBuf, access: Access) -> Result<ModelDir, Failed> {
    while let Need::File { name, cap } = checkpoint.need() {
        let bytes = read_small(&path(&name), cap).map_err(Failed::Io)?;
        checkpoint.give_file(&bytes)?;
    }
    let paths: Vec<PathBuf> = checkpoint.weights().iter().map(|name| path(name)).collect();
    let mut opened = Vec::with_capacity(paths.len());
    let mut headers = Vec::with_capacity(paths.len());
    for (name, path) in checkpoint.weights().iter().zip(&paths) {
        let file =
            LocalFile::open(path).map_err(|source| Failed::Io(SignError::Read { path: path.clone(), source }))?;
        headers.push(header(name, &file).map_err(|e| match e {
            Ok(model) => Failed::Model(model),
            Err(io) => Failed::Io(SignError::read(path, &file, io)),
        })?);
        opened.push(file);
    }
    let refs: Vec<&Header> = headers.iter().collect();
    let planned = checkpoint.plan(&refs, LOCAL_LIMITS)?;
    let run_err = |e: RunError<io::Error>| match e {
        RunError::Model(e) => Failed::Model(e),
        RunError::Read { read, source } => Failed::Io(SignError::read(&paths[read.file], &opened[read.file], source)),
        RunError::WrongLength { read, got } => Failed::Io(SignError::Read {
            path: paths[read.file].clone(),
            source: io::Error::new(io::ErrorKind::UnexpectedEof, format!("read {got} of {} bytes", read.len())),
        }),
    };
    let signature = match access {
        Access::Read => planned.plan.run_parallel(&LocalSource::new(&opened)).map_err(run_err)?,
        Access::Map => {
            let mut mapped = Vec::with_capacity(paths.len());
            for (path, file) in paths.iter().zip(&opened) {
                let map = MappedFile::open(path)
                    .map_err(|source| Failed::Io(SignError::Read { path: path.clone(), source }))?;
                // The plan's ranges were checked against the length read for the header; a different length
                // now means the file was replaced in between, which a mapping must never see.
                if map.len() != file.len() {
                    return Err(Failed::Io(SignError::Truncated { path: path.clone(), len: file.len() }));
                }
                mapped.push(map);
            }
            planned.plan.run_parallel(&MappedSource::new(&mapped)).map_err(run_err)?
        }
    };
    let mut files: Vec<FileUsed> =
        paths.into_iter().zip(&opened).map(|(path, file)| FileUsed { path, len: file.len() }).collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(ModelDir { signature, files, layout: planned.layout })
}

/// The header of `file`, read as [`read_header`] asks; `Ok` holds the engine's refusal, `Err` a read error.
fn header(name: &str, file: &LocalFile) -> Result<Header, Result<ModelError, io::Error>> {
    let mut have = Vec::new();
    loop {
        match read_header(name, file.len(), MAX_HEADER_LEN, &have).map_err(Ok)? {
            HeaderStep::Parsed(header) => return Ok(header),
            HeaderStep::Read(range) => {
                have.extend_from_slice(&file.read(range.start, range.end - range.start).map_err(Err)?);
            }
        }
    }
}

/// Signs one model stored in `paths` (one or several safetensors files), in the current rayon pool.
///
/// Tensor names must be unique across the files. Names lose a PEFT `base_model.model.` prefix; LoRA factor pairs
/// add a `…weight` delta tensor; I8/F8 weights with a `…weight_scale` sibling are dequantised (see
/// [`SignOptions`]).
///
/// # Errors
/// [`SignError::Read`] for a file that cannot be opened or read, [`SignError::Truncated`] for one that shrank
/// while being signed, [`SignError::Model`] for everything the engine refuses (files named by their paths).
pub fn sign_files(paths: &[PathBuf], scheme: &Scheme, opts: &SignOptions) -> Result<ModelSignature, SignError> {
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    let checkpoint = Checkpoint::of_files(names.clone(), scheme, opts)?;
    let path =
        |name: &str| names.iter().position(|n| n == name).map_or_else(|| PathBuf::from(name), |i| paths[i].clone());
    match sign(checkpoint, &path, Access::Read) {
        Ok(signed) => Ok(signed.signature),
        Err(Failed::Model(e)) => Err(SignError::Model(e)),
        Err(Failed::Io(e)) => Err(e),
    }
}

/// Signs the model stored in `dir`, as a [`Checkpoint`] decides: a PEFT adapter (`adapter_model.safetensors`,
/// scaled by `adapter_config.json` unless `opts.lora` is set), else the shards named by a
/// `*.safetensors.index.json` (which must match them exactly), else every `*.safetensors` file.
///
/// # Errors
/// [`SignError::ListDir`], [`SignError::Read`] and [`SignError::Truncated`] for IO, [`SignError::InDir`] for
/// everything the engine refuses.
pub fn sign_model_dir(dir: &Path, scheme: &Scheme, opts: &SignOptions) -> Result<ModelDir, SignError> {
    sign_dir(dir, scheme, opts, Access::Read)
}

/// As [`sign_model_dir`], for a directory whose files never change while they are signed — a Hugging Face cache
/// snapshot written by `crawl --full` (blobs are content-addressed and renamed into place whole) — by mapping
/// the weights instead of reading them. The signature is the same bit for bit.
///
/// # Errors
/// As [`sign_model_dir`]; a file whose length changed between reading its header and mapping it is
/// [`SignError::Truncated`].
pub fn sign_immutable_dir(dir: &Path, scheme: &Scheme, opts: &SignOptions) -> Result<ModelDir, SignError> {
    sign_dir(dir, scheme, opts, Access::Map)
}

fn sign_dir(dir: &Path, scheme: &Scheme, opts: &SignOptions, access: Access) -> Result<ModelDir, SignError> {
    let in_dir = |source| SignError::InDir { dir: dir.to_owned(), source };
    let checkpoint = Checkpoint::new(&list_files(dir)?, scheme, opts).map_err(in_dir)?;
    sign(checkpoint, &|name| dir.join(name), access).map_err(|e| match e {
        Failed::Model(e) => in_dir(e),
        Failed::Io(e) => e,
    })
}

/// Regular files (following symlinks, as in the Hugging Face cache) directly inside `dir`, by name.
fn list_files(dir: &Path) -> Result<BTreeSet<String>, SignError> {
    let list_err = |source| SignError::ListDir { dir: dir.to_owned(), source };
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(dir).map_err(list_err)? {
        let entry = entry.map_err(list_err)?;
        let Ok(name) = entry.file_name().into_string() else { continue };
        if std::fs::metadata(entry.path()).is_ok_and(|m| m.is_file()) {
            names.insert(name);
        }
    }
    Ok(names)
}

/// At most `cap + 1` bytes of `path`: enough for the engine to refuse a file over its cap without reading it
/// all.
fn read_small(path: &Path, cap: u64) -> Result<Vec<u8>, SignError> {
    let read_err = |source| SignError::Read { path: path.to_owned(), source };
    let mut bytes = Vec::new();
    std::fs::File::open(path).and_then(|f| f.take(cap.saturating_add(1)).read_to_end(&mut bytes)).map_err(read_err)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accumulate::TensorAccumulator;
    use crate::adapter::LoraConfig;
    use crate::checkpoint::{AdapterConfigError, MAX_ADAPTER_CONFIG_LEN};
    use crate::corpus::{
        Tensor, bf16_bytes, cases, f32_bytes, pack_int4, packed_case_file, packed_cases, safetensors_file, values,
    };
    use crate::header::HeaderError;
    use crate::index::IndexError;
    use crate::model::{Dtype, ValueSource};
    use crate::packed::PackedFormat;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("write test file");
        path
    }

    fn tensor<'a>(name: &'a str, shape: &[u64], seed: u64) -> Tensor<'a> {
        let n = shape.iter().product::<u64>() as usize;
        Tensor { name, dtype: Dtype::BF16, shape: shape.to_vec(), bytes: bf16_bytes(&values(n, seed, 0.02)) }
    }

    fn small_model() -> Vec<Tensor<'static>> {
        vec![
            tensor("model.embed_tokens.weight", &[50, 16], 1),
            tensor("model.layers.0.self_attn.q_proj.weight", &[16, 16], 2),
            tensor("model.layers.0.mlp.down_proj.weight", &[16, 40], 3),
            tensor("model.norm.weight", &[16], 4),
        ]
    }

    fn names(sig: &ModelSignature) -> Vec<&str> {
        sig.tensors.iter().map(|t| t.name.as_str()).collect()
    }

    #[test]
    fn one_file_gives_one_signature_per_tensor() {
        let dir = tempfile::tempdir().expect("temp dir");
        let model = small_model();
        let path = write(dir.path(), "model.safetensors", &safetensors_file(&model));
        let scheme = Scheme::default();
        let sig = sign_files(&[path], &scheme, &SignOptions::default()).expect("signed");
        assert_eq!(sig.scheme, scheme);
        assert_eq!(
            names(&sig),
            [
                "model.embed_tokens.weight",
                "model.layers.0.mlp.down_proj.weight",
                "model.layers.0.self_attn.q_proj.weight",
                "model.norm.weight"
            ]
        );
        // Each equals what the accumulator gives on the tensor's bytes.
        for t in &model {
            let mut acc = TensorAccumulator::new(&scheme, t.name, t.dtype, &t.shape).expect("accumulator");
            acc.feed_rows(0, &t.bytes).expect("all rows");
            assert_eq!(sig.tensor(t.name), Some(&acc.finish().expect("complete")));
        }
        assert_eq!(sig.total_params(), 50 * 16 + 16 * 16 + 16 * 40 + 16);
    }

    #[test]
    fn shards_sign_like_one_file_and_names_must_be_unique() {
        let dir = tempfile::tempdir().expect("temp dir");
        let model = small_model();
        let one = write(dir.path(), "one.safetensors", &safetensors_file(&model));
        let (first, second) = model.split_at(2);
        let a = write(dir.path(), "a.safetensors", &safetensors_file(first));
        let b = write(dir.path(), "b.safetensors", &safetensors_file(second));
        let opts = SignOptions::default();
        let whole = sign_files(std::slice::from_ref(&one), &Scheme::default(), &opts).expect("one file");
        let sharded = sign_files(&[a.clone(), b], &Scheme::default(), &opts).expect("shards");
        assert_eq!(whole, sharded);
        match sign_files(&[a.clone(), one.clone()], &Scheme::default(), &opts) {
            Err(SignError::Model(ModelError::DuplicateTensor { name, first, second })) => {
                let (a, one) = (a.display().to_string(), one.display().to_string());
                assert_eq!((name.as_str(), first, second), ("model.embed_tokens.weight", a, one));
            }
            other => panic!("expected a duplicate, got {other:?}"),
        }
        assert!(matches!(sign_files(&[], &Scheme::default(), &opts), Err(SignError::Model(ModelError::NoFiles))));
        let bad_scheme = Scheme { row_fraction: 2.0, ..Scheme::default() };
        assert!(matches!(
            sign_files(&[whole_path(&dir)], &bad_scheme, &opts),
            Err(SignError::Model(ModelError::Scheme(_)))
        ));
    }

    #[test]
    fn mapped_signing_equals_read_signing_on_every_zoo_model() {
        // Every model of the bundled zoo (single files, shards with an index, PEFT adapters, quantized and packed
        // children), signed through memory maps and through positioned reads, at a full and a partial scheme.
        let zoo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/zoo-small");
        let mut dirs = Vec::new();
        for org in std::fs::read_dir(&zoo).expect("zoo") {
            let org = org.expect("entry").path();
            if org.is_dir() {
                dirs.extend(std::fs::read_dir(&org).expect("org").map(|r| r.expect("entry").path()));
            }
        }
        assert!(dirs.len() >= 20, "the zoo has its models");
        for scheme in [Scheme::default(), Scheme { row_fraction: 0.02, ..Scheme::default() }] {
            for dir in &dirs {
                let read = sign_model_dir(dir, &scheme, &SignOptions::default()).expect("read");
                let mapped = sign_immutable_dir(dir, &scheme, &SignOptions::default()).expect("mapped");
                assert_eq!(read, mapped, "{}", dir.display());
            }
        }
    }

    fn whole_path(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("one.safetensors")
    }

    #[test]
    fn every_malformed_file_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        for (i, case) in cases().iter().enumerate() {
            let path = write(dir.path(), &format!("case{i}.safetensors"), &case.bytes);
            let got = std::panic::catch_unwind(|| {
                sign_files(std::slice::from_ref(&path), &Scheme::default(), &SignOptions::default())
            });
            match got {
                Ok(Err(SignError::Model(ModelError::Header { file, source: e }))) => {
                    assert_eq!(file, path.display().to_string());
                    assert_eq!(
                        std::mem::discriminant(&e),
                        std::mem::discriminant(&case.expected),
                        "case {:?}: {e}",
                        case.name
                    );
                }
                Ok(other) => panic!("case {:?}: expected a header error, got {other:?}", case.name),
                Err(_) => panic!("case {:?} panicked", case.name),
            }
        }
        let missing = dir.path().join("missing.safetensors");
        assert!(matches!(
            sign_files(&[missing], &Scheme::default(), &SignOptions::default()),
            Err(SignError::Read { .. })
        ));
    }

    /// Issue #11: a weights file truncated by another process while it was being signed killed the process with
    /// SIGBUS, because it was mapped. Another thread cuts the file at moments spread over the signing of an
    /// intact copy; a cut that lands while tensors are being read must be [`SignError::Truncated`], one before
    /// the file is opened is the header's refusal of a file shorter than it declares, one after the last read
    /// changes nothing.
    #[test]
    fn issue_11_truncation_while_signing_is_an_error_not_a_signal() {
        let dir = tempfile::tempdir().expect("temp dir");
        // Four 16 MiB tensors, each read in many windows.
        let names = ["a.weight", "b.weight", "c.weight", "d.weight"];
        let tensors: Vec<Tensor<'_>> =
            names.iter().enumerate().map(|(i, name)| tensor(name, &[2048, 4096], i as u64)).collect();
        let bytes = safetensors_file(&tensors);
        let header_len = 8 + u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
        let path = write(dir.path(), "model.safetensors", &bytes);
        let sign = || sign_files(std::slice::from_ref(&path), &Scheme::default(), &SignOptions::default());
        let started = std::time::Instant::now();
        let intact = sign().expect("the intact file signs");
        let full = started.elapsed();
        let mut truncated = 0;
        for attempt in 0..24u32 {
            std::fs::write(&path, &bytes).expect("restore the file");
            let delay = full * (attempt % 6 + 1) / 8;
            let cutter = {
                let path = path.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(delay);
                    let file = std::fs::OpenOptions::new().write(true).open(&path).expect("open to cut");
                    file.set_len(header_len + (1 << 20)).expect("truncate");
                })
            };
            let got = sign();
            cutter.join().expect("cutter");
            match got {
                Err(SignError::Truncated { path: p, len }) => {
                    assert_eq!((p, len), (path.clone(), bytes.len() as u64));
                    truncated += 1;
                }
                Ok(sig) => assert_eq!(sig, intact, "a cut after the last read changes nothing"),
                Err(SignError::Model(ModelError::Header { .. })) => {}
                Err(other) => panic!("attempt {attempt}: unexpected {other:?}"),
            }
            if truncated >= 2 {
                break;
            }
        }
        assert!(truncated > 0, "no cut landed while signing ({full:?} per signature)");
    }

    #[test]
    fn every_malformed_packed_module_is_a_typed_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        for (i, case) in packed_cases().iter().enumerate() {
            let path = write(dir.path(), &format!("packed{i}.safetensors"), &packed_case_file(case));
            let got = std::panic::catch_unwind(|| {
                sign_files(std::slice::from_ref(&path), &Scheme::default(), &SignOptions::default())
            });
            match got {
                Ok(Err(SignError::Model(ModelError::Packed { module, source }))) => {
                    assert_eq!((module.as_str(), &source), ("m", &case.expected), "case {:?}", case.name);
                }
                Ok(other) => panic!("case {:?}: expected a packed error, got {other:?}", case.name),
                Err(_) => panic!("case {:?} panicked", case.name),
            }
            // Without dequantisation the same tensors are signed as stored.
            let raw = SignOptions { dequantize: false, ..SignOptions::default() };
            let sig = sign_files(std::slice::from_ref(&path), &Scheme::default(), &raw).expect("signed as stored");
            assert!(sig.tensor("m.weight").is_none() && sig.tensor("m.qweight").is_some(), "case {:?}", case.name);
        }
    }

    #[test]
    fn packed_modules_are_signed_as_their_float_weight() {
        let dir = tempfile::tempdir().expect("temp dir");
        let g_idx: Vec<u32> = (0..64).map(|i| i / 16).collect();
        let gptq = pack_int4("model.layers.0.self_attn.q_proj", PackedFormat::Gptq, true, (32, 64, 4), &g_idx, 5);
        let awq = pack_int4("model.layers.0.mlp.up_proj", PackedFormat::Awq, false, (32, 64, 4), &g_idx, 6);
        let mut tensors = gptq.tensors;
        tensors.extend(awq.tensors);
        let path = write(dir.path(), "model.safetensors", &safetensors_file(&tensors));
        let floats = [
            Tensor {
                name: "model.layers.0.self_attn.q_proj.weight",
                dtype: Dtype::F32,
                shape: vec![32, 64],
                bytes: f32_bytes(&gptq.weight),
            },
            Tensor {
                name: "model.layers.0.mlp.up_proj.weight",
                dtype: Dtype::F32,
                shape: vec![32, 64],
                bytes: f32_bytes(&awq.weight),
            },
        ];
        let float_path = write(dir.path(), "float.safetensors", &safetensors_file(&floats));
        let scheme = Scheme { sketch_k: 16, samples: 256, ..Scheme::default() };
        let sig = sign_files(std::slice::from_ref(&path), &scheme, &SignOptions::default()).expect("signed");
        let float = sign_files(&[float_path], &scheme, &SignOptions::default()).expect("signed");
        for f in &float.tensors {
            let t = sig.tensor(&f.name).expect("dequantised weight");
            assert_eq!((t.source, t.dtype, &t.shape), (ValueSource::Dequantized, Dtype::I32, &f.shape));
            assert_eq!((t.moments, &t.sketch, &t.samples), (f.moments, &f.sketch, &f.samples), "{}", f.name);
        }
        // The packed tensors themselves are still signed as stored.
        assert_eq!(sig.tensors.len(), 2 + 4 + 3);
    }

    #[test]
    fn quantised_weights_are_signed_dequantised() {
        let dir = tempfile::tempdir().expect("temp dir");
        let q: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37)).collect();
        let scale = f32_bytes(&[0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08]);
        let model = [
            Tensor { name: "a.weight", dtype: Dtype::I8, shape: vec![8, 8], bytes: q.clone() },
            Tensor { name: "a.weight_scale", dtype: Dtype::F32, shape: vec![8, 1], bytes: scale.clone() },
            Tensor { name: "b.weight", dtype: Dtype::I8, shape: vec![8, 8], bytes: q.clone() },
            Tensor { name: "b.weight_scale", dtype: Dtype::F32, shape: vec![8, 1], bytes: scale.clone() },
            Tensor { name: "b.weight_zero_point", dtype: Dtype::I8, shape: vec![8, 1], bytes: vec![0; 8] },
            Tensor { name: "c.weight", dtype: Dtype::I8, shape: vec![8, 8], bytes: q.clone() },
            Tensor { name: "c.weight_scale", dtype: Dtype::F32, shape: vec![2, 4], bytes: scale.clone() },
        ];
        let path = write(dir.path(), "model.safetensors", &safetensors_file(&model));
        let sig = sign_files(std::slice::from_ref(&path), &Scheme::default(), &SignOptions::default()).expect("signed");
        let a = sig.tensor("a.weight").expect("a");
        assert_eq!((a.source, a.dtype), (ValueSource::Dequantized, Dtype::I8));
        let m = a.moments.expect("dequantised values have moments");
        let expected_max = q
            .iter()
            .enumerate()
            .map(|(i, &x)| f64::from(f32::from(x as i8) * (0.01 * (i / 8 + 1) as f32)))
            .fold(f64::MIN, f64::max);
        assert!((m.max - expected_max).abs() < 1e-6, "{} vs {expected_max}", m.max);
        // The scale stays an ordinary tensor; zero points and block-shaped scales are not understood: raw.
        assert_eq!(sig.tensor("a.weight_scale").map(|t| t.source), Some(ValueSource::Raw));
        for raw in ["b.weight", "c.weight"] {
            let t = sig.tensor(raw).expect("present");
            assert_eq!((t.source, t.moments), (ValueSource::Raw, None), "{raw}");
        }
        let off = sign_files(&[path], &Scheme::default(), &SignOptions { dequantize: false, ..SignOptions::default() })
            .expect("signed");
        assert_eq!(off.tensor("a.weight").map(|t| t.source), Some(ValueSource::Raw));
    }

    fn adapter_dir(config: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        let model = [
            tensor("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", &[4, 16], 5),
            tensor("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", &[16, 4], 6),
            tensor("base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight", &[4, 16], 7),
        ];
        write(dir.path(), "adapter_model.safetensors", &safetensors_file(&model));
        if let Some(config) = config {
            write(dir.path(), "adapter_config.json", config.as_bytes());
        }
        dir
    }

    #[test]
    fn adapters_give_delta_tensors_scaled_by_their_config() {
        let scheme = Scheme::default();
        let plain = sign_model_dir(adapter_dir(None).path(), &scheme, &SignOptions::default()).expect("signed");
        assert_eq!(plain.layout, Layout::Adapter { lora: None });
        assert_eq!(
            names(&plain.signature),
            [
                "model.layers.0.self_attn.q_proj.lora_A.weight",
                "model.layers.0.self_attn.q_proj.lora_B.weight",
                "model.layers.0.self_attn.q_proj.weight",
                "model.layers.0.self_attn.v_proj.lora_A.weight",
            ]
        );
        let delta = plain.signature.tensor("model.layers.0.self_attn.q_proj.weight").expect("delta");
        assert_eq!((delta.source, delta.shape.as_slice()), (ValueSource::AdapterDelta, &[16u64, 16][..]));

        // lora_alpha 16 over rank 4: every value four times larger.
        let dir = adapter_dir(Some(r#"{"peft_type":"LORA","r":4,"lora_alpha":16,"target_modules":["q_proj"]}"#));
        let scaled = sign_model_dir(dir.path(), &scheme, &SignOptions::default()).expect("signed");
        assert_eq!(scaled.layout, Layout::Adapter { lora: Some(LoraConfig { alpha: 16.0, use_rslora: false }) });
        assert_eq!(scaled.files.len(), 1);
        let scaled_delta = scaled.signature.tensor("model.layers.0.self_attn.q_proj.weight").expect("delta");
        for (x, y) in scaled_delta.samples.iter().zip(&delta.samples) {
            assert!((x - 4.0 * y).abs() <= 1e-6 * (1.0 + x.abs()), "{x} vs 4 × {y}");
        }
        // The caller's configuration wins over the file's.
        let forced = SignOptions { lora: Some(LoraConfig { alpha: 4.0, use_rslora: false }), ..SignOptions::default() };
        let same = sign_model_dir(dir.path(), &scheme, &forced).expect("signed");
        assert_eq!(same.signature, plain.signature);
    }

    #[test]
    fn adapter_configs_are_untrusted() {
        let check = |config: &str, expected: AdapterConfigError| {
            let dir = adapter_dir(Some(config));
            match sign_model_dir(dir.path(), &Scheme::default(), &SignOptions::default()) {
                Err(SignError::InDir { source: ModelError::AdapterConfig { source, .. }, .. }) => {
                    assert_eq!(source, expected, "{config}");
                }
                other => panic!("{config}: expected a config error, got {other:?}"),
            }
        };
        check(r#"{"lora_alpha":-1}"#, AdapterConfigError::Alpha);
        check(r#"{"lora_alpha":"16"}"#, AdapterConfigError::Alpha);
        check(r#"{"use_rslora":"yes"}"#, AdapterConfigError::Rslora);
        check("[]", AdapterConfigError::NotAnObject);
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let dir = adapter_dir(Some(&deep));
        assert!(matches!(
            sign_model_dir(dir.path(), &Scheme::default(), &SignOptions::default()),
            Err(SignError::InDir {
                source: ModelError::AdapterConfig { source: AdapterConfigError::Json { .. }, .. },
                ..
            })
        ));
        let big = " ".repeat(MAX_ADAPTER_CONFIG_LEN as usize + 1);
        check(&big, AdapterConfigError::TooLarge { len: MAX_ADAPTER_CONFIG_LEN + 1, cap: MAX_ADAPTER_CONFIG_LEN });
        // Missing fields take PEFT's defaults.
        let dir = adapter_dir(Some("{}"));
        let got = sign_model_dir(dir.path(), &Scheme::default(), &SignOptions::default()).expect("signed");
        assert_eq!(got.layout, Layout::Adapter { lora: Some(LoraConfig { alpha: 8.0, use_rslora: false }) });
        // An adapter beside full weights is ambiguous.
        write(dir.path(), "model.safetensors", &safetensors_file(&small_model()));
        assert!(matches!(
            sign_model_dir(dir.path(), &Scheme::default(), &SignOptions::default()),
            Err(SignError::InDir { source: ModelError::AdapterBesideWeights { .. }, .. })
        ));
    }

    /// A directory with the small model in two shards and this index.
    fn sharded_dir(index: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        let model = small_model();
        let (first, second) = model.split_at(2);
        write(dir.path(), "model-00001-of-00002.safetensors", &safetensors_file(first));
        write(dir.path(), "model-00002-of-00002.safetensors", &safetensors_file(second));
        write(dir.path(), "model.safetensors.index.json", index.as_bytes());
        dir
    }

    fn index(entries: &[(&str, &str)]) -> String {
        let map: Vec<String> = entries.iter().map(|(t, f)| format!(r#""{t}":"{f}""#)).collect();
        format!(r#"{{"metadata":{{"total_size":3392}},"weight_map":{{{}}}}}"#, map.join(","))
    }

    const S1: &str = "model-00001-of-00002.safetensors";
    const S2: &str = "model-00002-of-00002.safetensors";
    const GOOD: [(&str, &str); 4] = [
        ("model.embed_tokens.weight", S1),
        ("model.layers.0.self_attn.q_proj.weight", S1),
        ("model.layers.0.mlp.down_proj.weight", S2),
        ("model.norm.weight", S2),
    ];

    #[test]
    fn sharded_directories_follow_their_index() {
        let dir = sharded_dir(&index(&GOOD));
        let got = sign_model_dir(dir.path(), &Scheme::default(), &SignOptions::default()).expect("signed");
        let single = tempfile::tempdir().expect("temp dir");
        write(single.path(), "model.safetensors", &safetensors_file(&small_model()));
        let expected = sign_model_dir(single.path(), &Scheme::default(), &SignOptions::default()).expect("signed");
        assert_eq!(got.signature, expected.signature);
        assert_eq!(expected.layout, Layout::Files);
        assert_eq!(
            got.layout,
            Layout::Sharded { index: "model.safetensors.index.json".into(), total_size: Some(3392) }
        );
        let files: Vec<_> = got.files.iter().map(|f| f.path.file_name().and_then(|n| n.to_str())).collect();
        assert_eq!(files, [Some(S1), Some(S2)]);
        assert!(got.files.iter().all(|f| f.len == std::fs::metadata(&f.path).map(|m| m.len()).unwrap_or(0)));
    }

    #[test]
    fn an_index_that_disagrees_with_the_shards_is_an_error() {
        let run = |entries: &[(&str, &str)]| {
            sign_model_dir(sharded_dir(&index(entries)).path(), &Scheme::default(), &SignOptions::default())
        };
        let mut wrong = GOOD;
        wrong[3].1 = S1;
        assert!(
            matches!(run(&wrong), Err(SignError::InDir { source: ModelError::IndexWrongShard { tensor, .. }, .. }) if tensor == "model.norm.weight")
        );
        let mut extra = GOOD.to_vec();
        extra.push(("lm_head.weight", S2));
        assert!(
            matches!(run(&extra), Err(SignError::InDir { source: ModelError::IndexedTensorMissing { tensor, .. }, .. }) if tensor == "lm_head.weight")
        );
        assert!(
            matches!(run(&GOOD[..3]), Err(SignError::InDir { source: ModelError::TensorNotIndexed { tensor, .. }, .. }) if tensor == "model.norm.weight")
        );
        let mut missing = GOOD;
        missing[3].1 = "model-00003-of-00003.safetensors";
        assert!(
            matches!(run(&missing), Err(SignError::InDir { source: ModelError::MissingShard { file }, .. }) if file == "model-00003-of-00003.safetensors")
        );
        let mut escape = GOOD;
        escape[3].1 = "../model.safetensors";
        assert!(matches!(
            run(&escape),
            Err(SignError::InDir {
                source: ModelError::Index { source: IndexError::ShardNameHasSeparator { .. }, .. },
                ..
            })
        ));
        // Two indexes, or none and no weights.
        let dir = sharded_dir(&index(&GOOD));
        write(dir.path(), "other.safetensors.index.json", index(&GOOD).as_bytes());
        assert!(matches!(
            sign_model_dir(dir.path(), &Scheme::default(), &SignOptions::default()),
            Err(SignError::InDir { source: ModelError::AmbiguousIndex { .. }, .. })
        ));
        let empty = tempfile::tempdir().expect("temp dir");
        write(empty.path(), "pytorch_model.bin", b"not read");
        assert!(matches!(
            sign_model_dir(empty.path(), &Scheme::default(), &SignOptions::default()),
            Err(SignError::InDir { source: ModelError::NoSafetensors, .. })
        ));
        assert!(matches!(
            sign_model_dir(&empty.path().join("nope"), &Scheme::default(), &SignOptions::default()),
            Err(SignError::ListDir { .. })
        ));
    }

    #[test]
    fn errors_read_well() {
        let e = SignError::InDir {
            dir: PathBuf::from("/m"),
            source: ModelError::Header { file: "model.safetensors".into(), source: HeaderError::EmptyHeader },
        };
        assert_eq!(e.to_string(), "/m: model.safetensors: bad safetensors header: declared header length is zero");
    }
}
