//! Accuracy of the CPU kernels on a real GGUF file: for the projections of blocks 0-1
//! and the token table, the RMS and max error (relative to the output RMS) of steerlab's
//! kernels and of candle's `QMatMul`, both against dequantized-W · x in f32, for 8 rows
//! of N(0, 1) activations. Not a test:
//!
//!     cargo run --release --example qcheck -- model.gguf

use candle_core::quantized::QMatMul;
use candle_core::{Device, Module, Tensor};
use steerlab::kernels::{format_of, QLinear};

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: qcheck MODEL.gguf");
        return;
    };
    let g = steerlab::gguf::open(std::path::Path::new(&path)).unwrap();
    let mut names: Vec<_> = g.content.tensor_infos.keys().cloned().collect();
    names.sort();
    for name in names
        .iter()
        .filter(|n| n.starts_with("blk.0.") || n.starts_with("blk.1.") || n.starts_with("token"))
    {
        let q = g.tensor(name, &Device::Cpu).unwrap();
        let Some(fmt) = format_of(q.dtype()) else {
            continue;
        };
        let Ok((n, k)) = q.shape().dims2() else {
            continue;
        };
        let raw = q.data().unwrap().to_vec();
        let ql = QLinear::from_gguf(fmt, &raw, n, k).unwrap();
        let m = 8;
        let x = Tensor::randn(0f32, 1f32, (m, k), &Device::Cpu).unwrap();
        let deq = q.dequantize(&Device::Cpu).unwrap();
        let refy = x.matmul(&deq.t().unwrap()).unwrap();
        let qm = QMatMul::from_qtensor(q).unwrap();
        let cy = qm.forward(&x).unwrap();
        let xv = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut y = vec![0f32; m * n];
        ql.forward(&xv, m, &mut y).unwrap();
        let oy = Tensor::from_vec(y, (m, n), &Device::Cpu).unwrap();
        let rms_of = |t: &Tensor| {
            t.sqr()
                .unwrap()
                .mean_all()
                .unwrap()
                .sqrt()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let rms = rms_of(&refy);
        let e = |t: &Tensor| rms_of(&(t - &refy).unwrap()) / rms;
        let mx = |t: &Tensor| {
            (t - &refy)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                / rms
        };
        let ourdeq = Tensor::from_vec(ql.dequantize(), (n, k), &Device::Cpu).unwrap();
        let dd = (ourdeq - &deq)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        println!("{name:30} {:5} [{n},{k}] rms err/rms: ours {:.2e} candle {:.2e} | max: ours {:.2e} candle {:.2e} | deq diff {dd:.1e}", fmt.name(), e(&oy), e(&cy), mx(&oy), mx(&cy));
    }
}
