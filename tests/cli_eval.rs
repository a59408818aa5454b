//! `effp eval` and `effp synth` as a user runs them, against Ultralytics' own `val`.

use std::path::Path;
use std::process::{Command, Output};

use effp_testkit::fixtures;

fn effp(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_effp"))
        .args(args)
        .output()
        .expect("effp runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn eval_json(model: &Path, data: &Path) -> serde_json::Value {
    let out = effp(&[
        "eval",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--device",
        "cpu",
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
    assert!(
        (map - umap).abs() <= 0.02,
        "mAP50-95 {map} vs Ultralytics {umap}"
    );
    assert!(
        (map50 - umap50).abs() <= 0.02,
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
