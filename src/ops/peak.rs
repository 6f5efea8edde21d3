//! Adapter peak probes used by the benches: a register-only FMA kernel
//! (arithmetic peak) and a vec4 copy (memory bandwidth). Kernel timings are
//! reported as a fraction of these figures, because a GPU/CPU ratio on a
//! software adapter says nothing about a real GPU while a fraction of the
//! adapter's own peak does. CPU references give the values the kernels must
//! compute, so tests check results, not time.

use std::time::Instant;

use crate::error::{Error, Result};
use crate::gpu::{Access, Dispatch, GpuContext, GpuTensor, Grid, KernelSpec, Shader};
use crate::tensor::DType;

/// Uniform parameters, mirrored by `Params` in `shaders/peak.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PeakParams {
    /// `fma_peak`: loop rounds; `copy_bandwidth`: vec4 elements.
    pub n: u32,
    pub _pad: u32,
    /// `fma_peak`: the chains compute `x = x * mul + add`.
    pub mul: f32,
    pub add: f32,
}

/// Lanes per workgroup (`WG` in the shader).
pub const WORKGROUP: u32 = 64;
/// Independent vec4 FMA chains per invocation (`CHAINS` in the shader).
pub const CHAINS: u32 = 4;
/// FMAs per chain in one loop round (`UNROLL` in the shader).
pub const UNROLL: u32 = 8;
/// Floating-point operations per invocation per round (an FMA counts 2).
pub const FLOPS_PER_ROUND: u64 = (CHAINS * UNROLL * 4 * 2) as u64;

// The multiplier and addend of the chains: x converges to 1 without
// overflow or denormals however many rounds run.
const MUL: f32 = 0.999;
const ADD: f32 = 0.001;

// ---------------------------------------------------------------- CPU reference

/// The value invocation `i` of `fma_peak` writes after `rounds` rounds
/// (f64; the f32 kernel agrees to a few ulps per round).
pub fn fma_peak_cpu(i: usize, rounds: u32, mul: f32, add: f32) -> f64 {
    let s = (i % 16) as f64 * 0.0625;
    let (m, a) = (mul as f64, add as f64);
    let mut total = 0.0;
    for chain in 0..CHAINS {
        for lane in 0..4 {
            let mut x = s + 0.1 * lane as f64 + 0.4 * chain as f64;
            for _ in 0..rounds * UNROLL {
                x = x * m + a;
            }
            total += x;
        }
    }
    total
}

// ---------------------------------------------------------------- GPU

static SHADER: Shader = crate::shader!("peak");
static FMA_PEAK: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "fma_peak",
    bindings: &[Access::ReadWrite],
};
static COPY_BANDWIDTH: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "copy_bandwidth",
    bindings: &[Access::ReadWrite, Access::Read],
};

/// `out[i]` = sum of invocation i's FMA chains after `rounds` rounds of
/// `x = x * mul + add`; one invocation per element of `out`.
pub fn fma_peak(
    ctx: &GpuContext,
    out: &GpuTensor,
    rounds: u32,
    mul: f32,
    add: f32,
) -> Result<Dispatch> {
    let p = PeakParams {
        n: rounds,
        _pad: 0,
        mul,
        add,
    };
    let items = out.numel();
    if !items.is_multiple_of(WORKGROUP as usize) {
        // Every invocation writes; a partial workgroup would write past the end.
        return Err(Error::shape(
            "fma_peak",
            format!(
                "out {:?} must hold a multiple of {WORKGROUP} elements",
                out.shape
            ),
        ));
    }
    ctx.prepare(&FMA_PEAK, &[], &p, &[out], Grid::linear(items, WORKGROUP))
}

/// `dst = src` as vec4 elements; both hold the same multiple of 4 floats.
pub fn copy_bandwidth(ctx: &GpuContext, dst: &GpuTensor, src: &GpuTensor) -> Result<Dispatch> {
    let n = src.numel();
    if !n.is_multiple_of(4) || dst.numel() != n {
        return Err(Error::shape(
            "copy_bandwidth",
            format!(
                "dst {:?} and src {:?} must hold the same multiple of 4 elements",
                dst.shape, src.shape
            ),
        ));
    }
    let p = PeakParams {
        n: (n / 4) as u32,
        ..PeakParams::default()
    };
    ctx.prepare(
        &COPY_BANDWIDTH,
        &[],
        &p,
        &[dst, src],
        Grid::linear(n / 4, WORKGROUP),
    )
}

/// Seconds per run of `dispatches` (one submit + wait each), after a warm-up
/// run: the best of `repeats` runs, so a descheduled run does not count.
pub fn time_runs(ctx: &GpuContext, dispatches: &[&Dispatch], repeats: usize) -> Result<f64> {
    ctx.run(dispatches)?;
    ctx.wait()?;
    let mut best = f64::INFINITY;
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        ctx.run(dispatches)?;
        ctx.wait()?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// Doubles `size` from `start` until `seconds(size)` reaches `target` (or
/// `size` reaches `max`), so fixed per-submit costs do not dominate.
fn calibrate(
    start: u32,
    max: u32,
    target: f64,
    mut seconds: impl FnMut(u32) -> Result<f64>,
) -> Result<u32> {
    let mut size = start;
    while size < max && seconds(size)? < target {
        size = size.saturating_mul(2).min(max);
    }
    Ok(size)
}

/// The adapter's FMA throughput from registers, in GFLOP/s.
pub fn measure_fma_peak(ctx: &GpuContext) -> Result<f64> {
    // Enough invocations to fill every core of a big GPU; lavapipe needs
    // few (it has one thread per CPU core).
    let items: usize = if ctx.is_software() { 1 << 12 } else { 1 << 20 };
    let out = ctx.zeros(&[items], DType::F32)?;
    let rounds = calibrate(16, 1 << 20, 0.05, |rounds| {
        time_runs(ctx, &[&fma_peak(ctx, &out, rounds, MUL, ADD)?], 1)
    })?;
    let seconds = time_runs(ctx, &[&fma_peak(ctx, &out, rounds, MUL, ADD)?], 3)?;
    Ok(items as f64 * rounds as f64 * FLOPS_PER_ROUND as f64 / seconds / 1e9)
}

/// The adapter's copy bandwidth (bytes read + bytes written), in GB/s.
pub fn measure_bandwidth(ctx: &GpuContext) -> Result<f64> {
    // 64 MiB per buffer on a GPU (well past its caches), 16 MiB on a
    // software adapter (past the CPU's last-level cache, quick to copy).
    let max_floats: u64 = if ctx.is_software() { 1 << 22 } else { 1 << 24 };
    let limit = (ctx.limits.max_storage_buffer_binding_size / 4).min(max_floats) as usize;
    let floats = limit / 4 * 4;
    let src = ctx.zeros(&[floats], DType::F32)?;
    let dst = ctx.zeros(&[floats], DType::F32)?;
    let d = copy_bandwidth(ctx, &dst, &src)?;
    // A GPU copies 64 MiB in tens of microseconds: repeat the copy within
    // one submit until a run is long enough to time.
    let copies = calibrate(1, 1 << 10, 0.05, |copies| {
        time_runs(ctx, &vec![&d; copies as usize], 1)
    })?;
    let run = vec![&d; copies as usize];
    let seconds = time_runs(ctx, &run, 3)?;
    Ok(2.0 * 4.0 * floats as f64 * copies as f64 / seconds / 1e9)
}
