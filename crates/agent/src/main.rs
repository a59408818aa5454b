//! The effp-agent binary: parses the settings, sets up logging and signals, and runs
//! the agent's loop.

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Context as _;
use clap::Parser as _;
use effp_agent::agent::Agent;
use effp_agent::flag::Flag;
use effp_agent::settings::Settings;
use effp_agent::{child, runner};

/// Exit status after a second signal stopped the agent in the middle of a task.
const EXIT_INTERRUPTED: u8 = 130;

fn main() -> ExitCode {
    let settings = Settings::parse();
    init_tracing();
    match run(settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(settings: Settings) -> anyhow::Result<()> {
    let shutdown = Flag::new();
    install_signal_handler(shutdown.clone())?;
    let runner = runner::select(&settings)?;
    let agent = Agent::new(settings, runner, shutdown)?;
    agent.run()?;
    Ok(())
}

/// The first SIGTERM or SIGINT stops the agent after its current task; a second one
/// exits at once (taking a running trtexec down with it).
fn install_signal_handler(shutdown: Flag) -> anyhow::Result<()> {
    let signals = AtomicU32::new(0);
    ctrlc::set_handler(move || {
        if signals.fetch_add(1, Ordering::SeqCst) == 0 {
            tracing::warn!(
                "stopping after the current task (send the signal again to stop at once)"
            );
            shutdown.raise();
        } else {
            tracing::warn!("stopping now");
            child::kill_current();
            std::process::exit(i32::from(EXIT_INTERRUPTED));
        }
    })
    .context("cannot install the SIGTERM/SIGINT handler")
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}
