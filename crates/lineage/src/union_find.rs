//! A growable union-find over model indices: the family structure of lineage recovery.
//!
//! Families are the connected components of the "related" relation. Batch recovery unions every related pair;
//! the incremental daemon keeps one [`UnionFind`] alive, [`UnionFind::add`]s each new model and unions it with
//! the models it relates to, and only re-solves the components whose representative changed. Components are
//! reported in a canonical order (members ascending, components by their smallest member) so batch and
//! incremental runs give identical output.

/// Disjoint sets over `0..len()`, with union by size and path halving.
#[derive(Clone, Debug, Default)]
pub struct UnionFind {
    parent: Vec<usize>,
    size: Vec<usize>,
}

impl UnionFind {
    /// `n` singletons.
    pub fn new(n: usize) -> UnionFind {
        UnionFind { parent: (0..n).collect(), size: vec![1; n] }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.parent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.parent.is_empty()
    }

    /// Adds a new singleton and returns its index.
    pub fn add(&mut self) -> usize {
        let index = self.parent.len();
        self.parent.push(index);
        self.size.push(1);
        index
    }

    /// The representative of `x`'s set. Panics if `x >= len()`, like slice indexing.
    pub fn find(&mut self, mut x: usize) -> usize {
        while self.parent[x] != x {
            // Path halving: point every other node at its grandparent.
            self.parent[x] = self.parent[self.parent[x]];
            x = self.parent[x];
        }
        x
    }

    /// Joins the sets of `a` and `b`; returns false when they were already one set.
    pub fn union(&mut self, a: usize, b: usize) -> bool {
        let (mut a, mut b) = (self.find(a), self.find(b));
        if a == b {
            return false;
        }
        if self.size[a] < self.size[b] {
            std::mem::swap(&mut a, &mut b);
        }
        self.parent[b] = a;
        self.size[a] += self.size[b];
        true
    }

    /// Makes `x` a singleton again. Only sound when every member of `x`'s set is reset in the same breath
    /// (the index does this to split a family after a removal, then unions what is still linked).
    pub fn reset(&mut self, x: usize) {
        self.parent[x] = x;
        self.size[x] = 1;
    }

    /// True when `a` and `b` are in the same set.
    pub fn same(&mut self, a: usize, b: usize) -> bool {
        self.find(a) == self.find(b)
    }

    /// Size of the set holding `x`.
    pub fn set_size(&mut self, x: usize) -> usize {
        let root = self.find(x);
        self.size[root]
    }

    /// All sets, each sorted ascending, ordered by their smallest member (singletons included).
    pub fn components(&mut self) -> Vec<Vec<usize>> {
        let mut slot = vec![usize::MAX; self.len()];
        let mut out: Vec<Vec<usize>> = Vec::new();
        for x in 0..self.len() {
            let root = self.find(x);
            if slot[root] == usize::MAX {
                slot[root] = out.len();
                out.push(Vec::new());
            }
            out[slot[root]].push(x);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(n: usize, unions: &[(usize, usize)], expected: &[&[usize]]) {
        let mut uf = UnionFind::new(n);
        for &(a, b) in unions {
            uf.union(a, b);
        }
        let expected: Vec<Vec<usize>> = expected.iter().map(|c| c.to_vec()).collect();
        assert_eq!(uf.components(), expected);
    }

    #[test]
    fn components_are_canonical() {
        check(0, &[], &[]);
        check(3, &[], &[&[0], &[1], &[2]]);
        check(5, &[(4, 2), (0, 3)], &[&[0, 3], &[1], &[2, 4]]);
        check(5, &[(4, 2), (2, 0), (3, 1)], &[&[0, 2, 4], &[1, 3]]);
    }

    #[test]
    fn union_reports_change_and_add_grows() {
        let mut uf = UnionFind::new(2);
        assert!(uf.union(0, 1));
        assert!(!uf.union(1, 0));
        let new = uf.add();
        assert_eq!(new, 2);
        assert!(!uf.same(0, 2));
        assert!(uf.union(2, 1));
        assert_eq!(uf.set_size(0), 3);
        assert_eq!(uf.components(), vec![vec![0, 1, 2]]);
    }

    #[test]
    fn incremental_equals_batch() {
        let pairs = [(5, 1), (2, 7), (1, 7), (3, 4), (6, 6)];
        let mut batch = UnionFind::new(8);
        for &(a, b) in &pairs {
            batch.union(a, b);
        }
        let mut incremental = UnionFind::default();
        for v in 0..8 {
            incremental.add();
            for &(a, b) in pairs.iter().filter(|&&(a, b)| a.max(b) == v) {
                incremental.union(a, b);
            }
        }
        assert_eq!(batch.components(), incremental.components());
    }
}
