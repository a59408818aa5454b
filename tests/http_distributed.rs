//! effp in its distributed shape on one machine: a real redis-server, a real
//! S3-compatible server (s3s-fs), API replicas (`effp serve --no-worker`) and job
//! workers as their own processes (`effp worker`). Every process has a data
//! directory of its own: they share nothing but Redis and the bucket.

mod service;

use std::io::{BufRead, BufReader};
use std::process::Command;

use effp_testkit::balancer::Balancer;
use service::*;
use sha2::{Digest, Sha256};

const KEYS: &str = "t1:tenant-one-key-0123456789,t2:tenant-two-key-0123456789";
const T1: Option<&str> = Some("tenant-one-key-0123456789");
const T2: Option<&str> = Some("tenant-two-key-0123456789");

/// What every process of these deployments is told about notifications: the
/// receivers tests start listen on loopback.
const WEBHOOKS: [(&str, &str); 2] = [
    ("EFFP_WEBHOOK_SECRET", "the-deployment-webhook-secret"),
    ("EFFP_WEBHOOK_ALLOW_PRIVATE", "true"),
];

/// An API replica with these API keys (none: loopback only).
fn api(backing: &Backing, keys: &str) -> Server {
    let mut env = WEBHOOKS.to_vec();
    env.push(("EFFP_API_KEYS", keys));
    replica(backing, &[], &env)
}

/// A worker process with these flags.
fn worker(backing: &Backing, flags: &[&str]) -> Worker {
    Worker::start(backing, flags, &WEBHOOKS)
}

#[test]
fn a_job_runs_on_a_worker_process_and_other_tenants_see_none_of_it() {
    let backing = Backing::start();
    // Two replicas: what one stores, the other serves.
    let server = api(&backing, KEYS);
    let other = api(&backing, KEYS);
    let base = server.url.clone();
    let worker = worker(&backing, &[]);
    // The worker answers for itself: alive, and its own metrics.
    let health = worker.metrics_url.replace("/metrics", "/healthz");
    assert_eq!(call("GET", &health, None, None).status, 200);

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
    let timed = String::from_utf8(call("GET", &worker.metrics_url, None, None).body).unwrap();
    assert!(
        timed.contains("effp_job_duration_seconds_count{method=\"l1\",state=\"succeeded\"} 1"),
        "{timed}"
    );
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

/// Worker flags for tests that kill workers: checkpoints every other step, and a
/// lease that runs out soon.
const QUICK_TAKEOVER: [&str; 4] = ["--checkpoint-every", "2", "--lease-secs", "3"];

/// A deployment with one replica and one worker, running a training job of `steps`
/// that has reached step `at`.
fn training_on_one_worker(steps: u64, at: u64) -> (Backing, Server, Worker, String) {
    let backing = Backing::start();
    let server = api(&backing, "");
    let worker = worker(&backing, &QUICK_TAKEOVER);
    let (model, dataset) = upload_model_and_data(&server.url, None);
    let id = submit_training_job(&server.url, &model, &dataset, steps);
    wait_for_step(&server.url, &id, None, at);
    (backing, server, worker, id)
}

#[test]
fn a_worker_killed_mid_training_hands_its_job_to_another_that_resumes_it() {
    let steps = 60;
    let (backing, server, first, id) = training_on_one_worker(steps, 8);
    let base = server.url.clone();
    assert_eq!(
        backing.checkpoints().len(),
        1,
        "the running job's checkpoint is in the bucket"
    );
    // A second worker is idle when the first dies without a word.
    let _second = worker(&backing, &QUICK_TAKEOVER);
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
fn a_worker_stopped_with_sigterm_checkpoints_and_hands_its_job_back_without_spending_an_attempt() {
    let steps = 60;
    let (backing, server, first, id) = training_on_one_worker(steps, 8);
    let base = server.url.clone();
    // What a container runtime sends before it stops a worker's container.
    assert_eq!(first.terminate(), Some(0), "a clean stop exits 0");
    let job = call("GET", &format!("{base}/v1/jobs/{id}"), None, None).json();
    assert_eq!(job["state"], "queued", "handed back to the queue: {job}");
    let kept = backing.checkpoints();
    assert_eq!(kept.len(), 1, "its checkpoint is in the bucket");

    // Another worker takes it at once (no lease to run out) from that checkpoint.
    let _second = worker(&backing, &QUICK_TAKEOVER);
    let job = wait_for_end(&base, &id, None);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(
        job["attempts"], 1,
        "a clean stop does not use up an attempt"
    );
    let from = resumed_from(&base, &id, &job, steps);
    assert!((8..steps).contains(&from), "resumed from step {from}");
    let events = sse(&format!("{base}/v1/jobs/{id}/events"), None);
    assert_eq!(
        states_of(&events),
        ["queued", "running", "queued", "running", "succeeded"],
        "claimed, handed back on SIGTERM, claimed by the second worker, done"
    );
    assert!(
        backing.checkpoints().is_empty(),
        "the checkpoint went with the job"
    );
}

#[test]
fn a_checkpoint_that_cannot_be_read_costs_its_steps_not_the_job() {
    let steps = 20;
    let (backing, server, first, id) = training_on_one_worker(steps, 6);
    let base = server.url.clone();
    first.kill();
    // The bucket's copy no longer holds what its recorded SHA-256 says.
    let kept = backing.checkpoints();
    assert_eq!(kept.len(), 1);
    std::fs::write(&kept[0], b"not the checkpoint that was written").unwrap();

    let _second = worker(&backing, &QUICK_TAKEOVER);
    let job = wait_for_end(&base, &id, None);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 2);
    assert!(
        job["metrics"]["resumed_from_step"].as_u64().unwrap_or(0) == 0,
        "started over: {job}"
    );
    let report = report_of(&base, &id);
    assert_eq!(report["curve"].as_array().unwrap().len(), steps as usize);
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
    let _worker = worker(&backing, &[]);
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
    let _worker = worker(&backing, &[]);
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

#[test]
fn an_api_replica_killed_mid_upload_keeps_nothing_and_the_client_retries_on_the_other() {
    use std::io::Write;
    let backing = Backing::start();
    let first = api(&backing, "");
    let second = api(&backing, "");
    let balancer = Balancer::start(vec![address_of(&first), address_of(&second)]);
    let bytes = fixture_bytes("yolov8t.onnx");

    // Half the model reaches the first replica, then it dies.
    let mut stream = std::net::TcpStream::connect(address_of(&first)).unwrap();
    write!(
        stream,
        "POST /v1/models?name=y8t.onnx HTTP/1.1\r\nHost: effp\r\nContent-Length: {}\r\n\r\n",
        bytes.len()
    )
    .unwrap();
    stream.write_all(&bytes[..bytes.len() / 2]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    first.kill();
    let rest = stream
        .write_all(&bytes[bytes.len() / 2..])
        .and_then(|_| stream.flush());
    let mut answer = String::new();
    let _ = std::io::Read::read_to_string(&mut stream, &mut answer);
    assert!(
        rest.is_err() || answer.is_empty(),
        "the dead replica answered: {answer}"
    );
    assert!(backing.objects().is_empty(), "half a model was kept");
    assert_eq!(
        call("GET", &format!("{}/v1/models", second.url), None, None).json()["items"],
        serde_json::json!([])
    );

    // The client sends it again, through the balancer: the live replica keeps it.
    let kept = call_retrying(
        "POST",
        &format!("{}/v1/models?name=y8t.onnx", balancer.url()),
        None,
        &[],
        Some(&bytes),
    );
    assert_eq!(kept.status, 201, "{}", String::from_utf8_lossy(&kept.body));
    let id = kept.json()["id"].as_str().unwrap().to_string();
    let file = call(
        "GET",
        &format!("{}/v1/models/{id}/file", second.url),
        None,
        None,
    );
    assert_eq!(file.body, bytes);
    assert_intact(&backing);
    assert_eq!(backing.objects().len(), 1);
}

/// The address a server listens on.
fn address_of(server: &Server) -> std::net::SocketAddr {
    server.url.trim_start_matches("http://").parse().unwrap()
}

/// Every object in the bucket holds the content its name (a SHA-256) says.
fn assert_intact(backing: &Backing) {
    for path in backing.objects() {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let sha = format!("{:x}", Sha256::digest(std::fs::read(&path).unwrap()));
        assert_eq!(sha, name, "{} is corrupt", path.display());
    }
}

/// A small seeded generator, so a failing soak can be replayed.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, sides: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % sides
    }
}

#[test]
fn twenty_kills_of_random_api_and_worker_processes_over_eight_jobs_lose_nothing() {
    const STEPS: u64 = 30;
    let backing = Backing::start();
    // Every kill of a worker may cost the job it ran an attempt: allow them all.
    let env = [
        ("EFFP_CHECKPOINT_EVERY", "2"),
        ("EFFP_LEASE_SECS", "3"),
        ("EFFP_MAX_ATTEMPTS", "25"),
    ];
    let mut replicas: Vec<Server> = (0..2).map(|_| replica(&backing, &[], &env)).collect();
    let mut workers: Vec<Worker> = (0..2).map(|_| Worker::start(&backing, &[], &env)).collect();
    let balancer = Balancer::start(replicas.iter().map(address_of).collect());
    let base = balancer.url();

    // Nothing has died yet: the uploads need no retries.
    let (model, dataset) = upload_model_and_data(&base, None);
    let spec = serde_json::json!({
        "model": model, "dataset": dataset, "method": "effp",
        "target": { "flops_ratio": 0.6 },
        "training": { "steps": STEPS, "interval": 2, "batch": 2 },
        "device": "cpu",
    })
    .to_string();
    let submit = |n: usize| {
        // The key makes a retried submission the same job, not a second one.
        let key = format!("soak-job-{n}");
        let created = call_retrying(
            "POST",
            &format!("{base}/v1/jobs"),
            None,
            &[("Idempotency-Key", &key)],
            Some(spec.as_bytes()),
        );
        assert!(matches!(created.status, 200 | 201), "{}", created.status);
        created.json()["id"].as_str().unwrap().to_string()
    };
    let mut ids: Vec<String> = (0..4).map(submit).collect();

    let mut dice = Dice(0x9e37_79b9_7f4a_7c15);
    let mut killed = [0; 2];
    for kill in 0..20 {
        if kill == 6 {
            // More work arrives while processes keep dying.
            ids.extend((4..8).map(submit));
        }
        std::thread::sleep(std::time::Duration::from_millis(1500 + 100 * dice.roll(15)));
        let which = dice.roll(4) as usize;
        killed[which / 2] += 1;
        if which < 2 {
            let dead = std::mem::replace(&mut replicas[which], replica(&backing, &[], &env));
            balancer.replace(which, address_of(&replicas[which]));
            dead.kill();
        } else {
            let i = which - 2;
            let jobs = children(workers[i].child.id());
            let dead = std::mem::replace(&mut workers[i], Worker::start(&backing, &[], &env));
            dead.kill();
            // The job processes of a dead worker die with it: no job runs twice.
            let started = std::time::Instant::now();
            while jobs.iter().any(|&pid| alive(pid)) {
                assert!(
                    started.elapsed().as_secs() < 5,
                    "a dead worker's job process still runs"
                );
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        // Clients keep being answered through the balancer.
        let listed = call_retrying("GET", &format!("{base}/v1/jobs"), None, &[], None);
        assert_eq!(listed.status, 200);
    }

    assert!(
        killed.iter().all(|&n| n >= 5),
        "API replicas and workers both died often: {killed:?}"
    );

    // Eight jobs, each succeeded exactly once, with their artifacts intact.
    let listed = call_retrying("GET", &format!("{base}/v1/jobs?limit=100"), None, &[], None);
    assert_eq!(listed.json()["items"].as_array().unwrap().len(), 8);
    let scratch = tempfile::tempdir().unwrap();
    let mut taken_over = 0;
    for id in &ids {
        let job = wait_for_end(&base, id, None);
        assert_eq!(job["state"], "succeeded", "{job}");
        taken_over += job["attempts"].as_u64().unwrap() - 1;
        let events = sse(&format!("{base}/v1/jobs/{id}/events"), None);
        let states = states_of(&events);
        assert_eq!(
            states.iter().filter(|s| **s == "succeeded").count(),
            1,
            "{states:?}"
        );
        // Only the worker holding the newest claim wrote: attempts never go back,
        // and within one attempt the reported steps only grow (a claim's own event
        // still shows where the attempt before it had got to).
        let attempts: Vec<u64> = events
            .iter()
            .filter_map(|e| e.data["attempts"].as_u64())
            .collect();
        assert!(attempts.windows(2).all(|w| w[0] <= w[1]), "{attempts:?}");
        let mut last = (0, 0);
        for e in events.iter().filter(|e| e.kind == "progress") {
            if let (Some(a), Some(step)) = (
                e.data["attempts"].as_u64(),
                e.data["metrics"]["step"].as_u64(),
            ) {
                assert!(
                    a > last.0 || step >= last.1,
                    "{id}: step {step} after {last:?}"
                );
                last = (a, step);
            }
        }
        // The report's curve has every step, however often the job resumed.
        let report = report_of(&base, id);
        assert_eq!(report["curve"].as_array().unwrap().len(), STEPS as usize);
        let pruned = call_retrying(
            "GET",
            &format!("{base}/v1/jobs/{id}/artifacts/pruned.onnx"),
            None,
            &[],
            None,
        );
        assert_eq!(pruned.status, 200);
        let sha = format!("{:x}", Sha256::digest(&pruned.body));
        assert_eq!(job["artifacts"]["pruned.onnx"]["sha256"], sha.as_str());
        let file = scratch.path().join(format!("{id}.onnx"));
        std::fs::write(&file, &pruned.body).unwrap();
        effp_graph::analyse_file(&file, None).unwrap();
    }
    assert!(taken_over > 0, "no job was taken over from a dead worker");
    assert_intact(&backing);
    assert!(
        backing.checkpoints().is_empty(),
        "checkpoints went with their jobs"
    );
}
