//! Bodies read whole: JSON documents from the API ([`HubClient::get_json`]) and small files through their
//! resolve URL ([`HubClient::get_small_file`]), both through the one redirect routine, so a file read at a
//! pinned commit refuses an answer from another commit on every hop. And the admission of whole-file
//! downloads, which `hf-hub` sends for [`crate::cache`]: their budget, counts and `reqwest` client.

use bytes::Bytes;
use reqwest::header::HeaderMap;
use reqwest::{Method, Response, Url};

use super::execute::{BodyLimit, Call};
use super::redirect::{Route, Step};
use super::{HubClient, Kind, Resolved, Tally, header_str};
use crate::error::{HubError, shown};
use crate::ids::{Commit, RepoId, check_file_name};
use crate::limiter::Bucket;

impl HubClient {
    /// `GET` of a JSON document on the API, with the response headers.
    pub(crate) async fn get_json(
        &self,
        url: Url,
        tally: Tally<'_>,
    ) -> Result<(serde_json::Value, HeaderMap), HubError> {
        let cap = self.inner.config.max_json_bytes;
        // API redirects (moves, renamed repositories) stay on the endpoint.
        let route = Route { pinned: None, endpoint_only: true };
        let call = |url, kind| Call { method: Method::GET, url, kind, range: None, expect: cap.min(8 << 20) };
        self.follow(url, Kind::Api, route, tally, call, async |mut resp: Response, kind| {
            let status = resp.status().as_u16();
            if (300..400).contains(&status) {
                return Ok(Step::Follow);
            }
            if !(200..300).contains(&status) {
                return Err(HubError::UnexpectedStatus { url: shown(resp.url()), status });
            }
            let body = self.read_body(&mut resp, kind, tally, BodyLimit::AtMost(cap, "json document")).await?;
            // serde_json stops at 128 levels of nesting, and the body is capped: no JSON bomb gets far.
            let value = serde_json::from_slice(&body)
                .map_err(|e| HubError::BadJson { url: shown(resp.url()), message: e.to_string() })?;
            Ok(Step::Done((value, resp.headers().clone())))
        })
        .await
    }

    /// A small file (`config.json`, `README.md`, `adapter_config.json`, an index) read whole through its resolve
    /// URL, refusing more than `max_bytes`. The content is untrusted: callers parse it strictly.
    ///
    /// # Errors
    /// [`HubError::TooLarge`] over `max_bytes`; as [`HubClient::resolve`] otherwise.
    pub async fn get_small_file(
        &self,
        id: &RepoId,
        commit: &Commit,
        file: &str,
        max_bytes: u64,
    ) -> Result<Bytes, HubError> {
        self.get_small_file_with(id, commit, file, max_bytes, self.tally(None)).await
    }

    pub(crate) async fn get_small_file_with(
        &self,
        id: &RepoId,
        commit: &Commit,
        file: &str,
        max_bytes: u64,
        tally: Tally<'_>,
    ) -> Result<Bytes, HubError> {
        check_file_name(file)?;
        let url = self.resolve_url(id, commit.as_str(), file);
        let route = Route { pinned: Some(commit), endpoint_only: false };
        let call = |url, kind| Call { method: Method::GET, url, kind, range: None, expect: max_bytes };
        // The size the resolver announced for an LFS file: the CDN's body must be exactly that.
        let mut linked: Option<u64> = None;
        self.follow(url, Kind::Resolver, route, tally, call, async |mut resp: Response, kind| {
            let status = resp.status().as_u16();
            let at = resp.url().clone();
            if (200..300).contains(&status) {
                let limit = match linked {
                    Some(n) => BodyLimit::Exactly(n),
                    None => BodyLimit::AtMost(max_bytes, "file"),
                };
                return self.read_body(&mut resp, kind, tally, limit).await.map(Step::Done);
            }
            if (300..400).contains(&status) {
                if let Some(size) = header_str(resp.headers(), "x-linked-size") {
                    let size: u64 = size
                        .trim()
                        .parse()
                        .map_err(|_| HubError::BadHeader { url: shown(&at), name: "x-linked-size" })?;
                    if size > max_bytes {
                        return Err(HubError::TooLarge { url: shown(&at), what: "file", len: size, cap: max_bytes });
                    }
                    linked = Some(size);
                }
                return Ok(Step::Follow);
            }
            Err(HubError::UnexpectedStatus { url: shown(&at), status })
        })
        .await
    }

    /// The `reqwest` client whole-file downloads go through: `hf-hub` sends its `GET`s with it, and its
    /// redirect policy vets every hop by the rules of [`HubClient::check_redirect`].
    pub(crate) fn download_http(&self) -> &reqwest::Client {
        &self.inner.downloads
    }

    /// Admits one whole-file download that `hf-hub` will send: takes the `resolvers` budget for its two
    /// requests to the resolve URL (a `HEAD`, then the `GET` the resolver redirects to the CDN) and counts them,
    /// with the CDN request when the file has a location, and holds a slot of the concurrency limit for the
    /// whole transfer.
    ///
    /// # Errors
    /// [`HubError::Pipeline`] when the client is shutting down.
    pub(crate) async fn admit_download(
        &self,
        file: &Resolved,
        tally: Tally<'_>,
    ) -> Result<tokio::sync::SemaphorePermit<'_>, HubError> {
        for _ in 0..2 {
            tally.waited(self.inner.limiter.acquire(Bucket::Resolvers).await);
            tally.request(Kind::Resolver);
        }
        if file.location.is_some() {
            tally.request(Kind::Cdn);
        }
        self.inner.permits.acquire().await.map_err(|_| HubError::Pipeline { reason: "closed" })
    }

    /// Counts the `n` body bytes of a file `hf-hub` downloaded.
    pub(crate) fn count_download(&self, file: &Resolved, n: u64, tally: Tally<'_>) {
        tally.bytes(if file.location.is_some() { Kind::Cdn } else { Kind::Resolver }, n);
    }

    /// Keeps the `resolvers` bucket closed for `wait`: a `Retry-After` that reached us through `hf-hub`.
    pub(crate) fn pause_resolvers(&self, wait: std::time::Duration) {
        self.inner.limiter.block(Bucket::Resolvers, tokio::time::Instant::now() + wait);
    }
}
