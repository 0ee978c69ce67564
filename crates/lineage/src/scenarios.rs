//! Lineage scenarios as data: every `tests/scenarios/*.json` file describes a small set of models, built by
//! the [`crate::testkit`] processes from seeds, and the tree expected from them. One test runs them all.
//!
//! A file holds:
//! - `about`: what the scenario shows;
//! - `options` (optional): `method` (`default` or `mother`), `dense_limit`, `screen_neighbours`;
//! - `models`: each `{ "id", "make", … }` where `make` is `root` (`seed`), `finetune` (`of`, `seed`,
//!   `relative`), `low_rank_finetune` / `lora` / `adapter` (`of`, `seed`, `rank`, `relative`), `merge`
//!   (`of: [a, b]`, `alpha`), `task_arithmetic` (`of: [base, a, b]`, `lambda: [l1, l2]`), `cast_bf16`,
//!   `quantize_int8` or `as_f32` (`of`; `as_f32` relabels the stored type, an exact upcast). The card fields
//!   `created_at`, `declared_bases`, `declared_relation`, `adapter_base` and `quantized` may follow.
//!   `"sketches": false` signs the model without sketches and moments (packed weights no reader could
//!   decode); `"hidden": true` builds a model only for others to be made from. `name` (default: the id) is
//!   what `of` and steps refer to, so two models may share an id (a new revision of a repo);
//! - `edges`: `[parent, child, relation]`, optionally with `{ "source", "confidence", "min_confidence" }`;
//! - `families`: member ids, as [`crate::Recovery::families`] lists them;
//! - `variants` (optional): the same models with `order` (names in input order), `without` (card fields
//!   dropped from every model) or `set` (card fields per model name) changed, and `edges` / `families`
//!   overriding the expectation;
//! - `steps` (optional): `add` (names), `remove` (an id) and `solve`, each with what it should report
//!   (`touched: [families, merged, split]`; `families`, `edges` and `removed` of the update; `held`). After
//!   every solve and after the last step, the index must equal a batch recovery of the models it holds.
//!
//! Every scenario and variant is also fed to an [`Index`] one model at a time, solving after each add, and
//! must give the batch result: the incremental property on hand-made cases, beside the random forests of
//! `index::tests`.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use signature::{Dtype, ModelSignature};

use crate::testkit::{
    Weights, adapter, cast_bf16, finetune, lora, low_rank_finetune, merge, quantize_int8, root, scheme, sign,
    task_arithmetic,
};
use crate::{EdgeSource, Index, Method, ModelInput, Options, OwnedModelInput, Prior, Recovery, Relation, Touched};

/// One model of a scenario, built and signed.
#[derive(Clone)]
struct Model {
    name: String,
    id: String,
    signature: ModelSignature,
    prior: Prior,
    hidden: bool,
}

/// An expected edge.
struct ExpectedEdge {
    parent: String,
    child: String,
    relation: Relation,
    source: Option<EdgeSource>,
    confidence: Option<f64>,
    min_confidence: Option<f64>,
}

type Outcome = Result<(), String>;

fn field<'v>(v: &'v Value, key: &str) -> Result<&'v Value, String> {
    v.get(key).ok_or_else(|| format!("missing `{key}` in {v}"))
}

fn string(v: &Value, key: &str) -> Result<String, String> {
    field(v, key)?.as_str().map(str::to_owned).ok_or_else(|| format!("`{key}` is not a string in {v}"))
}

fn number(v: &Value, key: &str) -> Result<f64, String> {
    field(v, key)?.as_f64().ok_or_else(|| format!("`{key}` is not a number in {v}"))
}

fn seed(v: &Value) -> Result<u64, String> {
    field(v, "seed")?.as_u64().ok_or_else(|| format!("`seed` is not an unsigned integer in {v}"))
}

fn strings(v: &Value) -> Result<Vec<String>, String> {
    v.as_array()
        .ok_or_else(|| format!("{v} is not a list"))?
        .iter()
        .map(|s| s.as_str().map(str::to_owned).ok_or_else(|| format!("{s} is not a string")))
        .collect()
}

fn options(v: Option<&Value>) -> Result<Options, String> {
    let mut options = Options::default();
    let Some(v) = v else { return Ok(options) };
    if let Some(m) = v.get("method") {
        options.method = m.as_str().and_then(Method::parse).ok_or_else(|| format!("unknown method {m}"))?;
    }
    if let Some(n) = v.get("dense_limit").and_then(Value::as_u64) {
        options.dense_limit = n as usize;
    }
    if let Some(n) = v.get("screen_neighbours").and_then(Value::as_u64) {
        options.screen_neighbours = n as usize;
    }
    Ok(options)
}

/// Applies the card fields present in `v` to `prior`.
fn set_prior(prior: &mut Prior, v: &Value) -> Outcome {
    if let Some(t) = v.get("created_at") {
        prior.created_at = Some(t.as_i64().ok_or_else(|| format!("bad created_at {t}"))?);
    }
    if let Some(d) = v.get("declared_bases") {
        prior.declared_bases = strings(d)?;
    }
    if let Some(r) = v.get("declared_relation") {
        prior.declared_relation =
            Some(r.as_str().and_then(Relation::parse).ok_or_else(|| format!("bad relation {r}"))?);
    }
    if let Some(a) = v.get("adapter_base") {
        prior.adapter_base = Some(a.as_str().ok_or_else(|| format!("bad adapter_base {a}"))?.to_owned());
    }
    if let Some(q) = v.get("quantized") {
        prior.quantized = q.as_bool().ok_or_else(|| format!("bad quantized {q}"))?;
    }
    Ok(())
}

/// Builds the models in file order: `of` refers to earlier names.
fn models(list: &Value) -> Result<Vec<Model>, String> {
    let mut built: Vec<(String, Weights)> = Vec::new();
    let mut out = Vec::new();
    for v in list.as_array().ok_or("`models` is not a list")? {
        let id = string(v, "id")?;
        let name = v.get("name").and_then(Value::as_str).map_or_else(|| id.clone(), str::to_owned);
        let weights_of = |key: &Value| -> Result<&Weights, String> {
            let n = key.as_str().ok_or_else(|| format!("bad reference {key}"))?;
            built.iter().rev().find(|(m, _)| m == n).map(|(_, w)| w).ok_or_else(|| format!("unknown model {n}"))
        };
        let of = || weights_of(field(v, "of")?);
        let of_list = || -> Result<Vec<&Weights>, String> {
            field(v, "of")?.as_array().ok_or("`of` is not a list")?.iter().map(weights_of).collect()
        };
        let rank = || field(v, "rank")?.as_u64().map(|r| r as usize).ok_or_else(|| format!("bad rank in {v}"));
        let make = string(v, "make")?;
        let weights = match make.as_str() {
            "root" => root(seed(v)?),
            "finetune" => finetune(of()?, seed(v)?, number(v, "relative")?),
            "low_rank_finetune" => low_rank_finetune(of()?, seed(v)?, rank()?, number(v, "relative")?),
            "lora" => lora(of()?, seed(v)?, rank()?, number(v, "relative")?),
            "adapter" => adapter(of()?, seed(v)?, rank()?, number(v, "relative")?),
            "merge" => match of_list()?.as_slice() {
                [a, b] => merge(a, b, number(v, "alpha")? as f32),
                _ => return Err(format!("a merge needs two models: {v}")),
            },
            "task_arithmetic" => {
                let lambda: Vec<f64> =
                    field(v, "lambda")?.as_array().ok_or("bad lambda")?.iter().filter_map(Value::as_f64).collect();
                match (of_list()?.as_slice(), lambda.as_slice()) {
                    ([base, a, b], [l1, l2]) => task_arithmetic(base, a, b, *l1 as f32, *l2 as f32),
                    _ => return Err(format!("task arithmetic needs three models and two lambdas: {v}")),
                }
            }
            "cast_bf16" => cast_bf16(of()?),
            "quantize_int8" => quantize_int8(of()?),
            "as_f32" => {
                let mut w = of()?.clone();
                w.tensors.iter_mut().for_each(|t| t.dtype = Dtype::F32);
                w
            }
            other => return Err(format!("unknown make `{other}`")),
        };
        let mut signature = sign(&weights, &scheme());
        if v.get("sketches").and_then(Value::as_bool) == Some(false) {
            for t in &mut signature.tensors {
                t.sketch = None;
                t.moments = None;
            }
        }
        let mut prior = Prior::default();
        set_prior(&mut prior, v)?;
        let hidden = v.get("hidden").and_then(Value::as_bool) == Some(true);
        built.push((name.clone(), weights));
        out.push(Model { name, id, signature, prior, hidden });
    }
    Ok(out)
}

fn edges(v: &Value) -> Result<Vec<ExpectedEdge>, String> {
    let mut out = Vec::new();
    for e in v.as_array().ok_or("`edges` is not a list")? {
        let parts = e.as_array().ok_or_else(|| format!("edge {e} is not a list"))?;
        let text = |i: usize| parts.get(i).and_then(Value::as_str).ok_or_else(|| format!("bad edge {e}"));
        let checks = parts.get(3);
        let check = |key: &str| checks.and_then(|c| c.get(key));
        out.push(ExpectedEdge {
            parent: text(0)?.to_owned(),
            child: text(1)?.to_owned(),
            relation: Relation::parse(text(2)?).ok_or_else(|| format!("bad relation in {e}"))?,
            source: match check("source") {
                Some(s) => Some(s.as_str().and_then(EdgeSource::parse).ok_or_else(|| format!("bad source {s}"))?),
                None => None,
            },
            confidence: check("confidence").and_then(Value::as_f64),
            min_confidence: check("min_confidence").and_then(Value::as_f64),
        });
    }
    Ok(out)
}

fn families(v: &Value) -> Result<Vec<Vec<String>>, String> {
    v.as_array().ok_or("`families` is not a list")?.iter().map(strings).collect()
}

fn batch(models: &[&Model], options: &Options) -> Recovery {
    let inputs: Vec<ModelInput<'_>> =
        models.iter().map(|m| ModelInput { id: &m.id, signature: &m.signature, prior: m.prior.clone() }).collect();
    crate::recover(&inputs, options)
}

fn owned(m: &Model) -> OwnedModelInput {
    OwnedModelInput { id: m.id.clone(), signature: m.signature.clone(), prior: m.prior.clone() }
}

/// Compares edges (as `(parent, child, relation)` plus the per-edge checks) and families.
fn compare(got: &Recovery, expected: &[ExpectedEdge], families: &[Vec<String>]) -> Outcome {
    let triples: Vec<(&str, &str, Relation)> =
        got.edges.iter().map(|e| (e.parent.as_str(), e.child.as_str(), e.relation)).collect();
    let mut wanted: Vec<(&str, &str, Relation)> =
        expected.iter().map(|e| (e.parent.as_str(), e.child.as_str(), e.relation)).collect();
    wanted.sort_by(|a, b| (a.1, a.0).cmp(&(b.1, b.0)));
    if triples != wanted {
        return Err(format!("edges\n  got      {triples:?}\n  expected {wanted:?}"));
    }
    for (e, edge) in expected
        .iter()
        .filter_map(|e| got.edges.iter().find(|g| g.parent == e.parent && g.child == e.child).map(|g| (e, g)))
    {
        if e.source.is_some_and(|s| s != edge.source)
            || e.confidence.is_some_and(|c| c != edge.confidence)
            || e.min_confidence.is_some_and(|c| edge.confidence <= c)
        {
            return Err(format!("edge {edge:?} fails its checks"));
        }
    }
    if let Some(e) = got.edges.iter().find(|e| !(0.0..=1.0).contains(&e.confidence)) {
        return Err(format!("confidence out of [0, 1]: {e:?}"));
    }
    if got.families != families {
        return Err(format!("families\n  got      {:?}\n  expected {families:?}", got.families));
    }
    Ok(())
}

/// Batch recovery in the given order, then the same models added one at a time.
fn check_models(models: &[&Model], options: &Options, expected: &[ExpectedEdge], families: &[Vec<String>]) -> Outcome {
    let recovery = batch(models, options);
    compare(&recovery, expected, families)?;
    let mut index = Index::new(options.clone());
    for m in models {
        index.add(vec![owned(m)]);
        index.solve_touched();
    }
    if index.recovery() != recovery {
        return Err("an index fed one model at a time differs from the batch recovery".to_owned());
    }
    Ok(())
}

fn touched(v: &Value) -> Result<Touched, String> {
    let n: Vec<usize> =
        v.as_array().ok_or("bad touched")?.iter().filter_map(Value::as_u64).map(|x| x as usize).collect();
    match n.as_slice() {
        [families, merged, split] => Ok(Touched { families: *families, merged: *merged, split: *split }),
        _ => Err(format!("`touched` needs three counts: {v}")),
    }
}

fn run_steps(steps: &Value, models: &[Model], options: &Options) -> Outcome {
    let by_name: BTreeMap<&str, &Model> = models.iter().map(|m| (m.name.as_str(), m)).collect();
    let mut index = Index::new(options.clone());
    // What the index holds, by id, for the final comparison with a batch recovery.
    let mut held: BTreeMap<String, &Model> = BTreeMap::new();
    for (i, step) in steps.as_array().ok_or("`steps` is not a list")?.iter().enumerate() {
        let at = |e: String| format!("step {i} {step}: {e}");
        if let Some(names) = step.get("add") {
            let mut batch = Vec::new();
            for name in strings(names)? {
                let m = *by_name.get(name.as_str()).ok_or_else(|| at(format!("unknown model {name}")))?;
                held.insert(m.id.clone(), m);
                batch.push(owned(m));
            }
            let got = index.add(batch);
            if let Some(t) = step.get("touched") {
                let want = touched(t)?;
                if got != want {
                    return Err(at(format!("touched {got:?}, expected {want:?}")));
                }
            }
        } else if let Some(id) = step.get("remove").and_then(Value::as_str) {
            held.remove(id);
            let got = index.remove(id);
            if let Some(t) = step.get("touched")
                && got != Some(touched(t)?)
            {
                return Err(at(format!("touched {got:?}")));
            }
        } else if step.get("solve").is_some() {
            let update = index.solve_touched();
            if let Some(f) = step.get("families") {
                let members: Vec<Vec<String>> = update.families.iter().map(|f| f.members.clone()).collect();
                if members != families(f)? {
                    return Err(at(format!("re-solved {members:?}")));
                }
            }
            if let Some(n) = step.get("edges").and_then(Value::as_u64) {
                let count: usize = update.families.iter().map(|f| f.edges.len()).sum();
                if count as u64 != n {
                    return Err(at(format!("{count} edges re-solved")));
                }
            }
            if let Some(r) = step.get("removed")
                && update.removed != strings(r)?
            {
                return Err(at(format!("removed {:?}", update.removed)));
            }
            let survivors: Vec<&Model> = held.values().copied().collect();
            let current = Recovery { edges: index.edges(), families: index.families() };
            if current != batch(&survivors, options) {
                return Err(at("the index differs from a batch recovery of what it holds".to_owned()));
            }
        } else {
            return Err(at("a step is add, remove or solve".to_owned()));
        }
        if let Some(n) = step.get("held").and_then(Value::as_u64)
            && index.len() as u64 != n
        {
            return Err(at(format!("the index holds {} models", index.len())));
        }
    }
    let survivors: Vec<&Model> = held.values().copied().collect();
    if index.recovery() != batch(&survivors, options) {
        return Err("after the steps the index differs from a batch recovery of what it holds".to_owned());
    }
    Ok(())
}

/// The models of a variant: reordered, with card fields dropped or set.
fn variant_models(models: &[Model], variant: &Value) -> Result<Vec<Model>, String> {
    let mut out: Vec<Model> = models.to_vec();
    if let Some(order) = variant.get("order") {
        out = strings(order)?
            .iter()
            .map(|n| models.iter().find(|m| &m.name == n).cloned().ok_or_else(|| format!("unknown model {n}")))
            .collect::<Result<_, _>>()?;
        if out.len() != models.iter().filter(|m| !m.hidden).count() {
            return Err("`order` must name every model".to_owned());
        }
    }
    for key in variant.get("without").map(strings).transpose()?.unwrap_or_default() {
        for m in &mut out {
            match key.as_str() {
                "created_at" => m.prior.created_at = None,
                "declared_bases" => m.prior.declared_bases.clear(),
                "adapter_base" => m.prior.adapter_base = None,
                other => return Err(format!("cannot drop `{other}`")),
            }
        }
    }
    if let Some(set) = variant.get("set").and_then(Value::as_object) {
        for (name, fields) in set {
            let m = out.iter_mut().find(|m| &m.name == name).ok_or_else(|| format!("unknown model {name}"))?;
            set_prior(&mut m.prior, fields)?;
        }
    }
    Ok(out)
}

fn run(path: &Path) -> Outcome {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    string(&v, "about")?;
    let options = options(v.get("options"))?;
    let models = models(field(&v, "models")?)?;
    if let Some(steps) = v.get("steps") {
        return run_steps(steps, &models, &options);
    }
    let expected = edges(field(&v, "edges")?)?;
    let expected_families = families(field(&v, "families")?)?;
    let visible: Vec<&Model> = models.iter().filter(|m| !m.hidden).collect();
    check_models(&visible, &options, &expected, &expected_families)?;
    for variant in v.get("variants").and_then(Value::as_array).into_iter().flatten() {
        let about = string(variant, "about")?;
        let changed = variant_models(&models, variant)?;
        let visible: Vec<&Model> = changed.iter().filter(|m| !m.hidden).collect();
        let edges_override = variant.get("edges").map(edges).transpose()?;
        let families_override = variant.get("families").map(families).transpose()?;
        check_models(
            &visible,
            &options,
            edges_override.as_deref().unwrap_or(&expected),
            families_override.as_deref().unwrap_or(&expected_families),
        )
        .map_err(|e| format!("variant `{about}`: {e}"))?;
    }
    Ok(())
}

#[test]
fn scenarios() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("the scenarios folder")
        .map(|e| e.expect("a folder entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "expected the scenario files in {}", dir.display());
    let failures: Vec<String> = files
        .iter()
        .filter_map(|f| {
            run(f).err().map(|e| {
                format!("{}: {e}", f.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned()))
            })
        })
        .collect();
    assert!(failures.is_empty(), "{} of {} scenarios failed:\n{}", failures.len(), files.len(), failures.join("\n"));
}
