//! The quantized-weight kernels, written once over the ISA seam ([`Simd`]): exact
//! dequantizers (the prefill panels and the streaming tiles) and the fused decode
//! kernel (blocks unpacked in registers and multiplied into up to
//! [`FUSED_MAX_M`] activation rows, no tile in between).
//!
//! A format is a run of *groups*: 32 values with one scale (Q4_0, Q4_1, Q8_0, and
//! the sub-blocks of Q4_K and Q5_K) or 16 (Q6_K), and a minimum for Q4_1, Q4_K and
//! Q5_K. Values are unpacked as bytes (nibbles, high bits, the `-8` / `-32` offsets
//! done in integers, so every value is an exact small integer), then widened to f32.
//!
//! **Exactness.** The dequantizers compute each weight as candle's `to_float` does,
//! operation for operation (`q·d + m` for Q4_1; `(q − 8)·d` for Q4_0; `d₁·q − m₁`
//! with `d₁ = d·sc`, `m₁ = dmin·m` for Q4_K and Q5_K; `(d·sc)·q` for Q6_K; no fused
//! multiply-add), so they are bit for bit the reference. The fused kernel sums
//! `d_g·(q·x) − m_g·Σx` per group: the same products in another order.
//!
//! # Safety
//! Every function here runs inside a function compiled for `S` (`isa_fn!`), with
//! pointers valid for the blocks, rows and values they are told of.

// Every kernel shares the contract the module doc states under "Safety".
#![allow(clippy::missing_safety_doc)]

use super::format::QType;
use crate::simd::Simd;

/// Activation rows up to which the fused (unpack-in-registers) kernels run: beyond
/// four, unpacking a tile once for all the rows was as fast or faster on both AVX2
/// and AVX-512 (`quant_bench --m 4,8,9`), the 4 × m accumulators no longer fitting
/// the registers.
pub const FUSED_MAX_M: usize = 4;

/// Formats with a fused decode kernel.
pub fn has_fused(q: QType) -> bool {
    matches!(
        q,
        QType::Q4_0 | QType::Q4_1 | QType::Q8_0 | QType::Q4K | QType::Q5K | QType::Q6K
    )
}

/// Formats whose fused kernel fetches the next rows a slice per block (see
/// [`Acts::next`]): measured at 1B (`decode_profile`, 2 threads), +25-30% decode on
/// Q4_0 and +25-100% on Q4_K_M with its own Q4_K/Q6_K kernels. Q5_K, still on the
/// generic group walk (bound by its scale arithmetic, where spreading did not help),
/// keeps the burst at the start of each row group.
pub fn spreads_prefetch(q: QType) -> bool {
    matches!(
        q,
        QType::Q4_0 | QType::Q4_1 | QType::Q8_0 | QType::Q4K | QType::Q6K
    )
}

/// Formats whose dequantizer is written here (the others use candle's).
pub fn has_dequant(q: QType) -> bool {
    has_fused(q) || matches!(q, QType::F16 | QType::BF16)
}

#[inline(always)]
unsafe fn f16_at(p: *const u8) -> f32 {
    half::f16::from_bits(std::ptr::read_unaligned(p.cast::<u16>())).to_f32()
}

/// Q4_K / Q5_K's 6-bit scale and minimum of sub-block `j` (ggml's `get_scale_min_k4`).
#[inline(always)]
fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// The formats of the kernels, as const parameters (so each is compiled on its own,
/// every branch on the format resolved).
pub(super) mod fmt {
    pub const Q4_0: u8 = 0;
    pub const Q4_1: u8 = 1;
    pub const Q8_0: u8 = 2;
    pub const Q4K: u8 = 3;
    pub const Q5K: u8 = 4;
    pub const Q6K: u8 = 5;
}

/// One group of a block as bytes: up to two 16-byte vectors of exact small integers
/// (signed for Q4_0, Q8_0 and Q6_K), its scale and minimum (the minimum already
/// `dmin·m`), and its first column within the block.
struct Group<S: Simd> {
    at: usize,
    bytes: [S::B; 2],
    scale: f32,
    min: f32,
}

/// What the kernels do with each group (a struct rather than a closure, so its
/// method inlines into the one function compiled for the ISA).
trait Sink<S: Simd> {
    unsafe fn group<const F: u8>(&mut self, g: &Group<S>);
}

/// Values per group of format `F`.
const fn group_len(f: u8) -> usize {
    if f == fmt::Q6K {
        16
    } else {
        32
    }
}

/// Whether format `F`'s group values are signed bytes.
const fn signed(f: u8) -> bool {
    f == fmt::Q4_0 || f == fmt::Q8_0 || f == fmt::Q6K
}

/// Weights per block of format `F`.
const fn block_len(f: u8) -> usize {
    if f == fmt::Q4_0 || f == fmt::Q4_1 || f == fmt::Q8_0 {
        32
    } else {
        256
    }
}

/// Whether format `F` is stored planar (its blocks' scales first, converted a
/// vector at a time by [`Scales`]).
const fn is_planar(f: u8) -> bool {
    f == fmt::Q4_0 || f == fmt::Q4_1 || f == fmt::Q8_0
}

/// Blocks per chunk of [`Scales`].
const CHUNK: usize = 32;

/// The f32 scales (and Q4_1's minimums) of up to [`CHUNK`] consecutive blocks of a
/// planar row, converted from f16 a vector at a time.
struct Scales {
    d: [f32; CHUNK],
    m: [f32; CHUNK],
}

impl Scales {
    /// Storage for scales, not yet loaded: every entry is written by [`Scales::load`]
    /// before it is read (zeroing 256 bytes a row for nothing costs more than the
    /// chunk's kernel on short rows).
    #[inline(always)]
    fn uninit() -> std::mem::MaybeUninit<Scales> {
        std::mem::MaybeUninit::uninit()
    }

    /// Blocks `b0..` (at most [`CHUNK`]) of a planar row of `nb` blocks; returns how many.
    #[inline(always)]
    unsafe fn load<S: Simd, const F: u8>(
        this: *mut Scales,
        row: *const u8,
        nb: usize,
        b0: usize,
    ) -> usize {
        let n = (nb - b0).min(CHUNK);
        halves::<S>(row.add(2 * b0), n, std::ptr::addr_of_mut!((*this).d).cast());
        if F == fmt::Q4_1 {
            halves::<S>(
                row.add(2 * (nb + b0)),
                n,
                std::ptr::addr_of_mut!((*this).m).cast(),
            );
        }
        n
    }
}

/// `n` ≤ [`CHUNK`] f16 values from `p` into `out`, a vector at a time (the tail
/// through a padded copy, so nothing past `p[n]` is read).
#[inline(always)]
unsafe fn halves<S: Simd>(p: *const u8, n: usize, out: *mut f32) {
    let mut j = 0;
    while j + S::LANES <= n {
        S::store(out.add(j), S::load_f16(p.add(2 * j)));
        j += S::LANES;
    }
    if j < n {
        let mut pad = [0u16; 16];
        for (t, v) in pad.iter_mut().enumerate().take(n - j) {
            *v = std::ptr::read_unaligned(p.add(2 * (j + t)).cast::<u16>());
        }
        // The padded vector fits: `out` holds CHUNK values and j + LANES ≤ CHUNK.
        S::store(out.add(j), S::load_f16(pad.as_ptr().cast()));
    }
}

/// Feeds `sink` every group of block `b` of a row of format `F` (`row` the row's
/// start: planar for Q4_0 / Q4_1 / Q8_0, GGUF blocks otherwise; `nb` its blocks);
/// planar blocks take their scale and minimum `dm` from [`Scales`].
#[inline(always)]
unsafe fn groups<S: Simd, const F: u8, K: Sink<S>>(
    row: *const u8,
    nb: usize,
    b: usize,
    dm: (f32, f32),
    sink: &mut K,
) {
    let lo4 = S::splat8(0x0F);
    if is_planar(F) {
        let ns = if F == fmt::Q4_1 { 2 } else { 1 };
        let vb = if F == fmt::Q8_0 { 32 } else { 16 };
        let d = dm.0;
        let v = row.add(2 * ns * nb + b * vb);
        let g = if F == fmt::Q8_0 {
            Group {
                at: 0,
                bytes: [S::load16(v), S::load16(v.add(16))],
                scale: d,
                min: 0.0,
            }
        } else {
            let qs = S::load16(v);
            let (lo, hi) = (S::and8(qs, lo4), S::shr8::<4>(qs));
            if F == fmt::Q4_0 {
                let eight = S::splat8(8);
                Group {
                    at: 0,
                    bytes: [S::sub8(lo, eight), S::sub8(hi, eight)],
                    scale: d,
                    min: 0.0,
                }
            } else {
                Group {
                    at: 0,
                    bytes: [lo, hi],
                    scale: d,
                    min: dm.1,
                }
            }
        };
        sink.group::<F>(&g);
    } else if F == fmt::Q4K || F == fmt::Q5K {
        let blk = row.add(b * if F == fmt::Q5K { 176 } else { 144 });
        let d = f16_at(blk);
        let dmin = f16_at(blk.add(2));
        let sc: &[u8; 12] = &*blk.add(4).cast::<[u8; 12]>();
        let qs = blk.add(if F == fmt::Q5K { 48 } else { 16 });
        let hbits = if F == fmt::Q5K {
            [S::load16(blk.add(16)), S::load16(blk.add(32))]
        } else {
            [S::splat8(0); 2]
        };
        let one = S::splat8(1);
        for j in 0..4 {
            let (b0, b1) = (S::load16(qs.add(32 * j)), S::load16(qs.add(32 * j + 16)));
            let mut lo = [S::and8(b0, lo4), S::and8(b1, lo4)];
            let mut hi = [S::shr8::<4>(b0), S::shr8::<4>(b1)];
            if F == fmt::Q5K {
                // The fifth bit of sub-block 2j is bit 2j of qh, of 2j+1 bit 2j+1.
                for h in 0..2 {
                    let (bl, bh) = match j {
                        0 => (hbits[h], S::shr8::<1>(hbits[h])),
                        1 => (S::shr8::<2>(hbits[h]), S::shr8::<3>(hbits[h])),
                        2 => (S::shr8::<4>(hbits[h]), S::shr8::<5>(hbits[h])),
                        _ => (S::shr8::<6>(hbits[h]), S::shr8::<7>(hbits[h])),
                    };
                    lo[h] = S::or8(lo[h], S::shl8::<4>(S::and8(bl, one)));
                    hi[h] = S::or8(hi[h], S::shl8::<4>(S::and8(bh, one)));
                }
            }
            for (s, bytes) in [(2 * j, lo), (2 * j + 1, hi)] {
                let (scale, min) = scale_min_k4(s, sc);
                sink.group::<F>(&Group {
                    at: 32 * s,
                    bytes,
                    scale: d * f32::from(scale),
                    min: dmin * f32::from(min),
                });
            }
        }
    } else if F == fmt::Q6K {
        let blk = row.add(b * 210);
        let d = f16_at(blk.add(208));
        let sc = blk.add(192).cast::<i8>();
        let three = S::splat8(3);
        let off = S::splat8(32);
        for half in 0..2 {
            let ql = blk.add(64 * half);
            let qh = blk.add(128 + 32 * half);
            for g in 0..2 {
                let a = S::load16(ql.add(16 * g));
                let c = S::load16(ql.add(32 + 16 * g));
                let h = S::load16(qh.add(16 * g));
                let v = [
                    S::or8(S::and8(a, lo4), S::shl8::<4>(S::and8(h, three))),
                    S::or8(
                        S::and8(c, lo4),
                        S::shl8::<4>(S::and8(S::shr8::<2>(h), three)),
                    ),
                    S::or8(
                        S::shr8::<4>(a),
                        S::shl8::<4>(S::and8(S::shr8::<4>(h), three)),
                    ),
                    S::or8(S::shr8::<4>(c), S::shl8::<4>(S::shr8::<6>(h))),
                ];
                for (t, bytes) in v.into_iter().enumerate() {
                    let q = S::sub8(bytes, off);
                    sink.group::<F>(&Group {
                        at: 128 * half + 32 * t + 16 * g,
                        bytes: [q, q],
                        scale: d * f32::from(*sc.add(8 * half + g + 2 * t)),
                        min: 0.0,
                    });
                }
            }
        }
    }
}

/// Value vector `c` (`c · LANES ..`) of a group of format `F`, as f32.
#[inline(always)]
unsafe fn values<S: Simd, const F: u8>(g: &Group<S>, c: usize) -> S::F {
    let per = 16 / S::LANES;
    let (v, part) = (g.bytes[c / per], c % per);
    if signed(F) {
        S::i8_to_f(v, part)
    } else {
        S::u8_to_f(v, part)
    }
}

/// Stores each group's weights, dequantized exactly as the reference does.
struct Store(*mut f32);

impl<S: Simd> Sink<S> for Store {
    #[inline(always)]
    unsafe fn group<const F: u8>(&mut self, g: &Group<S>) {
        let (d, m) = (S::splat(g.scale), S::splat(g.min));
        for c in 0..group_len(F) / S::LANES {
            let v = values::<S, F>(g, c);
            let y = if F == fmt::Q4_1 {
                // q·d + m.
                S::add(S::mul(v, d), m)
            } else if F == fmt::Q4K || F == fmt::Q5K {
                // d₁·q − m₁.
                S::sub(S::mul(d, v), m)
            } else if F == fmt::Q6K {
                // (d·sc)·q.
                S::mul(d, v)
            } else {
                // Q4_0: (q − 8)·d; Q8_0: q·d.
                S::mul(v, d)
            };
            S::store(self.0.add(g.at + c * S::LANES), y);
        }
    }
}

/// Blocks `b0..` of a row of format `F` (`nb` blocks) into `out`, exactly as the
/// reference dequantizes them.
#[inline(always)]
pub unsafe fn dequant_blocks<S: Simd, const F: u8>(
    row: *const u8,
    nb: usize,
    b0: usize,
    out: &mut [f32],
) {
    let mut scales = Scales::uninit();
    let sp = scales.as_mut_ptr();
    for (i, o) in out.chunks_exact_mut(block_len(F)).enumerate() {
        let b = b0 + i;
        let dm = if is_planar(F) {
            if i % CHUNK == 0 {
                Scales::load::<S, F>(sp, row, nb, b);
            }
            ((*sp).d[i % CHUNK], (*sp).m[i % CHUNK])
        } else {
            (0.0, 0.0)
        };
        groups::<S, F, _>(row, nb, b, dm, &mut Store(o.as_mut_ptr()));
    }
}

/// F16 or BF16 values `v0..v0 + out.len()` of a row into `out`.
#[inline(always)]
pub unsafe fn dequant_half<S: Simd>(bf16: bool, row: *const u8, v0: usize, out: &mut [f32]) {
    let p = row.add(2 * v0);
    let n = out.len();
    let mut j = 0;
    while j + S::LANES <= n {
        let v = if bf16 {
            S::load_bf16(p.add(2 * j))
        } else {
            S::load_f16(p.add(2 * j))
        };
        S::store(out.as_mut_ptr().add(j), v);
        j += S::LANES;
    }
    for (o, jj) in out[j..].iter_mut().zip(j..) {
        let bits = std::ptr::read_unaligned(p.add(2 * jj).cast::<u16>());
        *o = if bf16 {
            f32::from_bits(u32::from(bits) << 16)
        } else {
            half::f16::from_bits(bits).to_f32()
        };
    }
}

/// The activation rows of a fused product: their f32 values and 32-value block
/// sums and, for the integer path, their 8-bit form ([`quantize_q8`]). Rows past the
/// call's `m` repeat the last (results dropped).
#[derive(Clone, Copy)]
pub struct Acts {
    /// f32 rows.
    pub x: [*const f32; FUSED_MAX_M],
    /// Their 32-value block sums.
    pub xsum: [*const f32; FUSED_MAX_M],
    /// Their 8-bit values (read only by the integer path).
    pub xq: [*const i8; FUSED_MAX_M],
    /// The scale of each 32 of those (read only by the integer path).
    pub xd: [*const f32; FUSED_MAX_M],
    /// The next weight rows' bytes, fetched into the cache a slice per block while
    /// these rows compute (empty after the last rows).
    pub next: *const u8,
    /// How many bytes from `next`.
    pub next_len: usize,
}

/// Prefetches block `b`'s share (of `nb`) of the next rows' `len` bytes at `p`: the
/// next rows arrive while this row's blocks compute, a few cache lines per block
/// rather than all at once (a burst of prefetches stalls on the line-fill buffers).
#[inline(always)]
unsafe fn prefetch_share(p: *const u8, len: usize, b: usize, nb: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let lines = len.div_ceil(64);
        let (l0, l1) = (b * lines / nb, (b + 1) * lines / nb);
        for l in l0..l1 {
            std::arch::x86_64::_mm_prefetch(
                p.wrapping_add(64 * l).cast(),
                std::arch::x86_64::_MM_HINT_T0,
            );
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, len, b, nb);
}

/// An activation row as 8-bit integers per 32-value block, as llama.cpp quantizes
/// activations for its integer dot products: `x ≈ d·q`, `d = max|x| / 127`, `q`
/// rounded to nearest. `x.len()` is a multiple of 32; `q` as long, `d` a 32nd.
pub fn quantize_q8(x: &[f32], q: &mut [i8], d: &mut [f32]) {
    for ((xb, qb), db) in x.chunks_exact(32).zip(q.chunks_exact_mut(32)).zip(d) {
        let amax = xb.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        *db = amax / 127.0;
        let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        for (o, v) in qb.iter_mut().zip(xb) {
            *o = (v * id).round().clamp(-127.0, 127.0) as i8;
        }
    }
}

/// Multiplies each group into `M` activation rows: in f32, or (`INT`) as 8-bit
/// integer dot products against the rows' [`quantize_q8`] form.
struct Dot<S: Simd, const M: usize, const INT: bool> {
    /// The activation rows at this block's first column.
    x: [*const f32; M],
    /// Their 32-value block sums at this block's first group.
    xsum: [*const f32; M],
    /// Their 8-bit values at this block's first column.
    xq: [*const i8; M],
    /// Their 32-value block scales at this block's first group.
    xd: [*const f32; M],
    acc: [S::F; M],
    iacc: [S::D; M],
    mins: [f32; M],
}

impl<S: Simd, const M: usize, const INT: bool> Sink<S> for Dot<S, M, INT> {
    #[inline(always)]
    unsafe fn group<const F: u8>(&mut self, g: &Group<S>) {
        let n = group_len(F) / S::LANES;
        let d = S::splat(g.scale);
        for i in 0..M {
            if INT {
                let dx = *self.xd[i].add(g.at / 32);
                let xq = self.xq[i].add(g.at);
                self.iacc[i] = S::idot(g.bytes, xq, group_len(F) == 16, g.scale * dx, self.iacc[i]);
            } else {
                let xp = self.x[i].add(g.at);
                let mut t = S::mul(values::<S, F>(g, 0), S::load(xp));
                for c in 1..n {
                    t = S::fma(values::<S, F>(g, c), S::load(xp.add(c * S::LANES)), t);
                }
                self.acc[i] = S::fma(t, d, self.acc[i]);
            }
            // Q4_1's minimums are dotted with the block sums a chunk at a time.
            if F == fmt::Q4K || F == fmt::Q5K {
                self.mins[i] += g.min * *self.xsum[i].add(g.at / 32);
            }
        }
    }
}

/// `sums[i][r] += x[i] · row_r` for `M` activation rows `x[i]` (their 32-value block
/// sums `xsum[i]`) and four weight rows of `nb` blocks of format `F`, the blocks
/// unpacked in registers. Rows of `x` past `m` repeat the last (results dropped).
#[inline(always)]
pub unsafe fn fused<S: Simd, const F: u8, const M: usize, const INT: bool>(
    rows: [*const u8; 4],
    nb: usize,
    a: &Acts,
    sums: &mut [[f32; 4]],
    m: usize,
) {
    let (x, xsum) = (a.x, a.xsum);
    let be = block_len(F);
    // The four rows' blocks interleaved: four independent accumulation chains, each
    // its own local (an array of them stays in memory, the chains through it).
    let new_dot = || Dot::<S, M, INT> {
        x: std::array::from_fn(|i| x[i]),
        xsum: std::array::from_fn(|i| xsum[i]),
        xq: std::array::from_fn(|i| a.xq[i]),
        xd: std::array::from_fn(|i| a.xd[i]),
        acc: [S::zero(); M],
        iacc: [S::dzero(); M],
        mins: [0.0; M],
    };
    let (mut d0, mut d1, mut d2, mut d3) = (new_dot(), new_dot(), new_dot(), new_dot());
    // Q4_1's minimum terms, per row (kept apart from the accumulators above).
    let mut qmins = [[0.0f32; M]; 4];
    let mut scales = [
        Scales::uninit(),
        Scales::uninit(),
        Scales::uninit(),
        Scales::uninit(),
    ];
    let sp: [*mut Scales; 4] = std::array::from_fn(|r| scales[r].as_mut_ptr());
    for b in 0..nb {
        prefetch_share(a.next, a.next_len, b, nb);
        if is_planar(F) && b % CHUNK == 0 {
            let mut n = 0;
            for (r, &p) in sp.iter().enumerate() {
                n = Scales::load::<S, F>(p, rows[r], nb, b);
            }
            if F == fmt::Q4_1 {
                // Σ m·Σx over the chunk's blocks, a vector at a time, the tail by hand.
                let full = n / S::LANES * S::LANES;
                for (r, qm) in qmins.iter_mut().enumerate() {
                    let mp = std::ptr::addr_of!((*sp[r]).m).cast::<f32>();
                    for i in 0..M {
                        let xs = xsum[i].add(b);
                        let mut t = S::zero();
                        let mut c = 0;
                        while c < full {
                            t = S::fma(S::load(mp.add(c)), S::load(xs.add(c)), t);
                            c += S::LANES;
                        }
                        let mut tail = 0.0;
                        for c in full..n {
                            tail += *mp.add(c) * *xs.add(c);
                        }
                        qm[i] += S::sum(t) + tail;
                    }
                }
            }
        }
        let dm = |r: usize| {
            if is_planar(F) {
                ((*sp[r]).d[b % CHUNK], (*sp[r]).m[b % CHUNK])
            } else {
                (0.0, 0.0)
            }
        };
        macro_rules! row {
            ($dot:ident, $r:literal) => {
                for i in 0..M {
                    $dot.x[i] = x[i].add(b * be);
                    $dot.xsum[i] = xsum[i].add(b * be / 32);
                    if INT {
                        $dot.xq[i] = a.xq[i].add(b * be);
                        $dot.xd[i] = a.xd[i].add(b * be / 32);
                    }
                }
                groups::<S, F, _>(rows[$r], nb, b, dm($r), &mut $dot);
            };
        }
        row!(d0, 0);
        row!(d1, 1);
        row!(d2, 2);
        row!(d3, 3);
    }
    macro_rules! total {
        ($dot:ident, $r:literal) => {
            for i in 0..m.min(M) {
                // Q4_1 adds its minimums; the K-quants subtract theirs.
                let mterm = if F == fmt::Q4_1 {
                    qmins[$r][i]
                } else {
                    -$dot.mins[i]
                };
                let dot = if INT {
                    S::dsum($dot.iacc[i])
                } else {
                    S::sum($dot.acc[i])
                };
                sums[i][$r] += dot + mterm;
            }
        };
    }
    total!(d0, 0);
    total!(d1, 1);
    total!(d2, 2);
    total!(d3, 3);
}

/// [`fused`] for the planar formats, as a plain loop: a chunk of blocks' scales for
/// the four rows, then per block the activation vectors loaded once for the four
/// rows, every accumulator a local (the generic group walk keeps them in memory).
#[inline(always)]
unsafe fn fused_planar<S: Simd, const F: u8, const M: usize, const INT: bool>(
    rows: [*const u8; 4],
    nb: usize,
    a: &Acts,
    sums: &mut [[f32; 4]],
    m: usize,
) {
    let (x, xsum) = (a.x, a.xsum);
    let ns = if F == fmt::Q4_1 { 2 } else { 1 };
    let vb = if F == fmt::Q8_0 { 32 } else { 16 };
    let nv = 32 / S::LANES;
    let lo4 = S::splat8(0x0F);
    let mut acc = [[S::zero(); M]; 4];
    let mut iacc = [[S::dzero(); M]; 4];
    let mut qmins = [[0.0f32; M]; 4];
    let mut scales = [
        Scales::uninit(),
        Scales::uninit(),
        Scales::uninit(),
        Scales::uninit(),
    ];
    let sp: [*mut Scales; 4] = std::array::from_fn(|r| scales[r].as_mut_ptr());
    let mut b0 = 0;
    while b0 < nb {
        let mut n = 0;
        for (r, &p) in sp.iter().enumerate() {
            n = Scales::load::<S, F>(p, rows[r], nb, b0);
        }
        if F == fmt::Q4_1 {
            // Σ m·Σx over the chunk's blocks, a vector at a time, the tail by hand.
            let full = n / S::LANES * S::LANES;
            for (r, qm) in qmins.iter_mut().enumerate() {
                let mp = std::ptr::addr_of!((*sp[r]).m).cast::<f32>();
                for i in 0..M {
                    let xs = xsum[i].add(b0);
                    let mut t = S::zero();
                    let mut c = 0;
                    while c < full {
                        t = S::fma(S::load(mp.add(c)), S::load(xs.add(c)), t);
                        c += S::LANES;
                    }
                    let mut tail = 0.0;
                    for c in full..n {
                        tail += *mp.add(c) * *xs.add(c);
                    }
                    qm[i] += S::sum(t) + tail;
                }
            }
        }
        for j in 0..n {
            let b = b0 + j;
            prefetch_share(a.next, a.next_len, b, nb);
            let xv: [[S::F; 4]; M] = std::array::from_fn(|i| {
                std::array::from_fn(|c| {
                    if c < nv && !INT {
                        S::load(x[i].add(32 * b + c * S::LANES))
                    } else {
                        S::zero()
                    }
                })
            });
            for r in 0..4 {
                let v = rows[r].add(2 * ns * nb + b * vb);
                let bytes = if F == fmt::Q8_0 {
                    [S::load16(v), S::load16(v.add(16))]
                } else {
                    let qs = S::load16(v);
                    let (lo, hi) = (S::and8(qs, lo4), S::shr8::<4>(qs));
                    if F == fmt::Q4_0 {
                        let eight = S::splat8(8);
                        [S::sub8(lo, eight), S::sub8(hi, eight)]
                    } else {
                        [lo, hi]
                    }
                };
                if INT {
                    let d = (*sp[r]).d[j];
                    for (i, acc) in iacc[r].iter_mut().enumerate() {
                        let (xq, dx) = (a.xq[i].add(32 * b), *a.xd[i].add(b));
                        *acc = S::idot(bytes, xq, false, d * dx, *acc);
                    }
                    continue;
                }
                let g = Group::<S> {
                    at: 0,
                    bytes,
                    scale: 0.0,
                    min: 0.0,
                };
                let d = S::splat((*sp[r]).d[j]);
                let q: [S::F; 4] = std::array::from_fn(|c| {
                    if c < nv {
                        values::<S, F>(&g, c)
                    } else {
                        S::zero()
                    }
                });
                for i in 0..M {
                    let mut t = S::mul(q[0], xv[i][0]);
                    for c in 1..nv {
                        t = S::fma(q[c], xv[i][c], t);
                    }
                    acc[r][i] = S::fma(t, d, acc[r][i]);
                }
            }
        }
        b0 += n;
    }
    for r in 0..4 {
        for i in 0..m.min(M) {
            let mterm = if F == fmt::Q4_1 { qmins[r][i] } else { 0.0 };
            let dot = if INT {
                S::dsum(iacc[r][i])
            } else {
                S::sum(acc[r][i])
            };
            sums[i][r] += dot + mterm;
        }
    }
}

/// Q4_K's eight 6-bit scales and minimums of a superblock at once (ggml's
/// `kmask` shuffle of its 12 bytes): a few word operations instead of a branchy
/// decode per sub-block.
#[inline(always)]
unsafe fn q4k_scales(sc: *const u8) -> ([u8; 8], [u8; 8]) {
    const M1: u32 = 0x3f3f_3f3f;
    const M2: u32 = 0x0f0f_0f0f;
    const M3: u32 = 0x0303_0303;
    let w = |i: usize| std::ptr::read_unaligned(sc.add(4 * i).cast::<u32>());
    let (u0, u1, u2) = (w(0), w(1), w(2));
    let s = [u0 & M1, (u2 & M2) | (((u0 >> 6) & M3) << 4)];
    let m = [u1 & M1, ((u2 >> 4) & M2) | (((u1 >> 6) & M3) << 4)];
    let bytes = |v: [u32; 2]| {
        let mut o = [0u8; 8];
        o[..4].copy_from_slice(&v[0].to_le_bytes());
        o[4..].copy_from_slice(&v[1].to_le_bytes());
        o
    };
    (bytes(s), bytes(m))
}

/// [`fused`] for Q4_K in f32, as a plain loop over superblocks: each row's eight
/// scales and minimums decoded once per superblock, the minimums dotted with the
/// activations' 32-value sums eight at a time, and per sub-block the activation
/// vectors loaded once for the four rows (the generic group walk decodes a scale per
/// group and reloads the activations per row, which made it bound by that
/// arithmetic rather than by memory).
// Indices, not iterators: they name positions in the superblock layout.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn fused_q4k<S: Simd, const M: usize>(
    rows: [*const u8; 4],
    nb: usize,
    a: &Acts,
    sums: &mut [[f32; 4]],
    m: usize,
) {
    let (x, xsum) = (a.x, a.xsum);
    let per = 32 / S::LANES;
    let lo4 = S::splat8(0x0F);
    let mut acc = [[S::zero(); M]; 4];
    let mut mins = [[0.0f32; M]; 4];
    for b in 0..nb {
        prefetch_share(a.next, a.next_len, b, nb);
        let mut ds = [[0.0f32; 8]; 4];
        for r in 0..4 {
            let blk = rows[r].add(b * 144);
            let (d, dmin) = (f16_at(blk), f16_at(blk.add(2)));
            let (sc, mn) = q4k_scales(blk.add(4));
            for j in 0..8 {
                ds[r][j] = d * f32::from(sc[j]);
            }
            for i in 0..M {
                let xs = xsum[i].add(8 * b);
                let mut t = 0.0;
                for j in 0..8 {
                    t += f32::from(mn[j]) * *xs.add(j);
                }
                mins[r][i] += dmin * t;
            }
        }
        for s in 0..8 {
            let xv: [[S::F; 4]; M] = std::array::from_fn(|i| {
                std::array::from_fn(|c| {
                    if c < per {
                        S::load(x[i].add(256 * b + 32 * s + c * S::LANES))
                    } else {
                        S::zero()
                    }
                })
            });
            for r in 0..4 {
                // Sub-block 2j is the low nibbles of bytes 32j.., 2j+1 the high ones.
                let qs = rows[r].add(b * 144 + 16 + 32 * (s / 2));
                let (b0, b1) = (S::load16(qs), S::load16(qs.add(16)));
                let g = Group::<S> {
                    at: 0,
                    bytes: if s % 2 == 0 {
                        [S::and8(b0, lo4), S::and8(b1, lo4)]
                    } else {
                        [S::shr8::<4>(b0), S::shr8::<4>(b1)]
                    },
                    scale: 0.0,
                    min: 0.0,
                };
                let q: [S::F; 4] = std::array::from_fn(|c| {
                    if c < per {
                        values::<S, { fmt::Q4K }>(&g, c)
                    } else {
                        S::zero()
                    }
                });
                let d = S::splat(ds[r][s]);
                for i in 0..M {
                    let mut t = S::mul(q[0], xv[i][0]);
                    for c in 1..per {
                        t = S::fma(q[c], xv[i][c], t);
                    }
                    acc[r][i] = S::fma(t, d, acc[r][i]);
                }
            }
        }
    }
    for r in 0..4 {
        for i in 0..m.min(M) {
            sums[i][r] += S::sum(acc[r][i]) - mins[r][i];
        }
    }
}

/// [`fused`] for Q6_K in f32, in [`fused_q4k`]'s shape: each row's sixteen scales
/// converted once per superblock, and per 16-value group the activation vectors
/// loaded once for the four rows, each row's 6-bit values rebuilt from its low and
/// high bits (cheaper than holding four rows' unpacked bytes in registers). Only
/// with 16-lane vectors: on AVX2 it measured 0.8x the group walk at 1B (a
/// reshuffle that shared the bytes across groups was slower still), on AVX-512
/// 1.1-1.5x.
// Indices, not iterators: they name positions in the superblock layout.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn fused_q6k<S: Simd, const M: usize>(
    rows: [*const u8; 4],
    nb: usize,
    a: &Acts,
    sums: &mut [[f32; 4]],
    m: usize,
) {
    let x = a.x;
    let per = 16 / S::LANES;
    let (lo4, three, off) = (S::splat8(0x0F), S::splat8(3), S::splat8(32));
    let mut acc = [[S::zero(); M]; 4];
    for b in 0..nb {
        prefetch_share(a.next, a.next_len, b, nb);
        let mut ds = [[0.0f32; 16]; 4];
        for r in 0..4 {
            let blk = rows[r].add(b * 210);
            let d = f16_at(blk.add(208));
            let sc = blk.add(192).cast::<i8>();
            for j in 0..16 {
                ds[r][j] = d * f32::from(*sc.add(j));
            }
        }
        for half in 0..2 {
            for g in 0..2 {
                for t in 0..4 {
                    let at = 256 * b + 128 * half + 32 * t + 16 * g;
                    let xv: [[S::F; 2]; M] = std::array::from_fn(|i| {
                        std::array::from_fn(|c| {
                            if c < per {
                                S::load(x[i].add(at + c * S::LANES))
                            } else {
                                S::zero()
                            }
                        })
                    });
                    for r in 0..4 {
                        let blk = rows[r].add(b * 210);
                        let h = S::load16(blk.add(128 + 32 * half + 16 * g));
                        let h = match t {
                            0 => S::and8(h, three),
                            1 => S::and8(S::shr8::<2>(h), three),
                            2 => S::and8(S::shr8::<4>(h), three),
                            _ => S::shr8::<6>(h),
                        };
                        let l = S::load16(blk.add(64 * half + 16 * g + 32 * (t % 2)));
                        let l = if t < 2 {
                            S::and8(l, lo4)
                        } else {
                            S::shr8::<4>(l)
                        };
                        let q = S::sub8(S::or8(l, S::shl8::<4>(h)), off);
                        let grp = Group::<S> {
                            at: 0,
                            bytes: [q, q],
                            scale: 0.0,
                            min: 0.0,
                        };
                        let d = S::splat(ds[r][8 * half + g + 2 * t]);
                        for i in 0..M {
                            let mut v = S::mul(values::<S, { fmt::Q6K }>(&grp, 0), xv[i][0]);
                            for c in 1..per {
                                v = S::fma(values::<S, { fmt::Q6K }>(&grp, c), xv[i][c], v);
                            }
                            acc[r][i] = S::fma(v, d, acc[r][i]);
                        }
                    }
                }
            }
        }
    }
    for r in 0..4 {
        for i in 0..m.min(M) {
            sums[i][r] += S::sum(acc[r][i]);
        }
    }
}

/// [`dequant_blocks`] or [`dequant_half`] for a runtime format.
#[inline(always)]
pub unsafe fn dequant<S: Simd>(q: QType, row: *const u8, nb: usize, b0: usize, out: &mut [f32]) {
    match q {
        QType::F16 => dequant_half::<S>(false, row, b0, out),
        QType::BF16 => dequant_half::<S>(true, row, b0, out),
        QType::Q4_0 => dequant_blocks::<S, { fmt::Q4_0 }>(row, nb, b0, out),
        QType::Q4_1 => dequant_blocks::<S, { fmt::Q4_1 }>(row, nb, b0, out),
        QType::Q8_0 => dequant_blocks::<S, { fmt::Q8_0 }>(row, nb, b0, out),
        QType::Q4K => dequant_blocks::<S, { fmt::Q4K }>(row, nb, b0, out),
        QType::Q5K => dequant_blocks::<S, { fmt::Q5K }>(row, nb, b0, out),
        QType::Q6K => dequant_blocks::<S, { fmt::Q6K }>(row, nb, b0, out),
        _ => {}
    }
}

macro_rules! fused_entry {
    ($($name:ident = $m:literal),*) => {$(
        /// [`fused`] for this many activation rows and a runtime format.
        #[inline(always)]
        pub unsafe fn $name<S: Simd>(
            q: QType,
            rows: [*const u8; 4],
            nb: usize,
            a: &Acts,
            int: bool,
            sums: &mut [[f32; 4]],
            m: usize,
        ) {
            macro_rules! by_format {
                ($int:literal) => {
                    match q {
                        QType::Q4_0 => fused_planar::<S, { fmt::Q4_0 }, $m, $int>(rows, nb, a, sums, m),
                        QType::Q4_1 => fused_planar::<S, { fmt::Q4_1 }, $m, $int>(rows, nb, a, sums, m),
                        QType::Q8_0 => fused_planar::<S, { fmt::Q8_0 }, $m, $int>(rows, nb, a, sums, m),
                        QType::Q4K if !$int => fused_q4k::<S, $m>(rows, nb, a, sums, m),
                        QType::Q4K => fused::<S, { fmt::Q4K }, $m, $int>(rows, nb, a, sums, m),
                        QType::Q5K => fused::<S, { fmt::Q5K }, $m, $int>(rows, nb, a, sums, m),
                        QType::Q6K if !$int && S::LANES == 16 => fused_q6k::<S, $m>(rows, nb, a, sums, m),
                        QType::Q6K => fused::<S, { fmt::Q6K }, $m, $int>(rows, nb, a, sums, m),
                        _ => {}
                    }
                };
            }
            if int {
                by_format!(true)
            } else {
                by_format!(false)
            }
        }
    )*};
}

fused_entry!(fused1 = 1, fused2 = 2, fused4 = 4);

crate::simd::isa_fn!(
    /// [`dequant`] on `isa`.
    pub unsafe fn dequant_on(q: QType, row: *const u8, nb: usize, b0: usize, out: &mut [f32]) = dequant;
);

macro_rules! fused_on {
    ($($name:ident = $kernel:ident),*) => {$(
        crate::simd::isa_fn!(
            /// The fused kernel on `isa` (see [`fused`]).
            pub unsafe fn $name(
                q: QType,
                rows: [*const u8; 4],
                nb: usize,
                a: &Acts,
                int: bool,
                sums: &mut [[f32; 4]],
                m: usize,
            ) = $kernel;
        );
    )*};
}

fused_on!(fused1_on = fused1, fused2_on = fused2, fused4_on = fused4);
