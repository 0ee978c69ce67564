//! Throughput and memory benchmark of signature extraction (driven by `scripts/bench-signature.sh`).
//!
//! ```text
//! bench write FILE GIB      write a synthetic Llama-like bf16 checkpoint of at least GIB GiB
//! bench hash FILE [REPEAT]  one-thread blake3 over the whole file, read in signing windows (the baseline)
//! bench sign FILE THREADS [REPEAT]
//!                           full signature with a rayon pool of THREADS (0 = all cores)
//! ```
//! Each measurement prints one `key=value` line: GB/s by wall time (best and median run), GB/s by CPU time
//! (bytes over the seconds the process's threads spent on a CPU, robust to a shared machine; for several threads
//! it is per CPU, not total) and `VmHWM` (peak resident set: the read buffers in flight), read from
//! `/proc/self/status` at the end of the process.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use signature::file::{Buffers, LocalFile};
use signature::reader::WINDOW_BYTES;
use signature::{Scheme, SignOptions, sign_files};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str).ok_or("missing argument; see the header of bench.rs");
    match arg(0)? {
        "write" => write(Path::new(arg(1)?), arg(2)?.parse()?),
        "hash" => hash(Path::new(arg(1)?), args.get(2).map_or(Ok(3), |s| s.parse())?),
        "sign" => sign(Path::new(arg(1)?), arg(2)?.parse()?, args.get(3).map_or(Ok(3), |s| s.parse())?),
        other => Err(format!("unknown command {other}").into()),
    }
}

/// Tensors of a Llama-2-7B-like model (hidden 4096, MLP 11008, vocab 32000) with as many layers as needed
/// to reach `gib` GiB of bf16.
fn llama_like(gib: f64) -> Vec<(String, Vec<u64>)> {
    let (hidden, mlp, vocab) = (4096u64, 11008u64, 32000u64);
    let mut tensors = vec![("model.embed_tokens.weight".to_owned(), vec![vocab, hidden])];
    let target = (gib * (1u64 << 30) as f64) as u64;
    let size = |ts: &[(String, Vec<u64>)]| ts.iter().map(|(_, s)| s.iter().product::<u64>() * 2).sum::<u64>();
    let mut layer = 0;
    while size(&tensors) < target {
        let p = format!("model.layers.{layer}");
        for (n, s) in [
            ("self_attn.q_proj", vec![hidden, hidden]),
            ("self_attn.k_proj", vec![hidden, hidden]),
            ("self_attn.v_proj", vec![hidden, hidden]),
            ("self_attn.o_proj", vec![hidden, hidden]),
            ("mlp.gate_proj", vec![mlp, hidden]),
            ("mlp.up_proj", vec![mlp, hidden]),
            ("mlp.down_proj", vec![hidden, mlp]),
            ("input_layernorm", vec![hidden]),
            ("post_attention_layernorm", vec![hidden]),
        ] {
            tensors.push((format!("{p}.{n}.weight"), s));
        }
        layer += 1;
    }
    tensors.push(("model.norm.weight".to_owned(), vec![hidden]));
    tensors.push(("lm_head.weight".to_owned(), vec![vocab, hidden]));
    tensors
}

fn write(path: &Path, gib: f64) -> Result<()> {
    let tensors = llama_like(gib);
    let mut header = String::from("{");
    let mut offset = 0u64;
    for (i, (name, shape)) in tensors.iter().enumerate() {
        let len = shape.iter().product::<u64>() * 2;
        let dims: Vec<String> = shape.iter().map(u64::to_string).collect();
        let sep = if i == 0 { "" } else { "," };
        header += &format!(
            r#"{sep}"{name}":{{"dtype":"BF16","shape":[{}],"data_offsets":[{offset},{}]}}"#,
            dims.join(","),
            offset + len
        );
        offset += len;
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = BufWriter::with_capacity(1 << 22, File::create(path)?);
    out.write_all(&(header.len() as u64).to_le_bytes())?;
    out.write_all(header.as_bytes())?;
    // Roughly normal values (sum of four uniforms) with std 0.02, as bf16; xorshift keeps writing fast.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = offset;
    while left > 0 {
        let n = (buf.len() as u64).min(left) as usize;
        for pair in buf[..n].chunks_exact_mut(2) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let u = (state & 0xffff) + ((state >> 16) & 0xffff) + ((state >> 32) & 0xffff) + (state >> 48);
            let x = (u as f32 / 65536.0 - 2.0) * (0.02 / 0.577);
            pair.copy_from_slice(&((x.to_bits() >> 16) as u16).to_le_bytes());
        }
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    out.flush()?;
    println!("written={} bytes={} tensors={}", path.display(), 8 + header.len() as u64 + offset, tensors.len());
    Ok(())
}

fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Seconds this process's threads have spent on a CPU (sum of the first field of every thread's schedstat, in
/// nanoseconds). Unlike wall time it does not count time spent waiting for a CPU, so it stays meaningful on a
/// machine shared with other work.
fn cpu_seconds() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0.0 };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum::<u64>() as f64
        / 1e9
}

/// One timed run: wall seconds and CPU seconds.
fn timed<T>(f: impl FnOnce() -> T) -> (T, f64, f64) {
    let (cpu, start) = (cpu_seconds(), Instant::now());
    let out = f();
    (out, start.elapsed().as_secs_f64(), cpu_seconds() - cpu)
}

fn report(what: &str, bytes: u64, wall: &mut [f64], cpu: &mut [f64]) {
    wall.sort_by(f64::total_cmp);
    cpu.sort_by(f64::total_cmp);
    println!(
        "{what} best_gbps={:.3} median_gbps={:.3} cpu_gbps={:.3} runs={} vm_hwm_mib={:.1}",
        bytes as f64 / wall[0] / 1e9,
        bytes as f64 / wall[wall.len() / 2] / 1e9,
        bytes as f64 / cpu[0] / 1e9,
        wall.len(),
        vm_hwm_kib() as f64 / 1024.0
    );
}

fn hash(path: &Path, repeat: usize) -> Result<()> {
    let file = LocalFile::open(path)?;
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    let mut digest = None;
    for _ in 0..repeat.max(1) {
        let (d, w, c) = timed(|| -> Result<blake3::Hash> {
            let mut hasher = blake3::Hasher::new();
            let buffers = Buffers::default();
            let mut offset = 0;
            while offset < file.len() {
                let len = WINDOW_BYTES.min(file.len() - offset);
                hasher.update(&file.read_pooled(offset, len, &buffers)?);
                offset += len;
            }
            Ok(hasher.finalize())
        });
        wall.push(w);
        cpu.push(c);
        digest = Some(d?);
    }
    println!("blake3={}", digest.map(|d| d.to_hex().to_string()).unwrap_or_default());
    report("hash threads=1", file.len(), &mut wall, &mut cpu);
    Ok(())
}

fn sign(path: &Path, threads: usize, repeat: usize) -> Result<()> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    let len = std::fs::metadata(path)?.len();
    let paths = [PathBuf::from(path)];
    let scheme = Scheme::default();
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    let mut tensors = 0;
    for _ in 0..repeat.max(1) {
        let (sig, w, c) = timed(|| pool.install(|| sign_files(&paths, &scheme, &SignOptions::default())));
        wall.push(w);
        cpu.push(c);
        tensors = sig?.tensors.len();
    }
    println!("tensors={tensors}");
    report(&format!("sign threads={}", pool.current_num_threads()), len, &mut wall, &mut cpu);
    Ok(())
}
