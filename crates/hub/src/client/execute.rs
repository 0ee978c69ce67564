//! Sending one request and reading its body.
//!
//! [`HubClient::execute`] sends a [`Call`] until a handler accepts a response or the retries run out: it waits
//! for the bucket's budget, takes a slot of the global semaphore, sends, takes in the `RateLimit` headers, maps
//! error statuses to typed errors using `X-Error-Code`, and retries 408/429/5xx, transport failures and
//! truncated bodies with capped, fully jittered exponential backoff (or the wait the server named). Redirects
//! are not its business: it hands every answer that is not an error status to the handler, and
//! `redirect` decides what to follow. The body readers bound what one response can make us hold in memory.

use std::ops::Range;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::header::{self, HeaderMap};
use reqwest::{Method, Response, Url};

use super::{HubClient, Kind, Tally, clean_message, header_str};
use crate::error::{HubError, shown};
use crate::limiter::{parse_ratelimit, parse_retry_after};

/// One request to send (possibly several times).
pub(super) struct Call {
    pub(super) method: Method,
    pub(super) url: Url,
    pub(super) kind: Kind,
    /// `Range: bytes=a-b` (`b` inclusive), or `bytes=a-` when `b` is `None`.
    pub(super) range: Option<(u64, Option<u64>)>,
    /// Bytes expected in the body, for the deadline.
    pub(super) expect: u64,
}

/// How much body a request may have.
#[derive(Clone, Copy, Debug)]
pub(super) enum BodyLimit {
    Exactly(u64),
    AtMost(u64, &'static str),
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

impl HubClient {
    /// Total deadline of a request expecting `bytes` of body.
    pub(crate) fn deadline(&self, bytes: u64) -> Duration {
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

    /// The wait before attempt `attempt` when the server named none.
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let c = &self.inner.config;
        let exp = c.backoff_base.saturating_mul(1u32.checked_shl(attempt.min(30)).unwrap_or(u32::MAX));
        jitter(exp.min(c.backoff_cap))
    }

    /// Sends `call` until `handle` accepts a response or the retries run out; see the module docs.
    pub(super) async fn execute<T>(
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
            let answered = || {
                if let Some(bucket) = call.kind.bucket() {
                    self.inner.limiter.answered(bucket);
                }
            };
            let outcome = match self.build(call).send().await {
                Err(e) => {
                    answered();
                    Err(HubError::Transport { url: url.clone(), source: e.without_url() })
                }
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
                        // Close the bucket before the requests waiting for this answer are let go.
                        if let (Some(wait), Some(bucket)) = (asked, call.kind.bucket())
                            && wait <= config.max_wait
                        {
                            self.inner.limiter.block(bucket, tokio::time::Instant::now() + wait);
                        }
                    }
                    answered();
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
    pub(super) async fn read_body(
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
    pub(super) async fn read_slice(
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_bounds() {
        let d = Duration::from_millis(100);
        let draws: Vec<Duration> = (0..200).map(|_| jitter(d)).collect();
        assert!(draws.iter().all(|x| *x <= d));
        // Full jitter spreads over the interval rather than sitting at one end.
        assert!(draws.iter().any(|x| *x < d / 4) && draws.iter().any(|x| *x > d * 3 / 4));
    }
}
