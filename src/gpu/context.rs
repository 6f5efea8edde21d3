//! Adapter choice and the device: the highest-performance adapter by default,
//! or the backend named by `CROSSMODAL_GPU_BACKEND` (auto, vulkan, gl, metal,
//! dx12, cpu). No adapter is a typed error that says how to get one.

use std::fmt;

use crate::error::{Error, Result};
use crate::gpu::pipeline::PipelineCache;

/// Which adapter to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendChoice {
    /// Highest-performance adapter on Vulkan/Metal/DX12, GL only if none.
    #[default]
    Auto,
    Vulkan,
    Gl,
    Metal,
    Dx12,
    /// A software adapter (on Linux: Mesa's lavapipe).
    Cpu,
}

impl std::str::FromStr for BackendChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(Self::Auto),
            "vulkan" | "vk" => Ok(Self::Vulkan),
            "gl" | "gles" | "opengl" => Ok(Self::Gl),
            "metal" => Ok(Self::Metal),
            "dx12" | "d3d12" => Ok(Self::Dx12),
            "cpu" | "software" | "lavapipe" => Ok(Self::Cpu),
            other => Err(Error::UnknownBackend(other.to_string())),
        }
    }
}

/// Options for opening a [`GpuContext`].
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    pub backend: BackendChoice,
    /// Print the chosen adapter to stderr.
    pub verbose: bool,
    /// Do not use subgroup operations even where the device has them
    /// ([`GpuContext::shares_lanes`]): every lane loads its own values. For
    /// comparing the two, and for testing the path devices without
    /// subgroups take.
    pub without_subgroups: bool,
}

impl GpuOptions {
    /// Reads `CROSSMODAL_GPU_BACKEND`, `CROSSMODAL_GPU_VERBOSE` and
    /// `CROSSMODAL_NO_SUBGROUPS` (set: [`GpuOptions::without_subgroups`]).
    pub fn from_env() -> Result<Self> {
        let backend = match std::env::var("CROSSMODAL_GPU_BACKEND") {
            Ok(v) => v.parse()?,
            Err(_) => BackendChoice::Auto,
        };
        let verbose = std::env::var_os("CROSSMODAL_GPU_VERBOSE").is_some();
        let without_subgroups = std::env::var_os("CROSSMODAL_NO_SUBGROUPS").is_some();
        Ok(Self {
            backend,
            verbose,
            without_subgroups,
        })
    }
}

/// Invocations per workgroup of the direct kernels that share values
/// across lanes (`DL` in `shaders/matmul.wgsl`).
pub const SHARED_LANES: u32 = 8;

/// An open device with its queue, limits and pipeline cache.
pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
    pub(crate) pipelines: PipelineCache,
}

impl fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GpuContext({})", self.describe())
    }
}

fn rank(device_type: wgpu::DeviceType) -> u8 {
    match device_type {
        wgpu::DeviceType::DiscreteGpu => 4,
        wgpu::DeviceType::IntegratedGpu => 3,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 1,
        wgpu::DeviceType::Other => 0,
    }
}

impl GpuContext {
    /// Opens the adapter chosen by the environment (see [`GpuOptions::from_env`]).
    pub fn from_env() -> Result<Self> {
        Self::new(&GpuOptions::from_env()?)
    }

    /// Opens the adapter chosen by `options`.
    pub fn new(options: &GpuOptions) -> Result<Self> {
        let backends = match options.backend {
            BackendChoice::Auto | BackendChoice::Cpu => {
                wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12
            }
            BackendChoice::Vulkan => wgpu::Backends::VULKAN,
            BackendChoice::Gl => wgpu::Backends::GL,
            BackendChoice::Metal => wgpu::Backends::METAL,
            BackendChoice::Dx12 => wgpu::Backends::DX12,
        };
        let mut adapter = Self::pick_adapter(backends, options.backend)?;
        if adapter.is_none() && options.backend == BackendChoice::Auto {
            adapter = Self::pick_adapter(wgpu::Backends::GL, options.backend)?;
        }
        let adapter = adapter.ok_or_else(|| Error::NoAdapter {
            detail: match options.backend {
                BackendChoice::Auto => String::new(),
                other => format!(" for backend {other:?}"),
            },
        })?;
        let info = adapter.get_info();
        if options.verbose {
            eprintln!(
                "crossmodal: using adapter {} ({:?}, {:?}, driver {} {})",
                info.name, info.device_type, info.backend, info.driver, info.driver_info
            );
        }
        // Timestamps are optional: the profiler uses them where they exist.
        // Subgroups only on software adapters whose subgroups span a whole
        // workgroup of the direct kernels (see `shares_lanes`).
        let mut wanted = wgpu::Features::TIMESTAMP_QUERY;
        let software = info.device_type == wgpu::DeviceType::Cpu;
        if software && info.subgroup_min_size >= SHARED_LANES && !options.without_subgroups {
            wanted |= wgpu::Features::SUBGROUP;
        }
        let features = adapter.features() & wanted;
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("crossmodal"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| Error::RequestDevice {
            adapter: info.name.clone(),
            message: e.to_string(),
        })?;
        Ok(Self {
            device,
            queue,
            info,
            limits,
            features,
            pipelines: PipelineCache::default(),
        })
    }

    fn pick_adapter(
        backends: wgpu::Backends,
        choice: BackendChoice,
    ) -> Result<Option<wgpu::Adapter>> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends,
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        let adapters = pollster::block_on(instance.enumerate_adapters(backends));
        Ok(adapters
            .into_iter()
            .filter(|a| {
                let t = a.get_info().device_type;
                choice != BackendChoice::Cpu || t == wgpu::DeviceType::Cpu
            })
            .max_by_key(|a| {
                let info = a.get_info();
                // Prefer Vulkan over GL for the same device type.
                (
                    rank(info.device_type),
                    info.backend == wgpu::Backend::Vulkan,
                )
            }))
    }

    /// Every adapter wgpu can see, on every backend, in no particular order.
    pub fn list_adapters() -> Vec<wgpu::AdapterInfo> {
        let backends = wgpu::Backends::all();
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends,
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        pollster::block_on(instance.enumerate_adapters(backends))
            .iter()
            .map(wgpu::Adapter::get_info)
            .collect()
    }

    /// One line naming the adapter, its type, backend and driver.
    pub fn describe(&self) -> String {
        format!(
            "{} ({:?}, {:?}, {} {})",
            self.info.name,
            self.info.device_type,
            self.info.backend,
            self.info.driver,
            self.info.driver_info
        )
    }

    /// True on software adapters such as lavapipe, where kernels are tuned
    /// differently (see `ops::matmul`).
    pub fn is_software(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    /// Whether the direct kernels' 8 invocations (lavapipe's SIMD width)
    /// lie in one subgroup, so that a value one lane loads can reach the
    /// others by `subgroupBroadcast` instead of a load per lane: a software
    /// adapter with subgroups of at least 8 lanes. Shaders are compiled with
    /// their `// #if subgroups` sections then (`gpu::pipeline::shader_source`).
    ///
    /// Only software adapters: that is where a per-lane load costs a loop
    /// over the lanes, and the kernels take invocation l of a workgroup to
    /// be subgroup invocation l, which lavapipe does (the tests check the
    /// results) but Vulkan does not promise for every driver.
    pub fn shares_lanes(&self) -> bool {
        self.features.contains(wgpu::Features::SUBGROUP)
    }

    /// Whether timestamp queries can be used for per-kernel timing.
    pub fn has_timestamps(&self) -> bool {
        self.features.contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// Blocks until all submitted work is done.
    pub fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| Error::Readback(e.to_string()))
    }
}
