//! A pruning job over HTTP on a model with free input sizes (Ultralytics'
//! `dynamic=True` export): the job names the size to prune at, and the served file
//! keeps its free sizes and runs in onnxruntime at more than one size.

mod service;

use effp_graph::ir::Dim;
use effp_testkit::fixtures;
use service::*;

fn a_job_on_a_dynamic_export_prunes_at_its_input_size_and_serves_a_dynamic_file(shape: Shape) {
    let server = Deployment::start(shape, &[], &[]);
    let base = &server.url;
    let (dynamic, _) = fixtures::dynamic_yolov8t();
    let model_id = upload(base, "models", None, &std::fs::read(&dynamic).unwrap());
    let model = call("GET", &format!("{base}/v1/models/{model_id}"), None, None).json();
    assert_eq!(model["inspect"]["free_input_size"], true, "{model}");

    // Without an input size the job is refused, naming the field and what to give.
    let p = call(
        "POST",
        &format!("{base}/v1/jobs"),
        None,
        Some(
            serde_json::json!({ "model": model_id, "method": "l1", "target": { "flops_ratio": 0.5 } })
                .to_string()
                .as_bytes(),
        ),
    )
    .problem(422);
    assert_eq!(p["errors"][0]["path"], "/input_size", "{p}");
    assert!(
        p["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("free input sizes"),
        "{p}"
    );

    let id = submit_job(
        base,
        None,
        &serde_json::json!({
            "model": model_id,
            "method": "l1",
            "target": { "flops_ratio": 0.5 },
            "input_size": "128x128",
        }),
    );
    let done = wait_for_end(base, &id, None);
    assert_eq!(done["state"], "succeeded", "{done}");
    let tmp = tempfile::tempdir().unwrap();
    let path = download_artifact(base, &id, "pruned.onnx", tmp.path());

    let file = effp_graph::onnx::load_file(&path).unwrap();
    assert!(
        matches!(
            file.graph.inputs[0].dims.as_deref(),
            Some([
                Dim::Symbolic(_),
                Dim::Fixed(3),
                Dim::Symbolic(_),
                Dim::Symbolic(_)
            ])
        ),
        "{:?}",
        file.graph.inputs[0].dims
    );
    let (_, at_128) = effp_graph::analyse_file(&path, Some("128x128".parse().unwrap())).unwrap();
    let (_, original) =
        effp_graph::analyse_file(&dynamic, Some("128x128".parse().unwrap())).unwrap();
    let ratio = at_128.totals.flops as f64 / original.totals.flops as f64;
    assert!(ratio <= 0.5, "{ratio}");
    assert_eq!(done["metrics"]["flops_after"], at_128.totals.flops);

    // onnxruntime runs the served file at two sizes (against itself: shapes and
    // finite outputs; the CLI test compares values with the masked original).
    for (shape, anchors) in [([1, 3, 128, 128], 336), ([2, 3, 160, 96], 315)] {
        let answer = fixtures::reference(
            "compare",
            &serde_json::json!({ "pairs": [[path, path]], "input_shapes": { "images": shape } }),
        );
        assert_eq!(
            answer[0]["shapes"],
            serde_json::json!([[shape[0], 7, anchors]]),
            "{answer}"
        );
        assert_eq!(answer[0]["max_abs"], 0.0, "{answer}");
    }
}

crate::on_both_deployments!(
    a_job_on_a_dynamic_export_prunes_at_its_input_size_and_serves_a_dynamic_file,
);
