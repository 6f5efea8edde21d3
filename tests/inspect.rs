//! `crossmodal inspect` on a tiny fusion model: the summary lists every
//! layer with parameter counts computed here from the layer sizes, the
//! graph files name every layer and both passes, the schedule has one row
//! per dispatch a training step records, and the profile times each one.

mod common;

use std::path::PathBuf;

use crossmodal::experiment::overrides::apply_overrides;
use crossmodal::experiment::run::Experiment;
use crossmodal::graph::gpu::GpuExecutor;
use crossmodal::graph::{Executor, Phase, TrainConfig};
use crossmodal::study::inspect::{estimate_costs, inspect, summarize, InspectOptions};
use crossmodal::study::shadow::Prepared;

fn tiny() -> Experiment {
    common::experiments::tiny_fixture()
}

fn out_dir(what: &str) -> PathBuf {
    std::env::temp_dir().join(format!("crossmodal-inspect-{what}-{}", std::process::id()))
}

/// Parameters of the fixture's layers, from their sizes.
fn expected_params() -> [(&'static str, usize); 4] {
    let (vocab, dim) = (50, 4);
    let (units, gates) = (5, 4 * 5);
    let (filters, k, image) = (3, 3, 16);
    // Valid 3x3 convolution, then 2x2 pooling (floor).
    let conv_out = image - k + 1;
    let pooled = conv_out / 2;
    let features = units + pooled * pooled * filters;
    [
        ("embedding", vocab * dim),
        ("lstm", dim * gates + units * gates + gates),
        ("conv", k * k * filters + filters),
        ("dense", features * 2 + 2),
    ]
}

#[test]
fn summary_lists_every_layer_with_its_parameters() {
    let exp = tiny();
    let p = Prepared::new(&exp, None).unwrap();
    let s = summarize(&exp.model, &p.model.graph, p.model.loss, 4).unwrap();
    for layer in &exp.model.layers {
        assert!(
            s.rows.iter().any(|r| r.name == layer.name),
            "{} missing from\n{s}",
            layer.name
        );
    }
    let expected = expected_params();
    for (name, n) in expected {
        let row = s.rows.iter().find(|r| r.name == name).unwrap();
        assert_eq!(row.params, n, "{name}");
    }
    let total: usize = expected.iter().map(|(_, n)| n).sum();
    assert_eq!(s.total_params, total);
    assert_eq!(s.trainable_params, total);
    assert_eq!(s.rows.iter().map(|r| r.params).sum::<usize>(), total);
    let text = s.to_string();
    assert!(text.contains(&format!("total params: {total}")), "{text}");
    let dense = s.rows.iter().find(|r| r.name == "dense").unwrap();
    assert_eq!(dense.output_shape, vec![4, 2]);
}

#[test]
fn graph_files_name_every_layer_in_both_passes() {
    let exp = tiny();
    let out = out_dir("graph");
    let opts = InspectOptions {
        out: Some(out.clone()),
        ..Default::default()
    };
    // Files need no device.
    let r = inspect(&exp, &opts, Err("not asked".into())).unwrap();
    assert!(r.memory.is_none());
    assert!(r.to_string().contains("need a GPU adapter"));
    let dot = std::fs::read_to_string(out.join("graph.dot")).unwrap();
    let mmd = std::fs::read_to_string(out.join("graph.mmd")).unwrap();
    assert!(dot.starts_with("digraph") && dot.contains("cluster_backward"));
    assert!(mmd.starts_with("flowchart") && mmd.contains("subgraph backward"));
    for layer in &exp.model.layers {
        for (what, text) in [("dot", &dot), ("mermaid", &mmd)] {
            assert!(
                text.contains(&format!("\"{}\\n", layer.name))
                    || text.contains(&format!("\"{}<br/>", layer.name)),
                "{what}: forward {}",
                layer.name
            );
            // Every layer lies between a parameter and the loss here.
            assert!(
                text.contains(&format!("∇ {}", layer.name)),
                "{what}: backward {}",
                layer.name
            );
        }
    }
    assert!(dot.contains("∂loss/∂lstm.kernel") && mmd.contains("∂loss/∂lstm.kernel"));
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn schedule_has_a_row_per_dispatch_and_the_profile_times_each() {
    let Some(ctx) = common::gpu() else { return };
    let exp = tiny();
    let out = out_dir("schedule");
    let opts = InspectOptions {
        out: Some(out.clone()),
        profile: true,
        batch: None,
    };
    let r = inspect(&exp, &opts, Ok(ctx)).unwrap();

    // An executor of the same model counts the dispatches of a step.
    let p = Prepared::new(&exp, None).unwrap();
    let mut ex = GpuExecutor::new(
        ctx,
        &p.model.graph,
        p.model.loss,
        &p.params,
        TrainConfig::default(),
    )
    .unwrap();
    ex.train_step(&p.batch(0).unwrap()).unwrap();
    assert!(!r.schedule.is_empty());
    assert_eq!(r.schedule.len(), ex.step_stats().dispatches());
    // Every kernel of this model is costed.
    for row in &r.schedule {
        assert!(
            row.cost.flops.is_some() && row.cost.bytes_read.is_some(),
            "{row:?}"
        );
    }
    let csv = std::fs::read_to_string(out.join("schedule.csv")).unwrap();
    assert_eq!(csv.lines().count(), r.schedule.len() + 1);

    let m = r.memory.as_ref().unwrap();
    assert!(m.planned_total <= m.naive_total && m.planned_total > 0);
    let prof = r.profile.as_ref().unwrap();
    match &prof.gpu_ns {
        Ok(t) => assert_eq!(t.len(), r.schedule.len()),
        Err(why) => assert!(!ctx.has_timestamps(), "{why}"),
    }
    assert!(prof.cpu_seconds.iter().any(|(l, _, _)| l == "lstm"));
    assert!(r.to_string().contains("per layer"));
    std::fs::remove_dir_all(&out).ok();
}

/// An LSTM sharing leading steps (H = 8: the blocked kernels) records two
/// runs each way and two dU products; the schedule costs each with the
/// shared steps it is given: the run of the shared steps one sample over
/// them, the other run every sample over the rest, dU over the rows after
/// them plus one row per shared step.
#[test]
fn shared_steps_are_costed_per_run() {
    let Some(ctx) = common::gpu() else { return };
    let sets = ["model.layers.lstm.kind.Lstm.units=8".to_string()];
    let exp = apply_overrides(&tiny(), &sets).unwrap();
    let p = Prepared::new(&exp, None).unwrap();
    let g = &p.model.graph;
    let ex = GpuExecutor::new(ctx, g, p.model.loss, &p.params, TrainConfig::default()).unwrap();
    let schedule = ex.train_schedule();
    let lstm = g.expect_id("lstm").unwrap();
    let (t, b, h) = (7, 4, 8);
    let gates = 4 * h;
    for s in [0, 3] {
        let costs = estimate_costs(g, p.model.loss, &schedule, &[], &[(lstm, s)]);
        let flops = |phase: Phase, prefix: &str| -> Vec<u64> {
            schedule
                .iter()
                .zip(&costs)
                .filter(|(d, _)| d.node == Some(lstm) && d.phase == phase)
                .filter(|(d, _)| d.entry.starts_with(prefix))
                .map(|(_, c)| c.flops.unwrap())
                .collect()
        };
        let step = |rows: usize| (2 * rows * h * gates + rows * h * 12) as u64;
        let runs = flops(Phase::Forward, "lstm_sequence_forward_blocked");
        assert_eq!(runs, vec![s as u64 * step(1), (t - s) as u64 * step(b)]);
        let runs = flops(Phase::Backward, "lstm_sequence_backward_blocked");
        let back = |rows: usize| (2 * rows * gates * h + rows * h * 20) as u64;
        assert_eq!(runs, vec![(t - s) as u64 * back(b), s as u64 * back(1)]);
        let du = |k: usize| (2 * h * gates * k) as u64;
        let matmuls = flops(Phase::Backward, "matmul");
        assert_eq!(matmuls[..2], [du((t - s) * b), du(s)], "{matmuls:?}");
    }
}
