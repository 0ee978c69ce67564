//! Configuration: one table row per setting, and the `Config` the rest of the indexer reads.
//!
//! [`SETTINGS`] is the only list of settings: each row names the setting's section and key in the file, its
//! environment variable, its command-line flag (if any), its kind, its built-in default and one line of
//! documentation (the flag's help). [`Config::default`] is made by applying every row's default, and every layer
//! goes through the same [`Config::set`], so a value means the same thing whether it came from the defaults, the
//! file, the environment or a flag. Precedence: built-in defaults < file < environment (`MODELTREE_…`) < flags.
//!
//! `config/modeltree.toml` is the documented default, embedded as [`DEFAULT_TOML`] and printed by
//! `modeltree config default`; a test checks that it parses to [`Config::default`] and documents every row.
//! This module does no IO: the binary reads the file and hands its text to [`Config::from_file_text`], and passes
//! the environment as a lookup function. The token itself is never part of the configuration: only where to read
//! it from (`HF_TOKEN` or a file).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use signature::Scheme;

use crate::convert::method_name;
use crate::export::Format;
use crate::schedule::Schedule;

/// The documented default configuration, byte for byte.
pub const DEFAULT_TOML: &str = include_str!("../../../config/modeltree.toml");

/// How a value is spelled in the environment and on the command line (a file uses TOML types).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Str,
    Int,
    Float,
    Bool,
    /// A comma-separated list in the environment, a repeated flag on the command line, an array in the file.
    List,
}

/// Which commands take a setting as a flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flag {
    /// File and environment only.
    None,
    /// A global flag of every command (`--db`).
    Global(&'static str),
    /// A flag of `daemon`.
    Daemon(&'static str),
    /// A flag of `daemon` and of `crawl`.
    Shared(&'static str),
}

/// One setting: where it is read from, what it holds by default, and what it means.
#[derive(Clone, Copy, Debug)]
pub struct Setting {
    pub section: &'static str,
    pub key: &'static str,
    pub env: &'static str,
    pub flag: Flag,
    pub kind: Kind,
    /// The built-in default, spelled as in the environment.
    pub default: &'static str,
    pub doc: &'static str,
}

impl Setting {
    /// `section.key`.
    pub fn name(&self) -> String {
        format!("{}.{}", self.section, self.key)
    }
}

const fn row(
    section: &'static str,
    key: &'static str,
    env: &'static str,
    flag: Flag,
    kind: Kind,
    default: &'static str,
    doc: &'static str,
) -> Setting {
    Setting { section, key, env, flag, kind, default, doc }
}

/// Every setting. The default share of row blocks read per tensor (0.02) comes from `scripts/bench-crawl.sh` on
/// the wide zoo: it reads 4.2% of checkpoint bytes there (about 3% on real shapes, where tensors have ≥ 1024
/// rows) at the edge accuracy and typed F1 of a full read.
pub const SETTINGS: &[Setting] = {
    use Flag::{Daemon, Global, None, Shared};
    use Kind::{Bool, Float, Int, List, Str};
    &[
        row("store", "db", "MODELTREE_DB", Global("db"), Str, "", "SQLite database (empty: the platform default)"),
        row("signature", "sketch_k", "MODELTREE_SKETCH_K", None, Int, "64", "side of the k×k sketch per 2-D tensor"),
        row(
            "signature",
            "samples",
            "MODELTREE_SAMPLES",
            None,
            Int,
            "1024",
            "values kept per tensor at seeded positions",
        ),
        row(
            "signature",
            "seed",
            "MODELTREE_SEED",
            None,
            Int,
            "0x6d6f64656c747265",
            "seed of sketches, samples and rows",
        ),
        row(
            "signature",
            "row_fraction",
            "MODELTREE_FETCH_FRACTION",
            Shared("fetch-fraction"),
            Float,
            "0.02",
            "share of each tensor's row blocks read (signature.row_fraction)",
        ),
        row("lineage", "method", "MODELTREE_METHOD", None, Str, "default", "\"default\" or \"mother\""),
        row(
            "hub",
            "endpoint",
            "MODELTREE_ENDPOINT",
            Shared("endpoint"),
            Str,
            "https://huggingface.co",
            "the Hub's base URL (hub.endpoint)",
        ),
        row("hub", "token_file", "MODELTREE_TOKEN_FILE", None, Str, "", "where the access token is read from"),
        row("hub", "tier", "MODELTREE_TIER", Shared("tier"), Str, "anonymous", "anonymous, free or pro (hub.tier)"),
        row(
            "hub",
            "concurrency",
            "MODELTREE_CONCURRENCY",
            Shared("concurrency"),
            Int,
            "4",
            "models signed at once (hub.concurrency)",
        ),
        row(
            "hub",
            "requests_in_flight",
            "MODELTREE_REQUESTS_IN_FLIGHT",
            None,
            Int,
            "8",
            "HTTP requests in flight at once",
        ),
        row(
            "daemon",
            "schedule",
            "MODELTREE_SCHEDULE",
            Daemon("schedule"),
            Str,
            "*/15 * * * *",
            "cron line: 5 fields (crontab), or 6/7 with seconds first (daemon.schedule)",
        ),
        row(
            "daemon",
            "status_addr",
            "MODELTREE_STATUS_ADDR",
            Daemon("status-addr"),
            Str,
            "",
            "loopback ip:port for /metrics and /healthz (daemon.status_addr)",
        ),
        row(
            "daemon",
            "allow_non_loopback_status",
            "MODELTREE_ALLOW_NON_LOOPBACK_STATUS",
            None,
            Bool,
            "false",
            "serve the status endpoint on a non-loopback address",
        ),
        row(
            "daemon",
            "shutdown_deadline",
            "MODELTREE_SHUTDOWN_DEADLINE",
            Daemon("shutdown-deadline"),
            Str,
            "30s",
            "how long in-flight work may take to finish after SIGTERM, e.g. 30s (daemon.shutdown_deadline)",
        ),
        row(
            "daemon",
            "log_format",
            "MODELTREE_LOG_FORMAT",
            Daemon("log-format"),
            Str,
            "text",
            "text or json (daemon.log_format)",
        ),
        row(
            "daemon",
            "overlap",
            "MODELTREE_OVERLAP",
            Daemon("overlap"),
            Str,
            "1h",
            "listing overlap before the checkpoint, e.g. 1h (daemon.overlap)",
        ),
        row(
            "daemon",
            "full_listing_every",
            "MODELTREE_FULL_LISTING_EVERY",
            Daemon("full-listing-every"),
            Int,
            "24",
            "a full listing every N runs (daemon.full_listing_every)",
        ),
        row("daemon", "retry_base", "MODELTREE_RETRY_BASE", None, Str, "5m", "first retry delay of a failed repo"),
        row("daemon", "retry_cap", "MODELTREE_RETRY_CAP", None, Str, "1d", "longest retry delay of a failed repo"),
        row(
            "filters",
            "authors",
            "MODELTREE_AUTHORS",
            Daemon("author"),
            List,
            "",
            "follow this author (repeatable; filters.authors)",
        ),
        row(
            "filters",
            "tags",
            "MODELTREE_TAGS",
            Daemon("tag"),
            List,
            "",
            "require this tag (repeatable; filters.tags)",
        ),
        row("filters", "pipeline_tag", "MODELTREE_PIPELINE_TAG", None, Str, "", "only models with this pipeline tag"),
        row("filters", "library", "MODELTREE_LIBRARY", None, Str, "", "only models of this library"),
        row(
            "filters",
            "min_downloads",
            "MODELTREE_MIN_DOWNLOADS",
            None,
            Int,
            "0",
            "only models with at least this many downloads",
        ),
    ]
};

/// The row of `section.key`.
pub fn setting(section: &str, key: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.section == section && s.key == key)
}

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// `None` means the platform default path (the binary resolves it).
    pub db: Option<PathBuf>,
    /// The signature scheme; its `row_fraction` is also the crawl's fetch fraction.
    pub scheme: Scheme,
    pub method: lineage::Method,
    pub hub: HubSettings,
    pub daemon: DaemonSettings,
    pub filters: Filters,
    /// Written after each daemon run.
    pub exports: Vec<Export>,
}

/// `[hub]`: which Hub, as whom, how fast.
#[derive(Clone, Debug, PartialEq)]
pub struct HubSettings {
    pub endpoint: String,
    /// Where the token is read from: `None` means `HF_TOKEN`, then the Hugging Face token file locations.
    pub token_file: Option<PathBuf>,
    pub tier: hub::Tier,
    /// Models signed at once.
    pub concurrency: usize,
    /// HTTP requests in flight at once.
    pub requests_in_flight: usize,
}

/// `[daemon]`: when to run and how to stop.
#[derive(Clone, Debug, PartialEq)]
pub struct DaemonSettings {
    pub schedule: Schedule,
    /// The status endpoint (`/metrics`, `/healthz`); `None` serves none.
    pub status_addr: Option<SocketAddr>,
    /// A status endpoint on a non-loopback address is refused unless this is set.
    pub allow_non_loopback_status: bool,
    /// How long a stop request may wait for in-flight models before they are abandoned.
    pub shutdown_deadline: Duration,
    pub log_format: LogFormat,
    /// How far before the stored listing checkpoint an incremental listing goes on (clock skew, commits that
    /// land with an older `lastModified`).
    pub overlap: Duration,
    /// Every this many runs the listing is complete (no checkpoint cut-off), which is how vanished repos are
    /// found. 1 makes every run a full listing.
    pub full_listing_every: u32,
    /// First retry delay of a failed repo; it doubles per attempt up to `retry_cap`.
    pub retry_base: Duration,
    pub retry_cap: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// `[filters]`: which models the daemon follows. Authors and tags go to the Hub's listing; the rest is checked
/// on each listed model.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filters {
    /// Empty: every author (one listing per author otherwise).
    pub authors: Vec<String>,
    /// Every tag must be present.
    pub tags: Vec<String>,
    pub pipeline_tag: Option<String>,
    pub library: Option<String>,
    pub min_downloads: u64,
}

/// `[[exports]]`: a file rewritten (atomically) after each daemon run.
#[derive(Clone, Debug, PartialEq)]
pub struct Export {
    pub format: Format,
    pub path: PathBuf,
}

impl Default for Config {
    /// Every row of [`SETTINGS`] at its default.
    fn default() -> Config {
        let mut config = Config {
            db: None,
            scheme: Scheme::default(),
            method: lineage::Method::Default,
            hub: HubSettings {
                endpoint: String::new(),
                token_file: None,
                tier: hub::Tier::Anonymous,
                concurrency: 1,
                requests_in_flight: 1,
            },
            daemon: DaemonSettings {
                schedule: Schedule::parse("@hourly").expect("a shorthand parses (tested)"),
                status_addr: None,
                allow_non_loopback_status: false,
                shutdown_deadline: Duration::ZERO,
                log_format: LogFormat::Text,
                overlap: Duration::ZERO,
                full_listing_every: 1,
                retry_base: Duration::ZERO,
                // The base is checked against the cap, and the cap's row comes after the base's.
                retry_cap: Duration::MAX,
            },
            filters: Filters::default(),
            exports: Vec::new(),
        };
        for s in SETTINGS {
            config.set_text(s, s.default).expect("every built-in default is valid (tested)");
        }
        config
    }
}

/// The Hugging Face clients' variable for the Hub's base URL, read as a fallback for `hub.endpoint` (below
/// `MODELTREE_ENDPOINT`).
pub const HF_ENDPOINT: &str = "HF_ENDPOINT";

impl Config {
    /// Built-in defaults overlaid with a settings file's text; `path` only names the file in errors.
    ///
    /// # Errors
    /// When the text is not TOML, or holds an unknown key or a value out of range.
    pub fn from_file_text(path: &Path, text: &str) -> anyhow::Result<Config> {
        let mut config = Config::default();
        config.overlay(text).with_context(|| format!("in {}", path.display()))?;
        Ok(config)
    }

    /// Overlays the `MODELTREE_…` variables that `var` returns (the process environment in the binary, a map in
    /// tests). An empty variable counts as unset.
    ///
    /// # Errors
    /// When a variable's value is invalid for its setting (the message names the variable).
    pub fn overlay_env(&mut self, var: impl Fn(&str) -> Option<String>) -> anyhow::Result<()> {
        // `HF_ENDPOINT` is how every Hugging Face client is pointed at a mirror; our own variable wins over it.
        if let Some(endpoint) = var(HF_ENDPOINT).filter(|v| !v.trim().is_empty()) {
            self.set("hub", "endpoint", &toml::Value::String(endpoint.trim().to_owned()))
                .with_context(|| format!("${HF_ENDPOINT}"))?;
        }
        for s in SETTINGS {
            let Some(text) = var(s.env).filter(|v| !v.trim().is_empty()) else { continue };
            self.set_text(s, &text).with_context(|| format!("${}", s.env))?;
        }
        Ok(())
    }

    /// Applies a flag's values (several for a repeated list flag).
    ///
    /// # Errors
    /// For an invalid value (the message names the flag).
    pub fn set_flag(&mut self, setting: &Setting, values: &[String]) -> anyhow::Result<()> {
        let flag = match setting.flag {
            Flag::Global(f) | Flag::Daemon(f) | Flag::Shared(f) => f,
            Flag::None => setting.key,
        };
        let value = if setting.kind == Kind::List {
            toml::Value::Array(values.iter().map(|v| toml::Value::String(v.trim().to_owned())).collect())
        } else {
            let text = values.last().map(String::as_str).unwrap_or_default();
            text_value(text, setting.kind).with_context(|| format!("--{flag}"))?
        };
        self.set(setting.section, setting.key, &value).with_context(|| format!("--{flag}"))
    }

    /// Sets one value given as text (a default, an environment variable), parsed by the setting's kind.
    ///
    /// # Errors
    /// For an invalid value.
    pub fn set_text(&mut self, setting: &Setting, text: &str) -> anyhow::Result<()> {
        let value = text_value(text, setting.kind)?;
        self.set(setting.section, setting.key, &value)
    }

    fn overlay(&mut self, text: &str) -> anyhow::Result<()> {
        let doc: toml::Table = text.parse().context("not valid TOML")?;
        for (section, value) in &doc {
            if section == "exports" {
                self.exports = exports(value)?;
                continue;
            }
            let Some(table) = value.as_table() else { bail!("[{section}] must be a table") };
            for (key, value) in table {
                self.set(section, key, value)?;
            }
        }
        Ok(())
    }

    /// The one place a setting's value is checked and applied.
    fn set(&mut self, section: &str, key: &str, value: &toml::Value) -> anyhow::Result<()> {
        let name = format!("{section}.{key}");
        let string = || value.as_str().with_context(|| format!("{name} must be a string"));
        let duration = || string().and_then(|s| parse_duration(s).with_context(|| format!("{name}: bad duration")));
        let non_empty = || string().map(|s| (!s.is_empty()).then(|| s.to_owned()));
        match (section, key) {
            ("store", "db") => self.db = non_empty()?.map(PathBuf::from),
            ("signature", "sketch_k") => self.scheme.sketch_k = int_in(value, &name, 4, 512)? as u32,
            ("signature", "samples") => self.scheme.samples = int_in(value, &name, 0, 1 << 20)? as u32,
            ("signature", "seed") => {
                self.scheme.seed = value.as_integer().with_context(|| format!("{name} must be an integer"))? as u64
            }
            ("signature", "row_fraction") => {
                let f = value
                    .as_float()
                    .or_else(|| value.as_integer().map(|i| i as f64))
                    .with_context(|| format!("{name} must be a number"))?;
                if !(f > 0.0 && f <= 1.0) {
                    bail!("{name} must be in (0, 1], not {f}");
                }
                self.scheme.row_fraction = f;
            }
            ("lineage", "method") => {
                self.method = match value.as_str() {
                    Some("default") => lineage::Method::Default,
                    Some("mother") => lineage::Method::Mother,
                    _ => bail!("{name} must be \"default\" or \"mother\""),
                }
            }
            ("hub", "endpoint") => {
                let s = string()?;
                if !(s.starts_with("http://") || s.starts_with("https://")) {
                    bail!("{name} must be an http(s) URL, not {s:?}");
                }
                self.hub.endpoint = s.trim_end_matches('/').to_owned();
            }
            ("hub", "token_file") => self.hub.token_file = non_empty()?.map(PathBuf::from),
            ("hub", "tier") => {
                self.hub.tier = match string()? {
                    "anonymous" => hub::Tier::Anonymous,
                    "free" => hub::Tier::Free,
                    "pro" => hub::Tier::Pro,
                    other => bail!("{name} must be \"anonymous\", \"free\" or \"pro\", not {other:?}"),
                }
            }
            ("hub", "concurrency") => self.hub.concurrency = int_in(value, &name, 1, 256)? as usize,
            ("hub", "requests_in_flight") => self.hub.requests_in_flight = int_in(value, &name, 1, 1024)? as usize,
            ("daemon", "schedule") => {
                self.daemon.schedule = Schedule::parse(string()?).with_context(|| format!("{name} is not valid"))?
            }
            ("daemon", "status_addr") => {
                self.daemon.status_addr = match non_empty()? {
                    None => None,
                    Some(s) => Some(s.parse().with_context(|| format!("{name}: {s:?} is not an ip:port address"))?),
                }
            }
            ("daemon", "allow_non_loopback_status") => {
                self.daemon.allow_non_loopback_status =
                    value.as_bool().with_context(|| format!("{name} must be true or false"))?
            }
            ("daemon", "shutdown_deadline") => self.daemon.shutdown_deadline = duration()?,
            ("daemon", "log_format") => {
                self.daemon.log_format = match string()? {
                    "text" => LogFormat::Text,
                    "json" => LogFormat::Json,
                    other => bail!("{name} must be \"text\" or \"json\", not {other:?}"),
                }
            }
            ("daemon", "overlap") => self.daemon.overlap = duration()?,
            ("daemon", "full_listing_every") => {
                self.daemon.full_listing_every = int_in(value, &name, 1, 1_000_000)? as u32
            }
            ("daemon", "retry_base") => self.daemon.retry_base = duration()?,
            ("daemon", "retry_cap") => self.daemon.retry_cap = duration()?,
            ("filters", "authors") => self.filters.authors = strings(value, &name)?,
            ("filters", "tags") => self.filters.tags = strings(value, &name)?,
            ("filters", "pipeline_tag") => self.filters.pipeline_tag = non_empty()?,
            ("filters", "library") => self.filters.library = non_empty()?,
            ("filters", "min_downloads") => self.filters.min_downloads = int_in(value, &name, 0, i64::MAX)? as u64,
            _ => bail!("unknown setting {name}"),
        }
        if self.daemon.retry_base > self.daemon.retry_cap {
            bail!("daemon.retry_base must not exceed daemon.retry_cap");
        }
        Ok(())
    }

    /// A setting's current value as it is written in the file (the inverse of [`Config::set`]).
    fn get(&self, section: &str, key: &str) -> toml::Value {
        use toml::Value as V;
        let d = &self.daemon;
        let text = |s: &str| V::String(s.to_owned());
        let path = |p: &Option<PathBuf>| text(&p.as_ref().map(|p| p.display().to_string()).unwrap_or_default());
        let list = |v: &[String]| V::Array(v.iter().cloned().map(V::String).collect());
        match (section, key) {
            ("store", "db") => path(&self.db),
            ("signature", "sketch_k") => V::Integer(self.scheme.sketch_k.into()),
            ("signature", "samples") => V::Integer(self.scheme.samples.into()),
            ("signature", "seed") => V::Integer(self.scheme.seed as i64),
            ("signature", "row_fraction") => V::Float(self.scheme.row_fraction),
            ("lineage", "method") => text(method_name(self.method)),
            ("hub", "endpoint") => text(&self.hub.endpoint),
            ("hub", "token_file") => path(&self.hub.token_file),
            ("hub", "tier") => text(match self.hub.tier {
                hub::Tier::Anonymous => "anonymous",
                hub::Tier::Free => "free",
                hub::Tier::Pro => "pro",
                hub::Tier::Custom { .. } => "custom",
            }),
            ("hub", "concurrency") => V::Integer(self.hub.concurrency as i64),
            ("hub", "requests_in_flight") => V::Integer(self.hub.requests_in_flight as i64),
            ("daemon", "schedule") => text(d.schedule.source()),
            ("daemon", "status_addr") => text(&d.status_addr.map(|a| a.to_string()).unwrap_or_default()),
            ("daemon", "allow_non_loopback_status") => V::Boolean(d.allow_non_loopback_status),
            ("daemon", "shutdown_deadline") => text(&format_duration(d.shutdown_deadline)),
            ("daemon", "log_format") => text(match d.log_format {
                LogFormat::Text => "text",
                LogFormat::Json => "json",
            }),
            ("daemon", "overlap") => text(&format_duration(d.overlap)),
            ("daemon", "full_listing_every") => V::Integer(d.full_listing_every.into()),
            ("daemon", "retry_base") => text(&format_duration(d.retry_base)),
            ("daemon", "retry_cap") => text(&format_duration(d.retry_cap)),
            ("filters", "authors") => list(&self.filters.authors),
            ("filters", "tags") => list(&self.filters.tags),
            ("filters", "pipeline_tag") => text(self.filters.pipeline_tag.as_deref().unwrap_or_default()),
            ("filters", "library") => text(self.filters.library.as_deref().unwrap_or_default()),
            ("filters", "min_downloads") => V::Integer(self.filters.min_downloads as i64),
            _ => V::String(String::new()),
        }
    }

    /// The settings in effect, as TOML (`modeltree daemon --print-config`), one line per row of [`SETTINGS`].
    /// Holds no secret: the token is only named by where it comes from.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        let mut section = "";
        for s in SETTINGS {
            if s.section != section {
                if !section.is_empty() {
                    out.push('\n');
                }
                section = s.section;
                out += &format!("[{section}]\n");
            }
            out += &format!("{} = {}\n", s.key, self.get(s.section, s.key));
        }
        for e in &self.exports {
            let quoted = |s: &str| toml::Value::String(s.to_owned()).to_string();
            out += &format!(
                "\n[[exports]]\nformat = {}\npath = {}\n",
                quoted(e.format.as_str()),
                quoted(&e.path.display().to_string())
            );
        }
        out
    }
}

fn exports(value: &toml::Value) -> anyhow::Result<Vec<Export>> {
    let Some(items) = value.as_array() else { bail!("exports must be an array of tables ([[exports]])") };
    items
        .iter()
        .map(|item| {
            let table = item.as_table().context("each [[exports]] entry must be a table")?;
            if let Some(k) = table.keys().find(|k| !matches!(k.as_str(), "format" | "path")) {
                bail!("unknown setting exports.{k}");
            }
            let name = table.get("format").and_then(|v| v.as_str()).context("exports.format must be a string")?;
            let format = Format::parse(name).with_context(|| {
                let known: Vec<&str> = Format::ALL.iter().map(|f| f.as_str()).collect();
                format!("exports.format must be one of {known:?}, not {name:?}")
            })?;
            let path = table.get("path").and_then(|v| v.as_str()).filter(|p| !p.is_empty());
            let path = path.context("exports.path must be a non-empty string")?;
            Ok(Export { format, path: PathBuf::from(path) })
        })
        .collect()
}

/// A value given as text (a default, the environment or a flag), typed by its setting's kind.
fn text_value(text: &str, kind: Kind) -> anyhow::Result<toml::Value> {
    let text = text.trim();
    Ok(match kind {
        Kind::Str => toml::Value::String(text.to_owned()),
        Kind::Int => {
            let parsed = match text.strip_prefix("0x") {
                Some(hex) => i64::from_str_radix(hex, 16),
                None => text.parse(),
            };
            toml::Value::Integer(parsed.with_context(|| format!("{text:?} is not an integer"))?)
        }
        Kind::Float => toml::Value::Float(text.parse().with_context(|| format!("{text:?} is not a number"))?),
        Kind::Bool => toml::Value::Boolean(match text {
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" => false,
            _ => bail!("{text:?} is not true or false"),
        }),
        Kind::List => toml::Value::Array(
            text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| toml::Value::String(s.into())).collect(),
        ),
    })
}

fn strings(value: &toml::Value, name: &str) -> anyhow::Result<Vec<String>> {
    let items = value.as_array().with_context(|| format!("{name} must be an array of strings"))?;
    items.iter().map(|v| v.as_str().map(str::to_owned).with_context(|| format!("{name} must hold strings"))).collect()
}

fn int_in(value: &toml::Value, name: &str, min: i64, max: i64) -> anyhow::Result<i64> {
    let v = value.as_integer().with_context(|| format!("{name} must be an integer"))?;
    if v < min || v > max {
        bail!("{name} must be between {min} and {max}, not {v}");
    }
    Ok(v)
}

/// `"90s"`, `"15m"`, `"2h"`, `"1d"`, `"250ms"` or a bare number of seconds.
///
/// # Errors
/// For anything else, or a duration over 100 years.
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().with_context(|| format!("{text:?}: expected a number and a unit (s, m, h, d)"))?;
    let millis = match unit.trim() {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        other => bail!("{text:?}: unknown unit {other:?} (use ms, s, m, h or d)"),
    };
    match millis {
        Some(ms) if ms <= 100 * 365 * 86_400_000 => Ok(Duration::from_millis(ms)),
        _ => bail!("{text:?} is too long"),
    }
}

/// The shortest exact spelling [`parse_duration`] reads back.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)] {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    if ms == 0 { "0s".to_owned() } else { format!("{ms}ms") }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn documented_default_is_the_builtin_default() {
        let mut parsed = Config::default();
        parsed.overlay(DEFAULT_TOML).expect("the embedded default parses");
        assert_eq!(parsed, Config::default());
        // Every setting is documented in the default file, and the printed form reads back the same.
        for s in SETTINGS {
            assert!(DEFAULT_TOML.contains(&format!("\n{} = ", s.key)), "{} is not in config/modeltree.toml", s.name());
            assert!(DEFAULT_TOML.contains(s.env), "{} is not mentioned in config/modeltree.toml", s.env);
            if let Flag::Daemon(flag) | Flag::Shared(flag) = s.flag
                && !matches!(s.kind, Kind::List)
            {
                assert!(DEFAULT_TOML.contains(&format!("`--{flag}`")), "--{flag} is not in config/modeltree.toml");
            }
        }
        let mut reread = Config::default();
        reread.overlay(&Config::default().to_toml()).expect("printed config parses");
        assert_eq!(reread, Config::default());
    }

    #[test]
    fn overlay_and_errors() {
        let mut c = Config::default();
        c.overlay("[store]\ndb = \"/x.db\"\n[lineage]\nmethod = \"mother\"\n").expect("valid");
        assert_eq!(c.db.as_deref(), Some(Path::new("/x.db")));
        assert_eq!(c.method, lineage::Method::Mother);
        for bad in [
            "[store]\ndbb = 1",
            "[signature]\nsketch_k = 1",
            "[signature]\nrow_fraction = 0.0",
            "x = 1",
            "[[",
            "[daemon]\nschedule = \"61 * * * *\"",
            "[daemon]\nschedule = \"* * *\"",
            "[daemon]\nstatus_addr = \"localhost\"",
            "[daemon]\nshutdown_deadline = \"5 parsecs\"",
            "[daemon]\nlog_format = \"xml\"",
            "[daemon]\nretry_base = \"2d\"",
            "[hub]\nendpoint = \"ftp://x\"",
            "[hub]\ntier = \"gold\"",
            "[hub]\nconcurrency = 0",
            "[filters]\nauthors = \"a\"",
            "[[exports]]\nformat = \"xml\"\npath = \"x\"",
            "[[exports]]\nformat = \"json\"",
        ] {
            assert!(Config::default().overlay(bad).is_err(), "{bad}");
        }
        let mut c = Config::default();
        c.overlay("[[exports]]\nformat = \"json\"\npath = \"/out/a.json\"\n[filters]\nauthors = [\"a\", \"b\"]\n")
            .expect("valid");
        assert_eq!(c.exports, vec![Export { format: Format::Json, path: "/out/a.json".into() }]);
        assert_eq!(c.filters.authors, ["a", "b"]);
    }

    /// defaults < file < environment < flags, key by key.
    #[test]
    fn precedence_defaults_file_env_flags() {
        let file = "[daemon]\nschedule = \"0 * * * *\"\noverlap = \"5m\"\nlog_format = \"json\"\n\
                    [hub]\nendpoint = \"http://file.example\"\nconcurrency = 2\n";
        let env: HashMap<&str, &str> = [
            ("MODELTREE_SCHEDULE", "*/5 * * * *"),
            ("MODELTREE_ENDPOINT", "http://env.example"),
            ("MODELTREE_AUTHORS", "org-a, org-b"),
            ("MODELTREE_FETCH_FRACTION", "0.5"),
            ("MODELTREE_LOG_FORMAT", ""),
        ]
        .into();
        let mut c = Config::default();
        c.overlay(file).expect("file");
        c.overlay_env(|k| env.get(k).map(|v| (*v).to_owned())).expect("env");
        let endpoint = setting("hub", "endpoint").expect("a setting");
        c.set_flag(endpoint, &["http://flag.example".to_owned()]).expect("flag");
        let authors = setting("filters", "authors").expect("a setting");
        let mut flagged = c.clone();
        flagged.set_flag(authors, &["org-c".to_owned(), "org-d".to_owned()]).expect("list flag");
        assert_eq!(flagged.filters.authors, ["org-c", "org-d"]);
        // Flag beats environment beats file.
        assert_eq!(c.hub.endpoint, "http://flag.example");
        // Environment beats file.
        assert_eq!(c.daemon.schedule.source(), "*/5 * * * *");
        assert_eq!(c.filters.authors, ["org-a", "org-b"]);
        assert_eq!(c.scheme.row_fraction, 0.5);
        // File beats defaults; an empty variable does not override.
        assert_eq!(c.daemon.overlap, Duration::from_secs(300));
        assert_eq!(c.daemon.log_format, LogFormat::Json);
        assert_eq!(c.hub.concurrency, 2);
        // Untouched keys keep the defaults.
        assert_eq!(c.daemon.shutdown_deadline, Config::default().daemon.shutdown_deadline);
        // A bad variable is named in the error.
        let err = Config::default()
            .overlay_env(|k| (k == "MODELTREE_CONCURRENCY").then(|| "many".to_owned()))
            .expect_err("bad env");
        assert!(format!("{err:#}").contains("MODELTREE_CONCURRENCY"), "{err:#}");
    }

    #[test]
    fn hf_endpoint_points_every_command_at_a_mirror_below_our_own_variable() {
        let file = "[hub]\nendpoint = \"http://file.example\"\n";
        let with = |vars: &[(&str, &str)]| {
            let env: HashMap<&str, &str> = vars.iter().copied().collect();
            let mut c = Config::default();
            c.overlay(file).expect("file");
            c.overlay_env(|k| env.get(k).map(|v| (*v).to_owned())).expect("env");
            c.hub.endpoint
        };
        assert_eq!(with(&[]), "http://file.example");
        assert_eq!(with(&[("HF_ENDPOINT", "http://127.0.0.1:9/")]), "http://127.0.0.1:9");
        assert_eq!(
            with(&[("HF_ENDPOINT", "http://127.0.0.1:9"), ("MODELTREE_ENDPOINT", "http://127.0.0.2:9")]),
            "http://127.0.0.2:9"
        );
        assert_eq!(with(&[("HF_ENDPOINT", "  ")]), "http://file.example");
        let err = Config::default().overlay_env(|k| (k == "HF_ENDPOINT").then(|| "ftp://x".to_owned()));
        assert!(format!("{:#}", err.expect_err("bad scheme")).contains("HF_ENDPOINT"));
    }

    #[test]
    fn durations() {
        fn check(text: &str, expected: Option<u64>) {
            assert_eq!(parse_duration(text).ok().map(|d| d.as_millis() as u64), expected, "{text}");
        }
        check("90s", Some(90_000));
        check("90", Some(90_000));
        check("15m", Some(900_000));
        check("2h", Some(7_200_000));
        check("1d", Some(86_400_000));
        check("250ms", Some(250));
        check("0s", Some(0));
        check("1w", None);
        check("m", None);
        check("-1s", None);
        check("99999999999999d", None);
        for d in [0, 250, 1000, 90_000, 3_600_000, 86_400_000, 86_401_000] {
            let d = Duration::from_millis(d);
            assert_eq!(parse_duration(&format_duration(d)).expect("reads back"), d);
        }
    }
}
