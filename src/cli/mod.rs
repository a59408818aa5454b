//! Command-line interface: argument parsing and dispatch to the subcommands.

#[cfg(feature = "engine")]
mod bench;
#[cfg(feature = "engine")]
mod eval;
mod health;
mod inspect;
#[cfg(feature = "engine")]
pub(crate) mod prune;
mod synth;
mod table;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit status when the command failed (bad input, I/O).
pub const EXIT_FAILURE: u8 = 1;
/// Exit status when the model was read but uses ops effp does not support.
pub const EXIT_UNSUPPORTED: u8 = 3;
/// Exit status of a command that cannot run here: this build leaves it out (the
/// API-only build has no engine), or the setting it needs is missing.
pub const EXIT_UNAVAILABLE: u8 = 2;
/// Exit status of a run stopped with Ctrl-C or SIGTERM (after saving its checkpoint).
#[cfg(feature = "engine")]
pub const EXIT_INTERRUPTED: u8 = 130;

/// effp: pruning-as-a-service for object detectors.
#[derive(Debug, Parser)]
#[command(name = "effp", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The arguments of a command this build leaves out: accepted whatever they are, so
/// that the command can say why it cannot run.
#[cfg(not(feature = "engine"))]
#[derive(Debug, clap::Args)]
struct Unavailable {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    args: Vec<String>,
}

/// Refuses a command this build leaves out, saying what to use instead.
#[cfg(not(feature = "engine"))]
fn unavailable(command: &str) -> anyhow::Result<u8> {
    eprintln!(
        "error: effp {command} needs the engine (libtorch), which this API-only build leaves \
         out (built with --no-default-features); use the full build of effp"
    );
    Ok(EXIT_UNAVAILABLE)
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show a model's layers, shapes, parameters and FLOPs.
    Inspect(inspect::InspectArgs),
    /// Remove channel groups until a FLOPs or parameter target holds; write the smaller ONNX.
    #[cfg(feature = "engine")]
    Prune(Box<prune::PruneArgs>),
    /// Remove channel groups (needs the full build: this one has no engine).
    #[cfg(not(feature = "engine"))]
    Prune(Unavailable),
    /// Score a detector on a dataset (mAP50-95, mAP50, per class).
    #[cfg(feature = "engine")]
    Eval(eval::EvalArgs),
    /// Score a detector (needs the full build: this one has no engine).
    #[cfg(not(feature = "engine"))]
    Eval(Unavailable),
    /// Write a synthetic detection dataset in the YOLO layout.
    Synth(synth::SynthArgs),
    /// Benchmarks of effp's own machinery (runtime, dependency analysis).
    #[cfg(feature = "engine")]
    Bench(bench::BenchArgs),
    /// Benchmarks of effp's machinery (needs the full build: this one has no engine).
    #[cfg(not(feature = "engine"))]
    Bench(Unavailable),
    /// Run the pruning service (HTTP API): on the embedded default (SQLite and a local
    /// directory, jobs run here), or as an API replica over Redis (EFFP_REDIS_URL).
    Serve(Box<crate::service::ServeArgs>),
    /// Run jobs from the shared queue (Redis) beside API replicas started with
    /// `effp serve --no-worker`.
    #[cfg(feature = "engine")]
    Worker(Box<crate::service::worker::standalone::WorkerArgs>),
    /// Run jobs from the shared queue (needs the full build: this one has no engine).
    #[cfg(not(feature = "engine"))]
    Worker(Unavailable),
    /// Probe a service endpoint (a container's health check): exit 0 when it answers 2xx.
    Health(health::HealthArgs),
    /// Print the service's OpenAPI document (what openapi/openapi.json holds).
    Openapi,
    /// Run one job of the service (started by `effp serve` in its own process).
    #[cfg(feature = "engine")]
    #[command(hide = true)]
    RunJob(crate::service::worker::run_job::RunJobArgs),
    /// Run one job (needs the full build: this one has no engine).
    #[cfg(not(feature = "engine"))]
    #[command(hide = true)]
    RunJob(Unavailable),
    /// Check an upload (started by `effp serve` in its own process).
    #[command(hide = true)]
    CheckUpload(crate::service::checks::CheckArgs),
}

/// Parses the command line, runs the command and turns its outcome into an exit code.
pub fn run() -> ExitCode {
    drop_empty_settings();
    init_tracing();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Inspect(args) => inspect::run(&args),
        #[cfg(feature = "engine")]
        Command::Prune(args) => prune::run(&args),
        #[cfg(feature = "engine")]
        Command::Bench(args) => bench::run(&args),
        #[cfg(feature = "engine")]
        Command::Eval(args) => eval::eval(&args),
        #[cfg(feature = "engine")]
        Command::RunJob(args) => crate::service::worker::run_job::run(&args),
        #[cfg(feature = "engine")]
        Command::Worker(args) => crate::service::worker::standalone::run(&args),
        #[cfg(not(feature = "engine"))]
        Command::Worker(_) => unavailable("worker"),
        #[cfg(not(feature = "engine"))]
        Command::Prune(_) => unavailable("prune"),
        #[cfg(not(feature = "engine"))]
        Command::Bench(_) => unavailable("bench"),
        #[cfg(not(feature = "engine"))]
        Command::Eval(_) => unavailable("eval"),
        #[cfg(not(feature = "engine"))]
        Command::RunJob(_) => unavailable("run-job"),
        Command::Synth(args) => synth::synth(&args),
        Command::Health(args) => health::run(&args),
        Command::Serve(args) => crate::service::run(&args),
        Command::CheckUpload(args) => crate::service::checks::run_command(&args),
        Command::Openapi => {
            println!("{}", crate::service::openapi_document());
            Ok(0)
        }
    };
    match outcome {
        Ok(code) => ExitCode::from(code),
        #[cfg(feature = "engine")]
        Err(err) if err.downcast_ref::<prune::Interrupted>().is_some() => {
            eprintln!("interrupted: {err:#}");
            ExitCode::from(EXIT_INTERRUPTED)
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Makes a setting given as an empty environment variable (`EFFP_X=` in a `.env` file
/// or a compose file) mean "unset", as `.env.example` documents, instead of an empty
/// value that its parser would refuse.
fn drop_empty_settings() {
    let empty: Vec<_> = std::env::vars_os()
        .filter(|(name, value)| {
            value.is_empty() && name.to_str().is_some_and(|n| n.starts_with("EFFP_"))
        })
        .map(|(name, _)| name)
        .collect();
    for name in empty {
        // SAFETY: called first in main, before any thread exists that could read the
        // environment at the same time.
        unsafe { std::env::remove_var(name) };
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
