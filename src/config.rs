//! Configuration: `config/modeltree.toml` is the documented default, embedded here and printed by
//! `modeltree config default`. Precedence: built-in defaults < file < environment < flags; the binary applies
//! the environment and flags on top of what [`Config::load`] returns.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use signature::Scheme;

/// The documented default configuration, byte for byte.
pub const DEFAULT_TOML: &str = include_str!("../config/modeltree.toml");

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// `None` means the platform default path.
    pub db: Option<PathBuf>,
    pub scheme: Scheme,
    pub method: lineage::Method,
}

impl Default for Config {
    fn default() -> Config {
        Config { db: None, scheme: Scheme::default(), method: lineage::Method::Default }
    }
}

impl Config {
    /// Built-in defaults, overlaid with `path` when given.
    ///
    /// # Errors
    /// When the file cannot be read, is not TOML, or holds an unknown key or a value out of range.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        let mut config = Config::default();
        if let Some(path) = path {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            config.overlay(&text).with_context(|| format!("in {}", path.display()))?;
        }
        Ok(config)
    }

    fn overlay(&mut self, text: &str) -> anyhow::Result<()> {
        let doc: toml::Table = text.parse().context("not valid TOML")?;
        for (section, value) in &doc {
            let Some(table) = value.as_table() else { bail!("[{section}] must be a table") };
            for (key, value) in table {
                match (section.as_str(), key.as_str()) {
                    ("store", "db") => {
                        let s = value.as_str().context("store.db must be a string")?;
                        self.db = (!s.is_empty()).then(|| PathBuf::from(s));
                    }
                    ("signature", "sketch_k") => self.scheme.sketch_k = int_in(value, key, 4, 512)?,
                    ("signature", "samples") => self.scheme.samples = int_in(value, key, 0, 1 << 20)?,
                    ("signature", "seed") => {
                        self.scheme.seed = value.as_integer().context("signature.seed must be an integer")? as u64
                    }
                    ("signature", "row_fraction") => {
                        let f = value.as_float().context("signature.row_fraction must be a float")?;
                        if !(f > 0.0 && f <= 1.0) {
                            bail!("signature.row_fraction must be in (0, 1], not {f}");
                        }
                        self.scheme.row_fraction = f;
                    }
                    ("lineage", "method") => {
                        self.method = match value.as_str() {
                            Some("default") => lineage::Method::Default,
                            Some("mother") => lineage::Method::Mother,
                            _ => bail!("lineage.method must be \"default\" or \"mother\""),
                        }
                    }
                    _ => bail!("unknown setting {section}.{key}"),
                }
            }
        }
        Ok(())
    }
}

fn int_in(value: &toml::Value, key: &str, min: i64, max: i64) -> anyhow::Result<u32> {
    let v = value.as_integer().with_context(|| format!("{key} must be an integer"))?;
    if v < min || v > max {
        bail!("{key} must be between {min} and {max}, not {v}");
    }
    Ok(v as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_default_is_the_builtin_default() {
        let mut parsed = Config::default();
        parsed.overlay(DEFAULT_TOML).expect("the embedded default parses");
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn overlay_and_errors() {
        let mut c = Config::default();
        c.overlay("[store]\ndb = \"/x.db\"\n[lineage]\nmethod = \"mother\"\n").expect("valid");
        assert_eq!(c.db.as_deref(), Some(Path::new("/x.db")));
        assert_eq!(c.method, lineage::Method::Mother);
        for bad in ["[store]\ndbb = 1", "[signature]\nsketch_k = 1", "[signature]\nrow_fraction = 0.0", "x = 1", "[["] {
            assert!(Config::default().overlay(bad).is_err(), "{bad}");
        }
    }
}
