//! End-to-end tests of `modeltree scan` on the bundled small zoo (really trained models, see tests/zoo-small):
//! rescans do no work, a scan killed at random points and rerun ends with the same store as an uninterrupted
//! one, and malformed files are recorded as failures while the scan goes on.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use crate::common::{copy_tree, modeltree, run_ok, zoo};

/// Everything a scan is responsible for, independent of timestamps and file modification times: per model its
/// status and signature, plus the current edges.
fn snapshot(db: &Path) -> String {
    let store = store::Store::open(db).expect("open store");
    let mut out = String::new();
    let mut models = store.models().expect("models");
    models.sort_by(|a, b| a.record.id.cmp(&b.record.id));
    for m in &models {
        out.push_str(&format!("{} {} {:?}\n", m.record.id, m.status.as_str(), m.record.license));
    }
    let mut sigs = store.signatures_for_scheme(&crate::common::default_scheme().id()).expect("signatures");
    sigs.sort_by(|a, b| a.0.cmp(&b.0));
    for (id, sig) in &sigs {
        out.push_str(&format!("{id} {:?}\n", sig));
    }
    let mut edges = store.current_edges().expect("edges");
    edges.sort_by(|a, b| (&a.child, &a.parent).cmp(&(&b.child, &b.parent)));
    for e in &edges {
        out.push_str(&format!(
            "{} -> {} {} {:.6} {}\n",
            e.parent,
            e.child,
            e.relation,
            e.confidence,
            e.source.as_str()
        ));
    }
    out
}

#[test]
fn rescan_does_no_work_and_changes_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = tmp.path().join("m.db");
    let first = run_ok(modeltree(&db).args(["scan", "--json"]).arg(zoo()));
    let first: serde_json::Value = serde_json::from_str(&first).expect("json");
    assert!(first["new"].as_u64().expect("new") >= 20, "{first}");
    assert_eq!(first["failed"], 0, "{first}");
    let before = snapshot(&db);
    let second = run_ok(modeltree(&db).args(["scan", "--json"]).arg(zoo()));
    let second: serde_json::Value = serde_json::from_str(&second).expect("json");
    assert_eq!(second["new"], 0);
    assert_eq!(second["changed"], 0);
    assert_eq!(second["bytes_read"], 0, "a rescan reads no weights");
    assert_eq!(second["unchanged"], first["new"]);
    assert_eq!(before, snapshot(&db), "a rescan changes nothing");
}

#[test]
fn killed_scan_resumes_to_the_same_store() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // Three copies of the zoo under different roots' names make the scan long enough to be killed mid-way.
    let corpus = tmp.path().join("corpus");
    for copy in ["a", "b", "c"] {
        copy_tree(&zoo(), &corpus.join(copy));
    }
    let clean = tmp.path().join("clean.db");
    let started = std::time::Instant::now();
    run_ok(modeltree(&clean).arg("scan").arg(&corpus));
    let clean_time = started.elapsed();

    // SIGKILL at varied points of the scan: each restart resumes from what the previous one committed.
    let killed = tmp.path().join("killed.db");
    let mut kills = 0;
    for fraction in [0.05, 0.3, 0.15, 0.5, 0.1, 0.4, 0.2, 0.6, 0.25, 0.35] {
        let mut child = modeltree(&killed)
            .arg("scan")
            .arg(&corpus)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(clean_time.mul_f64(fraction));
        if child.try_wait().expect("try_wait").is_some() {
            break;
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        kills += 1;
    }
    assert!(kills >= 3, "the scan finished before it could be killed three times; make the corpus larger");
    run_ok(modeltree(&killed).arg("scan").arg(&corpus));
    assert_eq!(snapshot(&clean), snapshot(&killed), "killed {kills} times, then resumed");
    let store = store::Store::open(&killed).expect("open");
    assert_eq!(store.integrity_check().expect("integrity"), "ok");
    // A scan killed inside its run left it `running`; the next scan marked it interrupted. (A kill can also land
    // before the run begins or after it ends.)
    let runs = store.runs().expect("runs");
    let interrupted = runs.iter().filter(|r| r.status == store::RunStatus::Interrupted).count();
    assert!((1..=kills).contains(&interrupted), "{interrupted} interrupted of {kills} kills: {runs:?}");
    assert!(runs.iter().all(|r| r.status != store::RunStatus::Running), "{runs:?}");
}

#[test]
fn malformed_models_are_recorded_and_the_scan_goes_on() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let corpus = tmp.path().join("corpus");
    copy_tree(&zoo(), &corpus);
    let bad = [
        ("bad/empty", Vec::new()),
        ("bad/truncated-length", vec![1, 2, 3]),
        ("bad/header-beyond-file", [&200u64.to_le_bytes()[..], b"{}"].concat()),
        ("bad/not-json", [&4u64.to_le_bytes()[..], b"nope"].concat()),
    ];
    for (dir, bytes) in &bad {
        std::fs::create_dir_all(corpus.join(dir)).expect("mkdir");
        std::fs::write(corpus.join(dir).join("model.safetensors"), bytes).expect("write");
    }
    let db = tmp.path().join("m.db");
    let out = run_ok(modeltree(&db).args(["scan", "--json"]).arg(&corpus));
    let stats: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(stats["failed"], bad.len());
    assert!(stats["new"].as_u64().expect("new") >= 20);
    let store = store::Store::open(&db).expect("open");
    let failures = store.failures().expect("failures");
    assert_eq!(failures.len(), bad.len());
    let messages: std::collections::BTreeSet<String> = failures.iter().map(|f| f.error.clone()).collect();
    assert_eq!(messages.len(), bad.len(), "each failure says what is wrong: {messages:?}");
}

#[test]
fn demo_runs_and_scores() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = run_ok(Command::new(env!("CARGO_BIN_EXE_modeltree")).arg("demo").arg("--keep").arg(tmp.path()));
    assert!(out.contains("recovered forest"), "{out}");
    assert!(out.contains("edge acc"), "{out}");
    let db = tmp.path().join("demo.db");
    let export = run_ok(modeltree(&db).args(["export", "--format", "json"]));
    let doc: serde_json::Value = serde_json::from_str(&export).expect("json");
    assert!(doc["models"].as_array().expect("models").len() >= 20);
    assert!(!doc["edges"].as_array().expect("edges").is_empty());
    let tree = run_ok(modeltree(&db).arg("tree"));
    assert!(tree.contains("trees"), "{tree}");
}
