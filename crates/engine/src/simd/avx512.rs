//! [`Simd`] for x86-64 AVX-512 (F, BW, VL, with AVX2, FMA and F16C): sixteen f32 lanes.

use super::avx2::idot256;
use super::vector::Simd;
use super::vector::{EXP_HI, EXP_LO, EXP_P, LN2_HI, LN2_LO, LOG2E};
use std::arch::x86_64::*;

/// AVX-512F/BW/VL.
#[derive(Clone, Copy, Debug)]
pub struct Avx512;

impl Simd for Avx512 {
    const LANES: usize = 16;
    // 32 zmm registers: 6 × 4 accumulators, 4 weight vectors, 1 activation.
    const TILE_ROWS: usize = 6;
    type F = __m512;
    type B = __m128i;
    type D = __m256;

    #[inline(always)]
    unsafe fn zero() -> __m512 {
        _mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> __m512 {
        _mm512_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m512) {
        _mm512_storeu_ps(p, v)
    }
    #[inline(always)]
    unsafe fn add(a: __m512, b: __m512) -> __m512 {
        _mm512_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn sub(a: __m512, b: __m512) -> __m512 {
        _mm512_sub_ps(a, b)
    }
    #[inline(always)]
    unsafe fn mul(a: __m512, b: __m512) -> __m512 {
        _mm512_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
        _mm512_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn sum(v: __m512) -> f32 {
        _mm512_reduce_add_ps(v)
    }
    #[inline(always)]
    unsafe fn exp(x: __m512) -> __m512 {
        let x = _mm512_min_ps(
            _mm512_max_ps(x, _mm512_set1_ps(EXP_LO)),
            _mm512_set1_ps(EXP_HI),
        );
        let n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(LOG2E)), 0);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
        let mut p = _mm512_set1_ps(EXP_P[0]);
        for c in &EXP_P[1..] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
        }
        let r2 = _mm512_mul_ps(r, r);
        let y = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0)));
        _mm512_scalef_ps(y, n)
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const u8) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()))
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const u8) -> __m512 {
        let h = _mm256_loadu_si256(p.cast());
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
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
        _mm_and_si128(_mm_srli_epi16::<N>(a), _mm_set1_epi8((0xFFu8 >> N) as i8))
    }
    #[inline(always)]
    unsafe fn shl8<const N: i32>(a: __m128i) -> __m128i {
        _mm_and_si128(_mm_slli_epi16::<N>(a), _mm_set1_epi8((0xFFu8 << N) as i8))
    }
    #[inline(always)]
    unsafe fn u8_to_f(b: __m128i, _part: usize) -> __m512 {
        _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b))
    }
    #[inline(always)]
    unsafe fn i8_to_f(b: __m128i, _part: usize) -> __m512 {
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b))
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
        super::avx2::Avx2::sum(v)
    }
}
