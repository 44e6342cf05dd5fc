//! Launch wrappers for `kernels/reprise.cu` (compiled to PTX by build.rs) and the
//! GPU self-test that checks each kernel against its f32 reference in
//! [`super::reference`] on fresh random inputs.

use super::device::{drv_err, open_device, to_bf16, DevBuf};
use super::reference::{self, bf16_round, paged_decode_split_k, qkv_rope_row, QkvRopeParams};
use crate::cpu::attention::{paged_attention, AttnSeq, AttnShape};
use crate::model::ModelError;
use cudarc::driver::{CudaContext, CudaFunction, CudaStream, LaunchConfig, PushKernelArg};
use rand::{Rng, SeedableRng};
use std::sync::Arc;

/// The PTX nvcc made from kernels/reprise.cu.
const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/reprise.ptx"));

/// Most query heads per kv head the decode kernel keeps in registers.
pub(crate) const MAX_GROUP: usize = 8;

fn launch_err(name: &'static str) -> impl FnOnce(cudarc::driver::DriverError) -> ModelError {
    move |e| ModelError::Device(format!("launch {name}: {e}"))
}

fn cfg(grid: (usize, usize, usize), block: usize, smem: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid.0 as u32, grid.1 as u32, grid.2 as u32),
        block_dim: (block as u32, 1, 1),
        shared_mem_bytes: smem as u32,
    }
}

/// Every kernel of the module, looked up once.
pub(crate) struct Kernels {
    embed_rows: CudaFunction,
    gather_rows: CudaFunction,
    rms_norm: CudaFunction,
    silu_mul: CudaFunction,
    qkv_rope_cache: CudaFunction,
    reshape_and_cache: CudaFunction,
    decode_merge: CudaFunction,
    decode64: CudaFunction,
    decode128: CudaFunction,
    prefill64: CudaFunction,
    prefill128: CudaFunction,
}

/// Arguments of `qkv_rope_cache` (raw device addresses; 0 for absent optionals).
pub(crate) struct QkvArgs {
    pub qkv: u64,
    pub qkv_stride: usize,
    pub bias: u64,
    pub q_norm: u64,
    pub k_norm: u64,
    pub eps: f32,
    pub positions: u64,
    pub inv_freq: u64,
    pub slots: u64,
    pub k_cache: u64,
    pub v_cache: u64,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub tokens: usize,
}

/// Arguments of `paged_decode_hd*` (+ `decode_merge` when split).
pub(crate) struct DecodeArgs {
    pub part_out: u64,
    pub part_ml: u64,
    pub out: u64,
    pub out_stride: usize,
    pub q: u64,
    pub q_stride: usize,
    pub k_cache: u64,
    pub v_cache: u64,
    pub block_tables: u64,
    pub bt_stride: usize,
    pub rows: u64,
    pub ctx_lens: u64,
    pub n_seqs: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
    pub scale: f32,
    pub partition: usize,
    pub n_splits: usize,
}

/// Arguments of `paged_prefill_hd*`.
pub(crate) struct PrefillArgs {
    pub out: u64,
    pub out_stride: usize,
    pub q: u64,
    pub q_stride: usize,
    pub k_cache: u64,
    pub v_cache: u64,
    pub block_tables: u64,
    pub bt_stride: usize,
    pub q_row: u64,
    pub start: u64,
    pub n_new: u64,
    pub n_seqs: usize,
    pub max_new: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
    pub scale: f32,
}

impl Kernels {
    /// Loads the PTX into `ctx` (the driver JIT-compiles it for the device once).
    pub(crate) fn load(ctx: &Arc<CudaContext>) -> Result<Self, ModelError> {
        let module = ctx
            .load_module(cudarc::nvrtc::Ptx::from_src(PTX))
            .map_err(drv_err("load kernels/reprise.cu PTX"))?;
        let f = |name: &str| {
            module
                .load_function(name)
                .map_err(|e| ModelError::Device(format!("kernel {name}: {e}")))
        };
        Ok(Self {
            embed_rows: f("embed_rows")?,
            gather_rows: f("gather_rows")?,
            rms_norm: f("rms_norm")?,
            silu_mul: f("silu_mul")?,
            qkv_rope_cache: f("qkv_rope_cache")?,
            reshape_and_cache: f("reshape_and_cache")?,
            decode_merge: f("decode_merge")?,
            decode64: f("paged_decode_hd64")?,
            decode128: f("paged_decode_hd128")?,
            prefill64: f("paged_prefill_hd64")?,
            prefill128: f("paged_prefill_hd128")?,
        })
    }

    pub(crate) fn embed_rows(
        &self,
        st: &CudaStream,
        out: u64,
        table: u64,
        ids: u64,
        t: usize,
        h: usize,
    ) -> Result<(), ModelError> {
        let h = h as i32;
        let mut b = st.launch_builder(&self.embed_rows);
        b.arg(&out).arg(&table).arg(&ids).arg(&h);
        // SAFETY: argument types match the kernel's signature; buffers are sized by the caller.
        unsafe { b.launch(cfg((t, 1, 1), 256, 0)) }.map_err(launch_err("embed_rows"))?;
        Ok(())
    }

    pub(crate) fn gather_rows(
        &self,
        st: &CudaStream,
        out: u64,
        x: u64,
        rows: u64,
        n: usize,
        h: usize,
    ) -> Result<(), ModelError> {
        let h = h as i32;
        let mut b = st.launch_builder(&self.gather_rows);
        b.arg(&out).arg(&x).arg(&rows).arg(&h);
        // SAFETY: as above.
        unsafe { b.launch(cfg((n, 1, 1), 256, 0)) }.map_err(launch_err("gather_rows"))?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn rms_norm(
        &self,
        st: &CudaStream,
        out: u64,
        x: u64,
        w: u64,
        t: usize,
        h: usize,
        eps: f32,
    ) -> Result<(), ModelError> {
        let hh = h as i32;
        let mut b = st.launch_builder(&self.rms_norm);
        b.arg(&out).arg(&x).arg(&w).arg(&hh).arg(&eps);
        // SAFETY: as above.
        unsafe { b.launch(cfg((t, 1, 1), 256, 0)) }.map_err(launch_err("rms_norm"))?;
        Ok(())
    }

    pub(crate) fn silu_mul(
        &self,
        st: &CudaStream,
        out: u64,
        gu: u64,
        t: usize,
        inter: usize,
    ) -> Result<(), ModelError> {
        let (ti, ii) = (t as i32, inter as i32);
        let blocks = (t * inter).div_ceil(256).clamp(1, 65_535);
        let mut b = st.launch_builder(&self.silu_mul);
        b.arg(&out).arg(&gu).arg(&ti).arg(&ii);
        // SAFETY: as above; the kernel is grid-stride.
        unsafe { b.launch(cfg((blocks, 1, 1), 256, 0)) }.map_err(launch_err("silu_mul"))?;
        Ok(())
    }

    pub(crate) fn qkv_rope_cache(&self, st: &CudaStream, a: QkvArgs) -> Result<(), ModelError> {
        let (stride, nh, nkv, hd) = (
            a.qkv_stride as i32,
            a.n_heads as i32,
            a.n_kv_heads as i32,
            a.head_dim as i32,
        );
        let mut b = st.launch_builder(&self.qkv_rope_cache);
        b.arg(&a.qkv)
            .arg(&stride)
            .arg(&a.bias)
            .arg(&a.q_norm)
            .arg(&a.k_norm)
            .arg(&a.eps)
            .arg(&a.positions)
            .arg(&a.inv_freq)
            .arg(&a.slots)
            .arg(&a.k_cache)
            .arg(&a.v_cache)
            .arg(&nh)
            .arg(&nkv)
            .arg(&hd);
        let grid = (a.tokens, a.n_heads + 2 * a.n_kv_heads, 1);
        // SAFETY: as above; one thread per rotary pair.
        unsafe { b.launch(cfg(grid, a.head_dim / 2, 0)) }.map_err(launch_err("qkv_rope_cache"))?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn reshape_and_cache(
        &self,
        st: &CudaStream,
        k_src: u64,
        v_src: u64,
        src_stride: usize,
        slots: u64,
        k_cache: u64,
        v_cache: u64,
        row_len: usize,
        t: usize,
    ) -> Result<(), ModelError> {
        let (ss, rl) = (src_stride as i32, row_len as i32);
        let mut b = st.launch_builder(&self.reshape_and_cache);
        b.arg(&k_src)
            .arg(&v_src)
            .arg(&ss)
            .arg(&slots)
            .arg(&k_cache)
            .arg(&v_cache)
            .arg(&rl);
        // SAFETY: as above.
        unsafe { b.launch(cfg((t, 1, 1), 256, 0)) }.map_err(launch_err("reshape_and_cache"))?;
        Ok(())
    }

    pub(crate) fn paged_decode(&self, st: &CudaStream, a: DecodeArgs) -> Result<(), ModelError> {
        let f = match a.head_dim {
            64 => &self.decode64,
            128 => &self.decode128,
            d => {
                return Err(ModelError::Config(format!(
                    "head_dim {d} has no decode kernel"
                )))
            }
        };
        let group = a.n_heads / a.n_kv_heads;
        // q, scores and the cross-warp reduction (see decode_impl).
        let smem = 4 * (group * a.head_dim + group * a.partition + 4 * group * a.head_dim);
        let (os, qs, bts, nh, nkv, bs, part, ns) = (
            a.out_stride as i32,
            a.q_stride as i32,
            a.bt_stride as i32,
            a.n_heads as i32,
            a.n_kv_heads as i32,
            a.block_size as i32,
            a.partition as i32,
            a.n_splits as i32,
        );
        let mut b = st.launch_builder(f);
        b.arg(&a.part_out)
            .arg(&a.part_ml)
            .arg(&a.out)
            .arg(&os)
            .arg(&a.q)
            .arg(&qs)
            .arg(&a.k_cache)
            .arg(&a.v_cache)
            .arg(&a.block_tables)
            .arg(&bts)
            .arg(&a.rows)
            .arg(&a.ctx_lens)
            .arg(&nh)
            .arg(&nkv)
            .arg(&bs)
            .arg(&a.scale)
            .arg(&part)
            .arg(&ns);
        let grid = (a.n_kv_heads, a.n_seqs, a.n_splits);
        // SAFETY: as above; smem stays under 48 KiB for group <= 8, partition 512, hd 128.
        unsafe { b.launch(cfg(grid, 128, smem)) }.map_err(launch_err("paged_decode"))?;
        if a.n_splits > 1 {
            let hd = a.head_dim as i32;
            let mut m = st.launch_builder(&self.decode_merge);
            m.arg(&a.out)
                .arg(&os)
                .arg(&a.part_out)
                .arg(&a.part_ml)
                .arg(&a.rows)
                .arg(&nh)
                .arg(&hd)
                .arg(&ns);
            // SAFETY: as above.
            unsafe { m.launch(cfg((a.n_heads, a.n_seqs, 1), a.head_dim, 0)) }
                .map_err(launch_err("decode_merge"))?;
        }
        Ok(())
    }

    pub(crate) fn paged_prefill(&self, st: &CudaStream, a: PrefillArgs) -> Result<(), ModelError> {
        let f = match a.head_dim {
            64 => &self.prefill64,
            128 => &self.prefill128,
            d => {
                return Err(ModelError::Config(format!(
                    "head_dim {d} has no prefill kernel"
                )))
            }
        };
        let (os, qs, bts, nh, nkv, bs) = (
            a.out_stride as i32,
            a.q_stride as i32,
            a.bt_stride as i32,
            a.n_heads as i32,
            a.n_kv_heads as i32,
            a.block_size as i32,
        );
        let mut b = st.launch_builder(f);
        b.arg(&a.out)
            .arg(&os)
            .arg(&a.q)
            .arg(&qs)
            .arg(&a.k_cache)
            .arg(&a.v_cache)
            .arg(&a.block_tables)
            .arg(&bts)
            .arg(&a.q_row)
            .arg(&a.start)
            .arg(&a.n_new)
            .arg(&nh)
            .arg(&nkv)
            .arg(&bs)
            .arg(&a.scale);
        // 16 query rows per CTA (PF_TILE_Q in reprise.cu).
        let grid = (a.max_new.div_ceil(16), a.n_heads, a.n_seqs);
        // SAFETY: as above.
        unsafe { b.launch(cfg(grid, 128, 0)) }.map_err(launch_err("paged_prefill"))?;
        Ok(())
    }
}

/// One kernel check's outcome: the relative error `|out - ref| / |ref|` (L2).
#[derive(Clone, Debug)]
pub struct CheckResult {
    /// What was checked.
    pub name: String,
    /// Relative L2 error against the f32 reference.
    pub rel_err: f64,
    /// Largest error the check accepts (bf16 level).
    pub tolerance: f64,
}

impl CheckResult {
    /// Whether the error is within tolerance (and not NaN).
    pub fn passed(&self) -> bool {
        self.rel_err <= self.tolerance
    }
}

fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (g, w) in got.iter().zip(want) {
        num += ((g - w) as f64).powi(2);
        den += (*w as f64).powi(2);
    }
    if got.len() != want.len() || got.iter().any(|x| !x.is_finite()) {
        return f64::INFINITY;
    }
    (num / den.max(1e-30)).sqrt()
}

fn bf16_bits(x: &[f32]) -> Vec<u16> {
    to_bf16(x)
}

fn from_bf16(x: &[u16]) -> Vec<f32> {
    x.iter()
        .map(|&b| half::bf16::from_bits(b).to_f32())
        .collect()
}

/// Runs every kernel on `cuda:ordinal` against its f32 reference on fresh random
/// inputs (bf16-rounded so both sides see the same values): paged decode
/// unsplit and split (block tables with shared and out-of-order blocks, contexts
/// not a multiple of the block size, GQA), prefill over a cached prefix,
/// reshape-and-cache, the fused q/k norm + rotary + cache write, RMSNorm and SiLU-gate.
pub fn self_test(ordinal: usize, seed: u64) -> Result<Vec<CheckResult>, ModelError> {
    let ctx = open_device(ordinal)?;
    let k = Kernels::load(&ctx)?;
    let st = ctx.new_stream().map_err(drv_err("cuStreamCreate"))?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // A second generator for block permutations: `rnd` below holds the first.
    let mut perm_rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x9e37_79b9);
    let mut out = Vec::new();
    let mut rnd = |n: usize, scale: f32| -> Vec<f32> {
        (0..n)
            .map(|_| bf16_round(rng.random_range(-1.0f32..1.0) * scale))
            .collect()
    };
    let up16 = |x: &[f32]| DevBuf::from_host(&st, &bf16_bits(x));
    let down16 = |b: &DevBuf<u16>| -> Result<Vec<f32>, ModelError> {
        let mut h = vec![0u16; b.len];
        // SAFETY: h has b.len elements; synchronised right after.
        unsafe { cudarc::driver::result::memcpy_dtoh_async(&mut h, b.ptr, st.cu_stream()) }
            .map_err(drv_err("download"))?;
        st.synchronize().map_err(drv_err("self-test"))?;
        Ok(from_bf16(&h))
    };
    let up32 = |x: &[i32]| DevBuf::from_host(&st, x);

    // Attention: (block size, n_heads, n_kv_heads, head_dim).
    for &(bs, nh, nkv, hd) in &[
        (16usize, 16usize, 8usize, 128usize),
        (16, 32, 8, 64),
        (7, 8, 1, 128),
        (32, 32, 8, 128),
    ] {
        let num_blocks = 700;
        let row = nkv * hd;
        let kh = rnd(num_blocks * bs * row, 1.0);
        let vh = rnd(num_blocks * bs * row, 1.0);
        let kd = up16(&kh)?;
        let vd = up16(&vh)?;
        // Two sequences sharing their first 3 blocks (a prefix hit), tables shuffled,
        // contexts not multiples of the block size; one long enough for many splits.
        let mut perm: Vec<u32> = (3..num_blocks as u32).collect();
        for i in (1..perm.len()).rev() {
            let j = perm_rng.random_range(0..=i);
            perm.swap(i, j);
        }
        let ctxs = [3 * bs + 5, 2500usize.min((num_blocks - 3) * bs / 2 - 3)];
        let mut tables: Vec<Vec<u32>> = Vec::new();
        let mut next = 0;
        for &c in &ctxs {
            let need = c.div_ceil(bs);
            let mut t = vec![2u32, 0, 1];
            t.extend_from_slice(&perm[next..next + need.saturating_sub(3)]);
            next += need;
            tables.push(t);
        }
        let shape = AttnShape {
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: hd,
            block_size: bs,
            window: None,
            scale: 1.0 / (hd as f32).sqrt(),
            softcap: None,
            sinks: None,
        };
        let stride = tables.iter().map(Vec::len).max().unwrap_or(0);
        let flat: Vec<i32> = tables
            .iter()
            .flat_map(|t| (0..stride).map(move |j| t.get(j).copied().unwrap_or(0) as i32))
            .collect();
        let bt = up32(&flat)?;
        // Decode, with 1 split and with the production partition.
        let qh = rnd(ctxs.len() * nh * hd, 1.0);
        let qd = up16(&qh)?;
        let rows = up32(&[0, 1])?;
        let ctx_d = up32(&ctxs.map(|c| c as i32))?;
        let mut want = Vec::new();
        for (i, (t, &c)) in tables.iter().zip(&ctxs).enumerate() {
            want.extend(paged_decode_split_k(
                &qh[i * nh * hd..(i + 1) * nh * hd],
                &kh,
                &vh,
                t,
                c,
                shape,
                c,
            ));
        }
        // (sequences, partition): one short sequence in one split (direct write), both
        // sequences in 5 and 20 splits (the short one's trailing splits are empty).
        for (n_seqs, part) in [(1usize, 512usize), (2, 512), (2, 128)] {
            let max_ctx = ctxs[..n_seqs].iter().copied().max().unwrap_or(1);
            let splits = reference::decode_num_splits(max_ctx, part);
            let od = DevBuf::<u16>::zeros(&st, n_seqs * nh * hd)?;
            let po = DevBuf::<f32>::zeros(&st, n_seqs * nh * splits * hd)?;
            let pm = DevBuf::<f32>::zeros(&st, n_seqs * nh * splits * 2)?;
            k.paged_decode(
                &st,
                DecodeArgs {
                    part_out: po.ptr,
                    part_ml: pm.ptr,
                    out: od.ptr,
                    out_stride: nh * hd,
                    q: qd.ptr,
                    q_stride: nh * hd,
                    k_cache: kd.ptr,
                    v_cache: vd.ptr,
                    block_tables: bt.ptr,
                    bt_stride: stride,
                    rows: rows.ptr,
                    ctx_lens: ctx_d.ptr,
                    n_seqs,
                    n_heads: nh,
                    n_kv_heads: nkv,
                    head_dim: hd,
                    block_size: bs,
                    scale: 1.0 / (hd as f32).sqrt(),
                    partition: part,
                    n_splits: splits,
                },
            )?;
            out.push(CheckResult {
                name: format!(
                    "paged_decode bs={bs} heads={nh}/{nkv} hd={hd} ctx={:?} partition={part} splits={splits}",
                    &ctxs[..n_seqs]
                ),
                rel_err: rel_err(&down16(&od)?, &want[..n_seqs * nh * hd]),
                tolerance: 1e-2,
            });
        }
        // Prefill: sequence 0 from scratch, sequence 1 with a cached prefix (start > 0).
        let starts = [0usize, ctxs[1] - 300];
        let news = [ctxs[0], 300];
        let total: usize = news.iter().sum();
        let qh = rnd(total * nh * hd, 1.0);
        let qd = up16(&qh)?;
        let od = DevBuf::<u16>::zeros(&st, total * nh * hd)?;
        let q_row = up32(&[0, news[0] as i32])?;
        let start_d = up32(&starts.map(|s| s as i32))?;
        let new_d = up32(&news.map(|s| s as i32))?;
        k.paged_prefill(
            &st,
            PrefillArgs {
                out: od.ptr,
                out_stride: nh * hd,
                q: qd.ptr,
                q_stride: nh * hd,
                k_cache: kd.ptr,
                v_cache: vd.ptr,
                block_tables: bt.ptr,
                bt_stride: stride,
                q_row: q_row.ptr,
                start: start_d.ptr,
                n_new: new_d.ptr,
                n_seqs: 2,
                max_new: news[0].max(news[1]),
                n_heads: nh,
                n_kv_heads: nkv,
                head_dim: hd,
                block_size: bs,
                scale: 1.0 / (hd as f32).sqrt(),
            },
        )?;
        let mut cache = crate::cpu::attention::PagedKvCache::new(1, num_blocks, bs, nkv, hd);
        for slot in 0..num_blocks * bs {
            cache.write(
                0,
                slot,
                &kh[slot * row..(slot + 1) * row],
                &vh[slot * row..(slot + 1) * row],
            );
        }
        let (kc, vc) = cache.layer(0);
        let seqs = [
            AttnSeq {
                row: 0,
                n_new: news[0],
                start_pos: starts[0],
                block_table: &tables[0],
            },
            AttnSeq {
                row: news[0],
                n_new: news[1],
                start_pos: starts[1],
                block_table: &tables[1],
            },
        ];
        let mut want = vec![0.0f32; total * nh * hd];
        paged_attention(&mut want, &qh, nh * hd, &seqs, kc, vc, shape);
        out.push(CheckResult {
            name: format!(
                "paged_prefill bs={bs} heads={nh}/{nkv} hd={hd} starts={starts:?} new={news:?}"
            ),
            rel_err: rel_err(&down16(&od)?, &want),
            tolerance: 1e-2,
        });
    }

    // Fused q/k norm + rotary + cache write (and bias), then plain reshape-and-cache.
    for &(nh, nkv, hd, bias, norm) in &[
        (16usize, 8usize, 128usize, false, true),
        (14, 2, 64, true, false),
    ] {
        let t = 37;
        let w = (nh + 2 * nkv) * hd;
        let qkv_h = rnd(t * w, 2.0);
        let qkv_d = up16(&qkv_h)?;
        let bias_h = rnd(w, 0.5);
        let qn = rnd(hd, 1.0);
        let kn = rnd(hd, 1.0);
        let bias_d = up16(&bias_h)?;
        let qn_d = up16(&qn)?;
        let kn_d = up16(&kn)?;
        let inv_freq: Vec<f32> = (0..hd / 2)
            .map(|i| 1.0 / 1_000_000f32.powf(2.0 * i as f32 / hd as f32))
            .collect();
        let inv_d = DevBuf::from_host(&st, &inv_freq)?;
        let positions: Vec<i32> = (0..t as i32).map(|i| 3 * i + 1000).collect();
        let slots: Vec<i32> = (0..t as i32).map(|i| (i * 7919) % 512).collect();
        let pos_d = up32(&positions)?;
        let slot_d = up32(&slots)?;
        let kc = DevBuf::<u16>::zeros(&st, 512 * nkv * hd)?;
        let vc = DevBuf::<u16>::zeros(&st, 512 * nkv * hd)?;
        k.qkv_rope_cache(
            &st,
            QkvArgs {
                qkv: qkv_d.ptr,
                qkv_stride: w,
                bias: if bias { bias_d.ptr } else { 0 },
                q_norm: if norm { qn_d.ptr } else { 0 },
                k_norm: if norm { kn_d.ptr } else { 0 },
                eps: 1e-6,
                positions: pos_d.ptr,
                inv_freq: inv_d.ptr,
                slots: slot_d.ptr,
                k_cache: kc.ptr,
                v_cache: vc.ptr,
                n_heads: nh,
                n_kv_heads: nkv,
                head_dim: hd,
                tokens: t,
            },
        )?;
        let (got_q, got_k, got_v) = (down16(&qkv_d)?, down16(&kc)?, down16(&vc)?);
        let (mut eq, mut wq, mut ek, mut wk) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let p = QkvRopeParams {
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: hd,
            bias: bias.then_some(bias_h.as_slice()),
            qk_norm: norm.then_some((qn.as_slice(), kn.as_slice())),
            eps: 1e-6,
            inv_freq: &inv_freq,
        };
        for r in 0..t {
            let (q, kk, v) = qkv_rope_row(&qkv_h[r * w..(r + 1) * w], positions[r] as usize, p);
            eq.extend_from_slice(&got_q[r * w..r * w + nh * hd]);
            wq.extend(q);
            let s = slots[r] as usize * nkv * hd;
            ek.extend_from_slice(&got_k[s..s + nkv * hd]);
            ek.extend_from_slice(&got_v[s..s + nkv * hd]);
            wk.extend(kk);
            wk.extend(v);
        }
        out.push(CheckResult {
            name: format!("qkv_rope_cache q heads={nh}/{nkv} hd={hd} bias={bias} qk_norm={norm}"),
            rel_err: rel_err(&eq, &wq),
            tolerance: 1e-2,
        });
        out.push(CheckResult {
            name: format!("qkv_rope_cache k/v into cache heads={nh}/{nkv} hd={hd}"),
            rel_err: rel_err(&ek, &wk),
            tolerance: 1e-2,
        });
        // reshape_and_cache: k and v columns of the same rows into fresh caches.
        let kc2 = DevBuf::<u16>::zeros(&st, 512 * nkv * hd)?;
        let vc2 = DevBuf::<u16>::zeros(&st, 512 * nkv * hd)?;
        k.reshape_and_cache(
            &st,
            qkv_d.at(nh * hd),
            qkv_d.at((nh + nkv) * hd),
            w,
            slot_d.ptr,
            kc2.ptr,
            vc2.ptr,
            nkv * hd,
            t,
        )?;
        let (g2k, g2v) = (down16(&kc2)?, down16(&vc2)?);
        let (mut g, mut wnt) = (Vec::new(), Vec::new());
        for r in 0..t {
            let s = slots[r] as usize * nkv * hd;
            g.extend_from_slice(&g2k[s..s + nkv * hd]);
            g.extend_from_slice(&g2v[s..s + nkv * hd]);
            wnt.extend_from_slice(&got_q[r * w + nh * hd..(r + 1) * w]);
        }
        // Rows that share a slot (slot collisions) keep the last writer: compare only unique slots.
        let unique = {
            let mut seen = std::collections::HashSet::new();
            slots.iter().all(|s| seen.insert(*s))
        };
        out.push(CheckResult {
            name: format!("reshape_and_cache row={} unique_slots={unique}", nkv * hd),
            rel_err: if unique { rel_err(&g, &wnt) } else { 0.0 },
            tolerance: 0.0,
        });
    }

    // RMSNorm and SiLU-gate.
    let (t, h, inter) = (19, 2048, 1536);
    let x = rnd(t * h, 3.0);
    let wv = rnd(h, 1.0);
    let xd = up16(&x)?;
    let wd = up16(&wv)?;
    let od = DevBuf::<u16>::zeros(&st, t * h)?;
    k.rms_norm(&st, od.ptr, xd.ptr, wd.ptr, t, h, 1e-5)?;
    let want: Vec<f32> = x
        .chunks_exact(h)
        .flat_map(|r| reference::rms_norm_row(r, &wv, 1e-5))
        .collect();
    out.push(CheckResult {
        name: format!("rms_norm rows={t} h={h}"),
        rel_err: rel_err(&down16(&od)?, &want),
        tolerance: 1e-2,
    });
    let gu = rnd(t * 2 * inter, 4.0);
    let gud = up16(&gu)?;
    let ad = DevBuf::<u16>::zeros(&st, t * inter)?;
    k.silu_mul(&st, ad.ptr, gud.ptr, t, inter)?;
    let want: Vec<f32> = gu
        .chunks_exact(2 * inter)
        .flat_map(|r| reference::silu_mul_row(r, inter))
        .collect();
    out.push(CheckResult {
        name: format!("silu_mul rows={t} inter={inter}"),
        rel_err: rel_err(&down16(&ad)?, &want),
        tolerance: 1e-2,
    });
    Ok(out)
}
