//! Model cards: the YAML front matter of `README.md` as JSON (`cardData`), and what the Hub derives from it.
//!
//! Card data on the Hub is dirty (strings where lists are expected, unknown relations, self-references), so this
//! module passes the YAML through unchanged as `cardData` and is lenient only where the Hub itself is: `base_model`
//! may be a string or a list, `license` may be a string or a list.

use serde_json::{Map, Number, Value};
use yaml_rust2::{Yaml, YamlLoader};

/// The relations the Hub accepts in `base_model_relation`.
pub(crate) const RELATIONS: [&str; 4] = ["adapter", "merge", "quantized", "finetune"];

/// The YAML between a leading `---` line and the next `---` line, if the file starts with one.
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
    }
    None
}

/// `cardData` for a README: `Ok(None)` when there is no front matter, `Err` with the YAML error when it does not
/// parse (the Hub then shows no card data either).
pub(crate) fn card_data(readme: &str) -> Result<Option<Value>, String> {
    let Some(yaml) = front_matter(readme) else {
        return Ok(None);
    };
    let docs = YamlLoader::load_from_str(yaml).map_err(|e| e.to_string())?;
    match docs.first() {
        None => Ok(None),
        Some(Yaml::Hash(_)) => Ok(docs.first().map(yaml_to_json)),
        Some(_) => Err("front matter is not a mapping".to_owned()),
    }
}

fn yaml_to_json(y: &Yaml) -> Value {
    match y {
        Yaml::Real(s) => {
            s.parse::<f64>().ok().and_then(Number::from_f64).map_or(Value::String(s.clone()), Value::Number)
        }
        Yaml::Integer(i) => Value::Number((*i).into()),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Array(items) => Value::Array(items.iter().map(yaml_to_json).collect()),
        Yaml::Hash(h) => {
            let mut map = Map::new();
            for (k, v) in h {
                let key = match k {
                    Yaml::String(s) | Yaml::Real(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    Yaml::Null => "null".to_owned(),
                    // Complex keys have no JSON form; the Hub's YAML parser would reject the card anyway.
                    _ => continue,
                };
                map.insert(key, yaml_to_json(v));
            }
            Value::Object(map)
        }
        Yaml::Alias(_) | Yaml::Null | Yaml::BadValue => Value::Null,
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
