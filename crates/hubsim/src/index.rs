//! The repo index: what a scan of the root folder found, with everything the routes need precomputed.
//!
//! A repo is a folder `root/org/name`. For each file the index keeps its size and the identifiers git and git-lfs
//! would give it (git blob oid; for LFS files the sha256 and the pointer file's size and oid). A repo's commit sha is
//! a sha1 over its sorted paths and oids, so it changes exactly when a file changes. The Hub's derived fields
//! (tags, `base_model` relations, `config` subset, `safetensors` parameter counts) are computed once per scan.
//!
//! Safety: only regular files found by walking the root are indexed; symlinks, names containing `..` and non-UTF-8
//! names are skipped with a log line. Requests are answered by looking a path up in this index, never by joining
//! request text onto the root, so nothing outside the root can be served.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};
use sha1::Sha1;
use sha2::{Digest, Sha256};

use crate::card;
use crate::safetensors;

/// Extensions the Hub's default `.gitattributes` routes to LFS (the common subset).
const LFS_EXTENSIONS: [&str; 22] = [
    "7z",
    "arrow",
    "bin",
    "bz2",
    "ckpt",
    "ftz",
    "gguf",
    "gz",
    "h5",
    "joblib",
    "mlmodel",
    "model",
    "msgpack",
    "npy",
    "npz",
    "onnx",
    "ot",
    "parquet",
    "pb",
    "pickle",
    "pkl",
    "safetensors",
];

/// Directories that are tooling state, not repo content (a git checkout, huggingface_hub's `local_dir` metadata).
const SKIPPED_DIRS: [&str; 2] = [".git", ".cache"];

/// The file with creation dates, at the root.
pub(crate) const GROUND_TRUTH: &str = "ground_truth.json";

/// One file of a repo.
#[derive(Debug, Clone)]
pub(crate) struct FileEntry {
    /// Path inside the repo, `/`-separated.
    pub path: String,
    pub abs: PathBuf,
    pub size: u64,
    /// Git blob oid (for LFS files: of the pointer file).
    pub oid: String,
    pub lfs: Option<LfsInfo>,
}

#[derive(Debug, Clone)]
pub(crate) struct LfsInfo {
    pub sha256: String,
    pub pointer_size: u64,
}

/// `safetensors` as the Hub reports it.
#[derive(Debug, Clone)]
pub(crate) struct SafetensorsInfo {
    pub parameters: BTreeMap<String, u64>,
    pub total: u64,
}

/// One repo with its derived Hub fields.
#[derive(Debug, Clone)]
pub(crate) struct Repo {
    pub id: String,
    pub author: String,
    /// 24 hex digits, shaped like a Mongo ObjectId (creation time, then a hash of the id).
    pub object_id: String,
    pub sha: String,
    pub created_at: DateTime<Utc>,
    pub last_modified: DateTime<Utc>,
    pub files: BTreeMap<String, FileEntry>,
    /// Every directory path inside the repo, with its tree oid.
    pub dirs: BTreeMap<String, String>,
    pub card: Option<Value>,
    pub config: Option<Value>,
    pub tags: Vec<String>,
    pub pipeline_tag: Option<String>,
    pub library_name: Option<String>,
    pub base_models: Vec<String>,
    pub relation: Option<&'static str>,
    pub safetensors: Option<SafetensorsInfo>,
    pub gated: bool,
    pub private: bool,
    pub children: usize,
    pub used_storage: u64,
}

impl Repo {
    /// The file whose LFS object has this sha256.
    pub fn lfs_file(&self, sha256: &str) -> Option<&FileEntry> {
        self.files.values().find(|f| f.lfs.as_ref().is_some_and(|l| l.sha256 == sha256))
    }
}

/// What a scan found.
#[derive(Debug, Default)]
pub(crate) struct Index {
    pub repos: BTreeMap<String, Arc<Repo>>,
}

/// Summary of a scan, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanReport {
    pub repos: usize,
    pub files: usize,
    /// One line per skipped entry: what and why.
    pub skipped: Vec<String>,
}

/// Settings of a scan that come from the server config.
#[derive(Debug, Clone)]
pub(crate) struct ScanOptions {
    pub large_file_threshold: u64,
    pub gated: Vec<String>,
    pub private: Vec<String>,
}

#[derive(Debug, Clone)]
struct CachedHash {
    size: u64,
    mtime: Option<SystemTime>,
    lfs: bool,
    oid: String,
    sha256: Option<String>,
}

/// How long the picture of the root taken at a scan is trusted for [`Scanner::is_current`]. A file edited in place
/// inside a repo changes no folder's mtime, so such an edit shows in a listing after at most this long.
pub(crate) const SHAPE_MAX_AGE: Duration = Duration::from_secs(10);

/// A picture whose newest mtime is this close to the moment it was taken is not trusted: mtimes have a coarse
/// granularity (a kernel tick; two seconds on FAT), so a repo pushed in the same tick as the picture would leave
/// it unchanged.
const SHAPE_RACY_WINDOW: Duration = Duration::from_secs(2);

/// The root's shape: the mtimes of the root, of every entry in it and of every entry of each org folder. Creating,
/// removing or renaming a repo or an org changes one of them, so comparing two shapes costs a `readdir` of the
/// root and of each org instead of a scan of every repo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Shape(Vec<(PathBuf, Option<SystemTime>)>);

impl Shape {
    /// # Errors
    /// When the root cannot be read; an org folder that cannot be read contributes only its own mtime.
    pub fn of(root: &Path) -> io::Result<Shape> {
        let mut seen = vec![(root.to_path_buf(), fs::metadata(root)?.modified().ok())];
        for entry in sorted_dir(root)? {
            // `DirEntry::metadata` does not follow symlinks, as the scan does not.
            let meta = entry.metadata().ok();
            seen.push((entry.path(), meta.as_ref().and_then(|m| m.modified().ok())));
            if meta.is_some_and(|m| m.is_dir()) {
                for repo in sorted_dir(&entry.path()).unwrap_or_default() {
                    seen.push((repo.path(), repo.metadata().ok().and_then(|m| m.modified().ok())));
                }
            }
        }
        Ok(Shape(seen))
    }

    /// Whether every mtime is known and older than `taken` by more than the racy window.
    fn settled_before(&self, taken: SystemTime) -> bool {
        self.0.iter().all(|(_, mtime)| mtime.is_some_and(|t| t + SHAPE_RACY_WINDOW < taken))
    }
}

/// The shape of the root when the last scan started.
#[derive(Debug)]
struct LastShape {
    shape: Shape,
    wall: SystemTime,
    at: Instant,
}

/// Scans the root; keeps file hashes between scans, keyed by path, size and mtime, so a rescan reads only changed
/// files.
#[derive(Debug, Default)]
pub(crate) struct Scanner {
    cache: HashMap<PathBuf, CachedHash>,
    /// The root's shape taken before the last scan walked it, so a change made during the walk also differs.
    last_shape: Option<LastShape>,
    /// Whether a scan has completed: repos that appear in a later scan were just pushed, so their
    /// `lastModified` is the time they appeared, as on the Hub (a crawler listing by `lastModified` must see
    /// them first).
    scanned: bool,
}

impl Scanner {
    /// Scans `root`. `previous` carries dates across scans: an unchanged repo keeps its dates, a changed one gets
    /// `lastModified` = now, and so does a repo that appeared since the first scan (its `createdAt` still comes
    /// from `ground_truth.json` or the file mtimes, so lineage priors do not depend on when it was added).
    ///
    /// # Errors
    /// Only when the root itself cannot be read; problems inside a repo skip that repo or file.
    pub fn scan(&mut self, root: &Path, opts: &ScanOptions, previous: &Index) -> io::Result<(Index, ScanReport)> {
        let shape = Shape::of(root).ok().map(|shape| LastShape { shape, wall: SystemTime::now(), at: Instant::now() });
        let mut report = ScanReport::default();
        let created = ground_truth_dates(root, &mut report);
        let mut repos = BTreeMap::new();
        let mut seen = HashSet::new();
        for org in sorted_dir(root)? {
            let Some(org_name) = checked_entry(&org, &mut report) else { continue };
            // Files at the top level (ground_truth.json, notes) are not repos.
            if !org.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if !card::is_name(&org_name) {
                skip(&mut report, org.path(), "not a valid org name");
                continue;
            }
            let entries = match sorted_dir(&org.path()) {
                Ok(entries) => entries,
                Err(e) => {
                    skip(&mut report, org.path(), &e.to_string());
                    continue;
                }
            };
            for repo_dir in entries {
                let Some(name) = checked_entry(&repo_dir, &mut report) else { continue };
                if !repo_dir.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                if !card::is_name(&name) {
                    skip(&mut report, repo_dir.path(), "not a valid repo name");
                    continue;
                }
                let id = format!("{org_name}/{name}");
                match self.scan_repo(&id, &repo_dir.path(), opts, &mut seen, &mut report) {
                    Ok(repo) => {
                        report.files += repo.files.len();
                        repos.insert(id, repo);
                    }
                    Err(e) => skip(&mut report, repo_dir.path(), &e.to_string()),
                }
            }
        }
        self.cache.retain(|path, _| seen.contains(path));
        let now = Utc::now();
        let mut children: HashMap<String, usize> = HashMap::new();
        for repo in repos.values() {
            for base in &repo.base_models {
                *children.entry(base.clone()).or_default() += 1;
            }
        }
        let mut index = Index::default();
        for (id, mut repo) in repos {
            let (created_at, last_modified) = match previous.repos.get(&id) {
                Some(prev) if prev.sha == repo.sha => (prev.created_at, prev.last_modified),
                Some(prev) => (prev.created_at, now.max(prev.last_modified)),
                None => {
                    let (created_at, last_modified) = match created.get(&id) {
                        Some(date) => (*date, *date),
                        None => (repo.created_at, repo.last_modified),
                    };
                    (created_at, if self.scanned { now.max(last_modified) } else { last_modified })
                }
            };
            repo.created_at = created_at;
            repo.last_modified = last_modified;
            repo.object_id = object_id(&id, created_at);
            repo.children = children.get(&id).copied().unwrap_or(0);
            index.repos.insert(id, Arc::new(repo));
        }
        report.repos = index.repos.len();
        self.scanned = true;
        self.last_shape = shape;
        Ok((index, report))
    }

    /// Whether a scan of `root` now would find what the last one found, as far as a look at the root's shape can
    /// tell: the shape is unchanged, it was settled when taken, and it is younger than [`SHAPE_MAX_AGE`]. A listing
    /// rescans only when this is false, so a busy crawler's listings do not re-read every repo each time.
    pub fn is_current(&self, root: &Path, now: Instant) -> bool {
        let Some(last) = &self.last_shape else { return false };
        now.saturating_duration_since(last.at) < SHAPE_MAX_AGE
            && last.shape.settled_before(last.wall)
            && Shape::of(root).is_ok_and(|shape| shape == last.shape)
    }

    fn scan_repo(
        &mut self,
        id: &str,
        dir: &Path,
        opts: &ScanOptions,
        seen: &mut HashSet<PathBuf>,
        report: &mut ScanReport,
    ) -> io::Result<Repo> {
        let mut files = BTreeMap::new();
        let mut mtimes = Vec::new();
        let mut stack = vec![(dir.to_path_buf(), String::new())];
        while let Some((abs_dir, rel_dir)) = stack.pop() {
            for entry in sorted_dir(&abs_dir)? {
                let Some(name) = checked_entry(&entry, report) else { continue };
                let rel = if rel_dir.is_empty() { name.clone() } else { format!("{rel_dir}/{name}") };
                let kind = entry.file_type()?;
                if kind.is_dir() {
                    if !SKIPPED_DIRS.contains(&name.as_str()) {
                        stack.push((entry.path(), rel));
                    }
                    continue;
                }
                if !kind.is_file() {
                    skip(report, entry.path(), "not a regular file");
                    continue;
                }
                let meta = entry.metadata()?;
                let mtime = meta.modified().ok();
                mtimes.extend(mtime);
                let hashed = self.hash(&entry.path(), &rel, meta.len(), mtime, opts.large_file_threshold)?;
                seen.insert(entry.path());
                files.insert(rel, hashed);
            }
        }
        let mut commit = Sha1::new();
        commit.update(b"hubsim commit v1\n");
        for file in files.values() {
            commit.update(format!("{}\0{}\n", file.path, file.oid).as_bytes());
        }
        let sha = hex(&commit.finalize());
        let dirs = tree_oids(&files);
        let read_json = |name: &str| -> Option<Value> {
            let file = files.get(name)?;
            let text = fs::read(&file.abs).ok()?;
            match serde_json::from_slice(&text) {
                Ok(v) => Some(v),
                Err(e) => {
                    tracing::warn!(repo = %id, file = name, error = %e, "unparsable json, ignored");
                    None
                }
            }
        };
        let config_json = read_json("config.json");
        let adapter_json = read_json("adapter_config.json");
        let index_json = read_json("model.safetensors.index.json");
        // A card that cannot be read or parsed (an alias bomb included) leaves the repo without `cardData`, as on
        // the Hub; the repo is still served.
        let card = files.get("README.md").and_then(|f| {
            card::read_card(&f.abs).unwrap_or_else(|e| {
                tracing::warn!(repo = %id, error = %e, "model card has no card data");
                None
            })
        });
        let safetensors = safetensors_info(id, &files, index_json.as_ref());
        let derived = derive(id, &files, card.as_ref(), config_json.as_ref(), adapter_json.as_ref(), &safetensors);
        let to_date = |t: Option<&SystemTime>| t.map_or(DateTime::UNIX_EPOCH, |t| DateTime::<Utc>::from(*t));
        let used_storage = files.values().map(|f| f.size).sum();
        Ok(Repo {
            id: id.to_owned(),
            author: id.split('/').next().unwrap_or(id).to_owned(),
            object_id: String::new(),
            sha,
            created_at: to_date(mtimes.iter().min()),
            last_modified: to_date(mtimes.iter().max()),
            files,
            dirs,
            card,
            config: derived.config,
            tags: derived.tags,
            pipeline_tag: derived.pipeline_tag,
            library_name: derived.library_name,
            base_models: derived.base_models,
            relation: derived.relation,
            safetensors,
            gated: opts.gated.iter().any(|g| g == id),
            private: opts.private.iter().any(|p| p == id),
            children: 0,
            used_storage,
        })
    }

    fn hash(
        &mut self,
        abs: &Path,
        rel: &str,
        size: u64,
        mtime: Option<SystemTime>,
        threshold: u64,
    ) -> io::Result<FileEntry> {
        let lfs = size >= threshold || has_lfs_extension(rel);
        let cached =
            self.cache.get(abs).filter(|c| c.size == size && c.mtime == mtime && c.lfs == lfs && mtime.is_some());
        let cached = match cached {
            Some(c) => c.clone(),
            None => {
                let c = hash_file(abs, size, lfs)?;
                let c = CachedHash { size, mtime, ..c };
                self.cache.insert(abs.to_path_buf(), c.clone());
                c
            }
        };
        let lfs = cached.sha256.map(|sha256| LfsInfo { pointer_size: lfs_pointer(&sha256, size).len() as u64, sha256 });
        Ok(FileEntry { path: rel.to_owned(), abs: abs.to_path_buf(), size, oid: cached.oid, lfs })
    }
}

fn has_lfs_extension(path: &str) -> bool {
    path.rsplit_once('.').is_some_and(|(_, ext)| LFS_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str()))
}

/// The text git-lfs stores in git in place of the file.
pub(crate) fn lfs_pointer(sha256: &str, size: u64) -> String {
    format!("version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n")
}

/// The git blob oid of `bytes`.
pub(crate) fn git_oid(bytes: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(format!("blob {}\0", bytes.len()).as_bytes());
    h.update(bytes);
    hex(&h.finalize())
}

/// Hashes a file in chunks (files may be many gigabytes): git oid for git files, sha256 for LFS files.
fn hash_file(abs: &Path, size: u64, lfs: bool) -> io::Result<CachedHash> {
    let mut file = fs::File::open(abs)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut git = Sha1::new();
    git.update(format!("blob {size}\0").as_bytes());
    let mut sha = Sha256::new();
    let mut read_total = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let chunk = buf.get(..n).unwrap_or_default();
        if lfs {
            sha.update(chunk);
        } else {
            git.update(chunk);
        }
        read_total += n as u64;
    }
    if read_total != size {
        return Err(io::Error::other(format!("{} changed size while being hashed", abs.display())));
    }
    Ok(if lfs {
        let sha256 = hex(&sha.finalize());
        CachedHash { size, mtime: None, lfs, oid: git_oid(lfs_pointer(&sha256, size).as_bytes()), sha256: Some(sha256) }
    } else {
        CachedHash { size, mtime: None, lfs, oid: hex(&git.finalize()), sha256: None }
    })
}

/// Tree oids for every directory: a sha1 over the paths and oids below it.
fn tree_oids(files: &BTreeMap<String, FileEntry>) -> BTreeMap<String, String> {
    let mut dirs: BTreeSet<String> = BTreeSet::new();
    for path in files.keys() {
        let mut at = 0;
        while let Some(slash) = path.get(at..).and_then(|rest| rest.find('/')) {
            dirs.insert(path.get(..at + slash).unwrap_or_default().to_owned());
            at += slash + 1;
        }
    }
    dirs.into_iter()
        .map(|dir| {
            let prefix = format!("{dir}/");
            let mut h = Sha1::new();
            h.update(b"hubsim tree v1\n");
            for f in files.values().filter(|f| f.path.starts_with(&prefix)) {
                h.update(format!("{}\0{}\n", f.path, f.oid).as_bytes());
            }
            (dir, hex(&h.finalize()))
        })
        .collect()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn object_id(id: &str, created: DateTime<Utc>) -> String {
    let secs = u32::try_from(created.timestamp().max(0)).unwrap_or(u32::MAX);
    let digest = Sha1::digest(id.as_bytes());
    format!("{secs:08x}{}", hex(digest.get(..8).unwrap_or_default()))
}

fn sorted_dir(dir: &Path) -> io::Result<Vec<fs::DirEntry>> {
    let mut entries = fs::read_dir(dir)?.collect::<io::Result<Vec<_>>>()?;
    entries.sort_by_key(fs::DirEntry::file_name);
    Ok(entries)
}

/// The entry's name if it may be indexed: UTF-8, no `..`, no backslash or control characters, not a symlink.
fn checked_entry(entry: &fs::DirEntry, report: &mut ScanReport) -> Option<String> {
    let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
        skip(report, entry.path(), "name is not UTF-8");
        return None;
    };
    if name.contains("..") || name.contains('\\') || name.chars().any(char::is_control) {
        skip(report, entry.path(), "unsafe name");
        return None;
    }
    match entry.file_type() {
        Ok(t) if t.is_symlink() => {
            skip(report, entry.path(), "symlink");
            None
        }
        Ok(_) => Some(name),
        Err(e) => {
            skip(report, entry.path(), &e.to_string());
            None
        }
    }
}

fn skip(report: &mut ScanReport, path: PathBuf, why: &str) {
    tracing::warn!(path = %path.display(), reason = why, "skipped while scanning the repo root");
    report.skipped.push(format!("{}: {why}", path.display()));
}

/// `created_at` per model from `root/ground_truth.json`, if present.
fn ground_truth_dates(root: &Path, report: &mut ScanReport) -> HashMap<String, DateTime<Utc>> {
    let path = root.join(GROUND_TRUTH);
    let Ok(text) = fs::read(&path) else { return HashMap::new() };
    let parsed: Value = match serde_json::from_slice(&text) {
        Ok(v) => v,
        Err(e) => {
            skip(report, path, &format!("unparsable: {e}"));
            return HashMap::new();
        }
    };
    let models = parsed.get("models").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    models
        .iter()
        .filter_map(|m| {
            let id = m.get("model").or_else(|| m.get("id")).and_then(Value::as_str)?;
            let date = m.get("created_at").and_then(Value::as_str)?;
            let date = DateTime::parse_from_rfc3339(date).ok()?.with_timezone(&Utc);
            Some((id.to_owned(), date))
        })
        .collect()
}

/// The Hub's `safetensors` field: parameters of `model.safetensors`, or of the shards listed in the index.
fn safetensors_info(id: &str, files: &BTreeMap<String, FileEntry>, index: Option<&Value>) -> Option<SafetensorsInfo> {
    let shards: BTreeSet<String> = match (files.get("model.safetensors"), index) {
        (Some(_), _) => BTreeSet::from(["model.safetensors".to_owned()]),
        (None, Some(index)) => {
            let map = index.get("weight_map").and_then(Value::as_object)?;
            map.values().filter_map(Value::as_str).map(str::to_owned).collect()
        }
        (None, None) => return None,
    };
    let mut parameters: BTreeMap<String, u64> = BTreeMap::new();
    for shard in &shards {
        let Some(file) = files.get(shard) else {
            tracing::warn!(repo = %id, shard = %shard, "index names a missing shard; no safetensors info");
            return None;
        };
        let counts = safetensors::read_header(&file.abs, file.size).and_then(|h| safetensors::parameters(&h));
        match counts {
            Ok(counts) => {
                for (dtype, n) in counts {
                    *parameters.entry(dtype).or_default() += n;
                }
            }
            Err(e) => {
                tracing::warn!(repo = %id, shard = %shard, error = %e, "unreadable safetensors header");
                return None;
            }
        }
    }
    let total = parameters.values().sum();
    Some(SafetensorsInfo { parameters, total })
}

struct Derived {
    config: Option<Value>,
    tags: Vec<String>,
    pipeline_tag: Option<String>,
    library_name: Option<String>,
    base_models: Vec<String>,
    relation: Option<&'static str>,
}

/// The fields the Hub derives from a repo's files and card.
fn derive(
    id: &str,
    files: &BTreeMap<String, FileEntry>,
    card: Option<&Value>,
    config_json: Option<&Value>,
    adapter_json: Option<&Value>,
    safetensors: &Option<SafetensorsInfo>,
) -> Derived {
    let model_type = config_json.and_then(|c| c.get("model_type")).and_then(Value::as_str);
    let architectures = config_json.and_then(|c| c.get("architectures")).and_then(Value::as_array);
    let quantized = config_json.is_some_and(|c| c.get("quantization_config").is_some())
        || files.keys().any(|p| p.ends_with(".gguf"));

    // The `config` subset the Hub shows: architectures, model_type, quantization_config, and for PEFT adapters
    // the base model and task type.
    let mut config = Map::new();
    for key in ["architectures", "model_type", "quantization_config"] {
        if let Some(v) = config_json.and_then(|c| c.get(key)) {
            config.insert(key.to_owned(), v.clone());
        }
    }
    if let Some(adapter) = adapter_json {
        let mut peft = Map::new();
        for key in ["base_model_name_or_path", "task_type"] {
            if let Some(v) = adapter.get(key) {
                peft.insert(key.to_owned(), v.clone());
            }
        }
        config.insert("peft".to_owned(), Value::Object(peft));
    }
    let config = (config_json.is_some() || adapter_json.is_some()).then_some(Value::Object(config));

    let library_name = card::string_field(card, "library_name").or_else(|| {
        if adapter_json.is_some() { Some("peft".to_owned()) } else { config_json.map(|_| "transformers".to_owned()) }
    });
    let pipeline_tag = card::string_field(card, "pipeline_tag").or_else(|| {
        let arch = architectures?.first()?.as_str()?;
        let task = [
            ("ForCausalLM", "text-generation"),
            ("ForSequenceClassification", "text-classification"),
            ("ForMaskedLM", "fill-mask"),
            ("ForTokenClassification", "token-classification"),
            ("ForQuestionAnswering", "question-answering"),
            ("ForImageClassification", "image-classification"),
        ]
        .iter()
        .find(|(suffix, _)| arch.ends_with(suffix))?;
        Some(task.1.to_owned())
    });

    let base_models: Vec<String> = card::string_list(card, "base_model")
        .into_iter()
        .filter(|b| card::is_repo_id(b) && b != id)
        .fold(Vec::new(), |mut acc, b| {
            if !acc.contains(&b) {
                acc.push(b);
            }
            acc
        });
    // A declared relation wins when it is one the Hub knows; otherwise the Hub infers it from the files.
    let declared = card::string_field(card, "base_model_relation");
    let relation = (!base_models.is_empty()).then(|| {
        declared.as_deref().and_then(|d| card::RELATIONS.iter().copied().find(|r| *r == d)).unwrap_or(
            if files.contains_key("adapter_config.json") {
                "adapter"
            } else if quantized {
                "quantized"
            } else if base_models.len() > 1 {
                "merge"
            } else {
                "finetune"
            },
        )
    });

    let mut tags: Vec<String> = Vec::new();
    let mut push = |t: String| {
        if !t.is_empty() && !tags.contains(&t) {
            tags.push(t);
        }
    };
    library_name.iter().for_each(|l| push(l.clone()));
    if safetensors.is_some() || files.keys().any(|p| p.ends_with(".safetensors")) {
        push("safetensors".to_owned());
    }
    model_type.iter().for_each(|m| push((*m).to_owned()));
    pipeline_tag.iter().for_each(|p| push(p.clone()));
    card::string_list(card, "tags").into_iter().for_each(&mut push);
    for base in &base_models {
        push(format!("base_model:{base}"));
        if let Some(rel) = relation {
            push(format!("base_model:{rel}:{base}"));
        }
    }
    card::string_list(card, "datasets").into_iter().for_each(|d| push(format!("dataset:{d}")));
    card::string_list(card, "license").into_iter().for_each(|l| push(format!("license:{l}")));
    push("region:us".to_owned());

    Derived { config, tags, pipeline_tag, library_name, base_models, relation }
}

/// The JSON for a `safetensors` field.
pub(crate) fn safetensors_json(info: &SafetensorsInfo) -> Value {
    json!({"parameters": info.parameters, "total": info.total})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, bytes: &[u8]) {
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(path, bytes).expect("write");
    }

    fn safetensors_file(tensors: &[(&str, &str, &[u64])]) -> Vec<u8> {
        let mut header = Map::new();
        let mut offset = 0u64;
        for (name, dtype, shape) in tensors {
            let bytes = shape.iter().product::<u64>() * if *dtype == "F32" { 4 } else { 2 };
            header.insert(
                (*name).to_owned(),
                json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + bytes]}),
            );
            offset += bytes;
        }
        let header = serde_json::to_vec(&Value::Object(header)).expect("json");
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&header);
        out.resize(out.len() + offset as usize, 7);
        out
    }

    fn opts() -> ScanOptions {
        ScanOptions { large_file_threshold: 1 << 20, gated: vec![], private: vec![] }
    }

    #[test]
    fn git_oid_matches_git() {
        // `printf 'hello\n' | git hash-object --stdin`
        assert_eq!(git_oid(b"hello\n"), "ce013625030ba8dba906f756967f9e9ca394464a");
        assert_eq!(git_oid(b""), "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391");
    }

    #[test]
    fn scan_derives_hub_fields() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        write(&root.join("org/base/config.json"), br#"{"architectures":["LlamaForCausalLM"],"model_type":"llama"}"#);
        write(
            &root.join("org/base/model.safetensors"),
            &safetensors_file(&[("w", "BF16", &[4, 8]), ("b", "F32", &[3])]),
        );
        write(&root.join("org/base/README.md"), b"---\nlicense: mit\ntags: [x]\n---\n# base\n");
        write(&root.join("org/base/sub/notes.txt"), b"hi");
        write(&root.join("org/child/config.json"), br#"{"model_type":"llama","quantization_config":{"bits":8}}"#);
        write(
            &root.join("org/child/README.md"),
            b"---\nbase_model: org/base\nlicense: [mit, apache-2.0]\nlibrary_name: transformers\n---\n",
        );
        write(&root.join("org/child/model-00001-of-00001.safetensors"), &safetensors_file(&[("w", "I8", &[4, 8])]));
        write(
            &root.join("org/child/model.safetensors.index.json"),
            br#"{"metadata":{},"weight_map":{"w":"model-00001-of-00001.safetensors"}}"#,
        );
        write(&root.join("org/bad..name/x"), b"x");
        write(
            &root.join("ground_truth.json"),
            br#"{"models":[{"model":"org/base","created_at":"2024-03-01T00:51:00Z"}]}"#,
        );
        // Issue #11: an alias bomb in a card leaves that repo without card data; the scan goes on.
        write(
            &root.join("org/bomb/README.md"),
            b"---\na: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n\
              d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n\
              g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\nh: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\ni: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]\n\
              j: &j [*i,*i,*i,*i,*i,*i,*i,*i,*i]\nbase_model: org/base\n---\n",
        );
        #[cfg(unix)]
        std::os::unix::fs::symlink("/etc/passwd", root.join("org/base/passwd")).expect("symlink");

        let mut scanner = Scanner::default();
        let (index, report) = scanner.scan(root, &opts(), &Index::default()).expect("scan");
        assert_eq!(index.repos.keys().collect::<Vec<_>>(), ["org/base", "org/bomb", "org/child"]);
        let bomb = &index.repos["org/bomb"];
        assert!(bomb.card.is_none() && bomb.base_models.is_empty(), "{:?}", bomb.card);
        assert!(report.skipped.iter().any(|s| s.contains("bad..name")), "{report:?}");
        #[cfg(unix)]
        assert!(report.skipped.iter().any(|s| s.ends_with("passwd: symlink")), "{report:?}");

        let base = &index.repos["org/base"];
        assert_eq!(base.created_at.to_rfc3339(), "2024-03-01T00:51:00+00:00");
        assert_eq!(base.last_modified, base.created_at);
        assert_eq!(base.object_id.len(), 24);
        assert!(base.object_id.starts_with(&format!("{:08x}", base.created_at.timestamp())));
        assert_eq!(base.sha.len(), 40);
        assert_eq!(
            base.files.keys().collect::<Vec<_>>(),
            ["README.md", "config.json", "model.safetensors", "sub/notes.txt"]
        );
        assert_eq!(base.dirs.keys().collect::<Vec<_>>(), ["sub"]);
        assert!(base.files["model.safetensors"].lfs.is_some());
        assert!(base.files["config.json"].lfs.is_none());
        let st = base.safetensors.as_ref().expect("safetensors");
        assert_eq!((st.parameters["BF16"], st.parameters["F32"], st.total), (32, 3, 35));
        assert_eq!(
            base.tags,
            ["transformers", "safetensors", "llama", "text-generation", "x", "license:mit", "region:us"]
        );
        assert_eq!(base.children, 1);

        let child = &index.repos["org/child"];
        assert_eq!(child.base_models, ["org/base"]);
        assert_eq!(child.relation, Some("quantized"));
        assert!(child.tags.contains(&"base_model:org/base".to_owned()));
        assert!(child.tags.contains(&"base_model:quantized:org/base".to_owned()));
        assert!(child.tags.contains(&"license:apache-2.0".to_owned()));
        assert_eq!(child.safetensors.as_ref().map(|s| s.total), Some(32));
        assert_eq!(child.pipeline_tag, None);

        // Unchanged repos keep their identity and dates; a changed one gets a new sha and a later lastModified.
        write(&root.join("org/child/extra.txt"), b"new");
        let (again, _) = scanner.scan(root, &opts(), &index).expect("rescan");
        assert_eq!(again.repos["org/base"].sha, base.sha);
        assert_eq!(again.repos["org/base"].last_modified, base.last_modified);
        assert_ne!(again.repos["org/child"].sha, child.sha);
        assert!(again.repos["org/child"].last_modified >= child.last_modified);
        assert_eq!(again.repos["org/child"].created_at, child.created_at);
    }
}
