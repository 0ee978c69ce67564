//! Streaming signatures of a model on the Hub, from HTTP ranges alone.
//!
//! This is the remote wrapper of the signing engine in `signature`; it decides nothing about the model and
//! only does the IO. [`sign_remote_model`] drives a [`signature::Checkpoint`] over the repository's file list:
//! the checkpoint chooses the layout (a PEFT adapter, the shards of a `*.safetensors.index.json`, or every
//! top-level `*.safetensors` file) and asks for the small files it needs, fetched whole through the client.
//! Each weights file is resolved once at the pinned commit (its size and digest checked against the listing)
//! and its header read as [`signature::read_header`] asks: bytes `0..=100000` first, and a second range only
//! when the 8-byte length says the header is longer. The checkpoint's [`SignPlan`] then lists the byte ranges
//! the scheme needs (the selected row blocks of every tensor, coalesced and bounded); a producer fetches them
//! in order with a bounded number of bytes in flight, and [`SignPlan::run`] runs on a blocking thread, pulling
//! each range from a channel into the same per-tensor executor local signing uses. The signature is therefore
//! bit-for-bit the local one; memory holds the in-flight budget, one accumulator and the headers, never a
//! checkpoint; nothing is written to disk.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Deref;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use signature::{
    ByteSource, Checkpoint, Header, HeaderStep, Layout, MAX_HEADER_LEN, ModelError, ModelSignature, Need, Read,
    ReadLimits, RunError, Scheme, SignOptions, SignPlan, read_header,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::api::Sibling;
use crate::client::{Counters, HubClient, Resolved, Stats, Tally};
use crate::error::HubError;
use crate::ids::{Commit, RepoId, check_file_name};

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
    pub layout: Layout,
    /// The weights files, sorted by name.
    pub files: Vec<RemoteFileUsed>,
    /// Body bytes received for this model (headers, ranges, small files).
    pub bytes_fetched: u64,
    /// Total size of the weights files.
    pub checkpoint_bytes: u64,
    /// This model's requests and bytes per kind, retries included.
    pub requests: Stats,
}

/// Why a remote model could not be signed: the engine's refusal, or what the Hub did.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{file}: {source}")]
    Hub { file: String, source: HubError },
    #[error("{file}: listed as {listed} bytes but served as {served}")]
    SizeMismatch { file: String, listed: u64, served: u64 },
    #[error("{file}: listed with sha256 {listed} but served {served}")]
    DigestMismatch { file: String, listed: String, served: String },
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
    let cap = opts.max_header_len.min(MAX_HEADER_LEN);
    let mut have = BytesMut::new();
    let header = loop {
        match read_header(name, resolved.size, cap, &have)? {
            HeaderStep::Parsed(header) => break header,
            HeaderStep::Read(range) => {
                let bytes = client.read_range_with(&resolved, range, tally).await.map_err(RemoteError::hub(name))?;
                have.extend_from_slice(&bytes);
            }
        }
    };
    // What the header reads fetched beyond the header is tensor data: small files' data is served from it.
    let prefix = if have.len() as u64 > header.data_start { have.freeze() } else { Bytes::new() };
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
        Ok(Err(RunError::Model(e))) => Err(e.into()),
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
    let counters = Counters::default();
    let tally = client.tally(Some(&counters));
    // The model lives in the repository's root, like a local model directory; unsafe names are ignored.
    let listed: BTreeMap<&str, &RemoteFile> = files
        .iter()
        .filter(|f| !f.name.contains('/') && check_file_name(&f.name).is_ok())
        .map(|f| (f.name.as_str(), f))
        .collect();
    let names: BTreeSet<String> = listed.keys().map(|s| (*s).to_owned()).collect();
    let mut checkpoint = Checkpoint::new(&names, scheme, &opts.sign)?;
    while let Need::File { name, cap } = checkpoint.need() {
        let bytes = client.get_small_file_with(id, commit, &name, cap, tally).await.map_err(RemoteError::hub(&name))?;
        checkpoint.give_file(&bytes)?;
    }
    let opened = futures::future::try_join_all(
        checkpoint
            .weights()
            .iter()
            .map(|name| open(client, id, commit, name, listed.get(name.as_str()).copied(), opts, tally)),
    )
    .await?;
    let headers: Vec<&Header> = opened.iter().map(|o| &o.header).collect();
    let planned = checkpoint.plan(&headers, opts.limits)?;
    let (plan, layout) = (planned.plan, planned.layout);
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
