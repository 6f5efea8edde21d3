//! SGD with optional momentum and Nesterov momentum, as Keras 3 defines it
//! (`keras/src/optimizers/sgd.py`, `SGD.update_step`):
//!
//! - momentum = 0: `w = w - lr·g` (no velocity buffer in Keras; here a
//!   one-element placeholder is bound instead);
//! - momentum > 0: `v = momentum·v - lr·g`, `w = w + v`;
//! - Nesterov:     `v = momentum·v - lr·g`, `w = w + momentum·v - lr·g`.
//!
//! Defaults are Keras's (lr 0.01, momentum 0, no Nesterov). The velocity
//! starts at zero. [`sgd_update`] is the kernel launcher for one variable;
//! [`Sgd`] owns the velocity buffers and one prepared dispatch per variable,
//! and rewrites their params when the learning rate changes.

use ndarray::{ArrayD, ArrayViewD, NdFloat, Zip};

use crate::error::{Error, Result};
use crate::gpu::{Access, Dispatch, GpuContext, GpuTensor, Grid, KernelSpec, Shader};
use crate::tensor::{expect_numel, DType};

/// Uniform parameters, mirrored by `Params` in `shaders/sgd.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SgdParams {
    pub n: u32,
    /// 0: plain, 1: momentum, 2: Nesterov momentum.
    pub mode: u32,
    pub lr: f32,
    pub momentum: f32,
}

/// Hyperparameters, with Keras's defaults.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SgdConfig {
    pub learning_rate: f64,
    pub momentum: f64,
    pub nesterov: bool,
}

impl Default for SgdConfig {
    fn default() -> Self {
        Self {
            learning_rate: 0.01,
            momentum: 0.0,
            nesterov: false,
        }
    }
}

impl SgdConfig {
    /// Checks the ranges Keras accepts (momentum in [0, 1]) and a finite rate.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String, why: &str| Error::Unsupported {
            op: "sgd".into(),
            what,
            why: why.into(),
        };
        if !self.learning_rate.is_finite() {
            return Err(bad(
                format!("learning_rate {}", self.learning_rate),
                "it must be finite",
            ));
        }
        if !(0.0..=1.0).contains(&self.momentum) {
            return Err(bad(
                format!("momentum {}", self.momentum),
                "it must lie in [0, 1] (as in Keras)",
            ));
        }
        Ok(())
    }

    /// Whether a velocity buffer is used (Keras keeps none when momentum is 0).
    pub fn uses_velocity(&self) -> bool {
        self.momentum != 0.0
    }

    /// Kernel params for a variable of `n` elements.
    pub fn params(&self, n: usize) -> SgdParams {
        SgdParams {
            n: n as u32,
            mode: match (self.uses_velocity(), self.nesterov) {
                (false, _) => 0,
                (true, false) => 1,
                (true, true) => 2,
            },
            lr: self.learning_rate as f32,
            momentum: self.momentum as f32,
        }
    }
}

// ---------------------------------------------------------------- CPU reference

/// One SGD step on `w` with gradient `g`; `velocity` is read and written
/// only when momentum is non-zero. Hyperparameters are rounded to `A` first,
/// as Keras casts them to the variable's dtype.
pub fn sgd_update_cpu<A: NdFloat>(
    w: &mut ArrayD<A>,
    g: &ArrayViewD<A>,
    velocity: &mut ArrayD<A>,
    config: &SgdConfig,
) {
    let lr = A::from(config.learning_rate).unwrap();
    let mom = A::from(config.momentum).unwrap();
    if !config.uses_velocity() {
        Zip::from(w).and(g).for_each(|w, &g| *w -= g * lr);
        return;
    }
    Zip::from(w).and(g).and(velocity).for_each(|w, &g, v| {
        let step = g * lr;
        *v = *v * mom - step;
        *w = if config.nesterov {
            *w + (*v * mom - step)
        } else {
            *w + *v
        };
    });
}

// ---------------------------------------------------------------- GPU

static SHADER: Shader = crate::shader!("sgd");
static SGD_UPDATE: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "sgd_update",
    bindings: &[Access::ReadWrite, Access::Read, Access::ReadWrite],
};
const WORKGROUP: u32 = 256;

/// One SGD step on `w` (in place) with gradient `g`. `velocity` must match
/// `w` when `params.mode` is 1 or 2; in mode 0 any f32 tensor will do (it is
/// not touched) but it must not alias `w` or `g`.
pub fn sgd_update(
    ctx: &GpuContext,
    w: &GpuTensor,
    g: &GpuTensor,
    velocity: &GpuTensor,
    params: &SgdParams,
) -> Result<Dispatch> {
    let op = SGD_UPDATE.entry;
    let n = params.n as usize;
    expect_numel(op, "w", &w.shape, n)?;
    expect_numel(op, "g", &g.shape, n)?;
    if params.mode != 0 {
        expect_numel(op, "velocity", &velocity.shape, n)?;
    }
    if [w, g, velocity].iter().any(|t| t.dtype != DType::F32) {
        return Err(Error::shape(op, "w, g and velocity must be f32"));
    }
    ctx.prepare(
        &SGD_UPDATE,
        &[],
        params,
        &[w, g, velocity],
        Grid::linear(n, WORKGROUP),
    )
}

/// The state of one variable: its velocity and its prepared update.
#[derive(Debug)]
pub struct SgdSlot {
    /// `[n]` with momentum; a one-element placeholder without.
    pub velocity: GpuTensor,
    pub n: usize,
    pub dispatch: Dispatch,
}

/// SGD over a set of variables: one velocity buffer and one dispatch each,
/// built once; record [`Sgd::dispatches`] every step.
#[derive(Debug)]
pub struct Sgd {
    config: SgdConfig,
    slots: Vec<SgdSlot>,
}

impl Sgd {
    pub fn new(config: SgdConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            config,
            slots: Vec::new(),
        })
    }

    pub fn config(&self) -> &SgdConfig {
        &self.config
    }

    /// Adds variable `w` with gradient buffer `g` (zero velocity); returns
    /// its slot index.
    pub fn prepare(&mut self, ctx: &GpuContext, w: &GpuTensor, g: &GpuTensor) -> Result<usize> {
        let n = w.numel();
        let shape = if self.config.uses_velocity() {
            w.shape.clone()
        } else {
            vec![1]
        };
        let velocity = ctx.zeros(&shape, DType::F32)?;
        let dispatch = sgd_update(ctx, w, g, &velocity, &self.config.params(n))?;
        self.slots.push(SgdSlot {
            velocity,
            n,
            dispatch,
        });
        Ok(self.slots.len() - 1)
    }

    /// The update of every variable, in the order they were prepared.
    pub fn dispatches(&self) -> Vec<&Dispatch> {
        self.slots.iter().map(|s| &s.dispatch).collect()
    }

    pub fn slots(&self) -> &[SgdSlot] {
        &self.slots
    }

    /// Changes the learning rate of every prepared update (from the next submit).
    pub fn set_learning_rate(&mut self, ctx: &GpuContext, learning_rate: f64) -> Result<()> {
        let config = SgdConfig {
            learning_rate,
            ..self.config
        };
        config.validate()?;
        self.config = config;
        for s in &self.slots {
            s.dispatch.set_params(ctx, &self.config.params(s.n));
        }
        Ok(())
    }
}
