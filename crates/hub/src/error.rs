//! The one error type of the Hub client.
//!
//! Variants are typed by what a caller does about them: the access states the Hub reports (repository,
//! revision or file missing, gated, unauthorised, forbidden) become their own variants so the crawler can record
//! them as terminal states; transport failures and truncated bodies are [`HubError::is_transient`] and were
//! already retried by the time a caller sees them; everything a hostile or broken server can send (wrong
//! ranges, oversized bodies, foreign redirects) is refused with a variant naming the rule. URLs in errors are
//! shown without their query string: signed CDN URLs carry short-lived credentials there.

use std::path::PathBuf;

/// What went wrong talking to the Hub.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    BadEndpoint { endpoint: String, reason: &'static str },
    #[error("invalid configuration: {reason}")]
    BadConfig { reason: &'static str },
    #[error("cannot read the hugging face token: {0}")]
    Token(#[source] crate::config::TokenError),
    #[error("cannot build the http client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("invalid repository id {id:?}")]
    BadRepoId { id: String },
    #[error("invalid revision {revision:?}")]
    BadRevision { revision: String },
    #[error("invalid commit id {commit:?}")]
    BadCommit { commit: String },
    #[error("refused file name {name:?}: {reason}")]
    BadFileName { name: String, reason: &'static str },

    #[error("repository not found: {url}")]
    RepoNotFound { url: String },
    #[error("revision not found: {url}")]
    RevisionNotFound { url: String },
    #[error("file not found: {url}")]
    EntryNotFound { url: String },
    #[error("gated repository, access not granted (http {status}): {url}")]
    GatedRepo { status: u16, url: String },
    #[error("unauthorized (http 401): {url}{}", suffix(message))]
    Unauthorized { url: String, message: Option<String> },
    #[error("forbidden (http 403): {url}{}", suffix(message))]
    Forbidden { url: String, message: Option<String> },
    #[error("not found (http 404): {url}")]
    NotFound { url: String },
    #[error("range not satisfiable (http 416): {url}")]
    RangeNotSatisfiable { url: String },
    #[error("http {status} from {url}{}", suffix(message))]
    Status { status: u16, url: String, code: Option<String>, message: Option<String> },
    #[error("rate limited by {url}; gave up after {attempts} attempts")]
    RateLimited { url: String, attempts: u32 },
    #[error("{url} asked to wait {seconds} s, more than the cap of {cap} s")]
    WaitTooLong { url: String, seconds: u64, cap: u64 },

    #[error("request to {url} failed: {source}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url}: body ended after {got} of {expected} bytes")]
    BodyTooShort { url: String, expected: u64, got: u64 },
    #[error("{url}: body longer than the {expected} bytes expected")]
    BodyTooLong { url: String, expected: u64 },
    #[error("{url}: {what} of {len} bytes exceeds the cap of {cap}")]
    TooLarge { url: String, what: &'static str, len: u64, cap: u64 },
    #[error("{url}: answered http {status} with content-range {content_range:?} to a request for bytes {start}-{end}")]
    BadContentRange { url: String, status: u16, start: u64, end: u64, content_range: Option<String> },
    #[error("{url}: ignored the range request and would send all {size} bytes, more than the cap of {cap}")]
    RangeIgnored { url: String, size: u64, cap: u64 },
    #[error("{url}: bytes {start}..{end} are not a non-empty range inside the {size}-byte file")]
    BadRange { url: String, start: u64, end: u64, size: u64 },
    #[error("{url}: range of {len} bytes exceeds the cap of {cap}")]
    RangeTooLarge { url: String, len: u64, cap: u64 },
    #[error("{url}: missing header {name}")]
    MissingHeader { url: String, name: &'static str },
    #[error("{url}: header {name} has an invalid value")]
    BadHeader { url: String, name: &'static str },
    #[error("{url}: served commit {found}, not the pinned {expected}")]
    CommitMismatch { url: String, expected: String, found: String },
    #[error("{url}: file is {found} bytes, {expected} were expected")]
    SizeMismatch { url: String, expected: u64, found: u64 },
    #[error("{url}: content digest {found} differs from the expected {expected}")]
    DigestMismatch { url: String, expected: String, found: String },
    #[error("{url}: refused redirect to {location}: {reason}")]
    BadRedirect { url: String, location: String, reason: &'static str },
    #[error("{url}: more than {limit} redirects")]
    TooManyRedirects { url: String, limit: u32 },
    #[error("{url}: unexpected http {status}")]
    UnexpectedStatus { url: String, status: u16 },
    #[error("{url}: next-page link {link:?} is not on the endpoint")]
    ForeignLink { url: String, link: String },
    #[error("{url}: invalid json: {message}")]
    BadJson { url: String, message: String },
    #[error("{url}: {message}")]
    BadEntry { url: String, message: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the byte pipeline stopped: {reason}")]
    Pipeline { reason: &'static str },
}

fn suffix(message: &Option<String>) -> String {
    message.as_ref().map(|m| format!(" ({m})")).unwrap_or_default()
}

impl HubError {
    /// Whether a new attempt may succeed: transport failures (connect, reset, timeout) and bodies cut short.
    /// Statuses that are retried (408, 429, 5xx) are retried before an error is built and are not transient
    /// once they reach a caller.
    pub fn is_transient(&self) -> bool {
        matches!(self, HubError::Transport { .. } | HubError::BodyTooShort { .. })
    }

    /// Whether the error is an access state of a repository or file (missing, gated, unauthorised,
    /// forbidden): a terminal answer about the repository rather than a failure of the client or the server.
    pub fn is_access(&self) -> bool {
        matches!(
            self,
            HubError::RepoNotFound { .. }
                | HubError::RevisionNotFound { .. }
                | HubError::EntryNotFound { .. }
                | HubError::GatedRepo { .. }
                | HubError::Unauthorized { .. }
                | HubError::Forbidden { .. }
                | HubError::NotFound { .. }
        )
    }
}

/// `url` without query and fragment, for errors and logs.
pub(crate) fn shown(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}
