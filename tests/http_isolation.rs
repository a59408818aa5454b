//! Jobs run in their own worker processes: a job that outgrows its memory budget or
//! whose process is killed or aborts ends (or retries) on its own while the API
//! process keeps serving; queued jobs are served fairly across tenants; and what a
//! failed job tells the tenant holds no server paths.

mod service;

use std::io::Write;
use std::time::{Duration, Instant};

use effp_testkit::fixtures;
use service::*;

const KEYS: &str = "acme:acme-key-0123456789abcdef,globex:globex-key-0123456789abcdef";
const ACME: Option<&str> = Some("acme-key-0123456789abcdef");
const GLOBEX: Option<&str> = Some("globex-key-0123456789abcdef");

/// A .zip (stored, not compressed) of the folder `dir` without the paths starting
/// with one of `skip`, with `extra` files added.
fn zip_dir(dir: &std::path::Path, skip: &[&str], extra: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, bytes) in files_of(dir) {
        if skip.iter().any(|s| name.starts_with(s)) {
            continue;
        }
        z.start_file(name, opts).unwrap();
        z.write_all(&bytes).unwrap();
    }
    for (name, bytes) in extra {
        z.start_file(*name, opts).unwrap();
        z.write_all(bytes).unwrap();
    }
    z.finish().unwrap().into_inner()
}

/// The server's one worker process, once a job is running in it.
fn worker_process(server: &Server) -> u32 {
    let started = Instant::now();
    loop {
        if let Some(&pid) = children(server.child.id()).first() {
            return pid;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no worker process started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_for_step(base: &str, id: &str, step: u64) {
    let started = Instant::now();
    loop {
        let job = call("GET", &format!("{base}/v1/jobs/{id}"), None, None).json();
        if job["state"] == "running" && job["metrics"]["step"].as_u64().is_some_and(|s| s >= step) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no step {step}: {job}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_job_over_its_memory_budget_fails_and_the_api_keeps_serving() {
    let server = Server::start(&[], &[("EFFP_JOB_MEMORY_LIMIT", "450MiB")]);
    let base = server.url.clone();
    let pid = server.child.id();
    let model = upload(&base, "models", None, &fixture_bytes("trained.onnx"));
    // A dataset whose training images are 12000×12000 pixels: small files that take
    // 432 MB each once decoded, which no estimate from the model can foresee.
    let huge = image::RgbImage::from_pixel(12_000, 12_000, image::Rgb([90, 120, 150]));
    let mut png = Vec::new();
    huge.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    drop(huge);
    let label = b"0 0.5 0.5 0.2 0.2\n".to_vec();
    let archive = zip_dir(
        &fixtures::dir().join("synth"),
        &["images/train", "labels/train"],
        &[
            ("images/train/huge1.png", png.clone()),
            ("labels/train/huge1.txt", label.clone()),
            ("images/train/huge2.png", png),
            ("labels/train/huge2.txt", label),
        ],
    );
    let dataset = upload(&base, "datasets", None, &archive);
    let id = submit_job(
        &base,
        None,
        &serde_json::json!({
            "model": model, "dataset": dataset, "method": "effp", "target": {"flops_ratio": 0.6},
            "training": {"steps": 30, "batch": 4}, "device": "cpu",
        }),
    );
    let job = wait_for_end(&base, &id, None);
    assert_eq!(job["state"], "failed", "{job}");
    let error = job["error"].as_str().unwrap();
    assert!(
        error.contains("EFFP_JOB_MEMORY_LIMIT") && error.contains("450.0 MiB"),
        "{error}"
    );
    assert_eq!(job["attempts"], 1, "running out of budget is not retried");
    // Same server process, still answering, and it runs the next job.
    assert_eq!(server.child.id(), pid);
    assert!(alive(pid));
    let next = submit_job(
        &base,
        None,
        &serde_json::json!({"model": model, "target": {"flops_ratio": 0.5}, "device": "cpu"}),
    );
    assert_eq!(wait_for_end(&base, &next, None)["state"], "succeeded");
}

#[test]
fn killed_and_aborting_worker_processes_cost_attempts_not_the_service() {
    let server = Server::start(&["--checkpoint-every", "2", "--max-attempts", "2"], &[]);
    let base = server.url.clone();
    let pid = server.child.id();
    let model = upload(&base, "models", None, &fixture_bytes("trained.onnx"));
    let archive = zip_dir(&fixtures::dir().join("synth"), &[], &[]);
    let dataset = upload(&base, "datasets", None, &archive);
    let spec = serde_json::json!({
        "model": model, "dataset": dataset, "method": "effp", "target": {"flops_ratio": 0.6},
        "training": {"steps": 40, "interval": 2, "batch": 4}, "device": "cpu",
    });

    // SIGKILL mid-training: the job goes back to the queue and resumes from its
    // last checkpoint in a new worker process.
    let id = submit_job(&base, None, &spec);
    wait_for_step(&base, &id, 6);
    let worker = worker_process(&server);
    assert!(
        std::process::Command::new("kill")
            .args(["-KILL", &worker.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let job = wait_for_end(&base, &id, None);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 2);
    let from = job["metrics"]["resumed_from_step"].as_u64().unwrap();
    assert!((4..40).contains(&from), "resumed from step {from}");
    assert_eq!(server.child.id(), pid);

    // A worker process that aborts every time: the job fails after the two attempts
    // it may have and says why.
    let id = submit_job(&base, None, &spec);
    for attempt in 1..=2 {
        let started = Instant::now();
        let worker = loop {
            let job = call("GET", &format!("{base}/v1/jobs/{id}"), None, None).json();
            if job["attempts"] == attempt
                && job["state"] == "running"
                && let Some(&w) = children(pid).first()
            {
                break w;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "attempt {attempt}: {job}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            std::process::Command::new("kill")
                .args(["-ABRT", &worker.to_string()])
                .status()
                .unwrap()
                .success()
        );
        while alive(worker) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let job = wait_for_end(&base, &id, None);
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["attempts"], 2);
    assert!(job["error"].as_str().unwrap().contains("aborted"), "{job}");
    assert!(alive(pid));
    assert_eq!(
        call("GET", &format!("{base}/healthz"), None, None).status,
        200
    );
    assert!(
        server.checkpoints().is_empty(),
        "the failed job's checkpoint is gone"
    );
}

#[test]
fn a_tenant_with_fifty_queued_jobs_does_not_hold_back_another_tenants_job() {
    let server = Server::start(&["--max-queued-jobs", "100"], &[("EFFP_API_KEYS", KEYS)]);
    let base = server.url.clone();
    let acme_model = upload(&base, "models", ACME, &fixture_bytes("trained.onnx"));
    let globex_model = upload(&base, "models", GLOBEX, &fixture_bytes("yolov8t.onnx"));
    let acme_data = upload(
        &base,
        "datasets",
        ACME,
        &zip_dir(&fixtures::dir().join("synth"), &[], &[]),
    );
    // acme: one long job running, then fifty queued behind it.
    let long = submit_job(
        &base,
        ACME,
        &serde_json::json!({
            "model": acme_model, "dataset": acme_data, "method": "effp", "target": {"flops_ratio": 0.6},
            "training": {"steps": 40, "batch": 2}, "device": "cpu",
        }),
    );
    let quick =
        serde_json::json!({"model": acme_model, "target": {"flops_ratio": 0.5}, "device": "cpu"});
    let queued: Vec<String> = (0..50).map(|_| submit_job(&base, ACME, &quick)).collect();
    let theirs = submit_job(
        &base,
        GLOBEX,
        &serde_json::json!({"model": globex_model, "target": {"flops_ratio": 0.5}, "device": "cpu"}),
    );
    let job = wait_for_end(&base, &theirs, GLOBEX);
    assert_eq!(job["state"], "succeeded", "{job}");
    let long = call("GET", &format!("{base}/v1/jobs/{long}"), ACME, None).json();
    assert_ne!(long["state"], "queued", "{long}");
    for id in &queued {
        call(
            "POST",
            &format!("{base}/v1/jobs/{id}/cancel"),
            ACME,
            Some(b""),
        );
    }
    // Event ids are one sequence across all jobs: the order in which the worker
    // claimed them. None of acme's queued jobs was claimed before globex's.
    let claimed_at = |id: &str, token: Option<&str>| -> Option<i64> {
        wait_for_end(&base, id, token);
        sse_as(&format!("{base}/v1/jobs/{id}/events"), token, None)
            .iter()
            .find(|e| e.kind == "state" && e.data["state"] == "running")
            .map(|e| e.id)
    };
    let theirs_at = claimed_at(&theirs, GLOBEX).expect("globex's job ran");
    for id in &queued {
        if let Some(at) = claimed_at(id, ACME) {
            assert!(
                at > theirs_at,
                "acme's {id} was claimed (event {at}) before globex's (event {theirs_at})"
            );
        }
    }
}

fn failed_jobs_tell_the_tenant_why_without_server_paths(shape: Shape) {
    let server = Deployment::start(shape, &[], &[]);
    let base = server.url.clone();
    let model = upload(&base, "models", None, &fixture_bytes("yolov8t.onnx"));
    // One FLOP is out of reach: the job fails with the smallest reachable size.
    let id = submit_job(
        &base,
        None,
        &serde_json::json!({"model": model, "target": {"flops": 1}, "device": "cpu"}),
    );
    let job = wait_for_end(&base, &id, None);
    assert_eq!(job["state"], "failed", "{job}");
    let error = job["error"].as_str().unwrap();
    assert!(!error.is_empty());
    for data in server.data_dirs() {
        let data = data.display().to_string();
        assert!(
            !error.contains(&data) && !error.contains("/tmp") && !error.contains("scratch"),
            "{error}"
        );
    }
    assert!(
        !error.contains("frame #") && !error.contains("Exception raised"),
        "{error}"
    );
}

crate::on_both_deployments!(failed_jobs_tell_the_tenant_why_without_server_paths,);

#[test]
fn uploads_and_jobs_still_run_after_the_binary_on_disk_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("effp");
    std::fs::copy(env!("CARGO_BIN_EXE_effp"), &binary).unwrap();
    let server = Server::start_binary(&binary, tempfile::tempdir().unwrap(), &[], &[]);
    // An upgrade in place: the file the service started from is now another one.
    std::fs::remove_file(&binary).unwrap();
    std::fs::write(&binary, b"#!/bin/sh\nexit 3\n").unwrap();

    let base = server.url.clone();
    let model = upload(&base, "models", None, &fixture_bytes("yolov8t.onnx"));
    let id = submit_job(
        &base,
        None,
        &serde_json::json!({"model": model, "target": {"flops_ratio": 0.5}, "device": "cpu"}),
    );
    let job = wait_for_end(&base, &id, None);
    assert_eq!(job["state"], "succeeded", "{job}");
}
