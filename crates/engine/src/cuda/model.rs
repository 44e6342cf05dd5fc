//! The CUDA model path (feature `cuda`): bf16 weights and KV cache on one GPU,
//! cuBLAS (bf16 in, f32 accumulate) for every projection, our kernels from
//! `kernels/reprise.cu` for attention over the paged cache and the fused
//! elementwise steps. Implements [`Model`], so the scheduler and worker loop
//! drive it unchanged.
//!
//! Sharing: one [`CudaModel`] (the weights) per GPU is shared by every worker on
//! that GPU; each worker's [`CudaKv`] holds that worker's own stream,
//! cuBLAS handle, KV pool and scratch buffers, so workers never wait on each
//! other's host code and their kernels interleave on the device.

use super::device::{drv_err, to_bf16, DevBuf};
use super::kernels::{self, Kernels};
use super::plan::StepPlan;
use crate::cpu::transformer::{HostLayer, HostWeights, Transformer};
use crate::model::KvStorage;
use crate::model::{Logits, ModelConfig, ModelError, SeqInput};
use cudarc::cublas::{result as blas_result, sys as blas_sys, CudaBlas};
use cudarc::driver::{result as drv, CudaContext, CudaStream};
use std::sync::Arc;

/// Context positions per decode split; longer contexts are split (flash-decoding)
/// so a batch-1 decode still fills the GPU.
pub const DECODE_PARTITION: usize = 512;

struct Layer {
    attn_norm: DevBuf<u16>,
    wqkv: DevBuf<u16>,
    bqkv: Option<DevBuf<u16>>,
    q_norm: Option<DevBuf<u16>>,
    k_norm: Option<DevBuf<u16>>,
    wo: DevBuf<u16>,
    mlp_norm: DevBuf<u16>,
    wgu: DevBuf<u16>,
    wdown: DevBuf<u16>,
}

/// A Llama / Qwen2 / Qwen3 decoder with bf16 weights on one GPU.
pub struct CudaModel {
    cfg: ModelConfig,
    ordinal: usize,
    ctx: Arc<CudaContext>,
    kernels: Kernels,
    embed: DevBuf<u16>,
    layers: Vec<Layer>,
    final_norm: DevBuf<u16>,
    lm_head: Option<DevBuf<u16>>,
    inv_freq: DevBuf<f32>,
    weight_bytes: usize,
}

impl CudaModel {
    /// Uploads a model built on the host (f32, fused layout) to `ctx` as bf16.
    /// Uploads the CPU model's weights to the GPU of `ctx`, converting them to bf16
    /// a layer at a time.
    pub fn from_host(t: Transformer, ctx: Arc<CudaContext>) -> Result<Self, ModelError> {
        let HostWeights {
            cfg,
            embed,
            layers,
            final_norm,
            lm_head,
            inv_freq,
        } = t.into_host_weights()?;
        Self::upload(cfg, ctx, embed, layers, final_norm, lm_head, inv_freq)
    }

    fn upload(
        cfg: ModelConfig,
        ctx: Arc<CudaContext>,
        embed: Vec<f32>,
        layers: impl Iterator<Item = HostLayer>,
        final_norm: Vec<f32>,
        lm_head: Option<Vec<f32>>,
        inv_freq: Vec<f32>,
    ) -> Result<Self, ModelError> {
        if !matches!(cfg.head_dim, 64 | 128) {
            return Err(ModelError::Config(format!(
                "head_dim {} is not supported by the CUDA kernels (64 or 128)",
                cfg.head_dim
            )));
        }
        if cfg.rotary_dim != cfg.head_dim {
            return Err(ModelError::Config(format!(
                "partial rotary ({} of {} dimensions) is not in the CUDA kernels yet; serve this model on cpu",
                cfg.rotary_dim, cfg.head_dim
            )));
        }
        if let Some(w) = cfg
            .sliding_window
            .filter(|&w| w < cfg.max_position_embeddings)
        {
            return Err(ModelError::Config(format!(
                "sliding-window attention (window {w}) is not in the CUDA kernels yet; serve this model on cpu"
            )));
        }
        let group = cfg.num_heads / cfg.num_kv_heads.max(1);
        if group > kernels::MAX_GROUP {
            return Err(ModelError::Config(format!(
                "{group} query heads per kv head; the CUDA decode kernel handles at most {}",
                kernels::MAX_GROUP
            )));
        }
        let kernels = Kernels::load(&ctx)?;
        let stream = ctx.default_stream();
        let mut bytes = 0usize;
        let mut up = |x: &[f32]| -> Result<DevBuf<u16>, ModelError> {
            bytes += x.len() * 2;
            DevBuf::from_host(&stream, &to_bf16(x))
        };
        let embed_d = up(&embed)?;
        drop(embed);
        let mut dl = Vec::with_capacity(cfg.num_layers);
        for l in layers {
            dl.push(Layer {
                attn_norm: up(&l.attn_norm)?,
                wqkv: up(&l.wqkv)?,
                bqkv: l.bqkv.as_deref().map(&mut up).transpose()?,
                q_norm: l.q_norm.as_deref().map(&mut up).transpose()?,
                k_norm: l.k_norm.as_deref().map(&mut up).transpose()?,
                wo: up(&l.wo)?,
                mlp_norm: up(&l.mlp_norm)?,
                wgu: up(&l.wgu)?,
                wdown: up(&l.wdown)?,
            });
        }
        let final_norm = up(&final_norm)?;
        let lm_head = lm_head.as_deref().map(&mut up).transpose()?;
        let inv_freq = DevBuf::from_host(&stream, &inv_freq)?;
        stream.synchronize().map_err(drv_err("upload"))?;
        Ok(Self {
            ordinal: ctx.ordinal(),
            cfg,
            ctx,
            kernels,
            embed: embed_d,
            layers: dl,
            final_norm,
            lm_head,
            inv_freq,
            weight_bytes: bytes,
        })
    }

    /// Bytes of weights on the device.
    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }

    /// The device's (free, total) memory in bytes, as the driver reports it now.
    pub fn mem_info(&self) -> Result<(usize, usize), ModelError> {
        self.ctx.bind_to_thread().map_err(drv_err("bind context"))?;
        drv::mem_get_info().map_err(drv_err("cuMemGetInfo"))
    }

    /// The device's ordinal.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// The CUDA context (kernel self-tests use it).
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }
}

/// Scratch buffers sized for `tokens` rows and `seqs` sequences; regrown on demand.
struct Workspace {
    tokens: usize,
    seqs: usize,
    splits: usize,
    x: DevBuf<u16>,
    xn: DevBuf<u16>,
    qkv: DevBuf<u16>,
    attn: DevBuf<u16>,
    gu: DevBuf<u16>,
    act: DevBuf<u16>,
    last: DevBuf<u16>,
    lastn: DevBuf<u16>,
    logits: DevBuf<f32>,
    part_out: DevBuf<f32>,
    part_ml: DevBuf<f32>,
    ints: DevBuf<i32>,
}

/// One worker's device state: its stream and cuBLAS handle, K and V of every
/// layer in `[block][slot][kv_head][head_dim]` bf16, and scratch.
pub struct CudaKv {
    num_blocks: usize,
    block_size: usize,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    k: Vec<DevBuf<u16>>,
    v: Vec<DevBuf<u16>>,
    ws: Option<Workspace>,
}

impl CudaKv {
    fn new(m: &CudaModel, num_blocks: usize, block_size: usize) -> Result<Self, ModelError> {
        m.ctx.bind_to_thread().map_err(drv_err("bind context"))?;
        let stream = m.ctx.new_stream().map_err(drv_err("cuStreamCreate"))?;
        let blas = CudaBlas::new(stream.clone())
            .map_err(|e| ModelError::Device(format!("cublasCreate: {e}")))?;
        let c = &m.cfg;
        let per_layer = num_blocks * block_size * c.num_kv_heads * c.head_dim;
        let mut k = Vec::with_capacity(c.num_layers);
        let mut v = Vec::with_capacity(c.num_layers);
        for _ in 0..c.num_layers {
            k.push(DevBuf::zeros(&stream, per_layer)?);
            v.push(DevBuf::zeros(&stream, per_layer)?);
        }
        stream
            .synchronize()
            .map_err(drv_err("KV pool allocation"))?;
        Ok(Self {
            num_blocks,
            block_size,
            stream,
            blas,
            k,
            v,
            ws: None,
        })
    }

    /// Grows the workspace to hold `tokens` rows, `seqs` sequences and `splits` decode splits.
    fn ensure(
        &mut self,
        c: &ModelConfig,
        tokens: usize,
        seqs: usize,
        splits: usize,
        ints: usize,
    ) -> Result<(), ModelError> {
        if let Some(w) = &self.ws {
            if w.tokens >= tokens && w.seqs >= seqs && w.splits >= splits && w.ints.len >= ints {
                return Ok(());
            }
        }
        // Grow geometrically so a slowly rising batch does not reallocate every step.
        let old = self.ws.take();
        let grow = |want: usize, had: usize| if want > had { want.max(had * 2) } else { had };
        let (t0, s0, p0, i0) = old
            .as_ref()
            .map(|w| (w.tokens, w.seqs, w.splits, w.ints.len))
            .unwrap_or((0, 0, 0, 0));
        let (t, s, p, i) = (
            grow(tokens, t0),
            grow(seqs, s0),
            grow(splits, p0),
            grow(ints, i0),
        );
        drop(old);
        let (h, hd, nh, nkv, inter) = (
            c.hidden_size,
            c.head_dim,
            c.num_heads,
            c.num_kv_heads,
            c.intermediate_size,
        );
        let st = &self.stream;
        self.ws = Some(Workspace {
            tokens: t,
            seqs: s,
            splits: p,
            x: DevBuf::zeros(st, t * h)?,
            xn: DevBuf::zeros(st, t * h)?,
            qkv: DevBuf::zeros(st, t * (nh + 2 * nkv) * hd)?,
            attn: DevBuf::zeros(st, t * nh * hd)?,
            gu: DevBuf::zeros(st, t * 2 * inter)?,
            act: DevBuf::zeros(st, t * inter)?,
            last: DevBuf::zeros(st, s * h)?,
            lastn: DevBuf::zeros(st, s * h)?,
            logits: DevBuf::zeros(st, s * c.vocab_size)?,
            part_out: DevBuf::zeros(st, s * nh * p * hd)?,
            part_ml: DevBuf::zeros(st, s * nh * p * 2)?,
            ints: DevBuf::zeros(st, i)?,
        });
        Ok(())
    }
}

/// Bytes a worker's scratch takes at `tokens` batched tokens and `seqs` sequences
/// (for sizing the KV pool from what is left).
pub fn workspace_bytes(c: &ModelConfig, tokens: usize, seqs: usize) -> usize {
    let (h, hd, nh, nkv, inter) = (
        c.hidden_size,
        c.head_dim,
        c.num_heads,
        c.num_kv_heads,
        c.intermediate_size,
    );
    let splits = c.max_position_embeddings.div_ceil(DECODE_PARTITION).max(1);
    2 * tokens * (2 * h + (nh + 2 * nkv) * hd + nh * hd + 3 * inter)
        + seqs * (4 * h + 4 * c.vocab_size)
        + 4 * seqs * nh * splits * (hd + 2)
        // cuBLAS workspace and stream bookkeeping.
        + (64 << 20)
}

/// C = A . W^T on row-major bf16 matrices through cuBLAS (column-major): computes
/// `y[t][o] = beta * y[t][o] + sum_i x[t][i] w[o][i]` for `t < rows`, f32 accumulate.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm(
    blas: &CudaBlas,
    rows: usize,
    out: usize,
    inp: usize,
    x: u64,
    w: u64,
    y: u64,
    beta: f32,
    y_f32: bool,
) -> Result<(), ModelError> {
    let alpha = 1.0f32;
    let ctype = if y_f32 {
        blas_sys::cudaDataType::CUDA_R_32F
    } else {
        blas_sys::cudaDataType::CUDA_R_16BF
    };
    blas_result::gemm_ex(
        *blas.handle(),
        blas_sys::cublasOperation_t::CUBLAS_OP_T,
        blas_sys::cublasOperation_t::CUBLAS_OP_N,
        out as i32,
        rows as i32,
        inp as i32,
        &alpha as *const f32 as *const _,
        w as *const _,
        blas_sys::cudaDataType::CUDA_R_16BF,
        inp as i32,
        x as *const _,
        blas_sys::cudaDataType::CUDA_R_16BF,
        inp as i32,
        &beta as *const f32 as *const _,
        y as *mut _,
        ctype,
        out as i32,
        blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
        blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
    )
    .map_err(|e| ModelError::Device(format!("cublasGemmEx: {e}")))
}

impl KvStorage for CudaKv {
    fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    fn block_size(&self) -> usize {
        self.block_size
    }
}

impl crate::model::Model for CudaModel {
    type Kv = CudaKv;

    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn forward(&self, batch: &[SeqInput], kv: &mut CudaKv) -> Result<Logits, ModelError> {
        if batch.is_empty() {
            return Logits::new(Vec::new(), self.cfg.vocab_size);
        }
        crate::model::check_batch(&self.cfg, batch, kv.num_blocks, kv.block_size)?;
        let bs = kv.block_size;
        self.ctx.bind_to_thread().map_err(drv_err("bind context"))?;
        let c = &self.cfg;
        let (h, hd, nh, nkv, inter) = (
            c.hidden_size,
            c.head_dim,
            c.num_heads,
            c.num_kv_heads,
            c.intermediate_size,
        );
        let qkv_w = (nh + 2 * nkv) * hd;
        let plan = StepPlan::new(batch, bs)?;
        let t = plan.ids.len();
        let b = batch.len();
        let splits = super::reference::decode_num_splits(plan.dec_max_ctx, DECODE_PARTITION);
        let (ints, offs) = plan.pack();
        kv.ensure(c, t, b, splits, ints.len())?;
        let CudaKv {
            stream,
            blas,
            k: kc,
            v: vc,
            ws,
            ..
        } = kv;
        let Some(ws) = ws.as_ref() else {
            return Err(ModelError::Device(
                "workspace missing after allocation".into(),
            ));
        };
        // SAFETY: ints.len() <= ws.ints.len (ensured above); the copy is ordered on our stream
        // before every kernel that reads it.
        unsafe { drv::memcpy_htod_async(ws.ints.ptr, &ints, stream.cu_stream()) }
            .map_err(drv_err("upload step"))?;
        let ip = |k: usize| ws.ints.at(offs[k]);
        let k = &self.kernels;
        let st: &CudaStream = stream;
        k.embed_rows(st, ws.x.ptr, self.embed.ptr, ip(0), t, h)?;
        let scale = 1.0 / (hd as f32).sqrt();
        for (li, l) in self.layers.iter().enumerate() {
            k.rms_norm(
                st,
                ws.xn.ptr,
                ws.x.ptr,
                l.attn_norm.ptr,
                t,
                h,
                c.rms_norm_eps,
            )?;
            // SAFETY (all gemm calls): every buffer holds at least rows x cols elements.
            unsafe {
                gemm(
                    blas, t, qkv_w, h, ws.xn.ptr, l.wqkv.ptr, ws.qkv.ptr, 0.0, false,
                )?
            };
            k.qkv_rope_cache(
                st,
                kernels::QkvArgs {
                    qkv: ws.qkv.ptr,
                    qkv_stride: qkv_w,
                    bias: l.bqkv.as_ref().map_or(0, |b| b.ptr),
                    q_norm: l.q_norm.as_ref().map_or(0, |b| b.ptr),
                    k_norm: l.k_norm.as_ref().map_or(0, |b| b.ptr),
                    eps: c.rms_norm_eps,
                    positions: ip(1),
                    inv_freq: self.inv_freq.ptr,
                    slots: ip(2),
                    k_cache: kc[li].ptr,
                    v_cache: vc[li].ptr,
                    n_heads: nh,
                    n_kv_heads: nkv,
                    head_dim: hd,
                    tokens: t,
                },
            )?;
            if !plan.dec_rows.is_empty() {
                k.paged_decode(
                    st,
                    kernels::DecodeArgs {
                        part_out: ws.part_out.ptr,
                        part_ml: ws.part_ml.ptr,
                        out: ws.attn.ptr,
                        out_stride: nh * hd,
                        q: ws.qkv.ptr,
                        q_stride: qkv_w,
                        k_cache: kc[li].ptr,
                        v_cache: vc[li].ptr,
                        block_tables: ip(6),
                        bt_stride: plan.dec_bt_stride,
                        rows: ip(4),
                        ctx_lens: ip(5),
                        n_seqs: plan.dec_rows.len(),
                        n_heads: nh,
                        n_kv_heads: nkv,
                        head_dim: hd,
                        block_size: bs,
                        scale,
                        partition: DECODE_PARTITION,
                        n_splits: splits,
                    },
                )?;
            }
            if !plan.pf_row.is_empty() {
                k.paged_prefill(
                    st,
                    kernels::PrefillArgs {
                        out: ws.attn.ptr,
                        out_stride: nh * hd,
                        q: ws.qkv.ptr,
                        q_stride: qkv_w,
                        k_cache: kc[li].ptr,
                        v_cache: vc[li].ptr,
                        block_tables: ip(10),
                        bt_stride: plan.pf_bt_stride,
                        q_row: ip(7),
                        start: ip(8),
                        n_new: ip(9),
                        n_seqs: plan.pf_row.len(),
                        max_new: plan.pf_max_new,
                        n_heads: nh,
                        n_kv_heads: nkv,
                        head_dim: hd,
                        block_size: bs,
                        scale,
                    },
                )?;
            }
            // Residual adds ride on cuBLAS's beta = 1.
            unsafe {
                gemm(
                    blas,
                    t,
                    h,
                    nh * hd,
                    ws.attn.ptr,
                    l.wo.ptr,
                    ws.x.ptr,
                    1.0,
                    false,
                )?
            };
            k.rms_norm(
                st,
                ws.xn.ptr,
                ws.x.ptr,
                l.mlp_norm.ptr,
                t,
                h,
                c.rms_norm_eps,
            )?;
            unsafe {
                gemm(
                    blas,
                    t,
                    2 * inter,
                    h,
                    ws.xn.ptr,
                    l.wgu.ptr,
                    ws.gu.ptr,
                    0.0,
                    false,
                )?
            };
            k.silu_mul(st, ws.act.ptr, ws.gu.ptr, t, inter)?;
            unsafe {
                gemm(
                    blas,
                    t,
                    h,
                    inter,
                    ws.act.ptr,
                    l.wdown.ptr,
                    ws.x.ptr,
                    1.0,
                    false,
                )?
            };
        }
        // Only each sequence's last token goes through the vocabulary projection.
        k.gather_rows(st, ws.last.ptr, ws.x.ptr, ip(3), b, h)?;
        k.rms_norm(
            st,
            ws.lastn.ptr,
            ws.last.ptr,
            self.final_norm.ptr,
            b,
            h,
            c.rms_norm_eps,
        )?;
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        unsafe {
            gemm(
                blas,
                b,
                c.vocab_size,
                h,
                ws.lastn.ptr,
                head.ptr,
                ws.logits.ptr,
                0.0,
                true,
            )?
        };
        let mut logits = vec![0.0f32; b * c.vocab_size];
        // SAFETY: logits holds b * vocab floats on the device; the stream is synchronised next.
        unsafe { drv::memcpy_dtoh_async(&mut logits, ws.logits.ptr, stream.cu_stream()) }
            .map_err(drv_err("download logits"))?;
        stream.synchronize().map_err(drv_err("forward"))?;
        Logits::new(logits, c.vocab_size)
    }

    fn new_kv_cache(&self, num_blocks: usize, block_size: usize) -> Result<CudaKv, ModelError> {
        CudaKv::new(self, num_blocks, block_size)
    }

    fn kv_block_bytes(&self, block_size: usize) -> usize {
        let c = &self.cfg;
        2 * c.num_layers * block_size * c.num_kv_heads * c.head_dim * 2
    }

    fn device_memory(&self) -> Option<crate::model::DeviceMemory> {
        let (free, total) = self.mem_info().ok()?;
        Some(crate::model::DeviceMemory {
            device: format!("cuda:{}", self.ordinal),
            free: free as u64,
            total: total as u64,
        })
    }

    fn workspace_bytes(&self, max_batched_tokens: usize, max_seqs: usize) -> u64 {
        workspace_bytes(&self.cfg, max_batched_tokens, max_seqs) as u64
    }
}
