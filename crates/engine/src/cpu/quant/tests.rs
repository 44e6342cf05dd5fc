//! Every format's kernels against dequantize-then-multiply (candle's reference
//! dequantizer, f64 sums), on random blocks, odd shapes and tails.

use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const ALL: [QType; 13] = [
    QType::F32,
    QType::F16,
    QType::BF16,
    QType::Q4_0,
    QType::Q4_1,
    QType::Q5_0,
    QType::Q5_1,
    QType::Q8_0,
    QType::Q2K,
    QType::Q3K,
    QType::Q4K,
    QType::Q5K,
    QType::Q6K,
];

/// Offsets of a block's f16 fields (scales), which must be finite.
fn f16_fields(q: QType) -> &'static [usize] {
    match q {
        QType::Q4_0 | QType::Q5_0 | QType::Q8_0 => &[0],
        QType::Q4_1 | QType::Q5_1 | QType::Q4K | QType::Q5K => &[0, 2],
        QType::Q2K => &[80, 82],
        QType::Q3K => &[108],
        QType::Q6K => &[208],
        QType::F32 | QType::F16 | QType::BF16 => &[],
    }
}

/// Random but valid bytes for `rows × cols` weights of format `q`.
fn random_raw(q: QType, rows: usize, cols: usize, rng: &mut StdRng) -> Vec<u8> {
    let nblocks = rows * cols / q.block_elems();
    let bb = q.block_bytes();
    let mut raw: Vec<u8> = (0..nblocks * bb).map(|_| rng.random()).collect();
    let put16 = |raw: &mut [u8], at: usize, v: f32, bf: bool| {
        let b = if bf {
            half::bf16::from_f32(v).to_le_bytes()
        } else {
            half::f16::from_f32(v).to_le_bytes()
        };
        raw[at..at + 2].copy_from_slice(&b);
    };
    match q {
        QType::F32 => {
            for c in raw.chunks_exact_mut(4) {
                c.copy_from_slice(&rng.random_range(-1.0f32..1.0).to_le_bytes());
            }
        }
        QType::F16 | QType::BF16 => {
            for i in 0..nblocks {
                let v = rng.random_range(-1.0f32..1.0);
                put16(&mut raw, 2 * i, v, q == QType::BF16);
            }
        }
        _ => {
            for b in 0..nblocks {
                for &off in f16_fields(q) {
                    let v = rng.random_range(-0.05f32..0.05);
                    put16(&mut raw, b * bb + off, v, false);
                }
            }
        }
    }
    raw
}

/// `raw` (GGUF block layout) dequantized by the reference, from a 2-aligned copy.
fn reference_values(q: QType, raw: &[u8], len: usize) -> Vec<f32> {
    let words: Vec<u16> = raw
        .chunks(2)
        .map(|b| u16::from_le_bytes([b[0], *b.get(1).unwrap_or(&0)]))
        .collect();
    // SAFETY: a u16 buffer viewed as its first raw.len() bytes.
    let bytes = unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), raw.len()) };
    let mut out = vec![0.0f32; len];
    dequant_reference(q, bytes, &mut out);
    out
}

/// Dequantize-then-multiply in f64 from the file's bytes `raw`.
fn reference(w: &QMatrix, raw: &[u8], x: &[f32], m: usize) -> Vec<f64> {
    let (n, k) = (w.rows(), w.cols());
    let dq = reference_values(w.qtype(), raw, n * k);
    let mut out = vec![0.0f64; m * n];
    for i in 0..m {
        for o in 0..n {
            out[i * n + o] = (0..k)
                .map(|j| f64::from(x[i * k + j]) * f64::from(dq[o * k + j]))
                .sum();
        }
    }
    out
}

#[test]
fn simd_dequantization_is_bit_exact() {
    let mut rng = StdRng::seed_from_u64(1);
    for q in ALL {
        let be = q.block_elems().max(32);
        let cols = be * 9;
        let raw = random_raw(q, 1, cols, &mut rng);
        let w = QMatrix::from_raw(q, 1, cols, &raw).unwrap();
        let want = reference_values(q, &raw, cols);
        assert!(want.iter().all(|v| v.is_finite()), "{q:?}");
        let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
        // Every instruction set this CPU has, whichever the dispatch picks.
        for on in Isa::available() {
            let mut got = vec![1.0f32; cols];
            w.dequant_row_chunk_on(on, 0, 0, &mut got);
            assert!(
                same(&got, &want),
                "{q:?} on {on:?}: the dequantizer differs from the reference"
            );
            // A chunk starting mid-row.
            let mut part = vec![0.0f32; cols - be];
            w.dequant_row_chunk_on(on, 0, be, &mut part);
            assert!(same(&part, &want[be..]), "{q:?} on {on:?}: a chunk differs");
        }
    }
}

#[test]
fn every_format_multiplies_like_dequantize_then_multiply() {
    let mut rng = StdRng::seed_from_u64(2);
    for q in ALL {
        let be = q.block_elems().max(32);
        // One block, a few blocks, and a width crossing the KC tile boundary with a tail.
        for cols in [be, 3 * be, (KC / be + 1) * be + be] {
            for (rows, ms) in [
                (1usize, &[1usize, 2][..]),
                (13, &[1, 3, 5, 8, 9, 33][..]),
                (PANEL + 7, &[4, 40][..]),
            ] {
                let raw = random_raw(q, rows, cols, &mut rng);
                let w = QMatrix::from_raw(q, rows, cols, &raw).unwrap();
                let raw = &raw;
                for (&m, on) in ms
                    .iter()
                    .flat_map(|m| Isa::available().into_iter().map(move |on| (m, on)))
                {
                    let x: Vec<f32> = (0..m * cols).map(|_| rng.random_range(-1.0..1.0)).collect();
                    let want = reference(&w, raw, &x, m);
                    for accumulate in [false, true] {
                        let init: Vec<f32> =
                            (0..m * rows).map(|_| rng.random_range(-1.0..1.0)).collect();
                        let mut out = init.clone();
                        linear_on(
                            on,
                            Numerics::Exact,
                            &mut out,
                            &x,
                            std::slice::from_ref(&w),
                            m,
                            accumulate,
                        );
                        for (idx, (&got, &w0)) in out.iter().zip(&want).enumerate() {
                            let want = w0
                                + if accumulate {
                                    f64::from(init[idx])
                                } else {
                                    0.0
                                };
                            let tol = 1e-4 * (1.0 + want.abs()) * (cols as f64).sqrt();
                            assert!(
                                (f64::from(got) - want).abs() <= tol,
                                "{q:?} on {on:?} rows {rows} cols {cols} m {m} acc {accumulate} [{idx}]: {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn fused_parts_of_different_formats_fill_their_columns() {
    let mut rng = StdRng::seed_from_u64(3);
    let cols = 256;
    let raws: Vec<(QType, Vec<u8>, usize)> = [
        (QType::Q4_1, 5),
        (QType::Q6K, 3),
        (QType::F32, 2),
        (QType::Q8_0, 6),
    ]
    .iter()
    .map(|&(q, rows)| (q, random_raw(q, rows, cols, &mut rng), rows))
    .collect();
    let parts: Vec<QMatrix> = raws
        .iter()
        .map(|(q, raw, rows)| QMatrix::from_raw(*q, *rows, cols, raw).unwrap())
        .collect();
    for m in [1, 6, 35] {
        let x: Vec<f32> = (0..m * cols).map(|_| rng.random_range(-1.0..1.0)).collect();
        let n: usize = parts.iter().map(QMatrix::rows).sum();
        let mut out = vec![0.0f32; m * n];
        linear(&mut out, &x, &parts, m, false);
        let mut col = 0;
        for (p, (_, raw, _)) in parts.iter().zip(&raws) {
            let want = reference(p, raw, &x, m);
            for i in 0..m {
                for o in 0..p.rows() {
                    let got = f64::from(out[i * n + col + o]);
                    assert!(
                        (got - want[i * p.rows() + o]).abs() < 1e-3,
                        "{:?} m {m}",
                        p.qtype()
                    );
                }
            }
            col += p.rows();
        }
    }
}

#[test]
fn rows_reorder_and_concatenate_by_bytes() {
    let mut rng = StdRng::seed_from_u64(4);
    let (rows, cols) = (6, 64);
    let raw = random_raw(QType::Q4_1, rows, cols, &mut rng);
    let w = QMatrix::from_raw(QType::Q4_1, rows, cols, &raw).unwrap();
    let order = [5, 0, 3, 1, 4, 2];
    let r = w.reorder_rows(&order);
    let (a, b) = (w.to_f32(), r.to_f32());
    for (i, &src) in order.iter().enumerate() {
        assert_eq!(b[i * cols..(i + 1) * cols], a[src * cols..(src + 1) * cols]);
    }
    let c = QMatrix::concat_rows(&[&w, &r]).unwrap();
    assert_eq!((c.rows(), c.nbytes()), (12, 2 * w.nbytes()));
    assert_eq!(c.to_f32()[..rows * cols], a[..]);
    let f = QMatrix::f32(1, cols, vec![0.5; cols]);
    assert!(QMatrix::concat_rows(&[&w, &f]).is_none(), "formats differ");
    assert_eq!(w.nbytes(), rows * cols / 32 * 20);
}

#[test]
fn malformed_raw_data_is_an_error() {
    assert!(matches!(
        QMatrix::from_raw(QType::Q4_0, 2, 48, &[0; 54]),
        Err(QuantError::PartialBlock { .. })
    ));
    assert!(matches!(
        QMatrix::from_raw(QType::Q8_0, 2, 64, &[0; 100]),
        Err(QuantError::Size { .. })
    ));
    assert_eq!(
        QType::from_ggml(candle_core::quantized::GgmlDType::Q8K),
        None
    );
    assert_eq!(
        QType::from_ggml(candle_core::quantized::GgmlDType::Q4K),
        Some(QType::Q4K)
    );
}

/// A row's result does not depend on the batch it is in, within each kernel: the
/// fused kernels (up to FUSED_MAX_M rows) and the tile kernels (more rows, and every
/// format without a fused kernel) each give the same bits whatever the batch size.
#[test]
fn batch_size_does_not_change_a_rows_bits_within_a_kernel() {
    let mut rng = StdRng::seed_from_u64(5);
    for (q, on) in [
        QType::Q4_0,
        QType::Q4_1,
        QType::Q8_0,
        QType::Q4K,
        QType::Q5K,
        QType::Q6K,
        QType::BF16,
    ]
    .into_iter()
    .flat_map(|q| Isa::available().into_iter().map(move |on| (q, on)))
    {
        let (rows, cols) = (9, 1536);
        let w = QMatrix::from_raw(q, rows, cols, &random_raw(q, rows, cols, &mut rng)).unwrap();
        let x: Vec<f32> = (0..16 * cols)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let row0 = |m: usize| {
            let mut out = vec![0.0f32; m * rows];
            linear_on(
                on,
                Numerics::Exact,
                &mut out,
                &x[..m * cols],
                std::slice::from_ref(&w),
                m,
                false,
            );
            out.truncate(rows);
            out
        };
        let fused = kernels::has_fused(q);
        let (alone, tiled) = (row0(1), row0(FUSED_MAX_M + 1));
        for m in 2..=16 {
            let want = if m <= FUSED_MAX_M || !fused {
                &alone
            } else {
                &tiled
            };
            let same = row0(m)
                .iter()
                .zip(want)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same,
                "{q:?} on {on:?}: row 0 in a batch of {m} differs from its kernel's other batches"
            );
        }
        // Across the two kernels: the same products in another order.
        for (a, b) in alone.iter().zip(&tiled) {
            assert!(
                (a - b).abs() <= 1e-4 * (1.0 + a.abs()),
                "{q:?} on {on:?}: {a} vs {b}"
            );
        }
    }
}

/// The integer path (`--cpu-numerics fast`) on every fused format and ISA: each
/// output within the bound its 8-bit activations allow (each value off by at most
/// half its block's step, so a row's error is at most Σ|w|·step/2), and the ISAs
/// agreeing with each other (the same integer products, summed in another order).
#[test]
fn fast_numerics_stay_within_the_activation_rounding_bound() {
    let mut rng = StdRng::seed_from_u64(9);
    for q in [
        QType::Q4_0,
        QType::Q4_1,
        QType::Q8_0,
        QType::Q4K,
        QType::Q5K,
    ] {
        let (rows, cols) = (7, 512);
        let raw = random_raw(q, rows, cols, &mut rng);
        let w = QMatrix::from_raw(q, rows, cols, &raw).unwrap();
        let wv = reference_values(q, &raw, rows * cols);
        // The integer path runs for one activation row (where it is faster).
        for m in [1] {
            let x: Vec<f32> = (0..m * cols).map(|_| rng.random_range(-1.0..1.0)).collect();
            let mut exact = vec![0.0f32; m * rows];
            linear_on(
                Isa::Scalar,
                Numerics::Exact,
                &mut exact,
                &x,
                std::slice::from_ref(&w),
                m,
                false,
            );
            let mut first: Option<Vec<f32>> = None;
            for on in Isa::available() {
                let mut fast = vec![0.0f32; m * rows];
                let mut differs = false;
                linear_on(
                    on,
                    Numerics::Fast,
                    &mut fast,
                    &x,
                    std::slice::from_ref(&w),
                    m,
                    false,
                );
                for i in 0..m {
                    for r in 0..rows {
                        let xr = &x[i * cols..(i + 1) * cols];
                        let bound: f32 = (0..cols)
                            .map(|j| {
                                let blk = &xr[j / 32 * 32..j / 32 * 32 + 32];
                                let step = blk.iter().fold(0.0f32, |a, v| a.max(v.abs())) / 127.0;
                                wv[r * cols + j].abs() * step / 2.0
                            })
                            .sum();
                        let (f, e) = (fast[i * rows + r], exact[i * rows + r]);
                        assert!(
                            (f - e).abs() <= bound * 1.01 + 1e-4 * (1.0 + e.abs()),
                            "{q:?} on {on:?} m {m} [{i},{r}]: fast {f} exact {e} bound {bound}"
                        );
                        differs |= f != e;
                    }
                }
                // The integer path ran: rounded activations change some output.
                assert!(
                    differs,
                    "{q:?} on {on:?} m {m}: fast equals exact everywhere"
                );
                match &first {
                    None => first = Some(fast),
                    Some(a) => {
                        for (a, b) in a.iter().zip(&fast) {
                            assert!(
                                (a - b).abs() <= 1e-4 * (1.0 + a.abs()),
                                "{q:?} {on:?}: {a} vs {b}"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn activations_quantize_to_eight_bits_per_block() {
    let x: Vec<f32> = (0..64).map(|i| (i as f32 - 20.0) * 0.25).collect();
    let (mut q, mut d) = (vec![0i8; 64], vec![0f32; 2]);
    kernels::quantize_q8(&x, &mut q, &mut d);
    assert_eq!(d[0], 20.0 * 0.25 / 127.0);
    assert_eq!(q[0], -127);
    for (j, v) in x.iter().enumerate() {
        let back = f32::from(q[j]) * d[j / 32];
        assert!(
            (back - v).abs() <= d[j / 32] / 2.0 + 1e-6,
            "{j}: {back} vs {v}"
        );
    }
    let (mut q, mut d) = (vec![1i8; 32], vec![1f32; 1]);
    kernels::quantize_q8(&[0.0; 32], &mut q, &mut d);
    assert!(d[0] == 0.0 && q.iter().all(|&v| v == 0));
}
