//! The gradient-check harness (`crossmodal gradcheck`, `study::gradcheck`):
//! every op family passes, on the CPU reference (finite differences) and
//! on the GPU kernels; the seed experiment, shrunk, passes on both
//! backends; and a deliberately wrong gradient — a perturbed entry, or a
//! gradient shifted by one index — injected through the harness's
//! closures or values is reported as a failure of exactly the check it
//! corrupts.

mod common;

use common::gpu;
use crossmodal::experiment::run::Experiment;
use crossmodal::study::gradcheck::{
    check_model_gradients, check_op, check_ops, gradcheck_experiment, model_gradients,
    model_problem, op_cases, op_names, CheckKind, CheckRow, ModelOptions, OpCase,
};
use ndarray::ArrayD;
use std::path::Path;

const SEED_EXPERIMENT: &str = "experiments/seed_fusion.ron";

fn case(filter: &str) -> OpCase {
    op_cases()
        .unwrap()
        .into_iter()
        .find(|c| c.matches(filter))
        .unwrap_or_else(|| panic!("no case matches {filter}"))
}

fn failed<'a>(rows: &'a [CheckRow], input: &str, kind: CheckKind) -> Vec<&'a CheckRow> {
    rows.iter()
        .filter(|r| !r.pass && r.input == input && r.kind == kind)
        .collect()
}

/// Adds `by` times the gradient's largest entry to entry `at`.
fn perturb(g: &mut ArrayD<f64>, at: usize, by: f64) {
    let scale = g.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    g.as_slice_mut().unwrap()[at] += by * scale;
}

/// Moves every entry one place along the flat index (a shifted index).
fn shift(g: &ArrayD<f64>) -> ArrayD<f64> {
    let mut v: Vec<f64> = g.iter().copied().collect();
    v.rotate_right(1);
    ArrayD::from_shape_vec(g.raw_dim(), v).unwrap()
}

#[test]
fn every_op_family_has_a_case() {
    let cases = op_cases().unwrap();
    for op in op_names() {
        assert!(
            cases.iter().any(|c| c.op == *op),
            "no gradcheck case for {op}"
        );
    }
}

#[test]
fn every_op_passes() {
    let ctx = gpu();
    let report = check_ops(None, ctx).unwrap();
    println!("{}", report.table());
    assert!(report.passed(), "{}", report.table());
    // Every input of every case has its FD row, and with an adapter every
    // GPU-computed gradient has its GPU row.
    let fd = report
        .rows
        .iter()
        .filter(|r| r.kind == CheckKind::FdVsCpu)
        .count();
    let inputs: usize = op_cases().unwrap().iter().map(|c| c.inputs.len()).sum();
    assert_eq!(fd, inputs);
    if ctx.is_some() {
        let gpu_rows = report.rows.len() - fd;
        assert!(
            gpu_rows + 2 >= inputs,
            "{gpu_rows} GPU rows for {inputs} inputs"
        );
    }
}

#[test]
fn an_unknown_op_is_an_error_naming_the_ops() {
    let err = check_ops(Some("no_such_op"), None).unwrap_err().to_string();
    assert!(
        err.contains("conv2d") && err.contains("no_such_op"),
        "{err}"
    );
}

#[test]
fn a_perturbed_analytic_gradient_fails_the_fd_check() {
    let mut c = case("conv2d");
    let original = c.analytic;
    // One entry of dW off by 1e-3 of the gradient's scale.
    c.analytic = Box::new(move |x| {
        let mut g = original(x);
        perturb(&mut g[1], 5, 1e-3);
        g
    });
    let rows = check_op(&c, None).unwrap();
    let bad = failed(&rows, "w", CheckKind::FdVsCpu);
    assert_eq!(bad.len(), 1, "{rows:#?}");
    assert_eq!(bad[0].worst.unwrap().0, 5);
    // The other inputs still pass.
    assert_eq!(rows.iter().filter(|r| !r.pass).count(), 1);
}

#[test]
fn a_shifted_analytic_gradient_fails_the_fd_check() {
    let mut c = case("matmul");
    let original = c.analytic;
    c.analytic = Box::new(move |x| {
        let mut g = original(x);
        g[0] = shift(&g[0]);
        g
    });
    let rows = check_op(&c, None).unwrap();
    assert_eq!(failed(&rows, "a", CheckKind::FdVsCpu).len(), 1, "{rows:#?}");
    assert!(failed(&rows, "b", CheckKind::FdVsCpu).is_empty());
}

#[test]
fn a_perturbed_gpu_gradient_fails_the_gpu_check() {
    let Some(ctx) = gpu() else { return };
    for (filter, input, index) in [("lstm", 2, 7), ("maxpool", 0, 3)] {
        let mut c = case(filter);
        let original = c.gpu.take().unwrap();
        c.gpu = Some(Box::new(move |dev, x| {
            let mut g = original(dev, x)?;
            perturb(g[input].as_mut().unwrap(), index, 1e-3);
            Ok(g)
        }));
        let name = c.inputs[input].0;
        let rows = check_op(&c, Some(ctx)).unwrap();
        let bad = failed(&rows, name, CheckKind::GpuVsCpu);
        assert_eq!(bad.len(), 1, "{filter}: {rows:#?}");
        assert_eq!(bad[0].worst.unwrap().0, index);
        assert_eq!(rows.iter().filter(|r| !r.pass).count(), 1, "{filter}");
    }
}

#[test]
fn a_shifted_gpu_gradient_fails_the_gpu_check() {
    let Some(ctx) = gpu() else { return };
    let mut c = case("embedding");
    let original = c.gpu.take().unwrap();
    c.gpu = Some(Box::new(move |dev, x| {
        let mut g = original(dev, x)?;
        g[0] = g[0].as_ref().map(shift);
        Ok(g)
    }));
    let rows = check_op(&c, Some(ctx)).unwrap();
    assert_eq!(
        failed(&rows, "table", CheckKind::GpuVsCpu).len(),
        1,
        "{rows:#?}"
    );
}

#[test]
fn the_seed_experiment_passes_shrunk() {
    let report =
        gradcheck_experiment(Path::new(SEED_EXPERIMENT), gpu(), &ModelOptions::default()).unwrap();
    println!("{}", report.table());
    assert!(report.passed(), "{}", report.table());
    // 8 parameters: embeddings, LSTM kernel/recurrent/bias, conv kernel/bias, dense kernel/bias.
    let per_param = if gpu().is_some() { 2 } else { 1 };
    assert_eq!(report.rows.len(), 8 * per_param);
}

/// Every shipped experiment's model, shrunk (late fusion's Average output
/// included): one FD row per parameter, plus a GPU row with an adapter.
#[test]
fn every_experiment_passes_shrunk() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "ron"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "{files:?}");
    for path in files {
        let report = gradcheck_experiment(&path, gpu(), &ModelOptions::default())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(report.passed(), "{}: {}", path.display(), report.table());
        assert!(!report.rows.is_empty(), "{}", path.display());
    }
}

#[test]
fn wrong_model_gradients_are_reported() {
    let ctx = gpu();
    let opts = ModelOptions::default();
    let exp = Experiment::load(Path::new(SEED_EXPERIMENT)).unwrap();
    let p = model_problem(&exp, &opts).unwrap();
    let mut grads = model_gradients(&p, ctx).unwrap();
    // The LSTM recurrent kernel (parameter 2): its largest entry is always
    // among the FD coordinates, so perturb the CPU gradient there.
    let g = &mut grads.cpu[2];
    let at = g
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
        .unwrap()
        .0;
    let scale = g.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    g.as_slice_mut().unwrap()[at] += 1e-3 * scale;
    if let Some(gpu) = &mut grads.gpu {
        // The dense kernel's GPU gradient shifted by one entry.
        gpu[6].rotate_right(1);
    }
    let rows = check_model_gradients(&p, &grads, &opts).unwrap();
    let name = |i: usize| p.model.graph.node(p.model.graph.params()[i]).name.clone();
    let bad: Vec<(String, CheckKind)> = rows
        .iter()
        .filter(|r| !r.pass)
        .map(|r| (r.input.clone(), r.kind))
        .collect();
    let mut want = vec![(name(2), CheckKind::FdVsCpu)];
    if ctx.is_some() {
        // The CPU gradient was moved too, so the GPU row of parameter 2 fails as well.
        want.push((name(2), CheckKind::GpuVsCpu));
        want.push((name(6), CheckKind::GpuVsCpu));
    }
    assert_eq!(bad, want, "{rows:#?}");
}
