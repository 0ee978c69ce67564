//! `hubsim`: a server that speaks the Hugging Face Hub's HTTP API over a folder of repos.
//!
//! The real Hub cannot be reached from tests (or from an air-gapped site), so this crate serves a folder laid out
//! like the Hub (`root/org/name/{config.json, README.md, *.safetensors, …}`) with the Hub's routes, JSON shapes,
//! headers, errors, pagination and rate limits, faithfully enough that the official Python client
//! (`huggingface_hub`) works against it unchanged (`scripts/hf-fidelity.sh` checks that).
//!
//! How the pieces connect:
//! - [`ServerConfig`] (plain struct with Hub defaults) → [`Server::bind`] binds two listeners, the Hub (API and
//!   `/resolve/`) and its CDN (signed LFS URLs), and scans the root into an index (`index`: commit shas, git and
//!   LFS ids, card data, tags, safetensors parameter counts).
//! - [`Server::run`] / [`serve`] serve until a shutdown future completes; [`spawn`] runs in the background and
//!   returns a [`Handle`] with the request log, the early-request list, `rescan` and `shutdown`, for tests.
//! - Each request is rate limited per bucket (`limits`), may draw a seeded fault (`faults`: 5xx, reset or truncated
//!   bodies, slow headers, expired CDN URLs, 429 storms), and is answered by the routes in `server` using the JSON
//!   builders in `api`.
//!
//! Deliberate limits: one revision per repo (`main` = the current commit; older commits are gone after a rescan),
//! models only (no datasets or spaces), no uploads, downloads/likes are 0, and multi-range requests get the full
//! body (200) as the Hub's storage does.

mod api;
mod body;
mod card;
mod config;
mod faults;
mod index;
mod limits;
mod safetensors;
mod server;
mod wire;

pub use config::{FaultConfig, FaultScope, Limits, QuotaConfig, ServerConfig, Storm};
pub use faults::Fault;
pub use index::ScanReport;
pub use limits::Bucket;
pub use server::{Handle, LoggedRequest, ServeError, Server, serve, spawn};
