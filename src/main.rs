//! `modeltree`: recovers the Model Tree of a set of models from their weights.
//!
//! The binary parses arguments, sets up tracing, runs one command and maps errors to exit codes. The work is
//! done by the library crates: `signature` reads weights, `lineage` recovers edges, `store` keeps everything.

mod commands;
mod config;
mod demo;
mod discover;
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
        #[arg(long, value_enum, default_value_t = ExportFormat::Json)]
        format: ExportFormat,
        /// Output file (written to a temporary file and renamed into place); standard output if absent.
        #[arg(long)]
        out: Option<PathBuf>,
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

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ExportFormat {
    Json,
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
    init_tracing();
    let config = match config::Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    // Precedence: flag or MODELTREE_DB (clap merges both, the flag wins) > file > platform default.
    let db = cli.db.clone().or_else(|| config.db.clone()).unwrap_or_else(default_db_path);
    let scheme = config.scheme;
    let result = match cli.command {
        Command::Scan { roots, method, json } => {
            commands::scan(&db, &roots, &scheme, method.map_or(config.method, Into::into), json)
        }
        Command::Tree { json } => commands::tree(&db, json),
        Command::Lineage { model, json } => commands::lineage(&db, &model, json),
        Command::Export { format: ExportFormat::Json, out } => commands::export_json(&db, out.as_deref()),
        Command::Eval { truth, method, json } => {
            let methods = match method {
                EvalMethod::Stored => vec![None],
                EvalMethod::Default => vec![Some(lineage::Method::Default)],
                EvalMethod::Mother => vec![Some(lineage::Method::Mother)],
                EvalMethod::All => vec![None, Some(lineage::Method::Default), Some(lineage::Method::Mother)],
            };
            commands::eval(&db, &truth, &scheme, &methods, json)
        }
        Command::Config { command: ConfigCommand::Default } => {
            print!("{}", config::DEFAULT_TOML);
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { keep } => demo::run(cli.db.as_deref(), keep.as_deref(), &scheme),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Only the binary installs a subscriber. `MODELTREE_LOG` takes an env-filter directive (default `warn`).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MODELTREE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

fn default_db_path() -> PathBuf {
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local").join("share")))
        .unwrap_or_else(|| PathBuf::from("."));
    data.join("modeltree").join("modeltree.db")
}
