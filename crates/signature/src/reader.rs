//! Signing models on local disk: one or several safetensors files, a sharded checkpoint with its index, or a
//! PEFT adapter directory.
//!
//! Work happens in two phases. Planning opens and maps every file, parses every header strictly, rejects
//! duplicate tensor names across shards, checks a shard index against what the shards really hold, and pairs
//! tensors that are signed together (quantised weights with their scales, LoRA factors). Only then does the
//! parallel pass run: one rayon task per signed tensor, largest first, each feeding a [`TensorAccumulator`]
//! from windows of at most [`WINDOW_BYTES`] that are unmapped as soon as they are consumed.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::accumulate::{Scales, SchemeError, TensorAccumulator, TensorError, validate_scheme};
use crate::adapter::{LoraConfig, TensorBytes, lora_delta_signature};
use crate::header::{HeaderError, MAX_HEADER_LEN, TensorInfo, parse_header};
use crate::index::{IndexError, MAX_INDEX_LEN, ShardIndex, parse_index};
use crate::mmap::MappedFile;
use crate::model::{ModelSignature, Scheme, TensorSignature};
use crate::packed::{GptqFormat, PackedError, PackedLayout, PackedTensors, packed_signature};
use crate::plan::{self, PlanError, TensorRef, plan};
use crate::source::{self, DirLayout, IndexMismatch, LayoutError};

/// Most bytes of tensor data mapped at once per task. Large enough that mapping costs vanish next to the work,
/// small enough that `threads × window` is a modest resident set.
pub const WINDOW_BYTES: u64 = 8 << 20;

/// Largest `adapter_config.json` read (real ones are under 2 KiB).
pub const MAX_ADAPTER_CONFIG_LEN: u64 = 1 << 20;

/// How to sign.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SignOptions {
    /// How LoRA updates are scaled; `None` scales `B·A` by 1. [`sign_model_dir`] reads it from
    /// `adapter_config.json` when this is `None`.
    pub lora: Option<LoraConfig>,
    /// Sign I8/F8 weights with a `…weight_scale` sibling, and packed 4-bit GPTQ/AWQ modules, from their
    /// dequantised values.
    pub dequantize: bool,
    /// How GPTQ zero points are stored (from `quantization_config.checkpoint_format`, see
    /// [`GptqFormat::from_quantization_config`]); the default is the v1 format every GPTQ tool writes by default.
    pub gptq_format: GptqFormat,
}

impl Default for SignOptions {
    fn default() -> SignOptions {
        SignOptions { lora: None, dequantize: true, gptq_format: GptqFormat::V1 }
    }
}

/// A file a signature was computed from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileUsed {
    pub path: PathBuf,
    pub len: u64,
}

/// Which layout [`sign_model_dir`] found.
#[derive(Clone, Debug, PartialEq)]
pub enum Layout {
    /// `*.safetensors` files without an index (usually one `model.safetensors`).
    Files,
    /// Shards named by the index file at `index`.
    Sharded { index: PathBuf, total_size: Option<u64> },
    /// A PEFT adapter (`adapter_model.safetensors`), with the scaling used.
    Adapter { lora: Option<LoraConfig> },
}

/// A signed model directory.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelDir {
    pub signature: ModelSignature,
    /// Every file read, with its length, sorted by path.
    pub files: Vec<FileUsed>,
    pub layout: Layout,
}

/// What went wrong in one file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot open: {0}")]
    Open(#[source] io::Error),
    #[error("cannot map: {0}")]
    Map(#[source] io::Error),
    #[error("bad safetensors header: {0}")]
    Header(#[from] HeaderError),
    #[error("tensor {name:?}: {source}")]
    Tensor { name: String, source: TensorError },
}

/// What went wrong reading `adapter_config.json`.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AdapterConfigError {
    #[error("file of {len} bytes exceeds the cap of {cap}")]
    TooLarge { len: u64, cap: u64 },
    #[error("not valid json: {message}")]
    Json { message: String },
    #[error("not a json object")]
    NotAnObject,
    #[error("lora_alpha is not a positive finite number")]
    Alpha,
    #[error("use_rslora is not a boolean")]
    Rslora,
}

/// Why a model could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error(transparent)]
    Scheme(#[from] SchemeError),
    #[error("no files to sign")]
    NoFiles,
    #[error("{}: {source}", path.display())]
    WithFile { path: PathBuf, source: FileError },
    #[error("tensor {name:?} appears in both {} and {}", first.display(), second.display())]
    DuplicateTensor { name: String, first: PathBuf, second: PathBuf },
    #[error("packed weights of {module:?}: {source}")]
    Packed { module: String, source: PackedError },
    #[error("cannot list {}: {source}", dir.display())]
    ListDir { dir: PathBuf, source: io::Error },
    #[error("no safetensors files in {}", dir.display())]
    NoSafetensors { dir: PathBuf },
    #[error("{} holds several shard indexes: {found:?}", dir.display())]
    AmbiguousIndex { dir: PathBuf, found: Vec<String> },
    #[error("{} holds an adapter and full weights ({other})", dir.display())]
    AdapterBesideWeights { dir: PathBuf, other: String },
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{}: {source}", path.display())]
    Index { path: PathBuf, source: IndexError },
    #[error("{}: {source}", path.display())]
    AdapterConfig { path: PathBuf, source: AdapterConfigError },
    #[error("index names shard {file:?}, which is not in the directory")]
    MissingShard { file: String },
    #[error("index maps {tensor:?} to {indexed:?} but it is in {found:?}")]
    IndexWrongShard { tensor: String, indexed: String, found: String },
    #[error("index maps {tensor:?} to {indexed:?} but no shard holds it")]
    IndexedTensorMissing { tensor: String, indexed: String },
    #[error("tensor {tensor:?} of {file:?} is not in the index")]
    TensorNotIndexed { tensor: String, file: String },
}

/// One opened and parsed file.
struct Opened {
    path: PathBuf,
    map: MappedFile,
    data_start: u64,
    tensors: Vec<TensorInfo>,
}

/// A stored tensor: which file, and its header entry.
#[derive(Clone, Copy)]
struct Stored<'a> {
    file: &'a Opened,
    info: &'a TensorInfo,
}

/// One unit of the parallel pass.
enum Job<'a> {
    Plain { name: String, t: Stored<'a> },
    Dequant { name: String, t: Stored<'a>, scale: Stored<'a> },
    Lora { name: String, a: Stored<'a>, b: Stored<'a> },
    Packed { name: String, layout: PackedLayout, tensors: PackedTensors<Stored<'a>> },
}

impl Job<'_> {
    fn cost(&self) -> u64 {
        match self {
            Job::Plain { t, .. } | Job::Dequant { t, .. } => t.info.byte_len(),
            // Forming B·A costs `out × r × in` multiply-adds: weigh it like reading that many bytes.
            Job::Lora { a, b, .. } => b.info.shape.first().copied().unwrap_or(0).saturating_mul(a.info.numel()),
            // Every element of the dequantised matrix is formed from a nibble: weigh it like its f32 bytes.
            Job::Packed { layout, .. } => layout.out.saturating_mul(layout.inputs).saturating_mul(4),
        }
    }
}

fn open(path: &Path) -> Result<Opened, SignError> {
    let with = |source| SignError::WithFile { path: path.to_owned(), source };
    let map = MappedFile::open(path).map_err(|e| with(FileError::Open(e)))?;
    let head_len = map.len().min(8 + MAX_HEADER_LEN);
    let head = map.window(0, head_len, false).map_err(|e| with(FileError::Map(e)))?;
    let header = parse_header(&head, Some(map.len())).map_err(|e| with(e.into()))?;
    drop(head);
    Ok(Opened { path: path.to_owned(), map, data_start: header.data_start, tensors: header.tensors })
}

/// Opens and parses every file.
fn open_all(paths: &[PathBuf]) -> Result<Vec<Opened>, SignError> {
    if paths.is_empty() {
        return Err(SignError::NoFiles);
    }
    paths.iter().map(|p| open(p)).collect()
}

/// Resolves the planned jobs to the opened files, or maps a planning error to the files' paths.
fn plan_jobs<'a>(files: &'a [Opened], opts: &SignOptions) -> Result<Vec<Job<'a>>, SignError> {
    let headers: Vec<&[TensorInfo]> = files.iter().map(|f| f.tensors.as_slice()).collect();
    let stored = |r: TensorRef| Stored { file: &files[r.file], info: &files[r.file].tensors[r.tensor] };
    let jobs = plan(&headers, opts.dequantize).map_err(|e| match e {
        PlanError::DuplicateTensor { name, first, second } => {
            SignError::DuplicateTensor { name, first: files[first].path.clone(), second: files[second].path.clone() }
        }
        PlanError::Packed { module, source } => SignError::Packed { module, source },
    })?;
    Ok(jobs
        .into_iter()
        .map(|job| match job {
            plan::Job::Stored { name, tensor } => Job::Plain { name, t: stored(tensor) },
            plan::Job::Dequantized { name, weight, scale } => {
                Job::Dequant { name, t: stored(weight), scale: stored(scale) }
            }
            plan::Job::LoraDelta { name, a, b } => Job::Lora { name, a: stored(a), b: stored(b) },
            plan::Job::Packed { name, layout, tensors: t } => {
                let tensors = PackedTensors {
                    qweight: stored(t.qweight),
                    qzeros: stored(t.qzeros),
                    scales: stored(t.scales),
                    g_idx: t.g_idx.map(stored),
                };
                Job::Packed { name, layout, tensors }
            }
        })
        .collect())
}

fn tensor_error(t: Stored<'_>, source: TensorError) -> SignError {
    SignError::WithFile { path: t.file.path.clone(), source: FileError::Tensor { name: t.info.name.clone(), source } }
}

fn map_error(t: Stored<'_>, e: io::Error) -> SignError {
    SignError::WithFile { path: t.file.path.clone(), source: FileError::Map(e) }
}

/// Feeds the selected rows of `t` to `acc`, one window at a time.
fn feed(acc: &mut TensorAccumulator, t: Stored<'_>) -> Result<(), SignError> {
    let row_bytes = acc.row_bytes();
    if row_bytes == 0 {
        return Ok(());
    }
    let rows_per_window = (WINDOW_BYTES / row_bytes).max(1);
    let base = t.file.data_start + t.info.begin;
    for block in acc.selected_rows().to_vec() {
        let mut row = block.start;
        while row < block.end {
            let rows = rows_per_window.min(block.end - row);
            let window =
                t.file.map.window(base + row * row_bytes, rows * row_bytes, false).map_err(|e| map_error(t, e))?;
            acc.feed_rows(row, &window).map_err(|e| tensor_error(t, e))?;
            row += rows;
        }
    }
    Ok(())
}

/// All the bytes of a tensor, mapped (small tensors: scales and LoRA factors).
fn whole(t: Stored<'_>) -> Result<crate::mmap::Window, SignError> {
    t.file.map.window(t.file.data_start + t.info.begin, t.info.byte_len(), false).map_err(|e| map_error(t, e))
}

fn tensor_bytes<'a>(t: &'a Stored<'_>, bytes: &'a [u8]) -> TensorBytes<'a> {
    TensorBytes { dtype: t.info.dtype, shape: &t.info.shape, bytes }
}

fn run(job: &Job<'_>, scheme: &Scheme, opts: &SignOptions) -> Result<TensorSignature, SignError> {
    match job {
        Job::Plain { name, t } => {
            let mut acc =
                TensorAccumulator::new(scheme, name, t.info.dtype, &t.info.shape).map_err(|e| tensor_error(*t, e))?;
            feed(&mut acc, *t)?;
            acc.finish().map_err(|e| tensor_error(*t, e))
        }
        Job::Dequant { name, t, scale } => {
            let scales = Scales::from_tensor(&t.info.shape, scale.info.dtype, &scale.info.shape, &whole(*scale)?)
                .map_err(|e| tensor_error(*scale, e))?;
            let mut acc = TensorAccumulator::dequantized(scheme, name, t.info.dtype, &t.info.shape, scales)
                .map_err(|e| tensor_error(*t, e))?;
            feed(&mut acc, *t)?;
            acc.finish().map_err(|e| tensor_error(*t, e))
        }
        Job::Lora { name, a, b } => {
            let (wa, wb) = (whole(*a)?, whole(*b)?);
            let r = a.info.shape.first().copied().unwrap_or(1);
            let scaling = opts.lora.map_or(1.0, |l| l.scaling(r));
            let fa = TensorBytes { dtype: a.info.dtype, shape: &a.info.shape, bytes: &wa };
            let fb = TensorBytes { dtype: b.info.dtype, shape: &b.info.shape, bytes: &wb };
            lora_delta_signature(scheme, name, fa, fb, scaling).map_err(|e| tensor_error(*a, e))
        }
        Job::Packed { name, layout, tensors: t } => {
            // Packed words interleave rows of the weight, so the packed tensors are read whole (see `packed`).
            let (qweight, qzeros, scales) = (whole(t.qweight)?, whole(t.qzeros)?, whole(t.scales)?);
            let g_idx = t.g_idx.map(whole).transpose()?;
            let parts = PackedTensors {
                qweight: tensor_bytes(&t.qweight, &qweight),
                qzeros: tensor_bytes(&t.qzeros, &qzeros),
                scales: tensor_bytes(&t.scales, &scales),
                g_idx: t.g_idx.as_ref().zip(g_idx.as_deref()).map(|(s, b)| tensor_bytes(s, b)),
            };
            packed_signature(scheme, name, layout, opts.gptq_format, parts).map_err(|e| tensor_error(t.qweight, e))
        }
    }
}

fn execute(files: &[Opened], scheme: &Scheme, opts: &SignOptions) -> Result<ModelSignature, SignError> {
    let mut jobs = plan_jobs(files, opts)?;
    // Largest first, so the biggest tensor does not start last and leave the other threads idle.
    jobs.sort_by_key(|j| std::cmp::Reverse(j.cost()));
    let mut tensors = jobs.par_iter().map(|j| run(j, scheme, opts)).collect::<Result<Vec<_>, _>>()?;
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(ModelSignature { scheme: *scheme, tensors })
}

/// Signs one model stored in `paths` (one or several safetensors files), in the current rayon pool.
///
/// Tensor names must be unique across the files. Names lose a PEFT `base_model.model.` prefix; LoRA factor pairs
/// add a `…weight` delta tensor; I8/F8 weights with a `…weight_scale` sibling are dequantised (see
/// [`SignOptions`]).
///
/// # Errors
/// [`SignError::WithFile`] for a file that cannot be opened, mapped or parsed, or a tensor that cannot be
/// signed; [`SignError::DuplicateTensor`]; [`SignError::Scheme`]; [`SignError::NoFiles`].
pub fn sign_files(paths: &[PathBuf], scheme: &Scheme, opts: &SignOptions) -> Result<ModelSignature, SignError> {
    validate_scheme(scheme)?;
    let files = open_all(paths)?;
    execute(&files, scheme, opts)
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

fn read_capped(path: &Path, cap: u64) -> Result<Result<Vec<u8>, u64>, SignError> {
    let read_err = |source| SignError::Read { path: path.to_owned(), source };
    let len = std::fs::metadata(path).map_err(read_err)?.len();
    if len > cap {
        return Ok(Err(len));
    }
    std::fs::read(path).map(Ok).map_err(read_err)
}

/// Reads the LoRA scaling from an (untrusted) `adapter_config.json`. A missing `lora_alpha` takes PEFT's
/// default of 8; `r` is not needed, each module's rank is read from its factors (which also honours PEFT's
/// `rank_pattern`). `alpha_pattern` is not applied.
fn read_adapter_config(path: &Path) -> Result<LoraConfig, SignError> {
    let err = |source| SignError::AdapterConfig { path: path.to_owned(), source };
    let bytes = read_capped(path, MAX_ADAPTER_CONFIG_LEN)?
        .map_err(|len| err(AdapterConfigError::TooLarge { len, cap: MAX_ADAPTER_CONFIG_LEN }))?;
    source::parse_adapter_config(&bytes).map_err(err)
}

/// Checks that `index` names exactly the tensors found, each in the shard that holds it.
fn check_index(index: &ShardIndex, files: &[Opened], names: &[&str]) -> Result<(), SignError> {
    let shards: Vec<(&str, &[TensorInfo])> =
        names.iter().zip(files).map(|(&name, file)| (name, file.tensors.as_slice())).collect();
    source::check_index(index, &shards).map_err(|mismatch| match mismatch {
        IndexMismatch::WrongShard { tensor, indexed, found } => SignError::IndexWrongShard { tensor, indexed, found },
        IndexMismatch::IndexedTensorMissing { tensor, indexed } => SignError::IndexedTensorMissing { tensor, indexed },
        IndexMismatch::TensorNotIndexed { tensor, file } => SignError::TensorNotIndexed { tensor, file },
    })
}

/// Signs the model stored in `dir`: a PEFT adapter (`adapter_model.safetensors`, scaled by
/// `adapter_config.json` unless `opts.lora` is set), else the shards named by a `*.safetensors.index.json`
/// (which must match them exactly), else every `*.safetensors` file.
///
/// # Errors
/// Everything [`sign_files`] reports, plus directory, index and adapter-config errors of [`SignError`].
pub fn sign_model_dir(dir: &Path, scheme: &Scheme, opts: &SignOptions) -> Result<ModelDir, SignError> {
    validate_scheme(scheme)?;
    let names = list_files(dir)?;
    let layout = source::choose_layout(&names).map_err(|e| match e {
        LayoutError::AdapterBesideWeights { other } => SignError::AdapterBesideWeights { dir: dir.to_owned(), other },
        LayoutError::AmbiguousIndex { found } => SignError::AmbiguousIndex { dir: dir.to_owned(), found },
        LayoutError::NoSafetensors => SignError::NoSafetensors { dir: dir.to_owned() },
    })?;
    let used = |files: &[Opened]| {
        let mut used: Vec<FileUsed> =
            files.iter().map(|f| FileUsed { path: f.path.clone(), len: f.map.len() }).collect();
        used.sort_by(|a, b| a.path.cmp(&b.path));
        used
    };

    match layout {
        DirLayout::Adapter { config } => {
            let lora = match opts.lora {
                Some(l) => Some(l),
                None if config => Some(read_adapter_config(&dir.join(source::ADAPTER_CONFIG_FILE))?),
                None => None,
            };
            let files = open_all(&[dir.join(source::ADAPTER_FILE)])?;
            let signature = execute(&files, scheme, &SignOptions { lora, ..*opts })?;
            Ok(ModelDir { signature, files: used(&files), layout: Layout::Adapter { lora } })
        }
        DirLayout::Sharded { index: index_name } => {
            let path = dir.join(&index_name);
            let bytes = read_capped(&path, MAX_INDEX_LEN as u64)?.map_err(|len| SignError::Index {
                path: path.clone(),
                source: IndexError::TooLarge { len: usize::try_from(len).unwrap_or(usize::MAX), cap: MAX_INDEX_LEN },
            })?;
            let index = parse_index(&bytes).map_err(|source| SignError::Index { path: path.clone(), source })?;
            let shards: Vec<&str> = index.files().into_iter().collect();
            if let Some(missing) = shards.iter().find(|s| !names.contains(**s)) {
                return Err(SignError::MissingShard { file: (*missing).to_owned() });
            }
            let paths: Vec<PathBuf> = shards.iter().map(|s| dir.join(s)).collect();
            let files = open_all(&paths)?;
            check_index(&index, &files, &shards)?;
            let signature = execute(&files, scheme, opts)?;
            let layout = Layout::Sharded { index: path, total_size: index.total_size };
            Ok(ModelDir { signature, files: used(&files), layout })
        }
        DirLayout::Files { files: names } => {
            let paths: Vec<PathBuf> = names.iter().map(|s| dir.join(s)).collect();
            let files = open_all(&paths)?;
            let signature = execute(&files, scheme, opts)?;
            Ok(ModelDir { signature, files: used(&files), layout: Layout::Files })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corpus::{
        Tensor, bf16_bytes, cases, f32_bytes, pack_int4, packed_case_file, packed_cases, safetensors_file, values,
    };
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
            Err(SignError::DuplicateTensor { name, first, second }) => {
                assert_eq!((name.as_str(), first, second), ("model.embed_tokens.weight", a, one));
            }
            other => panic!("expected a duplicate, got {other:?}"),
        }
        assert!(matches!(sign_files(&[], &Scheme::default(), &opts), Err(SignError::NoFiles)));
        let bad_scheme = Scheme { row_fraction: 2.0, ..Scheme::default() };
        assert!(matches!(sign_files(&[whole_path(&dir)], &bad_scheme, &opts), Err(SignError::Scheme(_))));
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
                Ok(Err(SignError::WithFile { path: p, source: FileError::Header(e) })) => {
                    assert_eq!(p, path);
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
            Err(SignError::WithFile { source: FileError::Open(_), .. })
        ));
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
                Ok(Err(SignError::Packed { module, source })) => {
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
                Err(SignError::AdapterConfig { source, .. }) => assert_eq!(source, expected, "{config}"),
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
            Err(SignError::AdapterConfig { source: AdapterConfigError::Json { .. }, .. })
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
            Err(SignError::AdapterBesideWeights { .. })
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
            Layout::Sharded { index: dir.path().join("model.safetensors.index.json"), total_size: Some(3392) }
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
        assert!(matches!(run(&wrong), Err(SignError::IndexWrongShard { tensor, .. }) if tensor == "model.norm.weight"));
        let mut extra = GOOD.to_vec();
        extra.push(("lm_head.weight", S2));
        assert!(
            matches!(run(&extra), Err(SignError::IndexedTensorMissing { tensor, .. }) if tensor == "lm_head.weight")
        );
        assert!(
            matches!(run(&GOOD[..3]), Err(SignError::TensorNotIndexed { tensor, .. }) if tensor == "model.norm.weight")
        );
        let mut missing = GOOD;
        missing[3].1 = "model-00003-of-00003.safetensors";
        assert!(
            matches!(run(&missing), Err(SignError::MissingShard { file }) if file == "model-00003-of-00003.safetensors")
        );
        let mut escape = GOOD;
        escape[3].1 = "../model.safetensors";
        assert!(matches!(run(&escape), Err(SignError::Index { source: IndexError::ShardNameHasSeparator { .. }, .. })));
        // Two indexes, or none and no weights.
        let dir = sharded_dir(&index(&GOOD));
        write(dir.path(), "other.safetensors.index.json", index(&GOOD).as_bytes());
        assert!(matches!(
            sign_model_dir(dir.path(), &Scheme::default(), &SignOptions::default()),
            Err(SignError::AmbiguousIndex { .. })
        ));
        let empty = tempfile::tempdir().expect("temp dir");
        write(empty.path(), "pytorch_model.bin", b"not read");
        assert!(matches!(
            sign_model_dir(empty.path(), &Scheme::default(), &SignOptions::default()),
            Err(SignError::NoSafetensors { .. })
        ));
        assert!(matches!(
            sign_model_dir(&empty.path().join("nope"), &Scheme::default(), &SignOptions::default()),
            Err(SignError::ListDir { .. })
        ));
    }

    #[test]
    fn errors_read_well() {
        let e = SignError::WithFile {
            path: PathBuf::from("/m/model.safetensors"),
            source: FileError::Header(HeaderError::EmptyHeader),
        };
        assert_eq!(e.to_string(), "/m/model.safetensors: bad safetensors header: declared header length is zero");
    }
}
