//! The served OpenAPI document checked by independent tools against the live server:
//! openapi-spec-validator says the document is valid, and schemathesis, generating
//! requests from it (valid and invalid, stateful sequences included), finds no server
//! error and no response its schema does not describe.

mod service;

use std::process::Command;

use effp_testkit::fixtures;
use service::*;

const KEY: &str = "conformance-key-0123456789";
const AGENT_KEY: &str = "conformance-agent-key-0123456789";

/// A tool installed beside the project's Python interpreter.
fn venv_tool(name: &str) -> std::path::PathBuf {
    fixtures::python().parent().unwrap().join(name)
}

fn the_live_api_conforms_to_its_openapi_document(shape: Shape) {
    let server = Deployment::start(
        shape,
        &[],
        &[
            ("EFFP_API_KEYS", &format!("acme:{KEY}")),
            ("EFFP_AGENT_KEYS", &format!("agent:{AGENT_KEY}")),
            // Agents' claims wait for work up to the request timeout (less 2 s).
            ("EFFP_REQUEST_TIMEOUT_SECS", "3"),
        ],
    );
    let base = server.url.clone();
    let token = Some(KEY);

    // Real resources, so that the id-taking operations are exercised beyond 404.
    let model = call(
        "POST",
        &format!("{base}/v1/models"),
        token,
        Some(&fixture_bytes("yolov8t.onnx")),
    )
    .json();
    let model = model["id"].as_str().unwrap().to_string();
    let job = call(
        "POST",
        &format!("{base}/v1/jobs"),
        token,
        Some(
            serde_json::json!({ "model": model, "target": { "flops_ratio": 0.5 }, "device": "cpu" })
                .to_string()
                .as_bytes(),
        ),
    )
    .json();
    let job = job["id"].as_str().unwrap().to_string();
    assert_eq!(wait_for_end(&base, &job, token)["state"], "succeeded");

    let work = tempfile::tempdir().unwrap();
    let document = work.path().join("openapi.json");
    std::fs::write(
        &document,
        call("GET", &format!("{base}/openapi.json"), None, None).body,
    )
    .unwrap();
    let validated = Command::new(fixtures::python())
        .args(["-m", "openapi_spec_validator"])
        .arg(&document)
        .output()
        .unwrap();
    assert!(
        validated.status.success(),
        "openapi-spec-validator: {}{}",
        String::from_utf8_lossy(&validated.stdout),
        String::from_utf8_lossy(&validated.stderr)
    );

    std::fs::write(
        work.path().join("schemathesis.toml"),
        format!(
            r#"headers = {{ Authorization = "Bearer {KEY}" }}

[[operations]]
include-path-regex = "^/v1/models/"
parameters = {{ "path.id" = "{model}" }}

[[operations]]
include-path-regex = "^/v1/jobs/"
parameters = {{ "path.id" = "{job}" }}

[[operations]]
include-path-regex = "^/v1/agent/"
headers = {{ Authorization = "Bearer {AGENT_KEY}" }}
"#
        ),
    )
    .unwrap();
    // Every check but "schema-valid requests are accepted": a well-formed job for a
    // model that does not exist is rightly refused, which no schema can express.
    let run = Command::new(venv_tool("schemathesis"))
        .current_dir(work.path())
        .args(["run", &format!("{base}/openapi.json")])
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ])
        .args(["--max-examples", "40", "--seed", "20261126"])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "schemathesis found problems:\n{report}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let count = |label: &str| {
        report
            .lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|rest| rest.split('/').next())
            .and_then(|n| n.trim().parse::<u32>().ok())
            .unwrap_or_else(|| panic!("no '{label}' in:\n{report}"))
    };
    assert_eq!(
        count("Tested:"),
        count("Selected:"),
        "every operation was tested"
    );
    // The server lived through it.
    assert_eq!(
        call("GET", &format!("{base}/healthz"), None, None).status,
        200
    );
}

crate::on_both_deployments!(the_live_api_conforms_to_its_openapi_document,);
