//! End-to-end tests over real HTTP on 127.0.0.1: reqwest as a plain client (redirects off, so every hop is seen),
//! and raw TCP where the wire itself is the point (resets, truncation, unnormalised paths).

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hubsim::{Bucket, Fault, FaultConfig, FaultScope, Handle, Limits, QuotaConfig, ServerConfig, Storm};
use reqwest::header::HeaderMap;
use reqwest::{Client, StatusCode, redirect};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ACCEPTED: &str = "hf_accepted";

fn zoo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/zoo-small")
}

fn client() -> Client {
    Client::builder().redirect(redirect::Policy::none()).build().expect("client")
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// A safetensors file with one F32 tensor per `(name, rows, cols)`, values derived from `seed`.
fn safetensors(tensors: &[(&str, usize, usize)], seed: u32) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, rows, cols) in tensors {
        let start = data.len();
        for i in 0..rows * cols {
            let v = ((i as u32).wrapping_mul(2_654_435_761) ^ seed) as f32 / u32::MAX as f32;
            data.extend_from_slice(&v.to_le_bytes());
        }
        header.insert(
            (*name).to_owned(),
            json!({"dtype": "F32", "shape": [rows, cols], "data_offsets": [start, data.len()]}),
        );
    }
    let mut text = Value::Object(header).to_string().into_bytes();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(&data);
    out
}

fn write(path: &Path, bytes: &[u8]) {
    fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    fs::write(path, bytes).expect("write");
}

/// A small root: a base model, a sharded child, a gated and a private repo, and a secret file outside the root.
fn fixture() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    write(&dir.path().join("secret.txt"), b"TOP SECRET");
    let config = br#"{"architectures":["LlamaForCausalLM"],"model_type":"llama"}"#;
    write(&root.join("acme/base/config.json"), config);
    write(&root.join("acme/base/README.md"), b"---\nlicense: mit\npipeline_tag: text-generation\n---\n# base\n");
    write(&root.join("acme/base/model.safetensors"), &safetensors(&[("a.weight", 64, 64), ("b.weight", 32, 64)], 1));
    write(&root.join("acme/sharded/config.json"), config);
    write(&root.join("acme/sharded/README.md"), b"---\nbase_model: acme/base\nlicense: mit\n---\n");
    write(&root.join("acme/sharded/model-00001-of-00002.safetensors"), &safetensors(&[("a.weight", 64, 64)], 2));
    write(&root.join("acme/sharded/model-00002-of-00002.safetensors"), &safetensors(&[("b.weight", 32, 64)], 3));
    write(
        &root.join("acme/sharded/model.safetensors.index.json"),
        json!({"metadata": {"total_size": 24576}, "weight_map": {
            "a.weight": "model-00001-of-00002.safetensors", "b.weight": "model-00002-of-00002.safetensors"}})
        .to_string()
        .as_bytes(),
    );
    write(&root.join("acme/sharded/docs/notes/a.txt"), b"a");
    write(&root.join("acme/sharded/docs/b.txt"), b"b");
    write(&root.join("gate/keeper/config.json"), config);
    write(&root.join("gate/keeper/model.safetensors"), &safetensors(&[("a.weight", 8, 8)], 4));
    write(&root.join("hidden/private/config.json"), config);
    #[cfg(unix)]
    std::os::unix::fs::symlink(dir.path().join("secret.txt"), root.join("acme/base/secret.txt")).expect("symlink");
    (dir, root)
}

fn config(root: &Path) -> ServerConfig {
    ServerConfig {
        gated: vec!["gate/keeper".into()],
        private: vec!["hidden/private".into()],
        tokens: vec![ACCEPTED.into()],
        quotas: QuotaConfig::unlimited(),
        ..ServerConfig::new(root)
    }
}

async fn start(config: ServerConfig) -> Handle {
    hubsim::spawn(config).await.expect("server starts")
}

async fn get_json(client: &Client, url: &str) -> (StatusCode, HeaderMap, Value) {
    let r = client.get(url).send().await.expect("request");
    let (status, headers) = (r.status(), r.headers().clone());
    (status, headers, r.json().await.expect("json"))
}

/// Sends `GET target` on a fresh connection with exactly these bytes and reads until EOF or an error.
async fn raw_get(addr: std::net::SocketAddr, target: &str) -> (String, Vec<u8>, Option<std::io::ErrorKind>) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let error = loop {
        match stream.read(&mut chunk).await {
            Ok(0) => break None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => break Some(e.kind()),
        }
    };
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").map_or(buf.len(), |p| p + 4);
    (String::from_utf8_lossy(&buf[..split]).into_owned(), buf[split..].to_vec(), error)
}

fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.trim().parse().expect("len")))
        .expect("content-length header")
}

/// Follows `Link: rel="next"` from `first`, checking each page's size; returns all items.
async fn all_pages(client: &Client, first: &str, page_size: usize) -> (Vec<Value>, usize) {
    let mut items = Vec::new();
    let mut pages = 0;
    let mut url = Some(first.to_owned());
    while let Some(u) = url.take() {
        let (status, headers, body) = get_json(client, &u).await;
        assert_eq!(status, 200, "{u}");
        let page = body.as_array().expect("array").clone();
        assert!(page.len() <= page_size);
        pages += 1;
        url = header(&headers, "link").map(|l| {
            assert!(l.ends_with(">; rel=\"next\""), "{l}");
            l.trim_start_matches('<').split(">;").next().expect("url").to_owned()
        });
        if url.is_some() {
            assert_eq!(page.len(), page_size, "only the last page may be short");
        }
        items.extend(page);
    }
    (items, pages)
}

#[tokio::test]
async fn listing_pages_follow_link_and_expand() {
    let server =
        start(ServerConfig { page_size: 5, quotas: QuotaConfig::unlimited(), ..ServerConfig::new(zoo()) }).await;
    let c = client();
    let url = format!("{}/api/models?sort=lastModified&direction=-1&expand[]=sha&expand[]=lastModified", server.url());
    let (items, pages) = all_pages(&c, &url, 5).await;
    let truth: Value =
        serde_json::from_slice(&fs::read(zoo().join("ground_truth.json")).expect("truth")).expect("json");
    let expected = truth["models"].as_array().expect("models").len();
    assert_eq!(items.len(), expected);
    assert_eq!(pages, expected.div_ceil(5));
    let ids: HashSet<&str> = items.iter().map(|m| m["id"].as_str().expect("id")).collect();
    assert_eq!(ids.len(), expected, "no duplicates across pages");
    let dates: Vec<&str> = items.iter().map(|m| m["lastModified"].as_str().expect("date")).collect();
    assert!(dates.windows(2).all(|w| w[0] >= w[1]), "newest first: {dates:?}");
    for m in &items {
        let keys: Vec<&String> = m.as_object().expect("object").keys().collect();
        assert_eq!(keys, ["_id", "id", "lastModified", "sha"], "expand returns only what was asked");
    }
    // The Link is absolute, built from the Host header, and keeps the original parameters.
    let r = c.get(&url).send().await.expect("request");
    let link = header(r.headers(), "link").expect("link").to_owned();
    assert!(
        link.starts_with(&format!("<{}/api/models?sort=lastModified&direction=-1&expand[]=sha", server.url())),
        "{link}"
    );

    // author filter, Python-style repeated expand, and the default field set.
    let (items, _) =
        all_pages(&c, &format!("{}/api/models?author=jdoe&expand=createdAt&expand=tags", server.url()), 5).await;
    assert_eq!(items.len(), 5);
    assert!(items.iter().all(|m| m["id"].as_str().is_some_and(|id| id.starts_with("jdoe/")) && m["tags"].is_array()));
    let (_, _, plain) = get_json(&c, &format!("{}/api/models?limit=1", server.url())).await;
    let keys: HashSet<&str> = plain[0].as_object().expect("object").keys().map(String::as_str).collect();
    for key in ["_id", "id", "modelId", "likes", "downloads", "private", "tags", "createdAt", "pipeline_tag"] {
        assert!(keys.contains(key), "default listing has {key}: {keys:?}");
    }
    let (status, headers, _) = get_json(&c, &format!("{}/api/models?expand[]=nonsense", server.url())).await;
    assert_eq!(status, 400);
    assert!(header(&headers, "x-request-id").is_some());
}

#[tokio::test]
async fn model_info_matches_the_files() {
    let server = start(ServerConfig { quotas: QuotaConfig::unlimited(), ..ServerConfig::new(zoo()) }).await;
    let c = client();
    let id = "kaito-lab/bf-pico-add-mod5-ft";
    let (status, headers, info) =
        get_json(&c, &format!("{}/api/models/{id}/revision/main?blobs=true", server.url())).await;
    assert_eq!(status, 200);
    assert!(header(&headers, "x-request-id").is_some_and(|v| v.starts_with("Root=1-")));
    assert_eq!(info["id"], id);
    assert_eq!(info["author"], "kaito-lab");
    assert_eq!(info["sha"].as_str().map(str::len), Some(40));
    assert_eq!(info["_id"].as_str().map(str::len), Some(24));
    assert_eq!(info["private"], false);
    assert_eq!(info["gated"], false);
    assert_eq!(info["library_name"], "transformers");
    assert_eq!(info["config"]["model_type"], "llama");
    let card = &info["cardData"];
    assert_eq!(card["base_model"], "bitforge/bf-pico");
    let tags: Vec<&str> = info["tags"].as_array().expect("tags").iter().filter_map(Value::as_str).collect();
    assert!(tags.contains(&"base_model:bitforge/bf-pico"), "{tags:?}");
    assert!(tags.contains(&"base_model:finetune:bitforge/bf-pico"), "{tags:?}");
    assert!(tags.contains(&"safetensors") && tags.iter().any(|t| t.starts_with("license:")));
    let dir = zoo().join(id);
    for sibling in info["siblings"].as_array().expect("siblings") {
        let name = sibling["rfilename"].as_str().expect("name");
        let bytes = fs::read(dir.join(name)).expect("file");
        assert_eq!(sibling["size"], bytes.len(), "{name}");
        if name.ends_with(".safetensors") {
            let sha = format!("{:x}", Sha256::digest(&bytes));
            assert_eq!(sibling["lfs"]["sha256"], sha.as_str(), "{name}");
            assert_eq!(sibling["lfs"]["size"], bytes.len());
            assert!(sibling["lfs"]["pointerSize"].as_u64().is_some_and(|p| (120..140).contains(&p)));
        } else {
            assert!(sibling.get("lfs").is_none(), "{name} is a git file");
        }
    }
    // The parameter count equals the sum over the shard headers.
    let total: u64 =
        info["safetensors"]["parameters"].as_object().expect("params").values().filter_map(Value::as_u64).sum();
    assert_eq!(info["safetensors"]["total"], total);
    assert_eq!(total, truth_parameters(&dir));

    // Revision by commit sha works, an unknown one does not; expand narrows the answer.
    let sha = info["sha"].as_str().expect("sha");
    let (status, _, by_sha) = get_json(&c, &format!("{}/api/models/{id}/revision/{sha}", server.url())).await;
    assert_eq!((status, by_sha["sha"].as_str()), (StatusCode::OK, Some(sha)));
    let (_, _, narrow) =
        get_json(&c, &format!("{}/api/models/{id}?expand[]=baseModels&expand[]=safetensors", server.url())).await;
    let keys: Vec<&String> = narrow.as_object().expect("object").keys().collect();
    assert_eq!(keys, ["_id", "baseModels", "id", "safetensors"]);
    assert_eq!(narrow["baseModels"], json!({"relation": "finetune", "models": [{"id": "bitforge/bf-pico"}]}));
}

/// Sum of shape products over every safetensors header in a folder, computed independently of the server.
fn truth_parameters(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in fs::read_dir(dir).expect("dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "safetensors") {
            let bytes = fs::read(&path).expect("read");
            let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
            let header: Value = serde_json::from_slice(&bytes[8..8 + n]).expect("header");
            for (name, t) in header.as_object().expect("object") {
                if name != "__metadata__" {
                    total +=
                        t["shape"].as_array().expect("shape").iter().map(|d| d.as_u64().expect("dim")).product::<u64>();
                }
            }
        }
    }
    total
}

#[tokio::test]
async fn resolve_redirects_to_cdn_that_serves_ranges() {
    let (_dir, root) = fixture();
    let server = start(config(&root)).await;
    let c = client();
    let file = fs::read(root.join("acme/base/model.safetensors")).expect("file");
    let size = file.len();
    let sha256 = format!("{:x}", Sha256::digest(&file));
    let (_, _, info) = get_json(&c, &format!("{}/api/models/acme/base", server.url())).await;
    let commit = info["sha"].as_str().expect("sha").to_owned();

    let head = c.head(format!("{}/acme/base/resolve/main/model.safetensors", server.url())).send().await.expect("head");
    assert_eq!(head.status(), 302);
    let h = head.headers();
    assert_eq!(header(h, "x-repo-commit"), Some(commit.as_str()));
    assert_eq!(header(h, "x-linked-size"), Some(size.to_string().as_str()));
    assert_eq!(header(h, "x-linked-etag"), Some(format!("\"{sha256}\"").as_str()));
    assert_eq!(header(h, "content-length"), Some("0"));
    assert!(h.get("x-xet-hash").is_none());
    let location = header(h, "location").expect("location").to_owned();
    assert!(location.starts_with(&format!("http://127.0.0.1:{}/cdn/", server.cdn_addr.port())), "{location}");
    assert!(location.contains("Expires=") && location.contains("Signature="));

    // The CDN is another origin and honours single ranges.
    let get = |range: Option<&str>| {
        let mut r = c.get(&location);
        if let Some(range) = range {
            r = r.header("Range", range);
        }
        r.send()
    };
    let r = get(Some("bytes=0-99")).await.expect("range");
    assert_eq!(r.status(), 206);
    assert_eq!(header(r.headers(), "content-range"), Some(format!("bytes 0-99/{size}").as_str()));
    assert_eq!(header(r.headers(), "accept-ranges"), Some("bytes"));
    assert_eq!(r.bytes().await.expect("body").as_ref(), &file[..100]);
    let r = get(Some("bytes=-10")).await.expect("suffix");
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.expect("body").as_ref(), &file[size - 10..]);
    let r = get(Some("bytes=100-")).await.expect("open");
    assert_eq!(header(r.headers(), "content-range"), Some(format!("bytes 100-{}/{size}", size - 1).as_str()));
    assert_eq!(r.bytes().await.expect("body").as_ref(), &file[100..]);
    let r = get(None).await.expect("full");
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.expect("body").as_ref(), &file[..]);
    let r = get(Some(&format!("bytes={size}-"))).await.expect("416");
    assert_eq!(r.status(), 416);
    assert_eq!(header(r.headers(), "content-range"), Some(format!("bytes */{size}").as_str()));
    // Several ranges in one header: the whole file with 200, as the Hub's storage answers.
    let r = get(Some("bytes=0-1,5-6")).await.expect("multi");
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.expect("body").len(), size);

    // Small files are served directly, with the git oid as ETag, ranges included.
    let readme = fs::read(root.join("acme/base/README.md")).expect("readme");
    let head = c.head(format!("{}/acme/base/resolve/{commit}/README.md", server.url())).send().await.expect("head");
    assert_eq!(head.status(), 200);
    assert_eq!(header(head.headers(), "x-repo-commit"), Some(commit.as_str()));
    assert_eq!(header(head.headers(), "content-length"), Some(readme.len().to_string().as_str()));
    let oid = info["siblings"].as_array().expect("siblings").iter().find(|s| s["rfilename"] == "README.md");
    assert!(oid.is_some());
    let tree = get_json(&c, &format!("{}/api/models/acme/base/tree/main", server.url())).await.2;
    let readme_oid =
        tree.as_array().expect("tree").iter().find(|e| e["path"] == "README.md").expect("entry")["oid"].clone();
    assert_eq!(
        header(head.headers(), "etag").map(str::to_owned),
        Some(format!("\"{}\"", readme_oid.as_str().expect("oid")))
    );
    let r = c
        .get(format!("{}/acme/base/resolve/main/README.md", server.url()))
        .header("Range", "bytes=4-10")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.expect("body").as_ref(), &readme[4..=10]);
}

#[tokio::test]
async fn expired_and_forged_cdn_urls_are_denied() {
    let (_dir, root) = fixture();
    let server = start(ServerConfig { url_ttl: Duration::from_secs(1), ..config(&root) }).await;
    let c = client();
    let resolve = format!("{}/acme/base/resolve/main/model.safetensors", server.url());
    let location = |r: &reqwest::Response| header(r.headers(), "location").expect("location").to_owned();
    let fresh = location(&c.head(&resolve).send().await.expect("head"));
    let forged = fresh.replacen("Signature=", "Signature=0", 1);
    let r = c.get(&forged).send().await.expect("forged");
    assert_eq!(r.status(), 403);
    assert!(r.text().await.expect("body").contains("<Code>AccessDenied</Code>"));
    assert_eq!(c.get(&fresh).header("Range", "bytes=0-7").send().await.expect("fresh").status(), 206);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = c.get(&fresh).send().await.expect("expired");
    assert_eq!(r.status(), 403);
    assert!(r.text().await.expect("body").contains("Request has expired"));
    // Resolving again gives a working URL.
    let again = location(&c.head(&resolve).send().await.expect("head"));
    assert_eq!(c.get(&again).header("Range", "bytes=0-7").send().await.expect("again").status(), 206);
}

#[tokio::test]
async fn errors_carry_hub_error_codes() {
    let (_dir, root) = fixture();
    let server = start(config(&root)).await;
    let c = client();
    let base = server.url();
    let check = |url: String, token: Option<&'static str>, status: u16, code: Option<&'static str>| {
        let c = c.clone();
        async move {
            let mut r = c.get(&url);
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            let r = r.send().await.expect("request");
            assert_eq!(r.status().as_u16(), status, "{url}");
            assert_eq!(header(r.headers(), "x-error-code"), code, "{url}");
            assert!(header(r.headers(), "x-request-id").is_some());
            if code.is_some() {
                assert!(header(r.headers(), "x-error-message").is_some());
                let body: Value = r.json().await.expect("json error");
                assert!(body["error"].is_string());
            }
        }
    };
    check(format!("{base}/api/models/nobody/nothing"), None, 401, Some("RepoNotFound")).await;
    check(format!("{base}/api/models/nobody/nothing"), Some("hf_other"), 404, Some("RepoNotFound")).await;
    check(format!("{base}/nobody/nothing/resolve/main/config.json"), None, 401, Some("RepoNotFound")).await;
    check(format!("{base}/api/models/acme/base/revision/v9"), None, 404, Some("RevisionNotFound")).await;
    check(
        format!("{base}/acme/base/resolve/0000000000000000000000000000000000000000/config.json"),
        None,
        404,
        Some("RevisionNotFound"),
    )
    .await;
    check(format!("{base}/acme/base/resolve/main/missing.json"), None, 404, Some("EntryNotFound")).await;
    check(format!("{base}/api/models/acme/base/tree/main/nope"), None, 404, Some("EntryNotFound")).await;
    // Gated: metadata is public, files need an accepted token.
    check(format!("{base}/api/models/gate/keeper"), None, 200, None).await;
    check(format!("{base}/gate/keeper/resolve/main/config.json"), None, 401, Some("GatedRepo")).await;
    check(format!("{base}/gate/keeper/resolve/main/config.json"), Some("hf_other"), 403, Some("GatedRepo")).await;
    check(format!("{base}/gate/keeper/resolve/main/config.json"), Some(ACCEPTED), 200, None).await;
    check(format!("{base}/api/models/gate/keeper/auth-check"), Some("hf_other"), 403, Some("GatedRepo")).await;
    // Private: invisible without an accepted token.
    check(format!("{base}/api/models/hidden/private"), None, 401, Some("RepoNotFound")).await;
    check(format!("{base}/api/models/hidden/private"), Some("hf_other"), 404, Some("RepoNotFound")).await;
    check(format!("{base}/api/models/hidden/private"), Some(ACCEPTED), 200, None).await;

    let (_, _, gated) = get_json(&c, &format!("{base}/api/models/gate/keeper")).await;
    assert_eq!(gated["gated"], "manual");
    let (_, _, anonymous) = get_json(&c, &format!("{base}/api/models")).await;
    let ids: Vec<&str> = anonymous.as_array().expect("list").iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(ids, ["acme/base", "acme/sharded", "gate/keeper"]);
    let with_token = c.get(format!("{base}/api/models")).bearer_auth(ACCEPTED).send().await.expect("list");
    assert_eq!(with_token.json::<Value>().await.expect("json").as_array().map(Vec::len), Some(4));
}

#[tokio::test]
async fn quotas_answer_429_with_ratelimit_headers_and_log_early_requests() {
    let (_dir, root) = fixture();
    let limits = Limits { api: 3, resolvers: 2 };
    let quotas = QuotaConfig {
        enabled: true,
        window: Duration::from_secs(3),
        anonymous: limits,
        free: Limits { api: 5, resolvers: 5 },
        pro: limits,
        pro_tokens: vec![],
    };
    let server = start(ServerConfig { quotas, ..config(&root) }).await;
    let c = client();
    let url = format!("{}/api/models/acme/base", server.url());
    // The window (3 s, aligned to the server start) is fresh: these four quick requests share it.
    let mut seen = Vec::new();
    for _ in 0..4 {
        let r = c.get(&url).send().await.expect("request");
        seen.push((r.status().as_u16(), r.headers().clone()));
    }
    let remaining: Vec<&str> = seen.iter().map(|(_, h)| header(h, "ratelimit").expect("ratelimit header")).collect();
    assert!(remaining[0].starts_with("\"api\";r=2;t="), "{remaining:?}");
    assert!(remaining[2].starts_with("\"api\";r=0;t="), "{remaining:?}");
    assert_eq!(seen.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [200, 200, 200, 429]);
    let h = &seen[3].1;
    assert_eq!(header(h, "ratelimit-policy"), Some("\"fixed window\";\"api\";q=3;w=3"));
    let retry: u64 = header(h, "retry-after").expect("retry-after").parse().expect("secs");
    assert!((1..=3).contains(&retry), "{retry}");
    // The fourth request came after r=0 and before the reset: logged as early.
    let early = server.early_requests();
    assert_eq!(early.len(), 1, "{early:?}");
    assert_eq!((early[0].status, early[0].bucket), (429, Some(Bucket::Api)));
    // After the announced reset the client may proceed and is not early.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    let r = c.get(&url).send().await.expect("after reset");
    assert_eq!(r.status(), 200);
    assert_eq!(server.early_requests().len(), 1);
    // Buckets and keys are independent: resolves have their own quota, a token its own counter and tier.
    let r = c.get(format!("{}/acme/base/resolve/main/config.json", server.url())).send().await.expect("resolve");
    assert!(header(r.headers(), "ratelimit").is_some_and(|v| v.starts_with("\"resolvers\";r=")));
    assert!(header(r.headers(), "ratelimit-policy").is_some_and(|v| v.contains("q=2")));
    let r = c.get(&url).bearer_auth("hf_free").send().await.expect("token");
    assert_eq!(r.status(), 200);
    assert!(header(r.headers(), "ratelimit-policy").is_some_and(|v| v.contains("q=5")));
    // The CDN is not limited.
    let loc = c
        .head(format!("{}/acme/base/resolve/main/model.safetensors", server.url()))
        .bearer_auth("hf_free")
        .send()
        .await
        .expect("head");
    let loc = header(loc.headers(), "location").expect("location").to_owned();
    let r = c.get(&loc).header("Range", "bytes=0-7").send().await.expect("cdn");
    assert!(r.headers().get("ratelimit").is_none());
}

fn fault_server_config(root: &Path, faults: FaultConfig) -> ServerConfig {
    ServerConfig { faults, ..config(root) }
}

#[tokio::test]
async fn each_fault_kind_is_injected_and_logged() {
    let (_dir, root) = fixture();
    let file = fs::read(root.join("acme/base/model.safetensors")).expect("file");
    let c = client();
    let cdn_only = FaultScope { api: false, resolvers: false, cdn: true };

    // 5xx everywhere.
    let server = start(fault_server_config(&root, FaultConfig { seed: 1, p_5xx: 1.0, ..FaultConfig::default() })).await;
    let r = c.get(format!("{}/api/models/acme/base", server.url())).send().await.expect("request");
    assert!([500, 502, 503].contains(&r.status().as_u16()), "{}", r.status());
    assert!(matches!(server.request_log()[0].faults.as_slice(), [Fault::ServerError(500 | 502 | 503)]));

    // Reset mid-body: some bytes, then ECONNRESET.
    let faults = FaultConfig { seed: 2, p_reset_mid_body: 1.0, scope: cdn_only.clone(), ..FaultConfig::default() };
    let server = start(fault_server_config(&root, faults)).await;
    let loc = cdn_location(&c, &server).await;
    let (head, body, error) = raw_get(server.cdn_addr, &loc).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(content_length(&head), file.len());
    assert!(!body.is_empty() && body.len() < file.len(), "{} bytes", body.len());
    assert_eq!(&body[..], &file[..body.len()]);
    assert_eq!(error, Some(std::io::ErrorKind::ConnectionReset));
    let logged = server.request_log().into_iter().find(|r| r.path.starts_with("/cdn/")).expect("cdn request");
    assert_eq!(logged.faults, [Fault::ResetMidBody { after: body.len() as u64 }]);

    // Truncated: fewer bytes than Content-Length, then a clean EOF; also through reqwest as a body error.
    let faults = FaultConfig { seed: 3, p_truncate: 1.0, scope: cdn_only.clone(), ..FaultConfig::default() };
    let server = start(fault_server_config(&root, faults)).await;
    let loc = cdn_location(&c, &server).await;
    let (head, body, error) = raw_get(server.cdn_addr, &loc).await;
    assert_eq!(content_length(&head), file.len());
    assert!(!body.is_empty() && body.len() < file.len());
    assert_eq!(error, None, "a FIN, not a reset");
    let r =
        c.get(format!("http://{}{loc}", server.cdn_addr)).header("Range", "bytes=0-999").send().await.expect("send");
    assert_eq!(r.status(), 206);
    assert!(r.bytes().await.is_err(), "a short body is an error for a client");
    assert!(server.request_log().iter().any(|r| matches!(r.faults.as_slice(), [Fault::Truncated { .. }])));

    // Slow headers.
    let faults = FaultConfig { seed: 4, p_slow: 1.0, slow_ms: 400, ..FaultConfig::default() };
    let server = start(fault_server_config(&root, faults)).await;
    let started = Instant::now();
    assert_eq!(c.get(format!("{}/api/models", server.url())).send().await.expect("slow").status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(server.request_log()[0].faults, [Fault::Slow]);

    // Expired CDN URLs straight from the resolver.
    let faults = FaultConfig { seed: 5, p_expire_url: 1.0, ..FaultConfig::default() };
    let server = start(fault_server_config(&root, faults)).await;
    let loc = cdn_location(&c, &server).await;
    let r = c.get(format!("http://{}{loc}", server.cdn_addr)).send().await.expect("expired");
    assert_eq!(r.status(), 403);
    assert_eq!(server.request_log()[0].faults, [Fault::ExpiredUrl]);

    // A 429 storm after two requests, for two requests, announcing a 1 s wait.
    let storm = Storm { start_after: 2, count: 2, retry_after_secs: 1 };
    let server = start(fault_server_config(&root, FaultConfig { storm: Some(storm), ..FaultConfig::default() })).await;
    let url = format!("{}/api/models/acme/base", server.url());
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let r = c.get(&url).send().await.expect("request");
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            assert_eq!(header(r.headers(), "retry-after"), Some("1"));
            assert!(header(r.headers(), "ratelimit").is_some_and(|v| v.starts_with("\"api\";r=0;t=1")));
            // A polite client waits as told before the next try; then none of its requests is early.
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
    }
    assert_eq!(statuses, [200, 200, 429, 429]);
    assert_eq!(c.get(&url).send().await.expect("after storm").status(), 200);
    assert!(server.early_requests().is_empty(), "{:?}", server.early_requests());
    let storms = server.request_log().iter().filter(|r| r.faults == [Fault::Storm]).count();
    assert_eq!(storms, 2);
}

/// The path and query of a fresh CDN URL for `acme/base`'s weights.
async fn cdn_location(c: &Client, server: &Handle) -> String {
    let r = c.head(format!("{}/acme/base/resolve/main/model.safetensors", server.url())).send().await.expect("head");
    assert_eq!(r.status(), 302);
    let location = header(r.headers(), "location").expect("location");
    location.split_once(&server.cdn_addr.to_string()).expect("cdn origin").1.to_owned()
}

#[tokio::test]
async fn faults_are_deterministic_for_a_seed() {
    let (_dir, root) = fixture();
    let c = client();
    let mut runs = Vec::new();
    for seed in [11, 11, 12] {
        let faults = FaultConfig { seed, p_5xx: 0.5, ..FaultConfig::default() };
        let server = start(fault_server_config(&root, faults)).await;
        let mut statuses = Vec::new();
        for _ in 0..24 {
            statuses.push(
                c.get(format!("{}/api/models/acme/base", server.url())).send().await.expect("r").status().as_u16(),
            );
        }
        runs.push(statuses);
    }
    assert_eq!(runs[0], runs[1]);
    assert_ne!(runs[0], runs[2]);
    assert!(runs[0].contains(&200) && runs[0].iter().any(|s| *s >= 500));
}

#[tokio::test]
async fn nothing_outside_the_root_is_served() {
    let (_dir, root) = fixture();
    let server = start(config(&root)).await;
    for target in [
        "/acme/base/resolve/main/../../secret.txt",
        "/acme/base/resolve/main/..%2F..%2Fsecret.txt",
        "/acme/base/resolve/main/%2E%2E/%2E%2E/secret.txt",
        "/acme/base/resolve/main/secret.txt",
        "/acme/../secret.txt/resolve/main/x",
        "/api/models/acme/base/tree/main/..%2F..",
        "/acme/base/resolve/main/%2Fetc%2Fpasswd",
    ] {
        let (head, body, _) = raw_get(server.addr, target).await;
        assert!(head.starts_with("HTTP/1.1 4"), "{target}: {head}");
        assert!(!String::from_utf8_lossy(&body).contains("TOP SECRET"), "{target}");
        assert!(!String::from_utf8_lossy(&body).contains("root:"), "{target}");
    }
    let (_, _, info) = get_json(&client(), &format!("{}/api/models/acme/base", server.url())).await;
    let names: Vec<&str> =
        info["siblings"].as_array().expect("siblings").iter().filter_map(|s| s["rfilename"].as_str()).collect();
    assert_eq!(names, ["README.md", "config.json", "model.safetensors"], "the symlink is not indexed");
}

#[tokio::test]
async fn tree_paths_info_and_safetensors_metadata() {
    let (_dir, root) = fixture();
    let server = start(ServerConfig { page_size: 3, ..config(&root) }).await;
    let c = client();
    let (entries, pages) =
        all_pages(&c, &format!("{}/api/models/acme/sharded/tree/main?recursive=true", server.url()), 3).await;
    let paths: Vec<&str> = entries.iter().filter_map(|e| e["path"].as_str()).collect();
    assert_eq!(
        paths,
        [
            "README.md",
            "config.json",
            "docs",
            "docs/b.txt",
            "docs/notes",
            "docs/notes/a.txt",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json"
        ]
    );
    assert_eq!(pages, 3);
    let shard = entries.iter().find(|e| e["path"] == "model-00001-of-00002.safetensors").expect("shard");
    let bytes = fs::read(root.join("acme/sharded/model-00001-of-00002.safetensors")).expect("shard");
    assert_eq!(shard["type"], "file");
    assert_eq!(shard["size"], bytes.len());
    assert_eq!(shard["lfs"]["oid"], format!("{:x}", Sha256::digest(&bytes)).as_str());
    let (_, _, sub) = get_json(&c, &format!("{}/api/models/acme/sharded/tree/main/docs%2Fnotes", server.url())).await;
    assert_eq!(sub, json!([{"type": "file", "oid": sub[0]["oid"], "size": 1, "path": "docs/notes/a.txt"}]));

    let r = c
        .post(format!("{}/api/models/acme/sharded/paths-info/main", server.url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("paths=docs&paths=config.json&paths=missing&expand=false")
        .send()
        .await
        .expect("paths-info");
    let info: Value = r.json().await.expect("json");
    assert_eq!(info.as_array().map(Vec::len), Some(2));
    assert_eq!((info[0]["type"].as_str(), info[1]["path"].as_str()), (Some("directory"), Some("config.json")));

    let (status, _, meta) = get_json(
        &c,
        &format!("{}/api/models/acme/sharded/safetensors-metadata/model.safetensors.index.json", server.url()),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(meta["index"]["metadata"]["total_size"], 24576);
    assert_eq!(meta["headers"]["model-00002-of-00002.safetensors"]["b.weight"]["shape"], json!([32, 64]));
    let (_, _, info) = get_json(&c, &format!("{}/api/models/acme/sharded", server.url())).await;
    assert_eq!(info["safetensors"], json!({"parameters": {"F32": 64 * 64 + 32 * 64}, "total": 64 * 64 + 32 * 64}));
}

#[tokio::test]
async fn rescan_picks_up_new_and_changed_repos() {
    let (_dir, root) = fixture();
    let server = start(config(&root)).await;
    let c = client();
    let newest = || async {
        let (_, _, list) =
            get_json(&c, &format!("{}/api/models?sort=lastModified&direction=-1&limit=1&expand[]=sha", server.url()))
                .await;
        list[0].clone()
    };
    let before = get_json(&c, &format!("{}/api/models/acme/base", server.url())).await.2;
    write(&root.join("late/comer/config.json"), b"{}");
    assert_eq!(get_json(&c, &format!("{}/api/models/late/comer", server.url())).await.0, 401);
    let report = server.rescan().await.expect("rescan");
    assert_eq!(report.repos, 5);
    assert_eq!(get_json(&c, &format!("{}/api/models/late/comer", server.url())).await.0, 200);
    // A changed repo gets a new commit and moves to the front of the lastModified order.
    tokio::time::sleep(Duration::from_millis(20)).await;
    write(&root.join("acme/base/extra.txt"), b"new file");
    server.rescan().await.expect("rescan");
    let top = newest().await;
    assert_eq!(top["id"], "acme/base");
    assert_ne!(top["sha"], before["sha"]);
    let old_sha = before["sha"].as_str().expect("sha");
    let r = c.get(format!("{}/acme/base/resolve/{old_sha}/config.json", server.url())).send().await.expect("old");
    assert_eq!(header(r.headers(), "x-error-code"), Some("RevisionNotFound"));
}

/// A daemon lists by `lastModified` down to its checkpoint: a repo pushed into the folder must come first in the
/// next listing even when `ground_truth.json` dates it years ago, and a removed repo must be gone, without a
/// restart or an explicit rescan.
#[tokio::test]
async fn listing_rescans_and_new_repos_sort_first() {
    let (_dir, root) = fixture();
    write(
        &root.join("ground_truth.json"),
        br#"{"models":[{"model":"late/comer","created_at":"2020-01-01T00:00:00Z"}]}"#,
    );
    let server = start(ServerConfig { rescan_on_list: true, ..config(&root) }).await;
    let c = client();
    let ids = || async {
        let url = format!(
            "{}/api/models?sort=lastModified&direction=-1&expand[]=createdAt&expand[]=lastModified",
            server.url()
        );
        let (_, _, list) = get_json(&c, &url).await;
        let list = list.as_array().cloned().unwrap_or_default();
        list.iter().map(|m| m["id"].as_str().unwrap_or_default().to_owned()).collect::<Vec<_>>()
    };
    // Four repos, one of them private (not listed to an anonymous caller).
    assert_eq!(ids().await.len(), 3);
    write(&root.join("late/comer/config.json"), b"{}");
    let listed = ids().await;
    assert_eq!(listed.first().map(String::as_str), Some("late/comer"), "{listed:?}");
    let info = get_json(&c, &format!("{}/api/models/late/comer", server.url())).await.2;
    assert_eq!(info["createdAt"], "2020-01-01T00:00:00.000Z", "createdAt still comes from ground_truth.json");
    assert!(info["lastModified"].as_str().unwrap_or_default() > "2025", "{info}");
    fs::remove_dir_all(root.join("acme/sharded")).expect("remove");
    let listed = ids().await;
    assert!(!listed.contains(&"acme/sharded".to_owned()) && listed.len() == 3, "{listed:?}");
    assert_eq!(get_json(&c, &format!("{}/api/models/acme/sharded", server.url())).await.0, 401);
}

/// Sets the mtime of the root, its orgs and their repos an hour back, so that the listing's look at the folder's
/// shape trusts it (a shape with an mtime from the last two seconds is rescanned anyway).
fn backdate(root: &Path) {
    let past = std::time::SystemTime::now() - Duration::from_secs(3600);
    let mut dirs = vec![root.to_path_buf()];
    for org in fs::read_dir(root).expect("root") {
        let org = org.expect("org").path();
        dirs.extend(fs::read_dir(&org).expect("org dir").map(|repo| repo.expect("repo").path()));
        dirs.push(org);
    }
    for dir in dirs {
        fs::File::open(&dir).expect("open dir").set_modified(past).expect("backdate");
    }
}

/// Issue #11: `hub serve` re-read every repo (cards, configs, safetensors headers) for each listing. A listing of
/// an unchanged folder must not scan it, and a repo pushed into it must still show in the next listing.
#[tokio::test]
async fn issue_11_listing_rescans_only_when_the_folder_changed() {
    let (_dir, root) = fixture();
    backdate(&root);
    let server = start(ServerConfig { rescan_on_list: true, ..config(&root) }).await;
    let c = client();
    let ids = || async {
        let (_, _, list) = get_json(&c, &format!("{}/api/models?sort=lastModified&direction=-1", server.url())).await;
        let list = list.as_array().cloned().unwrap_or_default();
        list.iter().map(|m| m["id"].as_str().unwrap_or_default().to_owned()).collect::<Vec<_>>()
    };
    assert_eq!(server.scans(), 1, "the scan at start");
    for _ in 0..3 {
        assert_eq!(ids().await.len(), 3);
    }
    assert_eq!(server.scans(), 1, "listings of an unchanged folder do not rescan it");
    write(&root.join("acme/pushed/config.json"), b"{}");
    let listed = ids().await;
    assert_eq!(listed.first().map(String::as_str), Some("acme/pushed"), "{listed:?}");
    assert_eq!(server.scans(), 2);
    fs::remove_dir_all(root.join("acme/pushed")).expect("remove");
    assert_eq!(ids().await.len(), 3);
}

#[tokio::test]
async fn shutdown_stops_listening() {
    let (_dir, root) = fixture();
    let server = start(config(&root)).await;
    let addr = server.addr;
    assert_eq!(client().get(format!("http://{addr}/api/models")).send().await.expect("up").status(), 200);
    tokio::time::timeout(Duration::from_secs(10), server.shutdown()).await.expect("shutdown finishes");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
