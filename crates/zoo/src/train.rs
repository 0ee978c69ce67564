//! The training loop: AdamW with linear warm-up and cosine decay, weight decay on matrices only, global gradient
//! clipping, held-out evaluation and kurtosis logging.
//!
//! [`train`] takes the starting weights (a fresh init or a parent loaded from its stored files), a data source and a
//! [`Mode`] (full fine-tune or LoRA), and returns the trained weights together with everything the ground truth
//! records about the run: train/eval curves, the own-task evaluation before and after, and the summed excess kurtosis
//! of the block matrices at a handful of steps. Everything runs on one CPU thread per model so the result is a pure
//! function of the inputs.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::model::{Arch, LoraVars, Net, to_mat, to_tensors, uniform_vec};
use crate::tasks::{Batch, Mixture, Sampler, Task};
use crate::weights::{LoraFactors, Weights, kurtosis_summary, merge_lora};

/// Optimisation hyper-parameters of one run.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    pub steps: usize,
    pub lr: f64,
    pub batch: usize,
    pub weight_decay: f64,
    pub warmup_frac: f64,
    /// The cosine schedule ends at `lr · min_lr_frac`.
    pub min_lr_frac: f64,
    pub clip: f64,
    /// Evaluate every this many steps (and at the start and the end).
    pub eval_every: usize,
    /// Seed of the data stream and of LoRA's `A` initialisation.
    pub seed: u64,
}

/// How the weights are trained.
#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    /// Every tensor is trainable.
    Full,
    /// Frozen base plus trainable `B·A` on the listed projection kinds (`q_proj`, `v_proj`, …).
    Lora { rank: usize, alpha: f64, targets: Vec<String> },
}

/// Training data: a weighted mixture (pre-training) or a single task (fine-tuning).
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    Mixture(Vec<(Task, f64)>),
    Single(Task),
}

/// Everything a run produces.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Final weights (LoRA factors already merged for [`Mode::Lora`]).
    pub weights: Weights,
    /// The trained LoRA factors (unmerged), for adapter repos.
    pub lora: Option<BTreeMap<String, LoraFactors>>,
    /// `(step, mean training loss over the preceding window)`.
    pub train_curve: Vec<(usize, f64)>,
    /// `(step, held-out loss)`, starting at step 0.
    pub eval_curve: Vec<(usize, f64)>,
    /// `(step, summed excess kurtosis of all block matrices)`.
    pub kurtosis: Vec<(usize, f64)>,
    /// Per projection kind: `(step, summed excess kurtosis)`.
    pub kurtosis_by_kind: BTreeMap<String, Vec<(usize, f64)>>,
}

/// Held-out batches to evaluate on, averaged per task.
#[derive(Clone, Debug)]
pub struct EvalSet {
    pub per_task: Vec<Vec<Batch>>,
}

impl EvalSet {
    /// Mean loss of `net` over tasks (each task's batches averaged first).
    ///
    /// # Errors
    /// When the forward pass fails.
    pub fn loss(&self, net: &Net) -> Result<f64> {
        let mut total = 0.0;
        for batches in &self.per_task {
            let mut s = 0.0;
            for b in batches {
                s += f64::from(net.loss(b)?.to_scalar::<f32>()?);
            }
            total += s / batches.len().max(1) as f64;
        }
        Ok(total / self.per_task.len().max(1) as f64)
    }
}

/// The learning rate at `step`: linear warm-up then cosine decay to `lr · min_lr_frac`.
pub fn schedule(cfg: &TrainConfig, step: usize) -> f64 {
    let warm = ((cfg.steps as f64 * cfg.warmup_frac).ceil() as usize).max(1);
    if step < warm {
        return cfg.lr * (step + 1) as f64 / warm as f64;
    }
    let progress = (step - warm) as f64 / (cfg.steps.saturating_sub(warm).max(1)) as f64;
    let min = cfg.lr * cfg.min_lr_frac;
    min + 0.5 * (cfg.lr - min) * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
}

/// Steps at which kurtosis is logged: start, a few fractions, end.
fn kurtosis_steps(steps: usize) -> Vec<usize> {
    let mut s: Vec<usize> =
        [0.0, 0.1, 0.25, 0.5, 0.75, 1.0].iter().map(|f| (f * steps as f64).round() as usize).collect();
    s.dedup();
    s
}

/// Trains `start` on `data` and evaluates on `eval`.
///
/// # Errors
/// When candle fails or a parameter is missing.
pub fn train(
    arch: &Arch,
    start: &Weights,
    data: &Data,
    eval: &EvalSet,
    mode: &Mode,
    cfg: &TrainConfig,
) -> Result<Outcome> {
    let dev = Device::Cpu;
    // Full fine-tuning: every tensor is a Var. LoRA: the base stays plain tensors and only the factors are Vars.
    let mut vars: BTreeMap<String, Var> = BTreeMap::new();
    let params: BTreeMap<String, Tensor> = match mode {
        Mode::Full => {
            for (k, m) in start {
                vars.insert(k.clone(), Var::from_tensor(&Tensor::from_vec(m.data.clone(), m.shape.as_slice(), &dev)?)?);
            }
            vars.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect()
        }
        Mode::Lora { .. } => to_tensors(start, &dev)?,
    };
    let lora = match mode {
        Mode::Full => None,
        Mode::Lora { rank, alpha, targets } => Some(init_lora(start, *rank, *alpha, targets, cfg.seed)?),
    };
    let net = Net::new(arch, &params, lora.as_ref())?;

    // Matrices decay, norms do not (the usual AdamW grouping).
    let trainable: Vec<(String, Var)> = match &lora {
        None => vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        Some(l) => l
            .factors
            .iter()
            .flat_map(|(k, (a, b))| [(format!("{k}.lora_A"), a.clone()), (format!("{k}.lora_B"), b.clone())])
            .collect(),
    };
    let (decay, no_decay): (Vec<_>, Vec<_>) = trainable.iter().partition(|(_, v)| v.as_tensor().rank() >= 2);
    let adam = |vs: Vec<&(String, Var)>, wd: f64| {
        AdamW::new(
            vs.into_iter().map(|(_, v)| v.clone()).collect(),
            ParamsAdamW { lr: cfg.lr, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: wd },
        )
    };
    let mut opt_decay = adam(decay, cfg.weight_decay)?;
    let mut opt_plain = adam(no_decay, 0.0)?;

    let mut source: Box<dyn FnMut(usize) -> Batch> = match data {
        Data::Mixture(tasks) => {
            let mut m = Mixture::new(tasks, cfg.seed);
            Box::new(move |rows| m.batch(rows, arch.ctx))
        }
        Data::Single(task) => {
            let mut s = Sampler::new(task, cfg.seed);
            Box::new(move |rows| s.batch(rows, arch.ctx))
        }
    };

    let kurt_at = kurtosis_steps(cfg.steps);
    let mut out = Outcome {
        weights: Weights::new(),
        lora: None,
        train_curve: Vec::new(),
        eval_curve: Vec::new(),
        kurtosis: Vec::new(),
        kurtosis_by_kind: BTreeMap::new(),
    };
    let mut window = (0.0f64, 0usize);
    for step in 0..=cfg.steps {
        if step % cfg.eval_every == 0 || step == cfg.steps {
            out.eval_curve.push((step, eval.loss(&net)?));
            if window.1 > 0 {
                out.train_curve.push((step, window.0 / window.1 as f64));
                window = (0.0, 0);
            }
        }
        if kurt_at.contains(&step) {
            let (total, kinds) = kurtosis_summary(&current_weights(start, &vars, lora.as_ref())?);
            out.kurtosis.push((step, total));
            for (k, v) in kinds {
                out.kurtosis_by_kind.entry(k).or_default().push((step, v));
            }
        }
        if step == cfg.steps {
            break;
        }
        let lr = schedule(cfg, step);
        opt_decay.set_learning_rate(lr);
        opt_plain.set_learning_rate(lr);
        let batch = source(cfg.batch);
        let loss = net.loss(&batch)?;
        window.0 += f64::from(loss.to_scalar::<f32>()?);
        window.1 += 1;
        let mut grads = loss.backward()?;
        clip_gradients(&mut grads, &trainable, cfg.clip)?;
        opt_decay.step(&grads)?;
        opt_plain.step(&grads)?;
    }
    out.weights = current_weights(start, &vars, lora.as_ref())?;
    out.lora = match &lora {
        None => None,
        Some(l) => Some(
            l.factors
                .iter()
                .map(|(k, (a, b))| {
                    Ok((k.clone(), LoraFactors { a: to_mat(a.as_tensor())?, b: to_mat(b.as_tensor())? }))
                })
                .collect::<Result<_>>()?,
        ),
    };
    Ok(out)
}

/// Scales all gradients down together when their global L2 norm exceeds `max_norm`.
fn clip_gradients(grads: &mut candle_core::backprop::GradStore, vars: &[(String, Var)], max_norm: f64) -> Result<()> {
    let mut sq = 0.0f64;
    for (_, v) in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            sq += f64::from(g.sqr()?.sum_all()?.to_scalar::<f32>()?);
        }
    }
    let norm = sq.sqrt();
    if norm > max_norm && norm.is_finite() {
        let factor = max_norm / norm;
        for (_, v) in vars {
            if let Some(g) = grads.remove(v.as_tensor()) {
                grads.insert(v.as_tensor(), (g * factor)?);
            }
        }
    }
    Ok(())
}

/// LoRA factors as PEFT initialises them: `A` uniform with bound `1/sqrt(in)` (Kaiming-uniform with a = √5), `B` zero.
fn init_lora(start: &Weights, rank: usize, alpha: f64, targets: &[String], seed: u64) -> Result<LoraVars> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x4C6F_5241);
    let mut factors = BTreeMap::new();
    let dev = Device::Cpu;
    for (name, m) in start.iter().filter(|(n, _)| crate::weights::is_block_matrix(n)) {
        let Some(kind) = crate::weights::layer_kind(name) else { continue };
        if !targets.iter().any(|t| t == kind) {
            continue;
        }
        let (out, inp) = m.dims2()?;
        let a = uniform_vec(&mut rng, rank * inp, 1.0 / (inp as f32).sqrt());
        let a = Var::from_tensor(&Tensor::from_vec(a, (rank, inp), &dev)?)?;
        let b = Var::from_tensor(&Tensor::zeros((out, rank), candle_core::DType::F32, &dev)?)?;
        factors.insert(name.clone(), (a, b));
    }
    anyhow::ensure!(!factors.is_empty(), "LoRA targets {targets:?} match no projection");
    Ok(LoraVars { factors, scale: alpha / rank as f64 })
}

/// The weights the model currently computes with: the Vars for full training, base + merged factors for LoRA.
fn current_weights(start: &Weights, vars: &BTreeMap<String, Var>, lora: Option<&LoraVars>) -> Result<Weights> {
    match lora {
        None => vars.iter().map(|(k, v)| Ok((k.clone(), to_mat(v.as_tensor())?))).collect(),
        Some(l) => {
            let mut w = start.clone();
            let factors: BTreeMap<String, LoraFactors> = l
                .factors
                .iter()
                .map(|(k, (a, b))| {
                    Ok((k.clone(), LoraFactors { a: to_mat(a.as_tensor())?, b: to_mat(b.as_tensor())? }))
                })
                .collect::<Result<_>>()?;
            merge_lora(&mut w, &factors, l.scale as f32).context("merging LoRA factors")?;
            Ok(w)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::init_weights;
    use crate::tasks::eval_batches;

    fn arch() -> Arch {
        Arch { vocab: 128, hidden: 16, layers: 1, heads: 2, intermediate: 32, ctx: 16, rms_eps: 1e-5, rope_theta: 1e4 }
    }

    fn cfg(steps: usize, lr: f64) -> TrainConfig {
        TrainConfig {
            steps,
            lr,
            batch: 8,
            weight_decay: 0.01,
            warmup_frac: 0.1,
            min_lr_frac: 0.1,
            clip: 1.0,
            eval_every: 10,
            seed: 5,
        }
    }

    #[test]
    fn schedule_warms_up_then_decays() {
        let c = cfg(100, 1e-3);
        assert!((schedule(&c, 0) - 1e-4).abs() < 1e-12);
        assert!((schedule(&c, 9) - 1e-3).abs() < 1e-12);
        assert!(schedule(&c, 50) < 1e-3 && schedule(&c, 50) > 1e-4);
        assert!((schedule(&c, 100) - 1e-4).abs() < 1e-9);
    }

    #[test]
    fn full_and_lora_training_reduce_loss_and_lora_is_low_rank() {
        let a = arch();
        let task = Task::ModAdd { modulus: 5 };
        let eval = EvalSet { per_task: vec![eval_batches(&task, 1, 8, a.ctx)] };
        let start = init_weights(&a, 1);
        let full = train(&a, &start, &Data::Single(task.clone()), &eval, &Mode::Full, &cfg(30, 1e-2)).expect("train");
        let (first, last) = (full.eval_curve[0].1, full.eval_curve.last().expect("eval").1);
        assert!(last < first - 0.5, "full training: eval {first} -> {last}");
        assert_eq!(full.kurtosis.first().map(|k| k.0), Some(0));
        assert_eq!(full.kurtosis.last().map(|k| k.0), Some(30));

        let mode = Mode::Lora { rank: 2, alpha: 4.0, targets: vec!["q_proj".into(), "v_proj".into()] };
        let lora = train(&a, &full.weights, &Data::Single(task), &eval, &mode, &cfg(20, 1e-2)).expect("lora");
        let factors = lora.lora.as_ref().expect("factors");
        assert_eq!(factors.len(), 2);
        // Only the adapted matrices moved, and the merged weights equal base + (alpha/r)·B·A.
        let mut expect = full.weights.clone();
        merge_lora(&mut expect, factors, 2.0).expect("merge");
        assert_eq!(expect, lora.weights);
        let moved: Vec<&String> =
            lora.weights.iter().filter(|(k, m)| full.weights[*k].data != m.data).map(|(k, _)| k).collect();
        assert_eq!(moved.len(), 2, "{moved:?}");
        // Same inputs, same result: the run is deterministic.
        let again = train(&a, &start, &Data::Single(Task::ModAdd { modulus: 5 }), &eval, &Mode::Full, &cfg(30, 1e-2))
            .expect("train again");
        assert_eq!(again.weights, full.weights);
    }
}
