//! Gradients through frozen projections (`Linear`): every variant — dense f32, repacked
//! GGUF blocks on steerlab's kernels (each format they cover), candle's quantized matmul
//! (a format they do not) — gives dL/dx = dL/dy · W, checked by finite differences and
//! against the dense gradient on the dequantized weight; a tracked input never gets a
//! silently zero gradient; an untracked input runs the inference kernels bit for bit.
//! Last, the whole quantized SmolLM2 against its f32 load (skipped when the file is
//! absent; see `smollm2()`).
//!
//! Timings (not a test): `cargo test --release --test rust_grad_linear bwd_timings --
//! --ignored --nocapture`.

mod common;

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor, Var};
use common::{smollm2, values};
use steerlab::kernels::{self, QLinear};
use steerlab::model::weights::Linear;
use steerlab::model::{BatchLayout, Mode, Model, NoHooks, StepCtx, WeightDtype};

/// A weight [n, k] with rows of different scales, quantized by candle (ggml's reference
/// quantizers).
fn qtensor(dtype: GgmlDType, n: usize, k: usize, seed: u64) -> QTensor {
    let mut w = values(n * k, seed);
    for (j, row) in w.chunks_exact_mut(k).enumerate() {
        let s = 0.05 * (1 + j % 5) as f32;
        row.iter_mut().for_each(|v| *v *= s);
    }
    let t = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
    QTensor::quantize(&t, dtype).unwrap()
}

/// The quantized projection and the dense one on its exact dequantization.
fn pair(dtype: GgmlDType, n: usize, k: usize, seed: u64) -> (Linear, Linear) {
    let q = qtensor(dtype, n, k, seed);
    let deq = q.dequantize(&Device::Cpu).unwrap();
    let lin = match kernels::format_of(dtype) {
        Some(fmt) => {
            let raw = q.data().unwrap();
            Linear::Packed(Arc::new(QLinear::from_gguf(fmt, &raw, n, k).unwrap()))
        }
        None => Linear::Candle(QMatMul::from_qtensor(q).unwrap()),
    };
    (lin, Linear::Dense(deq))
}

/// Every format the CPU kernels cover (so `Linear::Packed`), shapes with block-aligned k.
const PACKED: &[GgmlDType] = &[
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q8_0,
    GgmlDType::Q4K,
    GgmlDType::Q6K,
];
/// Formats they do not cover: `Linear::Candle`.
const CANDLE: &[GgmlDType] = &[GgmlDType::Q5K, GgmlDType::Q5_1];

fn input(dims: &[usize], seed: u64) -> Tensor {
    let n: usize = dims.iter().product();
    Tensor::from_vec(values(n, seed), dims, &Device::Cpu).unwrap()
}

fn vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// loss = sum(y * r) for a fixed r, and dloss/dx by candle's backward (x a `Var`).
fn loss_and_grad(lin: &Linear, x: &Tensor, r: &Tensor) -> (f32, Vec<f32>) {
    let v = Var::from_tensor(x).unwrap();
    let y = lin.forward(v.as_tensor()).unwrap();
    let loss = (y * r).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let g = grads.get(v.as_tensor()).expect("the input has a gradient");
    assert_eq!(g.dims(), x.dims());
    (loss.to_scalar::<f32>().unwrap(), vec(g))
}

fn loss(lin: &Linear, x: &Tensor, r: &Tensor) -> f64 {
    let y = lin.forward(x).unwrap();
    (y * r)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

fn norm(a: &[f32]) -> f64 {
    dot(a, a).sqrt()
}

/// Shapes (n, k) for a format: k whole blocks (an even number of them: candle's Q5_1 dot
/// product needs that), n not a multiple of 8, and larger than one backward block
/// (256 rows) once.
fn shapes(dtype: GgmlDType) -> Vec<(usize, usize)> {
    let bl = dtype.block_size();
    vec![(13, 2 * bl), (300, 2 * bl)]
}

/// (a) Directional finite differences of sum(y * r): the loss is linear in x up to the
/// kernels' 8-bit rounding of the activations (bounded, not differentiable), so a large
/// step (|h v| ~ |x|) measures the slope of the dequantized-weight product and the
/// rounding error divided by the step stays small: within 5e-3 of |g| |v| for the
/// quantized variants (measured at most 5.6e-4), 1e-5 for dense (measured 5e-8).
#[test]
fn finite_differences_match_the_backward() {
    let formats = PACKED.iter().chain(CANDLE).map(|d| (Some(*d), 5e-3));
    for (dtype, tol) in formats.chain([(None, 1e-5)]) {
        for (n, k) in shapes(dtype.unwrap_or(GgmlDType::Q4_0)) {
            let lin = match dtype {
                Some(d) => pair(d, n, k, 7).0,
                None => Linear::Dense(input(&[n, k], 7)),
            };
            let x = input(&[2, 3, k], 1);
            let r = input(&[2, 3, n], 2);
            let (_, g) = loss_and_grad(&lin, &x, &r);
            let mut worst = 0f64;
            for (s, h) in [(3u64, 1.0f64), (4, 0.5), (5, 2.0)] {
                let v = input(&[2, 3, k], s);
                let fd = (loss(&lin, &(&x + (&v * h).unwrap()).unwrap(), &r)
                    - loss(&lin, &(&x - (&v * h).unwrap()).unwrap(), &r))
                    / (2.0 * h);
                let vv = vec(&v);
                let rel = (fd - dot(&g, &vv)).abs() / (norm(&g) * norm(&vv));
                worst = worst.max(rel);
            }
            assert!(
                worst < tol,
                "{dtype:?} [{n}, {k}]: finite differences off by {worst:.2e} of |g||v| \
                 (tolerance {tol:.0e})"
            );
        }
    }
}

/// (b) A quantized projection's gradient is the dense gradient on the dequantized weight
/// (both dequantize exactly; only the GEMMs' summation orders differ): each within 1e-5
/// of the largest entry of the exact f64 product r · W (measured at most 5.3e-7), and
/// (c) never zero.
#[test]
fn quantized_gradient_equals_dense_on_dequantized_weight() {
    for &dtype in PACKED.iter().chain(CANDLE) {
        for (n, k) in shapes(dtype) {
            let (lin, dense) = pair(dtype, n, k, 11);
            match (&lin, kernels::format_of(dtype)) {
                (Linear::Packed(_), Some(_)) | (Linear::Candle(QMatMul::QTensor(_)), None) => {}
                other => panic!("{dtype:?}: unexpected variant {:?}", other.0),
            }
            let x = input(&[5, k], 3);
            let r = input(&[5, n], 4);
            let (_, gq) = loss_and_grad(&lin, &x, &r);
            let (_, gd) = loss_and_grad(&dense, &x, &r);
            // The exact product r · W_deq in f64.
            let w = vec(match &dense {
                Linear::Dense(w) => w,
                _ => unreachable!(),
            });
            let rv = vec(&r);
            let exact: Vec<f64> = (0..5 * k)
                .map(|i| {
                    let (row, c) = (i / k, i % k);
                    (0..n)
                        .map(|j| rv[row * n + j] as f64 * w[j * k + c] as f64)
                        .sum()
                })
                .collect();
            let scale = exact.iter().fold(0f64, |a, v| a.max(v.abs()));
            assert!(scale > 0.1, "{dtype:?}: degenerate test data");
            for (name, g) in [("quantized", &gq), ("dense", &gd)] {
                let err = g
                    .iter()
                    .zip(&exact)
                    .fold(0f64, |a, (x, e)| a.max((*x as f64 - e).abs()));
                assert!(
                    err <= 1e-5 * scale,
                    "{dtype:?} [{n}, {k}] {name}: gradient off by {err:.2e} (max |g| {scale:.2e})"
                );
            }
            // (c) Never silently zero: every row of the gradient is nonzero.
            for row in gq.chunks_exact(k) {
                assert!(norm(row) > 0.0, "{dtype:?}: a zero gradient row");
            }
        }
    }
}

/// (d) An untracked input runs the inference kernels: the same bits as calling them
/// directly (steerlab's kernels, candle's quantized matmul, candle's f32 matmul), and a
/// tracked input's forward gives the same bits as an untracked one.
#[test]
fn forward_is_bit_identical_to_the_inference_kernels() {
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let (n, k, m) = (40, 512, 7);
    let x = input(&[m, k], 9);
    let xv = vec(&x);
    for &dtype in PACKED.iter().chain(CANDLE) {
        let q = qtensor(dtype, n, k, 5);
        let y = match kernels::format_of(dtype) {
            Some(fmt) => {
                let ql = QLinear::from_gguf(fmt, &q.data().unwrap(), n, k).unwrap();
                let mut y = vec![0f32; m * n];
                ql.forward(&xv, m, &mut y).unwrap();
                y
            }
            None => vec(&QMatMul::from_qtensor(qtensor(dtype, n, k, 5))
                .unwrap()
                .forward(&x)
                .unwrap()),
        };
        let (lin, _) = pair(dtype, n, k, 5);
        let untracked = lin.forward(&x).unwrap();
        assert!(!untracked.track_op());
        assert_eq!(bits(&vec(&untracked)), bits(&y), "{dtype:?} untracked");
        let v = Var::from_tensor(&x).unwrap();
        let tracked = lin.forward(v.as_tensor()).unwrap();
        assert!(tracked.track_op(), "{dtype:?}: the op must be recorded");
        assert_eq!(bits(&vec(&tracked)), bits(&y), "{dtype:?} tracked");
    }
    let w = input(&[n, k], 6);
    let y = vec(&x.matmul(&w.t().unwrap()).unwrap());
    let lin = Linear::Dense(w);
    assert_eq!(bits(&vec(&lin.forward(&x).unwrap())), bits(&y), "dense");
    let v = Var::from_tensor(&x).unwrap();
    assert_eq!(
        bits(&vec(&lin.forward(v.as_tensor()).unwrap())),
        bits(&y),
        "dense tracked"
    );
}

/// Gradients flow through a chain of projections (the backward of one is the input of
/// the next one's): x -> Packed Q4_1 -> Packed Q8_0 equals the dense chain.
#[test]
fn gradients_chain_through_projections() {
    let (a, ad) = pair(GgmlDType::Q4_1, 64, 96, 1);
    let (b, bd) = pair(GgmlDType::Q8_0, 24, 64, 2);
    let x = input(&[3, 96], 3);
    let grad = |p: &Linear, q: &Linear| {
        let v = Var::from_tensor(&x).unwrap();
        let y = q.forward(&p.forward(v.as_tensor()).unwrap()).unwrap();
        let l = y.sqr().unwrap().sum_all().unwrap();
        vec(l.backward().unwrap().get(v.as_tensor()).unwrap())
    };
    let (gq, gd) = (grad(&a, &b), grad(&ad, &bd));
    let cos = dot(&gq, &gd) / (norm(&gq) * norm(&gd));
    // Only the forward's activation rounding differs (y enters the loss squared).
    assert!(cos > 0.999, "cosine {cos}");
    assert!((norm(&gq) / norm(&gd) - 1.0).abs() < 0.01);
}

/// d logsumexp(logits at the last position) / d embeddings, through the whole model.
fn embed_grad(m: &Model, ids: &[u32]) -> Vec<f32> {
    let t = Tensor::from_vec(ids.to_vec(), (1, ids.len()), &Device::Cpu).unwrap();
    let h = Var::from_tensor(&m.embed(&t).unwrap()).unwrap();
    let layout = BatchLayout::new(vec![ids.len()]);
    let ctx = StepCtx {
        layout: &layout,
        start: 0,
        t: ids.len(),
        mode: Mode::Gradient,
    };
    let mut cache = m.new_cache();
    let out = m
        .forward_embeds(h.as_tensor().clone(), &ctx, &mut cache, &mut NoHooks)
        .unwrap();
    let logits = m.logits_last(&out, Mode::Gradient).unwrap(); // [1, vocab]
    let mx = logits.max_keepdim(1).unwrap().detach();
    let lse = (logits
        .broadcast_sub(&mx)
        .unwrap()
        .exp()
        .unwrap()
        .sum_keepdim(1)
        .unwrap()
        .log()
        .unwrap()
        + mx)
        .unwrap()
        .sum_all()
        .unwrap();
    let g = lse.backward().unwrap();
    vec(g
        .get(h.as_tensor())
        .expect("the embeddings have a gradient"))
}

/// The default quantized SmolLM2 (Q4_1 projections, Q8_0 tied embeddings) against its
/// f32 load: the gradient of the last position's logsumexp with respect to the input
/// embeddings points the same way (cosine > 0.9; measured 0.9986) with the same norm
/// (within 20%; measured ratio 0.976).
#[test]
fn smollm2_quantized_gradient_agrees_with_f32() {
    let Some(path) = smollm2() else { return };
    let q = Model::load(&path, WeightDtype::Auto, Device::Cpu).unwrap();
    let f = Model::load(&path, WeightDtype::F32, Device::Cpu).unwrap();
    let ids = q
        .tokenizer
        .encode("The river wound slowly through the valley to the", true)
        .unwrap();
    let (gq, gf) = (embed_grad(&q, &ids), embed_grad(&f, &ids));
    let cos = dot(&gq, &gf) / (norm(&gq) * norm(&gf));
    let ratio = norm(&gq) / norm(&gf);
    eprintln!("smollm2 embedding gradient: cosine {cos:.4}, norm ratio {ratio:.4}");
    assert!(norm(&gq) > 0.0, "the quantized gradient is zero");
    assert!(cos > 0.9, "cosine {cos}");
    assert!((ratio - 1.0).abs() < 0.2, "norm ratio {ratio}");
}

/// Backward timings on 2 threads (not a test): dense f32 vs repacked Q4_1 / Q8_0, 512
/// input rows through a 576x1536 and a 1536x576 projection. Medians of 15 interleaved
/// rounds: the backward kernel alone (dL/dx from dL/dy), and forward + candle backward
/// of sum(y * r) through `Linear`.
#[test]
#[ignore]
fn bwd_timings() {
    use std::time::Instant;
    use steerlab::kernels::dense;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    pool.install(|| {
        for (n, k) in [(1536usize, 576usize), (576, 1536)] {
            let m = 512;
            let x = input(&[m, k], 1);
            let r = input(&[m, n], 2);
            let g = vec(&r);
            let (q41, dense_w) = pair(GgmlDType::Q4_1, n, k, 3);
            let (q80, _) = pair(GgmlDType::Q8_0, n, k, 3);
            let w = vec(match &dense_w {
                Linear::Dense(w) => w,
                _ => unreachable!(),
            });
            let lins = [("f32", &dense_w), ("Q4_1", &q41), ("Q8_0", &q80)];
            let mut kernel = vec![Vec::new(); 3];
            let mut whole = vec![Vec::new(); 3];
            for _ in 0..15 {
                for (i, (_, lin)) in lins.iter().enumerate() {
                    let t0 = Instant::now();
                    let gx = match lin {
                        Linear::Dense(_) => dense::grad_input(&g, &w, m, n, k).unwrap(),
                        Linear::Packed(q) => q.grad_input(&g, m).unwrap(),
                        _ => unreachable!(),
                    };
                    kernel[i].push(t0.elapsed().as_secs_f64() * 1e3);
                    assert_eq!(gx.len(), m * k);
                    let v = Var::from_tensor(&x).unwrap();
                    let t0 = Instant::now();
                    let y = lin.forward(v.as_tensor()).unwrap();
                    (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
                    whole[i].push(t0.elapsed().as_secs_f64() * 1e3);
                }
            }
            for (i, (name, _)) in lins.iter().enumerate() {
                eprintln!(
                    "W [{n}, {k}], {m} rows, {name:5}: backward kernel {:7.2} ms, \
                     forward + backward {:7.2} ms",
                    median(&mut kernel[i]),
                    median(&mut whole[i])
                );
            }
        }
    });
}

/// A dense weight that is itself trained (a `Var`) keeps its gradient, dL/dW = rᵀ · x,
/// besides the input's.
#[test]
fn a_trained_dense_weight_gets_its_gradient() {
    let (n, k, m) = (6, 8, 3);
    let w = Var::from_tensor(&input(&[n, k], 1)).unwrap();
    let x = Var::from_tensor(&input(&[m, k], 2)).unwrap();
    let r = input(&[m, n], 3);
    let y = Linear::Trained(w.as_tensor().clone())
        .forward(x.as_tensor())
        .unwrap();
    let grads = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let gw = vec(grads.get(w.as_tensor()).expect("the weight has a gradient"));
    let gx = vec(grads.get(x.as_tensor()).expect("the input has a gradient"));
    let (rv, xv, wv) = (vec(&r), vec(x.as_tensor()), vec(w.as_tensor()));
    for j in 0..n {
        for c in 0..k {
            let want: f32 = (0..m).map(|i| rv[i * n + j] * xv[i * k + c]).sum();
            assert!((gw[j * k + c] - want).abs() < 1e-5, "dL/dW[{j}, {c}]");
        }
    }
    for i in 0..m {
        for c in 0..k {
            let want: f32 = (0..n).map(|j| rv[i * n + j] * wv[j * k + c]).sum();
            assert!((gx[i * k + c] - want).abs() < 1e-5, "dL/dx[{i}, {c}]");
        }
    }
}
