//! `modeltree-zoo`: trains the test zoo of small Llama decoders from scratch and reports on it.
//!
//! `generate` builds a [`plan::Plan`] for a size and seed, then trains, post-processes and writes every model as a
//! Hub-style repo with a `ground_truth.json` beside them (see [`zoo`]). `report` reads a zoo back and prints the
//! evidence that it is real (see [`report`]). The modules: [`tasks`] (procedural data), [`model`] (the Llama in
//! candle), [`train`] (AdamW loop), [`weights`] (casts, quantisation, merges, statistics), [`repo`] (safetensors,
//! configs, cards, PEFT adapters), [`int4`] (GPTQ and AWQ packing).

mod int4;
mod model;
mod plan;
mod repo;
mod report;
mod tasks;
mod train;
mod weights;
mod zoo;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};

/// Set in the re-executed child so it does not re-execute again.
const PINNED_ENV: &str = "MODELTREE_ZOO_PINNED";

#[derive(Debug, Parser)]
#[command(name = "modeltree-zoo", about = "Trains and reports on the modeltree test zoo")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum SizeArg {
    Small,
    Bench,
    Wide,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train and write a zoo into an empty directory.
    Generate {
        #[arg(long, value_enum)]
        size: SizeArg,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Models trained at once (each on one thread); the output does not depend on it.
        #[arg(long)]
        jobs: Option<usize>,
    },
    /// Print the evidence that a generated zoo is really trained.
    Report { dir: PathBuf },
    /// Build one node of a plan (what `generate` runs in each child process).
    #[command(hide = true)]
    Node {
        #[arg(long)]
        size: String,
        #[arg(long)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        index: usize,
        #[arg(long)]
        result: PathBuf,
    },
}

fn parse_size(s: &str) -> Result<plan::Size> {
    Ok(match s {
        "small" => plan::Size::Small,
        "bench" => plan::Size::Bench,
        "tiny" => plan::Size::Tiny,
        "wide" => plan::Size::Wide,
        other => bail!("unknown zoo size {other:?}"),
    })
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("modeltree-zoo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Re-runs this binary with candle pinned to one thread per process and glibc's allocator told to keep freed
/// memory. One gemm thread per model keeps results independent of the machine; the allocator settings stop
/// candle's many short-lived buffers from being mapped and unmapped on every op (a measured 1.6x speed-up). Both
/// are environment variables read at start-up, and setting them in-process would need `unsafe`.
fn reexec_pinned() -> Result<ExitCode> {
    let exe = std::env::current_exe().context("locating the current executable")?;
    let status = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(PINNED_ENV, "1")
        .env("RAYON_NUM_THREADS", "1")
        .env("MALLOC_MMAP_THRESHOLD_", "33554432")
        .env("MALLOC_TRIM_THRESHOLD_", "268435456")
        .status()
        .context("re-executing with a pinned environment")?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}

fn run() -> Result<ExitCode> {
    let cli = Cli::parse();
    if std::env::var_os(PINNED_ENV).is_none() {
        return reexec_pinned();
    }
    if std::env::var("RAYON_NUM_THREADS").ok().as_deref() != Some("1") {
        bail!("{PINNED_ENV} is set but RAYON_NUM_THREADS is not 1; unset {PINNED_ENV} to let the binary pin itself");
    }
    match cli.command {
        Command::Generate { size, out, seed, jobs } => {
            let size = match size {
                SizeArg::Small => plan::Size::Small,
                SizeArg::Bench => plan::Size::Bench,
                SizeArg::Wide => plan::Size::Wide,
            };
            let jobs = jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
            let t0 = Instant::now();
            let plan = plan::build(size, seed);
            eprintln!(
                "generating the {} zoo (seed {seed}): {} models, {} parameters each, {jobs} jobs -> {}",
                size.name(),
                plan.nodes.len(),
                plan.arch.parameter_count(),
                out.display()
            );
            let exe = std::env::current_exe().context("locating the current executable")?;
            let results = zoo::generate(&plan, &out, jobs, &zoo::Runner::Subprocess { exe })?;
            let train_s: f64 = results.iter().map(|r| r.seconds).sum();
            println!(
                "wrote {} models to {} in {:.1}s wall ({:.1}s of model work on {jobs} jobs)",
                plan.nodes.len(),
                out.display(),
                t0.elapsed().as_secs_f64(),
                train_s
            );
        }
        Command::Report { dir } => print!("{}", report::report(&dir)?),
        Command::Node { size, seed, out, index, result } => {
            zoo::run_node(&plan::build(parse_size(&size)?, seed), &out, index, &result)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
