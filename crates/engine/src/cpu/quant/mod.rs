//! Weights kept in their GGUF block formats, and the linear layer computed on them.
//!
//! A [`QMatrix`] holds a `[rows, cols]` weight as the file stores it: rows of blocks
//! (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K … Q6_K), or F16 / BF16 / F32 values. Nothing
//! is dequantized ahead of time, so a Q4_1 model takes its file's size in memory.
//!
//! **Exactness.** Every kernel multiplies f32 activations by weights dequantized
//! exactly as the reference does (ggml's and candle's `to_float`, bit for bit: no fused
//! multiply-add in the dequantization), so the only difference from
//! dequantize-then-GEMM is the order of the f32 sums — the same freedom any GEMM
//! has. That keeps the transformers goldens, which were computed in f32 on the
//! dequantized weights, exact (greedy tokens identical, logits within 1e-3).
//!
//! **Layout.** Q4_0, Q4_1 and Q8_0 rows are repacked at load, byte for byte the same
//! size, into a planar layout: the row's f16 scales (and Q4_1's minimums) first, then
//! its packed values, so a kernel converts 16 scales with one instruction instead of
//! one at a time. Other formats keep the file's block layout.
//!
//! **Kernels** (`kernels.rs`, written once over the ISA seam `crate::simd`, so AVX-512,
//! AVX2 and the portable build run the same code). Decode-sized products stream the
//! weight once. Up to [`FUSED_MAX_M`] activation rows, Q4_0 / Q4_1 / Q8_0 and the
//! K-quants Q4_K / Q5_K / Q6_K are unpacked in registers and reduced as
//! `d·Σq·x − m·Σx` per group (the block sums `Σx` computed once per call): the same
//! products summed in another order. Otherwise (up to [`SMALL_M`] rows, or other
//! formats) four weight rows at a time, a chunk of [`KC`] columns is dequantized into
//! an L1 tile and multiplied into all the activation rows with the f32 register
//! tiles. Prefill-sized products dequantize a panel of [`PANEL`] weight rows at a time
//! into a per-thread buffer and run the f32 GEMM on it, so prefill keeps GEMM speed
//! without f32 copies of the weights. Q2_K, Q3_K, Q5_0 and Q5_1 dequantize through
//! candle's reference (no fused kernel).

mod format;
pub mod kernels;

pub use format::QType;
pub use kernels::FUSED_MAX_M;

use super::ops;
use crate::simd::{isa, tile_on, Isa};
use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
    BlockQ8_0, GgmlType,
};
use rayon::prelude::*;
use std::cell::RefCell;

/// Activation rows up to which a product streams the weight (decode batches).
pub const SMALL_M: usize = 32;
/// Columns unpacked per tile in the streaming kernel (a multiple of every block size;
/// 4 rows × 1024 f32 = 16 KiB stays in L1).
pub const KC: usize = 1024;
/// Weight rows dequantized per GEMM panel in the prefill kernel.
pub const PANEL: usize = 128;
/// Output rows per parallel task of the streaming kernel.
const ROWS_PER_TASK: usize = 32;

/// One row of GGUF blocks of a planar format → its planar layout (same bytes):
/// every block's first scale, then every block's second (Q4_1's minimum), then the
/// values.
fn to_planar(q: QType, row: &[u8], out: &mut Vec<u8>) {
    let Some((ns, vb)) = q.planar() else {
        out.extend_from_slice(row);
        return;
    };
    let bb = q.block_bytes();
    for s in 0..ns {
        for blk in row.chunks_exact(bb) {
            out.extend_from_slice(&blk[2 * s..2 * s + 2]);
        }
    }
    for blk in row.chunks_exact(bb) {
        out.extend_from_slice(&blk[2 * ns..2 * ns + vb]);
    }
}

/// Block bytes, 2-aligned (every block field is a byte or an f16), or f32 values.
#[derive(Clone, Debug)]
enum Storage {
    F32(Vec<f32>),
    Blocks(Vec<u16>, usize),
}

/// A `[rows, cols]` weight in its storage format.
#[derive(Clone, Debug)]
pub struct QMatrix {
    qtype: QType,
    rows: usize,
    cols: usize,
    store: Storage,
}

/// Why raw weight bytes were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuantError {
    /// A row is not a whole number of blocks.
    #[error("{cols} columns are not a multiple of {qtype:?}'s block of {block}")]
    PartialBlock {
        /// The format.
        qtype: QType,
        /// Columns.
        cols: usize,
        /// Block size.
        block: usize,
    },
    /// The byte count does not match the shape.
    #[error("{got} bytes for a [{rows}, {cols}] {qtype:?} matrix, expected {want}")]
    Size {
        /// The format.
        qtype: QType,
        /// Rows.
        rows: usize,
        /// Columns.
        cols: usize,
        /// Bytes given.
        got: usize,
        /// Bytes needed.
        want: usize,
    },
}

impl QMatrix {
    /// An f32 matrix.
    pub fn f32(rows: usize, cols: usize, data: Vec<f32>) -> Self {
        assert_eq!(data.len(), rows * cols, "f32 matrix size");
        Self {
            qtype: QType::F32,
            rows,
            cols,
            store: Storage::F32(data),
        }
    }

    /// A matrix from the file's bytes of format `qtype` (rows of whole blocks).
    pub fn from_raw(
        qtype: QType,
        rows: usize,
        cols: usize,
        raw: &[u8],
    ) -> Result<Self, QuantError> {
        let block = qtype.block_elems();
        if !cols.is_multiple_of(block) {
            return Err(QuantError::PartialBlock { qtype, cols, block });
        }
        let want = rows * cols / block * qtype.block_bytes();
        if raw.len() != want {
            return Err(QuantError::Size {
                qtype,
                rows,
                cols,
                got: raw.len(),
                want,
            });
        }
        if qtype == QType::F32 {
            let data = raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            return Ok(Self::f32(rows, cols, data));
        }
        let row_bytes = cols / block * qtype.block_bytes();
        let mut laid = Vec::with_capacity(raw.len());
        for row in raw.chunks_exact(row_bytes.max(1)) {
            to_planar(qtype, row, &mut laid);
        }
        Ok(Self::from_rows(qtype, rows, cols, &laid))
    }

    /// A matrix from rows already in this crate's layout (planar where it applies).
    fn from_rows(qtype: QType, rows: usize, cols: usize, laid: &[u8]) -> Self {
        let mut words = vec![0u16; laid.len().div_ceil(2)];
        for (w, b) in words.iter_mut().zip(laid.chunks(2)) {
            *w = u16::from_le_bytes([b[0], *b.get(1).unwrap_or(&0)]);
        }
        Self {
            qtype,
            rows,
            cols,
            store: Storage::Blocks(words, laid.len()),
        }
    }

    /// The storage format.
    pub fn qtype(&self) -> QType {
        self.qtype
    }

    /// Rows (output features).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (input features).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes one row takes.
    pub fn row_bytes(&self) -> usize {
        self.cols / self.qtype.block_elems() * self.qtype.block_bytes()
    }

    /// Bytes the matrix takes in memory.
    pub fn nbytes(&self) -> usize {
        self.rows * self.row_bytes()
    }

    /// The f32 values, for an f32 matrix.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.store {
            Storage::F32(v) => Some(v),
            Storage::Blocks(..) => None,
        }
    }

    fn raw(&self) -> &[u8] {
        match &self.store {
            // SAFETY: a u16 buffer viewed as its first `len` bytes (len ≤ 2 × words).
            Storage::Blocks(w, len) => unsafe {
                std::slice::from_raw_parts(w.as_ptr().cast::<u8>(), *len)
            },
            Storage::F32(_) => &[],
        }
    }

    /// Row `r`'s bytes (block formats).
    fn row_raw(&self, r: usize) -> &[u8] {
        let rb = self.row_bytes();
        &self.raw()[r * rb..(r + 1) * rb]
    }

    /// Columns `c0..c0 + out.len()` of row `r`, dequantized (`c0` and the length are
    /// multiples of the block size, or reach the row's end).
    pub fn dequant_row_chunk(&self, r: usize, c0: usize, out: &mut [f32]) {
        self.dequant_row_chunk_on(isa(), r, c0, out)
    }

    /// [`Self::dequant_row_chunk`] with the kernels of instruction set `on`.
    pub fn dequant_row_chunk_on(&self, on: Isa, r: usize, c0: usize, out: &mut [f32]) {
        match &self.store {
            Storage::F32(v) => {
                let s = r * self.cols + c0;
                out.copy_from_slice(&v[s..s + out.len()]);
            }
            Storage::Blocks(..) if kernels::has_dequant(self.qtype) => {
                let be = self.qtype.block_elems();
                let (nb, b0) = (self.cols / be, c0 / be);
                let row = self.row_raw(r).as_ptr();
                let q = self.qtype;
                // SAFETY: `on` is an ISA the CPU has (callers take it from `isa()` or
                // `Isa::available()`); the row holds `nb` blocks and `out` lies in it.
                unsafe { kernels::dequant_on(on, q, row, nb, b0, out) };
            }
            Storage::Blocks(..) => {
                let (be, bb) = (self.qtype.block_elems(), self.qtype.block_bytes());
                let raw = &self.row_raw(r)[c0 / be * bb..(c0 + out.len()).div_ceil(be) * bb];
                dequant_reference(self.qtype, raw, out);
            }
        }
    }

    /// Rows `r0..r0 + out.len() / cols`, dequantized.
    pub fn dequant_rows(&self, r0: usize, out: &mut [f32]) {
        for (i, row) in out.chunks_exact_mut(self.cols).enumerate() {
            self.dequant_row_chunk(r0 + i, 0, row);
        }
    }

    /// Every value as f32 (row-major).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.rows * self.cols];
        self.dequant_rows(0, &mut out);
        out
    }

    /// The rows in the order `order` gives (`order[i]` = source row of row `i`).
    pub fn reorder_rows(&self, order: &[usize]) -> Self {
        assert_eq!(order.len(), self.rows);
        match &self.store {
            Storage::F32(v) => {
                let c = self.cols;
                let mut out = Vec::with_capacity(v.len());
                for &r in order {
                    out.extend_from_slice(&v[r * c..(r + 1) * c]);
                }
                Self::f32(self.rows, c, out)
            }
            Storage::Blocks(..) => {
                let mut laid = Vec::with_capacity(self.nbytes());
                for &r in order {
                    laid.extend_from_slice(self.row_raw(r));
                }
                Self::from_rows(self.qtype, self.rows, self.cols, &laid)
            }
        }
    }

    /// The rows of `parts` one after the other, when they share a format and width.
    pub fn concat_rows(parts: &[&QMatrix]) -> Option<Self> {
        let first = parts.first()?;
        if parts
            .iter()
            .any(|p| p.qtype != first.qtype || p.cols != first.cols)
        {
            return None;
        }
        let rows = parts.iter().map(|p| p.rows).sum();
        Some(match &first.store {
            Storage::F32(_) => {
                let mut v = Vec::with_capacity(rows * first.cols);
                for p in parts {
                    v.extend_from_slice(p.as_f32()?);
                }
                Self::f32(rows, first.cols, v)
            }
            Storage::Blocks(..) => {
                let mut laid = Vec::with_capacity(rows * first.row_bytes());
                for p in parts {
                    laid.extend_from_slice(p.raw());
                }
                Self::from_rows(first.qtype, rows, first.cols, &laid)
            }
        })
    }
}

/// `T`'s blocks over `raw` (every block type is 2-aligned and stored 2-aligned).
fn blocks<T>(raw: &[u8]) -> &[T] {
    debug_assert_eq!(raw.as_ptr() as usize % std::mem::align_of::<T>(), 0);
    debug_assert_eq!(raw.len() % std::mem::size_of::<T>(), 0);
    // SAFETY: `T` is a `repr(C)` block of bytes and f16s (align ≤ 2), the storage is
    // a u16 buffer and every row starts at an even offset, so `raw` is aligned; the
    // length is a whole number of blocks.
    unsafe {
        std::slice::from_raw_parts(
            raw.as_ptr().cast::<T>(),
            raw.len() / std::mem::size_of::<T>(),
        )
    }
}

/// The reference dequantizer (candle's `to_float`, which follows ggml's).
pub fn dequant_reference(q: QType, raw: &[u8], out: &mut [f32]) {
    match q {
        QType::F32 => {
            for (o, b) in out.iter_mut().zip(raw.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        QType::F16 => {
            for (o, b) in out.iter_mut().zip(raw.chunks_exact(2)) {
                *o = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        QType::BF16 => {
            for (o, b) in out.iter_mut().zip(raw.chunks_exact(2)) {
                *o = half::bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        QType::Q4_0 => BlockQ4_0::to_float(blocks(raw), out),
        QType::Q4_1 => BlockQ4_1::to_float(blocks(raw), out),
        QType::Q5_0 => BlockQ5_0::to_float(blocks(raw), out),
        QType::Q5_1 => BlockQ5_1::to_float(blocks(raw), out),
        QType::Q8_0 => BlockQ8_0::to_float(blocks(raw), out),
        QType::Q2K => BlockQ2K::to_float(blocks(raw), out),
        QType::Q3K => BlockQ3K::to_float(blocks(raw), out),
        QType::Q4K => BlockQ4K::to_float(blocks(raw), out),
        QType::Q5K => BlockQ5K::to_float(blocks(raw), out),
        QType::Q6K => BlockQ6K::to_float(blocks(raw), out),
    }
}

#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
// SAFETY: parallel tasks write disjoint output columns.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

thread_local! {
    /// Per-thread panel buffer of the prefill kernel (reused, never shrunk).
    static PANEL_BUF: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Per-thread tile of the streaming kernel: four rows of [`KC`] columns.
    static TILE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Parallel tasks per thread a product is split into (enough to balance, few enough
/// that a task's fixed cost stays small against its work).
const TASKS_PER_THREAD: usize = 4;

/// `out[m, n] (+)= x[m, k] · wᵀ` where the output columns are the rows of `parts`
/// one after the other (fused q/k/v or gate/up whose formats may differ).
pub fn linear(out: &mut [f32], x: &[f32], parts: &[QMatrix], m: usize, accumulate: bool) {
    linear_on(isa(), numerics(), out, x, parts, m, accumulate)
}

/// How decode-sized quantized products treat their activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Numerics {
    /// f32 activations times exactly dequantized weights (the default: the
    /// transformers goldens' greedy tokens, logits within 1e-3).
    Exact,
    /// Activations quantized to 8 bits per 32 values and integer dot products, as
    /// llama.cpp does (`--cpu-numerics fast`): fewer instructions per weight, logits
    /// off by the activations' rounding.
    Fast,
}

impl Numerics {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Numerics::Exact => "exact",
            Numerics::Fast => "fast",
        }
    }

    /// The numerics a `--cpu-numerics` value names.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "exact" => Some(Numerics::Exact),
            "fast" => Some(Numerics::Fast),
            _ => None,
        }
    }
}

static FAST: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Sets the numerics of every later quantized product of this process (the server
/// sets it once at startup, before any model runs).
pub fn set_numerics(n: Numerics) {
    FAST.store(n == Numerics::Fast, std::sync::atomic::Ordering::Relaxed);
}

/// The numerics quantized products use.
pub fn numerics() -> Numerics {
    if FAST.load(std::sync::atomic::Ordering::Relaxed) {
        Numerics::Fast
    } else {
        Numerics::Exact
    }
}

/// [`linear`] with the kernels of instruction set `on` and the given numerics.
pub fn linear_on(
    on: Isa,
    numerics: Numerics,
    out: &mut [f32],
    x: &[f32],
    parts: &[QMatrix],
    m: usize,
    accumulate: bool,
) {
    let Some(first) = parts.first() else { return };
    let k = first.cols;
    let n: usize = parts.iter().map(|p| p.rows).sum();
    assert!(
        parts.iter().all(|p| p.cols == k),
        "fused weights share their width"
    );
    assert!(x.len() >= m * k && out.len() >= m * n);
    if m == 0 {
        return;
    }
    // An f32 weight alone goes to the f32 kernels as it is.
    if let [only] = parts {
        if let Some(w) = only.as_f32() {
            return ops::linear_on(on, out, x, w, m, k, n, accumulate);
        }
    }
    let ptr = SyncPtr(out.as_mut_ptr());
    let chunk = if m <= SMALL_M {
        let per_task = n.div_ceil(rayon::current_num_threads() * TASKS_PER_THREAD);
        per_task.next_multiple_of(4).max(ROWS_PER_TASK)
    } else {
        PANEL
    };
    // Tasks: (part, first row, end row), in output-column order.
    let mut tasks = Vec::new();
    let mut col = 0;
    for (pi, p) in parts.iter().enumerate() {
        for r0 in (0..p.rows).step_by(chunk) {
            tasks.push((pi, col, r0, (r0 + chunk).min(p.rows)));
        }
        col += p.rows;
    }
    // The fused kernels' block sums of x, once per call.
    let xsum: Vec<f32> = if m <= FUSED_MAX_M && k % 32 == 0 {
        x[..m * k]
            .chunks_exact(32)
            .map(|c| c.iter().sum())
            .collect()
    } else {
        Vec::new()
    };
    // The integer path's 8-bit activations, once per call.
    // Only where it measured faster (`quant_bench --numerics exact,fast`): one row
    // (with four, the f32 kernels' shared unpacking wins), and not Q6_K (its 16-value
    // groups halve the integer product's width).
    let int = numerics == Numerics::Fast
        && m == 1
        && !xsum.is_empty()
        && parts.iter().all(|p| p.qtype != QType::Q6K);
    let (mut xq, mut xd) = (Vec::new(), Vec::new());
    if int {
        xq = vec![0i8; m * k];
        xd = vec![0f32; m * k / 32];
        kernels::quantize_q8(&x[..m * k], &mut xq, &mut xd);
    }
    let acts = ActRows {
        x,
        xsum: &xsum,
        xq: &xq,
        xd: &xd,
        int,
    };
    tasks.into_par_iter().for_each(|(pi, col, r0, r1)| {
        #[allow(clippy::redundant_locals)]
        let ptr = ptr;
        let w = &parts[pi];
        // SAFETY: this task alone writes columns col + r0..col + r1 of out[m, n].
        unsafe {
            if m <= SMALL_M {
                stream_rows(on, w, &acts, m, k, ptr.0, n, col, r0, r1, accumulate);
            } else {
                panel_rows(on, w, x, m, k, ptr.0, n, col, r0, r1, accumulate);
            }
        }
    });
}

/// A product's activation rows and what the fused kernels derive from them once.
struct ActRows<'a> {
    x: &'a [f32],
    /// 32-value block sums (empty when no fused kernel can run).
    xsum: &'a [f32],
    /// The integer path's 8-bit values and block scales (empty unless `int`).
    xq: &'a [i8],
    xd: &'a [f32],
    int: bool,
}

/// Streaming kernel: weight rows `r0..r1` of `w` into output columns `col + r0..`.
///
/// # Safety
/// `out` must be valid for `[m, n]` and no other thread may write those columns.
#[allow(clippy::too_many_arguments)]
unsafe fn stream_rows(
    on: Isa,
    w: &QMatrix,
    acts: &ActRows,
    m: usize,
    k: usize,
    out: *mut f32,
    n: usize,
    col: usize,
    r0: usize,
    r1: usize,
    accumulate: bool,
) {
    let (x, xsum) = (acts.x, acts.xsum);
    let fused = m <= FUSED_MAX_M && !xsum.is_empty() && kernels::has_fused(w.qtype);
    let nb = k / w.qtype.block_elems();
    let spread = fused && kernels::spreads_prefetch(w.qtype);
    let mut sums = [[0.0f32; 4]; SMALL_M];
    TILE.with(|cell| {
        let mut tile = cell.borrow_mut();
        if tile.len() < 4 * KC {
            tile.resize(4 * KC, 0.0);
        }
        let mut o = r0;
        while o < r1 {
            let rows = (r1 - o).min(4);
            // Missing rows of a short group repeat the last one (their results are dropped).
            let row = |r: usize| o + r.min(rows - 1);
            for s in sums.iter_mut().take(m) {
                *s = [0.0; 4];
            }
            // The next group's rows into the cache while this one computes: every row
            // starts a new stream the hardware prefetcher has not seen yet. Either the
            // fused kernel spreads it over its blocks, or it goes out here in one burst.
            let next_len = if o + 4 < r1 {
                (r1 - o - 4).min(4) * w.row_bytes()
            } else {
                0
            };
            let next = w.raw().as_ptr().wrapping_add((o + 4) * w.row_bytes());
            #[cfg(target_arch = "x86_64")]
            if !spread {
                for off in (0..next_len).step_by(64) {
                    std::arch::x86_64::_mm_prefetch(
                        next.add(off).cast(),
                        std::arch::x86_64::_MM_HINT_T0,
                    );
                }
            }
            if fused {
                let wr: [*const u8; 4] = std::array::from_fn(|r| w.row_raw(row(r)).as_ptr());
                // Rows past `m` repeat the last (their results are dropped).
                let row_at = |i: usize| i.min(m - 1);
                let a = kernels::Acts {
                    x: std::array::from_fn(|i| x.as_ptr().add(row_at(i) * k)),
                    xsum: std::array::from_fn(|i| xsum.as_ptr().add(row_at(i) * (k / 32))),
                    xq: std::array::from_fn(|i| {
                        // Dangling but never read unless the integer path runs.
                        acts.xq.as_ptr().wrapping_add(row_at(i) * k)
                    }),
                    xd: std::array::from_fn(|i| {
                        acts.xd.as_ptr().wrapping_add(row_at(i) * (k / 32))
                    }),
                    next,
                    next_len: if spread { next_len } else { 0 },
                };
                let (q, s, int) = (w.qtype, &mut sums[..m], acts.int);
                match m {
                    1 => kernels::fused1_on(on, q, wr, nb, &a, int, s, m),
                    2 => kernels::fused2_on(on, q, wr, nb, &a, int, s, m),
                    _ => kernels::fused4_on(on, q, wr, nb, &a, int, s, m),
                }
            } else {
                let mut c0 = 0;
                while c0 < k {
                    let len = (k - c0).min(KC);
                    for r in 0..rows {
                        w.dequant_row_chunk_on(on, o + r, c0, &mut tile[r * KC..r * KC + len]);
                    }
                    let wr: [*const f32; 4] =
                        std::array::from_fn(|r| tile[r.min(rows - 1) * KC..].as_ptr());
                    let (xp, s) = (x.as_ptr().add(c0), &mut sums[..m]);
                    tile_on(on, xp, k, m, wr, len, s);
                    c0 += len;
                }
            }
            for (i, s) in sums.iter().enumerate().take(m) {
                for (r, v) in s.iter().enumerate().take(rows) {
                    let p = out.add(i * n + col + o + r);
                    *p = if accumulate { *p + v } else { *v };
                }
            }
            o += rows;
        }
    });
}

/// Prefill kernel: weight rows `r0..r1` dequantized into a panel, then f32 GEMM.
///
/// # Safety
/// As [`stream_rows`].
#[allow(clippy::too_many_arguments)]
unsafe fn panel_rows(
    on: Isa,
    w: &QMatrix,
    x: &[f32],
    m: usize,
    k: usize,
    out: *mut f32,
    n: usize,
    col: usize,
    r0: usize,
    r1: usize,
    accumulate: bool,
) {
    let rows = r1 - r0;
    PANEL_BUF.with(|cell| {
        let mut buf = cell.borrow_mut();
        if buf.len() < rows * k {
            buf.resize(rows * k, 0.0);
        }
        let panel = &mut buf[..rows * k];
        match w.as_f32() {
            Some(v) => panel.copy_from_slice(&v[r0 * k..r1 * k]),
            None => {
                for (i, row) in panel.chunks_exact_mut(k).enumerate() {
                    w.dequant_row_chunk_on(on, r0 + i, 0, row);
                }
            }
        }
        // out[:, col + r0 ..] (+)= x · panelᵀ; the panel is [rows, k] row-major,
        // i.e. rhs[k, rows] with column stride k.
        ops::gemm_f32(
            m,
            rows,
            k,
            out.add(col + r0),
            1,
            n as isize,
            accumulate,
            x.as_ptr(),
            1,
            k as isize,
            panel.as_ptr(),
            k as isize,
            1,
            1.0,
            false,
        );
    });
}

#[cfg(test)]
mod tests;
