//! The one reader of a zoo's `ground_truth.json`: the lineage truth (`model`, `parents`, `relation` per entry)
//! that `lineage::eval` scores against, and the audit truth (`license_conflict`, `declared_correct`) that
//! `audit::score` scores against. The file is untrusted: a malformed entry is an error, never a panic.

use std::path::Path;

use anyhow::{Context, bail};

/// Everything a truth file says.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GroundTruth {
    pub lineage: Vec<lineage::eval::Truth>,
    /// `None` when no entry has the audit fields.
    pub audit: Option<audit::Truth>,
}

/// Reads a truth file.
///
/// # Errors
/// When the file cannot be read, is not JSON, has no `models` array, or holds a malformed entry.
pub fn read(path: &Path) -> anyhow::Result<GroundTruth> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse(&bytes).with_context(|| format!("in {}", path.display()))
}

/// Parses a truth file's bytes.
///
/// # Errors
/// As [`read`], without the IO.
pub fn parse(bytes: &[u8]) -> anyhow::Result<GroundTruth> {
    let doc: serde_json::Value = serde_json::from_slice(bytes).context("not JSON")?;
    let Some(models) = doc.get("models").and_then(|m| m.as_array()) else {
        bail!("no \"models\" array");
    };
    let mut truth = GroundTruth::default();
    let mut audit = audit::Truth::default();
    let mut any_audit = false;
    for m in models {
        let id = m.get("model").and_then(|v| v.as_str()).context("a truth entry has no \"model\"")?;
        let relation = m.get("relation").and_then(|v| v.as_str());
        let relation = relation.with_context(|| format!("{id}: no \"relation\" string"))?;
        let parents = m
            .get("parents")
            .and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(|p| p.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        truth.lineage.push(lineage::eval::Truth { model: id.to_owned(), parents, relation: relation.to_owned() });
        match m.get("license_conflict") {
            None => {}
            Some(serde_json::Value::Bool(b)) => {
                any_audit = true;
                audit.license_judged.insert(id.to_owned());
                if *b {
                    audit.license_conflict.insert(id.to_owned());
                }
            }
            Some(other) => bail!("{id}: \"license_conflict\" must be a boolean, not {other}"),
        }
        match m.get("declared_correct") {
            None => {}
            Some(serde_json::Value::Null) => any_audit = true,
            Some(serde_json::Value::Bool(b)) => {
                any_audit = true;
                audit.declared_judged.insert(id.to_owned());
                if !*b {
                    audit.declared_wrong.insert(id.to_owned());
                }
            }
            Some(other) => bail!("{id}: \"declared_correct\" must be a boolean or null, not {other}"),
        }
    }
    truth.audit = any_audit.then_some(audit);
    Ok(truth)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_truth_strictly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.json");
        let check = |text: &str| {
            std::fs::write(&path, text).expect("write");
            read(&path).map(|t| t.audit).map_err(|e| e.to_string())
        };
        let t = check(
            r#"{"models":[{"model":"a","relation":"root","license_conflict":true,"declared_correct":false},
                          {"model":"b","relation":"root","license_conflict":false,"declared_correct":null}]}"#,
        )
        .expect("valid")
        .expect("has audit fields");
        assert_eq!(t.license_judged.len(), 2);
        assert!(t.license_conflict.contains("a") && t.declared_wrong.contains("a"));
        assert!(!t.declared_judged.contains("b"));
        assert_eq!(check(r#"{"models":[{"model":"a","parents":[],"relation":"root"}]}"#), Ok(None));
        assert!(check(r#"{"models":[{"model":"a","relation":"root","license_conflict":"yes"}]}"#).is_err());
        assert!(check(r#"{"models":[{"model":"a","relation":"root","declared_correct":1}]}"#).is_err());
        assert!(check("[]").is_err());
    }

    #[test]
    fn reads_parents_and_relations() {
        let t = parse(
            br#"{"models":[{"model":"r","parents":[],"relation":"root"},
                                     {"model":"c","parents":["r"],"relation":"finetune"}]}"#,
        )
        .expect("valid");
        assert_eq!(t.lineage.len(), 2);
        assert_eq!(t.lineage[1].parents, ["r"]);
        assert_eq!(t.audit, None);
        assert!(parse(br#"{"models":[{"model":"r","relation":3}]}"#).is_err());
    }
}
