//! Bodies read whole and whole-file streams: JSON documents from the API ([`HubClient::get_json`]), small files
//! through their resolve URL ([`HubClient::get_small_file`]), and the response a whole-file download streams
//! from (`open_download`, for [`crate::cache`]). All three go through the one redirect routine, so a file read
//! at a pinned commit refuses an answer from another commit on every hop.

use bytes::Bytes;
use reqwest::header::HeaderMap;
use reqwest::{Method, Response, Url};

use super::execute::{BodyLimit, Call};
use super::range::parse_content_range;
use super::redirect::{Route, Step};
use super::{HubClient, Kind, Resolved, Tally, clean_message, header_str};
use crate::error::{HubError, shown};
use crate::ids::{Commit, RepoId, check_file_name};

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

    /// A response streaming the whole file from byte `offset` (a `Range: bytes=offset-` request when `offset`
    /// is not 0), and the offset its body really starts at (0 when the server ignored the range).
    pub(crate) async fn open_download(
        &self,
        file: &Resolved,
        offset: u64,
        tally: Tally<'_>,
    ) -> Result<(Response, u64), HubError> {
        let (url, kind) = file.start();
        let route = Route { pinned: Some(&file.commit), endpoint_only: false };
        let range = (offset > 0).then_some((offset, None));
        let expect = file.size - offset.min(file.size);
        let call = |url, kind| Call { method: Method::GET, url, kind, range, expect };
        self.follow(url, kind, route, tally, call, async |resp: Response, _| {
            let status = resp.status().as_u16();
            let at = resp.url().clone();
            match status {
                200 => Ok(Step::Done((resp, 0))),
                206 => {
                    let value = header_str(resp.headers(), "content-range");
                    let expected = Some((offset, file.size.saturating_sub(1), Some(file.size)));
                    if value.and_then(parse_content_range) != expected {
                        return Err(HubError::BadContentRange {
                            url: shown(&at),
                            status,
                            start: offset,
                            end: file.size.saturating_sub(1),
                            content_range: value.map(clean_message),
                        });
                    }
                    Ok(Step::Done((resp, offset)))
                }
                300..=399 => Ok(Step::Follow),
                _ => Err(HubError::UnexpectedStatus { url: shown(&at), status }),
            }
        })
        .await
    }

    /// Counts `n` body bytes of a download read outside the body readers.
    pub(crate) fn count_download(&self, file: &Resolved, n: u64, tally: Tally<'_>) {
        tally.bytes(file.start().1, n);
    }
}
