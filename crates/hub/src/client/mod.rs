//! The HTTP core: one `reqwest` client, the rate limiter, the concurrency limit, and the requests everything
//! else is built from.
//!
//! [`HubClient`] is split by concern:
//! - `execute`: sending one request, with the bucket's budget, a slot of the global semaphore, the `RateLimit`
//!   headers taken in, error statuses mapped to typed errors using `X-Error-Code`, and retries of 408/429/5xx,
//!   transport failures and truncated bodies with capped, fully jittered exponential backoff (or the wait the
//!   server named); and reading bodies under a size limit.
//! - `redirect`: the one routine every request follows redirects by. `reqwest` never follows one: each hop is
//!   vetted ([`HubClient::check_redirect`]), counted against [`MAX_REDIRECTS`], and its answer's
//!   `X-Repo-Commit` checked against the pinned commit; the token goes only to the endpoint's own origin.
//! - `range`: resolving a file at a pinned commit ([`HubClient::resolve`], a `HEAD`) and ranged reads of it
//!   ([`HubClient::read_range`]).
//! - `files`: bodies read whole (JSON documents, small files) and whole-file download streams.
//! - `stats`: the request and byte counters ([`Stats`]).

use std::sync::Arc;

use reqwest::Url;
use reqwest::header::HeaderMap;
use tokio::sync::Semaphore;

use crate::config::{HubConfig, HubSettings};
use crate::error::HubError;
use crate::ids::RepoId;
use crate::limiter::{Bucket, RateLimiter};

mod execute;
mod files;
mod range;
mod redirect;
mod stats;

pub use range::Resolved;
pub use stats::Stats;
pub(crate) use stats::{Counters, Tally};

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

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// An untrusted header text made safe to show: control characters dropped, length capped.
fn clean_message(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(MAX_ERROR_MESSAGE).collect()
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

    /// The client for the application's `[hub]` settings: the one constructor every command uses, so each
    /// honours the same settings (see [`HubConfig::from_settings`]).
    ///
    /// # Errors
    /// [`HubError::Token`] when the token cannot be read; as [`HubClient::new`] otherwise.
    pub fn from_settings(settings: &HubSettings) -> Result<HubClient, HubError> {
        let config = HubConfig::from_settings(settings).map_err(HubError::Token)?;
        tracing::debug!(endpoint = %config.endpoint, token = config.token.is_some(), tier = ?config.tier, "hub client");
        HubClient::new(config)
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
        redirect::same_origin(url, &self.inner.endpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
