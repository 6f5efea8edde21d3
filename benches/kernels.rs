//! Criterion benches: every GPU kernel against its CPU reference at the seed
//! model's shapes (batch 32), plus a matmul sweep. GPU work is asynchronous,
//! so each timed GPU iteration submits and the closure waits for the device.
//!
//! After criterion's own report, a summary table gives per case: CPU time,
//! GPU wall time (submit + wait), GPU kernel time (timestamp queries), the
//! CPU/GPU ratio, throughput, and the fraction of the adapter's own measured
//! FMA peak or copy bandwidth — the figure that means something on a
//! software adapter such as lavapipe (see DESIGN.md).
//!
//! `cargo bench -- <filter>` runs the cases whose name contains the filter.
//! The adapter's FMA peak and copy bandwidth are measured once at start
//! (`ops::peak`), so each GPU case is also given as a fraction of them.

use std::time::{Duration, Instant};

use criterion::Criterion;
use crossmodal::gpu::Dispatch;
use crossmodal::ops::matmul::matmul_variant;
use crossmodal::ops::peak::{measure_bandwidth, measure_fma_peak};
use crossmodal::ops::{
    activation::*, bias::*, concat::*, conv2d::*, embedding::*, lstm::*, matmul::*, pool2d::*,
    reduce::*, softmax_cross_entropy::*,
};
use crossmodal::optim::{adam::*, sgd::*};
use crossmodal::{DType, GpuContext, GpuTensor};
use ndarray::{Array1, Array2, Array3, Array4, ArrayD, IxDyn};
use rand::{rngs::StdRng, Rng, SeedableRng};

const BATCH: usize = 32;

/// What a case does, for throughput figures.
#[derive(Clone, Copy)]
enum Work {
    /// Floating-point operations (an FMA counts as 2).
    Flops(f64),
    /// Bytes read plus written.
    Bytes(f64),
}

/// One benchmark: GPU dispatches prepared once, and the CPU reference.
struct Case<'a> {
    name: String,
    work: Work,
    gpu: Vec<Dispatch>,
    cpu: Box<dyn FnMut() + 'a>,
}

struct Row {
    name: String,
    cpu: f64,
    gpu_wall: f64,
    gpu_kernel: Option<f64>,
    work: Work,
}

fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn rand_array(shape: &[usize], seed: u64) -> ArrayD<f32> {
    ArrayD::from_shape_vec(IxDyn(shape), rand_vec(shape.iter().product(), seed)).unwrap()
}

fn tokens(n: usize, vocab: u32, seed: u64) -> Vec<u32> {
    let mut rng = StdRng::seed_from_u64(seed);
    // Keras-style pre-padding: about a third of the positions are 0.
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

fn upload(ctx: &GpuContext, a: &ArrayD<f32>) -> GpuTensor {
    ctx.upload_f32(a.as_slice().unwrap(), a.shape()).unwrap()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn gpu_once(ctx: &GpuContext, ds: &[&Dispatch]) -> f64 {
    let t = Instant::now();
    ctx.run(ds).unwrap();
    ctx.wait().unwrap();
    t.elapsed().as_secs_f64()
}

fn bench_case(c: &mut Criterion, ctx: &GpuContext, mut case: Case, rows: &mut Vec<Row>) {
    let ds: Vec<&Dispatch> = case.gpu.iter().collect();
    let mut group = c.benchmark_group(&case.name);
    group.bench_function("gpu", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                ctx.run(&ds).unwrap();
            }
            ctx.wait().unwrap(); // GPU work is asynchronous: wait inside the timing
            t.elapsed()
        })
    });
    group.bench_function("cpu", |b| b.iter(&mut case.cpu));
    group.finish();

    // Own short measurement for the summary table (medians of a few runs).
    gpu_once(ctx, &ds);
    let gpu_wall = median((0..7).map(|_| gpu_once(ctx, &ds)).collect());
    let gpu_kernel = ctx.has_timestamps().then(|| {
        median(
            (0..5)
                .map(|_| {
                    ctx.run_timed(&ds)
                        .unwrap()
                        .iter()
                        .map(|k| k.nanoseconds)
                        .sum::<f64>()
                        * 1e-9
                })
                .collect(),
        )
    });
    (case.cpu)();
    let cpu = median(
        (0..7)
            .map(|_| {
                let t = Instant::now();
                (case.cpu)();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    );
    rows.push(Row {
        name: case.name,
        cpu,
        gpu_wall,
        gpu_kernel,
        work: case.work,
    });
}

// ---------------------------------------------------------------- cases

fn matmul_case<'a>(
    ctx: &GpuContext,
    name: &str,
    layout: Layout,
    m: usize,
    n: usize,
    k: usize,
) -> Case<'a> {
    let (ashape, bshape) = match layout {
        Layout::AB => ([m, k], [k, n]),
        Layout::AtB => ([k, m], [k, n]),
        Layout::ABt => ([m, k], [n, k]),
    };
    let a = Array2::from_shape_vec(ashape, rand_vec(m * k, 1)).unwrap();
    let b = Array2::from_shape_vec(bshape, rand_vec(k * n, 2)).unwrap();
    let (ga, gb) = (
        upload(ctx, &a.clone().into_dyn()),
        upload(ctx, &b.clone().into_dyn()),
    );
    let gc = ctx.zeros(&[m, n], DType::F32).unwrap();
    let d = matmul(ctx, layout, &gc, &ga, &gb, MatmulParams::new(m, n, k)).unwrap();
    Case {
        name: format!("{name} {m}x{k}·{k}x{n}"),
        work: Work::Flops(2.0 * (m * n * k) as f64),
        gpu: vec![d],
        cpu: Box::new(move || {
            std::hint::black_box(matmul_cpu(layout, &a.view(), &b.view()));
        }),
    }
}

fn activation_cases<'a>(ctx: &GpuContext, cases: &mut Vec<Case<'a>>) {
    // ReLU after the seed conv: 32×26×26×32.
    let shape = [BATCH, 26, 26, 32];
    let n = shape.iter().product::<usize>() as f64;
    let x = rand_array(&shape, 3);
    let dy = rand_array(&shape, 4);
    let (gx, gy, gdy) = (
        upload(ctx, &x),
        ctx.zeros(&shape, DType::F32).unwrap(),
        upload(ctx, &dy),
    );
    let gdx = ctx.zeros(&shape, DType::F32).unwrap();
    let x2 = x.clone();
    cases.push(Case {
        name: "relu_forward 32x26x26x32".into(),
        work: Work::Bytes(8.0 * n),
        gpu: vec![activation_forward(ctx, Activation::Relu, &gx, &gy).unwrap()],
        cpu: Box::new(move || {
            std::hint::black_box(activation_forward_cpu(Activation::Relu, &x2.view()));
        }),
    });
    let mut dx = ArrayD::<f32>::zeros(IxDyn(&shape));
    cases.push(Case {
        name: "relu_backward 32x26x26x32".into(),
        work: Work::Bytes(16.0 * n),
        gpu: vec![activation_backward(ctx, Activation::Relu, &gdx, &gdy, &gx).unwrap()],
        cpu: Box::new(move || {
            activation_backward_cpu(Activation::Relu, &mut dx, &dy.view(), &x.view())
        }),
    });
}

fn bias_cases<'a>(ctx: &GpuContext, cases: &mut Vec<Case<'a>>) {
    // The conv bias gradient: 21632 rows of 32.
    let shape = [BATCH * 26 * 26, 32];
    let dy = rand_array(&shape, 5);
    let gdy = upload(ctx, &dy);
    let gdb = ctx.zeros(&[32], DType::F32).unwrap();
    let mut db = Array1::<f32>::zeros(32);
    cases.push(Case {
        name: "bias_backward 21632x32".into(),
        work: Work::Bytes(4.0 * dy.len() as f64),
        gpu: bias_backward(ctx, &gdb, &gdy).unwrap(),
        cpu: Box::new(move || bias_backward_cpu(&mut db, &dy.view())),
    });
}

fn embedding_cases<'a>(ctx: &GpuContext, cases: &mut Vec<Case<'a>>) {
    let (vocab, dim, steps) = (10000, 32, 100);
    let toks = tokens(BATCH * steps, vocab as u32, 6);
    let table = Array2::from_shape_vec((vocab, dim), rand_vec(vocab * dim, 7)).unwrap();
    let dy =
        Array2::from_shape_vec((BATCH * steps, dim), rand_vec(BATCH * steps * dim, 8)).unwrap();
    let gtable = upload(ctx, &table.clone().into_dyn());
    let gtok = ctx.upload_u32(&toks, &[BATCH, steps]).unwrap();
    let gout = ctx.zeros(&[BATCH, steps, dim], DType::F32).unwrap();
    let gdy = upload(ctx, &dy.clone().into_dyn());
    let gdt = ctx.zeros(&[vocab, dim], DType::F32).unwrap();
    let bytes = (BATCH * steps * dim * 8) as f64;
    let (t1, table1) = (toks.clone(), table.clone());
    cases.push(Case {
        name: "embedding_forward 10000x32 [32,100]".into(),
        work: Work::Bytes(bytes),
        gpu: vec![embedding_forward(ctx, &gtable, &gtok, &gout).unwrap()],
        cpu: Box::new(move || {
            std::hint::black_box(embedding_forward_cpu(&table1.view(), &t1));
        }),
    });
    let mut dt = Array2::<f32>::zeros((vocab, dim));
    cases.push(Case {
        name: "embedding_backward 10000x32 [32,100]".into(),
        work: Work::Bytes(bytes),
        gpu: vec![embedding_backward(ctx, &gdt, &gdy, &gtok, Some(0)).unwrap()],
        cpu: Box::new(move || embedding_backward_cpu(&mut dt, &dy.view(), &toks, Some(0))),
    });
}

fn lstm_cases<'a>(ctx: &GpuContext, cases: &mut Vec<Case<'a>>) {
    let (t, b, d, h) = (100, BATCH, 32, 64);
    let dims = RecurrentDims::new(t, b, d, h);
    let x = Array3::from_shape_vec((t, b, d), rand_vec(t * b * d, 9)).unwrap();
    let w = Array2::from_shape_vec((d, 4 * h), rand_vec(d * 4 * h, 10)).unwrap() * 0.2;
    let u = Array2::from_shape_vec((h, 4 * h), rand_vec(h * 4 * h, 11)).unwrap() * 0.2;
    let bias = Array1::from_vec(rand_vec(4 * h, 12));
    let toks = tokens(t * b, 10000, 13);
    let mask = Array2::from_shape_fn((t, b), |(i, j)| toks[i * b + j] != 0);
    let gx = upload(ctx, &x.clone().into_dyn());
    let (gw, gu, gb) = (
        upload(ctx, &w.clone().into_dyn()),
        upload(ctx, &u.clone().into_dyn()),
        upload(ctx, &bias.clone().into_dyn()),
    );
    let gmask = ctx.upload_u32(&toks, &[t, b]).unwrap();
    let bufs = LstmBuffers::new(ctx, dims).unwrap();
    let weights = RecurrentWeights {
        w: &gw,
        u: &gu,
        b: &gb,
    };
    // Per step: 2·B·H·4H for h·U, plus the input projection once.
    let flops = 2.0 * (t * b * 4 * h * (h + d)) as f64;
    let fwd = lstm_forward_sequence(ctx, &bufs, &gx, &weights, Some(&gmask)).unwrap();
    let (x1, w1, u1, b1, m1) = (x.clone(), w.clone(), u.clone(), bias.clone(), mask.clone());
    cases.push(Case {
        name: "lstm_forward_sequence T100 B32 D32 H64".into(),
        work: Work::Flops(flops),
        gpu: fwd,
        cpu: Box::new(move || {
            std::hint::black_box(lstm_forward_cpu(
                &x1.view(),
                &w1.view(),
                &u1.view(),
                &b1.view(),
                Some(&m1.view()),
            ));
        }),
    });
    let (gdx, gdw, gdu, gdb) = (
        ctx.zeros(&[t, b, d], DType::F32).unwrap(),
        ctx.zeros(&[d, 4 * h], DType::F32).unwrap(),
        ctx.zeros(&[h, 4 * h], DType::F32).unwrap(),
        ctx.zeros(&[4 * h], DType::F32).unwrap(),
    );
    let gdh = upload(ctx, &rand_array(&[b, h], 14));
    let grads = RecurrentGrads {
        dx: Some(&gdx),
        dw: &gdw,
        du: &gdu,
        db: &gdb,
    };
    let bwd = lstm_backward_sequence(
        ctx,
        &grads,
        HiddenGrad {
            seq: None,
            last: Some(&gdh),
        },
        &bufs,
        &gx,
        &weights,
        Some(&gmask),
    )
    .unwrap();
    let states = lstm_forward_cpu(
        &x.view(),
        &w.view(),
        &u.view(),
        &bias.view(),
        Some(&mask.view()),
    );
    let mut dh_seq = Array3::<f32>::zeros((t, b, h));
    dh_seq
        .index_axis_mut(ndarray::Axis(0), t - 1)
        .assign(&Array2::from_shape_vec((b, h), rand_vec(b * h, 14)).unwrap());
    let mut cpu_grads = RecurrentCpuGrads::zeros(dims, 4 * h);
    cases.push(Case {
        name: "lstm_backward_sequence T100 B32 D32 H64".into(),
        work: Work::Flops(2.0 * flops),
        gpu: bwd,
        cpu: Box::new(move || {
            lstm_backward_cpu(
                &mut cpu_grads,
                &dh_seq.view(),
                &states,
                &x.view(),
                &w.view(),
                &u.view(),
                Some(&mask.view()),
            )
        }),
    });
}

fn array4(shape: [usize; 4], seed: u64) -> Array4<f32> {
    Array4::from_shape_vec(shape, rand_vec(shape.iter().product(), seed)).unwrap()
}

fn image_cases<'a>(ctx: &GpuContext, cases: &mut Vec<Case<'a>>) {
    // The seed image branch: 32×28×28×1 -> Conv2D(32, 3×3, valid) -> MaxPool 2×2.
    let g = Conv2dGeometry::new([BATCH, 28, 28, 1], 32, [3, 3], [1, 1], Padding::Valid).unwrap();
    let (x, w, b) = (
        array4(g.input_shape(), 23),
        array4(g.weight_shape(), 24),
        Array1::from_vec(rand_vec(32, 25)),
    );
    let dy = array4(g.output_shape(), 26);
    let (gx, gw, gb, gdy) = (
        upload(ctx, &x.clone().into_dyn()),
        upload(ctx, &w.clone().into_dyn()),
        upload(ctx, &b.clone().into_dyn()),
        upload(ctx, &dy.clone().into_dyn()),
    );
    let gy = ctx.zeros(&g.output_shape(), DType::F32).unwrap();
    let (gdx, gdw, gdb) = (
        ctx.zeros(&g.input_shape(), DType::F32).unwrap(),
        ctx.zeros(&g.weight_shape(), DType::F32).unwrap(),
        ctx.zeros(&[32], DType::F32).unwrap(),
    );
    let flops = 2.0 * (g.output_shape().iter().product::<usize>() * 9) as f64;
    let (x1, w1, b1, g1) = (x.clone(), w.clone(), b.clone(), g);
    cases.push(Case {
        name: "conv2d_forward 32x28x28x1 -> 32 3x3".into(),
        work: Work::Flops(flops),
        gpu: vec![conv2d_forward(ctx, &gx, &gw, &gb, &gy, &g).unwrap()],
        cpu: Box::new(move || {
            std::hint::black_box(conv2d_forward_cpu(&x1.view(), &w1.view(), &b1.view(), &g1));
        }),
    });
    let (mut dx, dy1, w2, g2) = (
        Array4::<f32>::zeros(g.input_shape()),
        dy.clone(),
        w.clone(),
        g,
    );
    cases.push(Case {
        name: "conv2d_backward_input 32x28x28x1 <- 32 3x3".into(),
        work: Work::Flops(flops),
        gpu: vec![conv2d_backward_input(ctx, &gdx, &gdy, &gw, &g).unwrap()],
        cpu: Box::new(move || conv2d_backward_input_cpu(&mut dx, &dy1.view(), &w2.view(), &g2)),
    });
    let (mut dw, dy2, x2, g3) = (
        Array4::<f32>::zeros(g.weight_shape()),
        dy.clone(),
        x.clone(),
        g,
    );
    cases.push(Case {
        name: "conv2d_backward_weight 3x3x1x32".into(),
        work: Work::Flops(flops),
        gpu: vec![conv2d_backward_weight(ctx, &gdw, &gdy, &gx, &g).unwrap()],
        cpu: Box::new(move || conv2d_backward_weight_cpu(&mut dw, &dy2.view(), &x2.view(), &g3)),
    });
    let (mut db, dy3, g4) = (Array1::<f32>::zeros(32), dy.clone(), g);
    cases.push(Case {
        name: "conv2d_backward_bias 32".into(),
        work: Work::Bytes(4.0 * dy.len() as f64),
        gpu: vec![conv2d_backward_bias(ctx, &gdb, &gdy, &g).unwrap()],
        cpu: Box::new(move || conv2d_backward_bias_cpu(&mut db, &dy3.view(), &g4)),
    });

    let p = Pool2dGeometry::keras([BATCH, 26, 26, 32], [2, 2]).unwrap();
    let px = array4(p.input_shape(), 27);
    let pdy = array4(p.output_shape(), 28);
    let (gpx, gpdy) = (
        upload(ctx, &px.clone().into_dyn()),
        upload(ctx, &pdy.clone().into_dyn()),
    );
    let gpy = ctx.zeros(&p.output_shape(), DType::F32).unwrap();
    let garg = ctx.zeros(&p.output_shape(), DType::U32).unwrap();
    let gpdx = ctx.zeros(&p.input_shape(), DType::F32).unwrap();
    let bytes = 4.0 * (px.len() + 2 * pdy.len()) as f64;
    let (px1, p1) = (px.clone(), p);
    cases.push(Case {
        name: "maxpool_forward 32x26x26x32 2x2".into(),
        work: Work::Bytes(bytes),
        gpu: vec![maxpool_forward(ctx, &gpx, &gpy, &garg, &p).unwrap()],
        cpu: Box::new(move || {
            std::hint::black_box(maxpool_forward_cpu(&px1.view(), &p1));
        }),
    });
    let (_, argmax) = maxpool_forward_cpu(&px.view(), &p);
    let (mut pdx, p2) = (Array4::<f32>::zeros(p.input_shape()), p);
    cases.push(Case {
        name: "maxpool_backward 32x26x26x32 2x2".into(),
        work: Work::Bytes(bytes),
        gpu: vec![maxpool_backward(ctx, &gpdx, &gpdy, &garg, &p).unwrap()],
        cpu: Box::new(move || maxpool_backward_cpu(&mut pdx, &pdy.view(), &argmax.view(), &p2)),
    });
}

fn head_cases<'a>(ctx: &GpuContext, cases: &mut Vec<Case<'a>>) {
    // Concat of the LSTM output and the flattened image features.
    let (text, image) = (rand_array(&[BATCH, 64], 15), rand_array(&[BATCH, 5408], 16));
    let (gt, gi) = (upload(ctx, &text), upload(ctx, &image));
    let gcat = ctx.zeros(&[BATCH, 64 + 5408], DType::F32).unwrap();
    let bytes = (BATCH * (64 + 5408) * 8) as f64;
    cases.push(Case {
        name: "concat_forward 32x64+32x5408".into(),
        work: Work::Bytes(bytes),
        gpu: concat_forward_all(ctx, &[&gt, &gi], &gcat).unwrap(),
        cpu: Box::new(move || {
            std::hint::black_box(concat_forward_cpu(&[text.view(), image.view()]));
        }),
    });
    let dy = rand_array(&[BATCH, 64 + 5408], 17);
    let gdy = upload(ctx, &dy);
    let (gdt, gdi) = (
        ctx.zeros(&[BATCH, 64], DType::F32).unwrap(),
        ctx.zeros(&[BATCH, 5408], DType::F32).unwrap(),
    );
    let (mut dt, mut di) = (
        ArrayD::<f32>::zeros(IxDyn(&[BATCH, 64])),
        ArrayD::<f32>::zeros(IxDyn(&[BATCH, 5408])),
    );
    cases.push(Case {
        name: "concat_backward 32x64+32x5408".into(),
        work: Work::Bytes(bytes),
        gpu: concat_backward_all(ctx, &[&gdt, &gdi], &gdy).unwrap(),
        cpu: Box::new(move || concat_backward_cpu(&mut [&mut dt, &mut di], &dy.view())),
    });

    // Softmax cross-entropy on the seed's 32×2 logits.
    let logits = Array2::from_shape_vec((BATCH, 2), rand_vec(BATCH * 2, 18)).unwrap();
    let labels: Vec<u32> = (0..BATCH as u32).map(|i| i % 2).collect();
    let gl = upload(ctx, &logits.clone().into_dyn());
    let glab = ctx.upload_u32(&labels, &[BATCH]).unwrap();
    let (gp, gloss) = (
        ctx.zeros(&[BATCH, 2], DType::F32).unwrap(),
        ctx.zeros(&[BATCH], DType::F32).unwrap(),
    );
    let gdl = ctx.zeros(&[BATCH, 2], DType::F32).unwrap();
    let (l1, lab1) = (logits.clone(), labels.clone());
    cases.push(Case {
        name: "softmax_cross_entropy_forward 32x2".into(),
        work: Work::Bytes((BATCH * 2 * 8) as f64),
        gpu: vec![softmax_cross_entropy_forward(ctx, &gl, &glab, &gp, &gloss).unwrap()],
        cpu: Box::new(move || {
            std::hint::black_box(softmax_cross_entropy_forward_cpu(&l1.view(), &lab1));
        }),
    });
    let probs = softmax_forward_cpu(&logits.view());
    let mut dl = Array2::<f32>::zeros((BATCH, 2));
    cases.push(Case {
        name: "softmax_cross_entropy_backward 32x2".into(),
        work: Work::Bytes((BATCH * 2 * 8) as f64),
        gpu: vec![softmax_cross_entropy_backward(ctx, &gdl, &gp, &glab).unwrap()],
        cpu: Box::new(move || softmax_cross_entropy_backward_cpu(&mut dl, &probs.view(), &labels)),
    });

    // Loss sum and accuracy count for metrics.
    let gsum = ctx.zeros(&[1], DType::F32).unwrap();
    let gcount = ctx.zeros(&[1], DType::U32).unwrap();
    let loss = rand_array(&[BATCH], 19);
    let (p2, lab2) = (
        softmax_forward_cpu(
            &rand_array(&[BATCH, 2], 20)
                .into_dimensionality()
                .unwrap()
                .view(),
        ),
        (0..BATCH as u32).map(|i| i % 2).collect::<Vec<_>>(),
    );
    let gprobs = upload(ctx, &p2.clone().into_dyn());
    let mut gpu = reduce_sum(ctx, &gsum, &gloss, SumOptions::mean(BATCH)).unwrap();
    gpu.push(accuracy_count(ctx, &gcount, &gprobs, &glab).unwrap());
    cases.push(Case {
        name: "reduce_sum+accuracy_count 32".into(),
        work: Work::Bytes((BATCH * 16) as f64),
        gpu,
        cpu: Box::new(move || {
            std::hint::black_box(reduce_sum_cpu(&loss.view(), 1.0 / BATCH as f32));
            std::hint::black_box(accuracy_count_cpu(&p2.view(), &lab2));
        }),
    });
}

fn optimizer_cases<'a>(ctx: &GpuContext, cases: &mut Vec<Case<'a>>) {
    // All of the seed model's parameters in one tensor (~0.34 M values).
    let n = 10000 * 32 + (32 + 64 + 1) * 256 + 3 * 3 * 32 + 32 + (64 + 5408) * 2 + 2;
    let (w, g) = (rand_array(&[n], 21), rand_array(&[n], 22));
    let (gw, gg) = (upload(ctx, &w), upload(ctx, &g));
    let (mut w1, mut m, mut v) = (
        w.clone(),
        ArrayD::<f32>::zeros(IxDyn(&[n])),
        ArrayD::<f32>::zeros(IxDyn(&[n])),
    );
    let g1 = g.clone();
    let config = AdamConfig::default();
    let gm = ctx.zeros(&[n], DType::F32).unwrap();
    let gv = ctx.zeros(&[n], DType::F32).unwrap();
    cases.push(Case {
        name: format!("adam_update {n}"),
        work: Work::Bytes(28.0 * n as f64),
        gpu: vec![adam_update(ctx, &gw, &gg, &gm, &gv, &config.params(n, 1)).unwrap()],
        cpu: Box::new(move || adam_update_cpu(&mut w1, &g1.view(), &mut m, &mut v, &config, 1)),
    });
    let sgd = SgdConfig {
        momentum: 0.9,
        ..SgdConfig::default()
    };
    let gvel = ctx.zeros(&[n], DType::F32).unwrap();
    let (mut w2, mut vel) = (w, ArrayD::<f32>::zeros(IxDyn(&[n])));
    cases.push(Case {
        name: format!("sgd_update momentum {n}"),
        work: Work::Bytes(20.0 * n as f64),
        gpu: vec![sgd_update(ctx, &gw, &gg, &gvel, &sgd.params(n)).unwrap()],
        cpu: Box::new(move || sgd_update_cpu(&mut w2, &g.view(), &mut vel, &sgd)),
    });
}

// ---------------------------------------------------------------- main

fn print_summary(ctx: &GpuContext, peaks: (f64, f64), rows: &[Row]) {
    let (fma_gflops, copy_gbs) = peaks;
    println!("\n## Kernel summary on {}\n", ctx.describe());
    println!("matmul variant: {}", matmul_variant(ctx));
    println!("measured FMA peak {fma_gflops:.1} GFLOP/s, copy bandwidth {copy_gbs:.2} GB/s\n");
    println!("| case | CPU µs | GPU wall µs | GPU kernel µs | CPU/GPU (wall) | GPU throughput (kernel) | % of adapter peak |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let gpu = r.gpu_kernel.unwrap_or(r.gpu_wall);
        let (throughput, peak) = match r.work {
            Work::Flops(f) => (
                format!("{:.3} GFLOP/s", f / gpu * 1e-9),
                100.0 * f / gpu * 1e-9 / fma_gflops,
            ),
            Work::Bytes(b) => (
                format!("{:.3} GB/s", b / gpu * 1e-9),
                100.0 * b / gpu * 1e-9 / copy_gbs,
            ),
        };
        println!(
            "| {} | {:.1} | {:.1} | {} | {:.3} | {} | {:.0}% |",
            r.name,
            r.cpu * 1e6,
            r.gpu_wall * 1e6,
            r.gpu_kernel
                .map_or("-".into(), |k| format!("{:.1}", k * 1e6)),
            r.cpu / r.gpu_wall,
            throughput,
            peak
        );
    }
}

fn main() {
    let filter = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_default();
    let ctx = match GpuContext::from_env() {
        Ok(ctx) => ctx,
        Err(e) => {
            eprintln!("kernel benches need a GPU adapter: {e}");
            return;
        }
    };
    eprintln!("adapter: {}", ctx.describe());
    eprintln!("matmul variant: {}", matmul_variant(&ctx));
    let peaks = (
        measure_fma_peak(&ctx).expect("FMA peak kernel"),
        measure_bandwidth(&ctx).expect("copy bandwidth kernel"),
    );
    eprintln!(
        "measured FMA peak {:.1} GFLOP/s, copy bandwidth {:.2} GB/s",
        peaks.0, peaks.1
    );
    // No HTML plots: criterion's plot fonts are unavailable with our plotters
    // features (text comes from an embedded font), and the summary table is ours.
    let mut c = Criterion::default()
        .without_plots()
        .configure_from_args()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let mut cases = vec![
        matmul_case(&ctx, "matmul_ab lstm step", Layout::AB, BATCH, 256, 96),
        matmul_case(
            &ctx,
            "matmul_ab lstm input projection",
            Layout::AB,
            3200,
            256,
            32,
        ),
        matmul_case(&ctx, "matmul_atb lstm dU", Layout::AtB, 64, 256, 3200),
    ];
    for size in [64, 128, 256, 512, 1024] {
        cases.push(matmul_case(
            &ctx,
            "matmul_ab sweep",
            Layout::AB,
            size,
            size,
            size,
        ));
    }
    // The backward layouts at one size.
    cases.push(matmul_case(
        &ctx,
        "matmul_atb sweep",
        Layout::AtB,
        512,
        512,
        512,
    ));
    cases.push(matmul_case(
        &ctx,
        "matmul_abt sweep",
        Layout::ABt,
        512,
        512,
        512,
    ));
    activation_cases(&ctx, &mut cases);
    image_cases(&ctx, &mut cases);
    bias_cases(&ctx, &mut cases);
    embedding_cases(&ctx, &mut cases);
    lstm_cases(&ctx, &mut cases);
    head_cases(&ctx, &mut cases);
    optimizer_cases(&ctx, &mut cases);

    let mut rows = Vec::new();
    for case in cases.into_iter().filter(|c| c.name.contains(&filter)) {
        bench_case(&mut c, &ctx, case, &mut rows);
    }
    c.final_summary();
    print_summary(&ctx, peaks, &rows);
}
