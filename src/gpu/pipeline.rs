//! WGSL shaders, kernel specs and the pipeline cache. A kernel is a shader
//! entry point plus override constants; its bind group layout is explicit:
//! binding 0 is the op's uniform `Params`, bindings 1.. are storage buffers
//! in the order the spec lists them. Pipelines are created once per key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::gpu::GpuContext;

/// A WGSL source file from `shaders/`, embedded at compile time.
#[derive(Debug)]
pub struct Shader {
    pub name: &'static str,
    pub source: &'static str,
}

/// The source a shader is compiled from on a device: shaders may hold two
/// versions of a few helpers between marker lines,
///
/// ```text
/// // #if subgroups
/// (helpers using subgroupBroadcast)
/// // #else
/// (the same helpers with a load per lane)
/// // #endif
/// ```
///
/// and the first is kept where `subgroups` ([`GpuContext::shares_lanes`]),
/// the second elsewhere (naga rejects a module using subgroup operations on
/// a device without them, even in code that never runs). Both versions
/// compute the same values. Marker lines become blank lines, so line
/// numbers in errors stay those of the file.
pub fn shader_source(source: &str, subgroups: bool) -> String {
    let mut keep = true;
    let mut out = String::with_capacity(source.len());
    for line in source.lines() {
        match line.trim() {
            "// #if subgroups" => keep = subgroups,
            "// #else" => keep = !subgroups,
            "// #endif" => keep = true,
            _ if keep => out.push_str(line),
            _ => {}
        }
        out.push('\n');
    }
    out
}

/// Embeds `shaders/<name>.wgsl` as a [`Shader`].
#[macro_export]
macro_rules! shader {
    ($name:literal) => {
        $crate::gpu::Shader {
            name: $name,
            source: include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/shaders/",
                $name,
                ".wgsl"
            )),
        }
    };
}

/// How a kernel accesses one storage binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    Read,
    ReadWrite,
}

/// One compute entry point and the storage bindings it declares
/// (bindings 1..=n; binding 0 is always the uniform params).
#[derive(Debug)]
pub struct KernelSpec {
    pub shader: &'static Shader,
    pub entry: &'static str,
    pub bindings: &'static [Access],
}

/// A created pipeline with its layout.
#[derive(Debug)]
pub struct Kernel {
    pub name: &'static str,
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

type Key = (&'static str, &'static str, Vec<(String, u64)>);

#[derive(Default)]
pub(crate) struct PipelineCache {
    modules: Mutex<HashMap<&'static str, wgpu::ShaderModule>>,
    kernels: Mutex<HashMap<Key, Arc<Kernel>>>,
}

fn layout_entries(bindings: &[Access]) -> Vec<wgpu::BindGroupLayoutEntry> {
    let uniform = wgpu::BindGroupLayoutEntry {
        binding: 0,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    };
    std::iter::once(uniform)
        .chain(
            bindings
                .iter()
                .enumerate()
                .map(|(i, access)| wgpu::BindGroupLayoutEntry {
                    binding: i as u32 + 1,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage {
                            read_only: *access == Access::Read,
                        },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                }),
        )
        .collect()
}

impl GpuContext {
    /// The cached pipeline for `spec` with override `constants`, created on
    /// first use. Validation errors become [`Error::Validation`] naming the entry.
    pub fn kernel(&self, spec: &KernelSpec, constants: &[(&str, f64)]) -> Result<Arc<Kernel>> {
        let key: Key = (
            spec.shader.name,
            spec.entry,
            constants
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_bits()))
                .collect(),
        );
        if let Some(k) = self.pipelines.kernels.lock().unwrap().get(&key) {
            return Ok(k.clone());
        }
        let storage = spec.bindings.len() as u32;
        if storage > self.limits.max_storage_buffers_per_shader_stage {
            return Err(Error::LimitExceeded {
                op: spec.entry.to_string(),
                limit: "max_storage_buffers_per_shader_stage",
                requested: storage as u64,
                max: self.limits.max_storage_buffers_per_shader_stage as u64,
            });
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = {
            let mut modules = self.pipelines.modules.lock().unwrap();
            modules
                .entry(spec.shader.name)
                .or_insert_with(|| {
                    self.device
                        .create_shader_module(wgpu::ShaderModuleDescriptor {
                            label: Some(spec.shader.name),
                            source: wgpu::ShaderSource::Wgsl(
                                shader_source(spec.shader.source, self.shares_lanes()).into(),
                            ),
                        })
                })
                .clone()
        };
        let layout = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(spec.entry),
                entries: &layout_entries(spec.bindings),
            });
        let pipeline_layout = self
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(spec.entry),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(spec.entry),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some(spec.entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants,
                    zero_initialize_workgroup_memory: true,
                },
                cache: None,
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            // A broken module stays broken: drop it so the error repeats clearly.
            self.pipelines
                .modules
                .lock()
                .unwrap()
                .remove(spec.shader.name);
            return Err(Error::Validation {
                op: format!("{}::{}", spec.shader.name, spec.entry),
                message: e.to_string(),
            });
        }
        let kernel = Arc::new(Kernel {
            name: spec.entry,
            pipeline,
            layout,
        });
        self.pipelines
            .kernels
            .lock()
            .unwrap()
            .insert(key, kernel.clone());
        Ok(kernel)
    }
}
