//! The OpenAPI document is a contract generated clients can use: a Python client
//! generated from `openapi/openapi.json` by openapi-python-client uploads a model and a
//! dataset (raw body and multipart form), creates a job, follows it to its end and
//! downloads the pruned model, against a live `effp serve`.

mod service;

use std::process::Command;

use effp_testkit::fixtures;
use service::*;

const KEY: &str = "generated-client-key-0123456789";

fn a_client_generated_from_the_openapi_document_runs_a_job_end_to_end(shape: Shape) {
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("config.yaml");
    // No formatter hooks: the generated code is used as written.
    std::fs::write(&config, "post_hooks: []\n").unwrap();
    let document = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi/openapi.json");
    let generator = fixtures::python()
        .parent()
        .unwrap()
        .join("openapi-python-client");
    let generated = Command::new(generator)
        .args(["generate", "--meta", "none", "--output-path"])
        .arg(work.path().join("effp_client"))
        .arg("--path")
        .arg(&document)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        generated.status.success(),
        "openapi-python-client: {}{}",
        String::from_utf8_lossy(&generated.stdout),
        String::from_utf8_lossy(&generated.stderr)
    );
    // The generator warns about every part of the document it could not turn into code.
    let warnings = String::from_utf8_lossy(&generated.stdout).to_string()
        + &String::from_utf8_lossy(&generated.stderr);
    assert!(
        !warnings.contains("Warning"),
        "the generator skipped parts of the document: {warnings}"
    );

    let set = small_dataset(work.path());
    let archive = work.path().join("set.zip");
    std::fs::write(&archive, zip_dir(&set)).unwrap();
    let server = Deployment::start(shape, &[], &[("EFFP_API_KEYS", &format!("acme:{KEY}"))]);
    let run = Command::new(fixtures::python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/support/generated_client.py"
        ))
        .arg(work.path())
        .arg(&server.url)
        .arg(KEY)
        .arg(fixtures::path("trained.onnx"))
        .arg(&archive)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "the generated client failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();

    // Raw body first (created), then the same bytes as a form (the same record).
    assert_eq!(seen["model"]["raw"][0], 201, "{seen}");
    assert_eq!(seen["model"]["multipart"][0], 200, "{seen}");
    assert_eq!(seen["model"]["raw"][1], seen["model"]["multipart"][1]);
    assert_eq!(seen["dataset"]["raw"][0], 201, "{seen}");
    assert_eq!(seen["dataset"]["multipart"][0], 200, "{seen}");
    assert_eq!(seen["dataset"]["raw"][1], seen["dataset"]["multipart"][1]);
    assert!(seen["dataset"]["train_images"].as_u64().unwrap() > 0);
    assert_eq!(seen["job"]["state"], "succeeded", "{seen}");
    assert_eq!(seen["artifact"]["type"], "File");

    // What the client downloaded is the pruned model the job reports.
    let job = call(
        "GET",
        &format!(
            "{}/v1/jobs/{}",
            server.url,
            seen["job"]["id"].as_str().unwrap()
        ),
        Some(KEY),
        None,
    )
    .json();
    let pruned = seen["artifact"]["path"].as_str().unwrap();
    let inspected = Command::new(env!("CARGO_BIN_EXE_effp"))
        .args(["inspect", "--json", "--summary", pruned])
        .output()
        .unwrap();
    assert!(
        inspected.status.success(),
        "{}",
        String::from_utf8_lossy(&inspected.stderr)
    );
    let totals: serde_json::Value = serde_json::from_slice(&inspected.stdout).unwrap();
    assert_eq!(
        totals["totals"]["flops"], job["metrics"]["flops_after"],
        "{job}"
    );
}

crate::on_both_deployments!(a_client_generated_from_the_openapi_document_runs_a_job_end_to_end,);
