//! [`Simd`] in portable Rust: eight lanes as arrays, left to the compiler's own
//! vectorisation for the build target. The reference the other ISAs are tested
//! against, and what every machine without AVX2 runs.

use super::vector::Simd;

/// Portable Rust.
#[derive(Clone, Copy, Debug)]
pub struct Scalar;

const L: usize = 8;

#[inline(always)]
fn map(a: [f32; L], f: impl Fn(f32) -> f32) -> [f32; L] {
    std::array::from_fn(|i| f(a[i]))
}

#[inline(always)]
fn zip(a: [f32; L], b: [f32; L], f: impl Fn(f32, f32) -> f32) -> [f32; L] {
    std::array::from_fn(|i| f(a[i], b[i]))
}

impl Simd for Scalar {
    const LANES: usize = L;
    const TILE_ROWS: usize = 2;
    type F = [f32; L];
    type B = [u8; 16];
    type D = [f32; L];

    #[inline(always)]
    unsafe fn zero() -> [f32; L] {
        [0.0; L]
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> [f32; L] {
        [x; L]
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> [f32; L] {
        std::ptr::read_unaligned(p.cast())
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: [f32; L]) {
        std::ptr::write_unaligned(p.cast(), v)
    }
    #[inline(always)]
    unsafe fn add(a: [f32; L], b: [f32; L]) -> [f32; L] {
        zip(a, b, |x, y| x + y)
    }
    #[inline(always)]
    unsafe fn sub(a: [f32; L], b: [f32; L]) -> [f32; L] {
        zip(a, b, |x, y| x - y)
    }
    #[inline(always)]
    unsafe fn mul(a: [f32; L], b: [f32; L]) -> [f32; L] {
        zip(a, b, |x, y| x * y)
    }
    #[inline(always)]
    unsafe fn fma(a: [f32; L], b: [f32; L], c: [f32; L]) -> [f32; L] {
        // Separate multiply and add: without FMA hardware `mul_add` is a libm call.
        std::array::from_fn(|i| a[i] * b[i] + c[i])
    }
    #[inline(always)]
    unsafe fn sum(v: [f32; L]) -> f32 {
        // Pairwise, so the result does not depend on the lane count's parity.
        let s4: [f32; 4] = std::array::from_fn(|i| v[i] + v[i + 4]);
        (s4[0] + s4[2]) + (s4[1] + s4[3])
    }
    #[inline(always)]
    unsafe fn exp(v: [f32; L]) -> [f32; L] {
        // Clamped as the vector versions are: never infinite, never NaN.
        map(v, |x| x.clamp(-87.336_55, 88.376_26).exp())
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const u8) -> [f32; L] {
        std::array::from_fn(|i| {
            half::f16::from_bits(std::ptr::read_unaligned(p.add(2 * i).cast::<u16>())).to_f32()
        })
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const u8) -> [f32; L] {
        std::array::from_fn(|i| {
            f32::from_bits(u32::from(std::ptr::read_unaligned(p.add(2 * i).cast::<u16>())) << 16)
        })
    }

    #[inline(always)]
    unsafe fn load16(p: *const u8) -> [u8; 16] {
        std::ptr::read_unaligned(p.cast())
    }
    #[inline(always)]
    unsafe fn splat8(x: u8) -> [u8; 16] {
        [x; 16]
    }
    #[inline(always)]
    unsafe fn and8(a: [u8; 16], b: [u8; 16]) -> [u8; 16] {
        std::array::from_fn(|i| a[i] & b[i])
    }
    #[inline(always)]
    unsafe fn or8(a: [u8; 16], b: [u8; 16]) -> [u8; 16] {
        std::array::from_fn(|i| a[i] | b[i])
    }
    #[inline(always)]
    unsafe fn sub8(a: [u8; 16], b: [u8; 16]) -> [u8; 16] {
        std::array::from_fn(|i| a[i].wrapping_sub(b[i]))
    }
    #[inline(always)]
    unsafe fn shr8<const N: i32>(a: [u8; 16]) -> [u8; 16] {
        std::array::from_fn(|i| a[i] >> N)
    }
    #[inline(always)]
    unsafe fn shl8<const N: i32>(a: [u8; 16]) -> [u8; 16] {
        std::array::from_fn(|i| a[i] << N)
    }
    #[inline(always)]
    unsafe fn u8_to_f(b: [u8; 16], part: usize) -> [f32; L] {
        std::array::from_fn(|i| f32::from(b[part * L + i]))
    }
    #[inline(always)]
    unsafe fn i8_to_f(b: [u8; 16], part: usize) -> [f32; L] {
        std::array::from_fn(|i| f32::from(b[part * L + i] as i8))
    }

    #[inline(always)]
    unsafe fn dzero() -> [f32; L] {
        [0.0; L]
    }
    #[inline(always)]
    unsafe fn idot(w: [[u8; 16]; 2], x: *const i8, half: bool, d: f32, acc: [f32; L]) -> [f32; L] {
        let n = if half { 16 } else { 32 };
        let mut lanes = [0i32; L];
        for j in 0..n {
            let wv = w[j / 16][j % 16] as i8;
            lanes[(j / 4) % L] += i32::from(wv) * i32::from(*x.add(j));
        }
        std::array::from_fn(|i| acc[i] + d * lanes[i] as f32)
    }
    #[inline(always)]
    unsafe fn dsum(v: [f32; L]) -> f32 {
        v.iter().sum()
    }
}
