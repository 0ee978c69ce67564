//! Weights evidence for a PEFT adapter's base. An adapter holds only `B·A` (signed as the update `Δ` under the
//! base tensor's name), so by itself it says nothing about which model it was trained on. But when the adapter
//! was also uploaded merged — a model `M = P + Δ`, as "-merged" repos are — sketches are linear, so
//! `S(M) − S(P) = S(Δ)` on every tensor the adapter changes, and no other pair of models comes close: that names
//! `P` from the weights, whatever the adapter's card declares.

use signature::{ModelSignature, TensorSignature, ValueSource};

/// Largest residual ([`merged_residual`]) that counts as "`merged` is `base` with this adapter merged in". An
/// unrelated pair leaves at least the whole update unexplained (residual ≥ 1, usually far more since `M − P`
/// adds its own difference); storage rounding of `M` and `P` in bf16 (≈ 0.3 % of ‖W‖) against an update of
/// 1 % of ‖W‖ stays under 0.1.
pub(crate) const MERGED_FIT: f64 = 0.25;

/// `Σ‖S_M − S_P − S_Δ‖² / Σ‖S_Δ‖²` over the adapter's sketched delta tensors that `base` and `merged` both have
/// with sketches of the same size, on the first `per_tensor` entries of each sketch. `None` when no tensor can be
/// compared or the update is zero.
pub(crate) fn merged_residual(
    adapter: &ModelSignature,
    base: &ModelSignature,
    merged: &ModelSignature,
    per_tensor: usize,
) -> Option<f64> {
    let (mut unexplained, mut update) = (0.0f64, 0.0f64);
    for delta in adapter.tensors.iter().filter(|t| t.source == ValueSource::AdapterDelta) {
        let Some(d) = delta.sketch.as_ref() else { continue };
        let (Some(p), Some(m)) = (same_sketch(base, delta, d.values.len()), same_sketch(merged, delta, d.values.len()))
        else {
            continue;
        };
        for ((&m, &p), &d) in m.iter().zip(p).zip(&d.values).take(per_tensor) {
            let r = f64::from(m) - f64::from(p) - f64::from(d);
            unexplained += r * r;
            update += f64::from(d) * f64::from(d);
        }
    }
    (update > 0.0).then(|| unexplained / update)
}

/// `m`'s sketch of the tensor `delta` changes, when it is a stored (not adapter) tensor of the same shape with a
/// sketch of `len` entries.
fn same_sketch<'m>(m: &'m ModelSignature, delta: &TensorSignature, len: usize) -> Option<&'m [f32]> {
    m.tensor(&delta.name)
        .filter(|t| t.source != ValueSource::AdapterDelta && t.shape == delta.shape)
        .and_then(|t| t.sketch.as_ref())
        .filter(|s| s.values.len() == len)
        .map(|s| s.values.as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::QUICK_ENTRIES;
    use crate::testkit::{adapter, cast_bf16, finetune, lora, root, scheme, sign};

    #[test]
    fn a_merged_upload_names_the_adapters_base() {
        let s = scheme();
        let r = root(1);
        let f = finetune(&r, 10, 0.15);
        let a = sign(&adapter(&f, 14, 4, 0.05), &s);
        // The adapter merged into its true base and stored in bf16, as merged uploads usually are.
        let merged = sign(&cast_bf16(&lora(&f, 14, 4, 0.05)), &s);
        let (r, f) = (sign(&r, &s), sign(&f, &s));
        let fit = merged_residual(&a, &f, &merged, usize::MAX).expect("comparable");
        assert!(fit < 0.05, "the true base explains the merged upload: {fit}");
        // The root of the same tree does not, nor does the merged model against itself.
        let wrong = merged_residual(&a, &r, &merged, usize::MAX).expect("comparable");
        assert!(wrong > 1.0, "{wrong}");
        assert!(merged_residual(&a, &merged, &merged, usize::MAX).expect("comparable") >= 1.0 - 1e-9);
        // A full model is no adapter: nothing to compare.
        assert_eq!(merged_residual(&f, &r, &merged, usize::MAX), None);
        let quick = merged_residual(&a, &f, &merged, QUICK_ENTRIES).expect("comparable");
        assert!(quick < 0.1, "{quick}");
    }
}
