//! The `crossmodal` command line: parses arguments and calls the library.

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

use crossmodal::experiment::run::{run_experiment, Experiment};
use crossmodal::experiment::schema::Backend;
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
    },
    /// Check every backward pass: CPU reference vs finite differences (f64),
    /// GPU kernels vs CPU reference; exits non-zero on any failure.
    Gradcheck {
        /// An op (matmul, bias, conv2d, pool2d, activation, embedding, lstm,
        /// rnn, concat, softmax_cross_entropy, dropout, or part of a case
        /// name such as relu), or an experiment file (.ron) whose model is
        /// checked at a small size. All ops when left out.
        target: Option<String>,
    },
    /// Time every GPU kernel against its CPU reference at the seed model's
    /// shapes, a matmul sweep and a training step, against the adapter's
    /// measured FMA peak and copy bandwidth.
    Bench {
        /// Only the kernels whose name contains this (`train`: the training step).
        filter: Option<String>,
        /// Write the results as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write the results as CSV.
        #[arg(long)]
        csv: Option<PathBuf>,
        /// Write the matmul sweep figure (SVG and PNG) into this folder.
        #[arg(long)]
        plot: Option<PathBuf>,
        /// Few repeats, a short sweep, two training steps.
        #[arg(long)]
        quick: bool,
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
        } => {
            let mut exp = Experiment::load(experiment)?;
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
        Command::Gradcheck { target } => {
            let passed = crossmodal::study::gradcheck::run_cli(target.as_deref(), &options(&cli)?)?;
            anyhow::ensure!(passed, "gradcheck: some checks failed (see the table)");
            return Ok(());
        }
        Command::Bench {
            filter,
            json,
            csv,
            plot,
            quick,
        } => {
            use crossmodal::study::bench::{run_cli, BenchOptions, BenchOutputs};
            let o = BenchOptions {
                filter: filter.clone(),
                quick: *quick,
            };
            let out = BenchOutputs {
                json: json.as_deref(),
                csv: csv.as_deref(),
                plot: plot.as_deref(),
            };
            run_cli(&o, &options(&cli)?, &out)?;
            return Ok(());
        }
        Command::Devices => {}
    }
    match cli.command {
        Command::Run { .. } | Command::Gradcheck { .. } | Command::Bench { .. } => {
            unreachable!("handled above")
        }
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
