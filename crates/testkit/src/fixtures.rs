//! Where the generated fixtures and the project's Python live.
//!
//! `make test` exports `EFFP_FIXTURES` (the folder `make_fixtures.py` printed) and
//! `EFFP_PYTHON` (the virtual environment's interpreter). Without them, the folder is
//! found the way the script names it (cache root, then the hash of the script), so a
//! plain `cargo test` works after `make fixtures`. Tests that need fixtures fail with
//! instructions when there are none: a test that silently skips proves nothing.

use std::path::{Path, PathBuf};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root exists")
}

/// The fixtures folder.
pub fn dir() -> PathBuf {
    let dir = std::env::var_os("EFFP_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(default_dir);
    assert!(
        dir.join("MANIFEST.json").is_file(),
        "{} holds no fixtures (no MANIFEST.json): run `make fixtures`",
        dir.display()
    );
    dir
}

/// `<cache>/fixtures/<first 16 hex digits of sha256(make_fixtures.py)>`, as the script
/// computes it; the cache is `EFFP_CACHE` or `~/.cache/effp`.
fn default_dir() -> PathBuf {
    use sha2::Digest;
    let script = workspace_root().join("tests/fixtures/make_fixtures.py");
    let bytes = std::fs::read(&script).expect("tests/fixtures/make_fixtures.py is readable");
    let digest = sha2::Sha256::digest(&bytes);
    let hash: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    cache_root().join("fixtures").join(hash)
}

/// The cache root shared by the Makefile and the tests.
pub fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("EFFP_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".cache/effp")
}

/// A fixture file by name, e.g. `yolov8n.onnx`.
pub fn path(name: &str) -> PathBuf {
    let p = dir().join(name);
    assert!(
        p.is_file(),
        "fixture {} is missing: run `make fixtures`",
        p.display()
    );
    p
}

/// The Ultralytics exports at 640×640 with their published figures:
/// (file, parameters, GFLOPs as Ultralytics computes them before rounding).
pub const PUBLISHED: &[(&str, u64, f64)] = &[
    ("yolov8n.onnx", 3_151_904, 8.743_987_2),
    ("yolo11n.onnx", 2_616_248, 6.542_502_4),
    ("yolov5nu.onnx", 2_649_200, 7.724_902_4),
];

/// The reduced-width exports at small input sizes, for fast CPU tests.
pub const TINY: &[&str] = &["yolov8t.onnx", "yolo11t.onnx", "yolov5t.onnx"];

/// The Python interpreter of the project's virtual environment.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("EFFP_PYTHON") {
        return PathBuf::from(p);
    }
    let p = workspace_root().join(".venv/bin/python");
    assert!(
        p.exists(),
        "no Python environment at {}: run `make venv` (or `make test`)",
        p.display()
    );
    p
}

/// A script under `tests/support/`.
pub fn support_script(name: &str) -> PathBuf {
    workspace_root().join("tests/support").join(name)
}

/// Runs `tests/support/onnx_reference.py COMMAND` with a JSON request and returns its
/// JSON answer; panics with the script's error output when it fails.
pub fn reference(command: &str, request: &serde_json::Value) -> serde_json::Value {
    run_script("onnx_reference.py", &[command], request)
}

/// Runs the support script `name` (in `tests/support/`) with `args`, writes `request`
/// to its standard input and returns the JSON it prints; panics with the script's
/// error output when it fails. Ultralytics is kept offline.
pub fn run_script(name: &str, args: &[&str], request: &serde_json::Value) -> serde_json::Value {
    use std::io::Write;
    use std::process::{Command, Stdio};

    let mut child = Command::new(python())
        .arg(support_script(name))
        .args(args)
        .env("YOLO_OFFLINE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the project's Python starts");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(request.to_string().as_bytes())
        .expect("request is written");
    let out = child.wait_with_output().expect("the script finishes");
    assert!(
        out.status.success(),
        "{name} {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the script answers JSON")
}

/// The fixture manifest written by `make_fixtures.py`.
pub fn manifest() -> serde_json::Value {
    let text =
        std::fs::read_to_string(dir().join("MANIFEST.json")).expect("MANIFEST.json is readable");
    serde_json::from_str(&text).expect("MANIFEST.json is JSON")
}

/// The tiny YOLOv8 fixture (`yolov8t`, same weights) exported by Ultralytics with
/// free input sizes (`dynamic=True`, input `[batch, 3, height, width]`) and, for
/// comparison, with a static 128×128 input: `(dynamic, static)`.
///
/// Built once by `tests/support/dynamic_export.py` (a few seconds) and cached under
/// [`cache_root`] by the hash of that script and `make_fixtures.py`, so that
/// `make_fixtures.py` and its fixtures stay as they are.
pub fn dynamic_yolov8t() -> (PathBuf, PathBuf) {
    let out = std::process::Command::new(python())
        .arg(support_script("dynamic_export.py"))
        .arg("--cache")
        .arg(cache_root())
        .output()
        .expect("the project's Python starts");
    assert!(
        out.status.success(),
        "dynamic_export.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = PathBuf::from(
        stdout
            .lines()
            .last()
            .expect("the script prints its folder")
            .trim(),
    );
    (
        dir.join("yolov8t_dynamic.onnx"),
        dir.join("yolov8t_static.onnx"),
    )
}
