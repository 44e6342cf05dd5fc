//! The quantized linear kernels alone: time of `out = x · wᵀ` for the default model's
//! shapes (or Llama-3.2-1B's with `--shapes 1b`) and formats at decode and prefill
//! batch sizes, as weight bandwidth (decode) and GFLOP/s (prefill), on the
//! instruction set the process uses (`REPRISE_CPU_ISA` caps it).
//! `cargo run --release -p reprise-engine --example quant_bench [-- --shapes 1b]
//!  [--formats Q4_0,Q4_K] [--m 1,8,512] [--numerics exact,fast]`
//! (`fast`: 8-bit activations and integer dot products, `--cpu-numerics fast`; it
//! changes only the fused decode kernels, m ≤ 4).

use reprise_engine::cpu::quant::{linear, set_numerics, Numerics, QMatrix, QType};
use std::time::Instant;

fn matrix(q: QType, rows: usize, cols: usize) -> QMatrix {
    let f: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 2654435761usize) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    match q {
        QType::F32 => QMatrix::f32(rows, cols, f),
        _ => {
            // Valid blocks: scales of 1/64 (f16 0x2400) and arbitrary values.
            let bb = q.block_bytes();
            let nb = rows * cols / q.block_elems();
            let mut raw: Vec<u8> = (0..nb * bb).map(|i| (i * 131 % 251) as u8).collect();
            let scales: &[usize] = match q {
                QType::Q4_1 | QType::Q4K | QType::Q5K => &[0, 2],
                QType::Q6K => &[208],
                _ => &[0],
            };
            for b in 0..nb {
                for &s in scales {
                    raw[b * bb + s..b * bb + s + 2].copy_from_slice(&0x2400u16.to_le_bytes());
                }
            }
            QMatrix::from_raw(q, rows, cols, &raw).expect("raw")
        }
    }
}

fn arg(name: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != name).nth(1)
}

fn main() {
    let smollm2 = [
        ("qkv 960×576", 960, 576),
        ("gate+up 3072×576", 3072, 576),
        ("down 576×1536", 576, 1536),
        ("head 49152×576", 49152, 576),
    ];
    let one_b = [
        ("qkv 3072×2048", 3072, 2048),
        ("gate+up 16384×2048", 16384, 2048),
        ("down 2048×8192", 2048, 8192),
    ];
    let shapes: &[(&str, usize, usize)] = match arg("--shapes").as_deref() {
        Some("1b") => &one_b,
        _ => &smollm2,
    };
    let all = [
        QType::Q4_0,
        QType::Q4_1,
        QType::Q8_0,
        QType::Q4K,
        QType::Q5K,
        QType::Q6K,
        QType::F32,
    ];
    let formats: Vec<QType> = match arg("--formats") {
        Some(list) => list
            .split(',')
            .filter_map(|n| all.into_iter().find(|q| q.name() == n.trim()))
            .collect(),
        None => vec![QType::Q4_1, QType::Q8_0, QType::F32],
    };
    let ms: Vec<usize> = match arg("--m") {
        Some(list) => list
            .split(',')
            .filter_map(|m| m.trim().parse().ok())
            .collect(),
        None => vec![1, 8, 32, 512],
    };
    let numerics: Vec<Numerics> = match arg("--numerics") {
        Some(list) => list
            .split(',')
            .filter_map(|n| Numerics::parse(n.trim()))
            .collect(),
        None => vec![Numerics::Exact],
    };
    println!("kernels: {}", reprise_engine::simd::isa().name());
    println!("| shape | format | numerics | m | time | weight GB/s | GFLOP/s |");
    println!("|---|---|---|---:|---:|---:|---:|");
    for &(name, rows, cols) in shapes {
        for &q in &formats {
            let w = [matrix(q, rows, cols)];
            for (&m, &num) in ms.iter().flat_map(|m| numerics.iter().map(move |n| (m, n))) {
                set_numerics(num);
                let x: Vec<f32> = (0..m * cols).map(|i| (i % 7) as f32 * 0.1).collect();
                let mut out = vec![0.0f32; m * rows];
                let reps = (2_000_000_000 / (rows * cols * m).max(1)).clamp(3, 2000);
                linear(&mut out, &x, &w, m, false);
                let t = Instant::now();
                for _ in 0..reps {
                    linear(&mut out, &x, &w, m, false);
                }
                let s = t.elapsed().as_secs_f64() / reps as f64;
                println!(
                    "| {name} | {} | {} | {m} | {:.1} µs | {:.1} | {:.1} |",
                    q.name(),
                    num.name(),
                    s * 1e6,
                    w[0].nbytes() as f64 / s / 1e9,
                    2.0 * (rows * cols * m) as f64 / s / 1e9
                );
            }
        }
    }
}
