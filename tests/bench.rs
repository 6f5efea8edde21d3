//! `crossmodal bench --quick` (`study::bench`): the JSON has an entry for
//! every kernel of the list with positive times and throughputs, the CSV a
//! line per entry, the training step both backends' rates, and the matmul
//! sweep figure is written as SVG and PNG.

mod common;

use common::gpu;
use crossmodal::gpu::GpuOptions;
use crossmodal::study::bench::{
    run_cli, BenchOptions, BenchOutputs, KERNELS, SWEEP_PNG, SWEEP_SVG,
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
        }
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
