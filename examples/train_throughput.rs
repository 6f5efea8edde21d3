//! Training throughput of the seed model (batch 32, vocab 10000, seq 100,
//! 28×28×1 images) on the GPU backend and the CPU reference backend,
//! measured in one run, with dispatches and submits per step and the GPU
//! time per kernel.
//!
//!     cargo run --release --example train_throughput [steps]

use std::time::Instant;

use crossmodal::graph::gpu::GpuExecutor;
use crossmodal::graph::{init::init_params, Batch, CpuExecutor, Executor, HostData, TrainConfig};
use crossmodal::nn::{seed_model, SeedConfig};
use crossmodal::GpuContext;
use rand::{rngs::StdRng, Rng, SeedableRng};

fn batch(m: &crossmodal::nn::SeedModel, c: &SeedConfig, seed: u64) -> Batch {
    let mut rng = StdRng::seed_from_u64(seed);
    let tokens = (0..c.seq_len * c.batch)
        .map(|_| rng.random_range(1..c.vocab as u32))
        .collect();
    let images = (0..c.batch * 28 * 28)
        .map(|_| rng.random::<f32>())
        .collect();
    let labels = (0..c.batch)
        .map(|_| rng.random_range(0..c.classes as u32))
        .collect();
    Batch::new()
        .with(m.tokens, HostData::U32(tokens))
        .with(m.images, HostData::F32(images))
        .with(m.labels, HostData::U32(labels))
}

fn time(name: &str, exec: &mut dyn Executor, batches: &[Batch], batch_size: usize) -> f64 {
    exec.train_step(&batches[0]).unwrap(); // warm-up: pipelines, first allocations
    let t = Instant::now();
    for b in &batches[1..] {
        exec.train_step(b).unwrap();
    }
    let per_step = t.elapsed().as_secs_f64() / (batches.len() - 1) as f64;
    let rate = batch_size as f64 / per_step;
    println!("{name}: {:.1} ms/step, {rate:.0} samples/s", per_step * 1e3);
    rate
}

fn main() {
    let steps: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let c = SeedConfig::default();
    let m = seed_model(&c).unwrap();
    let params = init_params(&m.graph, 1);
    let batches: Vec<Batch> = (0..=steps as u64).map(|s| batch(&m, &c, s)).collect();

    let mut cpu =
        CpuExecutor::<f32>::new(&m.graph, m.loss, &params, TrainConfig::default()).unwrap();
    let cpu_rate = time("cpu backend (ndarray)", &mut cpu, &batches, c.batch);

    let ctx = GpuContext::from_env().unwrap();
    println!("adapter: {}", ctx.describe());
    let mut gpu =
        GpuExecutor::new(&ctx, &m.graph, m.loss, &params, TrainConfig::default()).unwrap();
    let gpu_rate = time("gpu backend (wgpu)", &mut gpu, &batches, c.batch);
    let s = gpu.step_stats();
    println!(
        "gpu step: {} dispatches ({} forward, {} backward, {} update), {} submit(s)",
        s.forward_dispatches + s.backward_dispatches + s.update_dispatches,
        s.forward_dispatches,
        s.backward_dispatches,
        s.update_dispatches,
        s.submits
    );
    println!("gpu/cpu samples/s ratio: {:.2}", gpu_rate / cpu_rate);
    if ctx.has_timestamps() {
        let timings = gpu.profile_step(&batches[0]).unwrap();
        let mut by_kernel: Vec<(&str, f64, usize)> = Vec::new();
        for t in &timings {
            match by_kernel.iter_mut().find(|(n, _, _)| *n == t.name) {
                Some(e) => {
                    e.1 += t.nanoseconds;
                    e.2 += 1;
                }
                None => by_kernel.push((t.name, t.nanoseconds, 1)),
            }
        }
        by_kernel.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap());
        let total: f64 = by_kernel.iter().map(|k| k.1).sum();
        println!(
            "gpu time per kernel over one step ({:.1} ms in kernels):",
            total * 1e-6
        );
        for (name, ns, count) in by_kernel {
            println!(
                "  {name:<34} {:>8.2} ms {:>5.1}%  ({count} dispatches)",
                ns * 1e-6,
                100.0 * ns / total
            );
        }
    }
}
