//! The f32 host kernels, written once over [`Simd`]: dot, axpy, the softmax's
//! `exp`, and the register tiles of the streaming products. Each runs through
//! `isa_fn!`, which compiles it for the instruction set the process uses.
//!
//! # Safety
//! Every function here is `unsafe` for the same reason as the primitives: it must
//! run inside a function compiled for `S`'s instruction set on a CPU that has it.

// Every kernel shares the contract the module doc states under "Safety".
#![allow(clippy::missing_safety_doc)]

use super::vector::Simd;

/// Dot product of the common prefix of `a` and `b`.
#[inline(always)]
pub unsafe fn dot<S: Simd>(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let l = S::LANES;
    let (mut acc0, mut acc1) = (S::zero(), S::zero());
    let mut j = 0;
    while j + 2 * l <= n {
        acc0 = S::fma(S::load(pa.add(j)), S::load(pb.add(j)), acc0);
        acc1 = S::fma(S::load(pa.add(j + l)), S::load(pb.add(j + l)), acc1);
        j += 2 * l;
    }
    if j + l <= n {
        acc0 = S::fma(S::load(pa.add(j)), S::load(pb.add(j)), acc0);
        j += l;
    }
    let mut s = S::sum(S::add(acc0, acc1));
    while j < n {
        s += *pa.add(j) * *pb.add(j);
        j += 1;
    }
    s
}

/// `y += a · x` over the common prefix.
#[inline(always)]
pub unsafe fn axpy<S: Simd>(y: &mut [f32], a: f32, x: &[f32]) {
    let n = y.len().min(x.len());
    let (py, px) = (y.as_mut_ptr(), x.as_ptr());
    let av = S::splat(a);
    let mut j = 0;
    while j + S::LANES <= n {
        S::store(
            py.add(j),
            S::fma(S::load(px.add(j)), av, S::load(py.add(j))),
        );
        j += S::LANES;
    }
    while j < n {
        *py.add(j) += a * *px.add(j);
        j += 1;
    }
}

/// `row[i] = exp(row[i] - max)` for every entry; returns their sum.
#[inline(always)]
pub unsafe fn exp_sub_sum<S: Simd>(row: &mut [f32], max: f32) -> f32 {
    let (n, p) = (row.len(), row.as_mut_ptr());
    let m = S::splat(max);
    let mut acc = S::zero();
    let mut j = 0;
    while j + S::LANES <= n {
        let e = S::exp(S::sub(S::load(p.add(j)), m));
        S::store(p.add(j), e);
        acc = S::add(acc, e);
        j += S::LANES;
    }
    let mut s = S::sum(acc);
    if j < n {
        // The tail through a padded vector, so it gets the same `exp`.
        let mut tail = [0.0f32; 16];
        let left = n - j;
        tail[..left].copy_from_slice(&row[j..]);
        let e = S::exp(S::sub(S::load(tail.as_ptr()), m));
        S::store(tail.as_mut_ptr(), e);
        for (o, v) in row[j..].iter_mut().zip(&tail[..left]) {
            *o = *v;
            s += *v;
        }
    }
    s
}

/// `sums[i][r] += x[i] · w[r]` over `len` values for `m` rows of `x` (row stride
/// `xs`) and four weight rows: `S::TILE_ROWS` activation rows at a time, each
/// weight vector loaded once for all of them.
#[inline(always)]
pub unsafe fn tile<S: Simd>(
    x: *const f32,
    xs: usize,
    m: usize,
    w: [*const f32; 4],
    len: usize,
    sums: &mut [[f32; 4]],
) {
    let mut i = 0;
    while i < m {
        let rows = (m - i).min(S::TILE_ROWS);
        let xr = x.add(i * xs);
        let out = &mut sums[i..i + rows];
        match rows {
            1 => tile_r::<S, 1>(xr, xs, w, len, out),
            2 => tile_r::<S, 2>(xr, xs, w, len, out),
            3 => tile_r::<S, 3>(xr, xs, w, len, out),
            4 => tile_r::<S, 4>(xr, xs, w, len, out),
            5 => tile_r::<S, 5>(xr, xs, w, len, out),
            _ => tile_r::<S, 6>(xr, xs, w, len, out),
        }
        i += rows;
    }
}

#[inline(always)]
unsafe fn tile_r<S: Simd, const R: usize>(
    x: *const f32,
    xs: usize,
    w: [*const f32; 4],
    len: usize,
    sums: &mut [[f32; 4]],
) {
    let mut acc = [[S::zero(); 4]; R];
    let mut j = 0;
    while j + S::LANES <= len {
        let wv: [S::F; 4] = std::array::from_fn(|r| S::load(w[r].add(j)));
        for (i, a) in acc.iter_mut().enumerate() {
            let xv = S::load(x.add(i * xs + j));
            for r in 0..4 {
                a[r] = S::fma(xv, wv[r], a[r]);
            }
        }
        j += S::LANES;
    }
    for (i, a) in acc.iter().enumerate() {
        for r in 0..4 {
            let mut s = S::sum(a[r]);
            for t in j..len {
                s += *x.add(i * xs + t) * *w[r].add(t);
            }
            sums[i][r] += s;
        }
    }
}
