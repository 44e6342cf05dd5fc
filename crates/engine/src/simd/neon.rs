//! [`Simd`] for aarch64 NEON (Advanced SIMD, present on every aarch64 CPU): eight
//! f32 lanes as a pair of 128-bit registers, so the kernels' shapes (written for 8
//! or 16 lanes) hold unchanged, and NEON's 32 registers hold the pairs.

use super::vector::{Simd, EXP_HI, EXP_LO, EXP_P, LN2_HI, LN2_LO, LOG2E};
use std::arch::aarch64::*;

/// aarch64 Advanced SIMD.
#[derive(Clone, Copy, Debug)]
pub struct Neon;

/// Both halves through `f`.
#[inline(always)]
fn both(a: float32x4x2_t, f: impl Fn(float32x4_t) -> float32x4_t) -> float32x4x2_t {
    float32x4x2_t(f(a.0), f(a.1))
}

/// IEEE halves (four, widened to u32) as f32, bit for bit as `half` converts them:
/// the exponent and mantissa moved into place and rescaled by 2^112 (exact for
/// normals and subnormals), infinities and NaNs (quieted) by hand.
#[inline(always)]
unsafe fn f16x4_to_f32(h: uint32x4_t) -> float32x4_t {
    let sign = vshlq_n_u32::<16>(vandq_u32(h, vdupq_n_u32(0x8000)));
    let em = vandq_u32(h, vdupq_n_u32(0x7fff));
    let shifted = vshlq_n_u32::<13>(em);
    let scaled = vreinterpretq_u32_f32(vmulq_f32(
        vreinterpretq_f32_u32(shifted),
        vdupq_n_f32(f32::from_bits(0x7780_0000)),
    ));
    let nan = vandq_u32(vcgtq_u32(em, vdupq_n_u32(0x7c00)), vdupq_n_u32(0x0040_0000));
    let special = vorrq_u32(vorrq_u32(shifted, vdupq_n_u32(0x7f80_0000)), nan);
    let infnan = vcgeq_u32(em, vdupq_n_u32(0x7c00));
    vreinterpretq_f32_u32(vorrq_u32(vbslq_u32(infnan, special, scaled), sign))
}

impl Simd for Neon {
    const LANES: usize = 8;
    // 32 registers, two per vector: 2 × 4 accumulators, 4 weight vectors, 1 activation.
    const TILE_ROWS: usize = 2;
    type F = float32x4x2_t;
    type B = uint8x16_t;
    type D = float32x4x2_t;

    #[inline(always)]
    unsafe fn zero() -> float32x4x2_t {
        float32x4x2_t(vdupq_n_f32(0.0), vdupq_n_f32(0.0))
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> float32x4x2_t {
        float32x4x2_t(vdupq_n_f32(x), vdupq_n_f32(x))
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> float32x4x2_t {
        float32x4x2_t(vld1q_f32(p), vld1q_f32(p.add(4)))
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: float32x4x2_t) {
        vst1q_f32(p, v.0);
        vst1q_f32(p.add(4), v.1);
    }
    #[inline(always)]
    unsafe fn add(a: float32x4x2_t, b: float32x4x2_t) -> float32x4x2_t {
        float32x4x2_t(vaddq_f32(a.0, b.0), vaddq_f32(a.1, b.1))
    }
    #[inline(always)]
    unsafe fn sub(a: float32x4x2_t, b: float32x4x2_t) -> float32x4x2_t {
        float32x4x2_t(vsubq_f32(a.0, b.0), vsubq_f32(a.1, b.1))
    }
    #[inline(always)]
    unsafe fn mul(a: float32x4x2_t, b: float32x4x2_t) -> float32x4x2_t {
        float32x4x2_t(vmulq_f32(a.0, b.0), vmulq_f32(a.1, b.1))
    }
    #[inline(always)]
    unsafe fn fma(a: float32x4x2_t, b: float32x4x2_t, c: float32x4x2_t) -> float32x4x2_t {
        float32x4x2_t(vfmaq_f32(c.0, a.0, b.0), vfmaq_f32(c.1, a.1, b.1))
    }
    #[inline(always)]
    unsafe fn sum(v: float32x4x2_t) -> f32 {
        vaddvq_f32(vaddq_f32(v.0, v.1))
    }
    #[inline(always)]
    unsafe fn exp(x: float32x4x2_t) -> float32x4x2_t {
        both(x, |x| {
            let x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(EXP_LO)), vdupq_n_f32(EXP_HI));
            let n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(LOG2E)));
            let r = vfmsq_f32(x, n, vdupq_n_f32(LN2_HI));
            let r = vfmsq_f32(r, n, vdupq_n_f32(LN2_LO));
            let mut p = vdupq_n_f32(EXP_P[0]);
            for c in &EXP_P[1..] {
                p = vfmaq_f32(vdupq_n_f32(*c), p, r);
            }
            let r2 = vmulq_f32(r, r);
            let y = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0)), p, r2);
            // 2^n through the exponent bits (n is within the normal range after the clamp).
            let e = vshlq_n_s32::<23>(vaddq_s32(vcvtnq_s32_f32(n), vdupq_n_s32(127)));
            vmulq_f32(y, vreinterpretq_f32_s32(e))
        })
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const u8) -> float32x4x2_t {
        let h = vld1q_u16(p.cast());
        float32x4x2_t(
            f16x4_to_f32(vmovl_u16(vget_low_u16(h))),
            f16x4_to_f32(vmovl_u16(vget_high_u16(h))),
        )
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const u8) -> float32x4x2_t {
        let h = vld1q_u16(p.cast());
        float32x4x2_t(
            vreinterpretq_f32_u32(vshll_n_u16::<16>(vget_low_u16(h))),
            vreinterpretq_f32_u32(vshll_n_u16::<16>(vget_high_u16(h))),
        )
    }

    #[inline(always)]
    unsafe fn load16(p: *const u8) -> uint8x16_t {
        vld1q_u8(p)
    }
    #[inline(always)]
    unsafe fn splat8(x: u8) -> uint8x16_t {
        vdupq_n_u8(x)
    }
    #[inline(always)]
    unsafe fn and8(a: uint8x16_t, b: uint8x16_t) -> uint8x16_t {
        vandq_u8(a, b)
    }
    #[inline(always)]
    unsafe fn or8(a: uint8x16_t, b: uint8x16_t) -> uint8x16_t {
        vorrq_u8(a, b)
    }
    #[inline(always)]
    unsafe fn sub8(a: uint8x16_t, b: uint8x16_t) -> uint8x16_t {
        vsubq_u8(a, b)
    }
    #[inline(always)]
    unsafe fn shr8<const N: i32>(a: uint8x16_t) -> uint8x16_t {
        vshrq_n_u8::<N>(a)
    }
    #[inline(always)]
    unsafe fn shl8<const N: i32>(a: uint8x16_t) -> uint8x16_t {
        vshlq_n_u8::<N>(a)
    }
    #[inline(always)]
    unsafe fn u8_to_f(b: uint8x16_t, part: usize) -> float32x4x2_t {
        let h = vmovl_u8(if part == 0 {
            vget_low_u8(b)
        } else {
            vget_high_u8(b)
        });
        float32x4x2_t(
            vcvtq_f32_u32(vmovl_u16(vget_low_u16(h))),
            vcvtq_f32_u32(vmovl_u16(vget_high_u16(h))),
        )
    }
    #[inline(always)]
    unsafe fn i8_to_f(b: uint8x16_t, part: usize) -> float32x4x2_t {
        let b = vreinterpretq_s8_u8(b);
        let h = vmovl_s8(if part == 0 {
            vget_low_s8(b)
        } else {
            vget_high_s8(b)
        });
        float32x4x2_t(
            vcvtq_f32_s32(vmovl_s16(vget_low_s16(h))),
            vcvtq_f32_s32(vmovl_s16(vget_high_s16(h))),
        )
    }

    #[inline(always)]
    unsafe fn dzero() -> float32x4x2_t {
        Self::zero()
    }
    #[inline(always)]
    unsafe fn idot(
        w: [uint8x16_t; 2],
        x: *const i8,
        half: bool,
        d: f32,
        acc: float32x4x2_t,
    ) -> float32x4x2_t {
        // 8 × 8 → 16-bit products (|w| ≤ 128, |x| ≤ 127: no overflow), pairwise to 32.
        let dot16 = |w: uint8x16_t, x: int8x16_t| {
            let w = vreinterpretq_s8_u8(w);
            let lo = vmull_s8(vget_low_s8(w), vget_low_s8(x));
            let hi = vmull_high_s8(w, x);
            vcvtq_f32_s32(vaddq_s32(vpaddlq_s16(lo), vpaddlq_s16(hi)))
        };
        let dv = vdupq_n_f32(d);
        let a0 = vfmaq_f32(acc.0, dv, dot16(w[0], vld1q_s8(x)));
        let a1 = if half {
            acc.1
        } else {
            vfmaq_f32(acc.1, dv, dot16(w[1], vld1q_s8(x.add(16))))
        };
        float32x4x2_t(a0, a1)
    }
    #[inline(always)]
    unsafe fn dsum(v: float32x4x2_t) -> f32 {
        Self::sum(v)
    }
}
