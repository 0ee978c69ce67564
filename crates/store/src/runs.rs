//! Runs and lineage solves.
//!
//! A run ([`Store::begin_run`] … [`Store::finish_run`]) brackets one scan, crawl or daemon cycle. Each lineage
//! solve writes its whole edge set with [`Store::replace_edges`] in one transaction; the current lineage is the
//! latest solve's edge set, and the [`KEEP_SOLVES`] most recent solves are kept as history.

use rusqlite::{OptionalExtension, params};

use crate::error::{Context, Result, StoreError};
use crate::types::{EdgeRecord, EdgeSource, RunId, RunKind, RunRecord, RunStatus, SolveRecord};
use crate::{KEEP_SOLVES, Store, now};

impl Store {
    /// Starts a run with status `running` and returns its id.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`] when the write fails.
    pub fn begin_run(&mut self, kind: RunKind) -> Result<RunId> {
        let tx = self.write_tx().op("begin run")?;
        let id = tx
            .query_row(
                concat!(
                    "INSERT INTO runs (kind, started_at, status) VALUES (?1, ",
                    now!(),
                    ", 'running') RETURNING id"
                ),
                [kind.as_str()],
                |r| r.get(0),
            )
            .op("begin run")?;
        tx.commit().op("begin run")?;
        Ok(RunId(id))
    }

    /// Finishes a running run with `status` and optional statistics (JSON text).
    ///
    /// # Errors
    /// [`StoreError::FinishAsRunning`] for `status` [`RunStatus::Running`]; [`StoreError::RunNotRunning`] for an
    /// unknown or already finished run; [`StoreError::Sqlite`] when the write fails, including `stats_json` that
    /// is not valid JSON.
    pub fn finish_run(&mut self, id: RunId, status: RunStatus, stats_json: Option<&str>) -> Result<()> {
        if status == RunStatus::Running {
            return Err(StoreError::FinishAsRunning);
        }
        let tx = self.write_tx().op("finish run")?;
        let changed = tx
            .execute(
                concat!(
                    "UPDATE runs SET status = ?2, stats_json = ?3, finished_at = ",
                    now!(),
                    " WHERE id = ?1 AND status = 'running'"
                ),
                params![id.0, status.as_str(), stats_json],
            )
            .op("finish run")?;
        if changed == 0 {
            return Err(StoreError::RunNotRunning(id));
        }
        tx.commit().op("finish run")
    }

    /// Marks every run still `running` as `interrupted`: their processes died without finishing them. Call it only
    /// while holding the single-instance lock, when no other process can be running one. Returns how many.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`] when the write fails.
    pub fn interrupt_stale_runs(&mut self) -> Result<usize> {
        let tx = self.write_tx().op("interrupt stale runs")?;
        let n = tx
            .execute(
                concat!("UPDATE runs SET status = 'interrupted', finished_at = ", now!(), " WHERE status = 'running'"),
                [],
            )
            .op("interrupt stale runs")?;
        tx.commit().op("interrupt stale runs")?;
        Ok(n)
    }

    /// Every run, oldest first.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`] when the read fails, [`StoreError::Malformed`] for an unknown kind or status word.
    pub fn runs(&self) -> Result<Vec<RunRecord>> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, kind, started_at, finished_at, status, stats_json FROM runs ORDER BY id")
            .op("read runs")?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, Option<String>>(5)?,
                ))
            })
            .op("read runs")?;
        let mut runs = Vec::new();
        for row in rows {
            let (id, kind, started_at, finished_at, status, stats_json) = row.op("read runs")?;
            let malformed = |what: &str| StoreError::Malformed { model: format!("run {id}"), reason: what.to_string() };
            runs.push(RunRecord {
                id: RunId(id),
                kind: RunKind::parse(&kind).ok_or_else(|| malformed(&format!("unknown kind {kind:?}")))?,
                started_at,
                finished_at,
                status: RunStatus::parse(&status).ok_or_else(|| malformed(&format!("unknown status {status:?}")))?,
                stats_json,
            });
        }
        Ok(runs)
    }

    /// Records a completed lineage solve of run `run_id` by `method`: its edges become the current lineage, in
    /// one transaction. If any edge fails to insert (a duplicate `(parent, child)`, a NaN confidence), nothing is
    /// written and the previous lineage stays current. Solves beyond the [`KEEP_SOLVES`] most recent are deleted.
    /// Returns the new solve's id.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`] when a statement fails (including an unknown `run_id`).
    pub fn replace_edges(&mut self, run_id: RunId, method: &str, edges: &[EdgeRecord]) -> Result<i64> {
        let tx = self.write_tx().op("replace edges")?;
        let solve: i64 = tx
            .query_row(
                concat!(
                    "INSERT INTO solves (run_id, method, created_at, edge_count) VALUES (?1, ?2, ",
                    now!(),
                    ", ?3) RETURNING id"
                ),
                params![run_id.0, method, edges.len()],
                |r| r.get(0),
            )
            .op("replace edges")?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO edges (solve_id, parent, child, relation, confidence, source) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .op("replace edges")?;
            for e in edges {
                // SQLite binds NaN as NULL, which the NOT NULL constraint then refuses.
                stmt.execute(params![solve, e.parent, e.child, e.relation, e.confidence, e.source.as_str()])
                    .op("replace edges")?;
            }
        }
        // Edges of older solves go with them (ON DELETE CASCADE).
        tx.execute("DELETE FROM solves WHERE id <= ?1", [solve - KEEP_SOLVES]).op("replace edges")?;
        tx.commit().op("replace edges")?;
        Ok(solve)
    }

    /// The latest completed solve, if any.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`] when the read fails.
    pub fn current_solve(&self) -> Result<Option<SolveRecord>> {
        self.conn
            .query_row(
                "SELECT id, run_id, method, created_at, edge_count FROM solves ORDER BY id DESC LIMIT 1",
                [],
                |r| {
                    Ok(SolveRecord {
                        id: r.get(0)?,
                        run_id: RunId(r.get(1)?),
                        method: r.get(2)?,
                        created_at: r.get(3)?,
                        edge_count: r.get(4)?,
                    })
                },
            )
            .optional()
            .op("read current solve")
    }

    /// The current lineage: the edges of the latest solve, sorted by child then parent. Empty before any solve.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`] when the read fails, [`StoreError::Malformed`] for an unknown source word.
    pub fn current_edges(&self) -> Result<Vec<EdgeRecord>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT parent, child, relation, confidence, source FROM edges \
                 WHERE solve_id = (SELECT max(id) FROM solves) ORDER BY child, parent",
            )
            .op("read edges")?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, f64>(3)?,
                    r.get::<_, String>(4)?,
                ))
            })
            .op("read edges")?;
        let mut edges = Vec::new();
        for row in rows {
            let (parent, child, relation, confidence, source) = row.op("read edges")?;
            let source = EdgeSource::parse(&source).ok_or_else(|| StoreError::Malformed {
                model: child.clone(),
                reason: format!("edge from {parent:?} has unknown source {source:?}"),
            })?;
            edges.push(EdgeRecord { parent, child, relation, confidence, source });
        }
        Ok(edges)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path().join("store.db")).expect("open");
        (dir, store)
    }

    fn edge(parent: &str, child: &str, relation: &str) -> EdgeRecord {
        EdgeRecord {
            parent: parent.to_string(),
            child: child.to_string(),
            relation: relation.to_string(),
            confidence: 0.75,
            source: EdgeSource::Weights,
        }
    }

    #[test]
    fn runs_go_from_running_to_finished_once() {
        let (_dir, mut store) = open();
        let scan = store.begin_run(RunKind::Scan).expect("begin");
        let crawl = store.begin_run(RunKind::Crawl).expect("begin");
        let daemon = store.begin_run(RunKind::Daemon).expect("begin");
        store.finish_run(scan, RunStatus::Ok, Some(r#"{"models":3}"#)).expect("finish");
        assert!(
            matches!(store.finish_run(scan, RunStatus::Failed, None), Err(StoreError::RunNotRunning(id)) if id == scan)
        );
        assert!(matches!(store.finish_run(RunId(99), RunStatus::Ok, None), Err(StoreError::RunNotRunning(_))));
        assert!(matches!(store.finish_run(crawl, RunStatus::Running, None), Err(StoreError::FinishAsRunning)));
        let err = store.finish_run(crawl, RunStatus::Failed, Some("{oops")).expect_err("invalid json");
        assert_eq!(err.to_string(), "finish run failed");
        assert_eq!(store.interrupt_stale_runs().expect("interrupt"), 2);

        let runs = store.runs().expect("read");
        let got: Vec<(RunId, RunKind, RunStatus, Option<&str>, bool)> =
            runs.iter().map(|r| (r.id, r.kind, r.status, r.stats_json.as_deref(), r.finished_at.is_some())).collect();
        assert_eq!(
            got,
            vec![
                (scan, RunKind::Scan, RunStatus::Ok, Some(r#"{"models":3}"#), true),
                (crawl, RunKind::Crawl, RunStatus::Interrupted, None, true),
                (daemon, RunKind::Daemon, RunStatus::Interrupted, None, true),
            ]
        );
        assert!(runs.iter().all(|r| r.started_at <= r.finished_at.clone().unwrap_or_default()));
    }

    #[test]
    fn replace_edges_swaps_the_whole_set() {
        let (_dir, mut store) = open();
        assert!(store.current_edges().expect("read").is_empty());
        assert_eq!(store.current_solve().expect("read"), None);
        let run = store.begin_run(RunKind::Scan).expect("begin");
        let first = vec![
            edge("a", "b", "finetune"),
            edge("a", "c", "adapter"),
            EdgeRecord { source: EdgeSource::Both, confidence: 1.0, ..edge("b", "d", "quantized") },
        ];
        let s1 = store.replace_edges(run, "mst", &first).expect("replace");
        assert_eq!(store.current_edges().expect("read"), first);
        let second = vec![EdgeRecord { source: EdgeSource::Metadata, ..edge("x", "a", "merge") }];
        let s2 = store.replace_edges(run, "mst-2", &second).expect("replace");
        assert!(s2 > s1);
        assert_eq!(store.current_edges().expect("read"), second);
        let solve = store.current_solve().expect("read").expect("solved");
        assert_eq!((solve.id, solve.run_id, solve.method.as_str(), solve.edge_count), (s2, run, "mst-2", 1));
        // An empty solve is a real answer: no edges.
        store.replace_edges(run, "mst", &[]).expect("replace");
        assert!(store.current_edges().expect("read").is_empty());
    }

    fn edge_rows(store: &Store) -> i64 {
        store.conn.query_row("SELECT count(*) FROM edges", [], |r| r.get(0)).expect("count")
    }

    #[test]
    fn a_failing_insert_leaves_the_old_edges() {
        let (_dir, mut store) = open();
        let run = store.begin_run(RunKind::Crawl).expect("begin");
        let old = vec![edge("a", "b", "finetune"), edge("b", "c", "finetune")];
        store.replace_edges(run, "mst", &old).expect("replace");
        let solve = store.current_solve().expect("read");

        // A duplicate (parent, child) in the middle of the set.
        let dup =
            vec![edge("p", "q", "finetune"), edge("q", "r", "merge"), edge("p", "q", "adapter"), edge("r", "s", "x")];
        assert_eq!(store.replace_edges(run, "mst", &dup).expect_err("duplicate").to_string(), "replace edges failed");
        // A NaN confidence in the middle of the set.
        let mut nan = vec![edge("p", "q", "finetune"), edge("q", "r", "merge"), edge("r", "s", "x")];
        nan[1].confidence = f64::NAN;
        store.replace_edges(run, "mst", &nan).expect_err("nan");
        // An unknown run.
        store.replace_edges(RunId(12345), "mst", &old).expect_err("unknown run");

        assert_eq!(store.current_edges().expect("read"), old);
        assert_eq!(store.current_solve().expect("read"), solve);
        assert_eq!(edge_rows(&store), 2);
    }

    #[test]
    fn old_solves_are_pruned() {
        let (_dir, mut store) = open();
        let run = store.begin_run(RunKind::Daemon).expect("begin");
        for i in 0..KEEP_SOLVES + 5 {
            let edges = [edge("a", &format!("c{i}"), "finetune"), edge("b", &format!("c{i}"), "merge")];
            store.replace_edges(run, "mst", &edges).expect("replace");
        }
        let solves: i64 = store.conn.query_row("SELECT count(*) FROM solves", [], |r| r.get(0)).expect("count");
        assert_eq!(solves, KEEP_SOLVES);
        assert_eq!(edge_rows(&store), 2 * KEEP_SOLVES);
        let last = format!("c{}", KEEP_SOLVES + 4);
        assert!(store.current_edges().expect("read").iter().all(|e| e.child == last));
    }
}
