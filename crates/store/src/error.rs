//! [`StoreError`]: every way the store can fail, with the context needed to act on it.

use std::path::PathBuf;

use crate::RunId;

/// Errors of the store. Messages are lowercase and name the database file, the model or the run concerned.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file could not be opened or configured as a SQLite database (missing directory, permissions, not a
    /// SQLite file at all, a failing pragma).
    #[error("cannot open database {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// The file exists but is not a SQLite database at all.
    #[error("{path} is not a sqlite database; refusing to touch it")]
    NotADatabase { path: PathBuf },
    /// The file is a SQLite database that belongs to another program: another non-zero `application_id`, or no
    /// `application_id` but tables of its own.
    #[error("{path} is not a modeltree database (application_id {application_id:#010x}); refusing to touch it")]
    ForeignDatabase { path: PathBuf, application_id: i32 },
    /// [`crate::Store::open_read_only`] found a schema older than this build's (or none: a new or empty file);
    /// it does not migrate, so a command that writes must open the file once first.
    #[error(
        "{path} has schema version {found}, older than the {known} this build reads; a writing command (scan, \
         crawl) migrates it"
    )]
    TooOld { path: PathBuf, found: i64, known: i64 },
    /// The file was written by a newer modeltree, whose schema this build does not know.
    #[error("{path} has schema version {found}, newer than the {known} this build knows; upgrade modeltree")]
    TooNew { path: PathBuf, found: i64, known: i64 },
    /// `PRAGMA quick_check` found damage.
    #[error("{path} is damaged (quick_check: {report}); restore it from a backup")]
    Corrupt { path: PathBuf, report: String },
    /// The journal mode could not be switched to WAL (for example on a network file system).
    #[error("{path} cannot use write-ahead logging (journal_mode is {mode})")]
    NotWal { path: PathBuf, mode: String },
    /// A migration failed; it was rolled back and the schema is still at `version - 1`.
    #[error("migration to schema version {version} failed on {path}")]
    Migration {
        path: PathBuf,
        version: i64,
        #[source]
        source: rusqlite::Error,
    },
    /// A statement failed during `op`.
    #[error("{op} failed")]
    Sqlite {
        op: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    /// Writing one model failed; nothing of it was written.
    #[error("cannot store model {model}")]
    Write {
        model: String,
        #[source]
        source: rusqlite::Error,
    },
    /// A record handed to the store breaks an invariant of the schema; nothing was written.
    #[error("model {model} is not storable: {reason}")]
    Invalid { model: String, reason: String },
    /// A stored row does not decode: the file was altered outside this crate.
    #[error("stored data of {model} is malformed: {reason}")]
    Malformed { model: String, reason: String },
    /// `finish_run` named a run that does not exist or has already finished.
    #[error("run {0} is not running")]
    RunNotRunning(RunId),
    /// `finish_run` was asked to finish a run as `running`.
    #[error("a run cannot finish with status running")]
    FinishAsRunning,
}

/// Shorthand for results of this crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Attaches the operation name to a rusqlite error.
pub(crate) trait Context<T> {
    fn op(self, op: &'static str) -> Result<T>;
}

impl<T> Context<T> for rusqlite::Result<T> {
    fn op(self, op: &'static str) -> Result<T> {
        self.map_err(|source| StoreError::Sqlite { op, source })
    }
}
