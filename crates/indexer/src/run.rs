//! The run bracket every writer goes through: take the single-instance lock, open the database, mark runs a dead
//! process left `running` as interrupted (once per process), then for each unit of work `begin_run` → work →
//! `finish_run` with its status and stats. `scan`, `crawl` and each daemon run are recorded this way, and nothing
//! else writes runs.

use std::path::Path;

use anyhow::Context;
use store::{RunId, RunKind, RunStatus, Store};

use crate::lock::InstanceLock;

/// What a finished unit of work says about itself in the runs table.
pub trait Report {
    /// `ok` unless the work says otherwise (a daemon run stopped half-way is `interrupted`).
    fn status(&self) -> RunStatus {
        RunStatus::Ok
    }

    /// Stored as the run's `stats_json`.
    fn stats_json(&self) -> serde_json::Value;
}

/// The only writer of a database while it lives: holds the lock and the store connection.
#[derive(Debug)]
pub struct Writer {
    store: Store,
    lock: InstanceLock,
}

impl Writer {
    /// Takes the lock beside `db` (creating the folder if needed), opens the database and marks stale runs
    /// interrupted.
    ///
    /// # Errors
    /// When another process holds the lock, or the database cannot be created, opened or written.
    pub fn open(db: &Path) -> anyhow::Result<Writer> {
        if let Some(parent) = db.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        // One writer per database: two would both crawl, and each would take the other's `running` run for a
        // dead one.
        let lock = InstanceLock::acquire(db)?;
        let mut store = Store::open(db).with_context(|| format!("cannot open the database {}", db.display()))?;
        let stale = store.interrupt_stale_runs().context("cannot mark stale runs")?;
        if stale > 0 {
            tracing::warn!(runs = stale, "runs left running by a process that died are now marked interrupted");
        }
        Ok(Writer { store, lock })
    }

    pub fn store(&mut self) -> &mut Store {
        &mut self.store
    }

    pub fn lock_path(&self) -> &Path {
        self.lock.path()
    }

    /// Starts recording a run.
    ///
    /// # Errors
    /// When the store cannot be written.
    pub fn begin(&mut self, kind: RunKind) -> anyhow::Result<RunId> {
        self.store.begin_run(kind).context("cannot start a run")
    }

    /// Records how a run ended: the report's status and stats, or `failed` with the error.
    ///
    /// # Errors
    /// When the store cannot be written.
    pub fn finish<T: Report>(&mut self, run: RunId, result: &anyhow::Result<T>) -> anyhow::Result<RunStatus> {
        let (status, stats) = match result {
            Ok(report) => (report.status(), report.stats_json()),
            Err(err) => (RunStatus::Failed, serde_json::json!({ "error": format!("{err:#}") })),
        };
        self.store.finish_run(run, status, Some(&stats.to_string())).context("cannot finish the run")?;
        Ok(status)
    }

    /// begin → `work` → finish, for synchronous work.
    ///
    /// # Errors
    /// The work's error (after it is recorded), or the store's.
    pub fn record<T: Report>(
        &mut self,
        kind: RunKind,
        work: impl FnOnce(&mut Store, RunId) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let run = self.begin(kind)?;
        let result = work(&mut self.store, run);
        self.finish(run, &result)?;
        result
    }

    /// begin → `work` → finish, for asynchronous work.
    ///
    /// # Errors
    /// The work's error (after it is recorded), or the store's.
    pub async fn record_async<T: Report>(
        &mut self,
        kind: RunKind,
        work: impl AsyncFnOnce(&mut Store, RunId) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let run = self.begin(kind)?;
        let result = work(&mut self.store, run).await;
        self.finish(run, &result)?;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Done(RunStatus);

    impl Report for Done {
        fn status(&self) -> RunStatus {
            self.0
        }

        fn stats_json(&self) -> serde_json::Value {
            serde_json::json!({ "done": true })
        }
    }

    #[test]
    fn runs_are_recorded_with_their_outcome_and_stale_ones_interrupted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("sub").join("m.db");
        let mut writer = Writer::open(&db).expect("open");
        assert!(Writer::open(&db).is_err(), "a second writer is refused");
        writer.record(RunKind::Scan, |_, _| Ok(Done(RunStatus::Ok))).expect("ok run");
        let err = writer.record(RunKind::Scan, |_, _| Err::<Done, _>(anyhow::anyhow!("boom")));
        assert!(err.is_err());
        // A run left `running` (as by a killed process) is marked interrupted by the next writer.
        writer.begin(RunKind::Crawl).expect("begin");
        drop(writer);
        let mut writer = Writer::open(&db).expect("reopen");
        let runs = writer.store().runs().expect("runs");
        let got: Vec<(&str, &str)> = runs.iter().map(|r| (r.kind.as_str(), r.status.as_str())).collect();
        assert_eq!(got, [("scan", "ok"), ("scan", "failed"), ("crawl", "interrupted")]);
        assert_eq!(runs[1].stats_json.as_deref(), Some(r#"{"error":"boom"}"#));
    }
}
