//! Every instruction set this CPU has against plain Rust: the primitives, and the
//! kernels written over them.

use super::*;

#[test]
fn the_cap_is_never_above_the_cpu() {
    assert_eq!(Isa::parse("AVX2"), Some(Isa::Avx2));
    assert_eq!(Isa::parse("bogus"), None);
    assert!(isa() <= detect());
    assert_eq!(Isa::available().last(), Some(&Isa::Scalar));
    // What scripts/test-neon.sh relies on: the NEON file is what the tests run there.
    #[cfg(target_arch = "aarch64")]
    assert_eq!(Isa::available(), vec![Isa::Neon, Isa::Scalar]);
}

#[test]
fn vector_exp_is_within_two_ulp_and_sums() {
    let xs: Vec<f32> = (0..4097).map(|i| -87.0 + i as f32 * 0.0215).collect();
    for on in Isa::available() {
        for len in [0usize, 1, 7, 16, 17, 4097] {
            let mut row = xs[..len].to_vec();
            // SAFETY: `on` is available.
            let sum = unsafe { exp_sub_sum_on(on, &mut row, 0.5) };
            let mut want_sum = 0.0f64;
            for (got, x) in row.iter().zip(&xs) {
                let want = f64::from(x - 0.5).exp();
                want_sum += want;
                let ulp = f64::from(f32::EPSILON) * want.max(f64::from(f32::MIN_POSITIVE));
                assert!(
                    (f64::from(*got) - want).abs() <= 2.0 * ulp + 1e-38,
                    "{on:?}: exp({x} - 0.5) = {got}, want {want}"
                );
            }
            assert!(
                (f64::from(sum) - want_sum).abs() <= 1e-5 * want_sum.max(1.0),
                "{on:?}: len {len}"
            );
        }
        let mut big = vec![200.0f32, -200.0];
        // SAFETY: as above.
        unsafe { exp_sub_sum_on(on, &mut big, 0.0) };
        assert!(
            big[0].is_finite() && big[1] >= 0.0,
            "{on:?}: clamped, never NaN: {big:?}"
        );
    }
}

#[test]
fn dot_and_axpy_match_plain_sums() {
    for on in Isa::available() {
        for n in [0usize, 1, 7, 8, 16, 33, 70] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let want: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            // SAFETY: `on` is available.
            let got = unsafe { dot_on(on, &a, &b) };
            assert!((got - want).abs() < 1e-5, "{on:?} dot n={n}");
            let mut y = b.clone();
            // SAFETY: as above.
            unsafe { axpy_on(on, &mut y, 0.5, &a) };
            for i in 0..n {
                assert!((y[i] - (b[i] + 0.5 * a[i])).abs() < 1e-6, "{on:?} axpy");
            }
        }
    }
}

/// The byte primitives on every ISA give the scalar implementation's values.
#[inline(always)]
unsafe fn unpack<S: Simd>(bytes: &[u8; 16]) -> Vec<f32> {
    let b = S::load16(bytes.as_ptr());
    let mut out = Vec::new();
    let mut put = |v: S::F| {
        let mut buf = [0.0f32; 16];
        S::store(buf.as_mut_ptr(), v);
        out.extend_from_slice(&buf[..S::LANES]);
    };
    let h: Vec<u8> = (0..32).map(|i| bytes[i % 16] ^ (i as u8)).collect();
    for kind in 0..6 {
        for part in 0..16 / S::LANES {
            put(match kind {
                0 => S::u8_to_f(S::and8(b, S::splat8(0x0F)), part),
                1 => S::u8_to_f(S::shr8::<4>(b), part),
                2 => S::u8_to_f(S::shl8::<4>(S::shr8::<6>(b)), part),
                3 => S::i8_to_f(S::sub8(S::or8(b, S::splat8(1)), S::splat8(32)), part),
                4 => S::load_f16(h.as_ptr().add(2 * part * S::LANES)),
                _ => S::load_bf16(h.as_ptr().add(2 * part * S::LANES)),
            });
        }
    }
    out
}

isa_fn!(
    unsafe fn unpack_on(bytes: &[u8; 16]) -> Vec<f32> = unpack;
);

#[test]
fn byte_primitives_agree_across_isas() {
    let bytes: [u8; 16] = std::array::from_fn(|i| (i as u8).wrapping_mul(73).wrapping_add(5));
    // SAFETY: the scalar implementation runs anywhere.
    let want = unsafe { unpack::<scalar::Scalar>(&bytes) };
    for on in Isa::available() {
        // SAFETY: `on` is available.
        let got = unsafe { unpack_on(on, &bytes) };
        assert_eq!(
            got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "{on:?}"
        );
    }
}
