//! Signs every model of a zoo, recovers the lineage with both methods and scores it against `ground_truth.json`.
//!
//! A zoo is a folder of Hub-style repos `ORG/NAME/` (safetensors, `config.json`, `README.md` card, PEFT adapters)
//! beside a `ground_truth.json` with `models[] = {model, parents, relation, created_at}`. The priors a crawler
//! would see are read the simple way: the card's YAML front matter (`base_model`, string or list, and
//! `base_model_relation`), `adapter_config.json`'s `base_model_name_or_path`, `config.json`'s
//! `quantization_config`, and `created_at` from the ground truth (standing in for the Hub's upload time).
//!
//! Besides the two methods it runs ablations of the default method's direction cues, and measures each cue on
//! its own over the true parent → child edges between full models.
//!
//! Run: `cargo run --release -p modeltree-lineage --example zoo_eval -- [ZOO_DIR] [--verbose]`

use std::path::{Path, PathBuf};
use std::time::Instant;

use lineage::eval::{Score, Truth, score};
use lineage::{Method, ModelInput, Options, Prior, Recovery, Relation, recover};
use nalgebra::DMatrix;
use ndarray::{Array2, ArrayView2, ShapeBuilder, Zip};
use serde_json::Value;
use signature::{ModelSignature, Scheme, SignOptions, ValueSource, sign_model_dir};

struct Model {
    id: String,
    signature: ModelSignature,
    prior: Prior,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let verbose = args.iter().any(|a| a == "--verbose");
    let dir =
        args.iter().find(|a| !a.starts_with("--")).map_or_else(|| PathBuf::from("tests/zoo-small"), PathBuf::from);

    let truth_json: Value = serde_json::from_slice(&std::fs::read(dir.join("ground_truth.json"))?)?;
    let rows = truth_json["models"].as_array().ok_or("ground_truth.json has no models array")?;
    let mut truth = Vec::new();
    let mut created = std::collections::HashMap::new();
    for m in rows {
        let model = m["model"].as_str().ok_or("model without id")?.to_owned();
        let parents = m["parents"]
            .as_array()
            .map_or_else(Vec::new, |ps| ps.iter().filter_map(|p| p.as_str().map(str::to_owned)).collect());
        if let Some(t) = m["created_at"].as_str().and_then(parse_rfc3339) {
            created.insert(model.clone(), t);
        }
        truth.push(Truth { model, parents, relation: m["relation"].as_str().unwrap_or("").to_owned() });
    }

    let started = Instant::now();
    let scheme = Scheme::default();
    let mut models = Vec::new();
    for repo in model_dirs(&dir)? {
        let id = repo.strip_prefix(&dir)?.to_string_lossy().replace('\\', "/");
        let signed = sign_model_dir(&repo, &scheme, &SignOptions::default())
            .map_err(|e| format!("signing {}: {e}", repo.display()))?;
        let mut prior = read_prior(&repo)?;
        prior.created_at = created.get(&id).copied();
        models.push(Model { id, signature: signed.signature, prior });
    }
    println!(
        "zoo {}: {} models signed in {:.1} s (k = {})",
        dir.display(),
        models.len(),
        started.elapsed().as_secs_f64(),
        scheme.sketch_k
    );

    direction_cues(&models, &truth, verbose);
    relatedness(&models, &truth);

    let base = Options::default();
    let weights_only =
        |m: &Model| Prior { declared_bases: Vec::new(), declared_relation: None, created_at: None, ..m.prior.clone() };
    let no_time = |m: &Model| Prior { created_at: None, ..m.prior.clone() };
    let no_cards = |m: &Model| Prior { declared_bases: Vec::new(), declared_relation: None, ..m.prior.clone() };
    let all = |m: &Model| m.prior.clone();
    type PriorFn<'a> = &'a dyn Fn(&Model) -> Prior;
    let runs: Vec<(&str, Options, PriorFn<'_>)> = vec![
        ("default", base.clone(), &all),
        ("mother", Options { method: Method::Mother, ..base.clone() }, &all),
        ("default, weights only", base.clone(), &weights_only),
        (
            "  … kurtosis cue only",
            Options { kurtosis_weight: 0.3, effective_rank_weight: 0.0, ..base.clone() },
            &weights_only,
        ),
        (
            "  … kurtosis reversed",
            Options { kurtosis_weight: -0.3, effective_rank_weight: 0.0, ..base.clone() },
            &weights_only,
        ),
        (
            "  … effective rank only",
            Options { kurtosis_weight: 0.0, effective_rank_weight: 0.3, ..base.clone() },
            &weights_only,
        ),
        (
            "  … no direction cue",
            Options { kurtosis_weight: 0.0, effective_rank_weight: 0.0, ..base.clone() },
            &weights_only,
        ),
        ("default, no created_at", base.clone(), &no_time),
        ("default, no cards", base.clone(), &no_cards),
    ];
    println!("\n{:<26} {:>7} {:>6} {:>6} {:>6} {:>6} {:>8}", "run", "edgeacc", "P", "R", "F1", "ARI", "time ms");
    let mut detail = Vec::new();
    for (name, options, prior) in &runs {
        let inputs: Vec<ModelInput<'_>> =
            models.iter().map(|m| ModelInput { id: &m.id, signature: &m.signature, prior: prior(m) }).collect();
        let started = Instant::now();
        let recovery = recover(&inputs, options);
        let ms = started.elapsed().as_secs_f64() * 1e3;
        let s = score(&truth, &recovery);
        println!(
            "{:<26} {:>7.3} {:>6.3} {:>6.3} {:>6.3} {:>6.3} {:>8.0}",
            name, s.edge_accuracy, s.precision, s.recall, s.f1, s.ari, ms
        );
        if verbose && *name == "default" {
            for e in &recovery.edges {
                println!(
                    "  {:<9} {:.2} {:<8} {} → {}",
                    e.relation.as_str(),
                    e.confidence,
                    e.source.as_str(),
                    e.parent,
                    e.child
                );
            }
        }
        if *name == "default" || *name == "mother" || *name == "default, weights only" {
            detail.push((name.to_string(), s, recovery));
        }
    }
    // What MoTHer was designed for: a tree of full and LoRA fine-tunes only (merged LoRA weights, no
    // duplicates, quantisations, adapters or merges).
    let keep: std::collections::HashSet<&str> = truth
        .iter()
        .filter(|t| matches!(t.relation.as_str(), "root" | "finetune" | "lora"))
        .map(|t| t.model.as_str())
        .collect();
    let sub_truth: Vec<Truth> = truth
        .iter()
        .filter(|t| keep.contains(t.model.as_str()))
        .map(|t| Truth {
            parents: t.parents.iter().filter(|p| keep.contains(p.as_str())).cloned().collect(),
            ..t.clone()
        })
        .collect();
    println!(
        "\nfine-tune trees only ({} models, {} edges):",
        keep.len(),
        sub_truth.iter().map(|t| t.parents.len()).sum::<usize>()
    );
    for (name, options) in
        [("default, weights only", base.clone()), ("mother", Options { method: Method::Mother, ..base.clone() })]
    {
        let inputs: Vec<ModelInput<'_>> = models
            .iter()
            .filter(|m| keep.contains(m.id.as_str()))
            .map(|m| ModelInput { id: &m.id, signature: &m.signature, prior: weights_only(m) })
            .collect();
        let s = score(&sub_truth, &recover(&inputs, &options));
        println!(
            "{:<26} {:>7.3} {:>6.3} {:>6.3} {:>6.3} {:>6.3}",
            name, s.edge_accuracy, s.precision, s.recall, s.f1, s.ari
        );
    }

    for (name, s, recovery) in &detail {
        per_relation(name, s);
        if verbose {
            mistakes(&truth, recovery);
        }
    }
    Ok(())
}

fn per_relation(name: &str, s: &Score) {
    println!(
        "\n{name}: {} truth edges, {} recovered, {} placed",
        s.counts.truth_edges, s.counts.recovered_edges, s.counts.placed
    );
    println!("  {:<10} {:>3} {:>3} {:>3} {:>6} {:>6} {:>6}", "relation", "tp", "fp", "fn", "P", "R", "F1");
    for r in &s.per_relation {
        println!(
            "  {:<10} {:>3} {:>3} {:>3} {:>6.3} {:>6.3} {:>6.3}",
            r.relation, r.tp, r.fp, r.fn_, r.precision, r.recall, r.f1
        );
    }
}

/// Lists truth edges the recovery missed (with what it said instead) and recovered edges that are not true.
fn mistakes(truth: &[Truth], recovery: &Recovery) {
    for t in truth {
        for p in &t.parents {
            let got: Vec<String> = recovery
                .edges
                .iter()
                .filter(|e| e.child == t.model)
                .map(|e| format!("{} ({}, {:.2})", e.parent, e.relation.as_str(), e.confidence))
                .collect();
            let ok = recovery
                .edges
                .iter()
                .any(|e| e.child == t.model && &e.parent == p && e.relation.as_str() == t.relation);
            if !ok {
                println!("  MISS {p} → {} [{}]; got {:?}", t.model, t.relation, got);
            }
        }
    }
}

/// How often each direction statistic orders a true parent → child pair of full models correctly.
fn direction_cues(models: &[Model], truth: &[Truth], verbose: bool) {
    let find = |id: &str| models.iter().find(|m| m.id == id);
    let full = |m: &Model| {
        m.signature.tensors.iter().any(|t| t.sketch.is_some() && t.source == ValueSource::Raw)
            && !m.prior.quantized
            && m.signature.tensors.iter().all(|t| t.source != ValueSource::AdapterDelta)
    };
    let mut tallies: Vec<(&str, usize, usize)> = Vec::new();
    let mut tally = |name: &'static str, ok: bool| match tallies.iter_mut().find(|t| t.0 == name) {
        Some(t) => {
            t.1 += usize::from(ok);
            t.2 += 1;
        }
        None => tallies.push((name, usize::from(ok), 1)),
    };
    for t in truth {
        let Some(relation) = Relation::parse(&t.relation) else { continue };
        if !matches!(relation, Relation::Finetune | Relation::Lora) {
            continue;
        }
        let Some(child) = find(&t.model) else { continue };
        for p in &t.parents {
            let Some(parent) = find(p) else { continue };
            if !full(parent) || !full(child) {
                continue;
            }
            let (kp, kc) = (kurtosis(&parent.signature, |_| true), kurtosis(&child.signature, |_| true));
            tally("kurtosis all 2-D: parent higher", kp > kc);
            if verbose {
                println!(
                    "  {p} → {} [{}]: ku {kp:.3} → {kc:.3}, eff.rank {:.2} → {:.2}, dist {:.4}, diff ranks {:?}",
                    t.model,
                    t.relation,
                    effective_rank(&parent.signature),
                    effective_rank(&child.signature),
                    distance(&parent.signature, &child.signature),
                    difference_ranks(&parent.signature, &child.signature)
                );
            }
            let (kp, kc) = (
                kurtosis(&parent.signature, |n| n.contains("o_proj")),
                kurtosis(&child.signature, |n| n.contains("o_proj")),
            );
            tally("kurtosis o_proj (MoTHer): parent higher", kp > kc);
            let (kp, kc) = (
                kurtosis(&parent.signature, |n| n.contains("down_proj")),
                kurtosis(&child.signature, |n| n.contains("down_proj")),
            );
            tally("kurtosis down_proj: parent higher", kp > kc);
            let (ep, ec) = (effective_rank(&parent.signature), effective_rank(&child.signature));
            tally("effective rank: parent lower", ep < ec);
            if let (Some(tp), Some(tc)) = (parent.prior.created_at, child.prior.created_at) {
                tally("created_at: parent earlier", tp < tc);
            }
            tally("card: child declares parent", child.prior.declared_bases.iter().any(|b| b == p));
            tally("card: parent declares child", parent.prior.declared_bases.iter().any(|b| b == &t.model));
        }
    }
    println!("\ndirection cues over true finetune/lora edges between full models:");
    for (name, ok, total) in tallies {
        println!("  {name:<42} {ok:>3}/{total:<3} = {:.3}", ok as f64 / total.max(1) as f64);
    }
}

/// Mean sketch cosine of true parent → child pairs versus pairs from different truth families.
fn relatedness(models: &[Model], truth: &[Truth]) {
    let full: Vec<&Model> =
        models.iter().filter(|m| m.signature.tensors.iter().all(|t| t.source != ValueSource::AdapterDelta)).collect();
    let mut family: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut uf: Vec<usize> = (0..truth.len()).collect();
    fn find(uf: &mut [usize], mut x: usize) -> usize {
        while uf[x] != x {
            x = uf[x];
        }
        x
    }
    let index: std::collections::HashMap<&str, usize> =
        truth.iter().enumerate().map(|(i, t)| (t.model.as_str(), i)).collect();
    for (i, t) in truth.iter().enumerate() {
        for p in &t.parents {
            if let Some(&j) = index.get(p.as_str()) {
                let (a, b) = (find(&mut uf, i), find(&mut uf, j));
                uf[a] = b;
            }
        }
    }
    for (i, t) in truth.iter().enumerate() {
        family.insert(t.model.as_str(), find(&mut uf, i));
    }
    let (mut edge_min, mut cross_max, mut slots) = (f64::INFINITY, f64::NEG_INFINITY, 0usize);
    for (i, a) in full.iter().enumerate() {
        for b in &full[i + 1..] {
            let (c, n) = mean_cosine(&a.signature, &b.signature);
            slots = slots.max(n);
            let direct = truth.iter().any(|t| {
                (t.model == a.id && t.parents.contains(&b.id)) || (t.model == b.id && t.parents.contains(&a.id))
            });
            if direct {
                edge_min = edge_min.min(c);
            }
            if family.get(a.id.as_str()) != family.get(b.id.as_str()) {
                cross_max = cross_max.max(c);
            }
        }
    }
    let k = models.first().map_or(64, |m| m.signature.scheme.sketch_k) as f64;
    let options = Options::default();
    let threshold = options.related_min_cosine.max(options.related_z / (k * (slots.max(1) as f64).sqrt()));
    println!(
        "\nrelatedness (mean sketch cosine over {slots} block weights): true edges ≥ {edge_min:.3}, \
         different families ≤ {cross_max:.3}, threshold {threshold:.3}"
    );
}

fn mean_cosine(a: &ModelSignature, b: &ModelSignature) -> (f64, usize) {
    let (mut sum, mut n) = (0.0, 0usize);
    for t in a.tensors.iter().filter(|t| {
        t.shape.len() == 2 && t.name.ends_with("weight") && !t.name.contains("embed") && !t.name.contains("lm_head")
    }) {
        let (Some(sa), Some(sb)) = (t.sketch.as_ref(), b.tensor(&t.name).and_then(|u| u.sketch.as_ref())) else {
            continue;
        };
        if t.shape.contains(&1) || sa.values.len() != sb.values.len() {
            continue;
        }
        let dot: f64 = sa.values.iter().zip(&sb.values).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum();
        let na: f64 = sa.values.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
        let nb: f64 = sb.values.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
        sum += dot / (na * nb).max(f64::MIN_POSITIVE);
        n += 1;
    }
    (sum / n.max(1) as f64, n)
}

/// Numerical rank (σ > 0.05·σ₁) of every changed block weight's sketched difference.
fn difference_ranks(a: &ModelSignature, b: &ModelSignature) -> Vec<usize> {
    let mut out = Vec::new();
    for t in a.tensors.iter().filter(|t| t.shape.len() == 2 && !t.name.contains("embed") && !t.name.contains("lm_head"))
    {
        let Some(u) = b.tensor(&t.name) else { continue };
        let (Some(sa), Some(sb)) = (t.sketch.as_ref(), u.sketch.as_ref()) else { continue };
        if t.content_hash == u.content_hash {
            continue;
        }
        let k = sa.k as usize;
        let (Some(a), Some(b)) = (column_major(&sa.values, k), column_major(&sb.values, k)) else { continue };
        let sv = svd_boundary(&Zip::from(a).and(b).map_collect(|&x, &y| f64::from(x) - f64::from(y))).singular_values();
        let top = sv.max();
        out.push(sv.iter().filter(|&&s| s > 0.05 * top).count());
    }
    out
}

/// Mean over shared block weights of `‖S_a − S_b‖ / mean(‖S_a‖, ‖S_b‖)`.
fn distance(a: &ModelSignature, b: &ModelSignature) -> f64 {
    let mut sum = 0.0;
    let mut count = 0;
    for t in a.tensors.iter().filter(|t| t.shape.len() == 2 && !t.name.contains("embed") && !t.name.contains("lm_head"))
    {
        let (Some(sa), Some(sb)) = (t.sketch.as_ref(), b.tensor(&t.name).and_then(|u| u.sketch.as_ref())) else {
            continue;
        };
        let k = sa.k as usize;
        let (Ok(a), Ok(b)) =
            (ArrayView2::from_shape((k, k), &sa.values[..]), ArrayView2::from_shape((k, k), &sb.values[..]))
        else {
            continue;
        };
        // Row-major views iterate in storage order, so the sums below add in the order the values are stored.
        let norm = |v: ArrayView2<'_, f32>| v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
        let diff: f64 = Zip::from(a).and(b).fold(0.0, |acc, &x, &y| acc + (f64::from(x) - f64::from(y)).powi(2));
        sum += diff.sqrt() / ((norm(a) + norm(b)) / 2.0);
        count += 1;
    }
    sum / f64::from(count.max(1))
}

fn kurtosis(s: &ModelSignature, keep: impl Fn(&str) -> bool) -> f64 {
    s.tensors
        .iter()
        .filter(|t| {
            t.shape.len() == 2 && t.sketch.is_some() && !t.name.contains("embed") && !t.name.contains("lm_head")
        })
        .filter(|t| keep(&t.name))
        .filter_map(|t| t.moments.map(|m| m.excess_kurtosis()))
        .sum()
}

/// Mean over 2-D block weights of `exp(H(σ/Σσ))` of the sketch.
fn effective_rank(s: &ModelSignature) -> f64 {
    let ranks: Vec<f64> = s
        .tensors
        .iter()
        .filter(|t| t.shape.len() == 2 && !t.name.contains("embed") && !t.name.contains("lm_head"))
        .filter_map(|t| t.sketch.as_ref())
        .map(|sk| {
            let k = sk.k as usize;
            let sv = column_major(&sk.values, k)
                .map_or_else(|| nalgebra::DVector::zeros(0), |m| svd_boundary(&m.mapv(f64::from)).singular_values());
            let total: f64 = sv.iter().sum();
            let h: f64 = sv.iter().filter(|&&x| x > 0.0).map(|&x| x / total).map(|p| -p * p.ln()).sum();
            h.exp()
        })
        .collect();
    ranks.iter().sum::<f64>() / ranks.len().max(1) as f64
}

/// A `k×k` sketch read column by column, the order these figures were first computed in (nalgebra's).
fn column_major(values: &[f32], k: usize) -> Option<ArrayView2<'_, f32>> {
    ArrayView2::from_shape((k, k).f(), values).ok()
}

/// The matrix as nalgebra holds it, for a decomposition: the one place the example leaves ndarray.
fn svd_boundary(m: &Array2<f64>) -> DMatrix<f64> {
    DMatrix::from_fn(m.nrows(), m.ncols(), |i, j| m[[i, j]])
}

/// Every `ORG/NAME` folder holding a safetensors file, sorted.
fn model_dirs(dir: &Path) -> Result<Vec<PathBuf>, std::io::Error> {
    let mut out = Vec::new();
    for org in std::fs::read_dir(dir)? {
        let org = org?.path();
        if !org.is_dir() {
            continue;
        }
        for repo in std::fs::read_dir(&org)? {
            let repo = repo?.path();
            let has_weights = repo.is_dir()
                && std::fs::read_dir(&repo)?
                    .filter_map(Result::ok)
                    .any(|e| e.file_name().to_string_lossy().ends_with(".safetensors"));
            if has_weights {
                out.push(repo);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The card's front matter, the adapter config and the quantisation config.
fn read_prior(repo: &Path) -> Result<Prior, Box<dyn std::error::Error>> {
    let mut prior = Prior::default();
    if let Ok(card) = std::fs::read_to_string(repo.join("README.md")) {
        let mut lines = card.lines();
        if lines.next().map(str::trim) == Some("---") {
            let mut in_list = false;
            for line in lines.take_while(|l| l.trim() != "---") {
                let trimmed = line.trim();
                if let Some(rest) = trimmed.strip_prefix("base_model:") {
                    let rest = rest.trim().trim_matches(['"', '\'']);
                    in_list = rest.is_empty();
                    if !in_list {
                        prior.declared_bases.push(rest.to_owned());
                    }
                } else if in_list && trimmed.starts_with("- ") {
                    prior.declared_bases.push(trimmed[2..].trim().trim_matches(['"', '\'']).to_owned());
                } else {
                    in_list = false;
                    if let Some(rest) = trimmed.strip_prefix("base_model_relation:") {
                        prior.declared_relation = Relation::parse(rest.trim());
                    }
                }
            }
        }
    }
    if let Ok(bytes) = std::fs::read(repo.join("adapter_config.json")) {
        let v: Value = serde_json::from_slice(&bytes)?;
        prior.adapter_base = v["base_model_name_or_path"].as_str().map(str::to_owned);
    }
    if let Ok(bytes) = std::fs::read(repo.join("config.json")) {
        let v: Value = serde_json::from_slice(&bytes)?;
        prior.quantized = v.get("quantization_config").is_some_and(|q| !q.is_null());
    }
    Ok(prior)
}

/// `YYYY-MM-DDTHH:MM:SSZ` to unix seconds.
fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Days from civil (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (mo + if mo > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3_600 + mi * 60 + se)
}
