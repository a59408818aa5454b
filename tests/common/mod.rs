//! What the command-line tests share: running the built binary and reading its output.

use std::process::{Command, Output};

/// Runs the effp binary with `args` and collects its output.
pub fn effp(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_effp"))
        .args(args)
        .output()
        .expect("effp runs")
}

/// Bytes of stdout or stderr as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
