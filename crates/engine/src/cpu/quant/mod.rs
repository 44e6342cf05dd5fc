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
//! **Kernels.** Decode-sized products stream the weight once. Up to
//! [`FUSED_MAX_M`] activation rows (AVX-512), Q4_0 / Q4_1 / Q8_0 blocks are unpacked in
//! registers and reduced as `d·Σq·x + m·Σx` (the block sums `Σx` computed once per
//! call), about half the vector instructions of unpacking every weight to f32; the
//! result is the same products summed in another order. Otherwise (up to [`SMALL_M`]
//! rows, or other formats) four weight rows at a time, a chunk of [`KC`] columns is
//! unpacked into an L1 tile (AVX-512 / AVX2, chosen at run time; candle's dequantizer
//! for the other formats) and multiplied into all the activation rows with the f32
//! register-tile kernels of [`super::ops`]. Prefill-sized products dequantize a panel
//! of [`PANEL`] weight rows at a time into a per-thread buffer and run the f32 GEMM on
//! it, so prefill keeps GEMM speed without f32 copies of the weights.

use super::ops;
use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
    BlockQ8_0, GgmlType,
};
use candle_core::quantized::GgmlDType;
use rayon::prelude::*;
use std::cell::RefCell;

/// Activation rows up to which a product streams the weight (decode batches).
pub const SMALL_M: usize = 32;
/// Activation rows up to which the fused (unpack-in-registers) kernels run.
pub const FUSED_MAX_M: usize = 4;
/// Columns unpacked per tile in the streaming kernel (a multiple of every block size;
/// 4 rows × 1024 f32 = 16 KiB stays in L1).
pub const KC: usize = 1024;
/// Weight rows dequantized per GEMM panel in the prefill kernel.
pub const PANEL: usize = 128;
/// Output rows per parallel task of the streaming kernel.
const ROWS_PER_TASK: usize = 32;

/// A weight's storage format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QType {
    /// f32 values.
    F32,
    /// IEEE half values.
    F16,
    /// bfloat16 values.
    BF16,
    /// ggml Q4_0: 32 weights, f16 scale, 4-bit values − 8.
    Q4_0,
    /// ggml Q4_1: 32 weights, f16 scale and minimum, 4-bit values.
    Q4_1,
    /// ggml Q5_0.
    Q5_0,
    /// ggml Q5_1.
    Q5_1,
    /// ggml Q8_0: 32 weights, f16 scale, 8-bit values.
    Q8_0,
    /// ggml Q2_K (256-weight super-blocks).
    Q2K,
    /// ggml Q3_K.
    Q3K,
    /// ggml Q4_K.
    Q4K,
    /// ggml Q5_K.
    Q5K,
    /// ggml Q6_K.
    Q6K,
}

impl QType {
    /// The format of a GGUF tensor type, when supported.
    pub fn from_ggml(t: GgmlDType) -> Option<Self> {
        Some(match t {
            GgmlDType::F32 => Self::F32,
            GgmlDType::F16 => Self::F16,
            GgmlDType::BF16 => Self::BF16,
            GgmlDType::Q4_0 => Self::Q4_0,
            GgmlDType::Q4_1 => Self::Q4_1,
            GgmlDType::Q5_0 => Self::Q5_0,
            GgmlDType::Q5_1 => Self::Q5_1,
            GgmlDType::Q8_0 => Self::Q8_0,
            GgmlDType::Q2K => Self::Q2K,
            GgmlDType::Q3K => Self::Q3K,
            GgmlDType::Q4K => Self::Q4K,
            GgmlDType::Q5K => Self::Q5K,
            GgmlDType::Q6K => Self::Q6K,
            GgmlDType::Q8_1 | GgmlDType::Q8K => return None,
        })
    }

    /// Weights per block.
    pub const fn block_elems(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 | Self::Q8_0 => 32,
            Self::Q2K | Self::Q3K | Self::Q4K | Self::Q5K | Self::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub const fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q8_0 => 34,
            Self::Q2K => 84,
            Self::Q3K => 110,
            Self::Q4K => 144,
            Self::Q5K => 176,
            Self::Q6K => 210,
        }
    }

    /// The name llama.cpp uses.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q8_0 => "Q8_0",
            Self::Q2K => "Q2_K",
            Self::Q3K => "Q3_K",
            Self::Q4K => "Q4_K",
            Self::Q5K => "Q5_K",
            Self::Q6K => "Q6_K",
        }
    }
}

impl QType {
    /// Formats stored planar: `(scales per block, bytes of values per block)`.
    const fn planar(self) -> Option<(usize, usize)> {
        match self {
            Self::Q4_0 => Some((1, 16)),
            Self::Q4_1 => Some((2, 16)),
            Self::Q8_0 => Some((1, 32)),
            _ => None,
        }
    }
}

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

/// A planar row's block `b` back in GGUF layout (the reference dequantizer's input).
fn planar_block(q: QType, row: &[u8], nb: usize, b: usize, out: &mut [u8]) {
    let Some((ns, vb)) = q.planar() else {
        return;
    };
    for s in 0..ns {
        out[2 * s..2 * s + 2].copy_from_slice(&row[2 * (s * nb + b)..2 * (s * nb + b) + 2]);
    }
    let v0 = 2 * ns * nb + b * vb;
    out[2 * ns..2 * ns + vb].copy_from_slice(&row[v0..v0 + vb]);
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
        match &self.store {
            Storage::F32(v) => {
                let s = r * self.cols + c0;
                out.copy_from_slice(&v[s..s + out.len()]);
            }
            Storage::Blocks(..) if self.qtype.planar().is_some() => {
                let nb = self.cols / 32;
                dequant_planar(self.qtype, self.row_raw(r), nb, c0 / 32, out);
            }
            Storage::Blocks(..) => {
                let (be, bb) = (self.qtype.block_elems(), self.qtype.block_bytes());
                let raw = &self.row_raw(r)[c0 / be * bb..(c0 + out.len()).div_ceil(be) * bb];
                dequant(self.qtype, raw, out);
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

/// Dequantizes whole blocks `raw` of format `q` into `out` (`out.len()` weights).
pub fn dequant(q: QType, raw: &[u8], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if let Some(level) = simd::level() {
        // SAFETY: the CPU has the features `level` names.
        if unsafe { simd::dequant(level, q, raw, out) } {
            return;
        }
    }
    dequant_reference(q, raw, out);
}

/// Blocks `b0..` of a planar row (of `nb` blocks) into `out`, exactly as the reference
/// dequantizes them.
fn dequant_planar(q: QType, row: &[u8], nb: usize, b0: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if let Some(level) = simd::level() {
        // SAFETY: the CPU has the features `level` names; the row holds `nb` blocks.
        unsafe { simd::dequant_planar(level, q, row.as_ptr(), nb, b0, out) };
        return;
    }
    let mut blk = [0u8; 34];
    let bb = q.block_bytes();
    for (i, o) in out.chunks_exact_mut(32).enumerate() {
        planar_block(q, row, nb, b0 + i, &mut blk[..bb]);
        // The block copy on the stack is 2-aligned as the block types need.
        let aligned: [u16; 17] =
            std::array::from_fn(|j| u16::from_le_bytes([blk[2 * j], blk[2 * j + 1]]));
        // SAFETY: a u16 array viewed as its bytes.
        let bytes = unsafe { std::slice::from_raw_parts(aligned.as_ptr().cast::<u8>(), bb) };
        dequant_reference(q, bytes, o);
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
            return ops::linear(out, x, w, m, k, n, accumulate);
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
    tasks.into_par_iter().for_each(|(pi, col, r0, r1)| {
        #[allow(clippy::redundant_locals)]
        let ptr = ptr;
        let w = &parts[pi];
        // SAFETY: this task alone writes columns col + r0..col + r1 of out[m, n].
        unsafe {
            if m <= SMALL_M {
                stream_rows(w, x, &xsum, m, k, ptr.0, n, col, r0, r1, accumulate);
            } else {
                panel_rows(w, x, m, k, ptr.0, n, col, r0, r1, accumulate);
            }
        }
    });
}

/// Streaming kernel: weight rows `r0..r1` of `w` into output columns `col + r0..`.
///
/// # Safety
/// `out` must be valid for `[m, n]` and no other thread may write those columns.
#[allow(clippy::too_many_arguments)]
unsafe fn stream_rows(
    w: &QMatrix,
    x: &[f32],
    xsum: &[f32],
    m: usize,
    k: usize,
    out: *mut f32,
    n: usize,
    col: usize,
    r0: usize,
    r1: usize,
    accumulate: bool,
) {
    #[cfg(target_arch = "x86_64")]
    let fused = m <= FUSED_MAX_M && !xsum.is_empty() && simd::has_fused(w.qtype);
    #[cfg(not(target_arch = "x86_64"))]
    let fused = false;
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
            // starts a new stream the hardware prefetcher has not seen yet.
            #[cfg(target_arch = "x86_64")]
            if o + 4 < r1 {
                let next = w.raw().as_ptr().add((o + 4) * w.row_bytes());
                let len = (r1 - o - 4).min(4) * w.row_bytes();
                for off in (0..len).step_by(64) {
                    std::arch::x86_64::_mm_prefetch(
                        next.add(off).cast(),
                        std::arch::x86_64::_MM_HINT_T0,
                    );
                }
            }
            if fused {
                #[cfg(target_arch = "x86_64")]
                {
                    let wr: [*const u8; 4] = std::array::from_fn(|r| w.row_raw(row(r)).as_ptr());
                    simd::fused(w.qtype, wr, k / 32, x.as_ptr(), k, m, xsum, &mut sums[..m]);
                }
            } else {
                let mut c0 = 0;
                while c0 < k {
                    let len = (k - c0).min(KC);
                    for r in 0..rows {
                        w.dequant_row_chunk(o + r, c0, &mut tile[r * KC..r * KC + len]);
                    }
                    let wr: [*const f32; 4] =
                        std::array::from_fn(|r| tile[r.min(rows - 1) * KC..].as_ptr());
                    ops::tile_acc(x.as_ptr().add(c0), k, m, wr, len, &mut sums[..m]);
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
            None => w.dequant_rows(r0, panel),
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

/// Explicit SIMD dequantizers for the common formats (AVX-512 and AVX2).
#[cfg(target_arch = "x86_64")]
mod simd {
    use super::QType;
    use std::arch::x86_64::*;

    /// 2: AVX-512F, 1: AVX2 + F16C; `None`: the portable path.
    pub fn level() -> Option<u8> {
        use std::sync::OnceLock;
        static LEVEL: OnceLock<Option<u8>> = OnceLock::new();
        *LEVEL.get_or_init(|| {
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
            {
                Some(2)
            } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c") {
                Some(1)
            } else {
                None
            }
        })
    }

    #[inline(always)]
    unsafe fn f16_at(p: *const u8) -> f32 {
        half::f16::from_bits(std::ptr::read_unaligned(p.cast::<u16>())).to_f32()
    }

    /// Whether `q` has a fused (unpack-in-registers) kernel on this CPU.
    pub fn has_fused(q: QType) -> bool {
        level() == Some(2) && q.planar().is_some()
    }

    /// The f16 values `p[0..n]` (`n` ≤ 32) as f32 into `out`, 16 at a time (a masked
    /// load for the tail, so nothing past `p[n]` is read).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn f16s_512(p: *const u8, n: usize, out: &mut [f32; 32]) {
        let mut j = 0;
        while j < n {
            let left = (n - j).min(16);
            let h = _mm256_maskz_loadu_epi16(((1u32 << left) - 1) as u16, p.add(2 * j).cast());
            _mm512_storeu_ps(out.as_mut_ptr().add(j), _mm512_cvtph_ps(h));
            j += 16;
        }
    }

    /// Sixteen 4-bit or 8-bit values of a block half as f32 (exact integers).
    #[inline(always)]
    unsafe fn values512<const F: u8>(v: *const u8) -> (__m512, __m512) {
        if F == F_Q8_0 {
            (
                _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(v.cast()))),
                _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(v.add(16).cast()))),
            )
        } else {
            let mask = _mm_set1_epi8(0x0F);
            let qs = _mm_loadu_si128(v.cast());
            (
                _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(qs, mask))),
                _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(
                    _mm_srli_epi16(qs, 4),
                    mask,
                ))),
            )
        }
    }

    /// Formats of the fused kernels, as const parameters.
    const F_Q4_1: u8 = 0;
    const F_Q4_0: u8 = 1;
    const F_Q8_0: u8 = 2;

    /// `sums[i][r] += x[i] · row_r` for `M` activation rows and four planar weight rows
    /// of `nb` blocks: per block `d·(q·x) + m·Σx` (Q4_0: `m = −8d`; Q8_0: no `m`), with
    /// `xsum[i·nb + b]` the block sums of `x[i]`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
    unsafe fn fused_m<const M: usize, const F: u8>(
        rows: [*const u8; 4],
        nb: usize,
        x: *const f32,
        xs: usize,
        xsum: &[f32],
        sums: &mut [[f32; 4]],
    ) {
        let (ns, vb) = if F == F_Q4_1 {
            (2, 16)
        } else if F == F_Q4_0 {
            (1, 16)
        } else {
            (1, 32)
        };
        let values = 2 * ns * nb;
        let mut d = [[0.0f32; 32]; 4];
        let mut mn = [[0.0f32; 32]; 4];
        let mut b0 = 0;
        while b0 < nb {
            let cb = (nb - b0).min(32);
            for r in 0..4 {
                f16s_512(rows[r].add(2 * b0), cb, &mut d[r]);
                if F == F_Q4_1 {
                    f16s_512(rows[r].add(2 * (nb + b0)), cb, &mut mn[r]);
                }
            }
            let mut acc = [[_mm512_setzero_ps(); M]; 4];
            #[allow(clippy::needless_range_loop)] // j indexes four scale arrays at once
            for j in 0..cb {
                let b = b0 + j;
                let xv: [(__m512, __m512); M] = std::array::from_fn(|i| {
                    let p = x.add(i * xs + b * 32);
                    (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16)))
                });
                // Unrolled by hand over the four rows so every accumulator stays in a register.
                macro_rules! row {
                    ($r:literal) => {{
                        let (lo, hi) = values512::<F>(rows[$r].add(values + b * vb));
                        let dv = _mm512_set1_ps(d[$r][j]);
                        for i in 0..M {
                            let t = _mm512_fmadd_ps(hi, xv[i].1, _mm512_mul_ps(lo, xv[i].0));
                            acc[$r][i] = _mm512_fmadd_ps(t, dv, acc[$r][i]);
                        }
                    }};
                }
                row!(0);
                row!(1);
                row!(2);
                row!(3);
            }
            // The minimum terms, Σ_b m_b·Σx_b, as one dot product per row and chunk.
            let mask = ((1u64 << cb) - 1) as u32;
            let (k0, k1) = ((mask & 0xFFFF) as u16, (mask >> 16) as u16);
            for i in 0..M {
                let xp = xsum.as_ptr().add(i * nb + b0);
                let (x0, x1) = (
                    _mm512_maskz_loadu_ps(k0, xp),
                    _mm512_maskz_loadu_ps(k1, xp.add(16)),
                );
                for r in 0..4 {
                    let mut total = _mm512_reduce_add_ps(acc[r][i]);
                    if F != F_Q8_0 {
                        // Q4_1: its minimums; Q4_0: m = −8·d.
                        let mv = if F == F_Q4_1 { &mn[r] } else { &d[r] };
                        let dotm = _mm512_reduce_add_ps(_mm512_fmadd_ps(
                            _mm512_loadu_ps(mv.as_ptr().add(16)),
                            x1,
                            _mm512_mul_ps(_mm512_loadu_ps(mv.as_ptr()), x0),
                        ));
                        total += if F == F_Q4_1 { dotm } else { -8.0 * dotm };
                    }
                    sums[i][r] += total;
                }
            }
            b0 += cb;
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
    unsafe fn fused_f<const F: u8>(
        rows: [*const u8; 4],
        nb: usize,
        x: *const f32,
        xs: usize,
        m: usize,
        xsum: &[f32],
        sums: &mut [[f32; 4]],
    ) {
        match m {
            1 => fused_m::<1, F>(rows, nb, x, xs, xsum, sums),
            2 => fused_m::<2, F>(rows, nb, x, xs, xsum, sums),
            3 => fused_m::<3, F>(rows, nb, x, xs, xsum, sums),
            _ => fused_m::<4, F>(rows, nb, x, xs, xsum, sums),
        }
    }

    /// `sums[i][r] += x[i] · row_r` for `m` ≤ [`super::FUSED_MAX_M`] activation rows
    /// (stride `xs`, block sums `xsum`) and four planar rows of `nb` blocks of `q`.
    ///
    /// # Safety
    /// AVX-512F and F16C; `q` one of [`has_fused`]'s; `rows` valid planar rows of `nb`
    /// blocks, `x` valid for `m` rows of `nb × 32` values, `xsum` for `m × nb`.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn fused(
        q: QType,
        rows: [*const u8; 4],
        nb: usize,
        x: *const f32,
        xs: usize,
        m: usize,
        xsum: &[f32],
        sums: &mut [[f32; 4]],
    ) {
        match q {
            QType::Q4_1 => fused_f::<F_Q4_1>(rows, nb, x, xs, m, xsum, sums),
            QType::Q4_0 => fused_f::<F_Q4_0>(rows, nb, x, xs, m, xsum, sums),
            _ => fused_f::<F_Q8_0>(rows, nb, x, xs, m, xsum, sums),
        }
    }

    /// Blocks `b0..` of a planar row (of `nb` blocks) of Q4_0 / Q4_1 / Q8_0 into `out`,
    /// exactly as the reference dequantizes them (`q·d + m` with two roundings).
    ///
    /// # Safety
    /// The CPU must support `level`'s features; `row` valid for `nb` planar blocks.
    pub unsafe fn dequant_planar(
        level: u8,
        q: QType,
        row: *const u8,
        nb: usize,
        b0: usize,
        out: &mut [f32],
    ) {
        if level == 2 {
            planar512(q, row, nb, b0, out)
        } else {
            planar256(q, row, nb, b0, out)
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn planar512(q: QType, row: *const u8, nb: usize, b0: usize, out: &mut [f32]) {
        let (ns, vb) = q.planar().unwrap_or((1, 16));
        let values = row.add(2 * ns * nb);
        for (i, o) in out.chunks_exact_mut(32).enumerate() {
            let b = b0 + i;
            let d = _mm512_set1_ps(f16_at(row.add(2 * b)));
            let v = values.add(b * vb);
            let (lo, hi) = match q {
                QType::Q8_0 => values512::<F_Q8_0>(v),
                _ => values512::<F_Q4_1>(v),
            };
            let (lo, hi) = match q {
                QType::Q4_1 => {
                    let m = _mm512_set1_ps(f16_at(row.add(2 * (nb + b))));
                    (
                        _mm512_add_ps(_mm512_mul_ps(lo, d), m),
                        _mm512_add_ps(_mm512_mul_ps(hi, d), m),
                    )
                }
                QType::Q4_0 => {
                    let eight = _mm512_set1_ps(8.0);
                    (
                        _mm512_mul_ps(_mm512_sub_ps(lo, eight), d),
                        _mm512_mul_ps(_mm512_sub_ps(hi, eight), d),
                    )
                }
                _ => (_mm512_mul_ps(lo, d), _mm512_mul_ps(hi, d)),
            };
            _mm512_storeu_ps(o.as_mut_ptr(), lo);
            _mm512_storeu_ps(o.as_mut_ptr().add(16), hi);
        }
    }

    #[target_feature(enable = "avx2,f16c")]
    unsafe fn planar256(q: QType, row: *const u8, nb: usize, b0: usize, out: &mut [f32]) {
        let (ns, vb) = q.planar().unwrap_or((1, 16));
        let values = row.add(2 * ns * nb);
        let mask = _mm_set1_epi8(0x0F);
        for (i, o) in out.chunks_exact_mut(32).enumerate() {
            let b = b0 + i;
            let d = _mm256_set1_ps(f16_at(row.add(2 * b)));
            let v = values.add(b * vb);
            // Eight values at a time, in element order.
            for part in 0..4 {
                let q8: __m256 = if q == QType::Q8_0 {
                    let bytes = _mm_loadl_epi64(v.add(part * 8).cast());
                    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes))
                } else {
                    let qs = _mm_loadu_si128(v.cast());
                    let nib = if part < 2 {
                        _mm_and_si128(qs, mask)
                    } else {
                        _mm_and_si128(_mm_srli_epi16(qs, 4), mask)
                    };
                    let bytes = if part % 2 == 0 {
                        nib
                    } else {
                        _mm_srli_si128(nib, 8)
                    };
                    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes))
                };
                let y = match q {
                    QType::Q4_1 => {
                        let m = _mm256_set1_ps(f16_at(row.add(2 * (nb + b))));
                        _mm256_add_ps(_mm256_mul_ps(q8, d), m)
                    }
                    QType::Q4_0 => _mm256_mul_ps(_mm256_sub_ps(q8, _mm256_set1_ps(8.0)), d),
                    _ => _mm256_mul_ps(q8, d),
                };
                _mm256_storeu_ps(o.as_mut_ptr().add(part * 8), y);
            }
        }
    }

    /// Dequantizes `raw` into `out` when `q` has a SIMD path (returns false otherwise).
    ///
    /// # Safety
    /// The CPU must support `level`'s features.
    pub unsafe fn dequant(level: u8, q: QType, raw: &[u8], out: &mut [f32]) -> bool {
        let nb = out.len() / q.block_elems();
        let (r, o) = (raw.as_ptr(), out.as_mut_ptr());
        let _ = nb;
        match (level, q) {
            (2, QType::F16) => f16_512(r, o, out.len()),
            (2, QType::BF16) => bf16_512(r, o, out.len()),
            (1, QType::F16) => f16_256(r, o, out.len()),
            (1, QType::BF16) => bf16_256(r, o, out.len()),
            _ => return false,
        }
        true
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn f16_512(raw: *const u8, out: *mut f32, len: usize) {
        let mut j = 0;
        while j + 16 <= len {
            let h = _mm256_loadu_si256(raw.add(2 * j).cast());
            _mm512_storeu_ps(out.add(j), _mm512_cvtph_ps(h));
            j += 16;
        }
        while j < len {
            *out.add(j) = f16_at(raw.add(2 * j));
            j += 1;
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn bf16_512(raw: *const u8, out: *mut f32, len: usize) {
        let mut j = 0;
        while j + 16 <= len {
            let h = _mm256_loadu_si256(raw.add(2 * j).cast());
            let w = _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16);
            _mm512_storeu_ps(out.add(j), _mm512_castsi512_ps(w));
            j += 16;
        }
        while j < len {
            let b = std::ptr::read_unaligned(raw.add(2 * j).cast::<u16>());
            *out.add(j) = f32::from_bits(u32::from(b) << 16);
            j += 1;
        }
    }

    #[target_feature(enable = "avx2,f16c")]
    unsafe fn f16_256(raw: *const u8, out: *mut f32, len: usize) {
        let mut j = 0;
        while j + 8 <= len {
            let h = _mm_loadu_si128(raw.add(2 * j).cast());
            _mm256_storeu_ps(out.add(j), _mm256_cvtph_ps(h));
            j += 8;
        }
        while j < len {
            *out.add(j) = f16_at(raw.add(2 * j));
            j += 1;
        }
    }

    #[target_feature(enable = "avx2")]
    unsafe fn bf16_256(raw: *const u8, out: *mut f32, len: usize) {
        let mut j = 0;
        while j + 8 <= len {
            let h = _mm_loadu_si128(raw.add(2 * j).cast());
            let w = _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
            _mm256_storeu_ps(out.add(j), _mm256_castsi256_ps(w));
            j += 8;
        }
        while j < len {
            let b = std::ptr::read_unaligned(raw.add(2 * j).cast::<u16>());
            *out.add(j) = f32::from_bits(u32::from(b) << 16);
            j += 1;
        }
    }
}

#[cfg(test)]
mod tests;
