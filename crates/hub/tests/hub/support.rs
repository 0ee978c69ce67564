//! Test support: a small HTTP/1.1 server on loopback that can misbehave on purpose, and a Hub-like handler
//! serving the repository folders of `tests/zoo-small` the way the real Hub does (JSON API with `Link`
//! pagination, resolve with a `302` to a signed CDN path, single-range `206`).
//!
//! The server speaks raw HTTP over tokio sockets so a test can send what no well-behaved server library
//! would: a body cut off mid-stream, a `Content-Length` longer than asked, a stalled body.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    /// Lowercase names.
    pub headers: Vec<(String, String)>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    /// Decoded query pairs.
    pub fn query(&self) -> Vec<(String, String)> {
        let url = hub::Url::parse(&format!("http://h{}", self.target)).expect("request target");
        url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
    }

    pub fn param(&self, name: &str) -> Option<String> {
        self.query().into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// Decoded path segments.
    pub fn segments(&self) -> Vec<String> {
        self.path().split('/').skip(1).map(percent_decode).collect()
    }

    /// `Range: bytes=a-b` as `(a, Some(b))`, `bytes=a-` as `(a, None)`.
    pub fn range(&self) -> Option<(u64, Option<u64>)> {
        let spec = self.header("range")?.strip_prefix("bytes=")?;
        let (a, b) = spec.split_once('-')?;
        Some((a.parse().ok()?, if b.is_empty() { None } else { Some(b.parse().ok()?) }))
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What the server answers.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// A `Content-Length` other than the body's.
    pub content_length: Option<u64>,
    /// Send only this many body bytes, then close the connection.
    pub cut_after: Option<usize>,
    /// Wait this long before sending the body.
    pub stall: Option<Duration>,
}

impl Reply {
    pub fn new(status: u16) -> Reply {
        Reply { status, headers: Vec::new(), body: Vec::new(), content_length: None, cut_after: None, stall: None }
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Reply {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Reply {
        self.body = body.into();
        self
    }

    pub fn json(self, value: &serde_json::Value) -> Reply {
        self.header("content-type", "application/json").body(value.to_string())
    }
}

type Handler = dyn Fn(&Request, &str) -> Reply + Send + Sync;

/// A running server; stops when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<Request>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    /// Serves `handler` on 127.0.0.1; the handler also gets the server's base URL.
    pub async fn start(handler: impl Fn(&Request, &str) -> Reply + Send + Sync + 'static) -> TestServer {
        TestServer::start_on("127.0.0.1", handler).await
    }

    pub async fn start_on(ip: &str, handler: impl Fn(&Request, &str) -> Reply + Send + Sync + 'static) -> TestServer {
        let listener = TcpListener::bind((ip, 0)).await.expect("bind loopback");
        let addr = listener.local_addr().expect("address");
        let log = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let base = format!("http://{addr}");
        let task_log = Arc::clone(&log);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (handler, log, base) = (Arc::clone(&handler), Arc::clone(&task_log), base.clone());
                tokio::spawn(async move {
                    let _ = serve(stream, &*handler, &log, &base).await;
                });
            }
        });
        TestServer { addr, log, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.log.lock().expect("log").clone()
    }

    pub fn count(&self, pred: impl Fn(&Request) -> bool) -> usize {
        self.requests().iter().filter(|r| pred(r)).count()
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        307 => "Temporary Redirect",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

async fn serve(mut stream: TcpStream, handler: &Handler, log: &Mutex<Vec<Request>>, base: &str) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > 64 * 1024 {
            return Ok(());
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_owned();
    let target = first.next().unwrap_or_default().to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let request = Request { method, target, headers };
    log.lock().expect("log").push(request.clone());
    let reply = handler(&request, base);
    let mut out = format!("HTTP/1.1 {} {}\r\n", reply.status, reason(reply.status));
    for (k, v) in &reply.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    let length = reply.content_length.unwrap_or(reply.body.len() as u64);
    out.push_str(&format!("content-length: {length}\r\nconnection: close\r\n\r\n"));
    stream.write_all(out.as_bytes()).await?;
    if let Some(d) = reply.stall {
        tokio::time::sleep(d).await;
    }
    if request.method != "HEAD" {
        let body = match reply.cut_after {
            Some(n) => &reply.body[..n.min(reply.body.len())],
            None => &reply.body[..],
        };
        stream.write_all(body).await?;
    }
    stream.flush().await?;
    stream.shutdown().await
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// One file of a zoo repository.
pub struct ZooFile {
    pub bytes: Arc<Vec<u8>>,
    pub sha256: String,
    /// The git blob id (`sha1("blob {len}\0" + bytes)`), the `ETag` of a file stored in git.
    pub git_oid: String,
    pub lfs: bool,
}

/// One zoo repository.
pub struct ZooRepo {
    pub id: String,
    pub sha: String,
    pub files: BTreeMap<String, ZooFile>,
}

/// The zoo served like the Hub.
pub struct Zoo {
    pub repos: BTreeMap<String, ZooRepo>,
    by_sha: BTreeMap<String, Arc<Vec<u8>>>,
}

pub fn zoo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/zoo-small")
}

impl Zoo {
    /// Every `owner/name` folder under `root`.
    pub fn load(root: &Path) -> Zoo {
        let mut repos = BTreeMap::new();
        let mut by_sha = BTreeMap::new();
        let mut owners: Vec<_> =
            std::fs::read_dir(root).expect("zoo").flatten().filter(|e| e.path().is_dir()).collect();
        owners.sort_by_key(|e| e.file_name());
        for owner in owners {
            for repo in std::fs::read_dir(owner.path()).expect("owner").flatten().filter(|e| e.path().is_dir()) {
                let id = format!("{}/{}", owner.file_name().to_string_lossy(), repo.file_name().to_string_lossy());
                let mut files = BTreeMap::new();
                for f in std::fs::read_dir(repo.path()).expect("repo").flatten().filter(|e| e.path().is_file()) {
                    let bytes = Arc::new(std::fs::read(f.path()).expect("file"));
                    let name = f.file_name().to_string_lossy().into_owned();
                    let digest = sha256(&bytes);
                    by_sha.insert(digest.clone(), Arc::clone(&bytes));
                    let git_oid = {
                        use sha1::Digest as _;
                        let mut h = sha1::Sha1::new();
                        h.update(format!("blob {}\0", bytes.len()).as_bytes());
                        h.update(bytes.as_slice());
                        hex(&h.finalize())
                    };
                    let lfs = name.ends_with(".safetensors");
                    files.insert(name.clone(), ZooFile { lfs, sha256: digest, git_oid, bytes });
                }
                let sha = sha256(id.as_bytes())[..40].to_owned();
                repos.insert(id.clone(), ZooRepo { id, sha, files });
            }
        }
        Zoo { repos, by_sha }
    }

    pub fn repo(&self, id: &str) -> &ZooRepo {
        self.repos.get(id).unwrap_or_else(|| panic!("no zoo repo {id}"))
    }

    fn summary(&self, repo: &ZooRepo, expand: &[String]) -> serde_json::Value {
        let mut o = serde_json::Map::new();
        o.insert("id".into(), repo.id.clone().into());
        o.insert("_id".into(), repo.sha[..24].into());
        let want = |p: &str| expand.is_empty() || expand.iter().any(|e| e == p);
        if want("sha") {
            o.insert("sha".into(), repo.sha.clone().into());
        }
        if want("lastModified") {
            o.insert("lastModified".into(), "2025-06-01T12:00:00.000Z".into());
        }
        if want("private") {
            o.insert("private".into(), false.into());
        }
        if expand.iter().any(|e| e == "cardData") {
            o.insert("cardData".into(), serde_json::json!({"license": "apache-2.0"}));
        }
        serde_json::Value::Object(o)
    }

    fn info(&self, repo: &ZooRepo) -> serde_json::Value {
        let siblings: Vec<serde_json::Value> = repo
            .files
            .iter()
            .map(|(name, f)| {
                let mut s = serde_json::json!({"rfilename": name, "size": f.bytes.len(), "blobId": &f.git_oid});
                if f.lfs {
                    s["lfs"] = serde_json::json!({"sha256": f.sha256, "size": f.bytes.len(), "pointerSize": 134});
                }
                s
            })
            .collect();
        serde_json::json!({
            "id": repo.id, "_id": &repo.sha[..24], "sha": repo.sha, "private": false, "gated": false,
            "lastModified": "2025-06-01T12:00:00.000Z", "createdAt": "2025-05-01T12:00:00.000Z",
            "tags": ["safetensors"], "cardData": {"license": "apache-2.0"}, "siblings": siblings,
        })
    }

    /// Serves the Hub routes.
    pub fn handle(&self, req: &Request, base: &str) -> Reply {
        let seg = req.segments();
        let seg: Vec<&str> = seg.iter().map(String::as_str).collect();
        let error = |status: u16, code: &str| Reply::new(status).header("x-error-code", code);
        match seg.as_slice() {
            ["api", "models"] => self.list(req, base),
            ["api", "models", owner, name, "revision", rev] => {
                let Some(repo) = self.repos.get(&format!("{owner}/{name}")) else {
                    return error(401, "RepoNotFound");
                };
                if *rev != "main" && *rev != repo.sha {
                    return error(404, "RevisionNotFound");
                }
                Reply::new(200).json(&self.info(repo))
            }
            ["cdn", digest] => self.cdn(req, digest),
            [owner, name, "resolve", rev, file @ ..] => {
                let Some(repo) = self.repos.get(&format!("{owner}/{name}")) else {
                    return error(401, "RepoNotFound");
                };
                if *rev != "main" && *rev != repo.sha {
                    return error(404, "RevisionNotFound");
                }
                let Some(f) = repo.files.get(&file.join("/")) else {
                    return error(404, "EntryNotFound");
                };
                let commit = ("x-repo-commit", repo.sha.clone());
                if f.lfs {
                    let location = format!("{base}/cdn/{}?Expires=9999999999&Signature=secret", f.sha256);
                    Reply::new(302)
                        .header("location", location)
                        .header(commit.0, commit.1)
                        .header("x-linked-size", f.bytes.len().to_string())
                        .header("x-linked-etag", format!("\"{}\"", f.sha256))
                        .header("etag", format!("\"{}\"", f.git_oid))
                        .body("Found.")
                } else {
                    Reply::new(200)
                        .header(commit.0, commit.1)
                        .header("etag", format!("\"{}\"", f.git_oid))
                        .body(f.bytes.to_vec())
                }
            }
            _ => Reply::new(404),
        }
    }

    fn list(&self, req: &Request, base: &str) -> Reply {
        let limit: usize = req.param("limit").and_then(|l| l.parse().ok()).unwrap_or(1000).min(1000);
        let cursor: usize = req.param("cursor").and_then(|c| c.parse().ok()).unwrap_or(0);
        let author = req.param("author");
        let expand: Vec<String> = req.query().into_iter().filter(|(k, _)| k == "expand[]").map(|(_, v)| v).collect();
        let matching: Vec<&ZooRepo> = self
            .repos
            .values()
            .filter(|r| author.as_ref().is_none_or(|a| r.id.starts_with(&format!("{a}/"))))
            .collect();
        let page: Vec<serde_json::Value> =
            matching.iter().skip(cursor).take(limit).map(|r| self.summary(r, &expand)).collect();
        let mut reply = Reply::new(200).json(&serde_json::Value::Array(page));
        if cursor + limit < matching.len() {
            let mut next = hub::Url::parse(&format!("{base}/api/models")).expect("url");
            {
                let mut q = next.query_pairs_mut();
                for (k, v) in req.query().into_iter().filter(|(k, _)| k != "cursor") {
                    q.append_pair(&k, &v);
                }
                q.append_pair("cursor", &(cursor + limit).to_string());
            }
            reply = reply.header("link", format!("<{next}>; rel=\"next\""));
        }
        reply
    }

    fn cdn(&self, req: &Request, digest: &str) -> Reply {
        let Some(bytes) = self.by_sha.get(digest) else { return Reply::new(404) };
        let size = bytes.len() as u64;
        match req.range() {
            None => Reply::new(200).header("accept-ranges", "bytes").body(bytes.to_vec()),
            Some((a, b)) => {
                let b = b.unwrap_or(size.saturating_sub(1)).min(size.saturating_sub(1));
                if a > b || a >= size {
                    return Reply::new(416).header("content-range", format!("bytes */{size}"));
                }
                Reply::new(206)
                    .header("accept-ranges", "bytes")
                    .header("content-range", format!("bytes {a}-{b}/{size}"))
                    .body(bytes[a as usize..=b as usize].to_vec())
            }
        }
    }
}

/// A client config for tests: loopback only, short timeouts and backoff.
pub fn config(endpoint: &str) -> hub::HubConfig {
    hub::HubConfig {
        allow_non_loopback_redirects: false,
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(2),
        backoff_base: Duration::from_millis(10),
        backoff_cap: Duration::from_millis(50),
        max_retries: 3,
        ..hub::HubConfig::new(endpoint)
    }
}
