//! The plain records the store reads and writes, beside the `signature` crate's types.
//!
//! None of these derive serde: [`crate::Store`] maps each field to a column explicitly, so a schema change shows
//! in one place. Enums that are stored as text own their spelling (`as_str`/`parse`).

use std::fmt;

/// What the store keeps of a model besides its signature: identity, provenance, card and config essentials, and
/// the files the revision consists of.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelRecord {
    /// `org/name` on the Hub, or the folder's id for a local scan. Unique in the store.
    pub id: String,
    /// Where it came from: the local root that was scanned, or the Hub endpoint.
    pub source: String,
    /// A commit sha for the Hub, or a content fingerprint of the files for a local scan.
    pub revision: String,
    pub license: Option<String>,
    /// The card's `base_model` list, in card order.
    pub declared_base_models: Vec<String>,
    /// The card's `base_model_relation` (`finetune`, `adapter`, `quantized`, `merge`).
    pub base_model_relation: Option<String>,
    /// config.json `model_type`.
    pub model_type: Option<String>,
    /// config.json `architectures`, in order.
    pub architectures: Vec<String>,
    pub hidden_size: Option<u64>,
    pub num_layers: Option<u64>,
    pub vocab_size: Option<u64>,
    /// config.json as text; must be valid JSON.
    pub config_json: Option<String>,
    /// config.json `quantization_config` as JSON text; must be valid JSON.
    pub quantization: Option<String>,
    /// adapter_config.json `base_model_name_or_path`.
    pub adapter_base: Option<String>,
    /// Upstream creation time as the source reports it.
    pub created_at: Option<String>,
    /// Upstream last modification time as the source reports it.
    pub last_modified: Option<String>,
    /// The files of this revision, in the order given. Paths are unique.
    pub files: Vec<FileRecord>,
}

/// One file of a model's revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileRecord {
    /// Path within the repository or folder, `/`-separated.
    pub path: String,
    pub size: u64,
    /// The modification time for a local file; the etag or sha256 for a remote one.
    pub fingerprint: String,
}

/// Where a model stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ModelStatus {
    /// Its latest revision is stored with its signature.
    Indexed,
    /// Its latest attempt failed (see [`crate::Store::failures`]); a signature it had before is kept.
    Failed,
    /// It was no longer found at its source; its rows are kept.
    Vanished,
}

impl ModelStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelStatus::Indexed => "indexed",
            ModelStatus::Failed => "failed",
            ModelStatus::Vanished => "vanished",
        }
    }

    pub fn parse(s: &str) -> Option<ModelStatus> {
        Some(match s {
            "indexed" => ModelStatus::Indexed,
            "failed" => ModelStatus::Failed,
            "vanished" => ModelStatus::Vanished,
            _ => return None,
        })
    }
}

/// A model as stored, with its status and bookkeeping times.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredModel {
    pub record: ModelRecord,
    pub status: ModelStatus,
    /// When the id was first stored (UTC, `YYYY-MM-DDTHH:MM:SS.sssZ`).
    pub first_seen: String,
    /// When the stored record or status last changed; re-putting identical data leaves it alone.
    pub updated: String,
    /// Whether a signature is stored (a model that failed before it ever indexed has none).
    pub has_signature: bool,
}

/// The id of a run, from [`crate::Store::begin_run`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunId(pub i64);

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RunKind {
    Scan,
    Crawl,
    Daemon,
}

impl RunKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Scan => "scan",
            RunKind::Crawl => "crawl",
            RunKind::Daemon => "daemon",
        }
    }

    pub fn parse(s: &str) -> Option<RunKind> {
        Some(match s {
            "scan" => RunKind::Scan,
            "crawl" => RunKind::Crawl,
            "daemon" => RunKind::Daemon,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RunStatus {
    Running,
    Ok,
    Failed,
    /// Stopped by a signal, or found still `running` after its process died.
    Interrupted,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Ok => "ok",
            RunStatus::Failed => "failed",
            RunStatus::Interrupted => "interrupted",
        }
    }

    pub fn parse(s: &str) -> Option<RunStatus> {
        Some(match s {
            "running" => RunStatus::Running,
            "ok" => RunStatus::Ok,
            "failed" => RunStatus::Failed,
            "interrupted" => RunStatus::Interrupted,
            _ => return None,
        })
    }
}

/// One run of a scan, crawl or daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunRecord {
    pub id: RunId,
    pub kind: RunKind,
    pub started_at: String,
    /// `None` while running.
    pub finished_at: Option<String>,
    pub status: RunStatus,
    /// Free-form statistics as JSON text.
    pub stats_json: Option<String>,
}

/// What an edge rests on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EdgeSource {
    /// Recovered from the weights alone.
    Weights,
    /// Declared in metadata (card `base_model`, adapter config) only.
    Metadata,
    /// Recovered and declared.
    Both,
}

impl EdgeSource {
    pub fn as_str(self) -> &'static str {
        match self {
            EdgeSource::Weights => "weights",
            EdgeSource::Metadata => "metadata",
            EdgeSource::Both => "both",
        }
    }

    pub fn parse(s: &str) -> Option<EdgeSource> {
        Some(match s {
            "weights" => EdgeSource::Weights,
            "metadata" => EdgeSource::Metadata,
            "both" => EdgeSource::Both,
            _ => return None,
        })
    }
}

/// One lineage edge `parent → child`.
#[derive(Clone, Debug, PartialEq)]
pub struct EdgeRecord {
    pub parent: String,
    pub child: String,
    /// `finetune`, `adapter`, `quantized`, `merge`, … as the lineage crate names it.
    pub relation: String,
    /// Finite; NaN is refused.
    pub confidence: f64,
    pub source: EdgeSource,
}

/// One completed lineage solve: the edge set written by one [`crate::Store::replace_edges`] call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SolveRecord {
    /// Increases with every solve; the greatest is the current lineage.
    pub id: i64,
    pub run_id: RunId,
    pub method: String,
    pub created_at: String,
    pub edge_count: u64,
}

/// The latest failure of a model that has not indexed since.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailureRecord {
    pub model_id: String,
    pub source: String,
    /// The file or folder at fault.
    pub path: String,
    pub error: String,
    /// How many times in a row it has failed.
    pub attempts: u32,
    pub first_at: String,
    pub last_at: String,
    /// When it may be retried; `None` means at the next opportunity.
    pub next_retry_at: Option<String>,
}

/// How long a failed model waits before its next attempt: `base` after the first failure, doubling per attempt
/// up to `cap`. [`RetryPolicy::IMMEDIATE`] retries at the next opportunity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub base: std::time::Duration,
    pub cap: std::time::Duration,
}

impl RetryPolicy {
    pub const IMMEDIATE: RetryPolicy = RetryPolicy { base: std::time::Duration::ZERO, cap: std::time::Duration::ZERO };

    /// The wait after the `attempts`-th consecutive failure (1-based).
    pub fn delay(self, attempts: u32) -> std::time::Duration {
        let doublings = attempts.saturating_sub(1).min(40);
        self.base.saturating_mul(1u32 << doublings.min(31)).min(self.cap)
    }
}

/// How hard [`crate::Store::wal_checkpoint`] tries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalCheckpoint {
    /// Copy what it can without waiting for readers; after each batch of writes.
    Passive,
    /// Wait for readers, copy everything and truncate the `-wal` file to zero; when idle.
    Truncate,
}
