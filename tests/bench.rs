//! `crossmodal bench --quick` (`study::bench`): the JSON has an entry for
//! every kernel of the list with positive times and throughputs, the CSV a
//! line per entry, the training step both backends' rates, and the matmul
//! sweep figure is written as SVG and PNG.

mod common;

use common::gpu;
use crossmodal::gpu::GpuOptions;
use crossmodal::study::bench::{
    run_cli, target_checks, BenchOptions, BenchOutputs, Row, Work, CONV_EQUAL_FLOPS, KERNELS,
    SWEEP_PNG, SWEEP_SVG,
};

fn positive(v: &serde_json::Value, what: &str) -> f64 {
    let x = v
        .as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"));
    assert!(x > 0.0 && x.is_finite(), "{what} = {x}");
    x
}

#[test]
fn quick_bench_covers_every_kernel_and_writes_its_files() {
    if gpu().is_none() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("crossmodal-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (json, csv, plot) = (
        dir.join("bench.json"),
        dir.join("bench.csv"),
        dir.join("plot"),
    );
    let options = BenchOptions {
        filter: None,
        quick: true,
        experiment: None,
    };
    let out = BenchOutputs {
        json: Some(&json),
        csv: Some(&csv),
        plot: Some(&plot),
    };
    run_cli(&options, &GpuOptions::from_env().unwrap(), &out).unwrap();

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    positive(&report["peaks"]["fma_gflops"], "FMA peak");
    positive(&report["peaks"]["copy_gbs"], "copy bandwidth");
    let rows = report["rows"].as_array().unwrap();
    for kernel in KERNELS {
        let entries: Vec<&serde_json::Value> =
            rows.iter().filter(|r| r["kernel"] == *kernel).collect();
        assert!(!entries.is_empty(), "no bench entry for {kernel}");
        for r in entries {
            let name = r["name"].as_str().unwrap();
            positive(&r["cpu_us"], &format!("{name}: CPU time"));
            positive(&r["gpu_wall_us"], &format!("{name}: GPU wall time"));
            if !r["gpu_kernel_us"].is_null() {
                positive(&r["gpu_kernel_us"], &format!("{name}: GPU kernel time"));
            }
            positive(&r["gpu_throughput"], &format!("{name}: GPU throughput"));
            positive(&r["fraction_of_peak"], &format!("{name}: fraction of peak"));
            positive(
                &r["best_fraction_of_peak"],
                &format!("{name}: fraction of peak, fastest run"),
            );
        }
    }
    // The kernel targets: three matmul layouts and three conv passes.
    let targets = report["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 6, "{targets:?}");
    for t in targets {
        positive(&t["value"], t["what"].as_str().unwrap());
        positive(&t["best"], t["what"].as_str().unwrap());
        assert!(t["met"].is_boolean() && t["met_best"].is_boolean());
    }
    // The sweep: A·B at every quick size.
    let sweep: Vec<u64> = rows.iter().filter_map(|r| r["sweep"].as_u64()).collect();
    assert_eq!(sweep, vec![64, 128, 256]);
    let t = &report["training"];
    positive(&t["cpu_samples_per_s"], "CPU samples/s");
    positive(&t["gpu_samples_per_s"], "GPU samples/s");
    positive(&t["dispatches"], "dispatches per step");
    positive(
        &t["padded_cpu_ms_per_step"],
        "CPU ms/step, pre-padded texts",
    );
    positive(
        &t["padded_gpu_ms_per_step"],
        "GPU ms/step, pre-padded texts",
    );

    let csv = std::fs::read_to_string(&csv).unwrap();
    // Header, one line per row, the training step on both token mixes.
    assert_eq!(csv.lines().count(), 1 + rows.len() + 2, "{csv}");
    assert!(csv.starts_with("kernel,case,"));

    let svg = std::fs::read_to_string(plot.join(SWEEP_SVG)).unwrap();
    assert!(svg.contains("<svg") && svg.contains("GFLOP/s"), "{svg}");
    let png = std::fs::read(plot.join(SWEEP_PNG)).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 1000);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_filter_that_matches_nothing_is_an_error() {
    if gpu().is_none() {
        return;
    }
    let options = BenchOptions {
        filter: Some("no_such_kernel".into()),
        quick: true,
        experiment: None,
    };
    let err = run_cli(
        &options,
        &GpuOptions::from_env().unwrap(),
        &BenchOutputs::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("no_such_kernel") && err.contains("conv2d_forward"),
        "{err}"
    );
}

/// `bench train --experiment EXP.ron`: the experiment's own step on both
/// backends (its batch size and model), in place of the seed model's.
#[test]
fn bench_times_an_experiments_own_training_step() {
    if gpu().is_none() {
        return;
    }
    let options = BenchOptions {
        filter: Some("train".into()),
        quick: true,
        experiment: Some(common::experiments::root().join("tests/fixtures/tiny_fusion.ron")),
    };
    let report = run_cli(
        &options,
        &GpuOptions::from_env().unwrap(),
        &BenchOutputs::default(),
    )
    .unwrap();
    assert!(report.training.is_none() && report.rows.is_empty());
    let exp = report.experiment.as_ref().expect("the experiment's step");
    let e = &exp.step;
    assert_eq!(
        (exp.experiment.as_str(), e.batch, e.steps),
        ("tiny_fusion", 4, 2)
    );
    for (what, v) in [
        ("CPU ms/step", e.cpu_ms_per_step),
        ("GPU ms/step", e.gpu_ms_per_step),
        ("CPU samples/s", e.cpu_samples_per_s),
        ("GPU samples/s", e.gpu_samples_per_s),
    ] {
        assert!(v > 0.0 && v.is_finite(), "{what} = {v}");
    }
    assert!(e.dispatches > 0);
    // The embedding feeds only the LSTM: its input runs per chunk of equal tokens.
    assert_eq!(e.chunks.len(), 1, "{:?}", e.chunks);
    assert_eq!(e.chunks[0].0, "lstm");
    assert!((1..=4 * 7).contains(&e.chunks[0].1), "{:?}", e.chunks);
    assert!(report.table().contains("Training step of tiny_fusion"));
}

fn row(kernel: &'static str, name: &str, fraction: f64) -> Row {
    Row {
        kernel,
        name: name.into(),
        sweep: None,
        work: Work::Flops(1e9),
        dispatches: 1,
        cpu_us: 1.0,
        gpu_wall_us: 1.0,
        gpu_kernel_us: None,
        gpu_throughput: 1.0,
        cpu_throughput: 1.0,
        unit: "GFLOP/s",
        fraction_of_peak: fraction,
        // The fastest run 10 % faster than the median.
        best_fraction_of_peak: 1.1 * fraction,
        cpu_over_gpu: 1.0,
    }
}

/// The targets use the largest sweep size up to 512 and compare each conv
/// pass at equal FLOPs with A·B: met and missed on both sides of each bound.
#[test]
fn target_checks_compare_against_the_bounds() {
    let conv = |k| format!("{k} {CONV_EQUAL_FLOPS}");
    let rows = vec![
        row("matmul_ab", "matmul_ab sweep 256x256·256x256", 0.9),
        row("matmul_ab", "matmul_ab sweep 512x512·512x512", 0.32),
        row("matmul_ab", "matmul_ab sweep 1024x1024·1024x1024", 0.1),
        row("matmul_atb", "matmul_atb sweep 512x512·512x512", 0.29),
        row("matmul_abt", "matmul_abt lstm dh 32x256·256x64", 0.5),
        row("conv2d_forward", &conv("conv2d_forward"), 0.17),
        row(
            "conv2d_forward",
            "conv2d_forward 32x28x28x1 -> 32 3x3",
            0.01,
        ),
        row(
            "conv2d_backward_input",
            &conv("conv2d_backward_input"),
            0.15,
        ),
    ];
    let checks = target_checks(&rows);
    let got: Vec<(&str, f64, bool)> = checks
        .iter()
        .map(|c| (c.what.split(':').next().unwrap(), c.value, c.met))
        .collect();
    assert_eq!(got.len(), 4, "{checks:?}");
    assert_eq!(got[0], ("matmul_ab 512³", 0.32, true));
    assert_eq!(got[1], ("matmul_atb 512³", 0.29, false));
    assert!(got[2].0.starts_with("conv2d_forward at 512³'s FLOPs"));
    assert!((got[2].1 - 0.32 / 0.17).abs() < 1e-12 && got[2].2);
    assert!((got[3].1 - 0.32 / 0.15).abs() < 1e-12 && !got[3].2);
    // The same checks on the fastest runs: 0.29 * 1.1 clears 30 %; the
    // conv ratios do not change.
    let best: Vec<bool> = checks.iter().map(|c| c.met_best).collect();
    assert_eq!(best, [true, true, true, false]);
    assert!((checks[2].best - checks[2].value).abs() < 1e-12);
}
