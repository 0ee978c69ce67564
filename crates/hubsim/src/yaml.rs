//! The budgeted YAML loader for card front matter lives in its own crate (`modeltree-yamlcap`), shared with the
//! application's card reader; re-exported here under the name hubsim's code and tests use.

pub use yamlcap::*;
