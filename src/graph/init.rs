//! Seeded parameter initialisation on the host, with Keras' rules, so the
//! GPU and CPU backends start from identical values.

use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::graph::{Graph, Init, NodeId, Op};
use crate::tensor::numel;

/// Fan-in and fan-out as Keras computes them: dense `[in, out]`; conv
/// `[kh, kw, cin, cout]` with the receptive field multiplied in.
fn fans(shape: &[usize]) -> (f64, f64) {
    match shape {
        [] => (1.0, 1.0),
        [n] => (*n as f64, *n as f64),
        [i, o] => (*i as f64, *o as f64),
        _ => {
            let receptive: usize = shape[..shape.len() - 2].iter().product();
            let cin = shape[shape.len() - 2];
            let cout = shape[shape.len() - 1];
            ((receptive * cin) as f64, (receptive * cout) as f64)
        }
    }
}

/// Orthogonal `[rows, cols]` (Keras: QR of a normal matrix, taken on the
/// transposed side when rows < cols), by modified Gram-Schmidt.
fn orthogonal(rows: usize, cols: usize, rng: &mut StdRng) -> Vec<f32> {
    let (r, c) = if rows < cols {
        (cols, rows)
    } else {
        (rows, cols)
    };
    // c orthonormal columns of length r.
    let mut q: Vec<Vec<f64>> = Vec::with_capacity(c);
    while q.len() < c {
        let mut v: Vec<f64> = (0..r).map(|_| normal(rng)).collect();
        for u in &q {
            let dot: f64 = v.iter().zip(u).map(|(a, b)| a * b).sum();
            v.iter_mut().zip(u).for_each(|(a, b)| *a -= dot * b);
        }
        let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        if norm > 1e-6 {
            q.push(v.into_iter().map(|a| a / norm).collect());
        }
    }
    let mut out = vec![0f32; rows * cols];
    for i in 0..rows {
        for j in 0..cols {
            // element (i, j) of the r×c matrix Q, or of Qᵀ when transposed
            out[i * cols + j] = if rows < cols { q[i][j] } else { q[j][i] } as f32;
        }
    }
    out
}

fn normal(rng: &mut StdRng) -> f64 {
    // Box-Muller: two uniforms give one standard normal.
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// The initial value of one parameter.
pub fn init_value(init: Init, shape: &[usize], rng: &mut StdRng) -> Vec<f32> {
    let n = numel(shape);
    match init {
        Init::Zeros => vec![0.0; n],
        Init::Ones => vec![1.0; n],
        Init::Uniform(limit) => (0..n)
            .map(|_| rng.random_range(-limit..=limit) as f32)
            .collect(),
        Init::GlorotUniform => {
            let (fan_in, fan_out) = fans(shape);
            let limit = (6.0 / (fan_in + fan_out)).sqrt();
            (0..n)
                .map(|_| rng.random_range(-limit..=limit) as f32)
                .collect()
        }
        Init::Orthogonal => {
            // Recurrent kernels [H, G·H]: Keras initialises the whole matrix.
            let rows = shape.first().copied().unwrap_or(1);
            orthogonal(rows, n / rows.max(1), rng)
        }
        Init::LstmBias => {
            let h = n / 4;
            (0..n)
                .map(|i| if (h..2 * h).contains(&i) { 1.0 } else { 0.0 })
                .collect()
        }
    }
}

/// Initial values of every parameter of `graph`, in [`Graph::params`]
/// order, from one seed.
pub fn init_params(graph: &Graph, seed: u64) -> Vec<(NodeId, Vec<f32>)> {
    let mut rng = StdRng::seed_from_u64(seed);
    graph
        .params()
        .into_iter()
        .map(|id| match &graph.node(id).op {
            Op::Param { shape, init } => (id, init_value(*init, shape, &mut rng)),
            _ => unreachable!("params() returns Param nodes"),
        })
        .collect()
}
