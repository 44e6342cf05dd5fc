//! f32 CPU kernels for the forward pass: GEMM (through the `gemm` crate, which
//! dispatches to AVX2/AVX-512 at run time), the weight-streaming linear over the
//! register tiles of `crate::simd`, RMSNorm, rotary, gated activations and soft-capping.

use crate::model::Activation;
use crate::simd::{isa, tile_on, Isa};
use gemm::Parallelism;

pub use crate::simd::{axpy, dot};

/// Minimum multiply-adds before a GEMM is split across threads.
const PAR_MIN_FLOPS: usize = 1 << 18;

/// `dst[m, n] (+)= beta * lhs[m, k] · rhs[k, n]` with arbitrary strides (`*_cs` column, `*_rs` row).
///
/// # Safety
/// Every pointer must be valid for the strided extents given.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_f32(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_cs: isize,
    dst_rs: isize,
    accumulate: bool,
    lhs: *const f32,
    lhs_cs: isize,
    lhs_rs: isize,
    rhs: *const f32,
    rhs_cs: isize,
    rhs_rs: isize,
    beta: f32,
    parallel: bool,
) {
    let par = if parallel && m * n * k >= PAR_MIN_FLOPS {
        Parallelism::Rayon(rayon::current_num_threads())
    } else {
        Parallelism::None
    };
    gemm::gemm(
        m, n, k, dst, dst_cs, dst_rs, accumulate, lhs, lhs_cs, lhs_rs, rhs, rhs_cs, rhs_rs, 1.0,
        beta, false, false, false, par,
    );
}

/// Batches up to this many rows use the weight-streaming kernel instead of GEMM:
/// decode is memory-bound, so each weight row is read once for all of them, and
/// the GEMM crate repacks the whole weight on every call, which below about 32
/// rows costs more than its blocking saves (engine_bench: batch-8 decode ~2.5x).
const SMALL_M: usize = 32;
/// Output rows per parallel task in the streaming kernel.
const ROWS_PER_TASK: usize = 32;

#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
// SAFETY: tasks write disjoint output columns.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

/// `out[m, n] (+)= x[m, k] · w[n, k]ᵀ` — a linear layer with an HF-layout weight.
pub fn linear(
    out: &mut [f32],
    x: &[f32],
    w: &[f32],
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    linear_on(isa(), out, x, w, m, k, n, accumulate)
}

/// [`linear`] with the streaming kernels of instruction set `on`.
#[allow(clippy::too_many_arguments)]
pub fn linear_on(
    on: Isa,
    out: &mut [f32],
    x: &[f32],
    w: &[f32],
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    assert!(x.len() >= m * k && w.len() >= n * k && out.len() >= m * n);
    if m == 0 {
        return;
    }
    if m <= SMALL_M {
        return linear_stream(on, out, x, w, m, k, n, accumulate);
    }
    // SAFETY: extents asserted above.
    unsafe {
        gemm_f32(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            1.0,
            true,
        );
    }
}

/// Output columns `o0..o1` of `out = x · wᵀ` for all `m` rows of `x`, four weight
/// rows at a time through the register tiles.
#[allow(clippy::too_many_arguments)]
fn linear_stream(
    on: Isa,
    out: &mut [f32],
    x: &[f32],
    w: &[f32],
    m: usize,
    k: usize,
    n: usize,
    acc: bool,
) {
    use rayon::prelude::*;
    let ptr = SyncPtr(out.as_mut_ptr());
    let tasks = n.div_ceil(ROWS_PER_TASK);
    (0..tasks).into_par_iter().for_each(|t| {
        // Rebinding makes the closure capture the whole Send wrapper rather than its
        // raw-pointer field (edition 2021 captures disjoint fields).
        #[allow(clippy::redundant_locals)]
        let ptr = ptr;
        let (o1, mut o) = (((t + 1) * ROWS_PER_TASK).min(n), t * ROWS_PER_TASK);
        let mut sums = [[0.0f32; 4]; SMALL_M];
        while o < o1 {
            let rows = (o1 - o).min(4);
            // Missing rows of a short group repeat the last one (their results are dropped).
            let wr: [*const f32; 4] =
                std::array::from_fn(|r| w[(o + r.min(rows - 1)) * k..].as_ptr());
            for s in sums.iter_mut().take(m) {
                *s = [0.0; 4];
            }
            let (xp, s) = (x.as_ptr(), &mut sums[..m]);
            // SAFETY: x holds m rows of k values, every wr[r] k values.
            unsafe { tile_on(on, xp, k, m, wr, k, s) };
            for (i, s) in sums.iter().enumerate().take(m) {
                for (r, v) in s.iter().enumerate().take(rows) {
                    // SAFETY: (i, o + r) lies in this task's column range of out[m, n].
                    unsafe {
                        let p = ptr.0.add(i * n + o + r);
                        *p = if acc { *p + v } else { *v };
                    }
                }
            }
            o += rows;
        }
    });
}

/// RMSNorm of each `w.len()`-wide row of `x` into `out` (HF: normalise in f32, then scale).
pub fn rms_norm(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let d = w.len();
    for (o, xr) in out.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
        let ss = dot(xr, xr) / d as f32;
        let inv = 1.0 / (ss + eps).sqrt();
        for ((oi, &xi), &wi) in o.iter_mut().zip(xr).zip(w) {
            *oi = wi * (xi * inv);
        }
    }
}

/// In-place RMSNorm of each `w.len()`-wide chunk of `x`.
pub fn rms_norm_inplace(x: &mut [f32], w: &[f32], eps: f32) {
    let d = w.len();
    for xr in x.chunks_exact_mut(d) {
        let ss = dot(xr, xr) / d as f32;
        let inv = 1.0 / (ss + eps).sqrt();
        for (xi, &wi) in xr.iter_mut().zip(w) {
            *xi = wi * (*xi * inv);
        }
    }
}

/// Half-split (NeoX / HF `rotate_half`) rotary on one head: pairs (i, i + d/2).
#[inline]
pub fn rope_half(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = cos.len();
    let (a, b) = x.split_at_mut(half);
    for i in 0..half {
        let (x0, x1) = (a[i], b[i]);
        a[i] = x0 * cos[i] - x1 * sin[i];
        b[i] = x1 * cos[i] + x0 * sin[i];
    }
}

/// A gated MLP's activation: `out[t, j] = act(gu[t, j]) * gu[t, inter + j]` for rows
/// of `2 * inter` (gate half, then up half).
pub fn gated_act(out: &mut [f32], gu: &[f32], inter: usize, act: Activation) {
    for (o, row) in out.chunks_exact_mut(inter).zip(gu.chunks_exact(2 * inter)) {
        let (g, u) = row.split_at(inter);
        match act {
            Activation::Silu => {
                for ((oi, &gi), &ui) in o.iter_mut().zip(g).zip(u) {
                    *oi = gi / (1.0 + (-gi).exp()) * ui;
                }
            }
            Activation::GeluTanh => {
                // torch's `gelu(approximate="tanh")`, in f32.
                const C: f32 = 0.797_884_6; // sqrt(2 / pi)
                for ((oi, &gi), &ui) in o.iter_mut().zip(g).zip(u) {
                    let inner = C * (gi + 0.044_715 * gi * gi * gi);
                    *oi = 0.5 * gi * (1.0 + inner.tanh()) * ui;
                }
            }
            Activation::ClampedSwiglu { limit } => {
                for ((oi, &gi), &ui) in o.iter_mut().zip(g).zip(u) {
                    let g = gi.min(limit);
                    let glu = g / (1.0 + (-(g * 1.702)).exp());
                    *oi = (ui.clamp(-limit, limit) + 1.0) * glu;
                }
            }
        }
    }
}

/// Soft-capping: `x = cap * tanh(x / cap)` (Gemma 2's attention and final logits).
pub fn softcap(x: &mut [f32], cap: f32) {
    x.iter_mut().for_each(|v| *v = cap * (*v / cap).tanh());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_matches_naive() {
        // Shapes on both sides of SMALL_M (streaming kernel vs GEMM), with k tails
        // and n spanning several streaming tasks, accumulating and overwriting.
        for (m, k, n, acc) in [
            (3, 37, 5, true),
            (9, 70, 67, true),
            (1, 64, 3, true),
            (4, 130, 100, false),
            (2, 16, 33, false),
        ] {
            let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.1).sin()).collect();
            let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.07).cos()).collect();
            let mut out = vec![1.0; m * n];
            linear(&mut out, &x, &w, m, k, n, acc);
            let base = if acc { 1.0 } else { 0.0 };
            for r in 0..m {
                for c in 0..n {
                    let want: f32 = base + (0..k).map(|i| x[r * k + i] * w[c * k + i]).sum::<f32>();
                    assert!((out[r * n + c] - want).abs() < 1e-4);
                }
            }
        }
        let a: Vec<f32> = (0..70).map(|i| i as f32 * 0.5).collect();
        let want: f32 = a.iter().map(|v| v * v).sum();
        assert!((dot(&a, &a) - want).abs() / want < 1e-6);
    }
}

#[cfg(test)]
mod tile_tests {
    use super::*;

    #[test]
    fn every_tile_kernel_agrees() {
        for m in [1, 2, 5, 7, 13] {
            let len = 37;
            let x: Vec<f32> = (0..m * len)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let w: Vec<Vec<f32>> = (0..4)
                .map(|r| {
                    (0..len)
                        .map(|j| ((r * 13 + j * 7) % 17) as f32 / 17.0 - 0.5)
                        .collect()
                })
                .collect();
            let wp: [*const f32; 4] = std::array::from_fn(|r| w[r].as_ptr());
            let mut want = vec![[0.0f32; 4]; m];
            for (i, s) in want.iter_mut().enumerate() {
                for r in 0..4 {
                    s[r] = (0..len).map(|j| x[i * len + j] * w[r][j]).sum();
                }
            }
            for on in Isa::available() {
                let mut got = vec![[0.0f32; 4]; m];
                let (xp, s) = (x.as_ptr(), &mut got[..]);
                // SAFETY: extents as allocated; `on` is available.
                unsafe { tile_on(on, xp, len, m, wp, len, s) };
                let close = got
                    .iter()
                    .zip(&want)
                    .all(|(p, q)| p.iter().zip(q).all(|(u, v)| (u - v).abs() < 1e-4));
                assert!(close, "{on:?}, m {m}: {got:?} vs {want:?}");
            }
        }
    }

    #[test]
    fn streaming_linear_on_every_isa() {
        let (m, k, n) = (3, 45, 11);
        let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.3).sin()).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect();
        for on in Isa::available() {
            let mut out = vec![0.0; m * n];
            linear_on(on, &mut out, &x, &w, m, k, n, false);
            for r in 0..m {
                for c in 0..n {
                    let want: f32 = (0..k).map(|i| x[r * k + i] * w[c * k + i]).sum();
                    assert!((out[r * n + c] - want).abs() < 1e-4, "{on:?}");
                }
            }
        }
    }
}
