//! Helpers shared by the recurrent kernel tests (tests/lstm.rs,
//! tests/rnn.rs): seeded arrays, uploads, f64 views, and the mask patterns
//! (pre-padding, a gap, post-padding, an all-padding sample) in u32, f32 or
//! no mask.

use crossmodal::{GpuContext, GpuTensor};
use ndarray::{Array1, Array2, Array3, Ix1, Ix2, Ix3};

use super::*;

pub fn arr3(shape: [usize; 3], seed: u64, scale: f32) -> Array3<f32> {
    (random(&shape, seed) * scale)
        .into_dimensionality::<Ix3>()
        .unwrap()
}
pub fn arr2(shape: [usize; 2], seed: u64, scale: f32) -> Array2<f32> {
    (random(&shape, seed) * scale)
        .into_dimensionality::<Ix2>()
        .unwrap()
}
pub fn arr1(n: usize, seed: u64, scale: f32) -> Array1<f32> {
    (random(&[n], seed) * scale)
        .into_dimensionality::<Ix1>()
        .unwrap()
}

pub fn up<D: ndarray::Dimension>(ctx: &GpuContext, a: &ndarray::Array<f32, D>) -> GpuTensor {
    let a = a.as_standard_layout();
    ctx.upload_f32(a.as_slice().unwrap(), a.shape()).unwrap()
}

pub fn f64v<D: ndarray::Dimension>(a: &ndarray::Array<f32, D>) -> ndarray::Array<f64, D> {
    a.mapv(|v| v as f64)
}

pub fn flat<D: ndarray::Dimension>(a: &ndarray::Array<f64, D>) -> Vec<f32> {
    a.as_standard_layout().iter().map(|&v| v as f32).collect()
}

pub fn flat32<D: ndarray::Dimension>(a: &ndarray::Array<f32, D>) -> Vec<f32> {
    a.as_standard_layout().iter().copied().collect()
}

pub fn run(ctx: &GpuContext, d: &[crossmodal::gpu::Dispatch]) {
    let refs: Vec<_> = d.iter().collect();
    ctx.run(&refs).unwrap();
}

/// A time-major `[T,B]` mask (1 = real step) covering the cases Keras
/// meets: pre-padding (masked at the start), a gap in the middle, no
/// padding, post-padding, and an all-padding sample.
pub fn mask_pattern(steps: usize, batch: usize) -> Vec<u32> {
    let mut m = vec![0u32; steps * batch];
    for t in 0..steps {
        for b in 0..batch {
            let real = match b % 5 {
                0 => t > steps / 3,
                1 => !(t + 1 == steps / 2 || t == steps / 2),
                2 => true,
                3 => t + 2 < steps,
                _ => false,
            };
            m[t * batch + b] = real as u32;
        }
    }
    m
}

pub fn mask_bool(mask: &[u32], steps: usize, batch: usize) -> Array2<bool> {
    Array2::from_shape_fn((steps, batch), |(t, b)| mask[t * batch + b] != 0)
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mask {
    None,
    U32,
    F32,
}

pub fn upload_mask(
    ctx: &GpuContext,
    kind: Mask,
    m: &[u32],
    steps: usize,
    batch: usize,
) -> Option<GpuTensor> {
    match kind {
        Mask::None => None,
        Mask::U32 => {
            // Nonzero = real: token ids work as the mask as they are.
            let ids: Vec<u32> = (0..m.len())
                .map(|i| m[i] * (1 + (i as u32 * 7919) % 9999))
                .collect();
            Some(ctx.upload_u32(&ids, &[steps, batch]).unwrap())
        }
        Mask::F32 => {
            let f: Vec<f32> = m.iter().map(|&v| v as f32).collect();
            Some(ctx.upload_f32(&f, &[steps, batch]).unwrap())
        }
    }
}
