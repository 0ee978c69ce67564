//! End-to-end tests of `modeltree crawl` against `hubsim` serving the bundled small zoo on loopback: a crawl
//! gives the same signatures and lineage as a scan of the folder (ranged reads and `--full`), a second crawl does
//! no work, and under injected faults (5xx, resets, truncated bodies, expired URLs, a 429 storm) the result is
//! the same, with no request sent before an announced reset.

use std::{path::Path, process::Command, time::Duration};

use crate::common::{modeltree_isolated as modeltree, zoo};

fn run_json(cmd: &mut Command) -> serde_json::Value {
    let out = cmd.output().expect("modeltree runs");
    assert!(out.status.success(), "{cmd:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json on stdout")
}

/// Signatures per model, and the edges as (parent, child, relation): what must not depend on how the bytes came.
fn lineage_and_signatures(db: &Path) -> (String, Vec<(String, String, String)>) {
    let store = store::Store::open(db).expect("open store");
    let mut sigs = store.signatures_for_scheme(&crate::common::default_scheme().id()).expect("signatures");
    sigs.sort_by(|a, b| a.0.cmp(&b.0));
    let sigs = sigs.iter().map(|(id, s)| format!("{id} {s:?}\n")).collect();
    let mut edges: Vec<_> =
        store.current_edges().expect("edges").into_iter().map(|e| (e.parent, e.child, e.relation)).collect();
    edges.sort();
    (sigs, edges)
}

fn scan_reference(tmp: &Path) -> (String, Vec<(String, String, String)>) {
    let db = tmp.join("scan.db");
    run_json(modeltree(&db, tmp).args(["scan", "--json"]).arg(zoo()));
    lineage_and_signatures(&db)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crawl_equals_scan_ranged_and_full() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let reference = scan_reference(tmp.path());
    assert!(reference.1.len() >= 20, "the zoo has lineage");
    let server = hubsim::spawn(hubsim::ServerConfig { page_size: 7, ..hubsim::ServerConfig::new(zoo()) })
        .await
        .expect("hubsim starts");
    for (name, extra) in [("ranged", None), ("full", Some("--full"))] {
        let db = tmp.path().join(format!("{name}.db"));
        let mut cmd = modeltree(&db, tmp.path());
        cmd.args(["crawl", "--json", "--endpoint", &server.url()]);
        cmd.args(extra);
        let stats = tokio::task::spawn_blocking(move || run_json(&mut cmd)).await.expect("join");
        assert_eq!(stats["failed"], 0, "{name}: {stats}");
        assert_eq!(stats["new"], 27, "{name}: {stats}");
        assert_eq!(lineage_and_signatures(&db), reference, "{name} crawl differs from the scan");
        // A second crawl finds every commit indexed: no repo is read again.
        let mut again = modeltree(&db, tmp.path());
        again.args(["crawl", "--json", "--endpoint", &server.url()]);
        let stats = tokio::task::spawn_blocking(move || run_json(&mut again)).await.expect("join");
        assert_eq!(stats["unchanged"], 27, "{name}: {stats}");
        assert_eq!(stats["requests"]["resolvers"], 0, "{name}: {stats}");
    }
    assert!(
        tmp.path().join("hub").join("models--bitforge--bf-pico").join("snapshots").is_dir(),
        "--full fills the HF cache"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crawl_under_faults_gives_the_same_result() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let reference = scan_reference(tmp.path());
    let faults = hubsim::FaultConfig {
        seed: 7,
        p_5xx: 0.12,
        p_reset_mid_body: 0.04,
        p_truncate: 0.04,
        p_expire_url: 0.05,
        storm: Some(hubsim::Storm { start_after: 15, count: 8, retry_after_secs: 1 }),
        ..hubsim::FaultConfig::default()
    };
    let server = hubsim::spawn(hubsim::ServerConfig { page_size: 5, faults, ..hubsim::ServerConfig::new(zoo()) })
        .await
        .expect("hubsim starts");
    let db = tmp.path().join("faults.db");
    // A repo that still fails after its retries is recorded and picked up by the next crawl, as the daemon does.
    let mut failed = u64::MAX;
    let mut rounds = 0;
    for _ in 0..4 {
        rounds += 1;
        let mut cmd = modeltree(&db, tmp.path());
        cmd.args(["crawl", "--json", "--concurrency", "2", "--endpoint", &server.url()]);
        let stats =
            tokio::time::timeout(Duration::from_secs(300), tokio::task::spawn_blocking(move || run_json(&mut cmd)))
                .await
                .expect("the crawl ends")
                .expect("join");
        failed = stats["failed"].as_u64().expect("failed count");
        if failed == 0 {
            break;
        }
    }
    assert_eq!(failed, 0);
    let log = server.request_log();
    let faulted = log.iter().filter(|r| r.status >= 500 || r.status == 429).count();
    eprintln!("{faulted} of {} requests faulted (5xx or 429); {rounds} crawl(s) to index everything", log.len());
    assert!(faulted >= 10, "faults were injected ({faulted} of {} requests)", log.len());
    assert!(server.early_requests().is_empty(), "requests before an announced reset: {:?}", server.early_requests());
    assert_eq!(lineage_and_signatures(&db), reference, "faults changed the result");
    server.shutdown().await;
}
