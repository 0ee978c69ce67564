//! Whole-file downloads into the standard Hugging Face cache (`--full` mode), shared with Python tools.
//!
//! Layout: `{cache}/models--{owner}--{name}/blobs/{etag}` holds the content, named by its `X-Linked-Etag`
//! (the sha256 of an LFS file, the git blob id of a small one); `snapshots/{commit}/{file}` is a relative
//! symlink to the blob (a copy where symlinks fail); `refs/{branch}` holds a commit id. A download goes to a
//! process-unique `*.incomplete` file in `blobs/`, is checked (size against the resolved size, sha256 against
//! the etag for LFS files) and only then renamed into place, so a blob that exists is complete. A transfer
//! cut short resumes with a `Range` request from the bytes already written; a server that answers it with the
//! whole file restarts the file.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::client::HubClient;
use crate::error::{HubError, shown};
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

    /// Downloads `file` of `id` at `commit` into the cache (unless its blob is already there with the right
    /// size) and returns its snapshot path.
    ///
    /// # Errors
    /// [`HubError::BadFileName`]; [`HubError::BadHeader`] for an etag that cannot name a blob;
    /// [`HubError::SizeMismatch`] / [`HubError::DigestMismatch`] when the content is not what was resolved;
    /// Hub and IO errors.
    pub async fn download(
        &self,
        client: &HubClient,
        id: &RepoId,
        commit: &Commit,
        file: &str,
    ) -> Result<PathBuf, HubError> {
        check_file_name(file)?;
        let resolved = client.resolve(id, commit, file).await?;
        let etag = resolved.etag.clone().unwrap_or_default().to_ascii_lowercase();
        // The etag becomes a file name: only a sha256 or a git blob id is accepted.
        let sha256 = is_hex(&etag, 64);
        if !sha256 && !is_hex(&etag, 40) {
            return Err(HubError::BadHeader { url: format!("{id}/{file}"), name: "x-linked-etag" });
        }
        let blobs = self.repo_dir(id).join("blobs");
        tokio::fs::create_dir_all(&blobs).await.map_err(io_err(&blobs))?;
        let blob = blobs.join(&etag);
        let present = tokio::fs::metadata(&blob).await.is_ok_and(|m| m.is_file() && m.len() == resolved.size);
        if !present {
            let tmp = blobs.join(format!(
                "{etag}.{}-{}.incomplete",
                std::process::id(),
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
            ));
            let result = self.fetch_to(client, &resolved, &tmp, sha256.then_some(etag.as_str())).await;
            if let Err(e) = result {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
            tokio::fs::rename(&tmp, &blob).await.map_err(io_err(&blob))?;
        }
        let snapshot = self.snapshot_path(id, commit, file);
        let parent = snapshot.parent().ok_or_else(|| HubError::BadFileName { name: file.into(), reason: "empty" })?;
        tokio::fs::create_dir_all(parent).await.map_err(io_err(parent))?;
        // snapshots/{commit}/{file} → ../../blobs/{etag}, one more `..` per directory level of `file`.
        let depth = file.split('/').count() + 1;
        let target: PathBuf = std::iter::repeat_n("..", depth).collect::<PathBuf>().join("blobs").join(&etag);
        let _ = tokio::fs::remove_file(&snapshot).await;
        if symlink(&target, &snapshot).is_err() {
            tokio::fs::copy(&blob, &snapshot).await.map_err(io_err(&snapshot))?;
        }
        Ok(snapshot)
    }

    /// Streams the file into `tmp`, resuming after transient failures, then checks size and digest.
    async fn fetch_to(
        &self,
        client: &HubClient,
        resolved: &crate::client::Resolved,
        tmp: &Path,
        sha256: Option<&str>,
    ) -> Result<(), HubError> {
        let tally = client.tally(None);
        let mut out = tokio::fs::File::create(tmp).await.map_err(io_err(tmp))?;
        let mut hasher = Sha256::new();
        let mut written = 0u64;
        let mut attempts = 0u32;
        let url = format!("{}/{}", resolved.repo, resolved.file);
        while written < resolved.size || resolved.size == 0 {
            let (mut resp, start) = client.open_download(resolved, written, tally).await?;
            if start == 0 && written > 0 {
                // The server ignored the resume range: start over.
                out.set_len(0).await.map_err(io_err(tmp))?;
                out = tokio::fs::File::create(tmp).await.map_err(io_err(tmp))?;
                hasher = Sha256::new();
                written = 0;
            }
            let failure = loop {
                match resp.chunk().await {
                    Ok(Some(chunk)) => {
                        client.count_download(resolved, chunk.len() as u64, tally);
                        if written + chunk.len() as u64 > resolved.size {
                            return Err(HubError::BodyTooLong { url: shown(resp.url()), expected: resolved.size });
                        }
                        hasher.update(&chunk);
                        out.write_all(&chunk).await.map_err(io_err(tmp))?;
                        written += chunk.len() as u64;
                    }
                    Ok(None) => break None,
                    Err(e) => break Some(HubError::Transport { url: shown(resp.url()), source: e.without_url() }),
                }
            };
            if resolved.size == 0 {
                break;
            }
            if written < resolved.size {
                attempts += 1;
                if attempts > client.config().max_retries {
                    return Err(failure.unwrap_or(HubError::BodyTooShort {
                        url,
                        expected: resolved.size,
                        got: written,
                    }));
                }
                tracing::debug!(file = %resolved.file, written, "download cut short, resuming");
            }
        }
        out.flush().await.map_err(io_err(tmp))?;
        out.sync_all().await.map_err(io_err(tmp))?;
        if written != resolved.size {
            return Err(HubError::SizeMismatch { url, expected: resolved.size, found: written });
        }
        if let Some(expected) = sha256 {
            let found: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
            if found != expected {
                return Err(HubError::DigestMismatch { url, expected: expected.to_owned(), found });
            }
        }
        Ok(())
    }
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(not(unix))]
fn symlink(_target: &Path, _link: &Path) -> std::io::Result<()> {
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "no symlinks"))
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
