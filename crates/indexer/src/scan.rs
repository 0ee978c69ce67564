//! `scan`: indexes model folders into the store. One folder at a time: read metadata, sign the weights, commit
//! the model and its signature in one transaction. A folder that fails is recorded and the scan goes on; a folder
//! whose files did not change since the last scan is not read again. [`scan`] wraps the roots in one recorded run
//! and re-solves lineage when the indexed set changed.

use std::path::{Path, PathBuf};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use lineage::Method;
use signature::Scheme;
use store::{FileRecord, ModelRecord, ModelStatus, RunKind, Store};

use crate::run::{Report, Writer};
use crate::{discover, meta, solve};

/// What a scan did, per folder outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanStats {
    pub new: usize,
    pub changed: usize,
    pub unchanged: usize,
    pub failed: usize,
    pub bytes_read: u64,
}

impl Report for ScanStats {
    fn stats_json(&self) -> serde_json::Value {
        serde_json::json!({
            "new": self.new, "changed": self.changed, "unchanged": self.unchanged,
            "failed": self.failed, "bytes_read": self.bytes_read,
        })
    }
}

/// Scans the roots in one recorded run, then re-solves lineage unless the last solve saw exactly the same
/// models with the same method (see [`solve::solve_if_needed`]).
///
/// # Errors
/// When a root cannot be walked or the store fails; a bad model folder is recorded as a failure.
pub fn scan(writer: &mut Writer, roots: &[PathBuf], scheme: &Scheme, method: Method) -> anyhow::Result<ScanStats> {
    writer.record(RunKind::Scan, |store, run| {
        let mut stats = ScanStats::default();
        for root in roots {
            scan_root(store, root, scheme, &mut stats)?;
        }
        solve::solve_if_needed(store, run, scheme, method)?;
        Ok(stats)
    })
}

/// Indexes every model folder under `root`.
///
/// # Errors
/// Only when the root cannot be walked or the store fails; a bad model folder is recorded as a failure.
fn scan_root(store: &mut Store, root: &Path, scheme: &Scheme, stats: &mut ScanStats) -> anyhow::Result<()> {
    let found = discover::model_dirs(root).with_context(|| format!("cannot walk {}", root.display()))?;
    let source = root.canonicalize().unwrap_or_else(|_| root.to_path_buf()).display().to_string();
    let bar = ProgressBar::new(found.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} scanning [{bar:30}] {pos}/{len} {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    for model in &found {
        bar.set_message(model.id.clone());
        let outcome = index_one(store, &source, &model.id, &model.dir, scheme);
        match outcome {
            Ok(Outcome::Unchanged) => stats.unchanged += 1,
            Ok(Outcome::Indexed { was_known, bytes }) => {
                if was_known {
                    stats.changed += 1;
                } else {
                    stats.new += 1;
                }
                stats.bytes_read += bytes;
            }
            Err(Failure::Model(err)) => {
                tracing::warn!(model = %model.id, error = %format!("{err:#}"), "model failed");
                store
                    .record_failure(&model.id, &source, &model.dir.display().to_string(), &format!("{err:#}"))
                    .context("cannot record a failure")?;
                stats.failed += 1;
            }
            Err(Failure::Store(err)) => return Err(err),
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}

enum Outcome {
    Unchanged,
    Indexed { was_known: bool, bytes: u64 },
}

/// A model's own problem (recorded, scan goes on) versus the store's (fatal).
enum Failure {
    Model(anyhow::Error),
    Store(anyhow::Error),
}

fn index_one(store: &mut Store, source: &str, id: &str, dir: &Path, scheme: &Scheme) -> Result<Outcome, Failure> {
    // The scheme is part of the revision: a folder signed under other settings is signed again.
    let revision = discover::folder_revision(dir).map_err(|e| Failure::Model(e.into()))? + "@" + &scheme.id();
    let previous = store.model_state(id).map_err(|e| Failure::Store(e.into()))?;
    if let Some((stored_revision, ModelStatus::Indexed)) = &previous
        && *stored_revision == revision
    {
        return Ok(Outcome::Unchanged);
    }
    let meta = meta::read_dir(dir, id);
    // The reader takes the LoRA scaling from adapter_config.json itself.
    let signed = signature::sign_model_dir(dir, scheme, &meta.sign_options()).map_err(|e| Failure::Model(e.into()))?;
    let bytes = signed.files.iter().map(|f| f.len).sum();
    let record = ModelRecord {
        id: id.to_owned(),
        source: source.to_owned(),
        revision,
        files: signed
            .files
            .iter()
            .map(|f| FileRecord {
                path: f.path.strip_prefix(dir).unwrap_or(&f.path).display().to_string(),
                size: f.len,
                fingerprint: file_fingerprint(&f.path),
            })
            .collect(),
        ..meta.record()
    };
    store.put_indexed(&record, &signed.signature).map_err(|e| Failure::Store(e.into()))?;
    Ok(Outcome::Indexed { was_known: previous.is_some(), bytes })
}

/// Size and modification time of a local file: what the folder revision is made of, per file.
fn file_fingerprint(path: &Path) -> String {
    let mtime = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!("mtime:{mtime}")
}
