//! The Hub's rate limits: fixed windows per bucket, keyed per token (or per client IP when anonymous), announced
//! on every limited response with the IETF draft headers the Hub uses:
//!
//! ```text
//! RateLimit: "api";r=<remaining>;t=<seconds to reset>
//! RateLimit-Policy: "fixed window";"api";q=<quota>;w=<window seconds>
//! ```
//!
//! The limiter also remembers, per client and bucket, until when that client was told `r=0`. A request arriving
//! before that instant is *early*: a well-behaved client would not have sent it. Tests assert there are none.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::config::{Limits, QuotaConfig, Storm};

/// A rate-limit bucket of the Hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bucket {
    /// `/api/*`.
    Api,
    /// `/{repo}/resolve/*`.
    Resolvers,
}

impl Bucket {
    /// The bucket's name in the `RateLimit` headers.
    pub fn name(self) -> &'static str {
        match self {
            Bucket::Api => "api",
            Bucket::Resolvers => "resolvers",
        }
    }
}

/// Which quota applies to a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tier {
    Anonymous,
    Free,
    Pro,
}

/// What the limiter decided for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub allowed: bool,
    /// Whether this 429 comes from a storm rather than the quota.
    pub storm: bool,
    /// The client had been told `r=0` and the announced reset had not come yet.
    pub early: bool,
    /// `RateLimit` / `RateLimit-Policy` values; `None` when limits are off and no storm is on.
    pub headers: Option<RateHeaders>,
    /// Seconds for `Retry-After` on a 429.
    pub retry_after: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RateHeaders {
    pub bucket: Bucket,
    pub remaining: u64,
    pub reset_secs: u64,
    pub quota: u64,
    pub window_secs: u64,
}

impl RateHeaders {
    pub fn rate_limit(&self) -> String {
        format!("\"{}\";r={};t={}", self.bucket.name(), self.remaining, self.reset_secs)
    }

    pub fn policy(&self) -> String {
        format!("\"fixed window\";\"{}\";q={};w={}", self.bucket.name(), self.quota, self.window_secs)
    }
}

#[derive(Debug)]
pub(crate) struct Limiter {
    config: QuotaConfig,
    storm: Option<Storm>,
    start: Instant,
    /// (client, bucket) → (window number, requests counted in it).
    used: HashMap<(String, Bucket), (u64, u64)>,
    /// (client, bucket) → the instant the client was told it could resume.
    told_zero: HashMap<(String, Bucket), Instant>,
    /// Rate-limited requests seen so far, for the storm schedule.
    seen: u64,
}

fn ceil_secs(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

impl Limiter {
    pub fn new(config: QuotaConfig, storm: Option<Storm>, start: Instant) -> Self {
        Limiter { config, storm, start, used: HashMap::new(), told_zero: HashMap::new(), seen: 0 }
    }

    pub fn tier_of(&self, token: Option<&str>) -> Tier {
        match token {
            None => Tier::Anonymous,
            Some(t) if self.config.pro_tokens.iter().any(|p| p == t) => Tier::Pro,
            Some(_) => Tier::Free,
        }
    }

    fn limits(&self, tier: Tier) -> Limits {
        match tier {
            Tier::Anonymous => self.config.anonymous,
            Tier::Free => self.config.free,
            Tier::Pro => self.config.pro,
        }
    }

    /// Counts one request of `client` in `bucket` at `now` and decides whether it may proceed.
    pub fn check(&mut self, client: &str, tier: Tier, bucket: Bucket, now: Instant) -> Verdict {
        let key = (client.to_owned(), bucket);
        let early = self.told_zero.get(&key).is_some_and(|until| now < *until);
        self.seen += 1;
        let window = self.config.window.max(Duration::from_millis(1));
        let window_secs = ceil_secs(window);
        let quota = match bucket {
            Bucket::Api => self.limits(tier).api,
            Bucket::Resolvers => self.limits(tier).resolvers,
        };
        if let Some(storm) = &self.storm
            && self.seen > storm.start_after
            && self.seen - storm.start_after <= storm.count
        {
            let wait = storm.retry_after_secs.max(1);
            self.told_zero.insert(key, now + Duration::from_secs(wait));
            let headers = RateHeaders { bucket, remaining: 0, reset_secs: wait, quota, window_secs };
            return Verdict { allowed: false, storm: true, early, headers: Some(headers), retry_after: wait };
        }
        if !self.config.enabled {
            return Verdict { allowed: true, storm: false, early, headers: None, retry_after: 0 };
        }
        let elapsed = now.saturating_duration_since(self.start);
        let number = u64::try_from(elapsed.as_nanos() / window.as_nanos()).unwrap_or(u64::MAX);
        let window_end = self.start + window * u32::try_from(number.saturating_add(1)).unwrap_or(u32::MAX);
        let slot = self.used.entry(key.clone()).or_insert((number, 0));
        if slot.0 != number {
            *slot = (number, 0);
        }
        slot.1 += 1;
        let used = slot.1;
        let remaining = quota.saturating_sub(used);
        let reset_secs = ceil_secs(window_end.saturating_duration_since(now));
        if remaining == 0 {
            self.told_zero.insert(key, window_end);
        }
        let headers = RateHeaders { bucket, remaining, reset_secs, quota, window_secs };
        Verdict { allowed: used <= quota, storm: false, early, headers: Some(headers), retry_after: reset_secs }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quotas(api: u64, window: Duration) -> QuotaConfig {
        let limits = Limits { api, resolvers: api * 2 };
        QuotaConfig { window, anonymous: limits, free: limits, pro: limits, ..QuotaConfig::default() }
    }

    #[test]
    fn fixed_window_counts_and_resets() {
        let start = Instant::now();
        let mut l = Limiter::new(quotas(2, Duration::from_secs(10)), None, start);
        let at = |ms| start + Duration::from_millis(ms);
        let v1 = l.check("ip:a", Tier::Anonymous, Bucket::Api, at(1000));
        assert!(v1.allowed && !v1.early);
        assert_eq!(v1.headers.as_ref().map(RateHeaders::rate_limit).as_deref(), Some("\"api\";r=1;t=9"));
        assert_eq!(v1.headers.as_ref().map(RateHeaders::policy).as_deref(), Some("\"fixed window\";\"api\";q=2;w=10"));
        // The second request uses the last unit: r=0 tells the client to wait until the window ends.
        let v2 = l.check("ip:a", Tier::Anonymous, Bucket::Api, at(2000));
        assert!(v2.allowed && !v2.early);
        assert_eq!(v2.headers.as_ref().map(|h| h.remaining), Some(0));
        // Another client and another bucket are independent.
        assert!(l.check("ip:b", Tier::Anonymous, Bucket::Api, at(2000)).allowed);
        assert!(l.check("ip:a", Tier::Anonymous, Bucket::Resolvers, at(2000)).allowed);
        let v3 = l.check("ip:a", Tier::Anonymous, Bucket::Api, at(9500));
        assert!(!v3.allowed && v3.early);
        assert_eq!(v3.retry_after, 1);
        // At the announced reset the window is fresh and the request is not early.
        let v4 = l.check("ip:a", Tier::Anonymous, Bucket::Api, at(10_000));
        assert!(v4.allowed && !v4.early);
        assert_eq!(v4.headers.map(|h| (h.remaining, h.reset_secs)), Some((1, 10)));
    }

    #[test]
    fn storm_overrides_quota() {
        let start = Instant::now();
        let storm = Storm { start_after: 1, count: 2, retry_after_secs: 3 };
        let mut l = Limiter::new(QuotaConfig::unlimited(), Some(storm), start);
        let at = |ms| start + Duration::from_millis(ms);
        let first = l.check("ip:a", Tier::Anonymous, Bucket::Api, at(0));
        assert!(first.allowed && first.headers.is_none());
        let s1 = l.check("ip:a", Tier::Anonymous, Bucket::Api, at(10));
        assert!(!s1.allowed && s1.storm && !s1.early && s1.retry_after == 3);
        let s2 = l.check("ip:a", Tier::Anonymous, Bucket::Api, at(20));
        assert!(!s2.allowed && s2.storm && s2.early);
        let after = l.check("ip:a", Tier::Anonymous, Bucket::Api, at(3100));
        assert!(after.allowed && !after.early);
    }

    #[test]
    fn tiers() {
        let config = QuotaConfig { pro_tokens: vec!["p".into()], ..QuotaConfig::default() };
        let l = Limiter::new(config, None, Instant::now());
        assert_eq!(l.tier_of(None), Tier::Anonymous);
        assert_eq!(l.tier_of(Some("x")), Tier::Free);
        assert_eq!(l.tier_of(Some("p")), Tier::Pro);
    }
}
