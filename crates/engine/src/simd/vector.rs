//! The seam itself: the vector primitives every ISA file implements.

// Cephes expf: exp(x) = 2^n · e^r with n = round(x / ln 2), |r| ≤ ln 2 / 2.
pub(super) const EXP_HI: f32 = 88.376_26;
pub(super) const EXP_LO: f32 = -87.336_55;
pub(super) const LOG2E: f32 = std::f32::consts::LOG2_E;
pub(super) const LN2_HI: f32 = 0.693_359_4;
pub(super) const LN2_LO: f32 = -2.121_944_4e-4;
pub(super) const EXP_P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_2e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    0.166_666_65,
    0.5,
];

/// Vector primitives of one instruction set: `LANES` f32 lanes, and 16-byte vectors
/// for unpacking quantized weights. Every method is `unsafe`: it may only run on a
/// CPU that has the instruction set, inside a function compiled for it (the
/// `isa_fn!` dispatch), with pointers valid for what it reads or writes.
#[allow(clippy::missing_safety_doc)] // the trait's doc states the one contract
pub trait Simd: Copy + 'static {
    /// f32 lanes of [`Simd::F`].
    const LANES: usize;
    /// Activation rows the register tile holds beside four weight rows.
    const TILE_ROWS: usize;
    /// `LANES` f32 values.
    type F: Copy;
    /// 16 bytes.
    type B: Copy;
    /// Eight f32 lanes accumulating integer dot products (256 bits on every x86
    /// ISA: a 32-value block is what one integer product covers).
    type D: Copy;

    /// All zeros.
    unsafe fn zero() -> Self::F;
    /// `x` in every lane.
    unsafe fn splat(x: f32) -> Self::F;
    /// `LANES` values from `p` (unaligned).
    unsafe fn load(p: *const f32) -> Self::F;
    /// `LANES` values to `p` (unaligned).
    unsafe fn store(p: *mut f32, v: Self::F);
    /// `a + b`.
    unsafe fn add(a: Self::F, b: Self::F) -> Self::F;
    /// `a - b`.
    unsafe fn sub(a: Self::F, b: Self::F) -> Self::F;
    /// `a · b`.
    unsafe fn mul(a: Self::F, b: Self::F) -> Self::F;
    /// `a · b + c` (fused where the ISA has it).
    unsafe fn fma(a: Self::F, b: Self::F, c: Self::F) -> Self::F;
    /// The sum of the lanes.
    unsafe fn sum(v: Self::F) -> f32;
    /// `exp(v)` (Cephes' single precision: within 2 ulp; clamped, never NaN).
    unsafe fn exp(v: Self::F) -> Self::F;
    /// `LANES` IEEE halves from `p` (unaligned) as f32.
    unsafe fn load_f16(p: *const u8) -> Self::F;
    /// `LANES` bfloat16 values from `p` (unaligned) as f32.
    unsafe fn load_bf16(p: *const u8) -> Self::F;

    /// 16 bytes from `p` (unaligned).
    unsafe fn load16(p: *const u8) -> Self::B;
    /// `x` in every byte.
    unsafe fn splat8(x: u8) -> Self::B;
    /// Bitwise and.
    unsafe fn and8(a: Self::B, b: Self::B) -> Self::B;
    /// Bitwise or.
    unsafe fn or8(a: Self::B, b: Self::B) -> Self::B;
    /// Bytewise `a - b` (wrapping).
    unsafe fn sub8(a: Self::B, b: Self::B) -> Self::B;
    /// Each byte shifted right by `N` bits (zeros in).
    unsafe fn shr8<const N: i32>(a: Self::B) -> Self::B;
    /// Each byte shifted left by `N` bits (zeros in).
    unsafe fn shl8<const N: i32>(a: Self::B) -> Self::B;
    /// Bytes `part·LANES ..` of `b`, unsigned, as f32.
    unsafe fn u8_to_f(b: Self::B, part: usize) -> Self::F;
    /// Bytes `part·LANES ..` of `b`, signed, as f32.
    unsafe fn i8_to_f(b: Self::B, part: usize) -> Self::F;

    /// All-zero integer-dot accumulator.
    unsafe fn dzero() -> Self::D;
    /// `acc + d · (w · x)` spread over eight lanes: `w` the 32 signed bytes of
    /// `w[0]` then `w[1]` (only `w[0]`'s 16 when `half`), `x` as many signed bytes,
    /// each `|w| ≤ 128` so no pair sum saturates (llama.cpp's `maddubs` form: |w| ×
    /// sign(x, w)).
    unsafe fn idot(w: [Self::B; 2], x: *const i8, half: bool, d: f32, acc: Self::D) -> Self::D;
    /// The sum of the lanes of an integer-dot accumulator.
    unsafe fn dsum(v: Self::D) -> f32;
}
