//! `crawl`: one pass over a Hub endpoint. Lists models (newest changes first), skips repos whose commit and
//! signature scheme are already indexed, signs the others straight from HTTP ranges (or, with `--full`, from
//! files downloaded into the Hugging Face cache), stores each model in its own transaction, then re-solves
//! lineage when the indexed set changed. One bad repo is recorded and the crawl goes on.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use hub::{Commit, HubClient, ListQuery, RemoteFile, RemoteOptions, RepoId, Revision, Stats};
use indicatif::{ProgressBar, ProgressStyle};
use signature::{ModelSignature, Scheme};
use store::{FileRecord, ModelRecord, ModelStatus, RetryPolicy, RunKind, Store};

use crate::config::{Config, HubSettings};
use crate::run::{Report, Writer};
use crate::{human_bytes, meta, solve};

/// Card, config and adapter files larger than this are not read (real ones are a few KiB).
const MAX_SMALL_FILE: u64 = 1 << 20;
/// The Hub serves at most 1,000 models per listing page.
pub(crate) const PAGE_SIZE: u32 = 1000;

/// The one Hub client factory: `crawl`, the daemon and the demo build their client here from `[hub]`, so the
/// endpoint, token, tier and request limit mean the same for every command.
///
/// # Errors
/// When the token cannot be read or the endpoint is not a usable URL.
pub fn hub_client(settings: &HubSettings) -> anyhow::Result<HubClient> {
    let client = hub::HubSettings {
        endpoint: settings.endpoint.clone(),
        token_file: settings.token_file.clone(),
        tier: settings.tier,
        requests_in_flight: settings.requests_in_flight.max(1),
        // Signed CDN URLs live on other hosts in production.
        allow_non_loopback_redirects: true,
    };
    HubClient::from_settings(&client).context("cannot set up the Hub client")
}

/// What to crawl beyond the configuration: the listing's query and how to read.
#[derive(Clone, Debug, Default)]
pub struct CrawlOptions {
    pub author: Option<String>,
    pub search: Option<String>,
    pub filter: Vec<String>,
    /// Most models listed.
    pub limit: Option<usize>,
    /// Download whole files into the Hugging Face cache and sign them from disk.
    pub full: bool,
    /// Show a progress bar on standard error.
    pub progress: bool,
}

/// What a crawl did.
#[derive(Clone, Debug, Default)]
pub struct CrawlStats {
    pub listed: usize,
    /// Failures count those of the listing (unreadable commits) too.
    pub indexed: IndexStats,
    pub requests: Stats,
    pub edges: Option<usize>,
}

impl Report for CrawlStats {
    fn stats_json(&self) -> serde_json::Value {
        let (r, i) = (&self.requests, &self.indexed);
        serde_json::json!({
            "listed": self.listed, "new": i.new, "changed": i.changed,
            "unchanged": i.unchanged, "failed": i.failed,
            "bytes_fetched": i.bytes_fetched, "checkpoint_bytes": i.checkpoint_bytes,
            "fetched_share": if i.checkpoint_bytes == 0 { 0.0 } else { i.bytes_fetched as f64 / i.checkpoint_bytes as f64 },
            "requests": {
                "api": r.api_requests, "resolvers": r.resolver_requests, "cdn": r.cdn_requests,
                "retries": r.retries, "rate_limited": r.rate_limited, "waited_seconds": r.waited.as_secs_f64(),
            },
            "edges": self.edges,
        })
    }
}

/// A listed repo: its id and the commit the listing gave.
#[derive(Clone, Debug)]
pub struct Listed {
    pub id: RepoId,
    pub commit: Commit,
}

/// What [`index_listed`] did.
#[derive(Clone, Debug, Default)]
pub struct IndexStats {
    pub new: usize,
    pub changed: usize,
    pub unchanged: usize,
    pub failed: usize,
    pub bytes_fetched: u64,
    pub checkpoint_bytes: u64,
    /// Repos that finished after a stop was requested: they were in flight at the stop and were drained.
    pub drained: usize,
    /// A stop was requested and some repos were not started (they are picked up by the next run).
    pub stopped: bool,
}

/// How [`index_listed`] runs.
#[derive(Clone, Copy, Debug)]
pub struct IndexOptions<'a> {
    pub endpoint: &'a str,
    pub scheme: &'a Scheme,
    pub full: bool,
    pub concurrency: usize,
    /// When a failed repo is due again.
    pub retry: RetryPolicy,
    /// Once set, no further repo is started; those in flight finish and are stored.
    pub stop: Option<&'a AtomicBool>,
    /// Kept equal to the number of repos being signed (the daemon's `models_in_flight` gauge).
    pub in_flight: Option<&'a AtomicI64>,
    pub progress: bool,
}

/// A listed repo that needs signing.
struct Todo {
    id: RepoId,
    commit: Commit,
    known: bool,
}

/// A signed repo, ready to store.
struct Signed {
    record: ModelRecord,
    signature: ModelSignature,
    bytes_fetched: u64,
    checkpoint_bytes: u64,
}

/// Crawls `config.hub.endpoint` into the store in one recorded run, with the configured scheme, method and
/// concurrency.
///
/// # Errors
/// When the endpoint is unusable (bad URL or token, listing fails after retries) or the store fails. A single
/// repo's failure is recorded in the store, not returned.
pub async fn crawl(writer: &mut Writer, config: &Config, options: &CrawlOptions) -> anyhow::Result<CrawlStats> {
    let client = hub_client(&config.hub)?;
    writer.record_async(RunKind::Crawl, async |store, run| crawl_run(store, &client, config, options, run).await).await
}

async fn crawl_run(
    store: &mut Store,
    client: &HubClient,
    config: &Config,
    options: &CrawlOptions,
    run: store::RunId,
) -> anyhow::Result<CrawlStats> {
    let mut stats = CrawlStats::default();
    let query = ListQuery {
        author: options.author.clone(),
        search: options.search.clone(),
        filter: options.filter.clone(),
        sort: Some("lastModified".into()),
        direction: Some(-1),
        limit: Some(options.limit.map_or(PAGE_SIZE, |l| (l as u32).clamp(1, PAGE_SIZE))),
        expand: ["sha", "lastModified", "createdAt"].map(String::from).to_vec(),
    };
    let listing = client.list_models(&query).take(options.limit.unwrap_or(usize::MAX));
    let summaries: Vec<hub::ModelSummary> = listing.try_collect().await.context("cannot list models")?;
    stats.listed = summaries.len();
    let mut listing_failed = 0;
    let endpoint = config.hub.endpoint.as_str();
    let listed = listed_commits(store, endpoint, summaries, RetryPolicy::IMMEDIATE, &mut listing_failed)?;
    let index = IndexOptions {
        endpoint,
        scheme: &config.scheme,
        full: options.full,
        concurrency: config.hub.concurrency,
        retry: RetryPolicy::IMMEDIATE,
        stop: None,
        in_flight: None,
        progress: options.progress,
    };
    let done = index_listed(store, client, listed, &index, &mut |_| {}).await?;
    stats.indexed = IndexStats { failed: done.failed + listing_failed, ..done };
    stats.edges = solve::solve_if_needed(store, run, &config.scheme, config.method)?;
    stats.requests = client.stats();
    Ok(stats)
}

/// The listed repos that have a commit; one without is recorded as a failure (counted in `failed`).
///
/// # Errors
/// When the store cannot be written.
pub fn listed_commits(
    store: &mut Store,
    endpoint: &str,
    summaries: Vec<hub::ModelSummary>,
    retry: RetryPolicy,
    failed: &mut usize,
) -> anyhow::Result<Vec<Listed>> {
    let mut listed = Vec::with_capacity(summaries.len());
    for summary in summaries {
        match summary.sha {
            Some(commit) => listed.push(Listed { id: summary.id, commit }),
            None => {
                store
                    .record_failure_backoff(summary.id.as_str(), endpoint, "", "the listing gave no commit sha", retry)
                    .context("cannot record a failure")?;
                *failed += 1;
            }
        }
    }
    Ok(listed)
}

/// What happened to one repo in [`index_listed`], for live counters.
#[derive(Clone, Copy, Debug)]
pub enum RepoOutcome {
    Indexed { bytes_fetched: u64 },
    Failed,
}

/// Signs and stores every listed repo whose commit (and scheme) is not indexed yet, `concurrency` at a time,
/// each in its own store transaction; a repo that fails is recorded with `retry`'s backoff and the rest go on.
/// Repos whose stored revision matches are skipped, which is what makes a rerun after a kill cheap and exact.
///
/// # Errors
/// When the store fails. A single repo's failure is recorded, not returned.
pub async fn index_listed(
    store: &mut Store,
    client: &HubClient,
    listed: Vec<Listed>,
    options: &IndexOptions<'_>,
    on_repo: &mut dyn FnMut(RepoOutcome),
) -> anyhow::Result<IndexStats> {
    let mut stats = IndexStats::default();
    let mut todo = Vec::new();
    for Listed { id, commit } in listed {
        let revision = revision_of(&commit, options.scheme);
        match store.model_state(id.as_str()).context("cannot read the store")? {
            Some((stored, ModelStatus::Indexed)) if stored == revision => stats.unchanged += 1,
            previous => todo.push(Todo { id, commit, known: previous.is_some() }),
        }
    }
    let total = todo.len();
    let bar = if options.progress { ProgressBar::new(total as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{spinner} crawling [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let (stop, in_flight) = (options.stop, options.in_flight);
    let stopping = || stop.is_some_and(|s| s.load(Ordering::SeqCst));
    let (endpoint, scheme, full) = (options.endpoint, options.scheme, options.full);
    let mut results = futures::stream::iter(todo)
        .take_while(|_| std::future::ready(!stopping()))
        .map(|t| async move {
            if let Some(n) = in_flight {
                n.fetch_add(1, Ordering::Relaxed);
            }
            let outcome = sign_repo(client, endpoint, &t.id, &t.commit, scheme, full).await;
            if let Some(n) = in_flight {
                n.fetch_sub(1, Ordering::Relaxed);
            }
            (t, outcome)
        })
        .buffer_unordered(options.concurrency.max(1));
    let mut finished = 0;
    while let Some((todo, outcome)) = results.next().await {
        finished += 1;
        if stopping() {
            stats.drained += 1;
        }
        match outcome {
            Ok(signed) => {
                store.put_indexed(&signed.record, &signed.signature).context("cannot store a model")?;
                tracing::info!(repo = %todo.id.as_str(), commit = %todo.commit.as_str(), bytes = signed.bytes_fetched, "indexed");
                stats.bytes_fetched += signed.bytes_fetched;
                stats.checkpoint_bytes += signed.checkpoint_bytes;
                if todo.known {
                    stats.changed += 1;
                } else {
                    stats.new += 1;
                }
                on_repo(RepoOutcome::Indexed { bytes_fetched: signed.bytes_fetched });
            }
            Err(err) => {
                let attempts = store
                    .record_failure_backoff(
                        todo.id.as_str(),
                        endpoint,
                        todo.commit.as_str(),
                        &format!("{err:#}"),
                        options.retry,
                    )
                    .context("cannot record a failure")?;
                tracing::warn!(repo = %todo.id.as_str(), attempts, error = %format!("{err:#}"), "repo failed");
                stats.failed += 1;
                on_repo(RepoOutcome::Failed);
            }
        }
        bar.set_message(human_bytes(client.stats().bytes()));
        bar.inc(1);
    }
    bar.finish_and_clear();
    stats.stopped = finished < total;
    Ok(stats)
}

/// The stored revision of a Hub repo: its commit, and the scheme its signature was made with.
pub fn revision_of(commit: &Commit, scheme: &Scheme) -> String {
    format!("hub:{}@{}", commit.as_str(), scheme.id())
}

async fn sign_repo(
    client: &HubClient,
    endpoint: &str,
    id: &RepoId,
    commit: &Commit,
    scheme: &Scheme,
    full: bool,
) -> anyhow::Result<Signed> {
    let revision = Revision::parse(commit.as_str()).context("bad commit")?;
    let info = client.model_info(id, &revision).await.context("cannot read the repo info")?;
    // The info answers for the commit we listed; a repo that moved on since is signed at what we asked for.
    let commit = &info.sha.clone();
    let card = small_file(client, id, commit, &info, meta::CARD_FILE).await?;
    let config = small_file(client, id, commit, &info, meta::CONFIG_FILE).await?;
    let adapter = small_file(client, id, commit, &info, meta::ADAPTER_CONFIG_FILE).await?;
    let mut repo = meta::parse(id.as_str(), card.as_deref(), config.as_deref(), adapter.as_deref());
    // The card as the API parsed it is a fallback when README.md is missing.
    if repo.card.is_none() {
        let data = info.card_data.clone().unwrap_or_default();
        repo.card = Some(meta::Card {
            license: data.licenses.first().cloned(),
            base_models: data.base_models.into_iter().filter(|b| b != id.as_str()).collect(),
            base_model_relation: data.base_model_relation,
        });
    }
    let files: Vec<RemoteFile> = info.siblings.iter().map(RemoteFile::from).collect();
    let sign = repo.sign_options();
    let (signature, bytes_fetched, checkpoint_bytes, file_records) = if full {
        sign_full(client, id, commit, &info, scheme, sign).await?
    } else {
        let options = RemoteOptions { sign, ..RemoteOptions::default() };
        let signed =
            hub::sign_remote_model(client, id, commit, &files, scheme, &options).await.context("cannot sign")?;
        let records = signed
            .files
            .iter()
            .map(|f| FileRecord { path: f.name.clone(), size: f.size, fingerprint: f.etag.clone().unwrap_or_default() })
            .collect();
        (signed.signature, signed.bytes_fetched, signed.checkpoint_bytes, records)
    };
    let record = ModelRecord {
        id: id.as_str().to_owned(),
        source: endpoint.to_owned(),
        revision: revision_of(commit, scheme),
        created_at: info.created_at.map(|t| t.to_rfc3339()),
        last_modified: info.last_modified.map(|t| t.to_rfc3339()),
        files: file_records,
        ..repo.record()
    };
    Ok(Signed { record, signature, bytes_fetched, checkpoint_bytes })
}

/// A small metadata file of the repo, when it has one (size-capped, untrusted).
async fn small_file(
    client: &HubClient,
    id: &RepoId,
    commit: &Commit,
    info: &hub::RepoInfo,
    name: &str,
) -> anyhow::Result<Option<bytes::Bytes>> {
    if info.sibling(name).is_none() {
        return Ok(None);
    }
    let bytes =
        client.get_small_file(id, commit, name, MAX_SMALL_FILE).await.with_context(|| format!("cannot read {name}"))?;
    Ok(Some(bytes))
}

/// `--full`: downloads the weights (and the files that shape them) into the Hugging Face cache, then signs the
/// snapshot folder exactly as `scan` signs a local folder.
async fn sign_full(
    client: &HubClient,
    id: &RepoId,
    commit: &Commit,
    info: &hub::RepoInfo,
    scheme: &Scheme,
    sign: signature::SignOptions,
) -> anyhow::Result<(ModelSignature, u64, u64, Vec<FileRecord>)> {
    let wanted: Vec<&hub::Sibling> = info
        .siblings
        .iter()
        .filter(|s| {
            !s.rfilename.contains('/')
                && (s.rfilename.ends_with(".safetensors")
                    || s.rfilename == "model.safetensors.index.json"
                    || s.rfilename == "adapter_config.json")
        })
        .collect();
    // Bytes this model brought into the cache: files already there cost nothing (the client's byte counter is
    // shared by every model signed at once, so it cannot say).
    let cache = hub::HfCache::from_env();
    let mut fetched = 0u64;
    let mut dir: Option<PathBuf> = None;
    let mut records = Vec::new();
    for sibling in &wanted {
        let cached = cache.as_ref().is_some_and(|c| c.snapshot_path(id, commit, &sibling.rfilename).exists());
        let path = hub::download_to_cache(client, id, commit, &sibling.rfilename)
            .await
            .with_context(|| format!("cannot download {}", sibling.rfilename))?;
        if !cached {
            fetched += std::fs::metadata(&path).map_or(0, |m| m.len());
        }
        dir = path.parent().map(PathBuf::from);
        records.push(FileRecord {
            path: sibling.rfilename.clone(),
            size: sibling.size.unwrap_or_default(),
            fingerprint: sibling.lfs.as_ref().map(|l| l.sha256.clone()).unwrap_or_default(),
        });
    }
    let dir = dir.context("the repo has no safetensors files")?;
    let scheme = *scheme;
    // A cache snapshot never changes underneath (blobs are content-addressed and renamed into place whole), so
    // its weights are mapped rather than read.
    let signed = tokio::task::spawn_blocking(move || signature::sign_immutable_dir(&dir, &scheme, &sign))
        .await
        .context("the signing task failed")?
        .context("cannot sign")?;
    let checkpoint = signed.files.iter().map(|f| f.len).sum();
    Ok((signed.signature, fetched, checkpoint, records))
}
