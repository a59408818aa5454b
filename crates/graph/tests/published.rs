//! The cost model against the figures Ultralytics publishes and computes.

use effp_graph::analyse_file;
use effp_testkit::fixtures;

#[test]
fn published_detectors_match_ultralytics_params_exactly_and_flops_within_half_a_percent() {
    for &(file, params, gflops) in fixtures::PUBLISHED {
        let (_, report) = analyse_file(&fixtures::path(file), None).unwrap();
        assert_eq!(report.totals.params, params, "{file}: parameters");
        let rel = (report.totals.gflops - gflops).abs() / gflops;
        assert!(
            rel <= 0.005,
            "{file}: {} GFLOPs vs Ultralytics' {gflops} ({:.3}% off)",
            report.totals.gflops,
            rel * 100.0
        );
        // The published table rounds to one decimal (8.7, 6.5, 7.7).
        let published = (gflops * 10.0).round() / 10.0;
        assert_eq!(
            (report.totals.gflops * 10.0).round() / 10.0,
            published,
            "{file}: rounds to the published figure"
        );
        assert!(
            report.totals.complete && report.unsupported_ops.is_empty(),
            "{file}: fully supported"
        );
        assert_eq!(
            report.inputs[0].shape.as_deref(),
            Some(&[1, 3, 640, 640][..])
        );
    }
}

#[test]
fn every_fixture_matches_what_ultralytics_computed_when_exporting_it() {
    let manifest = fixtures::manifest();
    let entries = manifest["fixtures"].as_object().unwrap();
    assert!(
        entries.len() >= 6,
        "manifest lists the published and tiny fixtures"
    );
    for (name, entry) in entries {
        let (_, report) =
            analyse_file(&fixtures::dir().join(entry["file"].as_str().unwrap()), None).unwrap();
        assert_eq!(
            report.totals.params,
            entry["params"].as_u64().unwrap(),
            "{name}: parameters"
        );
        let expected = entry["gflops"].as_f64().unwrap();
        let rel = (report.totals.gflops - expected).abs() / expected;
        assert!(
            rel <= 0.005,
            "{name}: {} GFLOPs vs {expected}",
            report.totals.gflops
        );
        let imgsz: Vec<usize> = entry["imgsz"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(
            report.inputs[0].shape.as_deref().unwrap()[2..],
            imgsz[..],
            "{name}: input size"
        );
    }
}

#[test]
fn shapes_agree_with_onnx_shape_inference_on_every_value() {
    let mut paths: Vec<std::path::PathBuf> =
        fixtures::TINY.iter().map(|f| fixtures::path(f)).collect();
    paths.push(fixtures::path("yolo11n.onnx"));
    let tmp = tempfile::tempdir().unwrap();
    for zoo in effp_testkit::zoo::all() {
        let p = tmp.path().join(format!("{}.onnx", zoo.name));
        std::fs::write(&p, &zoo.bytes).unwrap();
        paths.push(p);
    }
    let request = serde_json::json!({ "models": paths });
    let answers = fixtures::reference("shapes", &request);
    for (path, answer) in paths.iter().zip(answers.as_array().unwrap()) {
        assert!(
            answer["checker_error"].is_null(),
            "{}: onnx.checker: {}",
            path.display(),
            answer["checker_error"]
        );
        let (model, _) = analyse_file(path, None).unwrap();
        let reference = answer["shapes"].as_object().unwrap();
        let mut compared = 0;
        for v in &model.graph.values {
            if let Some(expected) = reference.get(&v.name) {
                let expected: Vec<usize> = expected
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize)
                    .collect();
                assert_eq!(
                    v.shape.as_deref(),
                    Some(&expected[..]),
                    "{}: value '{}'",
                    path.display(),
                    v.name
                );
                compared += 1;
            }
        }
        assert!(
            compared + 2 >= model.graph.nodes.len(),
            "{}: compared only {compared} values",
            path.display()
        );
    }
}

#[test]
fn a_smaller_input_size_scales_the_cost_of_a_convolutional_graph() {
    // The zoo graphs have no size-specific constants, so any input size applies.
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("residual.onnx");
    std::fs::write(&p, effp_testkit::zoo::residual_add()).unwrap();
    let (_, full) = analyse_file(&p, None).unwrap();
    let (_, half) = analyse_file(&p, Some("16x16".parse().unwrap())).unwrap();
    assert_eq!(full.totals.macs, 4 * half.totals.macs);
    assert_eq!(full.totals.params, half.totals.params);
    assert_eq!(half.outputs[0].shape.as_deref(), Some(&[1, 4, 16, 16][..]));
}

#[test]
fn a_static_export_refuses_an_input_size_its_head_cannot_take() {
    let err = analyse_file(
        &fixtures::path("yolov8t.onnx"),
        Some("96x96".parse().unwrap()),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("node '"), "{msg}");
    assert!(
        msg.contains("broadcast") || msg.contains("reshape"),
        "{msg}"
    );
}
