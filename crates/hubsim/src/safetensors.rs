//! Just enough safetensors to fill the Hub's `safetensors` field and the `safetensors-metadata` route: read the
//! length-prefixed JSON header of a file and count parameters per dtype.
//!
//! The server reads files it was given, not files from the network, but a folder may still hold a broken file: every
//! length is bounded before anything is allocated, and a bad header is an error for that repo, never a panic.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use serde_json::Value;

/// The safetensors crate's own cap on the header length.
const MAX_HEADER_LEN: u64 = 100_000_000;

/// Why a header could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HeaderError {
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
    #[error("file of {0} bytes is too small for a safetensors header")]
    TooSmall(u64),
    #[error("header length {len} exceeds the file ({size} bytes) or the {MAX_HEADER_LEN}-byte cap")]
    TooLong { len: u64, size: u64 },
    #[error("header is not a JSON object: {0}")]
    NotJson(String),
    #[error("tensor {0:?} has no valid dtype or shape")]
    BadTensor(String),
    #[error("parameter count overflows")]
    Overflow,
}

/// The parsed JSON header of the safetensors file at `path` (of `size` bytes).
pub(crate) fn read_header(path: &Path, size: u64) -> Result<Value, HeaderError> {
    if size < 8 {
        return Err(HeaderError::TooSmall(size));
    }
    let mut file = File::open(path)?;
    let mut len_bytes = [0u8; 8];
    file.read_exact(&mut len_bytes)?;
    let len = u64::from_le_bytes(len_bytes);
    if len > MAX_HEADER_LEN || len > size - 8 {
        return Err(HeaderError::TooLong { len, size });
    }
    let len = usize::try_from(len).map_err(|_| HeaderError::TooLong { len, size })?;
    let mut header = vec![0u8; len];
    file.read_exact(&mut header)?;
    match serde_json::from_slice::<Value>(&header) {
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(_) => Err(HeaderError::NotJson("not an object".to_owned())),
        Err(e) => Err(HeaderError::NotJson(e.to_string())),
    }
}

/// Parameters per dtype (`{"BF16": 117056}`) of one header; `__metadata__` is skipped.
pub(crate) fn parameters(header: &Value) -> Result<BTreeMap<String, u64>, HeaderError> {
    let mut counts = BTreeMap::new();
    let Some(tensors) = header.as_object() else {
        return Err(HeaderError::NotJson("not an object".to_owned()));
    };
    for (name, info) in tensors {
        if name == "__metadata__" {
            continue;
        }
        let bad = || HeaderError::BadTensor(name.clone());
        let dtype = info.get("dtype").and_then(Value::as_str).ok_or_else(bad)?;
        let shape = info.get("shape").and_then(Value::as_array).ok_or_else(bad)?;
        let mut numel: u64 = 1;
        for dim in shape {
            let dim = dim.as_u64().ok_or_else(bad)?;
            numel = numel.checked_mul(dim).ok_or(HeaderError::Overflow)?;
        }
        let slot = counts.entry(dtype.to_owned()).or_insert(0u64);
        *slot = slot.checked_add(numel).ok_or(HeaderError::Overflow)?;
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::io::Write;

    fn file_with(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(bytes).expect("write");
        f
    }

    fn check(bytes: &[u8], expected: Result<Value, &str>) {
        let f = file_with(bytes);
        let got = read_header(f.path(), bytes.len() as u64).map_err(|e| e.to_string());
        match expected {
            Ok(v) => assert_eq!(got.expect("header"), v),
            Err(prefix) => assert!(got.as_ref().is_err_and(|e| e.starts_with(prefix)), "{got:?}"),
        }
    }

    #[test]
    fn headers() {
        let json = br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        let mut ok = (json.len() as u64).to_le_bytes().to_vec();
        ok.extend_from_slice(json);
        ok.extend_from_slice(&[0u8; 8]);
        check(&ok, Ok(json!({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})));
        check(b"1234", Err("file of 4 bytes"));
        check(&u64::MAX.to_le_bytes(), Err("header length"));
        let mut long = 100u64.to_le_bytes().to_vec();
        long.extend_from_slice(b"{}");
        check(&long, Err("header length 100"));
        let mut list = 2u64.to_le_bytes().to_vec();
        list.extend_from_slice(b"[]");
        check(&list, Err("header is not a JSON object"));
    }

    #[test]
    fn parameter_counts() {
        let header = json!({
            "__metadata__": {"format": "pt"},
            "a": {"dtype": "BF16", "shape": [4, 8], "data_offsets": [0, 64]},
            "b": {"dtype": "BF16", "shape": [], "data_offsets": [64, 66]},
            "c": {"dtype": "F32", "shape": [3], "data_offsets": [66, 78]},
        });
        let counts = parameters(&header).expect("counts");
        assert_eq!(counts, BTreeMap::from([("BF16".to_owned(), 33), ("F32".to_owned(), 3)]));
        assert!(parameters(&json!({"x": {"dtype": "F32", "shape": [-1]}})).is_err());
        assert!(parameters(&json!({"x": {"dtype": "F32", "shape": [u64::MAX, 2]}})).is_err());
    }
}
