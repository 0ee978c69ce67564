//! Deciding what is signed for one model, from its parsed headers alone (no IO).
//!
//! A model's signature holds one [`TensorSignature`] per stored tensor, named canonically (a PEFT
//! `base_model.model.` prefix removed), plus:
//! - for an I8/F8 weight `X.weight` with a sibling `X.weight_scale` of a shape we understand (and no
//!   `X.weight_zero_point`): the signature of the dequantised values, under the weight's own name;
//! - for each LoRA pair `X.lora_A.weight` / `X.lora_B.weight`: the signature of `B·A·scaling`, named
//!   `X.weight`, so it lines up with the base model's tensor;
//! - for each packed 4-bit module (`X.qweight` with `X.qzeros` and `X.scales`, plus `X.g_idx` for GPTQ): the
//!   signature of the dequantised `[out, in]` weight, named `X.weight` (see [`crate::packed`]). Inconsistent
//!   packed shapes, or another width than 4 bits, are an error rather than a silently raw signature.
//!
//! [`plan`] returns these as [`Job`]s; the local reader runs them, and a network reader can run the same jobs on
//! ranged reads, so both agree on what a model's signature contains.
//!
//! [`TensorSignature`]: crate::model::TensorSignature

use std::collections::BTreeMap;

use crate::accumulate::Scales;
use crate::header::TensorInfo;
use crate::model::Dtype;
use crate::packed::{Declared, PackedError, PackedLayout, PackedTensors, packed_layout};

/// The prefix PEFT puts before module names in adapter files.
pub const PEFT_PREFIX: &str = "base_model.model.";

/// `name` without a PEFT `base_model.model.` prefix.
pub fn canonical_name(name: &str) -> &str {
    name.strip_prefix(PEFT_PREFIX).unwrap_or(name)
}

/// A stored tensor: `files[file][tensor]` of the slices given to [`plan`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorRef {
    pub file: usize,
    pub tensor: usize,
}

/// One tensor signature to compute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Job {
    /// A stored tensor, from its own bytes ([`crate::TensorAccumulator::new`]).
    Stored { name: String, tensor: TensorRef },
    /// A quantised weight, from `q × scale` ([`crate::TensorAccumulator::dequantized`] with
    /// [`Scales::from_tensor`] of the scale tensor).
    Dequantized { name: String, weight: TensorRef, scale: TensorRef },
    /// A LoRA update `B·A·scaling` ([`crate::lora_delta_signature`]).
    LoraDelta { name: String, a: TensorRef, b: TensorRef },
    /// A packed 4-bit weight, from its whole packed tensors ([`crate::packed_signature`]).
    Packed { name: String, layout: PackedLayout, tensors: PackedTensors<TensorRef> },
}

impl Job {
    /// The name of the signature the job produces.
    pub fn name(&self) -> &str {
        match self {
            Job::Stored { name, .. }
            | Job::Dequantized { name, .. }
            | Job::LoraDelta { name, .. }
            | Job::Packed { name, .. } => name,
        }
    }
}

/// Why a set of headers cannot form one model.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("tensor {name:?} is defined twice (files {first} and {second})")]
    DuplicateTensor { name: String, first: usize, second: usize },
    #[error("packed weights of {module:?}: {source}")]
    Packed { module: String, source: PackedError },
}

fn declared(t: &TensorInfo) -> Declared<'_> {
    Declared { dtype: t.dtype, shape: &t.shape }
}

/// The jobs that sign a model stored in `files` (each file's header tensors), sorted by name. With
/// `dequantize` false, quantised weights are signed as stored (and packed ones are not checked).
///
/// # Errors
/// [`PlanError::DuplicateTensor`] when two tensors share a canonical name, or a LoRA delta's or dequantised
/// packed weight's name is taken; [`PlanError::Packed`] when a module's packed tensors do not fit together.
pub fn plan(files: &[&[TensorInfo]], dequantize: bool) -> Result<Vec<Job>, PlanError> {
    let mut by_name: BTreeMap<&str, (TensorRef, &TensorInfo)> = BTreeMap::new();
    for (file, tensors) in files.iter().enumerate() {
        for (tensor, info) in tensors.iter().enumerate() {
            let name = canonical_name(&info.name);
            if let Some((first, _)) = by_name.insert(name, (TensorRef { file, tensor }, info)) {
                return Err(PlanError::DuplicateTensor { name: name.to_owned(), first: first.file, second: file });
            }
        }
    }
    let mut jobs = Vec::with_capacity(by_name.len());
    for (&name, &(at, info)) in &by_name {
        let scale = dequantize
            .then(|| by_name.get(format!("{name}_scale").as_str()))
            .flatten()
            .filter(|_| name.ends_with(".weight") && matches!(info.dtype, Dtype::I8 | Dtype::F8E4M3 | Dtype::F8E5M2))
            // An asymmetric scheme (zero points) needs more than `q × scale`: sign such weights as stored.
            .filter(|_| !by_name.contains_key(format!("{name}_zero_point").as_str()))
            .filter(|(_, s)| Scales::per_row(&info.shape, s.dtype, &s.shape).is_some());
        jobs.push(match scale {
            Some(&(scale, _)) => Job::Dequantized { name: name.to_owned(), weight: at, scale },
            None => Job::Stored { name: name.to_owned(), tensor: at },
        });
        if let Some(module) = name.strip_suffix(".lora_A.weight")
            && let Some(&(b, _)) = by_name.get(format!("{module}.lora_B.weight").as_str())
        {
            let delta = format!("{module}.weight");
            if let Some((existing, _)) = by_name.get(delta.as_str()) {
                return Err(PlanError::DuplicateTensor { name: delta, first: existing.file, second: at.file });
            }
            jobs.push(Job::LoraDelta { name: delta, a: at, b });
        }
        if dequantize
            && let Some(module) = name.strip_suffix(".qweight")
            && let Some(&(qzeros, zi)) = by_name.get(format!("{module}.qzeros").as_str())
            && let Some(&(scales, si)) = by_name.get(format!("{module}.scales").as_str())
        {
            let g_idx = by_name.get(format!("{module}.g_idx").as_str()).copied();
            let layout = packed_layout(PackedTensors {
                qweight: declared(info),
                qzeros: declared(zi),
                scales: declared(si),
                g_idx: g_idx.map(|(_, g)| declared(g)),
            })
            .map_err(|source| PlanError::Packed { module: module.to_owned(), source })?;
            let weight = format!("{module}.weight");
            if let Some((existing, _)) = by_name.get(weight.as_str()) {
                return Err(PlanError::DuplicateTensor { name: weight, first: existing.file, second: at.file });
            }
            // AWQ has no g_idx; a stray one beside an AWQ layout is not used (nor read).
            let g_idx = g_idx.filter(|_| layout.format == crate::packed::PackedFormat::Gptq).map(|(r, _)| r);
            let tensors = PackedTensors { qweight: at, qzeros, scales, g_idx };
            jobs.push(Job::Packed { name: weight, layout, tensors });
        }
    }
    Ok(jobs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packed::PackedFormat;

    fn t(name: &str, dtype: Dtype, shape: &[u64]) -> TensorInfo {
        TensorInfo { name: name.to_owned(), dtype, shape: shape.to_vec(), begin: 0, end: 0 }
    }

    fn r(file: usize, tensor: usize) -> TensorRef {
        TensorRef { file, tensor }
    }

    fn stored(name: &str, file: usize, tensor: usize) -> Job {
        Job::Stored { name: name.to_owned(), tensor: r(file, tensor) }
    }

    #[test]
    fn pairs_scales_and_lora_factors() {
        let a = [
            t("q.weight", Dtype::F8E4M3, &[4, 8]),
            t("q.weight_scale", Dtype::BF16, &[4, 1]),
            t("k.weight", Dtype::I8, &[4, 8]),
            t("k.weight_scale", Dtype::F32, &[2, 2]),
        ];
        let b = [
            t("base_model.model.v.lora_A.weight", Dtype::F32, &[2, 8]),
            t("base_model.model.v.lora_B.weight", Dtype::F32, &[4, 2]),
            t("z.weight", Dtype::I8, &[4, 8]),
            t("z.weight_scale", Dtype::F32, &[]),
            t("z.weight_zero_point", Dtype::I8, &[]),
        ];
        let jobs = plan(&[&a, &b], true).expect("a valid model");
        assert_eq!(
            jobs,
            [
                stored("k.weight", 0, 2),
                stored("k.weight_scale", 0, 3),
                Job::Dequantized { name: "q.weight".into(), weight: r(0, 0), scale: r(0, 1) },
                stored("q.weight_scale", 0, 1),
                stored("v.lora_A.weight", 1, 0),
                Job::LoraDelta { name: "v.weight".into(), a: r(1, 0), b: r(1, 1) },
                stored("v.lora_B.weight", 1, 1),
                stored("z.weight", 1, 2),
                stored("z.weight_scale", 1, 3),
                stored("z.weight_zero_point", 1, 4),
            ]
        );
        let raw = plan(&[&a], false).expect("a valid model");
        assert_eq!(raw[2], stored("q.weight", 0, 0));
    }

    #[test]
    fn packed_modules_become_dequantised_weights() {
        let gptq = [
            t("q.g_idx", Dtype::I32, &[64]),
            t("q.qweight", Dtype::I32, &[8, 32]),
            t("q.qzeros", Dtype::I32, &[4, 4]),
            t("q.scales", Dtype::F16, &[4, 32]),
        ];
        let awq = [
            t("k.qweight", Dtype::I32, &[64, 4]),
            t("k.qzeros", Dtype::I32, &[4, 4]),
            t("k.scales", Dtype::F16, &[4, 32]),
        ];
        let jobs = plan(&[&gptq, &awq], true).expect("a valid model");
        let packed: Vec<&Job> = jobs.iter().filter(|j| matches!(j, Job::Packed { .. })).collect();
        let layout = |format, inputs| PackedLayout { format, out: 32, inputs, groups: 4, bits: 4 };
        assert_eq!(
            packed,
            [
                &Job::Packed {
                    name: "k.weight".into(),
                    layout: layout(PackedFormat::Awq, 64),
                    tensors: PackedTensors { qweight: r(1, 0), qzeros: r(1, 1), scales: r(1, 2), g_idx: None },
                },
                &Job::Packed {
                    name: "q.weight".into(),
                    layout: layout(PackedFormat::Gptq, 64),
                    tensors: PackedTensors { qweight: r(0, 1), qzeros: r(0, 2), scales: r(0, 3), g_idx: Some(r(0, 0)) },
                },
            ]
        );
        assert_eq!(jobs.len(), 7 + 2);
        assert!(plan(&[&gptq], false).expect("raw").iter().all(|j| matches!(j, Job::Stored { .. })));
        // The dequantised weight's name must be free, and shapes must fit.
        let taken = [t("q.weight", Dtype::F16, &[32, 64])];
        assert_eq!(
            plan(&[&gptq, &taken], true),
            Err(PlanError::DuplicateTensor { name: "q.weight".into(), first: 1, second: 0 })
        );
        // 3-bit GPTQ packs values across words: refused.
        let bad = [
            t("q.qweight", Dtype::I32, &[6, 32]),
            t("q.qzeros", Dtype::I32, &[4, 3]),
            t("q.scales", Dtype::F16, &[4, 32]),
        ];
        assert_eq!(
            plan(&[&bad], true),
            Err(PlanError::Packed { module: "q".into(), source: crate::packed::PackedError::Bits { bits: 3 } })
        );
    }

    #[test]
    fn names_must_be_unique_after_canonicalisation() {
        let a = [t("w", Dtype::F32, &[1])];
        let b = [t("base_model.model.w", Dtype::F32, &[1])];
        assert_eq!(plan(&[&a, &b], true), Err(PlanError::DuplicateTensor { name: "w".into(), first: 0, second: 1 }));
        let c = [t("m.lora_A.weight", Dtype::F32, &[1, 1]), t("m.lora_B.weight", Dtype::F32, &[1, 1])];
        let d = [t("m.weight", Dtype::F32, &[1, 1])];
        assert_eq!(
            plan(&[&d, &c], true),
            Err(PlanError::DuplicateTensor { name: "m.weight".into(), first: 0, second: 1 })
        );
    }
}
