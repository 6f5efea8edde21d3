//! Per-kernel GPU time from timestamp queries, where the adapter has them:
//! each dispatch is its own compute pass with a start and end timestamp.

use crate::error::{Error, Result};
use crate::gpu::{Dispatch, GpuContext};

/// GPU time of one dispatch.
#[derive(Clone, Debug)]
pub struct KernelTiming {
    pub name: &'static str,
    pub nanoseconds: f64,
}

impl GpuContext {
    /// Runs `dispatches` in one submit and returns each one's GPU time.
    pub fn run_timed(&self, dispatches: &[&Dispatch]) -> Result<Vec<KernelTiming>> {
        if !self.has_timestamps() {
            return Err(Error::Unsupported {
                op: "run_timed".into(),
                what: "timestamp queries".into(),
                why: format!("adapter {} lacks TIMESTAMP_QUERY", self.info.name),
            });
        }
        if dispatches.is_empty() {
            return Ok(Vec::new());
        }
        let count = 2 * dispatches.len() as u32;
        let query_set = self.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("kernel timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count,
        });
        let bytes = count as u64 * 8;
        let resolve = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamp resolve"),
            size: bytes,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamp readback"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let mut encoder = self.device.create_command_encoder(&Default::default());
        for (i, d) in dispatches.iter().enumerate() {
            d.record(
                &mut encoder,
                Some(wgpu::ComputePassTimestampWrites {
                    query_set: &query_set,
                    beginning_of_pass_write_index: Some(2 * i as u32),
                    end_of_pass_write_index: Some(2 * i as u32 + 1),
                }),
            );
        }
        encoder.resolve_query_set(&query_set, 0..count, &resolve, 0);
        encoder.copy_buffer_to_buffer(&resolve, 0, &staging, 0, bytes);
        self.queue.submit([encoder.finish()]);
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Validation {
                op: "run_timed".into(),
                message: e.to_string(),
            });
        }
        let words = self.map_read_words(&staging, bytes)?;
        let ticks: Vec<u64> = words
            .chunks_exact(2)
            .map(|w| w[0] as u64 | (w[1] as u64) << 32)
            .collect();
        let period = self.queue.get_timestamp_period() as f64;
        Ok(dispatches
            .iter()
            .enumerate()
            .map(|(i, d)| KernelTiming {
                name: d.name,
                nanoseconds: ticks[2 * i + 1].saturating_sub(ticks[2 * i]) as f64 * period,
            })
            .collect())
    }
}
