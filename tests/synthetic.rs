//! The synthetic generator: determinism, balance, shares of each kind,
//! texts and faces as documented, and that a fused model learns what the
//! unimodal ones cannot (CPU backend, a few hundred steps).

use std::collections::HashMap;

use crossmodal::data::synthetic::{
    generate, generate_with_info, text_sentiment, Kind, Shares, SyntheticConfig, BROW_DY,
    FILLER_WORDS, MOUTH_DY, NEGATIVE_WORDS, NEGATORS, POSITIVE_WORDS,
};
use crossmodal::data::Dataset;
use crossmodal::graph::init::init_params;
use crossmodal::graph::{
    Batch, CpuExecutor, Executor, Graph, HostData, NodeId, Op, Optimizer, TrainConfig,
};
use crossmodal::nn::{self, Conv2dLayer, SeedConfig};
use crossmodal::ops::activation::Activation;
use crossmodal::ops::conv2d::Padding;
use crossmodal::optim::adam::AdamConfig;
use crossmodal::DType;

fn config(samples: usize, seed: u64) -> SyntheticConfig {
    SyntheticConfig {
        samples,
        seed,
        ..SyntheticConfig::default()
    }
}

#[test]
fn synthetic_is_deterministic() {
    let a = generate(&config(300, 7)).unwrap();
    let b = generate(&config(300, 7)).unwrap();
    assert_eq!(a.texts, b.texts);
    assert_eq!(a.labels, b.labels);
    let bits = |d: &Dataset| d.images.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&a), bits(&b), "images differ bit for bit");
    assert_eq!(a.image_shape, [28, 28, 1]);
    assert_eq!(a.images.len(), 300 * 28 * 28);
    assert_eq!(a.classes, ["negative", "positive"]);
    assert!(a.images.iter().all(|v| (0.0..=1.0).contains(v)));

    let c = generate(&config(300, 8)).unwrap();
    assert_ne!(a.texts, c.texts, "another seed gives another set");
    assert_ne!(bits(&a), bits(&c));
}

#[test]
fn synthetic_balance_and_shares() {
    let n = 1001;
    let s = generate_with_info(&config(n, 1)).unwrap();
    let shares = Shares::default();
    let want = [
        shares.text_only,
        shares.image_only,
        shares.both,
        shares.conflict,
    ];
    let positives = s.dataset.labels.iter().filter(|&&l| l == 1).count();
    // Exactly half of each kind, the odd one out drawn: at most 4 off.
    assert!(
        positives.abs_diff(n / 2) <= 4,
        "{positives} positives of {n}"
    );
    for (kind, share) in Kind::ALL.iter().zip(want) {
        let idx: Vec<usize> = (0..n).filter(|&i| s.info[i].kind == *kind).collect();
        let got = idx.len() as f64 / n as f64;
        // Counts are rounded by largest remainder: within one sample.
        assert!(
            (got - share).abs() <= 1.0 / n as f64,
            "{kind:?}: share {got}, want {share}"
        );
        let pos = idx.iter().filter(|&&i| s.dataset.labels[i] == 1).count();
        assert!(
            pos.abs_diff(idx.len() - pos) <= 1,
            "{kind:?}: {pos} positive of {}",
            idx.len()
        );
        // The label rule and what each modality carries.
        for &i in &idx {
            let (info, label) = (s.info[i], s.dataset.labels[i]);
            let (text, face) = match kind {
                Kind::TextOnly => (Some(label), None),
                Kind::ImageOnly => (None, Some(label)),
                Kind::Both => (Some(label), Some(label)),
                Kind::Conflict => (Some(1 - label), Some(label)),
            };
            assert_eq!((info.text, info.face), (text, face), "sample {i}");
        }
    }
    // Other shares are followed too, and kinds are shuffled (not in blocks).
    let custom = Shares {
        text_only: 0.1,
        image_only: 0.2,
        both: 0.3,
        conflict: 0.4,
    };
    let s = generate_with_info(&SyntheticConfig {
        shares: custom,
        ..config(500, 2)
    })
    .unwrap();
    let count = |k: Kind| s.info.iter().filter(|i| i.kind == k).count();
    assert_eq!(
        [Kind::TextOnly, Kind::ImageOnly, Kind::Both, Kind::Conflict].map(count),
        [50, 100, 150, 200]
    );
    assert!(s.info[..100].iter().any(|i| i.kind != s.info[0].kind));
}

#[test]
fn synthetic_ceilings_match_the_documentation() {
    let c = Shares::default().ceilings();
    assert!((c.text_only - 0.70).abs() < 1e-12, "{c:?}");
    assert!((c.image_only - 0.775).abs() < 1e-12, "{c:?}");
    assert_eq!(c.fused, 1.0);
}

#[test]
fn synthetic_rejects_bad_configs() {
    let bad = [
        SyntheticConfig {
            shares: Shares {
                text_only: 0.5,
                ..Shares::default()
            },
            ..config(10, 0)
        },
        SyntheticConfig {
            negation: 1.5,
            ..config(10, 0)
        },
        SyntheticConfig {
            min_words: 9,
            max_words: 8,
            ..config(10, 0)
        },
        SyntheticConfig {
            image_size: 8,
            ..config(10, 0)
        },
        SyntheticConfig {
            noise: f32::NAN,
            ..config(10, 0)
        },
    ];
    for c in bad {
        let err = generate(&c).unwrap_err().to_string();
        assert!(err.starts_with("synthetic:"), "{err}");
    }
    assert!(generate(&config(0, 0)).unwrap().is_empty());
}

#[test]
fn synthetic_texts_follow_the_lexicon() {
    let cfg = config(2000, 3);
    let s = generate_with_info(&cfg).unwrap();
    let (mut negated, mut decoys, mut sentiment_texts) = (0, 0, 0);
    let mut lengths = Vec::new();
    for (text, info) in s.dataset.texts.iter().zip(&s.info) {
        let words: Vec<&str> = text.split(' ').collect();
        lengths.push(words.len());
        assert!(
            (cfg.min_words..=cfg.max_words).contains(&words.len()),
            "{text:?}"
        );
        for w in &words {
            assert!(
                POSITIVE_WORDS.contains(w)
                    || NEGATIVE_WORDS.contains(w)
                    || NEGATORS.contains(w)
                    || FILLER_WORDS.contains(w),
                "{w:?} in {text:?} is in no list"
            );
        }
        // The documented rule recovers what the generator meant.
        assert_eq!(text_sentiment(text), info.text, "{text:?} {info:?}");
        let is_sentiment = |w: &str| POSITIVE_WORDS.contains(&w) || NEGATIVE_WORDS.contains(&w);
        let count = words.iter().filter(|w| is_sentiment(w)).count();
        match info.text {
            None => assert_eq!(count, 0, "filler text {text:?}"),
            Some(_) => {
                sentiment_texts += 1;
                assert!((1..=3).contains(&count), "{text:?}");
            }
        }
        for pair in words.windows(2) {
            if NEGATORS.contains(&pair[0]) {
                if is_sentiment(pair[1]) {
                    negated += 1;
                } else {
                    decoys += 1;
                }
            }
        }
    }
    // Negations and decoys both occur often (defaults 0.3 each).
    assert!(negated > sentiment_texts / 5, "{negated} negated phrases");
    assert!(decoys > s.dataset.len() / 5, "{decoys} decoys");
    assert!(*lengths.iter().min().unwrap() == cfg.min_words);
    assert!(*lengths.iter().max().unwrap() == cfg.max_words);
    // The rule itself, on hand-written texts.
    assert_eq!(text_sentiment("the movie was not bad"), Some(1));
    assert_eq!(text_sentiment("not the movie was bad"), Some(0));
    assert_eq!(text_sentiment("never happy and no coffee"), Some(0));
    assert_eq!(text_sentiment("the day was long"), None);
}

/// Mean of each pixel over the samples `pick` selects.
fn mean_image(d: &Dataset, pick: impl Fn(usize) -> bool) -> Vec<f32> {
    let mut sum = vec![0f32; d.image_len()];
    let mut n = 0;
    for i in (0..d.len()).filter(|&i| pick(i)) {
        sum.iter_mut().zip(d.image(i)).for_each(|(s, v)| *s += v);
        n += 1;
    }
    sum.iter().map(|s| s / n as f32).collect()
}

/// Mean of `img` over rows `y0..y1` and columns `x0..x1`.
fn region(img: &[f32], size: usize, ys: (f32, f32), xs: (f32, f32)) -> f32 {
    let (mut sum, mut n) = (0.0, 0);
    for y in ys.0.round() as usize..ys.1.round() as usize {
        for x in xs.0.round() as usize..xs.1.round() as usize {
            sum += img[y * size + x];
            n += 1;
        }
    }
    sum / n as f32
}

#[test]
fn synthetic_faces_carry_the_sentiment() {
    // Without jitter the mean faces show the drawn geometry sharply; with
    // the default jitter (2 px) the mouth still separates the classes.
    for (size, jitter) in [(28usize, 0.0f32), (40, 0.0), (28, 2.0)] {
        let s = generate_with_info(&SyntheticConfig {
            image_size: size,
            jitter,
            ..config(1500, 4)
        })
        .unwrap();
        let d = &s.dataset;
        let k = size as f32 / 28.0;
        let face = |want: Option<u32>| mean_image(d, |i| s.info[i].face == want);
        let (pos, neg, neutral) = (face(Some(1)), face(Some(0)), face(None));
        let at = |img: &[f32], ys: (f32, f32), xs: (f32, f32)| region(img, size, ys, xs);
        let c = (size as f32 - 1.0) / 2.0;
        let mouth = c + MOUTH_DY * k;
        let what = format!("{size}px, jitter {jitter}");
        // The middle of a smile lies below the mouth line, of a frown above.
        let middle = (c - 1.5 * k, c + 2.5 * k);
        let below = (mouth + 0.5 * k, mouth + 2.5 * k);
        let above = (mouth - 2.5 * k, mouth - 0.5 * k);
        let (p, n) = (at(&pos, below, middle), at(&neg, below, middle));
        assert!(p > n + 0.05, "{what}: below the middle {p} vs {n}");
        let (p, n) = (at(&pos, above, middle), at(&neg, above, middle));
        assert!(n > p + 0.05, "{what}: above the middle {n} vs {p}");
        if jitter > 0.0 {
            continue;
        }
        // Corners: up for a smile, down for a frown.
        let left = (c - 5.5 * k, c - 3.5 * k);
        let (p, n) = (at(&pos, above, left), at(&neg, above, left));
        assert!(p > n + 0.05, "{what}: corner up {p} vs {n}");
        let (p, n) = (at(&pos, below, left), at(&neg, below, left));
        assert!(n > p + 0.05, "{what}: corner down {n} vs {p}");
        // A neutral mouth lies on the line.
        let line = (mouth - 0.5 * k, mouth + 0.5 * k);
        let (z, p, n) = (
            at(&neutral, line, middle),
            at(&pos, line, middle),
            at(&neg, line, middle),
        );
        assert!(z > p.max(n) + 0.2, "{what}: flat mouth {z} vs {p}, {n}");
        // Inner brow ends up for positive faces, down for negative ones.
        let brow = c - BROW_DY * k;
        let inner = (c + 1.5 * k, c + 3.5 * k);
        let up = (brow - 2.0 * k, brow - 0.5 * k);
        let down = (brow + 0.5 * k, brow + 2.0 * k);
        let (p, n) = (at(&pos, up, inner), at(&neg, up, inner));
        assert!(p > n + 0.05, "{what}: inner brow up {p} vs {n}");
        let (p, n) = (at(&pos, down, inner), at(&neg, down, inner));
        assert!(n > p + 0.05, "{what}: inner brow down {n} vs {p}");
        // Elsewhere (the eyes, the head outline) faces look alike.
        let eyes = (c - 3.5 * k, c - 1.5 * k);
        let head = (c - 1.0 * k, c + 1.0 * k);
        for (ys, xs) in [
            (eyes, (c - 5.0 * k, c - 3.0 * k)),
            (head, (c - 11.5 * k, c - 8.5 * k)),
        ] {
            let (p, n, z) = (at(&pos, ys, xs), at(&neg, ys, xs), at(&neutral, ys, xs));
            assert!(p > 0.3, "{what}: eyes and outline are drawn ({p})");
            assert!(
                (p - n).abs() < 0.03 && (p - z).abs() < 0.03,
                "{what}: {p} {n} {z}"
            );
        }
    }
}

// ---------------------------------------------------------------- learning

const T: usize = 30;
const B: usize = 16;

/// A word → id map over the training texts: 0 = padding, 1 = unknown.
fn vocabulary(texts: &[String]) -> HashMap<String, u32> {
    let mut vocab = HashMap::new();
    for t in texts {
        for w in t.split(' ') {
            let next = vocab.len() as u32 + 2;
            vocab.entry(w.to_string()).or_insert(next);
        }
    }
    vocab
}

/// Time-major `[T,B]` ids of samples `idx`, pre-padded with zeros.
fn tokens(d: &Dataset, idx: &[usize], vocab: &HashMap<String, u32>) -> Vec<u32> {
    let mut out = vec![0; T * idx.len()];
    for (b, &i) in idx.iter().enumerate() {
        let ids: Vec<u32> = d.texts[i]
            .split(' ')
            .map(|w| *vocab.get(w).unwrap_or(&1))
            .collect();
        let ids = &ids[ids.len().saturating_sub(T)..];
        for (t, &id) in ids.iter().enumerate() {
            out[(T - ids.len() + t) * idx.len() + b] = id;
        }
    }
    out
}

struct Model {
    graph: Graph,
    tokens: Option<NodeId>,
    images: Option<NodeId>,
    labels: NodeId,
    logits: NodeId,
    loss: NodeId,
}

fn input(g: &mut Graph, name: &str, shape: &[usize], dtype: DType) -> NodeId {
    let op = Op::Input {
        shape: shape.to_vec(),
        dtype,
    };
    g.add(name, op, &[]).unwrap()
}

const EMBED: usize = 16;
const UNITS: usize = 16;
const FILTERS: usize = 8;

fn text_model(vocab: usize) -> Model {
    let mut g = Graph::new();
    let tokens = input(&mut g, "tokens", &[T, B], DType::U32);
    let labels = input(&mut g, "labels", &[B], DType::U32);
    let e = nn::embedding(&mut g, "embedding", tokens, vocab, EMBED, None).unwrap();
    let h = nn::lstm(&mut g, "lstm", e, UNITS, false, None).unwrap();
    let logits = nn::dense(&mut g, "dense", h, 2, None).unwrap();
    let loss = g
        .add(
            "loss",
            Op::SoftmaxCrossEntropy {
                class_weights: None,
            },
            &[logits, labels],
        )
        .unwrap();
    Model {
        graph: g,
        tokens: Some(tokens),
        images: None,
        labels,
        logits,
        loss,
    }
}

fn image_model() -> Model {
    let mut g = Graph::new();
    let images = input(&mut g, "images", &[B, 28, 28, 1], DType::F32);
    let labels = input(&mut g, "labels", &[B], DType::U32);
    let layer = Conv2dLayer {
        filters: FILTERS,
        kernel: [3, 3],
        stride: [1, 1],
        padding: Padding::Valid,
        activation: Some(Activation::Relu),
    };
    let c = nn::conv2d(&mut g, "conv", images, layer).unwrap();
    let pool = Op::MaxPool2d {
        pool: [2, 2],
        stride: [2, 2],
    };
    let p = g.add("pool", pool, &[c]).unwrap();
    let f = g.add("flatten", Op::Flatten, &[p]).unwrap();
    let logits = nn::dense(&mut g, "dense", f, 2, None).unwrap();
    let loss = g
        .add(
            "loss",
            Op::SoftmaxCrossEntropy {
                class_weights: None,
            },
            &[logits, labels],
        )
        .unwrap();
    Model {
        graph: g,
        tokens: None,
        images: Some(images),
        labels,
        logits,
        loss,
    }
}

/// The seed model's architecture at test size.
fn fused_model(vocab: usize) -> Model {
    let m = nn::seed_model(&SeedConfig {
        batch: B,
        vocab,
        seq_len: T,
        embed_dim: EMBED,
        lstm_units: UNITS,
        image: [28, 28, 1],
        filters: FILTERS,
        classes: 2,
        mask_padding: false,
    })
    .unwrap();
    Model {
        graph: m.graph,
        tokens: Some(m.tokens),
        images: Some(m.images),
        labels: m.labels,
        logits: m.logits,
        loss: m.loss,
    }
}

fn batch(m: &Model, d: &Dataset, idx: &[usize], vocab: &HashMap<String, u32>) -> Batch {
    let mut b = Batch::new().with(
        m.labels,
        HostData::U32(idx.iter().map(|&i| d.labels[i]).collect()),
    );
    if let Some(t) = m.tokens {
        b = b.with(t, HostData::U32(tokens(d, idx, vocab)));
    }
    if let Some(im) = m.images {
        let mut px = Vec::with_capacity(idx.len() * d.image_len());
        idx.iter().for_each(|&i| px.extend_from_slice(d.image(i)));
        b = b.with(im, HostData::F32(px));
    }
    b
}

/// Trains `m` for one pass over `train` (fresh samples every step, so
/// nothing is memorised), returns the accuracy on `test`.
fn train_and_test(m: &Model, train: &Dataset, test: &Dataset, vocab: &HashMap<String, u32>) -> f64 {
    let config = TrainConfig {
        optimizer: Optimizer::Adam(AdamConfig {
            learning_rate: 0.01,
            ..AdamConfig::default()
        }),
        clip_global_norm: Some(5.0),
    };
    let params = init_params(&m.graph, 11);
    let mut exec = CpuExecutor::<f32>::new(&m.graph, m.loss, &params, config).unwrap();
    let all: Vec<usize> = (0..train.len()).collect();
    for idx in all.chunks_exact(B) {
        let loss = exec.train_step(&batch(m, train, idx, vocab)).unwrap();
        assert!(loss.is_finite());
    }
    let all: Vec<usize> = (0..test.len()).collect();
    let mut right = 0;
    for idx in all.chunks_exact(B) {
        let logits = exec.predict(&batch(m, test, idx, vocab), m.logits).unwrap();
        for (j, &i) in idx.iter().enumerate() {
            let guess = (logits[2 * j + 1] > logits[2 * j]) as u32;
            right += (guess == test.labels[i]) as usize;
        }
    }
    right as f64 / (all.len() / B * B) as f64
}

/// Text-only, image-only and fused (the seed architecture at test size)
/// models, each trained for 1200 steps of 16 fresh samples with Adam
/// (lr 0.01), tested on 800 held-out samples. A text-only LSTM sits at
/// chance for its first ~700 steps (it must learn to keep a sentiment word
/// across up to 30 steps), so fewer steps would not show its ceiling; the
/// fused model learns its text branch sooner, once the face explains the
/// rest.
#[test]
fn synthetic_fusion_beats_each_modality() {
    let steps = 1200;
    let train = generate(&config(steps * B, 21)).unwrap();
    let test = generate(&config(800, 22)).unwrap();
    let vocab = vocabulary(&train.texts);
    let v = vocab.len() + 2;
    // Two threads (the machines have 2 cores): the fused model beside the
    // two smaller ones.
    let timed = |m: Model| {
        let start = std::time::Instant::now();
        let acc = train_and_test(&m, &train, &test, &vocab);
        (acc, start.elapsed())
    };
    let ((text, t_text), (image, t_image), (fused, t_fused)) = std::thread::scope(|s| {
        let fused = s.spawn(|| timed(fused_model(v)));
        let text = timed(text_model(v));
        let image = timed(image_model());
        (text, image, fused.join().unwrap())
    });
    let c = Shares::default().ceilings();
    println!(
        "held-out accuracy after {steps} steps of {B}: text {text:.3} ({t_text:.1?}, \
         ceiling {:.3}), image {image:.3} ({t_image:.1?}, ceiling {:.3}), \
         fused {fused:.3} ({t_fused:.1?})",
        c.text_only, c.image_only
    );
    // Each modality alone learns, and stays under its ceiling (plus the
    // sampling error of 800 test samples, ~0.016).
    assert!(text > 0.6 && text < c.text_only + 0.05, "text {text}");
    assert!(image > 0.6 && image < c.image_only + 0.05, "image {image}");
    assert!(
        fused > 0.9 && fused > text.max(image) + 0.1,
        "fused {fused} vs text {text}, image {image}"
    );
}
