//! f32 CPU kernels for the forward pass: GEMM (through the `gemm` crate, which
//! dispatches to AVX2/AVX-512 at run time), dot/axpy with runtime-selected SIMD,
//! RMSNorm, rotary and SwiGLU.

use gemm::Parallelism;
use std::sync::OnceLock;

/// The CPU compute pool: one thread per core, shared by every CPU worker of the
/// process. A worker runs its whole forward step on it (`install`), so workers share
/// the cores through one work-stealing scheduler instead of oversubscribing them.
pub fn pool() -> &'static rayon::ThreadPool {
    static POOL: OnceLock<rayon::ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("reprise-cpu-{i}"))
            .build()
            .unwrap_or_else(|e| panic!("cannot start the CPU compute pool: {e}"))
    })
}

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

#[inline(always)]
fn dot4_body<const FMA: bool>(x: &[f32], w: [&[f32]; 4]) -> [f32; 4] {
    let k = x.len();
    let mut acc = [[0.0f32; 16]; 4];
    let full = k / 16 * 16;
    let mut j = 0;
    while j < full {
        let xs = &x[j..j + 16];
        for r in 0..4 {
            let ws = &w[r][j..j + 16];
            for l in 0..16 {
                acc[r][l] = if FMA {
                    xs[l].mul_add(ws[l], acc[r][l])
                } else {
                    acc[r][l] + xs[l] * ws[l]
                };
            }
        }
        j += 16;
    }
    let mut res = [0.0f32; 4];
    for r in 0..4 {
        let mut a = acc[r];
        let mut wd = 8;
        while wd > 0 {
            for l in 0..wd {
                a[l] += a[l + wd];
            }
            wd /= 2;
        }
        let tail: f32 = x[full..]
            .iter()
            .zip(&w[r][full..k])
            .map(|(p, q)| p * q)
            .sum();
        res[r] = a[0] + tail;
    }
    res
}

/// Rows `o0..o1` of `out = x · wᵀ` for all `m` rows of `x`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn stream_body<const FMA: bool>(
    out: SyncPtr,
    x: &[f32],
    w: &[f32],
    m: usize,
    k: usize,
    n: usize,
    o0: usize,
    o1: usize,
    acc: bool,
) {
    let mut o = o0;
    while o < o1 {
        let rows = (o1 - o).min(4);
        let wr: [&[f32]; 4] = std::array::from_fn(|r| {
            let rr = o + r.min(rows - 1);
            &w[rr * k..(rr + 1) * k]
        });
        for i in 0..m {
            let d = dot4_body::<FMA>(&x[i * k..(i + 1) * k], wr);
            for (r, v) in d.iter().enumerate().take(rows) {
                // SAFETY: (i, o + r) lies in this task's column range of out[m, n].
                unsafe {
                    let p = out.0.add(i * n + o + r);
                    *p = if acc { *p + v } else { *v };
                }
            }
        }
        o += rows;
    }
}

/// Explicit SIMD kernels (the autovectorizer keeps array accumulators scalar).
#[cfg(target_arch = "x86_64")]
mod simd {
    use super::SyncPtr;
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn hsum256(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot512(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc0 = _mm512_setzero_ps();
        let mut acc1 = _mm512_setzero_ps();
        let mut j = 0;
        while j + 32 <= n {
            acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(j)), _mm512_loadu_ps(pb.add(j)), acc0);
            acc1 = _mm512_fmadd_ps(
                _mm512_loadu_ps(pa.add(j + 16)),
                _mm512_loadu_ps(pb.add(j + 16)),
                acc1,
            );
            j += 32;
        }
        while j + 16 <= n {
            acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(j)), _mm512_loadu_ps(pb.add(j)), acc0);
            j += 16;
        }
        let mut s = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
        while j < n {
            s += *pa.add(j) * *pb.add(j);
            j += 1;
        }
        s
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot256(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut j = 0;
        while j + 16 <= n {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(j)), _mm256_loadu_ps(pb.add(j)), acc0);
            acc1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(j + 8)),
                _mm256_loadu_ps(pb.add(j + 8)),
                acc1,
            );
            j += 16;
        }
        let mut s = hsum256(_mm256_add_ps(acc0, acc1));
        while j < n {
            s += *pa.add(j) * *pb.add(j);
            j += 1;
        }
        s
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn axpy512(y: &mut [f32], a: f32, x: &[f32]) {
        let n = y.len().min(x.len());
        let (py, px) = (y.as_mut_ptr(), x.as_ptr());
        let av = _mm512_set1_ps(a);
        let mut j = 0;
        while j + 16 <= n {
            let r = _mm512_fmadd_ps(_mm512_loadu_ps(px.add(j)), av, _mm512_loadu_ps(py.add(j)));
            _mm512_storeu_ps(py.add(j), r);
            j += 16;
        }
        while j < n {
            *py.add(j) += a * *px.add(j);
            j += 1;
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn axpy256(y: &mut [f32], a: f32, x: &[f32]) {
        let n = y.len().min(x.len());
        let (py, px) = (y.as_mut_ptr(), x.as_ptr());
        let av = _mm256_set1_ps(a);
        let mut j = 0;
        while j + 8 <= n {
            let r = _mm256_fmadd_ps(_mm256_loadu_ps(px.add(j)), av, _mm256_loadu_ps(py.add(j)));
            _mm256_storeu_ps(py.add(j), r);
            j += 8;
        }
        while j < n {
            *py.add(j) += a * *px.add(j);
            j += 1;
        }
    }

    /// Four dot products of `x` against four weight rows, sharing the loads of `x`.
    #[target_feature(enable = "avx512f")]
    unsafe fn dot4_512(x: *const f32, w: [*const f32; 4], k: usize) -> [f32; 4] {
        let mut a = [_mm512_setzero_ps(); 4];
        let mut j = 0;
        while j + 16 <= k {
            let xv = _mm512_loadu_ps(x.add(j));
            for r in 0..4 {
                a[r] = _mm512_fmadd_ps(xv, _mm512_loadu_ps(w[r].add(j)), a[r]);
            }
            j += 16;
        }
        let mut out = [0.0f32; 4];
        for r in 0..4 {
            let mut s = _mm512_reduce_add_ps(a[r]);
            for t in j..k {
                s += *x.add(t) * *w[r].add(t);
            }
            out[r] = s;
        }
        out
    }

    /// Dot products of `R` rows of `x` against four weight rows: 4 + R loads per
    /// 4·R FMAs instead of 5 per 4, which matters once a batch makes the kernel
    /// compute-bound. `R` ≤ 4 keeps the 4·R accumulators in registers.
    #[target_feature(enable = "avx512f")]
    unsafe fn dot4xr_512<const R: usize>(
        xs: [*const f32; R],
        w: [*const f32; 4],
        k: usize,
    ) -> [[f32; 4]; R] {
        let mut a = [[_mm512_setzero_ps(); 4]; R];
        let mut j = 0;
        while j + 16 <= k {
            let xv: [__m512; R] = std::array::from_fn(|i| _mm512_loadu_ps(xs[i].add(j)));
            for r in 0..4 {
                let wv = _mm512_loadu_ps(w[r].add(j));
                for i in 0..R {
                    a[i][r] = _mm512_fmadd_ps(xv[i], wv, a[i][r]);
                }
            }
            j += 16;
        }
        let mut out = [[0.0f32; 4]; R];
        for i in 0..R {
            for r in 0..4 {
                let mut s = _mm512_reduce_add_ps(a[i][r]);
                for t in j..k {
                    s += *xs[i].add(t) * *w[r].add(t);
                }
                out[i][r] = s;
            }
        }
        out
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot4_256(x: *const f32, w: [*const f32; 4], k: usize) -> [f32; 4] {
        let mut a = [_mm256_setzero_ps(); 4];
        let mut j = 0;
        while j + 8 <= k {
            let xv = _mm256_loadu_ps(x.add(j));
            for r in 0..4 {
                a[r] = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w[r].add(j)), a[r]);
            }
            j += 8;
        }
        let mut out = [0.0f32; 4];
        for r in 0..4 {
            let mut s = hsum256(a[r]);
            for t in j..k {
                s += *x.add(t) * *w[r].add(t);
            }
            out[r] = s;
        }
        out
    }

    // Cephes expf: exp(x) = 2^n · e^r with n = round(x / ln 2), |r| ≤ ln 2 / 2.
    const EXP_HI: f32 = 88.376_26;
    const EXP_LO: f32 = -87.336_55;
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const P: [f32; 6] = [
        1.987_569_1e-4,
        1.398_2e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ];

    #[target_feature(enable = "avx512f")]
    unsafe fn exp512(x: __m512) -> __m512 {
        let x = _mm512_min_ps(
            _mm512_max_ps(x, _mm512_set1_ps(EXP_LO)),
            _mm512_set1_ps(EXP_HI),
        );
        let n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(LOG2E)), 0);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
        let mut p = _mm512_set1_ps(P[0]);
        for c in &P[1..] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
        }
        let r2 = _mm512_mul_ps(r, r);
        let y = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0)));
        _mm512_scalef_ps(y, n)
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp256(x: __m256) -> __m256 {
        let x = _mm256_min_ps(
            _mm256_max_ps(x, _mm256_set1_ps(EXP_LO)),
            _mm256_set1_ps(EXP_HI),
        );
        let n = _mm256_round_ps(
            _mm256_mul_ps(x, _mm256_set1_ps(LOG2E)),
            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
        let mut p = _mm256_set1_ps(P[0]);
        for c in &P[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*c));
        }
        let r2 = _mm256_mul_ps(r, r);
        let y = _mm256_fmadd_ps(p, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0)));
        // 2^n through the exponent bits (n is within the normal range after the clamp).
        let e = _mm256_slli_epi32(
            _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
            23,
        );
        _mm256_mul_ps(y, _mm256_castsi256_ps(e))
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn exp_sub_sum512(row: &mut [f32], max: f32) -> f32 {
        let (n, p) = (row.len(), row.as_mut_ptr());
        let m = _mm512_set1_ps(max);
        let mut acc = _mm512_setzero_ps();
        let mut j = 0;
        while j + 16 <= n {
            let e = exp512(_mm512_sub_ps(_mm512_loadu_ps(p.add(j)), m));
            _mm512_storeu_ps(p.add(j), e);
            acc = _mm512_add_ps(acc, e);
            j += 16;
        }
        if j < n {
            let k = _cvtu32_mask16((1u32 << (n - j)) - 1);
            let e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, p.add(j)), m));
            _mm512_mask_storeu_ps(p.add(j), k, e);
            acc = _mm512_add_ps(acc, _mm512_maskz_mov_ps(k, e));
        }
        _mm512_reduce_add_ps(acc)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_sub_sum256(row: &mut [f32], max: f32) -> f32 {
        let (n, p) = (row.len(), row.as_mut_ptr());
        let m = _mm256_set1_ps(max);
        let mut acc = _mm256_setzero_ps();
        let mut j = 0;
        while j + 8 <= n {
            let e = exp256(_mm256_sub_ps(_mm256_loadu_ps(p.add(j)), m));
            _mm256_storeu_ps(p.add(j), e);
            acc = _mm256_add_ps(acc, e);
            j += 8;
        }
        let mut s = hsum256(acc);
        while j < n {
            let mut tail = [0.0f32; 8];
            tail[0] = *p.add(j) - max;
            let e = exp256(_mm256_loadu_ps(tail.as_ptr()));
            let mut out = [0.0f32; 8];
            _mm256_storeu_ps(out.as_mut_ptr(), e);
            *p.add(j) = out[0];
            s += out[0];
            j += 1;
        }
        s
    }

    /// `sums[i][r] += x[i] · w[r]` over `len` values for `m` rows of `x` (row stride
    /// `xs`) and four weight rows, with the widest register tile that fits.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn tile512(
        x: *const f32,
        xs: usize,
        m: usize,
        w: [*const f32; 4],
        len: usize,
        sums: &mut [[f32; 4]],
    ) {
        let mut i = 0;
        while i + 4 <= m {
            let rows = std::array::from_fn(|ii| x.add((i + ii) * xs));
            let d = dot4xr_512::<4>(rows, w, len);
            for (ii, row) in d.iter().enumerate() {
                for r in 0..4 {
                    sums[i + ii][r] += row[r];
                }
            }
            i += 4;
        }
        while i + 2 <= m {
            let rows = std::array::from_fn(|ii| x.add((i + ii) * xs));
            let d = dot4xr_512::<2>(rows, w, len);
            for (ii, row) in d.iter().enumerate() {
                for r in 0..4 {
                    sums[i + ii][r] += row[r];
                }
            }
            i += 2;
        }
        while i < m {
            let d = dot4_512(x.add(i * xs), w, len);
            for r in 0..4 {
                sums[i][r] += d[r];
            }
            i += 1;
        }
    }

    /// [`tile512`] with AVX2.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile256(
        x: *const f32,
        xs: usize,
        m: usize,
        w: [*const f32; 4],
        len: usize,
        sums: &mut [[f32; 4]],
    ) {
        for (i, s) in sums.iter_mut().enumerate().take(m) {
            let d = dot4_256(x.add(i * xs), w, len);
            for r in 0..4 {
                s[r] += d[r];
            }
        }
    }

    /// Output columns `o0..o1` of `out[m, n] (+)= x[m, k] · w[n, k]ᵀ`.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn stream(
        wide: bool,
        out: SyncPtr,
        x: &[f32],
        w: &[f32],
        m: usize,
        k: usize,
        n: usize,
        o0: usize,
        o1: usize,
        acc: bool,
    ) {
        // Stores rows i.. of a tile; cells (i + ii, o + r) are this task's columns.
        let put = |d: &[[f32; 4]], i: usize, o: usize, rows: usize| {
            for (ii, row) in d.iter().enumerate() {
                for (r, v) in row.iter().enumerate().take(rows) {
                    let p = out.0.add((i + ii) * n + o + r);
                    *p = if acc { *p + v } else { *v };
                }
            }
        };
        let mut o = o0;
        while o < o1 {
            let rows = (o1 - o).min(4);
            let wr: [*const f32; 4] =
                std::array::from_fn(|r| w.as_ptr().add((o + r.min(rows - 1)) * k));
            let mut i = 0;
            if wide {
                while i + 4 <= m {
                    let xs = std::array::from_fn(|ii| x.as_ptr().add((i + ii) * k));
                    let d = dot4xr_512::<4>(xs, wr, k);
                    put(&d, i, o, rows);
                    i += 4;
                }
                while i + 2 <= m {
                    let xs = std::array::from_fn(|ii| x.as_ptr().add((i + ii) * k));
                    let d = dot4xr_512::<2>(xs, wr, k);
                    put(&d, i, o, rows);
                    i += 2;
                }
            }
            for i in i..m {
                let xp = x.as_ptr().add(i * k);
                let d = if wide {
                    dot4_512(xp, wr, k)
                } else {
                    dot4_256(xp, wr, k)
                };
                for (r, v) in d.iter().enumerate().take(rows) {
                    let p = out.0.add(i * n + o + r);
                    *p = if acc { *p + v } else { *v };
                }
            }
            o += rows;
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn stream512(
        out: SyncPtr,
        x: &[f32],
        w: &[f32],
        m: usize,
        k: usize,
        n: usize,
        o0: usize,
        o1: usize,
        acc: bool,
    ) {
        stream(true, out, x, w, m, k, n, o0, o1, acc)
    }

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn stream256(
        out: SyncPtr,
        x: &[f32],
        w: &[f32],
        m: usize,
        k: usize,
        n: usize,
        o0: usize,
        o1: usize,
        acc: bool,
    ) {
        stream(false, out, x, w, m, k, n, o0, o1, acc)
    }
}

#[cfg(target_arch = "x86_64")]
fn simd_level() -> u8 {
    if is_x86_feature_detected!("avx512f") && has_avx2() {
        2
    } else if has_avx2() {
        1
    } else {
        0
    }
}

fn linear_stream(out: &mut [f32], x: &[f32], w: &[f32], m: usize, k: usize, n: usize, acc: bool) {
    use rayon::prelude::*;
    let ptr = SyncPtr(out.as_mut_ptr());
    #[cfg(target_arch = "x86_64")]
    let level = simd_level();
    #[cfg(not(target_arch = "x86_64"))]
    let level = 0;
    let tasks = n.div_ceil(ROWS_PER_TASK);
    (0..tasks).into_par_iter().for_each(|t| {
        let o0 = t * ROWS_PER_TASK;
        let o1 = (o0 + ROWS_PER_TASK).min(n);
        // Rebinding makes the closure capture the whole Send wrapper rather than its
        // raw-pointer field (edition 2021 captures disjoint fields).
        #[allow(clippy::redundant_locals)]
        let ptr = ptr;
        match level {
            // SAFETY: the CPU supports the enabled features; columns o0..o1 are this task's.
            #[cfg(target_arch = "x86_64")]
            2 => unsafe { simd::stream512(ptr, x, w, m, k, n, o0, o1, acc) },
            #[cfg(target_arch = "x86_64")]
            1 => unsafe { simd::stream256(ptr, x, w, m, k, n, o0, o1, acc) },
            _ => stream_body::<false>(ptr, x, w, m, k, n, o0, o1, acc),
        }
    });
}

/// `row[i] = exp(row[i] - max)` for every entry; returns their sum. The softmax of
/// attention: vectorised (AVX-512 / AVX2, Cephes' single-precision `exp`, within 2
/// ulp of the correctly rounded value) because a prefill of `n` tokens takes `n²/2`
/// exponentials per head, which a scalar `expf` makes a large part of its time.
pub fn exp_sub_sum(row: &mut [f32], max: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    match simd_level() {
        // SAFETY: the CPU has the features.
        2 => return unsafe { simd::exp_sub_sum512(row, max) },
        1 => return unsafe { simd::exp_sub_sum256(row, max) },
        _ => {}
    }
    let mut sum = 0.0f32;
    for x in row.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    sum
}

/// `sums[i][r] += x[i] · w[r]` over `len` values, for `m` rows of `x` (row stride
/// `x_stride`) and four weight rows: the register-tile kernels of the streaming linear,
/// for callers that unpack weights into a tile first (the quantized kernels).
///
/// # Safety
/// `x` must be valid for `m` rows of `len` values at stride `x_stride`, every `w[r]`
/// for `len` values, and `sums` must have `m` entries.
pub unsafe fn tile_acc(
    x: *const f32,
    x_stride: usize,
    m: usize,
    w: [*const f32; 4],
    len: usize,
    sums: &mut [[f32; 4]],
) {
    #[cfg(target_arch = "x86_64")]
    match simd_level() {
        2 => return simd::tile512(x, x_stride, m, w, len, sums),
        1 => return simd::tile256(x, x_stride, m, w, len, sums),
        _ => {}
    }
    let wr: [&[f32]; 4] = std::array::from_fn(|r| std::slice::from_raw_parts(w[r], len));
    for (i, s) in sums.iter_mut().enumerate().take(m) {
        let xi = std::slice::from_raw_parts(x.add(i * x_stride), len);
        let d = dot4_body::<false>(xi, wr);
        for r in 0..4 {
            s[r] += d[r];
        }
    }
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
    if m <= SMALL_M {
        return linear_stream(out, x, w, m, k, n, accumulate);
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
fn has_avx2() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// Dot product of the common prefix of `a` and `b`.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    match simd_level() {
        // SAFETY: the CPU supports the enabled features.
        2 => return unsafe { simd::dot512(a, b) },
        1 => return unsafe { simd::dot256(a, b) },
        _ => {}
    }
    dot_body::<false>(a, b)
}

/// `y += a * x` over the common prefix.
#[inline]
pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    match simd_level() {
        // SAFETY: the CPU supports the enabled features.
        2 => return unsafe { simd::axpy512(y, a, x) },
        1 => return unsafe { simd::axpy256(y, a, x) },
        _ => {}
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
        let (m, len) = (7, 37);
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
        let close = |a: &[[f32; 4]]| {
            a.iter()
                .zip(&want)
                .all(|(p, q)| p.iter().zip(q).all(|(u, v)| (u - v).abs() < 1e-4))
        };
        let mut got = vec![[0.0f32; 4]; m];
        // SAFETY: extents as allocated.
        unsafe { tile_acc(x.as_ptr(), len, m, wp, len, &mut got) };
        assert!(close(&got), "dispatched: {got:?} vs {want:?}");
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") && has_avx2() {
                let mut got = vec![[0.0f32; 4]; m];
                // SAFETY: features checked.
                unsafe { simd::tile512(x.as_ptr(), len, m, wp, len, &mut got) };
                assert!(close(&got), "avx512");
            }
            if has_avx2() {
                let mut got = vec![[0.0f32; 4]; m];
                // SAFETY: features checked.
                unsafe { simd::tile256(x.as_ptr(), len, m, wp, len, &mut got) };
                assert!(close(&got), "avx2");
            }
        }
    }
}

#[cfg(test)]
mod exp_tests {
    use super::*;

    /// Every exp kernel this CPU has: the dispatched one, then each level directly.
    fn kernels() -> Vec<fn(&mut [f32], f32) -> f32> {
        let mut k: Vec<fn(&mut [f32], f32) -> f32> = vec![exp_sub_sum];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                // SAFETY: feature checked.
                k.push(|r, m| unsafe { simd::exp_sub_sum512(r, m) });
            }
            if has_avx2() {
                // SAFETY: feature checked.
                k.push(|r, m| unsafe { simd::exp_sub_sum256(r, m) });
            }
        }
        k
    }

    #[test]
    fn vector_exp_is_within_two_ulp_and_sums() {
        let xs: Vec<f32> = (0..4097).map(|i| -87.0 + i as f32 * 0.0215).collect();
        for (kernel, len) in kernels()
            .into_iter()
            .flat_map(|k| [0usize, 1, 7, 16, 17, 4097].map(|l| (k, l)))
        {
            let mut row = xs[..len].to_vec();
            let sum = kernel(&mut row, 0.5);
            let mut want_sum = 0.0f64;
            for (got, x) in row.iter().zip(&xs) {
                let want = f64::from(x - 0.5).exp();
                want_sum += want;
                let ulp = f64::from(f32::EPSILON) * want.max(f64::from(f32::MIN_POSITIVE));
                assert!(
                    (f64::from(*got) - want).abs() <= 2.0 * ulp + 1e-38,
                    "exp({x} - 0.5) = {got}, want {want}"
                );
            }
            assert!(
                (f64::from(sum) - want_sum).abs() <= 1e-5 * want_sum.max(1.0),
                "len {len}"
            );
        }
        let mut big = vec![200.0f32, -200.0];
        exp_sub_sum(&mut big, 0.0);
        assert!(
            big[0].is_finite() && big[1] >= 0.0,
            "clamped, never NaN: {big:?}"
        );
    }
}
