//! A hostile tenant with a valid key: every attack is answered with a problem
//! document, keeps nothing, and leaves the same server process answering with flat
//! memory. Races on one object are run in loops.

mod service;

use std::io::Write;
use std::path::Path;

use effp_testkit::builder::ModelBuilder;
use service::*;

const KEYS: &str = "acme:acme-key-0123456789abcdef,globex:globex-key-0123456789abcdef";
const ACME: Option<&str> = Some("acme-key-0123456789abcdef");
const GLOBEX: Option<&str> = Some("globex-key-0123456789abcdef");

/// A model whose input declares `dims` and that applies Relu.
fn relu_model(dims: &[i64]) -> Vec<u8> {
    let mut b = ModelBuilder::new("bomb", 0);
    let x = b.input("x", dims);
    let y = b.op("Relu", &[&x], vec![]);
    b.finish_as(&y, "y", dims)
}

/// A .tar.gz holding `files` (path, bytes).
fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (name, bytes) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, name, *bytes).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

/// A .zip holding `files` in order, names written as given.
fn zip(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default();
    for (name, bytes) in files {
        z.start_file(*name, opts).unwrap();
        z.write_all(bytes).unwrap();
    }
    z.finish().unwrap().into_inner()
}

/// A small real dataset (images and labels from `effp synth`) as archive entries.
fn synth_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let out = dir.join("set");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_effp"))
        .args(["synth", "--images", "4", "--imgsz", "64", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(status.status.success());
    files_of(&out)
}

/// The API processes' resident memory after it has settled.
fn settled_rss(server: &Deployment) -> u64 {
    std::thread::sleep(std::time::Duration::from_millis(300));
    server.api_pids().into_iter().map(rss_bytes).sum()
}

fn hostile_models_archives_and_jobs_are_refused_and_the_server_stays_up(shape: Shape) {
    let server = Deployment::start(
        shape,
        &[],
        &[("EFFP_API_KEYS", KEYS), ("EFFP_JOB_MEMORY_LIMIT", "2GiB")],
    );
    let base = &server.url;
    let pids = server.api_pids();
    let models = format!("{base}/v1/models");
    let datasets = format!("{base}/v1/datasets");
    // Warm up the paths the attacks take, then measure.
    let warm = call("POST", &models, ACME, Some(&fixture_bytes("yolov8t.onnx")));
    assert_eq!(warm.status, 201);
    assert_eq!(
        call(
            "DELETE",
            &format!("{models}/{}", warm.json()["id"].as_str().unwrap()),
            ACME,
            None
        )
        .status,
        204
    );
    let idle = settled_rss(&server);

    // The slot bomb: 2^40 channels in a 100-byte file once aborted the process; 2^30
    // and 2^32 filled memory.
    for channels in [1i64 << 40, 1 << 32, 1 << 30] {
        let bytes = relu_model(&[1, channels, 1, 1]);
        assert!(bytes.len() < 200, "{} bytes", bytes.len());
        let p = call("POST", &models, ACME, Some(&bytes)).problem(422);
        let detail = p["detail"].as_str().unwrap();
        assert!(
            detail.contains("'x'") && detail.contains("at most"),
            "{detail}"
        );
    }
    // Huge declared image and tensor sizes.
    let p = call(
        "POST",
        &models,
        ACME,
        Some(&relu_model(&[1, 3, 100_000, 100_000])),
    )
    .problem(422);
    assert!(p["detail"].as_str().unwrap().contains("at most"), "{p}");
    let p = call(
        "POST",
        &models,
        ACME,
        Some(&relu_model(&[1 << 20, 1 << 20, 64, 64])),
    )
    .problem(422);
    assert!(p["detail"].as_str().unwrap().contains("at most"), "{p}");

    // A YAML alias bomb in data.yaml: nine levels of ten aliases.
    let dir = tempfile::tempdir().unwrap();
    let mut files = synth_files(dir.path());
    let mut bomb =
        String::from("names: [circle, square, triangle]\na: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for level in 1..9u8 {
        let (prev, name) = ((b'a' + level - 1) as char, (b'a' + level) as char);
        bomb.push_str(&format!(
            "{name}: &{name} [{}]\n",
            vec![format!("*{prev}"); 10].join(", ")
        ));
    }
    for (name, bytes) in files.iter_mut() {
        if name == "data.yaml" {
            *bytes = bomb.clone().into_bytes();
        }
    }
    let entries: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    let p = call("POST", &datasets, ACME, Some(&tar_gz(&entries))).problem(422);
    assert!(p["detail"].as_str().unwrap().contains("alias"), "{p}");

    // Archives whose entries collide (a file `a`, then `a/b`) or nest too deep.
    let p = call(
        "POST",
        &datasets,
        ACME,
        Some(&zip(&[("a", b"x"), ("a/b", b"y")])),
    )
    .problem(422);
    assert!(p["detail"].as_str().unwrap().contains("'a/b'"), "{p}");
    let p = call(
        "POST",
        &datasets,
        ACME,
        Some(&zip(&[("a/b", b"y"), ("a", b"x")])),
    )
    .problem(422);
    assert_eq!(p["type"], "https://effp.dev/problems/unsafe-archive", "{p}");
    let deep = format!("{}f.txt", "d/".repeat(60));
    let p = call(
        "POST",
        &datasets,
        ACME,
        Some(&tar_gz(&[(deep.as_str(), b"x")])),
    )
    .problem(422);
    assert!(p["detail"].as_str().unwrap().contains("deep"), "{p}");
    let long = format!("{}/f.txt", "n".repeat(300));
    call(
        "POST",
        &datasets,
        ACME,
        Some(&zip(&[(long.as_str(), b"x")])),
    )
    .problem(422);

    // A job larger than the job memory budget is refused up front with the sizes
    // that would fit.
    let model = call("POST", &models, ACME, Some(&fixture_bytes("yolov8t.onnx")));
    assert_eq!(model.status, 201);
    let model_id = model.json()["id"].as_str().unwrap().to_string();
    let spec = serde_json::json!({
        "model": model_id, "target": {"flops_ratio": 0.5}, "input_size": "8192x8192", "device": "cpu"
    });
    let p = call(
        "POST",
        &format!("{base}/v1/jobs"),
        ACME,
        Some(spec.to_string().as_bytes()),
    )
    .problem(422);
    assert_eq!(
        p["type"], "https://effp.dev/problems/over-memory-budget",
        "{p}"
    );
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("EFFP_JOB_MEMORY_LIMIT"),
        "{p}"
    );
    let hint = p["errors"][0]["message"].as_str().unwrap();
    assert_eq!(p["errors"][0]["path"], "/input_size");
    // The hint is an input size that the same check accepts.
    let side: String = hint
        .split("about ")
        .nth(1)
        .unwrap()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let fits = serde_json::json!({
        "model": model_id, "target": {"flops_ratio": 0.5}, "input_size": format!("{side}x{side}"), "device": "cpu"
    });
    let accepted = call(
        "POST",
        &format!("{base}/v1/jobs"),
        ACME,
        Some(fits.to_string().as_bytes()),
    );
    assert_eq!(
        accepted.status,
        201,
        "{hint}: {}",
        String::from_utf8_lossy(&accepted.body)
    );
    let accepted_id = accepted.json()["id"].as_str().unwrap().to_string();
    call(
        "POST",
        &format!("{base}/v1/jobs/{accepted_id}/cancel"),
        ACME,
        Some(b""),
    );
    wait_for_end(base, &accepted_id, ACME);

    // The scheme of the Authorization header is case-insensitive.
    let lower = call_with(
        "GET",
        &models,
        None,
        &[("Authorization", "bearer acme-key-0123456789abcdef")],
        None,
    );
    assert_eq!(lower.status, 200);
    let upper = call_with(
        "GET",
        &models,
        None,
        &[("Authorization", "BEARER acme-key-0123456789abcdef")],
        None,
    );
    assert_eq!(upper.status, 200);
    call_with(
        "GET",
        &models,
        None,
        &[("Authorization", "Basic acme-key-0123456789abcdef")],
        None,
    )
    .problem(401);

    // Nothing of the refused uploads was kept; the same process still answers, and
    // its memory is where it was.
    assert_eq!(server.objects().len(), 1, "only the accepted model's file");
    assert!(server.scratch().is_empty(), "nothing left unpacked");
    assert_eq!(server.api_pids(), pids);
    assert!(pids.iter().all(|&pid| alive(pid)));
    assert_eq!(
        call("GET", &format!("{base}/healthz"), None, None).status,
        200
    );
    let after = settled_rss(&server);
    assert!(
        after < idle + (100 << 20),
        "RSS grew from {} MB to {} MB",
        idle >> 20,
        after >> 20
    );
}

fn responses_carry_security_headers_and_safe_file_names(shape: Shape) {
    let server = Deployment::start(shape, &[], &[("EFFP_API_KEYS", KEYS)]);
    let base = &server.url;
    let name = "mo\"del\\ é.onnx";
    let encoded: String = name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'.' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let created = call(
        "POST",
        &format!("{base}/v1/models?name={encoded}"),
        ACME,
        Some(&fixture_bytes("yolov8t.onnx")),
    );
    assert_eq!(
        created.status,
        201,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
    assert_eq!(created.json()["name"], name);
    let id = created.json()["id"].as_str().unwrap().to_string();
    let file = call("GET", &format!("{base}/v1/models/{id}/file"), ACME, None);
    assert_eq!(file.status, 200);
    assert_eq!(
        file.headers["content-disposition"],
        "attachment; filename=\"mo_del_ _.onnx\"; filename*=UTF-8''mo%22del%5C%20%C3%A9.onnx"
    );
    for reply in [&created, &file] {
        assert_eq!(reply.headers["x-content-type-options"], "nosniff");
        assert_eq!(reply.headers["cache-control"], "private, no-store");
    }
    let refused = call("GET", &format!("{base}/v1/models/mdl_none"), ACME, None);
    refused.problem(404);
    assert_eq!(refused.headers["cache-control"], "private, no-store");
    let docs = call("GET", &format!("{base}/docs/"), None, None);
    assert_eq!(docs.status, 200);
    let csp = &docs.headers["content-security-policy"];
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert_eq!(docs.headers["x-content-type-options"], "nosniff");
}

fn concurrent_uploads_deletes_and_idempotent_submissions_stay_consistent(shape: Shape) {
    let server = Deployment::start(shape, &[], &[("EFFP_API_KEYS", KEYS)]);
    let base = server.url.clone();
    let models = format!("{base}/v1/models");
    let bytes = fixture_bytes("yolov8t.onnx");

    // One tenant deletes content while another uploads the same bytes: the upload's
    // record always has its file.
    for round in 0..50 {
        let a = call("POST", &models, ACME, Some(&bytes));
        assert_eq!(a.status, 201, "round {round}");
        let a_id = a.json()["id"].as_str().unwrap().to_string();
        let (delete, upload) = std::thread::scope(|s| {
            let d = s.spawn(|| call("DELETE", &format!("{models}/{a_id}"), ACME, None).status);
            let u = s.spawn(|| call("POST", &models, GLOBEX, Some(&bytes)));
            (d.join().unwrap(), u.join().unwrap())
        });
        assert_eq!(delete, 204);
        assert_eq!(
            upload.status,
            201,
            "round {round}: {}",
            String::from_utf8_lossy(&upload.body)
        );
        let b_id = upload.json()["id"].as_str().unwrap().to_string();
        let file = call("GET", &format!("{models}/{b_id}/file"), GLOBEX, None);
        assert_eq!(
            file.status,
            200,
            "round {round}: {}",
            String::from_utf8_lossy(&file.body)
        );
        assert_eq!(file.body, bytes);
        assert_eq!(
            call("DELETE", &format!("{models}/{b_id}"), GLOBEX, None).status,
            204
        );
        assert!(
            server.objects().is_empty(),
            "round {round}: the last delete removes the file"
        );
    }

    // The same file uploaded twice at once by one tenant: one record.
    for round in 0..10 {
        let (first, second) = std::thread::scope(|s| {
            let a = s.spawn(|| call("POST", &models, ACME, Some(&bytes)));
            let b = s.spawn(|| call("POST", &models, ACME, Some(&bytes)));
            (a.join().unwrap(), b.join().unwrap())
        });
        let mut statuses = [first.status, second.status];
        statuses.sort();
        assert_eq!(statuses, [200, 201], "round {round}");
        assert_eq!(first.json()["id"], second.json()["id"]);
        let listed = call("GET", &models, ACME, None).json();
        assert_eq!(listed["items"].as_array().unwrap().len(), 1);
        let id = first.json()["id"].as_str().unwrap().to_string();
        assert_eq!(
            call("DELETE", &format!("{models}/{id}"), ACME, None).status,
            204
        );
    }

    // Two requests with one Idempotency-Key at once: one job, no 500.
    let model = call("POST", &models, ACME, Some(&bytes)).json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let spec = serde_json::json!({"model": model, "target": {"flops_ratio": 0.5}, "device": "cpu"})
        .to_string();
    let jobs = format!("{base}/v1/jobs");
    for round in 0..20 {
        let key = format!("retry-{round}");
        let (first, second) = std::thread::scope(|s| {
            let send = || {
                call_with(
                    "POST",
                    &jobs,
                    ACME,
                    &[("Idempotency-Key", &key)],
                    Some(spec.as_bytes()),
                )
            };
            let a = s.spawn(send);
            let b = s.spawn(send);
            (a.join().unwrap(), b.join().unwrap())
        });
        let mut statuses = [first.status, second.status];
        statuses.sort();
        assert_eq!(
            statuses,
            [200, 201],
            "round {round}: {}",
            String::from_utf8_lossy(&second.body)
        );
        assert_eq!(first.json()["id"], second.json()["id"]);
    }
    let listed = call("GET", &format!("{jobs}?limit=500"), ACME, None).json();
    assert_eq!(listed["items"].as_array().unwrap().len(), 20);
}

fn quotas_refuse_with_problem_documents(shape: Shape) {
    let server = Deployment::start(
        shape,
        &[
            "--max-queued-jobs",
            "2",
            "--max-training-steps",
            "500",
            "--workers",
            "0",
        ],
        &[
            ("EFFP_API_KEYS", KEYS),
            ("EFFP_MAX_STORED_BYTES", "1500KiB"),
        ],
    );
    let base = &server.url;
    let bytes = fixture_bytes("yolov8t.onnx");
    let created = call("POST", &format!("{base}/v1/models"), ACME, Some(&bytes));
    assert_eq!(created.status, 201);
    let model = created.json()["id"].as_str().unwrap().to_string();
    // Storage: another model would pass the tenant's bytes.
    let other = fixture_bytes("yolov5t.onnx");
    let p = call("POST", &format!("{base}/v1/models"), ACME, Some(&other)).problem(413);
    assert_eq!(p["type"], "https://effp.dev/problems/quota-exceeded");
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("EFFP_MAX_STORED_BYTES")
    );
    // Another tenant has its own room.
    let globex = call("POST", &format!("{base}/v1/models"), GLOBEX, Some(&other));
    assert_eq!(globex.status, 201);
    // Three different models at once, each fitting alone: one is kept, the others are
    // refused when they are recorded, and nothing of them is left behind.
    let globex_model = globex.json()["id"].as_str().unwrap().to_string();
    assert_eq!(
        call(
            "DELETE",
            &format!("{base}/v1/models/{globex_model}"),
            GLOBEX,
            None
        )
        .status,
        204
    );
    let files = ["yolov5t.onnx", "yolo11t.onnx", "yolov8t.onnx"].map(fixture_bytes);
    let replies: Vec<_> = std::thread::scope(|s| {
        let sent: Vec<_> = files
            .iter()
            .map(|f| s.spawn(|| call("POST", &format!("{base}/v1/models"), GLOBEX, Some(f))))
            .collect();
        sent.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let mut statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    statuses.sort();
    assert_eq!(statuses, [201, 413, 413]);
    for refused in replies.iter().filter(|r| r.status == 413) {
        let p = refused.problem(413);
        assert_eq!(p["type"], "https://effp.dev/problems/quota-exceeded");
    }
    let kept = call("GET", &format!("{base}/v1/models"), GLOBEX, None).json();
    assert_eq!(kept["items"].as_array().unwrap().len(), 1);
    let shas: std::collections::BTreeSet<String> = [&created.json(), &kept["items"][0]]
        .map(|m| m["sha256"].as_str().unwrap().to_string())
        .into();
    assert_eq!(
        server.objects().len(),
        shas.len(),
        "refused uploads leave no file"
    );

    let jobs = format!("{base}/v1/jobs");
    let spec = |steps: u32| {
        serde_json::json!({"model": model, "target": {"flops_ratio": 0.5}, "device": "cpu", "training": {"steps": steps}})
            .to_string()
    };
    let p = call("POST", &jobs, ACME, Some(spec(501).as_bytes())).problem(422);
    assert_eq!(p["errors"][0]["path"], "/training/steps");
    let first = call("POST", &jobs, ACME, Some(spec(300).as_bytes()));
    assert_eq!(
        first.status,
        201,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    let over = call("POST", &jobs, ACME, Some(spec(300).as_bytes()));
    let p = over.problem(429);
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("EFFP_MAX_TRAINING_STEPS"),
        "{p}"
    );
    assert_eq!(over.headers["retry-after"], "30");
    assert_eq!(
        call("POST", &jobs, ACME, Some(spec(100).as_bytes())).status,
        201
    );
    let full = call("POST", &jobs, ACME, Some(spec(0).as_bytes()));
    let p = full.problem(429);
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("EFFP_MAX_QUEUED_JOBS"),
        "{p}"
    );

    // Six submissions at once, each fitting alone: the queue takes two and no more.
    let globex_spec = serde_json::json!({
        "model": kept["items"][0]["id"], "target": {"flops_ratio": 0.5}, "device": "cpu",
        "training": {"steps": 100},
    })
    .to_string();
    let replies: Vec<_> = std::thread::scope(|s| {
        let sent: Vec<_> = (0..6)
            .map(|_| s.spawn(|| call("POST", &jobs, GLOBEX, Some(globex_spec.as_bytes()))))
            .collect();
        sent.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let mut statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    statuses.sort();
    assert_eq!(statuses, [201, 201, 429, 429, 429, 429]);
    for refused in replies.iter().filter(|r| r.status == 429) {
        assert_eq!(refused.headers["retry-after"], "30");
    }
    let listed = call("GET", &format!("{jobs}?state=queued"), GLOBEX, None).json();
    assert_eq!(listed["items"].as_array().unwrap().len(), 2);
}

#[test]
fn connections_are_capped_idle_ones_closed_and_trickling_uploads_dropped() {
    use std::io::Read;
    let server = Server::start(
        &[
            "--max-connections",
            "8",
            "--header-read-timeout-secs",
            "2",
            "--upload-stall-secs",
            "2",
        ],
        &[("EFFP_UPLOAD_MIN_RATE", "1KiB")],
    );
    let address = server.url.trim_start_matches("http://").to_string();
    // Eight idle connections take every place: the ninth is answered 503 at once.
    let idle: Vec<_> = (0..8)
        .map(|_| std::net::TcpStream::connect(&address).unwrap())
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut ninth = std::net::TcpStream::connect(&address).unwrap();
    ninth
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut answer = String::new();
    let _ = ninth.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("application/problem+json") && answer.contains("EFFP_MAX_CONNECTIONS"));
    // Idle connections are closed once the header read timeout passes …
    for mut socket in idle {
        socket
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 64];
        let started = std::time::Instant::now();
        let n = socket.read(&mut buf).unwrap_or(0);
        assert!(n == 0 || String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"));
        assert!(started.elapsed() < std::time::Duration::from_secs(8));
    }
    // … so the server takes new ones again.
    assert_eq!(
        call("GET", &format!("{}/healthz", server.url), None, None).status,
        200
    );

    // A slow-header client is cut off too.
    let mut slow = std::net::TcpStream::connect(&address).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    slow.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    assert!(started.elapsed() < std::time::Duration::from_secs(8));

    // An upload trickling a few bytes a second is dropped with 408.
    let mut upload = std::net::TcpStream::connect(&address).unwrap();
    write!(
        upload,
        "POST /v1/models HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
    )
    .unwrap();
    let started = std::time::Instant::now();
    let mut answer = String::new();
    upload
        .set_read_timeout(Some(std::time::Duration::from_millis(500)))
        .unwrap();
    while started.elapsed() < std::time::Duration::from_secs(15) {
        if upload.write_all(b"xx").is_err() {
            break;
        }
        let mut buf = [0u8; 4096];
        if let Ok(n) = upload.read(&mut buf) {
            answer.push_str(&String::from_utf8_lossy(&buf[..n]));
            if n == 0 || answer.contains("\r\n\r\n") {
                break;
            }
        }
    }
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("EFFP_UPLOAD_MIN_RATE") || answer.contains("application/problem+json"),
        "{answer}"
    );
    assert!(server.objects().is_empty());
}

#[test]
fn a_restart_removes_files_no_record_refers_to_and_checkpoints_of_ended_jobs() {
    let server = Server::start(&[], &[]);
    let base = server.url.clone();
    let bytes = fixture_bytes("yolov8t.onnx");
    let model = call("POST", &format!("{base}/v1/models"), None, Some(&bytes));
    assert_eq!(model.status, 201);
    let model_id = model.json()["id"].as_str().unwrap().to_string();
    let spec =
        serde_json::json!({"model": model_id, "target": {"flops_ratio": 0.5}, "device": "cpu"});
    let job = call(
        "POST",
        &format!("{base}/v1/jobs"),
        None,
        Some(spec.to_string().as_bytes()),
    );
    let job_id = job.json()["id"].as_str().unwrap().to_string();
    assert_eq!(wait_for_end(&base, &job_id, None)["state"], "succeeded");
    let kept = server.objects();
    assert_eq!(kept.len(), 3, "the model, the pruned model and the report");

    // What a crash between storing and recording leaves behind.
    let data = server.kill();
    let objects = data.path().join("objects").join("objects");
    let stray = objects.join("ab".repeat(32));
    std::fs::write(&stray, b"an upload whose record was never written").unwrap();
    let checkpoints = checkpoint_dir(data.path());
    std::fs::create_dir_all(&checkpoints).unwrap();
    std::fs::write(checkpoints.join(format!("{job_id}.ckpt")), b"old").unwrap();
    std::fs::write(checkpoints.join("job_unknown.ckpt"), b"old").unwrap();

    let server = Server::start_in(data, &[], &[]);
    let base = server.url.clone();
    assert!(!stray.exists(), "an unreferenced file is removed");
    let mut now = server.objects();
    now.sort();
    let mut before = kept.clone();
    before.sort();
    assert_eq!(now, before, "every referenced file stays");
    assert_eq!(std::fs::read_dir(&checkpoints).unwrap().count(), 0);
    assert_eq!(
        call(
            "GET",
            &format!("{base}/v1/models/{model_id}/file"),
            None,
            None
        )
        .body,
        bytes
    );
    let pruned = call(
        "GET",
        &format!("{base}/v1/jobs/{job_id}/artifacts/pruned.onnx"),
        None,
        None,
    );
    assert_eq!(pruned.status, 200);
    // Deleting the model keeps the job's artifacts, which are other files.
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
    assert_eq!(server.objects().len(), 2);
}

#[test]
fn a_second_service_on_the_same_data_directory_is_refused_and_the_first_keeps_serving() {
    let server = Server::start(&[], &[]);
    let second = std::process::Command::new(env!("CARGO_BIN_EXE_effp"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(server.data.path())
        .env_remove("EFFP_API_KEYS")
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1), "{second:?}");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("in use by another effp process")
            && stderr.contains("its own data directory"),
        "{stderr}"
    );
    assert!(second.stdout.is_empty(), "the second one never served");
    assert_eq!(
        call("GET", &format!("{}/readyz", server.url), None, None).status,
        200
    );
}

crate::on_both_deployments!(
    hostile_models_archives_and_jobs_are_refused_and_the_server_stays_up,
    responses_carry_security_headers_and_safe_file_names,
    concurrent_uploads_deletes_and_idempotent_submissions_stay_consistent,
    quotas_refuse_with_problem_documents,
);
