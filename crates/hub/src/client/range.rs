//! Files at a pinned commit: [`HubClient::resolve`] (one `HEAD` on the resolve URL, the redirect to the CDN
//! read but not followed) and [`HubClient::read_range`] (one ranged `GET` on the CDN location, checked
//! against the resolved size). A [`Resolved`] file remembers its CDN location; when a signed URL has expired
//! the file is resolved again once, by one reader for all that share it.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use reqwest::{Method, Response, Url};

use super::execute::{BodyLimit, Call};
use super::redirect::{Route, Step};
use super::{HubClient, Kind, MAX_RANGE_LEN, Tally, clean_message, header_str};
use crate::error::{HubError, shown};
use crate::ids::{Commit, RepoId, check_file_name};

/// A file resolved at a pinned commit: what `HEAD /{id}/resolve/{commit}/{file}` said.
#[derive(Clone)]
pub struct Resolved {
    pub repo: RepoId,
    pub file: String,
    /// The commit the Hub served (checked equal to the pinned one).
    pub commit: Commit,
    /// `X-Linked-Size` (LFS files) or `Content-Length` (small files served directly).
    pub size: u64,
    /// `X-Linked-Etag` (the sha256 of an LFS file) or `ETag` (the git blob id), without quotes.
    pub etag: Option<String>,
    /// The signed CDN URL of an LFS file; `None` when the resolve URL serves the file itself.
    pub location: Option<Url>,
    pub(super) resolve_url: Url,
    /// The location in use: replaced when an expired signed URL is resolved again.
    current: Arc<Mutex<Option<Url>>>,
    /// Held while resolving again, so concurrent readers that hit the same expired URL resolve it once.
    refresh: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The location's query is a credential: never print it.
        f.debug_struct("Resolved")
            .field("repo", &self.repo)
            .field("file", &self.file)
            .field("commit", &self.commit)
            .field("size", &self.size)
            .field("etag", &self.etag)
            .field("location", &self.location.as_ref().map(shown))
            .finish()
    }
}

impl Resolved {
    /// The `sha256` of the content when the etag is one (LFS files).
    pub fn sha256(&self) -> Option<&str> {
        self.etag.as_deref().filter(|e| e.len() == 64 && e.bytes().all(|b| b.is_ascii_hexdigit()))
    }

    /// Where reads start: the CDN location in use, else the resolve URL.
    pub(super) fn start(&self) -> (Url, Kind) {
        match self.current() {
            Some(u) => (u, Kind::Cdn),
            None => (self.resolve_url.clone(), Kind::Resolver),
        }
    }

    fn current(&self) -> Option<Url> {
        self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn set_current(&self, url: Option<Url>) {
        *self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = url;
    }
}

/// `"abc"`, `W/"abc"` → `abc`.
fn clean_etag(value: &str) -> String {
    value.trim().trim_start_matches("W/").trim_matches('"').to_owned()
}

/// Parses `Content-Range: bytes a-b/total` into `(a, b, total)`; `total` is `None` for `*`.
pub(super) fn parse_content_range(value: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (span, total) = rest.split_once('/')?;
    let (a, b) = span.split_once('-')?;
    let total = if total == "*" { None } else { Some(total.parse().ok()?) };
    Some((a.parse().ok()?, b.parse().ok()?, total))
}

impl HubClient {
    /// Resolves `file` at the pinned `commit` with one `HEAD` (plus any relative redirect on the endpoint),
    /// without following the redirect to the CDN.
    ///
    /// # Errors
    /// Typed access errors ([`HubError::RepoNotFound`], [`HubError::EntryNotFound`], [`HubError::GatedRepo`],
    /// …), [`HubError::BadFileName`], [`HubError::CommitMismatch`], missing or invalid headers, a refused
    /// redirect, or transport errors after retries.
    pub async fn resolve(&self, id: &RepoId, commit: &Commit, file: &str) -> Result<Resolved, HubError> {
        self.resolve_with(id, commit, file, self.tally(None)).await
    }

    pub(crate) async fn resolve_with(
        &self,
        id: &RepoId,
        commit: &Commit,
        file: &str,
        tally: Tally<'_>,
    ) -> Result<Resolved, HubError> {
        check_file_name(file)?;
        let resolve_url = self.resolve_url(id, commit.as_str(), file);
        // Every redirect followed here is a move on the Hub itself (renamed repo, case fix); the one to the CDN
        // is the answer.
        let route = Route { pinned: Some(commit), endpoint_only: true };
        let call = |url, kind| Call { method: Method::HEAD, url, kind, range: None, expect: 0 };
        let (size, etag, location) = self
            .follow(resolve_url.clone(), Kind::Resolver, route, tally, call, async |resp: Response, _| {
                let (status, headers, at) = (resp.status().as_u16(), resp.headers(), resp.url());
                let size_of = |name: &'static str| -> Result<Option<u64>, HubError> {
                    header_str(headers, name)
                        .map(|v| v.trim().parse::<u64>().map_err(|_| HubError::BadHeader { url: shown(at), name }))
                        .transpose()
                };
                let etag = header_str(headers, "x-linked-etag").or_else(|| header_str(headers, "etag")).map(clean_etag);
                if (200..300).contains(&status) {
                    self.check_commit(at, headers, commit, true)?;
                    // For a file served directly Content-Length is its size; X-Linked-Size wins if present.
                    let size = match size_of("x-linked-size")? {
                        Some(s) => s,
                        None => size_of("content-length")?
                            .ok_or_else(|| HubError::MissingHeader { url: shown(at), name: "content-length" })?,
                    };
                    return Ok(Step::Done((size, etag, None)));
                }
                if (300..400).contains(&status) {
                    if header_str(headers, "x-repo-commit").is_none() {
                        return Ok(Step::Follow);
                    }
                    let location = header_str(headers, "location")
                        .ok_or_else(|| HubError::MissingHeader { url: shown(at), name: "location" })?;
                    let target = self.check_redirect(at, location)?;
                    // Never the redirect's Content-Length: that is the size of its own small body.
                    let size = size_of("x-linked-size")?
                        .ok_or_else(|| HubError::MissingHeader { url: shown(at), name: "x-linked-size" })?;
                    return Ok(Step::Done((size, etag, Some(target))));
                }
                Err(HubError::UnexpectedStatus { url: shown(at), status })
            })
            .await?;
        Ok(Resolved {
            repo: id.clone(),
            file: file.to_owned(),
            commit: commit.clone(),
            size,
            etag,
            current: Arc::new(Mutex::new(location.clone())),
            refresh: Arc::new(tokio::sync::Mutex::new(())),
            location,
            resolve_url,
        })
    }

    /// Bytes `range` of a resolved file: one `GET` with a single `Range` on its CDN location (or on the resolve
    /// URL for a file served directly). Checks `206` and its `Content-Range` against the range and the
    /// resolved size, and the body length; takes the slice of a `200` full answer for files up to
    /// `max_full_fallback`; resolves again once when a signed URL has expired (`403` from the CDN).
    ///
    /// # Errors
    /// [`HubError::BadRange`] / [`HubError::RangeTooLarge`] for a bad request; [`HubError::BadContentRange`],
    /// [`HubError::BodyTooLong`], [`HubError::BodyTooShort`], [`HubError::RangeIgnored`] for a bad answer;
    /// access and transport errors as for [`HubClient::resolve`].
    pub async fn read_range(&self, file: &Resolved, range: Range<u64>) -> Result<Bytes, HubError> {
        self.read_range_with(file, range, self.tally(None)).await
    }

    pub(crate) async fn read_range_with(
        &self,
        file: &Resolved,
        range: Range<u64>,
        tally: Tally<'_>,
    ) -> Result<Bytes, HubError> {
        if range.start >= range.end || range.end > file.size {
            return Err(HubError::BadRange {
                url: shown(&file.resolve_url),
                start: range.start,
                end: range.end,
                size: file.size,
            });
        }
        let len = range.end - range.start;
        if len > MAX_RANGE_LEN {
            return Err(HubError::RangeTooLarge { url: shown(&file.resolve_url), len, cap: MAX_RANGE_LEN });
        }
        let mut resolved_again = false;
        loop {
            let (url, kind) = file.start();
            match self.get_range(file, url.clone(), kind, range.clone(), tally).await {
                Err(HubError::Forbidden { .. }) if kind == Kind::Cdn && !resolved_again => {
                    let _refreshing = file.refresh.lock().await;
                    if file.current().as_ref() != Some(&url) {
                        // Another reader resolved it again meanwhile: use its URL, without a resolve of our own.
                        continue;
                    }
                    resolved_again = true;
                    tracing::debug!(repo = %file.repo, file = %file.file, "signed url refused, resolving again");
                    let fresh = self.resolve_with(&file.repo, &file.commit, &file.file, tally).await?;
                    if fresh.size != file.size {
                        return Err(HubError::SizeMismatch {
                            url: shown(&file.resolve_url),
                            expected: file.size,
                            found: fresh.size,
                        });
                    }
                    if let (Some(old), Some(new)) = (&file.etag, &fresh.etag)
                        && old != new
                    {
                        return Err(HubError::DigestMismatch {
                            url: shown(&file.resolve_url),
                            expected: old.clone(),
                            found: new.clone(),
                        });
                    }
                    file.set_current(fresh.location);
                }
                other => return other,
            }
        }
    }

    async fn get_range(
        &self,
        file: &Resolved,
        url: Url,
        kind: Kind,
        range: Range<u64>,
        tally: Tally<'_>,
    ) -> Result<Bytes, HubError> {
        let len = range.end - range.start;
        let max_full = self.inner.config.max_full_fallback;
        let route = Route { pinned: Some(&file.commit), endpoint_only: false };
        let call = |url, kind| Call {
            method: Method::GET,
            url,
            kind,
            range: Some((range.start, Some(range.end - 1))),
            expect: len,
        };
        let start = url.clone();
        self.follow(url, kind, route, tally, call, async |mut resp: Response, kind| {
            let status = resp.status().as_u16();
            let at = resp.url().clone();
            if kind == Kind::Cdn && at != start && (200..300).contains(&status) {
                // Reached by a redirect from the resolve URL: later reads go straight there.
                file.set_current(Some(at.clone()));
            }
            match status {
                206 => {
                    let value = header_str(resp.headers(), "content-range");
                    let ok = value.and_then(parse_content_range) == Some((range.start, range.end - 1, Some(file.size)));
                    if !ok {
                        return Err(HubError::BadContentRange {
                            url: shown(&at),
                            status,
                            start: range.start,
                            end: range.end - 1,
                            content_range: value.map(clean_message),
                        });
                    }
                    self.read_body(&mut resp, kind, tally, BodyLimit::Exactly(len)).await.map(Step::Done)
                }
                200 => {
                    // The server ignored the range: take the slice from the full body, if affordable.
                    if file.size > max_full {
                        return Err(HubError::RangeIgnored { url: shown(&at), size: file.size, cap: max_full });
                    }
                    if let Some(n) = resp.content_length()
                        && n != file.size
                    {
                        return Err(HubError::SizeMismatch { url: shown(&at), expected: file.size, found: n });
                    }
                    self.read_slice(&mut resp, kind, tally, range.clone()).await.map(Step::Done)
                }
                300..=399 => Ok(Step::Follow),
                _ => Err(HubError::UnexpectedStatus { url: shown(&at), status }),
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("bytes 0-99/1000"), Some((0, 99, Some(1000))));
        assert_eq!(parse_content_range("bytes 5-5/*"), Some((5, 5, None)));
        for bad in ["bytes=0-99/1000", "bytes 0-99", "bytes a-b/c", "items 0-1/2", ""] {
            assert_eq!(parse_content_range(bad), None, "{bad:?}");
        }
    }
}
