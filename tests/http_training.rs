//! `effp serve` with datasets: archive uploads checked before anything is kept,
//! hostile archives refused, trained jobs (EFFP) run by the worker with the uploaded
//! data, and jobs that survive SIGTERM and SIGKILL by resuming from their checkpoint.

mod service;

use std::io::Write;

use std::time::Instant;

use effp_testkit::fixtures;
use service::*;

/// A tar archive with one entry written byte for byte (past the tar crate's checks).
fn raw_tar(name: &[u8], kind: tar::EntryType, link: Option<&str>) -> Vec<u8> {
    let mut data = Vec::new();
    {
        let mut b = tar::Builder::new(&mut data);
        let mut h = tar::Header::new_gnu();
        h.set_size(if link.is_some() { 0 } else { 1 });
        h.set_entry_type(kind);
        h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
        if let Some(target) = link {
            h.set_link_name(target).unwrap();
        }
        h.set_cksum();
        let body: &[u8] = if link.is_some() { b"" } else { b"x" };
        b.append(&h, body).unwrap();
        b.finish().unwrap();
    }
    data
}

fn a_dataset_is_uploaded_checked_listed_and_deleted(shape: Shape) {
    let server = Deployment::start(shape, &[], &[]);
    let base = &server.url;
    let tmp = tempfile::tempdir().unwrap();
    let set = small_dataset(tmp.path());
    let archive = tar_gz_folder(&set, "shapes");

    let created = call(
        "POST",
        &format!("{base}/v1/datasets?name=shapes.tar.gz"),
        None,
        Some(&archive),
    );
    assert_eq!(
        created.status,
        201,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
    let ds = created.json();
    let id = ds["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("ds_"));
    assert_eq!(created.headers["location"], format!("/v1/datasets/{id}"));
    assert_eq!(ds["name"], "shapes.tar.gz");
    assert_eq!(ds["size"], archive.len());
    let summary = &ds["summary"];
    assert_eq!(summary["layout"], "yolo");
    assert_eq!(summary["root"], "shapes");
    assert_eq!(
        summary["classes"],
        serde_json::json!(["circle", "square", "triangle"])
    );
    assert_eq!(summary["splits"]["train"]["images"], 16);
    assert_eq!(summary["splits"]["val"]["images"], 4);
    let labelled: u64 = std::fs::read_dir(set.join("labels/val"))
        .unwrap()
        .map(|f| {
            std::fs::read_to_string(f.unwrap().path())
                .unwrap()
                .lines()
                .count() as u64
        })
        .sum();
    assert_eq!(summary["splits"]["val"]["objects"], labelled);

    // The same archive again is the same dataset.
    let again = call("POST", &format!("{base}/v1/datasets"), None, Some(&archive));
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["id"], ds["id"]);

    // A multipart upload (as a browser form or `curl -F file=@set.zip` sends it),
    // named by its file name.
    let (content_type, body) = multipart("file", "C:\\data\\set.zip", &zip_dir(&set));
    let form = call_with(
        "POST",
        &format!("{base}/v1/datasets"),
        None,
        &[("Content-Type", &content_type)],
        Some(&body),
    );
    assert_eq!(form.status, 201, "{}", String::from_utf8_lossy(&form.body));
    let zipped = form.json();
    assert_eq!(zipped["name"], "set.zip");
    assert_eq!(zipped["summary"]["root"], "");
    assert_eq!(zipped["summary"]["splits"], summary["splits"]);
    assert_eq!(server.objects().len(), 2);

    let listed = call("GET", &format!("{base}/v1/datasets"), None, None).json();
    assert_eq!(listed["items"].as_array().unwrap().len(), 2);
    assert_eq!(listed["items"][0]["id"], zipped["id"], "newest first");
    assert_eq!(
        call("GET", &format!("{base}/v1/datasets/{id}"), None, None).json(),
        ds
    );
    call("GET", &format!("{base}/v1/datasets?limit=0"), None, None).problem(422);

    assert_eq!(
        call("DELETE", &format!("{base}/v1/datasets/{id}"), None, None).status,
        204
    );
    call("GET", &format!("{base}/v1/datasets/{id}"), None, None).problem(404);
    call("DELETE", &format!("{base}/v1/datasets/{id}"), None, None).problem(404);
    assert_eq!(
        server.objects().len(),
        1,
        "the archive went with its record"
    );
}

fn another_tenant_cannot_see_or_use_a_dataset(shape: Shape) {
    let keys = "acme:acme-key-0123456789abcdef,globex:globex-key-0123456789abcdef";
    let server = Deployment::start(shape, &[], &[("EFFP_API_KEYS", keys)]);
    let (acme, globex) = (
        Some("acme-key-0123456789abcdef"),
        Some("globex-key-0123456789abcdef"),
    );
    let url = format!("{}/v1/datasets", server.url);
    let tmp = tempfile::tempdir().unwrap();
    let archive = tar_gz_folder(&small_dataset(tmp.path()), "shapes");
    call("POST", &url, None, Some(&archive)).problem(401);
    let created = call("POST", &url, acme, Some(&archive));
    assert_eq!(created.status, 201);
    let id = created.json()["id"].as_str().unwrap().to_string();

    call("GET", &format!("{url}/{id}"), globex, None).problem(404);
    call("DELETE", &format!("{url}/{id}"), globex, None).problem(404);
    let theirs = call("GET", &url, globex, None).json();
    assert!(theirs["items"].as_array().unwrap().is_empty());
    let model = call(
        "POST",
        &format!("{}/v1/models", server.url),
        globex,
        Some(&fixture_bytes("yolov8t.onnx")),
    )
    .json();
    let spec = serde_json::json!({
        "model": model["id"], "dataset": id, "method": "effp",
        "target": { "flops_ratio": 0.5 },
    });
    let p = call(
        "POST",
        &format!("{}/v1/jobs", server.url),
        globex,
        Some(spec.to_string().as_bytes()),
    )
    .problem(422);
    assert_eq!(p["errors"][0]["path"], "/dataset", "{p}");
    assert_eq!(call("GET", &format!("{url}/{id}"), acme, None).status, 200);
}

fn hostile_and_invalid_archives_are_refused_and_nothing_is_kept(shape: Shape) {
    let server = Deployment::start(shape, &["--max-upload-bytes", "4000000"], &[]);
    let base = &server.url;
    let url = format!("{base}/v1/datasets");

    let traversal = raw_tar(b"../../evil.txt", tar::EntryType::Regular, None);
    let p = call("POST", &url, None, Some(&traversal)).problem(422);
    assert!(
        p["type"].as_str().unwrap().ends_with("/unsafe-archive"),
        "{p}"
    );
    assert!(
        p["detail"].as_str().unwrap().contains("../../evil.txt"),
        "{p}"
    );

    let link = raw_tar(
        b"images/train/a.png",
        tar::EntryType::Symlink,
        Some("/etc/passwd"),
    );
    let p = call("POST", &url, None, Some(&link)).problem(422);
    assert!(p["detail"].as_str().unwrap().contains("is a link"), "{p}");

    // 64 MiB of zeros in a zip of a few kB: refused by its expansion ratio.
    let bomb = {
        let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        z.start_file("data.yaml", opts).unwrap();
        z.write_all(b"names: [a]").unwrap();
        z.start_file("images/train/a.png", opts).unwrap();
        z.write_all(&vec![0u8; 64 << 20]).unwrap();
        z.finish().unwrap().into_inner()
    };
    assert!(bomb.len() < 1 << 20);
    let p = call("POST", &url, None, Some(&bomb)).problem(422);
    assert!(
        p["detail"].as_str().unwrap().contains("decompression bomb"),
        "{p}"
    );

    let p = call("POST", &url, None, Some(b"this is not an archive at all")).problem(422);
    assert!(
        p["type"].as_str().unwrap().ends_with("/invalid-archive"),
        "{p}"
    );

    // A real dataset with a bad label: every problem named by its file inside the
    // archive, not by where the server unpacked it.
    let tmp = tempfile::tempdir().unwrap();
    let set = small_dataset(tmp.path());
    std::fs::write(set.join("labels/val/000016.txt"), "7 0.5 0.5 0.2 0.2\n").unwrap();
    let p = call("POST", &url, None, Some(&tar_gz_folder(&set, "shapes"))).problem(422);
    let detail = p["detail"].as_str().unwrap();
    assert!(
        p["type"].as_str().unwrap().ends_with("/invalid-dataset"),
        "{p}"
    );
    assert!(
        detail.contains("labels/val/000016.txt:1: class 7 is unknown"),
        "{detail}"
    );
    assert!(!detail.contains("scratch"), "{detail}");

    // Over the upload limit, declared or not.
    let big = vec![7u8; 5_000_000];
    call("POST", &url, None, Some(&big)).problem(413);
    let (content_type, body) = multipart("file", "big.tar", &big);
    call_with(
        "POST",
        &url,
        None,
        &[("Content-Type", &content_type)],
        Some(&body),
    )
    .problem(413);
    // A form without a file part.
    let (content_type, body) = multipart("upload", "set.tar", b"x");
    let p = call_with(
        "POST",
        &url,
        None,
        &[("Content-Type", &content_type)],
        Some(&body),
    )
    .problem(422);
    assert_eq!(p["errors"][0]["path"], "/file");

    assert!(server.objects().is_empty(), "{:?}", server.objects());
    let listed = call("GET", &url, None, None).json();
    assert!(listed["items"].as_array().unwrap().is_empty());
    assert!(server.scratch().is_empty(), "unpacked files are removed");
}

/// Uploads the trained fixture detector and its synthetic dataset; returns their ids.
fn an_effp_job_trains_on_an_uploaded_dataset_and_reports_accuracy(shape: Shape) {
    let server = Deployment::start(shape, &[], &[]);
    let base = &server.url;
    let (model, dataset) = upload_model_and_data(base, None);
    let id = submit_job(
        base,
        None,
        &serde_json::json!({
            "model": model, "dataset": dataset, "method": "effp",
            "target": { "flops_ratio": 0.7 },
            "training": { "steps": 12, "interval": 2, "batch": 4, "distill": "foreground" },
            "device": "cpu",
        }),
    );
    // In use: neither the model nor the dataset can go while the job may need them.
    let p = call(
        "DELETE",
        &format!("{base}/v1/datasets/{dataset}"),
        None,
        None,
    )
    .problem(409);
    assert!(p["detail"].as_str().unwrap().contains(&id), "{p}");

    let events = sse(&format!("{base}/v1/jobs/{id}/events"), None);
    let last = events.last().unwrap();
    assert_eq!(last.data["state"], "succeeded", "{:?}", last.data);
    let phases: Vec<&str> = events
        .iter()
        .filter_map(|e| e.data["phase"].as_str())
        .collect();
    for phase in ["prepare", "train", "store", "done"] {
        assert!(phases.contains(&phase), "{phase} in {phases:?}");
    }
    let steps: Vec<u64> = events
        .iter()
        .filter_map(|e| e.data["metrics"]["step"].as_u64())
        .collect();
    assert!(steps.windows(2).all(|w| w[0] <= w[1]), "{steps:?}");
    assert_eq!(steps.last(), Some(&12), "the last step is reported");

    let job = wait_for_end(base, &id, None);
    let m = &job["metrics"];
    assert!(m["map50_95_before"].as_f64().unwrap() > 0.3, "{m}");
    assert!(m["map50_95_after"].as_f64().is_some(), "{m}");
    assert!(m["flops_ratio"].as_f64().unwrap() <= 0.7, "{m}");
    let report = call(
        "GET",
        &format!("{base}/v1/jobs/{id}/artifacts/report.json"),
        None,
        None,
    )
    .json();
    assert_eq!(report["method"], "effp");
    assert_eq!(report["curve"].as_array().unwrap().len(), 12);
    assert_eq!(report["accuracy"]["after"]["map50_95"], m["map50_95_after"]);
    // A labelled dataset: by default the job learns from its labels too, and
    // fine-tunes the compacted network.
    assert_eq!(
        report["training"]["labels"]["used"], "yes",
        "{}",
        report["training"]
    );
    assert_eq!(report["training"]["fine_tune"], "compacted");
    assert_eq!(report["training"]["start"], "full");
    assert_eq!(report["training"]["distill"], "foreground");
    // `effp prune` runs the same pipeline: the same settings on the same files give
    // the same masks (fixed seed, CPU).
    let tmp = tempfile::tempdir().unwrap();
    let cli_report = tmp.path().join("report.json");
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_effp"))
        .args(["prune", fixtures::path("trained.onnx").to_str().unwrap()])
        .args([
            "--method",
            "effp",
            "--target-flops",
            "0.7",
            "--device",
            "cpu",
        ])
        .args(["--steps", "12", "--interval", "2", "--batch", "4"])
        .args(["--distill", "foreground"])
        .arg("--data")
        .arg(fixtures::dir().join("synth"))
        .arg("--out")
        .arg(tmp.path().join("pruned.onnx"))
        .arg("--report")
        .arg(&cli_report)
        .output()
        .unwrap();
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let cli: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cli_report).unwrap()).unwrap();
    assert_eq!(cli["compaction"]["layers"], report["compaction"]["layers"]);
    assert_eq!(cli["after"], report["after"]);
    assert!(
        server.checkpoints().is_empty(),
        "the checkpoint goes with the finished job"
    );
    // Ended: the dataset can go now.
    assert_eq!(
        call(
            "DELETE",
            &format!("{base}/v1/datasets/{dataset}"),
            None,
            None
        )
        .status,
        204
    );
}

#[test]
fn a_training_job_survives_sigterm_and_sigkill_and_resumes_from_its_checkpoint() {
    let flags = ["--checkpoint-every", "2"];
    let server = Server::start(&flags, &[]);
    let base = server.url.clone();
    let (model, dataset) = upload_model_and_data(&base, None);
    let steps = 90;
    let id = submit_training_job(&base, &model, &dataset, steps);

    // SIGTERM: the running job is checkpointed and put back in the queue.
    wait_for_step(&base, &id, None, 6);
    let stopped = std::process::Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let mut server = server;
    let exit = server.child.wait().unwrap();
    assert_eq!(exit.code(), Some(0));
    let data = server.kill();

    let server = Server::start_in(data, &flags, &[]);
    let base = server.url.clone();
    let events = call("GET", &format!("{base}/v1/jobs/{id}"), None, None).json();
    assert_ne!(events["state"], "failed", "{events}");
    let resumed = wait_for_step(&base, &id, None, 30);
    assert_eq!(
        resumed["attempts"], 1,
        "a clean shutdown does not use up an attempt"
    );

    // SIGKILL: nothing gets the chance to clean up; the next start requeues the job
    // at once and it resumes from its last periodic checkpoint.
    let data = server.kill();
    let server = Server::start_in(data, &flags, &[]);
    let base = server.url.clone();
    let job = wait_for_end(&base, &id, None);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 2);
    let from = resumed_from(&base, &id, &job, steps);
    assert!((26..steps).contains(&from), "resumed from step {from}");
    let checks = tempfile::tempdir().unwrap();
    let file = download_artifact(&base, &id, "pruned.onnx", checks.path());
    let (_, after) = effp_graph::analyse_file(&file, None).unwrap();
    let (_, before) = effp_graph::analyse_file(&fixtures::path("trained.onnx"), None).unwrap();
    let ratio = after.totals.flops as f64 / before.totals.flops as f64;
    // The target (0.6) is met, and by no more than a few channels' worth.
    assert!((0.59..=0.6).contains(&ratio), "{ratio}");

    // Nothing was lost across the restarts.
    assert_eq!(
        call("GET", &format!("{base}/v1/models/{model}/file"), None, None).body,
        fixture_bytes("trained.onnx")
    );
    assert_eq!(
        call("GET", &format!("{base}/v1/datasets/{dataset}"), None, None).status,
        200
    );
    let events = sse(&format!("{base}/v1/jobs/{id}/events"), None);
    let states = states_of(&events);
    assert_eq!(
        states,
        [
            "queued",
            "running",
            "queued",
            "running",
            "running",
            "succeeded"
        ],
        "queued, claimed, released on SIGTERM, claimed, claimed again after SIGKILL, done"
    );
}

fn cancelling_a_training_job_stops_it_between_steps(shape: Shape) {
    let server = Deployment::start(shape, &[], &[]);
    let base = server.url.clone();
    let (model, dataset) = upload_model_and_data(&base, None);
    let id = submit_job(
        &base,
        None,
        &serde_json::json!({
            "model": model, "dataset": dataset, "method": "sfp",
            "target": { "flops_ratio": 0.5 },
            "training": { "steps": 2000, "batch": 2 },
            "device": "cpu",
        }),
    );
    let running = wait_for_step(&base, &id, None, 3);
    assert_eq!(running["state"], "running");
    let asked = call(
        "POST",
        &format!("{base}/v1/jobs/{id}/cancel"),
        None,
        Some(b""),
    );
    assert_eq!(
        asked.status,
        202,
        "{}",
        String::from_utf8_lossy(&asked.body)
    );
    assert!(asked.json()["cancel_requested"].as_bool().unwrap());
    let started = Instant::now();
    let job = wait_for_end(&base, &id, None);
    assert_eq!(job["state"], "cancelled", "{job}");
    assert!(started.elapsed().as_secs() < 20, "stopped at the next step");
    assert!(job["metrics"]["step"].as_u64().unwrap() < 2000);
    assert_eq!(job["artifacts"], serde_json::json!({}));
    assert!(
        server.checkpoints().is_empty(),
        "a cancelled job keeps no checkpoint"
    );
    call(
        "POST",
        &format!("{base}/v1/jobs/{id}/cancel"),
        None,
        Some(b""),
    )
    .problem(409);
}

crate::on_both_deployments!(
    a_dataset_is_uploaded_checked_listed_and_deleted,
    another_tenant_cannot_see_or_use_a_dataset,
    hostile_and_invalid_archives_are_refused_and_nothing_is_kept,
    an_effp_job_trains_on_an_uploaded_dataset_and_reports_accuracy,
    cancelling_a_training_job_stops_it_between_steps,
);
