//! Whole-file downloads into the standard Hugging Face cache (`--full` mode), shared with Python tools. The
//! transfer and the cache layout are `hf-hub`'s; what is downloaded, and whether it is kept, is decided here.
//!
//! Layout (written by `hf-hub`, as `huggingface_hub` writes it): `{cache}/models--{owner}--{name}/blobs/{etag}`
//! holds the content, named by its `X-Linked-Etag` (the sha256 of an LFS file, the git blob id of a small one);
//! `snapshots/{commit}/{file}` is a relative symlink to the blob; `refs/{branch}` holds a commit id; `hf-hub`
//! keeps its lock files under `{cache}/.locks/`.
//!
//! [`HfCache::download`] resolves the file itself first ([`HubClient::resolve`]: vetted, counted, commit
//! checked), which gives the size and digest the blob must have. It then lets `hf-hub` download the file at the
//! pinned commit with the client's own `reqwest` client for downloads (its redirect policy applies the
//! client's address rules and hop limit; the token goes only to the endpoint's origin), after taking the
//! `resolvers` budget for `hf-hub`'s two requests and a slot of the concurrency limit, with `hf-hub`'s own
//! retries off and the whole transfer under the client's deadline. Afterwards the result is checked: the
//! snapshot must be the pinned commit's, and the blob must have the resolved size and digest (sha256 for LFS
//! files, the git blob id for small ones). `hf-hub` writes whatever body its `GET` receives, error pages
//! included, so a blob that fails the check is removed with its snapshot link and the download retried with
//! the client's backoff; after `max_retries` the error is returned and nothing unchecked stays in the cache.
//! A blob already present and correct costs no request beyond the resolve.

use std::path::{Path, PathBuf};

use tokio::io::AsyncReadExt;

use crate::client::{HubClient, Resolved};
use crate::error::HubError;
use crate::ids::{Commit, RepoId, check_file_name};

/// The cache root from the environment: `HF_HUB_CACHE`, `HUGGINGFACE_HUB_CACHE`, `$HF_HOME/hub`,
/// `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`; `None` without any of them.
pub fn cache_dir_from_env() -> Option<PathBuf> {
    cache_dir_from_lookup(|k| std::env::var(k).ok())
}

/// [`cache_dir_from_env`] with the variables read through `var`.
pub fn cache_dir_from_lookup(var: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let set = |k: &str| var(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    set("HF_HUB_CACHE")
        .or_else(|| set("HUGGINGFACE_HUB_CACHE"))
        .or_else(|| set("HF_HOME").map(|h| h.join("hub")))
        .or_else(|| set("XDG_CACHE_HOME").map(|x| x.join("huggingface").join("hub")))
        .or_else(|| set("HOME").map(|h| h.join(".cache").join("huggingface").join("hub")))
}

/// A Hugging Face cache directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HfCache {
    root: PathBuf,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> HubError + '_ {
    move |source| HubError::Io { path: path.to_owned(), source }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl HfCache {
    pub fn new(root: impl Into<PathBuf>) -> HfCache {
        HfCache { root: root.into() }
    }

    /// The cache of [`cache_dir_from_env`].
    pub fn from_env() -> Option<HfCache> {
        cache_dir_from_env().map(HfCache::new)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn repo_dir(&self, id: &RepoId) -> PathBuf {
        self.root.join(id.cache_folder())
    }

    /// Where `file` of `id` at `commit` appears in the cache (whether or not it is there).
    pub fn snapshot_path(&self, id: &RepoId, commit: &Commit, file: &str) -> PathBuf {
        let mut p = self.repo_dir(id).join("snapshots").join(commit.as_str());
        p.extend(file.split('/'));
        p
    }

    /// Records that branch `name` (e.g. `main`) of `id` points at `commit`, as `refs/{name}`.
    ///
    /// # Errors
    /// [`HubError::BadRevision`] for a name that is not a plain branch name; IO errors.
    pub async fn set_ref(&self, id: &RepoId, name: &str, commit: &Commit) -> Result<(), HubError> {
        // refs/pr/1 style names nest; each part must be a safe path segment.
        check_file_name(name).map_err(|_| HubError::BadRevision { revision: name.chars().take(80).collect() })?;
        let mut path = self.repo_dir(id).join("refs");
        path.extend(name.split('/'));
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(io_err(parent))?;
        }
        let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
        tokio::fs::write(&tmp, commit.as_str()).await.map_err(io_err(&tmp))?;
        tokio::fs::rename(&tmp, &path).await.map_err(io_err(&path))
    }

    fn blob_path(&self, id: &RepoId, etag: &str) -> PathBuf {
        self.repo_dir(id).join("blobs").join(etag)
    }

    /// Downloads `file` of `id` at `commit` into the cache (unless its blob is already there and correct) and
    /// returns its snapshot path; see the module docs.
    ///
    /// # Errors
    /// [`HubError::BadFileName`]; [`HubError::BadHeader`] for an etag that cannot name a blob;
    /// [`HubError::CommitMismatch`] when the snapshot written is another commit's; [`HubError::SizeMismatch`] /
    /// [`HubError::DigestMismatch`] when the content is not what was resolved, [`HubError::Download`] /
    /// [`HubError::DownloadTimeout`] when `hf-hub` fails, each after the retries; Hub and IO errors.
    pub async fn download(
        &self,
        client: &HubClient,
        id: &RepoId,
        commit: &Commit,
        file: &str,
    ) -> Result<PathBuf, HubError> {
        check_file_name(file)?;
        let tally = client.tally(None);
        let resolved = client.resolve_with(id, commit, file, tally).await?;
        let etag = resolved.etag.clone().unwrap_or_default().to_ascii_lowercase();
        // The etag names the blob file: only a sha256 or a git blob id is accepted.
        let digest = if is_hex(&etag, 64) {
            Expected::Sha256
        } else if is_hex(&etag, 40) {
            Expected::GitBlob
        } else {
            return Err(HubError::BadHeader { url: format!("{id}/{file}"), name: "x-linked-etag" });
        };
        let check = Check { size: resolved.size, digest, etag, url: format!("{id}/{file}") };
        let snapshot = self.snapshot_path(id, commit, file);
        let blob = self.blob_path(id, &check.etag);
        if check.verify(&snapshot).await.is_ok() {
            return Ok(snapshot);
        }
        // A snapshot that is there but wrong would be returned by `hf-hub` as it is.
        discard(&snapshot, &blob, &check).await;
        let mut attempt = 0u32;
        loop {
            let result = self.fetch(client, &resolved, &snapshot, tally).await;
            let result = match result {
                Ok(()) => check.verify(&snapshot).await,
                Err(e) => Err(e),
            };
            let error = match result {
                Ok(()) => {
                    client.count_download(&resolved, resolved.size, tally);
                    return Ok(snapshot);
                }
                Err(e) => e,
            };
            discard(&snapshot, &blob, &check).await;
            if let HubError::Download { source, .. } = &error
                && let hf_hub::HFError::RateLimited { retry_after: Some(wait), .. } = source.as_ref()
            {
                // As for an `r=0` our own requests see: no request on the bucket before the reset plus a second.
                client.pause_resolvers((*wait + std::time::Duration::from_secs(1)).min(client.config().max_wait));
            }
            if !retriable(&error) || attempt >= client.config().max_retries {
                return Err(error);
            }
            attempt += 1;
            tracing::debug!(repo = %id, file, attempt, error = %error, "download failed, retrying");
            tokio::time::sleep(client.backoff(attempt)).await;
        }
    }

    /// One download by `hf-hub`, admitted by the client and bounded by its deadline.
    async fn fetch(
        &self,
        client: &HubClient,
        resolved: &Resolved,
        snapshot: &Path,
        tally: crate::client::Tally<'_>,
    ) -> Result<(), HubError> {
        let url = format!("{}/{}", resolved.repo, resolved.file);
        let config = client.config();
        let mut builder = hf_hub::HFClient::builder()
            .endpoint(client.endpoint().as_str().trim_end_matches('/'))
            .client(client.download_http().clone())
            .user_agent(config.user_agent.clone())
            .cache_dir(&self.root)
            // Retries are ours: `hf-hub`'s would resend without waiting for an announced reset.
            .retry_max_attempts(0);
        if let Some(token) = &config.token {
            builder = builder.token(token.secret());
        }
        let hf = builder.build().map_err(|e| HubError::Download { url: url.clone(), source: Box::new(e) })?;
        let (owner, name) = resolved.repo.as_str().split_once('/').unwrap_or(("", resolved.repo.as_str()));
        let _slot = client.admit_download(resolved, tally).await?;
        // Two requests (HEAD, GET) and the transfer; `hf-hub`'s HEAD client has no timeouts of its own.
        let deadline = client.deadline(0) + client.deadline(resolved.size);
        let repo = hf.model(owner, name);
        let send = repo.download_file().filename(resolved.file.clone()).revision(resolved.commit.as_str()).send();
        let path = tokio::time::timeout(deadline, send)
            .await
            .map_err(|_| HubError::DownloadTimeout { url: url.clone(), seconds: deadline.as_secs() })?
            .map_err(|e| HubError::Download { url: url.clone(), source: Box::new(scrubbed(e)) })?;
        if path != snapshot {
            // `hf-hub` files the snapshot under the commit its HEAD was answered from.
            let found = path
                .strip_prefix(self.repo_dir(&resolved.repo).join("snapshots"))
                .ok()
                .and_then(|p| p.components().next())
                .map_or_else(|| path.display().to_string(), |c| c.as_os_str().to_string_lossy().into_owned());
            return Err(HubError::CommitMismatch { url, expected: resolved.commit.to_string(), found });
        }
        Ok(())
    }
}

/// Which digest a blob's name is.
#[derive(Clone, Copy, Debug)]
enum Expected {
    /// The sha256 of the content (LFS files).
    Sha256,
    /// The git blob id: sha1 of `blob {len}\0` and the content (files stored in git).
    GitBlob,
}

/// What a cached file must be: the resolved size, and the digest its etag names.
struct Check {
    size: u64,
    digest: Expected,
    etag: String,
    /// `{repo}/{file}`, for errors.
    url: String,
}

impl Check {
    /// Checks the file at `path` (a snapshot link is followed).
    async fn verify(&self, path: &Path) -> Result<(), HubError> {
        use sha2::Digest as _;
        let url = || self.url.clone();
        let found_size = tokio::fs::metadata(path).await.map_err(io_err(path))?.len();
        if found_size != self.size {
            return Err(HubError::SizeMismatch { url: url(), expected: self.size, found: found_size });
        }
        let mut file = tokio::fs::File::open(path).await.map_err(io_err(path))?;
        let mut sha256 = sha2::Sha256::new();
        let mut sha1 = sha1::Sha1::new();
        if matches!(self.digest, Expected::GitBlob) {
            sha1.update(format!("blob {}\0", self.size).as_bytes());
        }
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).await.map_err(io_err(path))?;
            if n == 0 {
                break;
            }
            let chunk = buf.get(..n).unwrap_or_default();
            match self.digest {
                Expected::Sha256 => sha256.update(chunk),
                Expected::GitBlob => sha1.update(chunk),
            }
        }
        let found: String = match self.digest {
            Expected::Sha256 => sha256.finalize().iter().map(|b| format!("{b:02x}")).collect(),
            Expected::GitBlob => sha1.finalize().iter().map(|b| format!("{b:02x}")).collect(),
        };
        if found != self.etag {
            return Err(HubError::DigestMismatch { url: url(), expected: self.etag.clone(), found });
        }
        Ok(())
    }
}

/// Removes what a failed download left that is not a correct file: the snapshot link and the blob it points
/// to when they fail the check (a concurrent download of the same blob may have put a good one there), a blob
/// without a link that fails it, and `hf-hub`'s partial file.
async fn discard(snapshot: &Path, blob: &Path, check: &Check) {
    if check.verify(snapshot).await.is_err() {
        if let Ok(target) = tokio::fs::canonicalize(snapshot).await {
            let _ = tokio::fs::remove_file(target).await;
        }
        let _ = tokio::fs::remove_file(snapshot).await;
    }
    if check.verify(blob).await.is_err() {
        let _ = tokio::fs::remove_file(blob).await;
    }
    let mut partial = blob.as_os_str().to_owned();
    partial.push(".incomplete");
    let _ = tokio::fs::remove_file(PathBuf::from(partial)).await;
}

/// `hf-hub`'s error with its URLs shown without their query: a signed CDN URL carries a credential there.
fn scrubbed(e: hf_hub::HFError) -> hf_hub::HFError {
    match e {
        hf_hub::HFError::Request { source, url } => hf_hub::HFError::Request {
            source: source.without_url(),
            url: url.map(|u| u.split(['?', '#']).next().unwrap_or_default().to_owned()),
        },
        other => other,
    }
}

/// Whether another attempt may succeed: `hf-hub` failures other than access answers, timeouts, and content
/// that was not what was resolved (an error page written as the blob, a body cut short).
fn retriable(e: &HubError) -> bool {
    match e {
        HubError::Download { source, .. } => !matches!(
            source.as_ref(),
            hf_hub::HFError::RepoNotFound { .. }
                | hf_hub::HFError::RevisionNotFound { .. }
                | hf_hub::HFError::EntryNotFound { .. }
                | hf_hub::HFError::AuthRequired { .. }
                | hf_hub::HFError::Forbidden { .. }
        ),
        HubError::DownloadTimeout { .. } | HubError::SizeMismatch { .. } | HubError::DigestMismatch { .. } => true,
        other => other.is_transient(),
    }
}

/// Downloads `file` of `id` at `commit` into the cache named by the environment; see [`HfCache::download`].
///
/// # Errors
/// As [`HfCache::download`], plus [`HubError::BadConfig`] when no cache directory can be derived.
pub async fn download_to_cache(
    client: &HubClient,
    id: &RepoId,
    commit: &Commit,
    file: &str,
) -> Result<PathBuf, HubError> {
    let cache = HfCache::from_env().ok_or(HubError::BadConfig { reason: "no cache directory (set HF_HUB_CACHE)" })?;
    cache.download(client, id, commit, file).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn cache_dir_follows_huggingface_hub() {
        let check = |vars: &[(&str, &str)], expected: Option<&str>| {
            let map: HashMap<String, String> = vars.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
            assert_eq!(cache_dir_from_lookup(|k| map.get(k).cloned()), expected.map(PathBuf::from), "{vars:?}");
        };
        check(&[("HF_HUB_CACHE", "/c"), ("HF_HOME", "/h")], Some("/c"));
        check(&[("HUGGINGFACE_HUB_CACHE", "/o"), ("HF_HOME", "/h")], Some("/o"));
        check(&[("HF_HOME", "/h"), ("HOME", "/u")], Some("/h/hub"));
        check(&[("XDG_CACHE_HOME", "/x"), ("HOME", "/u")], Some("/x/huggingface/hub"));
        check(&[("HOME", "/u")], Some("/u/.cache/huggingface/hub"));
        check(&[], None);
    }

    #[test]
    fn snapshot_paths() {
        let cache = HfCache::new("/c");
        let id = RepoId::parse("acme/tiny").expect("id");
        let commit = Commit::parse(&"a".repeat(40)).expect("commit");
        assert_eq!(
            cache.snapshot_path(&id, &commit, "onnx/model.onnx"),
            PathBuf::from(format!("/c/models--acme--tiny/snapshots/{}/onnx/model.onnx", "a".repeat(40)))
        );
    }
}
