//! Families: the connected components of the link graph (related candidate pairs and fixed parents), kept in a
//! [`crate::union_find::UnionFind`] with a member list per representative.
//!
//! A new link unions two families at once. A lost link (a removed model, a dropped candidate pair, a changed
//! fixed parent) may split one, which a union-find cannot undo: its endpoints become suspects, and
//! [`Index::rebuild`] re-derives the components of their family from the remaining links, after a cheap search
//! that usually finds the endpoints still connected.

use std::collections::{BTreeMap, BTreeSet};

use super::{Change, Index};

impl Index<'_> {
    pub(super) fn link(&mut self, a: usize, b: usize, change: &mut Change) {
        *self.node_mut(a).links.entry(b).or_insert(0) += 1;
        *self.node_mut(b).links.entry(a).or_insert(0) += 1;
        let (ra, rb) = (self.uf.find(a), self.uf.find(b));
        if ra == rb {
            return;
        }
        let lone_fresh = |r: usize| self.members[&r].len() == 1 && change.fresh.contains(&self.members[&r][0]);
        if !lone_fresh(ra) && !lone_fresh(rb) {
            change.merged += 1;
        }
        self.uf.union(a, b);
        let root = self.uf.find(a);
        let other = if root == ra { rb } else { ra };
        let moved = self.members.remove(&other).unwrap_or_default();
        self.members.entry(root).or_default().extend(moved);
    }

    pub(super) fn unlink(&mut self, a: usize, b: usize, change: &mut Change) {
        for (x, y) in [(a, b), (b, a)] {
            let links = &mut self.node_mut(x).links;
            if let Some(count) = links.get_mut(&y) {
                *count -= 1;
                if *count == 0 {
                    links.remove(&y);
                }
            }
        }
        change.suspects.insert(a);
        change.suspects.insert(b);
    }

    /// Splits the families of suspects that lost links into their true components.
    pub(super) fn rebuild(&mut self, change: &mut Change) {
        // Endpoints of dropped links, by the family they were in.
        let mut by_root: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for s in std::mem::take(&mut change.suspects) {
            if s < self.uf.len() {
                by_root.entry(self.uf.find(s)).or_default().push(s);
            }
        }
        for (root, ends) in by_root {
            let Some(members) = self.members.get_mut(&root) else { continue };
            if ends.iter().any(|&e| !self.nodes.get(e).is_some_and(|n| n.is_some()))
                || ends.iter().any(|&e| {
                    // A node being removed is still in the arena but no longer in `by_id`.
                    self.nodes[e].as_deref().is_some_and(|n| self.by_id.get(n.id.as_ref()) != Some(&e))
                })
            {
                let by_id = &self.by_id;
                let nodes = &self.nodes;
                members.retain(|&m| nodes[m].as_deref().is_some_and(|n| by_id.get(n.id.as_ref()) == Some(&m)));
            }
            let alive: Vec<usize> = ends.iter().copied().filter(|&e| self.is_live(e)).collect();
            if self.members.get(&root).is_some_and(|m| m.is_empty()) {
                self.members.remove(&root);
                continue;
            }
            // Usually the endpoints are still connected by a short detour (screened neighbours share
            // neighbours): a search that stops once it has met them all is far cheaper than a rebuild.
            if alive.len() <= 1 || self.connected(&alive) {
                continue;
            }
            let Some(old) = self.members.remove(&root) else { continue };
            for &m in &old {
                self.uf.reset(m);
            }
            for &m in &old {
                let links: Vec<usize> = self.node(m).links.keys().copied().collect();
                for l in links {
                    self.uf.union(m, l);
                }
            }
            let mut parts: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
            for &m in &old {
                parts.entry(self.uf.find(m)).or_default().push(m);
            }
            change.split += parts.len().saturating_sub(1);
            for (r, ms) in parts {
                for &m in &ms {
                    self.dirty.insert(m);
                }
                self.members.insert(r, ms);
            }
        }
    }

    /// Whether all of `nodes` lie in one component of the link graph: a breadth-first search from the first
    /// that stops as soon as it has met every other one.
    fn connected(&self, nodes: &[usize]) -> bool {
        let mut wanted: BTreeSet<usize> = nodes[1..].iter().copied().collect();
        let mut seen: BTreeSet<usize> = BTreeSet::from([nodes[0]]);
        let mut queue = std::collections::VecDeque::from([nodes[0]]);
        while let Some(v) = queue.pop_front() {
            for &w in self.node(v).links.keys() {
                if seen.insert(w) {
                    wanted.remove(&w);
                    if wanted.is_empty() {
                        return true;
                    }
                    queue.push_back(w);
                }
            }
        }
        wanted.is_empty()
    }
}
