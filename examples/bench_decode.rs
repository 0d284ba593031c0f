//! Steered decode and capture timings in Rust alone (no Python), for profiling:
//!
//!     cargo run --release --example bench_decode -- model.gguf [auto|f32] [decode|capture|batch|load]
//!
//! decode: a 20-token prompt, 128 greedy new tokens, batch 1, a vector added after
//! block 15 at every position (the W2 workload of bench/bench_steerlab.py).
//! batch: 16 prompts of 20 tokens, 64 new tokens, one vector per row (W3).
//! capture: 64 prompts of 64 tokens, batch 16, every layer, last position (W1).
//!
//! A/B of the kernel paths on one machine: `STEERLAB_ISA=avx2` (or `scalar`) caps the
//! instruction set the kernels use; the first line names the one in use.

use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor};
use steerlab::cancel::Cancel;
use steerlab::capture::Reduce;
use steerlab::generate::{forward_batch, GenParams, Generation};
use steerlab::intervene::{Intervention, Positions};
use steerlab::model::{Model, Site, WeightDtype};

fn main() -> steerlab::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1) else {
        eprintln!("usage: bench_decode MODEL.gguf [auto|f32] [decode|capture|batch|load]");
        return Ok(());
    };
    let dtype = WeightDtype::parse(args.get(2).map(String::as_str).unwrap_or("auto"))?;
    let what = args.get(3).map(String::as_str).unwrap_or("decode");
    let t_load = Instant::now();
    let model = Arc::new(Model::load(std::path::Path::new(path), dtype, Device::Cpu)?);
    println!(
        "load: {:.3} s (kernels: {}; {}=scalar|avx2|avx512 caps them)",
        t_load.elapsed().as_secs_f64(),
        steerlab::kernels::Isa::detect().name(),
        steerlab::kernels::ISA_ENV
    );
    if what == "load" {
        return Ok(());
    }
    let d = model.d_model();
    if what == "capture" {
        let rows: Vec<Vec<u32>> = (0..64)
            .map(|i| {
                (0..64)
                    .map(|j| (100 + 37 * i + 11 * j) as u32 % 4000 + 10)
                    .collect()
            })
            .collect();
        let sites: Vec<Site> = (0..model.n_layers()).map(Site::ResidPost).collect();
        let run = || -> steerlab::Result<()> {
            for chunk in rows.chunks(16) {
                forward_batch(
                    &model,
                    chunk,
                    sites.clone(),
                    Reduce::Last,
                    None,
                    false,
                    &Cancel::default(),
                )?;
            }
            Ok(())
        };
        run()?;
        let t0 = Instant::now();
        let reps = 3;
        for _ in 0..reps {
            run()?;
        }
        let s = t0.elapsed().as_secs_f64() / reps as f64;
        println!("capture: {:.3} s -> {:.0} tokens/s", s, 64.0 * 64.0 / s);
        return Ok(());
    }
    if what == "batch" {
        // W3: 16 prompts of 20 tokens, 64 new tokens each, one vector per row.
        let prompts: Vec<Vec<u32>> = (0..16)
            .map(|i| (0..20).map(|j| (300 + 41 * i + 13 * j) as u32).collect())
            .collect();
        let steer: Vec<Vec<Intervention>> = (0..16)
            .map(|i| -> steerlab::Result<Vec<Intervention>> {
                let v: Vec<f32> = (0..d)
                    .map(|k| ((k as f32) * 0.37 + i as f32).sin() * 0.1)
                    .collect();
                Ok(vec![Intervention::add(
                    15,
                    Tensor::from_vec(v, d, &Device::Cpu)?,
                    Positions::All,
                )])
            })
            .collect::<steerlab::Result<_>>()?;
        let params = GenParams {
            max_new_tokens: 64,
            ignore_eos: true,
            ..Default::default()
        };
        // BENCH_NO_STEER=1: the same generation without vectors (overhead A/B).
        let steering = match std::env::var("BENCH_NO_STEER").as_deref() {
            Ok("1") => None,
            _ => Some(steer.as_slice()),
        };
        let run = || -> steerlab::Result<usize> {
            let g = Generation::new(model.clone(), &prompts, steering, params.clone())?;
            Ok(g.run(&Cancel::default())?.iter().map(Vec::len).sum())
        };
        run()?;
        let reps = 3;
        let t0 = Instant::now();
        let mut n = 0;
        for _ in 0..reps {
            n += run()?;
        }
        let s = t0.elapsed().as_secs_f64();
        println!(
            "batched per-row steered generation: {:.1} tokens/s",
            n as f64 / s
        );
        return Ok(());
    }
    let v: Vec<f32> = (0..d).map(|i| ((i as f32) * 0.37).sin() * 0.1).collect();
    let steer = vec![Intervention::add(
        15,
        Tensor::from_vec(v, d, &Device::Cpu)?,
        Positions::All,
    )];
    let prompt: Vec<u32> = (0..20).map(|j| 200 + 13 * j).collect();
    let params = GenParams {
        max_new_tokens: 128,
        ignore_eos: true,
        ..Default::default()
    };
    let run = || -> steerlab::Result<usize> {
        let g = Generation::new(
            model.clone(),
            std::slice::from_ref(&prompt),
            Some(std::slice::from_ref(&steer)),
            params.clone(),
        )?;
        Ok(g.run(&Cancel::default())?[0].len())
    };
    run()?;
    let reps = 5;
    let t0 = Instant::now();
    let mut n = 0;
    for _ in 0..reps {
        n += run()?;
    }
    let s = t0.elapsed().as_secs_f64();
    println!("steered decode: {:.1} tokens/s", n as f64 / s);
    Ok(())
}
