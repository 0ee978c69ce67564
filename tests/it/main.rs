//! The root integration tests, in one binary (one link, one process start, shared helpers): each module drives
//! the real `modeltree` binary or the application library against real SQLite files, the bundled zoo and `hubsim`
//! on loopback.
//!
//! - `scan`: rescans do no work, a killed scan resumes to the same store, malformed files are recorded;
//! - `crawl`: ranged and `--full` crawls of `hubsim` equal a scan, also under injected faults;
//! - `daemon`: the scheduled indexer: config precedence, incremental runs, signals, the crash test;
//! - `audit` and `export`: planted license conflicts and wrong declarations, every export format read back.

#[path = "../common/mod.rs"]
mod common;

mod audit;
mod crawl;
mod daemon;
mod export;
mod scan;
