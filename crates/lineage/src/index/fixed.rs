//! Fixed parents: what is decided before any solve, from declarations and shapes.
//!
//! Declared names (an adapter's `base_model_name_or_path`, a card's `base_model`) resolve to held models by
//! exact id, then case-insensitively, then by a unique last path component; a model arriving or leaving can
//! only change the resolution of names with its tail, so only those are redone. From the resolved
//! declarations follow the fixed parents: an adapter's base (from the weights when a merged upload of it is
//! held, else its declared base, else a guess from shapes), a model without sketches hanging from its declared
//! base, and a declared base of another architecture as a metadata edge. A fixed parent is a family link.

use std::collections::BTreeSet;

use super::{Change, Index};
use crate::EdgeSource;
use crate::adapter_fit;
use crate::limits::QUICK_ENTRIES;
use crate::prepare::{FixedParent, Kind, clean_name, shape_compatible};

impl Index<'_> {
    /// Recomputes the resolved declarations of `x`; a change re-settles its candidate pairs and fixed parent.
    pub(super) fn redeclare(&mut self, x: usize, change: &mut Change) {
        if self.node_opt(x).is_none() {
            return;
        }
        let names: Vec<String> = {
            let p = &self.node(x).prior;
            p.adapter_base.iter().chain(&p.declared_bases).cloned().collect()
        };
        let mut declared: Vec<usize> = Vec::new();
        for name in names {
            if let Some(p) = self.resolve(&name)
                && p != x
                && !declared.contains(&p)
            {
                declared.push(p);
            }
        }
        let old = std::mem::replace(&mut self.node_mut(x).declared, declared.clone());
        if old == declared && !change.fresh.contains(&x) {
            return;
        }
        for p in old {
            if let Some(n) = self.nodes.get_mut(p).and_then(|n| n.as_deref_mut()) {
                n.declared_by.remove(&x);
            }
        }
        for &p in &declared {
            self.node_mut(p).declared_by.insert(x);
            change.cands.insert(p);
        }
        self.dirty.insert(x);
        change.cands.insert(x);
        change.fixed.insert(x);
    }

    /// Resolves a declared model name: exact id, then case-insensitive, then a unique match on the last path
    /// component (cards often name `org/model` where a local folder is `model`).
    fn resolve(&self, name: &str) -> Option<usize> {
        let name = clean_name(name);
        if let Some(&i) = self.by_id.get(name) {
            return Some(i);
        }
        let unique = |set: &BTreeSet<usize>| if set.len() == 1 { set.first().copied() } else { None };
        let lower = name.to_ascii_lowercase();
        if let Some(set) = self.lower.get(&lower) {
            return unique(set);
        }
        let tail = lower.rsplit('/').next().unwrap_or(&lower);
        self.tail.get(tail).and_then(unique)
    }

    /// Marks the adapters whose guessed base may change because full model `x` arrived or left.
    pub(super) fn adapters_near(&self, x: usize, change: &mut Change) {
        let node = self.node(x);
        if node.kind != Kind::Full || node.quantized {
            return;
        }
        for &a in &self.adapters {
            if a != x && shape_compatible(&self.node(a).signature, &node.signature) {
                change.fixed.insert(a);
            }
        }
    }

    fn compute_fixed(&self, i: usize) -> Option<FixedParent> {
        let node = self.node(i);
        match node.kind {
            Kind::Full => {
                // A declared base with another fingerprint cannot be tested by the weights: the declaration
                // stands as a metadata edge. A declared base in the same group is left to the weights.
                let mut comparable = node.declared.iter().filter(|&&p| self.node(p).group.is_some());
                if comparable.clone().any(|&p| self.node(p).group == node.group) {
                    return None;
                }
                comparable.next().map(|&parent| FixedParent { parent, source: EdgeSource::Metadata, confidence: 0.3 })
            }
            Kind::Adapter => self.adapter_parent(i),
            Kind::Opaque => node.declared.first().map(|&parent| FixedParent {
                parent,
                source: EdgeSource::Metadata,
                confidence: 0.5,
            }),
        }
    }

    /// An adapter's parent. First the weights: a shape-compatible model `P` such that another indexed model is `P`
    /// with this adapter merged in ([`adapter_fit`]); that overrides the card. Else its declared base when the
    /// shapes fit (a metadata edge the shapes confirm), else the earliest-created shape-compatible full,
    /// non-quantised model (a weak guess from shapes alone).
    fn adapter_parent(&self, i: usize) -> Option<FixedParent> {
        let adapter = self.node(i);
        let mut candidates: Vec<usize> = self
            .by_id
            .values()
            .copied()
            .filter(|&p| {
                let n = self.node(p);
                p != i && n.kind == Kind::Full && !n.quantized && shape_compatible(&adapter.signature, &n.signature)
            })
            .collect();
        let declared_fit = |p: usize| {
            self.node(p).kind != Kind::Adapter && shape_compatible(&adapter.signature, &self.node(p).signature)
        };
        if let Some((parent, residual)) = self.merged_upload_base(i, &candidates) {
            let source = if adapter.declared.contains(&parent) { EdgeSource::Both } else { EdgeSource::Weights };
            return Some(FixedParent { parent, source, confidence: (1.0 - residual).clamp(0.5, 0.99) });
        }
        if let Some(&parent) = adapter.declared.iter().find(|&&p| declared_fit(p)) {
            return Some(FixedParent { parent, source: EdgeSource::Metadata, confidence: 0.9 });
        }
        candidates.sort_by(|&a, &b| {
            let key = |p: usize| (self.node(p).prior.created_at.unwrap_or(i64::MAX), self.node(p).id.as_ref());
            key(a).cmp(&key(b))
        });
        let parent = *candidates.first()?;
        // With one candidate the shapes decide; with several this is a guess.
        let confidence = if candidates.len() == 1 { 0.6 } else { 0.1 };
        Some(FixedParent { parent, source: EdgeSource::Weights, confidence })
    }

    /// The base `P` among `candidates` (shape-compatible full models) for which some other candidate `M` is `P` with
    /// adapter `i` merged in, with the smallest residual under [`adapter_fit::MERGED_FIT`]; ties go to the first by
    /// id. Every pair is tried (a quick pass on a few sketch entries first) when the candidates are at most
    /// [`crate::Options::dense_limit`]; above that only declared bases are tried as `P`. A function of the model set alone, so the
    /// incremental and batch results agree; any full model added or removed re-fixes the adapters it fits.
    fn merged_upload_base(&self, i: usize, candidates: &[usize]) -> Option<(usize, f64)> {
        let adapter = &self.node(i).signature;
        let mut by_id: Vec<usize> = candidates.to_vec();
        by_id.sort_by(|&a, &b| self.node(a).id.cmp(&self.node(b).id));
        let bases: Vec<usize> = if by_id.len() <= self.options.dense_limit {
            by_id.clone()
        } else {
            by_id.iter().copied().filter(|p| self.node(i).declared.contains(p)).collect()
        };
        let mut best: Option<(usize, f64)> = None;
        for &p in &bases {
            let base = &self.node(p).signature;
            for &m in &by_id {
                if m == p {
                    continue;
                }
                let merged = &self.node(m).signature;
                let quick = adapter_fit::merged_residual(adapter, base, merged, QUICK_ENTRIES);
                if quick.is_none_or(|q| q > 2.0 * adapter_fit::MERGED_FIT) {
                    continue;
                }
                let Some(r) = adapter_fit::merged_residual(adapter, base, merged, usize::MAX) else { continue };
                if r < adapter_fit::MERGED_FIT && best.is_none_or(|(_, b)| r < b) {
                    best = Some((p, r));
                }
            }
        }
        best
    }

    pub(super) fn refix(&mut self, i: usize, change: &mut Change) {
        if self.node_opt(i).is_none() {
            return;
        }
        let new = self.compute_fixed(i);
        let old = self.node(i).fixed;
        if new == old {
            return;
        }
        if let Some(f) = old {
            self.unlink(i, f.parent, change);
            self.dirty.insert(f.parent);
        }
        if let Some(f) = new {
            self.link(i, f.parent, change);
            self.dirty.insert(f.parent);
        }
        self.node_mut(i).fixed = new;
        self.dirty.insert(i);
    }
}
