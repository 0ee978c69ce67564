//! Names that come from the Hub and go into URLs and file paths: repository ids, revisions, commits and file
//! names. All are untrusted; each newtype is only built by a validating constructor, so a value that reaches
//! a URL or the cache has passed the rules below.

use std::fmt;

use crate::error::HubError;

/// Longest namespace or repository name the Hub allows.
const MAX_ID_PART: usize = 96;

/// Longest file path accepted in a repository.
pub const MAX_FILE_NAME: usize = 1024;

/// Longest revision (branch or tag name) accepted.
const MAX_REVISION: usize = 256;

/// A model repository id: `owner/name`, or a legacy single-segment `name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoId(String);

fn id_part_ok(part: &str) -> bool {
    !part.is_empty()
        && part.len() <= MAX_ID_PART
        && part.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !part.contains("..")
        && !part.contains("--")
        && !part.starts_with(['-', '.'])
        && !part.ends_with(['-', '.'])
}

impl RepoId {
    /// Validates `id`: one or two `/`-separated parts of ASCII letters, digits, `-`, `_` and `.`, none
    /// starting or ending with `-` or `.`, without `..` or `--`, at most 96 bytes each.
    ///
    /// # Errors
    /// [`HubError::BadRepoId`].
    pub fn parse(id: &str) -> Result<RepoId, HubError> {
        let parts: Vec<&str> = id.split('/').collect();
        if parts.len() > 2 || !parts.iter().all(|p| id_part_ok(p)) {
            return Err(HubError::BadRepoId { id: id.chars().take(200).collect() });
        }
        Ok(RepoId(id.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The URL path segments of the id (`["owner", "name"]`).
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The cache folder name, `models--owner--name`.
    pub fn cache_folder(&self) -> String {
        format!("models--{}", self.0.replace('/', "--"))
    }
}

impl fmt::Display for RepoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A full commit id: 40 lowercase hex digits.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Commit(String);

impl Commit {
    /// Validates a commit id (upper-case hex is lowered).
    ///
    /// # Errors
    /// [`HubError::BadCommit`].
    pub fn parse(commit: &str) -> Result<Commit, HubError> {
        if commit.len() != 40 || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(HubError::BadCommit { commit: commit.chars().take(80).collect() });
        }
        Ok(Commit(commit.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Commit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A revision to look up: a branch, a tag, `refs/pr/N` or a commit id. Sent as one percent-encoded path
/// segment.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Revision(String);

impl Revision {
    /// The default branch.
    pub fn main() -> Revision {
        Revision("main".to_owned())
    }

    /// Validates a revision: non-empty, at most 256 bytes, no control characters, no `..`, no leading `/`.
    ///
    /// # Errors
    /// [`HubError::BadRevision`].
    pub fn parse(revision: &str) -> Result<Revision, HubError> {
        let ok = !revision.is_empty()
            && revision.len() <= MAX_REVISION
            && !revision.chars().any(char::is_control)
            && !revision.contains("..")
            && !revision.starts_with('/');
        if !ok {
            return Err(HubError::BadRevision { revision: revision.chars().take(80).collect() });
        }
        Ok(Revision(revision.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&Commit> for Revision {
    fn from(c: &Commit) -> Revision {
        Revision(c.0.clone())
    }
}

/// Checks a file path inside a repository before it goes into a URL or a local path: relative, `/`-separated,
/// no empty, `.` or `..` segment, no backslash, colon or control character, at most [`MAX_FILE_NAME`] bytes.
///
/// # Errors
/// [`HubError::BadFileName`] naming the rule.
pub fn check_file_name(name: &str) -> Result<(), HubError> {
    let refuse = |reason| Err(HubError::BadFileName { name: name.chars().take(200).collect(), reason });
    if name.is_empty() {
        return refuse("empty");
    }
    if name.len() > MAX_FILE_NAME {
        return refuse("too long");
    }
    if name.starts_with('/') {
        return refuse("absolute path");
    }
    if name.contains('\\') {
        return refuse("backslash");
    }
    if name.contains(':') {
        return refuse("colon (drive or scheme prefix)");
    }
    if name.chars().any(char::is_control) {
        return refuse("control character");
    }
    if name.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return refuse("empty, '.' or '..' path segment");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids() {
        let check = |id: &str, ok: bool| assert_eq!(RepoId::parse(id).is_ok(), ok, "{id:?}");
        for good in ["meta-llama/Llama-2-7b-hf", "gpt2", "a/b", "Org_1/model.v2", "x/y_z-1.0"] {
            check(good, true);
        }
        for bad in ["", "/", "a/", "/b", "a/b/c", "a/../b", "../a", "a/b c", "a/-b", "a/b.", "a--b/c", "a/b\n", "é/x"]
        {
            check(bad, false);
        }
        check(&format!("a/{}", "x".repeat(97)), false);
        let id = RepoId::parse("acme/tiny").expect("valid");
        assert_eq!(id.segments().collect::<Vec<_>>(), ["acme", "tiny"]);
        assert_eq!(id.cache_folder(), "models--acme--tiny");
    }

    #[test]
    fn commits_and_revisions() {
        let sha = "0123456789abcdef0123456789ABCDEF01234567";
        assert_eq!(Commit::parse(sha).expect("valid").as_str(), sha.to_ascii_lowercase());
        assert!(Commit::parse("main").is_err());
        assert!(Commit::parse(&sha[..39]).is_err());
        assert!(Commit::parse(&format!("{}g", &sha[..39])).is_err());
        assert!(Revision::parse("refs/pr/1").is_ok());
        for bad in ["", "../main", "/main", "a\u{0}b", &"r".repeat(257)] {
            assert!(Revision::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn file_names() {
        let check = |name: &str, expected: Option<&str>| {
            let got = match check_file_name(name) {
                Ok(()) => None,
                Err(HubError::BadFileName { reason, .. }) => Some(reason),
                Err(e) => panic!("unexpected {e}"),
            };
            assert_eq!(got, expected, "{name:?}");
        };
        check("model.safetensors", None);
        check("onnx/model.onnx", None);
        check("", Some("empty"));
        check("/etc/passwd", Some("absolute path"));
        check("..\\x", Some("backslash"));
        check("C:x", Some("colon (drive or scheme prefix)"));
        check("a\u{1b}[31m", Some("control character"));
        check("../secret", Some("empty, '.' or '..' path segment"));
        check("a/../../b", Some("empty, '.' or '..' path segment"));
        check("a//b", Some("empty, '.' or '..' path segment"));
        check("./a", Some("empty, '.' or '..' path segment"));
        check(&"x".repeat(MAX_FILE_NAME + 1), Some("too long"));
    }
}
