//! Quick matmul timing: GFLOP/s of each layout and variant at 512³ and the
//! seed model's shapes, with the adapter's FMA peak for comparison. Each
//! figure is the best of several runs (submit + wait each), so a run that
//! another process delayed does not count.
//!
//!     cargo run --release --example matmul_timing [rounds]

use crossmodal::ops::matmul::{
    matmul_cpu, matmul_variant, matmul_with, Layout, MatmulParams, MatmulVariant,
};
use crossmodal::ops::peak::{measure_fma_peak, time_runs};
use crossmodal::GpuContext;
use ndarray::Array2;

fn operand(rows: usize, cols: usize, seed: usize) -> Array2<f32> {
    // Small integers: every product and sum is exact in f32.
    Array2::from_shape_fn((rows, cols), |(i, j)| {
        ((i * 7 + j * 3 + seed) % 11) as f32 - 5.0
    })
}

fn main() -> anyhow::Result<()> {
    let ctx = GpuContext::from_env()?;
    let rounds: usize = std::env::args().nth(1).map_or(Ok(3), |s| s.parse())?;
    println!("adapter: {}", ctx.describe());
    println!("matmul variant: {}", matmul_variant(&ctx));
    let mut peak: f64 = 0.0;
    for _ in 0..rounds {
        peak = peak.max(measure_fma_peak(&ctx)?);
    }
    println!("FMA peak: {peak:.1} GFLOP/s");
    let shapes = [
        (512, 512, 512),
        (32, 256, 96),
        (3200, 256, 32),
        (64, 256, 3200),
    ];
    for variant in [MatmulVariant::Direct, MatmulVariant::Tiled] {
        for &(m, n, k) in &shapes {
            for layout in [Layout::AB, Layout::AtB, Layout::ABt] {
                let (ash, bsh) = match layout {
                    Layout::AB => ((m, k), (k, n)),
                    Layout::AtB => ((k, m), (k, n)),
                    Layout::ABt => ((m, k), (n, k)),
                };
                let a = operand(ash.0, ash.1, 1);
                let b = operand(bsh.0, bsh.1, 2);
                let want = matmul_cpu(layout, &a.view(), &b.view());
                let ga = ctx.upload_f32(a.as_slice().unwrap(), &[ash.0, ash.1])?;
                let gb = ctx.upload_f32(b.as_slice().unwrap(), &[bsh.0, bsh.1])?;
                let gc = ctx.zeros(&[m, n], crossmodal::DType::F32)?;
                let d = matmul_with(
                    &ctx,
                    variant,
                    layout,
                    &gc,
                    &ga,
                    &gb,
                    MatmulParams::new(m, n, k),
                )?;
                let t = time_runs(&ctx, &[&d], rounds)?;
                let got = ctx.read_f32(&gc)?;
                let exact = got.iter().zip(want.iter()).all(|(x, y)| x == y);
                let gflops = 2.0 * (m * n * k) as f64 / t / 1e9;
                println!(
                    "{variant:?} {layout:?} {m}x{n}x{k}: {:.3} ms, {gflops:.2} GFLOP/s ({:.0}% of peak){}",
                    t * 1e3,
                    100.0 * gflops / peak,
                    if exact { "" } else { "  WRONG RESULT" }
                );
            }
        }
    }
    Ok(())
}
