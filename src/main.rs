//! The `crossmodal` command line: parses arguments and calls the library.

use anyhow::Result;
use clap::{Parser, Subcommand};
use crossmodal::gpu::{BackendChoice, GpuContext, GpuOptions};

#[derive(Parser)]
#[command(
    name = "crossmodal",
    version,
    about = "Cross-modal sentiment analysis on hand-written WGSL kernels"
)]
struct Cli {
    /// GPU backend: auto, vulkan, gl, metal, dx12 or cpu (a software adapter).
    /// Defaults to $CROSSMODAL_GPU_BACKEND, else auto.
    #[arg(long, global = true)]
    gpu_backend: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the adapters wgpu can see and the one crossmodal would use.
    Devices,
}

fn options(cli: &Cli) -> Result<GpuOptions> {
    let mut options = GpuOptions::from_env()?;
    if let Some(b) = &cli.gpu_backend {
        options.backend = b.parse::<BackendChoice>()?;
    }
    Ok(options)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Devices => {
            for info in GpuContext::list_adapters() {
                println!(
                    "  {:<40} {:?}, {:?}, {} {}",
                    info.name, info.device_type, info.backend, info.driver, info.driver_info
                );
            }
            let ctx = GpuContext::new(&options(&cli)?)?;
            println!("chosen: {}", ctx.describe());
            println!(
                "limits: {} workgroups per dimension, {} MiB per storage binding, timestamps {}",
                ctx.limits.max_compute_workgroups_per_dimension,
                ctx.limits.max_storage_buffer_binding_size >> 20,
                if ctx.has_timestamps() { "yes" } else { "no" }
            );
        }
    }
    Ok(())
}
