//! The `crossmodal` command line: parses arguments and calls the library.

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use crossmodal::experiment::overrides::apply_overrides;
use crossmodal::experiment::run::{
    resume_run, run_experiment, run_seeds, Experiment, RunOptions, RunOutcome,
};
use crossmodal::experiment::saved::{eval_run, predict_run, Sample};
use crossmodal::experiment::schema::Backend;
use crossmodal::gpu::{BackendChoice, GpuContext, GpuOptions};
use crossmodal::study::{inspect, saliency, shadow};

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
        /// Not needed with --resume.
        #[arg(required_unless_present = "resume")]
        experiment: Option<PathBuf>,
        /// Override the experiment's backend: auto, gpu or cpu.
        #[arg(long)]
        backend: Option<String>,
        /// Override the number of epochs (with --resume: the new total).
        #[arg(long)]
        epochs: Option<usize>,
        /// Change one setting, e.g. `--set training.batch_size=64` or
        /// `--set model.layers.lstm.kind.Lstm.units=128` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Continue the run in this folder from its checkpoint.
        #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["experiment", "sets"])]
        resume: Option<PathBuf>,
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
    /// Score a finished run's checkpoint: on its own test split (the run's
    /// figures, exactly) or on other data.
    Eval {
        /// A run folder written by `crossmodal run`.
        run_dir: PathBuf,
        /// Other data: an experiment file (its `data` section) or a
        /// manifest read with the run's manifest settings.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Backend: auto, gpu or cpu (default: the one that trained the run).
        #[arg(long)]
        backend: Option<String>,
    },
    /// Class probabilities of one text and/or image under a trained run.
    Predict {
        run_dir: PathBuf,
        #[arg(long)]
        text: Option<String>,
        #[arg(long)]
        image: Option<PathBuf>,
        /// Backend: auto, gpu or cpu (default: the one that trained the run).
        #[arg(long)]
        backend: Option<String>,
        /// Also explain the prediction: a heat map of |d log p / d pixel|
        /// and the tokens ranked by |gradient x embedding|.
        #[arg(long)]
        explain: bool,
        /// Where --explain writes the heat map (PNG; an upscaled copy goes
        /// beside it).
        #[arg(long, default_value = "saliency.png", requires = "explain")]
        out: PathBuf,
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
        /// Time this experiment's training step (its model on its own
        /// batches, both backends) instead of the seed model's: `bench
        /// train --experiment EXP.ron`.
        #[arg(long)]
        experiment: Option<PathBuf>,
    },
}

fn gpu_options(cli: &Cli) -> Result<GpuOptions> {
    let mut options = GpuOptions::from_env()?;
    if let Some(b) = &cli.gpu_backend {
        options.backend = b.parse::<BackendChoice>()?;
    }
    Ok(options)
}

/// Set by Ctrl-C: the run saves a checkpoint after the current step and
/// exits cleanly. A second Ctrl-C exits at once.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Some(b) = &cli.gpu_backend {
        b.parse::<BackendChoice>()?;
        // The library opens its adapter from the environment (`run`,
        // `eval`, `predict`): the flag wins over an inherited value. Set
        // before any thread starts.
        std::env::set_var("CROSSMODAL_GPU_BACKEND", b);
    }
    match &cli.command {
        Command::Run {
            experiment,
            backend,
            epochs,
            sets,
            resume,
            runs,
            shadow,
        } => {
            ctrlc::set_handler(|| {
                if INTERRUPTED.swap(true, Ordering::SeqCst) {
                    std::process::exit(130);
                }
                eprintln!("\nCtrl-C: stopping after this step (again to quit at once)");
            })?;
            let options = RunOptions {
                backend: backend.as_deref().map(parse_backend).transpose()?,
                progress: true,
                interrupt: Some(&INTERRUPTED),
            };
            if let Some(dir) = resume {
                return finish_run(resume_run(dir, *epochs, options)?);
            }
            let path = experiment
                .as_ref()
                .expect("clap requires it without --resume");
            let mut exp = apply_overrides(&Experiment::load(path)?, sets)?;
            if let Some(n) = shadow {
                let ctx = GpuContext::new(&gpu_options(&cli)?)?;
                let report = shadow::shadow_check(&ctx, &exp, *n, shadow::Tolerance::DEFAULT)?;
                println!("{report}");
                anyhow::ensure!(report.agrees(), "the backends diverge");
                return Ok(());
            }
            if let Some(e) = epochs {
                exp.training.epochs = *e;
            }
            if exp.evaluation.seeds > 1 {
                let (dir, outs) = run_seeds(&exp, runs, options)?;
                for out in &outs {
                    print_outcome(out);
                }
                println!("over seeds: see {}", dir.join("report.md").display());
                if let Some(bad) = outs.iter().find(|o| o.stopped.is_some() || o.interrupted) {
                    return finish_run(bad.clone());
                }
                return Ok(());
            }
            return finish_run(run_experiment(&exp, runs, options)?);
        }
        Command::Eval {
            run_dir,
            data,
            backend,
        } => {
            let backend = backend.as_deref().map(parse_backend).transpose()?;
            let out = eval_run(run_dir, data.as_deref(), backend)?;
            println!("{} on {}", out.data, out.device);
            println!(
                "accuracy {:.4}, macro-F1 {:.4}, loss {:.4}",
                out.metrics.accuracy, out.metrics.macro_f1, out.loss
            );
            for a in &out.ablation {
                println!("  {} zeroed: accuracy {:.4}", a.zeroed, a.accuracy);
            }
            return Ok(());
        }
        Command::Predict {
            run_dir,
            text,
            image,
            backend,
            explain,
            out,
        } => {
            if text.is_none() && image.is_none() {
                anyhow::bail!("give --text, --image or both");
            }
            let backend = backend.as_deref().map(parse_backend).transpose()?;
            let sample = Sample {
                text: text.as_deref(),
                image: image.as_deref(),
            };
            if *explain {
                print!(
                    "{}",
                    saliency::explain_to_files(run_dir, &sample, backend, out)?
                );
                return Ok(());
            }
            let p = predict_run(run_dir, &sample, backend)?;
            for (class, prob) in p.classes.iter().zip(&p.probabilities) {
                println!("{class:>12}  {prob:.4}");
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
            let ctx = GpuContext::new(&gpu_options(&cli)?).map_err(|e| e.to_string());
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
        Command::Gradcheck { target } => {
            let passed =
                crossmodal::study::gradcheck::run_cli(target.as_deref(), &gpu_options(&cli)?)?;
            anyhow::ensure!(passed, "gradcheck: some checks failed (see the table)");
            return Ok(());
        }
        Command::Bench {
            filter,
            json,
            csv,
            plot,
            quick,
            experiment,
        } => {
            use crossmodal::study::bench::{run_cli, BenchOptions, BenchOutputs};
            let o = BenchOptions {
                filter: filter.clone(),
                quick: *quick,
                experiment: experiment.clone(),
            };
            let out = BenchOutputs {
                json: json.as_deref(),
                csv: csv.as_deref(),
                plot: plot.as_deref(),
            };
            run_cli(&o, &gpu_options(&cli)?, &out)?;
            return Ok(());
        }
        Command::Devices => {}
    }
    match cli.command {
        Command::Devices => {
            for info in GpuContext::list_adapters() {
                println!(
                    "  {:<40} {:?}, {:?}, {} {}",
                    info.name, info.device_type, info.backend, info.driver, info.driver_info
                );
            }
            let ctx = GpuContext::new(&gpu_options(&cli)?)?;
            println!("chosen: {}", ctx.describe());
            println!(
                "limits: {} workgroups per dimension, {} MiB per storage binding, timestamps {}",
                ctx.limits.max_compute_workgroups_per_dimension,
                ctx.limits.max_storage_buffer_binding_size >> 20,
                if ctx.has_timestamps() { "yes" } else { "no" }
            );
        }
        _ => unreachable!("handled above"),
    }
    Ok(())
}

fn print_outcome(out: &RunOutcome) {
    let name = &out.name;
    match &out.test {
        Some(t) => println!(
            "{name}: test accuracy {:.4}, macro-F1 {:.4} in {:.1} s; outputs in {}",
            t.accuracy,
            t.macro_f1,
            out.seconds,
            out.dir.display()
        ),
        None => println!("{name}: no test result; outputs in {}", out.dir.display()),
    }
}

/// Prints a run's outcome; a non-finite loss or an interruption is a
/// non-zero exit.
fn finish_run(out: RunOutcome) -> Result<()> {
    print_outcome(&out);
    if let Some(why) = &out.stopped {
        anyhow::bail!("the run stopped early: {why}");
    }
    if out.interrupted {
        anyhow::bail!(
            "interrupted; continue with `crossmodal run --resume {}`",
            out.dir.display()
        );
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
