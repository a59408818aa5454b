//! The API-only build (`cargo build --no-default-features`): no libtorch in its
//! dependency tree or its binary, the API served with `serve --no-worker` (jobs wait
//! in the queue), models inspected and datasets checked, and the commands that need
//! the engine refusing with exit status 2.

mod service;

use std::path::{Path, PathBuf};
use std::process::Command;

use effp_testkit::fixtures;
use service::*;

/// Builds the API-only binary in its own target folder (so that it does not replace
/// the full build's) and returns its path.
fn api_only_binary() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = root.join("target").join("api-only");
    let built = Command::new(env!("CARGO"))
        .current_dir(root)
        .args(["build", "--quiet", "--no-default-features", "--bin", "effp"])
        .arg("--target-dir")
        .arg(&target)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    target.join("debug").join("effp")
}

#[test]
fn the_api_only_build_links_no_torch() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tree = Command::new(env!("CARGO"))
        .current_dir(root)
        .args([
            "tree",
            "--no-default-features",
            "-p",
            "effp",
            "-e",
            "normal",
        ])
        .args(["--prefix", "none", "--format", "{p}"])
        .output()
        .unwrap();
    assert!(
        tree.status.success(),
        "{}",
        String::from_utf8_lossy(&tree.stderr)
    );
    let crates: Vec<String> = String::from_utf8_lossy(&tree.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    assert!(crates.iter().any(|c| c == "effp-data"), "{crates:?}");
    for torch in ["tch", "torch-sys", "effp-engine"] {
        assert!(!crates.iter().any(|c| c == torch), "{torch} in {crates:?}");
    }
    // And the full build does link it (the check above is not vacuous).
    let full = Command::new(env!("CARGO"))
        .current_dir(root)
        .args([
            "tree", "-p", "effp", "-e", "normal", "--prefix", "none", "--format", "{p}",
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&full.stdout)
            .lines()
            .any(|l| l.starts_with("tch "))
    );

    let binary = api_only_binary();
    let ldd = Command::new("ldd").arg(&binary).output().unwrap();
    let libraries = String::from_utf8_lossy(&ldd.stdout).to_string();
    assert!(libraries.contains("libc.so"), "{libraries}");
    for torch in ["torch", "libc10"] {
        assert!(!libraries.contains(torch), "{torch} in\n{libraries}");
    }
    let full = Command::new("ldd")
        .arg(env!("CARGO_BIN_EXE_effp"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&full.stdout).contains("libtorch"));
}

#[test]
fn the_api_only_build_inspects_serves_and_refuses_what_needs_the_engine() {
    let binary = api_only_binary();
    let run = |args: &[&str]| Command::new(&binary).args(args).output().unwrap();

    let version = run(&["--version"]);
    assert!(version.status.success());
    let inspected = run(&[
        "inspect",
        "--json",
        "--summary",
        fixtures::path("yolov8t.onnx").to_str().unwrap(),
    ]);
    assert!(
        inspected.status.success(),
        "{}",
        String::from_utf8_lossy(&inspected.stderr)
    );
    let totals: serde_json::Value = serde_json::from_slice(&inspected.stdout).unwrap();
    assert!(totals["totals"]["flops"].as_u64().unwrap() > 0);

    for command in ["prune", "eval", "bench"] {
        let refused = run(&[command, "model.onnx", "--target-flops", "0.5"]);
        assert_eq!(refused.status.code(), Some(2), "{command}");
        let message = String::from_utf8_lossy(&refused.stderr);
        assert!(
            message.contains(&format!("effp {command} needs the engine")),
            "{message}"
        );
    }
    let data = tempfile::tempdir().unwrap();
    let refused = run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.path().to_str().unwrap(),
    ]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--no-worker"));

    // The API, without workers: uploads are checked (the dataset unpacked and its
    // labels read without the engine) and a job waits in the queue.
    let server = Server::start_binary(&binary, data, &["--no-worker"], &[]);
    let base = &server.url;
    let work = tempfile::tempdir().unwrap();
    let set = small_dataset(work.path());
    let dataset = call(
        "POST",
        &format!("{base}/v1/datasets"),
        None,
        Some(&zip_dir(&set)),
    );
    assert_eq!(
        dataset.status,
        201,
        "{}",
        String::from_utf8_lossy(&dataset.body)
    );
    assert!(
        dataset.json()["summary"]["splits"]["train"]["images"]
            .as_u64()
            .unwrap()
            > 0
    );
    let bad = call(
        "POST",
        &format!("{base}/v1/datasets"),
        None,
        Some(b"not an archive"),
    );
    assert_eq!(bad.status, 422);
    let model = upload(base, "models", None, &fixture_bytes("yolov8t.onnx"));
    let id = submit_job(
        base,
        None,
        &serde_json::json!({ "model": model, "target": { "flops_ratio": 0.5 } }),
    );
    std::thread::sleep(std::time::Duration::from_secs(1));
    let job = call("GET", &format!("{base}/v1/jobs/{id}"), None, None).json();
    assert_eq!(job["state"], "queued", "{job}");
}
