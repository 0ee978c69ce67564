//! What of `modeltree daemon` needs a process, against `hubsim` serving a copy of the bundled small zoo on
//! loopback: configuration precedence through the binary's flags, a SIGTERM that drains the run in flight and
//! exits 0, a second instance refused, and a crash test that SIGKILLs the daemon at random points and then
//! compares the store with an uninterrupted run. The daemon's logic (schedule, cadence, backoff, drain deadline,
//! vanished repos, incremental == batch) is tested in-process under paused time in `crates/indexer/tests`.

use std::{
    collections::BTreeSet,
    fs,
    io::{Read, Write},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::common::{copy_tree, modeltree_isolated as modeltree, run_ok, zoo};

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
                copy_tree(&repo.path(), &dst.join(&id));
            }
        }
    }
}

fn daemon_once(db: &Path, home: &Path, url: &str, extra: &[&str]) -> Command {
    let mut cmd = modeltree(db, home);
    cmd.args(["daemon", "--once", "--endpoint", url, "--overlap", "0s", "--concurrency", "2"]).args(extra);
    cmd
}

fn runs(db: &Path, home: &Path) -> Vec<serde_json::Value> {
    let text = run_ok(modeltree(db, home).args(["runs", "--json"]));
    serde_json::from_str::<serde_json::Value>(&text).expect("json").as_array().cloned().expect("array")
}

/// Everything a run must reproduce: models with revision and status, bit-exact signatures, typed edges.
#[derive(Debug, PartialEq)]
struct Snapshot {
    models: Vec<(String, String, String)>,
    signatures: String,
    edges: Vec<(String, String, String)>,
}

/// Reads the store, asserting it is intact and holds nothing twice.
fn snapshot(db: &Path) -> Snapshot {
    let store = store::Store::open(db).expect("open store");
    assert_eq!(store.integrity_check().expect("integrity check"), "ok");
    let models: Vec<(String, String, String)> = store
        .models()
        .expect("models")
        .into_iter()
        .map(|m| (m.record.id, m.record.revision, m.status.as_str().to_owned()))
        .collect();
    let ids: BTreeSet<&String> = models.iter().map(|m| &m.0).collect();
    assert_eq!(ids.len(), models.len(), "a model is stored twice");
    let mut sigs = store.signatures_for_scheme(&crate::common::default_scheme().id()).expect("signatures");
    sigs.sort_by(|a, b| a.0.cmp(&b.0));
    let sig_ids: BTreeSet<&String> = sigs.iter().map(|s| &s.0).collect();
    assert_eq!(sig_ids.len(), sigs.len(), "a signature is stored twice");
    for (id, sig) in &sigs {
        let names: BTreeSet<&String> = sig.tensors.iter().map(|t| &t.name).collect();
        assert_eq!(names.len(), sig.tensors.len(), "{id}: a tensor is stored twice");
    }
    let signatures = sigs.iter().map(|(id, s)| format!("{id} {s:?}\n")).collect();
    let mut edges: Vec<_> =
        store.current_edges().expect("edges").into_iter().map(|e| (e.parent, e.child, e.relation)).collect();
    edges.sort();
    let pairs: BTreeSet<(&String, &String)> = edges.iter().map(|e| (&e.0, &e.1)).collect();
    assert_eq!(pairs.len(), edges.len(), "an edge is stored twice");
    assert!(store.runs().expect("runs").iter().all(|r| r.status != store::RunStatus::Running), "a run is left running");
    Snapshot { models, signatures, edges }
}

#[test]
fn config_precedence_through_the_binary() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = tmp.path().join("m.db");
    // `config default` prints the documented file byte for byte.
    let printed = run_ok(modeltree(&db, tmp.path()).args(["config", "default"]));
    let documented = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/modeltree.toml"));
    assert_eq!(printed, documented.expect("config file"));

    let file = tmp.path().join("modeltree.toml");
    fs::write(
        &file,
        "[daemon]\nschedule = \"0 * * * *\"\noverlap = \"5m\"\n[hub]\nendpoint = \"http://file.example\"\n\
         concurrency = 2\n[filters]\nauthors = [\"from-file\"]\n",
    )
    .expect("write");
    let show = |env: &[(&str, &str)], flags: &[&str]| -> toml::Table {
        let mut cmd = modeltree(&db, tmp.path());
        cmd.arg("--config").arg(&file).envs(env.iter().copied()).args(["daemon", "--print-config"]).args(flags);
        run_ok(&mut cmd).parse().expect("toml")
    };
    let get = |t: &toml::Table, section: &str, key: &str| t[section][key].to_string();
    // File over defaults.
    let t = show(&[], &[]);
    assert_eq!(get(&t, "daemon", "schedule"), "\"0 * * * *\"");
    assert_eq!(get(&t, "hub", "endpoint"), "\"http://file.example\"");
    assert_eq!(get(&t, "daemon", "shutdown_deadline"), "\"30s\"", "a default");
    // Environment over file.
    let env = [("MODELTREE_SCHEDULE", "*/5 * * * *"), ("MODELTREE_ENDPOINT", "http://env.example")];
    let t = show(&env, &[]);
    assert_eq!(get(&t, "daemon", "schedule"), "\"*/5 * * * *\"");
    assert_eq!(get(&t, "hub", "endpoint"), "\"http://env.example\"");
    assert_eq!(get(&t, "daemon", "overlap"), "\"5m\"");
    // Flags over environment.
    let t = show(&env, &["--endpoint", "http://flag.example", "--author", "from-flag"]);
    assert_eq!(get(&t, "hub", "endpoint"), "\"http://flag.example\"");
    assert_eq!(get(&t, "daemon", "schedule"), "\"*/5 * * * *\"");
    assert_eq!(get(&t, "filters", "authors"), "[\"from-flag\"]");
    assert_eq!(get(&t, "hub", "concurrency"), "2");
    // MODELTREE_DB and --db: the flag wins, as for every other setting.
    let t = show(&[("MODELTREE_DB", "/env/m.db")], &[]);
    assert_eq!(get(&t, "store", "db"), format!("{:?}", db.display().to_string()));

    // Invalid values are refused at load with the setting named.
    for (env, flags, needle) in [
        (vec![("MODELTREE_SCHEDULE", "61 * * * *")], vec![], "MODELTREE_SCHEDULE"),
        (vec![], vec!["--schedule", "* * *"], "--schedule"),
        (vec![], vec!["--status-addr", "nowhere"], "--status-addr"),
    ] {
        let mut cmd = modeltree(&db, tmp.path());
        cmd.envs(env).args(["daemon", "--print-config"]).args(&flags);
        let out = cmd.output().expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(needle), "{flags:?}: {stderr}");
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sigterm(child: &Child) {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_zero_within_the_deadline() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("served");
    served_copy(&root, &[]);
    // Slow answers keep the run busy long enough to be stopped in the middle.
    let faults = hubsim::FaultConfig { p_slow: 1.0, slow_ms: 40, ..hubsim::FaultConfig::default() };
    let server =
        hubsim::spawn(hubsim::ServerConfig { faults, rescan_on_list: true, ..hubsim::ServerConfig::new(&root) })
            .await
            .expect("hubsim starts");
    let db = tmp.path().join("m.db");
    let port = free_port();
    let mut cmd = modeltree(&db, tmp.path());
    cmd.args(["daemon", "--run-now", "--schedule", "0 0 1 1 *", "--shutdown-deadline", "2s", "--concurrency", "2"])
        .args(["--endpoint", &server.url(), "--status-addr", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let db2 = db.clone();
    let (code, elapsed, stderr, metrics) = tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn().expect("daemon starts");
        wait_for("the status endpoint", Duration::from_secs(30), || {
            http_get(port, "/healthz").is_some_and(|r| r.ends_with("ok\n"))
        });
        // Stop once a few models are in: the run is in the middle of its work.
        wait_for("models being indexed", Duration::from_secs(60), || {
            http_get(port, "/metrics").is_some_and(|m| {
                m.lines().any(|l| l.strip_prefix("modeltree_models_indexed_total ").is_some_and(|v| v != "0"))
            })
        });
        let metrics = http_get(port, "/metrics").unwrap_or_default();
        let stopped_at = Instant::now();
        sigterm(&child);
        let status = child.wait().expect("wait");
        let mut stderr = String::new();
        child.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("read");
        let _ = &db2;
        (status.code(), stopped_at.elapsed(), stderr, metrics)
    })
    .await
    .expect("join");
    assert_eq!(code, Some(0), "{stderr}");
    assert!(elapsed < Duration::from_secs(2) + Duration::from_secs(3), "stopped after {elapsed:?}");
    for needle in ["modeltree_hub_requests_total{bucket=\"api\"}", "modeltree_run_in_progress 1", "# TYPE"] {
        assert!(metrics.contains(needle), "{needle} missing from\n{metrics}");
    }
    // The run was stopped in the middle and drained: the models in flight at the signal finished and were
    // stored after it, and none was started after it.
    let recorded = runs(&db, tmp.path());
    assert_eq!(recorded.len(), 1);
    let (status, stats) = (&recorded[0]["status"], &recorded[0]["stats"]);
    assert_eq!((status.as_str(), stats["stopped"].as_bool()), (Some("interrupted"), Some(true)), "{recorded:?}");
    assert!(stats["drained"].as_u64().is_some_and(|n| n >= 1), "nothing was in flight at the signal: {stats}");
    let partial = snapshot(&db).models.len();
    assert!(partial > 0 && partial <= 27, "{partial}");
    // The next start resumes and completes.
    let mut again = daemon_once(&db, tmp.path(), &server.url(), &[]);
    tokio::task::spawn_blocking(move || run_ok(&mut again)).await.expect("join");
    assert_eq!(snapshot(&db).models.len(), 27);
    server.shutdown().await;
}

/// A small deterministic generator for kill times (no dependency, reproducible from the seed printed on failure).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n.max(1)
    }
}

/// What the crash test did.
struct CrashFigures {
    kills: usize,
    /// Kills that landed inside a run (the next start found that run `running` and marked it interrupted).
    mid_run: usize,
    models: usize,
    elapsed: Duration,
}

/// SIGKILLs the daemon `kills` times while repos keep arriving, then compares the store with an uninterrupted
/// run over the same folder. Shared with `scripts/daemon-crash.sh` through `MODELTREE_CRASH_KILLS`.
fn crash_test(kills: usize) -> CrashFigures {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("served");
    served_copy(&root, &[]);
    // Hundreds of starts would spend the anonymous API budget of a 5-minute window on listings alone, and the
    // test would measure the rate limiter's patience (the daemon does wait, correctly) instead of crash safety.
    let config = hubsim::ServerConfig {
        page_size: 50,
        rescan_on_list: true,
        quotas: hubsim::QuotaConfig::unlimited(),
        ..hubsim::ServerConfig::new(&root)
    };
    let server = rt.block_on(hubsim::spawn(config)).expect("hubsim starts");
    let url = server.url();
    let home = tmp.path();
    let started = Instant::now();
    let seed = 0x5eed_u64 ^ kills as u64;
    let mut rng = Lcg(seed);
    let db = tmp.path().join("crash.db");
    let sources = ["bitforge/bf-pico", "kaito-lab/bf-pico-add-mod5-ft", "jdoe/nw-llama-mini-lang5263-lora-r4"];
    for kill in 0..kills {
        // A repo is pushed before each start, so every run has real work to be killed in.
        if kill > 0 {
            let source = sources[kill % sources.len()];
            let name = source.split('/').nth(1).unwrap_or("x");
            copy_tree(&zoo().join(source), &root.join(format!("late-arrivals/{name}-{kill}")));
        }
        let mut cmd = modeltree(&db, home);
        // The daemon logs "run started" from the indexer library.
        cmd.env("MODELTREE_LOG", "indexer=info")
            .args(["daemon", "--run-now", "--schedule", "* * * * * *", "--endpoint", &url, "--overlap", "0s"])
            .args(["--concurrency", "2", "--full-listing-every", "3"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("daemon starts");
        // Watch the log for the start of a run; keep draining it so the daemon never blocks on stderr.
        let (tx, rx) = std::sync::mpsc::channel();
        let mut stderr = child.stderr.take().expect("stderr");
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut seen = String::new();
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if seen.len() < 1 << 16 {
                    seen.push_str(&String::from_utf8_lossy(&buf[..n]));
                    if seen.contains("run started") {
                        let _ = tx.send(());
                        seen.clear();
                        seen.push_str("run started reported");
                    }
                }
            }
        });
        // One kill in four lands anywhere from start-up on (lock, open, stale runs); the rest inside a run, from
        // listing through signing and storing to the solve and the checkpoint.
        if rng.below(4) == 0 {
            std::thread::sleep(Duration::from_millis(rng.below(400)));
        } else {
            let _ = rx.recv_timeout(Duration::from_secs(20));
            std::thread::sleep(Duration::from_millis(rng.below(250)));
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
        reader.join().expect("reader");
    }
    let killing = started.elapsed();
    // The next start resumes; one uninterrupted run on the same folder is the reference.
    run_ok(&mut daemon_once(&db, home, &url, &["--full-listing"]));
    let resumed = started.elapsed();
    let reference_db = tmp.path().join("reference.db");
    run_ok(&mut daemon_once(&reference_db, home, &url, &[]));
    eprintln!(
        "crash test phases: kills {:.1} s, resume {:.1} s, reference {:.1} s",
        killing.as_secs_f64(),
        (resumed - killing).as_secs_f64(),
        (started.elapsed() - resumed).as_secs_f64()
    );
    let (got, want) = (snapshot(&db), snapshot(&reference_db));
    assert_eq!(got.models.len(), 27 + kills - 1, "seed {seed}");
    assert!(got.models.iter().all(|m| m.2 == "indexed"), "seed {seed}: {:?}", got.models);
    assert_eq!(got, want, "seed {seed}: the killed daemon's store differs from an uninterrupted run");
    let mid_run = store::Store::open(&db)
        .expect("open")
        .runs()
        .expect("runs")
        .iter()
        .filter(|r| r.status == store::RunStatus::Interrupted)
        .count();
    rt.block_on(server.shutdown());
    CrashFigures { kills, mid_run, models: got.models.len(), elapsed: started.elapsed() }
}

#[test]
fn sigkill_at_random_points_loses_and_duplicates_nothing() {
    let kills = std::env::var("MODELTREE_CRASH_KILLS").ok().and_then(|k| k.parse().ok()).unwrap_or(50);
    assert!(kills >= 50, "the CI crash test kills at least 50 times");
    let f = crash_test(kills);
    // Most kills must land inside a run, or the test would only be killing an idle process.
    assert!(f.mid_run * 3 >= f.kills, "only {} of {} kills landed inside a run", f.mid_run, f.kills);
    eprintln!(
        "crash test: {} SIGKILLs ({} inside a run) in {:.1} s; {} models; store equal to an uninterrupted run, \
         integrity ok, 0 lost, 0 duplicated, 0 runs left running",
        f.kills,
        f.mid_run,
        f.elapsed.as_secs_f64(),
        f.models
    );
}

#[test]
fn a_second_instance_is_refused_while_the_first_runs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = tmp.path().join("m.db");
    let port = free_port();
    let mut first = modeltree(&db, tmp.path())
        .args(["daemon", "--schedule", "0 0 1 1 *", "--endpoint", "http://127.0.0.1:9"])
        .args(["--status-addr", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("daemon starts");
    wait_for("the first daemon", Duration::from_secs(30), || http_get(port, "/healthz").is_some());
    for args in
        [&["daemon", "--once", "--endpoint", "http://127.0.0.1:9"][..], &["crawl", "--endpoint", "http://127.0.0.1:9"]]
    {
        let out = modeltree(&db, tmp.path()).args(args).output().expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains("another modeltree daemon is using"), "{args:?}: {stderr}");
    }
    sigterm(&first);
    assert_eq!(first.wait().expect("wait").code(), Some(0));
    assert!(runs(&db, tmp.path()).is_empty(), "no run was due");
}
