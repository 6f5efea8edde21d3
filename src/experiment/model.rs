//! Turns an experiment's [`ModelSpec`] into a [`Graph`]: inputs become
//! input nodes (tokens time-major `[T,B]`, images `[B,H,W,C]`, plus the
//! labels), layers are added in dependency order whatever order the file
//! lists them in, `mask_zero` masks follow the sequence into the LSTM/RNN
//! that reads it, and the output layer's softmax is fused into the loss.
//!
//! The output layer gives the class logits `[batch, classes]`: a Dense
//! (activation `Softmax` or none), an `Average` of per-modality heads'
//! logits (late fusion), or any layer of that shape. The loss applies
//! softmax + cross-entropy to it, optionally with per-class weights
//! (Keras `class_weight`).

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::experiment::schema::{InputKind, LayerKind, LayerSpec, ModelSpec, OutputActivation};
use crate::graph::{Graph, NodeId, Op};
use crate::nn::{self, Conv2dLayer};
use crate::ops::activation::Activation;
use crate::tensor::DType;

/// A built model and its named ends.
#[derive(Clone, Debug)]
pub struct BuiltModel {
    pub graph: Graph,
    /// `(input name, node, kind)` in the order the spec lists them.
    pub inputs: Vec<(String, NodeId, InputKind)>,
    pub labels: NodeId,
    pub logits: NodeId,
    pub probs: NodeId,
    pub loss: NodeId,
}

/// What a layer's output carries besides its value.
#[derive(Clone, Copy)]
struct Built {
    id: NodeId,
    /// The token ids whose zeros mark padding steps (from `mask_zero`).
    mask: Option<NodeId>,
}

fn one_input(layer: &LayerSpec, built: &[Built]) -> Result<Built> {
    match built {
        [b] => Ok(*b),
        _ => Err(Error::graph(
            &layer.name,
            format!("takes exactly one input, got {}", built.len()),
        )),
    }
}

fn elementwise(a: OutputActivation) -> Option<Activation> {
    match a {
        OutputActivation::Relu => Some(Activation::Relu),
        OutputActivation::Sigmoid => Some(Activation::Sigmoid),
        OutputActivation::Tanh => Some(Activation::Tanh),
        OutputActivation::Softmax => None,
    }
}

fn add_layer(
    g: &mut Graph,
    spec: &ModelSpec,
    layer: &LayerSpec,
    inputs: &[Built],
    seed: u64,
) -> Result<Built> {
    let name = layer.name.as_str();
    let carry = |id: NodeId, mask: Option<NodeId>| Ok(Built { id, mask });
    match &layer.kind {
        LayerKind::Embedding {
            vocab,
            dim,
            mask_zero,
        } => {
            let tokens = one_input(layer, inputs)?.id;
            let padding = mask_zero.then_some(0);
            let id = nn::embedding(g, name, tokens, *vocab, *dim, padding)?;
            carry(id, mask_zero.then_some(tokens))
        }
        LayerKind::Lstm {
            units,
            return_sequences,
        } => {
            let x = one_input(layer, inputs)?;
            let id = nn::lstm(g, name, x.id, *units, *return_sequences, x.mask)?;
            carry(id, if *return_sequences { x.mask } else { None })
        }
        LayerKind::SimpleRnn {
            units,
            return_sequences,
        } => {
            let x = one_input(layer, inputs)?;
            let id = nn::rnn(g, name, x.id, *units, *return_sequences, x.mask)?;
            carry(id, if *return_sequences { x.mask } else { None })
        }
        LayerKind::Conv2d {
            filters,
            kernel,
            strides,
            padding,
            activation,
        } => {
            let x = one_input(layer, inputs)?.id;
            let conv = Conv2dLayer {
                filters: *filters,
                kernel: [kernel.0, kernel.1],
                stride: [strides.0, strides.1],
                padding: *padding,
                activation: *activation,
            };
            carry(nn::conv2d(g, name, x, conv)?, None)
        }
        LayerKind::MaxPool2d { pool, strides } | LayerKind::AvgPool2d { pool, strides } => {
            let x = one_input(layer, inputs)?.id;
            let s = strides.unwrap_or(*pool);
            let (pool, stride) = ([pool.0, pool.1], [s.0, s.1]);
            let op = if matches!(layer.kind, LayerKind::MaxPool2d { .. }) {
                Op::MaxPool2d { pool, stride }
            } else {
                Op::AvgPool2d { pool, stride }
            };
            carry(g.add(name, op, &[x])?, None)
        }
        LayerKind::Flatten => carry(
            g.add(name, Op::Flatten, &[one_input(layer, inputs)?.id])?,
            None,
        ),
        LayerKind::Dense { units, activation } => {
            let x = one_input(layer, inputs)?.id;
            let act = match activation {
                Some(OutputActivation::Softmax) if name != spec.output => {
                    return Err(Error::graph(
                        name,
                        "softmax is only supported on the output layer, where it is fused with the loss \
                         (for late fusion, leave the heads without activation and average their logits)",
                    ))
                }
                Some(a @ (OutputActivation::Relu | OutputActivation::Sigmoid | OutputActivation::Tanh))
                    if name == spec.output =>
                {
                    return Err(Error::graph(
                        name,
                        format!(
                            "the output layer gives the class logits, to which the loss applies softmax; \
                             a {a:?} activation there would be followed by that softmax \
                             (use Softmax or no activation)"
                        ),
                    ))
                }
                Some(a) => elementwise(*a),
                None => None,
            };
            carry(nn::dense(g, name, x, *units, act)?, None)
        }
        LayerKind::Concat => {
            let ids: Vec<NodeId> = inputs.iter().map(|b| b.id).collect();
            carry(g.add(name, Op::Concat, &ids)?, None)
        }
        LayerKind::Average => {
            let ids: Vec<NodeId> = inputs.iter().map(|b| b.id).collect();
            carry(nn::average(g, name, &ids)?, None)
        }
        LayerKind::Dropout { rate } => {
            let x = one_input(layer, inputs)?;
            // Each dropout layer gets its own stream from the experiment seed.
            let layer_seed = seed ^ (g.nodes().len() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            carry(nn::dropout(g, name, x.id, *rate, layer_seed)?, x.mask)
        }
    }
}

/// Builds the graph of `spec` for `batch` samples and `classes` classes.
/// `class_weights` (one finite, non-negative weight per class, as Keras
/// `class_weight`) scale each sample's loss by its label's weight; the loss
/// stays a mean over the batch. A wrong count is an error naming "loss".
pub fn build_model(
    spec: &ModelSpec,
    batch: usize,
    classes: usize,
    seed: u64,
    class_weights: Option<&[f32]>,
) -> Result<BuiltModel> {
    let mut g = Graph::new();
    let mut built: HashMap<String, Built> = HashMap::new();
    let mut inputs = Vec::new();
    for (name, kind) in &spec.inputs {
        let (shape, dtype) = match kind {
            InputKind::Tokens { seq_len } => (vec![*seq_len, batch], DType::U32),
            InputKind::Image {
                height,
                width,
                channels,
            } => (vec![batch, *height, *width, *channels], DType::F32),
        };
        let id = g.add(name, Op::Input { shape, dtype }, &[])?;
        built.insert(name.clone(), Built { id, mask: None });
        inputs.push((name.clone(), id, kind.clone()));
    }
    let labels = g.add(
        "labels",
        Op::Input {
            shape: vec![batch],
            dtype: DType::U32,
        },
        &[],
    )?;

    // Add layers as their inputs become available (the file may list them in any order).
    let names: std::collections::HashSet<&str> = spec
        .layers
        .iter()
        .map(|l| l.name.as_str())
        .chain(spec.inputs.iter().map(|(n, _)| n.as_str()))
        .collect();
    for layer in &spec.layers {
        if let Some(bad) = layer.inputs.iter().find(|i| !names.contains(i.as_str())) {
            return Err(Error::UnknownInput {
                node: layer.name.clone(),
                input: bad.clone(),
            });
        }
    }
    let mut pending: Vec<&LayerSpec> = spec.layers.iter().collect();
    while !pending.is_empty() {
        let Some(pos) = pending
            .iter()
            .position(|l| l.inputs.iter().all(|i| built.contains_key(i)))
        else {
            let stuck: Vec<&str> = pending.iter().map(|l| l.name.as_str()).collect();
            return Err(Error::Cycle(stuck.join(" -> ")));
        };
        let layer = pending.remove(pos);
        let ins: Vec<Built> = layer.inputs.iter().map(|i| built[i]).collect();
        let b = add_layer(&mut g, spec, layer, &ins, seed)?;
        built.insert(layer.name.clone(), b);
    }

    let logits = built
        .get(&spec.output)
        .ok_or_else(|| Error::UnknownInput {
            node: "output".into(),
            input: spec.output.clone(),
        })?
        .id;
    // Whatever its kind, the output is the class logits.
    let shape = &g.node(logits).value.shape;
    if shape != &[batch, classes] {
        return Err(Error::graph(
            &spec.output,
            format!(
                "the output layer gives the class logits and must be [batch, classes] = \
                 [{batch}, {classes}], got {shape:?}"
            ),
        ));
    }
    let probs = g.add("probs", Op::Softmax, &[logits])?;
    let class_weights = class_weights.map(<[f32]>::to_vec);
    let loss = g.add(
        "loss",
        Op::SoftmaxCrossEntropy { class_weights },
        &[logits, labels],
    )?;
    Ok(BuiltModel {
        graph: g,
        inputs,
        labels,
        logits,
        probs,
        loss,
    })
}
