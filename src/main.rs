//! `modeltree`: recovers the Model Tree of a set of models from their weights.
//!
//! The binary parses arguments, sets up tracing, runs one command and maps errors to exit codes. The work is
//! done by the library crates: `signature` reads weights, `lineage` recovers edges, `store` keeps everything.

mod audit;
mod commands;
mod config;
mod crawl;
mod daemon;
mod demo;
mod discover;
mod export;
mod meta;
mod output;
mod scan;
mod solve;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "modeltree", version, about = "Recovers the Model Tree of Hugging Face models from their weights")]
struct Cli {
    /// SQLite database (default: $MODELTREE_DB, else $XDG_DATA_HOME/modeltree/modeltree.db,
    /// else ~/.local/share/modeltree/modeltree.db).
    #[arg(long, global = true, env = "MODELTREE_DB")]
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
        /// The Hub's base URL (the real one is https://huggingface.co).
        #[arg(long, env = "HF_ENDPOINT", default_value = "https://huggingface.co")]
        endpoint: String,
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
        /// Share of each tensor's row blocks read (default: the configured `signature.row_fraction`).
        #[arg(long)]
        fetch_fraction: Option<f64>,
        /// Download whole files into the Hugging Face cache and sign them from disk.
        #[arg(long)]
        full: bool,
        /// Models signed at once.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Rate-limit tier whose budgets the crawler keeps to.
        #[arg(long, value_enum, default_value_t = TierArg::Anonymous)]
        tier: TierArg,
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
        #[arg(long, value_enum, default_value_t = export::Format::Json)]
        format: export::Format,
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
        fail_on: Option<audit::Severity>,
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
    Daemon(daemon::DaemonArgs),
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

#[derive(Clone, Copy, Debug, ValueEnum)]
enum TierArg {
    Anonymous,
    Free,
    Pro,
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
    // Precedence: defaults < file < environment (MODELTREE_…) < flags (the daemon's, applied here too).
    let loaded = config::Config::load(cli.config.as_deref()).and_then(|mut config| {
        config.overlay_env(|name| std::env::var(name).ok())?;
        if let Command::Daemon(args) = &cli.command {
            args.apply(&mut config)?;
        }
        Ok(config)
    });
    let config = match loaded {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    match &cli.command {
        // A service logs what it does by default; one-shot commands only warn.
        Command::Daemon(_) => init_tracing(config.daemon.log_format, "info"),
        _ => init_tracing(config::LogFormat::Text, "warn"),
    }
    // Precedence: flag or MODELTREE_DB (clap merges both, the flag wins) > file > platform default.
    let db = cli.db.clone().or_else(|| config.db.clone()).unwrap_or_else(default_db_path);
    let scheme = config.scheme;
    let result = match cli.command {
        Command::Scan { roots, method, json } => {
            commands::scan(&db, &roots, &scheme, method.map_or(config.method, Into::into), json)
        }
        Command::Crawl {
            endpoint,
            author,
            search,
            filter,
            limit,
            fetch_fraction,
            full,
            concurrency,
            tier,
            method,
            json,
        } => {
            let mut scheme = scheme;
            if let Some(f) = fetch_fraction {
                scheme.row_fraction = f;
            }
            let options = crawl::CrawlOptions {
                endpoint,
                author,
                search,
                filter,
                limit,
                full,
                concurrency,
                tier: match tier {
                    TierArg::Anonymous => hub::Tier::Anonymous,
                    TierArg::Free => hub::Tier::Free,
                    TierArg::Pro => hub::Tier::Pro,
                },
                requests_in_flight: 8,
                allow_non_loopback_redirects: true,
            };
            let method = method.map_or(config.method, Into::into);
            runtime().and_then(|rt| rt.block_on(commands::crawl(&db, &options, &scheme, method, json)))
        }
        Command::Hub { command: HubCommand::Serve { root, addr, page_size, fault_seed, fault_rate } } => {
            runtime().and_then(|rt| rt.block_on(commands::hub_serve(root, addr, page_size, fault_seed, fault_rate)))
        }
        Command::Tree { json } => commands::tree(&db, json),
        Command::Lineage { model, json } => commands::lineage(&db, &model, json),
        Command::Export { format, out } => commands::export(&db, format, out.as_deref()),
        Command::Audit { json, fail_on } => commands::audit(&db, json, fail_on),
        Command::Eval { truth, method, json } => {
            let methods = match method {
                EvalMethod::Stored => vec![None],
                EvalMethod::Default => vec![Some(lineage::Method::Default)],
                EvalMethod::Mother => vec![Some(lineage::Method::Mother)],
                EvalMethod::All => vec![None, Some(lineage::Method::Default), Some(lineage::Method::Mother)],
            };
            commands::eval(&db, &truth, &scheme, &methods, json)
        }
        Command::Daemon(args) => runtime().and_then(|rt| rt.block_on(daemon::command(&db, config, &args))),
        Command::Runs { json } => daemon::list_runs(&db, json),
        Command::Config { command: ConfigCommand::Default } => {
            print!("{}", config::DEFAULT_TOML);
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { keep } => {
            runtime().and_then(|rt| rt.block_on(demo::run(cli.db.as_deref(), keep.as_deref(), &scheme)))
        }
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Only the binary installs a subscriber. `MODELTREE_LOG` takes an env-filter directive (default `level`).
fn init_tracing(format: config::LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MODELTREE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        config::LogFormat::Text => builder.init(),
        config::LogFormat::Json => builder.json().flatten_event(true).init(),
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
