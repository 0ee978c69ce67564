//! The client against `hubsim`, the project's Hub-compatible server (another implementation of the same API):
//! listing, info, remote signatures, gating, and a crawl through seeded faults and a 429 storm.

use std::time::Duration;

use futures::StreamExt;
use hub::remote::{RemoteFile, RemoteOptions, sign_remote_model};
use hub::{HubClient, HubConfig, HubError, ListQuery, RepoId, Revision, Tier, Token};
use hubsim::{FaultConfig, Limits, QuotaConfig, ServerConfig, Storm};
use signature::{Scheme, SignOptions, sign_model_dir};

use crate::support::{config, zoo_root};

/// Lists every model, then signs each remotely and compares with the local signature; returns the count.
async fn crawl(client: &HubClient, scheme: &Scheme, failures: &mut usize) -> usize {
    let query = ListQuery { limit: Some(7), expand: vec!["sha".into(), "lastModified".into()], ..ListQuery::default() };
    let listed: Vec<_> = client.list_models(&query).collect().await;
    let mut signed = 0;
    for model in listed {
        let model = model.expect("valid listing entry");
        let info = client.model_info(&model.id, &Revision::main()).await.expect("info");
        assert_eq!(Some(&info.sha), model.sha.as_ref(), "{}", model.id);
        let files: Vec<RemoteFile> = info.siblings.iter().map(RemoteFile::from).collect();
        let opts = RemoteOptions::default();
        let sign = || sign_remote_model(client, &info.id, &info.sha, &files, scheme, &opts);
        // A fresh signed URL that is expired too (the faulty server draws that with its probability) fails the
        // model after one re-resolve; a crawler records it and tries again later, as here, once.
        let remote = match sign().await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{}: {e}; trying again", model.id);
                *failures += 1;
                sign().await.unwrap_or_else(|e| panic!("{}: {e}", model.id))
            }
        };
        let local =
            sign_model_dir(&zoo_root().join(model.id.as_str()), scheme, &SignOptions::default()).expect("local");
        assert_eq!(remote.signature, local.signature, "{}", model.id);
        signed += 1;
    }
    signed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crawl_of_hubsim_gives_the_local_signatures() {
    let sim = hubsim::spawn(ServerConfig { page_size: 5, ..ServerConfig::new(zoo_root()) }).await.expect("hubsim");
    let client = HubClient::new(config(&sim.url())).expect("client");
    let mut failures = 0;
    let n = crawl(&client, &Scheme { row_fraction: 0.25, ..Scheme::default() }, &mut failures).await;
    assert!(n >= 20, "{n} models");
    assert_eq!(failures, 0);
    let stats = client.stats();
    assert_eq!(stats.retries, 0);
    eprintln!("hubsim crawl of {n} models: {stats:?}");
    assert!(sim.early_requests().is_empty());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crawl_survives_faults_and_a_429_storm_without_early_requests() {
    let faults = FaultConfig {
        seed: 7,
        p_5xx: 0.05,
        p_reset_mid_body: 0.03,
        p_truncate: 0.03,
        p_expire_url: 0.1,
        storm: Some(Storm { start_after: 15, count: 3, retry_after_secs: 1 }),
        ..FaultConfig::default()
    };
    let quotas = QuotaConfig {
        window: Duration::from_secs(2),
        anonymous: Limits { api: 30, resolvers: 60 },
        ..QuotaConfig::default()
    };
    let sim = hubsim::spawn(ServerConfig { page_size: 5, faults, quotas, ..ServerConfig::new(zoo_root()) })
        .await
        .expect("hubsim");
    let cfg = HubConfig {
        tier: Tier::Custom { api: 30, resolvers: 60 },
        window: Duration::from_secs(2),
        max_retries: 8,
        ..config(&sim.url())
    };
    let client = HubClient::new(cfg).expect("client");
    let mut failures = 0;
    let n = crawl(&client, &Scheme::default(), &mut failures).await;
    assert!(failures <= 2, "{failures} models failed once");
    let stats = client.stats();
    eprintln!("faulty hubsim crawl of {n} models: {stats:?}");
    assert!(stats.retries > 0 && stats.rate_limited > 0, "the faults were hit: {stats:?}");
    let early = sim.early_requests();
    assert!(early.is_empty(), "requests before an announced reset: {early:?}");
    sim.shutdown().await;
}

#[tokio::test]
async fn gated_repositories_need_an_accepted_token() {
    let sim = hubsim::spawn(ServerConfig {
        gated: vec!["bitforge/bf-pico".into()],
        tokens: vec!["hf_accepted".into()],
        ..ServerConfig::new(zoo_root())
    })
    .await
    .expect("hubsim");
    let id = RepoId::parse("bitforge/bf-pico").expect("id");
    let with = |token: Option<&str>| {
        let cfg = HubConfig { token: token.map(|t| Token::new(t).expect("token")), ..config(&sim.url()) };
        HubClient::new(cfg).expect("client")
    };
    // Metadata is public and says the repo is gated.
    let info = with(None).model_info(&id, &Revision::main()).await.expect("public metadata");
    assert_eq!(info.gated, Some(hub::Gated::Manual));
    let e = with(None).resolve(&id, &info.sha, "model.safetensors").await.expect_err("no token");
    assert!(matches!(e, HubError::GatedRepo { status: 401, .. }), "{e}");
    let e = with(Some("hf_other")).resolve(&id, &info.sha, "model.safetensors").await.expect_err("no access");
    assert!(matches!(e, HubError::GatedRepo { status: 403, .. }), "{e}");
    let ok = with(Some("hf_accepted")).resolve(&id, &info.sha, "model.safetensors").await.expect("access");
    assert!(ok.size > 0);
    sim.shutdown().await;
}
