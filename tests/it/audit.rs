//! End-to-end tests of `modeltree audit` on the bundled small zoo, whose truth plants license conflicts and
//! wrong `base_model` declarations: the audit finds them (checked both directly and through `modeltree eval`),
//! every finding carries its evidence, and `--fail-on` maps to the documented exit codes.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use crate::common::{modeltree, zoo};

/// `audit --fail-on` exits with this when a finding reaches the threshold.
const AUDIT_FAILED: i32 = 3;

fn run(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().expect("modeltree runs");
    let code = out.status.code().expect("exit code");
    assert!(code == 0 || code == AUDIT_FAILED, "{cmd:?} failed ({code}):\n{}", String::from_utf8_lossy(&out.stderr));
    (code, String::from_utf8(out.stdout).expect("utf-8"))
}

fn scanned(root: &Path) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = tmp.path().join("m.db");
    run(modeltree(&db).arg("scan").arg(root));
    (tmp, db)
}

/// The models the truth marks: (license conflicts, wrong declarations).
fn truth() -> (BTreeSet<String>, BTreeSet<String>) {
    let text = std::fs::read_to_string(zoo().join("ground_truth.json")).expect("truth");
    let doc: serde_json::Value = serde_json::from_str(&text).expect("json");
    let (mut conflicts, mut wrong) = (BTreeSet::new(), BTreeSet::new());
    for m in doc["models"].as_array().expect("models") {
        let id = m["model"].as_str().expect("id").to_owned();
        if m["license_conflict"] == true {
            conflicts.insert(id.clone());
        }
        if m["declared_correct"] == false {
            wrong.insert(id);
        }
    }
    (conflicts, wrong)
}

#[test]
fn finds_the_planted_conflicts_and_wrong_declarations_with_evidence() {
    let (_tmp, db) = scanned(&zoo());
    let (code, out) = run(modeltree(&db).args(["audit", "--json"]));
    assert_eq!(code, 0, "no --fail-on: never fails");
    let findings: Vec<serde_json::Value> = serde_json::from_str(&out).expect("json array");
    let (conflicts, wrong) = truth();
    assert!(!conflicts.is_empty() && !wrong.is_empty(), "the zoo plants both kinds");

    let flagged = |pred: &dyn Fn(&serde_json::Value) -> bool| -> BTreeSet<String> {
        findings.iter().filter(|f| pred(f)).map(|f| f["child"].as_str().expect("child").to_owned()).collect()
    };
    let license =
        flagged(&|f| f["kind"].as_str().is_some_and(|k| k.starts_with("license-")) && f["severity"] != "info");
    let declared = flagged(&|f| f["kind"] == "declared-base-wrong");
    assert_eq!(license, conflicts, "license conflicts");
    assert_eq!(declared, wrong, "wrong base_model declarations");

    for f in &findings {
        assert!(["error", "warning", "info"].contains(&f["severity"].as_str().expect("severity")), "{f}");
        assert!(f["message"].as_str().is_some_and(|m| !m.is_empty()), "{f}");
        let ev = &f["evidence"];
        assert!(ev["child_license"]["class"].is_string(), "{f}");
        assert!(ev["declared_base_models"].is_array(), "{f}");
        if f["kind"].as_str().is_some_and(|k| k.starts_with("license-")) {
            // A license finding is about an edge: it names both ends, the edge's source and confidence.
            assert!(f["parent"].is_string() && f["relation"].is_string(), "{f}");
            assert!(["weights", "metadata", "both"].contains(&f["source"].as_str().expect("source")), "{f}");
            let c = f["confidence"].as_f64().expect("confidence");
            assert!((0.0..=1.0).contains(&c), "{f}");
            assert!(ev["parent_license"]["id"].is_string(), "{f}");
        }
    }
    // The non-commercial parents of the apache-2.0 merge are each a finding: a merge inherits from every parent.
    let merge = "mergekit-fans/quokka-base-lang6890-sort6-10-ta-merge";
    let nc: Vec<&serde_json::Value> =
        findings.iter().filter(|f| f["child"] == merge && f["kind"] == "license-noncommercial-dropped").collect();
    assert_eq!(nc.len(), 2, "{nc:?}");
    assert!(nc.iter().all(|f| f["severity"] == "error" && f["evidence"]["parent_license"]["id"] == "cc-by-nc-4.0"));

    // The text report groups by severity, most severe first, and ends with the counts.
    let (_, text) = run(modeltree(&db).arg("audit"));
    let errors = findings.iter().filter(|f| f["severity"] == "error").count();
    assert!(text.starts_with(&format!("error ({errors})\n")), "{text}");
    assert!(text.trim_end().ends_with("info"), "{text}");
    assert!(text.contains(&format!("{} findings:", findings.len())), "{text}");
}

#[test]
fn eval_scores_the_audit_against_the_truth() {
    let (_tmp, db) = scanned(&zoo());
    let truth = zoo().join("ground_truth.json");
    let (_, out) = run(modeltree(&db).args(["eval", "--json", "--truth"]).arg(&truth));
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).expect("json");
    let audit = &rows[0]["audit"];
    for kind in ["license_conflicts", "wrong_base_model"] {
        let (p, r) = (audit[kind]["precision"].as_f64().expect("P"), audit[kind]["recall"].as_f64().expect("R"));
        assert!(p >= 0.9 && r >= 0.9, "{kind}: P {p} R {r}\n{audit}");
        assert!(audit[kind]["tp"].as_u64().expect("tp") > 0, "{audit}");
    }
    let (_, table) = run(modeltree(&db).args(["eval", "--truth"]).arg(&truth));
    assert!(table.contains("license conflict") && table.contains("wrong base_model"), "{table}");
}

#[test]
fn fail_on_sets_the_exit_code() {
    let (_tmp, db) = scanned(&zoo());
    for (flag, expected) in
        [(None, 0), (Some("error"), AUDIT_FAILED), (Some("warning"), AUDIT_FAILED), (Some("info"), AUDIT_FAILED)]
    {
        let mut cmd = modeltree(&db);
        cmd.arg("audit");
        if let Some(level) = flag {
            cmd.args(["--fail-on", level]);
        }
        assert_eq!(run(&mut cmd).0, expected, "--fail-on {flag:?}");
    }
    // A single root model: nothing to find, so even --fail-on info passes.
    let (_tmp2, clean) = scanned(&zoo().join("northwind-ai"));
    let (code, out) = run(modeltree(&clean).args(["audit", "--fail-on", "info", "--json"]));
    assert_eq!((code, out.trim()), (0, "[]"));
    // An unknown level is a usage error, not a pass.
    let out = modeltree(&clean).args(["audit", "--fail-on", "fatal"]).output().expect("runs");
    assert_eq!(out.status.code(), Some(2));
}
