//! [`Simd`] for x86-64 AVX2 with FMA and F16C: eight f32 lanes.

use super::vector::{Simd, EXP_HI, EXP_LO, EXP_P, LN2_HI, LN2_LO, LOG2E};
use std::arch::x86_64::*;

/// AVX2 + FMA + F16C.
#[derive(Clone, Copy, Debug)]
pub struct Avx2;

impl Simd for Avx2 {
    const LANES: usize = 8;
    // 16 ymm registers: 2 × 4 accumulators, 4 weight vectors, 1 activation.
    const TILE_ROWS: usize = 2;
    type F = __m256;
    type B = __m128i;
    type D = __m256;

    #[inline(always)]
    unsafe fn zero() -> __m256 {
        _mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> __m256 {
        _mm256_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m256) {
        _mm256_storeu_ps(p, v)
    }
    #[inline(always)]
    unsafe fn add(a: __m256, b: __m256) -> __m256 {
        _mm256_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn sub(a: __m256, b: __m256) -> __m256 {
        _mm256_sub_ps(a, b)
    }
    #[inline(always)]
    unsafe fn mul(a: __m256, b: __m256) -> __m256 {
        _mm256_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
        _mm256_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn sum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }
    #[inline(always)]
    unsafe fn exp(x: __m256) -> __m256 {
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
        let mut p = _mm256_set1_ps(EXP_P[0]);
        for c in &EXP_P[1..] {
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
    #[inline(always)]
    unsafe fn load_f16(p: *const u8) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const u8) -> __m256 {
        let h = _mm_loadu_si128(p.cast());
        _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
    }

    #[inline(always)]
    unsafe fn load16(p: *const u8) -> __m128i {
        _mm_loadu_si128(p.cast())
    }
    #[inline(always)]
    unsafe fn splat8(x: u8) -> __m128i {
        _mm_set1_epi8(x as i8)
    }
    #[inline(always)]
    unsafe fn and8(a: __m128i, b: __m128i) -> __m128i {
        _mm_and_si128(a, b)
    }
    #[inline(always)]
    unsafe fn or8(a: __m128i, b: __m128i) -> __m128i {
        _mm_or_si128(a, b)
    }
    #[inline(always)]
    unsafe fn sub8(a: __m128i, b: __m128i) -> __m128i {
        _mm_sub_epi8(a, b)
    }
    #[inline(always)]
    unsafe fn shr8<const N: i32>(a: __m128i) -> __m128i {
        // A 16-bit shift, then the bits that crossed from the high byte cleared.
        _mm_and_si128(_mm_srli_epi16::<N>(a), _mm_set1_epi8((0xFFu8 >> N) as i8))
    }
    #[inline(always)]
    unsafe fn shl8<const N: i32>(a: __m128i) -> __m128i {
        _mm_and_si128(_mm_slli_epi16::<N>(a), _mm_set1_epi8((0xFFu8 << N) as i8))
    }
    #[inline(always)]
    unsafe fn u8_to_f(b: __m128i, part: usize) -> __m256 {
        let b = if part == 0 { b } else { _mm_srli_si128::<8>(b) };
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b))
    }
    #[inline(always)]
    unsafe fn i8_to_f(b: __m128i, part: usize) -> __m256 {
        let b = if part == 0 { b } else { _mm_srli_si128::<8>(b) };
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b))
    }

    #[inline(always)]
    unsafe fn dzero() -> __m256 {
        _mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn idot(w: [__m128i; 2], x: *const i8, half: bool, d: f32, acc: __m256) -> __m256 {
        idot256(w, x, half, d, acc)
    }
    #[inline(always)]
    unsafe fn dsum(v: __m256) -> f32 {
        Self::sum(v)
    }
}

/// [`Simd::idot`] in 256 bits (AVX-512 uses it as it is: a block is 32 bytes).
#[inline(always)]
pub(super) unsafe fn idot256(
    w: [__m128i; 2],
    x: *const i8,
    half: bool,
    d: f32,
    acc: __m256,
) -> __m256 {
    let (w, x) = if half {
        (
            _mm256_zextsi128_si256(w[0]),
            _mm256_zextsi128_si256(_mm_loadu_si128(x.cast())),
        )
    } else {
        (_mm256_set_m128i(w[1], w[0]), _mm256_loadu_si256(x.cast()))
    };
    // |w| (unsigned) times x with w's sign: maddubs' u8 × i8 pairs, summed to i32.
    let p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
    let p32 = _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
    _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(p32), acc)
}
