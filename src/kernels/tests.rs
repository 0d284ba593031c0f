//! Each kernel against a dequantize-then-f64-matmul reference, scalar against AVX2 and
//! AVX-512 (every level this CPU runs, whatever `STEERLAB_ISA` says), odd shapes and
//! batch invariance.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use super::*;

/// Deterministic pseudo-random values in [-1, 1) (no RNG dependency in the reference).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// A [n, k] weight quantized by candle (ggml's reference quantizers), its GGUF bytes,
/// and candle's own dequantization of those bytes.
fn weight(dtype: GgmlDType, n: usize, k: usize, seed: u64) -> (Vec<u8>, Vec<f32>) {
    let mut w = values(n * k, seed);
    // Rows with different scales, and a zero row.
    for (j, row) in w.chunks_exact_mut(k).enumerate() {
        let s = 0.05 * (1 + j % 5) as f32;
        row.iter_mut().for_each(|v| *v *= s);
        if j == 2 {
            row.iter_mut().for_each(|v| *v = 0.0);
        }
    }
    let t = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&t, dtype).unwrap();
    let raw = q.data().unwrap().to_vec();
    let deq = q
        .dequantize(&Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    (raw, deq)
}

fn acts(m: usize, k: usize, seed: u64) -> Vec<f32> {
    let mut x = values(m * k, seed);
    // Outliers, as residual streams have.
    for (i, v) in x.iter_mut().enumerate() {
        if i % 97 == 5 {
            *v *= 20.0;
        }
    }
    x
}

const CASES: &[(GgmlDType, Format)] = &[
    (GgmlDType::Q4_0, Format::Q4_0),
    (GgmlDType::Q4_1, Format::Q4_1),
    (GgmlDType::Q5_0, Format::Q5_0),
    (GgmlDType::Q8_0, Format::Q8_0),
    (GgmlDType::Q4K, Format::Q4K),
    (GgmlDType::Q6K, Format::Q6K),
];

/// Shapes (n, k) per format: k not a multiple of 256 where the format allows, n not a
/// multiple of 8, odd and even numbers of 8-row groups (AVX-512 pairs them).
fn shapes(fmt: Format) -> Vec<(usize, usize)> {
    if fmt.block_len() == 256 {
        vec![(13, 256), (40, 512), (64, 256)]
    } else {
        vec![(13, 32), (8, 96), (40, 544), (64, 64)]
    }
}

#[test]
fn decoding_matches_candle_dequantization() {
    for &(dt, fmt) in CASES {
        for (n, k) in shapes(fmt) {
            let (raw, deq) = weight(dt, n, k, 7);
            let ql = QLinear::from_gguf(fmt, &raw, n, k).unwrap();
            // Scales from f16 fields stay f16; K-quant products d * sc need f32.
            let f16 = !matches!(fmt, Format::Q4K | Format::Q6K);
            assert_eq!(ql.f16_scales(), f16, "{}", fmt.name());
            let ours = ql.dequantize();
            for (i, (a, b)) in ours.iter().zip(&deq).enumerate() {
                // Q4_0 is d * (q - 8) in ggml and d * q - 8d here: one rounding apart.
                let tol = 1e-6 * b.abs().max(1e-3);
                assert!(
                    (a - b).abs() <= tol,
                    "{} [{n}, {k}] element {i}: {a} vs candle {b}",
                    fmt.name()
                );
            }
        }
    }
}

/// y = x · deqᵀ in f64, and the bound on what quantizing x to 8 bits can change:
/// sum over blocks of (d_x / 2) * sum |w|, plus f32 rounding of the products.
fn reference(x: &[f32], deq: &[f32], m: usize, n: usize, k: usize) -> (Vec<f64>, Vec<f64>) {
    let mut y = vec![0f64; m * n];
    let mut bound = vec![0f64; m * n];
    for i in 0..m {
        let xr = &x[i * k..(i + 1) * k];
        for j in 0..n {
            let wr = &deq[j * k..(j + 1) * k];
            let mut acc = 0f64;
            let mut b = 0f64;
            let mut mag = 0f64;
            for blk in 0..k / 32 {
                let xs = &xr[blk * 32..blk * 32 + 32];
                let ws = &wr[blk * 32..blk * 32 + 32];
                let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs())) as f64;
                let mut wabs = 0f64;
                for (xv, wv) in xs.iter().zip(ws) {
                    acc += *xv as f64 * *wv as f64;
                    wabs += wv.abs() as f64;
                    mag += (*xv as f64 * *wv as f64).abs();
                }
                b += amax / 127.0 / 2.0 * wabs;
            }
            y[i * n + j] = acc;
            bound[i * n + j] = b * 1.0001 + 1e-5 * mag + 1e-6;
        }
    }
    (y, bound)
}

fn isas() -> Vec<Isa> {
    let v = Isa::supported();
    eprintln!("kernel paths this CPU runs: {v:?}");
    v
}

#[test]
fn kernels_match_dequantized_reference() {
    for &(dt, fmt) in CASES {
        for (n, k) in shapes(fmt) {
            let (raw, deq) = weight(dt, n, k, 11);
            let ql = QLinear::from_gguf(fmt, &raw, n, k).unwrap();
            for m in [1, 3, 17] {
                let x = acts(m, k, 5 + m as u64);
                let (want, bound) = reference(&x, &deq, m, n, k);
                for isa in isas() {
                    let mut y = vec![0f32; m * n];
                    ql.forward_isa(isa, &x, m, &mut y).unwrap();
                    for (idx, ((got, w), b)) in y.iter().zip(&want).zip(&bound).enumerate() {
                        let err = (*got as f64 - w).abs();
                        assert!(
                            err <= *b,
                            "{} {isa:?} m={m} [{n}, {k}] out {idx}: {got} vs {w} (err {err:.3e} > bound {b:.3e})",
                            fmt.name()
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn every_isa_agrees_with_scalar_bitwise() {
    let paths = isas();
    if paths.len() == 1 {
        eprintln!("only the scalar kernels on this CPU: nothing to compare");
        return;
    }
    for &(dt, fmt) in CASES {
        let mut sh = shapes(fmt);
        sh.push((8 * 37 + 3, fmt.block_len() * 2)); // enough groups to split over threads
        for (n, k) in sh {
            for seed in [3, 4] {
                let (raw, _) = weight(dt, n, k, seed);
                let ql = QLinear::from_gguf(fmt, &raw, n, k).unwrap();
                for m in [1, 2, 3, 4, 5, 8, 17, 40] {
                    let x = acts(m, k, 9 + seed);
                    let mut a = vec![0f32; m * n];
                    ql.forward_isa(Isa::Scalar, &x, m, &mut a).unwrap();
                    for &isa in &paths[1..] {
                        let mut b = vec![0f32; m * n];
                        ql.forward_isa(isa, &x, m, &mut b).unwrap();
                        let same = a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits());
                        assert!(same, "{} m={m} [{n}, {k}]: scalar != {isa:?}", fmt.name());
                    }
                }
            }
        }
    }
}

#[test]
fn isa_levels_and_names() {
    assert_eq!(Isa::parse("AVX512"), Some(Isa::Avx512));
    assert_eq!(Isa::parse(" avx2 "), Some(Isa::Avx2));
    assert_eq!(Isa::parse("scalar"), Some(Isa::Scalar));
    assert_eq!(Isa::parse("sse2"), None);
    assert!(Isa::Scalar < Isa::Avx2 && Isa::Avx2 < Isa::Avx512);
    for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512] {
        assert_eq!(Isa::parse(isa.name()), Some(isa));
    }
    // The chosen level never exceeds the hardware's, and the hardware's is supported.
    assert!(Isa::detect() <= Isa::hardware());
    assert_eq!(Isa::supported().last(), Some(&Isa::hardware()));
    // What `STEERLAB_ISA` asked for (when set, e.g. by `make test-isa`) is applied.
    if let Some(cap) = std::env::var(ISA_ENV).ok().and_then(|v| Isa::parse(&v)) {
        assert_eq!(Isa::detect(), Isa::hardware().min(cap));
    } else {
        assert_eq!(Isa::detect(), Isa::hardware());
    }
}

/// A level above the CPU's is run at the CPU's level (never an illegal instruction).
#[test]
fn levels_above_the_cpu_fall_back() {
    let (raw, _) = weight(GgmlDType::Q4_1, 24, 64, 2);
    let ql = QLinear::from_gguf(Format::Q4_1, &raw, 24, 64).unwrap();
    let x = acts(3, 64, 1);
    let mut a = vec![0f32; 3 * 24];
    let mut b = vec![0f32; 3 * 24];
    ql.forward_isa(Isa::Scalar, &x, 3, &mut a).unwrap();
    ql.forward_isa(Isa::Avx512, &x, 3, &mut b).unwrap();
    assert_eq!(a, b);
}

#[test]
fn rows_are_batch_invariant() {
    // Large enough that the batched calls split over threads (features for 16 rows,
    // row chunks for 70 rows), while one row alone runs on one thread.
    for &(dt, fmt) in CASES {
        let (n, k) = (264, 512);
        let (raw, _) = weight(dt, n, k, 21);
        let ql = QLinear::from_gguf(fmt, &raw, n, k).unwrap();
        for m in [16, 70] {
            let x = acts(m, k, 4);
            for isa in isas() {
                let mut batch = vec![0f32; m * n];
                ql.forward_isa(isa, &x, m, &mut batch).unwrap();
                for r in [0, 1, 5, m - 1] {
                    let mut alone = vec![0f32; n];
                    ql.forward_isa(isa, &x[r * k..(r + 1) * k], 1, &mut alone)
                        .unwrap();
                    let same = alone
                        .iter()
                        .zip(&batch[r * n..(r + 1) * n])
                        .all(|(p, q)| p.to_bits() == q.to_bits());
                    assert!(
                        same,
                        "{} {isa:?}: row {r} alone != row {r} of a batch of {m}",
                        fmt.name()
                    );
                }
            }
        }
    }
}

#[test]
fn activation_quantization() {
    let mut x = vec![0f32; 64];
    x[0] = 1.0;
    x[1] = -0.5;
    x[2] = 0.25;
    x[3] = 1.0 / 256.0; // 0.496 steps: 0
    x[4] = -1.0 / 64.0; // -1.98 steps: -2
    let mut q = vec![0i8; 64];
    let mut d = vec![0f32; 2];
    let mut s = vec![0f32; 2];
    quantize_row(&x, &mut q, &mut d, &mut s);
    assert_eq!(d[0], 1.0 / 127.0);
    // -0.5 * 127 = -63.5 exactly: ties to even.
    assert_eq!(&q[..5], &[127, -64, 32, 0, -2]);
    assert_eq!(s[0], d[0] * (127 - 64 + 32 - 2) as f32);
    // An all-zero block has d = 0 and zero codes.
    assert_eq!((d[1], s[1]), (0.0, 0.0));
    assert!(q[32..].iter().all(|&v| v == 0));
}

#[test]
fn activation_quantization_scalar_equals_avx2() {
    if Isa::hardware() < Isa::Avx2 {
        return;
    }
    let k = 32 * 37;
    let mut x = acts(5, k, 8);
    x[40] = 0.0;
    x[64..96].iter_mut().for_each(|v| *v = 0.0); // a zero block
    x[100] = 1e-30;
    x[200] = -3e4;
    let a = QActs::new_isa(Isa::Scalar, &x, 5, k);
    let b = QActs::new_isa(Isa::Avx2, &x, 5, k);
    assert_eq!(a.q, b.q);
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&a.d), bits(&b.d));
    assert_eq!(bits(&a.s), bits(&b.s));
}

#[test]
fn bad_shapes_are_errors() {
    let (raw, _) = weight(GgmlDType::Q4_1, 8, 64, 1);
    assert!(QLinear::from_gguf(Format::Q4_1, &raw, 8, 48).is_err());
    assert!(QLinear::from_gguf(Format::Q4_1, &raw[1..], 8, 64).is_err());
    let ql = QLinear::from_gguf(Format::Q4_1, &raw, 8, 64).unwrap();
    let mut y = vec![0f32; 8];
    assert!(ql.forward(&[0.0; 63], 1, &mut y).is_err());
    assert!(ql.forward(&[0.0; 64], 1, &mut y[..7]).is_err());
}

/// The input gradient of a packed weight, dL/dx = g · W (W dequantized in blocks of
/// `GRAD_BLOCK_ROWS` rows), against an f64 reference on the dequantized weight; the dense
/// one likewise; shapes refused.
#[test]
fn grad_input_matches_dequantized_reference() {
    for &(dt, fmt) in CASES {
        // n spans two backward blocks and a partial one.
        for (n, k) in [
            (13, fmt.block_len()),
            (2 * dense::GRAD_BLOCK_ROWS + 5, 2 * fmt.block_len()),
        ] {
            let (raw, deq) = weight(dt, n, k, 3);
            let ql = QLinear::from_gguf(fmt, &raw, n, k).unwrap();
            let mut rows = vec![0f32; 3 * k];
            ql.dequantize_rows(n - 3, &mut rows).unwrap();
            assert_eq!(rows, deq[(n - 3) * k..]);
            for m in [0usize, 1, 6] {
                let g = values(m * n, 4);
                let gq = ql.grad_input(&g, m).unwrap();
                let gd = dense::grad_input(&g, &deq, m, n, k).unwrap();
                assert_eq!((gq.len(), gd.len()), (m * k, m * k));
                for i in 0..m * k {
                    let (r, c) = (i / k, i % k);
                    let want: f64 = (0..n)
                        .map(|j| g[r * n + j] as f64 * deq[j * k + c] as f64)
                        .sum();
                    let tol = 1e-5 * (1.0 + want.abs()) * (n as f64).sqrt();
                    for (name, got) in [("packed", gq[i]), ("dense", gd[i])] {
                        assert!(
                            (got as f64 - want).abs() <= tol,
                            "{} [{n}, {k}] m={m} {name}: {got} vs {want}",
                            fmt.name()
                        );
                    }
                }
            }
        }
    }
    let (raw, deq) = weight(GgmlDType::Q4_1, 8, 64, 1);
    let ql = QLinear::from_gguf(Format::Q4_1, &raw, 8, 64).unwrap();
    assert!(ql.grad_input(&[0.0; 7], 1).is_err());
    assert!(ql.dequantize_rows(6, &mut [0.0; 3 * 64]).is_err());
    assert!(ql.dequantize_rows(0, &mut [0.0; 65]).is_err());
    assert!(dense::grad_input(&[0.0; 8], &deq[1..], 1, 8, 64).is_err());
    assert!(dense::matmul_t(&[0.0; 63], &deq, 1, 8, 64).is_err());
}

/// Throughput against candle's f32 matmul on the dequantized weights (not a test):
/// `cargo test --release --lib kernels::tests::throughput -- --ignored --nocapture`
#[test]
#[ignore]
fn throughput() {
    use std::time::Instant;
    for &(dt, fmt) in &[
        (GgmlDType::Q4_1, Format::Q4_1),
        (GgmlDType::Q8_0, Format::Q8_0),
    ] {
        for &(n, k) in &[(1536usize, 576usize), (576, 1536), (576, 576)] {
            let (raw, deq) = weight(dt, n, k, 1);
            let ql = QLinear::from_gguf(fmt, &raw, n, k).unwrap();
            let wt = Tensor::from_vec(deq, (n, k), &Device::Cpu)
                .unwrap()
                .t()
                .unwrap();
            for m in [1usize, 16, 64, 1024] {
                let x = acts(m, k, 2);
                let mut y = vec![0f32; m * n];
                let reps = (2_000_000_000 / (m * n * k)).clamp(3, 2000);
                ql.forward(&x, m, &mut y).unwrap();
                let t0 = Instant::now();
                for _ in 0..reps {
                    ql.forward(&x, m, &mut y).unwrap();
                }
                let ours = t0.elapsed().as_secs_f64() / reps as f64;
                let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).unwrap();
                let _ = xt.matmul(&wt).unwrap();
                let t0 = Instant::now();
                for _ in 0..reps {
                    let _ = xt.matmul(&wt).unwrap();
                }
                let f32t = t0.elapsed().as_secs_f64() / reps as f64;
                let gf = |t: f64| 2.0 * (m * n * k) as f64 / t / 1e9;
                eprintln!(
                    "{} [{n},{k}] m={m:5}: ours {:8.1} us {:6.1} GFLOP/s | f32 gemm {:8.1} us {:6.1} GFLOP/s",
                    fmt.name(), ours * 1e6, gf(ours), f32t * 1e6, gf(f32t)
                );
            }
        }
    }
}
