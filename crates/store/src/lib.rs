//! The modeltree store: one SQLite file holding models, their signatures, lineage solves and run bookkeeping.
//!
//! This is the only crate of the project that contains SQL. Everything else talks to [`Store`] through plain
//! Rust records ([`ModelRecord`], [`EdgeRecord`], …) and the `signature` crate's
//! [`signature::ModelSignature`]; the column encodings (little-endian f32 BLOBs, `64x128` shapes, lowercase enum
//! words) live in one module, `codec`.
//!
//! # Schema (`migrations/0001_init.sql`)
//! - `models`: one row per model id (`org/name`), with source, revision, card and config essentials and a
//!   `status` (`indexed | failed | vanished`). `model_base_models`, `model_architectures` and `files` hold its
//!   lists, keyed `(model, position)` or `(model, path)`.
//! - `schemes` → `signatures` (at most one per model) → `tensors` (one per tensor, `UNIQUE(model, name)`):
//!   dtype, shape, byte length, blake3 content hash, value source, moments, sketch and samples.
//! - `runs` (scan, crawl, daemon), `solves` (one per completed lineage solve) → `edges`; the current lineage is
//!   the edge set of the solve with the greatest id. The last [`KEEP_SOLVES`] solves are kept as history.
//! - `failures` (one row per model that failed and has not indexed since, with its attempt count) and
//!   `checkpoints` (key → value, for crawl resumption).
//!
//! # Invariants
//! - **One writer, one transaction per change.** Every write runs in its own `BEGIN IMMEDIATE` transaction: a
//!   model's row, lists, files, signature and tensor rows, and the clearing of its failure commit together in
//!   [`Store::put_indexed`], so a crash leaves either the old model or the new one, never a mix. Readers in other
//!   processes see whole commits (WAL).
//! - **Nothing duplicated.** Every table has a UNIQUE key on what it describes, and re-putting identical data
//!   changes nothing observable (not even `updated`).
//! - **Nothing silently lost.** A model that once indexed and then fails keeps its last signature and is marked
//!   `failed`; its failure row counts attempts until it indexes again. A vanished model keeps its rows.
//! - **The file is ours.** [`Store::open`] refuses a SQLite file with another `application_id`, a schema newer
//!   than this build, or one that fails `quick_check`. Migrations are never edited once landed.
//! - **Reading writes nothing.** [`Store::open_read_only`] opens an existing file with SQLite's read-only flag and
//!   `query_only`: it neither creates, configures nor migrates, so a database on read-only media, or owned by
//!   another user, can be read. It makes the same identity and `quick_check` checks and refuses a schema that is
//!   not exactly this build's.
//! - **Bit-exact floats.** Sketches and samples are little-endian f32 BLOBs; moments are REAL columns, where a
//!   NaN (which SQLite cannot store) is written as NULL and read back as NaN.
//! - Durability: WAL with `synchronous=FULL`, so a commit that returned survives a crash and, as far as the disk
//!   honours fsync, a power loss.

mod codec;
mod error;
mod migrate;
mod models;
mod runs;
mod types;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, Transaction, TransactionBehavior};

pub use error::{Result, StoreError};
pub use types::{
    EdgeRecord, EdgeSource, FailureRecord, FileRecord, ModelRecord, ModelStatus, RetryPolicy, RunId, RunKind,
    RunRecord, RunStatus, SolveRecord, StoredModel, WalCheckpoint,
};

use error::Context;

/// How long a connection waits for another one's lock before giving up with `SQLITE_BUSY`. Writes are short
/// (one model), so anything longer than this means a stuck process, not contention.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Page size of new databases.
const PAGE_SIZE: i64 = 16 * 1024;

/// How many lineage solves are kept; older ones are deleted by [`Store::replace_edges`] so a daemon's history
/// does not grow without bound.
pub const KEEP_SOLVES: i64 = 16;

/// SQL for "now" in the schema's timestamp format (UTC, millisecond precision).
macro_rules! now {
    () => {
        "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
    };
}
pub(crate) use now;

/// An open modeltree database. Owns one connection; writes take `&mut self`, so one `Store` is one writer.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl Store {
    /// Opens (creating if absent) the database at `path`, checks it is ours and intact, and migrates it.
    ///
    /// Sets WAL mode, `synchronous=FULL`, `foreign_keys=ON` and a busy timeout; runs `PRAGMA quick_check`.
    ///
    /// # Errors
    /// - [`StoreError::Open`] when the file cannot be opened or configured;
    /// - [`StoreError::NotADatabase`] when it is not a SQLite file;
    /// - [`StoreError::ForeignDatabase`] when it belongs to another program;
    /// - [`StoreError::TooNew`] when its schema is newer than this build;
    /// - [`StoreError::NotWal`] when WAL cannot be enabled;
    /// - [`StoreError::Corrupt`] when `quick_check` fails;
    /// - [`StoreError::Migration`] when a migration fails (it is rolled back).
    pub fn open(path: impl AsRef<Path>) -> Result<Store> {
        Store::open_with(path.as_ref(), migrate::MIGRATIONS)
    }

    /// Opens the existing database at `path` for reading only: nothing is created, configured, migrated or
    /// written (the connection is `query_only`; a write through it fails with [`StoreError::Sqlite`]). For commands
    /// that only read, so that a database they cannot write (read-only media, another user's file) still opens.
    ///
    /// # Errors
    /// - [`StoreError::Open`] when the file does not exist or cannot be opened;
    /// - [`StoreError::NotADatabase`] when it is not a SQLite file;
    /// - [`StoreError::ForeignDatabase`] when it belongs to another program;
    /// - [`StoreError::TooOld`] when its schema is older than this build's (including a new, empty file), since
    ///   reading does not migrate;
    /// - [`StoreError::TooNew`] when its schema is newer than this build;
    /// - [`StoreError::Corrupt`] when `quick_check` fails.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Store> {
        let path = path.as_ref();
        let open_err = |source| open_error(path, source);
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        conn.pragma_update(None, "query_only", true).map_err(open_err)?;
        check_identity(&conn, path)?;
        let known = migrate::known_version(migrate::MIGRATIONS);
        let found = migrate::user_version(&conn).map_err(open_err)?;
        migrate::check_version(path, found, known)?;
        if found < known {
            return Err(StoreError::TooOld { path: path.to_path_buf(), found, known });
        }
        let report = pragma_report(&conn, "quick_check").map_err(open_err)?;
        if report != "ok" {
            return Err(StoreError::Corrupt { path: path.to_path_buf(), report });
        }
        Ok(Store { conn, path: path.to_path_buf() })
    }

    fn open_with(path: &Path, migrations: &[&str]) -> Result<Store> {
        let open_err = |source| open_error(path, source);
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        check_identity(&conn, path)?;
        // Only takes effect on a new file (an existing one keeps its page size). Sketches and samples are BLOBs
        // of several KiB; with 16 KiB pages most fit in one or two overflow pages, which made writes ~25% and
        // streaming reads ~2× faster than 4 KiB pages in `examples/load_bench.rs`.
        conn.pragma_update(None, "page_size", PAGE_SIZE).map_err(open_err)?;
        let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0)).map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::NotWal { path: path.to_path_buf(), mode });
        }
        conn.pragma_update(None, "synchronous", "FULL").map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", true).map_err(open_err)?;
        let report = pragma_report(&conn, "quick_check").map_err(open_err)?;
        if report != "ok" {
            return Err(StoreError::Corrupt { path: path.to_path_buf(), report });
        }
        migrate::migrate(&mut conn, path, migrations)?;
        Ok(Store { conn, path: path.to_path_buf() })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `PRAGMA integrity_check` and `PRAGMA foreign_key_check`; returns `"ok"` when both are clean, or
    /// their findings, one per line.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`] when the checks cannot run (a database damaged badly enough also lands here).
    pub fn integrity_check(&self) -> Result<String> {
        let mut lines = Vec::new();
        let integrity = pragma_report(&self.conn, "integrity_check").op("integrity check")?;
        if integrity != "ok" {
            lines.push(integrity);
        }
        let mut stmt = self.conn.prepare("PRAGMA foreign_key_check").op("foreign key check")?;
        let violations = stmt
            .query_map([], |r| {
                let table: String = r.get(0)?;
                let rowid: Option<i64> = r.get(1)?;
                let parent: String = r.get(2)?;
                Ok(format!("foreign key violation: {table} row {rowid:?} has no parent in {parent}"))
            })
            .op("foreign key check")?;
        for v in violations {
            lines.push(v.op("foreign key check")?);
        }
        Ok(if lines.is_empty() { "ok".to_string() } else { lines.join("\n") })
    }

    /// Copies committed pages from the `-wal` file into the database. [`WalCheckpoint::Passive`] after a batch
    /// of writes keeps the WAL small; [`WalCheckpoint::Truncate`] when idle empties it. Returns the WAL size in
    /// pages and how many of them were checkpointed.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`] when the checkpoint fails.
    pub fn wal_checkpoint(&self, mode: WalCheckpoint) -> Result<(i64, i64)> {
        let sql = match mode {
            WalCheckpoint::Passive => "PRAGMA wal_checkpoint(PASSIVE)",
            WalCheckpoint::Truncate => "PRAGMA wal_checkpoint(TRUNCATE)",
        };
        self.conn.query_row(sql, [], |r| Ok((r.get(1)?, r.get(2)?))).op("wal checkpoint")
    }

    /// The value stored under a checkpoint key.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`] when the read fails.
    pub fn get_checkpoint(&self, key: &str) -> Result<Option<String>> {
        use rusqlite::OptionalExtension;
        self.conn
            .query_row("SELECT value FROM checkpoints WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .op("read checkpoint")
    }

    /// Stores `value` under `key`, replacing any previous value, in its own durable transaction.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`] when the write fails.
    pub fn set_checkpoint(&mut self, key: &str, value: &str) -> Result<()> {
        let tx = self.write_tx().op("write checkpoint")?;
        tx.execute(
            "INSERT INTO checkpoints (key, value) VALUES (?1, ?2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [key, value],
        )
        .op("write checkpoint")?;
        tx.commit().op("write checkpoint")
    }

    /// Every write goes through an immediate transaction: it takes the write lock up front (waiting up to the
    /// busy timeout), so it can never fail half-way with `SQLITE_BUSY` when upgrading a read lock.
    fn write_tx(&mut self) -> rusqlite::Result<Transaction<'_>> {
        self.conn.transaction_with_behavior(TransactionBehavior::Immediate)
    }

    /// A read transaction, so that reads made of several statements see one snapshot.
    fn read_tx(&self) -> rusqlite::Result<Transaction<'_>> {
        self.conn.unchecked_transaction()
    }
}

/// Refuses files that are not ours before anything is written to them.
fn check_identity(conn: &Connection, path: &Path) -> Result<()> {
    let open_err = |source| open_error(path, source);
    let application_id: i32 =
        conn.query_row("SELECT application_id FROM pragma_application_id", [], |r| r.get(0)).map_err(open_err)?;
    if application_id == migrate::APPLICATION_ID {
        return Ok(());
    }
    if application_id != 0 {
        return Err(StoreError::ForeignDatabase { path: path.to_path_buf(), application_id });
    }
    // Our first migration sets the application id in the same transaction that creates the tables, so a file
    // with tables or a schema version but no application id was written by someone else.
    let objects: i64 = conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0)).map_err(open_err)?;
    let version = migrate::user_version(conn).map_err(open_err)?;
    if objects > 0 || version != 0 {
        return Err(StoreError::ForeignDatabase { path: path.to_path_buf(), application_id });
    }
    Ok(())
}

/// Classifies an error met while opening: damage and non-database files get their own variants, so the caller
/// can tell "restore a backup" from "wrong path".
fn open_error(path: &Path, source: rusqlite::Error) -> StoreError {
    match source.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => StoreError::NotADatabase { path: path.to_path_buf() },
        Some(ErrorCode::DatabaseCorrupt) => {
            StoreError::Corrupt { path: path.to_path_buf(), report: source.to_string() }
        }
        _ => StoreError::Open { path: path.to_path_buf(), source },
    }
}

/// The rows of a checking pragma joined by newlines (`"ok"` when clean).
fn pragma_report(conn: &Connection, pragma: &str) -> rusqlite::Result<String> {
    let mut lines = Vec::new();
    conn.pragma_query(None, pragma, |r| {
        lines.push(r.get::<_, String>(0)?);
        Ok(())
    })?;
    Ok(lines.join("\n"))
}

#[cfg(test)]
mod test_support;

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::time::Instant;

    use super::*;
    use crate::test_support::{Rng, assert_bit_equal, generation, generation_of};

    fn db_in(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("store.db")
    }

    fn pragma_i64(conn: &Connection, name: &str) -> i64 {
        conn.query_row(&format!("SELECT * FROM pragma_{name}"), [], |r| r.get(0)).expect("pragma")
    }

    #[test]
    fn open_creates_configures_and_reopens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = db_in(&dir);
        {
            let mut store = Store::open(&path).expect("create");
            assert_eq!(store.path(), path);
            assert_eq!(pragma_i64(&store.conn, "user_version"), 2);
            assert_eq!(pragma_i64(&store.conn, "application_id"), i64::from(migrate::APPLICATION_ID));
            assert_eq!(pragma_i64(&store.conn, "foreign_keys"), 1);
            assert_eq!(pragma_i64(&store.conn, "synchronous"), 2, "FULL");
            assert_eq!(pragma_i64(&store.conn, "page_size"), PAGE_SIZE);
            let mode: String = store.conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).expect("mode");
            assert_eq!(mode, "wal");
            store.set_checkpoint("crawl/cursor", "abc").expect("set");
            store.set_checkpoint("crawl/cursor", "def").expect("set");
            assert_eq!(store.integrity_check().expect("check"), "ok");
        }
        let store = Store::open(&path).expect("reopen");
        assert_eq!(pragma_i64(&store.conn, "user_version"), 2);
        assert_eq!(store.get_checkpoint("crawl/cursor").expect("get").as_deref(), Some("def"));
        assert_eq!(store.get_checkpoint("other").expect("get"), None);
        let tables: i64 = store
            .conn
            .query_row("SELECT count(*) FROM sqlite_schema WHERE type = 'table'", [], |r| r.get(0))
            .expect("count");
        assert_eq!(tables, 13, "12 tables and sqlite_sequence");
    }

    #[test]
    fn wal_checkpoint_empties_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(db_in(&dir)).expect("open");
        for i in 0..50 {
            store.set_checkpoint(&format!("k{i}"), "v").expect("set");
        }
        let (log, done) = store.wal_checkpoint(WalCheckpoint::Passive).expect("passive");
        assert!(log > 0 && done == log, "{log} {done}");
        store.wal_checkpoint(WalCheckpoint::Truncate).expect("truncate");
        let wal = std::fs::metadata(dir.path().join("store.db-wal")).expect("wal exists");
        assert_eq!(wal.len(), 0);
    }

    /// Creates a plain SQLite file with the given header fields and optionally a table.
    fn foreign_file(path: &Path, application_id: i32, user_version: i64, table: bool) {
        let conn = Connection::open(path).expect("create");
        conn.pragma_update(None, "application_id", application_id).expect("set id");
        conn.pragma_update(None, "user_version", user_version).expect("set version");
        if table {
            conn.execute_batch("CREATE TABLE theirs (x)").expect("create table");
        }
    }

    #[test]
    fn foreign_databases_are_refused_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let check = |name: &str, application_id: i32, user_version: i64, table: bool, expected: &str| {
            let path = dir.path().join(name);
            foreign_file(&path, application_id, user_version, table);
            let before = std::fs::read(&path).expect("read");
            let err = Store::open(&path).expect_err("must refuse");
            assert!(matches!(err, StoreError::ForeignDatabase { .. }), "{err:?}");
            assert_eq!(err.to_string(), format!("{} {expected}", path.display()));
            assert_eq!(std::fs::read(&path).expect("read"), before, "refused file was modified");
        };
        check(
            "other-app.db",
            0x1234_5678,
            0,
            false,
            "is not a modeltree database (application_id 0x12345678); refusing to touch it",
        );
        check(
            "other-app-tables.db",
            -1,
            3,
            true,
            "is not a modeltree database (application_id 0xffffffff); refusing to touch it",
        );
        check(
            "plain-with-table.db",
            0,
            0,
            true,
            "is not a modeltree database (application_id 0x00000000); refusing to touch it",
        );
        check(
            "plain-with-version.db",
            0,
            2,
            false,
            "is not a modeltree database (application_id 0x00000000); refusing to touch it",
        );
    }

    #[test]
    fn non_sqlite_files_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notes.txt");
        let text = b"these are not the pages you are looking for, and this line is long enough to fill a header.";
        std::fs::write(&path, text).expect("write");
        let err = Store::open(&path).expect_err("must refuse");
        assert!(matches!(err, StoreError::NotADatabase { .. }), "{err:?}");
        assert_eq!(std::fs::read(&path).expect("read"), text);

        let missing = dir.path().join("no/such/dir/store.db");
        assert!(matches!(Store::open(&missing), Err(StoreError::Open { .. })));
    }

    #[test]
    fn version_1_upgrades_with_its_failures_due() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = db_in(&dir);
        {
            let store = Store::open_with(&path, &migrate::MIGRATIONS[..1]).expect("create v1");
            store
                .conn
                .execute(
                    "INSERT INTO failures (model_id, source, path, error, attempts, first_at, last_at) \
                     VALUES ('a/b', 'hub', 'c', 'e', 3, 'x', 'y')",
                    [],
                )
                .expect("insert");
        }
        let store = Store::open(&path).expect("upgrade");
        assert_eq!(pragma_i64(&store.conn, "user_version"), 2);
        let due = store.due_failures("hub").expect("due");
        assert_eq!((due.len(), due[0].attempts, due[0].next_retry_at.clone()), (1, 3, None));
    }

    #[test]
    fn newer_schemas_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = db_in(&dir);
        drop(Store::open(&path).expect("create"));
        Connection::open(&path).expect("raw").pragma_update(None, "user_version", 3).expect("bump");
        let err = Store::open(&path).expect_err("too new");
        assert_eq!(
            err.to_string(),
            format!("{} has schema version 3, newer than the 2 this build knows; upgrade modeltree", path.display())
        );
        Connection::open(&path).expect("raw").pragma_update(None, "user_version", -5).expect("negative");
        assert!(matches!(Store::open(&path), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn a_failing_migration_rolls_back_and_reruns() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = db_in(&dir);
        {
            let mut store = Store::open_with(&path, &migrate::MIGRATIONS[..1]).expect("create");
            store.set_checkpoint("k", "v").expect("set");
        }
        // A second migration whose last statement fails: its first statement must not survive.
        let broken = [migrate::MIGRATIONS[0], "CREATE TABLE extra (x INTEGER); INSERT INTO missing VALUES (1);"];
        let err = Store::open_with(&path, &broken).expect_err("migration fails");
        assert!(matches!(err, StoreError::Migration { version: 2, .. }), "{err:?}");
        let store = Store::open_with(&path, &migrate::MIGRATIONS[..1]).expect("still version 1");
        assert_eq!(pragma_i64(&store.conn, "user_version"), 1);
        let extra: i64 = store
            .conn
            .query_row("SELECT count(*) FROM sqlite_schema WHERE name = 'extra'", [], |r| r.get(0))
            .expect("count");
        assert_eq!(extra, 0);
        drop(store);

        let fixed = [migrate::MIGRATIONS[0], "CREATE TABLE extra (x INTEGER); INSERT INTO extra VALUES (1);"];
        let store = Store::open_with(&path, &fixed).expect("migrates");
        assert_eq!(pragma_i64(&store.conn, "user_version"), 2);
        assert_eq!(store.get_checkpoint("k").expect("get").as_deref(), Some("v"));
        drop(store);
        // And a build knowing only version 1 now refuses the file.
        assert!(matches!(
            Store::open_with(&path, &migrate::MIGRATIONS[..1]),
            Err(StoreError::TooNew { found: 2, known: 1, .. })
        ));
    }

    #[test]
    fn damaged_pages_are_detected_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = db_in(&dir);
        {
            let mut store = Store::open(&path).expect("create");
            let sig = test_support::random_signature(&mut Rng::new(3), test_support::odd_scheme(), 20);
            store.put_indexed(&test_support::full_record("m", "r"), &sig).expect("put");
            store.wal_checkpoint(WalCheckpoint::Truncate).expect("checkpoint");
        }
        // Page 2 is the root of the first table created (`models`); give it an impossible b-tree page type.
        let mut bytes = std::fs::read(&path).expect("read");
        let page_size = usize::from(u16::from_be_bytes([bytes[16], bytes[17]]));
        bytes[page_size] = 0x42;
        std::fs::write(&path, &bytes).expect("write");
        let err = Store::open(&path).expect_err("damage found");
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    }

    /// The names in `dir`, sorted.
    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// A database with one model and a checkpoint, its WAL checkpointed and closed.
    fn small_database(path: &Path) {
        let mut store = Store::open(path).expect("create");
        let sig = test_support::random_signature(&mut Rng::new(5), test_support::odd_scheme(), 8);
        store.put_indexed(&test_support::full_record("org/m", "r1"), &sig).expect("put");
        store.set_checkpoint("k", "v").expect("set");
        store.wal_checkpoint(WalCheckpoint::Truncate).expect("checkpoint");
    }

    /// Issue #11: a database that cannot be written could not even be read, because `open` configures and
    /// migrates it. `open_read_only` reads it and writes nothing to it. The file and its folder are made read-only
    /// (which stops any user but root from writing them).
    #[test]
    fn issue_11_read_only_open_reads_and_writes_nothing() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = db_in(&dir);
        small_database(&path);
        let (bytes, names) = (std::fs::read(&path).expect("read"), listing(dir.path()));
        let mode = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod");
        mode(&path, 0o444);
        mode(dir.path(), 0o555);
        let got = Store::open_read_only(&path).and_then(|mut store| {
            let models = store.models()?;
            let checkpoint = store.get_checkpoint("k")?;
            let write = store.set_checkpoint("k", "w");
            Ok((models.len(), checkpoint, write))
        });
        mode(dir.path(), 0o755);
        let (models, checkpoint, write) = got.expect("a read-only database reads");
        assert_eq!((models, checkpoint.as_deref()), (1, Some("v")));
        assert!(matches!(write, Err(StoreError::Sqlite { .. })), "{write:?}");
        assert_eq!(std::fs::read(&path).expect("read"), bytes, "the file is unchanged");
        // A WAL reader that may create them makes the `-shm` index and an empty `-wal` (SQLite's read protocol,
        // not a write of data); nothing else appears and no frame is written.
        let new: Vec<String> = listing(dir.path()).into_iter().filter(|n| !names.contains(n)).collect();
        assert!(new.iter().all(|n| n == "store.db-shm" || n == "store.db-wal"), "{new:?}");
        let wal = std::fs::metadata(dir.path().join("store.db-wal")).map_or(0, |m| m.len());
        assert_eq!(wal, 0, "nothing was written to the log");
        let missing = dir.path().join("missing.db");
        assert!(matches!(Store::open_read_only(&missing), Err(StoreError::Open { .. })));
        assert!(!missing.exists(), "a read-only open creates nothing");
    }

    #[test]
    fn issue_11_read_only_open_refuses_other_schemas_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = db_in(&dir);
        drop(Store::open_with(&path, &migrate::MIGRATIONS[..1]).expect("create v1"));
        let before = std::fs::read(&path).expect("read");
        let err = Store::open_read_only(&path).expect_err("too old");
        assert!(matches!(err, StoreError::TooOld { found: 1, known: 2, .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "{} has schema version 1, older than the 2 this build reads; a writing command (scan, crawl) \
                 migrates it",
                path.display()
            )
        );
        assert_eq!(std::fs::read(&path).expect("read"), before, "not migrated");
        // A new, empty file is not a store yet.
        let empty = dir.path().join("empty.db");
        std::fs::write(&empty, b"").expect("write");
        assert!(matches!(Store::open_read_only(&empty), Err(StoreError::TooOld { found: 0, .. })));
        assert_eq!(std::fs::read(&empty).expect("read"), b"");
        // Newer and negative versions, as `open` refuses them.
        drop(Store::open(&path).expect("migrate"));
        Connection::open(&path).expect("raw").pragma_update(None, "user_version", 3).expect("bump");
        assert!(matches!(Store::open_read_only(&path), Err(StoreError::TooNew { found: 3, known: 2, .. })));
        Connection::open(&path).expect("raw").pragma_update(None, "user_version", -5).expect("negative");
        assert!(matches!(Store::open_read_only(&path), Err(StoreError::Corrupt { .. })));
    }

    /// Issue #11: a damaged file is refused at open with a variant that says what it is, by both opens, and left
    /// as it was: garbage, a SQLite header followed by garbage, a store cut short, another program's database.
    #[test]
    fn issue_11_corrupted_files_are_detected_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = dir.path().join("good.db");
        small_database(&good);
        let store_bytes = std::fs::read(&good).expect("read");
        let mut rng = Rng::new(11);
        let garbage: Vec<u8> = (0..64 << 10).map(|_| rng.below(256) as u8).collect();
        let magic_then_garbage = [b"SQLite format 3\0".as_slice(), &garbage].concat();
        let other_app = dir.path().join("other.db");
        foreign_file(&other_app, 0x1234_5678, 1, true);
        #[derive(Debug)]
        enum Want {
            NotADatabase,
            Corrupt,
            Foreign,
        }
        let cases: Vec<(&str, Vec<u8>, Want)> = vec![
            ("garbage", garbage.clone(), Want::NotADatabase),
            ("sqlite magic then garbage", magic_then_garbage, Want::NotADatabase),
            ("store cut in half", store_bytes[..store_bytes.len() / 2].to_vec(), Want::Corrupt),
            ("store cut to its first page", store_bytes[..16 << 10].to_vec(), Want::Corrupt),
            ("another program's database", std::fs::read(&other_app).expect("read"), Want::Foreign),
        ];
        for (name, bytes, want) in &cases {
            let path = dir.path().join(format!("{}.db", name.replace(' ', "-")));
            for read_only in [false, true] {
                std::fs::write(&path, bytes).expect("write");
                let got = if read_only { Store::open_read_only(&path) } else { Store::open(&path) };
                let ok = matches!(
                    (&got, want),
                    (Err(StoreError::NotADatabase { .. }), Want::NotADatabase)
                        | (Err(StoreError::Corrupt { .. }), Want::Corrupt)
                        | (Err(StoreError::ForeignDatabase { .. }), Want::Foreign)
                );
                assert!(ok, "{name} (read_only {read_only}): expected {want:?}, got {got:?}");
                assert_eq!(&std::fs::read(&path).expect("read"), bytes, "{name}: the refused file was modified");
            }
        }
    }

    /// Set in the child processes of `sigkill_leaves_whole_models_only` to the database they write.
    const CRASH_DB_ENV: &str = "MODELTREE_STORE_CRASH_DB";
    /// The first generation number the child uses, so every child writes generations no other child wrote.
    const CRASH_GEN_ENV: &str = "MODELTREE_STORE_CRASH_GEN";
    const CRASH_MODELS: u64 = 12;
    const READY: &str = "crash-writer ready";

    /// Writes models (and now and then a failure or a lineage solve) in a loop, as the crash test's victim.
    fn write_generations(path: &Path, first: u64, count: u64, deadline: Instant) {
        let mut store = Store::open(path).expect("open");
        let run = store.begin_run(RunKind::Scan).expect("begin run");
        for g in first..first.saturating_add(count) {
            let id = format!("org/m{:02}", g % CRASH_MODELS);
            let (rec, sig) = generation(&id, g);
            store.put_indexed(&rec, &sig).expect("put");
            if g == first {
                // libtest prints this after "test tests::crash_writer ... " on the same line.
                println!("{READY}");
            }
            if g % 5 == 0 {
                store.record_failure(&id, "/src", "model.safetensors", &format!("gen {g} failed")).expect("fail");
            }
            if g % 7 == 0 {
                // Every edge of one solve names its generation, and the count is a function of it.
                let edges: Vec<EdgeRecord> = (0..1 + g % 9)
                    .map(|i| EdgeRecord {
                        parent: format!("p{i}"),
                        child: format!("c{i}"),
                        relation: format!("gen-{g}"),
                        confidence: 0.5,
                        source: EdgeSource::Weights,
                    })
                    .collect();
                store.replace_edges(run, "crash", &edges).expect("edges");
            }
            if Instant::now() > deadline {
                break;
            }
        }
    }

    /// What a reader must find after any crash: an intact file, and every model exactly as one generation wrote
    /// it. Returns the greatest generation found.
    fn verify_whole(path: &Path) -> u64 {
        let store = Store::open(path).expect("reopen after crash");
        assert_eq!(store.integrity_check().expect("check"), "ok");
        let mut newest = 0;
        for m in store.models().expect("models") {
            let g = generation_of(&m.record.revision).expect("crash-test revision");
            let (rec, sig) = generation(&m.record.id, g);
            assert_eq!(m.record, rec, "model row of {} mixes generations", m.record.id);
            let stored = store.signature(&m.record.id).expect("read").expect("signature");
            assert_eq!(stored.tensors.len(), sig.tensors.len(), "{} is partial", m.record.id);
            assert_bit_equal(&stored, &sig);
            newest = newest.max(g);
        }
        let edges = store.current_edges().expect("edges");
        if let Some(solve) = store.current_solve().expect("solve") {
            let g = generation_of(&edges[0].relation).expect("generation");
            assert_eq!(edges.len() as u64, 1 + g % 9, "partial edge set");
            assert_eq!(solve.edge_count, edges.len() as u64);
            assert!(edges.iter().all(|e| e.relation == edges[0].relation), "mixed edge sets");
        }
        newest
    }

    /// The crash test's child when `MODELTREE_STORE_CRASH_DB` is set (it writes until it is killed, or for at
    /// most a minute should its parent be gone). Run on its own, it writes a few generations and checks them, so
    /// it tests the same path either way.
    #[test]
    fn crash_writer() {
        match (std::env::var_os(CRASH_DB_ENV), std::env::var(CRASH_GEN_ENV)) {
            (Some(path), Ok(first)) => {
                let first = first.parse().expect("generation");
                let deadline = Instant::now() + Duration::from_secs(60);
                write_generations(Path::new(&path), first, u64::MAX, deadline);
            }
            _ => {
                let dir = tempfile::tempdir().expect("tempdir");
                let path = db_in(&dir);
                write_generations(&path, 1, 40, Instant::now() + Duration::from_secs(600));
                assert_eq!(verify_whole(&path), 40);
                assert_eq!(Store::open(&path).expect("open").models().expect("models").len() as u64, CRASH_MODELS);
            }
        }
    }

    /// SIGKILLs a writer at random points, again and again, and checks after each kill that the file is intact and
    /// holds only whole models. Even rounds kill after the child has committed its first model, at a random moment
    /// of its write loop; odd rounds kill at a random moment from its start, which may fall inside `open` (and the
    /// first round inside the migration).
    #[test]
    fn sigkill_leaves_whole_models_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = db_in(&dir);
        let exe = std::env::current_exe().expect("test binary");
        let mut rng = Rng::new(u64::from(std::process::id()) ^ 0x5eed);
        const ROUNDS: u64 = 10;
        let mut progressed = 0;
        for round in 0..ROUNDS {
            let first = (round + 1) * 1_000_000;
            let wait_for_ready = round % 2 == 1;
            let mut child = Command::new(&exe)
                .args(["--exact", "tests::crash_writer", "--nocapture", "--test-threads", "1"])
                .env(CRASH_DB_ENV, &path)
                .env(CRASH_GEN_ENV, first.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn writer");
            let stdout = child.stdout.take().expect("piped stdout");
            if wait_for_ready {
                let ready = BufReader::new(stdout).lines().map_while(|l| l.ok()).any(|l| l.ends_with(READY));
                assert!(ready, "round {round}: the writer died before writing");
            }
            std::thread::sleep(Duration::from_millis(rng.below(if wait_for_ready { 300 } else { 60 })));
            child.kill().expect("SIGKILL");
            child.wait().expect("reap");
            let newest = verify_whole(&path);
            if wait_for_ready {
                assert!(newest >= first, "round {round}: no write of this round survived ({newest} < {first})");
            }
            if newest >= first {
                progressed += 1;
            }
        }
        assert!(progressed >= ROUNDS / 2);
    }
}
