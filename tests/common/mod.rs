//! What the command-line tests share: running the built binary and reading its output.
#![allow(dead_code)] // Each test binary uses its own part of these.

use std::path::PathBuf;
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

/// The `effp-agent` binary, built beside `effp` (`make test` builds it).
pub fn agent_binary() -> PathBuf {
    let path = std::path::Path::new(env!("CARGO_BIN_EXE_effp")).with_file_name("effp-agent");
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo build -p effp-agent` (make test does)",
        path.display()
    );
    path
}

/// The `EFFP_*` setting names in `text` (a help text, a settings or deployment file).
pub fn setting_names(text: &str) -> std::collections::BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("EFFP_") && w.len() > 5)
        .map(str::to_string)
        .collect()
}
