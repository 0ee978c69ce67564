//! Configuration: `config/modeltree.toml` is the documented default, embedded here and printed by
//! `modeltree config default`.
//!
//! Precedence: built-in defaults < file < environment (`MODELTREE_…`) < flags. Every setting is one row of
//! [`KEYS`] (section, key, environment variable, kind), and every layer goes through the same [`Config::set`],
//! so a value means the same thing whether it came from the file, the environment or a flag. The token itself is
//! never part of the configuration: only where to read it from (`HF_TOKEN` or a file).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use signature::Scheme;

use crate::daemon::schedule::Schedule;

/// Every 15 minutes.
const DEFAULT_SCHEDULE: &str = "*/15 * * * *";

/// The documented default configuration, byte for byte.
pub const DEFAULT_TOML: &str = include_str!("../config/modeltree.toml");

/// How a value is spelled in the environment (a file uses TOML types).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Str,
    Int,
    Float,
    Bool,
    /// A comma-separated list in the environment, an array in the file.
    List,
}

/// Every setting: `(section, key, environment variable, kind)`.
pub const KEYS: &[(&str, &str, &str, Kind)] = &[
    ("store", "db", "MODELTREE_DB", Kind::Str),
    ("signature", "sketch_k", "MODELTREE_SKETCH_K", Kind::Int),
    ("signature", "samples", "MODELTREE_SAMPLES", Kind::Int),
    ("signature", "seed", "MODELTREE_SEED", Kind::Int),
    ("signature", "row_fraction", "MODELTREE_FETCH_FRACTION", Kind::Float),
    ("lineage", "method", "MODELTREE_METHOD", Kind::Str),
    ("hub", "endpoint", "MODELTREE_ENDPOINT", Kind::Str),
    ("hub", "token_file", "MODELTREE_TOKEN_FILE", Kind::Str),
    ("hub", "tier", "MODELTREE_TIER", Kind::Str),
    ("hub", "concurrency", "MODELTREE_CONCURRENCY", Kind::Int),
    ("hub", "requests_in_flight", "MODELTREE_REQUESTS_IN_FLIGHT", Kind::Int),
    ("daemon", "schedule", "MODELTREE_SCHEDULE", Kind::Str),
    ("daemon", "status_addr", "MODELTREE_STATUS_ADDR", Kind::Str),
    ("daemon", "allow_non_loopback_status", "MODELTREE_ALLOW_NON_LOOPBACK_STATUS", Kind::Bool),
    ("daemon", "shutdown_deadline", "MODELTREE_SHUTDOWN_DEADLINE", Kind::Str),
    ("daemon", "log_format", "MODELTREE_LOG_FORMAT", Kind::Str),
    ("daemon", "overlap", "MODELTREE_OVERLAP", Kind::Str),
    ("daemon", "full_listing_every", "MODELTREE_FULL_LISTING_EVERY", Kind::Int),
    ("daemon", "retry_base", "MODELTREE_RETRY_BASE", Kind::Str),
    ("daemon", "retry_cap", "MODELTREE_RETRY_CAP", Kind::Str),
    ("filters", "authors", "MODELTREE_AUTHORS", Kind::List),
    ("filters", "tags", "MODELTREE_TAGS", Kind::List),
    ("filters", "pipeline_tag", "MODELTREE_PIPELINE_TAG", Kind::Str),
    ("filters", "library", "MODELTREE_LIBRARY", Kind::Str),
    ("filters", "min_downloads", "MODELTREE_MIN_DOWNLOADS", Kind::Int),
];

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// `None` means the platform default path.
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
    pub format: crate::export::Format,
    pub path: PathBuf,
}

/// Default share of row blocks read per tensor, from `scripts/bench-crawl.sh` on the wide zoo: 0.02 reads 4.2%
/// of checkpoint bytes there (about 3% on real shapes, where tensors have ≥ 1024 rows) at the edge accuracy and
/// typed F1 of a full read.
pub const DEFAULT_FETCH_FRACTION: f64 = 0.02;

impl Default for Config {
    fn default() -> Config {
        Config {
            db: None,
            scheme: Scheme { row_fraction: DEFAULT_FETCH_FRACTION, ..Scheme::default() },
            method: lineage::Method::Default,
            hub: HubSettings {
                endpoint: "https://huggingface.co".to_owned(),
                token_file: None,
                tier: hub::Tier::Anonymous,
                concurrency: 4,
                requests_in_flight: 8,
            },
            daemon: DaemonSettings {
                schedule: Schedule::parse(DEFAULT_SCHEDULE).expect("the default schedule parses (tested)"),
                status_addr: None,
                allow_non_loopback_status: false,
                shutdown_deadline: Duration::from_secs(30),
                log_format: LogFormat::Text,
                overlap: Duration::from_secs(3600),
                full_listing_every: 24,
                retry_base: Duration::from_secs(300),
                retry_cap: Duration::from_secs(86_400),
            },
            filters: Filters::default(),
            exports: Vec::new(),
        }
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

    /// Overlays the `MODELTREE_…` variables that `var` returns (the process environment in the binary, a map in
    /// tests). An empty variable counts as unset.
    ///
    /// # Errors
    /// When a variable's value is invalid for its setting (the message names the variable).
    pub fn overlay_env(&mut self, var: impl Fn(&str) -> Option<String>) -> anyhow::Result<()> {
        for &(section, key, env, kind) in KEYS {
            let Some(text) = var(env).filter(|v| !v.trim().is_empty()) else { continue };
            let value = env_value(&text, kind).with_context(|| format!("${env}"))?;
            self.set(section, key, &value).with_context(|| format!("${env}"))?;
        }
        Ok(())
    }

    /// Sets one value given as text (a flag or an environment variable), parsed by the key's kind.
    ///
    /// # Errors
    /// For an unknown key or an invalid value.
    pub fn set_text(&mut self, section: &str, key: &str, text: &str) -> anyhow::Result<()> {
        let Some(&(_, _, _, kind)) = KEYS.iter().find(|(s, k, _, _)| *s == section && *k == key) else {
            bail!("unknown setting {section}.{key}");
        };
        let value = env_value(text, kind)?;
        self.set(section, key, &value)
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

    /// The settings in effect, as TOML (`modeltree daemon --print-config`). Holds no secret: the token is only
    /// named by where it comes from.
    pub fn to_toml(&self) -> String {
        let d = &self.daemon;
        let quoted = |s: &str| toml::Value::String(s.to_owned()).to_string();
        let list = |v: &[String]| toml::Value::Array(v.iter().cloned().map(toml::Value::String).collect()).to_string();
        let path = |p: &Option<PathBuf>| quoted(&p.as_ref().map(|p| p.display().to_string()).unwrap_or_default());
        let mut out = format!(
            "[store]\ndb = {}\n\n[signature]\nsketch_k = {}\nsamples = {}\nseed = {}\nrow_fraction = {:?}\n\n\
             [lineage]\nmethod = {}\n\n[hub]\nendpoint = {}\ntoken_file = {}\ntier = {}\nconcurrency = {}\n\
             requests_in_flight = {}\n\n[daemon]\nschedule = {}\nstatus_addr = {}\nallow_non_loopback_status = {}\n\
             shutdown_deadline = {}\nlog_format = {}\noverlap = {}\nfull_listing_every = {}\nretry_base = {}\n\
             retry_cap = {}\n\n[filters]\nauthors = {}\ntags = {}\npipeline_tag = {}\nlibrary = {}\n\
             min_downloads = {}\n",
            path(&self.db),
            self.scheme.sketch_k,
            self.scheme.samples,
            self.scheme.seed as i64,
            self.scheme.row_fraction,
            quoted(crate::solve::method_name(self.method)),
            quoted(&self.hub.endpoint),
            path(&self.hub.token_file),
            quoted(match self.hub.tier {
                hub::Tier::Anonymous => "anonymous",
                hub::Tier::Free => "free",
                hub::Tier::Pro => "pro",
                hub::Tier::Custom { .. } => "custom",
            }),
            self.hub.concurrency,
            self.hub.requests_in_flight,
            quoted(d.schedule.source()),
            quoted(&d.status_addr.map(|a| a.to_string()).unwrap_or_default()),
            d.allow_non_loopback_status,
            quoted(&format_duration(d.shutdown_deadline)),
            quoted(match d.log_format {
                LogFormat::Text => "text",
                LogFormat::Json => "json",
            }),
            quoted(&format_duration(d.overlap)),
            d.full_listing_every,
            quoted(&format_duration(d.retry_base)),
            quoted(&format_duration(d.retry_cap)),
            list(&self.filters.authors),
            list(&self.filters.tags),
            quoted(self.filters.pipeline_tag.as_deref().unwrap_or_default()),
            quoted(self.filters.library.as_deref().unwrap_or_default()),
            self.filters.min_downloads,
        );
        for e in &self.exports {
            let format = clap::ValueEnum::to_possible_value(&e.format).map(|v| v.get_name().to_owned());
            out += &format!(
                "\n[[exports]]\nformat = {}\npath = {}\n",
                quoted(&format.unwrap_or_default()),
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
            let format = <crate::export::Format as clap::ValueEnum>::from_str(name, false).map_err(|_| {
                let known: Vec<String> = <crate::export::Format as clap::ValueEnum>::value_variants()
                    .iter()
                    .filter_map(|f| clap::ValueEnum::to_possible_value(f).map(|v| v.get_name().to_owned()))
                    .collect();
                anyhow::anyhow!("exports.format must be one of {known:?}, not {name:?}")
            })?;
            let path = table.get("path").and_then(|v| v.as_str()).filter(|p| !p.is_empty());
            let path = path.context("exports.path must be a non-empty string")?;
            Ok(Export { format, path: PathBuf::from(path) })
        })
        .collect()
}

/// A value given as text (environment or flag), typed by its setting's kind.
fn env_value(text: &str, kind: Kind) -> anyhow::Result<toml::Value> {
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
        for (section, key, env, _) in KEYS {
            assert!(DEFAULT_TOML.contains(&format!("\n{key} = ")), "{section}.{key} is not in config/modeltree.toml");
            assert!(DEFAULT_TOML.contains(env), "{env} is not mentioned in config/modeltree.toml");
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
        assert_eq!(c.exports, vec![Export { format: crate::export::Format::Json, path: "/out/a.json".into() }]);
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
        c.set_text("hub", "endpoint", "http://flag.example").expect("flag");
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
