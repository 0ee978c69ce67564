//! Model cards: the YAML front matter of `README.md` as JSON (`cardData`), and what the Hub derives from it.
//!
//! Card data on the Hub is dirty (strings where lists are expected, unknown relations, self-references), so this
//! module passes the YAML through unchanged as `cardData` and is lenient only where the Hub itself is: `base_model`
//! may be a string or a list, `license` may be a string or a list.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use serde_json::Value;

use crate::yaml::{self, Budget, YamlError};

/// The relations the Hub accepts in `base_model_relation`.
pub(crate) const RELATIONS: [&str; 4] = ["adapter", "merge", "quantized", "finetune"];

/// How much of a README is read: the front matter is at the top, and more than the YAML limit of it is refused
/// anyway, so the rest of a large (or endless) README is never read.
const README_PREFIX_BYTES: u64 = yaml::MAX_INPUT_BYTES as u64 + 64;

/// Why a card has no `cardData`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CardError {
    #[error("cannot read the model card: {0}")]
    Io(#[from] io::Error),
    #[error("model card front matter: {0}")]
    Yaml(#[from] YamlError),
    #[error("model card front matter is not a mapping")]
    NotAMapping,
}

/// The YAML between a leading `---` line and the next `---` line, if the file starts with one. A front matter that
/// runs past the YAML limit is returned as far as it was read, unterminated or not, so that the loader refuses it
/// as too long instead of it passing for "no card".
pub(crate) fn front_matter(readme: &str) -> Option<&str> {
    let readme = readme.strip_prefix('\u{feff}').unwrap_or(readme);
    let mut lines = readme.split_inclusive('\n');
    let first = lines.next()?;
    if first.trim_end_matches(['\r', '\n']) != "---" {
        return None;
    }
    let start = first.len();
    let mut offset = start;
    for line in lines {
        if line.trim_end_matches(['\r', '\n']) == "---" {
            return readme.get(start..offset);
        }
        offset += line.len();
        if offset - start > yaml::MAX_INPUT_BYTES {
            return readme.get(start..offset);
        }
    }
    None
}

/// `cardData` for the README at `path`, reading only its first [`README_PREFIX_BYTES`].
///
/// # Errors
/// As [`card_data`], plus [`CardError::Io`] when the file cannot be read. A README that is not UTF-8 where it was
/// read has no card, as on the Hub.
pub(crate) fn read_card(path: &Path) -> Result<Option<Value>, CardError> {
    let mut bytes = Vec::new();
    File::open(path)?.take(README_PREFIX_BYTES).read_to_end(&mut bytes)?;
    let text = match std::str::from_utf8(&bytes) {
        Ok(text) => text,
        // The prefix may end inside a character; what comes before it is the text.
        Err(e) if e.error_len().is_none() => {
            bytes.get(..e.valid_up_to()).and_then(|b| std::str::from_utf8(b).ok()).unwrap_or_default()
        }
        Err(_) => return Ok(None),
    };
    card_data(text)
}

/// `cardData` for a README: `Ok(None)` when there is no front matter, `Err` when it does not parse, is over the
/// YAML budget (an alias bomb, deep nesting, huge scalars) or is not a mapping (the Hub then shows no card data
/// either).
///
/// # Errors
/// [`CardError::Yaml`] and [`CardError::NotAMapping`].
pub(crate) fn card_data(readme: &str) -> Result<Option<Value>, CardError> {
    let Some(yaml) = front_matter(readme) else {
        return Ok(None);
    };
    match yaml::load(yaml, Budget::default())? {
        None => Ok(None),
        Some(card @ Value::Object(_)) => Ok(Some(card)),
        Some(_) => Err(CardError::NotAMapping),
    }
}

/// A card field that may be a string or a list of strings, as a list (other element types are dropped).
pub(crate) fn string_list(card: Option<&Value>, key: &str) -> Vec<String> {
    match card.and_then(|c| c.get(key)) {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
        _ => Vec::new(),
    }
}

/// A card field that must be a string.
pub(crate) fn string_field(card: Option<&Value>, key: &str) -> Option<String> {
    card.and_then(|c| c.get(key)).and_then(Value::as_str).map(str::to_owned)
}

/// Whether `id` is shaped like a Hub model id (`name` or `org/name`, with the Hub's allowed characters). Tags are
/// only derived from well-formed ids.
pub(crate) fn is_repo_id(id: &str) -> bool {
    let parts: Vec<&str> = id.split('/').collect();
    parts.len() <= 2 && parts.iter().all(|p| is_name(p))
}

/// A single org or repo name: `[A-Za-z0-9._-]`, at most 96 characters, not starting or ending with `.` or `-`, no
/// `..` (the Hub's rules; the last one also keeps every name a safe path component).
pub(crate) fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 96
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !name.starts_with(['.', '-'])
        && !name.ends_with(['.', '-'])
        && !name.contains("..")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(readme: &str, expected: Option<Value>) {
        assert_eq!(card_data(readme).expect("parses"), expected);
    }

    #[test]
    fn front_matter_cases() {
        check("# no card\n", None);
        check("---\nlicense: mit\n---\n# x\n", Some(json!({"license": "mit"})));
        check(
            "---\r\nbase_model:\r\n- a/b\r\n- c/d\r\nn: 3\r\nf: 0.5\r\nok: true\r\n---\r\n",
            Some(json!({"base_model": ["a/b", "c/d"], "n": 3, "f": 0.5, "ok": true})),
        );
        check("---\n---\nbody\n", None);
        // An unterminated front matter is not a card.
        check("---\nlicense: mit\n", None);
        assert!(card_data("---\n- a\n- b\n---\n").is_err());
        assert!(card_data("---\nkey: [unclosed\n---\n").is_err());
    }

    #[test]
    fn issue_11_hostile_front_matter_is_an_error() {
        let bomb = "---\na: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n\
                    d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n\
                    f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n---\n";
        let err = card_data(bomb).expect_err("bomb");
        assert!(matches!(err, CardError::Yaml(YamlError::TooManyNodes { .. })), "{err:?}");
        assert_eq!(
            err.to_string(),
            "model card front matter: yaml expands to more than 131072 nodes (aliases repeat too much)"
        );
        // A front matter that runs past the limit is refused, whether or not it is terminated.
        let long = format!("---\nk: {}\n", "x".repeat(yaml::MAX_INPUT_BYTES));
        assert!(matches!(card_data(&long), Err(CardError::Yaml(YamlError::TooLong { .. }))));
        assert!(matches!(card_data(&format!("{long}---\n")), Err(CardError::Yaml(YamlError::TooLong { .. }))));
        assert!(matches!(card_data("---\n[1]\n---\n"), Err(CardError::NotAMapping)));
    }

    #[test]
    fn read_card_reads_a_bounded_prefix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("README.md");
        // A card followed by megabytes of body, with a multi-byte character cut by the prefix.
        let mut text = "---\nlicense: mit\n---\n".to_owned();
        while text.len() < README_PREFIX_BYTES as usize - 1 {
            text.push('x');
        }
        text.push_str(&"é".repeat(1 << 20));
        std::fs::write(&path, &text).expect("write");
        assert_eq!(read_card(&path).expect("card"), Some(json!({"license": "mit"})));
        assert!(matches!(read_card(&dir.path().join("missing")), Err(CardError::Io(_))));
    }

    #[test]
    fn lists_and_ids() {
        let card = json!({"base_model": "a/b", "license": ["mit", 3], "tags": "x"});
        assert_eq!(string_list(Some(&card), "base_model"), ["a/b"]);
        assert_eq!(string_list(Some(&card), "license"), ["mit"]);
        assert_eq!(string_list(Some(&card), "missing"), Vec::<String>::new());
        assert!(is_repo_id("gpt2"));
        assert!(is_repo_id("org/name-1.5"));
        assert!(!is_repo_id("a/b/c"));
        assert!(!is_repo_id("../etc"));
        assert!(!is_repo_id("a/..b"));
        assert!(!is_repo_id(""));
    }
}
