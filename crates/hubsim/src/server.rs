//! The HTTP server: two listeners (the Hub and its CDN), connection handling with graceful shutdown, routing,
//! access rules, rate limits, fault injection and the request log.
//!
//! Each request goes through the same steps: number it (the fault generator's input), route it to a bucket, count
//! it against the client's quota, draw its faults, run the handler, then apply body faults and the common headers
//! (`X-Request-Id`, `RateLimit`) and log it. Handlers return a [`Reply`]; nothing else touches hyper types.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::api::{self, ApiError, Caller};
use crate::body::{Body, Payload};
use crate::config::ServerConfig;
use crate::faults::{Decision, Fault};
use crate::index::{Index, ScanOptions, ScanReport, Scanner, hex};
use crate::limits::{Bucket, Limiter, Verdict};
use crate::wire::{Query, RangeAnswer, parse_query, parse_range, percent_encode};

/// How long shutdown waits for in-flight responses before dropping their connections.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request body accepted (`paths-info` bodies are a few paths).
const MAX_REQUEST_BODY: usize = 1 << 20;
/// The index file `safetensors-metadata` reads by default.
const SAFETENSORS_INDEX: &str = "model.safetensors.index.json";
/// How many early requests are kept (a test that produces more has already failed).
const EARLY_CAPACITY: usize = 10_000;

/// Errors of [`serve`], [`spawn`] and [`Server`].
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot bind {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cannot scan the repo root {root}: {source}")]
    Scan { root: PathBuf, source: io::Error },
    #[error("the background scan task failed: {0}")]
    Task(String),
}

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedRequest {
    /// Arrival number over both listeners (the fault generator's input).
    pub seq: u64,
    pub method: String,
    /// The raw (still percent-encoded) path.
    pub path: String,
    pub query: Option<String>,
    /// The `Range` header, verbatim.
    pub range: Option<String>,
    pub status: u16,
    /// The rate-limit bucket, `None` for the CDN and unknown routes.
    pub bucket: Option<Bucket>,
    /// `ip:<addr>` for anonymous callers, `token:<12 hex of its sha256>` otherwise (tokens are never logged).
    pub client: String,
    pub at: Instant,
    /// The client had been told `r=0` for this bucket and the announced reset had not come yet.
    pub early: bool,
    pub faults: Vec<Fault>,
}

#[derive(Debug, Default)]
struct RequestLog {
    all: VecDeque<LoggedRequest>,
    early: Vec<LoggedRequest>,
}

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listener {
    Hub,
    Cdn,
}

/// State shared by every connection.
#[derive(Debug)]
struct Shared {
    config: ServerConfig,
    scan_options: ScanOptions,
    index: RwLock<Arc<Index>>,
    scanner: Mutex<Scanner>,
    limiter: Mutex<Limiter>,
    log: Mutex<RequestLog>,
    seq: AtomicU64,
    /// Scans of the root started so far (for tests: a listing of an unchanged folder must not scan).
    scans: AtomicU64,
    /// Key of the CDN URL signatures, fresh per server.
    secret: [u8; 32],
    addr: SocketAddr,
    cdn_addr: SocketAddr,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock leaves plain data behind (counters, a log); keep serving.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn index(&self) -> Arc<Index> {
        self.index.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Scans the root (blocking; call from a blocking context) and swaps the new index in.
    fn rescan_blocking(&self) -> Result<ScanReport, ServeError> {
        let scanner = lock(&self.scanner);
        self.rescan_locked(scanner)
    }

    /// Rescans the root unless its shape says nothing was added, removed or renamed since the last scan (and that
    /// scan is recent: see [`crate::index::SHAPE_MAX_AGE`]).
    fn rescan_if_changed(&self) -> Result<(), ServeError> {
        let scanner = lock(&self.scanner);
        if scanner.is_current(&self.config.root, Instant::now()) {
            return Ok(());
        }
        self.rescan_locked(scanner).map(drop)
    }

    fn rescan_locked(&self, mut scanner: MutexGuard<'_, Scanner>) -> Result<ScanReport, ServeError> {
        self.scans.fetch_add(1, Ordering::SeqCst);
        let previous = self.index();
        let (index, report) = scanner
            .scan(&self.config.root, &self.scan_options, &previous)
            .map_err(|source| ServeError::Scan { root: self.config.root.clone(), source })?;
        *self.index.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(index);
        tracing::info!(repos = report.repos, files = report.files, skipped = report.skipped.len(), "scanned repo root");
        Ok(report)
    }

    fn record(&self, entry: LoggedRequest) {
        let mut log = lock(&self.log);
        if entry.early && log.early.len() < EARLY_CAPACITY {
            log.early.push(entry.clone());
        }
        if log.all.len() >= self.config.log_capacity.max(1) {
            log.all.pop_front();
        }
        log.all.push_back(entry);
    }
}

async fn rescan(shared: &Arc<Shared>) -> Result<ScanReport, ServeError> {
    let shared = Arc::clone(shared);
    tokio::task::spawn_blocking(move || shared.rescan_blocking()).await.map_err(|e| ServeError::Task(e.to_string()))?
}

/// A bound, scanned server that has not started serving yet: lets a caller learn the ports before [`Server::run`].
#[derive(Debug)]
pub struct Server {
    hub: TcpListener,
    cdn: TcpListener,
    shared: Arc<Shared>,
    report: ScanReport,
}

impl Server {
    /// Binds both listeners and scans the root.
    ///
    /// # Errors
    /// [`ServeError::Bind`] when an address is taken or not allowed, [`ServeError::Scan`] when the root cannot be
    /// read.
    pub async fn bind(config: ServerConfig) -> Result<Server, ServeError> {
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr, source })
        };
        let hub = bind(config.addr).await?;
        let cdn = bind(config.cdn_addr).await?;
        let local = |l: &TcpListener, addr| l.local_addr().map_err(|source| ServeError::Bind { addr, source });
        let addr = local(&hub, config.addr)?;
        let cdn_addr = local(&cdn, config.cdn_addr)?;
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let secret: [u8; 32] = Sha256::new()
            .chain_update(config.faults.seed.to_le_bytes())
            .chain_update(nanos.to_le_bytes())
            .finalize()
            .into();
        let scan_options = ScanOptions {
            large_file_threshold: config.large_file_threshold,
            gated: config.gated.clone(),
            private: config.private.clone(),
        };
        let limiter = Limiter::new(config.quotas.clone(), config.faults.storm.clone(), Instant::now());
        let shared = Arc::new(Shared {
            config,
            scan_options,
            index: RwLock::new(Arc::new(Index::default())),
            scanner: Mutex::new(Scanner::default()),
            limiter: Mutex::new(limiter),
            log: Mutex::new(RequestLog::default()),
            seq: AtomicU64::new(0),
            scans: AtomicU64::new(0),
            secret,
            addr,
            cdn_addr,
        });
        let report = rescan(&shared).await?;
        Ok(Server { hub, cdn, shared, report })
    }

    /// The Hub listener's address (API and `/resolve/`).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// The CDN listener's address.
    pub fn cdn_addr(&self) -> SocketAddr {
        self.shared.cdn_addr
    }

    /// What the initial scan found.
    pub fn scan_report(&self) -> &ScanReport {
        &self.report
    }

    /// Serves until `shutdown` completes, then stops accepting, lets in-flight responses finish (up to a few
    /// seconds) and returns.
    ///
    /// # Errors
    /// None today once bound; the `Result` leaves room for fatal listener errors.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        tracing::info!(hub = %self.shared.addr, cdn = %self.shared.cdn_addr, "hubsim serving");
        let hub = tokio::spawn(accept_loop(self.hub, Listener::Hub, Arc::clone(&self.shared), stop_rx.clone()));
        let cdn = tokio::spawn(accept_loop(self.cdn, Listener::Cdn, Arc::clone(&self.shared), stop_rx.clone()));
        let rescans = self.shared.config.rescan_interval.map(|every| {
            let shared = Arc::clone(&self.shared);
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = tokio::time::sleep(every) => {
                            if let Err(e) = rescan(&shared).await {
                                tracing::warn!(error = %e, "periodic rescan failed; keeping the previous index");
                            }
                        }
                        () = stopped(&mut stop) => break,
                    }
                }
            })
        });
        shutdown.await;
        let _ = stop_tx.send(true);
        for task in [Some(hub), Some(cdn), rescans].into_iter().flatten() {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "server task ended abnormally");
            }
        }
        Ok(())
    }
}

/// Binds, scans and serves until `shutdown` completes.
///
/// # Errors
/// See [`Server::bind`].
pub async fn serve(config: ServerConfig, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
    Server::bind(config).await?.run(shutdown).await
}

/// Starts a server in the background and returns a handle to inspect and stop it (for tests). Dropping the handle
/// stops the server too.
///
/// # Errors
/// See [`Server::bind`].
pub async fn spawn(config: ServerConfig) -> Result<Handle, ServeError> {
    let server = Server::bind(config).await?;
    let shared = Arc::clone(&server.shared);
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        // A dropped sender also means stop.
        let stopped = async {
            let _ = rx.await;
        };
        if let Err(e) = server.run(stopped).await {
            tracing::warn!(error = %e, "hubsim stopped with an error");
        }
    });
    Ok(Handle { addr: shared.addr, cdn_addr: shared.cdn_addr, shared, stop: Some(tx), task: Some(task) })
}

/// A running server started by [`spawn`].
#[derive(Debug)]
pub struct Handle {
    /// The Hub listener (API and `/resolve/`).
    pub addr: SocketAddr,
    /// The CDN listener.
    pub cdn_addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Handle {
    /// `http://<addr>`, the value for `HF_ENDPOINT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every logged request, oldest first (up to `log_capacity`).
    pub fn request_log(&self) -> Vec<LoggedRequest> {
        lock(&self.shared.log).all.iter().cloned().collect()
    }

    /// Requests that arrived after the client was told `r=0` and before the announced reset.
    pub fn early_requests(&self) -> Vec<LoggedRequest> {
        lock(&self.shared.log).early.clone()
    }

    /// Empties the request log and the early-request list.
    pub fn clear_log(&self) {
        let mut log = lock(&self.shared.log);
        log.all.clear();
        log.early.clear();
    }

    /// How many scans of the root have started, the one at bind included.
    pub fn scans(&self) -> u64 {
        self.shared.scans.load(Ordering::SeqCst)
    }

    /// Rescans the root now (tests add or change repos between crawls).
    ///
    /// # Errors
    /// [`ServeError::Scan`] when the root cannot be read; the previous index stays in place.
    pub async fn rescan(&self) -> Result<ScanReport, ServeError> {
        rescan(&self.shared).await
    }

    /// Stops accepting, lets in-flight responses finish and waits for the server to end.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Completes once the stop flag is set (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send; drop it here rather than hold it across an await.
    let _ = stop.wait_for(|s| *s).await;
}

async fn accept_loop(listener: TcpListener, kind: Listener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(connection(stream, peer, kind, Arc::clone(&shared), stop.clone()));
                }
                Err(e) => {
                    // Typically EMFILE; back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = stopped(&mut stop) => break,
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async { while connections.join_next().await.is_some() {} });
    if drained.await.is_err() {
        connections.abort_all();
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    kind: Listener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let reset = Arc::new(AtomicBool::new(false));
    let io = TokioIo::new(ResettableStream { inner: stream, reset: Arc::clone(&reset) });
    let service = service_fn(move |req| {
        let shared = Arc::clone(&shared);
        let reset = Arc::clone(&reset);
        async move { Ok::<_, Infallible>(handle(&shared, kind, peer, reset, req).await) }
    });
    let conn = http1::Builder::new().serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        }
        () = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// A TCP stream that closes with RST instead of FIN when its `reset` flag is set: how a reset-mid-body fault
/// reaches the client as "connection reset by peer".
#[derive(Debug)]
struct ResettableStream {
    inner: TcpStream,
    reset: Arc<AtomicBool>,
}

impl Drop for ResettableStream {
    fn drop(&mut self) {
        if self.reset.load(Ordering::SeqCst) {
            // SO_LINGER with a zero timeout makes close() send RST and discard unsent data; close does not block.
            let _ = socket2::SockRef::from(&self.inner).set_linger(Some(Duration::ZERO));
        }
    }
}

impl AsyncRead for ResettableStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResettableStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A handler's answer before faults and common headers.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: HeaderMap,
    payload: Payload,
}

impl Reply {
    fn new(status: u16, payload: Payload) -> Reply {
        Reply { status, headers: HeaderMap::new(), payload }
    }

    fn json(status: u16, value: &Value) -> Reply {
        let mut r = Reply::new(status, Payload::Bytes(Bytes::from(value.to_string())));
        r.set(header::CONTENT_TYPE, "application/json; charset=utf-8");
        r
    }

    /// An API error: JSON body plus `X-Error-Code` / `X-Error-Message`.
    fn error(e: &ApiError) -> Reply {
        let mut r = Reply::json(e.status, &json!({"error": e.message}));
        if let Some(code) = e.code {
            r.set(HeaderName::from_static("x-error-code"), code);
        }
        r.set(HeaderName::from_static("x-error-message"), &e.message);
        r
    }

    /// A CDN (S3-style) error.
    fn xml_error(status: u16, code: &str, message: &str) -> Reply {
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>"
        );
        let mut r = Reply::new(status, Payload::Bytes(Bytes::from(body)));
        r.set(header::CONTENT_TYPE, "application/xml");
        r
    }

    /// Sets a header; text that is not a valid header value (user input echoed in messages) is made printable.
    fn set(&mut self, name: HeaderName, value: &str) {
        let value = HeaderValue::from_str(value).unwrap_or_else(|_| {
            let clean: String = value.chars().map(|c| if (' '..='~').contains(&c) { c } else { '?' }).collect();
            HeaderValue::from_str(&clean).unwrap_or(HeaderValue::from_static("?"))
        });
        self.headers.insert(name, value);
    }
}

impl From<ApiError> for Reply {
    fn from(e: ApiError) -> Reply {
        Reply::error(&e)
    }
}

/// A request routed: what it asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    ListModels,
    ModelInfo { repo: String, rev: Option<String> },
    Tree { repo: String, rev: String, path: String },
    PathsInfo { repo: String, rev: String },
    Refs { repo: String },
    AuthCheck { repo: String },
    SafetensorsMetadata { repo: String, path: String },
    Resolve { repo: String, rev: String, path: String },
    Cdn { repo: String, sha256: String },
    ApiNotFound,
    NotFound,
    BadPath,
    MethodNotAllowed { api: bool },
}

impl Route {
    fn bucket(&self) -> Option<Bucket> {
        match self {
            Route::ListModels
            | Route::ModelInfo { .. }
            | Route::Tree { .. }
            | Route::PathsInfo { .. }
            | Route::Refs { .. }
            | Route::AuthCheck { .. }
            | Route::SafetensorsMetadata { .. }
            | Route::ApiNotFound
            | Route::MethodNotAllowed { api: true } => Some(Bucket::Api),
            Route::Resolve { .. } => Some(Bucket::Resolvers),
            Route::Cdn { .. } | Route::NotFound | Route::BadPath | Route::MethodNotAllowed { api: false } => None,
        }
    }
}

fn route(kind: Listener, method: &Method, path: &str) -> Route {
    let Some(segs) = api::segments(path) else {
        return Route::BadPath;
    };
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let read = method == Method::GET || method == Method::HEAD;
    let get = |r: Route| if read { r } else { Route::MethodNotAllowed { api: true } };
    let rest = |from: usize| s.get(from..).map(|p| p.join("/")).unwrap_or_default();
    if kind == Listener::Cdn {
        return match s.as_slice() {
            ["cdn", "repos", org, name, sha] if read => {
                Route::Cdn { repo: format!("{org}/{name}"), sha256: (*sha).to_owned() }
            }
            ["cdn", ..] => Route::MethodNotAllowed { api: false },
            _ => Route::NotFound,
        };
    }
    match s.as_slice() {
        ["api", "models"] => get(Route::ListModels),
        ["api", "models", org, name] => get(Route::ModelInfo { repo: format!("{org}/{name}"), rev: None }),
        ["api", "models", org, name, "revision", rev] => {
            get(Route::ModelInfo { repo: format!("{org}/{name}"), rev: Some((*rev).to_owned()) })
        }
        ["api", "models", org, name, "tree", rev, ..] => {
            get(Route::Tree { repo: format!("{org}/{name}"), rev: (*rev).to_owned(), path: rest(6) })
        }
        ["api", "models", org, name, "paths-info", rev] => {
            if method == Method::POST {
                Route::PathsInfo { repo: format!("{org}/{name}"), rev: (*rev).to_owned() }
            } else {
                Route::MethodNotAllowed { api: true }
            }
        }
        ["api", "models", org, name, "refs"] => get(Route::Refs { repo: format!("{org}/{name}") }),
        ["api", "models", org, name, "auth-check"] => get(Route::AuthCheck { repo: format!("{org}/{name}") }),
        ["api", "models", org, name, "safetensors-metadata", ..] => {
            let path = if s.len() > 6 { rest(6) } else { SAFETENSORS_INDEX.to_owned() };
            get(Route::SafetensorsMetadata { repo: format!("{org}/{name}"), path })
        }
        ["api", ..] => Route::ApiNotFound,
        [org, name, "resolve", rev, _, ..] => {
            let r = Route::Resolve { repo: format!("{org}/{name}"), rev: (*rev).to_owned(), path: rest(4) };
            if read { r } else { Route::MethodNotAllowed { api: false } }
        }
        // A single-segment repo id (`gpt2`): none exist here, but the Hub answers RepoNotFound, not a page 404.
        [name, "resolve", rev, _, ..] if read => {
            Route::Resolve { repo: (*name).to_owned(), rev: (*rev).to_owned(), path: rest(3) }
        }
        _ => Route::NotFound,
    }
}

fn header_str(headers: &HeaderMap, name: HeaderName) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = header_str(headers, header::AUTHORIZATION)?;
    let (scheme, token) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()).then(|| token.trim().to_owned())
}

/// Per-request facts the handlers need.
#[derive(Debug)]
struct Ctx<'a> {
    shared: &'a Shared,
    index: Arc<Index>,
    method: Method,
    raw_path: String,
    raw_query: Option<String>,
    query: Query,
    range: Option<String>,
    /// `Host` header, or the listener address.
    host: String,
    caller: Caller,
    decision: Decision,
    faults: Vec<Fault>,
}

async fn handle(
    shared: &Shared,
    kind: Listener,
    peer: SocketAddr,
    reset: Arc<AtomicBool>,
    req: Request<Incoming>,
) -> Response<Body> {
    let seq = shared.seq.fetch_add(1, Ordering::SeqCst);
    let at = Instant::now();
    let (parts, body) = req.into_parts();
    let token = bearer(&parts.headers);
    let caller = match &token {
        None => Caller::Anonymous,
        Some(t) if shared.config.tokens.iter().any(|a| a == t) => Caller::Accepted,
        Some(_) => Caller::Other,
    };
    let client = match &token {
        Some(t) => format!("token:{}", hex(Sha256::digest(t.as_bytes()).get(..6).unwrap_or_default())),
        None => format!("ip:{}", peer.ip()),
    };
    let raw_path = parts.uri.path().to_owned();
    let route = route(kind, &parts.method, &raw_path);
    let bucket = route.bucket();
    let scope = &shared.config.faults.scope;
    let in_scope = match (kind, bucket) {
        (Listener::Cdn, _) => scope.cdn,
        (Listener::Hub, Some(Bucket::Api)) => scope.api,
        (Listener::Hub, Some(Bucket::Resolvers)) => scope.resolvers,
        (Listener::Hub, None) => false,
    };
    let decision = if in_scope { Decision::draw(&shared.config.faults, seq) } else { Decision::NONE };
    let verdict: Option<Verdict> = bucket.map(|b| {
        let mut limiter = lock(&shared.limiter);
        let tier = limiter.tier_of(token.as_deref());
        limiter.check(&client, tier, b, at)
    });
    let own_addr = if kind == Listener::Hub { shared.addr } else { shared.cdn_addr };
    // A listing's first page sees the folder as it is now. The scan runs on this worker, and only when the root's
    // shape changed (a repo or org added, removed or renamed) or the last scan is older than `SHAPE_MAX_AGE`:
    // looking at the shape is a `readdir` of the root and of each org, a scan re-reads every repo's card, config
    // and safetensors headers.
    let first_page = || !parse_query(parts.uri.query().unwrap_or_default()).iter().any(|(k, _)| k == "cursor");
    if shared.config.rescan_on_list
        && matches!(route, Route::ListModels)
        && verdict.as_ref().is_none_or(|v| v.allowed)
        && first_page()
        && let Err(e) = shared.rescan_if_changed()
    {
        tracing::warn!(error = %e, "rescan before listing failed; keeping the previous index");
    }
    let mut ctx = Ctx {
        shared,
        index: shared.index(),
        method: parts.method.clone(),
        raw_query: parts.uri.query().map(str::to_owned),
        query: Query(parse_query(parts.uri.query().unwrap_or_default())),
        range: header_str(&parts.headers, header::RANGE),
        host: header_str(&parts.headers, header::HOST).unwrap_or_else(|| own_addr.to_string()),
        raw_path,
        caller,
        decision,
        faults: Vec::new(),
    };

    let mut reply = if let Some(v) = verdict.as_ref().filter(|v| !v.allowed) {
        if v.storm {
            ctx.faults.push(Fault::Storm);
        }
        let name = bucket.map_or("api", Bucket::name);
        let mut r = Reply::json(
            429,
            &json!({"error": format!("You have exceeded our '{name}' rate limit. Retry after the window resets.")}),
        );
        r.set(header::RETRY_AFTER, &v.retry_after.to_string());
        r
    } else {
        if decision.slow {
            ctx.faults.push(Fault::Slow);
            tokio::time::sleep(Duration::from_millis(shared.config.faults.slow_ms)).await;
        }
        if let Some(status) = decision.server_error {
            ctx.faults.push(Fault::ServerError(status));
            match kind {
                Listener::Hub => Reply::json(
                    status,
                    &json!({"error": "Internal Error - We're working hard to fix this as soon as possible!"}),
                ),
                Listener::Cdn => Reply::xml_error(status, "ServiceUnavailable", "Please reduce your request rate."),
            }
        } else {
            let content_type = header_str(&parts.headers, header::CONTENT_TYPE);
            dispatch(&mut ctx, route, body, content_type).await
        }
    };

    // Common headers.
    // Shaped like the Hub's (AWS) ids: a timestamp and a unique part; the sequence number makes it traceable.
    let unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let request_id = format!("Root=1-{:08x}-{:024x}", unix & 0xffff_ffff, seq);
    reply.set(HeaderName::from_static("x-request-id"), &request_id);
    if let Some(h) = verdict.as_ref().and_then(|v| v.headers.as_ref()) {
        reply.set(HeaderName::from_static("ratelimit"), &h.rate_limit());
        reply.set(HeaderName::from_static("ratelimit-policy"), &h.policy());
    }

    let len = reply.payload.len();
    let is_head = ctx.method == Method::HEAD;
    let body_fault = if !is_head && matches!(reply.status, 200 | 206) && len >= 2 {
        ctx.decision.body.map(|kind| (kind, ctx.decision.cut_point(len)))
    } else {
        None
    };
    if let Some((kind, after)) = body_fault {
        ctx.faults.push(match kind {
            crate::faults::BodyFault::Reset => Fault::ResetMidBody { after },
            crate::faults::BodyFault::Truncate => Fault::Truncated { after },
        });
    }
    reply.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));

    shared.record(LoggedRequest {
        seq,
        method: parts.method.to_string(),
        path: ctx.raw_path.clone(),
        query: ctx.raw_query.clone(),
        range: ctx.range.clone(),
        status: reply.status,
        bucket,
        client,
        at,
        early: verdict.as_ref().is_some_and(|v| v.early),
        faults: ctx.faults.clone(),
    });

    let body = if is_head { Body::empty() } else { Body::new(reply.payload, body_fault, reset) };
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    *response.headers_mut() = reply.headers;
    response
}

async fn dispatch(ctx: &mut Ctx<'_>, route: Route, body: Incoming, content_type: Option<String>) -> Reply {
    let result = match route {
        Route::ListModels => list_models(ctx),
        Route::ModelInfo { repo, rev } => model_info(ctx, &repo, rev.as_deref()),
        Route::Tree { repo, rev, path } => tree(ctx, &repo, &rev, &path),
        Route::PathsInfo { repo, rev } => paths_info(ctx, &repo, &rev, body, content_type).await,
        Route::Refs { repo } => {
            api::find_repo(&ctx.index, &repo, ctx.caller, false).map(|r| Reply::json(200, &api::refs(r)))
        }
        Route::AuthCheck { repo } => {
            api::find_repo(&ctx.index, &repo, ctx.caller, true).map(|_| Reply::json(200, &json!({})))
        }
        Route::SafetensorsMetadata { repo, path } => safetensors_metadata(ctx, &repo, &path).await,
        Route::Resolve { repo, rev, path } => resolve(ctx, &repo, &rev, &path).map(|(reply, expired)| {
            if expired {
                ctx.faults.push(Fault::ExpiredUrl);
            }
            reply
        }),
        Route::Cdn { repo, sha256 } => Ok(cdn(ctx, &repo, &sha256)),
        Route::ApiNotFound => Err(ApiError {
            status: 404,
            code: None,
            message: "Sorry, we can't find the page you are looking for.".to_owned(),
        }),
        Route::NotFound => Ok(Reply::new(404, Payload::Bytes(Bytes::from_static(b"Not Found")))),
        Route::BadPath => Err(ApiError::bad_request("malformed percent-encoding in path")),
        Route::MethodNotAllowed { .. } => {
            Err(ApiError { status: 405, code: None, message: "Method not allowed".to_owned() })
        }
    };
    result.unwrap_or_else(Reply::from)
}

/// The query string of a page request without its cursor, ready for `…&cursor=` to be appended.
fn query_without_cursor(raw: Option<&str>) -> String {
    let kept: Vec<&str> =
        raw.unwrap_or_default().split('&').filter(|p| !p.is_empty() && !p.starts_with("cursor=")).collect();
    if kept.is_empty() { String::new() } else { format!("{}&", kept.join("&")) }
}

fn with_next_link(mut reply: Reply, ctx: &Ctx<'_>, cursor: Option<String>) -> Reply {
    if let Some(cursor) = cursor {
        let link = format!(
            "<http://{}{}?{}cursor={cursor}>; rel=\"next\"",
            ctx.host,
            ctx.raw_path,
            query_without_cursor(ctx.raw_query.as_deref())
        );
        reply.set(header::LINK, &link);
    }
    reply
}

fn list_models(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let page = api::list_models(&ctx.index, &ctx.query, ctx.caller, ctx.shared.config.page_size.max(1))?;
    let reply = Reply::json(200, &Value::Array(page.items));
    Ok(with_next_link(reply, ctx, page.next_cursor))
}

fn model_info(ctx: &Ctx<'_>, id: &str, rev: Option<&str>) -> Result<Reply, ApiError> {
    let repo = api::find_repo(&ctx.index, id, ctx.caller, false)?;
    if let Some(rev) = rev {
        api::check_revision(repo, rev)?;
    }
    Ok(Reply::json(200, &api::model_info(repo, &ctx.query)?))
}

fn tree(ctx: &Ctx<'_>, id: &str, rev: &str, path: &str) -> Result<Reply, ApiError> {
    let repo = api::find_repo(&ctx.index, id, ctx.caller, false)?;
    api::check_revision(repo, rev)?;
    let page = api::tree(repo, path, &ctx.query, ctx.shared.config.page_size.max(1))?;
    Ok(with_next_link(Reply::json(200, &Value::Array(page.items)), ctx, page.next_cursor))
}

async fn read_body(mut body: Incoming) -> Result<Vec<u8>, ApiError> {
    use http_body::Body as _;
    let mut out = Vec::new();
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame.map_err(|e| ApiError::bad_request(format!("cannot read body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > MAX_REQUEST_BODY {
                return Err(ApiError { status: 413, code: None, message: "request body too large".to_owned() });
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

async fn paths_info(
    ctx: &Ctx<'_>,
    id: &str,
    rev: &str,
    body: Incoming,
    content_type: Option<String>,
) -> Result<Reply, ApiError> {
    let repo = api::find_repo(&ctx.index, id, ctx.caller, false)?;
    api::check_revision(repo, rev)?;
    let bytes = read_body(body).await?;
    let json_body = content_type.is_some_and(|c| c.starts_with("application/json"));
    Ok(Reply::json(200, &api::paths_info(repo, &bytes, json_body)?))
}

/// `GET /api/models/{id}/safetensors-metadata/{index}`: the index and every shard header in one answer (main only).
async fn safetensors_metadata(ctx: &Ctx<'_>, id: &str, path: &str) -> Result<Reply, ApiError> {
    let repo = api::find_repo(&ctx.index, id, ctx.caller, true)?;
    let file = repo.files.get(path).ok_or_else(ApiError::entry_not_found)?;
    let read = {
        let file = file.clone();
        let shards = repo.files.clone();
        move || -> Result<Value, ApiError> {
            let bad = |e: String| ApiError::bad_request(format!("invalid safetensors index: {e}"));
            let index: Value = serde_json::from_slice(&std::fs::read(&file.abs).map_err(|e| bad(e.to_string()))?)
                .map_err(|e| bad(e.to_string()))?;
            let names: std::collections::BTreeSet<&str> = index
                .get("weight_map")
                .and_then(Value::as_object)
                .ok_or_else(|| bad("no weight_map".to_owned()))?
                .values()
                .filter_map(Value::as_str)
                .collect();
            let mut headers = serde_json::Map::new();
            for name in names {
                let shard = shards.get(name).ok_or_else(ApiError::entry_not_found)?;
                let header = crate::safetensors::read_header(&shard.abs, shard.size).map_err(|e| bad(e.to_string()))?;
                headers.insert(name.to_owned(), header);
            }
            Ok(json!({"index": index, "headers": headers}))
        }
    };
    let value = tokio::task::spawn_blocking(read).await.map_err(|e| ApiError {
        status: 500,
        code: None,
        message: e.to_string(),
    })??;
    Ok(Reply::json(200, &value))
}

/// `Content-Type` for a file served directly.
fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("json") => "application/json; charset=utf-8",
        Some("md" | "txt" | "yaml" | "yml" | "py" | "csv" | "jinja") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn disposition(path: &str) -> String {
    let name = path.rsplit('/').next().unwrap_or(path);
    let ascii: String = name.chars().map(|c| if c.is_ascii_graphic() && c != '"' { c } else { '_' }).collect();
    format!("inline; filename*=UTF-8''{}; filename=\"{ascii}\";", percent_encode(name, false))
}

/// The body, status and range headers for `size` bytes of `path` under the request's `Range` header.
fn ranged(ctx: &Ctx<'_>, path: PathBuf, size: u64) -> Reply {
    let mut reply = match parse_range(ctx.range.as_deref(), size) {
        RangeAnswer::Full => Reply::new(200, Payload::File { path, start: 0, len: size }),
        RangeAnswer::Partial { start, end } => {
            let mut r = Reply::new(206, Payload::File { path, start, len: end - start + 1 });
            r.set(header::CONTENT_RANGE, &format!("bytes {start}-{end}/{size}"));
            r
        }
        RangeAnswer::Unsatisfiable => {
            let mut r = Reply::new(416, Payload::Empty);
            r.set(header::CONTENT_RANGE, &format!("bytes */{size}"));
            r
        }
    };
    reply.set(header::ACCEPT_RANGES, "bytes");
    reply
}

/// `GET|HEAD /{id}/resolve/{rev}/{path}`; the flag tells whether the redirect carries an injected expired URL.
fn resolve(ctx: &Ctx<'_>, id: &str, rev: &str, path: &str) -> Result<(Reply, bool), ApiError> {
    let repo = api::find_repo(&ctx.index, id, ctx.caller, true)?;
    api::check_revision(repo, rev)?;
    let file = repo.files.get(path).ok_or_else(ApiError::entry_not_found)?;
    let commit = HeaderName::from_static("x-repo-commit");
    let Some(lfs) = &file.lfs else {
        let mut reply = ranged(ctx, file.abs.clone(), file.size);
        reply.set(commit, &repo.sha);
        reply.set(header::ETAG, &format!("\"{}\"", file.oid));
        if reply.status != 416 {
            reply.set(header::CONTENT_TYPE, content_type(path));
            reply.set(header::CONTENT_DISPOSITION, &disposition(path));
        }
        return Ok((reply, false));
    };
    let expired = ctx.decision.expire_url;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let expires = if expired { now.saturating_sub(60) } else { now + ctx.shared.config.url_ttl.as_secs().max(1) };
    let cdn_path = format!("/cdn/repos/{id}/{}", lfs.sha256);
    let signature = sign(&ctx.shared.secret, &cdn_path, expires);
    let base = match &ctx.shared.config.cdn_base_url {
        Some(base) => base.trim_end_matches('/').to_owned(),
        None => format!("http://{}:{}", host_name(&ctx.host), ctx.shared.cdn_addr.port()),
    };
    let location = format!(
        "{base}{cdn_path}?response-content-disposition={}&Expires={expires}&Signature={signature}&Key-Pair-Id=hubsim",
        percent_encode(&disposition(path), false)
    );
    let mut reply = Reply::new(302, Payload::Empty);
    reply.set(header::LOCATION, &location);
    reply.set(commit, &repo.sha);
    reply.set(HeaderName::from_static("x-linked-etag"), &format!("\"{}\"", lfs.sha256));
    reply.set(HeaderName::from_static("x-linked-size"), &file.size.to_string());
    reply.set(header::ETAG, &format!("\"{}\"", lfs.sha256));
    Ok((reply, expired))
}

/// The host part of a `Host` header (`[::1]:80` → `[::1]`, `a:80` → `a`).
fn host_name(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_inclusive(']').next().unwrap_or(host);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

fn hmac_sha256(key: &[u8; 32], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(key);
    let inner = Sha256::new().chain_update(block.map(|b| b ^ 0x36)).chain_update(message).finalize();
    Sha256::new().chain_update(block.map(|b| b ^ 0x5c)).chain_update(inner).finalize().into()
}

fn sign(secret: &[u8; 32], path: &str, expires: u64) -> String {
    hex(&hmac_sha256(secret, format!("{path}\n{expires}").as_bytes()))
}

fn http_date(t: DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// The CDN: checks the signature and expiry, then serves the LFS object with `Range` support.
fn cdn(ctx: &Ctx<'_>, id: &str, sha256: &str) -> Reply {
    let expires = ctx.query.get("Expires").and_then(|e| e.parse::<u64>().ok());
    let signature = ctx.query.get("Signature");
    let (Some(expires), Some(signature)) = (expires, signature) else {
        return Reply::xml_error(403, "AccessDenied", "Missing Key-Pair-Id query parameter or cookie value");
    };
    if sign(&ctx.shared.secret, &ctx.raw_path, expires) != signature {
        return Reply::xml_error(403, "AccessDenied", "Access denied");
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if now >= expires {
        return Reply::xml_error(403, "AccessDenied", "Request has expired");
    }
    let Some((repo, file)) = ctx.index.repos.get(id).and_then(|r| r.lfs_file(sha256).map(|f| (r, f))) else {
        return Reply::xml_error(404, "NoSuchKey", "The specified key does not exist.");
    };
    let mut reply = ranged(ctx, file.abs.clone(), file.size);
    reply.set(header::ETAG, &format!("\"{sha256}\""));
    reply.set(header::LAST_MODIFIED, &http_date(repo.last_modified));
    if reply.status != 416 {
        reply.set(header::CONTENT_TYPE, "application/octet-stream");
        let disposition = ctx.query.get("response-content-disposition").map(str::to_owned);
        if let Some(d) = disposition {
            reply.set(header::CONTENT_DISPOSITION, &d);
        }
    }
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(kind: Listener, method: Method, path: &str, expected: Route) {
        assert_eq!(route(kind, &method, path), expected, "{method} {path}");
    }

    #[test]
    fn routes() {
        use Listener::*;
        let s = |x: &str| x.to_owned();
        check(Hub, Method::GET, "/api/models", Route::ListModels);
        check(Hub, Method::GET, "/api/models/a/b", Route::ModelInfo { repo: s("a/b"), rev: None });
        check(
            Hub,
            Method::GET,
            "/api/models/a/b/revision/refs%2Fpr%2F1",
            Route::ModelInfo { repo: s("a/b"), rev: Some(s("refs/pr/1")) },
        );
        check(
            Hub,
            Method::GET,
            "/api/models/a/b/tree/main",
            Route::Tree { repo: s("a/b"), rev: s("main"), path: s("") },
        );
        check(
            Hub,
            Method::GET,
            "/api/models/a/b/tree/main/sub%2Fdir",
            Route::Tree { repo: s("a/b"), rev: s("main"), path: s("sub/dir") },
        );
        check(
            Hub,
            Method::GET,
            "/api/models/a/b/tree/main/sub/dir",
            Route::Tree { repo: s("a/b"), rev: s("main"), path: s("sub/dir") },
        );
        check(
            Hub,
            Method::POST,
            "/api/models/a/b/paths-info/main",
            Route::PathsInfo { repo: s("a/b"), rev: s("main") },
        );
        check(Hub, Method::GET, "/api/models/a/b/paths-info/main", Route::MethodNotAllowed { api: true });
        check(
            Hub,
            Method::GET,
            "/api/models/a/b/safetensors-metadata",
            Route::SafetensorsMetadata { repo: s("a/b"), path: s(SAFETENSORS_INDEX) },
        );
        check(Hub, Method::GET, "/api/whoami-v2", Route::ApiNotFound);
        check(
            Hub,
            Method::HEAD,
            "/a/b/resolve/main/x/y.bin",
            Route::Resolve { repo: s("a/b"), rev: s("main"), path: s("x/y.bin") },
        );
        check(
            Hub,
            Method::GET,
            "/gpt2/resolve/main/config.json",
            Route::Resolve { repo: s("gpt2"), rev: s("main"), path: s("config.json") },
        );
        check(
            Hub,
            Method::GET,
            "/a/b/resolve/main/..%2F..%2Fetc%2Fpasswd",
            Route::Resolve { repo: s("a/b"), rev: s("main"), path: s("../../etc/passwd") },
        );
        check(Hub, Method::GET, "/a/b/resolve/main/%zz", Route::BadPath);
        check(Hub, Method::GET, "/cdn/repos/a/b/00", Route::NotFound);
        check(Cdn, Method::GET, "/cdn/repos/a/b/00", Route::Cdn { repo: s("a/b"), sha256: s("00") });
        check(Cdn, Method::GET, "/api/models", Route::NotFound);
    }

    #[test]
    fn helpers() {
        assert_eq!(query_without_cursor(Some("a=1&cursor=xx&b=2")), "a=1&b=2&");
        assert_eq!(query_without_cursor(None), "");
        assert_eq!(host_name("127.0.0.1:8080"), "127.0.0.1");
        assert_eq!(host_name("[::1]:8080"), "[::1]");
        assert_eq!(host_name("mirror"), "mirror");
        // Reference value from Python's hmac module:
        // python3 -c "import hmac,hashlib;print(hmac.new(bytes(range(32)),b'msg',hashlib.sha256).hexdigest())"
        let key: [u8; 32] = std::array::from_fn(|i| i as u8);
        assert_eq!(hex(&hmac_sha256(&key, b"msg")), "3b57d42a96c7d6bbd3a8d21ccf7a9db575e32e1872b62c0a368840b47d8b38ef");
    }
}
