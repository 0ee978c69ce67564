//! `demo`: the embedded default. Unpacks the bundled small zoo (really trained tiny Llama trees, see
//! `tests/zoo-small`), serves it as a Hub on loopback, crawls it, prints the recovered forest and its license
//! audit, and scores it against the zoo's ground truth (with `--keep DIR`, also writes the HTML report there).
//! No network and no setup: the zoo is compiled into the binary by `build.rs`.

use std::{path::Path, process::ExitCode};

use anyhow::{Context, bail};
use indexer::config::Config;
use indexer::convert::{audit_model, from_records, method_name};
use indexer::export::{self, Format};
use indexer::run::Writer;
use lineage::Method;

use crate::print;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/zoo_small.rs"));
}

/// Writes the embedded zoo under `dir`. Paths come from our own build, but are still checked to stay inside.
fn unpack(dir: &Path) -> anyhow::Result<()> {
    if embedded::ZOO_SMALL.is_empty() {
        bail!("this binary was built without tests/zoo-small; run scripts/zoo.sh --size small --out tests/zoo-small");
    }
    for (rel, data) in embedded::ZOO_SMALL {
        if rel.split('/').any(|part| part.is_empty() || part == "." || part == "..") {
            bail!("refusing embedded path {rel:?}");
        }
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, data).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Runs the demo on `config` (its database, if set, instead of one beside the zoo).
///
/// # Errors
/// When the zoo cannot be unpacked or served, or the crawl fails.
pub async fn run(config: &Config, keep: Option<&Path>) -> anyhow::Result<ExitCode> {
    let tmp = tempfile::tempdir().context("cannot create a temporary folder")?;
    let work = keep.unwrap_or(tmp.path());
    let zoo = work.join("zoo");
    unpack(&zoo)?;
    let db_path = config.db.clone().unwrap_or_else(|| work.join("demo.db"));
    println!(
        "modeltree demo: {} files of the bundled small zoo unpacked to {}",
        embedded::ZOO_SMALL.len(),
        zoo.display()
    );

    // The zoo is served by the Hub-compatible server on loopback and crawled like the real Hub, reading only
    // the row blocks the default fetch fraction selects.
    let server = hubsim::spawn(hubsim::ServerConfig::new(&zoo)).await.context("cannot start the loopback Hub")?;
    println!("serving it as a Hub on {}", server.url());
    let mut config = config.clone();
    config.hub.endpoint = server.url();
    config.method = Method::Default;
    let mut writer = Writer::open(&db_path)?;
    let started = std::time::Instant::now();
    let stats = indexer::crawl::crawl(&mut writer, &config, &indexer::crawl::CrawlOptions::default()).await;
    server.shutdown().await;
    let stats = stats?;
    println!("crawled into {} in {:.1} s:", db_path.display(), started.elapsed().as_secs_f64());
    println!("{}\n", print::crawl_summary(&stats));

    let store = writer.store();
    let ids: Vec<String> = store.models()?.into_iter().map(|m| m.record.id).collect();
    let edges = from_records(&store.current_edges()?);
    println!("recovered forest (relation, confidence, evidence):");
    print!("{}", print::forest(&ids, &edges));
    let models: Vec<audit::Model> = store.models()?.iter().map(audit_model).collect();
    println!("\nlicense and declaration audit of the recovered edges:");
    print!("{}", print::findings(&audit::audit(&models, &edges)));
    let truth = indexer::truth::read(&zoo.join("ground_truth.json"))?;
    let mut rows = Vec::new();
    for method in [Method::Default, Method::Mother] {
        let recovery = indexer::solve::recover(store, &config.scheme, method)?;
        rows.push((method_name(method).to_owned(), lineage::eval::score(&truth.lineage, &recovery)));
    }
    println!("\nscore against the zoo's ground truth:");
    print!("{}", print::score_table(&rows));
    if let Some(dir) = keep {
        let report = dir.join("report.html");
        export::write(store, Format::Html, &report)?;
        println!(
            "\nkept: zoo in {}, database in {}, HTML report {}",
            zoo.display(),
            db_path.display(),
            report.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
