//! Graph nodes: the op each node runs, its parameter initialiser, and the
//! shape rule that turns input shapes into the node's output shape.
//!
//! Layouts: images NHWC `[B,H,W,C]`; token ids time-major `[T,B]` (so the
//! embedding writes the `[T,B,D]` sequence the recurrent kernels read, and
//! the ids double as the `mask_zero` mask); labels `[B]` class indices.

use crate::ops::activation::Activation;
use crate::ops::conv2d::Padding;
use crate::tensor::{numel, DType};

/// Parameter initialisers, with Keras' defaults named after Keras.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Init {
    Zeros,
    Ones,
    /// Uniform in [-limit, limit] (Keras `Embedding`: 0.05).
    Uniform(f64),
    /// Glorot/Xavier uniform over the weight's fan-in and fan-out.
    GlorotUniform,
    /// Orthogonal (Keras LSTM/SimpleRNN recurrent kernel), per gate block.
    Orthogonal,
    /// LSTM bias: zeros, with the forget-gate quarter set to 1.
    LstmBias,
}

/// What a node computes. Inputs are listed in the order each op expects.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Data fed at every step.
    Input {
        shape: Vec<usize>,
        dtype: DType,
    },
    /// A trainable tensor.
    Param {
        shape: Vec<usize>,
        init: Init,
    },
    /// inputs `[table [V,D], tokens [T,B]]` → `[T,B,D]`.
    Embedding {
        padding_idx: Option<u32>,
    },
    /// inputs `[x [T,B,D], kernel [D,4H], recurrent [H,4H], bias [4H]]`, plus
    /// the token ids `[T,B]` when `masked` (0 = padding step carried through).
    /// Output h_T `[B,H]`, or every h_t `[T,B,H]` with `return_sequences`.
    Lstm {
        return_sequences: bool,
        masked: bool,
    },
    /// As `Lstm` with kernel `[D,H]`, recurrent `[H,H]`, bias `[H]`.
    Rnn {
        return_sequences: bool,
        masked: bool,
    },
    /// inputs `[x [B,H,W,Cin], kernel [KH,KW,Cin,Cout], bias [Cout]]`.
    Conv2d {
        stride: [usize; 2],
        padding: Padding,
    },
    MaxPool2d {
        pool: [usize; 2],
        stride: [usize; 2],
    },
    AvgPool2d {
        pool: [usize; 2],
        stride: [usize; 2],
    },
    /// `[B, ...]` → `[B, prod(...)]`, a view of the same buffer.
    Flatten,
    /// inputs `[x [B,F], kernel [F,U], bias [U]]` → `[B,U]`.
    Dense,
    Activation(Activation),
    /// Keras `Dropout(rate, seed)`: in training each element is dropped
    /// with probability `rate` and the kept ones scaled by `1/(1-rate)`
    /// (mask from `(seed, training step)`, see [`crate::ops::dropout`]);
    /// the identity at inference. Output shape = input shape.
    Dropout {
        rate: f32,
        seed: u64,
    },
    /// Concatenation along the last axis of 2-D inputs.
    Concat,
    /// Elementwise mean of k >= 2 inputs of one shape (late fusion: the
    /// average of per-modality heads' logits).
    Average,
    /// Row softmax of `[B,C]` (prediction only).
    Softmax,
    /// inputs `[logits [B,C], labels [B]]` → the batch-mean loss `[1]`.
    /// With `class_weights` (one finite, non-negative weight per class;
    /// Keras `class_weight`) each sample's loss is scaled by its label's
    /// weight and the mean is still over B: `(1/B) Σ w[y] CE`.
    SoftmaxCrossEntropy {
        class_weights: Option<Vec<f32>>,
    },
}

impl Op {
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Input { .. } => "Input",
            Op::Param { .. } => "Param",
            Op::Embedding { .. } => "Embedding",
            Op::Lstm { .. } => "Lstm",
            Op::Rnn { .. } => "Rnn",
            Op::Conv2d { .. } => "Conv2d",
            Op::MaxPool2d { .. } => "MaxPool2d",
            Op::AvgPool2d { .. } => "AvgPool2d",
            Op::Flatten => "Flatten",
            Op::Dense => "Dense",
            Op::Activation(_) => "Activation",
            Op::Dropout { .. } => "Dropout",
            Op::Concat => "Concat",
            Op::Average => "Average",
            Op::Softmax => "Softmax",
            Op::SoftmaxCrossEntropy { .. } => "SoftmaxCrossEntropy",
        }
    }
}

/// A node's output: shape and element type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Value {
    pub shape: Vec<usize>,
    pub dtype: DType,
}

impl Value {
    pub fn f32(shape: &[usize]) -> Self {
        Self {
            shape: shape.to_vec(),
            dtype: DType::F32,
        }
    }
    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }
}

fn rank(inputs: &[&Value], i: usize, r: usize, what: &str) -> Result<Vec<usize>, String> {
    let v = inputs[i];
    if v.shape.len() != r {
        return Err(format!(
            "{what} must have rank {r}, got shape {:?}",
            v.shape
        ));
    }
    Ok(v.shape.clone())
}

fn dtype(inputs: &[&Value], i: usize, d: DType, what: &str) -> Result<(), String> {
    if inputs[i].dtype != d {
        return Err(format!("{what} must be {d:?}, got {:?}", inputs[i].dtype));
    }
    Ok(())
}

fn expect(what: &str, got: &[usize], want: &[usize]) -> Result<(), String> {
    if got != want {
        return Err(format!("{what} has shape {got:?}, expected {want:?}"));
    }
    Ok(())
}

fn arity(op: &Op) -> Option<usize> {
    Some(match op {
        Op::Input { .. } | Op::Param { .. } => 0,
        Op::Embedding { .. } | Op::SoftmaxCrossEntropy { .. } => 2,
        Op::Lstm { masked, .. } | Op::Rnn { masked, .. } => 4 + *masked as usize,
        Op::Conv2d { .. } | Op::Dense => 3,
        Op::MaxPool2d { .. }
        | Op::AvgPool2d { .. }
        | Op::Flatten
        | Op::Activation(_)
        | Op::Dropout { .. }
        | Op::Softmax => 1,
        Op::Concat | Op::Average => return None,
    })
}

/// The output of `op` applied to `inputs`, or a message naming the operand
/// and both shapes (the caller adds the node's name).
pub fn infer(op: &Op, inputs: &[&Value]) -> Result<Value, String> {
    match arity(op) {
        Some(n) if n != inputs.len() => {
            return Err(format!(
                "{} takes {n} inputs, got {}",
                op.kind(),
                inputs.len()
            ))
        }
        None if inputs.is_empty() => return Err(format!("{} needs at least one input", op.kind())),
        _ => {}
    }
    for (i, v) in inputs.iter().enumerate() {
        let must_be_u32 = matches!(
            (op, i),
            (Op::Embedding { .. }, 1)
                | (Op::SoftmaxCrossEntropy { .. }, 1)
                | (Op::Lstm { .. } | Op::Rnn { .. }, 4)
        );
        if !must_be_u32 && v.dtype != DType::F32 {
            return Err(format!(
                "input {i} of {} must be F32, got {:?}",
                op.kind(),
                v.dtype
            ));
        }
    }
    Ok(match op {
        Op::Input { shape, dtype } => Value {
            shape: shape.clone(),
            dtype: *dtype,
        },
        Op::Param { shape, .. } => Value::f32(shape),
        Op::Embedding { .. } => {
            let table = rank(inputs, 0, 2, "the embedding table")?;
            dtype(inputs, 1, DType::U32, "token ids")?;
            let mut shape = inputs[1].shape.clone();
            shape.push(table[1]);
            Value::f32(&shape)
        }
        Op::Lstm {
            return_sequences,
            masked,
        }
        | Op::Rnn {
            return_sequences,
            masked,
        } => {
            let gates = if matches!(op, Op::Lstm { .. }) { 4 } else { 1 };
            let [t, b, d] = rank(inputs, 0, 3, "the sequence input [T,B,D]")?[..] else {
                unreachable!()
            };
            let u = rank(inputs, 2, 2, "the recurrent kernel")?;
            let h = u[0];
            expect("the input kernel", &inputs[1].shape, &[d, gates * h])?;
            expect("the recurrent kernel", &u, &[h, gates * h])?;
            expect("the bias", &inputs[3].shape, &[gates * h])?;
            if *masked {
                dtype(inputs, 4, DType::U32, "the mask (token ids)")?;
                expect("the mask (token ids)", &inputs[4].shape, &[t, b])?;
            }
            if *return_sequences {
                Value::f32(&[t, b, h])
            } else {
                Value::f32(&[b, h])
            }
        }
        Op::Conv2d { stride, padding } => {
            let x = rank(inputs, 0, 4, "the image input [B,H,W,C]")?;
            let w = rank(inputs, 1, 4, "the conv kernel [KH,KW,Cin,Cout]")?;
            if w[2] != x[3] {
                return Err(format!(
                    "the conv kernel {w:?} expects {} input channels, the input {x:?} has {}",
                    w[2], x[3]
                ));
            }
            expect("the conv bias", &inputs[2].shape, &[w[3]])?;
            let g = crate::ops::conv2d::Conv2dGeometry::new(
                [x[0], x[1], x[2], x[3]],
                w[3],
                [w[0], w[1]],
                *stride,
                *padding,
            )
            .map_err(|e| e.to_string())?;
            Value::f32(&g.output_shape())
        }
        Op::MaxPool2d { pool, stride } | Op::AvgPool2d { pool, stride } => {
            let x = rank(inputs, 0, 4, "the pooled input [B,H,W,C]")?;
            let g =
                crate::ops::pool2d::Pool2dGeometry::new([x[0], x[1], x[2], x[3]], *pool, *stride)
                    .map_err(|e| e.to_string())?;
            Value::f32(&g.output_shape())
        }
        Op::Flatten => {
            let x = &inputs[0].shape;
            if x.is_empty() {
                return Err("Flatten needs a batch dimension".into());
            }
            Value::f32(&[x[0], numel(&x[1..])])
        }
        Op::Dense => {
            let x = rank(inputs, 0, 2, "the dense input [B,F]")?;
            let w = rank(inputs, 1, 2, "the dense kernel [F,U]")?;
            if w[0] != x[1] {
                return Err(format!(
                    "the dense kernel {w:?} expects {} features, the input {x:?} has {}",
                    w[0], x[1]
                ));
            }
            expect("the dense bias", &inputs[2].shape, &[w[1]])?;
            Value::f32(&[x[0], w[1]])
        }
        Op::Activation(_) => Value::f32(&inputs[0].shape),
        Op::Dropout { rate, .. } => {
            if !(0.0..1.0).contains(rate) {
                return Err(format!("the dropout rate {rate} must lie in [0, 1)"));
            }
            Value::f32(&inputs[0].shape)
        }
        Op::Concat => {
            let first = rank(inputs, 0, 2, "input 0 of Concat")?;
            let mut width = 0;
            for (i, v) in inputs.iter().enumerate() {
                let s = rank(inputs, i, 2, &format!("input {i} of Concat"))?;
                if s[0] != first[0] {
                    return Err(format!(
                        "Concat inputs disagree on the batch: {:?} and {:?}",
                        first, v.shape
                    ));
                }
                width += s[1];
            }
            Value::f32(&[first[0], width])
        }
        Op::Average => {
            if inputs.len() < 2 {
                return Err(format!(
                    "Average needs at least two inputs, got {}",
                    inputs.len()
                ));
            }
            let first = &inputs[0].shape;
            if let Some((i, v)) = inputs.iter().enumerate().find(|(_, v)| &v.shape != first) {
                return Err(format!(
                    "input {i} of Average has shape {:?}, input 0 has shape {first:?}: \
                     averaged inputs must have one shape",
                    v.shape
                ));
            }
            Value::f32(first)
        }
        Op::Softmax => {
            rank(inputs, 0, 2, "the logits [B,C]")?;
            Value::f32(&inputs[0].shape)
        }
        Op::SoftmaxCrossEntropy { class_weights } => {
            let l = rank(inputs, 0, 2, "the logits [B,C]")?;
            dtype(inputs, 1, DType::U32, "the labels")?;
            expect("the labels", &inputs[1].shape, &[l[0]])?;
            if let Some(w) = class_weights {
                if w.len() != l[1] {
                    return Err(format!(
                        "{} class weights for the logits {l:?}: expected one per class ({})",
                        w.len(),
                        l[1]
                    ));
                }
                if let Some((c, v)) = w
                    .iter()
                    .enumerate()
                    .find(|(_, v)| !(v.is_finite() && **v >= 0.0))
                {
                    return Err(format!(
                        "the weight of class {c} is {v}: class weights must be finite and non-negative"
                    ));
                }
            }
            Value::f32(&[1])
        }
    })
}
