//! modeltree's application layer: everything the binary does, as a library, over the `signature`, `hub`,
//! `store`, `lineage` and `audit` crates.
//!
//! Modules, in dependency order (each uses only those above it):
//! - [`schedule`], [`lock`], [`discover`], [`meta`], [`convert`], [`truth`]: leaves. A cron schedule; the
//!   single-instance lock; model folders under a root; repo metadata (card, `config.json`,
//!   `adapter_config.json`) read as untrusted data, one reader for scan and crawl; the one mapping between the
//!   store's records and the lineage and audit types; the one reader of a zoo's `ground_truth.json`.
//! - [`export`]: the export formats and the JSON shapes of edges, findings and scores.
//! - [`config`]: one table row per setting; defaults < file < environment < flags.
//! - [`run`]: the run bracket (lock, stale runs, begin, work, finish) every writer goes through.
//! - [`solve`]: lineage sync, batch with its input checkpoint and incremental ([`solve::Live`]).
//! - [`scan`], [`crawl`]: indexing local folders and a Hub endpoint; [`crawl::hub_client`] is the one Hub
//!   client factory.
//! - [`daemon`]: the scheduled, incremental crawler; [`daemon::run`] is its test seam.
//!
//! What this crate does not do: it builds no tokio runtime, installs no signal handler and no tracing
//! subscriber, and reads no configuration file or environment variable by itself (the binary hands it the
//! file's text and an environment lookup). Errors are `anyhow` chains with context, because every caller is the
//! binary or a test that prints them; single bad repos are data in the store, not errors.

pub mod config;
pub mod convert;
pub mod crawl;
pub mod daemon;
pub mod discover;
pub mod export;
pub mod lock;
pub mod meta;
pub mod run;
pub mod scan;
pub mod schedule;
pub mod solve;
pub mod truth;

/// A byte count for people: `512 B`, `1.5 KiB`, `3.2 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}
