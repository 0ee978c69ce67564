//! Fuzzes the two parsers that read untrusted bytes before anything else: the safetensors header and the shard
//! index. Both must return `Ok` or a specific error for every input, never panic, hang or allocate beyond their
//! caps; whatever the header parser accepts must describe exactly the bytes given.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = signature::parse_header(data, Some(data.len() as u64)) {
        assert_eq!(header.file_len(), data.len() as u64);
        assert!(header.tensors.windows(2).all(|w| w[0].end == w[1].begin));
    }
    // The same bytes as a ranged read of a larger remote file: coverage is checked against that size instead.
    let _ = signature::parse_header(data, Some(data.len() as u64 + 1));
    if let Ok(index) = signature::parse_index(data) {
        assert!(index.files().iter().all(|f| signature::index::check_shard_name(f).is_ok()));
    }
});
