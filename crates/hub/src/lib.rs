//! modeltree's Hugging Face Hub client: the project's only HTTP client (`hubsim` serves HTTP; it is test support).
//!
//! - [`HubClient`] (in `client`) owns one `reqwest` client, a per-bucket [`RateLimiter`] (the Hub's `api`
//!   and `resolvers` budgets over a window, plus what `RateLimit` and `Retry-After` announce), a global
//!   concurrency limit, retries with jittered backoff, and request/byte [`Stats`]. Its primitives are
//!   [`HubClient::list_models`] and [`HubClient::model_info`] on the JSON API ([`api`]), and
//!   [`HubClient::resolve`] (`HEAD` on a pinned resolve URL, redirect not followed),
//!   [`HubClient::read_range`] (one ranged `GET` on the signed CDN URL, checked `206`/`Content-Range`) and
//!   [`HubClient::get_small_file`] on files.
//! - [`remote`] signs a model from ranges alone: [`sign_remote_model`] wraps the signing engine's
//!   [`signature::Checkpoint`] and [`signature::SignPlan`] with ranged reads, so it gives the signature
//!   [`signature::sign_model_dir`] would give on the downloaded files, reading a few ranges per tensor.
//! - [`cache`] downloads whole files into the standard Hugging Face cache for `--full` mode.
//! - [`config`] holds [`HubConfig`], the redacted [`Token`] and the rate-limit [`Tier`]; [`ids`] the
//!   validated names ([`RepoId`], [`Commit`], [`Revision`], file names) that go into URLs and paths.
//!
//! Everything a server sends is untrusted: JSON is size-capped and parsed tolerantly, names are validated,
//! ranges and lengths are checked, redirects are vetted (and, in tests, kept on loopback), and the token goes
//! only to the endpoint's own origin and never into logs.
//!
//! **Invariant:** no SQL and no lineage logic here; the tokio runtime and the tracing subscriber belong to
//! the binary.

pub mod api;
pub mod cache;
mod client;
pub mod config;
pub mod error;
pub mod ids;
pub mod limiter;
pub mod remote;

pub use api::{CardData, Gated, Lfs, ListQuery, ModelConfig, ModelSummary, RepoInfo, Sibling};
pub use cache::{HfCache, cache_dir_from_env, download_to_cache};
pub use client::{HubClient, Kind, MAX_RANGE_LEN, MAX_REDIRECTS, Resolved, Stats};
pub use config::{HubConfig, HubSettings, Tier, Token, TokenError};
pub use error::HubError;
pub use ids::{Commit, RepoId, Revision, check_file_name};
pub use limiter::{Bucket, RateLimiter};
pub use remote::{RemoteError, RemoteFile, RemoteFileUsed, RemoteOptions, RemoteSigned, sign_remote_model};
pub use reqwest::Url;
