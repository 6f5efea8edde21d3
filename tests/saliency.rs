//! Saliency (`crossmodal predict --explain`) and the input gradients under
//! it: the CPU executor's gradient w.r.t. an image input matches central
//! finite differences (f64), the GPU's matches the CPU's, asking for it
//! leaves parameter gradients and the rest of the schedule unchanged; on a
//! tiny trained run, the heat maps have the model's image size (and the
//! stated upscaled size), the token ranking lists only the text's tokens,
//! the saliency is not zero, and the GPU explanation matches the CPU one.

mod common;
mod graph_common;

use std::path::PathBuf;

use common::{assert_close, gpu};
use crossmodal::data::tokenizer::split_words;
use crossmodal::experiment::prepare::load_data;
use crossmodal::experiment::run::{run_experiment, Experiment, RunOptions};
use crossmodal::experiment::saved::{Sample, SavedRun};
use crossmodal::experiment::schema::Backend;
use crossmodal::graph::gpu::{ExecOptions, GpuExecutor};
use crossmodal::graph::init::init_params;
use crossmodal::graph::{Batch, CpuExecutor, Executor, Graph, HostData, NodeId, Op, TrainConfig};
use crossmodal::nn::{self, Conv2dLayer};
use crossmodal::ops::activation::Activation;
use crossmodal::ops::conv2d::Padding;
use crossmodal::study::saliency::{explain, inference_model, Explanation};
use crossmodal::DType;
use graph_common::{conv_stack_with_shared_value, input, late_fusion, Case};

// ------------------------------------------------------------ input gradients

/// A smooth model (tanh, sigmoid, average pooling: no kink for finite
/// differences to cross) where the image has two consumers: a convolution
/// (backward-input kernel) and, flattened, a Dense (dx = dy·Wᵀ), so its
/// gradient is the sum of both. Distinct sizes per dimension.
fn smooth_case() -> Case {
    let (b, classes) = (2, 3);
    let mut g = Graph::new();
    let images = input(&mut g, "images", &[b, 5, 4, 2], DType::F32);
    let labels = input(&mut g, "labels", &[b], DType::U32);
    let conv = Conv2dLayer {
        filters: 3,
        kernel: [2, 3],
        stride: [1, 1],
        padding: Padding::Valid,
        activation: Some(Activation::Tanh),
    };
    let c = nn::conv2d(&mut g, "conv", images, conv).unwrap();
    let pool = g
        .add(
            "pool",
            Op::AvgPool2d {
                pool: [2, 2],
                stride: [2, 2],
            },
            &[c],
        )
        .unwrap();
    let f = g.add("flatten", Op::Flatten, &[pool]).unwrap();
    let raw = g.add("raw", Op::Flatten, &[images]).unwrap();
    let d = nn::dense(&mut g, "direct", raw, 4, Some(Activation::Sigmoid)).unwrap();
    let cat = g.add("concat", Op::Concat, &[f, d]).unwrap();
    let logits = nn::dense(&mut g, "out", cat, classes, None).unwrap();
    let loss = g
        .add(
            "loss",
            Op::SoftmaxCrossEntropy {
                class_weights: None,
            },
            &[logits, labels],
        )
        .unwrap();
    let mut init = init_params(&g, 11);
    for (id, v) in init.iter_mut() {
        if g.node(*id).name.ends_with(".bias") {
            v.iter_mut()
                .enumerate()
                .for_each(|(i, x)| *x = 0.1 * (i as f32 - 1.0));
        }
    }
    // Pixels on a 2^-12 grid in (-1, 1): x ± 2^-10 and x ± 2^-11 are exact
    // in f32, so the finite differences perturb exactly by h.
    let pixels: Vec<f32> = common::random(&[b, 5, 4, 2], 12)
        .iter()
        .map(|&x| (x * 4096.0).round() / 4096.0)
        .collect();
    let batch = Batch::new()
        .with(images, HostData::F32(pixels))
        .with(labels, HostData::U32(vec![2, 0]));
    Case {
        graph: g,
        loss,
        init,
        batch,
    }
}

/// The first f32 input of a case (its image).
fn image_of(case: &Case) -> NodeId {
    case.graph
        .inputs()
        .into_iter()
        .find(|&i| case.graph.node(i).value.dtype == DType::F32)
        .unwrap()
}

fn with_image(batch: &Batch, image: NodeId, pixels: Vec<f32>) -> Batch {
    let mut b = batch.clone();
    for (id, d) in &mut b.inputs {
        if *id == image {
            *d = HostData::F32(pixels.clone());
        }
    }
    b
}

fn pixels(batch: &Batch, image: NodeId) -> Vec<f32> {
    batch
        .inputs
        .iter()
        .find_map(|(id, d)| match d {
            HostData::F32(v) if *id == image => Some(v.clone()),
            _ => None,
        })
        .unwrap()
}

fn cpu64(case: &Case, inputs: &[NodeId]) -> CpuExecutor<f64> {
    CpuExecutor::<f64>::new(&case.graph, case.loss, &case.init, TrainConfig::default())
        .unwrap()
        .with_input_gradients(inputs)
        .unwrap()
}

/// Central differences at steps h and h/2 combined by Richardson
/// extrapolation ((4·D(h/2) − D(h)) / 3): the error is O(h⁴) (3e-13 seen),
/// so the comparison can be tight: rtol 1e-8, atol 1e-10.
#[test]
fn cpu_input_gradient_matches_finite_differences() {
    let case = smooth_case();
    let image = image_of(&case);
    let mut cpu = cpu64(&case, &[image]);
    cpu.run_gradients(&case.batch).unwrap();
    let got: Vec<f64> = cpu.grad(image).unwrap().iter().copied().collect();
    let x = pixels(&case.batch, image);
    let mut probe = cpu64(&case, &[]);
    let mut loss_at = |i: usize, h: f64| {
        let mut p = x.clone();
        p[i] = (x[i] as f64 + h) as f32;
        assert_eq!(p[i] as f64, x[i] as f64 + h, "the perturbation is exact");
        probe.run_loss(&with_image(&case.batch, image, p)).unwrap()
    };
    let h = 1.0 / 1024.0;
    let mut worst = 0f64;
    for (i, &g) in got.iter().enumerate() {
        let d = |h: f64, f: &mut dyn FnMut(usize, f64) -> f64| (f(i, h) - f(i, -h)) / (2.0 * h);
        let d1 = d(h, &mut loss_at);
        let d2 = d(h / 2.0, &mut loss_at);
        let want = (4.0 * d2 - d1) / 3.0;
        let err = (g - want).abs();
        assert!(
            err <= 1e-10 + 1e-8 * want.abs(),
            "pixel {i}: gradient {g}, finite differences {want} (rtol 1e-8, atol 1e-10)"
        );
        worst = worst.max(err);
    }
    assert!(
        got.iter().any(|&g| g.abs() > 1e-4),
        "the gradient is not zero"
    );
    eprintln!("CPU input gradient vs Richardson finite differences: max |err| {worst:.2e}");
}

#[test]
fn input_gradients_leave_parameter_gradients_unchanged_on_the_cpu() {
    let case = smooth_case();
    let image = image_of(&case);
    let (mut plain, mut with) = (cpu64(&case, &[]), cpu64(&case, &[image]));
    let a = plain.run_gradients(&case.batch).unwrap();
    let b = with.run_gradients(&case.batch).unwrap();
    assert_eq!(a.to_bits(), b.to_bits());
    for p in case.graph.params() {
        assert_eq!(plain.grad(p).unwrap(), with.grad(p).unwrap());
    }
    assert!(plain.grad(image).is_err(), "no input gradient unless asked");
}

#[test]
fn input_gradients_are_only_for_f32_inputs() {
    let case = late_fusion(None);
    let tokens = case.graph.expect_id("tokens").unwrap();
    let cpu = CpuExecutor::<f32>::new(&case.graph, case.loss, &case.init, TrainConfig::default())
        .unwrap();
    let e = cpu.with_input_gradients(&[tokens]).unwrap_err().to_string();
    assert!(e.contains("tokens") && e.contains("U32"), "{e}");
    let conv = case.graph.expect_id("conv").unwrap();
    let cpu = CpuExecutor::<f32>::new(&case.graph, case.loss, &case.init, TrainConfig::default())
        .unwrap();
    let e = cpu.with_input_gradients(&[conv]).unwrap_err().to_string();
    assert!(e.contains("not Input"), "{e}");
    let Some(ctx) = gpu() else { return };
    let options = ExecOptions {
        input_gradients: vec![tokens],
        ..ExecOptions::default()
    };
    let e = GpuExecutor::with_options(
        ctx,
        &case.graph,
        case.loss,
        &case.init,
        TrainConfig::default(),
        options,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("tokens") && e.contains("U32"), "{e}");
}

/// The GPU's image gradient against the CPU reference's (f64), with and
/// without the option: parameter gradients bit-identical, one extra
/// backward dispatch per op reading the image that writes its input
/// gradient (`extra`), and no input gradient unless asked.
fn max_rel(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    got.iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

fn gpu_matches_cpu(what: &str, case: &Case, extra: usize) {
    let Some(ctx) = gpu() else { return };
    let image = image_of(case);
    let mut cpu = cpu64(case, &[image]);
    cpu.run_gradients(&case.batch).unwrap();
    let want: Vec<f32> = cpu.grad(image).unwrap().iter().map(|&v| v as f32).collect();
    let build = |input_gradients: Vec<NodeId>| {
        GpuExecutor::with_options(
            ctx,
            &case.graph,
            case.loss,
            &case.init,
            TrainConfig::default(),
            ExecOptions {
                input_gradients,
                ..ExecOptions::default()
            },
        )
        .unwrap()
    };
    let (mut plain, mut with) = (build(vec![]), build(vec![image]));
    let (la, ga) = plain.gradients(&case.batch).unwrap();
    let (lb, gb) = with.gradients(&case.batch).unwrap();
    let got = with.gradient_of(image).unwrap();
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(scale > 0.0, "{what}: the gradient is not zero");
    // f32 sums of a few dozen terms against f64 (1e-7 of the largest value
    // seen): rtol 1e-5, atol 1e-6 of the largest value.
    assert_close(
        &format!("{what}: GPU image gradient vs CPU"),
        &got,
        &want,
        1e-5,
        1e-6 * scale,
    );
    eprintln!(
        "{what}: GPU vs CPU image gradient, max |diff| / max |g| = {:.1e}",
        max_rel(&got, &want)
    );
    assert_eq!(la.to_bits(), lb.to_bits(), "{what}: loss");
    for (a, b) in ga.iter().zip(&gb) {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(a), bits(b), "{what}: a parameter gradient changed");
    }
    let (sa, sb) = (plain.step_stats(), with.step_stats());
    assert_eq!(sa.forward_dispatches, sb.forward_dispatches, "{what}");
    assert_eq!(
        sb.backward_dispatches,
        sa.backward_dispatches + extra,
        "{what}: backward dispatches"
    );
    let e = plain.gradient_of(image).unwrap_err().to_string();
    assert!(e.contains("input_gradients"), "{e}");
}

#[test]
fn gpu_input_gradient_matches_the_cpu_on_the_smooth_model() {
    // conv backward-input and the Dense's dx (the flattened image).
    gpu_matches_cpu("smooth", &smooth_case(), 2);
}

#[test]
fn gpu_input_gradient_matches_the_cpu_on_the_conv_stack() {
    gpu_matches_cpu("conv stack", &conv_stack_with_shared_value(), 1);
}

#[test]
fn gpu_input_gradient_matches_the_cpu_on_late_fusion() {
    gpu_matches_cpu("late fusion", &late_fusion(None), 1);
}

// ------------------------------------------------------------ explain

fn scratch(name: &str) -> PathBuf {
    common::experiments::scratch("saliency", name)
}

/// The seed experiment at test size with a dropout layer (which the
/// explanation leaves out: inference), trained 2 epochs.
fn tiny() -> Experiment {
    common::experiments::tiny_seed(2)
}

/// A trained tiny run, a sample text and a 28×28 PNG of a sample image.
struct Fixture {
    run: SavedRun,
    text: String,
    image: PathBuf,
    dir: PathBuf,
}

fn fixture(name: &str) -> Fixture {
    let dir = scratch(name);
    let exp = tiny();
    let out = run_experiment(
        &exp,
        &dir,
        RunOptions {
            backend: Some(Backend::Cpu),
            ..RunOptions::default()
        },
    )
    .unwrap();
    let data = load_data(&exp.data, exp.seed).unwrap();
    let [h, w, _] = data.image_shape;
    let bytes: Vec<u8> = data
        .image(0)
        .iter()
        .map(|&v| (v * 255.0).round().clamp(0.0, 255.0) as u8)
        .collect();
    let image = dir.join("face.png");
    image::GrayImage::from_raw(w as u32, h as u32, bytes)
        .unwrap()
        .save(&image)
        .unwrap();
    // A known positive word, an unknown one, and the sample's own text.
    let text = format!("wonderful zzzunknownzzz {}", data.texts[0]);
    Fixture {
        run: SavedRun::open(&out.dir).unwrap(),
        text,
        image,
        dir,
    }
}

fn check_tokens(e: &Explanation, text: &str, seq_len: usize) {
    let tokens = e.tokens.as_ref().expect("the text is explained");
    let words = split_words(text, true);
    assert!(!tokens.is_empty());
    assert!(tokens.len() <= seq_len.min(words.len()));
    for t in tokens {
        let w = t.text_word.as_ref().expect("every scored token is a word");
        assert!(words.contains(w), "{w:?} is not in the text");
        assert!(t.id != 0, "padding is skipped");
        if t.id == 1 {
            assert_eq!(t.word, "<oov>");
        } else {
            assert_eq!(&t.word, w, "the vocabulary's word is the text's");
        }
        assert!(t.score.is_finite());
    }
    for pair in tokens.windows(2) {
        assert!(pair[0].score.abs() >= pair[1].score.abs(), "ranked");
    }
    assert!(
        tokens.iter().any(|t| t.score != 0.0),
        "token scores not all zero"
    );
}

#[test]
fn explain_writes_heat_maps_and_ranks_the_texts_tokens() {
    let f = fixture("explain");
    let sample = Sample {
        text: Some(&f.text),
        image: Some(&f.image),
    };
    let e = explain(&f.run, &sample, None).unwrap();
    assert_eq!(e.classes, ["negative", "positive"]);
    let p = e.probabilities[e.class];
    assert!(e.probabilities.iter().all(|&q| q <= p));
    // The gradient pass's loss is −log p_c of the same forward.
    assert!(
        (e.log_prob - p.ln()).abs() < 1e-5,
        "{} vs ln {p}",
        e.log_prob
    );

    let img = e.image.as_ref().expect("the image is explained");
    assert_eq!((img.height, img.width, img.channels), (28, 28, 1));
    assert_eq!(img.map.len(), 28 * 28);
    assert!(img.map.iter().any(|&v| v > 0.0), "saliency not all zeros");
    assert!(img.map.iter().all(|v| v.is_finite() && *v >= 0.0));
    let out = f.dir.join("saliency.png");
    let files = img.write_png(&out).unwrap();
    assert_eq!(files.map, out);
    let map = image::open(&files.map).unwrap();
    assert_eq!((map.width(), map.height()), (28, 28));
    assert_eq!(map.to_luma8().pixels().map(|p| p.0[0]).max(), Some(255));
    // 256 / 28 = 9: a 252×252 copy.
    assert_eq!(files.factor, 9);
    assert_eq!(files.upscaled, f.dir.join("saliency_x9.png"));
    let big = image::open(&files.upscaled).unwrap();
    assert_eq!((big.width(), big.height()), (252, 252));

    check_tokens(&e, &f.text, 12);
    let report = e.report(Some(&files), Some(5));
    assert!(report.contains("saliency.png") && report.contains("saliency_x9.png"));
    assert!(
        report.contains("tokens by |gradient x embedding|"),
        "{report}"
    );

    // One modality: only it is explained.
    let text_only = explain(
        &f.run,
        &Sample {
            text: Some(&f.text),
            image: None,
        },
        None,
    )
    .unwrap();
    assert!(text_only.image.is_none());
    check_tokens(&text_only, &f.text, 12);
    assert!(text_only
        .report(None, None)
        .contains("image: not explained"));
    let image_only = explain(
        &f.run,
        &Sample {
            text: None,
            image: Some(&f.image),
        },
        None,
    )
    .unwrap();
    assert!(image_only.tokens.is_none());
    assert!(image_only.image.unwrap().map.iter().any(|&v| v > 0.0));

    // The GPU explains the same prediction: gradients of f32 sums through
    // conv, LSTM and dense (1e-7 of the largest value seen) within rtol
    // 1e-4, atol 1e-5 of the largest value.
    let Some(ctx) = gpu() else { return };
    let g = explain(&f.run, &sample, Some(ctx)).unwrap();
    assert_eq!(g.class, e.class);
    assert_close(
        "probabilities",
        &g.probabilities,
        &e.probabilities,
        1e-5,
        1e-6,
    );
    let gi = g.image.as_ref().unwrap();
    let scale = img.gradient.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert_close(
        "GPU vs CPU image gradient",
        &gi.gradient,
        &img.gradient,
        1e-4,
        1e-5 * scale,
    );
    eprintln!(
        "explain: GPU vs CPU image gradient, max |diff| / max |g| = {:.1e}",
        max_rel(&gi.gradient, &img.gradient)
    );
    let (ct, gt) = (e.tokens.as_ref().unwrap(), g.tokens.as_ref().unwrap());
    let by_position = |t: &[crossmodal::study::saliency::TokenScore]| {
        let mut v: Vec<(usize, f32)> = t.iter().map(|t| (t.position, t.score)).collect();
        v.sort_by_key(|p| p.0);
        v
    };
    let (cs, gs) = (by_position(ct), by_position(gt));
    assert_eq!(
        cs.iter().map(|p| p.0).collect::<Vec<_>>(),
        gs.iter().map(|p| p.0).collect::<Vec<_>>()
    );
    let tscale = cs.iter().fold(0f32, |m, p| m.max(p.1.abs()));
    let (gv, cv): (Vec<f32>, Vec<f32>) = gs.iter().zip(&cs).map(|(a, b)| (a.1, b.1)).unzip();
    eprintln!(
        "explain: GPU vs CPU token scores, max |diff| / max |s| = {:.1e}",
        max_rel(&gv, &cv)
    );
    assert_close(
        "GPU vs CPU token scores",
        &gs.iter().map(|p| p.1).collect::<Vec<_>>(),
        &cs.iter().map(|p| p.1).collect::<Vec<_>>(),
        1e-4,
        1e-5 * tscale,
    );
}

#[test]
fn inference_model_leaves_dropout_out() {
    let spec = tiny().model;
    let inf = inference_model(&spec);
    assert!(inf.layers.iter().all(|l| l.name != "drop"));
    let dense = inf.layers.iter().find(|l| l.name == "dense").unwrap();
    assert_eq!(dense.inputs, ["concat"]);
    assert_eq!(inf.layers.len(), spec.layers.len() - 1);
    assert_eq!(inf.output, spec.output);
}
