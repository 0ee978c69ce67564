//! Times Chu-Liu/Edmonds on synthetic model families of 1,000 and 10,000 models.
//!
//! Each family is a random tree (every model fine-tuned from a uniformly chosen earlier one) embedded as a random
//! walk in 32 dimensions: a child sits at its parent's point plus Gaussian noise, and the walk also carries a
//! "kurtosis" that drops a little at every step, as MoTHer's prior assumes. Candidate edges are the `K` nearest
//! neighbours of every model in both directions, costed as distance plus 0.3·mean distance when the child has the
//! higher kurtosis, plus a virtual root. Only the solve is timed; the recovered edge accuracy is printed so the
//! figure is about a meaningful instance.
//!
//! Run: `cargo run --release -p modeltree-lineage --example solve_bench`

use std::time::Instant;

use lineage::edmonds::min_arborescence;

mod support;

use support::Rng;

const DIM: usize = 32;
const K: usize = 10;

fn distance(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt()
}

fn main() {
    for n in [1_000usize, 10_000] {
        let mut rng = Rng(n as u64);
        let mut parent = vec![usize::MAX; n];
        let mut points = vec![0.0f64; n * DIM];
        let mut kurtosis = vec![10.0f64; n];
        for v in 1..n {
            let p = (rng.next() % v as u64) as usize;
            parent[v] = p;
            for d in 0..DIM {
                points[v * DIM + d] = points[p * DIM + d] + rng.normal();
            }
            kurtosis[v] = kurtosis[p] - 0.1 + 0.05 * rng.normal();
        }

        let started = Instant::now();
        let mut edges: Vec<(usize, usize, f64)> = Vec::with_capacity(n * K * 2 + n);
        let mut total = 0.0;
        for v in 0..n {
            let pv = &points[v * DIM..(v + 1) * DIM];
            let mut near: Vec<(f64, usize)> =
                (0..n).filter(|&u| u != v).map(|u| (distance(pv, &points[u * DIM..(u + 1) * DIM]), u)).collect();
            near.select_nth_unstable_by(K, |a, b| a.0.total_cmp(&b.0));
            for &(d, u) in &near[..K] {
                edges.push((u, v, d));
                edges.push((v, u, d));
                total += 2.0 * d;
            }
        }
        let mean = total / edges.len() as f64;
        for e in &mut edges {
            if kurtosis[e.1] > kurtosis[e.0] {
                e.2 += 0.3 * mean;
            }
        }
        let tau = edges.iter().map(|e| e.2).fold(0.0, f64::max) + mean;
        edges.extend((0..n).map(|v| (n, v, tau)));
        let build = started.elapsed();

        let started = Instant::now();
        let parents = min_arborescence(n + 1, n, &edges);
        let solve = started.elapsed();

        let Some(parents) = parents else {
            println!("n = {n}: no arborescence (unexpected: the virtual root reaches every model)");
            continue;
        };
        let correct = (1..n).filter(|&v| parents[v] == Some(parent[v])).count();
        println!(
            "n = {n:>6}: {:>7} candidate edges, solve {:>8.1} ms (kNN candidates built in {:.1} ms), \
             edge accuracy {:.3}",
            edges.len(),
            solve.as_secs_f64() * 1e3,
            build.as_secs_f64() * 1e3,
            correct as f64 / (n - 1) as f64
        );
    }
}
