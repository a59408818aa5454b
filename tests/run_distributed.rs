//! `make run-distributed` as a person uses it: the script starts a real Redis, a
//! real S3 server, an API replica and a worker, prints the URL, a job runs through
//! them, and SIGTERM stops every process it started.

mod service;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use service::*;
use sha2::{Digest, Sha256};

#[test]
fn run_distributed_starts_the_stack_prints_its_url_and_stops_it_all() {
    let run = tempfile::tempdir().unwrap();
    let port = effp_testkit::servers::free_port();
    let mut script = Command::new("bash")
        .arg(effp_testkit::fixtures::workspace_root().join("scripts/run-distributed.sh"))
        .env("EFFP_BIN", env!("CARGO_BIN_EXE_effp"))
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
    // The ports of Redis and of the S3 server, from the lines that name them.
    let mut ports = vec![port];
    for _ in 0..2 {
        let line = lines.next().unwrap().unwrap();
        let at = line.find("127.0.0.1:").unwrap_or_else(|| panic!("{line}")) + 10;
        let digits: String = line[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        ports.push(digits.parse().unwrap());
    }

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
        &serde_json::json!({"model": model.json()["id"], "target": {"flops_ratio": 0.5}, "device": "cpu"}),
    );
    let job = wait_for_end(&base, &id, None);
    assert_eq!(job["state"], "succeeded", "{job}");

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
