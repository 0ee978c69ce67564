//! One daemon run: an incremental pass over the Hub.
//!
//! 1. **List** newest change first (`sort=lastModified&direction=-1`), one listing per configured author, and
//!    stop at the stored listing checkpoint minus the overlap window. Every `full_listing_every` runs (and on
//!    the first) the listing goes all the way down instead.
//! 2. **Filter** by pipeline tag, library and downloads (authors and tags were applied by the Hub).
//! 3. **Retry** failures whose backoff has expired, at the repo's current commit; a repo that failed at the
//!    listed commit and is not due yet waits.
//! 4. **Index** what changed through [`crate::crawl::index_listed`]: repos whose stored revision equals the
//!    listed commit are skipped, the rest are signed and stored one transaction each.
//! 5. **Vanished** (full listings only): stored repos of this endpoint that the listing no longer shows and
//!    whose info answers "not found" are marked `vanished`. A repo that still exists but left the filters is
//!    left alone. Checking info rather than trusting absence costs one API call per missing repo and never
//!    marks a repo vanished because of a truncated or filtered listing.
//! 6. **Solve** lineage through [`Live::sync`], the incremental tree builder kept for the life of the process.
//! 7. **Checkpoint**: only a run that finished everything moves the listing checkpoint, so a run stopped or
//!    killed half-way is redone from the old one; already-indexed commits are then skipped, so nothing is lost
//!    and nothing is signed twice into the store.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use hub::{HubClient, HubError, ListQuery, ModelSummary, RepoId, Revision};
use store::{ModelStatus, RetryPolicy, RunId, Store};

use super::status::Metrics;
use crate::config::Config;
use crate::crawl::{self, IndexOptions, Listed, PAGE_SIZE, RepoOutcome};
use crate::solve::Live;

/// What one run did (stored as the run's `stats_json`).
#[derive(Clone, Debug, Default)]
pub struct CycleStats {
    pub full_listing: bool,
    pub listed: usize,
    pub filtered_out: usize,
    pub new: usize,
    pub changed: usize,
    pub unchanged: usize,
    pub failed: usize,
    pub deferred: usize,
    pub retried: usize,
    pub vanished: usize,
    pub bytes_fetched: u64,
    pub edges: Option<usize>,
    pub families_resolved: usize,
    pub families: usize,
    /// Repos that finished after a stop was requested (they were in flight and were drained).
    pub drained: usize,
    pub stopped: bool,
    pub listing_checkpoint: Option<String>,
}

impl CycleStats {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "full_listing": self.full_listing, "listed": self.listed, "filtered_out": self.filtered_out,
            "new": self.new, "changed": self.changed, "unchanged": self.unchanged, "failed": self.failed,
            "deferred": self.deferred, "retried": self.retried, "vanished": self.vanished,
            "bytes_fetched": self.bytes_fetched, "edges": self.edges, "families_resolved": self.families_resolved,
            "families": self.families,
            "drained": self.drained, "stopped": self.stopped, "listing_checkpoint": self.listing_checkpoint,
        })
    }
}

/// Checkpoint keys are scoped by endpoint and filters: changing either starts a fresh full listing.
fn scope(config: &Config) -> String {
    let f = &config.filters;
    let mut hasher = blake3::Hasher::new();
    for part in [config.hub.endpoint.as_str(), &f.authors.join(","), &f.tags.join(",")] {
        hasher.update(part.as_bytes());
        hasher.update(&[0]);
    }
    let hex = hasher.finalize().to_hex();
    format!("{}:{}", config.hub.endpoint, hex.get(..16).unwrap_or_default())
}

/// What every run of a daemon process shares.
#[derive(Clone, Copy, Debug)]
pub struct Env<'a> {
    pub client: &'a HubClient,
    pub config: &'a Config,
    pub metrics: &'a Metrics,
}

/// Runs one pass. `stop` asks it to finish the repos in flight and return early.
///
/// # Errors
/// When the listing fails after retries or the store fails; single repos fail into the store instead.
pub async fn run(
    store: &mut Store,
    live: &mut Live,
    env: &Env<'_>,
    run: RunId,
    force_full: bool,
    stop: &AtomicBool,
) -> anyhow::Result<CycleStats> {
    let Env { client, config, metrics } = *env;
    let mut stats = CycleStats::default();
    let endpoint = config.hub.endpoint.as_str();
    let scope = scope(config);
    let checkpoint_key = format!("daemon.listed_until:{scope}");
    let since_full_key = format!("daemon.runs_since_full_listing:{scope}");
    let checkpoint = store.get_checkpoint(&checkpoint_key).context("cannot read a checkpoint")?;
    let checkpoint = checkpoint.as_deref().and_then(|c| DateTime::parse_from_rfc3339(c).ok()).map(|t| t.to_utc());
    let since_full: u32 = store
        .get_checkpoint(&since_full_key)
        .context("cannot read a checkpoint")?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    stats.full_listing =
        force_full || checkpoint.is_none() || since_full.saturating_add(1) >= config.daemon.full_listing_every;
    let overlap = chrono::Duration::from_std(config.daemon.overlap).unwrap_or(chrono::Duration::MAX);
    let cutoff = if stats.full_listing { None } else { checkpoint.and_then(|c| c.checked_sub_signed(overlap)) };

    // 1–2. List and filter.
    let summaries = list(client, config, cutoff).await?;
    stats.listed = summaries.len();
    let newest = summaries.iter().filter_map(|s| s.last_modified).max();
    let listed_ids: HashSet<String> = summaries.iter().map(|s| s.id.as_str().to_owned()).collect();
    let (kept, dropped): (Vec<ModelSummary>, Vec<ModelSummary>) =
        summaries.into_iter().partition(|s| passes_filters(s, config));
    stats.filtered_out = dropped.len();
    tracing::info!(
        listed = stats.listed,
        filtered_out = stats.filtered_out,
        full = stats.full_listing,
        cutoff = ?cutoff.map(|c| c.to_rfc3339()),
        "listed"
    );
    let policy = RetryPolicy { base: config.daemon.retry_base, cap: config.daemon.retry_cap };
    let mut listed = crawl::listed_commits(store, endpoint, kept, policy, &mut stats.failed)?;

    // 3. Backoff: a repo that failed at this very commit waits for its retry time; due failures that the listing
    // did not show are retried at their current commit.
    let now = now_text();
    let failures: HashMap<String, store::FailureRecord> = store
        .failures()
        .context("cannot read failures")?
        .into_iter()
        .filter(|f| f.source == endpoint)
        .map(|f| (f.model_id.clone(), f))
        .collect();
    listed.retain(|l| match failures.get(l.id.as_str()) {
        Some(f) if f.path == l.commit.as_str() && f.next_retry_at.as_deref().is_some_and(|at| at > now.as_str()) => {
            stats.deferred += 1;
            false
        }
        _ => true,
    });
    let in_listing: HashSet<String> = listed.iter().map(|l| l.id.as_str().to_owned()).collect();
    let due = store.due_failures(endpoint).context("cannot read failures")?;
    for failure in due.into_iter().filter(|f| !in_listing.contains(&f.model_id)) {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(id) = RepoId::parse(&failure.model_id) else { continue };
        match client.model_info(&id, &Revision::main()).await {
            Ok(info) => {
                stats.retried += 1;
                listed.push(Listed { id, commit: info.sha });
            }
            Err(err) if is_gone(&err) => {
                if store.mark_vanished(id.as_str()).context("cannot mark a model vanished")? {
                    stats.vanished += 1;
                    metrics.models_vanished.fetch_add(1, Ordering::Relaxed);
                }
                store
                    .record_failure_backoff(id.as_str(), endpoint, &failure.path, &format!("{err:#}"), policy)
                    .context("cannot record a failure")?;
            }
            Err(err) => {
                tracing::warn!(repo = %id.as_str(), error = %format!("{err:#}"), "retry lookup failed");
                store
                    .record_failure_backoff(id.as_str(), endpoint, &failure.path, &format!("{err:#}"), policy)
                    .context("cannot record a failure")?;
                stats.failed += 1;
            }
        }
    }

    // 4. Index.
    let options = IndexOptions {
        endpoint,
        scheme: &config.scheme,
        full: false,
        concurrency: config.hub.concurrency,
        retry: policy,
        stop: Some(stop),
        in_flight: Some(&metrics.models_in_flight),
        progress: false,
    };
    let indexed = crawl::index_listed(store, client, listed, &options, &mut |outcome| match outcome {
        RepoOutcome::Indexed { bytes_fetched } => {
            metrics.models_indexed.fetch_add(1, Ordering::Relaxed);
            metrics.bytes_fetched.fetch_add(bytes_fetched, Ordering::Relaxed);
        }
        RepoOutcome::Failed => {
            metrics.models_failed.fetch_add(1, Ordering::Relaxed);
        }
    })
    .await?;
    metrics.set_requests(&client.stats());
    stats.new = indexed.new;
    stats.changed = indexed.changed;
    stats.unchanged = indexed.unchanged;
    stats.failed += indexed.failed;
    stats.bytes_fetched = indexed.bytes_fetched;
    stats.drained = indexed.drained;
    if indexed.stopped || stop.load(Ordering::SeqCst) {
        stats.stopped = true;
        return Ok(stats);
    }

    // 5. Vanished repos.
    if stats.full_listing {
        stats.vanished += mark_vanished(store, client, config, &listed_ids, stop, metrics).await?;
        if stop.load(Ordering::SeqCst) {
            stats.stopped = true;
            return Ok(stats);
        }
    }

    // 6. Lineage.
    let solved = live.sync(store, run)?;
    stats.edges = solved.edges;
    stats.families_resolved = solved.families_resolved;
    stats.families = solved.families;
    if solved.families_resolved > 0 {
        metrics.solves.fetch_add(1, Ordering::Relaxed);
        metrics.families_resolved.fetch_add(solved.families_resolved as u64, Ordering::Relaxed);
        tracing::info!(
            edges = ?solved.edges,
            resolved = solved.families_resolved,
            families = solved.families,
            "families re-solved"
        );
    }

    // 7. Checkpoints: never move the listing checkpoint backwards.
    let until = match (checkpoint, newest) {
        (Some(c), Some(n)) => Some(c.max(n)),
        (c, n) => c.or(n),
    };
    if let Some(until) = until {
        let text = until.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        store.set_checkpoint(&checkpoint_key, &text).context("cannot write a checkpoint")?;
        stats.listing_checkpoint = Some(text);
    }
    let since = if stats.full_listing { 0 } else { since_full.saturating_add(1) };
    store.set_checkpoint(&since_full_key, &since.to_string()).context("cannot write a checkpoint")?;
    Ok(stats)
}

/// Lists every configured author (or everyone) newest change first, down to `cutoff`.
async fn list(client: &HubClient, config: &Config, cutoff: Option<DateTime<Utc>>) -> anyhow::Result<Vec<ModelSummary>> {
    let authors: Vec<Option<String>> = if config.filters.authors.is_empty() {
        vec![None]
    } else {
        config.filters.authors.iter().cloned().map(Some).collect()
    };
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for author in authors {
        let query = ListQuery {
            author,
            search: None,
            filter: config.filters.tags.clone(),
            sort: Some("lastModified".into()),
            direction: Some(-1),
            limit: Some(PAGE_SIZE),
            expand: ["sha", "lastModified", "createdAt", "downloads", "pipeline_tag", "library_name", "tags"]
                .map(String::from)
                .to_vec(),
        };
        // The listing is sorted, so the first entry older than the cut-off ends it (no further pages fetched).
        let listing = client.list_models(&query).try_take_while(|s| {
            let keep = match (cutoff, s.last_modified) {
                (Some(cutoff), Some(at)) => at >= cutoff,
                _ => true,
            };
            std::future::ready(Ok(keep))
        });
        let page: Vec<ModelSummary> = listing.try_collect().await.context("cannot list models")?;
        out.extend(page.into_iter().filter(|s| seen.insert(s.id.as_str().to_owned())));
    }
    Ok(out)
}

fn passes_filters(s: &ModelSummary, config: &Config) -> bool {
    let f = &config.filters;
    let same = |want: &Option<String>, got: &Option<String>| want.as_ref().is_none_or(|w| got.as_ref() == Some(w));
    same(&f.pipeline_tag, &s.pipeline_tag)
        && same(&f.library, &s.library_name)
        && s.downloads.unwrap_or(0) >= f.min_downloads
}

/// Whether an info lookup says the repo does not exist (a private repo looks the same, as on the Hub).
fn is_gone(err: &HubError) -> bool {
    matches!(err, HubError::RepoNotFound { .. } | HubError::NotFound { .. })
}

async fn mark_vanished(
    store: &mut Store,
    client: &HubClient,
    config: &Config,
    listed: &HashSet<String>,
    stop: &AtomicBool,
    metrics: &Metrics,
) -> anyhow::Result<usize> {
    let endpoint = config.hub.endpoint.as_str();
    let authors = &config.filters.authors;
    let candidates: Vec<String> = store
        .models()
        .context("cannot list models")?
        .into_iter()
        .filter(|m| m.record.source == endpoint && m.status != ModelStatus::Vanished)
        .map(|m| m.record.id)
        .filter(|id| !listed.contains(id))
        .filter(|id| authors.is_empty() || authors.iter().any(|a| id.split('/').next() == Some(a.as_str())))
        .collect();
    let mut vanished = 0;
    for id in candidates {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(repo) = RepoId::parse(&id) else { continue };
        match client.model_info(&repo, &Revision::main()).await {
            Err(err) if is_gone(&err) => {
                if store.mark_vanished(&id).context("cannot mark a model vanished")? {
                    tracing::info!(repo = %id, "vanished");
                    vanished += 1;
                    metrics.models_vanished.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(err) => tracing::warn!(repo = %id, error = %format!("{err:#}"), "cannot check whether a repo vanished"),
            Ok(_) => tracing::debug!(repo = %id, "not listed but still there (filters)"),
        }
    }
    Ok(vanished)
}

/// Now, in the store's timestamp format (comparable as text).
fn now_text() -> String {
    Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}
