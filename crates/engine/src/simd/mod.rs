//! The ISA seam (candle's `cpu/` shape): one trait of vector primitives, [`Simd`],
//! implemented once per instruction set (`avx512.rs`, `avx2.rs`, `neon.rs`, `scalar.rs`), and
//! the host kernels written once over it (`kernels.rs`: dot, axpy, the softmax's
//! `exp`, the register tiles, the fused decode and the exact dequantizers of the
//! quantized weights in `cpu/quant`). Which instruction set runs is decided once for
//! the process ([`isa`]), capped by `REPRISE_CPU_ISA` so every path can be tested on
//! any machine; an entry point here dispatches to the kernel compiled for it.
//!
//! aarch64 builds run `neon.rs`; any other target the scalar implementation (the
//! compiler's own vectorisation of it).

#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
mod isa;
pub mod kernels;
#[cfg(target_arch = "aarch64")]
pub mod neon;
pub mod scalar;
mod vector;

pub use isa::{detect, isa, Isa};
pub use vector::Simd;

/// Declares an entry point that runs a kernel generic over [`Simd`] on a given
/// instruction set: for each ISA a function compiled for it whose body is the
/// kernel, so the kernel and its `#[inline(always)]` primitives inline into it (a
/// closure there would be inlined only when LLVM's size heuristics allow).
///
/// `isa_fn!(pub unsafe fn name(a: A, b: B) -> R = path::kernel);` declares
/// `unsafe fn name(isa: Isa, a: A, b: B) -> R`, calling `path::kernel::<S>(a, b)`.
/// The caller vouches that `isa` is one the CPU has (`isa()` and
/// `Isa::available()` only name those) and for the kernel's own contract.
#[macro_export]
#[doc(hidden)]
macro_rules! isa_fn {
    ($(#[$meta:meta])* $vis:vis unsafe fn $name:ident($($a:ident: $t:ty),* $(,)?) $(-> $r:ty)? = $($kernel:ident)::+;) => {
        $(#[$meta])*
        ///
        /// # Safety
        /// `isa` must be an instruction set the CPU has, and the kernel's own
        /// contract (its pointers and lengths) must hold.
        #[allow(clippy::too_many_arguments)]
        $vis unsafe fn $name(isa: $crate::simd::Isa, $($a: $t),*) $(-> $r)? {
            match isa {
                #[cfg(target_arch = "x86_64")]
                $crate::simd::Isa::Avx512 => {
                    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
                    #[allow(clippy::too_many_arguments)]
                    unsafe fn on($($a: $t),*) $(-> $r)? {
                        $($kernel)::+::<$crate::simd::avx512::Avx512>($($a),*)
                    }
                    on($($a),*)
                }
                #[cfg(target_arch = "x86_64")]
                $crate::simd::Isa::Avx2 => {
                    #[target_feature(enable = "avx2,fma,f16c")]
                    #[allow(clippy::too_many_arguments)]
                    unsafe fn on($($a: $t),*) $(-> $r)? {
                        $($kernel)::+::<$crate::simd::avx2::Avx2>($($a),*)
                    }
                    on($($a),*)
                }
                #[cfg(target_arch = "aarch64")]
                $crate::simd::Isa::Neon => {
                    #[target_feature(enable = "neon")]
                    #[allow(clippy::too_many_arguments)]
                    unsafe fn on($($a: $t),*) $(-> $r)? {
                        $($kernel)::+::<$crate::simd::neon::Neon>($($a),*)
                    }
                    on($($a),*)
                }
                _ => $($kernel)::+::<$crate::simd::scalar::Scalar>($($a),*),
            }
        }
    };
}

pub use isa_fn;

isa_fn!(
    /// [`kernels::dot`] on `isa`.
    pub unsafe fn dot_on(a: &[f32], b: &[f32]) -> f32 = kernels::dot;
);
isa_fn!(
    /// [`kernels::axpy`] on `isa`.
    pub unsafe fn axpy_on(y: &mut [f32], a: f32, x: &[f32]) = kernels::axpy;
);
isa_fn!(
    /// [`kernels::exp_sub_sum`] on `isa`.
    pub unsafe fn exp_sub_sum_on(row: &mut [f32], max: f32) -> f32 = kernels::exp_sub_sum;
);
isa_fn!(
    /// `sums[i][r] += x[i] · w[r]` over `len` values, for `m` rows of `x` (row
    /// stride `x_stride`) and four weight rows, on `isa`: the register tiles of the
    /// streaming products. `x` must be valid for `m` rows of `len` values at stride
    /// `x_stride`, every `w[r]` for `len` values, and `sums` must have `m` entries.
    pub unsafe fn tile_on(
        x: *const f32,
        x_stride: usize,
        m: usize,
        w: [*const f32; 4],
        len: usize,
        sums: &mut [[f32; 4]],
    ) = kernels::tile;
);

/// Dot product of the common prefix of `a` and `b`.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: `isa()` names an ISA the CPU has; the slices bound the kernel.
    unsafe { dot_on(isa(), a, b) }
}

/// `y += a · x` over the common prefix.
#[inline]
pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    // SAFETY: as `dot`.
    unsafe { axpy_on(isa(), y, a, x) }
}

/// `row[i] = exp(row[i] - max)` for every entry; returns their sum. The softmax of
/// attention and of the sampler: vectorised because a prefill of `n` tokens takes
/// `n²/2` exponentials per head, which a scalar `expf` makes a large part of its time.
#[inline]
pub fn exp_sub_sum(row: &mut [f32], max: f32) -> f32 {
    // SAFETY: as `dot`.
    unsafe { exp_sub_sum_on(isa(), row, max) }
}

#[cfg(test)]
mod tests;
