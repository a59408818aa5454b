//! `effp prune` with the trained methods, as a user runs it: EFFP and the baselines
//! through one command line, their reports, Ctrl-C that checkpoints, and --resume.

mod common;

use common::{effp, text};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use effp_testkit::fixtures;

fn report(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `effp prune` on the trained fixture with the synthetic data, plus `extra`.
fn prune(dir: &Path, name: &str, extra: &[&str]) -> (Output, std::path::PathBuf) {
    let out = dir.join(format!("{name}.onnx"));
    let json = dir.join(format!("{name}.json"));
    let data = fixtures::dir().join("synth");
    let model = fixtures::path("trained.onnx");
    let mut args = vec![
        "prune",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--report",
        json.to_str().unwrap(),
        "--device",
        "cpu",
    ];
    args.extend_from_slice(extra);
    (effp(&args), json)
}

/// `effp prune --method METHOD EXTRA…`, which must succeed; its report.
fn pruned_report(dir: &Path, method: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["--method", method];
    args.extend_from_slice(extra);
    let (run, json) = prune(dir, method, &args);
    assert!(run.status.success(), "{method}: {}", text(&run.stderr));
    report(&json)
}

#[test]
fn prune_with_effp_trains_reports_its_curve_and_accuracy() {
    let tmp = tempfile::tempdir().unwrap();
    let (run, json) = prune(
        tmp.path(),
        "effp",
        &[
            "--method",
            "effp",
            "--target-flops",
            "0.7",
            "--steps",
            "16",
            "--interval",
            "2",
            "--batch",
            "4",
        ],
    );
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert!(
        text(&run.stdout).contains("mAP50-95 "),
        "{}",
        text(&run.stdout)
    );
    let r = report(&json);
    assert_eq!(r["method"], "effp");
    let curve = r["curve"].as_array().unwrap();
    assert_eq!(curve.len(), 16);
    assert!(curve.last().unwrap()["flops_ratio"].as_f64().unwrap() <= 0.7);
    assert!(r["accuracy"]["before"]["map50_95"].as_f64().unwrap() > 0.3);
    assert!(r["accuracy"]["after"]["map50_95"].as_f64().is_some());
    assert!(
        (0.68..=0.7).contains(&r["flops_ratio"].as_f64().unwrap()),
        "{}",
        r["flops_ratio"]
    );
    // The data has labels, so by default the student also learns from them.
    assert_eq!(r["training"]["labels"]["used"], "yes", "{}", r["training"]);
    assert!(curve.iter().all(|s| s["detection_loss"].as_f64().is_some()));
    // EFFP keeps a quarter of every feature map unless told otherwise; the others none.
    assert_eq!(r["min_fraction"], 0.25);
    // EFFP's own defaults: within each layer, first-order criterion, mask settled in
    // the first 30% of the steps.
    assert_eq!(r["scope"], "layer");
    assert_eq!(r["training"]["criterion"], "taylor", "{}", r["training"]);
    assert_eq!(r["training"]["prune_share"], 0.3, "{}", r["training"]);
    // The fixture has a YOLOv8 head, so it is distilled as distributions.
    assert_eq!(r["training"]["distill"], "foreground", "{}", r["training"]);
    let last_change = curve
        .windows(2)
        .rposition(|w| w[0]["active_groups"] != w[1]["active_groups"])
        .map_or(0, |i| i + 1);
    assert!(
        last_change <= 5,
        "the mask changed at step {last_change} of 16"
    );
    // Label-free, EFFP ranks across the network by the curvature estimate over the
    // longer schedule.
    let label_free = pruned_report(
        tmp.path(),
        "effp",
        &[
            "--target-flops",
            "0.7",
            "--steps",
            "4",
            "--batch",
            "2",
            "--label-weight",
            "0",
        ],
    );
    assert_eq!(label_free["training"]["labels"]["used"], "no");
    assert_eq!(label_free["scope"], "global");
    assert_eq!(label_free["training"]["criterion"], "curvature");
    assert_eq!(label_free["training"]["prune_share"], 0.7);
    assert_eq!(label_free["training"]["start"], "full");
    assert_eq!(label_free["training"]["distill"], "foreground");
    // By default the budget falls from the original; asked to start at the target,
    // every step of the curve is at the target's cost.
    assert_eq!(r["training"]["start"], "full", "{}", r["training"]);
    assert!(curve[0]["budget"].as_f64().unwrap() > 0.7, "{}", curve[0]);
    let at_target = pruned_report(
        tmp.path(),
        "effp",
        &[
            "--target-flops",
            "0.7",
            "--steps",
            "4",
            "--batch",
            "2",
            "--start",
            "target",
        ],
    );
    assert_eq!(at_target["training"]["start"], "target");
    let curve = at_target["curve"].as_array().unwrap();
    assert!(
        curve
            .iter()
            .all(|s| s["flops_ratio"].as_f64().unwrap() <= 0.7),
        "{curve:?}"
    );
    // Ultralytics' augmentation by default, except mosaics (they cost accuracy here).
    assert_eq!(r["training"]["mosaic"], 0.0, "{}", r["training"]);

    let (run, _) = prune(
        tmp.path(),
        "bad",
        &[
            "--method",
            "effp",
            "--target-flops",
            "0.7",
            "--mosaic",
            "1.5",
        ],
    );
    assert_eq!(run.status.code(), Some(1));
    assert!(
        text(&run.stderr).contains("--mosaic must be in [0, 1], got 1.5"),
        "{}",
        text(&run.stderr)
    );
}

#[test]
fn every_baseline_runs_through_the_same_command_and_reports_its_training() {
    let tmp = tempfile::tempdir().unwrap();
    for method in ["sfp", "progressive", "uniform", "random", "l1"] {
        let r = pruned_report(
            tmp.path(),
            method,
            &[
                "--target-flops",
                "0.7",
                "--steps",
                "6",
                "--batch",
                "2",
                "--stages",
                "2",
            ],
        );
        assert_eq!(r["method"], method);
        let scope = if method == "uniform" {
            "layer"
        } else {
            "global"
        };
        assert_eq!(r["scope"], scope, "{method}");
        assert_eq!(r["min_fraction"], 0.0, "{method}");
        assert_eq!(r["training"]["prune_share"], 0.7, "{method}");
        assert_eq!(r["training"]["steps"], 6, "{method}");
        assert_eq!(r["curve"].as_array().unwrap().len(), 6, "{method}");
        let ratio = r["flops_ratio"].as_f64().unwrap();
        assert!((0.68..=0.7).contains(&ratio), "{method}: {ratio}");
        assert!(r["accuracy"]["after"]["map50_95"].as_f64().is_some());
        assert!(
            !tmp.path().join(format!("{method}.onnx.ckpt")).exists(),
            "{method}: the default checkpoint is removed after success"
        );
    }
    // l1 without fine-tuning trains nothing.
    let (run, json) = prune(
        tmp.path(),
        "oneshot",
        &["--method", "l1", "--target-flops", "0.7", "--steps", "0"],
    );
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert!(report(&json).get("training").is_none());

    // Uniform is per layer by definition.
    let run = effp(&[
        "prune",
        fixtures::path("trained.onnx").to_str().unwrap(),
        "--method",
        "uniform",
        "--scope",
        "global",
        "--target-flops",
        "0.7",
        "--data",
        fixtures::dir().join("synth").to_str().unwrap(),
        "--out",
        tmp.path().join("x.onnx").to_str().unwrap(),
    ]);
    assert_eq!(run.status.code(), Some(1));
    assert!(
        text(&run.stderr).contains("--scope global does not fit method uniform"),
        "{}",
        text(&run.stderr)
    );

    // The trained methods need images.
    for method in ["effp", "sfp"] {
        let run = effp(&[
            "prune",
            fixtures::path("trained.onnx").to_str().unwrap(),
            "--method",
            method,
            "--target-flops",
            "0.7",
            "--out",
            tmp.path().join("x.onnx").to_str().unwrap(),
        ]);
        assert_eq!(run.status.code(), Some(1));
        let stderr = text(&run.stderr);
        assert!(
            stderr.contains(&format!("--method {method} trains on images"))
                && stderr.contains("pass --data"),
            "{stderr}"
        );
    }
}

#[test]
fn ctrl_c_checkpoints_and_resume_finishes_the_same_run() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("effp.onnx");
    let ckpt = tmp.path().join("effp.ckpt");
    let json = tmp.path().join("effp.json");
    let data = fixtures::dir().join("synth");
    let model = fixtures::path("trained.onnx");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "prune",
            model.to_str().unwrap(),
            "--method",
            "effp",
            "--target-flops",
            "0.6",
            "--data",
            data.to_str().unwrap(),
            "--steps",
            "120",
            "--batch",
            "2",
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--checkpoint-every",
            "2",
            "--out",
            out.to_str().unwrap(),
            "--report",
            json.to_str().unwrap(),
            "--device",
            "cpu",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let child = Command::new(env!("CARGO_BIN_EXE_effp"))
        .args(args(&[]))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !ckpt.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let interrupt = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupt.success());
    let stopped = child.wait_with_output().unwrap();
    assert_eq!(
        stopped.status.code(),
        Some(130),
        "{}",
        text(&stopped.stderr)
    );
    let stderr = text(&stopped.stderr);
    assert!(stderr.contains("--resume"), "{stderr}");
    assert!(!out.exists(), "an interrupted run writes no model");

    // Other settings do not continue this run.
    let wrong = effp(
        &args(&["--resume", ckpt.to_str().unwrap(), "--lr", "0.01"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_eq!(wrong.status.code(), Some(1));
    assert!(
        text(&wrong.stderr).contains("different settings"),
        "{}",
        text(&wrong.stderr)
    );

    // Resuming finishes it: the curve is whole and the step it resumed from is reported.
    let resume = args(&["--resume", ckpt.to_str().unwrap()]);
    let done = effp(&resume.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(done.status.success(), "{}", text(&done.stderr));
    let r = report(&json);
    let from = r["training"]["resumed_from_step"].as_u64().unwrap();
    assert!(from >= 2, "{from}");
    let curve = r["curve"].as_array().unwrap();
    assert_eq!(curve.len(), 120);
    assert!(curve.iter().enumerate().all(|(i, c)| c["step"] == i));
    assert!(out.exists());
    assert!(
        ckpt.exists(),
        "an explicit checkpoint is the user's to delete"
    );
}

#[test]
fn bench_step_times_a_masked_training_step_against_a_plain_one() {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("step.json");
    let run = effp(&[
        "bench",
        "step",
        fixtures::path("yolov8t.onnx").to_str().unwrap(),
        "--batch",
        "2",
        "--iters",
        "2",
        "--warmup",
        "1",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let stdout = text(&run.stdout);
    assert!(
        stdout.contains("masked step") && stdout.contains("masked / plain"),
        "{stdout}"
    );
    let r = report(&json);
    let timings = r["timings"].as_array().unwrap();
    assert_eq!(timings.len(), 2);
    assert!(
        timings
            .iter()
            .all(|t| t["median_ms"].as_f64().unwrap() > 0.0)
    );
    assert!(r["masked_over_plain"].as_f64().unwrap() > 0.0);
}

#[test]
fn a_short_effp_run_beats_a_random_mask_of_the_same_flops_by_a_clear_margin() {
    // 60 steps at 0.5 FLOPs, seed 0 (measured: effp 0.222,
    // random 0.010 mAP50-95). A method that picked groups at random would fail both
    // the floor and the margin.
    let tmp = tempfile::tempdir().unwrap();
    let map = |method: &str| {
        let r = pruned_report(
            tmp.path(),
            method,
            &[
                "--target-flops",
                "0.5",
                "--steps",
                "60",
                "--batch",
                "8",
                "--seed",
                "0",
            ],
        );
        assert!((0.48..=0.5).contains(&r["flops_ratio"].as_f64().unwrap()));
        (
            r["accuracy"]["after"]["map50_95"].as_f64().unwrap(),
            r["note"].as_str().unwrap_or_default().to_string(),
        )
    };
    let ((effp, _), (random, note)) = (map("effp"), map("random"));
    assert!(effp >= 0.15, "EFFP collapsed: mAP50-95 {effp:.4}");
    assert!(
        effp - random >= 0.1,
        "EFFP {effp:.4} is not clearly above a random mask {random:.4}"
    );
    // The collapsed model's report says so, and what to do.
    assert!(
        note.contains("keeps only") && note.contains("60 training steps did not recover"),
        "{note}"
    );
    // A run that keeps the accuracy says nothing of the kind.
    let r = pruned_report(
        tmp.path(),
        "effp",
        &["--target-flops", "0.97", "--steps", "2", "--batch", "2"],
    );
    let a = &r["accuracy"];
    assert!(
        a["after"]["map50_95"].as_f64().unwrap() >= 0.5 * a["before"]["map50_95"].as_f64().unwrap()
    );
    assert!(r["note"].is_null(), "{}", r["note"]);
}

/// A dataset whose classes the model's output does not carry is refused before any
/// training (the run would otherwise fail only when scoring, after the work), and no
/// model is written.
#[test]
fn a_dataset_with_other_classes_is_refused_before_training() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("five-classes");
    std::fs::create_dir(&data).unwrap();
    let synth = fixtures::dir().join("synth");
    for dir in ["images", "labels"] {
        std::os::unix::fs::symlink(synth.join(dir), data.join(dir)).unwrap();
    }
    std::fs::write(
        data.join("data.yaml"),
        "train: images/train\nval: images/val\nnames: [a, b, c, d, e]\n",
    )
    .unwrap();
    let out = tmp.path().join("pruned.onnx");
    let model = fixtures::path("trained.onnx");
    let run = effp(&[
        "prune",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--target-flops",
        "0.7",
        "--steps",
        "1000",
        "--out",
        out.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert_eq!(run.status.code(), Some(1), "{}", text(&run.stderr));
    let stderr = text(&run.stderr);
    assert!(
        stderr.contains("does not fit the model (5 classes)")
            && stderr.contains("nothing was trained"),
        "{stderr}"
    );
    assert!(!out.exists(), "no model is written");
}

#[test]
fn the_neck_and_foreground_distillation_train_and_say_so() {
    let tmp = tempfile::tempdir().unwrap();
    for distill in ["neck", "foreground"] {
        let r = pruned_report(
            tmp.path(),
            "effp",
            &[
                "--target-flops",
                "0.7",
                "--steps",
                "6",
                "--batch",
                "2",
                "--prune-share",
                "0.5",
                "--distill",
                distill,
            ],
        );
        assert_eq!(r["training"]["distill"], distill, "{}", r["training"]);
        let curve = r["curve"].as_array().unwrap();
        // Before the first step the student is the original: nothing to distil.
        let first = curve[0]["loss"].as_f64().unwrap();
        assert!(first.abs() < 1e-6, "{distill}: {first}");
        let later = curve[5]["loss"].as_f64().unwrap();
        assert!(later > 1e-6 && later.is_finite(), "{distill}: {later}");
        assert!(curve[5]["flops_ratio"].as_f64().unwrap() <= 0.7);
    }
}
