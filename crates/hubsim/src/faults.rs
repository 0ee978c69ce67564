//! Seeded fault decisions.
//!
//! Each request gets its own generator, seeded from the configured seed and the request's sequence number, and
//! always draws the same number of values in the same order. So whether request *n* fails, and how, depends only
//! on the seed and *n*, not on which other faults are enabled or on timing.

use crate::config::FaultConfig;

/// A fault the server injected into one response (as recorded in the request log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answered with this 5xx status instead of handling the request.
    ServerError(u16),
    /// Headers were delayed.
    Slow,
    /// The connection was reset after this many body bytes.
    ResetMidBody { after: u64 },
    /// The body stopped after this many bytes, short of its `Content-Length`.
    Truncated { after: u64 },
    /// The redirect carried an already expired CDN URL.
    ExpiredUrl,
    /// A 429 from the storm schedule.
    Storm,
}

/// What to do to a body once it is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyFault {
    Reset,
    Truncate,
}

/// All decisions for one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Decision {
    pub server_error: Option<u16>,
    pub slow: bool,
    pub body: Option<BodyFault>,
    /// Where to cut a faulted body, as a fraction in `[0, 1)`.
    pub cut: f64,
    pub expire_url: bool,
}

impl Decision {
    pub const NONE: Decision = Decision { server_error: None, slow: false, body: None, cut: 0.0, expire_url: false };

    /// Decides the faults of request number `seq`.
    pub fn draw(config: &FaultConfig, seq: u64) -> Decision {
        let mut rng = SplitMix64(config.seed ^ seq.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17));
        // Draw every value unconditionally so that enabling one fault never shifts another's decisions.
        let p5xx = rng.unit();
        let status = [500, 502, 503][usize::try_from(rng.next() % 3).unwrap_or(0)];
        let slow = rng.unit();
        let reset = rng.unit();
        let truncate = rng.unit();
        let cut = rng.unit();
        let expire = rng.unit();
        Decision {
            server_error: (p5xx < config.p_5xx).then_some(status),
            slow: slow < config.p_slow,
            body: if reset < config.p_reset_mid_body {
                Some(BodyFault::Reset)
            } else if truncate < config.p_truncate {
                Some(BodyFault::Truncate)
            } else {
                None
            },
            cut,
            expire_url: expire < config.p_expire_url,
        }
    }

    /// How many bytes of a `len`-byte body to send before the fault: at least one, never all.
    pub fn cut_point(&self, len: u64) -> u64 {
        let span = len.saturating_sub(1) as f64;
        (1 + (self.cut * span) as u64).min(len.saturating_sub(1))
    }
}

/// SplitMix64: tiny, fast, and good enough to spread fault decisions; not for anything secret.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_proportional() {
        let config = FaultConfig { seed: 7, p_5xx: 0.2, p_truncate: 0.1, ..FaultConfig::default() };
        let a: Vec<Decision> = (0..2000).map(|i| Decision::draw(&config, i)).collect();
        let b: Vec<Decision> = (0..2000).map(|i| Decision::draw(&config, i)).collect();
        assert_eq!(a, b);
        let errors = a.iter().filter(|d| d.server_error.is_some()).count();
        assert!((300..500).contains(&errors), "{errors}");
        let truncated = a.iter().filter(|d| d.body == Some(BodyFault::Truncate)).count();
        assert!((130..270).contains(&truncated), "{truncated}");
        assert!(a.iter().all(|d| !d.slow && d.body != Some(BodyFault::Reset) && !d.expire_url));
        // Turning another fault on leaves the 5xx decisions where they were.
        let more = FaultConfig { p_slow: 0.5, ..config.clone() };
        assert!((0..2000).all(|i| Decision::draw(&more, i).server_error == a[i as usize].server_error));
        let other_seed = FaultConfig { seed: 8, ..config };
        assert!((0..2000).any(|i| Decision::draw(&other_seed, i).server_error != a[i as usize].server_error));
    }

    #[test]
    fn cut_points() {
        let d = |cut| Decision { cut, ..Decision::NONE };
        assert_eq!(d(0.0).cut_point(100), 1);
        assert_eq!(d(0.999).cut_point(100), 99);
        assert_eq!(d(0.5).cut_point(2), 1);
    }
}
