//! Schema migrations keyed on `PRAGMA user_version`.
//!
//! Migration `i` (1-based) is `MIGRATIONS[i - 1]`, an SQL file under `crates/store/migrations/` embedded at
//! compile time. A file is never edited once it has landed, because databases in the field have already run it;
//! a schema change is a new file. Each migration runs in its own `BEGIN IMMEDIATE` transaction together with the
//! `user_version` bump, so a migration interrupted by a crash or an error rolls back entirely and the next open
//! runs it again.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use crate::error::{Result, StoreError};

/// `application_id` in the database header: "MTRE". Set by every migration, checked at every open.
pub(crate) const APPLICATION_ID: i32 = 0x4d54_5245;

/// The schema history, oldest first.
pub(crate) const MIGRATIONS: &[&str] =
    &[include_str!("../migrations/0001_init.sql"), include_str!("../migrations/0002_failure_backoff.sql")];

/// Schema version this build writes.
pub(crate) fn known_version(migrations: &[&str]) -> i64 {
    i64::try_from(migrations.len()).unwrap_or(i64::MAX)
}

pub(crate) fn user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT user_version FROM pragma_user_version", [], |r| r.get(0))
}

/// Brings the schema up to `migrations.len()`, refusing a database newer than that.
///
/// # Errors
/// [`StoreError::TooNew`] for a newer schema, [`StoreError::Corrupt`] for a negative one,
/// [`StoreError::Migration`] when a migration fails (it is rolled back; earlier ones stay applied),
/// [`StoreError::Open`] when the version cannot be read.
pub(crate) fn migrate(conn: &mut Connection, path: &Path, migrations: &[&str]) -> Result<()> {
    let known = known_version(migrations);
    let open_err = |source| StoreError::Open { path: path.to_path_buf(), source };
    let found = user_version(conn).map_err(open_err)?;
    check_version(path, found, known)?;
    for (index, sql) in migrations.iter().enumerate() {
        let version = i64::try_from(index).unwrap_or(i64::MAX).saturating_add(1);
        if version <= found {
            continue;
        }
        let migration_err = |source| StoreError::Migration { path: path.to_path_buf(), version, source };
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(migration_err)?;
        // Another process may have migrated while this one waited for the write lock.
        let current = user_version(&tx).map_err(migration_err)?;
        check_version(path, current, known)?;
        if current >= version {
            continue;
        }
        tx.execute_batch(sql).map_err(migration_err)?;
        tx.pragma_update(None, "user_version", version).map_err(migration_err)?;
        tx.pragma_update(None, "application_id", APPLICATION_ID).map_err(migration_err)?;
        tx.commit().map_err(migration_err)?;
    }
    Ok(())
}

pub(crate) fn check_version(path: &Path, found: i64, known: i64) -> Result<()> {
    if found < 0 {
        return Err(StoreError::Corrupt { path: path.to_path_buf(), report: format!("negative user_version {found}") });
    }
    if found > known {
        return Err(StoreError::TooNew { path: path.to_path_buf(), found, known });
    }
    Ok(())
}
