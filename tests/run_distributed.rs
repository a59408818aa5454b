//! `make run-distributed` as a person uses it: the script starts docker/compose.yaml's
//! stack from the binaries (a real Redis with its append-only file, a real S3 server,
//! two API replicas behind a real nginx with docker/nginx.conf, a worker and a CPU
//! benchmark agent), prints the URL, a job with a device benchmark runs through
//! them, and SIGTERM stops every process it started.

mod common;
mod service;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::agent_binary;
use service::*;
use sha2::{Digest, Sha256};

/// The `127.0.0.1:PORT` ports named in a line.
fn ports_in(line: &str) -> Vec<u16> {
    line.match_indices("127.0.0.1:")
        .filter_map(|(at, prefix)| {
            let digits: String = line[at + prefix.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        })
        .collect()
}

#[test]
fn run_distributed_starts_the_stack_prints_its_url_and_stops_it_all() {
    let run = tempfile::tempdir().unwrap();
    let port = effp_testkit::servers::free_port();
    let mut script = Command::new("bash")
        .arg(effp_testkit::fixtures::workspace_root().join("scripts/run-distributed.sh"))
        .env("EFFP_BIN", env!("CARGO_BIN_EXE_effp"))
        .env("EFFP_AGENT_BIN", agent_binary())
        .env("EFFP_RUN_DIR", run.path())
        .env("EFFP_LISTEN", format!("127.0.0.1:{port}"))
        .env_remove("EFFP_API_KEYS")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(script.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    assert!(
        first.starts_with(&format!("effp is running at {base}")),
        "{first}"
    );
    // The ports of Redis, of the S3 server and of the two API replicas, from the
    // lines that name them.
    let mut ports = vec![port];
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let line = lines.next().unwrap().unwrap();
        let found = ports_in(&line);
        assert!(!found.is_empty(), "{line}");
        if line.contains("API replicas") {
            replicas = found.clone();
        }
        ports.extend(found);
    }
    assert_eq!(replicas.len(), 2, "two API replicas");
    // The script's remaining lines, so that it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    assert!(
        run.path().join("redis/appendonlydir").is_dir(),
        "Redis keeps an append-only file"
    );

    let bytes = fixture_bytes("yolov8t.onnx");
    let model = call("POST", &format!("{base}/v1/models"), None, Some(&bytes));
    assert_eq!(
        model.status,
        201,
        "{}",
        String::from_utf8_lossy(&model.body)
    );
    // Stored in the S3 server's bucket, not in the API's directory.
    let sha = format!("{:x}", Sha256::digest(&bytes));
    assert!(run.path().join("s3/effp/effp/objects").join(&sha).is_file());
    let id = submit_job(
        &base,
        None,
        &serde_json::json!({
            "model": model.json()["id"], "target": {"flops_ratio": 0.5}, "device": "cpu",
            "benchmark": {"device": "cpu", "iterations": 3},
        }),
    );
    let job = wait_for_end(&base, &id, None);
    assert_eq!(job["state"], "succeeded", "{job}");
    // The script's agent measured both models.
    let benchmark = &job["benchmarks"][0];
    assert_eq!(benchmark["state"], "succeeded", "{job}");
    assert_eq!(benchmark["result"]["runner"], "cpu", "{benchmark}");
    assert!(
        benchmark["result"]["pruned"]["end_to_end"]["p50_ms"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    // nginx spread the requests over both replicas.
    for replica in &replicas {
        let metrics = call(
            "GET",
            &format!("http://127.0.0.1:{replica}/metrics"),
            None,
            None,
        );
        let served: f64 = String::from_utf8_lossy(&metrics.body)
            .lines()
            .filter(|l| l.starts_with("effp_http_request_duration_seconds_count"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert!(
            served >= 3.0,
            "replica on {replica} served {served} requests"
        );
    }

    // SIGTERM to the script stops everything it started.
    unsafe { libc::kill(script.id() as i32, libc::SIGTERM) };
    let started = Instant::now();
    let status = loop {
        if let Some(status) = script.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the script did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.code().is_some(), "the script was killed: {status:?}");
    for port in ports {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "something still listens on {port}"
        );
    }
}
