//! `effp eval` and `effp synth` as a user runs them, against Ultralytics' own `val`.

mod common;

use common::{effp, text};
use std::path::Path;
use std::process::Command;

use effp_testkit::fixtures;

fn eval_json(model: &Path, data: &Path) -> serde_json::Value {
    // Batch 1: the re-wired YOLOv5 head below holds a batch-1 constant.
    let out = effp(&[
        "eval",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--device",
        "cpu",
        "--batch",
        "1",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

#[test]
fn eval_agrees_with_ultralytics_val_on_the_trained_detector() {
    let model = fixtures::path("trained.onnx");
    let data = fixtures::dir().join("synth");
    let ours = eval_json(&model, &data);
    assert_eq!(ours["schema"], "effp.eval/v1");
    assert_eq!(
        ours["classes"],
        serde_json::json!(["circle", "square", "triangle"])
    );
    let r = &ours["report"];
    assert_eq!(r["images"], 96);
    assert_eq!(r["layout"], "ultralytics");
    let (map, map50) = (
        r["metrics"]["map50_95"].as_f64().unwrap(),
        r["metrics"]["map50"].as_f64().unwrap(),
    );
    assert!(map > 0.3, "the trained detector detects: {map}");

    let out = Command::new(fixtures::python())
        .arg(fixtures::support_script("ultralytics_val.py"))
        .args([
            model.to_str().unwrap(),
            data.join("data.yaml").to_str().unwrap(),
            "128",
        ])
        .current_dir(tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let reference: serde_json::Value =
        serde_json::from_str(stdout.lines().rev().find(|l| l.starts_with('{')).unwrap()).unwrap();
    let (umap, umap50) = (
        reference["map50_95"].as_f64().unwrap(),
        reference["map50"].as_f64().unwrap(),
    );
    // Measured on this fixture: mAP50-95 0.00008 apart, mAP50 0.0022 (one matched
    // detection at the 0.5 IoU boundary). The margins are about ten and two times that.
    eprintln!("mAP50-95 {map} vs {umap}, mAP50 {map50} vs {umap50}");
    assert!(
        (map - umap).abs() <= 0.001,
        "mAP50-95 {map} vs Ultralytics {umap}"
    );
    assert!(
        (map50 - umap50).abs() <= 0.005,
        "mAP50 {map50} vs Ultralytics {umap50}"
    );
}

#[test]
fn eval_prints_a_per_class_table_and_reads_archives() {
    let tmp = tempfile::tempdir().unwrap();
    let set = tmp.path().join("set");
    let out = effp(&[
        "synth",
        "--out",
        set.to_str().unwrap(),
        "--images",
        "10",
        "--seed",
        "4",
        "--imgsz",
        "128",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let archive = tmp.path().join("set.tar");
    let status = Command::new("tar")
        .args([
            "-cf",
            archive.to_str().unwrap(),
            "-C",
            tmp.path().to_str().unwrap(),
            "set",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let model = fixtures::path("trained.onnx");
    let table = effp(&[
        "eval",
        model.to_str().unwrap(),
        "--data",
        archive.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(table.status.success(), "{}", text(&table.stderr));
    let stdout = text(&table.stdout);
    for needle in ["class", "all", "circle", "AP50-95", "images at 128x128"] {
        assert!(stdout.contains(needle), "{needle} in {stdout}");
    }
}

#[test]
fn eval_explains_what_is_wrong_with_the_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let set = tmp.path().join("set");
    assert!(
        effp(&[
            "synth",
            "--out",
            set.to_str().unwrap(),
            "--images",
            "5",
            "--imgsz",
            "64"
        ])
        .status
        .success()
    );
    std::fs::write(set.join("labels/val/000004.txt"), "5 0.5 0.5 0.1 0.1\n").unwrap();
    let model = fixtures::path("trained.onnx");
    let out = effp(&[
        "eval",
        model.to_str().unwrap(),
        "--data",
        set.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("labels/val/000004.txt:1: class 5 is unknown"),
        "{}",
        text(&out.stderr)
    );

    // A model whose head does not fit the dataset's class count.
    std::fs::write(set.join("labels/val/000004.txt"), "").unwrap();
    let yolo = fixtures::path("yolov8n.onnx");
    let out = effp(&[
        "eval",
        yolo.to_str().unwrap(),
        "--data",
        set.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("--decoder"),
        "{}",
        text(&out.stderr)
    );

    let out = effp(&[
        "eval",
        model.to_str().unwrap(),
        "--data",
        tmp.path().join("nothing").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("neither a folder nor an archive"),
        "{}",
        text(&out.stderr)
    );
}

/// The trained detector re-wired to the classic YOLOv5 layout: `[1, A, 5 + nc]` with
/// objectness 1, so its detections, and its mAP, must equal the original's.
fn as_yolov5_layout(original: &Path, out: &Path) {
    use effp_testkit::builder::ints;
    use onnx_protobuf::Message;
    let mut m =
        onnx_protobuf::ModelProto::parse_from_bytes(&std::fs::read(original).unwrap()).unwrap();
    let g = m.graph.as_mut().unwrap();
    let out_name = g.output[0].name.clone();
    let anchors = 336i64; // 128×128 input: 16² + 8² + 4²
    let tensor = |name: &str, dims: &[i64], data: Vec<u8>, data_type: i32| {
        let mut t = onnx_protobuf::TensorProto::new();
        t.name = name.into();
        t.dims = dims.to_vec();
        t.data_type = data_type;
        t.raw_data = data;
        t
    };
    let i64s = |v: &[i64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    g.initializer.push(tensor(
        "v5_ones",
        &[1, anchors, 1],
        (0..anchors).flat_map(|_| 1f32.to_le_bytes()).collect(),
        1,
    ));
    for (name, v) in [
        ("v5_s0", [0i64]),
        ("v5_e4", [4]),
        ("v5_s4", [4]),
        ("v5_end", [i64::MAX]),
        ("v5_axis", [2]),
    ] {
        g.initializer.push(tensor(name, &[1], i64s(&v), 7));
    }
    let node = |op: &str, inputs: &[&str], output: &str| {
        let mut n = onnx_protobuf::NodeProto::new();
        n.op_type = op.into();
        n.name = format!("v5_{output}");
        n.input = inputs.iter().map(|s| s.to_string()).collect();
        n.output = vec![output.into()];
        n
    };
    let mut t = node("Transpose", &[&out_name], "v5_t");
    t.attribute.push(ints("perm", &[0, 2, 1]));
    g.node.push(t);
    g.node.push(node(
        "Slice",
        &["v5_t", "v5_s0", "v5_e4", "v5_axis"],
        "v5_boxes",
    ));
    g.node.push(node(
        "Slice",
        &["v5_t", "v5_s4", "v5_end", "v5_axis"],
        "v5_scores",
    ));
    let mut cat = node(
        "Concat",
        &["v5_boxes", "v5_ones", "v5_scores"],
        "yolov5_output",
    );
    cat.attribute.push(effp_testkit::builder::int("axis", 2));
    g.node.push(cat);
    g.output[0].name = "yolov5_output".into();
    g.output[0].type_.clear();
    std::fs::write(out, m.write_to_bytes().unwrap()).unwrap();
}

#[test]
fn the_yolov5_decoder_scores_the_same_detections_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let v5 = tmp.path().join("v5.onnx");
    as_yolov5_layout(&fixtures::path("trained.onnx"), &v5);
    let data = fixtures::dir().join("synth");
    let original = eval_json(&fixtures::path("trained.onnx"), &data);
    let rewired = eval_json(&v5, &data);
    assert_eq!(
        rewired["report"]["layout"], "yolov5",
        "detected from the shape"
    );
    for key in ["map50_95", "map50"] {
        let (a, b) = (
            original["report"]["metrics"][key].as_f64().unwrap(),
            rewired["report"]["metrics"][key].as_f64().unwrap(),
        );
        assert!((a - b).abs() < 1e-9, "{key}: {a} vs {b}");
    }
    // Forcing the wrong decoder is refused rather than misread.
    let out = effp(&[
        "eval",
        v5.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--decoder",
        "ultralytics",
        "--device",
        "cpu",
    ]);
    assert!(!out.status.success());
}
