//! f32 CPU kernels for the forward pass: GEMM (through the `gemm` crate, which
//! dispatches to AVX2/AVX-512 at run time), dot/axpy with runtime-selected SIMD,
//! RMSNorm, rotary and SwiGLU.

use gemm::Parallelism;

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
    assert!(x.len() >= m * k && w.len() >= n * k && out.len() >= m * n);
    if m == 0 {
        return;
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

#[inline(always)]
fn dot_body<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; 16];
    let ca = a.chunks_exact(16);
    let cb = b.chunks_exact(16);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..16 {
            acc[l] = if FMA {
                x[l].mul_add(y[l], acc[l])
            } else {
                acc[l] + x[l] * y[l]
            };
        }
    }
    let mut s = 0.0f32;
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    // Pairwise tree so the result does not depend on the lane count.
    let mut w = 8;
    while w > 0 {
        for l in 0..w {
            acc[l] += acc[l + w];
        }
        w /= 2;
    }
    acc[0] + s
}

#[inline(always)]
fn axpy_body<const FMA: bool>(y: &mut [f32], a: f32, x: &[f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi = if FMA {
            xi.mul_add(a, *yi)
        } else {
            *yi + a * xi
        };
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_body::<true>(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn axpy_avx2(y: &mut [f32], a: f32, x: &[f32]) {
    axpy_body::<true>(y, a, x)
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// Dot product of the common prefix of `a` and `b`.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports the enabled features.
        return unsafe { dot_avx2(a, b) };
    }
    dot_body::<false>(a, b)
}

/// `y += a * x` over the common prefix.
#[inline]
pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports the enabled features.
        return unsafe { axpy_avx2(y, a, x) };
    }
    axpy_body::<false>(y, a, x)
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

/// SwiGLU: `out[t, j] = silu(gu[t, j]) * gu[t, inter + j]` for rows of `2 * inter`.
pub fn swiglu(out: &mut [f32], gu: &[f32], inter: usize) {
    for (o, row) in out.chunks_exact_mut(inter).zip(gu.chunks_exact(2 * inter)) {
        let (g, u) = row.split_at(inter);
        for ((oi, &gi), &ui) in o.iter_mut().zip(g).zip(u) {
            *oi = gi / (1.0 + (-gi).exp()) * ui;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_matches_naive() {
        let (m, k, n) = (3, 37, 5);
        let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.1).sin()).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.07).cos()).collect();
        let mut out = vec![1.0; m * n];
        linear(&mut out, &x, &w, m, k, n, true);
        for r in 0..m {
            for c in 0..n {
                let want: f32 = 1.0 + (0..k).map(|i| x[r * k + i] * w[c * k + i]).sum::<f32>();
                assert!((out[r * n + c] - want).abs() < 1e-4);
            }
        }
        let a: Vec<f32> = (0..70).map(|i| i as f32 * 0.5).collect();
        let want: f32 = a.iter().map(|v| v * v).sum();
        assert!((dot(&a, &a) - want).abs() / want < 1e-6);
    }
}
