//! `modeltree-zoo report DIR`: the evidence that a generated zoo is really trained.
//!
//! Reads `ground_truth.json` for the tree and the logged curves, and reads every model's safetensors back from disk
//! (dequantising int8/fp8, merging adapters onto their stored base) to measure relative Frobenius distances between
//! pairs of models by how they are related. Prints a compact plain-text summary.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::repo::{read_adapter, read_model};
use crate::weights::{Weights, merge_lora, relative_distance};

fn curve(v: &Value) -> Vec<(f64, f64)> {
    v.as_array()
        .map(|a| a.iter().filter_map(|p| Some((p.get(0)?.as_f64()?, p.get(1)?.as_f64()?))).collect())
        .unwrap_or_default()
}

/// `min / median / max (n)` of a sample.
fn spread(xs: &[f64], digits: usize) -> String {
    if xs.is_empty() {
        return "-".to_string();
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let med = if v.len() % 2 == 1 { v[v.len() / 2] } else { 0.5 * (v[v.len() / 2 - 1] + v[v.len() / 2]) };
    format!("{:.d$} / {:.d$} / {:.d$}  (n={})", v[0], med, v[v.len() - 1], v.len(), d = digits)
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

/// Loads every model's effective weights: full repos as stored (dequantised), adapters merged onto their parent.
fn load_all(dir: &Path, models: &[Value]) -> Result<Vec<Weights>> {
    let mut out: Vec<Weights> = Vec::with_capacity(models.len());
    let index: BTreeMap<&str, usize> =
        models.iter().enumerate().filter_map(|(i, m)| Some((m["model"].as_str()?, i))).collect();
    for m in models {
        let id = m["model"].as_str().context("model id")?;
        let path = dir.join(id);
        let w = if m["relation"] == "adapter" {
            let parent = m["parents"][0].as_str().context("adapter parent")?;
            let p = *index.get(parent).context("adapter parent not in the zoo")?;
            let mut w = out.get(p).context("adapter listed before its parent")?.clone();
            let (factors, scale) = read_adapter(&path)?;
            merge_lora(&mut w, &factors, scale)?;
            w
        } else {
            read_model(&path).with_context(|| format!("reading {id}"))?.0
        };
        out.push(w);
    }
    Ok(out)
}

/// Builds the report text for the zoo in `dir`.
///
/// # Errors
/// When the ground truth or a model cannot be read.
pub fn report(dir: &Path) -> Result<String> {
    let gt: Value =
        serde_json::from_slice(&std::fs::read(dir.join("ground_truth.json")).context("ground_truth.json")?)?;
    crate::zoo::check_ground_truth(&gt)?;
    let models = gt["models"].as_array().context("models")?;
    let mut s = String::new();
    let z = &gt["zoo"];
    let mut by_rel: BTreeMap<&str, usize> = BTreeMap::new();
    for m in models {
        *by_rel.entry(m["relation"].as_str().unwrap_or("?")).or_default() += 1;
    }
    let a = &z["arch"];
    writeln!(
        s,
        "zoo {} seed {} v{}: {} models in {} trees, {:.0}s to generate; llama hidden {} x {} layers, {} heads, {} params",
        z["size"].as_str().unwrap_or("?"),
        z["seed"],
        z["generator_version"].as_str().unwrap_or("?"),
        models.len(),
        by_rel.get("root").copied().unwrap_or(0),
        z["seconds"].as_f64().unwrap_or(0.0),
        a["hidden_size"],
        a["num_hidden_layers"],
        a["num_attention_heads"],
        a["parameters"]
    )?;
    writeln!(s, "  relations: {}", by_rel.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "))?;
    let disk: u64 = walk_size(dir);
    writeln!(s, "  on disk: {:.1} MB", disk as f64 / 1e6)?;

    writeln!(s, "\npre-training (held-out loss on the root's mixture, nats/scored token):")?;
    for m in models.iter().filter(|m| m["relation"] == "root") {
        let ev = curve(&m["curves"]["eval"]);
        let tr = curve(&m["curves"]["train"]);
        let (Some(first), Some(last)) = (ev.first(), ev.last()) else { continue };
        let mid = ev[ev.len() / 2];
        let late = ev[ev.len() * 4 / 5];
        let train_last = tr.last().map_or(f64::NAN, |t| t.1);
        writeln!(
            s,
            "  {:<34} eval {:.2} -> {:.2} (step {}) -> {:.2} (step {}) -> {:.3} (step {}); train {:.3}; eval-train {:+.3}",
            m["model"].as_str().unwrap_or("?"),
            first.1,
            mid.1,
            mid.0,
            late.1,
            late.0,
            last.1,
            last.0,
            train_last,
            last.1 - train_last
        )?;
    }

    writeln!(s, "\nfine-tunes, own-task held-out loss before -> after:")?;
    for rel in ["finetune", "lora", "adapter"] {
        let runs: Vec<(f64, f64)> = models
            .iter()
            .filter(|m| m["relation"] == rel && !m["curves"]["task_eval_before"].is_null())
            .filter_map(|m| Some((m["curves"]["task_eval_before"].as_f64()?, m["curves"]["task_eval_after"].as_f64()?)))
            .collect();
        let improved = runs.iter().filter(|(b, a)| a < b).count();
        let before: Vec<f64> = runs.iter().map(|r| r.0).collect();
        let after: Vec<f64> = runs.iter().map(|r| r.1).collect();
        let rel_gain: Vec<f64> = runs.iter().map(|(b, a)| (b - a) / b).collect();
        writeln!(
            s,
            "  {rel:<9} improved {improved}/{}: median {:.3} -> {:.3}; relative gain min/med/max {}",
            runs.len(),
            median(&before),
            median(&after),
            spread(&rel_gain, 2)
        )?;
    }
    for rel in ["quantized", "duplicate"] {
        let d: Vec<f64> = models
            .iter()
            .filter(|m| m["relation"] == rel)
            .filter_map(|m| Some(m["curves"]["task_eval_after"].as_f64()? - m["curves"]["task_eval_before"].as_f64()?))
            .collect();
        writeln!(s, "  {rel:<9} loss change vs parent on the parent's tasks: {}", spread(&d, 4))?;
    }

    writeln!(s, "\nkurtosis (population excess, summed over all 2-D block weights):")?;
    let kurt = |m: &Value| curve(&m["kurtosis"]);
    for m in models.iter().filter(|m| m["relation"] == "root") {
        let k = kurt(m);
        let name = m["model"].as_str().unwrap_or("?");
        let short = name.rsplit('/').next().unwrap_or(name);
        writeln!(
            s,
            "  pre-training {short:<16} {}",
            k.iter().map(|(st, v)| format!("{v:.1}@{st}")).collect::<Vec<_>>().join(" ")
        )?;
    }
    // Where the tails sit: the end-of-pre-training kurtosis per projection kind, averaged over roots.
    let mut by_kind: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for m in models.iter().filter(|m| m["relation"] == "root") {
        if let Some(kinds) = m["kurtosis_by_kind"].as_object() {
            for (k, v) in kinds {
                if let Some(last) = curve(v).last() {
                    by_kind.entry(k.clone()).or_default().push(last.1);
                }
            }
        }
    }
    writeln!(
        s,
        "  end of pre-training by kind (mean over roots): {}",
        by_kind
            .iter()
            .map(|(k, v)| format!(
                "{} {:.2}",
                k.trim_end_matches("_proj"),
                v.iter().sum::<f64>() / v.len().max(1) as f64
            ))
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    for rel in ["finetune", "lora", "adapter"] {
        let deltas: Vec<f64> = models
            .iter()
            .filter(|m| m["relation"] == rel)
            .filter_map(|m| {
                let k = kurt(m);
                Some(k.last()?.1 - k.first()?.1)
            })
            .collect();
        let fell = deltas.iter().filter(|d| **d < 0.0).count();
        writeln!(
            s,
            "  {rel:<9} fine-tuning: fell in {fell}/{}; change min/med/max {}",
            deltas.len(),
            spread(&deltas, 3)
        )?;
    }
    // Direction test as MoTHer uses it: does the parent have higher summed kurtosis than the child?
    let final_k: BTreeMap<&str, f64> =
        models.iter().filter_map(|m| Some((m["model"].as_str()?, kurt(m).last()?.1))).collect();
    let mut higher = 0;
    let mut total = 0;
    for m in models.iter().filter(|m| matches!(m["relation"].as_str(), Some("finetune" | "lora"))) {
        let (Some(c), Some(p)) =
            (final_k.get(m["model"].as_str().unwrap_or("")), m["parents"][0].as_str().and_then(|p| final_k.get(p)))
        else {
            continue;
        };
        total += 1;
        higher += usize::from(p > c);
    }
    writeln!(s, "  parent kurtosis > child kurtosis for {higher}/{total} finetune+lora edges")?;

    writeln!(s, "\nrelative Frobenius distance ||A-B||/||B|| over all 2-D block weights (min / median / max):")?;
    let weights = load_all(dir, models)?;
    let ids: Vec<&str> = models.iter().map(|m| m["model"].as_str().unwrap_or("")).collect();
    let pos: BTreeMap<&str, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let parents: Vec<Vec<usize>> = models
        .iter()
        .map(|m| {
            m["parents"]
                .as_array()
                .map_or(Vec::new(), |ps| ps.iter().filter_map(|p| pos.get(p.as_str()?).copied()).collect())
        })
        .collect();
    let root_of = |mut i: usize| {
        while let Some(&p) = parents[i].first() {
            i = p;
        }
        i
    };
    let mut groups: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (c, ps) in parents.iter().enumerate() {
        for &p in ps {
            let rel = models[c]["relation"].as_str().unwrap_or("?");
            groups.entry(format!("parent-child {rel}")).or_default().push(relative_distance(&weights[c], &weights[p])?);
        }
    }
    let same_data_roots: Vec<usize> =
        (0..models.len()).filter(|&i| models[i]["recipe"]["same_data_as_another_root"] == Value::Bool(true)).collect();
    for i in 0..models.len() {
        for j in i + 1..models.len() {
            if parents[j].contains(&i) || parents[i].contains(&j) {
                continue;
            }
            let key = if root_of(i) != root_of(j) {
                if same_data_roots.contains(&i)
                    && same_data_roots.contains(&j)
                    && parents[i].is_empty()
                    && parents[j].is_empty()
                {
                    "unrelated roots, same data"
                } else {
                    "unrelated (other tree)"
                }
            } else if parents[i].iter().any(|p| parents[j].contains(p)) {
                "siblings"
            } else {
                let gp = |k: usize| parents[k].iter().flat_map(|&p| parents[p].clone()).collect::<Vec<_>>();
                let (gi, gj) = (gp(i), gp(j));
                if gi.iter().any(|g| gj.contains(g)) { "cousins" } else { "other same-tree pairs" }
            };
            groups.entry(key.to_string()).or_default().push(relative_distance(&weights[j], &weights[i])?);
        }
    }
    for (k, v) in &groups {
        writeln!(s, "  {k:<30} {}", spread(v, 4))?;
    }
    Ok(s)
}

fn walk_size(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.filter_map(|e| e.ok())
        .map(|e| {
            let p = e.path();
            if p.is_dir() { walk_size(&p) } else { e.metadata().map(|m| m.len()).unwrap_or(0) }
        })
        .sum()
}
