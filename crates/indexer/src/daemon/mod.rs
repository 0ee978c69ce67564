//! The daemon: keeps a lineage index of a Hub current, on a schedule, across restarts.
//!
//! [`run`] is the whole daemon and its test seam: it takes the configuration and the shutdown as a future (the
//! binary passes SIGTERM/SIGINT, tests pass whatever they like and run it under paused tokio time). It opens the
//! database through the run bracket ([`crate::run::Writer`]: single-instance lock, stale runs marked
//! interrupted), starts the optional status endpoint ([`status`]) and then loops on a closed [`Event`] enum: the
//! schedule fires, a run ([`cycle`]) starts and is recorded in the store, or a stop is requested. On a stop, the
//! run in flight gets `daemon.shutdown_deadline` to finish the repos it has started (draining); past that they are
//! dropped, which loses nothing because each repo is stored in one transaction and the listing checkpoint only
//! moves when a run completes. Either way the run is recorded and `run` returns `Ok`.
//!
//! Time: the schedule is read on tokio's clock anchored to the wall clock at start (never behind the wall clock),
//! so under paused time a day of schedule passes in an instant, and in production the two agree.

mod cycle;
pub mod status;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Local};
use store::{RunKind, RunStatus, Store, WalCheckpoint};
use tokio::sync::watch;

pub use cycle::CycleStats;

use crate::config::Config;
use crate::crawl::hub_client;
use crate::run::{Report, Writer};
use crate::solve::Live;

/// How [`run`] behaves beyond the configuration.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunOptions {
    /// Run once now, then return.
    pub once: bool,
    /// Run once at start, then follow the schedule.
    pub run_now: bool,
    /// Make the first run a full listing (finds vanished repos).
    pub full_listing: bool,
}

/// The closed set of things the loop reacts to.
#[derive(Debug)]
enum Event {
    /// The schedule fired (or a run was asked for at start).
    Due,
    /// SIGTERM/SIGINT, or the test's shutdown future.
    Stop,
}

/// How one run ended, as recorded.
#[derive(Debug)]
enum Outcome {
    /// The cycle returned (complete, or stopped early after draining).
    Finished(CycleStats),
    /// The drain deadline passed with repos still in flight; they were dropped.
    Aborted,
}

impl Report for Outcome {
    fn status(&self) -> RunStatus {
        match self {
            Outcome::Finished(stats) if !stats.stopped => RunStatus::Ok,
            _ => RunStatus::Interrupted,
        }
    }

    fn stats_json(&self) -> serde_json::Value {
        match self {
            Outcome::Finished(stats) => stats.to_json(),
            Outcome::Aborted => serde_json::json!({ "aborted_after_deadline": true }),
        }
    }
}

/// The schedule's clock: tokio's, anchored to the wall clock at start. Never behind the wall clock, so a
/// suspended machine does not run late; under paused tokio time it moves only when the test's time does.
#[derive(Debug)]
struct Clock {
    wall: DateTime<Local>,
    start: tokio::time::Instant,
}

impl Clock {
    fn new() -> Clock {
        Clock { wall: Local::now(), start: tokio::time::Instant::now() }
    }

    fn now(&self) -> DateTime<Local> {
        let elapsed = chrono::Duration::from_std(self.start.elapsed()).unwrap_or(chrono::Duration::MAX);
        let derived = self.wall.checked_add_signed(elapsed).unwrap_or(self.wall);
        derived.max(Local::now())
    }
}

/// Runs the daemon until `shutdown` completes (or after one run with `options.once`).
///
/// # Errors
/// When the lock is held by another process, the store cannot be opened, the Hub client cannot be set up, or
/// the status endpoint cannot bind. A failing run is recorded as `failed` and the daemon goes on.
pub async fn run(config: &Config, options: RunOptions, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let db = config.db.as_deref().context("no database path in the configuration")?;
    let mut writer = Writer::open(db)?;
    let client = hub_client(&config.hub)?;
    let metrics = Arc::new(status::Metrics::default());
    metrics.models_in_store.store(writer.store().models().map_or(0, |m| m.len() as i64), Ordering::Relaxed);
    let (stop_status, stop_rx) = watch::channel(false);
    let status_task = match config.daemon.status_addr {
        Some(addr) => {
            let listener = status::bind(addr, config.daemon.allow_non_loopback_status).await?;
            let local = listener.local_addr().context("status endpoint address")?;
            tracing::info!(addr = %local, "status endpoint on /metrics and /healthz");
            Some(tokio::spawn(status::serve(listener, Arc::clone(&metrics), stop_rx)))
        }
        None => None,
    };
    tracing::info!(
        db = %db.display(),
        lock = %writer.lock_path().display(),
        endpoint = %config.hub.endpoint,
        schedule = config.daemon.schedule.source(),
        "daemon started"
    );

    tokio::pin!(shutdown);
    // Kept for the life of the process: each run re-solves only the families its models touched (the first run
    // of a process builds the index from the store once).
    let mut live = Live::new(&config.scheme, config.method);
    let clock = Clock::new();
    let mut fired: Option<DateTime<Local>> = None;
    let env = cycle::Env { client: &client, config, metrics: &metrics };
    let mut stopping = false;
    let mut first = true;
    let mut full_listing = options.full_listing;
    while !stopping {
        let event = if first && (options.once || options.run_now) {
            Event::Due
        } else {
            // Never the same firing twice, whichever of the two clocks `now` came from.
            let now = clock.now();
            let from = fired.map_or(now, |fired| now.max(fired));
            let Some(next) = config.daemon.schedule.next_after(&from) else {
                tracing::error!("the schedule has no further firing; stopping");
                break;
            };
            let wait = (next - now).to_std().unwrap_or(Duration::ZERO);
            tracing::debug!(next = %next.to_rfc3339(), "next run");
            tokio::select! {
                () = tokio::time::sleep(wait) => {
                    fired = Some(next);
                    Event::Due
                }
                () = &mut shutdown => Event::Stop,
            }
        };
        first = false;
        match event {
            Event::Stop => stopping = true,
            Event::Due => {
                let stopped = one_run(&mut writer, &mut live, &env, full_listing, shutdown.as_mut()).await?;
                full_listing = false;
                stopping = stopped || options.once;
            }
        }
    }
    if let Err(e) = writer.store().wal_checkpoint(WalCheckpoint::Truncate) {
        tracing::warn!(error = %e, "wal checkpoint at exit failed");
    }
    let _ = stop_status.send(true);
    if let Some(task) = status_task {
        let _ = task.await;
    }
    tracing::info!("daemon stopped");
    drop(writer);
    Ok(())
}

/// One recorded run. Returns whether a stop was requested meanwhile.
async fn one_run(
    writer: &mut Writer,
    live: &mut Live,
    env: &cycle::Env<'_>,
    full_listing: bool,
    mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> anyhow::Result<bool> {
    let cycle::Env { client, config, metrics } = *env;
    let run = writer.begin(RunKind::Daemon)?;
    metrics.running.store(true, Ordering::Relaxed);
    let stop = AtomicBool::new(false);
    tracing::info!(run = %run, "run started");
    let started = tokio::time::Instant::now();
    let result = {
        let cycle = cycle::run(writer.store(), live, env, run, full_listing, &stop);
        tokio::pin!(cycle);
        tokio::select! {
            result = &mut cycle => result.map(Outcome::Finished),
            () = &mut shutdown => {
                stop.store(true, Ordering::SeqCst);
                let deadline = config.daemon.shutdown_deadline;
                let in_flight = metrics.models_in_flight.load(Ordering::Relaxed);
                tracing::info!(deadline = ?deadline, models_in_flight = in_flight, "draining the run in flight");
                match tokio::time::timeout(deadline, &mut cycle).await {
                    Ok(result) => result.map(Outcome::Finished),
                    Err(_) => Ok(Outcome::Aborted),
                }
            }
        }
    };
    metrics.models_in_flight.store(0, Ordering::Relaxed);
    let stopped = stop.load(Ordering::SeqCst);
    metrics.set_requests(&client.stats());
    let status = writer.finish(run, &result)?;
    let stats_text = match &result {
        Ok(outcome) => outcome.stats_json().to_string(),
        Err(err) => format!("{err:#}"),
    };
    let now = chrono::Utc::now().timestamp();
    let store = writer.store();
    metrics.last_run_timestamp.store(now, Ordering::Relaxed);
    metrics.running.store(false, Ordering::Relaxed);
    metrics.models_in_store.store(store.models().map_or(0, |m| m.len() as i64), Ordering::Relaxed);
    let seconds = started.elapsed().as_secs_f64();
    match status {
        RunStatus::Ok => {
            metrics.runs_ok.fetch_add(1, Ordering::Relaxed);
            metrics.last_success_timestamp.store(now, Ordering::Relaxed);
            tracing::info!(run = %run, seconds, stats = %stats_text, "run finished");
            write_exports(store, config);
        }
        RunStatus::Failed => {
            metrics.runs_failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(run = %run, seconds, error = %stats_text, "run failed");
        }
        _ => {
            metrics.runs_interrupted.fetch_add(1, Ordering::Relaxed);
            let aborted = matches!(result, Ok(Outcome::Aborted));
            tracing::warn!(run = %run, seconds, aborted, stats = %stats_text, "run interrupted by a stop request");
        }
    }
    if let Err(e) = store.wal_checkpoint(WalCheckpoint::Passive) {
        tracing::warn!(error = %e, "wal checkpoint failed");
    }
    Ok(stopped)
}

/// Writes the configured exports from the store the daemon holds. A failing export is logged, not fatal: the
/// run it follows is already recorded.
fn write_exports(store: &Store, config: &Config) {
    for export in &config.exports {
        if let Err(e) = crate::export::write(store, export.format, &export.path) {
            tracing::error!(path = %export.path.display(), error = %format!("{e:#}"), "export failed");
        }
    }
}
