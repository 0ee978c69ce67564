//! Listing, info, resolve, ranged reads, errors, retries, rate limits, redirects and the token.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hub::{Commit, HubClient, HubConfig, HubError, ListQuery, RepoId, Revision, Token};

use crate::support::{Reply, Request, TestServer, Zoo, config, zoo_root};

fn zoo() -> Arc<Zoo> {
    Arc::new(Zoo::load(&zoo_root()))
}

async fn zoo_server() -> (TestServer, Arc<Zoo>) {
    let z = zoo();
    let served = Arc::clone(&z);
    (TestServer::start(move |req, base| served.handle(req, base)).await, z)
}

fn id(s: &str) -> RepoId {
    RepoId::parse(s).expect("repo id")
}

fn commit(s: &str) -> Commit {
    Commit::parse(s).expect("commit")
}

#[tokio::test]
async fn listing_pages_through_link_headers_with_expand() {
    let (server, zoo) = zoo_server().await;
    let client = HubClient::new(config(&server.url())).expect("client");
    let query = ListQuery {
        sort: Some("lastModified".into()),
        direction: Some(-1),
        limit: Some(4),
        expand: vec!["sha".into(), "cardData".into()],
        ..ListQuery::default()
    };
    let items: Vec<_> = client.list_models(&query).collect().await;
    let models: Vec<_> = items.into_iter().map(|m| m.expect("valid entry")).collect();
    assert_eq!(models.len(), zoo.repos.len());
    let ids: Vec<&str> = models.iter().map(|m| m.id.as_str()).collect();
    let expected: Vec<&str> = zoo.repos.keys().map(String::as_str).collect();
    assert_eq!(ids, expected);
    for m in &models {
        assert_eq!(m.sha.as_ref().map(Commit::as_str), Some(zoo.repo(m.id.as_str()).sha.as_str()));
        assert_eq!(m.card_data.as_ref().map(|c| c.licenses.clone()), Some(vec!["apache-2.0".to_owned()]));
        // Only expanded properties came back.
        assert_eq!(m.last_modified, None);
    }
    let pages = server.requests();
    assert_eq!(pages.len(), zoo.repos.len().div_ceil(4));
    let first = &pages[0];
    assert_eq!(first.param("sort").as_deref(), Some("lastModified"));
    assert_eq!(first.param("direction").as_deref(), Some("-1"));
    let expand: Vec<String> = first.query().into_iter().filter(|(k, _)| k == "expand[]").map(|(_, v)| v).collect();
    assert_eq!(expand, ["sha", "cardData"]);
    // Later pages are the link, verbatim.
    assert!(pages[1..].iter().all(|p| p.param("cursor").is_some() && p.param("limit").as_deref() == Some("4")));
    assert_eq!(client.stats().api_requests, pages.len() as u64);
    // `take` ends the stream early without fetching further pages.
    let before = server.requests().len();
    let two: Vec<_> = client.list_models(&query).take(2).collect().await;
    assert_eq!((two.len(), server.requests().len() - before), (2, 1));
}

#[tokio::test]
async fn next_links_must_stay_on_the_endpoint() {
    for link in
        ["http://example.com/api/models?cursor=1", "http://127.0.0.1:1/api/models?cursor=1", "/api/other?cursor=1"]
    {
        let link = link.to_owned();
        let server = TestServer::start(move |_req, _base| {
            Reply::new(200)
                .json(&serde_json::json!([{"id": "a/b"}, {"id": "../bad"}]))
                .header("link", format!("<{link}>; rel=\"next\""))
        })
        .await;
        let client = HubClient::new(config(&server.url())).expect("client");
        let items: Vec<_> = client.list_models(&ListQuery::default()).collect().await;
        assert_eq!(items.len(), 3, "two entries and the link error");
        assert_eq!(items[0].as_ref().map(|m| m.id.as_str()).ok(), Some("a/b"));
        assert!(matches!(items[1], Err(HubError::BadEntry { .. })), "{:?}", items[1]);
        assert!(matches!(items[2], Err(HubError::ForeignLink { .. })), "{:?}", items[2]);
        assert_eq!(server.requests().len(), 1);
    }
}

#[tokio::test]
async fn model_info_has_sizes_and_lfs_facts() {
    let (server, zoo) = zoo_server().await;
    let client = HubClient::new(config(&server.url())).expect("client");
    let info = client.model_info(&id("quokka-research/quokka-base"), &Revision::main()).await.expect("info");
    let repo = zoo.repo("quokka-research/quokka-base");
    assert_eq!(info.sha.as_str(), repo.sha);
    assert_eq!(info.siblings.len(), repo.files.len());
    let shard = info.sibling("model-00001-of-00002.safetensors").expect("shard");
    let served = &repo.files["model-00001-of-00002.safetensors"];
    assert_eq!(shard.size, Some(served.bytes.len() as u64));
    assert_eq!(shard.lfs.as_ref().map(|l| l.sha256.as_str()), Some(served.sha256.as_str()));
    assert_eq!(info.sibling("config.json").and_then(|s| s.lfs.as_ref()), None);
    let req = &server.requests()[0];
    assert_eq!(req.path(), "/api/models/quokka-research/quokka-base/revision/main");
    assert_eq!(req.param("blobs").as_deref(), Some("true"));
}

#[tokio::test]
async fn error_statuses_become_typed_errors_without_retries() {
    let server = TestServer::start(|req: &Request, _| {
        // Paths are /s{status}/{code}/resolve/…
        let s = req.segments();
        let status: u16 = s.first().and_then(|x| x.strip_prefix('s')).and_then(|x| x.parse().ok()).unwrap_or(500);
        let mut r = Reply::new(status);
        if let Some(code) = s.get(1).filter(|c| *c != "none") {
            r = r.header("x-error-code", code.as_str());
        }
        r.header("x-error-message", "go\taway")
    })
    .await;
    let client = HubClient::new(config(&server.url())).expect("client");
    let sha = commit(&"c".repeat(40));
    let check = |status: u16, code: &str| {
        let client = client.clone();
        let sha = sha.clone();
        let repo = id(&format!("s{status}/{code}"));
        async move { client.resolve(&repo, &sha, "model.safetensors").await.expect_err("an error status") }
    };
    assert!(matches!(check(401, "RepoNotFound").await, HubError::RepoNotFound { .. }));
    assert!(matches!(check(404, "RepoNotFound").await, HubError::RepoNotFound { .. }));
    assert!(matches!(check(404, "RevisionNotFound").await, HubError::RevisionNotFound { .. }));
    assert!(matches!(check(404, "EntryNotFound").await, HubError::EntryNotFound { .. }));
    assert!(matches!(check(401, "GatedRepo").await, HubError::GatedRepo { status: 401, .. }));
    assert!(matches!(check(403, "GatedRepo").await, HubError::GatedRepo { status: 403, .. }));
    let e = check(401, "none").await;
    assert!(matches!(&e, HubError::Unauthorized { message: Some(m), .. } if m == "goaway"), "{e:?}");
    assert!(matches!(check(403, "none").await, HubError::Forbidden { .. }));
    assert!(matches!(check(404, "none").await, HubError::NotFound { .. }));
    assert!(matches!(check(410, "none").await, HubError::Status { status: 410, .. }));
    assert!(check(404, "EntryNotFound").await.is_access());
    // Each was asked once: 4xx answers are final.
    assert_eq!(server.requests().len(), 11);
    assert_eq!(client.stats().retries, 0);
    // A zoo server: the real mapping of missing things.
    let (zoo_server, zoo) = zoo_server().await;
    let client = HubClient::new(config(&zoo_server.url())).expect("client");
    let sha = commit(&zoo.repo("bitforge/bf-pico").sha);
    let e = client.resolve(&id("bitforge/bf-pico"), &sha, "missing.json").await.expect_err("missing");
    assert!(matches!(e, HubError::EntryNotFound { .. }), "{e}");
    let other = commit(&"d".repeat(40));
    let e = client.resolve(&id("bitforge/bf-pico"), &other, "config.json").await.expect_err("bad revision");
    assert!(matches!(e, HubError::RevisionNotFound { .. }), "{e}");
    let e = client.model_info(&id("nobody/nothing"), &Revision::main()).await.expect_err("missing repo");
    assert!(matches!(e, HubError::RepoNotFound { .. }), "{e}");
}

/// A handler that answers the first `n` requests with `first`, then delegates to the zoo.
fn after(n: usize, first: Reply, zoo: Arc<Zoo>, times: Arc<Mutex<Vec<Instant>>>) -> impl Fn(&Request, &str) -> Reply {
    let count = AtomicUsize::new(0);
    move |req, base| {
        times.lock().expect("times").push(Instant::now());
        if count.fetch_add(1, Ordering::SeqCst) < n { first.clone() } else { zoo.handle(req, base) }
    }
}

#[tokio::test]
async fn ratelimit_r0_holds_the_bucket_until_the_announced_reset() {
    let times = Arc::new(Mutex::new(Vec::new()));
    let limited = Reply::new(429)
        .header("ratelimit", "\"api\";r=0;t=2")
        .header("ratelimit-policy", "\"fixed window\";\"api\";q=1000;w=300");
    let server = TestServer::start(after(1, limited, zoo(), Arc::clone(&times))).await;
    let client = HubClient::new(config(&server.url())).expect("client");
    client.model_info(&id("bitforge/bf-pico"), &Revision::main()).await.expect("second attempt succeeds");
    let t = times.lock().expect("times").clone();
    assert_eq!(t.len(), 2);
    let gap = t[1] - t[0];
    assert!(gap >= Duration::from_secs(3), "waited only {gap:?}, t + 1 = 3 s");
    let stats = client.stats();
    assert_eq!((stats.rate_limited, stats.retries, stats.api_requests), (1, 1, 2));
    assert!(stats.waited >= Duration::from_millis(2900), "{stats:?}");
    // The bucket is open again: the next request goes out at once.
    let start = Instant::now();
    client.model_info(&id("bitforge/bf-pico"), &Revision::main()).await.expect("info");
    assert!(start.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn retry_after_in_seconds_and_as_a_date() {
    for date in [false, true] {
        // An HTTP-date has whole seconds: 3 s ahead is at least 2 s ahead.
        let value = if date {
            (chrono::Utc::now() + chrono::Duration::seconds(3)).format("%a, %d %b %Y %H:%M:%S GMT").to_string()
        } else {
            "1".to_owned()
        };
        let times = Arc::new(Mutex::new(Vec::new()));
        let server = TestServer::start(after(
            1,
            Reply::new(429).header("retry-after", value.clone()),
            zoo(),
            Arc::clone(&times),
        ))
        .await;
        let client = HubClient::new(config(&server.url())).expect("client");
        client.model_info(&id("bitforge/bf-pico"), &Revision::main()).await.expect("succeeds after the wait");
        let t = times.lock().expect("times").clone();
        assert!(t[1] - t[0] >= Duration::from_millis(900), "{value}: {:?}", t[1] - t[0]);
    }
    // A wait beyond max_wait fails at once rather than sleeping for hours.
    let server = TestServer::start(|_: &Request, _: &str| Reply::new(429).header("retry-after", "86400")).await;
    let client = HubClient::new(config(&server.url())).expect("client");
    let e = client.model_info(&id("a/b"), &Revision::main()).await.expect_err("too long");
    assert!(matches!(e, HubError::WaitTooLong { seconds: 86400, .. }), "{e}");
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff() {
    let times = Arc::new(Mutex::new(Vec::new()));
    let server = TestServer::start(after(2, Reply::new(503), zoo(), times)).await;
    let client = HubClient::new(config(&server.url())).expect("client");
    client.model_info(&id("bitforge/bf-pico"), &Revision::main()).await.expect("third attempt succeeds");
    assert_eq!(client.stats().retries, 2);
    // Exhausted retries give the last status.
    let server = TestServer::start(|_: &Request, _: &str| Reply::new(502)).await;
    let client = HubClient::new(config(&server.url())).expect("client");
    let e = client.model_info(&id("a/b"), &Revision::main()).await.expect_err("always 502");
    assert!(matches!(e, HubError::Status { status: 502, .. }), "{e}");
    assert_eq!(server.requests().len(), 4, "one try and three retries");
}

/// The zoo, with CDN answers rewritten by `fault` while it returns `Some`.
fn cdn_fault(
    zoo: Arc<Zoo>,
    fault: impl Fn(usize, Reply) -> Option<Reply> + Send + Sync + 'static,
) -> impl Fn(&Request, &str) -> Reply {
    let count = AtomicUsize::new(0);
    move |req, base| {
        let reply = zoo.handle(req, base);
        if req.path().starts_with("/cdn/") {
            let n = count.fetch_add(1, Ordering::SeqCst);
            if let Some(r) = fault(n, reply.clone()) {
                return r;
            }
        }
        reply
    }
}

async fn bf_pico(client: &HubClient, zoo: &Zoo) -> hub::Resolved {
    let repo = zoo.repo("bitforge/bf-pico");
    client.resolve(&id(&repo.id), &commit(&repo.sha), "model.safetensors").await.expect("resolved")
}

#[tokio::test]
async fn ranges_are_read_and_checked() {
    let z = zoo();
    let file = &z.repo("bitforge/bf-pico").files["model.safetensors"].bytes;
    let (server, _) = zoo_server().await;
    let client = HubClient::new(config(&server.url())).expect("client");
    let r = bf_pico(&client, &z).await;
    assert_eq!(
        (r.size, r.sha256()),
        (file.len() as u64, Some(z.repo("bitforge/bf-pico").files["model.safetensors"].sha256.as_str()))
    );
    assert!(!format!("{r:?}").contains("Signature"), "the signed query stays out of Debug");
    let got = client.read_range(&r, 100..5000).await.expect("range");
    assert_eq!(&got[..], &file[100..5000]);
    let last = client.read_range(&r, file.len() as u64 - 1..file.len() as u64).await.expect("last byte");
    assert_eq!(&last[..], &file[file.len() - 1..]);
    #[allow(clippy::reversed_empty_ranges)]
    let bad_ranges = [0..0, 5..4, 0..file.len() as u64 + 1];
    for bad in bad_ranges {
        assert!(matches!(client.read_range(&r, bad.clone()).await, Err(HubError::BadRange { .. })), "{bad:?}");
    }
    let cdn = server.requests().into_iter().filter(|q| q.path().starts_with("/cdn/")).collect::<Vec<_>>();
    assert_eq!(cdn.len(), 2);
    assert_eq!(cdn[0].header("range"), Some("bytes=100-4999"));
    assert_eq!(cdn[0].header("accept-encoding"), Some("identity"));
}

/// Reads bytes 10..20 of bf-pico through a zoo whose CDN answers are rewritten by `fault`; returns the result
/// and the number of CDN requests.
async fn faulty_read(
    z: &Arc<Zoo>,
    cfg: impl FnOnce(HubConfig) -> HubConfig,
    fault: impl Fn(usize, Reply) -> Option<Reply> + Send + Sync + 'static,
) -> (Result<bytes::Bytes, HubError>, usize) {
    let server = TestServer::start(cdn_fault(Arc::clone(z), fault)).await;
    let client = HubClient::new(cfg(config(&server.url()))).expect("client");
    let r = bf_pico(&client, z).await;
    let got = client.read_range(&r, 10..20).await;
    (got, server.count(|q| q.path().starts_with("/cdn/")))
}

#[tokio::test]
async fn hostile_range_answers_are_refused() {
    let z = zoo();
    let file = z.repo("bitforge/bf-pico").files["model.safetensors"].bytes.clone();
    let size = file.len() as u64;
    let same = |c: HubConfig| c;
    // A 200 with the whole file: the slice is taken…
    let full = Arc::clone(&file);
    let (got, _) = faulty_read(&z, same, move |_, _| Some(Reply::new(200).body(full.to_vec()))).await;
    assert_eq!(got.expect("slice of a 200").to_vec(), file[10..20].to_vec());
    // …but not when the file is larger than the fallback cap.
    let full = Arc::clone(&file);
    let (got, _) = faulty_read(
        &z,
        |c| HubConfig { max_full_fallback: 16, ..c },
        move |_, _| Some(Reply::new(200).body(full.to_vec())),
    )
    .await;
    assert!(matches!(got, Err(HubError::RangeIgnored { cap: 16, .. })), "{got:?}");
    // A Content-Range for other bytes or another total.
    for wrong in ["bytes 11-20/{size}", "bytes 10-19/999999", "bytes */{size}"] {
        let header = wrong.replace("{size}", &size.to_string());
        let (got, _) = faulty_read(&z, same, move |_, mut r| {
            r.headers.retain(|(k, _)| k != "content-range");
            Some(r.header("content-range", header.clone()))
        })
        .await;
        assert!(matches!(got, Err(HubError::BadContentRange { .. })), "{wrong}: {got:?}");
    }
    // A longer body than asked for.
    let (got, _) = faulty_read(&z, same, |_, mut r| {
        r.body.extend_from_slice(&[0; 10]);
        Some(r)
    })
    .await;
    assert!(matches!(got, Err(HubError::BodyTooLong { expected: 10, .. })), "{got:?}");
    // A body cut short every time: retried, then reported.
    let (got, attempts) = faulty_read(&z, same, |_, r| Some(Reply { cut_after: Some(3), ..r })).await;
    assert!(got.as_ref().is_err_and(HubError::is_transient), "{got:?}");
    assert_eq!(attempts, 4);
}

#[tokio::test]
async fn a_connection_reset_mid_body_is_retried() {
    let z = zoo();
    let server =
        TestServer::start(cdn_fault(Arc::clone(&z), |n, r| (n == 0).then_some(Reply { cut_after: Some(100), ..r })))
            .await;
    let client = HubClient::new(config(&server.url())).expect("client");
    let r = bf_pico(&client, &z).await;
    let got = client.read_range(&r, 0..4096).await.expect("second attempt");
    assert_eq!(&got[..], &z.repo("bitforge/bf-pico").files["model.safetensors"].bytes[..4096]);
    assert_eq!(client.stats().retries, 1);
}

#[tokio::test]
async fn a_stalled_body_times_out_and_is_retried() {
    let z = zoo();
    let server = TestServer::start(cdn_fault(Arc::clone(&z), |n, r| {
        (n == 0).then(|| Reply { stall: Some(Duration::from_secs(30)), ..r })
    }))
    .await;
    let cfg = HubConfig { read_timeout: Duration::from_millis(300), ..config(&server.url()) };
    let client = HubClient::new(cfg).expect("client");
    let r = bf_pico(&client, &z).await;
    let start = Instant::now();
    let got = client.read_range(&r, 0..100).await.expect("retried after the read timeout");
    assert_eq!(got.len(), 100);
    assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());
}

#[tokio::test]
async fn an_expired_signed_url_is_resolved_again_once() {
    let z = zoo();
    let server = TestServer::start(cdn_fault(Arc::clone(&z), |n, _| {
        (n == 0).then(|| Reply::new(403).body("Request has expired"))
    }))
    .await;
    let client = HubClient::new(config(&server.url())).expect("client");
    let r = bf_pico(&client, &z).await;
    let got = client.read_range(&r, 0..64).await.expect("re-resolved");
    assert_eq!(got.len(), 64);
    let stats = client.stats();
    assert_eq!((stats.resolver_requests, stats.cdn_requests), (2, 2));
    // Expired for good: one re-resolve, then the error.
    let server = TestServer::start(cdn_fault(Arc::clone(&z), |_, _| Some(Reply::new(403)))).await;
    let client = HubClient::new(config(&server.url())).expect("client");
    let r = bf_pico(&client, &z).await;
    assert!(matches!(client.read_range(&r, 0..64).await, Err(HubError::Forbidden { .. })));
    assert_eq!(client.stats().resolver_requests, 2);
}

#[tokio::test]
async fn redirects_off_loopback_are_refused() {
    let z = zoo();
    let sha = z.repo("bitforge/bf-pico").sha.clone();
    let served = sha.clone();
    let server = TestServer::start(move |_, _| {
        Reply::new(302)
            .header("location", "http://example.com/cdn/x?Signature=s")
            .header("x-repo-commit", served.clone())
            .header("x-linked-size", "100")
    })
    .await;
    let client = HubClient::new(config(&server.url())).expect("client");
    let e = client.resolve(&id("bitforge/bf-pico"), &commit(&sha), "model.safetensors").await.expect_err("refused");
    match e {
        HubError::BadRedirect { reason, location, .. } => {
            assert_eq!(reason, "host is not on loopback");
            assert!(!location.contains("Signature"));
        }
        other => panic!("expected a refused redirect, got {other}"),
    }
    // A served commit other than the pinned one is refused too.
    let server =
        TestServer::start(|_: &Request, _: &str| Reply::new(200).header("x-repo-commit", "e".repeat(40)).body("{}"))
            .await;
    let client = HubClient::new(config(&server.url())).expect("client");
    let e = client.resolve(&id("a/b"), &commit(&"f".repeat(40)), "config.json").await.expect_err("mismatch");
    assert!(matches!(e, HubError::CommitMismatch { .. }), "{e}");
    // Unsafe file names never reach the network.
    for bad in ["../x", "/etc/passwd", "a\\b", "a\nb"] {
        let e = client.resolve(&id("a/b"), &commit(&"f".repeat(40)), bad).await.expect_err("refused");
        assert!(matches!(e, HubError::BadFileName { .. }), "{bad:?}: {e}");
    }
    assert_eq!(server.requests().len(), 1);
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn the_token_goes_only_to_the_endpoint_and_never_into_logs() {
    let secret = "hf_VerySecretTokenValue42";
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    // The CDN is another loopback host: 127.0.0.2 where it can be bound, else `localhost`.
    let z = zoo();
    let cdn_zoo = Arc::clone(&z);
    let cdn = match tokio::net::TcpListener::bind(("127.0.0.2", 0)).await {
        Ok(_) => TestServer::start_on("127.0.0.2", move |req, base| cdn_zoo.handle(req, base)).await,
        Err(_) => TestServer::start(move |req, base| cdn_zoo.handle(req, base)).await,
    };
    let cdn_base = if cdn.addr.ip().to_string() == "127.0.0.2" {
        cdn.url()
    } else {
        format!("http://localhost:{}", cdn.addr.port())
    };
    let hub_zoo = Arc::clone(&z);
    let hub_server = TestServer::start(move |req, base| {
        let mut reply = hub_zoo.handle(req, base);
        for (k, v) in &mut reply.headers {
            if k == "location" {
                *v = v.replace(base, &cdn_base);
            }
        }
        reply
    })
    .await;
    let token = Token::new(secret).expect("token");
    let cfg = HubConfig { token: Some(token.clone()), ..config(&hub_server.url()) };
    assert!(!format!("{cfg:?} {token} {token:?}").contains(secret));
    let client = HubClient::new(cfg).expect("client");
    let repo = z.repo("bitforge/bf-pico");
    let r = client.resolve(&id(&repo.id), &commit(&repo.sha), "model.safetensors").await.expect("resolved");
    client.read_range(&r, 0..128).await.expect("range from the other host");
    let e = client.resolve(&id(&repo.id), &commit(&repo.sha), "nope.bin").await.expect_err("missing");
    assert!(!format!("{e} {e:?} {r:?} {client:?}").contains(secret));

    let bearer = format!("Bearer {secret}");
    let hub_requests = hub_server.requests();
    assert!(!hub_requests.is_empty());
    assert!(hub_requests.iter().all(|q| q.header("authorization") == Some(bearer.as_str())));
    let cdn_requests = cdn.requests();
    assert_eq!(cdn_requests.len(), 1);
    assert_eq!(cdn_requests[0].header("authorization"), None, "no token to another host");
    let logs = String::from_utf8(captured.0.lock().expect("buffer").clone()).expect("utf-8 logs");
    assert!(logs.contains("hub request"), "the capture works: {logs}");
    assert!(!logs.contains(secret), "token leaked into logs");
    assert!(!logs.contains("Signature=secret"), "signed query leaked into logs");
}

#[tokio::test]
async fn small_files_are_size_limited() {
    let (server, zoo) = zoo_server().await;
    let client = HubClient::new(config(&server.url())).expect("client");
    let repo = zoo.repo("adapter-garden/nw-llama-mini-kv8-peft-lora");
    let sha = commit(&repo.sha);
    let got = client.get_small_file(&id(&repo.id), &sha, "adapter_config.json", 1 << 20).await.expect("config");
    assert_eq!(&got[..], &repo.files["adapter_config.json"].bytes[..]);
    let e = client.get_small_file(&id(&repo.id), &sha, "adapter_config.json", 10).await.expect_err("too big");
    assert!(matches!(e, HubError::TooLarge { cap: 10, .. }), "{e}");
    // An LFS file through its redirect: the listed size is checked before the CDN is asked.
    let before = server.count(|q| q.path().starts_with("/cdn/"));
    let e = client.get_small_file(&id(&repo.id), &sha, "adapter_model.safetensors", 1000).await.expect_err("too big");
    assert!(matches!(e, HubError::TooLarge { cap: 1000, .. }), "{e}");
    assert_eq!(server.count(|q| q.path().starts_with("/cdn/")), before);
    let whole = client.get_small_file(&id(&repo.id), &sha, "adapter_model.safetensors", 1 << 24).await.expect("lfs");
    assert_eq!(&whole[..], &repo.files["adapter_model.safetensors"].bytes[..]);
    // A resolve HEAD answers a small file's size from Content-Length, an LFS file's from X-Linked-Size.
    let small = client.resolve(&id(&repo.id), &sha, "README.md").await.expect("small");
    assert_eq!((small.size, small.location.is_none()), (repo.files["README.md"].bytes.len() as u64, true));
    let readme = client.read_range(&small, 0..small.size).await.expect("read through the resolve url");
    assert_eq!(&readme[..], &repo.files["README.md"].bytes[..]);
}

#[tokio::test]
async fn budgets_pace_requests_per_bucket() {
    let (server, _) = zoo_server().await;
    let cfg = HubConfig {
        tier: hub::Tier::Custom { api: 2, resolvers: 100 },
        window: Duration::from_secs(1),
        ..config(&server.url())
    };
    let client = HubClient::new(cfg).expect("client");
    let start = Instant::now();
    for _ in 0..5 {
        client.model_info(&id("bitforge/bf-pico"), &Revision::main()).await.expect("info");
    }
    // Two per second: requests 3-4 wait one window, request 5 two.
    assert!(start.elapsed() >= Duration::from_millis(1950), "{:?}", start.elapsed());
    assert!(client.stats().waited >= Duration::from_millis(1900));
    // The resolver bucket is not touched by API pacing.
    let z = zoo();
    let quick = Instant::now();
    bf_pico(&client, &z).await;
    assert!(quick.elapsed() < Duration::from_millis(500));
}

#[tokio::test]
async fn api_json_bombs_and_oversized_documents_are_refused() {
    let sha = "3".repeat(40);
    let doc = format!(r#"{{"id":"a/big","sha":"{sha}","siblings":[],"pad":"{}"}}"#, "x".repeat(70_000));
    let server = TestServer::start(move |req, _| {
        let target = &req.target;
        let body = if target.contains("nested") {
            // 100,000 levels of nesting in 200 KB: a recursive parser without a depth limit would overflow the stack.
            format!("{}{}", "[".repeat(100_000), "]".repeat(100_000))
        } else if target.contains("/keys") {
            // A wide bomb: one object with many keys, over the size cap.
            let keys: Vec<String> = (0..20_000).map(|i| format!(r#""k{i}":{{}}"#)).collect();
            format!("{{{}}}", keys.join(","))
        } else {
            doc.clone()
        };
        Reply::new(200).header("content-type", "application/json").body(body)
    })
    .await;
    let client = HubClient::new(HubConfig { max_json_bytes: 64 << 10, ..config(&server.url()) }).expect("client");
    let e = client.model_info(&id("a/nested"), &Revision::main()).await.expect_err("nested");
    assert!(matches!(e, HubError::TooLarge { .. } | HubError::BadJson { .. }), "{e}");
    for name in ["a/big", "a/keys"] {
        let e = client.model_info(&id(name), &Revision::main()).await.expect_err("over the cap");
        assert!(matches!(e, HubError::TooLarge { what: "json document", cap: 65_536, .. }), "{name}: {e}");
    }
    // Under a larger cap the deep document is read whole and still refused, by the parser's depth limit.
    let client = HubClient::new(HubConfig { max_json_bytes: 1 << 20, ..config(&server.url()) }).expect("client");
    let e = client.model_info(&id("a/nested"), &Revision::main()).await.expect_err("nested");
    match e {
        HubError::BadJson { message, .. } => assert!(message.contains("recursion limit"), "{message}"),
        other => panic!("expected a refused JSON bomb, got {other}"),
    }
    // The listing fails the same way, as one error item, and asks for no further page.
    let before = server.requests().len();
    let items: Vec<_> =
        client.list_models(&ListQuery { search: Some("nested".into()), ..ListQuery::default() }).collect().await;
    assert!(items.len() == 1 && items[0].is_err(), "{items:?}");
    assert_eq!(server.requests().len(), before + 1);
}
