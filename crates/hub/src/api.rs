//! The Hub's JSON API: listing models (`/api/models`, paged by `Link: <…>; rel="next"`) and one model's info at
//! a revision (`/api/models/{id}/revision/{rev}?blobs=true`).
//!
//! Everything in these documents is untrusted. The parsers are tolerant where the Hub's data is known to be
//! dirty (card data: strings where lists are expected, lists where strings are, junk types) and strict where a
//! value drives later requests: repository ids, commit ids and file names are validated, and an entry whose id
//! is invalid is reported as an error item rather than silently dropped. Sibling files with unsafe names are
//! left out of [`RepoInfo::siblings`] and counted in [`RepoInfo::rejected_siblings`].

use std::collections::VecDeque;

use chrono::{DateTime, Utc};
use futures::Stream;
use reqwest::Url;
use reqwest::header::HeaderMap;
use serde_json::{Map, Value};

use crate::client::HubClient;
use crate::error::{HubError, shown};
use crate::ids::{Commit, RepoId, Revision, check_file_name};

/// Longest string kept from card data or tags; longer ones are cut (they are labels, not documents).
const MAX_LABEL: usize = 512;

/// Most entries kept from one card-data or tag list.
const MAX_LIST: usize = 256;

/// Parameters of `GET /api/models`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListQuery {
    pub author: Option<String>,
    /// Substring of the id.
    pub search: Option<String>,
    /// Tags, each sent as its own `filter=` parameter.
    pub filter: Vec<String>,
    /// `lastModified`, `createdAt`, `downloads`, `likes`, `trendingScore`.
    pub sort: Option<String>,
    /// `-1` for descending.
    pub direction: Option<i32>,
    /// Page size (the Hub serves up to 1000 per page). The stream itself is not capped: use `.take(n)`.
    pub limit: Option<u32>,
    /// Properties to return, each sent as `expand[]=…` (then only those and `id` come back).
    pub expand: Vec<String>,
}

/// `gated` of a repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gated {
    No,
    Auto,
    Manual,
    /// Any other value, kept as text.
    Other(String),
}

/// The README card's YAML as the API returns it (`cardData`), with the fields lineage and audit use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CardData {
    /// `license` (a string or a list on the Hub).
    pub licenses: Vec<String>,
    pub license_name: Option<String>,
    pub license_link: Option<String>,
    /// `base_model` (a string or a list), as written: not validated as repository ids, may name the repo
    /// itself or form cycles.
    pub base_models: Vec<String>,
    /// `base_model_relation` as written (`adapter`, `merge`, `quantized`, `finetune`, or anything else).
    pub base_model_relation: Option<String>,
    /// Values of the fields above that had an unusable type, as `field: kind`.
    pub anomalies: Vec<String>,
}

/// The part of the API's `config` field kept.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelConfig {
    pub model_type: Option<String>,
    pub architectures: Vec<String>,
    /// `quantization_config` as JSON (already bounded by the document cap).
    pub quantization_config: Option<Value>,
}

/// An LFS pointer's facts (`?blobs=true`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lfs {
    /// Lowercase hex sha256 of the content.
    pub sha256: String,
    pub size: u64,
    pub pointer_size: Option<u64>,
}

/// A file of a repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sibling {
    /// Path in the repository; passed [`check_file_name`].
    pub rfilename: String,
    /// Size in bytes (with `?blobs=true`).
    pub size: Option<u64>,
    pub blob_id: Option<String>,
    pub lfs: Option<Lfs>,
}

/// One entry of a model listing. Which fields are present depends on `expand`.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSummary {
    pub id: RepoId,
    pub internal_id: Option<String>,
    pub author: Option<String>,
    pub sha: Option<Commit>,
    pub last_modified: Option<DateTime<Utc>>,
    pub created_at: Option<DateTime<Utc>>,
    pub private: Option<bool>,
    pub gated: Option<Gated>,
    pub disabled: Option<bool>,
    pub downloads: Option<u64>,
    pub likes: Option<u64>,
    pub tags: Vec<String>,
    pub pipeline_tag: Option<String>,
    pub library_name: Option<String>,
    pub card_data: Option<CardData>,
    pub config: Option<ModelConfig>,
    /// `safetensors.total`: parameter count the Hub computed.
    pub safetensors_params: Option<u64>,
    pub siblings: Vec<Sibling>,
    pub rejected_siblings: Vec<String>,
}

/// A model at one commit (`/api/models/{id}/revision/{rev}?blobs=true`).
#[derive(Clone, Debug, PartialEq)]
pub struct RepoInfo {
    pub id: RepoId,
    /// The commit the revision resolved to.
    pub sha: Commit,
    pub internal_id: Option<String>,
    pub author: Option<String>,
    pub last_modified: Option<DateTime<Utc>>,
    pub created_at: Option<DateTime<Utc>>,
    pub private: Option<bool>,
    pub gated: Option<Gated>,
    pub disabled: Option<bool>,
    pub tags: Vec<String>,
    pub pipeline_tag: Option<String>,
    pub library_name: Option<String>,
    pub card_data: Option<CardData>,
    pub config: Option<ModelConfig>,
    pub safetensors_params: Option<u64>,
    /// Files with sizes and LFS facts, unsafe names removed.
    pub siblings: Vec<Sibling>,
    /// Names of files refused by [`check_file_name`] (cut to 200 characters).
    pub rejected_siblings: Vec<String>,
}

impl RepoInfo {
    pub fn sibling(&self, name: &str) -> Option<&Sibling> {
        self.siblings.iter().find(|s| s.rfilename == name)
    }
}

fn label(s: &str) -> String {
    s.chars().take(MAX_LABEL).collect()
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn string(o: &Map<String, Value>, key: &str) -> Option<String> {
    o.get(key).and_then(Value::as_str).map(label)
}

fn date(o: &Map<String, Value>, key: &str) -> Option<DateTime<Utc>> {
    o.get(key).and_then(Value::as_str).and_then(|s| DateTime::parse_from_rfc3339(s).ok()).map(|d| d.to_utc())
}

/// A string or a list of strings; other values are recorded as anomalies.
fn strings(o: &Map<String, Value>, key: &str, anomalies: &mut Vec<String>) -> Vec<String> {
    match o.get(key) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![label(s)],
        Some(Value::Array(items)) => {
            let mut out = Vec::new();
            for item in items.iter().take(MAX_LIST) {
                match item {
                    Value::String(s) => out.push(label(s)),
                    other => anomalies.push(format!("{key}[]: {}", kind(other))),
                }
            }
            out
        }
        Some(other) => {
            anomalies.push(format!("{key}: {}", kind(other)));
            Vec::new()
        }
    }
}

fn gated(v: &Value) -> Gated {
    match v {
        Value::Bool(false) => Gated::No,
        Value::String(s) if s == "auto" => Gated::Auto,
        Value::String(s) if s == "manual" => Gated::Manual,
        Value::String(s) => Gated::Other(label(s)),
        other => Gated::Other(kind(other).to_owned()),
    }
}

fn card_data(v: &Value) -> Option<CardData> {
    let o = v.as_object()?;
    let mut anomalies = Vec::new();
    let licenses = strings(o, "license", &mut anomalies);
    let base_models = strings(o, "base_model", &mut anomalies);
    let base_model_relation = match o.get("base_model_relation") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(label(s)),
        Some(other) => {
            anomalies.push(format!("base_model_relation: {}", kind(other)));
            None
        }
    };
    Some(CardData {
        licenses,
        license_name: string(o, "license_name"),
        license_link: string(o, "license_link"),
        base_models,
        base_model_relation,
        anomalies,
    })
}

fn model_config(v: &Value) -> Option<ModelConfig> {
    let o = v.as_object()?;
    let mut ignored = Vec::new();
    Some(ModelConfig {
        model_type: string(o, "model_type"),
        architectures: strings(o, "architectures", &mut ignored),
        quantization_config: o.get("quantization_config").filter(|q| q.is_object()).cloned(),
    })
}

fn sibling(v: &Value) -> Result<Sibling, String> {
    let o = v.as_object().ok_or_else(|| kind(v).to_owned())?;
    let name = o.get("rfilename").and_then(Value::as_str).ok_or_else(|| "sibling without rfilename".to_owned())?;
    check_file_name(name).map_err(|_| name.chars().take(200).collect::<String>())?;
    let lfs = o.get("lfs").and_then(Value::as_object).and_then(|l| {
        let sha256 = l.get("sha256").or_else(|| l.get("oid")).and_then(Value::as_str)?;
        let ok = sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit());
        ok.then(|| Lfs {
            sha256: sha256.to_ascii_lowercase(),
            size: l.get("size").and_then(Value::as_u64).unwrap_or(0),
            pointer_size: l.get("pointerSize").and_then(Value::as_u64),
        })
    });
    Ok(Sibling {
        rfilename: name.to_owned(),
        size: o.get("size").and_then(Value::as_u64).or(lfs.as_ref().map(|l| l.size)),
        blob_id: string(o, "blobId"),
        lfs,
    })
}

/// Parses one listing entry or model info document.
fn summary(v: &Value) -> Result<ModelSummary, String> {
    let o = v.as_object().ok_or_else(|| format!("model entry is a {}", kind(v)))?;
    let id = o.get("id").or_else(|| o.get("modelId")).and_then(Value::as_str).ok_or("model entry without id")?;
    let id = RepoId::parse(id).map_err(|e| e.to_string())?;
    let mut siblings = Vec::new();
    let mut rejected_siblings = Vec::new();
    if let Some(Value::Array(items)) = o.get("siblings") {
        for item in items {
            match sibling(item) {
                Ok(s) => siblings.push(s),
                Err(name) => rejected_siblings.push(name),
            }
        }
    }
    let mut tag_anomalies = Vec::new();
    Ok(ModelSummary {
        id,
        internal_id: string(o, "_id"),
        author: string(o, "author"),
        sha: o.get("sha").and_then(Value::as_str).and_then(|s| Commit::parse(s).ok()),
        last_modified: date(o, "lastModified"),
        created_at: date(o, "createdAt"),
        private: o.get("private").and_then(Value::as_bool),
        gated: o.get("gated").map(gated),
        disabled: o.get("disabled").and_then(Value::as_bool),
        downloads: o.get("downloads").and_then(Value::as_u64),
        likes: o.get("likes").and_then(Value::as_u64),
        tags: strings(o, "tags", &mut tag_anomalies),
        pipeline_tag: string(o, "pipeline_tag"),
        library_name: string(o, "library_name"),
        card_data: o.get("cardData").and_then(card_data),
        config: o.get("config").and_then(model_config),
        safetensors_params: o.get("safetensors").and_then(|s| s.get("total")).and_then(Value::as_u64),
        siblings,
        rejected_siblings,
    })
}

/// The `rel="next"` target of a `Link` header (RFC 8288 syntax, several links allowed).
pub(crate) fn next_link(value: &str) -> Option<&str> {
    let mut rest = value;
    loop {
        let open = rest.find('<')?;
        let close = open + rest[open..].find('>')?;
        let target = &rest[open + 1..close];
        rest = &rest[close + 1..];
        // Parameters run to the next link (a `<` after a comma).
        let params_end = rest.find(",").map_or(rest.len(), |i| i);
        let params = &rest[..params_end];
        let is_next = params.split(';').any(|p| {
            let p = p.trim();
            p.strip_prefix("rel=")
                .is_some_and(|v| v.trim_matches('"').split_ascii_whitespace().any(|r| r.eq_ignore_ascii_case("next")))
        });
        if is_next {
            return Some(target);
        }
    }
}

/// State of a listing stream.
struct Pager {
    client: HubClient,
    next: Option<Url>,
    /// The first page's URL, whose path every next link must keep.
    first: Url,
    buffer: VecDeque<Result<ModelSummary, HubError>>,
}

impl Pager {
    async fn fetch_page(&mut self, url: Url) -> Result<(), HubError> {
        let (value, headers) = self.client.get_json(url.clone(), self.client.tally(None)).await?;
        let Value::Array(items) = value else {
            return Err(HubError::BadJson { url: shown(&url), message: format!("listing is a {}", kind(&value)) });
        };
        for item in &items {
            self.buffer.push_back(summary(item).map_err(|message| HubError::BadEntry { url: shown(&url), message }));
        }
        // A bad next link ends the stream after this page's entries.
        match self.next_url(&url, &headers) {
            Ok(next) => self.next = next,
            Err(e) => self.buffer.push_back(Err(e)),
        }
        Ok(())
    }

    fn next_url(&self, current: &Url, headers: &HeaderMap) -> Result<Option<Url>, HubError> {
        let Some(link) = headers.get("link").and_then(|v| v.to_str().ok()).and_then(next_link) else {
            return Ok(None);
        };
        let foreign = || HubError::ForeignLink { url: shown(current), link: link.chars().take(200).collect() };
        let next = current.join(link).map_err(|_| foreign())?;
        if !self.client.on_endpoint(&next) || next.path() != self.first.path() {
            return Err(foreign());
        }
        if &next == current {
            // A page linking to itself would loop for ever.
            return Err(foreign());
        }
        Ok(Some(next))
    }
}

impl HubClient {
    /// Streams every model matching `query`, page by page (one `api` request per page), following the
    /// `Link: <…>; rel="next"` URL verbatim. A next link off the endpoint's origin or path ends the stream with
    /// [`HubError::ForeignLink`]; an entry without a valid id is an `Err` item and the stream goes on.
    pub fn list_models(&self, query: &ListQuery) -> impl Stream<Item = Result<ModelSummary, HubError>> + use<> {
        let mut url = self.url(["api", "models"]);
        {
            let mut q = url.query_pairs_mut();
            if let Some(a) = &query.author {
                q.append_pair("author", a);
            }
            if let Some(s) = &query.search {
                q.append_pair("search", s);
            }
            for f in &query.filter {
                q.append_pair("filter", f);
            }
            if let Some(s) = &query.sort {
                q.append_pair("sort", s);
            }
            if let Some(d) = query.direction {
                q.append_pair("direction", &d.to_string());
            }
            if let Some(l) = query.limit {
                q.append_pair("limit", &l.to_string());
            }
            for e in &query.expand {
                q.append_pair("expand[]", e);
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        let pager = Pager { client: self.clone(), next: Some(url.clone()), first: url, buffer: VecDeque::new() };
        futures::stream::unfold(pager, |mut pager| async move {
            loop {
                if let Some(item) = pager.buffer.pop_front() {
                    return Some((item, pager));
                }
                let url = pager.next.take()?;
                if let Err(e) = pager.fetch_page(url).await {
                    // The error is the last item: `next` is already taken.
                    return Some((Err(e), pager));
                }
            }
        })
    }

    /// The model `id` at `revision`, with file sizes and LFS facts (`?blobs=true`): one `api` request.
    ///
    /// # Errors
    /// Typed access errors, [`HubError::BadJson`] / [`HubError::BadEntry`] for a document that is not a model
    /// with a valid id and commit, transport errors after retries.
    pub async fn model_info(&self, id: &RepoId, revision: &Revision) -> Result<RepoInfo, HubError> {
        let mut url =
            self.url(["api", "models"].into_iter().chain(id.segments()).chain(["revision", revision.as_str()]));
        url.query_pairs_mut().append_pair("blobs", "true");
        let (value, _) = self.get_json(url.clone(), self.tally(None)).await?;
        let bad = |message: String| HubError::BadEntry { url: shown(&url), message };
        let s = summary(&value).map_err(bad)?;
        if &s.id != id {
            // The Hub answers case-insensitively; anything else is a different repository.
            if !s.id.as_str().eq_ignore_ascii_case(id.as_str()) {
                return Err(bad(format!("asked for {id}, got {}", s.id)));
            }
        }
        let sha = s.sha.ok_or_else(|| bad("model info without a valid sha".to_owned()))?;
        Ok(RepoInfo {
            id: s.id,
            sha,
            internal_id: s.internal_id,
            author: s.author,
            last_modified: s.last_modified,
            created_at: s.created_at,
            private: s.private,
            gated: s.gated,
            disabled: s.disabled,
            tags: s.tags,
            pipeline_tag: s.pipeline_tag,
            library_name: s.library_name,
            card_data: s.card_data,
            config: s.config,
            safetensors_params: s.safetensors_params,
            siblings: s.siblings,
            rejected_siblings: s.rejected_siblings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn link_headers() {
        let check = |v: &str, expected: Option<&str>| assert_eq!(next_link(v), expected, "{v:?}");
        check(
            r#"<https://huggingface.co/api/models?cursor=abc>; rel="next""#,
            Some("https://huggingface.co/api/models?cursor=abc"),
        );
        check(r#"<https://x/prev>; rel="prev", <https://x/next?a=1,2>; rel="next""#, Some("https://x/next?a=1,2"));
        check(r#"<https://x/a>; rel="prev next""#, Some("https://x/a"));
        check(r#"<https://x/a>; rel=next"#, Some("https://x/a"));
        check(r#"<https://x/a>; rel="prev""#, None);
        check("garbage", None);
        check("", None);
    }

    #[test]
    fn card_data_is_dirty_and_tolerated() {
        let check = |v: Value, expected: CardData| assert_eq!(card_data(&v), Some(expected), "{v}");
        check(
            json!({"license": "apache-2.0", "base_model": "meta-llama/Llama-2-7b-hf", "base_model_relation": "adapter"}),
            CardData {
                licenses: vec!["apache-2.0".into()],
                base_models: vec!["meta-llama/Llama-2-7b-hf".into()],
                base_model_relation: Some("adapter".into()),
                ..CardData::default()
            },
        );
        check(
            json!({"license": ["mit", 3], "base_model": ["a/b", "c/d", null], "base_model_relation": ["merge"]}),
            CardData {
                licenses: vec!["mit".into()],
                base_models: vec!["a/b".into(), "c/d".into()],
                anomalies: vec![
                    "license[]: number".into(),
                    "base_model[]: null".into(),
                    "base_model_relation: array".into(),
                ],
                ..CardData::default()
            },
        );
        check(
            json!({"license": {"x": 1}, "base_model": 7, "license_name": "llama3"}),
            CardData {
                license_name: Some("llama3".into()),
                anomalies: vec!["license: object".into(), "base_model: number".into()],
                ..CardData::default()
            },
        );
        assert_eq!(card_data(&json!("README")), None);
        let long = "x".repeat(10_000);
        let got = card_data(&json!({"base_model": long})).expect("object");
        assert_eq!(got.base_models[0].len(), MAX_LABEL);
    }

    #[test]
    fn summaries_validate_what_drives_requests() {
        let sha = "a".repeat(40);
        let v = json!({
            "id": "acme/tiny", "_id": "65ab", "sha": sha, "lastModified": "2025-01-02T03:04:05.000Z",
            "gated": "manual", "private": false, "tags": ["safetensors", 1],
            "config": {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "quantization_config": {"bits": 8}},
            "safetensors": {"parameters": {"BF16": 10}, "total": 10},
            "siblings": [
                {"rfilename": "model.safetensors", "size": 100, "lfs": {"sha256": "B".repeat(64), "size": 100, "pointerSize": 134}},
                {"rfilename": "../../etc/passwd"},
                {"rfilename": "config.json", "size": 20, "blobId": "abc"},
                {"rfilename": "odd.bin", "lfs": {"sha256": "not-hex"}}
            ]
        });
        let s = summary(&v).expect("valid");
        assert_eq!(s.id.as_str(), "acme/tiny");
        assert_eq!(s.sha.as_ref().map(Commit::as_str), Some(sha.as_str()));
        assert_eq!(s.last_modified.map(|d| d.to_rfc3339()), Some("2025-01-02T03:04:05+00:00".into()));
        assert_eq!(s.gated, Some(Gated::Manual));
        assert_eq!(s.tags, ["safetensors"]);
        let config = s.config.expect("config");
        assert_eq!(config.model_type.as_deref(), Some("llama"));
        assert_eq!(config.quantization_config, Some(json!({"bits": 8})));
        assert_eq!(s.safetensors_params, Some(10));
        assert_eq!(s.rejected_siblings, ["../../etc/passwd"]);
        let names: Vec<&str> = s.siblings.iter().map(|x| x.rfilename.as_str()).collect();
        assert_eq!(names, ["model.safetensors", "config.json", "odd.bin"]);
        assert_eq!(
            s.siblings[0].lfs.as_ref().map(|l| (l.sha256.as_str(), l.size)),
            Some(("b".repeat(64).as_str(), 100))
        );
        assert_eq!(s.siblings[2].lfs, None);
        for bad in [json!({"id": "../x"}), json!({"sha": sha}), json!([1]), json!({"id": 5})] {
            assert!(summary(&bad).is_err(), "{bad}");
        }
        // A bad sha is dropped, not fatal, in a listing.
        assert_eq!(summary(&json!({"id": "a/b", "sha": "zz"})).expect("valid").sha, None);
    }
}
