//! The index against batch recovery on random forests: incremental == batch. Hand-made cases of the
//! incremental API (bridges, splits, replaced revisions) are scenario files (`crate::scenarios`).

use super::*;
use crate::recover;
use crate::testkit::{
    Weights, adapter, cast_bf16, finetune, lora, merge, quantize_int8, root, scheme, sign, task_arithmetic,
};
use proptest::prelude::*;

/// One generated model: id, weights and card.
type Spec = (String, Weights, Prior);

fn owned(specs: &[&Spec]) -> Vec<OwnedModelInput> {
    specs
        .iter()
        .map(|(id, w, prior)| OwnedModelInput { id: id.clone(), signature: sign(w, &scheme()), prior: prior.clone() })
        .collect()
}

fn batch(specs: &[&Spec], options: &Options) -> Recovery {
    let signatures: Vec<ModelSignature> = specs.iter().map(|s| sign(&s.1, &scheme())).collect();
    let inputs: Vec<ModelInput<'_>> = specs
        .iter()
        .zip(&signatures)
        .map(|(s, signature)| ModelInput { id: &s.0, signature, prior: s.2.clone() })
        .collect();
    recover(&inputs, options)
}

/// A random forest: `ops` say, per model, how it is made (root, fine-tune, LoRA, cast, int8, merge, task
/// arithmetic, adapter) and from which earlier models; some cards declare the parent, some carry times.
fn forest(ops: &[(u8, usize, usize, u64)]) -> Vec<Spec> {
    let mut out: Vec<Spec> = Vec::new();
    let mut full: Vec<usize> = Vec::new();
    for (i, &(op, a, b, seed)) in ops.iter().enumerate() {
        let id = format!("org{}/m{i}", i % 3);
        let pick = |x: usize| full[x % full.len()];
        let mut prior = Prior { created_at: (seed % 3 != 0).then_some(i as i64 * 10), ..Prior::default() };
        let (weights, parent) = if full.is_empty() || op % 9 == 0 {
            (root(seed), None)
        } else {
            let p = pick(a);
            let w = &out[p].1;
            match op % 9 {
                1 | 2 => (finetune(w, seed, 0.15), Some(p)),
                // Half the LoRAs are a merged upload of an adapter drawn with the same seed class and
                // parent, if one is made: the adapter's base then follows from the weights.
                3 if seed % 2 == 0 => (lora(w, seed % 8, 4, 0.1), Some(p)),
                3 => (lora(w, seed, 2, 0.3), Some(p)),
                4 => (cast_bf16(w), Some(p)),
                5 => (quantize_int8(w), Some(p)),
                6 => (merge(w, &out[pick(b)].1, 0.5), Some(p)),
                7 => (task_arithmetic(w, &out[pick(b)].1, &out[pick(a + b)].1, 0.6, 0.5), Some(p)),
                _ => {
                    prior.adapter_base = (seed % 2 == 0).then(|| out[p].0.clone());
                    (adapter(w, seed % 8, 4, 0.1), None)
                }
            }
        };
        if let Some(p) = parent
            && seed % 4 == 1
        {
            prior.declared_bases = vec![out[p].0.to_uppercase()];
        }
        if op % 9 != 8 {
            full.push(i);
        }
        out.push((id, weights, prior));
    }
    out
}

/// Adds `order` in the given batches, removing `removed` models after they have been added (solving at
/// some steps), and compares the result with a batch recovery of the survivors.
fn check_incremental(specs: &[Spec], order: &[usize], cuts: &[usize], removed: &[usize], options: &Options) {
    let mut index = Index::new(options.clone());
    let mut start = 0;
    let mut bounds: Vec<usize> = cuts.iter().map(|&c| c % (order.len() + 1)).collect();
    bounds.push(order.len());
    bounds.sort_unstable();
    for (step, &end) in bounds.iter().enumerate() {
        let chunk: Vec<&Spec> = order[start..end.max(start)].iter().map(|&i| &specs[i]).collect();
        start = end.max(start);
        index.add(owned(&chunk));
        for &r in removed {
            if order[..start].contains(&r) && index.contains(&specs[r].0) && (r + step) % 2 == 0 {
                index.remove(&specs[r].0);
            }
        }
        if step % 2 == 1 {
            index.solve_touched();
        }
    }
    for &r in removed {
        index.remove(&specs[r].0);
    }
    let survivors: Vec<&Spec> = (0..specs.len()).filter(|i| !removed.contains(i)).map(|i| &specs[i]).collect();
    let expected = batch(&survivors, options);
    assert_eq!(index.recovery(), expected);
}

fn small_groups() -> Options {
    // Tiny limits so a dozen models exercise the screened path, its mode switches and the NN refills.
    Options { dense_limit: 4, screen_neighbours: 2, ..Options::default() }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn incremental_equals_batch(
        ops in proptest::collection::vec((0u8..9, 0usize..50, 0usize..50, 0u64..1000), 2..12),
        shuffle in proptest::collection::vec(0usize..1000, 12),
        cuts in proptest::collection::vec(0usize..20, 0..4),
        removed in proptest::collection::vec(0usize..12, 0..3),
        screened in any::<bool>(),
    ) {
        let specs = forest(&ops);
        let n = specs.len();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| (shuffle[i], i));
        let removed: Vec<usize> = removed.into_iter().filter(|&r| r < n).collect();
        let options = if screened { small_groups() } else { Options::default() };
        check_incremental(&specs, &order, &cuts, &removed, &options);
    }
}
