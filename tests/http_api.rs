//! `effp serve` over real HTTP on loopback: model uploads, listing, download and
//! deletion, pruning jobs run by the in-process worker, problem documents for bad
//! input, tenants and API keys.

mod service;

use std::path::Path;
use std::process::Command;

use effp_testkit::fixtures;
use service::*;

fn graph_flops(path: &Path) -> u64 {
    let (_, report) = effp_graph::analyse_file(path, None).unwrap();
    report.totals.flops
}

fn a_model_is_uploaded_inspected_listed_downloaded_and_deleted(shape: Shape) {
    let server = Deployment::start(shape, &[], &[]);
    let base = &server.url;
    let bytes = fixture_bytes("yolov8t.onnx");

    let created = call(
        "POST",
        &format!("{base}/v1/models?name=y8t.onnx"),
        None,
        Some(&bytes),
    );
    assert_eq!(
        created.status,
        201,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
    let model = created.json();
    let id = model["id"].as_str().unwrap().to_string();
    assert_eq!(created.headers["location"], format!("/v1/models/{id}"));
    assert_eq!(model["name"], "y8t.onnx");
    assert_eq!(model["size"], bytes.len());
    assert_eq!(model["inspect"]["schema"], "effp.inspect/v1");
    assert_eq!(
        model["inspect"]["totals"]["flops"],
        graph_flops(&fixtures::path("yolov8t.onnx"))
    );
    assert!(
        model["inspect"]["channel_groups"]["prunable"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(model["inspect"].get("nodes").is_none(), "no per-node list");
    assert!(model.get("tenant").is_none());

    // The same bytes again: the same model, nothing new stored.
    let again = call("POST", &format!("{base}/v1/models"), None, Some(&bytes));
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["id"], model["id"]);
    assert_eq!(server.objects().len(), 1);

    // As a form part (`curl -F file=@y8t.onnx`): the same content, the same model.
    let (content_type, form) = multipart("file", "y8t.onnx", &bytes);
    let from_form = call_with(
        "POST",
        &format!("{base}/v1/models"),
        None,
        &[("Content-Type", &content_type)],
        Some(&form),
    );
    assert_eq!(from_form.status, 200);
    assert_eq!(from_form.json()["id"], model["id"]);

    let listed = call("GET", &format!("{base}/v1/models"), None, None).json();
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    assert_eq!(listed["items"][0]["id"], model["id"]);
    assert_eq!(
        call("GET", &format!("{base}/v1/models/{id}"), None, None).json(),
        model
    );

    let file = call("GET", &format!("{base}/v1/models/{id}/file"), None, None);
    assert_eq!(file.status, 200);
    assert_eq!(file.body, bytes);
    let etag = file.headers["etag"].clone();
    assert_eq!(etag, format!("\"{}\"", model["sha256"].as_str().unwrap()));
    let mut req = ureq::get(&format!("{base}/v1/models/{id}/file"));
    req = req.set("If-None-Match", &etag);
    assert_eq!(req.call().unwrap().status(), 304);

    assert_eq!(
        call("DELETE", &format!("{base}/v1/models/{id}"), None, None).status,
        204
    );
    call("GET", &format!("{base}/v1/models/{id}"), None, None).problem(404);
    call("DELETE", &format!("{base}/v1/models/{id}"), None, None).problem(404);
    assert!(
        server.objects().is_empty(),
        "the file went with its last model"
    );
    assert_eq!(
        call("GET", &format!("{base}/readyz"), None, None).status,
        200
    );
    assert_eq!(
        call("GET", &format!("{base}/healthz"), None, None).status,
        200
    );
    // Every response carries a request id: the client's own, or a fresh one.
    let fresh = call("GET", &format!("{base}/healthz"), None, None);
    assert_eq!(fresh.headers["x-request-id"].len(), 36, "a UUID");
    let mine = ureq::get(&format!("{base}/v1/models/nope"))
        .set("x-request-id", "pipeline-42")
        .call();
    match mine {
        Err(ureq::Error::Status(404, r)) => {
            assert_eq!(r.header("x-request-id"), Some("pipeline-42"))
        }
        other => panic!("expected 404, got {other:?}"),
    }
}

fn bad_input_gets_a_problem_document_and_stores_nothing(shape: Shape) {
    let server = Deployment::start(shape, &["--max-upload-bytes", "2000000"], &[]);
    let base = &server.url;
    let url = format!("{base}/v1/models");

    let p = call("POST", &url, None, Some(b"these bytes are not a model")).problem(422);
    assert!(
        p["detail"].as_str().unwrap().contains("not an ONNX model"),
        "{p}"
    );
    let bytes = fixture_bytes("yolov8t.onnx");
    call("POST", &url, None, Some(&bytes[..bytes.len() / 2])).problem(422);
    // Too large: refused from the declared length before any byte is read …
    let declared = raw_post_head(&server.url, "/v1/models", 2_000_001);
    assert!(declared.starts_with("HTTP/1.1 413"), "{declared}");
    assert!(declared.contains("application/problem+json") && declared.contains("2000000"));
    // … and, sent chunked without a length, once the stream passes the limit.
    let big = vec![0u8; 2_000_001];
    let chunked = ureq::post(&url).send(std::io::Cursor::new(big));
    match chunked {
        Err(ureq::Error::Status(413, r)) => {
            assert_eq!(r.content_type(), "application/problem+json");
        }
        other => panic!("expected 413, got {other:?}"),
    }
    call("POST", &format!("{url}?name="), None, Some(b"small body")).problem(422);

    assert!(
        server.objects().is_empty(),
        "nothing kept of refused uploads"
    );
    let listed = call("GET", &url, None, None).json();
    assert!(listed["items"].as_array().unwrap().is_empty());

    call("GET", &format!("{url}/mdl_unknown"), None, None).problem(404);
    call("GET", &format!("{url}/mdl_unknown/file"), None, None).problem(404);
    call("GET", &format!("{base}/v2/anything"), None, None).problem(404);
    let p = call("GET", &format!("{url}?limit=0"), None, None).problem(422);
    assert_eq!(p["errors"][0]["path"], "/limit");
    for query in ["offset=-1", "offset=3000000000", "limit=many"] {
        let p = call("GET", &format!("{url}?{query}"), None, None).problem(422);
        let field = query.split('=').next().unwrap();
        assert_eq!(p["errors"][0]["path"], format!("/{field}"), "{p}");
    }
    // Errors made outside the handlers are problem documents too.
    let wrong_method = call("PUT", &url, None, Some(b"x"));
    wrong_method.problem(405);
    assert!(wrong_method.headers["allow"].contains("POST"));
}

fn tenants_see_only_their_own_models_and_keys_are_checked(shape: Shape) {
    let keys = "acme:acme-key-0123456789abcdef,globex:globex-key-0123456789abcdef";
    let server = Deployment::start(shape, &[], &[("EFFP_API_KEYS", keys)]);
    let url = format!("{}/v1/models", server.url);
    let (acme, globex) = (
        Some("acme-key-0123456789abcdef"),
        Some("globex-key-0123456789abcdef"),
    );
    let bytes = fixture_bytes("yolov8t.onnx");

    let missing = call("POST", &url, None, Some(b"onnx bytes would follow"));
    missing.problem(401);
    assert_eq!(missing.headers["www-authenticate"], "Bearer");
    // A client still sending a large upload reads the 401 too, not a broken pipe.
    call("POST", &url, None, Some(&vec![7u8; 8 << 20])).problem(401);
    call("GET", &url, Some("not-a-key-at-all-0000"), None).problem(401);
    assert!(server.objects().is_empty());

    let created = call("POST", &url, acme, Some(&bytes));
    assert_eq!(created.status, 201);
    let id = created.json()["id"].as_str().unwrap().to_string();

    // Another tenant: not found, not forbidden, and nothing it does reaches acme's model.
    call("GET", &format!("{url}/{id}"), globex, None).problem(404);
    call("GET", &format!("{url}/{id}/file"), globex, None).problem(404);
    call("DELETE", &format!("{url}/{id}"), globex, None).problem(404);
    assert!(
        call("GET", &url, globex, None).json()["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(call("GET", &format!("{url}/{id}"), acme, None).status, 200);

    // The same file uploaded by globex is globex's own model; deleting it keeps acme's file.
    let theirs = call("POST", &url, globex, Some(&bytes));
    assert_eq!(theirs.status, 201);
    let their_id = theirs.json()["id"].as_str().unwrap().to_string();
    assert_ne!(their_id, id);
    assert_eq!(
        call("DELETE", &format!("{url}/{their_id}"), globex, None).status,
        204
    );
    assert_eq!(
        call("GET", &format!("{url}/{id}/file"), acme, None).body,
        bytes
    );

    // Jobs: another tenant can neither see acme's job nor use acme's model.
    let jobs = format!("{}/v1/jobs", server.url);
    let spec = format!(r#"{{"model":"{id}","target":{{"flops_ratio":0.5}},"device":"cpu"}}"#);
    let job = call("POST", &jobs, acme, Some(spec.as_bytes()));
    assert_eq!(job.status, 201);
    let job = job.json()["id"].as_str().unwrap().to_string();
    let p = call("POST", &jobs, globex, Some(spec.as_bytes())).problem(422);
    assert_eq!(p["errors"][0]["path"], "/model");
    for path in ["", "/events", "/artifacts", "/artifacts/report.json"] {
        call("GET", &format!("{jobs}/{job}{path}"), globex, None).problem(404);
    }
    call("POST", &format!("{jobs}/{job}/cancel"), globex, Some(b"")).problem(404);
    assert!(
        call("GET", &jobs, globex, None).json()["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(wait_for_end(&server.url, &job, acme)["state"], "succeeded");
}

#[test]
fn without_keys_only_loopback_is_served_and_sigterm_stops_cleanly() {
    let data = tempfile::tempdir().unwrap();
    let refused = Command::new(env!("CARGO_BIN_EXE_effp"))
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(data.path())
        .env_remove("EFFP_API_KEYS")
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("without API keys") && stderr.contains("EFFP_API_KEYS"),
        "{stderr}"
    );

    let bad_key = Command::new(env!("CARGO_BIN_EXE_effp"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .env("EFFP_API_KEYS", "acme:short")
        .output()
        .unwrap();
    assert_eq!(bad_key.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad_key.stderr).contains("at least 16 characters"));

    let mut server = Server::start(&[], &[]);
    let stopped = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let status = server.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "graceful shutdown exits 0");
}

fn an_l1_job_prunes_an_uploaded_model_to_its_target_and_serves_the_result(shape: Shape) {
    let server = Deployment::start(shape, &[], &[]);
    let base = &server.url;
    let bytes = fixture_bytes("yolov8t.onnx");
    let model = call("POST", &format!("{base}/v1/models"), None, Some(&bytes)).json();
    let spec = serde_json::json!({
        "model": model["id"],
        "method": "l1",
        "target": { "flops_ratio": 0.5 },
        "options": { "scope": "layer", "activation_cost": 5000.0 },
    });
    let body = spec.to_string();
    let mut req = ureq::post(&format!("{base}/v1/jobs"));
    req = req.set("Idempotency-Key", "pipeline-run-17");
    let created = req.send_string(&body).unwrap();
    assert_eq!(created.status(), 201);
    let location = created.header("location").unwrap().to_string();
    let job: serde_json::Value = serde_json::from_reader(created.into_reader()).unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(location, format!("/v1/jobs/{id}"));

    // A retried pipeline call with the same key gets the same job, not a second one.
    let mut again = ureq::post(&format!("{base}/v1/jobs"));
    again = again.set("Idempotency-Key", "pipeline-run-17");
    let again = again.send_string(&body).unwrap();
    assert_eq!(again.status(), 200);
    let again: serde_json::Value = serde_json::from_reader(again.into_reader()).unwrap();
    assert_eq!(again["id"], job["id"]);
    // The same key with another request is refused.
    let mut other = ureq::post(&format!("{base}/v1/jobs"));
    other = other.set("Idempotency-Key", "pipeline-run-17");
    let other_spec = serde_json::json!({ "model": model["id"], "target": { "flops_ratio": 0.7 } });
    match other.send_string(&other_spec.to_string()) {
        Err(ureq::Error::Status(422, _)) => {}
        r => panic!("expected 422, got {r:?}"),
    }

    // Followed over Server-Sent Events: the stream ends with the job's success.
    let events = sse(&format!("{base}/v1/jobs/{id}/events"), None);
    let states = states_of(&events);
    assert_eq!(states, ["queued", "running", "succeeded"], "{events:?}");
    assert!(events.iter().any(|e| e.kind == "progress"));
    assert!(events.windows(2).all(|w| w[0].id < w[1].id));
    let last = events.last().unwrap();
    assert!(last.data["artifacts"]["pruned.onnx"]["sha256"].is_string());
    // Resumed with Last-Event-ID: only what came after.
    let rest = sse(&format!("{base}/v1/jobs/{id}/events"), Some(events[1].id));
    assert_eq!(rest.len(), events.len() - 2);
    assert_eq!(rest[0].id, events[2].id);
    let p = call_with(
        "GET",
        &format!("{base}/v1/jobs/{id}/events"),
        None,
        &[("Last-Event-ID", "yesterday")],
        None,
    )
    .problem(422);
    assert_eq!(p["errors"][0]["path"], "/Last-Event-ID");

    let done = wait_for_end(base, &id, None);
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["progress"], 1.0);
    let listed = call(
        "GET",
        &format!("{base}/v1/jobs?state=succeeded"),
        None,
        None,
    )
    .json();
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    assert!(
        call("GET", &format!("{base}/v1/jobs?state=queued"), None, None).json()["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // The pruned ONNX, checked with the graph crate: the FLOPs the job reports.
    let tmp = tempfile::tempdir().unwrap();
    let path = download_artifact(base, &id, "pruned.onnx", tmp.path());
    let before = graph_flops(&fixtures::path("yolov8t.onnx"));
    let after = graph_flops(&path);
    let ratio = after as f64 / before as f64;
    assert!((0.48..=0.5).contains(&ratio), "{ratio}");
    assert_eq!(done["metrics"]["flops_after"], after);
    // The served file runs in onnxruntime and computes what `effp prune` writes with
    // the same settings.
    let cli = tmp.path().join("cli.onnx");
    let out = Command::new(env!("CARGO_BIN_EXE_effp"))
        .args(["prune", fixtures::path("yolov8t.onnx").to_str().unwrap()])
        .args([
            "--method",
            "l1",
            "--target-flops",
            "0.5",
            "--scope",
            "layer",
            "--device",
            "cpu",
            "--out",
        ])
        .arg(&cli)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer = effp_testkit::fixtures::reference(
        "compare",
        &serde_json::json!({ "pairs": [[cli, path]] }),
    );
    assert_eq!(answer[0]["shapes_equal"], true, "{answer}");
    assert!(
        answer[0]["max_rel"].as_f64().unwrap() <= 1e-6,
        "the job's file differs from the command's: {answer}"
    );
    let report = call(
        "GET",
        &format!("{base}/v1/jobs/{id}/artifacts/report.json"),
        None,
        None,
    )
    .json();
    assert_eq!(report["schema"], "effp.prune-report/v1");
    assert_eq!(report["scope"], "layer");
    assert_eq!(report["activation_cost"], 5000.0);
    assert_eq!(report["after"]["flops"], after);
    let names = call("GET", &format!("{base}/v1/jobs/{id}/artifacts"), None, None).json();
    assert!(names["items"]["pruned.onnx"]["sha256"].is_string());
    call(
        "GET",
        &format!("{base}/v1/jobs/{id}/artifacts/other.bin"),
        None,
        None,
    )
    .problem(404);

    // Prometheus metrics count the job and time the requests by route.
    let metrics = server.metrics();
    assert!(
        metrics.contains("effp_jobs{state=\"succeeded\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("effp_queue_depth 0"), "{metrics}");
    assert!(
        metrics.contains("effp_job_duration_seconds_count{method=\"l1\",state=\"succeeded\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("route=\"/v1/jobs/{id}\""), "{metrics}");

    // An ended job cannot be cancelled; deleting the model keeps the job's artifacts.
    call(
        "POST",
        &format!("{base}/v1/jobs/{id}/cancel"),
        None,
        Some(b""),
    )
    .problem(409);
    let model_id = model["id"].as_str().unwrap();
    assert_eq!(
        call(
            "DELETE",
            &format!("{base}/v1/models/{model_id}"),
            None,
            None
        )
        .status,
        204
    );
    let again = call(
        "GET",
        &format!("{base}/v1/jobs/{id}/artifacts/pruned.onnx"),
        None,
        None,
    );
    assert_eq!(again.body, std::fs::read(&path).unwrap());
}

fn invalid_job_requests_name_every_bad_field_and_create_nothing(shape: Shape) {
    let server = Deployment::start(shape, &[], &[]);
    let url = format!("{}/v1/jobs", server.url);
    let p = call("POST", &url, None, Some(b"{not json")).problem(422);
    assert!(!p["errors"].as_array().unwrap().is_empty());
    let p = call(
        "POST",
        &url,
        None,
        Some(br#"{"model":"m","target":{"flops_ratio":0.5},"colour":"red"}"#),
    )
    .problem(422);
    assert_eq!(p["errors"][0]["path"], "/colour");
    let p = call(
        "POST",
        &url,
        None,
        Some(br#"{"model":"m","target":{"flops_ratio":1.5,"flops":10},"options":{"round_to":0,"activation_cost":-1},"device":"tpu","method":"effp","training":{"batch":0,"lr":-1,"prune_share":0,"mosaic":1.5}}"#),
    )
    .problem(422);
    let paths: Vec<&str> = p["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    for expected in [
        "/target",
        "/target/flops_ratio",
        "/options/round_to",
        "/options/activation_cost",
        "/device",
        "/dataset",
        "/training/batch",
        "/training/lr",
        "/training/prune_share",
        "/training/mosaic",
    ] {
        assert!(paths.contains(&expected), "{expected} in {paths:?}");
    }
    let p = call(
        "POST",
        &url,
        None,
        Some(br#"{"model":"mdl_missing","target":{"flops_ratio":0.5}}"#),
    )
    .problem(422);
    assert_eq!(p["errors"][0]["path"], "/model");
    let p = call(
        "POST",
        &url,
        None,
        Some(br#"{"model":"m","dataset":"d","method":"uniform","target":{"flops_ratio":0.5},"options":{"scope":"global"}}"#),
    )
    .problem(422);
    assert_eq!(p["errors"][0]["path"], "/options/scope", "{p}");
    let p = call(
        "POST",
        &url,
        None,
        Some(br#"{"model":"mdl_missing","dataset":"ds_missing","method":"sfp","target":{"flops_ratio":0.5}}"#),
    )
    .problem(422);
    assert_eq!(p["errors"][1]["path"], "/dataset", "{p}");
    assert!(
        call("GET", &url, None, None).json()["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    call("GET", &format!("{url}?state=sleeping"), None, None).problem(422);
    call("GET", &format!("{url}/job_unknown"), None, None).problem(404);
    call(
        "POST",
        &format!("{url}/job_unknown/cancel"),
        None,
        Some(b""),
    )
    .problem(404);
}

fn the_served_openapi_document_is_the_checked_in_one(shape: Shape) {
    let checked_in: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json"))
            .unwrap(),
    )
    .unwrap();
    let printed = std::process::Command::new(env!("CARGO_BIN_EXE_effp"))
        .arg("openapi")
        .output()
        .unwrap();
    let generated: serde_json::Value = serde_json::from_slice(&printed.stdout).unwrap();
    assert!(
        generated == checked_in,
        "openapi/openapi.json is stale: run `make openapi` and commit it"
    );
    let server = Deployment::start(shape, &[], &[]);
    let served = call("GET", &format!("{}/openapi.json", server.url), None, None).json();
    assert_eq!(served, checked_in);
    assert_eq!(served["openapi"], "3.1.0");
    for path in [
        "/v1/models",
        "/v1/models/{id}/file",
        "/v1/datasets",
        "/v1/datasets/{id}",
        "/v1/jobs",
        "/v1/jobs/{id}/events",
    ] {
        assert!(served["paths"].get(path).is_some(), "{path}");
    }
    // Interactive docs, with every asset served by the binary itself.
    let page = call("GET", &format!("{}/docs/", server.url), None, None);
    assert_eq!(page.status, 200);
    let html = String::from_utf8_lossy(&page.body).to_string();
    assert!(html.contains("swagger-ui"), "{html}");
    assert!(
        !html.contains("https://"),
        "no asset from elsewhere: {html}"
    );
    let script = call(
        "GET",
        &format!("{}/docs/swagger-ui-bundle.js", server.url),
        None,
        None,
    );
    assert_eq!(script.status, 200);
    assert!(script.body.len() > 100_000, "the Swagger UI bundle");
    let config = call(
        "GET",
        &format!("{}/docs/swagger-initializer.js", server.url),
        None,
        None,
    );
    assert!(
        String::from_utf8_lossy(&config.body).contains("/docs/openapi.json"),
        "the docs read this server's document"
    );
    let docs_doc = call(
        "GET",
        &format!("{}/docs/openapi.json", server.url),
        None,
        None,
    )
    .json();
    assert_eq!(docs_doc, checked_in);
}

fn a_stalled_upload_is_dropped_with_a_problem_and_nothing_kept(shape: Shape) {
    use std::io::{Read, Write};
    let server = Deployment::start(shape, &["--upload-stall-secs", "1"], &[]);
    let address = server.url.trim_start_matches("http://").to_string();
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    write!(
        stream,
        "POST /v1/models HTTP/1.1\r\nHost: {address}\r\nContent-Length: 100000\r\n\r\nten bytes."
    )
    .unwrap();
    let started = std::time::Instant::now();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("application/problem+json") && answer.contains("upload-stalled"));
    assert!(started.elapsed().as_secs() < 10);
    assert!(server.objects().is_empty());
    assert_eq!(
        server.unfinished_uploads(),
        Vec::<std::path::PathBuf>::new(),
        "the half-received file is removed"
    );
}

crate::on_both_deployments!(
    a_model_is_uploaded_inspected_listed_downloaded_and_deleted,
    bad_input_gets_a_problem_document_and_stores_nothing,
    tenants_see_only_their_own_models_and_keys_are_checked,
    an_l1_job_prunes_an_uploaded_model_to_its_target_and_serves_the_result,
    invalid_job_requests_name_every_bad_field_and_create_nothing,
    the_served_openapi_document_is_the_checked_in_one,
    a_stalled_upload_is_dropped_with_a_problem_and_nothing_kept,
);
