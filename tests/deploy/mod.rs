//! What the deployment tests share: the checkers installed in the project's Python
//! environment (scripts/requirements-service.txt) and reading YAML through it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository's root, where `docker/` and `helm/` live.
pub fn root() -> PathBuf {
    effp_testkit::fixtures::workspace_root()
}

/// A command-line tool of the project's Python environment (`helm`, `hadolint`,
/// `kubernetes-validate`, `yamllint`), next to the `EFFP_PYTHON` that `make test` sets.
pub fn tool(name: &str) -> PathBuf {
    let python = std::env::var("EFFP_PYTHON").expect(
        "EFFP_PYTHON is unset: run the tests with `make test`, which installs the checkers",
    );
    let path = Path::new(&python).parent().unwrap().join(name);
    assert!(
        path.is_file(),
        "{} is missing: `make venv` installs it (scripts/requirements-service.txt)",
        path.display()
    );
    path
}

/// Runs `command` and returns its output; panics with its stderr when it fails.
pub fn run_ok(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Runs a Python `script` of the project's environment with `args`, `stdin` as its
/// input; returns its stdout, panicking with its stderr when it fails.
pub fn python(script: &str, args: &[&Path], stdin: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let python = std::env::var("EFFP_PYTHON").expect("EFFP_PYTHON is set by `make test`");
    let mut child = Command::new(python)
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// The documents of a YAML stream as JSON values (null documents left out), parsed by
/// PyYAML from the project's Python environment.
pub fn yaml_documents(yaml: &str) -> Vec<serde_json::Value> {
    let out = python(
        "import json, sys, yaml\n\
         docs = [d for d in yaml.safe_load_all(sys.stdin) if d is not None]\n\
         json.dump(docs, sys.stdout)",
        &[],
        yaml.as_bytes(),
    );
    match serde_json::from_slice(&out).unwrap() {
        serde_json::Value::Array(docs) => docs,
        other => panic!("not a document list: {other}"),
    }
}
