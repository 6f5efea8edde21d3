//! Adam as Keras 3 implements it (`keras/src/optimizers/adam.py`,
//! `Adam.update_step`, without amsgrad), for the 1-based step `t`:
//!
//! ```text
//! alpha = lr · sqrt(1 - beta_2^t) / (1 - beta_1^t)
//! m    += (g - m) · (1 - beta_1)
//! v    += (g² - v) · (1 - beta_2)
//! w    -= (m · alpha) / (sqrt(v) + epsilon)
//! ```
//!
//! Defaults are Keras's: lr 0.001, beta_1 0.9, beta_2 0.999, epsilon 1e-7
//! ("epsilon hat": added to sqrt(v) of the uncorrected v). m and v start at
//! zero; Keras's first update uses t = 1 (`iterations + 1`).
//!
//! `alpha` and `1 - beta` are computed on the host in f64 and rounded to f32
//! (Keras computes `alpha` in the variable's dtype: a few ulps apart). Since
//! they live in the uniform params, a new step rewrites 32 bytes per
//! variable and rebuilds nothing: [`Adam::set_step`], or
//! `dispatch.set_params(ctx, &config.params(n, t))` with the bare launcher
//! [`adam_update`].

use ndarray::{ArrayD, ArrayViewD, NdFloat, Zip};

use crate::error::{Error, Result};
use crate::gpu::{Access, Dispatch, GpuContext, GpuTensor, Grid, KernelSpec, Shader};
use crate::tensor::{expect_numel, DType};

/// Uniform parameters, mirrored by `Params` in `shaders/adam.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct AdamParams {
    pub n: u32,
    /// The 1-based step `alpha` belongs to.
    pub step: u32,
    pub alpha: f32,
    pub epsilon: f32,
    pub one_minus_beta_1: f32,
    pub one_minus_beta_2: f32,
    pub _pad: [u32; 2],
}

/// Hyperparameters, with Keras's defaults.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamConfig {
    pub learning_rate: f64,
    pub beta_1: f64,
    pub beta_2: f64,
    pub epsilon: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self {
            learning_rate: 0.001,
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-7,
        }
    }
}

impl AdamConfig {
    /// A finite rate, betas in [0, 1) (else the bias correction divides by
    /// zero) and a non-negative epsilon.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String, why: &str| {
            Err(Error::Unsupported {
                op: "adam".into(),
                what,
                why: why.into(),
            })
        };
        if !self.learning_rate.is_finite() {
            return bad(
                format!("learning_rate {}", self.learning_rate),
                "it must be finite",
            );
        }
        for (name, b) in [("beta_1", self.beta_1), ("beta_2", self.beta_2)] {
            if !(0.0..1.0).contains(&b) {
                return bad(format!("{name} {b}"), "it must lie in [0, 1)");
            }
        }
        if !(self.epsilon >= 0.0 && self.epsilon.is_finite()) {
            return bad(
                format!("epsilon {}", self.epsilon),
                "it must be finite and >= 0",
            );
        }
        Ok(())
    }

    /// `lr · sqrt(1 - beta_2^t) / (1 - beta_1^t)` for the 1-based step `t`.
    pub fn alpha(&self, step: u32) -> f64 {
        let t = step as f64;
        self.learning_rate * (1.0 - self.beta_2.powf(t)).sqrt() / (1.0 - self.beta_1.powf(t))
    }

    /// Kernel params for a variable of `n` elements at the 1-based step `step`.
    pub fn params(&self, n: usize, step: u32) -> AdamParams {
        AdamParams {
            n: n as u32,
            step,
            alpha: self.alpha(step) as f32,
            epsilon: self.epsilon as f32,
            one_minus_beta_1: (1.0 - self.beta_1) as f32,
            one_minus_beta_2: (1.0 - self.beta_2) as f32,
            _pad: [0; 2],
        }
    }
}

fn check_step(step: u32) -> Result<()> {
    if step == 0 {
        return Err(Error::Unsupported {
            op: "adam".into(),
            what: "step 0".into(),
            why: "steps count from 1 (Keras uses iterations + 1)".into(),
        });
    }
    Ok(())
}

// ---------------------------------------------------------------- CPU reference

/// One Adam step at the 1-based `step`, in Keras's operation order. `alpha`
/// and `1 - beta` are computed in f64 and rounded to `A`, as the kernel's are.
pub fn adam_update_cpu<A: NdFloat>(
    w: &mut ArrayD<A>,
    g: &ArrayViewD<A>,
    m: &mut ArrayD<A>,
    v: &mut ArrayD<A>,
    config: &AdamConfig,
    step: u32,
) {
    let cast = |x: f64| A::from(x).unwrap();
    let alpha = cast(config.alpha(step));
    let c1 = cast(1.0 - config.beta_1);
    let c2 = cast(1.0 - config.beta_2);
    let eps = cast(config.epsilon);
    let update = |w: &mut A, g: A, m: &mut A, v: &mut A| {
        *m += (g - *m) * c1;
        *v += (g * g - *v) * c2;
        *w -= (*m * alpha) / (v.sqrt() + eps);
    };
    // Contiguous operands (always, in the CPU backend) as slices of one
    // length: a plain loop that vectorises, unlike the 4-way dynamic Zip.
    if let (Some(ws), Some(gs), Some(ms), Some(vs)) = (
        w.as_slice_mut(),
        g.as_slice(),
        m.as_slice_mut(),
        v.as_slice_mut(),
    ) {
        let n = ws.len();
        let (gs, ms, vs) = (&gs[..n], &mut ms[..n], &mut vs[..n]);
        for i in 0..n {
            update(&mut ws[i], gs[i], &mut ms[i], &mut vs[i]);
        }
        return;
    }
    Zip::from(w)
        .and(g)
        .and(m)
        .and(v)
        .for_each(|w, &g, m, v| update(w, g, m, v));
}

// ---------------------------------------------------------------- GPU

static SHADER: Shader = crate::shader!("adam");
const BINDINGS: &[Access] = &[
    Access::ReadWrite,
    Access::Read,
    Access::ReadWrite,
    Access::ReadWrite,
];
static ADAM_UPDATE: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "adam_update",
    bindings: BINDINGS,
};
/// Four weights per invocation, for `n` a multiple of 4.
static ADAM_UPDATE_VEC4: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "adam_update_vec4",
    bindings: BINDINGS,
};
const WORKGROUP: u32 = 256;

/// One Adam step on `w` (in place) with gradient `g` and moments `m`, `v`
/// (all `params.n` f32 elements).
pub fn adam_update(
    ctx: &GpuContext,
    w: &GpuTensor,
    g: &GpuTensor,
    m: &GpuTensor,
    v: &GpuTensor,
    params: &AdamParams,
) -> Result<Dispatch> {
    let op = ADAM_UPDATE.entry;
    let n = params.n as usize;
    for (name, t) in [("w", w), ("g", g), ("m", m), ("v", v)] {
        expect_numel(op, name, &t.shape, n)?;
        if t.dtype != DType::F32 {
            return Err(Error::shape(op, format!("{name} must be f32")));
        }
    }
    let (spec, items) = if n.is_multiple_of(4) {
        (&ADAM_UPDATE_VEC4, n / 4)
    } else {
        (&ADAM_UPDATE, n)
    };
    ctx.prepare(
        spec,
        &[],
        params,
        &[w, g, m, v],
        Grid::linear(items, WORKGROUP),
    )
}

/// The state of one variable: its moments and its prepared update.
#[derive(Debug)]
pub struct AdamSlot {
    /// First moment (Keras's "momentum").
    pub m: GpuTensor,
    /// Second moment (Keras's "velocity").
    pub v: GpuTensor,
    pub n: usize,
    pub dispatch: Dispatch,
}

/// Adam over a set of variables: zeroed moments and one dispatch each, built
/// once. Each training step: [`Adam::set_step`] with the 1-based step, then
/// record [`Adam::dispatches`].
#[derive(Debug)]
pub struct Adam {
    config: AdamConfig,
    step: u32,
    slots: Vec<AdamSlot>,
}

impl Adam {
    /// A new optimizer whose prepared updates start at step 1.
    pub fn new(config: AdamConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            config,
            step: 1,
            slots: Vec::new(),
        })
    }

    pub fn config(&self) -> &AdamConfig {
        &self.config
    }

    /// The step the prepared updates will apply.
    pub fn step(&self) -> u32 {
        self.step
    }

    /// Adds variable `w` with gradient buffer `g` (zero moments); returns
    /// its slot index.
    pub fn prepare(&mut self, ctx: &GpuContext, w: &GpuTensor, g: &GpuTensor) -> Result<usize> {
        let n = w.numel();
        let m = ctx.zeros(&w.shape, DType::F32)?;
        let v = ctx.zeros(&w.shape, DType::F32)?;
        let dispatch = adam_update(ctx, w, g, &m, &v, &self.config.params(n, self.step))?;
        self.slots.push(AdamSlot { m, v, n, dispatch });
        Ok(self.slots.len() - 1)
    }

    /// The update of every variable, in the order they were prepared.
    pub fn dispatches(&self) -> Vec<&Dispatch> {
        self.slots.iter().map(|s| &s.dispatch).collect()
    }

    pub fn slots(&self) -> &[AdamSlot] {
        &self.slots
    }

    /// Sets the 1-based step of every prepared update (from the next submit).
    pub fn set_step(&mut self, ctx: &GpuContext, step: u32) -> Result<()> {
        check_step(step)?;
        self.step = step;
        self.write_params(ctx);
        Ok(())
    }

    /// Changes the learning rate of every prepared update (from the next submit).
    pub fn set_learning_rate(&mut self, ctx: &GpuContext, learning_rate: f64) -> Result<()> {
        let config = AdamConfig {
            learning_rate,
            ..self.config
        };
        config.validate()?;
        self.config = config;
        self.write_params(ctx);
        Ok(())
    }

    fn write_params(&self, ctx: &GpuContext) {
        for s in &self.slots {
            s.dispatch
                .set_params(ctx, &self.config.params(s.n, self.step));
        }
    }
}
