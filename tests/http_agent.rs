//! Device benchmarks end to end: jobs that ask for one wait in phase `benchmark`
//! until a real `effp-agent` process (CPU runner) claims the task over HTTP,
//! measures both models and reports; tasks nobody claims expire; agents that die
//! lose their task to the next one; agent keys and tenant keys stay apart.

mod common;
mod service;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::agent_binary;
use serde_json::json;
use service::*;

const TENANT_KEY: &str = "tenant-key-0123456789";
const AGENT_KEY: &str = "agent-key-0123456789";
const OTHER_AGENT_KEY: &str = "other-agent-key-0123456789";

/// A running `effp-agent`; killed when dropped.
struct Agent(Child);

impl Agent {
    /// An agent for CPU benchmarks; `warmup` runs before the timed ones (many keep
    /// it busy with a task).
    fn start(server: &str, key: Option<&str>, name: &str, once: bool, warmup: u32) -> Self {
        let mut cmd = Command::new(agent_binary());
        cmd.args(["--server", server, "--device", "cpu", "--runner", "cpu"])
            .args(["--name", name, "--threads", "1"])
            .args(["--warmup", &warmup.to_string()])
            .args(["--poll-wait-s", "20"])
            .env_remove("EFFP_AGENT_KEY")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if once {
            cmd.arg("--once");
        }
        // A server without keys (loopback) takes any agent key.
        cmd.args(["--key", key.unwrap_or("any-agent-key-0123456789")]);
        Self(cmd.spawn().unwrap())
    }

    /// Waits for the agent to exit (at most `limit`) and returns whether it succeeded.
    fn wait(mut self, limit: Duration) -> bool {
        let started = Instant::now();
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status.success();
            }
            assert!(started.elapsed() < limit, "the agent did not exit");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls job `id` until `done` holds for it (at most 300 s) and returns it.
fn wait_until(
    base: &str,
    id: &str,
    token: Option<&str>,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let job = call("GET", &format!("{base}/v1/jobs/{id}"), token, None).json();
        if done(&job) {
            return job;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "job {id} never got there: {job}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn a_job_waits_for_its_benchmark_and_shows_both_latencies(shape: Shape) {
    let server = Deployment::start(shape, &[], &[]);
    let base = &server.url;
    let model = upload(base, "models", None, &fixture_bytes("yolov8n.onnx"));
    let id = submit_job(
        base,
        None,
        &json!({
            "model": model, "method": "l1", "target": {"flops_ratio": 0.5},
            "benchmark": {"device": "cpu", "iterations": 5},
        }),
    );
    // Pruned and stored, the job waits for an agent of its device kind.
    let waiting = wait_until(base, &id, None, |j| j["phase"] == "benchmark");
    assert_eq!(waiting["state"], "running", "{waiting}");
    assert_eq!(waiting["benchmarks"][0]["state"], "queued", "{waiting}");
    assert_eq!(waiting["metrics"]["benchmark"]["state"], "queued");
    assert!(waiting["metrics"]["flops_ratio"].as_f64().unwrap() <= 0.5);

    let agent = Agent::start(base, None, "cpu-1", true, 1);
    let job = wait_for_end(base, &id, None);
    assert!(agent.wait(Duration::from_secs(60)), "the agent failed");
    assert_eq!(job["state"], "succeeded", "{job}");
    let benchmark = &job["benchmarks"][0];
    assert_eq!(benchmark["state"], "succeeded", "{benchmark}");
    assert_eq!(benchmark["attempts"], 1);
    let result = &benchmark["result"];
    assert_eq!(result["runner"], "cpu");
    assert_eq!(result["precision"], "fp32", "the CPU runner measures fp32");
    assert_eq!(result["device"]["kind"], "cpu");
    assert_eq!(result["request"]["iterations"], 5);
    let p50 = |model: &str| result[model]["end_to_end"]["p50_ms"].as_f64().unwrap();
    assert!(p50("original") > 0.0 && p50("pruned") > 0.0, "{result}");
    assert!(
        p50("pruned") < p50("original"),
        "the model with half the FLOPs is not faster: {result}"
    );
    let speedup = benchmark["speedup"].as_f64().unwrap();
    assert!((speedup - p50("original") / p50("pruned")).abs() < 1e-9);
    assert_eq!(job["metrics"]["benchmark"]["state"], "succeeded");
    // The result is also a `benchmark` event of the job's stream.
    let events = sse(&format!("{base}/v1/jobs/{id}/events"), None);
    let measured = events
        .iter()
        .find(|e| e.kind == "benchmark" && e.data["metrics"]["benchmark"]["state"] == "succeeded")
        .unwrap_or_else(|| {
            panic!(
                "no benchmark event with the result: {:?}",
                events.iter().map(|e| &e.kind).collect::<Vec<_>>()
            )
        });
    assert_eq!(
        measured.data["metrics"]["benchmark"]["result"], *result,
        "the event carries the result the job shows"
    );
    let listed = call(
        "GET",
        &format!("{base}/v1/jobs/{id}/benchmarks"),
        None,
        None,
    )
    .json();
    assert_eq!(listed["items"][0], *benchmark);
}

fn an_unclaimed_benchmark_expires_and_another_can_be_asked_for(shape: Shape) {
    let server = Deployment::start(shape, &[], &[("EFFP_BENCHMARK_CLAIM_SECS", "1")]);
    let base = &server.url;
    let model = upload(base, "models", None, &fixture_bytes("yolov8t.onnx"));
    let id = submit_job(
        base,
        None,
        &json!({
            "model": model, "target": {"flops_ratio": 0.7},
            "benchmark": {"device": "jetson-xavier-nx", "precision": "int8"},
        }),
    );
    let job = wait_for_end(base, &id, None);
    assert_eq!(job["state"], "succeeded", "{job}");
    let expired = &job["benchmarks"][0];
    assert_eq!(expired["state"], "expired", "{job}");
    assert_eq!(expired["request"]["precision"], "int8");
    assert_eq!(expired["request"]["iterations"], 200);
    assert!(
        expired["error"]
            .as_str()
            .unwrap()
            .contains("--device jetson-xavier-nx"),
        "{expired}"
    );
    assert!(job["artifacts"]["pruned.onnx"]["size"].as_u64().unwrap() > 0);

    let url = format!("{base}/v1/jobs/{id}/benchmarks");
    let again = call(
        "POST",
        &url,
        None,
        Some(br#"{"device": "cpu", "iterations": 3}"#),
    );
    assert_eq!(
        again.status,
        201,
        "{}",
        String::from_utf8_lossy(&again.body)
    );
    assert_eq!(again.json()["state"], "queued");
    let listed = call("GET", &url, None, None).json();
    assert_eq!(listed["items"].as_array().unwrap().len(), 2);
    assert_eq!(listed["items"][1]["request"]["device"], "cpu");
    // Bad requests change nothing.
    let bad = call(
        "POST",
        &url,
        None,
        Some(br#"{"device": "Jetson NX", "iterations": 0}"#),
    )
    .problem(422);
    let paths: Vec<_> = bad["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].clone())
        .collect();
    assert_eq!(paths, [json!("/device"), json!("/iterations")], "{bad}");
    call("POST", &url, None, Some(br#"{"device": "cpu", "runs": 3}"#)).problem(422);
    call(
        "POST",
        &format!("{base}/v1/jobs/job_nope/benchmarks"),
        None,
        Some(br#"{"device": "cpu"}"#),
    )
    .problem(404);
    let listed = call("GET", &url, None, None).json();
    assert_eq!(listed["items"].as_array().unwrap().len(), 2);
    // A benchmark asked for with a job is validated with it.
    let refused = call(
        "POST",
        &format!("{base}/v1/jobs"),
        None,
        Some(
            json!({"model": model, "target": {"flops_ratio": 0.5}, "benchmark": {"device": ""}})
                .to_string()
                .as_bytes(),
        ),
    )
    .problem(422);
    assert_eq!(
        refused["errors"][0]["path"], "/benchmark/device",
        "{refused}"
    );
}

fn an_agent_that_dies_loses_its_task_and_keys_stay_apart(shape: Shape) {
    let keys = format!("nx:{AGENT_KEY},other:{OTHER_AGENT_KEY}");
    let server = Deployment::start(
        shape,
        &[],
        &[
            ("EFFP_API_KEYS", &format!("acme:{TENANT_KEY}")),
            ("EFFP_AGENT_KEYS", &keys),
            ("EFFP_BENCHMARK_LEASE_SECS", "2"),
        ],
    );
    let base = &server.url;
    let tenant = Some(TENANT_KEY);
    // Keys stay apart: a tenant cannot claim, an agent cannot list models.
    let claim = json!({"agent": "x", "facts": {"kind": "cpu"}}).to_string();
    call(
        "POST",
        &format!("{base}/v1/agent/claim"),
        tenant,
        Some(claim.as_bytes()),
    )
    .problem(403);
    call(
        "POST",
        &format!("{base}/v1/agent/claim"),
        Some("not-a-key-0123456789"),
        Some(claim.as_bytes()),
    )
    .problem(401);
    call(
        "POST",
        &format!("{base}/v1/agent/claim"),
        None,
        Some(claim.as_bytes()),
    )
    .problem(401);
    call("GET", &format!("{base}/v1/models"), Some(AGENT_KEY), None).problem(403);
    call("GET", &format!("{base}/v1/jobs"), Some(AGENT_KEY), None).problem(403);

    let model = upload(base, "models", tenant, &fixture_bytes("yolov8n.onnx"));
    let id = submit_job(
        base,
        tenant,
        &json!({
            "model": model, "method": "l1", "target": {"flops_ratio": 0.5},
            "benchmark": {"device": "cpu", "iterations": 3},
        }),
    );
    wait_until(base, &id, tenant, |j| j["phase"] == "benchmark");
    let first = Agent::start(base, Some(AGENT_KEY), "first", false, 100_000);
    let held = wait_until(base, &id, tenant, |j| {
        j["benchmarks"][0]["state"] == "running"
    });
    let bm = held["benchmarks"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(held["benchmarks"][0]["attempts"], 1);
    let task = |rest: &str| format!("{base}/v1/agent/benchmarks/{bm}/{rest}");

    // Another agent key cannot see the task or read its models.
    call(
        "GET",
        &task("original?attempt=1"),
        Some(OTHER_AGENT_KEY),
        None,
    )
    .problem(404);
    // The right key with a claim it does not hold, or a result for it, is refused.
    call("GET", &task("pruned?attempt=7"), Some(AGENT_KEY), None).problem(409);
    let timing = json!({"compute": {"p50_ms": 1.0, "p90_ms": 1.0, "p99_ms": 1.0, "mean_ms": 1.0},
                        "end_to_end": {"p50_ms": 1.0, "p90_ms": 1.0, "p99_ms": 1.0, "mean_ms": 1.0},
                        "throughput_per_s": 1000.0});
    let report = |attempt: u32, original: &serde_json::Value| {
        json!({"attempt": attempt, "runner": "cpu", "device": {"kind": "cpu"},
               "outcome": {"measured": {"precision": "fp32", "original": original, "pruned": timing}}})
        .to_string()
    };
    call(
        "POST",
        &task("report"),
        Some(AGENT_KEY),
        Some(report(7, &timing).as_bytes()),
    )
    .problem(409);
    // Malformed results are 422 and change nothing.
    let mut negative = timing.clone();
    negative["end_to_end"]["p50_ms"] = json!(-1.0);
    let bad = call(
        "POST",
        &task("report"),
        Some(AGENT_KEY),
        Some(report(1, &negative).as_bytes()),
    )
    .problem(422);
    assert_eq!(
        bad["errors"][0]["path"], "/outcome/measured/original",
        "{bad}"
    );
    call(
        "POST",
        &task("report"),
        Some(AGENT_KEY),
        Some(b"{\"attempt\": 1, \"runner\": "),
    )
    .problem(422);
    let wrong_kind =
        report(1, &timing).replace("{\"kind\":\"cpu\"}", "{\"kind\":\"jetson-xavier-nx\"}");
    call(
        "POST",
        &task("report"),
        Some(AGENT_KEY),
        Some(wrong_kind.as_bytes()),
    )
    .problem(422);
    let unchanged = call("GET", &format!("{base}/v1/jobs/{id}"), tenant, None).json();
    assert_eq!(unchanged["benchmarks"][0]["state"], "running");
    assert_eq!(unchanged["benchmarks"][0]["attempts"], 1);

    // The agent dies holding the task: once its lease runs out, the next agent
    // of the kind measures it.
    drop(first);
    let second = Agent::start(base, Some(AGENT_KEY), "second", true, 1);
    let job = wait_for_end(base, &id, tenant);
    assert!(
        second.wait(Duration::from_secs(60)),
        "the second agent failed"
    );
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["benchmarks"][0]["state"], "succeeded", "{job}");
    assert_eq!(job["benchmarks"][0]["attempts"], 2, "{job}");
    // The first claim is fenced off for good.
    call(
        "POST",
        &task("lease"),
        Some(AGENT_KEY),
        Some(b"{\"attempt\": 1}"),
    )
    .problem(409);
    call(
        "POST",
        &task("report"),
        Some(AGENT_KEY),
        Some(report(1, &timing).as_bytes()),
    )
    .problem(409);
    let kept = call(
        "GET",
        &format!("{base}/v1/jobs/{id}/benchmarks"),
        tenant,
        None,
    )
    .json();
    assert_eq!(kept["items"][0], job["benchmarks"][0]);
}

on_both_deployments!(
    a_job_waits_for_its_benchmark_and_shows_both_latencies,
    an_unclaimed_benchmark_expires_and_another_can_be_asked_for,
    an_agent_that_dies_loses_its_task_and_keys_stay_apart,
);
