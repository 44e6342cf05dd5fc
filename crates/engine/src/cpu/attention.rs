//! The CPU attention backend: K/V in host blocks, read through block tables.
//!
//! [`PagedKvCache`] owns every layer's K and V in fixed-size blocks laid out
//! `[num_blocks][block_size][n_kv_heads][head_dim]` (f32), so one position's
//! keys for all kv heads are one contiguous row and a block is the unit the
//! KV cache manager hands out. [`paged_attention`] is the kernel.

use super::ops::{axpy, dot, gemm_f32, softcap};
use crate::model::KvStorage;
use crate::simd::exp_sub_sum;
use rayon::prelude::*;

/// Per-layer K and V storage in host blocks (f32).
#[derive(Debug)]
pub struct PagedKvCache {
    num_layers: usize,
    num_blocks: usize,
    block_size: usize,
    n_kv_heads: usize,
    head_dim: usize,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl KvStorage for PagedKvCache {
    fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    fn block_size(&self) -> usize {
        self.block_size
    }
}

impl PagedKvCache {
    /// Allocates zeroed storage for `num_blocks` blocks in every layer.
    pub fn new(
        num_layers: usize,
        num_blocks: usize,
        block_size: usize,
        n_kv_heads: usize,
        head_dim: usize,
    ) -> Self {
        let per_layer = num_blocks * block_size * n_kv_heads * head_dim;
        Self {
            num_layers,
            num_blocks,
            block_size,
            n_kv_heads,
            head_dim,
            k: (0..num_layers).map(|_| vec![0.0; per_layer]).collect(),
            v: (0..num_layers).map(|_| vec![0.0; per_layer]).collect(),
        }
    }

    /// Bytes one block takes across all layers (K and V), for sizing the pool from memory.
    pub fn block_bytes(
        num_layers: usize,
        block_size: usize,
        n_kv_heads: usize,
        head_dim: usize,
    ) -> usize {
        2 * num_layers * block_size * n_kv_heads * head_dim * std::mem::size_of::<f32>()
    }

    /// Bytes per block of this cache.
    pub fn bytes_per_block(&self) -> usize {
        Self::block_bytes(
            self.num_layers,
            self.block_size,
            self.n_kv_heads,
            self.head_dim,
        )
    }

    /// Number of layers.
    pub fn num_layers(&self) -> usize {
        self.num_layers
    }
    /// Number of blocks per layer.
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }
    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }
    /// Key/value heads per position.
    pub fn n_kv_heads(&self) -> usize {
        self.n_kv_heads
    }
    /// Width of one head.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Floats in one position's row (all kv heads).
    pub fn row_len(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Stores one position's keys and values (each `n_kv_heads * head_dim` floats) at `slot`.
    pub fn write(&mut self, layer: usize, slot: usize, k: &[f32], v: &[f32]) {
        let r = self.row_len();
        self.k[layer][slot * r..(slot + 1) * r].copy_from_slice(k);
        self.v[layer][slot * r..(slot + 1) * r].copy_from_slice(v);
    }

    /// One layer's K and V storage.
    pub fn layer(&self, layer: usize) -> (&[f32], &[f32]) {
        (&self.k[layer], &self.v[layer])
    }
}

/// One sequence's slice of the batch, as the attention kernel sees it.
#[derive(Clone, Copy, Debug)]
pub struct AttnSeq<'a> {
    /// Row of the sequence's first new token in the batch's q / out matrices.
    pub row: usize,
    /// New tokens this step.
    pub n_new: usize,
    /// Positions already cached before this step.
    pub start_pos: usize,
    /// Physical blocks covering `0..start_pos + n_new`.
    pub block_table: &'a [u32],
}

/// Attention geometry.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape<'a> {
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Tokens per block.
    pub block_size: usize,
    /// Keys per query when the window slides (see `ModelConfig::sliding_window`).
    pub window: Option<usize>,
    /// Factor on `q·k` (`head_dim^-1/2`, or Gemma's `query_pre_attn_scalar^-1/2`).
    pub scale: f32,
    /// Scores become `cap·tanh(s / cap)` before the softmax (Gemma 2).
    pub softcap: Option<f32>,
    /// Per query head, a logit that joins the softmax's denominator only (gpt-oss).
    pub sinks: Option<&'a [f32]>,
}

impl AttnShape<'_> {
    /// The first key position a query `visible` keys into its sequence attends to.
    #[inline]
    pub fn first_key(&self, visible: usize) -> usize {
        self.window.map_or(0, |w| visible.saturating_sub(w))
    }
}

/// Raw output pointer shared by tasks that write disjoint (row, head) cells.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every task writes only its own sequence's rows within its own head's columns.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// Prefill chunks at least this long use the gather + GEMM path.
const GEMM_MIN_ROWS: usize = 8;
/// Query rows per GEMM tile; bounds wasted work above the causal diagonal.
const Q_TILE: usize = 128;

/// Causal attention (within the window, if it slides) for every sequence and head,
/// reading K/V through block tables.
///
/// `q` holds one row per new token (`q_stride` floats apart, heads contiguous at the
/// row start); `out` gets `n_heads * head_dim` floats per row. K/V for the new
/// positions must already be in `k_cache` / `v_cache`.
pub fn paged_attention(
    out: &mut [f32],
    q: &[f32],
    q_stride: usize,
    seqs: &[AttnSeq],
    k_cache: &[f32],
    v_cache: &[f32],
    shape: AttnShape,
) {
    let AttnShape {
        n_heads,
        n_kv_heads,
        head_dim: hd,
        block_size: bs,
        scale,
        ..
    } = shape;
    let group = n_heads / n_kv_heads;
    let out_stride = n_heads * hd;
    let total_rows: usize = seqs.iter().map(|s| s.row + s.n_new).max().unwrap_or(0);
    assert!(out.len() >= total_rows * out_stride);
    assert!(q.len() >= total_rows.saturating_sub(1) * q_stride + n_heads * hd || total_rows == 0);
    let out_ptr = OutPtr(out.as_mut_ptr());
    let row_len = n_kv_heads * hd;
    let tasks: Vec<(usize, usize)> = (0..seqs.len())
        .flat_map(|s| (0..n_heads).map(move |h| (s, h)))
        .collect();
    tasks.par_iter().for_each(|&(s, h)| {
        let seq = &seqs[s];
        let kvh = h / group;
        let sink = shape.sinks.map(|s| s[h]);
        let ctx = seq.start_pos + seq.n_new;
        let slot = |p: usize| seq.block_table[p / bs] as usize * bs + p % bs;
        // Rebinding makes the closure capture the whole Send wrapper rather than its
        // raw-pointer field (edition 2021 captures disjoint fields).
        #[allow(clippy::redundant_locals)]
        let out_ptr = out_ptr;
        if seq.n_new >= GEMM_MIN_ROWS {
            // Gather this head's K/V contiguous so two GEMMs do the work; keys before
            // the first row's window stay zero (masked, and their blocks may be gone).
            let mut kbuf = vec![0.0f32; ctx * hd];
            let mut vbuf = vec![0.0f32; ctx * hd];
            for p in shape.first_key(seq.start_pos + 1)..ctx {
                let off = slot(p) * row_len + kvh * hd;
                kbuf[p * hd..(p + 1) * hd].copy_from_slice(&k_cache[off..off + hd]);
                vbuf[p * hd..(p + 1) * hd].copy_from_slice(&v_cache[off..off + hd]);
            }
            let mut scores = vec![0.0f32; Q_TILE.min(seq.n_new) * ctx];
            let mut i0 = 0;
            while i0 < seq.n_new {
                let rows = Q_TILE.min(seq.n_new - i0);
                let keys = seq.start_pos + i0 + rows;
                let qp = q[(seq.row + i0) * q_stride + h * hd..].as_ptr();
                // SAFETY: bounds checked above; scores holds rows * keys floats.
                unsafe {
                    gemm_f32(
                        rows,
                        keys,
                        hd,
                        scores.as_mut_ptr(),
                        1,
                        keys as isize,
                        false,
                        qp,
                        1,
                        q_stride as isize,
                        kbuf.as_ptr(),
                        hd as isize,
                        1,
                        scale,
                        false,
                    );
                }
                for r in 0..rows {
                    let visible = seq.start_pos + i0 + r + 1;
                    let row = &mut scores[r * keys..(r + 1) * keys];
                    softmax_range(row, shape.first_key(visible), visible, shape.softcap, sink);
                }
                // SAFETY: this task owns rows seq.row+i0.. and columns h*hd..(h+1)*hd of out.
                unsafe {
                    let dst = out_ptr.0.add((seq.row + i0) * out_stride + h * hd);
                    gemm_f32(
                        rows,
                        hd,
                        keys,
                        dst,
                        1,
                        out_stride as isize,
                        false,
                        scores.as_ptr(),
                        1,
                        keys as isize,
                        vbuf.as_ptr(),
                        1,
                        hd as isize,
                        1.0,
                        false,
                    );
                }
                i0 += rows;
            }
        } else {
            let mut scores = vec![0.0f32; ctx];
            let mut acc = vec![0.0f32; hd];
            for i in 0..seq.n_new {
                let visible = seq.start_pos + i + 1;
                let lo = shape.first_key(visible);
                let qrow = &q[(seq.row + i) * q_stride + h * hd..][..hd];
                for (p, sc) in scores[..visible].iter_mut().enumerate().skip(lo) {
                    let off = slot(p) * row_len + kvh * hd;
                    *sc = dot(qrow, &k_cache[off..off + hd]) * scale;
                }
                softmax_range(&mut scores[..visible], lo, visible, shape.softcap, sink);
                acc.fill(0.0);
                for (p, &w) in scores[..visible].iter().enumerate().skip(lo) {
                    let off = slot(p) * row_len + kvh * hd;
                    axpy(&mut acc, w, &v_cache[off..off + hd]);
                }
                // SAFETY: as above, disjoint cells per task.
                unsafe {
                    let dst = out_ptr.0.add((seq.row + i) * out_stride + h * hd);
                    std::ptr::copy_nonoverlapping(acc.as_ptr(), dst, hd);
                }
            }
        }
    });
}

/// Softmax over entries `lo..visible`, soft-capped first if `cap`, with `sink` as one
/// more logit in the denominator; the rest become 0 (the causal mask, and the keys
/// that slid out of the window).
fn softmax_range(row: &mut [f32], lo: usize, visible: usize, cap: Option<f32>, sink: Option<f32>) {
    let (live, masked) = row.split_at_mut(visible);
    masked.fill(0.0);
    let (early, live) = live.split_at_mut(lo);
    early.fill(0.0);
    if let Some(cap) = cap {
        softcap(live, cap);
    }
    let max = live
        .iter()
        .copied()
        .fold(sink.unwrap_or(f32::NEG_INFINITY), f32::max);
    let sum = exp_sub_sum(live, max) + sink.map_or(0.0, |s| (s - max).exp());
    let inv = 1.0 / sum;
    live.iter_mut().for_each(|x| *x *= inv);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Naive attention over contiguous K/V for checking the paged kernel.
    #[allow(clippy::too_many_arguments)]
    fn naive(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        n: usize,
        start: usize,
        hd: usize,
        window: Option<usize>,
        (scale, cap, sink): (f32, Option<f32>, Option<f32>),
    ) -> Vec<f32> {
        let mut out = vec![0.0; n * hd];
        for i in 0..n {
            let vis = start + i + 1;
            let lo = window.map_or(0, |w| vis.saturating_sub(w));
            let mut s: Vec<f32> = (0..vis)
                .map(|j| {
                    let s = (0..hd).map(|d| q[i * hd + d] * k[j * hd + d]).sum::<f32>() * scale;
                    cap.map_or(s, |c| c * (s / c).tanh())
                })
                .collect();
            let m = s[lo..]
                .iter()
                .copied()
                .fold(sink.unwrap_or(f32::NEG_INFINITY), f32::max);
            s.iter_mut().for_each(|x| *x = (*x - m).exp());
            for x in &mut s[..lo] {
                *x = 0.0;
            }
            let z: f32 = s.iter().sum::<f32>() + sink.map_or(0.0, |k| (k - m).exp());
            for j in lo..vis {
                for d in 0..hd {
                    out[i * hd + d] += s[j] / z * v[j * hd + d];
                }
            }
        }
        out
    }

    #[test]
    fn paged_matches_naive_with_shuffled_blocks() {
        let (hd, bs, ctx) = (8, 4, 23);
        let mut cache = PagedKvCache::new(1, 10, bs, 1, hd);
        let table: Vec<u32> = vec![7, 2, 9, 0, 5, 3];
        let val = |p: usize, d: usize, s: f32| ((p * 31 + d * 7) as f32 * s).sin();
        let k: Vec<f32> = (0..ctx * hd).map(|i| val(i / hd, i % hd, 0.37)).collect();
        let v: Vec<f32> = (0..ctx * hd).map(|i| val(i / hd, i % hd, 0.91)).collect();
        for p in 0..ctx {
            let slot = table[p / bs] as usize * bs + p % bs;
            cache.write(0, slot, &k[p * hd..(p + 1) * hd], &v[p * hd..(p + 1) * hd]);
        }
        // No window, one wider than every context, and windows that slide (the GEMM
        // path for 8+ new rows, the per-row path below that).
        // Also Gemma's scale and soft-cap (tight enough to change the weights).
        // And a sink logit (gpt-oss), large enough to take most of the weight.
        let plain = (1.0 / (hd as f32).sqrt(), None, None);
        let sinks = [2.5f32];
        for (window, scaling) in [
            (None, plain),
            (Some(64), plain),
            (Some(5), plain),
            (Some(1), plain),
            (None, (1.3, Some(0.8), None)),
            (Some(5), (1.3, Some(0.8), None)),
            (None, (0.4, None, Some(sinks[0]))),
            (Some(5), (0.4, None, Some(sinks[0]))),
        ] {
            let shape = AttnShape {
                n_heads: 1,
                n_kv_heads: 1,
                head_dim: hd,
                block_size: bs,
                window,
                scale: scaling.0,
                softcap: scaling.1,
                sinks: scaling.2.map(|_| &sinks[..]),
            };
            for &(start, n) in &[(0usize, 23usize), (20, 3), (22, 1), (5, 18), (0, 5)] {
                let q: Vec<f32> = (0..n * hd)
                    .map(|i| val(i / hd + 100, i % hd, 0.13))
                    .collect();
                let mut out = vec![0.0; n * hd];
                let seqs = [AttnSeq {
                    row: 0,
                    n_new: n,
                    start_pos: start,
                    block_table: &table,
                }];
                let (kc, vc) = cache.layer(0);
                paged_attention(&mut out, &q, hd, &seqs, kc, vc, shape);
                let want = naive(&q, &k, &v, n, start, hd, window, scaling);
                for (a, b) in out.iter().zip(&want) {
                    assert!(
                        (a - b).abs() < 1e-5,
                        "window {window:?} {scaling:?} start {start} n {n}: {a} vs {b}"
                    );
                }
            }
        }
    }
}
