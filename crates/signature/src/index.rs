//! Strict parsing of a sharded checkpoint's index (`model.safetensors.index.json`).
//!
//! The index maps every tensor name to the shard file that holds it:
//! `{"metadata": {"total_size": …}, "weight_map": {"tensor": "model-00001-of-00002.safetensors", …}}`.
//! Shard names come from an untrusted repository and are later joined to a local directory or a URL, so a name
//! must be a plain file name ending in `.safetensors`: no separators, no `..`, no drive or absolute prefix, no
//! control characters. Duplicate keys are rejected like in headers.
//!
//! Decision on extra keys: top-level keys other than `metadata` and `weight_map`, and `metadata` keys other than
//! `total_size`, are ignored. Writers have added such keys over time (`total_parameters`), none of them changes
//! which bytes are read, and rejecting them would reject real checkpoints.

use std::collections::{BTreeMap, BTreeSet};

use crate::json::{self, Json, JsonError};

/// Largest index file we parse. Real indexes are below 10 MB even for MoE checkpoints with 100k+ tensors.
pub const MAX_INDEX_LEN: usize = 64 * 1024 * 1024;

/// Deepest nesting accepted in an index (a valid one nests two levels).
pub const MAX_INDEX_DEPTH: usize = 16;

/// A parsed and validated shard index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardIndex {
    /// `metadata.total_size` when present (bytes of tensor data, as the writer counted them).
    pub total_size: Option<u64>,
    /// Tensor name → shard file name.
    pub weight_map: BTreeMap<String, String>,
}

impl ShardIndex {
    /// The distinct shard file names, sorted.
    pub fn files(&self) -> BTreeSet<&str> {
        self.weight_map.values().map(String::as_str).collect()
    }
}

/// Why an index was rejected.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum IndexError {
    #[error("index is {len} bytes, more than the cap of {cap}")]
    TooLarge { len: usize, cap: usize },
    #[error("index is not valid utf-8 (valid up to byte {valid_up_to})")]
    NotUtf8 { valid_up_to: usize },
    #[error("index json nests deeper than {limit} levels")]
    TooDeep { limit: usize },
    #[error("index is not valid json: {message}")]
    JsonSyntax { message: String },
    #[error("index json repeats the key {key:?}")]
    DuplicateKey { key: String },
    #[error("index json is a {found}, not an object")]
    NotAnObject { found: &'static str },
    #[error("index metadata is a {found}, not an object")]
    MetadataNotObject { found: &'static str },
    #[error("index total_size is not an unsigned 64-bit integer")]
    TotalSizeNotU64,
    #[error("index has no weight_map")]
    MissingWeightMap,
    #[error("index weight_map is a {found}, not an object")]
    WeightMapNotObject { found: &'static str },
    #[error("index weight_map is empty")]
    EmptyWeightMap,
    #[error("index weight_map has an empty tensor name")]
    EmptyTensorName,
    #[error("index maps tensor {tensor:?} to a {found}, not a file name")]
    FileNotString { tensor: String, found: &'static str },
    #[error("shard file name {file:?} is absolute")]
    AbsoluteShardName { file: String },
    #[error("shard file name {file:?} contains a path separator")]
    ShardNameHasSeparator { file: String },
    #[error("shard file name {file:?} contains '..'")]
    ShardNameHasParentRef { file: String },
    #[error("shard file name {file:?} contains a control character")]
    ShardNameHasControl { file: String },
    #[error("shard file name {file:?} does not end in .safetensors")]
    ShardNameNotSafetensors { file: String },
}

/// Parses and validates a shard index.
///
/// # Errors
/// An [`IndexError`] naming the first rule the index breaks.
pub fn parse_index(json: &[u8]) -> Result<ShardIndex, IndexError> {
    if json.len() > MAX_INDEX_LEN {
        return Err(IndexError::TooLarge { len: json.len(), cap: MAX_INDEX_LEN });
    }
    let text = std::str::from_utf8(json).map_err(|e| IndexError::NotUtf8 { valid_up_to: e.valid_up_to() })?;
    let root = json::parse(text, MAX_INDEX_DEPTH).map_err(|e| match e {
        JsonError::TooDeep => IndexError::TooDeep { limit: MAX_INDEX_DEPTH },
        JsonError::Syntax(e) => IndexError::JsonSyntax { message: e.to_string() },
        JsonError::DuplicateKey(key) => IndexError::DuplicateKey { key },
    })?;
    let Json::Object(entries) = root else {
        return Err(IndexError::NotAnObject { found: root.kind() });
    };
    let mut total_size = None;
    let mut weight_map = None;
    for (key, value) in entries {
        match key.as_str() {
            "metadata" => total_size = parse_metadata(value)?,
            "weight_map" => weight_map = Some(value),
            _ => {}
        }
    }
    let weight_map = weight_map.ok_or(IndexError::MissingWeightMap)?;
    let Json::Object(pairs) = weight_map else {
        return Err(IndexError::WeightMapNotObject { found: weight_map.kind() });
    };
    if pairs.is_empty() {
        return Err(IndexError::EmptyWeightMap);
    }
    let mut map = BTreeMap::new();
    for (tensor, file) in pairs {
        if tensor.is_empty() {
            return Err(IndexError::EmptyTensorName);
        }
        let Json::String(file) = file else {
            return Err(IndexError::FileNotString { found: file.kind(), tensor });
        };
        check_shard_name(&file)?;
        map.insert(tensor, file);
    }
    Ok(ShardIndex { total_size, weight_map: map })
}

fn parse_metadata(value: Json) -> Result<Option<u64>, IndexError> {
    let Json::Object(entries) = value else {
        return Err(IndexError::MetadataNotObject { found: value.kind() });
    };
    let mut total_size = None;
    for (key, value) in entries {
        if key == "total_size" {
            total_size = Some(value.as_u64().ok_or(IndexError::TotalSizeNotU64)?);
        }
    }
    Ok(total_size)
}

/// Checks that `file` is a bare `*.safetensors` file name that cannot leave the directory it is joined to.
///
/// # Errors
/// The [`IndexError`] variant of the first problem found.
pub fn check_shard_name(file: &str) -> Result<(), IndexError> {
    let owned = || file.to_owned();
    let bytes = file.as_bytes();
    let drive = bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':';
    if file.starts_with('/') || file.starts_with('\\') || drive {
        return Err(IndexError::AbsoluteShardName { file: owned() });
    }
    if file.contains(['/', '\\', ':']) {
        return Err(IndexError::ShardNameHasSeparator { file: owned() });
    }
    if file.contains("..") {
        return Err(IndexError::ShardNameHasParentRef { file: owned() });
    }
    if file.chars().any(char::is_control) {
        return Err(IndexError::ShardNameHasControl { file: owned() });
    }
    match file.strip_suffix(".safetensors") {
        Some(stem) if !stem.is_empty() => Ok(()),
        _ => Err(IndexError::ShardNameNotSafetensors { file: owned() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(json: &[u8], expected: Result<ShardIndex, IndexError>) {
        assert_eq!(parse_index(json), expected, "{}", String::from_utf8_lossy(json));
    }

    fn one(file: &str) -> String {
        format!(r#"{{"metadata":{{"total_size":8}},"weight_map":{{"w":"{file}"}}}}"#)
    }

    #[test]
    fn accepts_a_real_index() {
        let json = br#"{"metadata":{"total_size":1234,"total_parameters":617},
            "weight_map":{"a.weight":"model-00001-of-00002.safetensors","b.weight":"model-00002-of-00002.safetensors",
            "c.weight":"model-00001-of-00002.safetensors"}}"#;
        let index = parse_index(json).expect("valid index");
        assert_eq!(index.total_size, Some(1234));
        assert_eq!(index.weight_map.len(), 3);
        assert_eq!(
            index.files().into_iter().collect::<Vec<_>>(),
            ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
        );
        // Metadata is optional.
        let index = parse_index(br#"{"weight_map":{"a":"x.safetensors"}}"#).expect("valid index");
        assert_eq!(index.total_size, None);
    }

    #[test]
    fn rejects_each_rule() {
        let f = |file: &str| file.to_owned();
        check(
            one("/etc/x.safetensors").as_bytes(),
            Err(IndexError::AbsoluteShardName { file: f("/etc/x.safetensors") }),
        );
        check(one(r"\\x.safetensors").as_bytes(), Err(IndexError::AbsoluteShardName { file: f(r"\x.safetensors") }));
        check(one("C:x.safetensors").as_bytes(), Err(IndexError::AbsoluteShardName { file: f("C:x.safetensors") }));
        check(one("a/b.safetensors").as_bytes(), Err(IndexError::ShardNameHasSeparator { file: f("a/b.safetensors") }));
        check(
            one(r"a\\b.safetensors").as_bytes(),
            Err(IndexError::ShardNameHasSeparator { file: f(r"a\b.safetensors") }),
        );
        check(one("..safetensors").as_bytes(), Err(IndexError::ShardNameHasParentRef { file: f("..safetensors") }));
        check(
            one("a..b.safetensors").as_bytes(),
            Err(IndexError::ShardNameHasParentRef { file: f("a..b.safetensors") }),
        );
        check(
            one(r"a\u0000.safetensors").as_bytes(),
            Err(IndexError::ShardNameHasControl { file: f("a\0.safetensors") }),
        );
        check(one("model.bin").as_bytes(), Err(IndexError::ShardNameNotSafetensors { file: f("model.bin") }));
        check(one(".safetensors").as_bytes(), Err(IndexError::ShardNameNotSafetensors { file: f(".safetensors") }));
        check(
            one("x.safetensors.exe").as_bytes(),
            Err(IndexError::ShardNameNotSafetensors { file: f("x.safetensors.exe") }),
        );
        check(
            br#"{"weight_map":{"w":"a.safetensors","w":"b.safetensors"}}"#,
            Err(IndexError::DuplicateKey { key: f("w") }),
        );
        check(br#"{"weight_map":{},"weight_map":{}}"#, Err(IndexError::DuplicateKey { key: f("weight_map") }));
        check(br#"{"metadata":{}}"#, Err(IndexError::MissingWeightMap));
        check(br#"{"weight_map":[]}"#, Err(IndexError::WeightMapNotObject { found: "array" }));
        check(br#"{"weight_map":{}}"#, Err(IndexError::EmptyWeightMap));
        check(br#"{"weight_map":{"":"a.safetensors"}}"#, Err(IndexError::EmptyTensorName));
        check(br#"{"weight_map":{"w":3}}"#, Err(IndexError::FileNotString { tensor: f("w"), found: "number" }));
        check(
            br#"{"metadata":[],"weight_map":{"w":"a.safetensors"}}"#,
            Err(IndexError::MetadataNotObject { found: "array" }),
        );
        check(
            br#"{"metadata":{"total_size":-1},"weight_map":{"w":"a.safetensors"}}"#,
            Err(IndexError::TotalSizeNotU64),
        );
        check(
            br#"{"metadata":{"total_size":1.5},"weight_map":{"w":"a.safetensors"}}"#,
            Err(IndexError::TotalSizeNotU64),
        );
        check(b"[]", Err(IndexError::NotAnObject { found: "array" }));
        check(b"\xff{}", Err(IndexError::NotUtf8 { valid_up_to: 0 }));
        let bomb = "[".repeat(100_000);
        check(bomb.as_bytes(), Err(IndexError::TooDeep { limit: MAX_INDEX_DEPTH }));
        assert!(matches!(parse_index(b"{"), Err(IndexError::JsonSyntax { .. })));
        let huge = vec![b' '; MAX_INDEX_LEN + 1];
        check(&huge, Err(IndexError::TooLarge { len: MAX_INDEX_LEN + 1, cap: MAX_INDEX_LEN }));
    }
}
