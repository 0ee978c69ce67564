//! The commands that read or write the store: `scan`, `tree`, `lineage`, `export`, `audit`, `eval`.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::ExitCode,
};

use anyhow::{Context, bail};
use lineage::{Edge, Method, Recovery};
use signature::Scheme;
use store::{RunKind, RunStatus, Store};

use crate::{audit, crawl, export, output, scan, solve};

pub fn open_store(db: &Path) -> anyhow::Result<Store> {
    if let Some(parent) = db.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    Store::open(db).with_context(|| format!("cannot open the database {}", db.display()))
}

/// Opens a database that must exist already (query commands never create one).
fn open_existing(db: &Path) -> anyhow::Result<Store> {
    if !db.exists() {
        bail!("no database at {} (run `modeltree scan` first, or pass --db)", db.display());
    }
    open_store(db)
}

pub fn scan(
    db: &Path,
    roots: &[std::path::PathBuf],
    scheme: &Scheme,
    method: Method,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut store = open_store(db)?;
    let stats = scan_into(&mut store, roots, scheme, method)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&stats.to_json())?);
    } else {
        println!(
            "models: {} new, {} changed, {} unchanged, {} failed; {} read",
            stats.new,
            stats.changed,
            stats.unchanged,
            stats.failed,
            output::bytes(stats.bytes_read)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Scans the roots, then re-solves lineage unless the last solve saw exactly the same models with the same method.
/// The solve's input is fingerprinted and checkpointed, so a scan killed between indexing and solving still
/// re-solves next time, and a scan that changed nothing does no work.
pub fn scan_into(
    store: &mut Store,
    roots: &[std::path::PathBuf],
    scheme: &Scheme,
    method: Method,
) -> anyhow::Result<scan::ScanStats> {
    // One writer per database, as for crawl and the daemon; a scan killed earlier left its run `running`.
    let _lock = crate::daemon::lock::InstanceLock::acquire(store.path())?;
    store.interrupt_stale_runs().context("cannot mark stale runs")?;
    let run = store.begin_run(RunKind::Scan).context("cannot start a run")?;
    let mut stats = scan::ScanStats::default();
    let result = (|| {
        for root in roots {
            scan::scan_root(store, root, scheme, &mut stats)?;
        }
        solve_if_needed(store, run, scheme, method)?;
        Ok::<_, anyhow::Error>(())
    })();
    let status = if result.is_ok() { RunStatus::Ok } else { RunStatus::Failed };
    store.finish_run(run, status, Some(&stats.to_json().to_string())).context("cannot finish the run")?;
    result.map(|()| stats)
}

/// Re-solves lineage unless the current edges were solved from exactly the indexed models, scheme and method
/// there are now. Returns the number of edges when it solved.
///
/// # Errors
/// When the store cannot be read or written.
pub fn solve_if_needed(
    store: &mut Store,
    run: store::RunId,
    scheme: &Scheme,
    method: Method,
) -> anyhow::Result<Option<usize>> {
    let input = solve_input_fingerprint(store, scheme, method)?;
    if store.get_checkpoint(SOLVED_INPUT).context("cannot read a checkpoint")?.as_deref() == Some(input.as_str()) {
        return Ok(None);
    }
    let n = solve::recover_and_store(store, run, scheme, method)?;
    store.set_checkpoint(SOLVED_INPUT, &input).context("cannot write a checkpoint")?;
    tracing::info!(edges = n, method = solve::method_name(method), "lineage solved");
    Ok(Some(n))
}

/// Checkpoint key: the fingerprint of the models, scheme and method the current edges were solved from.
pub const SOLVED_INPUT: &str = "lineage.solved_input";

pub fn solve_input_fingerprint(store: &Store, scheme: &Scheme, method: Method) -> anyhow::Result<String> {
    let models = store.models().context("cannot list models")?;
    Ok(fingerprint_of(&models, scheme, method))
}

/// [`solve_input_fingerprint`] of models already read.
pub fn fingerprint_of(models: &[store::StoredModel], scheme: &Scheme, method: Method) -> String {
    let mut models: Vec<(&str, &str, &str)> =
        models.iter().map(|m| (m.record.id.as_str(), m.record.revision.as_str(), m.status.as_str())).collect();
    models.sort_unstable();
    let mut hasher = blake3::Hasher::new();
    hasher.update(scheme.id().as_bytes());
    hasher.update(solve::method_name(method).as_bytes());
    for (id, revision, status) in &models {
        for part in [id, revision, status] {
            hasher.update(part.as_bytes());
            hasher.update(&[0]);
        }
    }
    hasher.finalize().to_hex().to_string()
}

pub async fn crawl(
    db: &Path,
    options: &crawl::CrawlOptions,
    scheme: &Scheme,
    method: Method,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut store = open_store(db)?;
    let stats = crawl::crawl(&mut store, options, scheme, method).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&stats.to_json())?);
    } else {
        println!("{}", stats.summary());
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn hub_serve(
    root: std::path::PathBuf,
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
    let edges = solve::from_records(&store.current_edges()?);
    if json {
        println!("{}", serde_json::to_string_pretty(&output::edges_json(&edges))?);
    } else {
        print!("{}", output::forest(&ids, &edges));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn lineage(db: &Path, model: &str, json: bool) -> anyhow::Result<ExitCode> {
    let store = open_existing(db)?;
    let known = store.models()?.into_iter().any(|m| m.record.id == model);
    if !known {
        bail!("unknown model {model:?}");
    }
    let edges = solve::from_records(&store.current_edges()?);
    let (ancestors, descendants) = output::relatives(model, &edges);
    if json {
        let v = serde_json::json!({
            "model": model,
            "ancestors": output::edges_json(&ancestors)["edges"],
            "descendants": output::edges_json(&descendants)["edges"],
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

pub fn export(db: &Path, format: export::Format, out: Option<&Path>) -> anyhow::Result<ExitCode> {
    let store = open_existing(db)?;
    let graph = export::Graph::from_store(&store)?;
    let text = export::render(format, &graph)?;
    match out {
        Some(path) => output::write_atomically(path, text.as_bytes())?,
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// The exit status of `audit --fail-on` when a finding reaches the threshold (1 is an error, 2 a usage error).
pub const AUDIT_FAILED: u8 = 3;

pub fn audit(db: &Path, json: bool, fail_on: Option<audit::Severity>) -> anyhow::Result<ExitCode> {
    let store = open_existing(db)?;
    let models: Vec<audit::Model> = store.models()?.iter().map(audit::Model::from).collect();
    let edges = solve::from_records(&store.current_edges()?);
    let findings = audit::audit(&models, &edges);
    if json {
        let v: Vec<serde_json::Value> = findings.iter().map(audit::Finding::to_json).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", audit::render_text(&findings));
    }
    let failed = fail_on.is_some_and(|threshold| findings.iter().any(|f| f.severity >= threshold));
    Ok(if failed { ExitCode::from(AUDIT_FAILED) } else { ExitCode::SUCCESS })
}

/// Reads a zoo's `ground_truth.json` (untrusted: malformed entries are an error, not a panic).
pub fn read_truth(path: &Path) -> anyhow::Result<Vec<lineage::eval::Truth>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let doc: serde_json::Value =
        serde_json::from_slice(&bytes).with_context(|| format!("{} is not JSON", path.display()))?;
    let Some(models) = doc.get("models").and_then(|m| m.as_array()) else {
        bail!("{}: no \"models\" array", path.display());
    };
    models
        .iter()
        .map(|m| {
            let model = m.get("model").and_then(|v| v.as_str()).context("a truth entry has no \"model\"")?;
            let relation = m.get("relation").and_then(|v| v.as_str()).context("a truth entry has no \"relation\"")?;
            let parents = m
                .get("parents")
                .and_then(|v| v.as_array())
                .map(|a| a.iter().filter_map(|p| p.as_str().map(str::to_owned)).collect())
                .unwrap_or_default();
            Ok(lineage::eval::Truth { model: model.to_owned(), parents, relation: relation.to_owned() })
        })
        .collect()
}

pub fn eval(
    db: &Path,
    truth_path: &Path,
    scheme: &Scheme,
    methods: &[Option<Method>],
    json: bool,
) -> anyhow::Result<ExitCode> {
    let truth = read_truth(truth_path)?;
    let audit_truth = audit::read_truth(truth_path)?;
    let store = open_existing(db)?;
    let stored = store.models()?;
    let ids: Vec<String> = stored.iter().map(|m| m.record.id.clone()).collect();
    let audit_models: Vec<audit::Model> = stored.iter().map(audit::Model::from).collect();
    let mut rows = Vec::new();
    for method in methods {
        let (label, recovery) = match method {
            None => {
                let edges = solve::from_records(&store.current_edges()?);
                let method = store.current_solve()?.map_or_else(|| "none".into(), |s| s.method);
                (format!("stored ({method})"), Recovery { families: families(&ids, &edges), edges })
            }
            Some(m) => (solve::method_name(*m).to_owned(), solve::recover(&store, scheme, *m)?),
        };
        // The audit is scored on the same edges, when the truth says what it should find.
        let audit_score = audit_truth.as_ref().map(|t| audit::score(t, &audit::audit(&audit_models, &recovery.edges)));
        rows.push((label, lineage::eval::score(&truth, &recovery), audit_score));
    }
    if json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|(label, s, a)| {
                let mut v = output::score_json(label, s);
                if let Some(a) = a {
                    v["audit"] = output::audit_score_json(a);
                }
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let scores: Vec<(String, lineage::eval::Score)> = rows.iter().map(|(l, s, _)| (l.clone(), s.clone())).collect();
        print!("{}", output::score_table(&scores));
        let audits: Vec<(String, audit::AuditScore)> =
            rows.iter().filter_map(|(l, _, a)| a.map(|a| (l.clone(), a))).collect();
        if !audits.is_empty() {
            print!("{}", output::audit_score_table(&audits));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Families (connected components) implied by a set of edges, singletons included.
pub fn families(ids: &[String], edges: &[Edge]) -> Vec<Vec<String>> {
    let mut parent: BTreeMap<&str, &str> = ids.iter().map(|id| (id.as_str(), id.as_str())).collect();
    for e in edges {
        parent.entry(&e.parent).or_insert(&e.parent);
        parent.entry(&e.child).or_insert(&e.child);
    }
    fn find<'a>(parent: &mut BTreeMap<&'a str, &'a str>, x: &'a str) -> &'a str {
        let mut root = x;
        while parent[root] != root {
            root = parent[root];
        }
        let mut cur = x;
        while parent[cur] != root {
            let next = parent[cur];
            parent.insert(cur, root);
            cur = next;
        }
        root
    }
    for e in edges {
        let (a, b) = (find(&mut parent, &e.parent), find(&mut parent, &e.child));
        if a != b {
            parent.insert(a.max(b), a.min(b));
        }
    }
    let keys: Vec<&str> = parent.keys().copied().collect();
    let mut groups: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for k in keys {
        let root = find(&mut parent, k);
        groups.entry(root).or_default().insert(k.to_owned());
    }
    groups.into_values().map(|g| g.into_iter().collect()).collect()
}
