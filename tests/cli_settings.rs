//! The settings file a person copies (`.env.example`) and the settings the binary
//! knows stay the same set.

mod common;

use std::collections::BTreeSet;

use common::{effp, setting_names, text};

#[test]
fn env_example_names_every_setting_of_serve_and_worker_and_nothing_else() {
    let example =
        std::fs::read_to_string(effp_testkit::fixtures::workspace_root().join(".env.example"))
            .unwrap();
    let documented = setting_names(&example);
    let mut known = BTreeSet::new();
    for command in ["serve", "worker"] {
        let help = effp(&[command, "--help"]);
        assert!(help.status.success());
        known.extend(setting_names(&text(&help.stdout)));
    }
    assert!(known.contains("EFFP_S3_BUCKET") && known.contains("EFFP_REDIS_URL"));
    let unknown: Vec<_> = documented.difference(&known).collect();
    assert!(
        unknown.is_empty(),
        ".env.example names settings the binary does not know: {unknown:?}"
    );
    let missing: Vec<_> = known.difference(&documented).collect();
    assert!(missing.is_empty(), ".env.example lacks: {missing:?}");
}

#[test]
fn an_empty_setting_means_unset_as_env_example_says() {
    // A `.env` or compose file often gives a setting as `EFFP_X=`: every one of them
    // empty at once, and effp serve still starts on its defaults.
    let example =
        std::fs::read_to_string(effp_testkit::fixtures::workspace_root().join(".env.example"))
            .unwrap();
    let data = tempfile::tempdir().unwrap();
    let port = effp_testkit::servers::free_port();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_effp"));
    for name in setting_names(&example) {
        command.env(name, "");
    }
    let mut child = command
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(data.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    assert!(
        first.starts_with("effp serving on"),
        "effp serve did not start: {first}{}",
        text(&output.stderr)
    );
}
