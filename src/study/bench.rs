//! `crossmodal bench`: every GPU kernel against its CPU reference at the
//! seed model's shapes (batch 32), a matmul sweep, and a whole training
//! step of the seed model on both backends.
//!
//! The adapter's own limits come first ([`measure_peaks`], the
//! `ops::peak` probes): a register-only FMA chain (GFLOP/s) and a vec4
//! copy (GB/s). Each kernel's throughput is then given as a fraction of
//! them, the figure that means something on a software adapter such as
//! lavapipe, where a GPU/CPU ratio says little about a real GPU (see
//! DESIGN.md).
//!
//! Per case ([`Case`], built by [`seed_cases`] and [`sweep_cases`]; the
//! criterion benches in `benches/kernels.rs` run the same list):
//! CPU reference time, GPU wall time (submit + wait), GPU kernel time
//! (timestamp queries, [`GpuContext::run_timed`], where the adapter has
//! them), throughput, fraction of peak, and the CPU/GPU time ratio. Each
//! time is the median of a few runs after a warm-up run, because the
//! machine is shared: a descheduled run should not count.
//!
//! Output: a markdown table ([`BenchReport::table`]), JSON and CSV
//! ([`BenchReport::csv`]), and the matmul sweep drawn as SVG and PNG
//! ([`write_plots`]) in the style of the training curves.

use std::path::{Path, PathBuf};
use std::time::Instant;

use ndarray::{s, Array1, Array2, Array3, Array4, ArrayD, Axis, IxDyn};
use plotters::coord::Shift;
use plotters::prelude::*;
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::experiment::atomic::{create_dir_all, write_atomic, write_atomic_str};
use crate::experiment::prepare::train_config;
use crate::experiment::report::register_fonts;
use crate::experiment::run::Experiment;
use crate::gpu::{Dispatch, GpuContext, GpuOptions, GpuTensor, KernelTiming};
use crate::graph::gpu::GpuExecutor;
use crate::graph::init::init_params;
use crate::graph::{Batch, CpuExecutor, Executor, Graph, HostData, NodeId, TrainConfig};
use crate::nn::{seed_model, SeedConfig, SeedModel};
use crate::ops::activation::*;
use crate::ops::average::*;
use crate::ops::bias::*;
use crate::ops::concat::*;
use crate::ops::conv2d::*;
use crate::ops::dropout::*;
use crate::ops::embedding::*;
use crate::ops::lstm::*;
use crate::ops::matmul::*;
use crate::ops::peak::{measure_bandwidth, measure_fma_peak};
use crate::ops::pool2d::*;
use crate::ops::recurrent::*;
use crate::ops::reduce::*;
use crate::ops::rnn::*;
use crate::ops::segment_sum::*;
use crate::ops::softmax_cross_entropy::*;
use crate::optim::{adam::*, sgd::*};
use crate::study::shadow::Prepared;
use crate::tensor::DType;

/// The seed model's batch.
pub const BATCH: usize = 32;

/// Every kernel the bench covers, by the name of its case's `kernel`
/// field (a launcher's name, or the pair it times together).
pub const KERNELS: &[&str] = &[
    "matmul_ab",
    "matmul_atb",
    "matmul_abt",
    "relu_forward",
    "relu_backward",
    "sigmoid_forward",
    "sigmoid_backward",
    "tanh_forward",
    "tanh_backward",
    "bias_add",
    "bias_backward",
    "conv2d_forward",
    "conv2d_backward_input",
    "conv2d_backward_weight",
    "conv2d_backward_bias",
    "maxpool_forward",
    "maxpool_backward",
    "maxpool_relu_backward",
    "embedding_forward",
    "embedding_backward",
    "segment_sum",
    "lstm_forward",
    "lstm_backward",
    "rnn_forward",
    "rnn_backward",
    "concat_forward",
    "concat_backward",
    "dropout_forward",
    "dropout_backward",
    "average_forward",
    "average_backward",
    "softmax_cross_entropy_forward",
    "softmax_cross_entropy_backward",
    "weighted_softmax_cross_entropy_forward",
    "weighted_softmax_cross_entropy_backward",
    "reduce_sum_accuracy_count",
    "adam_update",
    "sgd_update",
];

/// What a case does, for throughput figures.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum Work {
    /// Floating-point operations (an FMA counts as 2).
    Flops(f64),
    /// Bytes read plus written.
    Bytes(f64),
}

/// One benchmark: GPU dispatches prepared once (recorded in order in one
/// submit), and the CPU reference computing the same thing.
pub struct Case {
    /// One of [`KERNELS`].
    pub kernel: &'static str,
    /// The kernel with its shape, e.g. `conv2d_forward 32x28x28x1 -> 32 3x3`.
    pub name: String,
    /// The matmul sweep's size (M = N = K), for the plot.
    pub sweep: Option<usize>,
    pub work: Work,
    pub gpu: Vec<Dispatch>,
    pub cpu: Box<dyn FnMut()>,
}

impl Case {
    /// Whether `filter` selects this case (part of its kernel or name).
    pub fn matches(&self, filter: &str) -> bool {
        self.kernel.contains(filter) || self.name.contains(filter)
    }
}

// ---------------------------------------------------------------- cases

fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn rand_array(shape: &[usize], seed: u64) -> ArrayD<f32> {
    ArrayD::from_shape_vec(IxDyn(shape), rand_vec(shape.iter().product(), seed))
        .expect("length matches the shape")
}

fn array2(rows: usize, cols: usize, seed: u64) -> Array2<f32> {
    Array2::from_shape_vec((rows, cols), rand_vec(rows * cols, seed)).expect("length matches")
}

fn array4(shape: [usize; 4], seed: u64) -> Array4<f32> {
    Array4::from_shape_vec(shape, rand_vec(shape.iter().product(), seed)).expect("length matches")
}

/// Token ids in `[1, vocab)`, about a third of them 0 (Keras-style padding).
fn tokens(n: usize, vocab: u32, seed: u64) -> Vec<u32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            if rng.random_bool(0.3) {
                0
            } else {
                rng.random_range(1..vocab)
            }
        })
        .collect()
}

fn upload<D: ndarray::Dimension>(
    ctx: &GpuContext,
    a: &ndarray::Array<f32, D>,
) -> Result<GpuTensor> {
    let a = a.as_standard_layout();
    ctx.upload_f32(a.as_slice().expect("standard layout"), a.shape())
}

fn zeros(ctx: &GpuContext, shape: &[usize]) -> Result<GpuTensor> {
    ctx.zeros(shape, DType::F32)
}

/// `C[m,n] = op(A)·op(B)` for `layout`, labelled `kernel label`.
pub fn matmul_case(
    ctx: &GpuContext,
    label: &str,
    layout: Layout,
    (m, n, k): (usize, usize, usize),
) -> Result<Case> {
    let (ashape, bshape) = match layout {
        Layout::AB => ((m, k), (k, n)),
        Layout::AtB => ((k, m), (k, n)),
        Layout::ABt => ((m, k), (n, k)),
    };
    let a = array2(ashape.0, ashape.1, 1);
    let b = array2(bshape.0, bshape.1, 2);
    let (ga, gb, gc) = (upload(ctx, &a)?, upload(ctx, &b)?, zeros(ctx, &[m, n])?);
    let kernel = match layout {
        Layout::AB => "matmul_ab",
        Layout::AtB => "matmul_atb",
        Layout::ABt => "matmul_abt",
    };
    Ok(Case {
        kernel,
        name: format!("{kernel} {label} {m}x{k}·{k}x{n}"),
        sweep: None,
        work: Work::Flops(2.0 * (m * n * k) as f64),
        gpu: vec![matmul(
            ctx,
            layout,
            &gc,
            &ga,
            &gb,
            MatmulParams::new(m, n, k),
        )?],
        cpu: Box::new(move || {
            std::hint::black_box(matmul_cpu(layout, &a.view(), &b.view()));
        }),
    })
}

fn matmul_cases(ctx: &GpuContext, cases: &mut Vec<Case>) -> Result<()> {
    // The LSTM's recurrent step, its batched input projection and dU; the
    // dense layer's forward and its input gradient.
    cases.push(matmul_case(ctx, "lstm step", Layout::AB, (BATCH, 256, 64))?);
    cases.push(matmul_case(
        ctx,
        "lstm input projection",
        Layout::AB,
        (3200, 256, 32),
    )?);
    cases.push(matmul_case(ctx, "lstm dU", Layout::AtB, (64, 256, 3200))?);
    cases.push(matmul_case(
        ctx,
        "dense forward",
        Layout::AB,
        (BATCH, 2, 5472),
    )?);
    cases.push(matmul_case(ctx, "dense dW", Layout::AtB, (5472, 2, BATCH))?);
    cases.push(matmul_case(ctx, "dense dX", Layout::ABt, (BATCH, 5472, 2))?);
    cases.push(matmul_case(ctx, "lstm dh", Layout::ABt, (BATCH, 64, 256))?);
    // The seed conv's forward as a product (im2col rows · taps · filters):
    // the same FLOPs and shape as `conv2d_forward 32x28x28x1 -> 32 3x3`.
    cases.push(matmul_case(
        ctx,
        "seed conv as im2col",
        Layout::AB,
        (BATCH * 26 * 26, 32, 9),
    )?);
    Ok(())
}

fn activation_cases(ctx: &GpuContext, cases: &mut Vec<Case>) -> Result<()> {
    // ReLU after the seed conv (32×26×26×32); sigmoid and tanh at the size
    // of the LSTM's gates over all steps (3200×256).
    for (act, shape, label) in [
        (Activation::Relu, vec![BATCH, 26, 26, 32], "32x26x26x32"),
        (Activation::Sigmoid, vec![3200, 256], "3200x256"),
        (Activation::Tanh, vec![3200, 256], "3200x256"),
    ] {
        let (fwd, bwd) = match act {
            Activation::Relu => ("relu_forward", "relu_backward"),
            Activation::Sigmoid => ("sigmoid_forward", "sigmoid_backward"),
            Activation::Tanh => ("tanh_forward", "tanh_backward"),
        };
        let n = shape.iter().product::<usize>() as f64;
        let x = rand_array(&shape, 3);
        let dy = rand_array(&shape, 4);
        let (gx, gy, gdy, gdx) = (
            upload(ctx, &x)?,
            zeros(ctx, &shape)?,
            upload(ctx, &dy)?,
            zeros(ctx, &shape)?,
        );
        let saved_cpu = if act.backward_uses_input() {
            x.clone()
        } else {
            activation_forward_cpu(act, &x.view())
        };
        let x1 = x.clone();
        cases.push(Case {
            kernel: fwd,
            name: format!("{fwd} {label}"),
            sweep: None,
            work: Work::Bytes(8.0 * n),
            gpu: vec![activation_forward(ctx, act, &gx, &gy)?],
            cpu: Box::new(move || {
                std::hint::black_box(activation_forward_cpu(act, &x1.view()));
            }),
        });
        let saved = if act.backward_uses_input() { &gx } else { &gy };
        let mut dx = ArrayD::<f32>::zeros(IxDyn(&shape));
        cases.push(Case {
            kernel: bwd,
            name: format!("{bwd} {label}"),
            sweep: None,
            work: Work::Bytes(16.0 * n),
            gpu: vec![activation_backward(ctx, act, &gdx, &gdy, saved)?],
            cpu: Box::new(move || {
                activation_backward_cpu(act, &mut dx, &dy.view(), &saved_cpu.view())
            }),
        });
    }
    Ok(())
}

fn bias_cases(ctx: &GpuContext, cases: &mut Vec<Case>) -> Result<()> {
    // The conv output's shape: 21632 rows of 32.
    let shape = [BATCH * 26 * 26, 32];
    let y = rand_array(&shape, 5);
    let b = Array1::from_vec(rand_vec(32, 6));
    let (gy, gb) = (upload(ctx, &y)?, upload(ctx, &b)?);
    let mut y1 = y.clone();
    let b1 = b.clone();
    cases.push(Case {
        kernel: "bias_add",
        name: "bias_add 21632x32".into(),
        sweep: None,
        work: Work::Bytes(8.0 * y.len() as f64),
        gpu: vec![bias_add(ctx, &gy, &gb)?],
        cpu: Box::new(move || bias_add_cpu(&mut y1, &b1.view())),
    });
    let dy = rand_array(&shape, 7);
    let gdy = upload(ctx, &dy)?;
    let gdb = zeros(ctx, &[32])?;
    let mut db = Array1::<f32>::zeros(32);
    cases.push(Case {
        kernel: "bias_backward",
        name: "bias_backward 21632x32".into(),
        sweep: None,
        work: Work::Bytes(4.0 * dy.len() as f64),
        gpu: bias_backward(ctx, &gdb, &gdy)?,
        cpu: Box::new(move || bias_backward_cpu(&mut db, &dy.view())),
    });
    Ok(())
}

/// The four conv passes at geometry `g` (weights `kh x kw x Cin x Cout`),
/// labelled `label` (the shape in words).
fn conv_cases(
    ctx: &GpuContext,
    cases: &mut Vec<Case>,
    g: Conv2dGeometry,
    label: &str,
) -> Result<()> {
    let [kh, kw, cin, cout] = g.weight_shape();
    let (x, w, b) = (
        array4(g.input_shape(), 23),
        array4(g.weight_shape(), 24),
        Array1::from_vec(rand_vec(cout, 25)),
    );
    let dy = array4(g.output_shape(), 26);
    let (gx, gw, gb, gdy) = (
        upload(ctx, &x)?,
        upload(ctx, &w)?,
        upload(ctx, &b)?,
        upload(ctx, &dy)?,
    );
    let gy = zeros(ctx, &g.output_shape())?;
    let (gdx, gdw, gdb) = (
        zeros(ctx, &g.input_shape())?,
        zeros(ctx, &g.weight_shape())?,
        zeros(ctx, &[cout])?,
    );
    // Every pass does one multiply-add per (output element, tap).
    let taps = kh * kw * cin;
    let flops = 2.0 * (g.output_shape().iter().product::<usize>() * taps) as f64;
    let (x1, w1) = (x.clone(), w.clone());
    cases.push(Case {
        kernel: "conv2d_forward",
        name: format!("conv2d_forward {label}"),
        sweep: None,
        work: Work::Flops(flops),
        gpu: vec![conv2d_forward(ctx, &gx, &gw, &gb, &gy, &g)?],
        cpu: Box::new(move || {
            std::hint::black_box(conv2d_forward_cpu(&x1.view(), &w1.view(), &b.view(), &g));
        }),
    });
    let (mut dx, dy1) = (Array4::<f32>::zeros(g.input_shape()), dy.clone());
    cases.push(Case {
        kernel: "conv2d_backward_input",
        name: format!("conv2d_backward_input {label}"),
        sweep: None,
        work: Work::Flops(flops),
        gpu: conv2d_backward_input(ctx, &gdx, &gdy, &gw, &g)?,
        cpu: Box::new(move || conv2d_backward_input_cpu(&mut dx, &dy1.view(), &w.view(), &g)),
    });
    let (mut dw, dy2) = (Array4::<f32>::zeros(g.weight_shape()), dy.clone());
    cases.push(Case {
        kernel: "conv2d_backward_weight",
        name: format!("conv2d_backward_weight {label}"),
        sweep: None,
        work: Work::Flops(flops),
        gpu: vec![conv2d_backward_weight(ctx, &gdw, &gdy, &gx, &g)?],
        cpu: Box::new(move || conv2d_backward_weight_cpu(&mut dw, &dy2.view(), &x.view(), &g)),
    });
    let (mut db, bytes) = (Array1::<f32>::zeros(cout), 4.0 * dy.len() as f64);
    cases.push(Case {
        kernel: "conv2d_backward_bias",
        name: format!("conv2d_backward_bias {label}"),
        sweep: None,
        work: Work::Bytes(bytes),
        gpu: vec![conv2d_backward_bias(ctx, &gdb, &gdy, &g)?],
        cpu: Box::new(move || conv2d_backward_bias_cpu(&mut db, &dy.view(), &g)),
    });
    Ok(())
}

/// The conv at about the FLOPs of the 512³ matmul (265 vs 268 MFLOP), with
/// 32 input channels: the seed's conv (one input channel, 9 taps) moves
/// far more bytes per FLOP than a matmul, so this is the shape at which the
/// conv kernels' fraction of peak compares with matmul's. Odd sides (15)
/// and Same padding exercise the edges.
pub const CONV_EQUAL_FLOPS: &str = "32x15x15x32 -> 64 3x3 same (matmul 512³ FLOPs)";

fn image_cases(ctx: &GpuContext, cases: &mut Vec<Case>) -> Result<()> {
    // The seed image branch: 32×28×28×1 -> Conv2D(32, 3×3, valid) -> MaxPool 2×2.
    let g = Conv2dGeometry::new([BATCH, 28, 28, 1], 32, [3, 3], [1, 1], Padding::Valid)?;
    conv_cases(ctx, cases, g, "32x28x28x1 -> 32 3x3")?;
    let g = Conv2dGeometry::new([BATCH, 15, 15, 32], 64, [3, 3], [1, 1], Padding::Same)?;
    conv_cases(ctx, cases, g, CONV_EQUAL_FLOPS)?;

    let p = Pool2dGeometry::keras([BATCH, 26, 26, 32], [2, 2])?;
    let px = array4(p.input_shape(), 27);
    let pdy = array4(p.output_shape(), 28);
    let (gpx, gpdy) = (upload(ctx, &px)?, upload(ctx, &pdy)?);
    let gpy = zeros(ctx, &p.output_shape())?;
    let garg = ctx.zeros(&p.output_shape(), DType::U32)?;
    let gpdx = zeros(ctx, &p.input_shape())?;
    let bytes = 4.0 * (px.len() + 2 * pdy.len()) as f64;
    let px1 = px.clone();
    let forward = maxpool_forward(ctx, &gpx, &gpy, &garg, &p)?;
    // Run once now, so that argmax holds the device's indices whichever
    // cases a filter keeps.
    ctx.run(&[&forward])?;
    cases.push(Case {
        kernel: "maxpool_forward",
        name: "maxpool_forward 32x26x26x32 2x2".into(),
        sweep: None,
        work: Work::Bytes(bytes),
        gpu: vec![forward],
        cpu: Box::new(move || {
            std::hint::black_box(maxpool_forward_cpu(&px1.view(), &p));
        }),
    });
    let (_, argmax) = maxpool_forward_cpu(&px.view(), &p);
    let mut pdx = Array4::<f32>::zeros(p.input_shape());
    cases.push(Case {
        kernel: "maxpool_backward",
        name: "maxpool_backward 32x26x26x32 2x2".into(),
        sweep: None,
        work: Work::Bytes(bytes),
        gpu: vec![maxpool_backward(ctx, &gpdx, &gpdy, &garg, &p)?],
        cpu: Box::new(move || maxpool_backward_cpu(&mut pdx, &pdy.view(), &argmax.view(), &p)),
    });
    // The same with a ReLU's backward fused in (the seed's conv ReLU): the
    // CPU side adds dy where the pooled maximum is positive.
    let (py, argmax) = maxpool_forward_cpu(&px.view(), &p);
    let pdy = array4(p.output_shape(), 28);
    let mut pdz = vec![0.0f32; px.len()];
    cases.push(Case {
        kernel: "maxpool_relu_backward",
        name: "maxpool_relu_backward 32x26x26x32 2x2".into(),
        sweep: None,
        work: Work::Bytes(bytes + 4.0 * pdy.len() as f64),
        gpu: vec![maxpool_relu_backward(ctx, &gpdx, &gpdy, &garg, &gpy, &p)?],
        cpu: Box::new(move || {
            for ((&a, &d), &y) in argmax.iter().zip(pdy.iter()).zip(py.iter()) {
                if y > 0.0 {
                    pdz[a as usize] += d;
                }
            }
            std::hint::black_box(&pdz);
        }),
    });
    Ok(())
}

fn embedding_cases(ctx: &GpuContext, cases: &mut Vec<Case>) -> Result<()> {
    let (vocab, dim, steps) = (10000, 32, 100);
    let toks = tokens(BATCH * steps, vocab as u32, 6);
    let table = array2(vocab, dim, 7);
    let dy = array2(BATCH * steps, dim, 8);
    let gtable = upload(ctx, &table)?;
    let gtok = ctx.upload_u32(&toks, &[steps, BATCH])?;
    let gorder = ctx.upload_u32(&token_order(&toks), &[steps * BATCH])?;
    let gout = zeros(ctx, &[steps, BATCH, dim])?;
    let gdy = upload(ctx, &dy)?;
    let gdt = zeros(ctx, &[vocab, dim])?;
    let bytes = (BATCH * steps * dim * 8) as f64;
    let t1 = toks.clone();
    let chunks = token_chunks(&toks);
    cases.push(Case {
        kernel: "embedding_forward",
        name: "embedding_forward 10000x32 [100,32]".into(),
        sweep: None,
        work: Work::Bytes(bytes),
        gpu: vec![embedding_forward(ctx, &gtable, &gtok, &gout)?],
        cpu: Box::new(move || {
            std::hint::black_box(embedding_forward_cpu(&table.view(), &t1));
        }),
    });
    let mut dt = Array2::<f32>::zeros((vocab, dim));
    cases.push(Case {
        kernel: "embedding_backward",
        name: "embedding_backward 10000x32 [100,32]".into(),
        sweep: None,
        work: Work::Bytes(bytes),
        gpu: vec![embedding_backward(
            ctx,
            &gdt,
            &gdy,
            &gtok,
            &gorder,
            Some(0),
        )?],
        cpu: Box::new(move || embedding_backward_cpu(&mut dt, &dy.view(), &toks, Some(0))),
    });
    // The LSTM's gate gradients summed per chunk of equal tokens (the
    // graph executor's chunked embedding input) for the same tokens.
    let gates = 256;
    let dz = array2(BATCH * steps, gates, 15);
    let gdz = upload(ctx, &dz)?;
    let gorder = ctx.upload_u32(&chunks.order, &[chunks.order.len()])?;
    let gstart = ctx.upload_u32(&chunks.start, &[chunks.start.len()])?;
    let gsums = zeros(ctx, &[chunks.chunks().max(1), gates])?;
    cases.push(Case {
        kernel: "segment_sum",
        name: format!(
            "segment_sum [{},{gates}] in {} chunks",
            BATCH * steps,
            chunks.chunks()
        ),
        sweep: None,
        work: Work::Bytes((BATCH * steps * gates * 4 + chunks.chunks() * gates * 4) as f64),
        gpu: vec![segment_sum(
            ctx,
            &gsums,
            &gdz,
            &gorder,
            &gstart,
            chunks.chunks(),
        )?],
        cpu: Box::new(move || {
            std::hint::black_box(segment_sum_cpu(&dz.view(), &chunks.order, &chunks.start));
        }),
    });
    Ok(())
}

/// The seed's LSTM (T100 B32 D32 H64, masked) and the same shape as a
/// SimpleRNN (`experiments/rnn_fusion.ron`), forward and backward, on the
/// persistent path where the adapter allows it (named in the case).
/// The operands of a recurrent layer's cases (the seed's sizes), on the
/// host and on the device: x `[T,B,D]` (its first `shared` steps the same in
/// every sample), W, U, b for `gates` columns, and an incoming gradient of
/// h_T only (`dh_seq` holds it in its last step for the CPU references).
struct RecurrentOperands {
    x: Array3<f32>,
    w: Array2<f32>,
    u: Array2<f32>,
    bias: Array1<f32>,
    dh_seq: Array3<f32>,
    gx: GpuTensor,
    gw: GpuTensor,
    gu: GpuTensor,
    gb: GpuTensor,
    gdh: GpuTensor,
    gdx: GpuTensor,
    gdw: GpuTensor,
    gdu: GpuTensor,
    gdb: GpuTensor,
}

impl RecurrentOperands {
    fn new(ctx: &GpuContext, dims: RecurrentDims, gates: usize, shared: usize) -> Result<Self> {
        let RecurrentDims {
            steps: t,
            batch: b,
            input: d,
            hidden: h,
        } = dims;
        let mut x = Array3::from_shape_vec((t, b, d), rand_vec(t * b * d, 9)).expect("length");
        for i in 0..shared {
            let first = x.slice(s![i, 0, ..]).to_owned();
            for mut row in x.index_axis_mut(Axis(0), i).outer_iter_mut() {
                row.assign(&first);
            }
        }
        let w = array2(d, gates, 10) * 0.2;
        let u = array2(h, gates, 11) * 0.2;
        let bias = Array1::from_vec(rand_vec(gates, 12));
        let dh_last = array2(b, h, 14);
        let mut dh_seq = Array3::<f32>::zeros((t, b, h));
        dh_seq.index_axis_mut(Axis(0), t - 1).assign(&dh_last);
        Ok(Self {
            gx: upload(ctx, &x)?,
            gw: upload(ctx, &w)?,
            gu: upload(ctx, &u)?,
            gb: upload(ctx, &bias)?,
            gdh: upload(ctx, &dh_last)?,
            gdx: zeros(ctx, &[t, b, d])?,
            gdw: zeros(ctx, &[d, gates])?,
            gdu: zeros(ctx, &[h, gates])?,
            gdb: zeros(ctx, &[gates])?,
            x,
            w,
            u,
            bias,
            dh_seq,
        })
    }

    fn weights(&self) -> RecurrentWeights<'_> {
        RecurrentWeights {
            w: &self.gw,
            u: &self.gu,
            b: &self.gb,
        }
    }

    fn grads(&self) -> RecurrentGrads<'_> {
        RecurrentGrads {
            dx: Some(&self.gdx),
            dw: Some(&self.gdw),
            du: &self.gdu,
            db: &self.gdb,
        }
    }

    fn dh(&self) -> HiddenGrad<'_> {
        HiddenGrad {
            seq: None,
            last: Some(&self.gdh),
        }
    }
}

fn recurrent_cases(ctx: &GpuContext, cases: &mut Vec<Case>) -> Result<()> {
    let (t, b, d, h) = (100, BATCH, 32, 64);
    let dims = RecurrentDims::new(t, b, d, h);
    let toks = tokens(t * b, 10000, 13);
    let mask = Array2::from_shape_fn((t, b), |(i, j)| toks[i * b + j] != 0);
    let gmask = ctx.upload_u32(&toks, &[t, b])?;

    for lstm in [true, false] {
        let g = if lstm { 4 * h } else { h };
        let ops = RecurrentOperands::new(ctx, dims, g, 0)?;
        let (x, w, u, bias) = (&ops.x, &ops.w, &ops.u, &ops.bias);
        let (gx, weights, grads, dh) = (&ops.gx, ops.weights(), ops.grads(), ops.dh());
        // Per step: 2·B·H·G for h·U, plus the input projection 2·B·D·G.
        let flops = 2.0 * (t * b * g * (h + d)) as f64;
        let (x1, m1, w1, u1, b1) = (x.clone(), mask.clone(), w.clone(), u.clone(), bias.clone());
        let (x2, m2, dh2) = (x.clone(), mask.clone(), ops.dh_seq.clone());
        let (w2, u2) = (w.clone(), u.clone());
        let mut cpu_grads = RecurrentCpuGrads::zeros(dims, g);
        // Per cell: its kernel names, which GPU path runs, the prepared
        // dispatches and the two CPU references (the rest is shared).
        type CpuFn = Box<dyn FnMut()>;
        let (names, persistent, fwd, bwd, cpu_fwd, cpu_bwd): (_, _, _, _, CpuFn, CpuFn) = if lstm {
            let bufs = RecurrentBuffers::<LstmState>::new(ctx, dims)?;
            let states = lstm_forward_cpu(
                &x.view(),
                &w.view(),
                &u.view(),
                &bias.view(),
                Some(&mask.view()),
            );
            (
                ["lstm_forward", "lstm_backward"],
                recurrent_persistent_support::<LstmState>(ctx, dims).is_ok(),
                recurrent_forward_sequence(ctx, &bufs, gx, &weights, Some(&gmask))?,
                recurrent_backward_sequence(ctx, &grads, dh, &bufs, gx, &weights, Some(&gmask))?,
                Box::new(move || {
                    std::hint::black_box(lstm_forward_cpu(
                        &x1.view(),
                        &w1.view(),
                        &u1.view(),
                        &b1.view(),
                        Some(&m1.view()),
                    ));
                }),
                Box::new(move || {
                    lstm_backward_cpu(
                        &mut cpu_grads,
                        &dh2.view(),
                        &states,
                        &x2.view(),
                        &w2.view(),
                        &u2.view(),
                        Some(&m2.view()),
                    )
                }),
            )
        } else {
            let bufs = RecurrentBuffers::<RnnState>::new(ctx, dims)?;
            let h_all = rnn_forward_cpu(
                &x.view(),
                &w.view(),
                &u.view(),
                &bias.view(),
                Some(&mask.view()),
            );
            (
                ["rnn_forward", "rnn_backward"],
                recurrent_persistent_support::<RnnState>(ctx, dims).is_ok(),
                recurrent_forward_sequence(ctx, &bufs, gx, &weights, Some(&gmask))?,
                recurrent_backward_sequence(ctx, &grads, dh, &bufs, gx, &weights, Some(&gmask))?,
                Box::new(move || {
                    std::hint::black_box(rnn_forward_cpu(
                        &x1.view(),
                        &w1.view(),
                        &u1.view(),
                        &b1.view(),
                        Some(&m1.view()),
                    ));
                }),
                Box::new(move || {
                    rnn_backward_cpu(
                        &mut cpu_grads,
                        &dh2.view(),
                        &h_all.view(),
                        &x2.view(),
                        &w2.view(),
                        &u2.view(),
                        Some(&m2.view()),
                    )
                }),
            )
        };
        let path = if persistent { "persistent" } else { "stepwise" };
        for (kernel, gpu, cpu, work) in [
            (names[0], fwd, cpu_fwd, flops),
            (names[1], bwd, cpu_bwd, 2.0 * flops),
        ] {
            cases.push(Case {
                kernel,
                name: format!("{kernel} T{t} B{b} D{d} H{h} ({path})"),
                sweep: None,
                work: Work::Flops(work),
                gpu,
                cpu,
            });
        }
    }
    Ok(())
}

/// The seed's LSTM on pre-padded texts without a mask: the first
/// [`SHARED_STEPS`] steps the same in every sample, run once on both
/// backends (`recurrent_forward_shared`, `lstm_forward_shared_cpu`). Work:
/// the FLOPs actually run (one row for the shared steps).
const SHARED_STEPS: usize = 70;

fn shared_lstm_cases(ctx: &GpuContext, cases: &mut Vec<Case>) -> Result<()> {
    let (t, b, d, h, shared) = (100, BATCH, 32, 64, SHARED_STEPS);
    let g = 4 * h;
    let dims = RecurrentDims::new(t, b, d, h);
    let ops = RecurrentOperands::new(ctx, dims, g, shared)?;
    let RecurrentOperands {
        x,
        w,
        u,
        bias,
        dh_seq,
        ..
    } = &ops;
    let carry = zeros(ctx, &[shared_carry_len(dims, 4)])?;
    let (gx, weights, grads, dh) = (&ops.gx, ops.weights(), ops.grads(), ops.dh());
    let bufs = RecurrentBuffers::<LstmState>::new(ctx, dims)?;
    if !recurrent_shares_steps::<LstmState>(ctx, dims) {
        return Ok(());
    }
    let fwd = recurrent_forward_shared(ctx, &bufs, gx, &weights, None, shared)?;
    let bwd =
        recurrent_backward_shared(ctx, &grads, dh, &bufs, gx, &weights, None, &carry, shared)?;
    let states =
        lstm_forward_shared_cpu(&x.view(), &w.view(), &u.view(), &bias.view(), None, shared);
    // The input projection over every row, the recurrence over one row for
    // the shared steps and every row after them (backward: twice that).
    let rows = shared + (t - shared) * b;
    let flops = 2.0 * (t * b * g * d + rows * g * h) as f64;
    let (x1, w1, u1, b1) = (x.clone(), w.clone(), u.clone(), bias.clone());
    let (x2, w2, u2, dh2) = (x.clone(), w.clone(), u.clone(), dh_seq.clone());
    let mut cpu_grads = RecurrentCpuGrads::zeros(dims, g);
    let name =
        |kernel: &str| format!("{kernel} T{t} B{b} D{d} H{h} ({shared} of {t} steps shared)");
    cases.push(Case {
        kernel: "lstm_forward",
        name: name("lstm_forward"),
        sweep: None,
        work: Work::Flops(flops),
        gpu: fwd,
        cpu: Box::new(move || {
            std::hint::black_box(lstm_forward_shared_cpu(
                &x1.view(),
                &w1.view(),
                &u1.view(),
                &b1.view(),
                None,
                shared,
            ));
        }),
    });
    cases.push(Case {
        kernel: "lstm_backward",
        name: name("lstm_backward"),
        sweep: None,
        work: Work::Flops(2.0 * flops),
        gpu: bwd,
        cpu: Box::new(move || {
            lstm_backward_cpu(
                &mut cpu_grads,
                &dh2.view(),
                &states,
                &x2.view(),
                &w2.view(),
                &u2.view(),
                None,
            )
        }),
    });
    Ok(())
}

fn head_cases(ctx: &GpuContext, cases: &mut Vec<Case>) -> Result<()> {
    // Concat of the LSTM output and the flattened image features.
    let (text, image) = (rand_array(&[BATCH, 64], 15), rand_array(&[BATCH, 5408], 16));
    let (gt, gi) = (upload(ctx, &text)?, upload(ctx, &image)?);
    let gcat = zeros(ctx, &[BATCH, 64 + 5408])?;
    let bytes = (BATCH * (64 + 5408) * 8) as f64;
    cases.push(Case {
        kernel: "concat_forward",
        name: "concat_forward 32x64+32x5408".into(),
        sweep: None,
        work: Work::Bytes(bytes),
        gpu: concat_forward_all(ctx, &[&gt, &gi], &gcat)?,
        cpu: Box::new(move || {
            std::hint::black_box(concat_forward_cpu(&[text.view(), image.view()]));
        }),
    });
    let dy = rand_array(&[BATCH, 64 + 5408], 17);
    let gdy = upload(ctx, &dy)?;
    let (gdt, gdi) = (zeros(ctx, &[BATCH, 64])?, zeros(ctx, &[BATCH, 5408])?);
    let (mut dt, mut di) = (
        ArrayD::<f32>::zeros(IxDyn(&[BATCH, 64])),
        ArrayD::<f32>::zeros(IxDyn(&[BATCH, 5408])),
    );
    let dy1 = dy.clone();
    cases.push(Case {
        kernel: "concat_backward",
        name: "concat_backward 32x64+32x5408".into(),
        sweep: None,
        work: Work::Bytes(bytes),
        gpu: concat_backward_all(ctx, &[&gdt, &gdi], &gdy)?,
        cpu: Box::new(move || concat_backward_cpu(&mut [&mut dt, &mut di], &dy1.view())),
    });

    // Dropout(0.2) on the fused features (`experiments/rnn_fusion.ron`).
    let drop = Dropout::new(0.2, 7)?;
    let x = rand_array(&[BATCH, 5472], 18);
    let gx = upload(ctx, &x)?;
    let gy = zeros(ctx, &[BATCH, 5472])?;
    let gdx = zeros(ctx, &[BATCH, 5472])?;
    let n = x.len() as f64;
    cases.push(Case {
        kernel: "dropout_forward",
        name: "dropout_forward 32x5472 rate 0.2".into(),
        sweep: None,
        work: Work::Bytes(8.0 * n),
        gpu: vec![dropout_forward(ctx, &drop, &gx, &gy, Some(1))?],
        cpu: Box::new(move || {
            std::hint::black_box(dropout_forward_cpu(&drop, &x.view(), Some(1)));
        }),
    });
    let mut dx = ArrayD::<f32>::zeros(IxDyn(&[BATCH, 5472]));
    cases.push(Case {
        kernel: "dropout_backward",
        name: "dropout_backward 32x5472 rate 0.2".into(),
        sweep: None,
        work: Work::Bytes(12.0 * n),
        gpu: vec![dropout_backward(ctx, &drop, &gdx, &gdy, 1)?],
        cpu: Box::new(move || dropout_backward_cpu(&drop, &mut dx, &dy.view(), 1)),
    });

    // Softmax cross-entropy on the seed's 32×2 logits.
    let logits = array2(BATCH, 2, 18);
    let labels: Vec<u32> = (0..BATCH as u32).map(|i| i % 2).collect();
    let gl = upload(ctx, &logits)?;
    let glab = ctx.upload_u32(&labels, &[BATCH])?;
    let (gp, gloss) = (zeros(ctx, &[BATCH, 2])?, zeros(ctx, &[BATCH])?);
    let gdl = zeros(ctx, &[BATCH, 2])?;
    let (l1, lab1) = (logits.clone(), labels.clone());
    cases.push(Case {
        kernel: "softmax_cross_entropy_forward",
        name: "softmax_cross_entropy_forward 32x2".into(),
        sweep: None,
        work: Work::Bytes((BATCH * 2 * 8) as f64),
        gpu: vec![softmax_cross_entropy_forward(ctx, &gl, &glab, &gp, &gloss)?],
        cpu: Box::new(move || {
            std::hint::black_box(softmax_cross_entropy_forward_cpu(&l1.view(), &lab1));
        }),
    });
    let probs = softmax_forward_cpu(&logits.view());
    let mut dl = Array2::<f32>::zeros((BATCH, 2));
    let lab2 = labels.clone();
    cases.push(Case {
        kernel: "softmax_cross_entropy_backward",
        name: "softmax_cross_entropy_backward 32x2".into(),
        sweep: None,
        work: Work::Bytes((BATCH * 2 * 8) as f64),
        gpu: vec![softmax_cross_entropy_backward(ctx, &gdl, &gp, &glab)?],
        cpu: Box::new(move || softmax_cross_entropy_backward_cpu(&mut dl, &probs.view(), &lab2)),
    });

    // Late fusion (`experiments/late_fusion.ron`): the two heads' 32×2
    // logits averaged, and the class-weighted loss.
    let heads = [rand_array(&[BATCH, 2], 21), rand_array(&[BATCH, 2], 22)];
    let gheads = [upload(ctx, &heads[0])?, upload(ctx, &heads[1])?];
    let gavg = zeros(ctx, &[BATCH, 2])?;
    let [h0, h1] = heads;
    cases.push(Case {
        kernel: "average_forward",
        name: "average_forward 2x32x2".into(),
        sweep: None,
        work: Work::Bytes((BATCH * 2 * 12) as f64),
        gpu: average_forward(ctx, &[&gheads[0], &gheads[1]], &gavg)?,
        cpu: Box::new(move || {
            std::hint::black_box(average_forward_cpu(&[h0.view(), h1.view()]));
        }),
    });
    let (gd0, gd1) = (zeros(ctx, &[BATCH, 2])?, zeros(ctx, &[BATCH, 2])?);
    let davg = rand_array(&[BATCH, 2], 23);
    let gdavg = upload(ctx, &davg)?;
    let (mut d0, mut d1) = (
        ArrayD::<f32>::zeros(IxDyn(&[BATCH, 2])),
        ArrayD::<f32>::zeros(IxDyn(&[BATCH, 2])),
    );
    cases.push(Case {
        kernel: "average_backward",
        name: "average_backward 2x32x2".into(),
        sweep: None,
        work: Work::Bytes((BATCH * 2 * 12) as f64),
        gpu: average_backward(ctx, &[&gd0, &gd1], &gdavg, 2)?,
        cpu: Box::new(move || {
            average_backward_cpu(&mut d0, &davg.view(), 2);
            average_backward_cpu(&mut d1, &davg.view(), 2);
        }),
    });
    let weights = [0.75f32, 1.5];
    let gw = ctx.upload_f32(&weights, &[2])?;
    let (l3, lab3) = (logits.clone(), labels.clone());
    cases.push(Case {
        kernel: "weighted_softmax_cross_entropy_forward",
        name: "weighted_softmax_cross_entropy_forward 32x2".into(),
        sweep: None,
        work: Work::Bytes((BATCH * 2 * 8) as f64),
        gpu: vec![weighted_softmax_cross_entropy_forward(
            ctx, &gl, &glab, &gw, &gp, &gloss,
        )?],
        cpu: Box::new(move || {
            std::hint::black_box(weighted_softmax_cross_entropy_forward_cpu(
                &l3.view(),
                &lab3,
                &weights,
            ));
        }),
    });
    let probs3 = softmax_forward_cpu(&logits.view());
    let mut dl3 = Array2::<f32>::zeros((BATCH, 2));
    let lab4 = labels.clone();
    cases.push(Case {
        kernel: "weighted_softmax_cross_entropy_backward",
        name: "weighted_softmax_cross_entropy_backward 32x2".into(),
        sweep: None,
        work: Work::Bytes((BATCH * 2 * 8) as f64),
        gpu: vec![weighted_softmax_cross_entropy_backward(
            ctx, &gdl, &gp, &glab, &gw,
        )?],
        cpu: Box::new(move || {
            weighted_softmax_cross_entropy_backward_cpu(&mut dl3, &probs3.view(), &lab4, &weights)
        }),
    });

    // Loss sum and accuracy count for metrics.
    let gsum = zeros(ctx, &[1])?;
    let gcount = ctx.zeros(&[1], DType::U32)?;
    let loss = rand_array(&[BATCH], 19);
    let p2 = softmax_forward_cpu(&array2(BATCH, 2, 20).view());
    let gprobs = upload(ctx, &p2)?;
    let mut gpu = reduce_sum(ctx, &gsum, &gloss, SumOptions::mean(BATCH))?;
    gpu.push(accuracy_count(ctx, &gcount, &gprobs, &glab)?);
    cases.push(Case {
        kernel: "reduce_sum_accuracy_count",
        name: "reduce_sum+accuracy_count 32".into(),
        sweep: None,
        work: Work::Bytes((BATCH * 16) as f64),
        gpu,
        cpu: Box::new(move || {
            std::hint::black_box(reduce_sum_cpu(&loss.view(), 1.0 / BATCH as f32));
            std::hint::black_box(accuracy_count_cpu(&p2.view(), &labels));
        }),
    });
    Ok(())
}

fn optimizer_cases(ctx: &GpuContext, cases: &mut Vec<Case>) -> Result<()> {
    // All of the seed model's parameters in one tensor (~0.34 M values).
    let n = 10000 * 32 + (32 + 64 + 1) * 256 + 3 * 3 * 32 + 32 + (64 + 5408) * 2 + 2;
    let (w, g) = (rand_array(&[n], 21), rand_array(&[n], 22));
    let (gw, gg) = (upload(ctx, &w)?, upload(ctx, &g)?);
    let (mut w1, mut m, mut v) = (
        w.clone(),
        ArrayD::<f32>::zeros(IxDyn(&[n])),
        ArrayD::<f32>::zeros(IxDyn(&[n])),
    );
    let g1 = g.clone();
    let config = AdamConfig::default();
    let (gm, gv) = (zeros(ctx, &[n])?, zeros(ctx, &[n])?);
    cases.push(Case {
        kernel: "adam_update",
        name: format!("adam_update {n}"),
        sweep: None,
        work: Work::Bytes(28.0 * n as f64),
        gpu: vec![adam_update(ctx, &gw, &gg, &gm, &gv, &config.params(n, 1))?],
        cpu: Box::new(move || adam_update_cpu(&mut w1, &g1.view(), &mut m, &mut v, &config, 1)),
    });
    let sgd = SgdConfig {
        momentum: 0.9,
        ..SgdConfig::default()
    };
    let gvel = zeros(ctx, &[n])?;
    let (mut w2, mut vel) = (w, ArrayD::<f32>::zeros(IxDyn(&[n])));
    cases.push(Case {
        kernel: "sgd_update",
        name: format!("sgd_update momentum {n}"),
        sweep: None,
        work: Work::Bytes(20.0 * n as f64),
        gpu: vec![sgd_update(ctx, &gw, &gg, &gvel, &sgd.params(n))?],
        cpu: Box::new(move || sgd_update_cpu(&mut w2, &g.view(), &mut vel, &sgd)),
    });
    Ok(())
}

/// Every kernel of [`KERNELS`] at the seed model's shapes (batch 32).
pub fn seed_cases(ctx: &GpuContext) -> Result<Vec<Case>> {
    let mut cases = Vec::new();
    matmul_cases(ctx, &mut cases)?;
    activation_cases(ctx, &mut cases)?;
    image_cases(ctx, &mut cases)?;
    bias_cases(ctx, &mut cases)?;
    embedding_cases(ctx, &mut cases)?;
    recurrent_cases(ctx, &mut cases)?;
    shared_lstm_cases(ctx, &mut cases)?;
    head_cases(ctx, &mut cases)?;
    optimizer_cases(ctx, &mut cases)?;
    Ok(cases)
}

/// The matmul sweep's sizes (M = N = K).
pub fn sweep_sizes(quick: bool) -> Vec<usize> {
    if quick {
        vec![64, 128, 256]
    } else {
        vec![64, 128, 256, 384, 512, 768, 1024]
    }
}

/// `A·B` at every size of the sweep, then the backward layouts `Aᵀ·B` and
/// `A·Bᵀ` at the largest size up to 512.
pub fn sweep_cases(ctx: &GpuContext, sizes: &[usize]) -> Result<Vec<Case>> {
    let mut cases = Vec::new();
    for &s in sizes {
        let mut c = matmul_case(ctx, "sweep", Layout::AB, (s, s, s))?;
        c.sweep = Some(s);
        cases.push(c);
    }
    if let Some(&s) = sizes.iter().filter(|&&s| s <= 512).max() {
        cases.push(matmul_case(ctx, "sweep", Layout::AtB, (s, s, s))?);
        cases.push(matmul_case(ctx, "sweep", Layout::ABt, (s, s, s))?);
    }
    Ok(cases)
}

// ---------------------------------------------------------------- timing

/// The adapter's measured limits.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Peaks {
    /// FMA-chain throughput from registers (`ops::peak::fma_peak`).
    pub fma_gflops: f64,
    /// Copy bandwidth, bytes read + written (`ops::peak::copy_bandwidth`).
    pub copy_gbs: f64,
}

/// Measures [`Peaks`] with the `ops::peak` probes.
pub fn measure_peaks(ctx: &GpuContext) -> Result<Peaks> {
    Ok(Peaks {
        fma_gflops: measure_fma_peak(ctx)?,
        copy_gbs: measure_bandwidth(ctx)?,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Times of one case, in seconds (medians).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Timing {
    pub cpu: f64,
    /// Submit + wait.
    pub gpu_wall: f64,
    /// Sum of the dispatches' timestamp intervals (`None` without timestamps).
    pub gpu_kernel: Option<f64>,
    /// The fastest GPU run (kernel time, else wall time): on a shared
    /// machine other tenants only ever add time, so this is the closest to
    /// what the kernel itself costs; the medians say what a run gets.
    pub gpu_best: f64,
}

/// Times `case`: a warm-up run of each side, then the median of `repeats` runs.
pub fn time_case(ctx: &GpuContext, case: &mut Case, repeats: usize) -> Result<Timing> {
    let repeats = repeats.max(1);
    let ds: Vec<&Dispatch> = case.gpu.iter().collect();
    let wall = || -> Result<f64> {
        let t = Instant::now();
        ctx.run(&ds)?;
        ctx.wait()?;
        Ok(t.elapsed().as_secs_f64())
    };
    wall()?;
    let walls: Vec<f64> = (0..repeats).map(|_| wall()).collect::<Result<_>>()?;
    let fastest = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let mut gpu_best = fastest(&walls);
    let gpu_wall = median(walls);
    let gpu_kernel = if ctx.has_timestamps() {
        let runs = (0..repeats)
            .map(|_| {
                Ok(ctx
                    .run_timed(&ds)?
                    .iter()
                    .map(|k| k.nanoseconds)
                    .sum::<f64>()
                    * 1e-9)
            })
            .collect::<Result<Vec<f64>>>()?;
        gpu_best = fastest(&runs);
        Some(median(runs))
    } else {
        None
    };
    (case.cpu)();
    let cpu = median(
        (0..repeats)
            .map(|_| {
                let t = Instant::now();
                (case.cpu)();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    );
    Ok(Timing {
        cpu,
        gpu_wall,
        gpu_kernel,
        gpu_best,
    })
}

/// One row of the table (and of the JSON and CSV).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    pub kernel: &'static str,
    pub name: String,
    pub sweep: Option<usize>,
    pub work: Work,
    pub dispatches: usize,
    pub cpu_us: f64,
    pub gpu_wall_us: f64,
    pub gpu_kernel_us: Option<f64>,
    /// GFLOP/s or GB/s (see `unit`) from the kernel time, else the wall time.
    pub gpu_throughput: f64,
    /// The same unit for the CPU reference.
    pub cpu_throughput: f64,
    pub unit: &'static str,
    /// `gpu_throughput` over the adapter's FMA peak or copy bandwidth.
    /// The copy probe streams buffers larger than the last-level cache, so
    /// a memory-bound kernel on a cache-resident tensor (a few MB on a
    /// software adapter) can exceed 1.
    pub fraction_of_peak: f64,
    /// The same for the fastest GPU run ([`Timing::gpu_best`]).
    pub best_fraction_of_peak: f64,
    /// CPU time over GPU wall time (> 1: the GPU is faster).
    pub cpu_over_gpu: f64,
}

impl Row {
    pub fn new(case: &Case, t: Timing, peaks: &Peaks) -> Self {
        let gpu = t.gpu_kernel.unwrap_or(t.gpu_wall);
        let (amount, unit, peak) = match case.work {
            Work::Flops(f) => (f, "GFLOP/s", peaks.fma_gflops),
            Work::Bytes(b) => (b, "GB/s", peaks.copy_gbs),
        };
        let gpu_throughput = amount / gpu * 1e-9;
        Row {
            kernel: case.kernel,
            name: case.name.clone(),
            sweep: case.sweep,
            work: case.work,
            dispatches: case.gpu.len(),
            cpu_us: t.cpu * 1e6,
            gpu_wall_us: t.gpu_wall * 1e6,
            gpu_kernel_us: t.gpu_kernel.map(|k| k * 1e6),
            gpu_throughput,
            cpu_throughput: amount / t.cpu * 1e-9,
            unit,
            fraction_of_peak: gpu_throughput / peak,
            best_fraction_of_peak: amount / t.gpu_best * 1e-9 / peak,
            cpu_over_gpu: t.cpu / t.gpu_wall,
        }
    }
}

// ---------------------------------------------------------------- targets

/// The matmul kernels' target: this fraction of the adapter's FMA peak at
/// 512³ (the project's speed targets, checked by `bench`, never by a test).
pub const MATMUL_PEAK_TARGET: f64 = 0.30;
/// The conv kernels' target: within this factor of the A·B matmul's
/// fraction of peak at equal FLOPs.
pub const CONV_VS_MATMUL_TARGET: f64 = 2.0;

/// One speed target checked against a bench run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TargetCheck {
    /// What is measured, e.g. `matmul_ab 512³: fraction of FMA peak`.
    pub what: String,
    pub value: f64,
    /// `value` as the table shows it (a percentage or a ratio).
    pub shown: String,
    /// The bound, in words.
    pub target: String,
    /// `value` within the bound.
    pub met: bool,
    /// The same check on the fastest runs (`Row::best_fraction_of_peak`):
    /// on a shared machine the medians can double when another tenant takes
    /// a core, the fastest runs much less so.
    pub best: f64,
    pub best_shown: String,
    pub met_best: bool,
}

/// The kernel targets the rows allow checking: each matmul layout's
/// fraction of peak at the sweep's largest size up to 512, and each conv
/// pass at the shape of [`CONV_EQUAL_FLOPS`] against A·B at that size
/// (the A·B fraction over the conv's: at most [`CONV_VS_MATMUL_TARGET`]).
/// Targets whose rows a filter left out are not listed.
pub fn target_checks(rows: &[Row]) -> Vec<TargetCheck> {
    let sweep_row = |kernel: &str| {
        rows.iter()
            .filter(|r| r.kernel == kernel && r.name.contains(" sweep "))
            .filter_map(|r| Some((sweep_size(&r.name)?, r)))
            .filter(|&(size, _)| size <= 512)
            .max_by_key(|&(size, _)| size)
    };
    let mut checks = Vec::new();
    for kernel in ["matmul_ab", "matmul_atb", "matmul_abt"] {
        if let Some((size, r)) = sweep_row(kernel) {
            let pct = |f: f64| format!("{:.1}%", 100.0 * f);
            checks.push(TargetCheck {
                what: format!("{kernel} {size}³: fraction of FMA peak"),
                value: r.fraction_of_peak,
                shown: pct(r.fraction_of_peak),
                target: format!("≥ {:.0}%", 100.0 * MATMUL_PEAK_TARGET),
                met: r.fraction_of_peak >= MATMUL_PEAK_TARGET,
                best: r.best_fraction_of_peak,
                best_shown: pct(r.best_fraction_of_peak),
                met_best: r.best_fraction_of_peak >= MATMUL_PEAK_TARGET,
            });
        }
    }
    if let Some((size, ab)) = sweep_row("matmul_ab") {
        for kernel in [
            "conv2d_forward",
            "conv2d_backward_input",
            "conv2d_backward_weight",
        ] {
            let conv = rows
                .iter()
                .find(|r| r.kernel == kernel && r.name.contains(CONV_EQUAL_FLOPS));
            if let Some(c) = conv {
                let ratio = ab.fraction_of_peak / c.fraction_of_peak;
                let best = ab.best_fraction_of_peak / c.best_fraction_of_peak;
                checks.push(TargetCheck {
                    what: format!(
                        "{kernel} at 512³'s FLOPs: matmul_ab {size}³'s fraction of peak / its own"
                    ),
                    value: ratio,
                    shown: format!("{ratio:.2}"),
                    target: format!("≤ {CONV_VS_MATMUL_TARGET:.0}"),
                    met: ratio <= CONV_VS_MATMUL_TARGET,
                    best,
                    best_shown: format!("{best:.2}"),
                    met_best: best <= CONV_VS_MATMUL_TARGET,
                });
            }
        }
    }
    checks
}

/// M of a sweep case's name (`matmul_ab sweep 512x512·512x512`).
fn sweep_size(name: &str) -> Option<usize> {
    name.split(" sweep ")
        .nth(1)?
        .split('x')
        .next()?
        .parse()
        .ok()
}

// ---------------------------------------------------------------- training step

/// GPU time of one kernel over a profiled training step.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KernelShare {
    pub name: String,
    pub ms: f64,
    /// Fraction of the step's kernel time.
    pub share: f64,
    pub dispatches: usize,
}

/// One model's training step timed on both backends ([`time_step`]).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StepTiming {
    pub batch: usize,
    /// Timed steps per backend (after one warm-up step).
    pub steps: usize,
    pub cpu_ms_per_step: f64,
    pub gpu_ms_per_step: f64,
    pub cpu_samples_per_s: f64,
    pub gpu_samples_per_s: f64,
    /// GPU over CPU samples per second.
    pub gpu_over_cpu: f64,
    pub dispatches: usize,
    pub submits: usize,
    /// Chunks of equal tokens per chunked embedding→recurrent layer in the
    /// last timed batch, by reader layer (empty when none is chunked).
    pub chunks: Vec<(String, usize)>,
    /// Leading steps every sample shared (run once) per LSTM whose kernels
    /// share them, in the last timed batch, by layer.
    pub shared_steps: Vec<(String, usize)>,
    /// Kernel time per kernel over one profiled step, largest first (empty
    /// without timestamps or when not asked for).
    pub kernels: Vec<KernelShare>,
}

/// Times `graph`'s training step (`batch` samples) on the CPU reference
/// backend (f32) and on the GPU backend from the same parameters over
/// `batches` (the first one a warm-up, see [`step_seconds`]); with
/// `profile`, then one profiled GPU step on the first batch.
#[allow(clippy::too_many_arguments)]
pub fn time_step(
    ctx: &GpuContext,
    batch: usize,
    graph: &Graph,
    loss: NodeId,
    params: &[(NodeId, Vec<f32>)],
    config: TrainConfig,
    batches: &[Batch],
    profile: bool,
) -> Result<StepTiming> {
    let mut cpu = CpuExecutor::<f32>::new(graph, loss, params, config.clone())?;
    let cpu_step = step_seconds(&mut cpu, batches)?;
    let mut gpu = GpuExecutor::new(ctx, graph, loss, params, config)?;
    let gpu_step = step_seconds(&mut gpu, batches)?;
    let stats = gpu.step_stats();
    let named = |counts: Vec<(NodeId, usize)>| {
        counts
            .into_iter()
            .map(|(id, c)| (graph.node(id).name.clone(), c))
            .collect()
    };
    let chunks = named(gpu.chunk_counts());
    let shared_steps = named(gpu.shared_step_counts());
    let kernels = if profile && ctx.has_timestamps() {
        kernel_shares(&gpu.profile_step(&batches[0])?)
    } else {
        Vec::new()
    };
    Ok(StepTiming {
        batch,
        steps: batches.len() - 1,
        cpu_ms_per_step: cpu_step * 1e3,
        gpu_ms_per_step: gpu_step * 1e3,
        cpu_samples_per_s: batch as f64 / cpu_step,
        gpu_samples_per_s: batch as f64 / gpu_step,
        gpu_over_cpu: cpu_step / gpu_step,
        dispatches: stats.dispatches(),
        submits: stats.submits,
        chunks,
        shared_steps,
        kernels,
    })
}

/// A whole training step of the seed model on both backends.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrainingBench {
    /// On uniform random token ids, as Keras' throughput script.
    #[serde(flatten)]
    pub step: StepTiming,
    /// The same step on pre-padded short texts ([`padded_seed_batch`]), as
    /// the built-in synthetic set and real tweets have: the GPU executor
    /// then runs the LSTM's input projection and gradients per chunk of
    /// equal tokens.
    pub padded_cpu_ms_per_step: f64,
    pub padded_gpu_ms_per_step: f64,
}

/// A random batch of the seed model's inputs (token ids in `[1, vocab)`).
pub fn seed_batch(m: &SeedModel, c: &SeedConfig, seed: u64) -> Batch {
    let mut rng = StdRng::seed_from_u64(seed);
    let tokens = (0..c.seq_len * c.batch)
        .map(|_| rng.random_range(1..c.vocab as u32))
        .collect();
    let [h, w, ch] = c.image;
    let images = (0..c.batch * h * w * ch)
        .map(|_| rng.random::<f32>())
        .collect();
    let labels = (0..c.batch)
        .map(|_| rng.random_range(0..c.classes as u32))
        .collect();
    Batch::new()
        .with(m.tokens, HostData::U32(tokens))
        .with(m.images, HostData::F32(images))
        .with(m.labels, HostData::U32(labels))
}

/// [`seed_batch`] with pre-padded short texts: each sample's last 5 to 30
/// steps hold tokens, the steps before them 0 (about 82 % padding, like the
/// built-in synthetic set at sequence length 100). The tokens come from the
/// 300 most frequent ids (`[1, 300)`, a tokenizer numbers words by
/// frequency), skewed towards the first: short texts repeat a small
/// working vocabulary.
pub fn padded_seed_batch(m: &SeedModel, c: &SeedConfig, seed: u64) -> Batch {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_0000);
    let lengths: Vec<usize> = (0..c.batch)
        .map(|_| rng.random_range(5..=30).min(c.seq_len))
        .collect();
    // Time-major [T, B], like the seed model's token input.
    let tokens = (0..c.seq_len * c.batch)
        .map(|i| {
            let (t, b) = (i / c.batch, i % c.batch);
            if t + lengths[b] >= c.seq_len {
                let u: f64 = rng.random();
                1 + (u * u * 299.0) as u32 % (c.vocab as u32 - 1).max(1)
            } else {
                0
            }
        })
        .collect();
    let uniform = seed_batch(m, c, seed);
    let mut batch = Batch::new().with(m.tokens, HostData::U32(tokens));
    for (id, data) in uniform.inputs {
        if id != m.tokens {
            batch = batch.with(id, data);
        }
    }
    batch
}

/// Seconds per training step over `batches[1..]`, after a warm-up step on
/// `batches[0]` (pipelines, first allocations).
pub fn step_seconds(exec: &mut dyn Executor, batches: &[Batch]) -> Result<f64> {
    let Some((first, rest)) = batches.split_first() else {
        return Err(Error::shape("step_seconds", "no batches"));
    };
    exec.train_step(first)?;
    if rest.is_empty() {
        return Err(Error::shape("step_seconds", "one batch: nothing to time"));
    }
    let t = Instant::now();
    for b in rest {
        exec.train_step(b)?;
    }
    Ok(t.elapsed().as_secs_f64() / rest.len() as f64)
}

/// Kernel time summed per kernel name, largest first.
pub fn kernel_shares(timings: &[KernelTiming]) -> Vec<KernelShare> {
    let mut by: Vec<KernelShare> = Vec::new();
    for t in timings {
        match by.iter_mut().find(|k| k.name == t.name) {
            Some(k) => {
                k.ms += t.nanoseconds * 1e-6;
                k.dispatches += 1;
            }
            None => by.push(KernelShare {
                name: t.name.to_string(),
                ms: t.nanoseconds * 1e-6,
                share: 0.0,
                dispatches: 1,
            }),
        }
    }
    let total: f64 = by.iter().map(|k| k.ms).sum();
    for k in &mut by {
        k.share = if total > 0.0 { k.ms / total } else { 0.0 };
    }
    by.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    by
}

/// `steps` timed training steps of the seed model (batch 32, vocab 10000,
/// seq 100, 28×28×1 images, Adam) on the CPU reference backend (f32) and
/// on the GPU backend, from the same initial parameters and batches, then
/// one profiled GPU step.
pub fn training_bench(ctx: &GpuContext, steps: usize) -> Result<TrainingBench> {
    let c = SeedConfig::default();
    let m = seed_model(&c)?;
    let params = init_params(&m.graph, 1);
    let time = |batch: fn(&SeedModel, &SeedConfig, u64) -> Batch, profile| {
        let batches: Vec<Batch> = (0..=steps.max(1) as u64)
            .map(|s| batch(&m, &c, s))
            .collect();
        let config = TrainConfig::default();
        time_step(
            ctx, c.batch, &m.graph, m.loss, &params, config, &batches, profile,
        )
    };
    let step = time(seed_batch, true)?;
    let padded = time(padded_seed_batch, false)?;
    Ok(TrainingBench {
        step,
        padded_cpu_ms_per_step: padded.cpu_ms_per_step,
        padded_gpu_ms_per_step: padded.gpu_ms_per_step,
    })
}

/// A training step of an experiment's own model on its own batches
/// (`crossmodal bench train --experiment EXP.ron`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ExperimentStep {
    pub experiment: String,
    #[serde(flatten)]
    pub step: StepTiming,
}

/// `steps` timed training steps of `exp`'s model on its first batches
/// (the data, tokenizer, batch size, optimizer and initial parameters of
/// the experiment) on the CPU reference backend and the GPU backend, from
/// the same parameters, then one profiled GPU step.
pub fn experiment_step_bench(
    ctx: &GpuContext,
    exp: &Experiment,
    steps: usize,
) -> Result<ExperimentStep> {
    let p = Prepared::new(exp, None)?;
    let batches = (0..=steps.max(1))
        .map(|k| p.batch(k))
        .collect::<Result<Vec<Batch>>>()?;
    let (graph, loss) = (&p.model.graph, p.model.loss);
    let config = train_config(&exp.training);
    Ok(ExperimentStep {
        experiment: exp.name.clone(),
        step: time_step(
            ctx,
            p.batch_size(),
            graph,
            loss,
            &p.params,
            config,
            &batches,
            true,
        )?,
    })
}

/// A training-step table: one row per (backend, ms/step), samples/s from `per_s`.
fn step_table(out: &mut String, title: &str, rows: &[(&str, f64)], per_s: impl Fn(f64) -> f64) {
    use std::fmt::Write as _;
    let _ = writeln!(out, "\n## {title}\n");
    out.push_str("| backend | ms/step | samples/s |\n|---|---:|---:|\n");
    for &(backend, ms) in rows {
        let _ = writeln!(out, "| {backend} | {ms:.1} | {:.1} |", per_s(ms));
    }
}

fn kernel_share_table(out: &mut String, kernels: &[KernelShare]) {
    use std::fmt::Write as _;
    if kernels.is_empty() {
        return;
    }
    out.push_str(
        "\n| kernel (one profiled step) | ms | share | dispatches |\n|---|---:|---:|---:|\n",
    );
    for k in kernels {
        let _ = writeln!(
            out,
            "| {} | {:.2} | {:.1}% | {} |",
            k.name,
            k.ms,
            100.0 * k.share,
            k.dispatches
        );
    }
}

// ---------------------------------------------------------------- the run

/// What `crossmodal bench` runs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BenchOptions {
    /// Only the cases whose kernel or name contains this (and no training
    /// step unless it names `train`).
    pub filter: Option<String>,
    /// Few repeats, a short sweep, two training steps: for tests.
    pub quick: bool,
    /// Time this experiment's training step (its model, on its own
    /// batches) instead of the seed model's.
    pub experiment: Option<PathBuf>,
}

/// Everything one bench run measured.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BenchReport {
    pub adapter: String,
    pub matmul_variant: String,
    pub timestamps: bool,
    pub quick: bool,
    /// Repeats per case (medians are reported).
    pub repeats: usize,
    pub peaks: Peaks,
    pub rows: Vec<Row>,
    /// The kernel speed targets, from `rows` ([`target_checks`]).
    pub targets: Vec<TargetCheck>,
    pub training: Option<TrainingBench>,
    /// `--experiment`: that experiment's step in place of `training`.
    pub experiment: Option<ExperimentStep>,
}

/// Measures the peaks, times every selected case, and (unless a filter
/// excludes it) the seed model's training step.
pub fn run_bench(ctx: &GpuContext, options: &BenchOptions) -> Result<BenchReport> {
    let repeats = if options.quick { 3 } else { 9 };
    let mut cases = seed_cases(ctx)?;
    cases.extend(sweep_cases(ctx, &sweep_sizes(options.quick))?);
    let filter = options.filter.as_deref();
    let cases: Vec<Case> = cases
        .into_iter()
        .filter(|c| filter.is_none_or(|f| c.matches(f)))
        .collect();
    let train = match filter {
        None => true,
        Some(f) => "train".contains(f) || f.contains("train"),
    };
    if cases.is_empty() && !train {
        return Err(Error::Unsupported {
            op: "bench".into(),
            what: format!("the filter {:?}", filter.unwrap_or_default()),
            why: format!("no case matches it; kernels: {}, train", KERNELS.join(", ")),
        });
    }
    let peaks = measure_peaks(ctx)?;
    let mut rows = Vec::new();
    for mut case in cases {
        let t = time_case(ctx, &mut case, repeats)?;
        rows.push(Row::new(&case, t, &peaks));
    }
    let steps = if options.quick { 2 } else { 10 };
    let (training, experiment) = match (&options.experiment, train) {
        (_, false) => (None, None),
        (None, true) => (Some(training_bench(ctx, steps)?), None),
        (Some(path), true) => {
            let exp = Experiment::load(path)?;
            (None, Some(experiment_step_bench(ctx, &exp, steps)?))
        }
    };
    Ok(BenchReport {
        adapter: ctx.describe(),
        matmul_variant: matmul_variant(ctx).to_string(),
        timestamps: ctx.has_timestamps(),
        quick: options.quick,
        repeats,
        peaks,
        targets: target_checks(&rows),
        rows,
        training,
        experiment,
    })
}

fn opt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}"))
}

impl BenchReport {
    /// The markdown tables: kernels, then the training step.
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(out, "adapter: {}", self.adapter);
        let _ = writeln!(out, "matmul variant: {}", self.matmul_variant);
        let _ = writeln!(
            out,
            "measured peaks: FMA {:.1} GFLOP/s, copy {:.2} GB/s; medians of {} runs{}\n",
            self.peaks.fma_gflops,
            self.peaks.copy_gbs,
            self.repeats,
            if self.timestamps {
                ""
            } else {
                " (no timestamp queries: throughput from wall time)"
            }
        );
        if !self.rows.is_empty() {
            out.push_str(
                "| case | dispatches | CPU µs | GPU wall µs | GPU kernel µs | CPU/GPU (wall) | GPU throughput | CPU throughput | % of peak | % of peak (fastest run) |\n",
            );
            out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
            for r in &self.rows {
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.1} | {:.1} | {} | {:.3} | {:.3} {} | {:.3} {} | {:.1}% | {:.1}% |",
                    r.name,
                    r.dispatches,
                    r.cpu_us,
                    r.gpu_wall_us,
                    opt(r.gpu_kernel_us),
                    r.cpu_over_gpu,
                    r.gpu_throughput,
                    r.unit,
                    r.cpu_throughput,
                    r.unit,
                    100.0 * r.fraction_of_peak,
                    100.0 * r.best_fraction_of_peak
                );
            }
        }
        if !self.targets.is_empty() {
            out.push_str(
                "\n## Kernel targets\n\n| check | medians | fastest runs | target | met (medians / fastest) |\n|---|---:|---:|---:|---|\n",
            );
            let yes = |b: bool| if b { "yes" } else { "no" };
            for t in &self.targets {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} / {} |",
                    t.what,
                    t.shown,
                    t.best_shown,
                    t.target,
                    yes(t.met),
                    yes(t.met_best)
                );
            }
        }
        if let Some(tb) = &self.training {
            let t = &tb.step;
            let per_s = |ms: f64| t.batch as f64 / (ms * 1e-3);
            step_table(
                &mut out,
                &format!(
                    "Seed model training step (batch {}, {} timed steps)",
                    t.batch, t.steps
                ),
                &[
                    ("CPU reference (ndarray, f32)", t.cpu_ms_per_step),
                    ("GPU (wgpu)", t.gpu_ms_per_step),
                    ("CPU reference, pre-padded texts", tb.padded_cpu_ms_per_step),
                    ("GPU (wgpu), pre-padded texts", tb.padded_gpu_ms_per_step),
                ],
                per_s,
            );
            out.push_str(
                "\n(Token ids uniform in [1, vocab) as in Keras' throughput script; \
                 pre-padded: 5 to 30 real steps of 100 over the 300 most frequent ids, \
                 like the built-in synthetic set: both backends run the padding steps \
                 every sample shares once. Keras runs every step either way.)\n",
            );
            let _ = writeln!(
                out,
                "\nGPU/CPU samples/s: {:.2}; GPU step: {} dispatches in {} submit(s)",
                t.gpu_over_cpu, t.dispatches, t.submits
            );
            kernel_share_table(&mut out, &t.kernels);
        }
        if let Some(exp) = &self.experiment {
            let e = &exp.step;
            step_table(
                &mut out,
                &format!(
                    "Training step of {} (its own batches: batch {}, {} timed steps)",
                    exp.experiment, e.batch, e.steps
                ),
                &[
                    ("CPU reference (ndarray, f32)", e.cpu_ms_per_step),
                    ("GPU (wgpu)", e.gpu_ms_per_step),
                ],
                |ms| e.batch as f64 / (ms * 1e-3),
            );
            let _ = writeln!(
                out,
                "\nGPU step: {} dispatches in {} submit(s)",
                e.dispatches, e.submits
            );
            for (layer, chunks) in &e.chunks {
                let _ = writeln!(
                    out,
                    "{layer}: input projection over {chunks} chunks of equal tokens (last batch)"
                );
            }
            for (layer, shared) in &e.shared_steps {
                let _ = writeln!(
                    out,
                    "{layer}: the first {shared} steps the same token in every sample, run once \
                     (last batch)"
                );
            }
            kernel_share_table(&mut out, &e.kernels);
        }
        out
    }

    /// One line per case (the training step as a row of its own).
    pub fn csv(&self) -> Result<String> {
        let err = |e: csv::Error| Error::file("bench.csv", e.to_string());
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record([
            "kernel",
            "case",
            "sweep_size",
            "dispatches",
            "cpu_us",
            "gpu_wall_us",
            "gpu_kernel_us",
            "cpu_over_gpu",
            "gpu_throughput",
            "cpu_throughput",
            "unit",
            "fraction_of_peak",
            "best_fraction_of_peak",
        ])
        .map_err(err)?;
        let num = |v: f64| format!("{v}");
        for r in &self.rows {
            w.write_record([
                r.kernel.to_string(),
                r.name.clone(),
                r.sweep.map_or(String::new(), |s| s.to_string()),
                r.dispatches.to_string(),
                num(r.cpu_us),
                num(r.gpu_wall_us),
                r.gpu_kernel_us.map_or(String::new(), num),
                num(r.cpu_over_gpu),
                num(r.gpu_throughput),
                num(r.cpu_throughput),
                r.unit.to_string(),
                num(r.fraction_of_peak),
                num(r.best_fraction_of_peak),
            ])
            .map_err(err)?;
        }
        if let Some(tb) = &self.training {
            let t = &tb.step;
            w.write_record([
                "train_step".to_string(),
                format!("seed model training step, batch {}", t.batch),
                String::new(),
                t.dispatches.to_string(),
                num(t.cpu_ms_per_step * 1e3),
                num(t.gpu_ms_per_step * 1e3),
                String::new(),
                num(t.gpu_over_cpu),
                num(t.gpu_samples_per_s),
                num(t.cpu_samples_per_s),
                "samples/s".to_string(),
                String::new(),
                String::new(),
            ])
            .map_err(err)?;
            let (cpu, gpu) = (tb.padded_cpu_ms_per_step, tb.padded_gpu_ms_per_step);
            let per_s = |ms: f64| t.batch as f64 / (ms * 1e-3);
            w.write_record([
                "train_step".to_string(),
                format!(
                    "seed model training step, batch {}, pre-padded texts",
                    t.batch
                ),
                String::new(),
                String::new(),
                num(cpu * 1e3),
                num(gpu * 1e3),
                String::new(),
                num(cpu / gpu),
                num(per_s(gpu)),
                num(per_s(cpu)),
                "samples/s".to_string(),
                String::new(),
                String::new(),
            ])
            .map_err(err)?;
        }
        if let Some(exp) = &self.experiment {
            let e = &exp.step;
            let (cpu, gpu) = (e.cpu_ms_per_step, e.gpu_ms_per_step);
            w.write_record([
                "train_step".to_string(),
                format!("{} training step, batch {}", exp.experiment, e.batch),
                String::new(),
                e.dispatches.to_string(),
                num(cpu * 1e3),
                num(gpu * 1e3),
                String::new(),
                num(cpu / gpu),
                num(e.gpu_samples_per_s),
                num(e.cpu_samples_per_s),
                "samples/s".to_string(),
                String::new(),
                String::new(),
            ])
            .map_err(err)?;
        }
        let bytes = w
            .into_inner()
            .map_err(|e| Error::file("bench.csv", e.to_string()))?;
        String::from_utf8(bytes).map_err(|e| Error::file("bench.csv", e.to_string()))
    }

    pub fn json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| Error::file("bench.json", e.to_string()))
    }
}

// ---------------------------------------------------------------- plot

/// File names of the sweep figure.
pub const SWEEP_SVG: &str = "matmul_sweep.svg";
pub const SWEEP_PNG: &str = "matmul_sweep.png";
const FIGURE_SIZE: (u32, u32) = crate::experiment::report::FIGURE_SIZE;

const GPU_COLOR: RGBColor = RGBColor(31, 119, 180);
const WALL_COLOR: RGBColor = RGBColor(44, 160, 44);
const CPU_COLOR: RGBColor = RGBColor(214, 39, 40);
const PEAK_COLOR: RGBColor = RGBColor(127, 127, 127);

/// (size, GPU kernel, GPU wall, CPU) GFLOP/s of the sweep's A·B cases.
fn sweep_points(report: &BenchReport) -> Vec<(f64, f64, f64, f64)> {
    report
        .rows
        .iter()
        .filter_map(|r| {
            let s = r.sweep?;
            let Work::Flops(f) = r.work else { return None };
            Some((
                s as f64,
                r.gpu_throughput,
                f / (r.gpu_wall_us * 1e-6) * 1e-9,
                r.cpu_throughput,
            ))
        })
        .filter(|p| p.1.is_finite() && p.2.is_finite() && p.3.is_finite())
        .collect()
}

/// One line of the figure: points, colour, legend.
type Series = (Vec<(f64, f64)>, RGBColor, &'static str);

fn draw_sweep<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    report: &BenchReport,
) -> std::result::Result<(), String>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let points = sweep_points(report);
    let (lo_x, hi_x) = points.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), p| {
        (lo.min(p.0), hi.max(p.0))
    });
    let (lo_x, hi_x) = if points.is_empty() {
        (64.0, 1024.0)
    } else {
        (lo_x / 1.2, hi_x * 1.2)
    };
    let values = points
        .iter()
        .flat_map(|p| [p.1, p.2, p.3])
        .chain([report.peaks.fma_gflops])
        .filter(|v| *v > 0.0 && v.is_finite());
    let (lo_y, hi_y) = values.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let (lo_y, hi_y) = if hi_y > 0.0 {
        (lo_y / 2.0, hi_y * 2.0)
    } else {
        (0.1, 100.0)
    };

    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(root)
        .caption("Matmul A·B sweep (M = N = K)", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d((lo_x..hi_x).log_scale(), (lo_y..hi_y).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("size")
        .y_desc("GFLOP/s")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.1}"))
        .x_labels(10)
        .y_labels(8)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    let series: [Series; 3] = [
        (
            points.iter().map(|p| (p.0, p.1)).collect(),
            GPU_COLOR,
            if report.timestamps {
                "GPU (kernel time)"
            } else {
                "GPU (wall time)"
            },
        ),
        (
            points.iter().map(|p| (p.0, p.2)).collect(),
            WALL_COLOR,
            "GPU (submit + wait)",
        ),
        (
            points.iter().map(|p| (p.0, p.3)).collect(),
            CPU_COLOR,
            "CPU reference (ndarray)",
        ),
    ];
    for (pts, color, label) in series {
        if pts.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(err)?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(err)?;
    }
    let peak = report.peaks.fma_gflops;
    chart
        .draw_series(LineSeries::new(
            [(lo_x, peak), (hi_x, peak)],
            PEAK_COLOR.stroke_width(1),
        ))
        .map_err(err)?
        .label(format!("adapter FMA peak {peak:.1} GFLOP/s"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], PEAK_COLOR.stroke_width(1)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

/// The sweep figure as SVG.
pub fn sweep_svg(report: &BenchReport) -> Result<String> {
    register_fonts();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, FIGURE_SIZE).into_drawing_area();
        draw_sweep(&root, report)
            .map_err(|e| Error::file(SWEEP_SVG, format!("plotting failed: {e}")))?;
    }
    Ok(svg)
}

/// The sweep figure as PNG (8-bit RGB), the same drawing as [`sweep_svg`].
pub fn sweep_png(report: &BenchReport) -> Result<Vec<u8>> {
    register_fonts();
    let (w, h) = FIGURE_SIZE;
    let mut rgb = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        draw_sweep(&root, report)
            .map_err(|e| Error::file(SWEEP_PNG, format!("plotting failed: {e}")))?;
    }
    let encode = || -> std::result::Result<Vec<u8>, png::EncodingError> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, w, h);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&rgb)?;
        writer.finish()?;
        Ok(out)
    };
    encode().map_err(|e| Error::file(SWEEP_PNG, format!("PNG encoding failed: {e}")))
}

/// Writes [`SWEEP_SVG`] and [`SWEEP_PNG`] into `dir` (created if missing).
pub fn write_plots(dir: &Path, report: &BenchReport) -> Result<()> {
    create_dir_all(dir)?;
    write_atomic_str(dir.join(SWEEP_SVG), &sweep_svg(report)?)?;
    write_atomic(dir.join(SWEEP_PNG), &sweep_png(report)?)
}

/// Where `crossmodal bench` writes its outputs besides the table.
#[derive(Clone, Debug, Default)]
pub struct BenchOutputs<'a> {
    pub json: Option<&'a Path>,
    pub csv: Option<&'a Path>,
    pub plot: Option<&'a Path>,
}

/// What `crossmodal bench` runs: opens the adapter `gpu` chooses, runs
/// [`run_bench`], prints the table and writes the requested files.
pub fn run_cli(
    options: &BenchOptions,
    gpu: &GpuOptions,
    out: &BenchOutputs,
) -> Result<BenchReport> {
    let ctx = GpuContext::new(gpu)?;
    eprintln!(
        "bench on {} (timings on a shared machine are noisy: medians of several runs)",
        ctx.describe()
    );
    let report = run_bench(&ctx, options)?;
    println!("{}", report.table());
    // The folders named on the command line are created as needed.
    let write = |p: &Path, text: String| -> Result<()> {
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_dir_all(dir)?;
        }
        write_atomic_str(p, &text)
    };
    if let Some(p) = out.json {
        write(p, report.json()?)?;
    }
    if let Some(p) = out.csv {
        write(p, report.csv()?)?;
    }
    if let Some(dir) = out.plot {
        write_plots(dir, &report)?;
    }
    Ok(report)
}
