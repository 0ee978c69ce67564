//! Repo metadata read as untrusted data: the model card's YAML front matter, `config.json` and
//! `adapter_config.json`. Nothing here trusts a size, a type or a value: every field is optional, lists and
//! strings are both accepted where the Hub accepts both, and anything malformed is dropped rather than fatal,
//! because card data on the Hub is dirty (lists vs strings, typos, self-references).

use std::{fs, io::Read, path::Path};

/// Cards and JSON configs larger than this are not read: real ones are a few KiB, and the limit keeps a
/// hostile repo from making us parse megabytes of YAML.
const MAX_METADATA_BYTES: u64 = 1 << 20;
/// Only the front matter is parsed; real front matter is well under this.
const MAX_FRONT_MATTER_BYTES: usize = 64 << 10;
/// Base-model lists longer than this are truncated: the longest legitimate merges list a handful of parents.
const MAX_BASE_MODELS: usize = 16;
/// Model ids on the Hub are at most 96 characters; anything much longer is junk.
const MAX_ID_LEN: usize = 256;

/// What the card says about a model.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Card {
    pub license: Option<String>,
    pub base_models: Vec<String>,
    pub base_model_relation: Option<String>,
}

/// The parts of `config.json` lineage and the audit use.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelConfig {
    pub model_type: Option<String>,
    pub architectures: Vec<String>,
    pub hidden_size: Option<u64>,
    pub num_layers: Option<u64>,
    pub vocab_size: Option<u64>,
    pub quantization: Option<String>,
    /// The whole file, re-serialised (so it is valid JSON of bounded size).
    pub json: Option<String>,
}

/// The part of `adapter_config.json` lineage uses (the signature reader takes the LoRA scaling itself).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AdapterConfig {
    pub base_model: Option<String>,
}

/// The repo files metadata is read from.
pub const CARD_FILE: &str = "README.md";
pub const CONFIG_FILE: &str = "config.json";
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";

/// What a repo's metadata files say. Scan (a folder) and crawl (the Hub) both read the three files and hand
/// their bytes to [`parse`], so the two paths cannot read a card differently.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RepoMeta {
    /// `None` when the repo has no card file (crawl then falls back to the card data the Hub's API parsed).
    pub card: Option<Card>,
    pub config: ModelConfig,
    pub adapter: AdapterConfig,
}

/// Parses a repo's card, `config.json` and `adapter_config.json` (each `None` when the repo lacks it).
pub fn parse(id: &str, card: Option<&[u8]>, config: Option<&[u8]>, adapter_config: Option<&[u8]>) -> RepoMeta {
    RepoMeta {
        card: card.map(|b| parse_card(&String::from_utf8_lossy(b), id)),
        config: config.map(parse_config).unwrap_or_default(),
        adapter: adapter_config.map(parse_adapter_config).unwrap_or_default(),
    }
}

/// Reads and parses the metadata files of a local model folder (each size-capped; unreadable counts as absent).
pub fn read_dir(dir: &Path, id: &str) -> RepoMeta {
    let read = |name: &str| read_small(&dir.join(name));
    parse(id, read(CARD_FILE).as_deref(), read(CONFIG_FILE).as_deref(), read(ADAPTER_CONFIG_FILE).as_deref())
}

impl RepoMeta {
    /// Reading options the model's `config.json` decides.
    pub fn sign_options(&self) -> signature::SignOptions {
        sign_options(&self.config)
    }

    /// The store's record of a model from what its repo says about itself; the caller adds identity and files.
    pub fn record(self) -> store::ModelRecord {
        let card = self.card.unwrap_or_default();
        let (config, adapter) = (self.config, self.adapter);
        store::ModelRecord {
            license: card.license,
            declared_base_models: card.base_models,
            base_model_relation: card.base_model_relation,
            model_type: config.model_type,
            architectures: config.architectures,
            hidden_size: config.hidden_size,
            num_layers: config.num_layers,
            vocab_size: config.vocab_size,
            config_json: config.json,
            quantization: config.quantization,
            adapter_base: adapter.base_model,
            ..store::ModelRecord::default()
        }
    }
}

/// Reads a small file, or `None` if it is missing, unreadable or larger than the metadata limit.
fn read_small(path: &Path) -> Option<Vec<u8>> {
    let file = fs::File::open(path).ok()?;
    if file.metadata().ok()?.len() > MAX_METADATA_BYTES {
        return None;
    }
    let mut buf = Vec::new();
    file.take(MAX_METADATA_BYTES).read_to_end(&mut buf).ok()?;
    Some(buf)
}

/// Parses the YAML front matter of a model card (`---` … `---` at the top of `README.md`).
fn parse_card(text: &str, self_id: &str) -> Card {
    let Some(front) = front_matter(text) else { return Card::default() };
    // Parsed under a budget: an alias bomb or absurd nesting costs this card its metadata, never the process.
    let doc = match yamlcap::load(front, yamlcap::Budget::default()) {
        Ok(Some(doc)) => doc,
        Ok(None) => return Card::default(),
        Err(e) => {
            tracing::warn!(repo = %self_id, error = %e, "model card front matter refused");
            return Card::default();
        }
    };
    let license = doc["license"].as_str().map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned);
    let mut base_models = Vec::new();
    match &doc["base_model"] {
        serde_json::Value::String(s) => base_models.push(s.clone()),
        serde_json::Value::Array(items) => {
            base_models.extend(items.iter().filter_map(|y| y.as_str().map(str::to_owned)));
        }
        _ => {}
    }
    let mut clean: Vec<String> = Vec::new();
    for id in base_models {
        let id = id.trim().trim_start_matches("https://huggingface.co/").to_owned();
        if is_plausible_id(&id) && id != self_id && !clean.contains(&id) && clean.len() < MAX_BASE_MODELS {
            clean.push(id);
        }
    }
    let relation = doc["base_model_relation"]
        .as_str()
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| matches!(s.as_str(), "adapter" | "merge" | "quantized" | "finetune"));
    Card { license, base_models: clean, base_model_relation: relation }
}

fn front_matter(text: &str) -> Option<&str> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let rest = text.strip_prefix("---")?;
    let rest = rest.strip_prefix("\r\n").or_else(|| rest.strip_prefix('\n'))?;
    let end = rest.find("\n---").unwrap_or(rest.len());
    (end <= MAX_FRONT_MATTER_BYTES).then(|| &rest[..end])
}

fn is_plausible_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        && !id.contains("..")
        && !id.starts_with('/')
}

/// Parses `config.json`.
fn parse_config(bytes: &[u8]) -> ModelConfig {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) else { return ModelConfig::default() };
    let Some(obj) = value.as_object() else { return ModelConfig::default() };
    let int = |key: &str| obj.get(key).and_then(|v| v.as_u64());
    ModelConfig {
        model_type: obj.get("model_type").and_then(|v| v.as_str()).map(str::to_owned),
        architectures: obj
            .get("architectures")
            .and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).take(MAX_BASE_MODELS).collect())
            .unwrap_or_default(),
        hidden_size: int("hidden_size"),
        num_layers: int("num_hidden_layers"),
        vocab_size: int("vocab_size"),
        quantization: obj.get("quantization_config").filter(|v| v.is_object()).map(|v| v.to_string()),
        json: Some(value.to_string()),
    }
}

/// Reading options a model's `config.json` decides: how a GPTQ checkpoint stores its zero points
/// (`quantization_config.checkpoint_format`: `gptq_v2` stores them as they are, anything else minus one).
fn sign_options(config: &ModelConfig) -> signature::SignOptions {
    let v2 = config
        .quantization
        .as_deref()
        .and_then(|q| serde_json::from_str::<serde_json::Value>(q).ok())
        .is_some_and(|q| q.get("checkpoint_format").and_then(|f| f.as_str()) == Some("gptq_v2"));
    signature::SignOptions {
        gptq_format: if v2 { signature::GptqFormat::V2 } else { signature::GptqFormat::V1 },
        ..signature::SignOptions::default()
    }
}

/// Parses `adapter_config.json`.
fn parse_adapter_config(bytes: &[u8]) -> AdapterConfig {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) else { return AdapterConfig::default() };
    let base_model = value
        .get("base_model_name_or_path")
        .and_then(|v| v.as_str())
        .map(|s| s.trim().to_owned())
        .filter(|s| is_plausible_id(s));
    AdapterConfig { base_model }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_card(text: &str, expected: Card) {
        assert_eq!(parse_card(text, "me/model"), expected, "{text}");
    }

    fn card(license: Option<&str>, bases: &[&str], relation: Option<&str>) -> Card {
        Card {
            license: license.map(str::to_owned),
            base_models: bases.iter().map(|s| s.to_string()).collect(),
            base_model_relation: relation.map(str::to_owned),
        }
    }

    #[test]
    fn cards() {
        check_card("---\nlicense: mit\nbase_model: a/b\n---\n# hi", card(Some("mit"), &["a/b"], None));
        check_card(
            "---\nlicense: apache-2.0\nbase_model:\n- a/b\n- c/d\nbase_model_relation: merge\n---\n",
            card(Some("apache-2.0"), &["a/b", "c/d"], Some("merge")),
        );
        // No front matter, unterminated YAML, wrong types: nothing, never an error.
        check_card("# just a readme", Card::default());
        check_card("---\nlicense: [unclosed\n---\n", Card::default());
        check_card("---\nlicense: 3\nbase_model: {a: b}\n---\n", Card::default());
        // Self references, junk ids, duplicates and unknown relations are dropped.
        check_card(
            "---\nbase_model: [me/model, '../etc/passwd', a/b, a/b, 'x y']\nbase_model_relation: cousin\n---\n",
            card(None, &["a/b"], None),
        );
        check_card("---\r\nbase_model: https://huggingface.co/a/b\r\n---\r\n", card(None, &["a/b"], None));
    }

    #[test]
    fn issue_11_a_405_byte_alias_bomb_costs_the_card_not_the_process() {
        // Ten anchors, each a list of nine aliases of the previous one: 9^10 nodes if expanded. It used to take
        // scan, crawl and the daemon down with it; now it is refused within the budget and the card is empty.
        let mut bomb = String::from("---\nlicense: mit\na0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for i in 1..10 {
            let p = i - 1;
            bomb.push_str(&format!("a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"));
        }
        bomb.push_str("base_model: a/b\n---\n");
        let started = std::time::Instant::now();
        check_card(&bomb, Card::default());
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
        // Deep nesting and a benign alias: the first refused, the second read.
        check_card(&format!("---\nlicense: {}\n---\n", "[".repeat(100_000)), Card::default());
        check_card("---\nx: &l apache-2.0\nlicense: *l\n---\n", card(Some("apache-2.0"), &[], None));
    }

    #[test]
    fn configs() {
        let c = parse_config(br#"{"model_type":"llama","quantization_config":{"quant_method":"fp8"}}"#);
        assert_eq!(c.model_type.as_deref(), Some("llama"));
        assert_eq!(c.quantization.as_deref(), Some(r#"{"quant_method":"fp8"}"#));
        assert_eq!(sign_options(&c).gptq_format, signature::GptqFormat::V1);
        let v2 = parse_config(br#"{"quantization_config":{"quant_method":"gptq","checkpoint_format":"gptq_v2"}}"#);
        assert_eq!(sign_options(&v2).gptq_format, signature::GptqFormat::V2);
        assert_eq!(parse_config(b"[1,2]"), ModelConfig::default());
        assert_eq!(parse_config(b"{not json"), ModelConfig::default());
        let a = parse_adapter_config(br#"{"base_model_name_or_path":"org/base","r":8,"lora_alpha":16}"#);
        assert_eq!(a, AdapterConfig { base_model: Some("org/base".into()) });
        let a = parse_adapter_config(br#"{"base_model_name_or_path":"/tmp/../x","r":0,"lora_alpha":16}"#);
        assert_eq!(a, AdapterConfig::default());
    }
}
