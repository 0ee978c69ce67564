//! Remote signatures equal local ones, cost what they should, and refuse hostile files.

use std::sync::Arc;

use hub::remote::{RemoteError, RemoteFile, RemoteOptions, sign_remote_model};
use hub::{Commit, HubClient, RepoId, Revision};
use signature::{HeaderError, Layout, ModelError, ReadLimits, Scheme, SignOptions, sign_model_dir};

use crate::support::{Reply, Request, TestServer, Zoo, config, sha256, zoo_root};

async fn sign_remote(
    client: &HubClient,
    repo: &str,
    scheme: &Scheme,
    opts: &RemoteOptions,
) -> Result<hub::RemoteSigned, RemoteError> {
    let id = RepoId::parse(repo).expect("id");
    let info = client.model_info(&id, &Revision::main()).await.expect("info");
    let files: Vec<RemoteFile> = info.siblings.iter().map(RemoteFile::from).collect();
    sign_remote_model(client, &id, &info.sha, &files, scheme, opts).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_signatures_are_bit_identical_to_local_ones_on_the_zoo() {
    let zoo = Arc::new(Zoo::load(&zoo_root()));
    let served = Arc::clone(&zoo);
    let server = TestServer::start(move |req, base| served.handle(req, base)).await;
    let client = HubClient::new(config(&server.url())).expect("client");
    let mut layouts = std::collections::BTreeSet::new();
    let mut kinds = std::collections::BTreeSet::new();
    for fraction in [1.0, 0.25] {
        let scheme = Scheme { row_fraction: fraction, ..Scheme::default() };
        // Tight limits too, so that tensors are split across many reads and reads are merged over gaps.
        for limits in [RemoteOptions::default().limits, ReadLimits { max_read: 4096, max_gap: 0, max_whole: 1 << 24 }] {
            let opts = RemoteOptions { limits, ..RemoteOptions::default() };
            for repo in zoo.repos.keys() {
                let dir = zoo_root().join(repo);
                let local = sign_model_dir(&dir, &scheme, &SignOptions::default());
                let remote = sign_remote(&client, repo, &scheme, &opts).await;
                match (local, remote) {
                    (Ok(local), Ok(remote)) => {
                        assert_eq!(remote.signature, local.signature, "{repo} at {fraction} with {limits:?}");
                        let sizes: Vec<u64> = local.files.iter().map(|f| f.len).collect();
                        assert_eq!(remote.files.iter().map(|f| f.size).collect::<Vec<_>>(), sizes, "{repo}");
                        layouts.insert(format!("{:?}", std::mem::discriminant(&remote.layout)));
                        for t in &remote.signature.tensors {
                            kinds.insert(format!("{:?}", t.source));
                        }
                        if fraction == 1.0 {
                            assert!(remote.bytes_fetched >= remote.checkpoint_bytes, "{repo}: every byte is read");
                        }
                    }
                    (Err(l), Err(r)) => panic!("{repo}: both failed: {l} / {r}"),
                    (l, r) => panic!("{repo}: local {:?} but remote {:?}", l.map(|_| ()), r.map(|_| ())),
                }
            }
        }
    }
    // The zoo covers every layout and every kind of tensor signature.
    assert_eq!(layouts.len(), 3, "{layouts:?}");
    assert_eq!(kinds, ["AdapterDelta", "Dequantized", "Raw"].map(String::from).into_iter().collect());
}

/// Requests and bytes per model at several row fractions, printed for the record and bounded in the asserts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_fetch_costs() {
    let zoo = Arc::new(Zoo::load(&zoo_root()));
    let served = Arc::clone(&zoo);
    let server = TestServer::start(move |req, base| served.handle(req, base)).await;
    let client = HubClient::new(config(&server.url())).expect("client");
    let mut previous = u64::MAX;
    for fraction in [1.0, 0.25, 0.05, 0.02] {
        let scheme = Scheme { row_fraction: fraction, ..Scheme::default() };
        for (label, limits) in [
            ("gap 256 KiB", RemoteOptions::default().limits),
            ("gap 0", ReadLimits { max_gap: 0, ..RemoteOptions::default().limits }),
        ] {
            let opts = RemoteOptions { limits, ..RemoteOptions::default() };
            let (mut fetched, mut checkpoint, mut resolver, mut cdn, mut models) = (0, 0, 0, 0, 0u64);
            for repo in zoo.repos.keys() {
                let signed = sign_remote(&client, repo, &scheme, &opts).await.expect("signed");
                fetched += signed.bytes_fetched;
                checkpoint += signed.checkpoint_bytes;
                resolver += signed.requests.resolver_requests;
                cdn += signed.requests.cdn_requests;
                assert_eq!(signed.requests.api_requests, 0, "the listing is the caller's");
                models += 1;
            }
            eprintln!(
                "row_fraction {fraction:<5} {label:<12}: {models} models, fetched {fetched} of {checkpoint} bytes ({:.1}%), per model {:.1} resolver + {:.1} cdn requests (+1 api for model_info)",
                100.0 * fetched as f64 / checkpoint as f64,
                resolver as f64 / models as f64,
                cdn as f64 / models as f64,
            );
            if label == "gap 0" {
                assert!(fetched <= previous, "fewer rows never cost more bytes");
                previous = fetched;
                if fraction < 1.0 {
                    assert!(fetched < checkpoint, "{fraction}: partial fetch reads less than the checkpoint");
                }
            }
        }
    }
}

/// A repository of one `model.safetensors` with these bytes, served like the zoo.
async fn one_file_repo(bytes: Vec<u8>, listed_size: Option<u64>) -> (TestServer, HubClient, Commit, Vec<RemoteFile>) {
    let digest = sha256(&bytes);
    let commit_id = "1".repeat(40);
    let served = Arc::new(bytes);
    let size = served.len();
    let d = digest.clone();
    let c = commit_id.clone();
    let server = TestServer::start(move |req: &Request, base: &str| {
        if req.path().starts_with("/cdn/") {
            let (a, b) = req.range().expect("ranged");
            let b = b.unwrap_or(size as u64 - 1) as usize;
            return Reply::new(206)
                .header("content-range", format!("bytes {a}-{b}/{size}"))
                .body(served[a as usize..=b].to_vec());
        }
        Reply::new(302)
            .header("location", format!("{base}/cdn/{d}"))
            .header("x-repo-commit", c.clone())
            .header("x-linked-size", size.to_string())
            .header("x-linked-etag", format!("\"{d}\""))
    })
    .await;
    let client = HubClient::new(config(&server.url())).expect("client");
    let files = vec![RemoteFile { name: "model.safetensors".into(), size: listed_size, sha256: Some(digest) }];
    (server, client, Commit::parse(&commit_id).expect("commit"), files)
}

fn file_with_header(json: &str, data: usize) -> Vec<u8> {
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(json.as_bytes());
    out.resize(out.len() + data, 0);
    out
}

async fn hostile(bytes: Vec<u8>, opts: &RemoteOptions) -> (Result<hub::RemoteSigned, RemoteError>, usize) {
    let (server, client, commit, files) = one_file_repo(bytes, None).await;
    let id = RepoId::parse("evil/model").expect("id");
    let got = sign_remote_model(&client, &id, &commit, &files, &Scheme::default(), opts).await;
    (got, server.count(|q| q.path().starts_with("/cdn/")))
}

#[tokio::test]
async fn hostile_headers_are_refused_within_two_ranges() {
    let opts = RemoteOptions::default();
    fn header_error(got: &Result<hub::RemoteSigned, RemoteError>) -> Option<&HeaderError> {
        match got {
            Err(RemoteError::Model(ModelError::Header { source, .. })) => Some(source),
            _ => None,
        }
    }
    // A header length beyond the end of the file: refused after the first range.
    let mut beyond = file_with_header(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, 4);
    beyond[..8].copy_from_slice(&5_000u64.to_le_bytes());
    let (got, ranges) = hostile(beyond, &opts).await;
    assert!(matches!(header_error(&got), Some(HeaderError::HeaderBeyondFile { .. })), "{got:?}");
    assert_eq!(ranges, 1);
    // A declared length over the cap.
    let mut huge = vec![0u8; 64];
    huge[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let (got, ranges) = hostile(huge, &opts).await;
    assert!(matches!(header_error(&got), Some(HeaderError::HeaderTooLarge { .. })), "{got:?}");
    assert_eq!(ranges, 1);
    // A JSON bomb: deep nesting inside an otherwise plausible header.
    let bomb = format!(r#"{{"a":{}{}}}"#, "[".repeat(40_000), "]".repeat(40_000));
    let (got, ranges) = hostile(file_with_header(&bomb, 0), &opts).await;
    assert!(matches!(header_error(&got), Some(HeaderError::TooDeep { .. })), "{got:?}");
    assert_eq!(ranges, 1, "the bomb fits the first read");
    // A large, valid header over the caller's cap: refused before the second range.
    let many: Vec<String> = (0..5000)
        .map(|i| format!(r#""tensor.{i:05}":{{"dtype":"F32","shape":[1],"data_offsets":[{},{}]}}"#, 4 * i, 4 * i + 4))
        .collect();
    let big = file_with_header(&format!("{{{}}}", many.join(",")), 4 * 5000);
    let capped = RemoteOptions { max_header_len: 100_000, ..RemoteOptions::default() };
    let (got, ranges) = hostile(big.clone(), &capped).await;
    assert!(matches!(got, Err(RemoteError::Model(ModelError::HeaderTooLarge { cap: 100_000, .. }))), "{got:?}");
    assert_eq!(ranges, 1);
    // Under the default cap the same header takes exactly two ranges, then the data.
    assert!(u64::from_le_bytes(big[..8].try_into().expect("prefix")) > 100_000);
    let (got, ranges) = hostile(big, &opts).await;
    let signed = got.expect("a valid file");
    assert_eq!(signed.signature.tensors.len(), 5000);
    assert_eq!(ranges, 3, "two header ranges and one data range");
    // Data that does not cover the file: trailing bytes.
    let mut trailing = file_with_header(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, 4);
    trailing.extend_from_slice(&[0; 16]);
    let (got, _) = hostile(trailing, &opts).await;
    assert!(matches!(header_error(&got), Some(HeaderError::TrailingBytes { .. })), "{got:?}");
    // A file shorter than the prefix: no request at all.
    let (got, ranges) = hostile(vec![1, 2, 3], &opts).await;
    assert!(matches!(header_error(&got), Some(HeaderError::FileTooShort { len: 3 })), "{got:?}");
    assert_eq!(ranges, 0);
}

#[tokio::test]
async fn listing_and_serving_must_agree() {
    let bytes = file_with_header(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, 4);
    let (_server, client, commit, files) = one_file_repo(bytes, Some(999)).await;
    let id = RepoId::parse("odd/model").expect("id");
    let got = sign_remote_model(&client, &id, &commit, &files, &Scheme::default(), &RemoteOptions::default()).await;
    assert!(matches!(got, Err(RemoteError::SizeMismatch { listed: 999, .. })), "{got:?}");
    let other = [RemoteFile { sha256: Some("0".repeat(64)), size: None, ..files[0].clone() }];
    let got = sign_remote_model(&client, &id, &commit, &other, &Scheme::default(), &RemoteOptions::default()).await;
    assert!(matches!(got, Err(RemoteError::DigestMismatch { .. })), "{got:?}");
    // No safetensors at all, or only in a subfolder.
    let none = vec![RemoteFile { name: "onnx/model.safetensors".into(), size: None, sha256: None }];
    let got = sign_remote_model(&client, &id, &commit, &none, &Scheme::default(), &RemoteOptions::default()).await;
    assert!(matches!(got, Err(RemoteError::Model(ModelError::NoSafetensors))), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_repo_whose_index_lies_is_refused() {
    let zoo = Zoo::load(&zoo_root());
    let repo = zoo.repo("quokka-research/quokka-base");
    let index = String::from_utf8(repo.files["model.safetensors.index.json"].bytes.to_vec()).expect("utf-8");
    let served = Arc::new(zoo);
    let lying = index.replacen("model-00002-of-00002", "model-00001-of-00002", 1);
    let server = TestServer::start(move |req, base| {
        if req.path().ends_with("model.safetensors.index.json") {
            return Reply::new(200)
                .header("x-repo-commit", served.repo("quokka-research/quokka-base").sha.clone())
                .body(lying.clone());
        }
        served.handle(req, base)
    })
    .await;
    let client = HubClient::new(config(&server.url())).expect("client");
    let got = sign_remote(&client, "quokka-research/quokka-base", &Scheme::default(), &RemoteOptions::default()).await;
    assert!(matches!(got, Err(RemoteError::Model(ModelError::IndexWrongShard { .. }))), "{got:?}");
    // The honest repository signs, with its layout reported.
    let zoo = Arc::new(Zoo::load(&zoo_root()));
    let server = TestServer::start(move |req, base| zoo.handle(req, base)).await;
    let client = HubClient::new(config(&server.url())).expect("client");
    let got = sign_remote(&client, "quokka-research/quokka-base", &Scheme::default(), &RemoteOptions::default())
        .await
        .expect("signed");
    assert!(
        matches!(&got.layout, Layout::Sharded { index, total_size: Some(_) } if index == "model.safetensors.index.json"),
        "{:?}",
        got.layout
    );
    assert_eq!(got.files.len(), 2);
}

/// A Llama-shaped checkpoint (4 layers, hidden 512, MLP 1408, vocab 8192, bf16; ~41 MB) in one file.
fn llama_like() -> Vec<u8> {
    let (hidden, mlp, vocab, layers) = (512u64, 1408u64, 8192u64, 4);
    let mut shapes: Vec<(String, Vec<u64>)> = vec![("model.embed_tokens.weight".into(), vec![vocab, hidden])];
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        for (name, shape) in [
            ("input_layernorm.weight", vec![hidden]),
            ("mlp.down_proj.weight", vec![hidden, mlp]),
            ("mlp.gate_proj.weight", vec![mlp, hidden]),
            ("mlp.up_proj.weight", vec![mlp, hidden]),
            ("post_attention_layernorm.weight", vec![hidden]),
            ("self_attn.k_proj.weight", vec![hidden, hidden]),
            ("self_attn.o_proj.weight", vec![hidden, hidden]),
            ("self_attn.q_proj.weight", vec![hidden, hidden]),
            ("self_attn.v_proj.weight", vec![hidden, hidden]),
        ] {
            shapes.push((format!("{p}.{name}"), shape));
        }
    }
    shapes.push(("model.norm.weight".into(), vec![hidden]));
    shapes.push(("lm_head.weight".into(), vec![vocab, hidden]));
    let mut entries = Vec::new();
    let mut offset = 0u64;
    for (name, shape) in &shapes {
        let len = shape.iter().product::<u64>() * 2;
        entries.push(format!(
            r#""{name}":{{"dtype":"BF16","shape":{shape:?},"data_offsets":[{offset},{}]}}"#,
            offset + len
        ));
        offset += len;
    }
    let mut json = format!("{{{}}}", entries.join(","));
    while (8 + json.len()) % 8 != 0 {
        json.push(' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(json.as_bytes());
    out.reserve(offset as usize);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..offset / 2 {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let x = ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.04;
        out.extend_from_slice(&((x.to_bits() >> 16) as u16).to_le_bytes());
    }
    out
}

/// Bytes and requests for a realistic tensor mix at several fractions; remote equals local throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_fetch_costs_on_a_llama_shaped_checkpoint() {
    let bytes = llama_like();
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("model.safetensors"), &bytes).expect("write");
    let size = bytes.len() as u64;
    let (_server, client, commit, files) = one_file_repo(bytes, Some(size)).await;
    let id = RepoId::parse("acme/llama-like").expect("id");
    let mut last = u64::MAX;
    for fraction in [1.0, 0.25, 0.05, 0.02] {
        let scheme = Scheme { row_fraction: fraction, ..Scheme::default() };
        let local = sign_model_dir(dir.path(), &scheme, &SignOptions::default()).expect("local");
        for gap in [0u64, 256 << 10] {
            let opts = RemoteOptions {
                limits: ReadLimits { max_gap: gap, ..RemoteOptions::default().limits },
                ..RemoteOptions::default()
            };
            let signed = sign_remote_model(&client, &id, &commit, &files, &scheme, &opts).await.expect("remote");
            assert_eq!(signed.signature, local.signature, "fraction {fraction}, gap {gap}");
            let r = signed.requests;
            eprintln!(
                "llama-like {size} B, row_fraction {fraction:<5} gap {gap:>6}: fetched {} B ({:.2}%), {} resolver + {} cdn requests",
                signed.bytes_fetched,
                100.0 * signed.bytes_fetched as f64 / size as f64,
                r.resolver_requests,
                r.cdn_requests
            );
            assert_eq!(r.resolver_requests, 1);
            if gap == 0 {
                // Bytes follow the fraction (norms are read whole; every tensor keeps at least one block).
                assert!(signed.bytes_fetched <= last);
                assert!(signed.bytes_fetched as f64 <= (fraction + 0.02) * size as f64 + 200_000.0, "{fraction}");
                last = signed.bytes_fetched;
            }
        }
    }
}

#[tokio::test]
async fn an_index_naming_files_outside_the_repository_is_refused_before_any_range() {
    let commit_id = "4".repeat(40);
    for shard in
        ["../model-00001-of-00001.safetensors", "/etc/model.safetensors", "sub/model.safetensors", "..\\m.safetensors"]
    {
        let index = serde_json::json!({"metadata": {"total_size": 4}, "weight_map": {"a": shard}}).to_string();
        let c = commit_id.clone();
        let server = TestServer::start(move |req: &Request, _base: &str| {
            if req.path().ends_with("/model.safetensors.index.json") {
                return Reply::new(200).header("x-repo-commit", c.clone()).body(index.clone());
            }
            Reply::new(404).header("x-error-code", "EntryNotFound")
        })
        .await;
        let client = HubClient::new(config(&server.url())).expect("client");
        let files: Vec<RemoteFile> = ["model.safetensors.index.json", "model-00001-of-00001.safetensors"]
            .iter()
            .map(|n| RemoteFile { name: (*n).into(), size: None, sha256: None })
            .collect();
        let id = RepoId::parse("evil/sharded").expect("id");
        let commit = Commit::parse(&commit_id).expect("commit");
        let got = sign_remote_model(&client, &id, &commit, &files, &Scheme::default(), &RemoteOptions::default()).await;
        assert!(matches!(got, Err(RemoteError::Model(ModelError::Index { .. }))), "{shard:?}: {got:?}");
        // Only the index itself was asked for (its resolve and its body); no shard was resolved or read.
        assert!(server.requests().iter().all(|q| q.path().ends_with("/model.safetensors.index.json")), "{shard:?}");
    }
}

#[tokio::test]
async fn absurd_sizes_and_shapes_are_refused_within_one_range() {
    let opts = RemoteOptions::default();
    // A served size of 2^60 bytes for a file whose header describes 4 bytes of data.
    let bytes = file_with_header(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, 4);
    let (server, client, commit, files) = one_file_repo(bytes, Some(1 << 60)).await;
    let id = RepoId::parse("evil/model").expect("id");
    let got = sign_remote_model(&client, &id, &commit, &files, &Scheme::default(), &opts).await;
    assert!(matches!(got, Err(RemoteError::SizeMismatch { listed: 1_152_921_504_606_846_976, .. })), "{got:?}");
    assert_eq!(server.count(|q| q.path().starts_with("/cdn/")), 0, "refused on the resolve answer");
    // A server that itself claims 2^60 bytes (zeros after the real content): the header cannot account for them.
    let real = file_with_header(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, 4);
    let huge: u64 = 1 << 60;
    let c = "5".repeat(40);
    let served = c.clone();
    let server = TestServer::start(move |req: &Request, base: &str| {
        if req.path().starts_with("/cdn/") {
            let (a, b) = req.range().expect("ranged");
            let b = b.unwrap_or(huge - 1);
            let body: Vec<u8> =
                (a..=b.min(a + (1 << 20))).map(|i| real.get(i as usize).copied().unwrap_or(0)).collect();
            let end = a + body.len() as u64 - 1;
            return Reply::new(206).header("content-range", format!("bytes {a}-{end}/{huge}")).body(body);
        }
        Reply::new(302)
            .header("location", format!("{base}/cdn/blob"))
            .header("x-repo-commit", served.clone())
            .header("x-linked-size", huge.to_string())
    })
    .await;
    let client = HubClient::new(config(&server.url())).expect("client");
    let files = vec![RemoteFile { name: "model.safetensors".into(), size: None, sha256: None }];
    let commit = Commit::parse(&c).expect("commit");
    let got = sign_remote_model(&client, &id, &commit, &files, &Scheme::default(), &opts).await;
    assert!(matches!(got, Err(RemoteError::Model(ModelError::Header { .. }))), "{got:?}");
    assert_eq!(server.count(|q| q.path().starts_with("/cdn/")), 1, "refused on the header read alone");
    // Shapes whose element count or byte size overflows, or that claim far more data than the file holds.
    for (json, what) in [
        (r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}"#, "element count overflows"),
        (r#"{"a":{"dtype":"F64","shape":[2305843009213693952,2],"data_offsets":[0,4]}}"#, "byte size overflows"),
        (r#"{"a":{"dtype":"F32","shape":[1000000,1000000],"data_offsets":[0,4]}}"#, "shape disagrees with offsets"),
        (r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,18446744073709551615]}}"#, "data end past the file"),
    ] {
        let (got, ranges) = hostile(file_with_header(json, 4), &opts).await;
        assert!(matches!(got, Err(RemoteError::Model(ModelError::Header { .. }))), "{what}: {got:?}");
        assert_eq!(ranges, 1, "{what}: refused on the header read alone");
    }
}
