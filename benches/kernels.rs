//! Criterion benches: every GPU kernel against its CPU reference at the seed
//! model's shapes (batch 32), plus a matmul sweep. The cases are the ones
//! `crossmodal bench` times (`crossmodal::study::bench::{seed_cases,
//! sweep_cases}`), so both cover the same kernel list. GPU work is
//! asynchronous, so each timed GPU iteration submits and the closure waits
//! for the device.
//!
//! After criterion's own report, the summary table of `crossmodal bench`
//! gives per case: CPU time, GPU wall time (submit + wait), GPU kernel time
//! (timestamp queries), the CPU/GPU ratio, throughput, and the fraction of
//! the adapter's own measured FMA peak or copy bandwidth — the figure that
//! means something on a software adapter such as lavapipe (see DESIGN.md).
//!
//! `cargo bench -- <filter>` runs the cases whose name contains the filter.

use std::time::{Duration, Instant};

use criterion::Criterion;
use crossmodal::gpu::Dispatch;
use crossmodal::ops::matmul::matmul_variant;
use crossmodal::study::bench::{
    measure_peaks, seed_cases, sweep_cases, sweep_sizes, target_checks, time_case, BenchReport,
    Case, Row,
};
use crossmodal::GpuContext;

fn bench_case(c: &mut Criterion, ctx: &GpuContext, case: &mut Case) {
    let ds: Vec<&Dispatch> = case.gpu.iter().collect();
    let mut group = c.benchmark_group(&case.name);
    group.bench_function("gpu", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                ctx.run(&ds).unwrap();
            }
            ctx.wait().unwrap(); // GPU work is asynchronous: wait inside the timing
            t.elapsed()
        })
    });
    group.bench_function("cpu", |b| b.iter(&mut case.cpu));
    group.finish();
}

fn main() {
    let filter = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_default();
    let ctx = match GpuContext::from_env() {
        Ok(ctx) => ctx,
        Err(e) => {
            eprintln!("kernel benches need a GPU adapter: {e}");
            return;
        }
    };
    eprintln!("adapter: {}", ctx.describe());
    eprintln!("matmul variant: {}", matmul_variant(&ctx));
    let peaks = measure_peaks(&ctx).expect("peak probes");
    eprintln!(
        "measured FMA peak {:.1} GFLOP/s, copy bandwidth {:.2} GB/s",
        peaks.fma_gflops, peaks.copy_gbs
    );
    // No HTML plots: criterion's plot fonts are unavailable with our plotters
    // features (text comes from an embedded font), and the summary table is ours.
    let mut c = Criterion::default()
        .without_plots()
        .configure_from_args()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let mut cases = seed_cases(&ctx).expect("seed-shape cases");
    cases.extend(sweep_cases(&ctx, &sweep_sizes(false)).expect("matmul sweep"));

    let mut rows = Vec::new();
    for mut case in cases.into_iter().filter(|c| c.name.contains(&filter)) {
        bench_case(&mut c, &ctx, &mut case);
        // Own short measurement for the summary table (medians of a few runs).
        let t = time_case(&ctx, &mut case, 7).expect("timing");
        rows.push(Row::new(&case, t, &peaks));
    }
    c.final_summary();
    let report = BenchReport {
        adapter: ctx.describe(),
        matmul_variant: matmul_variant(&ctx).to_string(),
        timestamps: ctx.has_timestamps(),
        quick: false,
        repeats: 7,
        peaks,
        targets: target_checks(&rows),
        rows,
        training: None,
        experiment: None,
    };
    println!("\n## Kernel summary\n\n{}", report.table());
}
