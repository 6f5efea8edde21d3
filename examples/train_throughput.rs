//! Training throughput of the seed model (batch 32, vocab 10000, seq 100,
//! 28×28×1 images) on the GPU backend and the CPU reference backend,
//! measured in one run, with dispatches and submits per step and the GPU
//! time per kernel. The measurement is `crossmodal::study::bench::
//! training_bench`, which `crossmodal bench` reports too.
//!
//!     cargo run --release --example train_throughput [steps]

use crossmodal::study::bench::training_bench;
use crossmodal::GpuContext;

fn main() {
    let steps: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let ctx = GpuContext::from_env().unwrap();
    println!("adapter: {}", ctx.describe());
    let t = training_bench(&ctx, steps).unwrap().step;
    println!(
        "cpu backend (ndarray): {:.1} ms/step, {:.0} samples/s",
        t.cpu_ms_per_step, t.cpu_samples_per_s
    );
    println!(
        "gpu backend (wgpu): {:.1} ms/step, {:.0} samples/s",
        t.gpu_ms_per_step, t.gpu_samples_per_s
    );
    println!(
        "gpu step: {} dispatches, {} submit(s)",
        t.dispatches, t.submits
    );
    println!("gpu/cpu samples/s ratio: {:.2}", t.gpu_over_cpu);
    if !t.kernels.is_empty() {
        let total: f64 = t.kernels.iter().map(|k| k.ms).sum();
        println!("gpu time per kernel over one step ({total:.1} ms in kernels):");
        for k in &t.kernels {
            println!(
                "  {:<34} {:>8.2} ms {:>5.1}%  ({} dispatches)",
                k.name,
                k.ms,
                100.0 * k.share,
                k.dispatches
            );
        }
    }
}
