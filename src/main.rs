//! The effp binary: one executable for inspecting, pruning and serving.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::run()
}
