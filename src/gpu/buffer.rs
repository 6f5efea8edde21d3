//! Device tensors (a storage buffer with a shape and an element type),
//! upload and readback helpers, and a pool that hands buffers back out so
//! that per-step work allocates nothing.

use std::collections::HashMap;
use std::sync::mpsc;

use wgpu::util::DeviceExt;

use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::tensor::{numel, DType};

/// A storage buffer holding a dense, row-major tensor.
#[derive(Debug)]
pub struct GpuTensor {
    pub buffer: wgpu::Buffer,
    pub shape: Vec<usize>,
    pub dtype: DType,
}

impl GpuTensor {
    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }

    /// Bytes of the payload (the buffer may be larger, e.g. for empty tensors).
    pub fn size_bytes(&self) -> u64 {
        (self.numel() * self.dtype.size_bytes()) as u64
    }

    /// Gives the tensor a new shape with the same number of elements.
    pub fn reshaped(mut self, shape: &[usize]) -> Result<Self> {
        if numel(shape) != self.numel() {
            return Err(Error::shape(
                "reshape",
                format!("cannot view {:?} as {shape:?}", self.shape),
            ));
        }
        self.shape = shape.to_vec();
        Ok(self)
    }
}

const STORAGE_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

fn byte_size(shape: &[usize], dtype: DType) -> u64 {
    // wgpu rejects zero-sized bindings; an empty tensor still gets 4 bytes.
    ((numel(shape) * dtype.size_bytes()) as u64).max(4)
}

impl GpuContext {
    fn check_buffer_size(&self, op: &str, bytes: u64) -> Result<()> {
        let max = self.limits.max_buffer_size;
        if bytes > max {
            return Err(Error::LimitExceeded {
                op: op.to_string(),
                limit: "max_buffer_size",
                requested: bytes,
                max,
            });
        }
        Ok(())
    }

    /// A zero-filled tensor.
    pub fn zeros(&self, shape: &[usize], dtype: DType) -> Result<GpuTensor> {
        let size = byte_size(shape, dtype);
        self.check_buffer_size("zeros", size)?;
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size,
            usage: STORAGE_USAGE,
            mapped_at_creation: false,
        });
        Ok(GpuTensor {
            buffer,
            shape: shape.to_vec(),
            dtype,
        })
    }

    fn upload_bytes(&self, bytes: &[u8], shape: &[usize], dtype: DType) -> Result<GpuTensor> {
        if bytes.is_empty() {
            return self.zeros(shape, dtype);
        }
        self.check_buffer_size("upload", bytes.len() as u64)?;
        let buffer = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: bytes,
                usage: STORAGE_USAGE,
            });
        Ok(GpuTensor {
            buffer,
            shape: shape.to_vec(),
            dtype,
        })
    }

    /// Uploads f32 data with the given shape.
    pub fn upload_f32(&self, data: &[f32], shape: &[usize]) -> Result<GpuTensor> {
        if data.len() != numel(shape) {
            return Err(Error::shape(
                "upload",
                format!("{} values for shape {shape:?}", data.len()),
            ));
        }
        self.upload_bytes(bytemuck::cast_slice(data), shape, DType::F32)
    }

    /// Uploads u32 data (indices, labels) with the given shape.
    pub fn upload_u32(&self, data: &[u32], shape: &[usize]) -> Result<GpuTensor> {
        if data.len() != numel(shape) {
            return Err(Error::shape(
                "upload",
                format!("{} values for shape {shape:?}", data.len()),
            ));
        }
        self.upload_bytes(bytemuck::cast_slice(data), shape, DType::U32)
    }

    /// Overwrites a tensor's contents from the host (no allocation).
    pub fn write_f32(&self, tensor: &GpuTensor, data: &[f32]) -> Result<()> {
        if data.len() != tensor.numel() {
            return Err(Error::shape(
                "write",
                format!("{} values for shape {:?}", data.len(), tensor.shape),
            ));
        }
        self.queue
            .write_buffer(&tensor.buffer, 0, bytemuck::cast_slice(data));
        Ok(())
    }

    /// Copies a tensor back to the host as raw 32-bit words.
    fn read_words(&self, tensor: &GpuTensor) -> Result<Vec<u32>> {
        let size = tensor.size_bytes();
        if size == 0 {
            return Ok(Vec::new());
        }
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = self.device.create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(&tensor.buffer, 0, &staging, 0, size);
        self.queue.submit([encoder.finish()]);
        self.map_read_words(&staging, size)
    }

    /// Waits for the device, maps the first `bytes` of a `MAP_READ` buffer
    /// and copies them out as 32-bit words. The one readback path: tensors,
    /// timestamps and the training loss all come back through it.
    pub fn map_read_words(&self, buffer: &wgpu::Buffer, bytes: u64) -> Result<Vec<u32>> {
        let (tx, rx) = mpsc::channel();
        buffer
            .slice(..bytes)
            .map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send(r);
            });
        self.wait()?;
        rx.recv()
            .map_err(|e| Error::Readback(e.to_string()))?
            .map_err(|e| Error::Readback(e.to_string()))?;
        let words = {
            let view = buffer
                .get_mapped_range(..bytes)
                .map_err(|e| Error::Readback(format!("{e:?}")))?;
            bytemuck::cast_slice::<u8, u32>(&view).to_vec()
        };
        buffer.unmap();
        Ok(words)
    }

    /// Reads an f32 tensor back to the host.
    pub fn read_f32(&self, tensor: &GpuTensor) -> Result<Vec<f32>> {
        if tensor.dtype != DType::F32 {
            return Err(Error::shape("read_f32", "tensor holds u32 values"));
        }
        Ok(bytemuck::cast_vec(self.read_words(tensor)?))
    }

    /// Reads a u32 tensor back to the host.
    pub fn read_u32(&self, tensor: &GpuTensor) -> Result<Vec<u32>> {
        if tensor.dtype != DType::U32 {
            return Err(Error::shape("read_u32", "tensor holds f32 values"));
        }
        self.read_words(tensor)
    }
}

/// Reuses released buffers of the same byte size, so a training step that
/// acquires and releases the same shapes allocates only on the first step.
#[derive(Default)]
pub struct BufferPool {
    free: HashMap<u64, Vec<wgpu::Buffer>>,
    allocated: usize,
}

impl BufferPool {
    /// A tensor of `shape`, from the pool when a buffer of that size is free.
    /// Its contents are whatever the previous user left.
    pub fn acquire(
        &mut self,
        ctx: &GpuContext,
        shape: &[usize],
        dtype: DType,
    ) -> Result<GpuTensor> {
        let size = byte_size(shape, dtype);
        if let Some(buffer) = self.free.get_mut(&size).and_then(Vec::pop) {
            return Ok(GpuTensor {
                buffer,
                shape: shape.to_vec(),
                dtype,
            });
        }
        self.allocated += 1;
        ctx.zeros(shape, dtype)
    }

    /// Returns a tensor's buffer to the pool.
    pub fn release(&mut self, tensor: GpuTensor) {
        self.free
            .entry(tensor.buffer.size())
            .or_default()
            .push(tensor.buffer);
    }

    /// How many buffers the pool has created so far.
    pub fn allocations(&self) -> usize {
        self.allocated
    }
}
