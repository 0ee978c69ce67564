//! Whole-file downloads into the Hugging Face cache layout.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hub::{Commit, HfCache, HubClient, HubError, RepoId};

use crate::support::{Reply, TestServer, Zoo, config, zoo_root};

#[tokio::test]
async fn downloads_land_in_the_hugging_face_layout() {
    let zoo = Arc::new(Zoo::load(&zoo_root()));
    let served = Arc::clone(&zoo);
    let server = TestServer::start(move |req, base| served.handle(req, base)).await;
    let client = HubClient::new(config(&server.url())).expect("client");
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = HfCache::new(dir.path());
    let repo = zoo.repo("quokka-research/quokka-base");
    let (id, commit) = (RepoId::parse(&repo.id).expect("id"), Commit::parse(&repo.sha).expect("commit"));
    for name in ["model-00001-of-00002.safetensors", "config.json"] {
        let path = cache.download(&client, &id, &commit, name).await.expect("downloaded");
        let file = &repo.files[name];
        assert_eq!(path, dir.path().join("models--quokka-research--quokka-base/snapshots").join(&repo.sha).join(name));
        assert_eq!(std::fs::read(&path).expect("readable"), file.bytes.as_slice());
        let link = std::fs::read_link(&path).expect("a symlink");
        let blob_name = if file.lfs { file.sha256.clone() } else { file.git_oid.clone() };
        assert_eq!(link, std::path::Path::new("../../blobs").join(&blob_name));
        assert!(dir.path().join("models--quokka-research--quokka-base/blobs").join(&blob_name).is_file());
    }
    cache.set_ref(&id, "main", &commit).await.expect("ref");
    let refs = dir.path().join("models--quokka-research--quokka-base/refs/main");
    assert_eq!(std::fs::read_to_string(refs).expect("ref file"), repo.sha);
    // A second download finds the blob and fetches nothing.
    let cdn = server.count(|q| q.path().starts_with("/cdn/"));
    cache.download(&client, &id, &commit, "model-00001-of-00002.safetensors").await.expect("cached");
    assert_eq!(server.count(|q| q.path().starts_with("/cdn/")), cdn);
    // Nothing temporary is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("models--quokka-research--quokka-base/blobs"))
        .expect("blobs")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".incomplete"))
        .collect();
    assert!(leftovers.is_empty());
}

#[tokio::test]
async fn a_cut_download_resumes_and_a_wrong_one_is_discarded() {
    let zoo = Arc::new(Zoo::load(&zoo_root()));
    let served = Arc::clone(&zoo);
    let count = AtomicUsize::new(0);
    let server = TestServer::start(move |req, base| {
        let reply = served.handle(req, base);
        if req.path().starts_with("/cdn/") && count.fetch_add(1, Ordering::SeqCst) == 0 {
            return Reply { cut_after: Some(1000), ..reply };
        }
        reply
    })
    .await;
    let client = HubClient::new(config(&server.url())).expect("client");
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = HfCache::new(dir.path());
    let repo = zoo.repo("bitforge/bf-pico");
    let (id, commit) = (RepoId::parse(&repo.id).expect("id"), Commit::parse(&repo.sha).expect("commit"));
    let path = cache.download(&client, &id, &commit, "model.safetensors").await.expect("resumed");
    assert_eq!(std::fs::read(&path).expect("readable"), repo.files["model.safetensors"].bytes.as_slice());
    let cdn: Vec<_> = server.requests().into_iter().filter(|q| q.path().starts_with("/cdn/")).collect();
    assert_eq!(cdn.len(), 2);
    assert_eq!(cdn[0].header("range"), None);
    assert_eq!(cdn[1].header("range"), Some("bytes=1000-"));

    // Content that does not match its sha256 never becomes a blob.
    let served = Arc::clone(&zoo);
    let server = TestServer::start(move |req, base| {
        let mut reply = served.handle(req, base);
        if req.path().starts_with("/cdn/")
            && let Some(b) = reply.body.last_mut()
        {
            *b ^= 1;
        }
        reply
    })
    .await;
    let client = HubClient::new(config(&server.url())).expect("client");
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = HfCache::new(dir.path());
    let e = cache.download(&client, &id, &commit, "model.safetensors").await.expect_err("corrupt");
    assert!(matches!(e, HubError::DigestMismatch { .. }), "{e}");
    let blobs = dir.path().join("models--bitforge--bf-pico/blobs");
    assert_eq!(std::fs::read_dir(blobs).expect("blobs").count(), 0, "no blob, no temporary file");
}

/// Every regular file and symlink under `dir`.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for e in entries.flatten() {
        let path = e.path();
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => out.extend(files_under(&path)),
            Ok(_) => out.push(path),
            Err(_) => {}
        }
    }
    out
}

#[tokio::test]
async fn hostile_names_and_sizes_never_reach_the_disk() {
    let sha = "2".repeat(40);
    let served = sha.clone();
    // What the resolver announces as X-Linked-Size; the CDN always sends 64 bytes.
    let linked = Arc::new(std::sync::Mutex::new(String::new()));
    let announced = Arc::clone(&linked);
    let server = TestServer::start(move |req, base| {
        if req.path().starts_with("/cdn/") {
            return Reply::new(200).body(vec![7u8; 64]);
        }
        Reply::new(302)
            .header("location", format!("{base}/cdn/blob"))
            .header("x-repo-commit", served.clone())
            .header("x-linked-size", announced.lock().expect("lock").clone())
            .header("x-linked-etag", format!("\"{}\"", "a".repeat(64)))
    })
    .await;
    let client = HubClient::new(config(&server.url())).expect("client");
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = HfCache::new(dir.path().join("hub"));
    let (id, commit) = (RepoId::parse("evil/model").expect("id"), Commit::parse(&sha).expect("commit"));
    // Names that would leave the snapshot directory: refused before any request, nothing created.
    for bad in
        ["../../../escape.safetensors", "/tmp/abs.safetensors", "a/../../b.safetensors", "..", "a\\..\\b", "x\0y"]
    {
        let e = cache.download(&client, &id, &commit, bad).await.expect_err("refused");
        assert!(matches!(e, HubError::BadFileName { .. }), "{bad:?}: {e}");
    }
    assert_eq!(server.requests().len(), 0);
    assert!(!dir.path().join("hub").exists());
    // Sizes that are not a u64: a typed header error, and the CDN is never asked.
    for size in ["-1", "18446744073709551616", "1e9", "12 MB", ""] {
        *linked.lock().expect("lock") = size.to_owned();
        let e = cache.download(&client, &id, &commit, "model.safetensors").await.expect_err("refused");
        assert!(matches!(e, HubError::BadHeader { name: "x-linked-size", .. }), "{size:?}: {e}");
    }
    assert_eq!(server.count(|q| q.path().starts_with("/cdn/")), 0);
    // An absurd size (2^60 bytes) that the body never reaches, and a body longer than a small announced size:
    // both fail, and neither leaves a blob, a snapshot or a partial file behind.
    for size in [1u64 << 60, 10] {
        *linked.lock().expect("lock") = size.to_string();
        let e = cache.download(&client, &id, &commit, "model.safetensors").await.expect_err("refused");
        let expected = if size == 10 {
            matches!(e, HubError::BodyTooLong { expected: 10, .. })
        } else {
            matches!(e, HubError::BodyTooShort { .. } | HubError::SizeMismatch { .. } | HubError::Transport { .. })
        };
        assert!(expected, "size {size}: {e}");
        assert_eq!(files_under(dir.path()), Vec::<std::path::PathBuf>::new(), "size {size}");
    }
}

/// Issue 10: every redirect a read follows checks the pinned commit. The resolver's `HEAD` answers from the
/// pinned commit and serves the file itself, but its `GET` redirects with another commit's `X-Repo-Commit`:
/// a whole-file download (which once skipped the check), a small-file read and a ranged read all refuse it,
/// and the redirect's target is never asked.
#[tokio::test]
async fn issue_10_a_redirect_from_another_commit_is_refused_on_every_read() {
    let (pinned, other) = ("3".repeat(40), "4".repeat(40));
    let served = pinned.clone();
    let server = TestServer::start(move |req, base| {
        if req.path().starts_with("/cdn/") {
            return Reply::new(200).body(vec![9u8; 64]);
        }
        if req.method == "HEAD" {
            return Reply::new(200)
                .header("x-repo-commit", served.clone())
                .header("etag", format!("\"{}\"", "b".repeat(40)))
                .body(vec![9u8; 64]);
        }
        Reply::new(302)
            .header("location", format!("{base}/cdn/blob"))
            .header("x-repo-commit", other.clone())
            .header("x-linked-size", "64")
    })
    .await;
    let client = HubClient::new(config(&server.url())).expect("client");
    let (id, commit) = (RepoId::parse("moving/model").expect("id"), Commit::parse(&pinned).expect("commit"));
    let refused = |what: &str, e: HubError| {
        assert!(matches!(&e, HubError::CommitMismatch { found, .. } if found == &"4".repeat(40)), "{what}: {e}");
    };

    let dir = tempfile::tempdir().expect("temp dir");
    let cache = HfCache::new(dir.path());
    refused("download", cache.download(&client, &id, &commit, "weights.bin").await.expect_err("refused"));
    assert_eq!(files_under(dir.path()), Vec::<std::path::PathBuf>::new(), "nothing cached");
    refused("small file", client.get_small_file(&id, &commit, "weights.bin", 1 << 20).await.expect_err("refused"));
    let resolved = client.resolve(&id, &commit, "weights.bin").await.expect("the HEAD is from the pinned commit");
    assert_eq!((resolved.size, resolved.location.is_none()), (64, true));
    refused("range", client.read_range(&resolved, 0..8).await.expect_err("refused"));
    assert_eq!(server.count(|q| q.path().starts_with("/cdn/")), 0, "the redirect was never followed");
}
