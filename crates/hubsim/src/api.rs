//! The JSON side of the Hub API: model listings with filters, sorting and keyset cursors, model info with
//! `expand`, `blobs` and the derived fields, tree listings and `paths-info`. Pure functions over the index; the
//! HTTP plumbing (status codes, headers, `Link`) is in `server`.

use std::cmp::Ordering;

use serde_json::{Map, Value, json};

use crate::index::{FileEntry, Index, Repo, safetensors_json};
use crate::wire::{Query, hub_date, percent_decode};

/// An API error as the Hub reports it: status, `X-Error-Code`, `X-Error-Message` and `{"error": message}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub status: u16,
    pub code: Option<&'static str>,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError { status: 400, code: None, message: message.into() }
    }

    pub fn entry_not_found() -> ApiError {
        ApiError { status: 404, code: Some("EntryNotFound"), message: "Entry not found".to_owned() }
    }

    pub fn revision_not_found(rev: &str) -> ApiError {
        ApiError { status: 404, code: Some("RevisionNotFound"), message: format!("Invalid rev id: {rev}") }
    }
}

/// Who is asking, as far as access goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Caller {
    Anonymous,
    /// A token in `ServerConfig::tokens`.
    Accepted,
    /// Any other token: a user without access to gated or private repos.
    Other,
}

/// The Hub's access rules. Missing and private repos look the same: 401 `RepoNotFound` when anonymous, 404 when
/// authenticated. Gated repos show their metadata to everyone; their files need access: 401 without a token, 403
/// with a token that has none, both `GatedRepo`.
pub(crate) fn find_repo<'a>(index: &'a Index, id: &str, caller: Caller, files: bool) -> Result<&'a Repo, ApiError> {
    let not_found = || ApiError {
        status: if caller == Caller::Anonymous { 401 } else { 404 },
        code: Some("RepoNotFound"),
        message: "Repository not found".to_owned(),
    };
    let repo = index.repos.get(id).ok_or_else(not_found)?;
    if repo.private && caller != Caller::Accepted {
        return Err(not_found());
    }
    if files && repo.gated && caller != Caller::Accepted {
        return Err(match caller {
            Caller::Anonymous => ApiError {
                status: 401,
                code: Some("GatedRepo"),
                message: format!(
                    "Access to model {id} is restricted. You must have access to it and be authenticated to access it. \
                     Please log in."
                ),
            },
            _ => ApiError {
                status: 403,
                code: Some("GatedRepo"),
                message: format!(
                    "Access to model {id} is restricted and you are not in the authorized list. Visit \
                     https://huggingface.co/{id} to ask for access."
                ),
            },
        });
    }
    Ok(repo)
}

/// Only `main` and the current commit exist.
pub(crate) fn check_revision(repo: &Repo, rev: &str) -> Result<(), ApiError> {
    if rev == "main" || rev == "refs/heads/main" || rev == repo.sha {
        Ok(())
    } else {
        Err(ApiError::revision_not_found(rev))
    }
}

/// Properties `expand` accepts (the Hub's list). Those this server cannot compute are accepted and omitted, as
/// the Hub omits properties a repo does not have.
const EXPANDABLE: [&str; 31] = [
    "author",
    "baseModels",
    "cardData",
    "childrenModelCount",
    "config",
    "createdAt",
    "disabled",
    "downloads",
    "downloadsAllTime",
    "evalResults",
    "gated",
    "gguf",
    "inference",
    "inferenceProviderMapping",
    "lastModified",
    "library_name",
    "likes",
    "mask_token",
    "model-index",
    "pipeline_tag",
    "private",
    "resourceGroup",
    "safetensors",
    "sha",
    "siblings",
    "spaces",
    "tags",
    "transformersInfo",
    "trendingScore",
    "usedStorage",
    "widgetData",
];

/// Properties the Hub computes per repo only, so it refuses them in listings (huggingface_hub PR #3182).
const SINGLE_REPO_ONLY: [&str; 3] = ["baseModels", "childrenModelCount", "usedStorage"];

/// `expand` / `expand[]` values of a query, validated; `None` when absent.
pub(crate) fn expand_props(query: &Query, listing: bool) -> Result<Option<Vec<String>>, ApiError> {
    let props: Vec<String> = query.all("expand").chain(query.all("expand[]")).map(str::to_owned).collect();
    if props.is_empty() {
        return Ok(None);
    }
    let allowed = |p: &str| EXPANDABLE.contains(&p) && !(listing && SINGLE_REPO_ONLY.contains(&p));
    if let Some(bad) = props.iter().find(|p| !allowed(p)) {
        let names: Vec<String> = EXPANDABLE.iter().filter(|p| allowed(p)).map(|p| format!("\"{p}\"")).collect();
        return Err(ApiError::bad_request(format!("\"expand\" must be one of [{}], got {bad:?}", names.join(", "))));
    }
    Ok(Some(props))
}

fn siblings(repo: &Repo, blobs: bool) -> Value {
    Value::Array(
        repo.files
            .values()
            .map(|f| {
                if !blobs {
                    return json!({"rfilename": f.path});
                }
                let mut s = json!({"rfilename": f.path, "size": f.size, "blobId": f.oid});
                if let (Some(lfs), Some(obj)) = (&f.lfs, s.as_object_mut()) {
                    obj.insert(
                        "lfs".to_owned(),
                        json!({"sha256": lfs.sha256, "size": f.size, "pointerSize": lfs.pointer_size}),
                    );
                }
                s
            })
            .collect(),
    )
}

/// One property of a model, or `None` when the repo has no value for it.
fn prop(repo: &Repo, name: &str, blobs: bool) -> Option<Value> {
    Some(match name {
        "id" | "modelId" => json!(repo.id),
        "_id" => json!(repo.object_id),
        "author" => json!(repo.author),
        "sha" => json!(repo.sha),
        "createdAt" => json!(hub_date(repo.created_at)),
        "lastModified" => json!(hub_date(repo.last_modified)),
        "private" => json!(repo.private),
        "gated" => {
            if repo.gated {
                json!("manual")
            } else {
                json!(false)
            }
        }
        "disabled" => json!(false),
        "downloads" | "downloadsAllTime" | "likes" | "trendingScore" => json!(0),
        "tags" => json!(repo.tags),
        "pipeline_tag" => json!(repo.pipeline_tag.as_ref()?),
        "library_name" => json!(repo.library_name.as_ref()?),
        "cardData" => repo.card.clone()?,
        "config" => repo.config.clone()?,
        "safetensors" => safetensors_json(repo.safetensors.as_ref()?),
        "siblings" => siblings(repo, blobs),
        "spaces" => json!([]),
        "usedStorage" => json!(repo.used_storage),
        "childrenModelCount" => json!(repo.children),
        "baseModels" => {
            let relation = repo.relation?;
            let models: Vec<Value> = repo.base_models.iter().map(|b| json!({"id": b})).collect();
            json!({"relation": relation, "models": models})
        }
        _ => return None,
    })
}

fn object(repo: &Repo, names: &[&str], blobs: bool) -> Value {
    let mut map = Map::new();
    for name in names {
        if let Some(v) = prop(repo, name, blobs) {
            map.insert((*name).to_owned(), v);
        }
    }
    Value::Object(map)
}

/// `GET /api/models/{id}[/revision/{rev}]`.
pub(crate) fn model_info(repo: &Repo, query: &Query) -> Result<Value, ApiError> {
    let blobs = query.flag("blobs");
    if let Some(props) = expand_props(query, false)? {
        let mut names = vec!["_id", "id"];
        names.extend(props.iter().map(String::as_str));
        return Ok(object(repo, &names, blobs));
    }
    Ok(object(
        repo,
        &[
            "_id",
            "id",
            "private",
            "pipeline_tag",
            "library_name",
            "tags",
            "downloads",
            "likes",
            "modelId",
            "author",
            "sha",
            "lastModified",
            "gated",
            "disabled",
            "config",
            "cardData",
            "siblings",
            "spaces",
            "createdAt",
            "safetensors",
            "usedStorage",
        ],
        blobs,
    ))
}

/// Sort orders of `/api/models`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SortKey {
    Id,
    LastModified,
    CreatedAt,
    /// Downloads, likes and trending score are all zero here; ties fall back to the id.
    Zero,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum KeyValue {
    Int(i64),
    Str(String),
}

impl KeyValue {
    fn of(repo: &Repo, key: SortKey) -> KeyValue {
        match key {
            SortKey::Id => KeyValue::Str(repo.id.clone()),
            SortKey::LastModified => KeyValue::Int(repo.last_modified.timestamp_millis()),
            SortKey::CreatedAt => KeyValue::Int(repo.created_at.timestamp_millis()),
            SortKey::Zero => KeyValue::Int(0),
        }
    }

    fn to_json(&self) -> Value {
        match self {
            KeyValue::Int(i) => json!(i),
            KeyValue::Str(s) => json!(s),
        }
    }

    fn from_json(v: &Value) -> Option<KeyValue> {
        match v {
            Value::Number(n) => n.as_i64().map(KeyValue::Int),
            Value::String(s) => Some(KeyValue::Str(s.clone())),
            _ => None,
        }
    }
}

/// An opaque cursor: hex of a small JSON document holding the last item's sort key and id.
fn encode_cursor(value: &Value) -> String {
    crate::index::hex(value.to_string().as_bytes())
}

fn decode_cursor(cursor: &str) -> Option<Value> {
    let bytes: Option<Vec<u8>> = (0..cursor.len())
        .step_by(2)
        .map(|i| cursor.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect();
    serde_json::from_slice(&bytes?).ok()
}

/// One page of `/api/models` and, when more follow, the cursor of the next page.
#[derive(Debug)]
pub(crate) struct Page {
    pub items: Vec<Value>,
    pub next_cursor: Option<String>,
}

/// `GET /api/models`. Ordering is a total order (sort key, then id), and cursors are keyset positions in it, so a
/// repo added or changed between two page requests never shifts the remaining pages.
pub(crate) fn list_models(index: &Index, query: &Query, caller: Caller, page_size: usize) -> Result<Page, ApiError> {
    let sort = match query.get("sort") {
        None | Some("id") | Some("modelId") => SortKey::Id,
        Some("lastModified") | Some("last_modified") => SortKey::LastModified,
        Some("createdAt") | Some("created_at") => SortKey::CreatedAt,
        Some("downloads") | Some("likes") | Some("trendingScore") | Some("trending_score") | Some("likes30d") => {
            SortKey::Zero
        }
        Some(other) => return Err(ApiError::bad_request(format!("invalid sort key {other:?}"))),
    };
    // The Hub sorts descending unless told `direction=1`; without `sort`, by id ascending here.
    let descending = query.get("sort").is_some() && query.get("direction") != Some("1");
    let limit = match query.get("limit") {
        None => page_size,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if n > 0 => n.min(page_size),
            _ => return Err(ApiError::bad_request(format!("invalid limit {l:?}"))),
        },
    };
    let expand = expand_props(query, true)?;
    let search = query.get("search").map(str::to_lowercase);
    let author = query.get("author");
    let filters: Vec<&str> = query.all("filter").flat_map(|f| f.split(',')).filter(|f| !f.is_empty()).collect();
    let pipeline = query.get("pipeline_tag");
    let library = query.get("library");
    let gated = query.get("gated").map(|g| matches!(g, "true" | "True" | "1"));

    let mut repos: Vec<&Repo> = index
        .repos
        .values()
        .map(|r| &**r)
        .filter(|r| !r.private || caller == Caller::Accepted)
        .filter(|r| search.as_ref().is_none_or(|s| r.id.to_lowercase().contains(s.as_str())))
        .filter(|r| author.is_none_or(|a| r.author == a))
        .filter(|r| filters.iter().all(|f| r.tags.iter().any(|t| t == f)))
        .filter(|r| pipeline.is_none_or(|p| r.pipeline_tag.as_deref() == Some(p)))
        .filter(|r| library.is_none_or(|l| r.library_name.as_deref() == Some(l)))
        .filter(|r| gated.is_none_or(|g| r.gated == g))
        .collect();
    let order = |a: &KeyValue, a_id: &str, b: &KeyValue, b_id: &str| -> Ordering {
        let by_key = if descending { b.cmp(a) } else { a.cmp(b) };
        by_key.then_with(|| a_id.cmp(b_id))
    };
    repos.sort_by(|a, b| order(&KeyValue::of(a, sort), &a.id, &KeyValue::of(b, sort), &b.id));

    if let Some(cursor) = query.get("cursor") {
        let bad = || ApiError::bad_request("invalid cursor");
        let c = decode_cursor(cursor).ok_or_else(bad)?;
        let key = c.get("k").and_then(KeyValue::from_json).ok_or_else(bad)?;
        let id = c.get("id").and_then(Value::as_str).ok_or_else(bad)?;
        repos.retain(|r| order(&KeyValue::of(r, sort), &r.id, &key, id) == Ordering::Greater);
    }

    let more = repos.len() > limit;
    repos.truncate(limit);
    let next_cursor = if more {
        repos.last().map(|last| encode_cursor(&json!({"k": KeyValue::of(last, sort).to_json(), "id": last.id})))
    } else {
        None
    };

    let mut names: Vec<&str> = vec!["_id", "id"];
    match &expand {
        Some(props) => names.extend(props.iter().map(String::as_str)),
        None => {
            names.extend([
                "likes",
                "trendingScore",
                "private",
                "downloads",
                "tags",
                "pipeline_tag",
                "library_name",
                "createdAt",
                "modelId",
            ]);
            if query.flag("full") {
                names.extend(["author", "sha", "lastModified", "gated", "disabled", "siblings"]);
            }
            if query.flag("config") {
                names.push("config");
            }
            if query.flag("cardData") {
                names.push("cardData");
            }
        }
    }
    let items = repos.iter().map(|r| object(r, &names, false)).collect();
    Ok(Page { items, next_cursor })
}

/// A tree entry (`type`, `oid`, `size`, `path`, optional `lfs` and, with `expand`, `lastCommit`).
fn file_entry(repo: &Repo, f: &FileEntry, expand: bool) -> Value {
    let mut e = json!({"type": "file", "oid": f.oid, "size": f.size, "path": f.path});
    if let Some(obj) = e.as_object_mut() {
        if let Some(lfs) = &f.lfs {
            obj.insert("lfs".to_owned(), json!({"oid": lfs.sha256, "size": f.size, "pointerSize": lfs.pointer_size}));
        }
        if expand {
            obj.insert("lastCommit".to_owned(), last_commit(repo));
        }
    }
    e
}

fn dir_entry(repo: &Repo, path: &str, oid: &str, expand: bool) -> Value {
    let mut e = json!({"type": "directory", "oid": oid, "size": 0, "path": path});
    if let (true, Some(obj)) = (expand, e.as_object_mut()) {
        obj.insert("lastCommit".to_owned(), last_commit(repo));
    }
    e
}

fn last_commit(repo: &Repo) -> Value {
    json!({"id": repo.sha, "title": "Upload folder", "date": hub_date(repo.last_modified)})
}

/// `GET /api/models/{id}/tree/{rev}[/{path}]`: the entries under `dir` (direct children, or all descendants when
/// `recursive`), sorted by path, one page after `cursor`.
pub(crate) fn tree(repo: &Repo, dir: &str, query: &Query, page_size: usize) -> Result<Page, ApiError> {
    let dir = dir.trim_matches('/');
    if !dir.is_empty() && !repo.dirs.contains_key(dir) {
        return Err(ApiError::entry_not_found());
    }
    let recursive = query.flag("recursive");
    let expand = query.flag("expand");
    let prefix = if dir.is_empty() { String::new() } else { format!("{dir}/") };
    let under = |path: &str| -> bool {
        path.strip_prefix(&prefix).is_some_and(|rest| !rest.is_empty() && (recursive || !rest.contains('/')))
    };
    let after = match query.get("cursor") {
        None => None,
        Some(c) => {
            let v = decode_cursor(c).ok_or_else(|| ApiError::bad_request("invalid cursor"))?;
            Some(
                v.get("path")
                    .and_then(Value::as_str)
                    .ok_or_else(|| ApiError::bad_request("invalid cursor"))?
                    .to_owned(),
            )
        }
    };
    let mut entries: Vec<(&str, Value)> = repo
        .dirs
        .iter()
        .filter(|(p, _)| under(p))
        .map(|(p, oid)| (p.as_str(), dir_entry(repo, p, oid, expand)))
        .chain(repo.files.values().filter(|f| under(&f.path)).map(|f| (f.path.as_str(), file_entry(repo, f, expand))))
        .filter(|(p, _)| after.as_deref().is_none_or(|a| *p > a))
        .collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    let more = entries.len() > page_size;
    entries.truncate(page_size);
    let next_cursor = if more { entries.last().map(|(p, _)| encode_cursor(&json!({"path": p}))) } else { None };
    Ok(Page { items: entries.into_iter().map(|(_, v)| v).collect(), next_cursor })
}

/// `POST /api/models/{id}/paths-info/{rev}`: entries for the given paths that exist, in request order. The body is
/// a form (`paths=a&paths=b&expand=false`, as Python sends it) or JSON (`{"paths": [...], "expand": false}`).
pub(crate) fn paths_info(repo: &Repo, body: &[u8], json_body: bool) -> Result<Value, ApiError> {
    let (paths, expand) = if json_body {
        let v: Value = serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid json: {e}")))?;
        let paths = v
            .get("paths")
            .and_then(Value::as_array)
            .ok_or_else(|| ApiError::bad_request("\"paths\" must be an array"))?
            .iter()
            .map(|p| p.as_str().map(str::to_owned).ok_or_else(|| ApiError::bad_request("paths must be strings")))
            .collect::<Result<Vec<_>, _>>()?;
        (paths, v.get("expand").and_then(Value::as_bool).unwrap_or(false))
    } else {
        let text = std::str::from_utf8(body).map_err(|_| ApiError::bad_request("body is not UTF-8"))?;
        let form = Query(crate::wire::parse_query(text));
        let paths = form.all("paths").chain(form.all("paths[]")).map(str::to_owned).collect();
        (paths, form.flag("expand"))
    };
    let mut out = Vec::new();
    for path in paths {
        let path = path.trim_matches('/');
        if let Some(f) = repo.files.get(path) {
            out.push(file_entry(repo, f, expand));
        } else if let Some(oid) = repo.dirs.get(path) {
            out.push(dir_entry(repo, path, oid, expand));
        }
    }
    Ok(Value::Array(out))
}

/// `GET /api/models/{id}/refs`.
pub(crate) fn refs(repo: &Repo) -> Value {
    json!({
        "branches": [{"name": "main", "ref": "refs/heads/main", "targetCommit": repo.sha}],
        "converts": [],
        "tags": [],
    })
}

/// Decodes the path segments of a request path; `None` if any is malformed.
pub(crate) fn segments(path: &str) -> Option<Vec<String>> {
    path.split('/').filter(|s| !s.is_empty()).map(|s| percent_decode(s, false)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{ScanOptions, Scanner};
    use crate::wire::parse_query;
    use std::fs;

    fn index_of(repos: &[(&str, &str)]) -> (tempfile::TempDir, Index) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut truth = Vec::new();
        for (i, (id, card)) in repos.iter().enumerate() {
            let repo = dir.path().join(id);
            fs::create_dir_all(repo.join("sub")).expect("mkdir");
            fs::write(repo.join("README.md"), format!("---\n{card}\n---\n")).expect("write");
            fs::write(repo.join("config.json"), br#"{"model_type":"llama"}"#).expect("write");
            fs::write(repo.join("sub/a.txt"), b"a").expect("write");
            truth.push(json!({"model": id, "created_at": format!("2024-01-0{}T00:00:00Z", 9 - i)}));
        }
        fs::write(dir.path().join("ground_truth.json"), json!({"models": truth}).to_string()).expect("write");
        let opts = ScanOptions { large_file_threshold: 1 << 20, gated: vec![], private: vec!["o/private".into()] };
        let (index, _) = Scanner::default().scan(dir.path(), &opts, &Index::default()).expect("scan");
        (dir, index)
    }

    fn ids(page: &Page) -> Vec<String> {
        page.items.iter().map(|v| v["id"].as_str().expect("id").to_owned()).collect()
    }

    fn check(index: &Index, query: &str, page_size: usize, expected: &[&str]) -> Page {
        let page = list_models(index, &Query(parse_query(query)), Caller::Anonymous, page_size).expect("list");
        assert_eq!(ids(&page), expected, "{query}");
        page
    }

    #[test]
    fn listing_filters_sorts_and_pages() {
        let (_dir, index) = index_of(&[
            ("a/one", "license: mit"),
            ("a/two", "base_model: a/one"),
            ("b/three", "license: apache-2.0"),
            ("o/private", "license: mit"),
        ]);
        check(&index, "", 10, &["a/one", "a/two", "b/three"]);
        check(&index, "author=a", 10, &["a/one", "a/two"]);
        check(&index, "search=THR", 10, &["b/three"]);
        check(&index, "filter=license:mit", 10, &["a/one"]);
        check(&index, "filter=base_model:finetune:a/one", 10, &["a/two"]);
        // Later entries were created earlier: newest first is a/one, a/two, b/three.
        check(&index, "sort=createdAt", 10, &["a/one", "a/two", "b/three"]);
        check(&index, "sort=createdAt&direction=1", 10, &["b/three", "a/two", "a/one"]);
        let first = check(&index, "sort=lastModified&direction=-1&limit=2", 10, &["a/one", "a/two"]);
        let cursor = first.next_cursor.expect("more pages");
        let rest = check(&index, &format!("sort=lastModified&direction=-1&limit=2&cursor={cursor}"), 10, &["b/three"]);
        assert!(rest.next_cursor.is_none());
        let expanded = check(&index, "expand[]=sha&expand=createdAt&author=b", 10, &["b/three"]);
        let keys: Vec<&String> = expanded.items[0].as_object().expect("object").keys().collect();
        assert_eq!(keys, ["_id", "createdAt", "id", "sha"]);
        assert!(list_models(&index, &Query(parse_query("expand=bogus")), Caller::Anonymous, 10).is_err());
        assert!(list_models(&index, &Query(parse_query("expand=baseModels")), Caller::Anonymous, 10).is_err());
        assert!(list_models(&index, &Query(parse_query("cursor=zz")), Caller::Anonymous, 10).is_err());
        let all = list_models(&index, &Query::default(), Caller::Accepted, 10).expect("list");
        assert_eq!(ids(&all).len(), 4);
    }

    #[test]
    fn access_rules() {
        let (_dir, mut index) = index_of(&[("a/one", "license: mit"), ("o/private", "license: mit")]);
        let mut gated = (*index.repos["a/one"]).clone();
        gated.gated = true;
        index.repos.insert("a/one".into(), gated.into());
        let status = |id: &str, caller, files| find_repo(&index, id, caller, files).err().map(|e| (e.status, e.code));
        assert_eq!(status("a/one", Caller::Anonymous, false), None);
        assert_eq!(status("a/one", Caller::Anonymous, true), Some((401, Some("GatedRepo"))));
        assert_eq!(status("a/one", Caller::Other, true), Some((403, Some("GatedRepo"))));
        assert_eq!(status("a/one", Caller::Accepted, true), None);
        assert_eq!(status("o/private", Caller::Anonymous, false), Some((401, Some("RepoNotFound"))));
        assert_eq!(status("o/private", Caller::Other, false), Some((404, Some("RepoNotFound"))));
        assert_eq!(status("o/private", Caller::Accepted, true), None);
        assert_eq!(status("x/missing", Caller::Anonymous, false), Some((401, Some("RepoNotFound"))));
        assert_eq!(status("x/missing", Caller::Other, false), Some((404, Some("RepoNotFound"))));
    }

    #[test]
    fn trees() {
        let (_dir, index) = index_of(&[("a/one", "license: mit")]);
        let repo = &index.repos["a/one"];
        let paths = |dir: &str, q: &str, size: usize| -> (Vec<String>, Option<String>) {
            let page = tree(repo, dir, &Query(parse_query(q)), size).expect("tree");
            (page.items.iter().map(|v| v["path"].as_str().expect("path").to_owned()).collect(), page.next_cursor)
        };
        assert_eq!(paths("", "", 10).0, ["README.md", "config.json", "sub"]);
        assert_eq!(paths("", "recursive=true", 10).0, ["README.md", "config.json", "sub", "sub/a.txt"]);
        assert_eq!(paths("sub", "", 10).0, ["sub/a.txt"]);
        let (first, cursor) = paths("", "recursive=True", 3);
        assert_eq!(first.len(), 3);
        let cursor = cursor.expect("cursor");
        assert_eq!(paths("", &format!("recursive=true&cursor={cursor}"), 3).0, ["sub/a.txt"]);
        assert_eq!(tree(repo, "nope", &Query::default(), 10).err().map(|e| e.status), Some(404));
        let info = paths_info(repo, b"paths=sub&paths=config.json&paths=missing&expand=False", false).expect("info");
        assert_eq!(info[0]["type"], "directory");
        assert_eq!(info[1]["path"], "config.json");
        assert_eq!(info.as_array().map(Vec::len), Some(2));
        let info = paths_info(repo, br#"{"paths":["README.md"]}"#, true).expect("json");
        assert_eq!(info[0]["size"], repo.files["README.md"].size);
    }
}
