//! How to reach the Hub: endpoint, credentials, rate-limit tier, timeouts and retry policy.
//!
//! [`HubSettings`] are the plain values of the application's `[hub]` table (what a config file, the
//! environment and flags set); [`HubConfig::from_settings`] reads the token they name and fills in the rest of
//! [`HubConfig`], and [`crate::HubClient::from_settings`] is the one constructor the application calls, so
//! every command builds its client from the same settings.
//!
//! [`Token`] holds a user access token. It never prints itself ([`std::fmt::Debug`] and
//! [`std::fmt::Display`] are redacted), is sent only as `Authorization: Bearer` to the endpoint's own origin,
//! and is read by [`Token::from_env`] the way `huggingface_hub` reads it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Longest token accepted. Hub tokens are ~40 characters; the cap only bounds what a token file can inject
/// into a header.
pub const MAX_TOKEN_LEN: usize = 1024;

/// A Hugging Face user access token.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(Arc<str>);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Why a token could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token is empty")]
    Empty,
    #[error("token is longer than {MAX_TOKEN_LEN} bytes")]
    TooLong,
    #[error("token contains characters other than visible ascii")]
    BadCharacters,
    #[error("cannot read token file {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
}

impl Token {
    /// A token from its text, surrounding whitespace removed.
    ///
    /// # Errors
    /// [`TokenError`] for an empty or overlong token, or one with characters that cannot go in a header.
    pub fn new(text: &str) -> Result<Token, TokenError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(TokenError::Empty);
        }
        if text.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong);
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::BadCharacters);
        }
        Ok(Token(text.into()))
    }

    /// The token from the environment: `HF_TOKEN`, else the file at `HF_TOKEN_PATH`, else `$HF_HOME/token`,
    /// else `$XDG_CACHE_HOME/huggingface/token`, else `~/.cache/huggingface/token`. An empty variable or a
    /// missing file means no token.
    ///
    /// # Errors
    /// [`TokenError`] for a token file that exists but cannot be read, or an invalid token.
    pub fn from_env() -> Result<Option<Token>, TokenError> {
        Token::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`Token::from_env`] with the variables read through `var` (tests pass a map).
    ///
    /// # Errors
    /// As [`Token::from_env`].
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<Option<Token>, TokenError> {
        let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        if let Some(token) = set("HF_TOKEN") {
            return Token::new(&token).map(Some);
        }
        let path = if let Some(path) = set("HF_TOKEN_PATH") {
            PathBuf::from(path)
        } else if let Some(home) = set("HF_HOME") {
            Path::new(&home).join("token")
        } else if let Some(cache) = set("XDG_CACHE_HOME") {
            Path::new(&cache).join("huggingface").join("token")
        } else if let Some(home) = set("HOME") {
            Path::new(&home).join(".cache").join("huggingface").join("token")
        } else {
            return Ok(None);
        };
        read_token_file(&path)
    }

    /// The secret, for the one place that builds the `Authorization` header.
    pub(crate) fn secret(&self) -> &str {
        &self.0
    }
}

fn read_token_file(path: &Path) -> Result<Option<Token>, TokenError> {
    let read_err = |source| TokenError::Read { path: path.to_owned(), source };
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    // A token file is a few dozen bytes; refuse to read a large file into a header.
    if len > 4 * MAX_TOKEN_LEN as u64 {
        return Err(TokenError::TooLong);
    }
    let text = std::fs::read_to_string(path).map_err(read_err)?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    Token::new(&text).map(Some)
}

/// Rate-limit tier of the account: request budgets per window for the `api` and `resolvers` buckets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// No token: limits apply per IP.
    Anonymous,
    Free,
    Pro,
    Custom {
        api: u32,
        resolvers: u32,
    },
}

impl Tier {
    /// `(api, resolvers)` requests per 5-minute window (hub-docs rate-limits table, September 2025).
    pub fn budgets(self) -> (u32, u32) {
        match self {
            Tier::Anonymous => (500, 3_000),
            Tier::Free => (1_000, 5_000),
            Tier::Pro => (2_500, 12_000),
            Tier::Custom { api, resolvers } => (api, resolvers),
        }
    }
}

/// The application's `[hub]` settings that shape the client. Every field is one setting of the table (or, for
/// `allow_non_loopback_redirects`, of the run: tests and the demo keep everything on loopback).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubSettings {
    /// Base URL of the Hub.
    pub endpoint: String,
    /// Where the token is read from: `None` means `HF_TOKEN`, then the Hugging Face token file locations
    /// ([`Token::from_env`]).
    pub token_file: Option<PathBuf>,
    pub tier: Tier,
    /// HTTP requests in flight at once ([`HubConfig::concurrency`]).
    pub requests_in_flight: usize,
    /// See [`HubConfig::allow_non_loopback_redirects`]; production needs it.
    pub allow_non_loopback_redirects: bool,
}

impl HubSettings {
    /// The settings' defaults for `endpoint`: token from the environment, anonymous tier, 8 requests in flight,
    /// redirects to other hosts allowed (the CDN is another host).
    pub fn new(endpoint: impl Into<String>) -> HubSettings {
        HubSettings {
            endpoint: endpoint.into(),
            token_file: None,
            tier: Tier::Anonymous,
            requests_in_flight: 8,
            allow_non_loopback_redirects: true,
        }
    }
}

/// Everything [`crate::HubClient::new`] needs.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// Base URL of the Hub, e.g. `https://huggingface.co` (a path prefix is allowed).
    pub endpoint: String,
    pub token: Option<Token>,
    pub tier: Tier,
    /// Length of the rate-limit window the tier's budgets apply to (the Hub's is 300 s).
    pub window: Duration,
    /// Most requests in flight at once, over all buckets and the CDN.
    pub concurrency: usize,
    pub connect_timeout: Duration,
    /// Longest silence while reading a response before the attempt fails.
    pub read_timeout: Duration,
    /// Slowest transfer rate tolerated, in bytes per second: a request's total deadline is
    /// `connect_timeout + read_timeout + expected bytes / min_throughput`, which ends a 1 B/s drip.
    pub min_throughput: u64,
    /// Attempts after the first for 408, 429, 5xx, transport failures and truncated bodies.
    pub max_retries: u32,
    /// Exponential backoff: attempt `n` waits a uniformly random time in `[0, min(cap, base × 2ⁿ)]`.
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// Longest `Retry-After` / `RateLimit` wait honoured; a server asking for more fails the request.
    pub max_wait: Duration,
    pub user_agent: String,
    /// Whether redirects (CDN locations, next-page links excepted) may point at hosts outside 127.0.0.0/8 and
    /// `::1`. Production needs it (the CDN is another host); tests set it to false so nothing leaves the
    /// machine.
    pub allow_non_loopback_redirects: bool,
    /// Largest JSON document (a list page, a repo info) read.
    pub max_json_bytes: u64,
    /// Largest file read whole when a server answers a range request with `200` and the full body.
    pub max_full_fallback: u64,
}

impl HubConfig {
    /// Defaults for `endpoint`: anonymous tier, 300 s window, 8 requests in flight, 10 s connect and 30 s read
    /// timeouts, 5 retries with backoff from 500 ms capped at 60 s.
    pub fn new(endpoint: impl Into<String>) -> HubConfig {
        HubConfig {
            endpoint: endpoint.into(),
            token: None,
            tier: Tier::Anonymous,
            window: Duration::from_secs(300),
            concurrency: 8,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            min_throughput: 64 * 1024,
            max_retries: 5,
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(60),
            max_wait: Duration::from_secs(15 * 60),
            user_agent: format!("modeltree/{}", env!("CARGO_PKG_VERSION")),
            allow_non_loopback_redirects: true,
            max_json_bytes: 64 << 20,
            max_full_fallback: 16 << 20,
        }
    }
}

impl HubConfig {
    /// The configuration for `settings`: the token read from `settings.token_file` (or found as
    /// [`Token::from_env`] finds it when none is named), everything else at the defaults of [`HubConfig::new`].
    ///
    /// # Errors
    /// [`TokenError`] when the token file cannot be read or holds an invalid token.
    pub fn from_settings(settings: &HubSettings) -> Result<HubConfig, TokenError> {
        let token = match &settings.token_file {
            Some(path) => read_token_file(path)?,
            None => Token::from_env()?,
        };
        Ok(HubConfig {
            token,
            tier: settings.tier,
            concurrency: settings.requests_in_flight,
            allow_non_loopback_redirects: settings.allow_non_loopback_redirects,
            ..HubConfig::new(settings.endpoint.clone())
        })
    }
}

impl Default for HubConfig {
    fn default() -> HubConfig {
        HubConfig::new("https://huggingface.co")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn tokens_never_print() {
        let t = Token::new("  hf_secretvalue123\n").expect("valid");
        assert_eq!(t.secret(), "hf_secretvalue123");
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
        assert_eq!(format!("{t}"), "<redacted>");
        let config = HubConfig { token: Some(t), ..HubConfig::default() };
        assert!(!format!("{config:?}").contains("secretvalue"));
        assert!(matches!(Token::new(" "), Err(TokenError::Empty)));
        assert!(matches!(Token::new("a b"), Err(TokenError::BadCharacters)));
        assert!(matches!(Token::new("hf_\u{7f}"), Err(TokenError::BadCharacters)));
        assert!(matches!(Token::new(&"x".repeat(MAX_TOKEN_LEN + 1)), Err(TokenError::TooLong)));
    }

    #[test]
    fn tokens_are_found_like_huggingface_hub_finds_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(&p, text).expect("write");
            p.to_string_lossy().into_owned()
        };
        let explicit = file("explicit", "hf_from_path\n");
        let home = dir.path().join("hfhome");
        file("hfhome/token", "hf_from_home");
        file("user/.cache/huggingface/token", "hf_from_user_cache");
        let user = dir.path().join("user").to_string_lossy().into_owned();
        let check = |vars: &[(&str, &str)], expected: Option<&str>| {
            let map: HashMap<String, String> = vars.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
            let got = Token::from_lookup(|k| map.get(k).cloned()).expect("readable");
            assert_eq!(got.as_ref().map(Token::secret), expected, "{vars:?}");
        };
        let home = home.to_string_lossy().into_owned();
        check(&[("HF_TOKEN", "hf_env"), ("HF_TOKEN_PATH", &explicit)], Some("hf_env"));
        check(&[("HF_TOKEN", ""), ("HF_TOKEN_PATH", &explicit), ("HF_HOME", &home)], Some("hf_from_path"));
        check(&[("HF_HOME", &home), ("HOME", &user)], Some("hf_from_home"));
        check(&[("HOME", &user)], Some("hf_from_user_cache"));
        check(&[("HF_TOKEN_PATH", "/nonexistent/token")], None);
        check(&[], None);
        let empty = file("empty", "\n");
        check(&[("HF_TOKEN_PATH", &empty)], None);
    }

    #[test]
    fn settings_carry_into_the_client_config() {
        let dir = tempfile::tempdir().expect("temp dir");
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "hf_from_settings\n").expect("write");
        let settings = HubSettings {
            endpoint: "http://127.0.0.1:1".into(),
            token_file: Some(token_file),
            tier: Tier::Pro,
            requests_in_flight: 3,
            allow_non_loopback_redirects: false,
        };
        let config = HubConfig::from_settings(&settings).expect("config");
        assert_eq!(config.endpoint, settings.endpoint);
        assert_eq!(config.token.as_ref().map(Token::secret), Some("hf_from_settings"));
        assert_eq!((config.tier, config.concurrency, config.allow_non_loopback_redirects), (Tier::Pro, 3, false));
        // A named file that does not exist means no token, as for the Hugging Face locations.
        let missing = HubSettings { token_file: Some(dir.path().join("absent")), ..settings.clone() };
        assert_eq!(HubConfig::from_settings(&missing).expect("config").token, None);
        std::fs::write(dir.path().join("bad"), "a b").expect("write");
        let bad = HubSettings { token_file: Some(dir.path().join("bad")), ..settings };
        assert!(matches!(HubConfig::from_settings(&bad), Err(TokenError::BadCharacters)));
    }

    #[test]
    fn tiers_have_the_documented_budgets() {
        assert_eq!(Tier::Anonymous.budgets(), (500, 3_000));
        assert_eq!(Tier::Free.budgets(), (1_000, 5_000));
        assert_eq!(Tier::Pro.budgets(), (2_500, 12_000));
        assert_eq!(Tier::Custom { api: 3, resolvers: 4 }.budgets(), (3, 4));
    }
}
