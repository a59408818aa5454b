//! Command-line interface: argument parsing and dispatch to the subcommands.

mod bench;
mod data;
mod inspect;
pub(crate) mod prune;
mod table;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit status when the command failed (bad input, I/O).
pub const EXIT_FAILURE: u8 = 1;
/// Exit status when the model was read but uses ops effp does not support.
pub const EXIT_UNSUPPORTED: u8 = 3;

/// effp: pruning-as-a-service for object detectors.
#[derive(Debug, Parser)]
#[command(name = "effp", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show a model's layers, shapes, parameters and FLOPs.
    Inspect(inspect::InspectArgs),
    /// Remove channel groups until a FLOPs or parameter target holds; write the smaller ONNX.
    Prune(Box<prune::PruneArgs>),
    /// Score a detector on a dataset (mAP50-95, mAP50, per class).
    Eval(data::EvalArgs),
    /// Write a synthetic detection dataset in the YOLO layout.
    Synth(data::SynthArgs),
    /// Benchmarks of effp's own machinery (runtime, dependency analysis).
    Bench(bench::BenchArgs),
    /// Run the pruning service (HTTP API) on the embedded default: SQLite and a local directory.
    Serve(Box<crate::service::ServeArgs>),
    /// Print the service's OpenAPI document (what openapi/openapi.json holds).
    Openapi,
    /// Run one job of the service (started by `effp serve` in its own process).
    #[command(hide = true)]
    RunJob(crate::service::worker::child::RunJobArgs),
    /// Check an upload (started by `effp serve` in its own process).
    #[command(hide = true)]
    CheckUpload(crate::service::checks::CheckArgs),
}

/// Parses the command line, runs the command and turns its outcome into an exit code.
pub fn run() -> ExitCode {
    init_tracing();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Inspect(args) => inspect::run(&args),
        Command::Prune(args) => prune::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Eval(args) => data::eval(&args),
        Command::Synth(args) => data::synth(&args),
        Command::Serve(args) => crate::service::run(&args),
        Command::RunJob(args) => crate::service::worker::child::run(&args),
        Command::CheckUpload(args) => crate::service::checks::run_command(&args),
        Command::Openapi => {
            println!("{}", crate::service::openapi_document());
            Ok(0)
        }
    };
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(err) if err.downcast_ref::<prune::Interrupted>().is_some() => {
            eprintln!("interrupted: {err:#}");
            ExitCode::from(prune::EXIT_INTERRUPTED)
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn init_tracing() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("EFFP_LOG").unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
