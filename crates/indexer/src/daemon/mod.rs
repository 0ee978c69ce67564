//! `modeltree daemon`: keeps a lineage index of a Hub current, on a schedule, across restarts.
//!
//! [`command`] is what `main` calls: it resolves the configuration (flags on top of what `main` loaded), installs
//! the SIGTERM/SIGINT handlers and hands over to [`run`], the test seam, which takes the shutdown as a future.
//! [`run`] takes the single-instance lock ([`lock`]), marks runs left `running` by a dead process as interrupted,
//! starts the optional status endpoint ([`status`]) and then loops on a closed [`Event`] enum: the schedule
//! ([`schedule`]) fires, a run ([`cycle`]) starts and is recorded in the store, or a stop is requested. On a
//! stop, the run in flight gets `daemon.shutdown_deadline` to finish the repos it has started (draining); past
//! that they are dropped, which loses nothing because each repo is stored in one transaction and the listing
//! checkpoint only moves when a run completes. Either way the run is recorded and the process exits 0.

mod cycle;
pub(crate) mod lock;
pub mod schedule;
mod status;

use std::future::Future;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use hub::{HubClient, HubConfig};
use store::{RunKind, RunStatus, Store, WalCheckpoint};
use tokio::sync::watch;

use crate::commands;
use crate::config::{Config, Export};

/// `modeltree daemon` flags; each overrides its setting (see `config/modeltree.toml`).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct DaemonArgs {
    /// The Hub's base URL (hub.endpoint).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Cron line: 5 fields (crontab), or 6/7 with seconds first (daemon.schedule).
    #[arg(long)]
    pub schedule: Option<String>,
    /// Loopback ip:port for /metrics and /healthz (daemon.status_addr).
    #[arg(long)]
    pub status_addr: Option<String>,
    /// How long in-flight work may take to finish after SIGTERM, e.g. 30s (daemon.shutdown_deadline).
    #[arg(long)]
    pub shutdown_deadline: Option<String>,
    /// text or json (daemon.log_format).
    #[arg(long)]
    pub log_format: Option<String>,
    /// Models signed at once (hub.concurrency).
    #[arg(long)]
    pub concurrency: Option<String>,
    /// Share of each tensor's rows read (signature.row_fraction).
    #[arg(long)]
    pub fetch_fraction: Option<String>,
    /// anonymous, free or pro (hub.tier).
    #[arg(long)]
    pub tier: Option<String>,
    /// Follow this author (repeatable; filters.authors).
    #[arg(long)]
    pub author: Vec<String>,
    /// Require this tag (repeatable; filters.tags).
    #[arg(long)]
    pub tag: Vec<String>,
    /// Listing overlap before the checkpoint, e.g. 1h (daemon.overlap).
    #[arg(long)]
    pub overlap: Option<String>,
    /// A full listing every N runs (daemon.full_listing_every).
    #[arg(long)]
    pub full_listing_every: Option<String>,
    /// Run once now, then exit.
    #[arg(long)]
    pub once: bool,
    /// Run once at start, then follow the schedule.
    #[arg(long)]
    pub run_now: bool,
    /// Make the first run a full listing (finds vanished repos).
    #[arg(long)]
    pub full_listing: bool,
    /// Print the settings in effect (defaults < file < environment < flags) and exit.
    #[arg(long)]
    pub print_config: bool,
}

impl DaemonArgs {
    /// Applies the flags on top of `config` (which already holds defaults, file and environment).
    ///
    /// # Errors
    /// For an invalid flag value (the message names the flag).
    pub fn apply(&self, config: &mut Config) -> anyhow::Result<()> {
        let single = [
            ("hub", "endpoint", "--endpoint", &self.endpoint),
            ("daemon", "schedule", "--schedule", &self.schedule),
            ("daemon", "status_addr", "--status-addr", &self.status_addr),
            ("daemon", "shutdown_deadline", "--shutdown-deadline", &self.shutdown_deadline),
            ("daemon", "log_format", "--log-format", &self.log_format),
            ("hub", "concurrency", "--concurrency", &self.concurrency),
            ("signature", "row_fraction", "--fetch-fraction", &self.fetch_fraction),
            ("hub", "tier", "--tier", &self.tier),
            ("daemon", "overlap", "--overlap", &self.overlap),
            ("daemon", "full_listing_every", "--full-listing-every", &self.full_listing_every),
        ];
        for (section, key, flag, value) in single {
            if let Some(value) = value {
                config.set_text(section, key, value).with_context(|| flag.to_string())?;
            }
        }
        if !self.author.is_empty() {
            config.filters.authors = self.author.clone();
        }
        if !self.tag.is_empty() {
            config.filters.tags = self.tag.clone();
        }
        Ok(())
    }
}

/// How [`run`] behaves beyond the configuration.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunOptions {
    pub once: bool,
    pub run_now: bool,
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

/// `modeltree daemon`: signal handlers, then [`run`].
///
/// # Errors
/// As [`run`], or when the signal handlers cannot be installed.
pub async fn command(db: &Path, config: Config, args: &DaemonArgs) -> anyhow::Result<ExitCode> {
    if args.print_config {
        let mut config = config;
        config.db = Some(db.to_path_buf());
        print!("{}", config.to_toml());
        return Ok(ExitCode::SUCCESS);
    }
    // Installed before anything slow so that an early SIGTERM is a clean stop, not the default kill.
    let shutdown = shutdown_signal()?;
    let options = RunOptions { once: args.once, run_now: args.run_now, full_listing: args.full_listing };
    run(db, &config, options, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

/// A future that completes on the first SIGTERM or SIGINT.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "stop requested");
    })
}

/// Runs the daemon until `shutdown` completes (or after one run with `options.once`).
///
/// # Errors
/// When the lock is held by another process, the store cannot be opened, the Hub client cannot be set up, or
/// the status endpoint cannot bind. A failing run is recorded as `failed` and the daemon goes on.
pub async fn run(
    db: &Path,
    config: &Config,
    options: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    if let Some(parent) = db.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let lock = lock::InstanceLock::acquire(db)?;
    let mut store = commands::open_store(db)?;
    let stale = store.interrupt_stale_runs().context("cannot mark stale runs")?;
    if stale > 0 {
        tracing::warn!(runs = stale, "runs left running by a process that died are now marked interrupted");
    }
    let client = hub_client(config)?;
    let metrics = Arc::new(status::Metrics::default());
    metrics.models_in_store.store(store.models().map_or(0, |m| m.len() as i64), Ordering::Relaxed);
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
        lock = %lock.path().display(),
        endpoint = %config.hub.endpoint,
        schedule = config.daemon.schedule.source(),
        "daemon started"
    );

    tokio::pin!(shutdown);
    // Kept for the life of the process: each run re-solves only the families its models touched (the first run
    // of a process builds the index from the store once).
    let mut live = crate::solve::Live::new(&config.scheme, config.method);
    let env = cycle::Env { client: &client, config, metrics: &metrics };
    let mut stopping = false;
    let mut first = true;
    let mut full_listing = options.full_listing;
    while !stopping {
        let event = if first && (options.once || options.run_now) {
            Event::Due
        } else {
            let now = chrono::Local::now();
            let Some(next) = config.daemon.schedule.next_after(&now) else {
                tracing::error!("the schedule has no further firing; stopping");
                break;
            };
            let wait = (next - now).to_std().unwrap_or(Duration::ZERO);
            tracing::debug!(next = %next.to_rfc3339(), "next run");
            tokio::select! {
                () = tokio::time::sleep(wait) => Event::Due,
                () = &mut shutdown => Event::Stop,
            }
        };
        first = false;
        match event {
            Event::Stop => stopping = true,
            Event::Due => {
                let stopped = one_run(&mut store, &mut live, &env, db, full_listing, shutdown.as_mut()).await?;
                full_listing = false;
                stopping = stopped || options.once;
            }
        }
    }
    if let Err(e) = store.wal_checkpoint(WalCheckpoint::Truncate) {
        tracing::warn!(error = %e, "wal checkpoint at exit failed");
    }
    let _ = stop_status.send(true);
    if let Some(task) = status_task {
        let _ = task.await;
    }
    tracing::info!("daemon stopped");
    drop(lock);
    Ok(())
}

/// One recorded run. Returns whether a stop was requested meanwhile.
async fn one_run(
    store: &mut Store,
    live: &mut crate::solve::Live,
    env: &cycle::Env<'_>,
    db: &Path,
    full_listing: bool,
    mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> anyhow::Result<bool> {
    let cycle::Env { client, config, metrics } = *env;
    let run = store.begin_run(RunKind::Daemon).context("cannot start a run")?;
    metrics.running.store(true, Ordering::Relaxed);
    let stop = AtomicBool::new(false);
    tracing::info!(run = %run, "run started");
    let started = std::time::Instant::now();
    let (result, aborted) = {
        let cycle = cycle::run(store, live, env, run, full_listing, &stop);
        tokio::pin!(cycle);
        tokio::select! {
            result = &mut cycle => (Some(result), false),
            () = &mut shutdown => {
                stop.store(true, Ordering::SeqCst);
                let deadline = config.daemon.shutdown_deadline;
                tracing::info!(deadline = ?deadline, "draining the run in flight");
                match tokio::time::timeout(deadline, &mut cycle).await {
                    Ok(result) => (Some(result), false),
                    Err(_) => (None, true),
                }
            }
        }
    };
    let stopped = stop.load(Ordering::SeqCst);
    metrics.set_requests(&client.stats());
    let (status, stats_json) = match &result {
        Some(Ok(stats)) if !stats.stopped => (RunStatus::Ok, Some(stats.to_json())),
        Some(Ok(stats)) => (RunStatus::Interrupted, Some(stats.to_json())),
        Some(Err(err)) => (RunStatus::Failed, Some(serde_json::json!({ "error": format!("{err:#}") }))),
        None => (RunStatus::Interrupted, Some(serde_json::json!({ "aborted_after_deadline": true }))),
    };
    let stats_text = stats_json.map(|j| j.to_string());
    store.finish_run(run, status, stats_text.as_deref()).context("cannot finish the run")?;
    let now = chrono::Utc::now().timestamp();
    metrics.last_run_timestamp.store(now, Ordering::Relaxed);
    metrics.running.store(false, Ordering::Relaxed);
    metrics.models_in_store.store(store.models().map_or(0, |m| m.len() as i64), Ordering::Relaxed);
    let seconds = started.elapsed().as_secs_f64();
    match status {
        RunStatus::Ok => {
            metrics.runs_ok.fetch_add(1, Ordering::Relaxed);
            metrics.last_success_timestamp.store(now, Ordering::Relaxed);
            tracing::info!(run = %run, seconds, stats = stats_text.as_deref().unwrap_or_default(), "run finished");
            for export in &config.exports {
                if let Err(e) = write_export(db, export) {
                    tracing::error!(path = %export.path.display(), error = %format!("{e:#}"), "export failed");
                }
            }
        }
        RunStatus::Failed => {
            metrics.runs_failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(run = %run, seconds, stats = stats_text.as_deref().unwrap_or_default(), "run failed");
        }
        _ => {
            metrics.runs_interrupted.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(run = %run, seconds, aborted, "run interrupted by a stop request");
        }
    }
    if let Err(e) = store.wal_checkpoint(WalCheckpoint::Passive) {
        tracing::warn!(error = %e, "wal checkpoint failed");
    }
    Ok(stopped)
}

fn hub_client(config: &Config) -> anyhow::Result<HubClient> {
    let token = match &config.hub.token_file {
        Some(path) => {
            let path = path.to_string_lossy().into_owned();
            hub::Token::from_lookup(|name| (name == "HF_TOKEN_PATH").then(|| path.clone()))
        }
        None => hub::Token::from_env(),
    }
    .context("cannot read the Hugging Face token")?;
    tracing::info!(token = token.is_some(), "hub credentials");
    let mut hub = HubConfig::new(config.hub.endpoint.clone());
    hub.token = token;
    hub.tier = config.hub.tier;
    hub.concurrency = config.hub.requests_in_flight.max(1);
    // Signed CDN URLs live on other hosts in production.
    hub.allow_non_loopback_redirects = true;
    HubClient::new(hub).context("cannot set up the Hub client")
}

/// Writes one configured export. The one place the daemon calls the export code, so new formats plug in here.
///
/// # Errors
/// When the export cannot be built or written.
fn write_export(db: &Path, export: &Export) -> anyhow::Result<()> {
    commands::export(db, export.format, Some(&export.path)).map(|_| ())
}

/// `modeltree runs`: every run, oldest first.
///
/// # Errors
/// When there is no database or it cannot be read.
pub fn list_runs(db: &Path, json: bool) -> anyhow::Result<ExitCode> {
    if !db.exists() {
        anyhow::bail!("no database at {} (pass --db)", db.display());
    }
    let store = Store::open(db).with_context(|| format!("cannot open the database {}", db.display()))?;
    let runs = store.runs().context("cannot read runs")?;
    if json {
        let rows: Vec<serde_json::Value> = runs
            .iter()
            .map(|r| {
                let stats: Option<serde_json::Value> =
                    r.stats_json.as_deref().and_then(|s| serde_json::from_str(s).ok());
                serde_json::json!({
                    "id": r.id.0, "kind": r.kind.as_str(), "status": r.status.as_str(),
                    "started_at": r.started_at, "finished_at": r.finished_at, "stats": stats,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!("{:>5}  {:<7}  {:<11}  {:<24}  {:<24}", "id", "kind", "status", "started", "finished");
        for r in &runs {
            println!(
                "{:>5}  {:<7}  {:<11}  {:<24}  {:<24}",
                r.id.0,
                r.kind.as_str(),
                r.status.as_str(),
                r.started_at,
                r.finished_at.as_deref().unwrap_or("-")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
