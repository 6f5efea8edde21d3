//! The one dispatch helper: binds a kernel's uniform params and storage
//! tensors, turns a grid request into workgroup counts that respect
//! `max_compute_workgroups_per_dimension` (large 1-D grids are tiled into
//! 2-D), and checks the storage binding size limit. A [`Dispatch`] is built
//! once and recorded into as many command encoders as needed.

use std::sync::Arc;

use wgpu::util::DeviceExt;

use crate::error::{Error, Result};
use crate::gpu::pipeline::{Kernel, KernelSpec};
use crate::gpu::{GpuContext, GpuTensor};

/// How many workgroups a kernel needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grid {
    /// `items` invocations of a 1-D kernel with `workgroup_size` lanes.
    /// The shader recovers its index as
    /// `(wid.y * nwg.x + wid.x) * workgroup_size + lid.x`, because a large
    /// grid is folded into two dimensions.
    Linear { items: u32, workgroup_size: u32 },
    /// Exact workgroup counts per dimension.
    Workgroups([u32; 3]),
}

impl Grid {
    pub fn linear(items: usize, workgroup_size: u32) -> Self {
        Grid::Linear {
            items: items.min(u32::MAX as usize) as u32,
            workgroup_size,
        }
    }
}

/// Rounds `n / d` up.
pub fn div_ceil(n: u32, d: u32) -> u32 {
    n.div_ceil(d)
}

/// A kernel with its bind group and workgroup counts, ready to record.
#[derive(Debug)]
pub struct Dispatch {
    pub name: &'static str,
    kernel: Arc<Kernel>,
    bind_group: wgpu::BindGroup,
    params: wgpu::Buffer,
    pub workgroups: [u32; 3],
}

impl Dispatch {
    /// Records this dispatch as one compute pass (optionally timestamped).
    pub fn record(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        timestamps: Option<wgpu::ComputePassTimestampWrites<'_>>,
    ) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(self.name),
            timestamp_writes: timestamps,
        });
        pass.set_pipeline(&self.kernel.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        let [x, y, z] = self.workgroups;
        if x > 0 && y > 0 && z > 0 {
            pass.dispatch_workgroups(x, y, z);
        }
    }

    /// Rewrites the part of the uniform params at byte `offset` (a multiple
    /// of 4), leaving the rest as it is; takes effect at the next submit.
    pub fn set_params_at<P: bytemuck::Pod>(&self, ctx: &GpuContext, offset: u64, part: &P) {
        ctx.queue
            .write_buffer(&self.params, offset, bytemuck::bytes_of(part));
    }

    /// Rewrites the uniform params (e.g. Adam's step count) without
    /// rebuilding the bind group; takes effect at the next submit.
    pub fn set_params<P: bytemuck::Pod>(&self, ctx: &GpuContext, params: &P) {
        ctx.queue
            .write_buffer(&self.params, 0, &padded_bytes(bytemuck::bytes_of(params)));
    }
}

/// Uniform buffers are bound in 16-byte units.
fn padded_bytes(bytes: &[u8]) -> Vec<u8> {
    let mut v = bytes.to_vec();
    v.resize(bytes.len().div_ceil(16).max(1) * 16, 0);
    v
}

impl GpuContext {
    /// Workgroup counts for `grid`, or a typed error naming `op` and the limit.
    pub fn workgroups_for(&self, op: &str, grid: Grid) -> Result<[u32; 3]> {
        let max = self.limits.max_compute_workgroups_per_dimension;
        let too_many = |requested: u64| Error::LimitExceeded {
            op: op.to_string(),
            limit: "max_compute_workgroups_per_dimension",
            requested,
            max: max as u64,
        };
        match grid {
            Grid::Linear {
                items,
                workgroup_size,
            } => {
                let groups = div_ceil(items, workgroup_size);
                if groups <= max {
                    return Ok([groups, 1, 1]);
                }
                let y = div_ceil(groups, max);
                if y > max {
                    return Err(too_many(groups as u64));
                }
                Ok([max, y, 1])
            }
            Grid::Workgroups(dims) => {
                if let Some(&d) = dims.iter().find(|&&d| d > max) {
                    return Err(too_many(d as u64));
                }
                Ok(dims)
            }
        }
    }

    /// Builds a [`Dispatch`] of `spec` over `tensors` (bindings 1..) with
    /// `params` in binding 0.
    pub fn prepare<P: bytemuck::Pod>(
        &self,
        spec: &KernelSpec,
        constants: &[(&str, f64)],
        params: &P,
        tensors: &[&GpuTensor],
        grid: Grid,
    ) -> Result<Dispatch> {
        if tensors.len() != spec.bindings.len() {
            return Err(Error::Validation {
                op: spec.entry.to_string(),
                message: format!(
                    "{} tensors bound, the kernel declares {}",
                    tensors.len(),
                    spec.bindings.len()
                ),
            });
        }
        let max_binding = self.limits.max_storage_buffer_binding_size;
        for t in tensors {
            if t.buffer.size() > max_binding {
                return Err(Error::LimitExceeded {
                    op: spec.entry.to_string(),
                    limit: "max_storage_buffer_binding_size",
                    requested: t.buffer.size(),
                    max: max_binding,
                });
            }
        }
        let workgroups = self.workgroups_for(spec.entry, grid)?;
        let kernel = self.kernel(spec, constants)?;
        let params = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(spec.entry),
                contents: &padded_bytes(bytemuck::bytes_of(params)),
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            });
        let entries: Vec<wgpu::BindGroupEntry> = std::iter::once(params.as_entire_binding())
            .chain(tensors.iter().map(|t| t.buffer.as_entire_binding()))
            .enumerate()
            .map(|(i, resource)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource,
            })
            .collect();
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(spec.entry),
            layout: &kernel.layout,
            entries: &entries,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Validation {
                op: spec.entry.to_string(),
                message: e.to_string(),
            });
        }
        Ok(Dispatch {
            name: spec.entry,
            kernel,
            bind_group,
            params,
            workgroups,
        })
    }

    /// Records `dispatches` in order into one command encoder and submits it
    /// once. Does not wait; reading a result back waits.
    pub fn run(&self, dispatches: &[&Dispatch]) -> Result<()> {
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let mut encoder = self.device.create_command_encoder(&Default::default());
        for d in dispatches {
            d.record(&mut encoder, None);
        }
        self.queue.submit([encoder.finish()]);
        if let Some(e) = pollster::block_on(scope.pop()) {
            let names: Vec<&str> = dispatches.iter().map(|d| d.name).collect();
            return Err(Error::Validation {
                op: names.join(", "),
                message: e.to_string(),
            });
        }
        Ok(())
    }

    /// Records a zero fill of `tensor` (gradient buffers are zeroed once per step).
    pub fn clear(&self, encoder: &mut wgpu::CommandEncoder, tensor: &GpuTensor) {
        encoder.clear_buffer(&tensor.buffer, 0, None);
    }
}
