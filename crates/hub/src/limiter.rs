//! Client-side rate limiting per Hub bucket.
//!
//! The Hub counts requests in fixed 5-minute windows per bucket (`api` for `/api/…`, `resolvers` for
//! `/…/resolve/…`; CDN downloads are not counted) and announces the state in
//! `RateLimit: "<bucket>";r=<remaining>;t=<seconds to reset>`. We do not know where the server's window
//! starts, so [`RateLimiter`] keeps a sliding log of its own send times and allows a request only while fewer
//! than `budget` were sent in the last `window`: then no fixed window of that length, wherever it starts, sees
//! more than `budget`. On top of that it obeys the server: after `r=0` no request goes out on that bucket
//! before `t + 1` seconds, after `Retry-After` none before the date it names, and while the server reports `r`
//! remaining, at most `r` more go out before its reset.
//!
//! When a block ends, one request goes out first as a probe and the others wait for its answer
//! ([`RateLimiter::answered`], at most [`PROBE_WAIT`]): released together, they would all reach the server
//! before the first one's answer could announce a new reset. Every announced reset is capped at
//! [`MAX_ANNOUNCED_RESET`], so a hostile `t=` can neither overflow the clock nor stall a crawl for days.
//!
//! Time is `tokio::time`, so the limiter runs on paused time in tests.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// How long the other requests of a bucket wait for the answer to the probe sent when a block ended; a probe
/// whose answer takes longer does not hold the bucket closed.
pub const PROBE_WAIT: Duration = Duration::from_secs(2);

/// The longest reset a `RateLimit` header may announce: the Hub's windows are 5 minutes, so anything beyond
/// 15 minutes is a broken or hostile server (and `t=18446744073709551615` would overflow the clock).
pub const MAX_ANNOUNCED_RESET: Duration = Duration::from_secs(900);

/// A rate-limited class of Hub requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bucket {
    Api,
    Resolvers,
}

impl Bucket {
    fn index(self) -> usize {
        match self {
            Bucket::Api => 0,
            Bucket::Resolvers => 1,
        }
    }

    /// The bucket named in a `RateLimit` header.
    fn named(name: &str) -> Option<Bucket> {
        match name {
            "api" => Some(Bucket::Api),
            "resolvers" => Some(Bucket::Resolvers),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct State {
    budget: usize,
    sent: VecDeque<Instant>,
    /// No request before this instant (`RateLimit` with `r=0`, `Retry-After`).
    blocked_until: Option<Instant>,
    /// What the server last said: requests remaining until its window resets.
    server: Option<(u32, Instant)>,
    /// A probe went out when the last block ended; the others wait for its answer until this instant.
    probe_until: Option<Instant>,
}

/// Budgets per bucket over a sliding window, plus what the server announced.
#[derive(Debug)]
pub struct RateLimiter {
    window: Duration,
    buckets: [Mutex<State>; 2],
    /// Woken when a bucket's probe is answered.
    answered: [Notify; 2],
}

/// One parsed item of a `RateLimit` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Announced {
    pub bucket: Bucket,
    pub remaining: u32,
    pub reset: Duration,
}

impl RateLimiter {
    /// A limiter allowing `api` and `resolvers` requests per `window` (each at least 1).
    pub fn new(window: Duration, api: u32, resolvers: u32) -> RateLimiter {
        let state = |budget: u32| {
            Mutex::new(State {
                budget: budget.max(1) as usize,
                sent: VecDeque::new(),
                blocked_until: None,
                server: None,
                probe_until: None,
            })
        };
        RateLimiter { window, buckets: [state(api), state(resolvers)], answered: [Notify::new(), Notify::new()] }
    }

    fn state(&self, bucket: Bucket) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means another task panicked mid-update; the counters are still usable.
        self.buckets[bucket.index()].lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until a request on `bucket` is allowed and records it; returns how long it waited.
    pub async fn acquire(&self, bucket: Bucket) -> Duration {
        let started = Instant::now();
        loop {
            let wait_until = {
                let mut s = self.state(bucket);
                let now = Instant::now();
                while s.sent.front().is_some_and(|&t| now.duration_since(t) >= self.window) {
                    s.sent.pop_front();
                }
                if s.server.is_some_and(|(_, reset)| reset <= now) {
                    s.server = None;
                }
                if let Some(until) = s.blocked_until.filter(|&u| u > now) {
                    Some(until)
                } else if let Some(until) = s.probe_until.filter(|&u| u > now) {
                    Some(until)
                } else if let Some((0, reset)) = s.server {
                    Some(reset)
                } else if s.sent.len() >= s.budget {
                    s.sent.front().map(|&t| t + self.window)
                } else {
                    // The first request after a block is the probe; the others wait for its answer.
                    s.probe_until = s.blocked_until.take().map(|_| now + PROBE_WAIT);
                    s.sent.push_back(now);
                    if let Some((remaining, _)) = &mut s.server {
                        *remaining = remaining.saturating_sub(1);
                    }
                    None
                }
            };
            match wait_until {
                None => return started.elapsed(),
                Some(until) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(until) => {}
                        () = self.answered[bucket.index()].notified() => {}
                    }
                }
            }
        }
    }

    /// Sends nothing on `bucket` before `until`.
    pub fn block(&self, bucket: Bucket, until: Instant) {
        let mut s = self.state(bucket);
        s.blocked_until = Some(s.blocked_until.map_or(until, |b| b.max(until)));
    }

    /// A response (or a transport error) came back on `bucket`, after whatever it announced was taken in
    /// ([`RateLimiter::observe`], [`RateLimiter::block`]): the requests waiting for a probe's answer may go.
    pub fn answered(&self, bucket: Bucket) {
        let mut s = self.state(bucket);
        if s.probe_until.take().is_some() {
            drop(s);
            self.answered[bucket.index()].notify_waiters();
        }
    }

    /// Takes in what a response's `RateLimit` header announced: `r=0` blocks the bucket for `t + 1` s,
    /// otherwise at most `r` more requests go out before the reset. Resets are capped at
    /// [`MAX_ANNOUNCED_RESET`].
    pub fn observe(&self, announced: &[Announced]) {
        let now = Instant::now();
        for a in announced {
            if a.reset > MAX_ANNOUNCED_RESET {
                tracing::warn!(
                    bucket = ?a.bucket,
                    announced = a.reset.as_secs(),
                    cap = MAX_ANNOUNCED_RESET.as_secs(),
                    "the server announced a rate-limit reset beyond the cap; waiting at most the cap"
                );
            }
            let reset = now + a.reset.min(MAX_ANNOUNCED_RESET);
            if a.remaining == 0 {
                self.block(a.bucket, reset + Duration::from_secs(1));
            }
            self.state(a.bucket).server = Some((a.remaining, reset));
        }
    }
}

/// Parses `RateLimit: "api";r=0;t=55` (a list of items, draft-ietf-httpapi-ratelimit-headers). Items of other
/// buckets and malformed items are skipped.
pub fn parse_ratelimit(value: &str) -> Vec<Announced> {
    value
        .split(',')
        .filter_map(|item| {
            let mut parts = item.split(';').map(str::trim);
            let name = parts.next()?.strip_prefix('"')?.strip_suffix('"')?;
            let bucket = Bucket::named(name)?;
            let (mut r, mut t) = (None, None);
            for p in parts {
                match p.split_once('=') {
                    Some(("r", v)) => r = v.parse::<u32>().ok(),
                    Some(("t", v)) => t = v.parse::<u64>().ok(),
                    _ => {}
                }
            }
            Some(Announced { bucket, remaining: r?, reset: Duration::from_secs(t?) })
        })
        .collect()
}

/// Parses `Retry-After`: delay-seconds or an HTTP-date (as RFC 2822 with `GMT`), relative to `now_utc`.
pub fn parse_retry_after(value: &str, now_utc: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let delta = date.with_timezone(&chrono::Utc) - now_utc;
    // A date in the past means "now".
    Some(delta.to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratelimit_headers() {
        let check = |v: &str, expected: &[(Bucket, u32, u64)]| {
            let got: Vec<(Bucket, u32, u64)> =
                parse_ratelimit(v).iter().map(|a| (a.bucket, a.remaining, a.reset.as_secs())).collect();
            assert_eq!(got, expected, "{v:?}");
        };
        check(r#""api";r=0;t=55"#, &[(Bucket::Api, 0, 55)]);
        check(r#""resolvers";r=4999;t=300, "api";r=12;t=3"#, &[(Bucket::Resolvers, 4999, 300), (Bucket::Api, 12, 3)]);
        check(r#""pages";r=1;t=2"#, &[]);
        check(r#"api;r=1;t=2"#, &[]);
        check(r#""api";r=-1;t=2"#, &[]);
        check(r#""api";t=2"#, &[]);
        check("", &[]);
    }

    #[test]
    fn retry_after_in_seconds_and_dates() {
        let now = chrono::DateTime::parse_from_rfc3339("2025-11-06T08:49:30Z").expect("date").to_utc();
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Thu, 06 Nov 2025 08:49:37 GMT", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Thu, 06 Nov 2025 08:40:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[tokio::test(start_paused = true)]
    async fn budgets_hold_over_every_window() {
        let window = Duration::from_secs(10);
        let limiter = RateLimiter::new(window, 3, 100);
        let start = Instant::now();
        let mut times = Vec::new();
        for _ in 0..10 {
            limiter.acquire(Bucket::Api).await;
            times.push(start.elapsed());
        }
        // Three per window: 0,0,0, then 10,10,10, then 20…
        let secs: Vec<u64> = times.iter().map(|d| d.as_secs()).collect();
        assert_eq!(secs, [0, 0, 0, 10, 10, 10, 20, 20, 20, 30]);
        // No interval of one window length holds more than the budget.
        for (i, t) in times.iter().enumerate() {
            let inside = times[i..].iter().filter(|u| **u < *t + window).count();
            assert!(inside <= 3, "{times:?}");
        }
        // The other bucket is independent.
        let before = Instant::now();
        limiter.acquire(Bucket::Resolvers).await;
        assert_eq!(before.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn announcements_are_obeyed() {
        let limiter = RateLimiter::new(Duration::from_secs(300), 1000, 1000);
        limiter.observe(&parse_ratelimit(r#""api";r=0;t=2"#));
        let start = Instant::now();
        limiter.acquire(Bucket::Api).await;
        assert_eq!(start.elapsed(), Duration::from_secs(3), "t + 1 s");
        // Two remaining until a reset in 5 s: the third request waits for the reset.
        limiter.observe(&parse_ratelimit(r#""resolvers";r=2;t=5"#));
        let start = Instant::now();
        for _ in 0..3 {
            limiter.acquire(Bucket::Resolvers).await;
        }
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        // Retry-After style blocks.
        limiter.block(Bucket::Api, Instant::now() + Duration::from_secs(42));
        let start = Instant::now();
        limiter.acquire(Bucket::Api).await;
        assert_eq!(start.elapsed(), Duration::from_secs(42));
    }

    #[tokio::test(start_paused = true)]
    async fn issue_11_an_absurd_announced_reset_is_capped_not_an_overflow() {
        let limiter = RateLimiter::new(Duration::from_secs(300), 100, 100);
        // `t=18446744073709551615` used to overflow `Instant + Duration` and panic the crawler.
        let announced = parse_ratelimit(r#""api";r=0;t=18446744073709551615, "resolvers";r=5;t=18446744073709551615"#);
        assert_eq!(announced.len(), 2);
        limiter.observe(&announced);
        let start = Instant::now();
        limiter.acquire(Bucket::Api).await;
        assert_eq!(start.elapsed(), MAX_ANNOUNCED_RESET + Duration::from_secs(1));
        limiter.answered(Bucket::Api);
        // `r=5` on the other bucket: five go at once, the sixth waits for the capped reset, not for ever.
        let start = Instant::now();
        for _ in 0..5 {
            limiter.acquire(Bucket::Resolvers).await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        limiter.acquire(Bucket::Resolvers).await;
        assert!(start.elapsed() <= MAX_ANNOUNCED_RESET, "{:?}", start.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_block_one_probe_goes_first_and_the_rest_wait_for_its_answer() {
        let limiter = std::sync::Arc::new(RateLimiter::new(Duration::from_secs(300), 100, 100));
        limiter.block(Bucket::Api, Instant::now() + Duration::from_secs(10));
        let start = Instant::now();
        limiter.acquire(Bucket::Api).await;
        assert_eq!(start.elapsed(), Duration::from_secs(10), "the probe goes when the block ends");
        // A second request waits for the probe's answer...
        let second = tokio::spawn({
            let limiter = limiter.clone();
            async move {
                limiter.acquire(Bucket::Api).await;
                Instant::now()
            }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!second.is_finished(), "nothing goes out before the probe is answered");
        // ...which announces a new block: the second request goes only when that one ends.
        limiter.observe(&parse_ratelimit(r#""api";r=0;t=20"#));
        limiter.answered(Bucket::Api);
        let sent = second.await.expect("task");
        assert_eq!(sent - start, Duration::from_millis(10_500) + Duration::from_secs(21));
        // A probe that is never answered holds the bucket for PROBE_WAIT at most.
        let (a, b) = (Instant::now(), limiter.acquire(Bucket::Api).await);
        assert_eq!(b, PROBE_WAIT);
        assert!(Instant::now() - a == PROBE_WAIT);
    }
}
