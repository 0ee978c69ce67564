//! Minimum-cost spanning arborescence (Chu-Liu/Edmonds), in Tarjan's `O(E log V)` form.
//!
//! Lineage recovery ends in one call to [`min_arborescence`]: every model is a node, every candidate
//! "parent → child" edge carries a cost, and a virtual root with an edge of cost τ to every model makes "no
//! parent among the models seen" an ordinary choice. The implementation follows the contraction algorithm as
//! Gabow, Galil, Spencer and Tarjan made it fast: each node keeps a mergeable heap of its incoming edges with a
//! lazy "subtract" tag, cycles are contracted with a union-find that can roll back, and rolling the contractions
//! back in reverse order expands the chosen edges into a parent array. A leftist heap (not a skew heap) keeps
//! the merge recursion `O(log E)` deep, so a family of 10,000 models cannot overflow the stack.

/// Marks "no node" in the heap arena and in the per-node tables.
const NIL: u32 = u32::MAX;

/// Finds a minimum-cost arborescence of `n` nodes rooted at `root`.
///
/// `edges` holds `(parent, child, cost)`. Edges into `root`, self-loops, edges with an endpoint `>= n` and edges
/// whose cost is not finite are ignored; parallel edges are allowed (the cheapest wins). Returns the parent of
/// every node (`None` for `root`), or `None` when some node cannot be reached from `root` (or `root >= n`, or
/// there are 2³² edges or more).
/// When several arborescences have the same minimum cost, which one is returned depends only on the input order.
pub fn min_arborescence(n: usize, root: usize, edges: &[(usize, usize, f64)]) -> Option<Vec<Option<usize>>> {
    min_arborescence_in(&mut Workspace::default(), n, root, edges)
}

/// Buffers of [`min_arborescence_in`], kept by a caller that solves again and again (a 10,000-model family's
/// heap arena is megabytes, and allocating it afresh costs page faults on every solve).
#[derive(Debug, Default)]
pub struct Workspace {
    heap: Vec<HeapNode>,
    queue_of: Vec<u32>,
    seen: Vec<usize>,
    path: Vec<usize>,
    chosen: Vec<u32>,
    in_edge: Vec<u32>,
    link: Vec<isize>,
    history: Vec<(usize, isize)>,
}

/// [`min_arborescence`] with buffers reused from `workspace`; the result is the same.
pub fn min_arborescence_in(
    workspace: &mut Workspace,
    n: usize,
    root: usize,
    edges: &[(usize, usize, f64)],
) -> Option<Vec<Option<usize>>> {
    // Heap links and edge indices are 32-bit to halve the arena; no family comes near 4 billion edges.
    if root >= n || edges.len() >= NIL as usize {
        return None;
    }
    let usable = |&(a, b, w): &(usize, usize, f64)| a < n && b < n && a != b && b != root && w.is_finite();
    let refill = |buffer: &mut Vec<u32>, len: usize, value: u32| {
        buffer.clear();
        buffer.resize(len, value);
    };

    // Heaps are built by merging edges in input order (not from sorted lists, which would be cheaper): the heap
    // shapes decide between equal-cost arborescences, and results must not move with the implementation.
    let mut heap = Heap { nodes: std::mem::take(&mut workspace.heap) };
    heap.nodes.clear();
    heap.nodes.reserve(edges.len());
    let mut queue_of = std::mem::take(&mut workspace.queue_of);
    refill(&mut queue_of, n, NIL);
    let result = arborescence(&mut heap, &mut queue_of, workspace, n, root, edges, usable);
    workspace.heap = heap.nodes;
    workspace.queue_of = queue_of;
    result
}

fn arborescence(
    heap: &mut Heap,
    queue_of: &mut [u32],
    workspace: &mut Workspace,
    n: usize,
    root: usize,
    edges: &[(usize, usize, f64)],
    usable: impl Fn(&(usize, usize, f64)) -> bool,
) -> Option<Vec<Option<usize>>> {
    for (index, e) in edges.iter().enumerate() {
        if usable(e) {
            heap.nodes.push(HeapNode { edge: index as u32, key: e.2, delta: 0.0, left: NIL, right: NIL, rank: 1 });
            let node = (heap.nodes.len() - 1) as u32;
            queue_of[e.1] = heap.merge(queue_of[e.1], node);
        }
    }

    let mut link = std::mem::take(&mut workspace.link);
    link.clear();
    link.resize(n, -1);
    let mut history = std::mem::take(&mut workspace.history);
    history.clear();
    let mut uf = RollbackUnionFind { link, history };
    let seen = &mut workspace.seen;
    seen.clear();
    seen.resize(n, usize::MAX);
    seen[root] = root;
    let path = &mut workspace.path;
    path.clear();
    path.resize(n, 0);
    let chosen = &mut workspace.chosen;
    chosen.clear();
    chosen.resize(n, 0);
    let in_edge = &mut workspace.in_edge;
    in_edge.clear();
    in_edge.resize(n, NIL);
    let result = contract_and_expand(heap, queue_of, &mut uf, seen, path, chosen, in_edge, n, root, edges);
    workspace.link = uf.link;
    workspace.history = uf.history;
    result
}

#[allow(clippy::too_many_arguments)]
fn contract_and_expand(
    heap: &mut Heap,
    queue_of: &mut [u32],
    uf: &mut RollbackUnionFind,
    seen: &mut [usize],
    path: &mut [usize],
    chosen: &mut [u32],
    in_edge: &mut [u32],
    n: usize,
    root: usize,
    edges: &[(usize, usize, f64)],
) -> Option<Vec<Option<usize>>> {
    // Contracted cycles in the order they were formed: (super node, union-find time, range of the cycle's
    // edges in `cycle_edges`). One flat list, since a large family forms thousands of small cycles.
    let mut cycles: Vec<(usize, usize, usize, usize)> = Vec::new();
    let mut cycle_edges: Vec<u32> = Vec::new();

    for start in 0..n {
        let mut u = start;
        let mut depth = 0;
        while seen[u] == usize::MAX {
            let top = queue_of[u];
            if top == NIL {
                return None;
            }
            let (edge, key) = heap.top(top);
            // Every other edge into this (super) node now costs its excess over the one just chosen.
            heap.add(top, -key);
            queue_of[u] = heap.pop(top);
            chosen[depth] = edge;
            path[depth] = u;
            depth += 1;
            seen[u] = start;
            u = uf.find(edges[edge as usize].0);
            if seen[u] == start {
                // The walk closed a cycle: contract it into one super node and keep walking from it.
                let mut merged = NIL;
                let end = depth;
                let time = uf.time();
                loop {
                    depth -= 1;
                    let w = path[depth];
                    merged = heap.merge(merged, queue_of[w]);
                    if !uf.join(u, w) {
                        break;
                    }
                }
                u = uf.find(u);
                queue_of[u] = merged;
                seen[u] = usize::MAX;
                let from = cycle_edges.len();
                cycle_edges.extend_from_slice(&chosen[depth..end]);
                cycles.push((u, time, from, cycle_edges.len()));
            }
        }
        for &edge in &chosen[..depth] {
            in_edge[uf.find(edges[edge as usize].1)] = edge;
        }
    }

    // Expand the contractions, newest first: the edge that enters a cycle replaces the cycle edge into the same
    // node, every other cycle edge stays.
    for &(node, time, from, to) in cycles.iter().rev() {
        uf.rollback(time);
        let entering = in_edge[node];
        for &edge in &cycle_edges[from..to] {
            in_edge[uf.find(edges[edge as usize].1)] = edge;
        }
        if entering != NIL {
            in_edge[uf.find(edges[entering as usize].1)] = entering;
        }
    }

    let mut parents = vec![None; n];
    for (v, parent) in parents.iter_mut().enumerate() {
        if v == root {
            continue;
        }
        let edge = *in_edge.get(v)?;
        if edge == NIL {
            return None;
        }
        *parent = Some(edges[edge as usize].0);
    }
    Some(parents)
}

/// One heap entry: an edge (index into the caller's list) and its current key. `delta` is a pending addition for
/// this node's whole subtree, pushed down lazily.
#[derive(Clone, Copy, Debug)]
struct HeapNode {
    key: f64,
    delta: f64,
    edge: u32,
    left: u32,
    right: u32,
    rank: u32,
}

/// An arena of leftist min-heaps with lazy key addition.
#[derive(Debug, Default)]
struct Heap {
    nodes: Vec<HeapNode>,
}

impl Heap {
    fn rank(&self, node: u32) -> u32 {
        if node == NIL { 0 } else { self.nodes[node as usize].rank }
    }

    fn push_down(&mut self, node: u32) {
        let HeapNode { delta, left, right, .. } = self.nodes[node as usize];
        if delta == 0.0 {
            return;
        }
        self.nodes[node as usize].key += delta;
        self.nodes[node as usize].delta = 0.0;
        if left != NIL {
            self.nodes[left as usize].delta += delta;
        }
        if right != NIL {
            self.nodes[right as usize].delta += delta;
        }
    }

    fn add(&mut self, node: u32, delta: f64) {
        self.nodes[node as usize].delta += delta;
    }

    fn top(&mut self, node: u32) -> (u32, f64) {
        self.push_down(node);
        (self.nodes[node as usize].edge, self.nodes[node as usize].key)
    }

    fn merge(&mut self, a: u32, b: u32) -> u32 {
        if a == NIL {
            return b;
        }
        if b == NIL {
            return a;
        }
        self.push_down(a);
        self.push_down(b);
        let (a, b) = if self.nodes[b as usize].key < self.nodes[a as usize].key { (b, a) } else { (a, b) };
        let right = self.merge(self.nodes[a as usize].right, b);
        let node = &mut self.nodes[a as usize];
        node.right = right;
        let left = node.left;
        if self.rank(left) < self.rank(right) {
            let node = &mut self.nodes[a as usize];
            node.left = right;
            node.right = left;
        }
        self.nodes[a as usize].rank = self.rank(self.nodes[a as usize].right) + 1;
        a
    }

    fn pop(&mut self, node: u32) -> u32 {
        self.push_down(node);
        let HeapNode { left, right, .. } = self.nodes[node as usize];
        self.merge(left, right)
    }
}

/// Union by size without path compression, so every join can be undone in reverse order.
#[derive(Debug)]
struct RollbackUnionFind {
    /// Negative size for a representative, else the parent.
    link: Vec<isize>,
    history: Vec<(usize, isize)>,
}

impl RollbackUnionFind {
    fn find(&self, mut x: usize) -> usize {
        while self.link[x] >= 0 {
            x = self.link[x] as usize;
        }
        x
    }

    fn time(&self) -> usize {
        self.history.len()
    }

    fn rollback(&mut self, time: usize) {
        while self.history.len() > time {
            if let Some((node, value)) = self.history.pop() {
                self.link[node] = value;
            }
        }
    }

    fn join(&mut self, a: usize, b: usize) -> bool {
        let (mut a, mut b) = (self.find(a), self.find(b));
        if a == b {
            return false;
        }
        if self.link[a] > self.link[b] {
            std::mem::swap(&mut a, &mut b);
        }
        self.history.push((a, self.link[a]));
        self.history.push((b, self.link[b]));
        self.link[a] += self.link[b];
        self.link[b] = a as isize;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Cost of a parent assignment using the cheapest parallel edge, or `None` if an assigned edge is missing.
    fn cost_of(root: usize, edges: &[(usize, usize, f64)], parents: &[Option<usize>]) -> Option<f64> {
        let mut total = 0.0;
        for (v, parent) in parents.iter().enumerate() {
            if v == root {
                continue;
            }
            let p = (*parent)?;
            let w = edges
                .iter()
                .filter(|&&(a, b, w)| a == p && b == v && a != b && w.is_finite())
                .map(|e| e.2)
                .fold(f64::INFINITY, f64::min);
            if !w.is_finite() {
                return None;
            }
            total += w;
        }
        Some(total)
    }

    /// True when following parents from every node reaches `root` without a cycle.
    fn is_arborescence(root: usize, parents: &[Option<usize>]) -> bool {
        if parents[root].is_some() {
            return false;
        }
        (0..parents.len()).all(|start| {
            let mut v = start;
            for _ in 0..=parents.len() {
                if v == root {
                    return true;
                }
                match parents[v] {
                    Some(p) => v = p,
                    None => return false,
                }
            }
            false
        })
    }

    /// Minimum cost over all parent assignments, by enumeration.
    fn brute_force(n: usize, root: usize, edges: &[(usize, usize, f64)]) -> Option<f64> {
        let candidates: Vec<Vec<usize>> = (0..n)
            .map(|v| {
                let mut ps: Vec<usize> = edges
                    .iter()
                    .filter(|&&(a, b, w)| b == v && a != b && a < n && v != root && w.is_finite())
                    .map(|e| e.0)
                    .collect();
                ps.sort_unstable();
                ps.dedup();
                ps
            })
            .collect();
        let mut best: Option<f64> = None;
        let mut choice = vec![0usize; n];
        loop {
            let parents: Vec<Option<usize>> =
                (0..n).map(|v| if v == root { None } else { candidates[v].get(choice[v]).copied() }).collect();
            if is_arborescence(root, &parents)
                && let Some(c) = cost_of(root, edges, &parents)
            {
                best = Some(best.map_or(c, |b: f64| b.min(c)));
            }
            // Advance the mixed-radix counter over the non-root nodes.
            let mut v = 0;
            loop {
                if v == n {
                    return best;
                }
                if v != root && choice[v] + 1 < candidates[v].len() {
                    choice[v] += 1;
                    break;
                }
                choice[v] = 0;
                v += 1;
            }
        }
    }

    fn check(n: usize, root: usize, edges: &[(usize, usize, f64)], expected: Option<Vec<Option<usize>>>) {
        assert_eq!(min_arborescence(n, root, edges), expected);
    }

    #[test]
    fn picks_cheapest_parent() {
        check(3, 0, &[(0, 1, 1.0), (0, 2, 5.0), (1, 2, 1.0)], Some(vec![None, Some(0), Some(1)]));
    }

    #[test]
    fn breaks_a_cycle_through_the_cheapest_entry() {
        // 1 and 2 prefer each other; entering the cycle at 2 from the root costs less than at 1.
        let edges = [(0, 1, 10.0), (0, 2, 4.0), (1, 2, 1.0), (2, 1, 1.0)];
        check(3, 0, &edges, Some(vec![None, Some(2), Some(0)]));
    }

    #[test]
    fn nested_cycles() {
        let edges =
            [(0, 1, 9.0), (1, 2, 1.0), (2, 3, 1.0), (3, 1, 1.0), (3, 4, 1.0), (4, 3, 0.5), (0, 4, 7.0), (2, 4, 3.0)];
        let parents = min_arborescence(5, 0, &edges).expect("reachable");
        assert!(is_arborescence(0, &parents));
        assert_eq!(cost_of(0, &edges, &parents), brute_force(5, 0, &edges));
    }

    #[test]
    fn unreachable_node_gives_none() {
        check(3, 0, &[(0, 1, 1.0), (2, 1, 1.0)], None);
        check(3, 0, &[(0, 1, 1.0), (1, 2, f64::NAN)], None);
        check(2, 5, &[(0, 1, 1.0)], None);
    }

    #[test]
    fn single_node() {
        check(1, 0, &[], Some(vec![None]));
    }

    #[test]
    fn ignores_edges_into_root_self_loops_and_out_of_range() {
        check(2, 0, &[(1, 0, -5.0), (1, 1, -5.0), (7, 1, 0.0), (0, 1, 2.0)], Some(vec![None, Some(0)]));
    }

    #[test]
    fn negative_costs_are_fine() {
        check(3, 0, &[(0, 1, -1.0), (0, 2, -1.0), (1, 2, -3.0)], Some(vec![None, Some(0), Some(1)]));
    }

    fn graph() -> impl Strategy<Value = (usize, usize, Vec<(usize, usize, f64)>)> {
        (1usize..=6).prop_flat_map(|n| {
            // Small integer costs make ties frequent; the sparse edge lists make unreachable nodes frequent.
            let edge = (0..n, 0..n, -3i32..8).prop_map(|(a, b, w)| (a, b, f64::from(w)));
            (Just(n), 0..n, proptest::collection::vec(edge, 0..=n * n + 2))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn matches_brute_force((n, root, edges) in graph()) {
            let expected = brute_force(n, root, &edges);
            let got = min_arborescence(n, root, &edges);
            match (expected, got) {
                (None, None) => {}
                (Some(best), Some(parents)) => {
                    prop_assert!(is_arborescence(root, &parents), "not an arborescence: {parents:?}");
                    let cost = cost_of(root, &edges, &parents);
                    prop_assert!(cost.is_some_and(|c| (c - best).abs() < 1e-9), "cost {cost:?} vs best {best}");
                }
                (expected, got) => prop_assert!(false, "expected {expected:?}, got {got:?}"),
            }
        }
    }
}
