//! Deciding what is signed for one model, from its parsed headers alone (no IO).
//!
//! A model's signature holds one [`TensorSignature`] per stored tensor, named canonically (a PEFT
//! `base_model.model.` prefix removed), plus:
//! - for an I8/F8 weight `X.weight` with a sibling `X.weight_scale` of a shape we understand (and no
//!   `X.weight_zero_point`): the signature of the dequantised values, under the weight's own name;
//! - for each LoRA pair `X.lora_A.weight` / `X.lora_B.weight`: the signature of `B·A·scaling`, named
//!   `X.weight`, so it lines up with the base model's tensor.
//!
//! [`plan`] returns these as [`Job`]s; the mmap reader runs them, and a network reader can run the same jobs on
//! ranged reads, so both agree on what a model's signature contains.
//!
//! [`TensorSignature`]: crate::model::TensorSignature

use std::collections::BTreeMap;

use crate::accumulate::Scales;
use crate::header::TensorInfo;
use crate::model::Dtype;

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
}

impl Job {
    /// The name of the signature the job produces.
    pub fn name(&self) -> &str {
        match self {
            Job::Stored { name, .. } | Job::Dequantized { name, .. } | Job::LoraDelta { name, .. } => name,
        }
    }
}

/// Why a set of headers cannot form one model.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("tensor {name:?} is defined twice (files {first} and {second})")]
    DuplicateTensor { name: String, first: usize, second: usize },
}

/// The jobs that sign a model stored in `files` (each file's header tensors), sorted by name. With
/// `dequantize` false, quantised weights are signed as stored.
///
/// # Errors
/// [`PlanError::DuplicateTensor`] when two tensors share a canonical name, or a LoRA delta's name is taken.
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
    }
    Ok(jobs)
}

#[cfg(test)]
mod tests {
    use super::*;

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
