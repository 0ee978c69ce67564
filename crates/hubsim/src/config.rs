//! Plain configuration structs for the server.
//!
//! Everything is a public field with a documented default so a CLI (or a test) can fill in only what it needs:
//! `ServerConfig { root, page_size: 2, ..ServerConfig::default() }`. The defaults reproduce the real Hub: pages of
//! 1,000 models, 5-minute rate-limit windows with the September 2025 quotas, signed CDN URLs valid for an hour, and
//! no faults.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Everything [`crate::serve`] and [`crate::spawn`] need.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Folder of repos: `root/org/name/…`. An optional `root/ground_truth.json` (`{"models":[{"model":"org/name",
    /// "created_at":"2024-03-01T00:51:00Z"}]}`) supplies creation dates; otherwise file mtimes are used.
    pub root: PathBuf,
    /// Address of the Hub listener (API and `/resolve/`). Port 0 picks a free port. Default `127.0.0.1:0`.
    pub addr: SocketAddr,
    /// Address of the CDN listener that serves the signed LFS URLs. It is a separate listener on purpose: on the
    /// real Hub the CDN is another origin, and clients behave differently across origins (Python's metadata HEAD
    /// stops at a cross-origin redirect; `Authorization` is not forwarded). Default `127.0.0.1:0`.
    pub cdn_addr: SocketAddr,
    /// Public base URL of the CDN listener (`http://mirror.local:8081`), for deployments behind a proxy. When
    /// `None`, redirects use the host name of the request's `Host` header with the CDN listener's port.
    pub cdn_base_url: Option<String>,
    /// Injected faults; all off by default.
    pub faults: FaultConfig,
    /// Rate limits per bucket and tier.
    pub quotas: QuotaConfig,
    /// Items per page of `/api/models` and `/tree` listings. Default 1000, as on the Hub; tests use small pages.
    /// A request's `limit` makes the page smaller, never larger.
    pub page_size: usize,
    /// Files at least this large are stored as LFS objects (served through a CDN redirect), as are all files with
    /// the usual LFS extensions (`*.safetensors`, `*.bin`, `*.gguf`, …). Default 10 MiB, the Hub's git limit.
    pub large_file_threshold: u64,
    /// Lifetime of a signed CDN URL. Default one hour.
    pub url_ttl: Duration,
    /// Repo ids (`org/name`) that are gated (`"gated": "manual"`): metadata stays public, files need a token
    /// listed in [`ServerConfig::tokens`].
    pub gated: Vec<String>,
    /// Repo ids that are private: invisible (401/404 `RepoNotFound`) without an accepted token.
    pub private: Vec<String>,
    /// Accepted tokens: a bearer token in this list has access to gated and private repos. Any other bearer token
    /// is a valid user without that access (403 on gated files), as a real account that did not request access.
    pub tokens: Vec<String>,
    /// Rescan the root this often (a mirror picks up new repos by itself). `None` (default): only at start and on
    /// [`crate::Handle::rescan`].
    pub rescan_interval: Option<Duration>,
    /// Rescan the root before answering the first page of a model listing (a request without `cursor`), so repos
    /// added to or removed from the folder show up in the next listing without a restart. The rescan happens only
    /// when the mtimes of the root, its entries or the orgs' entries changed, or the last scan is more than ten
    /// seconds old (a file edited in place inside a repo changes no folder's mtime, so it shows within that
    /// time). Default `false`; `modeltree hub serve` turns it on.
    pub rescan_on_list: bool,
    /// How many requests the in-memory request log keeps (oldest dropped first). Default 100,000.
    pub log_capacity: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        ServerConfig {
            root: PathBuf::new(),
            addr: loopback,
            cdn_addr: loopback,
            cdn_base_url: None,
            faults: FaultConfig::default(),
            quotas: QuotaConfig::default(),
            page_size: 1000,
            large_file_threshold: 10 * 1024 * 1024,
            url_ttl: Duration::from_secs(3600),
            gated: Vec::new(),
            private: Vec::new(),
            tokens: Vec::new(),
            rescan_interval: None,
            rescan_on_list: false,
            log_capacity: 100_000,
        }
    }
}

impl ServerConfig {
    /// The defaults with `root` set.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ServerConfig { root: root.into(), ..ServerConfig::default() }
    }
}

/// Seeded fault injection. Every probability is per request and in `[0, 1]`; decisions are a pure function of
/// `seed` and the request's sequence number (counted over both listeners in arrival order), so a run with the same
/// seed and the same request sequence sees the same faults.
#[derive(Debug, Clone, Default)]
pub struct FaultConfig {
    pub seed: u64,
    /// Answer 500, 502 or 503 instead of handling the request.
    pub p_5xx: f64,
    /// Send part of a 200/206 body, then reset the connection (TCP RST).
    pub p_reset_mid_body: f64,
    /// Announce the full `Content-Length`, send fewer bytes, then close the connection (FIN).
    pub p_truncate: f64,
    /// Delay the response headers by `slow_ms`.
    pub p_slow: f64,
    pub slow_ms: u64,
    /// A `/resolve/` redirect carries a CDN URL that has already expired (the CDN answers 403).
    pub p_expire_url: f64,
    /// A 429 storm on the rate-limited buckets.
    pub storm: Option<Storm>,
    /// Which routes faults apply to. Default: all.
    pub scope: FaultScope,
}

/// A burst of 429 answers: after `start_after` rate-limited requests (API and resolvers), the next `count` ones get
/// 429 whatever their quota says.
#[derive(Debug, Clone)]
pub struct Storm {
    pub start_after: u64,
    pub count: u64,
    /// Seconds announced in `Retry-After` and in `RateLimit: …;r=0;t=<secs>`. A request from the same client
    /// before that time is logged as early.
    pub retry_after_secs: u64,
}

/// Route groups that faults may hit.
#[derive(Debug, Clone)]
pub struct FaultScope {
    /// `/api/*`.
    pub api: bool,
    /// `/{repo}/resolve/*`.
    pub resolvers: bool,
    /// The CDN listener.
    pub cdn: bool,
}

impl Default for FaultScope {
    fn default() -> Self {
        FaultScope { api: true, resolvers: true, cdn: true }
    }
}

/// Fixed-window quotas per bucket, keyed per bearer token (or per client IP when anonymous).
#[derive(Debug, Clone)]
pub struct QuotaConfig {
    /// `false` turns rate limiting off, including the `RateLimit` headers.
    pub enabled: bool,
    /// Window length (the Hub's is 300 s; tests use a second or two). Windows are aligned to the server start.
    pub window: Duration,
    pub anonymous: Limits,
    /// Any bearer token not in `pro_tokens`.
    pub free: Limits,
    pub pro: Limits,
    pub pro_tokens: Vec<String>,
}

/// Requests allowed per window in each bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub api: u64,
    pub resolvers: u64,
}

impl Default for QuotaConfig {
    /// The Hub's published quotas (hub-docs `rate-limits.md`, September 2025).
    fn default() -> Self {
        QuotaConfig {
            enabled: true,
            window: Duration::from_secs(300),
            anonymous: Limits { api: 500, resolvers: 3000 },
            free: Limits { api: 1000, resolvers: 5000 },
            pro: Limits { api: 2500, resolvers: 12_000 },
            pro_tokens: Vec::new(),
        }
    }
}

impl QuotaConfig {
    /// No limits and no `RateLimit` headers.
    pub fn unlimited() -> Self {
        QuotaConfig { enabled: false, ..QuotaConfig::default() }
    }
}
