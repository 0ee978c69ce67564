//! One function per subcommand: call the indexer, print the result, choose the exit code.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context, bail};
use indexer::config::Config;
use indexer::convert::{audit_model, from_records, method_name};
use indexer::crawl::CrawlOptions;
use indexer::export::{self, Format};
use indexer::run::{Report, Writer};
use lineage::Method;
use store::Store;

use crate::print;

/// The exit status of `audit --fail-on` when a finding reaches the threshold (1 is an error, 2 a usage error).
pub const AUDIT_FAILED: u8 = 3;

/// Opens a database that must exist already (query commands never create one).
fn open_existing(db: &Path) -> anyhow::Result<Store> {
    if !db.exists() {
        bail!("no database at {} (run `modeltree scan` first, or pass --db)", db.display());
    }
    Store::open(db).with_context(|| format!("cannot open the database {}", db.display()))
}

pub fn scan(db: &Path, roots: &[PathBuf], config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let mut writer = Writer::open(db)?;
    let stats = indexer::scan::scan(&mut writer, roots, &config.scheme, config.method)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&stats.stats_json())?);
    } else {
        println!(
            "models: {} new, {} changed, {} unchanged, {} failed; {} read",
            stats.new,
            stats.changed,
            stats.unchanged,
            stats.failed,
            indexer::human_bytes(stats.bytes_read)
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn crawl(db: &Path, config: &Config, options: &CrawlOptions, json: bool) -> anyhow::Result<ExitCode> {
    let mut writer = Writer::open(db)?;
    let stats = indexer::crawl::crawl(&mut writer, config, options).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&stats.stats_json())?);
    } else {
        println!("{}", print::crawl_summary(&stats));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn hub_serve(
    root: PathBuf,
    addr: std::net::SocketAddr,
    page_size: usize,
    fault_seed: u64,
    fault_rate: f64,
) -> anyhow::Result<ExitCode> {
    if !(0.0..=1.0).contains(&fault_rate) {
        bail!("--fault-rate must be between 0 and 1");
    }
    let mut config = hubsim::ServerConfig::new(root);
    config.addr = addr;
    config.cdn_addr = std::net::SocketAddr::new(addr.ip(), 0);
    config.page_size = page_size.max(1);
    // Repos pushed into or deleted from the folder show up in the next listing (a mirror, the daemon's tests).
    config.rescan_on_list = true;
    // One knob for people; the share is split over the fault kinds the crawler must survive.
    config.faults = hubsim::FaultConfig {
        seed: fault_seed,
        p_5xx: fault_rate / 2.0,
        p_reset_mid_body: fault_rate / 6.0,
        p_truncate: fault_rate / 6.0,
        p_expire_url: fault_rate / 6.0,
        ..hubsim::FaultConfig::default()
    };
    let server = hubsim::Server::bind(config).await.context("cannot start the server")?;
    println!("serving on http://{} (CDN on {}); Ctrl-C stops", server.local_addr(), server.cdn_addr());
    server
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("the server failed")?;
    Ok(ExitCode::SUCCESS)
}

pub fn tree(db: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let store = open_existing(db)?;
    let ids: Vec<String> = store.models()?.into_iter().map(|m| m.record.id).collect();
    let edges = from_records(&store.current_edges()?);
    if json {
        println!("{}", serde_json::to_string_pretty(&export::edges_json(&edges))?);
    } else {
        print!("{}", print::forest(&ids, &edges));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn lineage(db: &Path, model: &str, json: bool) -> anyhow::Result<ExitCode> {
    let store = open_existing(db)?;
    let known = store.models()?.into_iter().any(|m| m.record.id == model);
    if !known {
        bail!("unknown model {model:?}");
    }
    let edges = from_records(&store.current_edges()?);
    let (ancestors, descendants) = print::relatives(model, &edges);
    if json {
        let v = serde_json::json!({
            "model": model,
            "ancestors": export::edges_json(&ancestors)["edges"],
            "descendants": export::edges_json(&descendants)["edges"],
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("{model}");
        for (title, edges, none) in
            [("ancestors", &ancestors, "(none among the models seen)"), ("descendants", &descendants, "(none)")]
        {
            println!("{title}:");
            if edges.is_empty() {
                println!("  {none}");
            }
            for e in edges {
                let (relation, source) = (e.relation.as_str(), e.source.as_str());
                println!("  {} ─{relation}→ {}  ({:.2}, {source})", e.parent, e.child, e.confidence);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn export(db: &Path, format: Format, out: Option<&Path>) -> anyhow::Result<ExitCode> {
    let store = open_existing(db)?;
    match out {
        Some(path) => export::write(&store, format, path)?,
        None => print!("{}", export::render(format, &export::Graph::from_store(&store)?)?),
    }
    Ok(ExitCode::SUCCESS)
}

pub fn audit(db: &Path, json: bool, fail_on: Option<audit::Severity>) -> anyhow::Result<ExitCode> {
    let store = open_existing(db)?;
    let models: Vec<audit::Model> = store.models()?.iter().map(audit_model).collect();
    let edges = from_records(&store.current_edges()?);
    let findings = audit::audit(&models, &edges);
    if json {
        let v: Vec<serde_json::Value> = findings.iter().map(export::finding_json).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", print::findings(&findings));
    }
    let failed = fail_on.is_some_and(|threshold| findings.iter().any(|f| f.severity >= threshold));
    Ok(if failed { ExitCode::from(AUDIT_FAILED) } else { ExitCode::SUCCESS })
}

/// Scores the stored lineage (`None`) or fresh solves with each method against a zoo's truth, and the audit on
/// the same edges when the truth says what it should find.
pub fn eval(
    db: &Path,
    truth_path: &Path,
    config: &Config,
    methods: &[Option<Method>],
    json: bool,
) -> anyhow::Result<ExitCode> {
    let truth = indexer::truth::read(truth_path)?;
    let store = open_existing(db)?;
    let audit_models: Vec<audit::Model> = store.models()?.iter().map(audit_model).collect();
    let mut rows = Vec::new();
    for method in methods {
        let (label, recovery) = match method {
            None => {
                let method = store.current_solve()?.map_or_else(|| "none".into(), |s| s.method);
                (format!("stored ({method})"), indexer::solve::stored(&store)?)
            }
            Some(m) => (method_name(*m).to_owned(), indexer::solve::recover(&store, &config.scheme, *m)?),
        };
        let audit_score = truth.audit.as_ref().map(|t| audit::score(t, &audit::audit(&audit_models, &recovery.edges)));
        rows.push((label, lineage::eval::score(&truth.lineage, &recovery), audit_score));
    }
    if json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|(label, s, a)| {
                let mut v = export::score_json(label, s);
                if let Some(a) = a {
                    v["audit"] = export::audit_score_json(a);
                }
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let scores: Vec<(String, lineage::eval::Score)> = rows.iter().map(|(l, s, _)| (l.clone(), s.clone())).collect();
        print!("{}", print::score_table(&scores));
        let audits: Vec<(String, audit::AuditScore)> =
            rows.iter().filter_map(|(l, _, a)| a.map(|a| (l.clone(), a))).collect();
        if !audits.is_empty() {
            print!("{}", print::audit_score_table(&audits));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `modeltree runs`: every run, oldest first.
pub fn runs(db: &Path, json: bool) -> anyhow::Result<ExitCode> {
    if !db.exists() {
        bail!("no database at {} (pass --db)", db.display());
    }
    let store = open_existing(db)?;
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
        print!("{}", print::runs_table(&runs));
    }
    Ok(ExitCode::SUCCESS)
}

/// `modeltree daemon`: signal handlers, then `indexer::daemon::run` until SIGTERM/SIGINT.
///
/// # Errors
/// As the daemon's `run`, or when the signal handlers cannot be installed.
pub async fn daemon(config: &Config, options: indexer::daemon::RunOptions) -> anyhow::Result<ExitCode> {
    // Installed before anything slow so that an early SIGTERM is a clean stop, not the default kill.
    let shutdown = shutdown_signal()?;
    indexer::daemon::run(config, options, shutdown).await?;
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
