//! `modeltree`: recovers the Model Tree of a set of models from their weights.
//!
//! The binary parses arguments, reads the configuration file, sets up tracing, builds the tokio runtime and the
//! signal handlers, runs one command and maps errors to exit codes. The work is done by the `indexer` library
//! over `signature`, `hub`, `store`, `lineage` and `audit`.
//!
//! Modules, in dependency order: `flags` (setting flags generated from the indexer's settings table), `print`
//! (text output), `commands` (one function per subcommand), `demo`; `main` ties them together.

mod commands;
mod demo;
mod flags;
mod print;

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use indexer::config::{Config, LogFormat};
use indexer::export::Format;

use crate::flags::SettingFlags;

#[derive(Debug, Parser)]
#[command(name = "modeltree", version, about = "Recovers the Model Tree of Hugging Face models from their weights")]
struct Cli {
    /// SQLite database (default: $MODELTREE_DB, else store.db of the settings file, else
    /// $XDG_DATA_HOME/modeltree/modeltree.db, else ~/.local/share/modeltree/modeltree.db).
    #[arg(long, global = true)]
    db: Option<PathBuf>,
    /// Settings file (see `modeltree config default`); flags and environment override it.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Index every model folder (a folder holding *.safetensors) under each ROOT, then recover lineage.
    Scan {
        #[arg(required = true)]
        roots: Vec<PathBuf>,
        /// Lineage method used for the solve after the scan (default: the configured one).
        #[arg(long, value_enum)]
        method: Option<MethodArg>,
        #[arg(long)]
        json: bool,
    },
    /// One pass over a Hub endpoint: list, sign new or changed repos from HTTP ranges, store, re-solve lineage.
    Crawl {
        #[arg(long)]
        author: Option<String>,
        #[arg(long)]
        search: Option<String>,
        /// A tag to filter on (repeatable).
        #[arg(long)]
        filter: Vec<String>,
        /// Most models listed.
        #[arg(long)]
        limit: Option<usize>,
        /// Download whole files into the Hugging Face cache and sign them from disk.
        #[arg(long)]
        full: bool,
        /// The endpoint, tier, concurrency and fetch fraction (default: the configured `[hub]` and `[signature]`).
        #[command(flatten)]
        settings: SettingFlags<false>,
        #[arg(long, value_enum)]
        method: Option<MethodArg>,
        #[arg(long)]
        json: bool,
    },
    /// A Hub-compatible server over a folder of Hub-style repos (tests, air-gapped mirrors).
    Hub {
        #[command(subcommand)]
        command: HubCommand,
    },
    /// Print the recovered forest.
    Tree {
        #[arg(long)]
        json: bool,
    },
    /// Print a model's ancestors and descendants.
    Lineage {
        model: String,
        #[arg(long)]
        json: bool,
    },
    /// Write the models and the recovered edges.
    Export {
        #[arg(long, value_parser = format_parser(), default_value = "json")]
        format: Format,
        /// Output file (written to a temporary file and renamed into place); standard output if absent.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Audit license inheritance along the recovered edges and compare declared base models with the weights.
    ///
    /// Exit status: 0, or 3 when a finding is at or above --fail-on (1 is an error, 2 a usage error).
    Audit {
        #[arg(long)]
        json: bool,
        /// Exit with status 3 if any finding has this severity or a higher one (default: never).
        #[arg(long, value_enum)]
        fail_on: Option<SeverityArg>,
    },
    /// Score the recovered lineage against a ground truth (a zoo's ground_truth.json).
    Eval {
        #[arg(long)]
        truth: PathBuf,
        /// `stored` scores the edges in the database; a method name re-solves from the stored signatures without
        /// writing; `all` prints every method side by side.
        #[arg(long, value_enum, default_value_t = EvalMethod::Stored)]
        method: EvalMethod,
        #[arg(long)]
        json: bool,
    },
    /// Keep the index current: incremental crawls on a cron schedule, recorded as runs; SIGTERM drains and exits 0.
    Daemon(DaemonArgs),
    /// List the recorded runs (scans, crawls, daemon runs), oldest first.
    Runs {
        #[arg(long)]
        json: bool,
    },
    /// Configuration: `modeltree config default` prints the documented defaults.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// The embedded default: index the bundled small zoo, print the recovered forest and its score.
    Demo {
        /// Keep the unpacked zoo and the database in this folder instead of a temporary one.
        #[arg(long)]
        keep: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum HubCommand {
    /// Serve DIR (`DIR/org/name/…`) with the Hub's routes, headers, pagination, quotas and errors.
    Serve {
        #[arg(long)]
        root: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: std::net::SocketAddr,
        /// Listing page size (the Hub's is 1000).
        #[arg(long, default_value_t = 1000)]
        page_size: usize,
        /// Seed for fault injection; with `--fault-rate` > 0, that share of requests fails (5xx, resets,
        /// truncated bodies, expired URLs), deterministically for the seed.
        #[arg(long, default_value_t = 0)]
        fault_seed: u64,
        #[arg(long, default_value_t = 0.0)]
        fault_rate: f64,
    },
}

/// `modeltree daemon` flags: each setting flag overrides its setting (see `config/modeltree.toml`).
#[derive(Clone, Debug, clap::Args)]
struct DaemonArgs {
    #[command(flatten)]
    settings: SettingFlags<true>,
    /// Run once now, then exit.
    #[arg(long)]
    once: bool,
    /// Run once at start, then follow the schedule.
    #[arg(long)]
    run_now: bool,
    /// Make the first run a full listing (finds vanished repos).
    #[arg(long)]
    full_listing: bool,
    /// Print the settings in effect (defaults < file < environment < flags) and exit.
    #[arg(long)]
    print_config: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum SeverityArg {
    Info,
    Warning,
    Error,
}

impl From<SeverityArg> for audit::Severity {
    fn from(s: SeverityArg) -> audit::Severity {
        match s {
            SeverityArg::Info => audit::Severity::Info,
            SeverityArg::Warning => audit::Severity::Warning,
            SeverityArg::Error => audit::Severity::Error,
        }
    }
}

/// `--format`: the indexer's format names.
fn format_parser() -> impl clap::builder::TypedValueParser<Value = Format> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(Format::ALL.map(Format::as_str))
        .try_map(|name| Format::parse(&name).ok_or("unknown format"))
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the documented default configuration.
    Default,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum MethodArg {
    Default,
    Mother,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum EvalMethod {
    Stored,
    Default,
    Mother,
    All,
}

impl From<MethodArg> for lineage::Method {
    fn from(m: MethodArg) -> lineage::Method {
        match m {
            MethodArg::Default => lineage::Method::Default,
            MethodArg::Mother => lineage::Method::Mother,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match load_config(&cli) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    match &cli.command {
        // A service logs what it does by default; one-shot commands only warn.
        Command::Daemon(_) => init_tracing(config.daemon.log_format, "info"),
        _ => init_tracing(LogFormat::Text, "warn"),
    }
    let db = config.db.clone().unwrap_or_else(default_db_path);
    let result = match cli.command {
        Command::Scan { roots, method, json } => {
            let config = with_method(config, method);
            commands::scan(&db, &roots, &config, json)
        }
        Command::Crawl { author, search, filter, limit, full, settings: _, method, json } => {
            let options = indexer::crawl::CrawlOptions { author, search, filter, limit, full, progress: true };
            let config = with_method(config, method);
            runtime().and_then(|rt| rt.block_on(commands::crawl(&db, &config, &options, json)))
        }
        Command::Hub { command: HubCommand::Serve { root, addr, page_size, fault_seed, fault_rate } } => {
            runtime().and_then(|rt| rt.block_on(commands::hub_serve(root, addr, page_size, fault_seed, fault_rate)))
        }
        Command::Tree { json } => commands::tree(&db, json),
        Command::Lineage { model, json } => commands::lineage(&db, &model, json),
        Command::Export { format, out } => commands::export(&db, format, out.as_deref()),
        Command::Audit { json, fail_on } => commands::audit(&db, json, fail_on.map(Into::into)),
        Command::Eval { truth, method, json } => {
            let methods = match method {
                EvalMethod::Stored => vec![None],
                EvalMethod::Default => vec![Some(lineage::Method::Default)],
                EvalMethod::Mother => vec![Some(lineage::Method::Mother)],
                EvalMethod::All => vec![None, Some(lineage::Method::Default), Some(lineage::Method::Mother)],
            };
            commands::eval(&db, &truth, &config, &methods, json)
        }
        Command::Daemon(args) => {
            let config = Config { db: Some(db), ..config };
            if args.print_config {
                print!("{}", config.to_toml());
                Ok(ExitCode::SUCCESS)
            } else {
                let options = indexer::daemon::RunOptions {
                    once: args.once,
                    run_now: args.run_now,
                    full_listing: args.full_listing,
                };
                runtime().and_then(|rt| rt.block_on(commands::daemon(&config, options)))
            }
        }
        Command::Runs { json } => commands::runs(&db, json),
        Command::Config { command: ConfigCommand::Default } => {
            print!("{}", indexer::config::DEFAULT_TOML);
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { keep } => runtime().and_then(|rt| rt.block_on(demo::run(&config, keep.as_deref()))),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The settings in effect: built-in defaults < `--config` file < environment (`MODELTREE_…`) < flags.
fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let mut config = match &cli.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            Config::from_file_text(path, &text)?
        }
        None => Config::default(),
    };
    config.overlay_env(|name| std::env::var(name).ok())?;
    if let Some(db) = &cli.db {
        config.db = Some(db.clone());
    }
    match &cli.command {
        Command::Daemon(args) => args.settings.apply(&mut config)?,
        Command::Crawl { settings, .. } => settings.apply(&mut config)?,
        _ => {}
    }
    Ok(config)
}

fn with_method(config: Config, method: Option<MethodArg>) -> Config {
    Config { method: method.map_or(config.method, Into::into), ..config }
}

/// Only the binary installs a subscriber. `MODELTREE_LOG` takes an env-filter directive (default `level`).
fn init_tracing(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MODELTREE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Only the binary builds a runtime, and only for the commands that do network IO.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(Into::into)
}

fn default_db_path() -> PathBuf {
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local").join("share")))
        .unwrap_or_else(|| PathBuf::from("."));
    data.join("modeltree").join("modeltree.db")
}
