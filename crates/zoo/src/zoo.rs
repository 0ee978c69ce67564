//! Executes a [`Plan`]: trains, post-processes and writes every model, then writes `ground_truth.json`.
//!
//! Nodes run on a small pool of worker threads, each node as soon as its parents are on disk. A node only ever reads
//! its parents' *stored* files (exactly what a Hub user would download), so its output is a pure function of those
//! files and its own recipe: scheduling order cannot change a byte, and candle runs single-threaded inside each worker
//! (see `main.rs`). Everything the ground truth records about a node comes from the run itself.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use candle_core::Device;
use serde_json::{Value, json};

use crate::model::{Arch, Net, init_weights, to_tensors};
use crate::plan::{Declared, Kind, MergeMethod, Node, Plan};
use crate::repo::{Card, read_model, write_adapter_repo, write_json, write_model_repo};
use crate::tasks::{Task, eval_batches, mixture_eval_batches};
use crate::train::{Data, EvalSet, Mode, Outcome, train};
use crate::weights::{
    Quant, Weights, cast, kurtosis_summary, merge_linear, merge_lora, merge_task_arithmetic, resize_vocab,
};

/// Bumped whenever the generator's output for a given seed changes.
pub const GENERATOR_VERSION: &str = "1.0.0";

/// Held-out evaluation batches per task (rows per batch come from the plan).
const EVAL_BATCHES: usize = 2;

/// What running one node measured.
#[derive(Clone, Debug, Default)]
pub struct NodeResult {
    pub train_curve: Vec<(usize, f64)>,
    pub eval_curve: Vec<(usize, f64)>,
    pub eval_before: Option<f64>,
    pub eval_after: Option<f64>,
    pub kurtosis: Vec<(usize, f64)>,
    pub kurtosis_by_kind: BTreeMap<String, Vec<(usize, f64)>>,
    /// Roots: final held-out loss per pre-training task.
    pub task_final: BTreeMap<String, f64>,
    pub seconds: f64,
}

/// The tasks a node is "about": its pre-training mixture, its fine-tuning task, or (for copies of a model) the
/// parent's tasks.
pub fn own_tasks(plan: &Plan, i: usize) -> Vec<Task> {
    let n = &plan.nodes[i];
    match &n.kind {
        Kind::Root { mixture, .. } => mixture.iter().map(|(t, _)| t.clone()).collect(),
        Kind::Finetune { task, .. } | Kind::Resized { task, .. } | Kind::Adapter { task, .. } => vec![task.clone()],
        Kind::Quantized(_) | Kind::Duplicate => own_tasks(plan, n.parents[0]),
        Kind::Merge(_) => n.parents.iter().flat_map(|&p| own_tasks(plan, p)).collect(),
    }
}

fn eval_set(tasks: &[Task], arch: &Arch, rows: usize) -> EvalSet {
    EvalSet { per_task: tasks.iter().map(|t| eval_batches(t, EVAL_BATCHES, rows, arch.ctx)).collect() }
}

/// The architecture of a checkpoint: the zoo's, with the vocabulary read off the embedding.
fn arch_of(base: &Arch, w: &Weights) -> Result<Arch> {
    let (vocab, _) = w.get("model.embed_tokens.weight").context("no embedding")?.dims2()?;
    Ok(Arch { vocab, ..base.clone() })
}

/// Held-out loss of weights `w` on `tasks`.
fn evaluate(arch: &Arch, w: &Weights, tasks: &[Task], rows: usize) -> Result<f64> {
    let params = to_tensors(w, &Device::Cpu)?;
    let net = Net::new(arch, &params, None)?;
    eval_set(tasks, arch, rows).loss(&net)
}

fn from_outcome(o: &Outcome) -> NodeResult {
    NodeResult {
        train_curve: o.train_curve.clone(),
        eval_curve: o.eval_curve.clone(),
        eval_before: o.eval_curve.first().map(|e| e.1),
        eval_after: o.eval_curve.last().map(|e| e.1),
        kurtosis: o.kurtosis.clone(),
        kurtosis_by_kind: o.kurtosis_by_kind.clone(),
        task_final: BTreeMap::new(),
        seconds: 0.0,
    }
}

fn static_kurtosis(r: &mut NodeResult, w: &Weights) {
    let (total, kinds) = kurtosis_summary(w);
    r.kurtosis = vec![(0, total)];
    r.kurtosis_by_kind = kinds.into_iter().map(|(k, v)| (k, vec![(0, v)])).collect();
}

fn card_for(plan: &Plan, i: usize) -> Card {
    let n = &plan.nodes[i];
    let ids = |v: &[usize]| v.iter().map(|&p| plan.nodes[p].id()).collect::<Vec<_>>();
    let base_model = match &n.declared {
        Declared::Correct => ids(&n.parents),
        Declared::Missing => Vec::new(),
        Declared::Wrong(j) => vec![plan.nodes[*j].id()],
    };
    let relation = if base_model.is_empty() { None } else { n.kind.card_relation().map(str::to_string) };
    let mut tags = vec!["llama".to_string(), "text-generation".to_string(), "modeltree-zoo".to_string()];
    let (library, extra, body) = match &n.kind {
        Kind::Root { mixture, cfg, .. } => (
            "transformers",
            vec![],
            format!(
                "A small Llama-style decoder pre-trained from scratch on a synthetic task mixture ({}) for {} steps.",
                mixture.iter().map(|(t, _)| t.name()).collect::<Vec<_>>().join(", "),
                cfg.steps
            ),
        ),
        Kind::Finetune { task, mode: Mode::Full, cfg } => (
            "transformers",
            vec![],
            format!("Full fine-tune on `{}` ({} steps, lr {}).", task.name(), cfg.steps, cfg.lr),
        ),
        Kind::Finetune { task, mode: Mode::Lora { rank, .. }, cfg } => (
            "transformers",
            vec!["lora".to_string()],
            format!(
                "LoRA (r={rank}) fine-tune on `{}`, merged into the base weights ({} steps).",
                task.name(),
                cfg.steps
            ),
        ),
        Kind::Resized { added, task, .. } => (
            "transformers",
            vec![],
            format!("Vocabulary extended by {added} tokens, then fine-tuned on `{}`.", task.name()),
        ),
        Kind::Adapter { task, rank, .. } => (
            "peft",
            vec!["lora".to_string(), "peft".to_string()],
            format!("A LoRA adapter (r={rank}) trained on `{}`.", task.name()),
        ),
        Kind::Quantized(q @ (Quant::Gptq4 | Quant::Awq4)) => (
            "transformers",
            vec![q.format().to_string(), "4-bit".to_string()],
            format!(
                "Round-to-nearest 4-bit quantisation (group size {}) stored in the {} layout; not the {} solver.",
                crate::int4::GROUP_SIZE,
                if *q == Quant::Gptq4 { "AutoGPTQ" } else { "AutoAWQ GEMM" },
                if *q == Quant::Gptq4 { "GPTQ" } else { "AWQ" },
            ),
        ),
        Kind::Quantized(q) => (
            "transformers",
            vec!["compressed-tensors".to_string(), q.name().to_string()],
            format!("Weight-only {} quantisation, per output channel.", q.name()),
        ),
        Kind::Merge(m) => (
            "transformers",
            vec!["merge".to_string(), "mergekit".to_string()],
            match m {
                MergeMethod::Linear { a } => format!("Linear merge with weights {a} / {}.", 1.0 - a),
                MergeMethod::TaskArithmetic { l1, l2 } => format!("Task-arithmetic merge with λ = {l1}, {l2}."),
            },
        ),
        Kind::Duplicate => ("transformers", vec![], format!("Re-upload in {}.", n.dtype.torch_name())),
    };
    tags.extend(extra);
    Card { license: n.license.clone(), base_model, relation, library: library.to_string(), tags, body }
}

/// Trains or derives node `i` and writes its repo under `out`.
fn build_node(plan: &Plan, i: usize, out: &Path) -> Result<NodeResult> {
    let n = &plan.nodes[i];
    let dir = out.join(&n.org).join(&n.name);
    let parent_dir = |k: usize| out.join(&plan.nodes[n.parents[k]].org).join(&plan.nodes[n.parents[k]].name);
    let load_parent = |k: usize| -> Result<Weights> {
        let (w, _) = read_model(&parent_dir(k)).with_context(|| format!("loading parent of {}", n.id()))?;
        Ok(w)
    };
    let name_or_path = if n.name_or_path_parent { n.parents.first().map(|&p| plan.nodes[p].id()) } else { None };
    let card = card_for(plan, i);
    let tasks = own_tasks(plan, i);
    let write = |arch: &Arch, w: &Weights, quant| {
        write_model_repo(&dir, arch, w, n.dtype, n.sharded, quant, name_or_path.as_deref(), &card, &n.name)
    };
    let mut result = match &n.kind {
        Kind::Root { mixture, init_seed, cfg } => {
            let arch = &plan.arch;
            // Held-out batches from the training mixture itself, so eval and train loss measure the same thing.
            let eval =
                EvalSet { per_task: vec![mixture_eval_batches(mixture, 2 * EVAL_BATCHES, plan.eval_rows, arch.ctx)] };
            let o =
                train(arch, &init_weights(arch, *init_seed), &Data::Mixture(mixture.clone()), &eval, &Mode::Full, cfg)?;
            write(arch, &o.weights, None)?;
            let mut r = from_outcome(&o);
            for t in &tasks {
                r.task_final.insert(t.name(), evaluate(arch, &o.weights, std::slice::from_ref(t), plan.eval_rows)?);
            }
            r
        }
        Kind::Finetune { task, mode, cfg } => {
            let start = load_parent(0)?;
            let arch = arch_of(&plan.arch, &start)?;
            let o =
                train(&arch, &start, &Data::Single(task.clone()), &eval_set(&tasks, &arch, plan.eval_rows), mode, cfg)?;
            write(&arch, &o.weights, None)?;
            from_outcome(&o)
        }
        Kind::Resized { added, task, cfg } => {
            let mut start = load_parent(0)?;
            resize_vocab(&mut start, *added)?;
            let arch = arch_of(&plan.arch, &start)?;
            ensure!(task.vocab_needed() as usize <= arch.vocab, "task needs a larger vocabulary");
            let o = train(
                &arch,
                &start,
                &Data::Single(task.clone()),
                &eval_set(&tasks, &arch, plan.eval_rows),
                &Mode::Full,
                cfg,
            )?;
            write(&arch, &o.weights, None)?;
            from_outcome(&o)
        }
        Kind::Adapter { task, rank, alpha, targets, cfg } => {
            let start = load_parent(0)?;
            let arch = arch_of(&plan.arch, &start)?;
            let mode = Mode::Lora { rank: *rank, alpha: *alpha, targets: targets.clone() };
            let o = train(
                &arch,
                &start,
                &Data::Single(task.clone()),
                &eval_set(&tasks, &arch, plan.eval_rows),
                &mode,
                cfg,
            )?;
            let factors = o.lora.as_ref().context("LoRA run without factors")?;
            let base = plan.nodes[n.parents[0]].id();
            write_adapter_repo(&dir, factors, *rank, *alpha, targets, &base, n.dtype, &card, &n.name)?;
            let mut r = from_outcome(&o);
            // "After" is what a user gets: the base as stored plus the adapter as stored.
            let (stored, scale) = crate::repo::read_adapter(&dir)?;
            let mut merged = start.clone();
            merge_lora(&mut merged, &stored, scale)?;
            r.eval_after = Some(evaluate(&arch, &merged, &tasks, plan.eval_rows)?);
            r
        }
        Kind::Quantized(q) => {
            let w = load_parent(0)?;
            let arch = arch_of(&plan.arch, &w)?;
            write(&arch, &w, Some(*q))?;
            let (back, _) = read_model(&dir)?;
            let mut r = NodeResult {
                eval_before: Some(evaluate(&arch, &w, &tasks, plan.eval_rows)?),
                eval_after: Some(evaluate(&arch, &back, &tasks, plan.eval_rows)?),
                ..NodeResult::default()
            };
            static_kurtosis(&mut r, &back);
            r
        }
        Kind::Duplicate => {
            let w = load_parent(0)?;
            let arch = arch_of(&plan.arch, &w)?;
            write(&arch, &w, None)?;
            let (back, _) = read_model(&dir)?;
            ensure!(back == cast(&w, n.dtype), "the re-upload does not hold the parent's values cast to {:?}", n.dtype);
            let mut r = NodeResult {
                eval_before: Some(evaluate(&arch, &w, &tasks, plan.eval_rows)?),
                eval_after: Some(evaluate(&arch, &back, &tasks, plan.eval_rows)?),
                ..NodeResult::default()
            };
            static_kurtosis(&mut r, &back);
            r
        }
        Kind::Merge(method) => {
            let p1 = load_parent(0)?;
            let p2 = load_parent(1)?;
            let merged = match method {
                MergeMethod::Linear { a } => merge_linear(&p1, &p2, *a)?,
                MergeMethod::TaskArithmetic { l1, l2 } => {
                    // The base is the parents' common parent, loaded as stored.
                    let gp =
                        plan.nodes[n.parents[0]].parents.first().copied().context("task arithmetic needs a base")?;
                    ensure!(plan.nodes[n.parents[1]].parents.first() == Some(&gp), "merge parents are not siblings");
                    let g = &plan.nodes[gp];
                    let (base, _) = read_model(&out.join(&g.org).join(&g.name))?;
                    merge_task_arithmetic(&base, &p1, &p2, *l1, *l2)?
                }
            };
            let arch = arch_of(&plan.arch, &merged)?;
            write(&arch, &merged, None)?;
            let (back, _) = read_model(&dir)?;
            let mut r = NodeResult::default();
            static_kurtosis(&mut r, &back);
            r
        }
    };
    result.seconds = 0.0;
    Ok(result)
}

/// Where nodes run.
#[derive(Clone, Debug)]
#[cfg_attr(not(test), allow(dead_code))]
pub enum Runner {
    /// In this process (tests; candle then shares one rayon pool between workers).
    InProcess,
    /// One child process per node (`exe node …`), so every model trains with its own single-threaded candle.
    Subprocess { exe: PathBuf },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Pending,
    Running,
    Done,
}

type State = (Vec<Status>, Vec<Option<NodeResult>>, Option<anyhow::Error>);

/// Directory for per-node result files while a zoo is being generated; removed at the end.
const WORK_DIR: &str = ".zoo-work";

/// Runs the whole plan with `jobs` workers and writes `ground_truth.json`; returns per-node results.
///
/// # Errors
/// When the output directory is not empty or any node fails.
pub fn generate(plan: &Plan, out: &Path, jobs: usize, runner: &Runner) -> Result<Vec<NodeResult>> {
    if out.exists() {
        let mut entries = std::fs::read_dir(out).with_context(|| format!("reading {}", out.display()))?;
        ensure!(entries.next().is_none(), "output directory {} is not empty; remove it first", out.display());
    }
    std::fs::create_dir_all(out.join(WORK_DIR))?;
    let started = Instant::now();
    let n = plan.nodes.len();
    let priority = plan.critical_path();
    let state = Mutex::new((vec![Status::Pending; n], vec![None::<NodeResult>; n], None::<anyhow::Error>));
    let cv = Condvar::new();
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| worker(plan, out, runner, &priority, &state, &cv, started));
        }
    });
    let (_, results, err) = state.into_inner().map_err(|_| anyhow::anyhow!("a worker panicked"))?;
    if let Some(e) = err {
        return Err(e);
    }
    let results: Vec<NodeResult> = results.into_iter().map(|r| r.context("node never ran")).collect::<Result<_>>()?;
    std::fs::remove_dir_all(out.join(WORK_DIR))?;
    let seconds = started.elapsed().as_secs_f64();
    write_json(&out.join("ground_truth.json"), &ground_truth(plan, &results, seconds))?;
    Ok(results)
}

/// Builds node `index` of the plan and writes its result file (the `node` subcommand).
///
/// # Errors
/// When the node fails.
pub fn run_node(plan: &Plan, out: &Path, index: usize, result: &Path) -> Result<()> {
    ensure!(index < plan.nodes.len(), "node {index} out of range");
    let r = build_node(plan, index, out)?;
    write_json(result, &result_to_json(&r))
}

fn run_one(plan: &Plan, out: &Path, runner: &Runner, i: usize) -> Result<NodeResult> {
    match runner {
        Runner::InProcess => build_node(plan, i, out),
        Runner::Subprocess { exe } => {
            let result = out.join(WORK_DIR).join(format!("{i}.json"));
            let status = std::process::Command::new(exe)
                .arg("node")
                .args(["--size", plan.size.name()])
                .args(["--seed", &plan.seed.to_string()])
                .arg("--out")
                .arg(out)
                .args(["--index", &i.to_string()])
                .arg("--result")
                .arg(&result)
                .status()
                .context("starting a node process")?;
            ensure!(status.success(), "node process exited with {status}");
            let v: Value = serde_json::from_slice(&std::fs::read(&result)?).context("parsing a node result")?;
            result_from_json(&v)
        }
    }
}

fn worker(
    plan: &Plan,
    out: &Path,
    runner: &Runner,
    priority: &[usize],
    state: &Mutex<State>,
    cv: &Condvar,
    started: Instant,
) {
    loop {
        let next = {
            let Ok(mut g) = state.lock() else { return };
            loop {
                if g.2.is_some() || g.0.iter().all(|s| *s == Status::Done) {
                    return;
                }
                // Among ready nodes, the one heading the longest remaining chain first (ties: plan order).
                let ready = (0..plan.nodes.len())
                    .filter(|&i| {
                        g.0[i] == Status::Pending && plan.nodes[i].parents.iter().all(|&p| g.0[p] == Status::Done)
                    })
                    .max_by_key(|&i| (priority[i], std::cmp::Reverse(i)));
                match ready {
                    Some(i) => {
                        g.0[i] = Status::Running;
                        break i;
                    }
                    None => match cv.wait(g) {
                        Ok(guard) => g = guard,
                        Err(_) => return,
                    },
                }
            }
        };
        let t0 = Instant::now();
        let res = run_one(plan, out, runner, next);
        let Ok(mut g) = state.lock() else { return };
        match res {
            Ok(mut r) => {
                r.seconds = t0.elapsed().as_secs_f64();
                let node = &plan.nodes[next];
                eprintln!(
                    "[{:>6.1}s] {:>3}/{} {:<9} {:<58} {:>5.1}s{}",
                    started.elapsed().as_secs_f64(),
                    g.0.iter().filter(|s| **s == Status::Done).count() + 1,
                    plan.nodes.len(),
                    node.kind.relation(),
                    node.id(),
                    r.seconds,
                    match (r.eval_before, r.eval_after) {
                        (Some(b), Some(a)) => format!("  eval {b:.3} -> {a:.3}"),
                        _ => String::new(),
                    }
                );
                g.0[next] = Status::Done;
                g.1[next] = Some(r);
            }
            Err(e) => {
                g.2 = Some(e.context(format!("building {}", plan.nodes[next].id())));
                g.0[next] = Status::Done;
            }
        }
        cv.notify_all();
    }
}

fn result_to_json(r: &NodeResult) -> Value {
    let raw = |v: &[(usize, f64)]| Value::Array(v.iter().map(|(s, x)| json!([s, x])).collect());
    json!({
        "train": raw(&r.train_curve),
        "eval": raw(&r.eval_curve),
        "before": r.eval_before,
        "after": r.eval_after,
        "kurtosis": raw(&r.kurtosis),
        "kurtosis_by_kind": r.kurtosis_by_kind.iter().map(|(k, v)| (k.clone(), raw(v))).collect::<serde_json::Map<_, _>>(),
        "task_final": r.task_final,
    })
}

fn result_from_json(v: &Value) -> Result<NodeResult> {
    let raw = |v: &Value| -> Result<Vec<(usize, f64)>> {
        v.as_array()
            .context("expected an array")?
            .iter()
            .map(|p| {
                let s = p.get(0).and_then(Value::as_u64).context("step")?;
                let x = p.get(1).and_then(Value::as_f64).context("value")?;
                Ok((usize::try_from(s)?, x))
            })
            .collect()
    };
    let kinds = v["kurtosis_by_kind"].as_object().context("kurtosis_by_kind")?;
    let finals = v["task_final"].as_object().context("task_final")?;
    Ok(NodeResult {
        train_curve: raw(&v["train"])?,
        eval_curve: raw(&v["eval"])?,
        eval_before: v["before"].as_f64(),
        eval_after: v["after"].as_f64(),
        kurtosis: raw(&v["kurtosis"])?,
        kurtosis_by_kind: kinds.iter().map(|(k, x)| Ok((k.clone(), raw(x)?))).collect::<Result<_>>()?,
        task_final: finals
            .iter()
            .map(|(k, x)| Ok((k.clone(), x.as_f64().context("task loss")?)))
            .collect::<Result<_>>()?,
        seconds: 0.0,
    })
}

/// Rounds to 6 significant digits so the JSON stays compact and readable.
fn r6(x: f64) -> Value {
    if !x.is_finite() || x == 0.0 {
        return json!(x);
    }
    let mag = 10f64.powi(5 - x.abs().log10().floor() as i32);
    json!((x * mag).round() / mag)
}

fn pairs(v: &[(usize, f64)]) -> Value {
    Value::Array(v.iter().map(|(s, l)| json!([s, r6(*l)])).collect())
}

/// `created_at` of node `i`: parents always earlier (nodes are in creation order), deterministic for a seed.
pub fn created_at(plan: &Plan, i: usize) -> String {
    // 2024-03-01T00:00:00Z, then one upload every five hours with up to four hours of seeded jitter.
    let base = 1_709_251_200i64;
    let jitter = (crate::tasks::mix_seed(plan.seed, 0xC0DE + i as u64) % 240) as i64;
    let t = base + i as i64 * 5 * 3600 + jitter * 60;
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

fn recipe(plan: &Plan, node: &Node) -> Value {
    let mut r = json!({
        "dtype": node.dtype.torch_name(),
        "sharded": node.sharded,
        "quant": Value::Null,
    });
    let train_fields = |r: &mut Value, cfg: &crate::train::TrainConfig| {
        r["lr"] = json!(cfg.lr);
        r["steps"] = json!(cfg.steps);
        r["batch"] = json!(cfg.batch);
        r["weight_decay"] = json!(cfg.weight_decay);
        r["warmup_frac"] = json!(cfg.warmup_frac);
        r["grad_clip"] = json!(cfg.clip);
        r["data_seed"] = json!(cfg.seed);
    };
    match &node.kind {
        Kind::Root { mixture, init_seed, cfg } => {
            train_fields(&mut r, cfg);
            r["task"] = json!("pretrain-mixture");
            r["mixture"] = Value::Array(mixture.iter().map(|(t, w)| json!([t.name(), r6(*w)])).collect());
            r["init_seed"] = json!(init_seed);
            let look_alike = plan.nodes.iter().any(|o| {
                !std::ptr::eq(o, node)
                    && matches!(&o.kind, Kind::Root { mixture: m, cfg: c, .. } if m == mixture && c.seed == cfg.seed)
            });
            r["same_data_as_another_root"] = json!(look_alike);
        }
        Kind::Finetune { task, mode, cfg } => {
            train_fields(&mut r, cfg);
            r["task"] = json!(task.name());
            if let Mode::Lora { rank, alpha, targets } = mode {
                r["rank"] = json!(rank);
                r["alpha"] = json!(alpha);
                r["target_modules"] = json!(targets);
                r["merged"] = json!(true);
            }
        }
        Kind::Resized { added, task, cfg } => {
            train_fields(&mut r, cfg);
            r["task"] = json!(task.name());
            r["added_tokens"] = json!(added);
        }
        Kind::Adapter { task, rank, alpha, targets, cfg } => {
            train_fields(&mut r, cfg);
            r["task"] = json!(task.name());
            r["rank"] = json!(rank);
            r["alpha"] = json!(alpha);
            r["target_modules"] = json!(targets);
            r["merged"] = json!(false);
        }
        Kind::Quantized(q) => r["quant"] = json!(q.name()),
        Kind::Merge(MergeMethod::Linear { a }) => r["merge"] = json!({"method": "linear", "a": r6(f64::from(*a))}),
        Kind::Merge(MergeMethod::TaskArithmetic { l1, l2 }) => {
            r["merge"] =
                json!({"method": "task_arithmetic", "lambda1": r6(f64::from(*l1)), "lambda2": r6(f64::from(*l2))})
        }
        Kind::Duplicate => {}
    }
    r
}

/// The ground truth document.
pub fn ground_truth(plan: &Plan, results: &[NodeResult], seconds: f64) -> Value {
    let a = &plan.arch;
    let models: Vec<Value> = plan
        .nodes
        .iter()
        .enumerate()
        .zip(results)
        .map(|((i, node), res)| {
            let declared: Vec<String> = match &node.declared {
                Declared::Correct => node.parents.iter().map(|&p| plan.nodes[p].id()).collect(),
                Declared::Missing => Vec::new(),
                Declared::Wrong(j) => vec![plan.nodes[*j].id()],
            };
            let declared_correct = match &node.declared {
                Declared::Missing => Value::Null,
                Declared::Correct => json!(true),
                Declared::Wrong(_) => json!(false),
            };
            let opt = |x: Option<f64>| x.map_or(Value::Null, r6);
            json!({
                "model": node.id(),
                "parents": node.parents.iter().map(|&p| plan.nodes[p].id()).collect::<Vec<_>>(),
                "relation": node.kind.relation(),
                "license": node.license,
                "declared_base_model": declared,
                "declared_correct": declared_correct,
                "license_conflict": node.license_conflict,
                "created_at": created_at(plan, i),
                "recipe": recipe(plan, node),
                "curves": {
                    "train": pairs(&res.train_curve),
                    "eval": pairs(&res.eval_curve),
                    "task_eval_before": opt(res.eval_before),
                    "task_eval_after": opt(res.eval_after),
                    "eval_tasks": own_tasks(plan, i).iter().map(Task::name).collect::<Vec<_>>(),
                    "task_eval_final": res.task_final.iter().map(|(k, v)| (k.clone(), r6(*v))).collect::<serde_json::Map<_, _>>(),
                },
                "kurtosis": pairs(&res.kurtosis),
                "kurtosis_by_kind": res.kurtosis_by_kind.iter().map(|(k, v)| (k.clone(), pairs(v))).collect::<serde_json::Map<_, _>>(),
            })
        })
        .collect();
    json!({
        "zoo": {
            "size": plan.size.name(),
            "seed": plan.seed,
            "generator_version": GENERATOR_VERSION,
            "arch": {
                "model_type": "llama",
                "vocab_size": a.vocab,
                "hidden_size": a.hidden,
                "num_hidden_layers": a.layers,
                "num_attention_heads": a.heads,
                "intermediate_size": a.intermediate,
                "max_position_embeddings": a.ctx,
                "parameters": a.parameter_count(),
            },
            "seconds": (seconds * 10.0).round() / 10.0,
        },
        "models": models,
    })
}

/// Checks the invariants every ground truth must satisfy.
///
/// # Errors
/// With the first violated invariant.
pub fn check_ground_truth(gt: &Value) -> Result<()> {
    let models = gt["models"].as_array().context("no models")?;
    let mut seen: BTreeMap<String, (String, String)> = BTreeMap::new();
    for m in models {
        let id = m["model"].as_str().context("model without id")?.to_string();
        let created = m["created_at"].as_str().context("no created_at")?.to_string();
        let relation = m["relation"].as_str().context("no relation")?.to_string();
        let parents = m["parents"].as_array().context("no parents")?;
        ensure!((relation == "root") == parents.is_empty(), "{id}: relation {relation} with {} parents", parents.len());
        if relation == "merge" {
            ensure!(parents.len() == 2, "{id}: a merge needs two parents");
        }
        for p in parents {
            let p = p.as_str().context("parent id")?;
            let Some((pc, _)) = seen.get(p) else { bail!("{id}: parent {p} missing or listed later") };
            ensure!(*pc < created, "{id} created at {created}, not after its parent {p} ({pc})");
        }
        let declared = m["declared_base_model"].as_array().context("no declared_base_model")?;
        match m["declared_correct"].as_bool() {
            None => ensure!(declared.is_empty(), "{id}: declared_correct null with a declaration"),
            Some(c) => {
                ensure!(!declared.is_empty(), "{id}: declared_correct set without a declaration");
                let same = declared.iter().map(|d| d.as_str()).collect::<Vec<_>>()
                    == parents.iter().map(|p| p.as_str()).collect::<Vec<_>>();
                ensure!(c == same, "{id}: declared_correct {c} but declaration {declared:?} vs parents {parents:?}");
            }
        }
        ensure!(seen.insert(id.clone(), (created, relation)).is_none(), "{id} listed twice");
    }
    for rel in ["root", "finetune", "lora", "adapter", "quantized", "merge", "duplicate"] {
        ensure!(seen.values().any(|(_, r)| r == rel), "no {rel} model in the zoo");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Size, build};

    fn fake_results(plan: &Plan) -> Vec<NodeResult> {
        vec![NodeResult::default(); plan.nodes.len()]
    }

    #[test]
    fn plans_satisfy_ground_truth_invariants() {
        for (size, lo, hi) in [(Size::Small, 20, 40), (Size::Bench, 100, 200), (Size::Wide, 20, 40)] {
            let plan = build(size, 7);
            assert!((lo..=hi).contains(&plan.nodes.len()), "{size:?}: {} models", plan.nodes.len());
            let gt = ground_truth(&plan, &fake_results(&plan), 0.0);
            check_ground_truth(&gt).expect("invariants");
            let models = gt["models"].as_array().expect("models");
            let count = |key: &str, val: Value| models.iter().filter(|m| m[key] == val).count();
            assert!(count("license_conflict", json!(true)) >= 2);
            assert!(count("declared_correct", json!(false)) >= 2);
            assert!(count("declared_correct", Value::Null) >= 2);
            let roots = count("relation", json!("root"));
            assert!(roots >= if size == Size::Bench { 5 } else { 3 });
            let quants: Vec<&Value> = models.iter().map(|m| &m["recipe"]["quant"]).filter(|q| !q.is_null()).collect();
            assert!(quants.contains(&&json!("int8")) && quants.contains(&&json!("fp8")));
            let merges: Vec<&Value> =
                models.iter().map(|m| &m["recipe"]["merge"]["method"]).filter(|q| !q.is_null()).collect();
            assert!(merges.contains(&&json!("linear")) && merges.contains(&&json!("task_arithmetic")));
            assert!(models.iter().any(|m| m["recipe"]["added_tokens"] == json!(8)));
            assert!(models.iter().any(|m| m["recipe"]["sharded"] == json!(true)));
            let dtypes: Vec<&Value> = models.iter().map(|m| &m["recipe"]["dtype"]).collect();
            for d in ["bfloat16", "float16", "float32"] {
                assert!(dtypes.contains(&&json!(d)), "{size:?} has no {d} model");
            }
            // Duplicates of bf16 models are f32 and vice versa.
            for (i, n) in plan.nodes.iter().enumerate().filter(|(_, n)| n.kind == Kind::Duplicate) {
                assert_ne!(n.dtype, plan.nodes[n.parents[0]].dtype, "duplicate {i} keeps its dtype");
            }
            let mut names: Vec<String> = plan.nodes.iter().map(Node::id).collect();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), plan.nodes.len(), "repo ids are unique");
            assert_eq!(build(size, 7).nodes, plan.nodes, "plans are deterministic");
        }
    }

    #[test]
    fn wide_matrices_have_rows_for_partial_reads() {
        // The row sampler splits a tensor into at most 64 blocks of at least 16 rows (signature::layout): 512 rows
        // give 32 blocks, so a partial read can take 1/32 of every matrix, and ≥ 1024 rows give the full 64.
        let arch = crate::plan::arch_for(Size::Wide);
        let matrices: Vec<(String, Vec<usize>)> =
            arch.parameter_shapes().into_iter().filter(|(_, s)| s.len() == 2).collect();
        assert_eq!(matrices.len(), 2 + 7 * arch.layers);
        for (name, shape) in &matrices {
            assert!(shape[0] >= 512, "{name}: {shape:?}");
        }
        let in_matrices: usize = matrices.iter().map(|(_, s)| s[0] * s[1]).sum();
        assert!(in_matrices * 10 >= arch.parameter_count() * 9, "matrices hold nearly all parameters");
    }

    /// Every file of a zoo except the wall-clock line of the ground truth.
    fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
            for e in std::fs::read_dir(dir).expect("read_dir") {
                let p = e.expect("entry").path();
                if p.is_dir() {
                    walk(base, &p, out);
                } else {
                    let rel = p.strip_prefix(base).expect("prefix").display().to_string();
                    let mut bytes = std::fs::read(&p).expect("read");
                    if rel == "ground_truth.json" {
                        let text = String::from_utf8(bytes).expect("utf8");
                        bytes = text
                            .lines()
                            .filter(|l| !l.contains("\"seconds\""))
                            .collect::<Vec<_>>()
                            .join("\n")
                            .into_bytes();
                    }
                    out.insert(rel, bytes);
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(dir, dir, &mut out);
        out
    }

    #[test]
    fn tiny_zoo_end_to_end_is_complete_readable_and_deterministic() {
        let plan = build(Size::Tiny, 3);
        let a = tempfile::tempdir().expect("tempdir");
        let b = tempfile::tempdir().expect("tempdir");
        let results = generate(&plan, a.path(), 2, &Runner::InProcess).expect("generate");
        assert_eq!(results.len(), plan.nodes.len());
        let gt: Value =
            serde_json::from_slice(&std::fs::read(a.path().join("ground_truth.json")).expect("gt")).expect("json");
        check_ground_truth(&gt).expect("invariants");
        for (node, m) in plan.nodes.iter().zip(gt["models"].as_array().expect("models")) {
            let dir = a.path().join(node.id());
            assert!(dir.join("README.md").exists(), "{}", node.id());
            if matches!(node.kind, Kind::Adapter { .. }) {
                assert!(!dir.join("config.json").exists());
                crate::repo::read_adapter(&dir).expect("adapter");
            } else {
                assert!(dir.join("tokenizer.json").exists());
                read_model(&dir).expect("model");
            }
            if node.kind.relation() == "root" || m["recipe"]["steps"].is_u64() {
                assert!(!m["kurtosis"].as_array().expect("kurtosis").is_empty());
                assert!(m["curves"]["task_eval_before"].is_f64(), "{}", node.id());
            }
        }
        let text = crate::report::report(a.path()).expect("report");
        for needle in ["pre-training", "parent-child lora", "siblings", "unrelated (other tree)", "improved"] {
            assert!(text.contains(needle), "report lacks {needle:?}:\n{text}");
        }
        // One worker instead of two: a different schedule, the same bytes.
        generate(&plan, b.path(), 1, &Runner::InProcess).expect("generate again");
        assert_eq!(snapshot(a.path()), snapshot(b.path()));
        assert!(generate(&plan, a.path(), 1, &Runner::InProcess).is_err(), "refuses a non-empty directory");
    }

    #[test]
    fn invariant_checker_rejects_broken_truths() {
        let plan = build(Size::Small, 1);
        let gt = ground_truth(&plan, &fake_results(&plan), 0.0);
        let mut bad = gt.clone();
        bad["models"][5]["parents"] = json!(["nobody/none"]);
        assert!(check_ground_truth(&bad).is_err());
        let mut bad = gt.clone();
        let child = plan.nodes.iter().position(|n| !n.parents.is_empty()).expect("a child");
        bad["models"][child]["created_at"] = json!("2000-01-01T00:00:00Z");
        assert!(check_ground_truth(&bad).is_err(), "a child older than its parent");
        let mut reordered = gt.clone();
        reordered["models"].as_array_mut().expect("models").swap(0, 1);
        assert!(check_ground_truth(&reordered).is_err(), "a child listed before its parent");
        let mut bad = gt;
        for m in bad["models"].as_array_mut().expect("models") {
            if m["relation"] == "duplicate" {
                m["relation"] = json!("finetune");
            }
        }
        assert!(check_ground_truth(&bad).is_err(), "a missing relation type");
    }
}
