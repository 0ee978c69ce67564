//! Streaming signatures of a model on the Hub, from HTTP ranges alone.
//!
//! [`sign_remote_model`] makes the decisions [`signature::sign_model_dir`] makes on a local folder, from the
//! repository's file list ([`signature::choose_layout`]): a PEFT adapter (scaled by its `adapter_config.json`),
//! the shards of a `*.safetensors.index.json` (checked against the shards' headers), or every top-level
//! `*.safetensors` file. Per file it resolves the pinned commit once and reads the header with at most two
//! ranges: bytes `0..=100000` first, and a second range only when the 8-byte length says the header is longer.
//! Then a [`SignPlan`] lists the byte ranges the scheme needs (the selected row blocks of every tensor,
//! coalesced and bounded), a producer fetches them in order with a bounded number of bytes in flight, and the
//! plan runs on a blocking thread, pulling each range from a channel into the same accumulators the mmap
//! reader uses. The signature is therefore bit-for-bit the local one; memory holds the in-flight budget, one
//! accumulator and the headers, never a checkpoint; nothing is written to disk.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Deref;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use signature::index::MAX_INDEX_LEN;
use signature::reader::MAX_ADAPTER_CONFIG_LEN;
use signature::source::{ADAPTER_CONFIG_FILE, ADAPTER_FILE};
use signature::{
    AdapterConfigError, ByteSource, DirLayout, Header, HeaderError, IndexError, IndexMismatch, LayoutError, LoraConfig,
    MAX_HEADER_LEN, ModelSignature, Read, ReadLimits, RunError, Scheme, SignOptions, SignPlan, SourcePlanError,
    TensorError, check_index, choose_layout, parse_adapter_config, parse_header, parse_index, validate_scheme,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::api::Sibling;
use crate::client::{Counters, HubClient, Resolved, Stats, Tally};
use crate::error::HubError;
use crate::ids::{Commit, RepoId, check_file_name};

/// The first header read: `Range: bytes=0-100000`, as `huggingface_hub` does. Most headers fit.
pub const FIRST_HEADER_READ: u64 = 100_001;

/// Largest header read by default: 25 MB, `huggingface_hub`'s cap (the format allows 100 MB).
pub const DEFAULT_MAX_HEADER_LEN: u64 = 25_000_000;

/// Range reads in flight at once per model (each also bounded by the byte budget).
const MAX_IN_FLIGHT: usize = 8;

/// A file of the repository, as listed by [`HubClient::model_info`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteFile {
    pub name: String,
    /// Listed size; the resolved size must equal it.
    pub size: Option<u64>,
    /// Listed LFS sha256; the resolved `X-Linked-Etag` must equal it.
    pub sha256: Option<String>,
}

impl From<&Sibling> for RemoteFile {
    fn from(s: &Sibling) -> RemoteFile {
        RemoteFile { name: s.rfilename.clone(), size: s.size, sha256: s.lfs.as_ref().map(|l| l.sha256.clone()) }
    }
}

/// How to sign remotely.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RemoteOptions {
    /// Dequantisation and LoRA scaling, as for local signing.
    pub sign: SignOptions,
    /// Bounds on each range request and on merging nearby ranges (a gap is read and dropped to save a
    /// request).
    pub limits: ReadLimits,
    /// Most bytes of range answers held at once (in flight or waiting to be consumed); at least one read is
    /// always allowed.
    pub prefetch_bytes: u64,
    /// Largest safetensors header read (at most [`MAX_HEADER_LEN`]).
    pub max_header_len: u64,
}

impl Default for RemoteOptions {
    fn default() -> RemoteOptions {
        RemoteOptions {
            sign: SignOptions::default(),
            // A 64 KiB gap saves a request where selected row blocks nearly touch, without reading most of a
            // mid-sized tensor between them (256 KiB read 10% of the wide zoo's bytes at f = 0.02; 64 KiB 4.2%).
            limits: ReadLimits { max_read: 16 << 20, max_gap: 64 << 10, max_whole: 256 << 20 },
            prefetch_bytes: 64 << 20,
            max_header_len: DEFAULT_MAX_HEADER_LEN,
        }
    }
}

/// Which layout the repository had.
#[derive(Clone, Debug, PartialEq)]
pub enum RemoteLayout {
    Files,
    Sharded { index: String, total_size: Option<u64> },
    Adapter { lora: Option<LoraConfig> },
}

/// A weights file read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteFileUsed {
    pub name: String,
    pub size: u64,
    pub etag: Option<String>,
    /// `N`, the JSON header's length.
    pub header_len: u64,
}

/// A remote model's signature and what it cost.
#[derive(Clone, Debug, PartialEq)]
pub struct RemoteSigned {
    pub signature: ModelSignature,
    pub layout: RemoteLayout,
    /// The weights files, sorted by name.
    pub files: Vec<RemoteFileUsed>,
    /// Body bytes received for this model (headers, ranges, small files).
    pub bytes_fetched: u64,
    /// Total size of the weights files.
    pub checkpoint_bytes: u64,
    /// This model's requests and bytes per kind, retries included.
    pub requests: Stats,
}

/// Why a remote model could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error(transparent)]
    Scheme(#[from] signature::SchemeError),
    #[error("{file}: {source}")]
    Hub { file: String, source: HubError },
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("index names shard {file:?}, which is not in the repository")]
    MissingShard { file: String },
    #[error("{file}: {source}")]
    Index { file: String, source: IndexError },
    #[error(transparent)]
    IndexMismatch(#[from] IndexMismatch),
    #[error("{file}: bad safetensors header: {source}")]
    Header { file: String, source: HeaderError },
    #[error("{file}: header of {declared} bytes exceeds the cap of {cap}")]
    HeaderTooLarge { file: String, declared: u64, cap: u64 },
    #[error("{file}: {source}")]
    AdapterConfig { file: String, source: AdapterConfigError },
    #[error("{file}: listed as {listed} bytes but served as {served}")]
    SizeMismatch { file: String, listed: u64, served: u64 },
    #[error("{file}: listed with sha256 {listed} but served {served}")]
    DigestMismatch { file: String, listed: String, served: String },
    #[error(transparent)]
    Plan(#[from] SourcePlanError),
    #[error("{file}: tensor {tensor:?}: {source}")]
    Tensor { file: String, tensor: String, source: TensorError },
    #[error("the signing task failed: {reason}")]
    Task { reason: String },
}

impl RemoteError {
    fn hub(file: &str) -> impl FnOnce(HubError) -> RemoteError + '_ {
        move |source| RemoteError::Hub { file: file.to_owned(), source }
    }
}

/// A weights file, resolved and with its header parsed.
struct Opened {
    name: String,
    resolved: Resolved,
    header: Header,
    /// The first header read when the header fitted in it: small files' data is served from it.
    prefix: Bytes,
}

async fn open(
    client: &HubClient,
    id: &RepoId,
    commit: &Commit,
    name: &str,
    listed: Option<&RemoteFile>,
    opts: &RemoteOptions,
    tally: Tally<'_>,
) -> Result<Opened, RemoteError> {
    let resolved = client.resolve_with(id, commit, name, tally).await.map_err(RemoteError::hub(name))?;
    if let Some(size) = listed.and_then(|l| l.size)
        && size != resolved.size
    {
        return Err(RemoteError::SizeMismatch { file: name.to_owned(), listed: size, served: resolved.size });
    }
    if let (Some(listed), Some(served)) = (listed.and_then(|l| l.sha256.as_deref()), resolved.sha256())
        && !listed.eq_ignore_ascii_case(served)
    {
        return Err(RemoteError::DigestMismatch {
            file: name.to_owned(),
            listed: listed.to_owned(),
            served: served.to_owned(),
        });
    }
    let header_err = |source| RemoteError::Header { file: name.to_owned(), source };
    if resolved.size < 8 {
        return Err(header_err(HeaderError::FileTooShort { len: resolved.size }));
    }
    let first = resolved.size.min(FIRST_HEADER_READ);
    let head = client.read_range_with(&resolved, 0..first, tally).await.map_err(RemoteError::hub(name))?;
    let (header, prefix) = match parse_header(&head, Some(resolved.size)) {
        Ok(header) => (header, head),
        Err(HeaderError::NeedMoreBytes { needed, .. }) => {
            let cap = opts.max_header_len.min(MAX_HEADER_LEN);
            let declared = needed.saturating_sub(8);
            if declared > cap {
                return Err(RemoteError::HeaderTooLarge { file: name.to_owned(), declared, cap });
            }
            let rest = client.read_range_with(&resolved, first..needed, tally).await.map_err(RemoteError::hub(name))?;
            let mut all = BytesMut::with_capacity(usize::try_from(needed).unwrap_or(0));
            all.extend_from_slice(&head);
            all.extend_from_slice(&rest);
            // The header filled the first read, so it holds no tensor data worth keeping.
            (parse_header(&all, Some(resolved.size)).map_err(header_err)?, Bytes::new())
        }
        Err(e) => return Err(header_err(e)),
    };
    Ok(Opened { name: name.to_owned(), resolved, header, prefix })
}

/// One range answer travelling from the producer to the plan, holding its share of the byte budget.
struct Chunk {
    read: Read,
    bytes: Bytes,
    _permit: OwnedSemaphorePermit,
}

impl Deref for Chunk {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

/// The plan's view of the producer: the next answer, which must be for the read the plan asks for.
struct ChannelSource {
    rx: mpsc::Receiver<Result<Chunk, HubError>>,
}

impl ByteSource for ChannelSource {
    type Buf = Chunk;
    type Error = HubError;

    fn read(&mut self, read: &Read) -> Result<Chunk, HubError> {
        match self.rx.blocking_recv() {
            Some(Ok(chunk)) if chunk.read == *read => Ok(chunk),
            Some(Ok(_)) => Err(HubError::Pipeline { reason: "answers arrived out of order" }),
            Some(Err(e)) => Err(e),
            None => Err(HubError::Pipeline { reason: "the producer stopped" }),
        }
    }
}

/// Budget units are KiB, so that the semaphore's `u32` permit counts cover any read.
fn units(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(1024).max(1)).unwrap_or(u32::MAX)
}

/// The bytes of `read`, taking what the header read already fetched from its prefix.
async fn fetch(client: &HubClient, file: &Opened, read: &Read, tally: Tally<'_>) -> Result<Bytes, HubError> {
    let r = &read.range;
    let have = file.prefix.len() as u64;
    if r.start >= have {
        return client.read_range_with(&file.resolved, r.clone(), tally).await;
    }
    let head = file.prefix.slice(r.start as usize..r.end.min(have) as usize);
    if r.end <= have {
        return Ok(head);
    }
    let tail = client.read_range_with(&file.resolved, have..r.end, tally).await?;
    let mut all = BytesMut::with_capacity(head.len() + tail.len());
    all.extend_from_slice(&head);
    all.extend_from_slice(&tail);
    Ok(all.freeze())
}

async fn run_plan(
    client: &HubClient,
    plan: SignPlan,
    files: &[Opened],
    prefetch_bytes: u64,
    tally: Tally<'_>,
) -> Result<ModelSignature, RemoteError> {
    let reads = plan.reads().to_vec();
    let (tx, rx) = mpsc::channel::<Result<Chunk, HubError>>(1);
    let budget_units = units(prefetch_bytes);
    let budget = Arc::new(Semaphore::new(budget_units as usize));
    let consumer = tokio::task::spawn_blocking(move || plan.run(&mut ChannelSource { rx }));
    let producer = async {
        // `buffered` starts the futures in order and the semaphore is fair, so earlier reads get the budget
        // first and the consumer, which releases it, is never starved by later ones.
        let mut answers = futures::stream::iter(reads)
            .map(|read| {
                let budget = Arc::clone(&budget);
                async move {
                    let permit = budget
                        .acquire_many_owned(units(read.len()).min(budget_units))
                        .await
                        .map_err(|_| HubError::Pipeline { reason: "budget closed" })?;
                    let file = files.get(read.file).ok_or(HubError::Pipeline { reason: "unknown file" })?;
                    let bytes = fetch(client, file, &read, tally).await?;
                    Ok(Chunk { read, bytes, _permit: permit })
                }
            })
            .buffered(MAX_IN_FLIGHT);
        while let Some(answer) = answers.next().await {
            let failed = answer.is_err();
            if tx.send(answer).await.is_err() || failed {
                break;
            }
        }
        drop(tx);
    };
    let ((), joined) = tokio::join!(producer, consumer);
    let name = |file: usize| files.get(file).map_or_else(|| format!("file {file}"), |f| f.name.clone());
    match joined {
        Ok(Ok(signature)) => Ok(signature),
        Ok(Err(RunError::Read { read, source })) => Err(RemoteError::Hub { file: name(read.file), source }),
        Ok(Err(RunError::WrongLength { read, .. })) => Err(RemoteError::Hub {
            file: name(read.file),
            source: HubError::Pipeline { reason: "a range answer had the wrong length" },
        }),
        Ok(Err(RunError::Tensor { file, tensor, source })) => {
            Err(RemoteError::Tensor { file: name(file), tensor, source })
        }
        Err(e) => Err(RemoteError::Task { reason: e.to_string() }),
    }
}

/// Signs the model `id` at `commit` from ranged reads; `files` is the repository's file list (from
/// [`HubClient::model_info`]). The result equals [`signature::sign_model_dir`] on the same files with the same
/// scheme and options, bit for bit.
///
/// Requests per model: one resolver request per weights file (plus one for an index or adapter config, which
/// are usually served directly), one CDN range for each header (two for headers over 100 kB), then the
/// plan's ranges (see [`RemoteOptions::limits`]).
///
/// # Errors
/// A [`RemoteError`] naming the file: layout and index problems, hostile or malformed headers (a length beyond
/// the file or over the cap, a JSON bomb), size or digest disagreements with the listing, Hub errors, and
/// tensors that cannot be signed.
pub async fn sign_remote_model(
    client: &HubClient,
    id: &RepoId,
    commit: &Commit,
    files: &[RemoteFile],
    scheme: &Scheme,
    opts: &RemoteOptions,
) -> Result<RemoteSigned, RemoteError> {
    validate_scheme(scheme)?;
    let counters = Counters::default();
    let tally = client.tally(Some(&counters));
    // The model lives in the repository's root, like a local model directory; unsafe names are ignored.
    let listed: BTreeMap<&str, &RemoteFile> = files
        .iter()
        .filter(|f| !f.name.contains('/') && check_file_name(&f.name).is_ok())
        .map(|f| (f.name.as_str(), f))
        .collect();
    let names: BTreeSet<String> = listed.keys().map(|s| (*s).to_owned()).collect();
    let mut sign = opts.sign;
    let mut index = None;
    let (weights, layout): (Vec<String>, RemoteLayout) = match choose_layout(&names)? {
        DirLayout::Adapter { config } => {
            if sign.lora.is_none() && config {
                let bytes = client
                    .get_small_file_with(id, commit, ADAPTER_CONFIG_FILE, MAX_ADAPTER_CONFIG_LEN, tally)
                    .await
                    .map_err(RemoteError::hub(ADAPTER_CONFIG_FILE))?;
                let lora = parse_adapter_config(&bytes)
                    .map_err(|source| RemoteError::AdapterConfig { file: ADAPTER_CONFIG_FILE.to_owned(), source })?;
                sign.lora = Some(lora);
            }
            (vec![ADAPTER_FILE.to_owned()], RemoteLayout::Adapter { lora: sign.lora })
        }
        DirLayout::Sharded { index: index_name } => {
            let bytes = client
                .get_small_file_with(id, commit, &index_name, MAX_INDEX_LEN as u64, tally)
                .await
                .map_err(RemoteError::hub(&index_name))?;
            let parsed =
                parse_index(&bytes).map_err(|source| RemoteError::Index { file: index_name.clone(), source })?;
            let shards: Vec<String> = parsed.files().into_iter().map(str::to_owned).collect();
            if let Some(missing) = shards.iter().find(|s| !names.contains(*s)) {
                return Err(RemoteError::MissingShard { file: missing.clone() });
            }
            let layout = RemoteLayout::Sharded { index: index_name, total_size: parsed.total_size };
            index = Some(parsed);
            (shards, layout)
        }
        DirLayout::Files { files } => (files, RemoteLayout::Files),
    };
    let opened = futures::future::try_join_all(
        weights.iter().map(|name| open(client, id, commit, name, listed.get(name.as_str()).copied(), opts, tally)),
    )
    .await?;
    if let Some(index) = &index {
        let shards: Vec<(&str, &[signature::TensorInfo])> =
            opened.iter().map(|o| (o.name.as_str(), o.header.tensors.as_slice())).collect();
        check_index(index, &shards)?;
    }
    let headers: Vec<&Header> = opened.iter().map(|o| &o.header).collect();
    let plan = SignPlan::new(&headers, scheme, &sign, opts.limits)?;
    tracing::debug!(repo = %id, reads = plan.reads().len(), bytes = plan.read_bytes(), "signing remotely");
    let signature = run_plan(client, plan, &opened, opts.prefetch_bytes, tally).await?;
    let mut used: Vec<RemoteFileUsed> = opened
        .iter()
        .map(|o| RemoteFileUsed {
            name: o.name.clone(),
            size: o.resolved.size,
            etag: o.resolved.etag.clone(),
            header_len: o.header.header_len,
        })
        .collect();
    used.sort_by(|a, b| a.name.cmp(&b.name));
    let requests = counters.snapshot();
    Ok(RemoteSigned {
        signature,
        layout,
        checkpoint_bytes: used.iter().map(|f| f.size).sum(),
        files: used,
        bytes_fetched: requests.bytes(),
        requests,
    })
}
