//! The shadow check on a tiny fusion model: both backends agree over a few
//! training steps, and a parameter perturbed on one of them is reported as
//! the first divergence, by name.

mod common;

use crossmodal::experiment::run::Experiment;
use crossmodal::graph::cpu::CpuExecutor;
use crossmodal::graph::{Executor, Optimizer, TrainConfig};
use crossmodal::optim::sgd::SgdConfig;
use crossmodal::study::shadow::{
    executors, shadow_check, shadow_steps, Prepared, Quantity, Tolerance,
};

fn tiny() -> Experiment {
    common::experiments::tiny_fixture()
}

#[test]
fn backends_agree_on_a_tiny_model() {
    let Some(ctx) = common::gpu() else { return };
    let report = shadow_check(ctx, &tiny(), 3, Tolerance::DEFAULT).unwrap();
    assert!(report.agrees(), "{report}");
    assert_eq!(report.steps, 3);
    assert!(report.compared > 0 && report.worst_ratio <= 1.0, "{report}");
    assert!(report.to_string().contains("AGREE"));
}

#[test]
fn a_perturbed_parameter_is_named() {
    let Some(ctx) = common::gpu() else { return };
    let exp = tiny();
    let p = Prepared::new(&exp, None).unwrap();
    let (mut gpu, mut cpu) = executors(ctx, &p, &exp).unwrap();
    let g = &p.model.graph;
    let w = g.expect_id("conv.kernel").unwrap();
    let mut v = cpu.param(w).unwrap();
    v[5] += 0.25;
    cpu.set_param(w, &v).unwrap();
    let report = shadow_steps(&p, &mut gpu, &mut cpu, 2, Tolerance::DEFAULT).unwrap();
    let d = report.first_divergence.as_ref().expect("a divergence");
    assert_eq!(
        (d.step, d.quantity, d.node.as_str()),
        (1, Quantity::Value, "conv.kernel")
    );
    assert_eq!((d.index, d.count), (5, 1));
    assert!(report.to_string().contains("DIVERGED"));
}

#[test]
fn a_different_update_shows_at_the_next_step() {
    // Same forward and backward, different optimizers: step 1 agrees, the
    // parameters read by step 2's forward do not (the first, in graph order,
    // is the embedding table).
    let Some(ctx) = common::gpu() else { return };
    let exp = tiny();
    let p = Prepared::new(&exp, None).unwrap();
    let (mut gpu, _) = executors(ctx, &p, &exp).unwrap();
    let sgd = TrainConfig {
        optimizer: Optimizer::Sgd(SgdConfig::default()),
        clip_global_norm: None,
    };
    let mut cpu = CpuExecutor::<f32>::new(&p.model.graph, p.model.loss, &p.params, sgd).unwrap();
    let report = shadow_steps(&p, &mut gpu, &mut cpu, 3, Tolerance::DEFAULT).unwrap();
    let d = report.first_divergence.expect("a divergence");
    assert_eq!((d.step, d.quantity, d.kind), (2, Quantity::Value, "Param"));
    assert_eq!(d.node, "embedding.embeddings");
    assert_eq!(report.steps, 2);
}
