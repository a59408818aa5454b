//! `effp inspect` as a user runs it: exit codes, tables, JSON and error messages.

mod common;

use common::{effp, text};
use std::path::Path;

use effp_testkit::{builder::ModelBuilder, fixtures, zoo};

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn prints_a_table_with_the_published_totals() {
    let out = effp(&["inspect", fixtures::path("yolov8n.onnx").to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("Total   3,151,904 params, 8.74 GFLOPs"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Inputs  images float32 1×3×640×640"),
        "{stdout}"
    );
    assert!(
        stdout.contains("/model.0/conv/Conv"),
        "per-node table: {stdout}"
    );
    assert!(stdout.contains("Conv 64"), "op histogram: {stdout}");
    assert!(stdout.contains("Unsupported ops: none"), "{stdout}");
}

#[test]
fn json_report_is_the_documented_object() {
    let out = effp(&[
        "inspect",
        "--json",
        fixtures::path("yolo11n.onnx").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON only");
    assert_eq!(v["schema"], "effp.inspect/v1");
    assert_eq!(v["totals"]["params"], 2_616_248);
    assert_eq!(
        v["totals"]["flops"].as_u64().unwrap(),
        2 * v["totals"]["macs"].as_u64().unwrap()
    );
    assert_eq!(v["totals"]["complete"], true);
    assert_eq!(v["op_histogram"]["MatMul"], 2);
    assert_eq!(v["inputs"][0]["shape"], serde_json::json!([1, 3, 640, 640]));
    assert_eq!(v["outputs"][0]["shape"], serde_json::json!([1, 84, 8400]));
    assert_eq!(v["model"]["opset"], 18);
    assert_eq!(v["model"]["metadata"]["task"], "detect");
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), v["totals"]["nodes"].as_u64().unwrap() as usize);
    let summed: u64 = nodes.iter().map(|n| n["flops"].as_u64().unwrap()).sum();
    assert_eq!(summed, v["totals"]["flops"].as_u64().unwrap());
    assert!(v["unsupported_ops"].as_array().unwrap().is_empty());
}

#[test]
fn input_size_flag_recomputes_shapes_and_cost() {
    let tmp = tempfile::tempdir().unwrap();
    let m = write(tmp.path(), "se.onnx", &zoo::se_block());
    let out = effp(&["inspect", "--json", "--input-size", "64x96", &m]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["inputs"][0]["shape"], serde_json::json!([1, 3, 64, 96]));
    assert_eq!(v["outputs"][0]["shape"], serde_json::json!([1, 8, 64, 96]));
}

#[test]
fn bad_files_fail_with_one_clear_message_and_no_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let tiny = std::fs::read(fixtures::path("yolov8t.onnx")).unwrap();
    let cases: Vec<(String, &str)> = vec![
        (write(tmp.path(), "empty.onnx", b""), "the model is empty"),
        (
            write(
                tmp.path(),
                "text.onnx",
                b"this is not a model, just some text\n",
            ),
            "not a valid ONNX model",
        ),
        (
            write(tmp.path(), "cut.onnx", &tiny[..tiny.len() / 2]),
            "truncated, corrupt or not ONNX",
        ),
        (
            tmp.path()
                .join("missing.onnx")
                .to_str()
                .unwrap()
                .to_string(),
            "cannot read",
        ),
    ];
    for (path, expected) in cases {
        let out = effp(&["inspect", &path]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{path}: {stderr}");
        assert!(
            stderr.starts_with("error: cannot inspect '"),
            "{path}: {stderr}"
        );
        assert!(
            stderr.contains(expected),
            "{path}: expected '{expected}' in: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "one message: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn a_bad_input_size_is_a_usage_error() {
    let m = fixtures::path("yolov8t.onnx");
    for bad in ["0x320", "-5x5", "big"] {
        let out = effp(&["inspect", "--input-size", bad, m.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(
            text(&out.stderr).contains("positive integers"),
            "{}",
            text(&out.stderr)
        );
    }
}

#[test]
fn unsupported_ops_are_listed_and_exit_with_status_3() {
    let mut b = ModelBuilder::new("nms", 3);
    let x = b.input("input", &[1, 3, 16, 16]);
    let c = b.conv(&x, 3, 4, 3, 1, 1);
    let t = b.op("Tanh", &[&c], vec![]);
    let e = b.op("Erf", &[&t], vec![]);
    let tmp = tempfile::tempdir().unwrap();
    let m = write(
        tmp.path(),
        "u.onnx",
        &b.finish_as(&e, "out", &[1, 4, 16, 16]),
    );
    let out = effp(&["inspect", &m]);
    assert_eq!(out.status.code(), Some(3));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("Unsupported ops:\n  Tanh at node 'Tanh_"),
        "{stdout}"
    );
    assert!(stdout.contains("  Erf at node 'Erf_"), "{stdout}");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("2 unsupported op(s): Tanh (node 'Tanh_"),
        "{stderr}"
    );

    let out = effp(&["inspect", "--json", &m]);
    assert_eq!(out.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["unsupported_ops"].as_array().unwrap().len(), 2);
    assert_eq!(v["totals"]["complete"], false);
}

#[test]
fn prune_writes_a_smaller_model_and_a_report_anyone_can_check() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("pruned.onnx");
    let report = tmp.path().join("report.json");
    let model = fixtures::path("yolov8t.onnx");
    let run = effp(&[
        "prune",
        model.to_str().unwrap(),
        "--method",
        "l1",
        "--target-flops",
        "0.5",
        "--out",
        out.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert!(
        text(&run.stdout).contains("FLOPs   "),
        "{}",
        text(&run.stdout)
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["schema"], "effp.prune-report/v1");
    assert_eq!(r["method"], "l1");
    assert!(r["equivalence"]["max_relative_error"].as_f64().unwrap() <= 1e-4);
    assert_eq!(r["equivalence"]["device"], "cpu");
    let ratio = r["flops_ratio"].as_f64().unwrap();
    assert!((0.49..=0.5).contains(&ratio), "{ratio}");
    // The pruned file inspects to the FLOPs the report claims.
    let inspected = effp(&["inspect", "--json", out.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&inspected.stdout).unwrap();
    assert_eq!(v["totals"]["flops"], r["after"]["flops"]);
    // Every changed layer lists kept indices that fit its original channel counts.
    for layer in r["compaction"]["layers"].as_array().unwrap() {
        let kept = layer["kept_output_channels"].as_array().unwrap();
        assert_eq!(
            kept.len() as u64,
            layer["out_channels_after"].as_u64().unwrap()
        );
        assert!(
            kept.iter()
                .all(|k| k.as_u64().unwrap() < layer["out_channels_before"].as_u64().unwrap())
        );
    }
}

#[test]
fn prune_refuses_bad_targets_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("p.onnx");
    let model = fixtures::path("yolov8t.onnx");
    let run = effp(&[
        "prune",
        model.to_str().unwrap(),
        "--target-params",
        "1.5",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(run.status.code(), Some(1));
    assert!(
        text(&run.stderr).contains("a ratio must be between 0 and 1"),
        "{}",
        text(&run.stderr)
    );
    let run = effp(&[
        "prune",
        model.to_str().unwrap(),
        "--target-flops",
        "0.01",
        "--min-fraction",
        "0.5",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(run.status.code(), Some(1));
    assert!(
        text(&run.stderr).contains("cannot be reached"),
        "{}",
        text(&run.stderr)
    );
    assert!(!out.exists(), "nothing is written when pruning fails");
    let run = effp(&[
        "prune",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(run.status.code(), Some(2), "a target is required");
}

/// `--activation-cost` is recorded in the report, changes which channels go at the
/// same FLOPs target, and is refused out of range.
#[test]
fn prune_with_an_activation_cost_keeps_the_target_and_prunes_other_channels() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixtures::path("yolov8t.onnx");
    let run_with = |cost: &str| {
        let out = tmp.path().join(format!("p{cost}.onnx"));
        let report = tmp.path().join(format!("r{cost}.json"));
        let run = effp(&[
            "prune",
            model.to_str().unwrap(),
            "--target-flops",
            "0.5",
            "--activation-cost",
            cost,
            "--out",
            out.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
        ]);
        assert!(run.status.success(), "{}", text(&run.stderr));
        serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&report).unwrap())
            .unwrap()
    };
    let flops_only = run_with("0");
    let latency_aware = run_with("10000");
    assert_eq!(flops_only["activation_cost"], 0.0);
    assert_eq!(latency_aware["activation_cost"], 10000.0);
    for r in [&flops_only, &latency_aware] {
        let ratio = r["flops_ratio"].as_f64().unwrap();
        assert!((0.49..=0.5).contains(&ratio), "{ratio}");
    }
    assert_ne!(
        flops_only["compaction"]["layers"], latency_aware["compaction"]["layers"],
        "the activation cost must change which channels go"
    );
    let out = tmp.path().join("bad.onnx");
    let run = effp(&[
        "prune",
        model.to_str().unwrap(),
        "--target-flops",
        "0.5",
        "--activation-cost",
        "2e6",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(run.status.code(), Some(1));
    assert!(
        text(&run.stderr).contains("--activation-cost must be in [0, 1e6]"),
        "{}",
        text(&run.stderr)
    );
    assert!(!out.exists());
}

#[test]
fn groups_flag_reports_prunable_groups_and_why_the_rest_is_frozen() {
    let out = effp(&[
        "inspect",
        "--json",
        "--groups",
        fixtures::path("yolo11t.onnx").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let g = &v["channel_groups"];
    assert!(g["prunable_groups"].as_u64().unwrap() > 0);
    assert_eq!(
        g["groups"].as_array().unwrap().len() as u64,
        g["prunable_groups"].as_u64().unwrap()
    );
    let reasons: Vec<&str> = g["frozen"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("graph input 'images'")),
        "{reasons:?}"
    );
    // YOLO11's attention block reshapes q/k/v and multiplies them: frozen by MatMul or Reshape.
    assert!(reasons.iter().any(|r| r.contains("/attn/")), "{reasons:?}");
    let group = &g["groups"][0];
    assert!(!group["producers"].as_array().unwrap().is_empty());
    assert!(group["flops"].as_u64().unwrap() > 0);

    // Without the flag the JSON has no groups section, and the table form prints one.
    let plain = effp(&[
        "inspect",
        "--json",
        fixtures::path("yolo11t.onnx").to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_slice(&plain.stdout).unwrap();
    assert!(v.get("channel_groups").is_none());
    let table = effp(&[
        "inspect",
        "--groups",
        "--summary",
        fixtures::path("yolo11t.onnx").to_str().unwrap(),
    ]);
    assert!(
        text(&table.stdout).contains("frozen because"),
        "{}",
        text(&table.stdout)
    );
}

#[test]
fn declared_sizes_past_the_caps_exit_1_with_the_limit_instead_of_aborting() {
    let dir = tempfile::tempdir().unwrap();
    for (name, dims) in [
        ("slots.onnx", [1i64, 1 << 40, 1, 1]),
        ("pixels.onnx", [1, 3, 100_000, 100_000]),
    ] {
        let mut b = ModelBuilder::new("bomb", 0);
        let x = b.input("x", &dims);
        let y = b.op("Relu", &[&x], vec![]);
        let path = write(dir.path(), name, &b.finish_as(&y, "y", &dims));
        for extra in [&[][..], &["--groups"][..]] {
            let mut args = vec!["inspect", path.as_str()];
            args.extend_from_slice(extra);
            let out = effp(&args);
            assert_eq!(
                out.status.code(),
                Some(1),
                "{name} {extra:?}: {}",
                text(&out.stderr)
            );
            let stderr = text(&out.stderr);
            assert!(
                stderr.contains("'x'") && stderr.contains("at most"),
                "{stderr}"
            );
            assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        }
    }
    let out = effp(&[
        "inspect",
        &fixtures::path("yolov8t.onnx").display().to_string(),
        "--input-size",
        "9000x9000",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("8192"), "{}", text(&out.stderr));
}
