//! The daemon's logic in-process: `indexer::daemon::run` on a real SQLite file against `hubsim` serving a copy of
//! the bundled small zoo on 127.0.0.1:0, under paused tokio time (a current-thread runtime whose clock jumps to the
//! next timer whenever every task waits). A day of schedule passes in an instant, a slow Hub is slow in simulated
//! time, and the shutdown is a future the test controls. What needs a real process (SIGTERM's exit code, the
//! second instance, SIGKILL) is tested through the binary at the root.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indexer::config::{Config, setting};
use indexer::daemon::{self, RunOptions};
use tokio::time::Instant;

fn zoo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/zoo-small")
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("mkdir");
    for entry in fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// Copies the zoo (with its ground truth, which dates the repos) except `skip`.
fn served_copy(dst: &Path, skip: &[&str]) {
    fs::create_dir_all(dst).expect("mkdir");
    fs::copy(zoo().join("ground_truth.json"), dst.join("ground_truth.json")).expect("copy truth");
    for org in fs::read_dir(zoo()).expect("zoo") {
        let org = org.expect("entry");
        if !org.file_type().expect("type").is_dir() {
            continue;
        }
        for repo in fs::read_dir(org.path()).expect("org") {
            let repo = repo.expect("entry");
            let id = format!("{}/{}", org.file_name().to_string_lossy(), repo.file_name().to_string_lossy());
            if !skip.contains(&id.as_str()) {
                copy_dir(&repo.path(), &dst.join(&id));
            }
        }
    }
}

/// Serves `root` with small pages, no quotas (hubsim's windows run on the wall clock, which paused time does not
/// move) and the given faults.
async fn serve(root: &Path, faults: hubsim::FaultConfig) -> hubsim::Handle {
    let config = hubsim::ServerConfig {
        page_size: 5,
        rescan_on_list: true,
        quotas: hubsim::QuotaConfig::unlimited(),
        faults,
        ..hubsim::ServerConfig::new(root)
    };
    hubsim::spawn(config).await.expect("hubsim starts")
}

fn set(config: &mut Config, section: &str, key: &str, value: &str) {
    let row = setting(section, key).expect("a setting");
    config.set_text(row, value).expect("a valid value");
}

/// The daemon's settings for `db` and `url`: no overlap, two models at a time, a schedule every 15 minutes.
fn config(db: &Path, url: &str) -> Config {
    let mut config = Config { db: Some(db.to_owned()), ..Config::default() };
    set(&mut config, "hub", "endpoint", url);
    set(&mut config, "hub", "token_file", "/nonexistent/token");
    set(&mut config, "daemon", "overlap", "0s");
    set(&mut config, "hub", "concurrency", "2");
    set(&mut config, "daemon", "schedule", "*/15 * * * *");
    config
}

/// The recorded runs' status and stats.
fn runs(db: &Path) -> Vec<(String, serde_json::Value)> {
    let store = store::Store::open(db).expect("open");
    let runs = store.runs().expect("runs");
    runs.iter()
        .map(|r| {
            let stats = r.stats_json.as_deref().map(|s| serde_json::from_str(s).expect("stats json"));
            (r.status.as_str().to_owned(), stats.unwrap_or_default())
        })
        .collect()
}

/// Waits (in simulated time) until `n` runs are finished.
async fn finished_runs(db: &Path, n: usize) {
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        if db.exists() && runs(db).iter().filter(|(status, _)| status != "running").count() >= n {
            return;
        }
    }
}

fn field(stats: &serde_json::Value, name: &str) -> u64 {
    stats[name].as_u64().unwrap_or_else(|| panic!("{name} in {stats}"))
}

/// Stored models by status.
fn models(db: &Path) -> Vec<(String, String)> {
    let store = store::Store::open(db).expect("open");
    store.models().expect("models").into_iter().map(|m| (m.record.id, m.status.as_str().to_owned())).collect()
}

#[tokio::test(start_paused = true)]
async fn runs_follow_the_schedule_and_the_full_listing_cadence() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("served");
    served_copy(&root, &[]);
    let server = serve(&root, hubsim::FaultConfig::default()).await;
    let db = tmp.path().join("m.db");
    let mut config = config(&db, &server.url());
    set(&mut config, "daemon", "full_listing_every", "2");
    let started = Instant::now();
    let hour = Duration::from_secs(3600);
    daemon::run(&config, RunOptions::default(), tokio::time::sleep(hour)).await.expect("daemon");
    // Nothing was in flight at the stop, so the daemon returned at once.
    assert_eq!(started.elapsed(), hour);
    let runs = runs(&db);
    // Every 15 minutes: four firings in any hour, none at start (no --run-now).
    assert_eq!(runs.len(), 4, "{runs:#?}");
    assert!(runs.iter().all(|(status, _)| status == "ok"), "{runs:#?}");
    let full: Vec<bool> = runs.iter().map(|(_, s)| s["full_listing"].as_bool().expect("full_listing")).collect();
    assert_eq!(full, [true, false, true, false], "the first run and then every second one list everything");
    let new: Vec<u64> = runs.iter().map(|(_, s)| field(s, "new")).collect();
    assert_eq!(new, [27, 0, 0, 0]);
    // An incremental listing stops at the checkpoint instead of listing the whole Hub.
    assert!(field(&runs[1].1, "listed") < 10, "{:?}", runs[1]);
    assert_eq!(field(&runs[2].1, "listed"), 27);
    server.shutdown().await;
}

/// The leaf pushed first, alone: the next run re-solves its family and no other.
const PUSHED: &str = "jdoe/quokka-base-lang6890-ft-copy9-14-lora-r16";
/// Leaves of two other trees, pushed later.
const ADDED: [&str; 2] = ["sparrow-ai/nw-llama-mini-lang3409-ft-reverse3-8-ft", "community-quants/bf-pico-W8A16-int8"];
const REMOVED: &str = "reupload-bot/quokka-base-bf16";

#[tokio::test(start_paused = true)]
async fn pushed_repos_join_their_families_vanished_ones_are_marked_and_incremental_equals_batch() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("served");
    let mut skip = ADDED.to_vec();
    skip.push(PUSHED);
    served_copy(&root, &skip);
    let server = serve(&root, hubsim::FaultConfig::default()).await;
    let db = tmp.path().join("m.db");
    let export = tmp.path().join("out").join("lineage.json");
    fs::create_dir_all(export.parent().expect("parent")).expect("mkdir");
    let mut config = config(&db, &server.url());
    set(&mut config, "daemon", "full_listing_every", "2");
    config.exports = vec![indexer::config::Export { format: indexer::export::Format::Json, path: export.clone() }];
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        let _ = stopped.await;
    };
    let options = RunOptions { run_now: true, ..RunOptions::default() };
    let driver = async {
        finished_runs(&db, 1).await;
        let exported: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&export).expect("export")).expect("json");
        assert_eq!(exported["models"].as_array().map(Vec::len), Some(24), "the export follows each run");
        copy_dir(&zoo().join(PUSHED), &root.join(PUSHED));
        finished_runs(&db, 2).await;
        for id in ADDED {
            copy_dir(&zoo().join(id), &root.join(id));
        }
        fs::remove_dir_all(root.join(REMOVED)).expect("remove");
        finished_runs(&db, 3).await;
        let _ = stop.send(());
    };
    let (result, ()) = tokio::join!(daemon::run(&config, options, shutdown), driver);
    result.expect("daemon");

    let runs = runs(&db);
    assert_eq!(runs.len(), 3, "{runs:#?}");
    assert!(runs.iter().all(|(status, _)| status == "ok"), "{runs:#?}");
    let (first, pushed, last) = (&runs[0].1, &runs[1].1, &runs[2].1);
    assert_eq!((field(first, "new"), field(first, "families"), field(first, "families_resolved")), (24, 3, 3));
    // The pushed leaf: one new model, one family of three solved again.
    assert_eq!(pushed["full_listing"], false);
    assert_eq!((field(pushed, "new"), field(pushed, "families"), field(pushed, "families_resolved")), (1, 3, 1));
    // A full listing finds the two pushed later and the removed repo, which the Hub now says is gone.
    assert_eq!(last["full_listing"], true);
    assert_eq!((field(last, "new"), field(last, "vanished")), (2, 1));
    let status: Vec<(String, String)> = models(&db);
    assert!(status.contains(&(REMOVED.to_owned(), "vanished".to_owned())), "{status:?}");
    assert_eq!(status.iter().filter(|(_, s)| s == "indexed").count(), 26);

    // Every pushed repo is in its true parent's family.
    let store = store::Store::open(&db).expect("open");
    let stored = indexer::solve::stored(&store).expect("stored lineage");
    let truth = indexer::truth::read(&zoo().join("ground_truth.json")).expect("truth");
    for id in ADDED.iter().chain([&PUSHED]) {
        let family = stored.families.iter().find(|f| f.iter().any(|m| m == id)).expect("a family");
        let parents = &truth.lineage.iter().find(|t| t.model == *id).expect("in the truth").parents;
        for parent in parents {
            assert!(family.contains(parent), "{id} must join {parent}'s family, got {family:?}");
        }
    }
    // The incremental result is the batch result: a batch solve of the same store gives the same edges.
    let batch = indexer::solve::recover(&store, &config.scheme, config.method).expect("batch");
    let edges = |e: &[lineage::Edge]| -> BTreeSet<(String, String, &'static str)> {
        e.iter().map(|e| (e.parent.clone(), e.child.clone(), e.relation.as_str())).collect()
    };
    assert_eq!(edges(&stored.edges), edges(&batch.edges));
    server.shutdown().await;
}

/// A repo whose weights are not safetensors: every attempt fails.
const BROKEN: &str = "bitforge/bf-pico";
/// A healthy repo served beside it.
const HEALTHY: &str = "kaito-lab/bf-pico-add-mod5-ft";

#[tokio::test(start_paused = true)]
async fn a_failed_repo_waits_for_its_backoff_which_doubles() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("served");
    // Two repos, so that a run takes well under the backoff in real time.
    for id in [BROKEN, HEALTHY] {
        copy_dir(&zoo().join(id), &root.join(id));
    }
    fs::copy(zoo().join("ground_truth.json"), root.join("ground_truth.json")).expect("copy truth");
    fs::write(root.join(BROKEN).join("model.safetensors"), b"not a safetensors file").expect("break");
    let server = serve(&root, hubsim::FaultConfig::default()).await;
    let db = tmp.path().join("m.db");
    let mut config = config(&db, &server.url());
    // Full listings show the broken repo at the same commit every run; the store dates retries on the wall
    // clock, so the backoff is short and the test waits it out for real.
    set(&mut config, "daemon", "full_listing_every", "1");
    set(&mut config, "daemon", "retry_base", "3s");
    set(&mut config, "daemon", "retry_cap", "1m");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        let _ = stopped.await;
    };
    let options = RunOptions { run_now: true, ..RunOptions::default() };
    let driver = async {
        finished_runs(&db, 2).await;
        std::thread::sleep(Duration::from_millis(3200));
        finished_runs(&db, 3).await;
        let _ = stop.send(());
    };
    let (result, ()) = tokio::join!(daemon::run(&config, options, shutdown), driver);
    result.expect("daemon");
    let runs = runs(&db);
    assert_eq!(runs.len(), 3, "{runs:#?}");
    let counts: Vec<(u64, u64)> = runs.iter().map(|(_, s)| (field(s, "failed"), field(s, "deferred"))).collect();
    // Failed; not due yet, so left alone; due, tried again and failed again.
    assert_eq!(counts, [(1, 0), (0, 1), (1, 0)], "{runs:#?}");
    let store = store::Store::open(&db).expect("open");
    let failure = store.failures().expect("failures").into_iter().find(|f| f.model_id == BROKEN).expect("recorded");
    assert_eq!(failure.attempts, 2);
    let at = |t: &str| chrono::DateTime::parse_from_rfc3339(t).expect("timestamp");
    let wait = at(failure.next_retry_at.as_deref().expect("scheduled")) - at(&failure.last_at);
    assert!((6000..6100).contains(&wait.num_milliseconds()), "the second wait doubles the first: {wait}");
    assert_eq!(models(&db).iter().filter(|(_, s)| s == "indexed").count(), 1);
    server.shutdown().await;
}

/// Runs the daemon once on the whole zoo with `faults`, stopped by `shutdown`, and returns the database and the
/// simulated time the daemon took.
async fn stop_mid_run(
    faults: hubsim::FaultConfig,
    deadline: &str,
    shutdown: impl AsyncFnOnce(&Path),
) -> (PathBuf, Duration, tempfile::TempDir) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("served");
    served_copy(&root, &[]);
    let server = serve(&root, faults).await;
    let db = tmp.path().join("m.db");
    let mut config = config(&db, &server.url());
    set(&mut config, "daemon", "schedule", "0 0 1 1 *");
    set(&mut config, "daemon", "shutdown_deadline", deadline);
    let started = Instant::now();
    let options = RunOptions { run_now: true, ..RunOptions::default() };
    daemon::run(&config, options, shutdown(&db)).await.expect("daemon");
    let elapsed = started.elapsed();
    server.shutdown().await;
    (db, elapsed, tmp)
}

/// Completes once `n` models are stored. It polls without a timer: the remote signer waits for ranges in a
/// blocking task, and tokio does not advance paused time while a blocking task runs.
async fn stored_models(db: &Path, n: usize) {
    loop {
        if db.exists() && store::Store::open(db).and_then(|s| s.models()).is_ok_and(|m| m.len() >= n) {
            return;
        }
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_stop_drains_the_models_in_flight_within_the_deadline() {
    let no_faults = hubsim::FaultConfig::default();
    let (db, elapsed, _tmp) = stop_mid_run(no_faults, "30s", async |db| stored_models(db, 3).await).await;
    let runs = runs(&db);
    assert_eq!(runs.len(), 1);
    let (status, stats) = &runs[0];
    assert_eq!(status, "interrupted", "{stats}");
    assert_eq!(stats["stopped"], true);
    // The models in flight at the stop finished and were stored; no new one was started.
    let drained = field(stats, "drained");
    assert!((1..=2).contains(&drained), "{stats}");
    let stored = models(&db).len() as u64;
    assert_eq!(stored, field(stats, "new"));
    assert!((3..27).contains(&stored), "{stats}");
    assert!(elapsed < Duration::from_secs(30), "{elapsed:?}");
}

#[tokio::test(start_paused = true)]
async fn work_still_in_flight_at_the_deadline_is_dropped() {
    // Every answer takes 5 s of simulated time: the stop comes in the middle of the listing.
    let slow = hubsim::FaultConfig { p_slow: 1.0, slow_ms: 5_000, ..hubsim::FaultConfig::default() };
    let stop_after = Duration::from_secs(12);
    let (db, elapsed, _tmp) = stop_mid_run(slow, "1s", async |_| tokio::time::sleep(stop_after).await).await;
    assert_eq!(elapsed, stop_after + Duration::from_secs(1), "the daemon waits exactly the deadline");
    let runs = runs(&db);
    assert_eq!(runs.len(), 1);
    let (status, stats) = &runs[0];
    assert_eq!((status.as_str(), &stats["aborted_after_deadline"]), ("interrupted", &serde_json::json!(true)));
}
