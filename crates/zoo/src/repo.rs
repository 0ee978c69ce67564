//! Hub-style model repositories: writing them the way real tools do, and reading them back.
//!
//! A full model repo holds `config.json` (`LlamaForCausalLM`), one or two safetensors shards (with
//! `model.safetensors.index.json` when sharded), `tokenizer.json` (a `tokenizers` WordLevel model) and `README.md` with
//! YAML front matter. Quantised repos store int8/fp8 payloads plus per-channel `weight_scale` tensors, the
//! compressed-tensors way, or packed int4 the GPTQ or AWQ way ([`crate::int4`]). Adapter repos are PEFT's layout:
//! `adapter_config.json` and `adapter_model.safetensors`, no `config.json`. Every file is serialised deterministically (sorted maps, fixed metadata) so a seed fixes the bytes.
//!
//! The readers here are what a fine-tune uses to start from its parent's *stored* weights, and what the report uses.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use safetensors::{Dtype, SafeTensors, View};
use serde_json::{Value, json};

use crate::model::Arch;
use crate::tasks::{CONTENT_START, UNK, token_text};
use crate::weights::{LoraFactors, Mat, Quant, Quantized, StoreDtype, Weights, dequantize, quantize};

/// One tensor ready for serialisation.
#[derive(Clone, Debug)]
pub struct Stored {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl View for &Stored {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Encodes f32 values in a storage dtype (little-endian, round to nearest even).
pub fn encode(m: &Mat, dtype: StoreDtype) -> Stored {
    let (dt, bytes) = match dtype {
        StoreDtype::F32 => (Dtype::F32, m.data.iter().flat_map(|x| x.to_le_bytes()).collect()),
        StoreDtype::F16 => (Dtype::F16, m.data.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect()),
        StoreDtype::BF16 => (Dtype::BF16, m.data.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect()),
    };
    Stored { dtype: dt, shape: m.shape.clone(), bytes }
}

/// The tensors of a checkpoint as stored: plain casts, or (when `quant` is set) int8/fp8 payload plus scale for every
/// block matrix with embeddings, norms and `lm_head` in bf16.
///
/// # Errors
/// When a block matrix is not 2-D.
pub fn stored_tensors(w: &Weights, dtype: StoreDtype, quant: Option<Quant>) -> Result<BTreeMap<String, Stored>> {
    let mut out = BTreeMap::new();
    for (name, m) in w {
        match quant {
            Some(q @ (Quant::Gptq4 | Quant::Awq4)) if crate::weights::is_block_matrix(name) => {
                out.extend(crate::int4::pack(name, m, q)?);
            }
            // GPTQ and AWQ checkpoints keep everything they do not pack in fp16.
            Some(Quant::Gptq4 | Quant::Awq4) => {
                out.insert(name.clone(), encode(m, StoreDtype::F16));
            }
            Some(q) if crate::weights::is_block_matrix(name) => {
                let Quantized { payload, scales } = quantize(m, q)?;
                let dt = match q {
                    Quant::Int8 => Dtype::I8,
                    Quant::Fp8 | Quant::Gptq4 | Quant::Awq4 => Dtype::F8_E4M3,
                };
                out.insert(name.clone(), Stored { dtype: dt, shape: m.shape.clone(), bytes: payload });
                let scale_name = format!("{name}_scale");
                let rows = scales.len();
                let scale = Stored {
                    dtype: Dtype::F32,
                    shape: vec![rows, 1],
                    bytes: scales.iter().flat_map(|x| x.to_le_bytes()).collect(),
                };
                out.insert(scale_name, scale);
            }
            Some(_) => {
                out.insert(name.clone(), encode(m, StoreDtype::BF16));
            }
            None => {
                out.insert(name.clone(), encode(m, dtype));
            }
        }
    }
    Ok(out)
}

fn pt_metadata() -> Option<HashMap<String, String>> {
    Some(HashMap::from([("format".to_string(), "pt".to_string())]))
}

/// Serialises tensors into one safetensors file.
///
/// # Errors
/// On serialisation or IO failure.
pub fn write_safetensors(path: &Path, tensors: &BTreeMap<String, Stored>) -> Result<()> {
    let bytes = safetensors::serialize(tensors.iter().map(|(k, v)| (k.as_str(), v)), pt_metadata())
        .with_context(|| format!("serialising {}", path.display()))?;
    fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// Writes the weight files: `model.safetensors`, or two shards plus `model.safetensors.index.json`.
///
/// # Errors
/// On serialisation or IO failure.
pub fn write_weight_files(dir: &Path, tensors: &BTreeMap<String, Stored>, sharded: bool) -> Result<()> {
    if !sharded {
        return write_safetensors(&dir.join("model.safetensors"), tensors);
    }
    let total: usize = tensors.values().map(|t| t.bytes.len()).sum();
    let mut shards: [BTreeMap<String, Stored>; 2] = [BTreeMap::new(), BTreeMap::new()];
    let mut acc = 0;
    // Split in name order at half the bytes, like `save_pretrained(max_shard_size=…)` fills shards in order.
    for (k, v) in tensors {
        let i = usize::from(acc >= total / 2);
        acc += v.bytes.len();
        shards[i].insert(k.clone(), v.clone());
    }
    let mut weight_map = serde_json::Map::new();
    for (i, shard) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", i + 1);
        write_safetensors(&dir.join(&file), shard)?;
        for k in shard.keys() {
            weight_map.insert(k.clone(), Value::String(file.clone()));
        }
    }
    let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    write_json(&dir.join("model.safetensors.index.json"), &index)
}

/// Pretty JSON with a trailing newline.
///
/// # Errors
/// On IO failure.
pub fn write_json(path: &Path, v: &Value) -> Result<()> {
    let mut s = serde_json::to_string_pretty(v)?;
    s.push('\n');
    fs::write(path, s).with_context(|| format!("writing {}", path.display()))
}

/// `config.json` of a `LlamaForCausalLM`.
pub fn config_json(arch: &Arch, dtype: StoreDtype, name_or_path: Option<&str>, quant: Option<Quant>) -> Value {
    let mut v = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": arch.hidden,
        "intermediate_size": arch.intermediate,
        "num_hidden_layers": arch.layers,
        "num_attention_heads": arch.heads,
        "num_key_value_heads": arch.heads,
        "head_dim": arch.head_dim(),
        "vocab_size": arch.vocab,
        "max_position_embeddings": arch.ctx,
        "rms_norm_eps": arch.rms_eps,
        "rope_theta": arch.rope_theta,
        "hidden_act": "silu",
        "attention_bias": false,
        "mlp_bias": false,
        "tie_word_embeddings": false,
        "bos_token_id": crate::tasks::BOS,
        "eos_token_id": crate::tasks::EOS,
        "pad_token_id": crate::tasks::PAD,
        "torch_dtype": match quant {
            Some(Quant::Gptq4 | Quant::Awq4) => "float16",
            Some(_) => "bfloat16",
            None => dtype.torch_name(),
        },
        "transformers_version": "4.46.3",
    });
    if let Some(p) = name_or_path {
        v["_name_or_path"] = json!(p);
    }
    if let Some(q @ (Quant::Gptq4 | Quant::Awq4)) = quant {
        v["quantization_config"] = crate::int4::quantization_config(q);
    } else if let Some(q) = quant {
        let ty = match q {
            Quant::Int8 => "int",
            Quant::Fp8 | Quant::Gptq4 | Quant::Awq4 => "float",
        };
        v["quantization_config"] = json!({
            "quant_method": "compressed-tensors",
            "format": q.format(),
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": {
                "num_bits": 8, "type": ty, "symmetric": true, "strategy": "channel"}}},
            "ignore": ["lm_head"],
        });
    }
    v
}

/// A valid `tokenizers` JSON (WordLevel over whitespace-split words) for a vocabulary of `vocab` ids.
pub fn tokenizer_json(vocab: usize) -> Value {
    let mut words = serde_json::Map::new();
    for id in 0..vocab as u32 {
        words.insert(token_text(id), json!(id));
    }
    let added: Vec<Value> = (0..vocab as u32)
        .filter(|id| !(CONTENT_START..128).contains(id))
        .map(|id| {
            json!({"id": id, "content": token_text(id), "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": id < CONTENT_START})
        })
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": words, "unk_token": token_text(UNK)},
    })
}

/// The model card's front matter and body.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Card {
    pub license: Option<String>,
    pub base_model: Vec<String>,
    pub relation: Option<String>,
    pub library: String,
    pub tags: Vec<String>,
    pub body: String,
}

impl Card {
    /// `README.md` text: YAML front matter then markdown.
    pub fn render(&self, title: &str) -> String {
        let mut s = String::from("---\n");
        if let Some(l) = &self.license {
            s.push_str(&format!("license: {l}\n"));
        }
        match self.base_model.as_slice() {
            [] => {}
            [one] => s.push_str(&format!("base_model: {one}\n")),
            many => {
                s.push_str("base_model:\n");
                for m in many {
                    s.push_str(&format!("- {m}\n"));
                }
            }
        }
        if let Some(r) = &self.relation {
            s.push_str(&format!("base_model_relation: {r}\n"));
        }
        s.push_str(&format!("library_name: {}\n", self.library));
        s.push_str("pipeline_tag: text-generation\ntags:\n");
        for t in &self.tags {
            s.push_str(&format!("- {t}\n"));
        }
        s.push_str(&format!("---\n\n# {title}\n\n{}\n", self.body.trim_end()));
        s
    }
}

/// Writes a full model repository (weights, config, tokenizer, card).
///
/// # Errors
/// On serialisation or IO failure.
#[allow(clippy::too_many_arguments)]
pub fn write_model_repo(
    dir: &Path,
    arch: &Arch,
    w: &Weights,
    dtype: StoreDtype,
    sharded: bool,
    quant: Option<Quant>,
    name_or_path: Option<&str>,
    card: &Card,
    title: &str,
) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_weight_files(dir, &stored_tensors(w, dtype, quant)?, sharded)?;
    write_json(&dir.join("config.json"), &config_json(arch, dtype, name_or_path, quant))?;
    write_json(&dir.join("tokenizer.json"), &tokenizer_json(arch.vocab))?;
    fs::write(dir.join("README.md"), card.render(title)).context("writing README.md")
}

/// PEFT's key for a LoRA factor of a model tensor `model.layers.0.self_attn.q_proj.weight`.
pub fn peft_key(weight_name: &str, factor: &str) -> String {
    let stem = weight_name.strip_suffix(".weight").unwrap_or(weight_name);
    format!("base_model.model.{stem}.lora_{factor}.weight")
}

/// Writes a PEFT adapter repository (no `config.json`, like real PEFT repos).
///
/// # Errors
/// On serialisation or IO failure.
#[allow(clippy::too_many_arguments)]
pub fn write_adapter_repo(
    dir: &Path,
    factors: &BTreeMap<String, LoraFactors>,
    rank: usize,
    alpha: f64,
    targets: &[String],
    base: &str,
    dtype: StoreDtype,
    card: &Card,
    title: &str,
) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tensors = BTreeMap::new();
    for (name, f) in factors {
        tensors.insert(peft_key(name, "A"), encode(&f.a, dtype));
        tensors.insert(peft_key(name, "B"), encode(&f.b, dtype));
    }
    write_safetensors(&dir.join("adapter_model.safetensors"), &tensors)?;
    let cfg = json!({
        "peft_type": "LORA",
        "base_model_name_or_path": base,
        "r": rank,
        "lora_alpha": alpha,
        "target_modules": targets,
        "task_type": "CAUSAL_LM",
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
    });
    write_json(&dir.join("adapter_config.json"), &cfg)?;
    fs::write(dir.join("README.md"), card.render(title)).context("writing README.md")
}

/// Decodes a stored tensor to f32 (bf16, f16, f32, or the raw int8/fp8 values without scale).
///
/// # Errors
/// On an unsupported dtype or a byte length that does not fit the shape.
pub fn decode(dtype: Dtype, shape: &[usize], bytes: &[u8]) -> Result<Mat> {
    let n: usize = shape.iter().product();
    let width = match dtype {
        Dtype::F32 => 4,
        Dtype::F16 | Dtype::BF16 => 2,
        Dtype::I8 | Dtype::F8_E4M3 => 1,
        other => bail!("unsupported dtype {other:?}"),
    };
    ensure!(bytes.len() == n * width, "{} bytes do not hold {n} values of {dtype:?}", bytes.len());
    let data = match dtype {
        Dtype::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        Dtype::F16 => bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::BF16 => bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::I8 => bytes.iter().map(|&b| crate::weights::dequant_value(b, Quant::Int8)).collect(),
        _ => bytes.iter().map(|&b| crate::weights::dequant_value(b, Quant::Fp8)).collect(),
    };
    Mat::new(shape.to_vec(), data)
}

/// What a repository's weights looked like on disk.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadInfo {
    pub files: Vec<String>,
    pub dtypes: Vec<String>,
    pub quant: Option<Quant>,
}

/// Loads a full model repository's weights into f32, dequantising int8/fp8 payloads with their scales.
///
/// # Errors
/// On a missing or malformed file.
pub fn read_model(dir: &Path) -> Result<(Weights, LoadInfo)> {
    let files: Vec<String> = if dir.join("model.safetensors").exists() {
        vec!["model.safetensors".to_string()]
    } else {
        let idx: Value = serde_json::from_slice(&fs::read(dir.join("model.safetensors.index.json"))?)
            .context("parsing the shard index")?;
        let map = idx["weight_map"].as_object().context("index without weight_map")?;
        let mut f: Vec<String> = map.values().filter_map(|v| v.as_str().map(str::to_string)).collect();
        f.sort();
        f.dedup();
        f
    };
    let mut raw: BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)> = BTreeMap::new();
    for f in &files {
        let bytes = fs::read(dir.join(f)).with_context(|| format!("reading {}", dir.join(f).display()))?;
        let st = SafeTensors::deserialize(&bytes).with_context(|| format!("parsing {f}"))?;
        for (name, view) in st.tensors() {
            ensure!(!raw.contains_key(&name), "{name} appears in two shards");
            raw.insert(name, (view.dtype(), view.shape().to_vec(), view.data().to_vec()));
        }
    }
    let mut dtypes: Vec<String> = raw.values().map(|(d, _, _)| format!("{d:?}")).collect();
    dtypes.sort();
    dtypes.dedup();
    let mut quant = None;
    let mut w = Weights::new();
    for (name, (dtype, shape, bytes)) in &raw {
        if name.ends_with("_scale") || [".qzeros", ".scales", ".g_idx"].iter().any(|s| name.ends_with(s)) {
            continue;
        }
        if let Some(p) = name.strip_suffix(".qweight") {
            let (m, q) = crate::int4::unpack(p, &raw)?;
            quant = Some(q);
            w.insert(format!("{p}.weight"), m);
            continue;
        }
        let m = match dtype {
            Dtype::I8 | Dtype::F8_E4M3 => {
                let q = if *dtype == Dtype::I8 { Quant::Int8 } else { Quant::Fp8 };
                quant = Some(q);
                let (sd, ss, sb) = raw.get(&format!("{name}_scale")).with_context(|| format!("{name} has no scale"))?;
                let scales = decode(*sd, ss, sb)?;
                ensure!(ss.first() == shape.first(), "{name}: scale shape {ss:?} does not fit {shape:?}");
                dequantize(&Quantized { payload: bytes.clone(), scales: scales.data }, shape, q)?
            }
            _ => decode(*dtype, shape, bytes)?,
        };
        w.insert(name.clone(), m);
    }
    Ok((w, LoadInfo { files, dtypes, quant }))
}

/// Loads a PEFT adapter: factors keyed by the model tensor they adapt, and `lora_alpha / r`.
///
/// # Errors
/// On a missing or malformed file.
pub fn read_adapter(dir: &Path) -> Result<(BTreeMap<String, LoraFactors>, f32)> {
    let cfg: Value = serde_json::from_slice(&fs::read(dir.join("adapter_config.json"))?)?;
    let r = cfg["r"].as_f64().context("adapter_config without r")?;
    let alpha = cfg["lora_alpha"].as_f64().context("adapter_config without lora_alpha")?;
    let bytes = fs::read(dir.join("adapter_model.safetensors"))?;
    let st = SafeTensors::deserialize(&bytes)?;
    let mut a = BTreeMap::new();
    let mut b = BTreeMap::new();
    for (name, view) in st.tensors() {
        let m = decode(view.dtype(), view.shape(), view.data())?;
        let stem = name.strip_prefix("base_model.model.").with_context(|| format!("unexpected key {name}"))?;
        if let Some(s) = stem.strip_suffix(".lora_A.weight") {
            a.insert(format!("{s}.weight"), m);
        } else if let Some(s) = stem.strip_suffix(".lora_B.weight") {
            b.insert(format!("{s}.weight"), m);
        } else {
            bail!("unexpected key {name}");
        }
    }
    let mut out = BTreeMap::new();
    for (k, am) in a {
        let bm = b.remove(&k).with_context(|| format!("{k} has lora_A but no lora_B"))?;
        out.insert(k, LoraFactors { a: am, b: bm });
    }
    ensure!(b.is_empty(), "lora_B without lora_A");
    Ok((out, (alpha / r) as f32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::init_weights;

    fn arch() -> Arch {
        Arch { vocab: 40, hidden: 16, layers: 2, heads: 2, intermediate: 24, ctx: 8, rms_eps: 1e-5, rope_theta: 1e4 }
    }

    fn card() -> Card {
        Card {
            license: Some("mit".into()),
            base_model: vec!["org/a".into(), "org/b".into()],
            relation: Some("merge".into()),
            library: "transformers".into(),
            tags: vec!["llama".into()],
            body: "text".into(),
        }
    }

    #[test]
    fn model_repo_round_trips_through_the_safetensors_crate() {
        let a = arch();
        let w = init_weights(&a, 4);
        for (dtype, sharded) in [(StoreDtype::BF16, false), (StoreDtype::F16, true), (StoreDtype::F32, true)] {
            let dir = tempfile::tempdir().expect("tempdir");
            write_model_repo(dir.path(), &a, &w, dtype, sharded, None, Some("org/p"), &card(), "m").expect("write");
            let (back, info) = read_model(dir.path()).expect("read");
            assert_eq!(back, crate::weights::cast(&w, dtype), "{dtype:?}");
            assert_eq!(info.files.len(), if sharded { 2 } else { 1 });
            for f in &info.files {
                let bytes = fs::read(dir.path().join(f)).expect("file");
                let (_, meta) = SafeTensors::read_metadata(&bytes).expect("header");
                assert_eq!(meta.metadata().as_ref().and_then(|m| m.get("format")).map(String::as_str), Some("pt"));
            }
            if sharded {
                let idx: Value =
                    serde_json::from_slice(&fs::read(dir.path().join("model.safetensors.index.json")).expect("index"))
                        .expect("json");
                assert_eq!(idx["weight_map"].as_object().expect("map").len(), w.len());
                let total: u64 = info
                    .files
                    .iter()
                    .map(|f| {
                        let b = fs::read(dir.path().join(f)).expect("file");
                        SafeTensors::deserialize(&b)
                            .expect("st")
                            .tensors()
                            .iter()
                            .map(|(_, v)| v.data().len() as u64)
                            .sum::<u64>()
                    })
                    .sum();
                assert_eq!(idx["metadata"]["total_size"].as_u64(), Some(total));
            }
            let cfg: Value =
                serde_json::from_slice(&fs::read(dir.path().join("config.json")).expect("cfg")).expect("json");
            assert_eq!(cfg["torch_dtype"], dtype.torch_name());
            assert_eq!(cfg["_name_or_path"], "org/p");
            let tok: Value =
                serde_json::from_slice(&fs::read(dir.path().join("tokenizer.json")).expect("tok")).expect("json");
            assert_eq!(tok["model"]["vocab"].as_object().expect("vocab").len(), 40);
        }
    }

    #[test]
    fn quantized_repo_stores_payload_and_scales() {
        let a = arch();
        let w = init_weights(&a, 5);
        for (q, dt) in [(Quant::Int8, Dtype::I8), (Quant::Fp8, Dtype::F8_E4M3)] {
            let dir = tempfile::tempdir().expect("tempdir");
            write_model_repo(dir.path(), &a, &w, StoreDtype::BF16, false, Some(q), None, &card(), "q").expect("write");
            let bytes = fs::read(dir.path().join("model.safetensors")).expect("file");
            let st = SafeTensors::deserialize(&bytes).expect("st");
            let v = st.tensor("model.layers.1.mlp.down_proj.weight").expect("payload");
            assert_eq!(v.dtype(), dt);
            let s = st.tensor("model.layers.1.mlp.down_proj.weight_scale").expect("scale");
            assert_eq!((s.dtype(), s.shape()), (Dtype::F32, &[16usize, 1][..]));
            assert_eq!(st.tensor("lm_head.weight").expect("head").dtype(), Dtype::BF16);
            assert_eq!(st.tensor("model.norm.weight").expect("norm").dtype(), Dtype::BF16);
            let (back, info) = read_model(dir.path()).expect("read");
            assert_eq!(info.quant, Some(q));
            let d = crate::weights::relative_distance(&back, &w).expect("distance");
            assert!(d > 0.0 && d < 0.05, "{q:?}: dequantised distance {d}");
            let cfg: Value =
                serde_json::from_slice(&fs::read(dir.path().join("config.json")).expect("cfg")).expect("json");
            assert_eq!(cfg["quantization_config"]["format"], q.format());
        }
    }

    #[test]
    fn adapter_repo_round_trips() {
        let f = LoraFactors {
            a: Mat { shape: vec![2, 16], data: (0..32).map(|i| i as f32 / 8.0).collect() },
            b: Mat { shape: vec![16, 2], data: (0..32).map(|i| -(i as f32) / 4.0).collect() },
        };
        let factors = BTreeMap::from([("model.layers.0.self_attn.q_proj.weight".to_string(), f)]);
        let dir = tempfile::tempdir().expect("tempdir");
        let targets = vec!["q_proj".to_string()];
        write_adapter_repo(dir.path(), &factors, 2, 8.0, &targets, "org/base", StoreDtype::F32, &card(), "ad")
            .expect("write");
        assert!(!dir.path().join("config.json").exists());
        let (back, scale) = read_adapter(dir.path()).expect("read");
        assert_eq!(back, factors);
        assert_eq!(scale, 4.0);
        let bytes = fs::read(dir.path().join("adapter_model.safetensors")).expect("file");
        let st = SafeTensors::deserialize(&bytes).expect("st");
        let mut names = st.names();
        names.sort();
        assert_eq!(
            names,
            vec![
                "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
                "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
            ]
        );
    }

    #[test]
    fn card_front_matter() {
        let text = card().render("t");
        assert!(text.starts_with("---\nlicense: mit\nbase_model:\n- org/a\n- org/b\nbase_model_relation: merge\n"));
        let single = Card { base_model: vec!["org/x".into()], license: None, ..card() }.render("t");
        assert!(single.starts_with("---\nbase_model: org/x\n"));
    }
}
