//! The HTTP core: one `reqwest` client, the rate limiter, the concurrency limit, retries, and the three kinds
//! of requests everything else is built from: JSON from the API, `HEAD` on a resolve URL, ranged `GET`s.
//!
//! Every request goes through [`HubClient::execute`]: wait for the bucket's budget, take a slot of the global
//! semaphore, send, take in the `RateLimit` headers, map error statuses to typed errors using `X-Error-Code`,
//! and retry 408/429/5xx, transport failures and truncated bodies with capped, fully jittered exponential
//! backoff (or the wait the server named). Redirects are never followed by `reqwest`: each is checked here
//! ([`HubClient::check_redirect`]) and the token goes only to the endpoint's own origin.

use std::net::IpAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::header::{self, HeaderMap};
use reqwest::{Method, Response, Url};
use tokio::sync::Semaphore;

use crate::config::HubConfig;
use crate::error::{HubError, shown};
use crate::ids::{Commit, RepoId, check_file_name};
use crate::limiter::{Bucket, RateLimiter, parse_ratelimit, parse_retry_after};

/// Most redirects followed for one logical request (relative API redirects, resolve → CDN).
pub const MAX_REDIRECTS: u32 = 5;

/// Largest single range read: bounds the memory one request can take.
pub const MAX_RANGE_LEN: u64 = 512 << 20;

/// Longest `X-Error-Message` kept in an error (it is untrusted text).
const MAX_ERROR_MESSAGE: usize = 200;

/// Which budget a request counts against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `/api/…`: the `api` bucket.
    Api,
    /// `/…/resolve/…`: the `resolvers` bucket.
    Resolver,
    /// Signed CDN URLs: not rate limited.
    Cdn,
}

impl Kind {
    fn bucket(self) -> Option<Bucket> {
        match self {
            Kind::Api => Some(Bucket::Api),
            Kind::Resolver => Some(Bucket::Resolvers),
            Kind::Cdn => None,
        }
    }

    fn index(self) -> usize {
        match self {
            Kind::Api => 0,
            Kind::Resolver => 1,
            Kind::Cdn => 2,
        }
    }
}

/// Request and byte counts, readable at any time through [`HubClient::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests sent, retries included, per kind.
    pub api_requests: u64,
    pub resolver_requests: u64,
    pub cdn_requests: u64,
    /// Body bytes received per kind.
    pub api_bytes: u64,
    pub resolver_bytes: u64,
    pub cdn_bytes: u64,
    /// Attempts after a failed one.
    pub retries: u64,
    /// `429` answers received.
    pub rate_limited: u64,
    /// Time spent waiting for a bucket's budget.
    pub waited: Duration,
}

impl Stats {
    pub fn requests(&self) -> u64 {
        self.api_requests + self.resolver_requests + self.cdn_requests
    }

    pub fn bytes(&self) -> u64 {
        self.api_bytes + self.resolver_bytes + self.cdn_bytes
    }
}

/// Shared atomic counters behind [`Stats`]; also used per call to attribute requests to one model.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    requests: [AtomicU64; 3],
    bytes: [AtomicU64; 3],
    retries: AtomicU64,
    rate_limited: AtomicU64,
    waited_us: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> Stats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            api_requests: get(&self.requests[0]),
            resolver_requests: get(&self.requests[1]),
            cdn_requests: get(&self.requests[2]),
            api_bytes: get(&self.bytes[0]),
            resolver_bytes: get(&self.bytes[1]),
            cdn_bytes: get(&self.bytes[2]),
            retries: get(&self.retries),
            rate_limited: get(&self.rate_limited),
            waited: Duration::from_micros(get(&self.waited_us)),
        }
    }
}

/// Updates the client's counters and a call's own together.
#[derive(Clone, Copy)]
pub(crate) struct Tally<'a> {
    global: &'a Counters,
    local: Option<&'a Counters>,
}

impl Tally<'_> {
    fn each(&self, f: impl Fn(&Counters)) {
        f(self.global);
        if let Some(l) = self.local {
            f(l);
        }
    }

    fn request(&self, kind: Kind) {
        self.each(|c| {
            c.requests[kind.index()].fetch_add(1, Ordering::Relaxed);
        });
    }

    fn bytes(&self, kind: Kind, n: u64) {
        self.each(|c| {
            c.bytes[kind.index()].fetch_add(n, Ordering::Relaxed);
        });
    }

    fn retry(&self) {
        self.each(|c| {
            c.retries.fetch_add(1, Ordering::Relaxed);
        });
    }

    fn rate_limited(&self) {
        self.each(|c| {
            c.rate_limited.fetch_add(1, Ordering::Relaxed);
        });
    }

    fn waited(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.each(|c| {
            c.waited_us.fetch_add(us, Ordering::Relaxed);
        });
    }
}

/// A file resolved at a pinned commit: what `HEAD /{id}/resolve/{commit}/{file}` said.
#[derive(Clone)]
pub struct Resolved {
    pub repo: RepoId,
    pub file: String,
    /// The commit the Hub served (checked equal to the pinned one).
    pub commit: Commit,
    /// `X-Linked-Size` (LFS files) or `Content-Length` (small files served directly).
    pub size: u64,
    /// `X-Linked-Etag` (the sha256 of an LFS file) or `ETag` (the git blob id), without quotes.
    pub etag: Option<String>,
    /// The signed CDN URL of an LFS file; `None` when the resolve URL serves the file itself.
    pub location: Option<Url>,
    resolve_url: Url,
    /// The location in use: replaced when an expired signed URL is resolved again.
    current: Arc<Mutex<Option<Url>>>,
    /// Held while resolving again, so concurrent readers that hit the same expired URL resolve it once.
    refresh: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The location's query is a credential: never print it.
        f.debug_struct("Resolved")
            .field("repo", &self.repo)
            .field("file", &self.file)
            .field("commit", &self.commit)
            .field("size", &self.size)
            .field("etag", &self.etag)
            .field("location", &self.location.as_ref().map(shown))
            .finish()
    }
}

impl Resolved {
    /// The `sha256` of the content when the etag is one (LFS files).
    pub fn sha256(&self) -> Option<&str> {
        self.etag.as_deref().filter(|e| e.len() == 64 && e.bytes().all(|b| b.is_ascii_hexdigit()))
    }

    fn current(&self) -> Option<Url> {
        self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn set_current(&self, url: Option<Url>) {
        *self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = url;
    }
}

/// One request to send (possibly several times).
struct Call {
    method: Method,
    url: Url,
    kind: Kind,
    /// `Range: bytes=a-b` (`b` inclusive), or `bytes=a-` when `b` is `None`.
    range: Option<(u64, Option<u64>)>,
    /// Bytes expected in the body, for the deadline.
    expect: u64,
}

/// What a handler decided about a response that is not an error status.
enum Step<T> {
    Done(T),
    Follow(Url, Kind),
}

/// Modeltree's Hub client. Cheap to clone (shared state behind an `Arc`); see the crate docs.
#[derive(Clone)]
pub struct HubClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    endpoint: Url,
    config: HubConfig,
    limiter: RateLimiter,
    permits: Semaphore,
    stats: Counters,
}

impl std::fmt::Debug for HubClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubClient").field("endpoint", &self.inner.endpoint.as_str()).finish_non_exhaustive()
    }
}

/// The IP address of a URL whose host is an IP literal.
fn host_ip(url: &Url) -> Option<IpAddr> {
    let host = url.host_str()?;
    host.trim_start_matches('[').trim_end_matches(']').parse().ok()
}

fn is_loopback(url: &Url) -> bool {
    match host_ip(url) {
        Some(ip) => ip.is_loopback(),
        None => url.host_str().is_some_and(|h| h.eq_ignore_ascii_case("localhost")),
    }
}

fn is_private_ip(url: &Url) -> bool {
    match host_ip(url) {
        Some(IpAddr::V4(v)) => v.is_private() || v.is_loopback() || v.is_link_local() || v.is_unspecified(),
        Some(IpAddr::V6(v)) => {
            let first = v.segments()[0];
            v.is_loopback() || v.is_unspecified() || (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
        }
        None => false,
    }
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme() && a.host_str() == b.host_str() && a.port_or_known_default() == b.port_or_known_default()
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// An untrusted header text made safe to show: control characters dropped, length capped.
fn clean_message(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(MAX_ERROR_MESSAGE).collect()
}

/// `"abc"`, `W/"abc"` → `abc`.
fn clean_etag(value: &str) -> String {
    value.trim().trim_start_matches("W/").trim_matches('"').to_owned()
}

/// The typed error for an error status.
fn status_error(status: u16, headers: &HeaderMap, url: &str) -> HubError {
    let code = header_str(headers, "x-error-code").map(clean_message);
    let message = header_str(headers, "x-error-message").map(clean_message);
    let url = url.to_owned();
    match (status, code.as_deref()) {
        (401 | 403, Some("GatedRepo")) => HubError::GatedRepo { status, url },
        (401 | 404, Some("RepoNotFound")) => HubError::RepoNotFound { url },
        (401 | 404, Some("RevisionNotFound")) => HubError::RevisionNotFound { url },
        (401 | 404, Some("EntryNotFound")) => HubError::EntryNotFound { url },
        (401, _) => HubError::Unauthorized { url, message },
        (403, _) => HubError::Forbidden { url, message },
        (404, _) => HubError::NotFound { url },
        (416, _) => HubError::RangeNotSatisfiable { url },
        _ => HubError::Status { status, url, code, message },
    }
}

/// A uniformly random duration in `[0, d]`, from the std hasher's per-process random keys (jitter needs no
/// better randomness).
fn jitter(d: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(d.as_nanos() as u64);
    let unit = (h.finish() >> 11) as f64 / (1u64 << 53) as f64;
    d.mul_f64(unit)
}

/// Parses `Content-Range: bytes a-b/total` into `(a, b, total)`; `total` is `None` for `*`.
fn parse_content_range(value: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (span, total) = rest.split_once('/')?;
    let (a, b) = span.split_once('-')?;
    let total = if total == "*" { None } else { Some(total.parse().ok()?) };
    Some((a.parse().ok()?, b.parse().ok()?, total))
}

impl HubClient {
    /// A client for `config`.
    ///
    /// # Errors
    /// [`HubError::BadEndpoint`] for an endpoint that is not an http(s) URL with a host,
    /// [`HubError::BadConfig`] for a zero concurrency or window, [`HubError::Client`] when the TLS stack
    /// cannot be set up.
    pub fn new(config: HubConfig) -> Result<HubClient, HubError> {
        let bad = |reason| HubError::BadEndpoint { endpoint: config.endpoint.clone(), reason };
        let mut endpoint = Url::parse(&config.endpoint).map_err(|_| bad("not a url"))?;
        if !matches!(endpoint.scheme(), "http" | "https") {
            return Err(bad("scheme is not http or https"));
        }
        if endpoint.host().is_none() || endpoint.cannot_be_a_base() {
            return Err(bad("no host"));
        }
        if !endpoint.username().is_empty() || endpoint.password().is_some() {
            return Err(bad("credentials in the url"));
        }
        endpoint.set_query(None);
        endpoint.set_fragment(None);
        if config.concurrency == 0 {
            return Err(HubError::BadConfig { reason: "concurrency must be at least 1" });
        }
        if config.window.is_zero() {
            return Err(HubError::BadConfig { reason: "rate-limit window must not be zero" });
        }
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.read_timeout)
            .user_agent(config.user_agent.clone())
            .no_proxy()
            .build()
            .map_err(HubError::Client)?;
        let (api, resolvers) = config.tier.budgets();
        Ok(HubClient {
            inner: Arc::new(Inner {
                http,
                limiter: RateLimiter::new(config.window, api, resolvers),
                permits: Semaphore::new(config.concurrency),
                stats: Counters::default(),
                endpoint,
                config,
            }),
        })
    }

    /// The endpoint requests go to.
    pub fn endpoint(&self) -> &Url {
        &self.inner.endpoint
    }

    pub(crate) fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    /// Requests and bytes so far.
    pub fn stats(&self) -> Stats {
        self.inner.stats.snapshot()
    }

    pub(crate) fn tally<'a>(&'a self, local: Option<&'a Counters>) -> Tally<'a> {
        Tally { global: &self.inner.stats, local }
    }

    /// The endpoint with `segments` appended to its path (each percent-encoded, `/` included).
    pub(crate) fn url<'s>(&self, segments: impl IntoIterator<Item = &'s str>) -> Url {
        let mut url = self.inner.endpoint.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// `{endpoint}/{id}/resolve/{revision}/{file}`.
    fn resolve_url(&self, id: &RepoId, revision: &str, file: &str) -> Url {
        self.url(id.segments().chain(["resolve", revision]).chain(file.split('/')))
    }

    /// Whether `url` is on the endpoint's origin (and so may carry the token).
    pub(crate) fn on_endpoint(&self, url: &Url) -> bool {
        same_origin(url, &self.inner.endpoint)
    }

    /// Checks a redirect target: http(s) only, no downgrade from https, no credentials in the URL; a loopback
    /// host unless `allow_non_loopback_redirects`; and, when the endpoint itself is not on loopback, no
    /// loopback or private IP literal (a redirect must not reach into the local network).
    ///
    /// # Errors
    /// [`HubError::BadRedirect`] naming the rule.
    pub(crate) fn check_redirect(&self, from: &Url, location: &str) -> Result<Url, HubError> {
        let refuse = |reason| HubError::BadRedirect {
            url: shown(from),
            location: location.split('?').next().unwrap_or_default().chars().take(200).collect(),
            reason,
        };
        let target = from.join(location).map_err(|_| refuse("not a url"))?;
        match (from.scheme(), target.scheme()) {
            (_, "https") | ("http", "http") => {}
            ("https", "http") => return Err(refuse("downgrade from https to http")),
            _ => return Err(refuse("scheme is not http or https")),
        }
        if !target.username().is_empty() || target.password().is_some() {
            return Err(refuse("credentials in the url"));
        }
        if target.host().is_none() {
            return Err(refuse("no host"));
        }
        let loopback = is_loopback(&target);
        if !self.inner.config.allow_non_loopback_redirects && !loopback {
            return Err(refuse("host is not on loopback"));
        }
        if !is_loopback(&self.inner.endpoint) && is_private_ip(&target) {
            return Err(refuse("private or loopback address"));
        }
        Ok(target)
    }

    /// Total deadline of a request expecting `bytes` of body.
    fn deadline(&self, bytes: u64) -> Duration {
        let c = &self.inner.config;
        let transfer = Duration::from_secs(bytes / c.min_throughput.max(1));
        c.connect_timeout + c.read_timeout + transfer
    }

    fn build(&self, call: &Call) -> reqwest::RequestBuilder {
        let mut rb = self
            .inner
            .http
            .request(call.method.clone(), call.url.clone())
            // Ranges and sizes refer to the stored bytes: no transparent compression.
            .header(header::ACCEPT_ENCODING, "identity")
            .timeout(self.deadline(call.expect));
        if let Some(token) = &self.inner.config.token
            && self.on_endpoint(&call.url)
        {
            // bearer_auth marks the header sensitive, so it is never shown by reqwest either.
            rb = rb.bearer_auth(token.secret());
        }
        match call.range {
            Some((a, Some(b))) => rb = rb.header(header::RANGE, format!("bytes={a}-{b}")),
            Some((a, None)) => rb = rb.header(header::RANGE, format!("bytes={a}-")),
            None => {}
        }
        rb
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let c = &self.inner.config;
        let exp = c.backoff_base.saturating_mul(1u32.checked_shl(attempt.min(30)).unwrap_or(u32::MAX));
        jitter(exp.min(c.backoff_cap))
    }

    /// Sends `call` until `handle` accepts a response or the retries run out; see the module docs.
    async fn execute<T>(
        &self,
        call: &Call,
        tally: Tally<'_>,
        mut handle: impl AsyncFnMut(Response) -> Result<T, HubError>,
    ) -> Result<T, HubError> {
        let url = shown(&call.url);
        let config = &self.inner.config;
        let mut attempt: u32 = 0;
        loop {
            if let Some(bucket) = call.kind.bucket() {
                tally.waited(self.inner.limiter.acquire(bucket).await);
            }
            let permit = self.inner.permits.acquire().await.map_err(|_| HubError::Pipeline { reason: "closed" })?;
            tally.request(call.kind);
            tracing::debug!(method = %call.method, url = %url, attempt, "hub request");
            // A status worth another attempt, and the wait the server asked for.
            let mut retry_status: Option<u16> = None;
            let mut asked: Option<Duration> = None;
            let outcome = match self.build(call).send().await {
                Err(e) => Err(HubError::Transport { url: url.clone(), source: e.without_url() }),
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let announced = header_str(resp.headers(), "ratelimit").map(parse_ratelimit).unwrap_or_default();
                    self.inner.limiter.observe(&announced);
                    // Only a refusal makes a long announced reset fatal; a success with `r=0` just pauses the bucket.
                    let too_long = announced.iter().find(|a| a.remaining == 0 && a.reset > config.max_wait);
                    if status == 429
                        && let Some(a) = too_long
                    {
                        return Err(HubError::WaitTooLong {
                            url,
                            seconds: a.reset.as_secs(),
                            cap: config.max_wait.as_secs(),
                        });
                    }
                    asked = header_str(resp.headers(), "retry-after")
                        .and_then(|v| parse_retry_after(v, chrono::Utc::now()));
                    if status == 429 {
                        tally.rate_limited();
                        // With `r=0` the limiter already holds the bucket until the reset; no extra wait.
                        if asked.is_none() && announced.iter().any(|a| a.remaining == 0) {
                            asked = Some(Duration::ZERO);
                        }
                    }
                    match status {
                        408 | 429 | 500..=599 => {
                            retry_status = Some(status);
                            Err(if status == 429 {
                                HubError::RateLimited { url: url.clone(), attempts: attempt + 1 }
                            } else {
                                status_error(status, resp.headers(), &url)
                            })
                        }
                        400..=499 => Err(status_error(status, resp.headers(), &url)),
                        _ => handle(resp).await,
                    }
                }
            };
            drop(permit);
            let error = match outcome {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if !(retry_status.is_some() || error.is_transient()) || attempt >= config.max_retries {
                return Err(error);
            }
            attempt += 1;
            tally.retry();
            tracing::debug!(url = %url, attempt, error = %error, "hub request will be retried");
            match asked {
                Some(wait) if wait > config.max_wait => {
                    return Err(HubError::WaitTooLong { url, seconds: wait.as_secs(), cap: config.max_wait.as_secs() });
                }
                Some(wait) => match call.kind.bucket() {
                    // The bucket stays closed for everyone, not only this request.
                    Some(bucket) => self.inner.limiter.block(bucket, tokio::time::Instant::now() + wait),
                    None => tokio::time::sleep(wait).await,
                },
                None => tokio::time::sleep(self.backoff(attempt)).await,
            }
        }
    }

    /// Reads a body of exactly `expected` bytes (`exact`) or at most `cap` bytes.
    async fn read_body(
        &self,
        resp: &mut Response,
        kind: Kind,
        tally: Tally<'_>,
        limit: BodyLimit,
    ) -> Result<Bytes, HubError> {
        let url = shown(resp.url());
        let (cap, exact) = match limit {
            BodyLimit::Exactly(n) => (n, true),
            BodyLimit::AtMost(n, _) => (n, false),
        };
        if let Some(len) = resp.content_length() {
            match limit {
                BodyLimit::Exactly(n) if len > n => return Err(HubError::BodyTooLong { url, expected: n }),
                BodyLimit::AtMost(n, what) if len > n => return Err(HubError::TooLarge { url, what, len, cap: n }),
                _ => {}
            }
        }
        let mut buf = BytesMut::with_capacity(usize::try_from(cap.min(16 << 20)).unwrap_or(0));
        loop {
            let chunk = match resp.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => return Err(HubError::Transport { url, source: e.without_url() }),
            };
            tally.bytes(kind, chunk.len() as u64);
            if (buf.len() + chunk.len()) as u64 > cap {
                return Err(match limit {
                    BodyLimit::Exactly(n) => HubError::BodyTooLong { url, expected: n },
                    BodyLimit::AtMost(n, what) => {
                        HubError::TooLarge { url, what, len: (buf.len() + chunk.len()) as u64, cap: n }
                    }
                });
            }
            buf.extend_from_slice(&chunk);
        }
        if exact && (buf.len() as u64) < cap {
            return Err(HubError::BodyTooShort { url, expected: cap, got: buf.len() as u64 });
        }
        Ok(buf.freeze())
    }

    /// From a full-file body, bytes `range`; stops reading once they are in.
    async fn read_slice(
        &self,
        resp: &mut Response,
        kind: Kind,
        tally: Tally<'_>,
        range: Range<u64>,
    ) -> Result<Bytes, HubError> {
        let url = shown(resp.url());
        let want = range.end - range.start;
        let mut buf = BytesMut::with_capacity(usize::try_from(want).unwrap_or(0));
        let mut pos = 0u64;
        while (buf.len() as u64) < want {
            let chunk = match resp.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => return Err(HubError::BodyTooShort { url, expected: range.end, got: pos }),
                Err(e) => return Err(HubError::Transport { url, source: e.without_url() }),
            };
            tally.bytes(kind, chunk.len() as u64);
            let (c_start, c_end) = (pos, pos + chunk.len() as u64);
            pos = c_end;
            let from = range.start.max(c_start);
            let to = range.end.min(c_end);
            if from < to {
                buf.extend_from_slice(&chunk[(from - c_start) as usize..(to - c_start) as usize]);
            }
        }
        Ok(buf.freeze())
    }

    /// `GET` of a JSON document on the API, with the response headers.
    pub(crate) async fn get_json(
        &self,
        url: Url,
        tally: Tally<'_>,
    ) -> Result<(serde_json::Value, HeaderMap), HubError> {
        let cap = self.inner.config.max_json_bytes;
        let mut url = url;
        for _ in 0..=MAX_REDIRECTS {
            let call =
                Call { method: Method::GET, url: url.clone(), kind: Kind::Api, range: None, expect: cap.min(8 << 20) };
            let step = self
                .execute(&call, tally, async |mut resp: Response| {
                    let status = resp.status().as_u16();
                    if (300..400).contains(&status) {
                        return self.follow_on_endpoint(resp.url(), resp.headers()).map(|u| Step::Follow(u, Kind::Api));
                    }
                    if !(200..300).contains(&status) {
                        return Err(HubError::UnexpectedStatus { url: shown(resp.url()), status });
                    }
                    let body =
                        self.read_body(&mut resp, Kind::Api, tally, BodyLimit::AtMost(cap, "json document")).await?;
                    // serde_json stops at 128 levels of nesting, and the body is capped: no JSON bomb gets far.
                    let value = serde_json::from_slice(&body)
                        .map_err(|e| HubError::BadJson { url: shown(resp.url()), message: e.to_string() })?;
                    Ok(Step::Done((value, resp.headers().clone())))
                })
                .await?;
            match step {
                Step::Done(v) => return Ok(v),
                Step::Follow(next, _) => url = next,
            }
        }
        Err(HubError::TooManyRedirects { url: shown(&url), limit: MAX_REDIRECTS })
    }

    /// A redirect that must stay on the endpoint (API moves, renamed repositories).
    fn follow_on_endpoint(&self, from: &Url, headers: &HeaderMap) -> Result<Url, HubError> {
        let location = header_str(headers, "location")
            .ok_or_else(|| HubError::MissingHeader { url: shown(from), name: "location" })?;
        let target = self.check_redirect(from, location)?;
        if !self.on_endpoint(&target) {
            return Err(HubError::BadRedirect {
                url: shown(from),
                location: shown(&target),
                reason: "api redirect leaves the endpoint",
            });
        }
        Ok(target)
    }

    /// Checks `X-Repo-Commit` against the pinned commit; `required` makes a missing header an error.
    fn check_commit(&self, url: &Url, headers: &HeaderMap, pinned: &Commit, required: bool) -> Result<(), HubError> {
        match header_str(headers, "x-repo-commit") {
            None if required => Err(HubError::MissingHeader { url: shown(url), name: "x-repo-commit" }),
            None => Ok(()),
            Some(value) => {
                let found = Commit::parse(value.trim())
                    .map_err(|_| HubError::BadHeader { url: shown(url), name: "x-repo-commit" })?;
                if &found != pinned {
                    return Err(HubError::CommitMismatch {
                        url: shown(url),
                        expected: pinned.to_string(),
                        found: found.to_string(),
                    });
                }
                Ok(())
            }
        }
    }

    /// Resolves `file` at the pinned `commit` with one `HEAD` (plus any relative redirect on the endpoint),
    /// without following the redirect to the CDN.
    ///
    /// # Errors
    /// Typed access errors ([`HubError::RepoNotFound`], [`HubError::EntryNotFound`], [`HubError::GatedRepo`],
    /// …), [`HubError::BadFileName`], [`HubError::CommitMismatch`], missing or invalid headers, a refused
    /// redirect, or transport errors after retries.
    pub async fn resolve(&self, id: &RepoId, commit: &Commit, file: &str) -> Result<Resolved, HubError> {
        self.resolve_with(id, commit, file, self.tally(None)).await
    }

    pub(crate) async fn resolve_with(
        &self,
        id: &RepoId,
        commit: &Commit,
        file: &str,
        tally: Tally<'_>,
    ) -> Result<Resolved, HubError> {
        check_file_name(file)?;
        let resolve_url = self.resolve_url(id, commit.as_str(), file);
        let mut url = resolve_url.clone();
        for _ in 0..=MAX_REDIRECTS {
            let call = Call { method: Method::HEAD, url: url.clone(), kind: Kind::Resolver, range: None, expect: 0 };
            let step = self
                .execute(&call, tally, async |resp: Response| {
                    let (status, headers, at) = (resp.status().as_u16(), resp.headers(), resp.url());
                    let size_of = |name: &'static str| -> Result<Option<u64>, HubError> {
                        header_str(headers, name)
                            .map(|v| v.trim().parse::<u64>().map_err(|_| HubError::BadHeader { url: shown(at), name }))
                            .transpose()
                    };
                    let etag =
                        header_str(headers, "x-linked-etag").or_else(|| header_str(headers, "etag")).map(clean_etag);
                    if (200..300).contains(&status) {
                        self.check_commit(at, headers, commit, true)?;
                        // For a file served directly Content-Length is its size; X-Linked-Size wins if present.
                        let size = match size_of("x-linked-size")? {
                            Some(s) => s,
                            None => size_of("content-length")?
                                .ok_or_else(|| HubError::MissingHeader { url: shown(at), name: "content-length" })?,
                        };
                        return Ok(Step::Done((size, etag, None)));
                    }
                    if (300..400).contains(&status) {
                        let location = header_str(headers, "location")
                            .ok_or_else(|| HubError::MissingHeader { url: shown(at), name: "location" })?;
                        if header_str(headers, "x-repo-commit").is_none() {
                            // A move on the Hub itself (renamed repo, case fix): follow it there.
                            return self.follow_on_endpoint(at, headers).map(|u| Step::Follow(u, Kind::Resolver));
                        }
                        self.check_commit(at, headers, commit, true)?;
                        let target = self.check_redirect(at, location)?;
                        // Never the redirect's Content-Length: that is the size of its own small body.
                        let size = size_of("x-linked-size")?
                            .ok_or_else(|| HubError::MissingHeader { url: shown(at), name: "x-linked-size" })?;
                        return Ok(Step::Done((size, etag, Some(target))));
                    }
                    Err(HubError::UnexpectedStatus { url: shown(at), status })
                })
                .await?;
            match step {
                Step::Done((size, etag, location)) => {
                    return Ok(Resolved {
                        repo: id.clone(),
                        file: file.to_owned(),
                        commit: commit.clone(),
                        size,
                        etag,
                        current: Arc::new(Mutex::new(location.clone())),
                        refresh: Arc::new(tokio::sync::Mutex::new(())),
                        location,
                        resolve_url,
                    });
                }
                Step::Follow(next, _) => url = next,
            }
        }
        Err(HubError::TooManyRedirects { url: shown(&resolve_url), limit: MAX_REDIRECTS })
    }

    /// Bytes `range` of a resolved file: one `GET` with a single `Range` on its CDN location (or on the resolve
    /// URL for a file served directly). Checks `206` and its `Content-Range` against the range and the
    /// resolved size, and the body length; takes the slice of a `200` full answer for files up to
    /// `max_full_fallback`; resolves again once when a signed URL has expired (`403` from the CDN).
    ///
    /// # Errors
    /// [`HubError::BadRange`] / [`HubError::RangeTooLarge`] for a bad request; [`HubError::BadContentRange`],
    /// [`HubError::BodyTooLong`], [`HubError::BodyTooShort`], [`HubError::RangeIgnored`] for a bad answer;
    /// access and transport errors as for [`HubClient::resolve`].
    pub async fn read_range(&self, file: &Resolved, range: Range<u64>) -> Result<Bytes, HubError> {
        self.read_range_with(file, range, self.tally(None)).await
    }

    pub(crate) async fn read_range_with(
        &self,
        file: &Resolved,
        range: Range<u64>,
        tally: Tally<'_>,
    ) -> Result<Bytes, HubError> {
        if range.start >= range.end || range.end > file.size {
            return Err(HubError::BadRange {
                url: shown(&file.resolve_url),
                start: range.start,
                end: range.end,
                size: file.size,
            });
        }
        let len = range.end - range.start;
        if len > MAX_RANGE_LEN {
            return Err(HubError::RangeTooLarge { url: shown(&file.resolve_url), len, cap: MAX_RANGE_LEN });
        }
        let mut resolved_again = false;
        loop {
            let (url, kind) = match file.current() {
                Some(u) => (u, Kind::Cdn),
                None => (file.resolve_url.clone(), Kind::Resolver),
            };
            match self.get_range(file, url.clone(), kind, range.clone(), tally).await {
                Err(HubError::Forbidden { .. }) if kind == Kind::Cdn && !resolved_again => {
                    let _refreshing = file.refresh.lock().await;
                    if file.current().as_ref() != Some(&url) {
                        // Another reader resolved it again meanwhile: use its URL, without a resolve of our own.
                        continue;
                    }
                    resolved_again = true;
                    tracing::debug!(repo = %file.repo, file = %file.file, "signed url refused, resolving again");
                    let fresh = self.resolve_with(&file.repo, &file.commit, &file.file, tally).await?;
                    if fresh.size != file.size {
                        return Err(HubError::SizeMismatch {
                            url: shown(&file.resolve_url),
                            expected: file.size,
                            found: fresh.size,
                        });
                    }
                    if let (Some(old), Some(new)) = (&file.etag, &fresh.etag)
                        && old != new
                    {
                        return Err(HubError::DigestMismatch {
                            url: shown(&file.resolve_url),
                            expected: old.clone(),
                            found: new.clone(),
                        });
                    }
                    file.set_current(fresh.location);
                }
                other => return other,
            }
        }
    }

    async fn get_range(
        &self,
        file: &Resolved,
        url: Url,
        kind: Kind,
        range: Range<u64>,
        tally: Tally<'_>,
    ) -> Result<Bytes, HubError> {
        let (mut url, mut kind) = (url, kind);
        let len = range.end - range.start;
        let max_full = self.inner.config.max_full_fallback;
        for _ in 0..=MAX_REDIRECTS {
            let call = Call {
                method: Method::GET,
                url: url.clone(),
                kind,
                range: Some((range.start, Some(range.end - 1))),
                expect: len,
            };
            let step = self
                .execute(&call, tally, async |mut resp: Response| {
                    let status = resp.status().as_u16();
                    let at = resp.url().clone();
                    match status {
                        206 => {
                            let value = header_str(resp.headers(), "content-range");
                            let ok = value.and_then(parse_content_range)
                                == Some((range.start, range.end - 1, Some(file.size)));
                            if !ok {
                                return Err(HubError::BadContentRange {
                                    url: shown(&at),
                                    status,
                                    start: range.start,
                                    end: range.end - 1,
                                    content_range: value.map(clean_message),
                                });
                            }
                            self.read_body(&mut resp, kind, tally, BodyLimit::Exactly(len)).await.map(Step::Done)
                        }
                        200 => {
                            // The server ignored the range: take the slice from the full body, if affordable.
                            if file.size > max_full {
                                return Err(HubError::RangeIgnored { url: shown(&at), size: file.size, cap: max_full });
                            }
                            if let Some(n) = resp.content_length()
                                && n != file.size
                            {
                                return Err(HubError::SizeMismatch { url: shown(&at), expected: file.size, found: n });
                            }
                            self.read_slice(&mut resp, kind, tally, range.clone()).await.map(Step::Done)
                        }
                        300..=399 if kind == Kind::Resolver => {
                            self.check_commit(&at, resp.headers(), &file.commit, false)?;
                            let location = header_str(resp.headers(), "location")
                                .ok_or_else(|| HubError::MissingHeader { url: shown(&at), name: "location" })?;
                            let target = self.check_redirect(&at, location)?;
                            let next = if self.on_endpoint(&target) { Kind::Resolver } else { Kind::Cdn };
                            Ok(Step::Follow(target, next))
                        }
                        _ => Err(HubError::UnexpectedStatus { url: shown(&at), status }),
                    }
                })
                .await?;
            match step {
                Step::Done(bytes) => return Ok(bytes),
                Step::Follow(next, next_kind) => {
                    if next_kind == Kind::Cdn {
                        file.set_current(Some(next.clone()));
                    }
                    (url, kind) = (next, next_kind);
                }
            }
        }
        Err(HubError::TooManyRedirects { url: shown(&file.resolve_url), limit: MAX_REDIRECTS })
    }

    /// A small file (`config.json`, `README.md`, `adapter_config.json`, an index) read whole through its resolve
    /// URL, refusing more than `max_bytes`. The content is untrusted: callers parse it strictly.
    ///
    /// # Errors
    /// [`HubError::TooLarge`] over `max_bytes`; as [`HubClient::resolve`] otherwise.
    pub async fn get_small_file(
        &self,
        id: &RepoId,
        commit: &Commit,
        file: &str,
        max_bytes: u64,
    ) -> Result<Bytes, HubError> {
        self.get_small_file_with(id, commit, file, max_bytes, self.tally(None)).await
    }

    pub(crate) async fn get_small_file_with(
        &self,
        id: &RepoId,
        commit: &Commit,
        file: &str,
        max_bytes: u64,
        tally: Tally<'_>,
    ) -> Result<Bytes, HubError> {
        check_file_name(file)?;
        let mut url = self.resolve_url(id, commit.as_str(), file);
        let mut kind = Kind::Resolver;
        let mut linked: Option<u64> = None;
        for _ in 0..=MAX_REDIRECTS {
            let call = Call { method: Method::GET, url: url.clone(), kind, range: None, expect: max_bytes };
            let step = self
                .execute(&call, tally, async |mut resp: Response| {
                    let status = resp.status().as_u16();
                    let at = resp.url().clone();
                    if (200..300).contains(&status) {
                        if kind == Kind::Resolver {
                            self.check_commit(&at, resp.headers(), commit, false)?;
                        }
                        let limit = match linked {
                            Some(n) => BodyLimit::Exactly(n),
                            None => BodyLimit::AtMost(max_bytes, "file"),
                        };
                        return self.read_body(&mut resp, kind, tally, limit).await.map(Step::Done);
                    }
                    if (300..400).contains(&status) && kind == Kind::Resolver {
                        self.check_commit(&at, resp.headers(), commit, false)?;
                        let headers = resp.headers();
                        if let Some(size) = header_str(headers, "x-linked-size") {
                            let size: u64 = size
                                .trim()
                                .parse()
                                .map_err(|_| HubError::BadHeader { url: shown(&at), name: "x-linked-size" })?;
                            if size > max_bytes {
                                return Err(HubError::TooLarge {
                                    url: shown(&at),
                                    what: "file",
                                    len: size,
                                    cap: max_bytes,
                                });
                            }
                            linked = Some(size);
                        }
                        let location = header_str(headers, "location")
                            .ok_or_else(|| HubError::MissingHeader { url: shown(&at), name: "location" })?;
                        let target = self.check_redirect(&at, location)?;
                        let next =
                            if self.on_endpoint(&target) && linked.is_none() { Kind::Resolver } else { Kind::Cdn };
                        return Ok(Step::Follow(target, next));
                    }
                    Err(HubError::UnexpectedStatus { url: shown(&at), status })
                })
                .await?;
            match step {
                Step::Done(bytes) => return Ok(bytes),
                Step::Follow(next, next_kind) => (url, kind) = (next, next_kind),
            }
        }
        Err(HubError::TooManyRedirects { url: shown(&url), limit: MAX_REDIRECTS })
    }

    /// A response streaming the whole file from byte `offset` (a `Range: bytes=offset-` request when `offset`
    /// is not 0), and the offset its body really starts at (0 when the server ignored the range).
    pub(crate) async fn open_download(
        &self,
        file: &Resolved,
        offset: u64,
        tally: Tally<'_>,
    ) -> Result<(Response, u64), HubError> {
        let (mut url, mut kind) = match file.current() {
            Some(u) => (u, Kind::Cdn),
            None => (file.resolve_url.clone(), Kind::Resolver),
        };
        for _ in 0..=MAX_REDIRECTS {
            let range = (offset > 0).then_some((offset, None));
            let call =
                Call { method: Method::GET, url: url.clone(), kind, range, expect: file.size - offset.min(file.size) };
            let step = self
                .execute(&call, tally, async |resp: Response| {
                    let status = resp.status().as_u16();
                    let at = resp.url().clone();
                    match status {
                        200 => Ok(Step::Done((resp, 0))),
                        206 => {
                            let value = header_str(resp.headers(), "content-range");
                            let expected = Some((offset, file.size.saturating_sub(1), Some(file.size)));
                            if value.and_then(parse_content_range) != expected {
                                return Err(HubError::BadContentRange {
                                    url: shown(&at),
                                    status,
                                    start: offset,
                                    end: file.size.saturating_sub(1),
                                    content_range: value.map(clean_message),
                                });
                            }
                            Ok(Step::Done((resp, offset)))
                        }
                        300..=399 if kind == Kind::Resolver => {
                            let location = header_str(resp.headers(), "location")
                                .ok_or_else(|| HubError::MissingHeader { url: shown(&at), name: "location" })?;
                            let target = self.check_redirect(&at, location)?;
                            let next = if self.on_endpoint(&target) { Kind::Resolver } else { Kind::Cdn };
                            Ok(Step::Follow(target, next))
                        }
                        _ => Err(HubError::UnexpectedStatus { url: shown(&at), status }),
                    }
                })
                .await?;
            match step {
                Step::Done(v) => return Ok(v),
                Step::Follow(next, next_kind) => (url, kind) = (next, next_kind),
            }
        }
        Err(HubError::TooManyRedirects { url: shown(&url), limit: MAX_REDIRECTS })
    }

    /// Counts `n` body bytes of a download read outside [`HubClient::read_body`].
    pub(crate) fn count_download(&self, file: &Resolved, n: u64, tally: Tally<'_>) {
        tally.bytes(if file.current().is_some() { Kind::Cdn } else { Kind::Resolver }, n);
    }
}

/// How much body a request may have.
#[derive(Clone, Copy, Debug)]
enum BodyLimit {
    Exactly(u64),
    AtMost(u64, &'static str),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("bytes 0-99/1000"), Some((0, 99, Some(1000))));
        assert_eq!(parse_content_range("bytes 5-5/*"), Some((5, 5, None)));
        for bad in ["bytes=0-99/1000", "bytes 0-99", "bytes a-b/c", "items 0-1/2", ""] {
            assert_eq!(parse_content_range(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn jitter_stays_in_bounds() {
        let d = Duration::from_millis(100);
        let draws: Vec<Duration> = (0..200).map(|_| jitter(d)).collect();
        assert!(draws.iter().all(|x| *x <= d));
        // Full jitter spreads over the interval rather than sitting at one end.
        assert!(draws.iter().any(|x| *x < d / 4) && draws.iter().any(|x| *x > d * 3 / 4));
    }

    #[test]
    fn redirect_rules() {
        let client = |allow: bool, endpoint: &str| {
            HubClient::new(HubConfig { allow_non_loopback_redirects: allow, ..HubConfig::new(endpoint) })
                .expect("client")
        };
        let check = |c: &HubClient, from: &str, to: &str, expected: Result<&str, &str>| {
            let from = Url::parse(from).expect("url");
            let got = c.check_redirect(&from, to).map(|u| u.to_string()).map_err(|e| match e {
                HubError::BadRedirect { reason, .. } => reason,
                other => panic!("unexpected {other}"),
            });
            assert_eq!(got.as_ref().map(String::as_str), expected.as_ref().map(|s| *s), "{to}");
        };
        let prod = client(true, "https://huggingface.co");
        let hf = "https://huggingface.co/a/b/resolve/x/f";
        check(&prod, hf, "https://cdn-lfs.hf.co/x?sig=1", Ok("https://cdn-lfs.hf.co/x?sig=1"));
        check(&prod, hf, "/a/b/resolve/y/f", Ok("https://huggingface.co/a/b/resolve/y/f"));
        check(&prod, hf, "http://cdn-lfs.hf.co/x", Err("downgrade from https to http"));
        check(&prod, hf, "file:///etc/passwd", Err("scheme is not http or https"));
        check(&prod, hf, "https://user:pw@cdn.hf.co/x", Err("credentials in the url"));
        check(&prod, hf, "https://127.0.0.1/x", Err("private or loopback address"));
        check(&prod, hf, "https://10.0.0.8/x", Err("private or loopback address"));
        check(&prod, hf, "https://[fd00::1]/x", Err("private or loopback address"));
        let test = client(false, "http://127.0.0.1:9");
        let local = "http://127.0.0.1:9/a/b/resolve/x/f";
        check(&test, local, "http://127.0.0.1:9/cdn/x", Ok("http://127.0.0.1:9/cdn/x"));
        check(&test, local, "http://localhost:7/cdn/x", Ok("http://localhost:7/cdn/x"));
        check(&test, local, "http://example.com/cdn/x", Err("host is not on loopback"));
        check(&test, local, "http://10.1.2.3/cdn/x", Err("host is not on loopback"));
    }

    #[test]
    fn endpoints_are_checked() {
        for bad in ["ftp://x", "not a url", "http://user:pw@host", "mailto:x@y"] {
            assert!(matches!(HubClient::new(HubConfig::new(bad)), Err(HubError::BadEndpoint { .. })), "{bad}");
        }
        let c = HubClient::new(HubConfig::new("https://mirror.example/hub/")).expect("client");
        let id = RepoId::parse("a/b").expect("id");
        let url = c.resolve_url(&id, "refs/pr/1", "dir/my file.json");
        assert_eq!(url.as_str(), "https://mirror.example/hub/a/b/resolve/refs%2Fpr%2F1/dir/my%20file.json");
        assert!(matches!(
            HubClient::new(HubConfig { concurrency: 0, ..HubConfig::default() }),
            Err(HubError::BadConfig { .. })
        ));
    }
}
