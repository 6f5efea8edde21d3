//! The `crossmodal` command line: parses arguments and calls the library.

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

use crossmodal::experiment::run::{run_experiment, Experiment};
use crossmodal::experiment::schema::Backend;
use crossmodal::gpu::{BackendChoice, GpuContext, GpuOptions};
use crossmodal::study::{inspect, shadow};

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
    /// Train and evaluate an experiment; writes runs/<name>/<timestamp>/.
    Run {
        /// The experiment file (RON), e.g. experiments/seed_fusion.ron.
        experiment: PathBuf,
        /// Override the experiment's backend: auto, gpu or cpu.
        #[arg(long)]
        backend: Option<String>,
        /// Override the number of epochs.
        #[arg(long)]
        epochs: Option<usize>,
        /// Where run folders are written.
        #[arg(long, default_value = "runs")]
        runs: PathBuf,
        /// Instead of the run: the first N training steps on the GPU and
        /// CPU backends side by side; exits non-zero on a divergence.
        #[arg(long, value_name = "N")]
        shadow: Option<usize>,
    },
    /// Model summary, memory plan, graph files and kernel schedule.
    Inspect {
        /// The experiment file (RON).
        experiment: PathBuf,
        /// Where graph.dot, graph.mmd and schedule.csv go (default runs/<name>/inspect/).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Time one training step per kernel on the GPU and per layer on the CPU.
        #[arg(long)]
        profile: bool,
        /// Build the model for this batch size instead of the experiment's.
        #[arg(long)]
        batch: Option<usize>,
    },
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
    match &cli.command {
        Command::Run {
            experiment,
            backend,
            epochs,
            runs,
            shadow,
        } => {
            let mut exp = Experiment::load(experiment)?;
            if let Some(n) = shadow {
                let ctx = GpuContext::new(&options(&cli)?)?;
                let report = shadow::shadow_check(&ctx, &exp, *n, shadow::Tolerance::DEFAULT)?;
                println!("{report}");
                anyhow::ensure!(report.agrees(), "the backends diverge");
                return Ok(());
            }
            if let Some(e) = epochs {
                exp.training.epochs = *e;
            }
            let backend = backend.as_deref().map(parse_backend).transpose()?;
            let out = run_experiment(&exp, runs, backend)?;
            println!(
                "{}: test accuracy {:.4}, macro-F1 {:.4} in {:.1} s; outputs in {}",
                exp.name,
                out.test.accuracy,
                out.test.macro_f1,
                out.seconds,
                out.dir.display()
            );
            if let Some(why) = out.stopped {
                anyhow::bail!("the run stopped early: {why}");
            }
            return Ok(());
        }
        Command::Inspect {
            experiment,
            out,
            profile,
            batch,
        } => {
            let exp = Experiment::load(experiment)?;
            let ctx = GpuContext::new(&options(&cli)?).map_err(|e| e.to_string());
            let opts = inspect::InspectOptions {
                out: out.clone(),
                profile: *profile,
                batch: *batch,
            };
            println!(
                "{}",
                inspect::inspect(&exp, &opts, ctx.as_ref().map_err(Clone::clone))?
            );
            return Ok(());
        }
        Command::Devices => {}
    }
    match cli.command {
        Command::Run { .. } | Command::Inspect { .. } => unreachable!("handled above"),
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

fn parse_backend(s: &str) -> Result<Backend> {
    match s.to_ascii_lowercase().as_str() {
        "auto" => Ok(Backend::Auto),
        "gpu" => Ok(Backend::Gpu),
        "cpu" => Ok(Backend::Cpu),
        other => anyhow::bail!("unknown backend {other:?}: expected auto, gpu or cpu"),
    }
}
