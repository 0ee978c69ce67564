//! `hubsim`: a server that speaks the Hugging Face Hub's HTTP API over a folder of repos.
//!
//! The real Hub cannot be reached from tests (or from an air-gapped site), so this crate serves a folder laid out
//! like the Hub (`root/org/name/{config.json, README.md, *.safetensors, …}`) with the Hub's routes, JSON shapes,
//! headers, errors, pagination and rate limits, faithfully enough that the official Python client
//! (`huggingface_hub`) works against it unchanged (`scripts/hf-fidelity.sh` checks that).
//!
//! How the pieces connect:
//! - [`ServerConfig`] (plain struct with Hub defaults) → [`Server::bind`] binds two listeners, the Hub (API and
//!   `/resolve/`) and its CDN (signed LFS URLs), and scans the root into an index (`index`: commit shas, git and
//!   LFS ids, card data, tags, safetensors parameter counts).
//! - Card front matter is read through [`yaml::load`], a YAML loader with a budget (input length, depth, and the
//!   nodes and bytes aliases expand to), so a hostile card costs that repo its `cardData` and nothing more.
//! - [`Server::run`] / [`serve`] serve until a shutdown future completes; [`spawn`] runs in the background and
//!   returns a [`Handle`] with the request log, the early-request list, `rescan` and `shutdown`, for tests.
//! - Each request is rate limited per bucket (`limits`), may draw a seeded fault (`faults`: 5xx, reset or truncated
//!   bodies, slow headers, expired CDN URLs, 429 storms), and is answered by the routes in `server` using the JSON
//!   builders in `api`.
//!
//! # Routes (Hub listener)
//!
//! | route | answer |
//! |---|---|
//! | `GET /api/models` | `search`, `author`, `filter` (tags, repeatable, AND), `pipeline_tag`, `library`, `gated`, `sort` (`lastModified`, `createdAt`, `downloads`, `likes`, `trendingScore`, `id`), `direction` (descending unless `1`), `limit` (page size, capped by `page_size`), `full`, `config`, `cardData`, `expand`/`expand[]`; keyset cursor in `Link: <http://HOST/api/models?…&cursor=…>; rel="next"` |
//! | `GET /api/models/{id}[/revision/{rev}]` | model info; `blobs=true` adds `size`, `blobId`, `lfs{sha256,size,pointerSize}`; `expand` keeps only those props plus `id`/`_id` |
//! | `GET /api/models/{id}/tree/{rev}[/{path}]` | `recursive`, `expand` (adds `lastCommit`); paginated with `Link` |
//! | `POST /api/models/{id}/paths-info/{rev}` | form (`paths=…`, as Python sends) or JSON body |
//! | `GET /api/models/{id}/refs`, `/auth-check`, `/safetensors-metadata[/{index}]` | branches; access check; index plus every shard header in one answer |
//! | `GET/HEAD /{id}/resolve/{rev}/{path}` | git files: 200/206 with `ETag` (git oid) and `X-Repo-Commit`; LFS files: 302 with `Location` (signed CDN URL), `X-Repo-Commit`, `X-Linked-Etag` (quoted sha256), `X-Linked-Size`, `ETag`, `Content-Length: 0`; never `X-Xet-Hash` |
//!
//! The CDN listener serves `GET/HEAD /cdn/repos/{id}/{sha256}?Expires=…&Signature=…`: a bad signature or an
//! expired URL is 403 with an S3-style `AccessDenied` XML body; one `Range` (`a-b`, `a-`, `-n`) is 206 with
//! `Content-Range`; an unsatisfiable one is 416 with `Content-Range: bytes */size`; several ranges in one header get
//! the whole body with 200 (the Hub does not serve multi-range). Bodies are streamed from the file.
//!
//! Every response carries `X-Request-Id`; errors carry `X-Error-Code` (`RepoNotFound`, `RevisionNotFound`,
//! `EntryNotFound`, `GatedRepo`) and `X-Error-Message` with a `{"error": …}` body. Access follows the Hub: a
//! missing or private repo is 401 `RepoNotFound` for anonymous callers and 404 for authenticated ones; a gated
//! repo's metadata is public and its files answer 401 `GatedRepo` without a token, 403 with a token that is not in
//! [`ServerConfig::tokens`]. `/api/*` (bucket `api`) and `/resolve/` (bucket `resolvers`) responses carry
//! `RateLimit` and `RateLimit-Policy`; over quota is 429 with `Retry-After`.
//!
//! # Deliberate limits
//!
//! One revision per repo (`main` = the current commit; older commits are gone after a rescan), models only (no
//! datasets or spaces), no uploads, downloads/likes/trending are 0, `baseModels` has the shape
//! `{"relation", "models": [{"id"}]}`, and a single-segment repo id (`gpt2`) can never exist. Listings refuse `expand=baseModels|childrenModelCount|usedStorage`, as the Hub does.

mod api;
mod body;
mod card;
mod config;
mod faults;
mod index;
mod limits;
mod safetensors;
mod server;
mod wire;
pub mod yaml;

pub use config::{FaultConfig, FaultScope, Limits, QuotaConfig, ServerConfig, Storm};
pub use faults::Fault;
pub use index::ScanReport;
pub use limits::Bucket;
pub use server::{Handle, LoggedRequest, ServeError, Server, serve, spawn};
