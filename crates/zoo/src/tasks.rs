//! Procedural token-sequence tasks: the only training data the zoo ever sees.
//!
//! Every task draws sequences from a seeded `ChaCha8Rng`, so a (task, seed) pair always yields the same batches and
//! nothing is downloaded. All tasks share one vocabulary layout (special tokens, one tag token per task, then content
//! tokens), so one architecture can learn a broad pre-training mixture and later be fine-tuned on a narrower or
//! shifted task. A [`Batch`] carries inputs, next-token targets and a loss mask: algorithmic tasks score only the
//! answer positions (the part that is predictable at all), language tasks score every token.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Padding; never scored.
pub const PAD: u32 = 0;
/// Beginning of sequence.
pub const BOS: u32 = 1;
/// End of an episode.
pub const EOS: u32 = 2;
/// Unknown token (only for the tokenizer file).
pub const UNK: u32 = 3;
/// Separates a task's input from its answer.
pub const SEP: u32 = 4;
/// Marks "the answer follows" in arithmetic and lookup tasks.
pub const EQ: u32 = 5;
/// First content token; everything below is special or a task tag.
pub const CONTENT_START: u32 = 16;
/// Number of grammar tag tokens (`<lang0>` … `<lang4>`).
const LANG_TAGS: u32 = 5;
/// First grammar tag token.
const LANG_TAG0: u32 = 11;

/// One procedurally generated task.
#[derive(Clone, Debug, PartialEq)]
pub enum Task {
    /// A seeded first-order Markov "language" over the content tokens `[CONTENT_START, vocab_hi)`; every content
    /// token has `branching` likely successors with skewed probabilities.
    Markov { grammar: u64, branching: usize, vocab_hi: u32 },
    /// `a1..an SEP a1..an EOS`.
    Copy { min_len: usize, max_len: usize },
    /// `a1..an SEP an..a1 EOS`.
    Reverse { min_len: usize, max_len: usize },
    /// `a1..an SEP sorted(a) EOS`.
    Sort { min_len: usize, max_len: usize },
    /// `a b EQ (a+b mod m)`, numbers written as content tokens `CONTENT_START + x`.
    ModAdd { modulus: u32 },
    /// `k1 v1 … kn vn SEP ki EQ vi EOS`: look a value up by its key.
    KvLookup { pairs: usize },
}

impl Task {
    /// Short stable name used in recipes, cards and the ground truth.
    pub fn name(&self) -> String {
        match self {
            Task::Markov { grammar, vocab_hi, .. } if *vocab_hi > 128 => format!("lang{grammar}-ext{vocab_hi}"),
            Task::Markov { grammar, .. } => format!("lang{grammar}"),
            Task::Copy { min_len, max_len } => format!("copy{min_len}-{max_len}"),
            Task::Reverse { min_len, max_len } => format!("reverse{min_len}-{max_len}"),
            Task::Sort { min_len, max_len } => format!("sort{min_len}-{max_len}"),
            Task::ModAdd { modulus } => format!("add-mod{modulus}"),
            Task::KvLookup { pairs } => format!("kv{pairs}"),
        }
    }

    /// The tag token that follows BOS and tells the model which task a sequence belongs to.
    pub fn tag(&self) -> u32 {
        match self {
            Task::Copy { .. } => 6,
            Task::Reverse { .. } => 7,
            Task::Sort { .. } => 8,
            Task::ModAdd { .. } => 9,
            Task::KvLookup { .. } => 10,
            // Grammars share few tag tokens on purpose: a fine-tune on a new grammar that reuses a tag is a
            // distribution shift the parent has to unlearn.
            Task::Markov { grammar, .. } => LANG_TAG0 + (*grammar % u64::from(LANG_TAGS)) as u32,
        }
    }

    /// Largest token id this task can emit, plus one.
    pub fn vocab_needed(&self) -> u32 {
        match self {
            Task::Markov { vocab_hi, .. } => *vocab_hi,
            _ => 128,
        }
    }
}

/// Names of the special and tag tokens, in id order (ids `0..CONTENT_START`).
pub const SPECIAL_TOKENS: [&str; CONTENT_START as usize] = [
    "<pad>",
    "<s>",
    "</s>",
    "<unk>",
    "<sep>",
    "<eq>",
    "<copy>",
    "<reverse>",
    "<sort>",
    "<add>",
    "<kv>",
    "<lang0>",
    "<lang1>",
    "<lang2>",
    "<lang3>",
    "<lang4>",
];

/// The surface form of token `id` in the tokenizer file.
pub fn token_text(id: u32) -> String {
    match SPECIAL_TOKENS.get(id as usize) {
        Some(s) => (*s).to_string(),
        None if id < 128 => format!("w{id:03}"),
        None => format!("<added{}>", id - 128),
    }
}

/// A batch of `rows` sequences of `ctx` positions.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub rows: usize,
    pub ctx: usize,
    /// Row-major `[rows, ctx]` input ids.
    pub inputs: Vec<u32>,
    /// Row-major `[rows, ctx]` next-token targets.
    pub targets: Vec<u32>,
    /// Row-major `[rows, ctx]`: 1.0 where the target is scored.
    pub mask: Vec<f32>,
}

/// A seeded Markov transition table: for each content token, `branching` successors and their cumulative weights.
#[derive(Clone, Debug)]
struct Grammar {
    lo: u32,
    successors: Vec<Vec<u32>>,
    cumulative: Vec<f64>,
}

impl Grammar {
    fn new(grammar: u64, branching: usize, vocab_hi: u32) -> Grammar {
        let mut rng = ChaCha8Rng::seed_from_u64(grammar.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x6772_616d);
        let lo = CONTENT_START;
        let successors =
            (lo..vocab_hi).map(|_| (0..branching).map(|_| rng.random_range(lo..vocab_hi)).collect()).collect();
        // Zipf-like weights 1, 1/2, 1/3 … make the language predictable but not deterministic.
        let mut acc = 0.0;
        let mut cumulative = Vec::with_capacity(branching);
        for i in 0..branching {
            acc += 1.0 / (i as f64 + 1.0);
            cumulative.push(acc);
        }
        Grammar { lo, successors, cumulative }
    }

    fn next(&self, prev: u32, rng: &mut ChaCha8Rng) -> u32 {
        let total = self.cumulative.last().copied().unwrap_or(1.0);
        let u = rng.random::<f64>() * total;
        let pick = self.cumulative.iter().position(|&c| u < c).unwrap_or(self.cumulative.len() - 1);
        let row = (prev.saturating_sub(self.lo)) as usize;
        self.successors.get(row).and_then(|s| s.get(pick)).copied().unwrap_or(self.lo)
    }

    fn start(&self, rng: &mut ChaCha8Rng) -> u32 {
        rng.random_range(self.lo..self.lo + self.successors.len() as u32)
    }
}

/// Draws batches of one task from a seeded stream.
#[derive(Debug)]
pub struct Sampler {
    task: Task,
    grammar: Option<Grammar>,
    rng: ChaCha8Rng,
}

impl Sampler {
    /// A sampler for `task` whose stream is fixed by `seed`.
    pub fn new(task: &Task, seed: u64) -> Sampler {
        let grammar = match task {
            Task::Markov { grammar, branching, vocab_hi } => Some(Grammar::new(*grammar, *branching, *vocab_hi)),
            _ => None,
        };
        Sampler { task: task.clone(), grammar, rng: ChaCha8Rng::seed_from_u64(seed) }
    }

    /// The next batch of `rows` sequences of `ctx` positions.
    pub fn batch(&mut self, rows: usize, ctx: usize) -> Batch {
        let mut out = Batch {
            rows,
            ctx,
            inputs: Vec::with_capacity(rows * ctx),
            targets: Vec::with_capacity(rows * ctx),
            mask: Vec::with_capacity(rows * ctx),
        };
        for _ in 0..rows {
            let (tokens, scored) = self.sequence(ctx + 1);
            out.inputs.extend_from_slice(&tokens[..ctx]);
            out.targets.extend_from_slice(&tokens[1..]);
            out.mask.extend(scored[1..].iter().map(|&s| if s { 1.0 } else { 0.0 }));
        }
        out
    }

    /// One sequence of exactly `len` tokens and, per token, whether predicting it is scored.
    fn sequence(&mut self, len: usize) -> (Vec<u32>, Vec<bool>) {
        let mut tokens = vec![BOS, self.task.tag()];
        let mut scored = vec![false, false];
        if let Some(g) = &self.grammar {
            let mut t = g.start(&mut self.rng);
            tokens.push(t);
            scored.push(false);
            while tokens.len() < len {
                t = g.next(t, &mut self.rng);
                tokens.push(t);
                scored.push(true);
            }
            return (tokens, scored);
        }
        loop {
            let (ep, ep_scored) = self.episode();
            if tokens.len() + ep.len() > len {
                break;
            }
            tokens.extend(ep);
            scored.extend(ep_scored);
        }
        tokens.resize(len, PAD);
        scored.resize(len, false);
        (tokens, scored)
    }

    fn content(&mut self, n: usize, lo: u32, hi: u32) -> Vec<u32> {
        (0..n).map(|_| self.rng.random_range(lo..hi)).collect()
    }

    /// One episode of an algorithmic task with its score mask.
    fn episode(&mut self) -> (Vec<u32>, Vec<bool>) {
        let hi = 128;
        let (input, answer): (Vec<u32>, Vec<u32>) = match self.task.clone() {
            Task::Copy { min_len, max_len } => {
                let n = self.rng.random_range(min_len..=max_len);
                let a = self.content(n, CONTENT_START, hi);
                (a.clone(), a)
            }
            Task::Reverse { min_len, max_len } => {
                let n = self.rng.random_range(min_len..=max_len);
                let a = self.content(n, CONTENT_START, hi);
                let r = a.iter().rev().copied().collect();
                (a, r)
            }
            Task::Sort { min_len, max_len } => {
                let n = self.rng.random_range(min_len..=max_len);
                let a = self.content(n, CONTENT_START, hi);
                let mut s = a.clone();
                s.sort_unstable();
                (a, s)
            }
            Task::ModAdd { modulus } => {
                let a = self.rng.random_range(0..modulus);
                let b = self.rng.random_range(0..modulus);
                let c = (a + b) % modulus;
                // Short episode without SEP/EOS: `a b = c`.
                return (
                    vec![CONTENT_START + a, CONTENT_START + b, EQ, CONTENT_START + c],
                    vec![false, false, false, true],
                );
            }
            Task::KvLookup { pairs } => {
                // Keys come from the low content range and are distinct, values from the high range.
                let mut keys: Vec<u32> = Vec::with_capacity(pairs);
                while keys.len() < pairs {
                    let k = self.rng.random_range(CONTENT_START..CONTENT_START + 32);
                    if !keys.contains(&k) {
                        keys.push(k);
                    }
                }
                let values = self.content(pairs, CONTENT_START + 32, hi);
                let q = self.rng.random_range(0..pairs);
                let mut ep = Vec::with_capacity(2 * pairs + 4);
                for (k, v) in keys.iter().zip(&values) {
                    ep.push(*k);
                    ep.push(*v);
                }
                let mut sc = vec![false; ep.len()];
                ep.extend([SEP, keys[q], EQ, values[q], EOS]);
                sc.extend([false, false, false, true, true]);
                return (ep, sc);
            }
            Task::Markov { .. } => (Vec::new(), Vec::new()),
        };
        let mut ep = input;
        let mut sc = vec![false; ep.len()];
        ep.push(SEP);
        sc.push(false);
        sc.extend(std::iter::repeat_n(true, answer.len() + 1));
        ep.extend(answer);
        ep.push(EOS);
        (ep, sc)
    }
}

/// A weighted mixture of tasks (pre-training data), sampled batch by batch.
#[derive(Debug)]
pub struct Mixture {
    samplers: Vec<Sampler>,
    cumulative: Vec<f64>,
    rng: ChaCha8Rng,
}

impl Mixture {
    /// A mixture of `(task, weight)` whose streams are all derived from `seed`.
    pub fn new(tasks: &[(Task, f64)], seed: u64) -> Mixture {
        let samplers =
            tasks.iter().enumerate().map(|(i, (t, _))| Sampler::new(t, mix_seed(seed, 1 + i as u64))).collect();
        let mut acc = 0.0;
        let cumulative = tasks
            .iter()
            .map(|(_, w)| {
                acc += w;
                acc
            })
            .collect();
        Mixture { samplers, cumulative, rng: ChaCha8Rng::seed_from_u64(mix_seed(seed, 0)) }
    }

    /// A batch in which every row is drawn from a task picked by weight.
    pub fn batch(&mut self, rows: usize, ctx: usize) -> Batch {
        let mut out = Batch { rows: 0, ctx, inputs: Vec::new(), targets: Vec::new(), mask: Vec::new() };
        let total = self.cumulative.last().copied().unwrap_or(1.0);
        for _ in 0..rows {
            let u = self.rng.random::<f64>() * total;
            let i = self.cumulative.iter().position(|&c| u < c).unwrap_or(self.samplers.len() - 1);
            let b = self.samplers[i].batch(1, ctx);
            out.rows += 1;
            out.inputs.extend(b.inputs);
            out.targets.extend(b.targets);
            out.mask.extend(b.mask);
        }
        out
    }
}

/// Derives an independent stream seed from a parent seed and a label (SplitMix64 finaliser).
pub fn mix_seed(seed: u64, label: u64) -> u64 {
    let mut z = seed ^ label.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The held-out evaluation batches of a task: drawn from a stream no training sampler uses.
pub fn eval_batches(task: &Task, count: usize, rows: usize, ctx: usize) -> Vec<Batch> {
    // Label 0xE7A1 keeps evaluation streams apart from every training stream, which use other labels.
    let label = task.name().bytes().fold(0u64, |h, b| h.wrapping_mul(131) + u64::from(b));
    let mut s = Sampler::new(task, mix_seed(0xE7A1, label));
    (0..count).map(|_| s.batch(rows, ctx)).collect()
}

/// Held-out batches drawn from a mixture exactly as training draws them (same task weights, a stream no training
/// run uses), so the held-out loss is directly comparable with the training loss.
pub fn mixture_eval_batches(tasks: &[(Task, f64)], count: usize, rows: usize, ctx: usize) -> Vec<Batch> {
    let label =
        tasks.iter().flat_map(|(t, _)| t.name().into_bytes()).fold(0u64, |h, b| h.wrapping_mul(131) + u64::from(b));
    let mut m = Mixture::new(tasks, mix_seed(0xE7A2, label));
    (0..count).map(|_| m.batch(rows, ctx)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(b: &Batch, row: usize) -> (Vec<u32>, Vec<u32>) {
        let r = &b.inputs[row * b.ctx..(row + 1) * b.ctx];
        let t: Vec<u32> = b.targets[row * b.ctx..(row + 1) * b.ctx]
            .iter()
            .zip(&b.mask[row * b.ctx..(row + 1) * b.ctx])
            .filter(|(_, m)| **m > 0.0)
            .map(|(t, _)| *t)
            .collect();
        (r.to_vec(), t)
    }

    /// Splits a row into `(input, answer)` episodes at SEP/EOS.
    fn episodes(row: &[u32]) -> Vec<(Vec<u32>, Vec<u32>)> {
        let mut out = Vec::new();
        let mut i = 2;
        while i < row.len() && row[i] != PAD {
            let sep = i + row[i..].iter().position(|&t| t == SEP).expect("sep");
            let Some(eos) = row[sep..].iter().position(|&t| t == EOS) else { break };
            out.push((row[i..sep].to_vec(), row[sep + 1..sep + eos].to_vec()));
            i = sep + eos + 1;
        }
        out
    }

    fn check_episodes(task: Task, expected: impl Fn(&[u32]) -> Vec<u32>) {
        let b = Sampler::new(&task, 7).batch(8, 48);
        assert_eq!(b.inputs.len(), 8 * 48);
        for row in 0..8 {
            let (inp, _) = decode(&b, row);
            assert_eq!(inp[0], BOS);
            assert_eq!(inp[1], task.tag());
            let eps = episodes(&inp);
            assert!(!eps.is_empty(), "{task:?} row {row} has no complete episode");
            for (input, answer) in eps {
                assert_eq!(answer, expected(&input), "{task:?}");
            }
        }
    }

    #[test]
    fn algorithmic_tasks_produce_correct_answers() {
        check_episodes(Task::Copy { min_len: 3, max_len: 8 }, |a| a.to_vec());
        check_episodes(Task::Reverse { min_len: 3, max_len: 8 }, |a| a.iter().rev().copied().collect());
        check_episodes(Task::Sort { min_len: 3, max_len: 8 }, |a| {
            let mut s = a.to_vec();
            s.sort_unstable();
            s
        });
    }

    #[test]
    fn mod_add_scores_only_the_sum() {
        let b = Sampler::new(&Task::ModAdd { modulus: 17 }, 3).batch(4, 32);
        for row in 0..4 {
            let r = &b.inputs[row * 32..(row + 1) * 32];
            let t = &b.targets[row * 32..(row + 1) * 32];
            let m = &b.mask[row * 32..(row + 1) * 32];
            for p in 0..32 {
                if m[p] > 0.0 {
                    assert_eq!(r[p], EQ);
                    let (a, bb) = (r[p - 2] - CONTENT_START, r[p - 1] - CONTENT_START);
                    assert_eq!(t[p] - CONTENT_START, (a + bb) % 17);
                }
            }
            assert_eq!(m.iter().filter(|&&x| x > 0.0).count(), 7, "seven 4-token episodes fit in 30 positions");
        }
    }

    #[test]
    fn kv_lookup_answers_the_queried_key() {
        let b = Sampler::new(&Task::KvLookup { pairs: 5 }, 11).batch(6, 40);
        for row in 0..6 {
            let r = &b.inputs[row * 40..(row + 1) * 40];
            let sep = r.iter().position(|&t| t == SEP).expect("sep");
            let key = r[sep + 1];
            let kpos = (2..sep).step_by(2).find(|&i| r[i] == key).expect("key present");
            assert_eq!(r[sep + 3], r[kpos + 1]);
        }
    }

    #[test]
    fn markov_follows_its_grammar_and_grammars_differ() {
        let task = Task::Markov { grammar: 5, branching: 3, vocab_hi: 128 };
        let g = Grammar::new(5, 3, 128);
        let b = Sampler::new(&task, 1).batch(4, 32);
        for row in 0..4 {
            let r = &b.inputs[row * 32..(row + 1) * 32];
            for w in r[2..].windows(2) {
                assert!(g.successors[(w[0] - CONTENT_START) as usize].contains(&w[1]));
            }
        }
        assert_ne!(Grammar::new(6, 3, 128).successors, g.successors);
        let ext = Sampler::new(&Task::Markov { grammar: 5, branching: 3, vocab_hi: 136 }, 1).batch(16, 32);
        assert!(ext.inputs.iter().any(|&t| t >= 128), "an extended grammar uses the added tokens");
        assert!(ext.inputs.iter().all(|&t| t < 136));
    }

    #[test]
    fn streams_are_reproducible_and_eval_is_separate() {
        let t = Task::Sort { min_len: 2, max_len: 6 };
        assert_eq!(Sampler::new(&t, 9).batch(3, 32), Sampler::new(&t, 9).batch(3, 32));
        assert_ne!(Sampler::new(&t, 9).batch(3, 32), Sampler::new(&t, 10).batch(3, 32));
        let e1 = eval_batches(&t, 2, 3, 32);
        assert_eq!(e1, eval_batches(&t, 2, 3, 32));
        assert_ne!(e1[0], e1[1]);
        let mut m = Mixture::new(&[(t.clone(), 1.0), (Task::Copy { min_len: 2, max_len: 4 }, 1.0)], 4);
        let b = m.batch(16, 32);
        let tags: Vec<u32> = (0..16).map(|r| b.inputs[r * 32 + 1]).collect();
        assert!(tags.contains(&t.tag()) && tags.contains(&6), "both tasks appear in a mixture batch: {tags:?}");
    }

    #[test]
    fn token_texts_are_unique() {
        let mut all: Vec<String> = (0..136).map(token_text).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 136);
    }
}
