//! effp in its distributed shape on one machine: a real redis-server, a real
//! S3-compatible server (s3s-fs), API replicas (`effp serve --no-worker`) and job
//! workers as their own processes (`effp worker`). Every process has a data
//! directory of its own: they share nothing but Redis and the bucket.

mod service;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use effp_testkit::servers::{RedisServer, S3Server};
use service::*;
use sha2::{Digest, Sha256};

const KEYS: &str = "t1:tenant-one-key-0123456789,t2:tenant-two-key-0123456789";
const T1: Option<&str> = Some("tenant-one-key-0123456789");
const T2: Option<&str> = Some("tenant-two-key-0123456789");

/// Redis and the S3 server a distributed deployment runs on.
struct Backing {
    redis: RedisServer,
    s3: S3Server,
}

impl Backing {
    fn start() -> Self {
        Self {
            redis: RedisServer::start(),
            s3: S3Server::start(),
        }
    }

    /// The settings every effp process of the deployment gets.
    fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = self.s3.env();
        env.push(("EFFP_REDIS_URL", self.redis.url()));
        env.push((
            "EFFP_WEBHOOK_SECRET",
            "the-deployment-webhook-secret".into(),
        ));
        env.push(("EFFP_WEBHOOK_ALLOW_PRIVATE", "true".into()));
        env
    }

    /// The checkpoints kept in the bucket.
    fn checkpoints(&self) -> Vec<std::path::PathBuf> {
        checkpoint_dir_in_bucket(&self.s3)
    }
}

fn checkpoint_dir_in_bucket(s3: &S3Server) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(s3.bucket_dir().join("effp/named/checkpoints"))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default()
}

/// A running `effp worker` in a data directory of its own; killed (SIGKILL) when
/// dropped.
struct Worker {
    child: Child,
    _data: tempfile::TempDir,
}

impl Worker {
    fn start(backing: &Backing, extra: &[&str]) -> Self {
        let data = tempfile::tempdir().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_effp"));
        command
            .args(["worker", "--data-dir"])
            .arg(data.path())
            .args(extra)
            .envs(backing.env())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("effp worker running"), "{line:?}");
        Self { child, _data: data }
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An API replica in a data directory of its own.
fn api(backing: &Backing, keys: &str) -> Server {
    let mut env = backing.env();
    env.push(("EFFP_API_KEYS", keys.to_string()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Server::start(&["--no-worker"], &env)
}

#[test]
fn a_job_runs_on_a_worker_process_and_other_tenants_see_none_of_it() {
    let backing = Backing::start();
    // Two replicas: what one stores, the other serves.
    let server = api(&backing, KEYS);
    let other = api(&backing, KEYS);
    let base = server.url.clone();
    let _worker = Worker::start(&backing, &[]);

    let bytes = fixture_bytes("yolov8t.onnx");
    let model = call("POST", &format!("{base}/v1/models"), T1, Some(&bytes));
    assert_eq!(
        model.status,
        201,
        "{}",
        String::from_utf8_lossy(&model.body)
    );
    let model_id = model.json()["id"].as_str().unwrap().to_string();
    let receiver = Receiver::start(0);
    let id = submit_job(
        &base,
        T1,
        &serde_json::json!({"model": model_id, "target": {"flops_ratio": 0.5}, "device": "cpu", "notify": receiver.url}),
    );
    let job = wait_for_end(&other.url, &id, T1);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 1);
    assert!(job["metrics"]["flops_ratio"].as_f64().unwrap() <= 0.5);
    // The model went into the bucket, under its SHA-256, with it recorded.
    let model_sha = format!("{:x}", Sha256::digest(&bytes));
    let in_bucket = backing
        .s3
        .bucket_dir()
        .join("effp/objects")
        .join(&model_sha);
    assert_eq!(std::fs::read(&in_bucket).unwrap(), bytes);
    assert!(
        !server
            .data
            .path()
            .join("objects/objects")
            .join(&model_sha)
            .exists(),
        "the API kept the model locally"
    );

    // The artifact the worker stored is what either replica serves, byte for byte.
    let pruned = call(
        "GET",
        &format!("{}/v1/jobs/{id}/artifacts/pruned.onnx", other.url),
        T1,
        None,
    );
    assert_eq!(pruned.status, 200);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pruned.onnx");
    std::fs::write(&file, &pruned.body).unwrap();
    let sha = format!("{:x}", Sha256::digest(&pruned.body));
    assert_eq!(job["artifacts"]["pruned.onnx"]["sha256"], sha.as_str());
    let (_, after) = effp_graph::analyse_file(&file, None).unwrap();
    assert_eq!(
        after.totals.flops as f64,
        job["metrics"]["flops_after"].as_f64().unwrap()
    );

    // Its notification, delivered once by one of the processes, signed with the key
    // any replica gives the tenant.
    let delivered = receiver.next(30);
    assert_eq!(delivered.headers["effp-event"], "job.succeeded");
    let key = call("GET", &format!("{}/v1/webhook-secret", other.url), T1, None).json();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(effp_protocol::webhook::verify(
        key["secret"].as_str().unwrap().as_bytes(),
        &delivered.headers["effp-signature"],
        &delivered.body,
        now,
        300
    ));
    let job = wait_for_notification(&base, &id, T1);
    assert_eq!(job["notification"]["state"], "delivered", "{job}");
    assert_eq!(job["notification"]["attempts"], 1);
    assert!(receiver.requests.try_recv().is_err(), "delivered twice");

    // Its history, from Redis, through the API.
    let events = sse_as(&format!("{base}/v1/jobs/{id}/events"), T1, None);
    let states = states_of(&events);
    assert_eq!(states, ["queued", "running", "succeeded"]);

    // Another tenant: nothing of it exists.
    for path in [
        format!("/v1/jobs/{id}"),
        format!("/v1/models/{model_id}"),
        format!("/v1/jobs/{id}/artifacts/pruned.onnx"),
    ] {
        let reply = call("GET", &format!("{base}{path}"), T2, None);
        reply.problem(404);
    }
    assert_eq!(
        call("GET", &format!("{base}/v1/jobs"), T2, None).json()["items"],
        serde_json::json!([])
    );
}

#[test]
fn a_worker_killed_mid_training_hands_its_job_to_another_that_resumes_it() {
    let backing = Backing::start();
    let server = api(&backing, "");
    let base = server.url.clone();
    let flags = ["--checkpoint-every", "2", "--lease-secs", "3"];
    let first = Worker::start(&backing, &flags);
    let (model, dataset) = upload_model_and_data(&base, None);
    let steps = 60;
    let id = submit_training_job(&base, &model, &dataset, steps);
    wait_for_step(&base, &id, None, 8);
    assert_eq!(
        backing.checkpoints().len(),
        1,
        "the running job's checkpoint is in the bucket"
    );
    // A second worker is idle when the first dies without a word.
    let _second = Worker::start(&backing, &flags);
    first.kill();

    let job = wait_for_end(&base, &id, None);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(
        job["attempts"], 2,
        "claimed again once, after the lease ran out"
    );
    let from = resumed_from(&base, &id, &job, steps);
    assert!((8..steps).contains(&from), "resumed from step {from}");
    let events = sse(&format!("{base}/v1/jobs/{id}/events"), None);
    let states = states_of(&events);
    assert_eq!(
        states,
        ["queued", "running", "running", "succeeded"],
        "claimed, claimed again by the second worker, done"
    );
    assert!(
        backing.checkpoints().is_empty(),
        "the checkpoint went with the job"
    );
}

#[test]
fn a_worker_without_redis_says_what_it_needs() {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_effp"))
        .args(["worker", "--data-dir"])
        .arg(data.path())
        .env_remove("EFFP_REDIS_URL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("EFFP_REDIS_URL"), "{stderr}");
}

/// Calls `url` until it answers `status` or ten seconds pass; the last reply.
fn until_status(method: &str, url: &str, body: Option<&[u8]>, status: u16) -> Reply {
    let started = std::time::Instant::now();
    loop {
        let reply = call(method, url, None, body);
        if reply.status == status || started.elapsed() > std::time::Duration::from_secs(10) {
            return reply;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn storage_outages_are_503s_that_lose_nothing_and_a_replica_takes_over_from_a_dead_one() {
    let mut backing = Backing::start();
    let first = api(&backing, "");
    let second = api(&backing, "");
    let _worker = Worker::start(&backing, &[]);
    let bytes = fixture_bytes("yolov8t.onnx");

    // The bucket's server is down: uploads are refused with a problem document that
    // says to retry, the replica is not ready, and nothing is recorded.
    backing.s3.stop();
    let refused = call(
        "POST",
        &format!("{}/v1/models", first.url),
        None,
        Some(&bytes),
    );
    let p = refused.problem(503);
    assert_eq!(
        p["type"], "https://effp.dev/problems/storage-unavailable",
        "{p}"
    );
    assert_eq!(refused.headers["retry-after"], "5");
    call("GET", &format!("{}/readyz", first.url), None, None).problem(503);
    assert_eq!(
        call("GET", &format!("{}/v1/models", second.url), None, None).json()["items"],
        serde_json::json!([])
    );
    backing.s3.restart();
    let model = until_status(
        "POST",
        &format!("{}/v1/models", first.url),
        Some(&bytes),
        201,
    );
    assert_eq!(
        model.status,
        201,
        "{}",
        String::from_utf8_lossy(&model.body)
    );

    // The replica a job was submitted to dies; the other follows it to its end.
    let id = submit_job(
        &first.url,
        None,
        &serde_json::json!({"model": model.json()["id"], "target": {"flops_ratio": 0.5}, "device": "cpu"}),
    );
    drop(first);
    let job = wait_for_end(&second.url, &id, None);
    assert_eq!(job["state"], "succeeded", "{job}");

    // Redis goes away: requests are 503s, not errors; once it is back (from its
    // append-only file) the replica reconnects and the job and its history are whole.
    backing.redis.stop();
    let down = call("GET", &format!("{}/v1/jobs/{id}", second.url), None, None);
    down.problem(503);
    backing.redis.restart();
    let back = until_status("GET", &format!("{}/v1/jobs/{id}", second.url), None, 200);
    assert_eq!(back.status, 200, "{}", String::from_utf8_lossy(&back.body));
    assert_eq!(back.json()["state"], "succeeded");
    let events = sse(&format!("{}/v1/jobs/{id}/events", second.url), None);
    assert_eq!(states_of(&events), ["queued", "running", "succeeded"]);
}

#[test]
fn an_event_stream_cut_by_a_dying_replica_resumes_on_another_from_its_last_event() {
    let backing = Backing::start();
    let first = api(&backing, "");
    let second = api(&backing, "");
    let _worker = Worker::start(&backing, &[]);
    let (model, dataset) = upload_model_and_data(&first.url, None);
    let id = submit_training_job(&first.url, &model, &dataset, 40);

    // Follow the job on the first replica for a few events, then that replica dies.
    let response = ureq::get(&format!("{}/v1/jobs/{id}/events", first.url))
        .set("Accept", "text/event-stream")
        .call()
        .unwrap();
    let mut stream = BufReader::new(response.into_reader());
    let mut seen = Vec::new();
    let mut line = String::new();
    while seen.len() < 4 {
        line.clear();
        if stream.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if let Some(v) = line.strip_prefix("id:") {
            seen.push(v.trim().parse::<i64>().unwrap());
        }
    }
    assert_eq!(seen.len(), 4, "the stream ended early: {seen:?}");
    drop(first);

    // The client reconnects to the other replica with the last id it saw.
    let last = *seen.last().unwrap();
    let rest = sse(&format!("{}/v1/jobs/{id}/events", second.url), Some(last));
    let ids: Vec<i64> = seen
        .iter()
        .copied()
        .chain(rest.iter().map(|e| e.id))
        .collect();
    assert!(
        ids.windows(2).all(|w| w[1] == w[0] + 1),
        "events missing or repeated across the replicas: {ids:?}"
    );
    assert_eq!(rest.last().unwrap().data["state"], "succeeded");
}
