//! Request and byte counts: [`Stats`] is the snapshot callers read, [`Counters`] the shared atomics behind it,
//! and [`Tally`] updates the client's counters and, when one is given, a single call's own counters at once
//! (so the crawler can attribute requests to the model that caused them while the client keeps the total).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::Kind;

/// Request and byte counts, readable at any time through [`super::HubClient::stats`].
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
    pub(super) global: &'a Counters,
    pub(super) local: Option<&'a Counters>,
}

impl Tally<'_> {
    fn each(&self, f: impl Fn(&Counters)) {
        f(self.global);
        if let Some(l) = self.local {
            f(l);
        }
    }

    pub(super) fn request(&self, kind: Kind) {
        self.each(|c| {
            c.requests[kind.index()].fetch_add(1, Ordering::Relaxed);
        });
    }

    pub(super) fn bytes(&self, kind: Kind, n: u64) {
        self.each(|c| {
            c.bytes[kind.index()].fetch_add(n, Ordering::Relaxed);
        });
    }

    pub(super) fn retry(&self) {
        self.each(|c| {
            c.retries.fetch_add(1, Ordering::Relaxed);
        });
    }

    pub(super) fn rate_limited(&self) {
        self.each(|c| {
            c.rate_limited.fetch_add(1, Ordering::Relaxed);
        });
    }

    pub(super) fn waited(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.each(|c| {
            c.waited_us.fetch_add(us, Ordering::Relaxed);
        });
    }
}
