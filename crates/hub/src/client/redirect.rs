//! The one way redirects are followed.
//!
//! `reqwest` follows nothing (its policy is `none`); every request that may be redirected goes through
//! [`HubClient::follow`], which for each hop:
//! - checks the answer's `X-Repo-Commit`, when the request is pinned to a commit, against that commit (an answer
//!   from another commit is refused whether it is the final answer or a redirect);
//! - lets the request's handler decide whether the answer is final or is to be followed;
//! - follows only answers of the Hub itself (API and resolver hops), never a redirect from the CDN;
//! - vets the target with [`HubClient::check_redirect`] (scheme, no downgrade, no credentials, loopback and
//!   private-address rules), keeps it on the endpoint's origin where the route demands it, and decides the next
//!   hop's budget: a target off the endpoint, or one announced with `X-Linked-Size` (the Hub's pointer to
//!   stored content), is the CDN;
//! - stops after [`MAX_REDIRECTS`] hops.
//!
//! Since the token is attached per request only on the endpoint's origin (see `execute`), a followed redirect
//! never carries it elsewhere.

use std::net::IpAddr;

use reqwest::header::HeaderMap;
use reqwest::{Response, Url};

use super::execute::Call;
use super::{HubClient, Kind, MAX_REDIRECTS, Tally, header_str};
use crate::error::{HubError, shown};
use crate::ids::Commit;

/// What a request's handler decided about an answer that is not an error status.
pub(super) enum Step<T> {
    /// The request is answered.
    Done(T),
    /// The answer is a redirect to follow.
    Follow,
}

/// Where one hop led.
enum Hop<T> {
    Done(T),
    Next(Url, Kind),
}

/// The rules one logical request follows redirects by.
#[derive(Clone, Copy, Debug)]
pub(super) struct Route<'a> {
    /// The commit every answer must come from, when the request reads a file at a pinned commit.
    pub(super) pinned: Option<&'a Commit>,
    /// Whether every redirect must stay on the endpoint's origin (the JSON API; moves of a repository).
    pub(super) endpoint_only: bool,
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

pub(super) fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme() && a.host_str() == b.host_str() && a.port_or_known_default() == b.port_or_known_default()
}

/// The address rules every redirect target is vetted by: those of [`HubClient::check_redirect`].
#[derive(Clone, Debug)]
pub(super) struct RedirectRules {
    endpoint: Url,
    allow_non_loopback: bool,
}

impl RedirectRules {
    fn new(endpoint: &Url, allow_non_loopback: bool) -> RedirectRules {
        RedirectRules { endpoint: endpoint.clone(), allow_non_loopback }
    }

    /// Vets a redirect from `from` to `target`, naming the rule it breaks.
    fn vet(&self, from: &Url, target: &Url) -> Result<(), &'static str> {
        match (from.scheme(), target.scheme()) {
            (_, "https") | ("http", "http") => {}
            ("https", "http") => return Err("downgrade from https to http"),
            _ => return Err("scheme is not http or https"),
        }
        if !target.username().is_empty() || target.password().is_some() {
            return Err("credentials in the url");
        }
        if target.host().is_none() {
            return Err("no host");
        }
        if !self.allow_non_loopback && !is_loopback(target) {
            return Err("host is not on loopback");
        }
        if !is_loopback(&self.endpoint) && is_private_ip(target) {
            return Err("private or loopback address");
        }
        Ok(())
    }
}

impl HubClient {
    /// The address rules of this client's redirects.
    fn redirect_rules(&self) -> RedirectRules {
        RedirectRules::new(&self.inner.endpoint, self.inner.config.allow_non_loopback_redirects)
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
        self.redirect_rules().vet(from, &target).map_err(refuse)?;
        Ok(target)
    }

    /// Checks `X-Repo-Commit` against the pinned commit; `required` makes a missing header an error.
    pub(super) fn check_commit(
        &self,
        url: &Url,
        headers: &HeaderMap,
        pinned: &Commit,
        required: bool,
    ) -> Result<(), HubError> {
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

    /// Sends the request `call` builds for `start`, following redirects by the rules of the module docs, until
    /// `handle` says an answer is final. `call` builds the request of each hop from its URL and budget;
    /// `handle` sees every answer that is not an error status, with the budget of its hop.
    ///
    /// # Errors
    /// [`HubError::CommitMismatch`] for an answer from another commit, [`HubError::BadRedirect`] and
    /// [`HubError::MissingHeader`] for a redirect that cannot be followed, [`HubError::TooManyRedirects`],
    /// [`HubError::UnexpectedStatus`] for a redirect from the CDN, and whatever `execute` and `handle` return.
    pub(super) async fn follow<T>(
        &self,
        start: Url,
        kind: Kind,
        route: Route<'_>,
        tally: Tally<'_>,
        call: impl Fn(Url, Kind) -> Call,
        mut handle: impl AsyncFnMut(Response, Kind) -> Result<Step<T>, HubError>,
    ) -> Result<T, HubError> {
        let (mut url, mut kind) = (start.clone(), kind);
        for _ in 0..=MAX_REDIRECTS {
            let request = call(url.clone(), kind);
            let hop = self
                .execute(&request, tally, async |resp: Response| {
                    let at = resp.url().clone();
                    let status = resp.status().as_u16();
                    if let Some(pinned) = route.pinned {
                        self.check_commit(&at, resp.headers(), pinned, false)?;
                    }
                    let location = header_str(resp.headers(), "location").map(str::to_owned);
                    let linked = resp.headers().contains_key("x-linked-size");
                    match handle(resp, kind).await? {
                        Step::Done(v) => Ok(Hop::Done(v)),
                        Step::Follow => {
                            // Only the Hub's own answers are followed; the CDN serves content or fails.
                            if kind == Kind::Cdn || !(300..400).contains(&status) {
                                return Err(HubError::UnexpectedStatus { url: shown(&at), status });
                            }
                            let location = location
                                .ok_or_else(|| HubError::MissingHeader { url: shown(&at), name: "location" })?;
                            let target = self.check_redirect(&at, &location)?;
                            let on_endpoint = self.on_endpoint(&target);
                            if route.endpoint_only && !on_endpoint {
                                return Err(HubError::BadRedirect {
                                    url: shown(&at),
                                    location: shown(&target),
                                    reason: "redirect leaves the endpoint",
                                });
                            }
                            let next = if on_endpoint && !linked { kind } else { Kind::Cdn };
                            Ok(Hop::Next(target, next))
                        }
                    }
                })
                .await?;
            match hop {
                Hop::Done(v) => return Ok(v),
                Hop::Next(next, next_kind) => (url, kind) = (next, next_kind),
            }
        }
        Err(HubError::TooManyRedirects { url: shown(&start), limit: MAX_REDIRECTS })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HubConfig;

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
}
