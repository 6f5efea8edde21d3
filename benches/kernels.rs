//! Criterion benches of the GPU kernels against their ndarray CPU
//! references, at a size sweep and at the seed model's shapes.
//!
//! Prints once at start the adapter, the matmul variant chosen for it and
//! the adapter's measured FMA peak and copy bandwidth; after each GPU case
//! its GFLOP/s and fraction of that peak; and a summary table at the end.
//! On a software adapter (lavapipe) a GPU/CPU ratio says nothing about a
//! real GPU, while the fraction of the adapter's own peak does.
//!
//! Each op adds a function `bench_<op>(c: &mut Criterion)` that uses the
//! shared helpers ([`time_gpu`], [`time_cpu`], [`bench_gpu_case`],
//! [`bench_cpu_case`]) and lists it in `criterion_group!` below.
//!
//!     cargo bench --bench kernels            # everything
//!     cargo bench --bench kernels -- matmul  # one group

use std::hint::black_box;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use crossmodal::gpu::Dispatch;
use crossmodal::ops::matmul::{matmul, matmul_cpu, matmul_variant, Layout, MatmulParams};
use crossmodal::ops::peak::{measure_bandwidth, measure_fma_peak};
use crossmodal::GpuContext;
use ndarray::Array2;
use rand::{rngs::StdRng, Rng, SeedableRng};

type Group<'a> = BenchmarkGroup<'a, criterion::measurement::WallTime>;

// ---------------------------------------------------------------- shared helpers

/// The GPU context and the adapter's measured peaks, opened once.
struct Gpu {
    ctx: GpuContext,
    fma_gflops: f64,
    copy_gbs: f64,
}

fn gpu() -> Option<&'static Gpu> {
    static GPU: OnceLock<Option<Gpu>> = OnceLock::new();
    GPU.get_or_init(|| match GpuContext::from_env() {
        Ok(ctx) => {
            let fma_gflops = measure_fma_peak(&ctx).expect("FMA peak kernel");
            let copy_gbs = measure_bandwidth(&ctx).expect("copy bandwidth kernel");
            eprintln!("adapter: {}", ctx.describe());
            eprintln!("matmul variant: {}", matmul_variant(&ctx));
            eprintln!("measured FMA peak: {fma_gflops:.1} GFLOP/s");
            eprintln!("measured copy bandwidth: {copy_gbs:.1} GB/s");
            Some(Gpu {
                ctx,
                fma_gflops,
                copy_gbs,
            })
        }
        Err(e) => {
            eprintln!("no GPU adapter, benching the CPU references only: {e}");
            None
        }
    })
    .as_ref()
}

/// One GPU case for the summary: its name, useful GFLOP per run, and the
/// best time per run seen over all samples.
struct Record {
    name: String,
    gflop: f64,
    best_seconds: f64,
}

fn records() -> &'static Mutex<Vec<Record>> {
    static RECORDS: Mutex<Vec<Record>> = Mutex::new(Vec::new());
    &RECORDS
}

/// Time of `iters` runs of `dispatches`, each one submit and a wait for the
/// device (GPU work is asynchronous, so the wait belongs in the timing).
fn time_gpu(ctx: &GpuContext, dispatches: &[&Dispatch], iters: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        ctx.run(dispatches).expect("submit");
        ctx.wait().expect("device wait");
    }
    start.elapsed()
}

/// Time of `iters` calls of `f`.
fn time_cpu<T>(iters: u64, mut f: impl FnMut() -> T) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        black_box(f());
    }
    start.elapsed()
}

/// Benches `dispatches` as `name` (work: `gflop` per run), then prints its
/// GFLOP/s and fraction of the adapter's FMA peak and keeps them for the
/// summary. The first run (pipeline compilation on lavapipe) is untimed.
fn bench_gpu_case(group: &mut Group, gpu: &Gpu, name: &str, gflop: f64, dispatches: &[&Dispatch]) {
    gpu.ctx.run(dispatches).expect("first run");
    gpu.ctx.wait().expect("device wait");
    let mut best = f64::INFINITY;
    group.throughput(Throughput::Elements((gflop * 1e9) as u64));
    group.bench_function(format!("gpu/{name}"), |b| {
        b.iter_custom(|iters| {
            let t = time_gpu(&gpu.ctx, dispatches, iters);
            best = best.min(t.as_secs_f64() / iters as f64);
            t
        })
    });
    let gflops = gflop / best;
    eprintln!(
        "  gpu/{name}: {gflops:.2} GFLOP/s (best run), {:.0}% of the measured FMA peak",
        100.0 * gflops / gpu.fma_gflops
    );
    records().lock().unwrap().push(Record {
        name: name.to_string(),
        gflop,
        best_seconds: best,
    });
}

/// Benches a CPU reference as `name` (work: `gflop` per call).
fn bench_cpu_case<T>(group: &mut Group, name: &str, gflop: f64, mut f: impl FnMut() -> T) {
    group.throughput(Throughput::Elements((gflop * 1e9) as u64));
    group.bench_function(format!("cpu/{name}"), |b| {
        b.iter_custom(|iters| time_cpu(iters, &mut f))
    });
}

fn random(rows: usize, cols: usize, seed: u64) -> Array2<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    Array2::from_shape_fn((rows, cols), |_| rng.random_range(-1.0f32..1.0))
}

// ---------------------------------------------------------------- matmul

fn stored_shapes(layout: Layout, m: usize, n: usize, k: usize) -> ((usize, usize), (usize, usize)) {
    match layout {
        Layout::AB => ((m, k), (k, n)),
        Layout::AtB => ((k, m), (k, n)),
        Layout::ABt => ((m, k), (n, k)),
    }
}

/// GPU and CPU `C = op(A)·op(B)` at one shape.
fn matmul_case(group: &mut Group, label: &str, layout: Layout, m: usize, n: usize, k: usize) {
    let (ash, bsh) = stored_shapes(layout, m, n, k);
    let a = random(ash.0, ash.1, 1);
    let b = random(bsh.0, bsh.1, 2);
    let gflop = 2.0 * (m * n * k) as f64 / 1e9;
    let name = format!("{label}/{layout:?}/{m}x{n}x{k}");
    if let Some(gpu) = gpu() {
        let ctx = &gpu.ctx;
        let ga = ctx
            .upload_f32(a.as_slice().unwrap(), &[ash.0, ash.1])
            .unwrap();
        let gb = ctx
            .upload_f32(b.as_slice().unwrap(), &[bsh.0, bsh.1])
            .unwrap();
        let gc = ctx.zeros(&[m, n], crossmodal::DType::F32).unwrap();
        let d = matmul(ctx, layout, &gc, &ga, &gb, MatmulParams::new(m, n, k)).unwrap();
        bench_gpu_case(group, gpu, &name, gflop, &[&d]);
    }
    bench_cpu_case(group, &name, gflop, || {
        matmul_cpu(layout, &a.view(), &b.view())
    });
}

fn bench_matmul(c: &mut Criterion) {
    let mut group = c.benchmark_group("matmul");
    for s in [64, 128, 256, 512, 1024] {
        matmul_case(&mut group, "sweep", Layout::AB, s, s, s);
    }
    // The other layouts (backward) at one size.
    for layout in [Layout::AtB, Layout::ABt] {
        matmul_case(&mut group, "sweep", layout, 512, 512, 512);
    }
    // Seed model: dense input [32×96]·[96×256], the LSTM's batched input
    // projection [3200×32]·[32×256], its weight gradient [3200×64]ᵀ·[3200×256].
    matmul_case(&mut group, "seed", Layout::AB, 32, 256, 96);
    matmul_case(&mut group, "seed", Layout::AB, 3200, 256, 32);
    matmul_case(&mut group, "seed", Layout::AtB, 64, 256, 3200);
    group.finish();
}

// ---------------------------------------------------------------- summary

fn summary(_: &mut Criterion) {
    let Some(gpu) = gpu() else { return };
    eprintln!();
    eprintln!("adapter: {}", gpu.ctx.describe());
    eprintln!("matmul variant: {}", matmul_variant(&gpu.ctx));
    eprintln!(
        "measured FMA peak {:.1} GFLOP/s, copy bandwidth {:.1} GB/s",
        gpu.fma_gflops, gpu.copy_gbs
    );
    eprintln!(
        "{:<36} {:>12} {:>10} {:>8}",
        "GPU case", "best ms", "GFLOP/s", "% peak"
    );
    for r in records().lock().unwrap().iter() {
        let gflops = r.gflop / r.best_seconds;
        eprintln!(
            "{:<36} {:>12.3} {:>10.2} {:>7.0}%",
            r.name,
            r.best_seconds * 1e3,
            gflops,
            100.0 * gflops / gpu.fma_gflops
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench_matmul, summary
}
criterion_main!(benches);
