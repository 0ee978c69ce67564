//! Shared by the integration tests.

use std::path::Path;

use signature::Scheme;

/// The scheme the binary signs with when nothing overrides it: the documented default file's settings.
pub fn default_scheme() -> Scheme {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config").join("modeltree.toml");
    let text = std::fs::read_to_string(path).expect("config/modeltree.toml");
    let table: toml::Table = text.parse().expect("toml");
    let fraction = table["signature"]["row_fraction"].as_float().expect("row_fraction");
    Scheme { row_fraction: fraction, ..Scheme::default() }
}
