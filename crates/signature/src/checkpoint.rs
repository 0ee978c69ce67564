//! Which files make a model, and what to read from them, decided without IO.
//!
//! A [`Checkpoint`] is the sans-IO orchestrator that local signing ([`crate::sign_model_dir`]) and remote
//! signing (the `hub` crate's `sign_remote_model`) both wrap. It is a small state machine driven by its caller:
//!
//! 1. [`Checkpoint::new`] takes the names of the files directly in a model directory or repository root and
//!    chooses the layout: a PEFT adapter (`adapter_model.safetensors`), else the shards named by the one
//!    `*.safetensors.index.json`, else every `*.safetensors` file ([`Checkpoint::of_files`] skips the choice
//!    when the caller already knows the files).
//! 2. While [`Checkpoint::need`] answers [`Need::File`], the caller reads that small file (capped) and hands
//!    it to [`Checkpoint::give_file`]: `adapter_config.json` sets the LoRA scaling, a shard index names the
//!    shards (which must all be present).
//! 3. Then [`Need::Headers`]: the caller reads the header of every file of [`Checkpoint::weights`], one range
//!    at a time as [`read_header`] asks, and hands the parsed headers to [`Checkpoint::plan`], which checks them
//!    against the shard index and builds the [`SignPlan`]: every byte range the signature needs.
//! 4. The caller runs the plan on its bytes: [`SignPlan::run_parallel`] over local files, [`SignPlan::run`]
//!    over a stream of fetched ranges. Both feed the same per-tensor executor, so every caller gets the same
//!    [`crate::ModelSignature`], bit for bit.
//!
//! Every refusal on the way is a [`ModelError`] naming the file by the name the caller listed; callers add
//! their own IO errors and context around it.
//!
//! **Where a new file format goes.** A format is two things here: which names in a listing hold its weights
//! ([`Checkpoint::new`]'s layout rules) and how its header is read from the first bytes of a file
//! ([`read_header`], which today knows safetensors and returns a [`Header`]: tensor names, dtypes, shapes and
//! byte offsets). A GGUF or PyTorch `.bin` reader adds a header parser that produces the same [`Header`] and a
//! branch in those two places; the plan, the executor and both callers stay as they are.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use crate::accumulate::{SchemeError, TensorError, validate_scheme};
use crate::adapter::LoraConfig;
use crate::header::{Header, HeaderError, MAX_HEADER_LEN, TensorInfo, parse_header};
use crate::index::{IndexError, MAX_INDEX_LEN, ShardIndex, parse_index};
use crate::model::Scheme;
use crate::packed::PackedError;
use crate::source::{ReadLimits, SignOptions, SignPlan};

/// The name of a PEFT adapter's weights file.
pub const ADAPTER_FILE: &str = "adapter_model.safetensors";

/// The name of a PEFT adapter's configuration.
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";

/// Largest `adapter_config.json` read (real ones are under 2 KiB).
pub const MAX_ADAPTER_CONFIG_LEN: u64 = 1 << 20;

/// The first header read: bytes `0..=100000`, as `huggingface_hub` reads them. Most headers fit, so a remote
/// reader needs one range per header and a second only for very large ones.
pub const FIRST_HEADER_READ: u64 = 100_001;

/// Which files a model was signed from.
#[derive(Clone, Debug, PartialEq)]
pub enum Layout {
    /// `*.safetensors` files without an index (usually one `model.safetensors`).
    Files,
    /// Shards named by the index file `index`.
    Sharded { index: String, total_size: Option<u64> },
    /// A PEFT adapter (`adapter_model.safetensors`), with the scaling used.
    Adapter { lora: Option<LoraConfig> },
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

/// Why a model's files cannot be signed: every decision of the engine, from the layout to the last tensor.
/// Files are named as the caller listed them (a name in a directory or repository, or a path).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ModelError {
    #[error(transparent)]
    Scheme(#[from] SchemeError),
    #[error("no files to sign")]
    NoFiles,
    #[error("no safetensors files")]
    NoSafetensors,
    #[error("several shard indexes: {found:?}")]
    AmbiguousIndex { found: Vec<String> },
    #[error("an adapter sits beside full weights ({other})")]
    AdapterBesideWeights { other: String },
    #[error("{file}: {source}")]
    AdapterConfig { file: String, source: AdapterConfigError },
    #[error("{file}: {source}")]
    Index { file: String, source: IndexError },
    #[error("index names shard {file:?}, which is not present")]
    MissingShard { file: String },
    #[error("index maps {tensor:?} to {indexed:?} but it is in {found:?}")]
    IndexWrongShard { tensor: String, indexed: String, found: String },
    #[error("index maps {tensor:?} to {indexed:?} but no shard holds it")]
    IndexedTensorMissing { tensor: String, indexed: String },
    #[error("tensor {tensor:?} of {file:?} is not in the index")]
    TensorNotIndexed { tensor: String, file: String },
    #[error("{file}: bad safetensors header: {source}")]
    Header { file: String, source: HeaderError },
    #[error("{file}: header of {declared} bytes exceeds the cap of {cap}")]
    HeaderTooLarge { file: String, declared: u64, cap: u64 },
    #[error("tensor {name:?} appears in both {first} and {second}")]
    DuplicateTensor { name: String, first: String, second: String },
    #[error("packed weights of {module:?}: {source}")]
    Packed { module: String, source: PackedError },
    #[error("{file}: tensor {tensor:?}: shape {shape:?} overflows 64 bits")]
    ShapeOverflow { file: String, tensor: String, shape: Vec<u64> },
    #[error("{file}: tensor {tensor:?}: a piece of {len} bytes exceeds the cap of {cap}")]
    PieceTooLarge { file: String, tensor: String, len: u64, cap: u64 },
    #[error("{file}: tensor {tensor:?}: {source}")]
    Tensor { file: String, tensor: String, source: TensorError },
}

/// What a [`Checkpoint`] needs next from its caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Need {
    /// The whole of this small file, for [`Checkpoint::give_file`]; longer than `cap` bytes is refused, so a
    /// caller reads at most `cap + 1`.
    File { name: String, cap: u64 },
    /// The header of every file of [`Checkpoint::weights`], in that order, for [`Checkpoint::plan`].
    Headers,
}

/// The small file being waited for.
#[derive(Clone, Debug)]
enum Stage {
    AdapterConfig,
    Index { name: String },
    Headers,
}

/// The sans-IO orchestrator of one model's files; see the module docs.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    scheme: Scheme,
    opts: SignOptions,
    names: BTreeSet<String>,
    stage: Stage,
    layout: Layout,
    weights: Vec<String>,
    index: Option<ShardIndex>,
}

/// A model ready to be signed: the plan, the files it reads and the layout they formed.
#[derive(Debug)]
pub struct Planned {
    pub plan: SignPlan,
    /// The weights files, in the order the plan's [`crate::Read::file`] indexes them.
    pub files: Vec<String>,
    pub layout: Layout,
}

impl Checkpoint {
    /// Chooses the layout from `names`, the files directly in a model directory or repository root: a PEFT
    /// adapter (scaled by `adapter_config.json` unless `opts.lora` is set), else the shards of the one
    /// `*.safetensors.index.json`, else every `*.safetensors` file, sorted.
    ///
    /// # Errors
    /// [`ModelError::Scheme`], [`ModelError::AdapterBesideWeights`], [`ModelError::AmbiguousIndex`],
    /// [`ModelError::NoSafetensors`].
    pub fn new(names: &BTreeSet<String>, scheme: &Scheme, opts: &SignOptions) -> Result<Checkpoint, ModelError> {
        validate_scheme(scheme)?;
        let safetensors: Vec<&String> = names.iter().filter(|n| n.ends_with(".safetensors")).collect();
        let indexes: Vec<&String> = names.iter().filter(|n| n.ends_with(".safetensors.index.json")).collect();
        let checkpoint = |stage, layout, weights: Vec<String>| Checkpoint {
            scheme: *scheme,
            opts: *opts,
            names: names.clone(),
            stage,
            layout,
            weights,
            index: None,
        };
        if names.contains(ADAPTER_FILE) {
            if let Some(other) = safetensors.iter().find(|n| n.as_str() != ADAPTER_FILE) {
                return Err(ModelError::AdapterBesideWeights { other: (*other).clone() });
            }
            // The caller's scaling wins over the file's.
            let stage = if opts.lora.is_none() && names.contains(ADAPTER_CONFIG_FILE) {
                Stage::AdapterConfig
            } else {
                Stage::Headers
            };
            return Ok(checkpoint(stage, Layout::Adapter { lora: opts.lora }, vec![ADAPTER_FILE.to_owned()]));
        }
        match indexes.as_slice() {
            [] => {}
            [index] => {
                let stage = Stage::Index { name: (*index).clone() };
                let layout = Layout::Sharded { index: (*index).clone(), total_size: None };
                return Ok(checkpoint(stage, layout, Vec::new()));
            }
            _ => return Err(ModelError::AmbiguousIndex { found: indexes.iter().map(|s| (*s).clone()).collect() }),
        }
        if safetensors.is_empty() {
            return Err(ModelError::NoSafetensors);
        }
        Ok(checkpoint(Stage::Headers, Layout::Files, safetensors.into_iter().cloned().collect()))
    }

    /// A model stored in exactly these `files` (one or several safetensors files, no index), named as the
    /// caller likes (paths, for [`crate::sign_files`]).
    ///
    /// # Errors
    /// [`ModelError::Scheme`], or [`ModelError::NoFiles`] for an empty list.
    pub fn of_files(files: Vec<String>, scheme: &Scheme, opts: &SignOptions) -> Result<Checkpoint, ModelError> {
        validate_scheme(scheme)?;
        if files.is_empty() {
            return Err(ModelError::NoFiles);
        }
        Ok(Checkpoint {
            scheme: *scheme,
            opts: *opts,
            names: files.iter().cloned().collect(),
            stage: Stage::Headers,
            layout: Layout::Files,
            weights: files,
            index: None,
        })
    }

    /// What the caller must read next.
    pub fn need(&self) -> Need {
        match &self.stage {
            Stage::AdapterConfig => Need::File { name: ADAPTER_CONFIG_FILE.to_owned(), cap: MAX_ADAPTER_CONFIG_LEN },
            Stage::Index { name } => Need::File { name: name.clone(), cap: MAX_INDEX_LEN as u64 },
            Stage::Headers => Need::Headers,
        }
    }

    /// Takes the bytes of the file [`Need::File`] asked for (untrusted, at most its `cap + 1`).
    ///
    /// # Errors
    /// [`ModelError::AdapterConfig`] or [`ModelError::Index`] for a file that does not parse (or is over the
    /// cap), [`ModelError::MissingShard`] for an index naming a file that is not in the listing.
    pub fn give_file(&mut self, bytes: &[u8]) -> Result<(), ModelError> {
        match std::mem::replace(&mut self.stage, Stage::Headers) {
            Stage::AdapterConfig => {
                let lora = parse_adapter_config(bytes)
                    .map_err(|source| ModelError::AdapterConfig { file: ADAPTER_CONFIG_FILE.to_owned(), source })?;
                self.opts.lora = Some(lora);
                self.layout = Layout::Adapter { lora: Some(lora) };
            }
            Stage::Index { name } => {
                let index = parse_index(bytes).map_err(|source| ModelError::Index { file: name.clone(), source })?;
                let shards: Vec<String> = index.files().into_iter().map(str::to_owned).collect();
                if let Some(missing) = shards.iter().find(|s| !self.names.contains(*s)) {
                    return Err(ModelError::MissingShard { file: missing.clone() });
                }
                self.layout = Layout::Sharded { index: name, total_size: index.total_size };
                self.weights = shards;
                self.index = Some(index);
            }
            // Nothing was asked for: the bytes are not used.
            Stage::Headers => {}
        }
        Ok(())
    }

    /// The weights files whose headers [`Checkpoint::plan`] needs, in order (complete once [`Checkpoint::need`]
    /// answers [`Need::Headers`]).
    pub fn weights(&self) -> &[String] {
        &self.weights
    }

    /// Checks the `headers` of [`Checkpoint::weights`] (same order) against the shard index, if any, and plans
    /// every read the signature needs within `limits`.
    ///
    /// # Errors
    /// The index disagreements ([`ModelError::IndexWrongShard`], [`ModelError::IndexedTensorMissing`],
    /// [`ModelError::TensorNotIndexed`]) and everything [`SignPlan::new`] refuses.
    pub fn plan(self, headers: &[&Header], limits: ReadLimits) -> Result<Planned, ModelError> {
        if let Some(index) = &self.index {
            let shards: Vec<(&str, &[TensorInfo])> =
                self.weights.iter().zip(headers).map(|(name, h)| (name.as_str(), h.tensors.as_slice())).collect();
            check_index(index, &shards)?;
        }
        let plan = SignPlan::new(&self.weights, headers, &self.scheme, &self.opts, limits)?;
        Ok(Planned { plan, files: self.weights, layout: self.layout })
    }
}

/// One step of reading a weights file's header.
#[derive(Debug, PartialEq)]
pub enum HeaderStep {
    /// Read this byte range next and append it to the bytes given so far.
    Read(Range<u64>),
    /// The header, parsed and checked against the file's length.
    Parsed(Header),
}

/// Reads the header of the weights file `file`, `len` bytes long, from its first bytes `have` (empty at the
/// start): asks for the next range, or returns the parsed header. A safetensors header takes one read of
/// [`FIRST_HEADER_READ`] bytes, and a second when its declared length says it is longer; a declared length over
/// `cap` is refused before that second read.
///
/// # Errors
/// [`ModelError::Header`] for a malformed header (or a file too short to hold one, without any read),
/// [`ModelError::HeaderTooLarge`] over `cap`.
pub fn read_header(file: &str, len: u64, cap: u64, have: &[u8]) -> Result<HeaderStep, ModelError> {
    let header_err = |source| ModelError::Header { file: file.to_owned(), source };
    if len < 8 {
        return Err(header_err(HeaderError::FileTooShort { len }));
    }
    if have.is_empty() {
        return Ok(HeaderStep::Read(0..len.min(FIRST_HEADER_READ)));
    }
    match parse_header(have, Some(len)) {
        Ok(header) => Ok(HeaderStep::Parsed(header)),
        Err(HeaderError::NeedMoreBytes { needed, .. }) if needed > have.len() as u64 => {
            let cap = cap.min(MAX_HEADER_LEN);
            let declared = needed.saturating_sub(8);
            if declared > cap {
                return Err(ModelError::HeaderTooLarge { file: file.to_owned(), declared, cap });
            }
            Ok(HeaderStep::Read(have.len() as u64..needed))
        }
        Err(e) => Err(header_err(e)),
    }
}

/// Checks that `index` names exactly the tensors the `shards` (file name, header tensors) hold, each in the
/// shard that holds it.
fn check_index(index: &ShardIndex, shards: &[(&str, &[TensorInfo])]) -> Result<(), ModelError> {
    let mut found: BTreeMap<&str, &str> = BTreeMap::new();
    for (shard, tensors) in shards {
        for t in *tensors {
            found.insert(&t.name, shard);
        }
    }
    for (tensor, indexed) in &index.weight_map {
        match found.get(tensor.as_str()) {
            Some(&shard) if shard == indexed => {}
            Some(&shard) => {
                return Err(ModelError::IndexWrongShard {
                    tensor: tensor.clone(),
                    indexed: indexed.clone(),
                    found: shard.to_owned(),
                });
            }
            None => {
                return Err(ModelError::IndexedTensorMissing { tensor: tensor.clone(), indexed: indexed.clone() });
            }
        }
    }
    if let Some((tensor, file)) = found.iter().find(|(t, _)| !index.weight_map.contains_key(**t)) {
        return Err(ModelError::TensorNotIndexed { tensor: (*tensor).to_owned(), file: (*file).to_owned() });
    }
    Ok(())
}

/// Reads the LoRA scaling from the bytes of an (untrusted) `adapter_config.json`. A missing `lora_alpha` takes
/// PEFT's default of 8 and `use_rslora` defaults to false; `r` is not needed, each module's rank is read from
/// its factors (which also honours PEFT's `rank_pattern`). `alpha_pattern` is not applied.
///
/// # Errors
/// An [`AdapterConfigError`] for a file over [`MAX_ADAPTER_CONFIG_LEN`], invalid JSON, or bad field types.
pub fn parse_adapter_config(bytes: &[u8]) -> Result<LoraConfig, AdapterConfigError> {
    if bytes.len() as u64 > MAX_ADAPTER_CONFIG_LEN {
        return Err(AdapterConfigError::TooLarge { len: bytes.len() as u64, cap: MAX_ADAPTER_CONFIG_LEN });
    }
    // serde_json bounds recursion itself (128 levels) and the input is capped; its Value is fine here.
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| AdapterConfigError::Json { message: e.to_string() })?;
    let object = value.as_object().ok_or(AdapterConfigError::NotAnObject)?;
    let alpha = match object.get("lora_alpha") {
        None | Some(serde_json::Value::Null) => 8.0,
        Some(v) => v.as_f64().filter(|a| a.is_finite() && *a > 0.0).ok_or(AdapterConfigError::Alpha)?,
    };
    let use_rslora = match object.get("use_rslora") {
        None | Some(serde_json::Value::Null) => false,
        Some(v) => v.as_bool().ok_or(AdapterConfigError::Rslora)?,
    };
    Ok(LoraConfig { alpha, use_rslora })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corpus::{Tensor, f32_bytes, safetensors_file};
    use crate::model::Dtype;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    fn start(names: &[&str]) -> Result<(Need, Vec<String>, Layout), ModelError> {
        let c = Checkpoint::new(&set(names), &Scheme::default(), &SignOptions::default())?;
        Ok((c.need(), c.weights().to_vec(), c.layout))
    }

    #[test]
    fn layouts_follow_the_directory_rules() {
        let check = |names: &[&str], expected: Result<(Need, Vec<String>, Layout), ModelError>| {
            assert_eq!(start(names), expected, "{names:?}");
        };
        let adapter = vec![ADAPTER_FILE.to_owned()];
        check(
            &["adapter_model.safetensors", "adapter_config.json"],
            Ok((
                Need::File { name: ADAPTER_CONFIG_FILE.into(), cap: MAX_ADAPTER_CONFIG_LEN },
                adapter.clone(),
                Layout::Adapter { lora: None },
            )),
        );
        check(&["adapter_model.safetensors"], Ok((Need::Headers, adapter, Layout::Adapter { lora: None })));
        check(
            &["adapter_model.safetensors", "model.safetensors"],
            Err(ModelError::AdapterBesideWeights { other: "model.safetensors".into() }),
        );
        check(
            &["a.safetensors", "model.safetensors.index.json", "config.json"],
            Ok((
                Need::File { name: "model.safetensors.index.json".into(), cap: MAX_INDEX_LEN as u64 },
                Vec::new(),
                Layout::Sharded { index: "model.safetensors.index.json".into(), total_size: None },
            )),
        );
        check(
            &["a.safetensors.index.json", "b.safetensors.index.json"],
            Err(ModelError::AmbiguousIndex {
                found: vec!["a.safetensors.index.json".into(), "b.safetensors.index.json".into()],
            }),
        );
        check(
            &["b.safetensors", "a.safetensors", "README.md"],
            Ok((Need::Headers, vec!["a.safetensors".into(), "b.safetensors".into()], Layout::Files)),
        );
        check(&["pytorch_model.bin"], Err(ModelError::NoSafetensors));
        let bad = Scheme { row_fraction: 2.0, ..Scheme::default() };
        assert!(matches!(
            Checkpoint::new(&set(&["model.safetensors"]), &bad, &SignOptions::default()),
            Err(ModelError::Scheme(_))
        ));
        assert_eq!(
            Checkpoint::of_files(Vec::new(), &Scheme::default(), &SignOptions::default()).map(|c| c.need()),
            Err(ModelError::NoFiles)
        );
        // The caller's scaling wins: the config is not even asked for.
        let forced = SignOptions { lora: Some(LoraConfig { alpha: 4.0, use_rslora: false }), ..SignOptions::default() };
        let c =
            Checkpoint::new(&set(&[ADAPTER_FILE, ADAPTER_CONFIG_FILE]), &Scheme::default(), &forced).expect("adapter");
        assert_eq!(c.need(), Need::Headers);
    }

    #[test]
    fn indexes_name_present_shards_that_hold_exactly_their_tensors() {
        let names = set(&["s1.safetensors", "s2.safetensors", "model.safetensors.index.json"]);
        let index = r#"{"metadata":{"total_size":12},"weight_map":{"x":"s1.safetensors","y":"s1.safetensors","z":"s2.safetensors"}}"#;
        let mut c = Checkpoint::new(&names, &Scheme::default(), &SignOptions::default()).expect("sharded");
        c.give_file(index.as_bytes()).expect("valid index");
        assert_eq!(c.need(), Need::Headers);
        assert_eq!(c.weights(), ["s1.safetensors", "s2.safetensors"]);

        let missing = index.replace("s2.safetensors\"}", "s3.safetensors\"}");
        let mut c = Checkpoint::new(&names, &Scheme::default(), &SignOptions::default()).expect("sharded");
        assert_eq!(c.give_file(missing.as_bytes()), Err(ModelError::MissingShard { file: "s3.safetensors".into() }));
        let mut c = Checkpoint::new(&names, &Scheme::default(), &SignOptions::default()).expect("sharded");
        assert!(
            matches!(c.give_file(b"{"), Err(ModelError::Index { file, .. }) if file == "model.safetensors.index.json")
        );

        let info = |name: &str| TensorInfo { name: name.into(), dtype: Dtype::F32, shape: vec![1], begin: 0, end: 4 };
        let (a, b) = ([info("x"), info("y")], [info("z")]);
        let index = |pairs: &[(&str, &str)]| ShardIndex {
            total_size: None,
            weight_map: pairs.iter().map(|(t, f)| ((*t).to_owned(), (*f).to_owned())).collect(),
        };
        let shards: [(&str, &[TensorInfo]); 2] = [("s1", &a), ("s2", &b)];
        assert_eq!(check_index(&index(&[("x", "s1"), ("y", "s1"), ("z", "s2")]), &shards), Ok(()));
        assert_eq!(
            check_index(&index(&[("x", "s1"), ("y", "s2"), ("z", "s2")]), &shards),
            Err(ModelError::IndexWrongShard { tensor: "y".into(), indexed: "s2".into(), found: "s1".into() })
        );
        assert_eq!(
            check_index(&index(&[("x", "s1"), ("y", "s1"), ("z", "s2"), ("w", "s2")]), &shards),
            Err(ModelError::IndexedTensorMissing { tensor: "w".into(), indexed: "s2".into() })
        );
        assert_eq!(
            check_index(&index(&[("x", "s1"), ("z", "s2")]), &shards),
            Err(ModelError::TensorNotIndexed { tensor: "y".into(), file: "s1".into() })
        );
    }

    #[test]
    fn adapter_configs_are_untrusted() {
        let check = |json: &str, expected: Result<LoraConfig, AdapterConfigError>| {
            assert_eq!(parse_adapter_config(json.as_bytes()), expected, "{json}");
        };
        check(r#"{"lora_alpha":16,"use_rslora":true}"#, Ok(LoraConfig { alpha: 16.0, use_rslora: true }));
        check("{}", Ok(LoraConfig { alpha: 8.0, use_rslora: false }));
        check(r#"{"lora_alpha":"16"}"#, Err(AdapterConfigError::Alpha));
        check(r#"{"use_rslora":1}"#, Err(AdapterConfigError::Rslora));
        check("[1]", Err(AdapterConfigError::NotAnObject));
        assert!(matches!(parse_adapter_config(b"{"), Err(AdapterConfigError::Json { .. })));
        let big = vec![b' '; MAX_ADAPTER_CONFIG_LEN as usize + 1];
        assert_eq!(
            parse_adapter_config(&big),
            Err(AdapterConfigError::TooLarge { len: MAX_ADAPTER_CONFIG_LEN + 1, cap: MAX_ADAPTER_CONFIG_LEN })
        );
        let mut c =
            Checkpoint::new(&set(&[ADAPTER_FILE, ADAPTER_CONFIG_FILE]), &Scheme::default(), &Default::default())
                .expect("adapter");
        c.give_file(br#"{"lora_alpha":16}"#).expect("valid config");
        assert_eq!(
            (c.need(), &c.layout),
            (Need::Headers, &Layout::Adapter { lora: Some(LoraConfig { alpha: 16.0, use_rslora: false }) })
        );
    }

    #[test]
    fn headers_take_one_read_or_two_and_respect_the_cap() {
        let one =
            safetensors_file(&[Tensor { name: "a", dtype: Dtype::F32, shape: vec![2], bytes: f32_bytes(&[1.0, 2.0]) }]);
        let len = one.len() as u64;
        assert_eq!(read_header("m", len, MAX_HEADER_LEN, &[]), Ok(HeaderStep::Read(0..len)));
        assert!(
            matches!(read_header("m", len, MAX_HEADER_LEN, &one), Ok(HeaderStep::Parsed(h)) if h.tensors.len() == 1)
        );
        assert_eq!(
            read_header("m", 3, MAX_HEADER_LEN, &[]),
            Err(ModelError::Header { file: "m".into(), source: HeaderError::FileTooShort { len: 3 } })
        );
        // A header longer than the first read: a second read up to its end, unless it is over the cap.
        let mut big = (200_000u64).to_le_bytes().to_vec();
        big.resize(FIRST_HEADER_READ as usize, b' ');
        assert_eq!(read_header("m", 300_000, MAX_HEADER_LEN, &big), Ok(HeaderStep::Read(FIRST_HEADER_READ..200_008)));
        assert_eq!(
            read_header("m", 300_000, 100_000, &big),
            Err(ModelError::HeaderTooLarge { file: "m".into(), declared: 200_000, cap: 100_000 })
        );
    }
}
