//! The zoo plan: which models exist, how each is derived from which, and what its card claims.
//!
//! A plan is a list of [`Node`]s in creation order (parents always first), built deterministically from the size and
//! the seed. Each tree grows from a template that guarantees every relation type appears (full and LoRA fine-tunes,
//! adapters, int8/fp8 quantisations, linear and task-arithmetic merges, dtype duplicates, a resized-vocabulary
//! fine-tune) while hyper-parameters, tasks, dtypes and card defects are drawn from the seeded RNG. Executing the plan
//! is [`crate::zoo`]'s job; this module decides only *what* to build.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::model::Arch;
use crate::tasks::{Task, mix_seed};
use crate::train::{Mode, TrainConfig};
use crate::weights::{Quant, StoreDtype};

/// Which zoo to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    /// For the test suite: 3 trees, about 30 models, a couple of minutes.
    Small,
    /// For benchmarks: ≥ 5 trees, ≥ 100 models.
    Bench,
    /// The small zoo's shape with a toy architecture and a few steps per run, for end-to-end unit tests.
    Tiny,
    /// Realistic tensor shapes (hidden 512, vocabulary 1024, every matrix ≥ 512 rows) so that row-block sampling
    /// can read a few percent of a checkpoint: 3 trees, about 30 models, short runs that fit one core in half an hour.
    Wide,
}

impl Size {
    /// The CLI spelling.
    pub fn name(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Bench => "bench",
            Size::Tiny => "tiny",
            Size::Wide => "wide",
        }
    }
}

/// Merge methods.
#[derive(Clone, Debug, PartialEq)]
pub enum MergeMethod {
    /// `a·P1 + (1−a)·P2`.
    Linear { a: f32 },
    /// `base + λ1·(P1 − base) + λ2·(P2 − base)`; `base` is the parents' common parent.
    TaskArithmetic { l1: f32, l2: f32 },
}

/// How a node is produced.
#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    /// Pre-trained from a fresh initialisation on a task mixture.
    Root { mixture: Vec<(Task, f64)>, init_seed: u64, cfg: TrainConfig },
    /// Full or LoRA fine-tune of the parent's stored weights; LoRA factors are merged into the saved weights.
    Finetune { task: Task, mode: Mode, cfg: TrainConfig },
    /// Vocabulary grown by `added` tokens (mean-initialised rows), then fully fine-tuned on a task that uses them.
    Resized { added: usize, task: Task, cfg: TrainConfig },
    /// LoRA trained on the parent and published unmerged as a PEFT adapter repo.
    Adapter { task: Task, rank: usize, alpha: f64, targets: Vec<String>, cfg: TrainConfig },
    /// Per-channel int8 or fp8 quantisation of the parent (compressed-tensors layout).
    Quantized(Quant),
    /// Merge of the two parents.
    Merge(MergeMethod),
    /// The parent re-uploaded in another dtype.
    Duplicate,
}

impl Kind {
    /// The ground-truth relation label.
    pub fn relation(&self) -> &'static str {
        match self {
            Kind::Root { .. } => "root",
            Kind::Finetune { mode: Mode::Lora { .. }, .. } => "lora",
            Kind::Finetune { .. } | Kind::Resized { .. } => "finetune",
            Kind::Adapter { .. } => "adapter",
            Kind::Quantized(_) => "quantized",
            Kind::Merge(_) => "merge",
            Kind::Duplicate => "duplicate",
        }
    }

    /// What the card says in `base_model_relation` (the Hub's four values; none for roots and re-uploads).
    pub fn card_relation(&self) -> Option<&'static str> {
        match self {
            Kind::Root { .. } | Kind::Duplicate => None,
            Kind::Finetune { .. } | Kind::Resized { .. } => Some("finetune"),
            Kind::Adapter { .. } => Some("adapter"),
            Kind::Quantized(_) => Some("quantized"),
            Kind::Merge(_) => Some("merge"),
        }
    }
}

/// What a card's `base_model` says.
#[derive(Clone, Debug, PartialEq)]
pub enum Declared {
    /// The true parents.
    Correct,
    /// No `base_model` at all.
    Missing,
    /// A wrong model (a sibling or an unrelated root).
    Wrong(usize),
}

/// One model of the zoo.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub org: String,
    pub name: String,
    pub kind: Kind,
    /// Indices of the parents in the plan (always smaller than this node's index).
    pub parents: Vec<usize>,
    pub dtype: StoreDtype,
    pub sharded: bool,
    pub license: Option<String>,
    pub license_conflict: bool,
    pub declared: Declared,
    /// Whether `config.json`'s `_name_or_path` names the (first) parent.
    pub name_or_path_parent: bool,
    /// Index of the tree (root family) this node belongs to.
    pub family: usize,
}

impl Node {
    /// `org/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.org, self.name)
    }
}

/// The complete plan.
#[derive(Clone, Debug)]
pub struct Plan {
    pub size: Size,
    pub seed: u64,
    pub arch: Arch,
    pub nodes: Vec<Node>,
    /// Rows per held-out evaluation batch (two batches per task, four for a pre-training mixture).
    pub eval_rows: usize,
}

struct Family {
    org: &'static str,
    stem: &'static str,
    license: &'static str,
}

const FAMILIES: [Family; 6] = [
    Family { org: "northwind-ai", stem: "nw-llama-mini", license: "apache-2.0" },
    Family { org: "quokka-research", stem: "quokka-base", license: "cc-by-nc-4.0" },
    Family { org: "bitforge", stem: "bf-pico", license: "llama3.1" },
    Family { org: "lumen-labs", stem: "lumen-tiny", license: "mit" },
    Family { org: "gemmaverse", stem: "gv-nano", license: "gemma" },
    Family { org: "openhollow", stem: "hollow-lm", license: "apache-2.0" },
];

/// Third-party orgs that publish derivatives.
const FT_ORGS: [&str; 5] = ["jdoe", "ml-tinkerer", "acme-nlp", "sparrow-ai", "kaito-lab"];
const QUANT_ORG: &str = "community-quants";
const MERGE_ORG: &str = "mergekit-fans";
const ADAPTER_ORG: &str = "adapter-garden";
const REUPLOAD_ORG: &str = "reupload-bot";

/// Fine-tune task pool: narrower or shifted versions of the pre-training tasks, and tasks never seen before.
fn finetune_task(rng: &mut ChaCha8Rng) -> Task {
    match rng.random_range(0..7) {
        0 => Task::Reverse { min_len: 3, max_len: 8 },
        1 => Task::ModAdd { modulus: [5, 7, 9][rng.random_range(0..3)] },
        2 | 3 => Task::Markov { grammar: rng.random_range(100..10_000), branching: 3, vocab_hi: 128 },
        4 => Task::Copy { min_len: 9, max_len: 14 },
        5 => Task::KvLookup { pairs: 8 },
        _ => Task::Sort { min_len: 6, max_len: 10 },
    }
}

const LORA_TARGETS: [&[&str]; 3] = [
    &["q_proj", "v_proj"],
    &["q_proj", "k_proj", "v_proj", "o_proj"],
    &["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"],
];

struct Builder {
    size: Size,
    rng: ChaCha8Rng,
    nodes: Vec<Node>,
    ft_steps: (usize, usize),
    batch: usize,
    ft_batch: usize,
}

impl Builder {
    fn cfg(&mut self, steps: usize, lr: f64, label: u64) -> TrainConfig {
        TrainConfig {
            steps,
            lr,
            batch: self.batch,
            weight_decay: 0.05,
            warmup_frac: 0.05,
            min_lr_frac: 0.1,
            clip: 1.0,
            eval_every: (steps / 10).max(1),
            seed: mix_seed(self.rng.random::<u64>(), label),
        }
    }

    fn ft_cfg(&mut self, lora: bool) -> TrainConfig {
        let steps = self.rng.random_range(self.ft_steps.0..=self.ft_steps.1) / 50 * 50
            / if self.size == Size::Tiny { 10 } else { 1 };
        // Fine-tuning rates sit well below the pre-training peak (5e-3), LoRA's a few times above full fine-tuning's,
        // as in common recipes.
        let lr = if lora {
            [1e-3, 2e-3, 4e-3][self.rng.random_range(0..3)]
        } else {
            [2e-4, 4e-4, 8e-4][self.rng.random_range(0..3)]
        };
        let mut cfg = self.cfg(steps, lr, 2);
        // Fine-tunes see one task, so a smaller batch suffices (and halves their cost).
        cfg.batch = self.ft_batch;
        cfg
    }

    fn child_dtype(&mut self) -> StoreDtype {
        match self.rng.random_range(0..10) {
            0 | 1 => StoreDtype::F16,
            2 => StoreDtype::F32,
            _ => StoreDtype::BF16,
        }
    }

    /// A unique repo name under `org`.
    fn unique(&self, org: &str, name: String) -> String {
        let mut candidate = name.clone();
        let mut k = 2;
        while self.nodes.iter().any(|n| n.org == org && n.name == candidate) {
            candidate = format!("{name}-v{k}");
            k += 1;
        }
        candidate
    }

    fn stem(&self, idx: usize) -> String {
        self.nodes[idx].name.clone()
    }

    /// A short label for a node inside a merge's name: the task it was tuned on.
    fn short(&self, idx: usize) -> String {
        match &self.nodes[idx].kind {
            Kind::Finetune { task, .. } | Kind::Resized { task, .. } | Kind::Adapter { task, .. } => task.name(),
            _ => "base".to_string(),
        }
    }

    /// Adds a derived node inheriting the family, license and (mostly) a correct `base_model`.
    fn push(&mut self, org: &str, name: String, kind: Kind, parents: Vec<usize>, dtype: StoreDtype) -> usize {
        let family = self.nodes[parents[0]].family;
        let license = self.nodes[parents[0]].license.clone();
        let sharded = dtype == StoreDtype::F32 && self.rng.random_bool(0.5) || self.rng.random_bool(0.08);
        let name = self.unique(org, name);
        let name_or_path_parent = self.rng.random_bool(0.5);
        self.nodes.push(Node {
            org: org.to_string(),
            name,
            kind,
            parents,
            dtype,
            sharded,
            license,
            license_conflict: false,
            declared: Declared::Correct,
            name_or_path_parent,
            family,
        });
        self.nodes.len() - 1
    }

    fn ft_org(&mut self) -> &'static str {
        FT_ORGS[self.rng.random_range(0..FT_ORGS.len())]
    }

    fn finetune(&mut self, parent: usize, lora: bool) -> usize {
        let task = finetune_task(&mut self.rng);
        let cfg = self.ft_cfg(lora);
        let org = self.ft_org();
        let base = self.stem(parent);
        let (mode, name) = if lora {
            let rank = [2, 4, 8, 16][self.rng.random_range(0..4)];
            let alpha = [rank as f64, 2.0 * rank as f64, 16.0][self.rng.random_range(0..3)];
            let targets =
                LORA_TARGETS[self.rng.random_range(0..LORA_TARGETS.len())].iter().map(|s| s.to_string()).collect();
            (Mode::Lora { rank, alpha, targets }, format!("{base}-{}-lora-r{rank}", task.name()))
        } else {
            (Mode::Full, format!("{base}-{}-ft", task.name()))
        };
        let dtype = self.child_dtype();
        self.push(org, name, Kind::Finetune { task, mode, cfg }, vec![parent], dtype)
    }

    fn adapter(&mut self, parent: usize) -> usize {
        let task = finetune_task(&mut self.rng);
        let cfg = self.ft_cfg(true);
        let rank = [4, 8, 16][self.rng.random_range(0..3)];
        let alpha = (2 * rank) as f64;
        let targets = LORA_TARGETS[self.rng.random_range(0..2)].iter().map(|s| s.to_string()).collect();
        let name = format!("{}-{}-peft-lora", self.stem(parent), task.name());
        // PEFT saves adapters in the dtype they were trained in: mostly f32, sometimes bf16.
        let dtype = if self.rng.random_bool(0.7) { StoreDtype::F32 } else { StoreDtype::BF16 };
        let i = self.push(ADAPTER_ORG, name, Kind::Adapter { task, rank, alpha, targets, cfg }, vec![parent], dtype);
        self.nodes[i].sharded = false;
        i
    }

    fn quantized(&mut self, parent: usize, q: Quant) -> usize {
        let name = match q {
            Quant::Int8 => format!("{}-W8A16-int8", self.stem(parent)),
            Quant::Fp8 => format!("{}-FP8-channel", self.stem(parent)),
            Quant::Gptq4 => format!("{}-GPTQ-Int4", self.stem(parent)),
            Quant::Awq4 => format!("{}-AWQ", self.stem(parent)),
        };
        let i = self.push(QUANT_ORG, name, Kind::Quantized(q), vec![parent], StoreDtype::BF16);
        self.nodes[i].sharded = false;
        i
    }

    fn merge(&mut self, p1: usize, p2: usize, linear: bool) -> usize {
        let method = if linear {
            MergeMethod::Linear { a: [0.3, 0.5, 0.6][self.rng.random_range(0..3)] }
        } else {
            MergeMethod::TaskArithmetic {
                l1: [0.5, 0.7, 1.0][self.rng.random_range(0..3)],
                l2: [0.3, 0.5][self.rng.random_range(0..2)],
            }
        };
        let tag = if linear { "linear" } else { "ta" };
        let family = FAMILIES[self.nodes[p1].family].stem;
        let name = format!("{family}-{}-{}-{tag}-merge", self.short(p1), self.short(p2));
        let dtype = if self.rng.random_bool(0.7) { StoreDtype::BF16 } else { StoreDtype::F16 };
        self.push(MERGE_ORG, name, Kind::Merge(method), vec![p1, p2], dtype)
    }

    /// A re-upload in another dtype: bf16/f16 parents become f32 (exact), f32 parents become bf16.
    fn duplicate(&mut self, parent: usize) -> usize {
        let dtype = match self.nodes[parent].dtype {
            StoreDtype::F32 => StoreDtype::BF16,
            _ => StoreDtype::F32,
        };
        let suffix = if dtype == StoreDtype::F32 { "fp32" } else { "bf16" };
        let name = format!("{}-{suffix}", self.stem(parent));
        let i = self.push(REUPLOAD_ORG, name, Kind::Duplicate, vec![parent], dtype);
        // A re-upload keeps the card but often drops the link: half of them name no base model.
        if self.rng.random_bool(0.5) {
            self.nodes[i].declared = Declared::Missing;
        }
        i
    }

    fn resized(&mut self, parent: usize) -> usize {
        let task = Task::Markov { grammar: self.rng.random_range(100..10_000), branching: 3, vocab_hi: 136 };
        let cfg = self.ft_cfg(false);
        let org = self.ft_org();
        let name = format!("{}-ext-vocab", self.stem(parent));
        let dtype = self.child_dtype();
        self.push(org, name, Kind::Resized { added: 8, task, cfg }, vec![parent], dtype)
    }

    fn root(
        &mut self,
        family: usize,
        data_like: Option<usize>,
        steps: usize,
        lr: f64,
        dtype: StoreDtype,
        sharded: bool,
    ) -> usize {
        let f = &FAMILIES[family];
        let mut cfg = self.cfg(steps, lr, 1);
        // An unrelated look-alike: the very same data mixture and data stream as another root, a different init.
        let like = data_like.and_then(|o| match &self.nodes[o].kind {
            Kind::Root { mixture, cfg, .. } => Some((mixture.clone(), cfg.seed)),
            _ => None,
        });
        let mixture = match like {
            Some((mixture, data_seed)) => {
                cfg.seed = data_seed;
                mixture
            }
            None => {
                let grammar = self.rng.random_range(1..100);
                vec![
                    (Task::Markov { grammar, branching: 4, vocab_hi: 128 }, 2.0 + self.rng.random::<f64>()),
                    (Task::Copy { min_len: 3, max_len: 8 }, 0.5 + self.rng.random::<f64>()),
                    (Task::Sort { min_len: 3, max_len: 7 }, 0.5 + self.rng.random::<f64>()),
                    (Task::KvLookup { pairs: 5 }, 0.5 + self.rng.random::<f64>()),
                ]
            }
        };
        let init_seed = mix_seed(self.rng.random::<u64>(), 3);
        self.nodes.push(Node {
            org: f.org.to_string(),
            name: f.stem.to_string(),
            kind: Kind::Root { mixture, init_seed, cfg },
            parents: Vec::new(),
            dtype,
            sharded,
            license: Some(f.license.to_string()),
            license_conflict: false,
            declared: Declared::Missing,
            name_or_path_parent: false,
            family,
        });
        self.nodes.len() - 1
    }

    /// Grows one tree under `root`; `variant` rotates which relation variants this tree carries.
    fn grow_small(&mut self, root: usize, variant: usize) {
        let c1 = self.finetune(root, false);
        let c2 = self.finetune(root, true);
        let g1 = self.finetune(c1, variant == 1);
        self.adapter(if variant == 2 { c1 } else { root });
        self.quantized(if variant == 0 { c1 } else { root }, if variant == 1 { Quant::Fp8 } else { Quant::Int8 });
        if variant == 2 {
            self.quantized(g1, Quant::Fp8);
            self.finetune(g1, true);
        }
        self.duplicate(if variant == 1 { root } else { c2 });
        self.merge(c1, c2, variant != 1);
        if variant == 0 {
            self.resized(root);
        }
    }

    /// Grows a larger tree with depth-3 chains and mixed LoRA/full sub-trees.
    fn grow_bench(&mut self, root: usize, variant: usize) {
        let even = variant.is_multiple_of(2);
        let c1 = self.finetune(root, false);
        let g1 = self.finetune(c1, false);
        self.finetune(g1, true);
        self.quantized(g1, Quant::Int8);
        let g2 = self.finetune(c1, true);
        self.finetune(g2, false);
        self.adapter(c1);
        self.duplicate(c1);
        let c2 = self.finetune(root, true);
        let g3 = self.finetune(c2, true);
        self.finetune(g3, true);
        self.finetune(c2, false);
        self.adapter(c2);
        let c3 = self.finetune(root, even);
        self.quantized(c3, Quant::Fp8);
        self.merge(c1, c2, even);
        self.merge(c1, c3, !even);
        self.quantized(root, if even { Quant::Int8 } else { Quant::Fp8 });
        self.duplicate(root);
        self.adapter(root);
        if even {
            self.resized(root);
        }
    }
}

/// The architecture of a zoo.
pub fn arch_for(size: Size) -> Arch {
    match size {
        Size::Tiny => Arch {
            vocab: 128,
            hidden: 16,
            layers: 2,
            heads: 2,
            intermediate: 32,
            ctx: 32,
            rms_eps: 1e-5,
            rope_theta: 10_000.0,
        },
        Size::Small | Size::Bench => Arch {
            vocab: 128,
            hidden: 64,
            layers: 2,
            heads: 4,
            intermediate: 176,
            ctx: 32,
            rms_eps: 1e-5,
            rope_theta: 10_000.0,
        },
        // Llama proportions (intermediate ≈ 2.75 × hidden, head width 64). The tasks use 136 token ids; the rest of
        // the vocabulary is there so embeddings have as many rows as the row sampler's 64 blocks need.
        Size::Wide => Arch {
            vocab: 1024,
            hidden: 512,
            layers: 2,
            heads: 8,
            intermediate: 1408,
            ctx: 32,
            rms_eps: 1e-5,
            rope_theta: 10_000.0,
        },
    }
}

/// Builds the plan for `size` and `seed`.
pub fn build(size: Size, seed: u64) -> Plan {
    let arch = arch_for(size);
    let (roots, root_steps, ft_steps, batch, ft_batch) = match size {
        Size::Small => (3, 1500, (150, 300), 32, 16),
        Size::Bench => (6, 3000, (250, 500), 32, 16),
        Size::Tiny => (3, 6, (50, 50), 4, 4),
        // A step costs ~0.4 s (batch 16) on one core at this width, so runs are short. At the common 5e-3 peak rate
        // a wide root's kurtosis has risen and levelled off by step 250 (a measured 0 → 15); fine-tunes take 100
        // steps of batch 8.
        Size::Wide => (3, 300, (100, 149), 16, 8),
    };
    let rng = ChaCha8Rng::seed_from_u64(mix_seed(seed, 0x21_00));
    let mut b = Builder { size, rng, nodes: Vec::new(), ft_steps, batch, ft_batch };
    let dtypes =
        [StoreDtype::BF16, StoreDtype::F32, StoreDtype::BF16, StoreDtype::F16, StoreDtype::BF16, StoreDtype::BF16];
    for (r, &dtype) in dtypes.iter().enumerate().take(roots) {
        // The last root of every zoo is the look-alike of the first: same data, different init.
        let data_like = (r == roots - 1).then_some(0);
        let root = b.root(r, data_like, root_steps, 5e-3, dtype, dtype == StoreDtype::F32);
        match b.size {
            Size::Small | Size::Tiny | Size::Wide => b.grow_small(root, r),
            Size::Bench => b.grow_bench(root, r),
        }
    }
    plant_card_defects(&mut b);
    if size == Size::Bench {
        add_int4_children(&mut b, seed);
    }
    let eval_rows = if size == Size::Tiny { 4 } else { 32 };
    Plan { size, seed, arch, nodes: b.nodes, eval_rows }
}

/// Appends the bench zoo's packed int4 children: a GPTQ one of the second tree's first full fine-tune and an AWQ
/// one of the fourth tree's root. They come after every other node and draw from their own RNG stream, so adding
/// them left every earlier model, card defect and license byte-identical; their cards are correct.
fn add_int4_children(b: &mut Builder, seed: u64) {
    b.rng = ChaCha8Rng::seed_from_u64(mix_seed(seed, 0x21_04));
    let full_child = (0..b.nodes.len())
        .find(|&i| b.nodes[i].family == 1 && matches!(b.nodes[i].kind, Kind::Finetune { mode: Mode::Full, .. }));
    let root = (0..b.nodes.len()).find(|&i| b.nodes[i].family == 3 && b.nodes[i].parents.is_empty());
    if let Some(p) = full_child {
        b.quantized(p, Quant::Gptq4);
    }
    if let Some(p) = root {
        b.quantized(p, Quant::Awq4);
    }
}

/// Plants the defects real cards have: missing and wrong `base_model`, and license conflicts.
fn plant_card_defects(b: &mut Builder) {
    let n = b.nodes.len();
    let roots: Vec<usize> = (0..n).filter(|&i| b.nodes[i].parents.is_empty()).collect();
    let derived: Vec<usize> = (0..n).filter(|&i| !b.nodes[i].parents.is_empty()).collect();
    let (missing, wrong) = match b.size {
        Size::Small | Size::Tiny | Size::Wide => (2, 3),
        Size::Bench => (n / 10, n / 20),
    };
    let mut picks: Vec<usize> = derived.iter().copied().filter(|&i| b.nodes[i].declared == Declared::Correct).collect();
    for k in 0..missing + wrong {
        if picks.is_empty() {
            break;
        }
        let i = picks.remove(b.rng.random_range(0..picks.len()));
        if k < missing {
            b.nodes[i].declared = Declared::Missing;
            continue;
        }
        // Wrong: a sibling (same first parent, created earlier) when there is one, else an unrelated root.
        let p = b.nodes[i].parents[0];
        let sibling = (0..i).find(|&j| {
            j != i && b.nodes[j].parents.first() == Some(&p) && !matches!(b.nodes[j].kind, Kind::Adapter { .. })
        });
        let fam = b.nodes[i].family;
        let unrelated = roots.iter().copied().find(|&r| b.nodes[r].family != fam);
        let target = if k % 2 == 0 { sibling.or(unrelated) } else { unrelated.or(sibling) };
        if let Some(t) = target {
            b.nodes[i].declared = Declared::Wrong(t);
        }
    }
    // A from-scratch root that claims to be derived from another, unrelated root.
    if let Some(&last) = roots.last()
        && let Some(&first) = roots.first()
        && last != first
    {
        b.nodes[last].declared = Declared::Wrong(first);
    }
    // License conflicts: a permissive or missing license under a non-commercial or community-licensed parent.
    let restrictive = |l: &Option<String>| matches!(l.as_deref(), Some("cc-by-nc-4.0" | "llama3.1" | "gemma"));
    let limit = match b.size {
        Size::Small | Size::Tiny | Size::Wide => 2,
        Size::Bench => 6,
    };
    let has_children = |b: &Builder, i: usize| b.nodes.iter().any(|m| m.parents.contains(&i));
    // Only leaves get a conflicting license, so every conflict in the zoo is a planted one.
    let mut candidates: Vec<usize> =
        derived.iter().copied().filter(|&i| !has_children(b, i) && restrictive(&b.nodes[i].license)).collect();
    for planted in 0..limit {
        if candidates.is_empty() {
            break;
        }
        let i = candidates.remove(b.rng.random_range(0..candidates.len()));
        b.nodes[i].license = if planted % 2 == 0 { Some("apache-2.0".into()) } else { None };
        b.nodes[i].license_conflict = true;
    }
}

impl Plan {
    /// Training steps of node `i` (0 for nodes that are only post-processed).
    pub fn steps(&self, i: usize) -> usize {
        match &self.nodes[i].kind {
            Kind::Root { cfg, .. }
            | Kind::Finetune { cfg, .. }
            | Kind::Resized { cfg, .. }
            | Kind::Adapter { cfg, .. } => cfg.steps,
            Kind::Quantized(_) | Kind::Merge(_) | Kind::Duplicate => 0,
        }
    }

    /// Scheduling priority: the training steps on the longest chain from node `i` down to a leaf, so that long
    /// chains (roots, deep sub-trees) start first and the zoo finishes sooner. Affects timing only, never output.
    pub fn critical_path(&self) -> Vec<usize> {
        let n = self.nodes.len();
        let mut cost = vec![0usize; n];
        for i in (0..n).rev() {
            let below = (i + 1..n).filter(|&j| self.nodes[j].parents.contains(&i)).map(|j| cost[j]).max().unwrap_or(0);
            cost[i] = self.steps(i) + 1 + below;
        }
        cost
    }
}
