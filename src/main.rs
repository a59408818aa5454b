//! The effp binary: one executable for inspecting, pruning and serving.

mod cli;
mod service;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::run()
}
