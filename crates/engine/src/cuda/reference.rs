//! f32 references for the CUDA kernels' semantics (kernels/reprise.cu).
//!
//! Each function here computes, on the CPU and in plain f32, exactly what one
//! kernel computes: split-K paged decode with its log-sum-exp merge, the fused
//! bias / q-k norm / rotary / reshape-and-cache step, RMSNorm and SiLU-gate.
//! The tests below pin them to the engine's CPU path ([`super::paged_attention`]
//! and [`crate::cpu::ops`]); the GPU self-test (`examples/cuda_check.rs`)
//! compares the kernels against them on fresh random inputs. Keeping both
//! comparisons against one reference is what lets a GPU run check the kernels
//! without re-deriving their semantics.

use crate::cpu::attention::AttnShape;

/// Rounds to the nearest bf16 (ties to even), returned as f32: the storage precision of the CUDA path.
pub fn bf16_round(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    let b = x.to_bits();
    let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1)) & 0xffff_0000;
    f32::from_bits(rounded)
}

/// One split's partial result for one query head: its max score, its sum of
/// exponentials and its output normalised by that sum.
#[derive(Clone, Debug, PartialEq)]
pub struct SplitPartial {
    /// Max of the (scaled) scores in the split; `-inf` when the split is empty.
    pub max: f32,
    /// Sum of `exp(score - max)` over the split; 0 when empty.
    pub sum: f32,
    /// `sum_j exp(s_j - max) v_j / sum`, `head_dim` floats (zeros when empty).
    pub out: Vec<f32>,
}

/// The partial of query head `h` over context positions `k0..k1` of one
/// sequence, as one CTA of `paged_decode_hd*` computes it.
#[allow(clippy::too_many_arguments)]
pub fn decode_split(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    block_table: &[u32],
    h: usize,
    k0: usize,
    k1: usize,
    shape: AttnShape,
) -> SplitPartial {
    let hd = shape.head_dim;
    let kvh = h / (shape.n_heads / shape.n_kv_heads);
    let row_len = shape.n_kv_heads * hd;
    let scale = 1.0 / (hd as f32).sqrt();
    if k0 >= k1 {
        return SplitPartial {
            max: f32::NEG_INFINITY,
            sum: 0.0,
            out: vec![0.0; hd],
        };
    }
    let off = |p: usize| {
        let slot =
            block_table[p / shape.block_size] as usize * shape.block_size + p % shape.block_size;
        slot * row_len + kvh * hd
    };
    let qh = &q[h * hd..(h + 1) * hd];
    let scores: Vec<f32> = (k0..k1)
        .map(|p| {
            let k = &k_cache[off(p)..off(p) + hd];
            qh.iter().zip(k).map(|(a, b)| a * scale * b).sum()
        })
        .collect();
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
    let sum: f32 = e.iter().sum();
    let mut out = vec![0.0; hd];
    for (p, w) in (k0..k1).zip(&e) {
        let v = &v_cache[off(p)..off(p) + hd];
        out.iter_mut().zip(v).for_each(|(o, v)| *o += w * v);
    }
    out.iter_mut().for_each(|o| *o /= sum);
    SplitPartial { max, sum, out }
}

/// `decode_merge`: the log-sum-exp combine of one head's split partials,
/// `sum_s w_s o_s / sum_s w_s` with `w_s = sum_s * exp(max_s - max)`.
pub fn merge_splits(parts: &[SplitPartial], head_dim: usize) -> Vec<f32> {
    let m = parts
        .iter()
        .map(|p| p.max)
        .fold(f32::NEG_INFINITY, f32::max);
    let mut num = vec![0.0f32; head_dim];
    let mut den = 0.0f32;
    for p in parts.iter().filter(|p| p.sum > 0.0) {
        let w = p.sum * (p.max - m).exp();
        num.iter_mut().zip(&p.out).for_each(|(n, o)| *n += w * o);
        den += w;
    }
    num.iter_mut().for_each(|n| *n /= den);
    num
}

/// Split-K paged decode for one sequence's single new token: every query head
/// of `q` (`n_heads * head_dim`) over context `0..ctx`, in partitions of
/// `partition` positions, merged. Returns `n_heads * head_dim` floats.
pub fn paged_decode_split_k(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    block_table: &[u32],
    ctx: usize,
    shape: AttnShape,
    partition: usize,
) -> Vec<f32> {
    let partition = partition.max(1);
    let n_splits = ctx.div_ceil(partition);
    let mut out = Vec::with_capacity(shape.n_heads * shape.head_dim);
    for h in 0..shape.n_heads {
        let parts: Vec<SplitPartial> = (0..n_splits)
            .map(|s| {
                let k0 = s * partition;
                let k1 = (k0 + partition).min(ctx);
                decode_split(q, k_cache, v_cache, block_table, h, k0, k1, shape)
            })
            .collect();
        out.extend(merge_splits(&parts, shape.head_dim));
    }
    out
}

/// Parameters of the fused post-projection step (`qkv_rope_cache`).
#[derive(Clone, Copy, Debug)]
pub struct QkvRopeParams<'a> {
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Width of one head (even).
    pub head_dim: usize,
    /// Bias of the fused q|k|v projection (Qwen2), `(n_heads + 2 n_kv) * head_dim`.
    pub bias: Option<&'a [f32]>,
    /// Per-head RMSNorm weights for q and k (Qwen3), `head_dim` each.
    pub qk_norm: Option<(&'a [f32], &'a [f32])>,
    /// RMSNorm epsilon.
    pub eps: f32,
    /// Rotary inverse frequencies, `head_dim / 2`.
    pub inv_freq: &'a [f32],
}

/// What `qkv_rope_cache` does to one token's fused q|k|v row at `pos`: returns
/// the rotated q (`n_heads * head_dim`) and the k and v rows to store in the
/// cache (`n_kv_heads * head_dim` each), with bf16 rounding where the kernel rounds.
pub fn qkv_rope_row(row: &[f32], pos: usize, p: QkvRopeParams) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (hd, half) = (p.head_dim, p.head_dim / 2);
    let mut x: Vec<f32> = row.to_vec();
    if let Some(b) = p.bias {
        x.iter_mut()
            .zip(b)
            .for_each(|(a, b)| *a = bf16_round(*a + b));
    }
    let (cos, sin): (Vec<f32>, Vec<f32>) = p
        .inv_freq
        .iter()
        .map(|f| {
            let a = (pos as f32 * f) as f64;
            (a.cos() as f32, a.sin() as f32)
        })
        .unzip();
    let nq = p.n_heads * hd;
    let nk = p.n_kv_heads * hd;
    let rotate = |head: &mut [f32], norm: Option<&[f32]>| {
        if let Some(w) = norm {
            let ss: f32 = head.iter().map(|v| v * v).sum();
            let inv = 1.0 / (ss / hd as f32 + p.eps).sqrt();
            head.iter_mut()
                .zip(w)
                .for_each(|(v, w)| *v = bf16_round(*v * inv * w));
        }
        for i in 0..half {
            let (a, b) = (head[i], head[i + half]);
            head[i] = bf16_round(a * cos[i] - b * sin[i]);
            head[i + half] = bf16_round(b * cos[i] + a * sin[i]);
        }
    };
    let (q, rest) = x.split_at_mut(nq);
    let (k, v) = rest.split_at_mut(nk);
    for hq in q.chunks_exact_mut(hd) {
        rotate(hq, p.qk_norm.map(|n| n.0));
    }
    for hk in k.chunks_exact_mut(hd) {
        rotate(hk, p.qk_norm.map(|n| n.1));
    }
    let v: Vec<f32> = v[..nk].iter().map(|&x| bf16_round(x)).collect();
    (q.to_vec(), k.to_vec(), v)
}

/// `rms_norm`: `x / sqrt(mean(x^2) + eps) * w` for one row.
pub fn rms_norm_row(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let ss: f32 = x.iter().map(|v| v * v).sum();
    let inv = 1.0 / (ss / x.len() as f32 + eps).sqrt();
    x.iter().zip(w).map(|(x, w)| x * inv * w).collect()
}

/// `silu_mul`: `silu(gate) * up` for one row of the fused gate|up projection.
pub fn silu_mul_row(gu: &[f32], inter: usize) -> Vec<f32> {
    (0..inter)
        .map(|i| {
            let g = gu[i];
            g / (1.0 + (-g).exp()) * gu[inter + i]
        })
        .collect()
}

/// Splits the decode kernel uses for a batch whose longest context is `max_ctx`.
pub fn decode_num_splits(max_ctx: usize, partition: usize) -> usize {
    max_ctx.div_ceil(partition.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::attention::{paged_attention, AttnSeq, PagedKvCache};
    use crate::cpu::ops::{rms_norm_inplace, rope_half};
    use rand::{Rng, SeedableRng};

    fn rand_vec(rng: &mut impl Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// A cache holding two sequences that share their first blocks (a prefix hit)
    /// and whose tables run out of order, with contexts not multiples of the block size.
    struct Setup {
        cache: PagedKvCache,
        tables: Vec<Vec<u32>>,
        ctxs: Vec<usize>,
        shape: AttnShape<'static>,
    }

    fn setup(seed: u64, bs: usize, n_heads: usize, n_kv: usize, hd: usize) -> Setup {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let num_blocks = 40;
        let mut cache = PagedKvCache::new(1, num_blocks, bs, n_kv, hd);
        let row = n_kv * hd;
        for slot in 0..num_blocks * bs {
            let k = rand_vec(&mut rng, row);
            let v = rand_vec(&mut rng, row);
            cache.write(0, slot, &k, &v);
        }
        // Blocks 17 and 3 are shared; the rest are distinct and shuffled.
        let tables = vec![
            vec![17, 3, 29, 8, 11, 35, 0],
            vec![17, 3, 22, 5, 39, 14, 26, 1],
        ];
        let ctxs = vec![7 * bs - 3, 8 * bs - bs / 2 - 1];
        Setup {
            cache,
            tables,
            ctxs,
            shape: AttnShape {
                n_heads,
                n_kv_heads: n_kv,
                head_dim: hd,
                block_size: bs,
                window: None,
                scale: 1.0 / (hd as f32).sqrt(),
                softcap: None,
                sinks: None,
            },
        }
    }

    fn close(a: &[f32], b: &[f32], tol: f32) -> Result<(), String> {
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            if (x - y).abs() > tol * (1.0 + y.abs()) {
                return Err(format!("index {i}: {x} vs {y}"));
            }
        }
        if a.len() != b.len() {
            return Err(format!("lengths {} vs {}", a.len(), b.len()));
        }
        Ok(())
    }

    #[test]
    fn split_k_decode_equals_unsplit_paged_attention() {
        for &(bs, nh, nkv, hd) in &[
            (16usize, 8usize, 2usize, 64usize),
            (5, 4, 4, 32),
            (3, 6, 1, 16),
        ] {
            let s = setup(bs as u64 * 7 + nh as u64, bs, nh, nkv, hd);
            let (kc, vc) = s.cache.layer(0);
            let mut rng = rand::rngs::StdRng::seed_from_u64(99);
            for (table, &ctx) in s.tables.iter().zip(&s.ctxs) {
                let q = rand_vec(&mut rng, nh * hd);
                // The engine's CPU kernel: one new token at position ctx - 1.
                let mut want = vec![0.0; nh * hd];
                let seqs = [AttnSeq {
                    row: 0,
                    n_new: 1,
                    start_pos: ctx - 1,
                    block_table: table,
                }];
                paged_attention(&mut want, &q, nh * hd, &seqs, kc, vc, s.shape);
                for partition in [1, 3, bs, 2 * bs + 1, 512] {
                    let got = paged_decode_split_k(&q, kc, vc, table, ctx, s.shape, partition);
                    close(&got, &want, 1e-5)
                        .unwrap_or_else(|e| panic!("bs {bs} partition {partition}: {e}"));
                }
            }
        }
    }

    #[test]
    fn merge_skips_empty_splits_and_is_order_free() {
        let s = setup(5, 4, 2, 1, 8);
        let (kc, vc) = s.cache.layer(0);
        let q: Vec<f32> = (0..16).map(|i| (i as f32 * 0.37).sin()).collect();
        let table = &s.tables[0];
        let ctx = s.ctxs[0];
        // Three splits plus an empty one (a split past the sequence's end).
        let mut parts: Vec<SplitPartial> = [(0, 5), (5, 9), (9, ctx), (ctx, ctx)]
            .iter()
            .map(|&(a, b)| decode_split(&q, kc, vc, table, 1, a, b, s.shape))
            .collect();
        assert_eq!(parts[3].sum, 0.0);
        let whole = decode_split(&q, kc, vc, table, 1, 0, ctx, s.shape);
        close(&merge_splits(&parts, 8), &whole.out, 1e-5).unwrap();
        parts.reverse();
        close(&merge_splits(&parts, 8), &whole.out, 1e-5).unwrap();
    }
    #[test]
    fn prefill_over_cached_prefix_matches_decode_steps() {
        // Prefill semantics (paged_prefill_hd*): row i of a chunk starting at
        // `start` sees keys 0..=start+i; equal to one decode per row.
        let s = setup(11, 5, 4, 2, 16);
        let (kc, vc) = s.cache.layer(0);
        let (nh, hd) = (4, 16);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for (table, &ctx) in s.tables.iter().zip(&s.ctxs) {
            for start in [0usize, 1, 5, ctx - 9] {
                let n = ctx - start;
                let q = rand_vec(&mut rng, n * nh * hd);
                let mut out = vec![0.0; n * nh * hd];
                let seqs = [AttnSeq {
                    row: 0,
                    n_new: n,
                    start_pos: start,
                    block_table: table,
                }];
                paged_attention(&mut out, &q, nh * hd, &seqs, kc, vc, s.shape);
                for i in 0..n {
                    let qi = &q[i * nh * hd..(i + 1) * nh * hd];
                    let want = paged_decode_split_k(qi, kc, vc, table, start + i + 1, s.shape, 7);
                    close(&out[i * nh * hd..(i + 1) * nh * hd], &want, 1e-4)
                        .unwrap_or_else(|e| panic!("start {start} row {i}: {e}"));
                }
            }
        }
    }

    #[test]
    fn qkv_rope_row_matches_the_cpu_model_steps() {
        let (nh, nkv, hd) = (4, 2, 8);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let row = rand_vec(&mut rng, (nh + 2 * nkv) * hd);
        let qn = rand_vec(&mut rng, hd);
        let kn = rand_vec(&mut rng, hd);
        let inv_freq: Vec<f32> = (0..hd / 2)
            .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / hd as f32))
            .collect();
        let pos = 37;
        let p = QkvRopeParams {
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: hd,
            bias: None,
            qk_norm: Some((&qn, &kn)),
            eps: 1e-6,
            inv_freq: &inv_freq,
        };
        let (q, k, v) = qkv_rope_row(&row, pos, p);
        // The CPU transformer's sequence: per-head norm, then half-split rotary.
        let (cos, sin): (Vec<f32>, Vec<f32>) = inv_freq
            .iter()
            .map(|f| {
                let a = (pos as f32 * f) as f64;
                (a.cos() as f32, a.sin() as f32)
            })
            .unzip();
        let mut want = row.clone();
        for (i, head) in want[..(nh + nkv) * hd].chunks_exact_mut(hd).enumerate() {
            rms_norm_inplace(head, if i < nh { &qn } else { &kn }, 1e-6);
            rope_half(head, &cos, &sin);
        }
        // The kernel stores bf16, so agreement is at bf16 precision (2 roundings).
        close(&q, &want[..nh * hd], 1e-2).unwrap();
        close(&k, &want[nh * hd..(nh + nkv) * hd], 1e-2).unwrap();
        close(&v, &want[(nh + nkv) * hd..], 4e-3).unwrap();
    }

    #[test]
    fn small_references() {
        assert_eq!(bf16_round(1.0), 1.0);
        assert_eq!(bf16_round(1.0 + 1.0 / 256.0), 1.0); // tie rounds to even
        assert_eq!(bf16_round(1.0 + 3.0 / 256.0), 1.0 + 4.0 / 256.0);
        let x = [3.0f32, -4.0];
        let y = rms_norm_row(&x, &[1.0, 2.0], 0.0);
        let r = (12.5f32).sqrt();
        assert!((y[0] - 3.0 / r).abs() < 1e-6 && (y[1] + 8.0 / r).abs() < 1e-6);
        let a = silu_mul_row(&[0.0, 1.0, 5.0, 2.0], 2);
        assert!(a[0].abs() < 1e-7 && (a[1] - 2.0 / (1.0 + (-1f32).exp())).abs() < 1e-6);
        assert_eq!(decode_num_splits(1, 512), 1);
        assert_eq!(decode_num_splits(513, 512), 2);
    }
}
