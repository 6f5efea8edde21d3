//! Model specs in RON: the seed model written as an experiment builds the
//! same graph as `nn::seed_model`; bad specs give errors with line:column,
//! the unknown layer kind, the dangling input or the layer with a bad shape.
//! The output may be any layer of shape [batch, classes] (an Average of
//! heads' logits: late fusion); class weights reach the loss.

use crossmodal::experiment::model::build_model;
use crossmodal::experiment::parse_ron;
use crossmodal::experiment::schema::ModelSpec;
use crossmodal::graph::Op;
use crossmodal::nn::{seed_model, SeedConfig};
use crossmodal::Error;

const SEED: &str = r#"(
    inputs: [
        ("text", Tokens(seq_len: 100)),
        ("image", Image(height: 28, width: 28, channels: 1)),
    ],
    layers: [
        (name: "dense", kind: Dense(units: 2, activation: Softmax), inputs: ["concat"]),
        (name: "embedding", kind: Embedding(vocab: 10000, dim: 32), inputs: ["text"]),
        (name: "lstm", kind: Lstm(units: 64), inputs: ["embedding"]),
        (name: "conv", kind: Conv2d(filters: 32, kernel: (3, 3), activation: Relu), inputs: ["image"]),
        (name: "pool", kind: MaxPool2d(pool: (2, 2)), inputs: ["conv"]),
        (name: "flatten", kind: Flatten, inputs: ["pool"]),
        (name: "concat", kind: Concat, inputs: ["lstm", "flatten"]),
    ],
    output: "dense",
)"#;

#[test]
fn the_seed_model_in_ron_builds_the_seed_graph() {
    let spec: ModelSpec = parse_ron("seed.ron", SEED).unwrap();
    let m = build_model(&spec, 32, 2, 1, None).unwrap();
    let reference = seed_model(&SeedConfig::default()).unwrap();
    let shapes = |g: &crossmodal::graph::Graph| {
        let mut v: Vec<(String, Vec<usize>)> = g
            .params()
            .iter()
            .map(|&p| (g.node(p).name.clone(), g.node(p).value.shape.clone()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(shapes(&m.graph), shapes(&reference.graph));
    assert_eq!(m.graph.node(m.logits).value.shape, vec![32, 2]);
    assert_eq!(m.graph.node(m.loss).value.shape, vec![1]);
}

#[test]
fn mask_zero_reaches_the_lstm() {
    let src = SEED.replace(
        "Embedding(vocab: 10000, dim: 32)",
        "Embedding(vocab: 10000, dim: 32, mask_zero: true)",
    );
    let m = build_model(&parse_ron("seed.ron", &src).unwrap(), 4, 2, 1, None).unwrap();
    let lstm = m.graph.node(m.graph.id("lstm").unwrap());
    assert!(matches!(
        lstm.op,
        crossmodal::graph::Op::Lstm { masked: true, .. }
    ));
    assert_eq!(lstm.inputs.last(), Some(&m.graph.id("text").unwrap()));
}

#[test]
fn unknown_fields_and_kinds_are_errors_with_line_and_column() {
    let typo = SEED.replace("kind: Lstm(units: 64)", "kind: Lstm(unitz: 64)");
    match parse_ron::<ModelSpec>("seed.ron", &typo).unwrap_err() {
        Error::Experiment {
            file,
            line,
            message,
            ..
        } => {
            assert_eq!(file, "seed.ron");
            assert_eq!(line, 9, "{message}");
            assert!(message.contains("unitz"), "{message}");
        }
        e => panic!("expected an experiment error, got {e}"),
    }
    let kind = SEED.replace("kind: Flatten", "kind: Flattenn");
    let err = parse_ron::<ModelSpec>("seed.ron", &kind).unwrap_err();
    assert!(
        err.to_string().starts_with("seed.ron:12:") && err.to_string().contains("Flattenn"),
        "{err}"
    );
}

#[test]
fn dangling_inputs_cycles_and_shapes_name_the_layer() {
    let dangling = SEED.replace(r#"inputs: ["pool"]"#, r#"inputs: ["pooll"]"#);
    let err = build_model(&parse_ron("x.ron", &dangling).unwrap(), 4, 2, 1, None).unwrap_err();
    assert!(
        matches!(&err, Error::UnknownInput { node, input } if node == "flatten" && input == "pooll"),
        "{err}"
    );

    let cycle = SEED.replace(r#"inputs: ["conv"]"#, r#"inputs: ["flatten"]"#);
    let err = build_model(&parse_ron("x.ron", &cycle).unwrap(), 4, 2, 1, None).unwrap_err();
    assert!(
        matches!(&err, Error::Cycle(names) if names.contains("pool") && names.contains("flatten")),
        "{err}"
    );

    // An LSTM fed an image: the error names the layer and the shapes.
    let shape = SEED.replace(
        r#"kind: Lstm(units: 64), inputs: ["embedding"]"#,
        r#"kind: Lstm(units: 64), inputs: ["image"]"#,
    );
    let err = build_model(&parse_ron("x.ron", &shape).unwrap(), 4, 2, 1, None).unwrap_err();
    assert!(
        matches!(&err, Error::Graph { node, .. } if node == "lstm"),
        "{err}"
    );
    assert!(err.to_string().contains("[4, 28, 28, 1]"), "{err}");

    // The output must have one unit per class.
    let err = build_model(&parse_ron("x.ron", SEED).unwrap(), 4, 3, 1, None).unwrap_err();
    assert!(
        matches!(&err, Error::Graph { node, .. } if node == "dense"),
        "{err}"
    );
}

/// Late fusion in RON: two heads averaged; Dense layers without activation.
const LATE: &str = r#"(
    inputs: [
        ("text", Tokens(seq_len: 7)),
        ("image", Image(height: 8, width: 8, channels: 1)),
    ],
    layers: [
        (name: "embedding", kind: Embedding(vocab: 50, dim: 4), inputs: ["text"]),
        (name: "lstm", kind: Lstm(units: 5), inputs: ["embedding"]),
        (name: "text_head", kind: Dense(units: 3), inputs: ["lstm"]),
        (name: "flatten", kind: Flatten, inputs: ["image"]),
        (name: "image_head", kind: Dense(units: 3), inputs: ["flatten"]),
        (name: "average", kind: Average, inputs: ["text_head", "image_head"]),
    ],
    output: "average",
)"#;

#[test]
fn an_average_of_heads_is_a_valid_output() {
    let m = build_model(&parse_ron("late.ron", LATE).unwrap(), 4, 3, 1, None).unwrap();
    assert!(matches!(m.graph.node(m.logits).op, Op::Average));
    assert_eq!(m.graph.node(m.logits).value.shape, vec![4, 3]);
    assert!(matches!(
        m.graph.node(m.loss).op,
        Op::SoftmaxCrossEntropy {
            class_weights: None
        }
    ));
    // Heads of different widths: the error names the layer and both shapes.
    let src = LATE.replace(
        r#""image_head", kind: Dense(units: 3)"#,
        r#""image_head", kind: Dense(units: 2)"#,
    );
    let err = build_model(&parse_ron("late.ron", &src).unwrap(), 4, 3, 1, None).unwrap_err();
    assert!(
        matches!(&err, Error::Graph { node, .. } if node == "average"),
        "{err}"
    );
    assert!(
        err.to_string().contains("[4, 3]") && err.to_string().contains("[4, 2]"),
        "{err}"
    );
    // The output must be [batch, classes], whatever its kind.
    let err = build_model(&parse_ron("late.ron", LATE).unwrap(), 4, 2, 1, None).unwrap_err();
    assert!(
        matches!(&err, Error::Graph { node, .. } if node == "average"),
        "{err}"
    );
    assert!(err.to_string().contains("[4, 2]"), "{err}");
    // Softmax on a head (not the output) is rejected, naming the head.
    let src = LATE.replace(
        "Dense(units: 3), inputs: [\"lstm\"]",
        "Dense(units: 3, activation: Softmax), inputs: [\"lstm\"]",
    );
    let err = build_model(&parse_ron("late.ron", &src).unwrap(), 4, 3, 1, None).unwrap_err();
    assert!(
        matches!(&err, Error::Graph { node, .. } if node == "text_head"),
        "{err}"
    );
}

/// The loss applies softmax to the output: an elementwise activation on
/// a Dense output would be silently followed by it, so it is an error.
#[test]
fn an_elementwise_activation_on_the_output_is_an_error() {
    for act in ["Relu", "Sigmoid", "Tanh"] {
        let src = SEED.replace(
            "Dense(units: 2, activation: Softmax)",
            &format!("Dense(units: 2, activation: {act})"),
        );
        let err = build_model(&parse_ron("x.ron", &src).unwrap(), 4, 2, 1, None).unwrap_err();
        assert!(
            matches!(&err, Error::Graph { node, .. } if node == "dense"),
            "{err}"
        );
    }
    // No activation: the logits, softmax in the loss.
    let src = SEED.replace("Dense(units: 2, activation: Softmax)", "Dense(units: 2)");
    build_model(&parse_ron("x.ron", &src).unwrap(), 4, 2, 1, None).unwrap();
}

#[test]
fn class_weights_reach_the_loss() {
    let spec = parse_ron("late.ron", LATE).unwrap();
    let m = build_model(&spec, 4, 3, 1, Some(&[0.5, 1.0, 2.0])).unwrap();
    assert_eq!(
        m.graph.node(m.loss).op,
        Op::SoftmaxCrossEntropy {
            class_weights: Some(vec![0.5, 1.0, 2.0])
        }
    );
    // One weight per class, finite and non-negative: errors name the loss.
    for bad in [
        &[1.0, 2.0][..],
        &[1.0, 2.0, 3.0, 4.0],
        &[1.0, -1.0, 1.0],
        &[1.0, f32::NAN, 1.0],
    ] {
        let err = build_model(&spec, 4, 3, 1, Some(bad)).unwrap_err();
        assert!(
            matches!(&err, Error::Graph { node, .. } if node == "loss"),
            "{bad:?}: {err}"
        );
    }
    let err = build_model(&spec, 4, 3, 1, Some(&[1.0, 2.0])).unwrap_err();
    assert!(err.to_string().contains("one per class"), "{err}");
}
