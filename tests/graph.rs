//! Graph building: shape inference on the seed model, typed errors for
//! shape mismatches, unknown inputs and cycles, and backward order.

use crossmodal::graph::{init::init_params, Graph, NodeSpec, Op};
use crossmodal::nn::{seed_model, SeedConfig};
use crossmodal::{DType, Error};

#[test]
fn seed_model_shapes_are_inferred() {
    let m = seed_model(&SeedConfig::default()).unwrap();
    let g = &m.graph;
    let shape = |name: &str| g.node(g.id(name).unwrap()).value.shape.clone();
    assert_eq!(shape("embedding"), vec![100, 32, 32]);
    assert_eq!(shape("lstm"), vec![32, 64]);
    assert_eq!(shape("conv"), vec![32, 26, 26, 32]);
    assert_eq!(shape("pool"), vec![32, 13, 13, 32]);
    assert_eq!(shape("flatten"), vec![32, 5408]);
    assert_eq!(shape("concat"), vec![32, 5472]);
    assert_eq!(shape("dense"), vec![32, 2]);
    assert_eq!(shape("loss"), vec![1]);
    let names: Vec<&str> = g
        .params()
        .iter()
        .map(|&p| g.node(p).name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "embedding.embeddings",
            "lstm.kernel",
            "lstm.recurrent_kernel",
            "lstm.bias",
            "conv.kernel",
            "conv.bias",
            "dense.kernel",
            "dense.bias"
        ]
    );
    // Keras' parameter count for the seed model.
    let count: usize = g.params().iter().map(|&p| g.node(p).value.numel()).sum();
    assert_eq!(
        count,
        320_000 + 32 * 256 + 64 * 256 + 256 + 288 + 32 + 5472 * 2 + 2
    );
}

#[test]
fn backward_order_is_reverse_topological_and_skips_data() {
    let m = seed_model(&SeedConfig::default()).unwrap();
    let g = &m.graph;
    let order: Vec<&str> = g
        .backward_order(m.loss)
        .iter()
        .map(|&i| g.node(i).name.as_str())
        .collect();
    assert_eq!(order.first(), Some(&"loss"));
    assert!(!order.contains(&"probs"), "probs does not lead to the loss");
    assert!(!order.contains(&"tokens") && !order.contains(&"images"));
    let pos = |n: &str| order.iter().position(|&o| o == n).unwrap();
    assert!(
        pos("dense") < pos("concat")
            && pos("concat") < pos("lstm")
            && pos("lstm") < pos("embedding")
    );
}

#[test]
fn shape_mismatch_names_the_node_and_both_shapes() {
    let mut g = Graph::new();
    let x = g
        .add(
            "x",
            Op::Input {
                shape: vec![4, 10],
                dtype: DType::F32,
            },
            &[],
        )
        .unwrap();
    let w = g
        .add(
            "w",
            Op::Param {
                shape: vec![9, 3],
                init: crossmodal::graph::Init::Zeros,
            },
            &[],
        )
        .unwrap();
    let b = g
        .add(
            "b",
            Op::Param {
                shape: vec![3],
                init: crossmodal::graph::Init::Zeros,
            },
            &[],
        )
        .unwrap();
    let err = g.add("dense", Op::Dense, &[x, w, b]).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, Error::Graph { ref node, .. } if node == "dense"),
        "{msg}"
    );
    assert!(msg.contains("[9, 3]") && msg.contains("[4, 10]"), "{msg}");
}

fn spec(name: &str, op: Op, inputs: &[&str]) -> NodeSpec {
    NodeSpec {
        name: name.into(),
        op,
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn specs_in_any_order_are_sorted_and_bad_ones_rejected() {
    let x = Op::Input {
        shape: vec![2, 3],
        dtype: DType::F32,
    };
    let relu = Op::Activation(crossmodal::ops::activation::Activation::Relu);
    let g = Graph::from_specs(&[
        spec("b", relu.clone(), &["a"]),
        spec("a", relu.clone(), &["x"]),
        spec("x", x.clone(), &[]),
    ])
    .unwrap();
    let order: Vec<&str> = g.nodes().iter().map(|n| n.name.as_str()).collect();
    assert_eq!(order, ["x", "a", "b"]);

    let err = Graph::from_specs(&[
        spec("x", x.clone(), &[]),
        spec("a", relu.clone(), &["nope"]),
    ])
    .unwrap_err();
    assert!(
        matches!(&err, Error::UnknownInput { node, input } if node == "a" && input == "nope"),
        "{err}"
    );

    let err = Graph::from_specs(&[
        spec("x", x, &[]),
        spec("a", relu.clone(), &["b"]),
        spec("b", relu, &["a"]),
    ])
    .unwrap_err();
    assert!(
        matches!(&err, Error::Cycle(names) if names.contains('a') && names.contains('b')),
        "{err}"
    );
}

#[test]
fn initialisation_is_seeded_and_follows_keras() {
    let m = seed_model(&SeedConfig {
        vocab: 50,
        seq_len: 7,
        image: [8, 8, 1],
        batch: 3,
        ..SeedConfig::default()
    })
    .unwrap();
    let a = init_params(&m.graph, 7);
    let b = init_params(&m.graph, 7);
    let c = init_params(&m.graph, 8);
    assert_eq!(a, b);
    assert_ne!(a, c);
    let g = &m.graph;
    let value = |name: &str| &a.iter().find(|(id, _)| g.node(*id).name == name).unwrap().1;
    // forget-gate quarter of the LSTM bias is 1, the rest 0
    let bias = value("lstm.bias");
    assert!(bias[..64].iter().all(|&v| v == 0.0) && bias[64..128].iter().all(|&v| v == 1.0));
    // embeddings within ±0.05
    assert!(value("embedding.embeddings")
        .iter()
        .all(|v| v.abs() <= 0.05));
    // orthogonal recurrent kernel [64, 256]: rows are orthonormal
    let u = value("lstm.recurrent_kernel");
    for i in 0..4 {
        for j in 0..4 {
            let dot: f32 = (0..256).map(|k| u[i * 256 + k] * u[j * 256 + k]).sum();
            let want = if i == j { 1.0 } else { 0.0 };
            assert!((dot - want).abs() < 1e-4, "rows {i},{j}: {dot}");
        }
    }
}
