//! The client and one task's handling against a minimal in-test HTTP server: the
//! statuses the server answers (204, 401, 409, 422) and what the agent does with them.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use clap::Parser as _;
use effp_agent::client::{Client, ClientError, ModelKind};
use effp_agent::runner::cpu::CpuRunner;
use effp_agent::settings::Settings;
use effp_agent::task::{TaskContext, TaskOutcome, handle};
use effp_protocol::{
    BenchmarkReport, BenchmarkRequest, BenchmarkTask, ClaimRequest, DeviceFacts, Measurements,
    Precision, ReportOutcome, Runner as RunnerKind, RunnerFailure,
};

const KEY: &str = "agent-key-0123456789";

/// A request the server saw.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    authorization: Option<String>,
    body: Vec<u8>,
}

/// An answer: status, content type, body.
type Answer = (u16, &'static str, Vec<u8>);

/// Serves `route` on a local port until the test ends; returns the base URL and the
/// requests seen.
fn serve(route: impl Fn(&Seen) -> Answer + Send + 'static) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            if let Some(request) = read_request(&stream) {
                let (status, content_type, body) = route(&request);
                log.lock().unwrap().push(request);
                let mut stream = stream;
                let head = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body);
            }
        }
    });
    (base, seen)
}

fn read_request(stream: &TcpStream) -> Option<Seen> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut length = 0usize;
    let mut authorization = None;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().ok()?,
            "authorization" => authorization = Some(value.trim().to_string()),
            _ => {}
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Seen {
        method,
        path,
        authorization,
        body,
    })
}

fn problem(title: &str, detail: &str) -> Vec<u8> {
    serde_json::json!({"type": "about:blank", "title": title, "detail": detail})
        .to_string()
        .into_bytes()
}

fn client(base: &str) -> Client {
    let settings = Settings::try_parse_from([
        "effp-agent",
        "--server",
        base,
        "--key",
        KEY,
        "--device",
        "cpu",
    ])
    .unwrap();
    Client::new(&settings.server_base(), settings.key)
}

fn claim_request() -> ClaimRequest {
    ClaimRequest {
        agent: "test-agent".into(),
        facts: DeviceFacts {
            kind: "cpu".into(),
            ..DeviceFacts::default()
        },
        wait_s: 0,
    }
}

fn task(original_bytes: u64, pruned_bytes: u64) -> BenchmarkTask {
    BenchmarkTask {
        id: "bm_test1".into(),
        job: "job_1".into(),
        attempt: 3,
        request: BenchmarkRequest {
            device: "cpu".into(),
            precision: Precision::Fp16,
            iterations: 5,
        },
        lease_s: 90,
        original_bytes,
        pruned_bytes,
    }
}

#[test]
fn a_claim_without_a_task_is_none_and_carries_the_key() {
    let (base, seen) = serve(|_| (204, "text/plain", vec![]));
    assert_eq!(client(&base).claim(&claim_request()).unwrap(), None);
    let seen = seen.lock().unwrap();
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("POST", "/v1/agent/claim")
    );
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some(&*format!("Bearer {KEY}"))
    );
    let sent: ClaimRequest = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(sent, claim_request());
}

#[test]
fn a_claimed_task_is_decoded() {
    let body = serde_json::to_vec(&task(10, 20)).unwrap();
    let (base, _) = serve(move |_| (200, "application/json", body.clone()));
    assert_eq!(
        client(&base).claim(&claim_request()).unwrap(),
        Some(task(10, 20))
    );
}

#[test]
fn a_refused_key_says_what_to_check_without_repeating_it() {
    let (base, _) = serve(|_| {
        (
            401,
            "application/problem+json",
            problem("Unauthorized", "unknown agent key"),
        )
    });
    let err = client(&base).claim(&claim_request()).unwrap_err();
    assert!(
        matches!(err, ClientError::Unauthorized { status: 401, .. }),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    let text = err.to_string();
    assert!(
        text.contains("Unauthorized: unknown agent key") && text.contains("EFFP_AGENT_KEY"),
        "{text}"
    );
    assert!(!text.contains(KEY));
}

#[test]
fn lease_renewals_read_the_new_lease_and_409_means_lost() {
    let (base, seen) = serve(|r| {
        if r.body == br#"{"attempt":3}"# {
            (200, "application/json", br#"{"lease_s": 120}"#.to_vec())
        } else {
            (
                409,
                "application/problem+json",
                problem("Conflict", "attempt 2 is not the current claim"),
            )
        }
    });
    let c = client(&base);
    assert_eq!(c.renew("bm_test1", 3).unwrap(), 120);
    assert_eq!(
        seen.lock().unwrap()[0].path,
        "/v1/agent/benchmarks/bm_test1/lease"
    );
    let err = c.renew("bm_test1", 2).unwrap_err();
    assert!(matches!(err, ClientError::LeaseLost { .. }), "{err:?}");
}

#[test]
fn downloads_keep_to_the_announced_size() {
    let (base, seen) = serve(|_| (200, "application/octet-stream", b"0123456789".to_vec()));
    let c = client(&base);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("m.onnx");
    c.download("bm_test1", 3, ModelKind::Pruned, 10, &dest)
        .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), b"0123456789");
    assert_eq!(
        seen.lock().unwrap()[0].path,
        "/v1/agent/benchmarks/bm_test1/pruned?attempt=3"
    );
    let err = c
        .download("bm_test1", 3, ModelKind::Original, 4, &dest)
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::TooLarge {
                what: "original",
                limit: 4
            }
        ),
        "{err:?}"
    );
    let err = c
        .download("bm_test1", 3, ModelKind::Original, 11, &dest)
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Truncated { got: 10, .. }) && err.is_retryable(),
        "{err:?}"
    );
}

#[test]
fn a_refused_report_is_not_retried_and_a_dead_server_is() {
    let (base, _) = serve(|_| {
        (
            422,
            "application/problem+json",
            problem("Unprocessable", "/outcome: bad"),
        )
    });
    let report = BenchmarkReport {
        attempt: 3,
        runner: RunnerKind::Cpu,
        device: DeviceFacts {
            kind: "cpu".into(),
            ..DeviceFacts::default()
        },
        outcome: ReportOutcome::Failed(RunnerFailure { error: "x".into() }),
    };
    let err = client(&base).report("bm_test1", &report).unwrap_err();
    assert!(
        matches!(err, ClientError::Refused { status: 422, .. }) && !err.is_retryable(),
        "{err:?}"
    );

    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = client(&format!("http://127.0.0.1:{port}"))
        .claim(&claim_request())
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Unreachable { .. }) && err.is_retryable(),
        "{err:?}"
    );
}

/// A model the CPU runner can time: one 1×1 convolution.
fn small_model() -> Vec<u8> {
    let mut b = effp_testkit::builder::ModelBuilder::new("small", 3);
    let x = b.input("images", &[1, 3, 16, 16]);
    let c = b.conv(&x, 3, 4, 1, 1, 1);
    b.finish_as(&c, "out", &[1, 4, 16, 16])
}

#[test]
fn a_task_is_downloaded_measured_and_reported() {
    let model = small_model();
    let len = model.len() as u64;
    let (base, seen) = serve(move |r| match (r.method.as_str(), r.path.as_str()) {
        ("GET", _) => (200, "application/octet-stream", model.clone()),
        ("POST", "/v1/agent/benchmarks/bm_test1/report") => (204, "text/plain", vec![]),
        _ => (404, "text/plain", b"unexpected".to_vec()),
    });
    let c = client(&base);
    let runner = CpuRunner::new(1, 1);
    let work = tempfile::tempdir().unwrap();
    let ctx = TaskContext {
        client: &c,
        runner: &runner,
        kind: "cpu",
        work_root: work.path(),
    };
    assert_eq!(
        handle(&ctx, &task(len, len)).unwrap(),
        TaskOutcome::Measured
    );
    let seen = seen.lock().unwrap();
    let paths: Vec<&str> = seen.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/v1/agent/benchmarks/bm_test1/original?attempt=3",
            "/v1/agent/benchmarks/bm_test1/pruned?attempt=3",
            "/v1/agent/benchmarks/bm_test1/report",
        ]
    );
    let report: BenchmarkReport = serde_json::from_slice(&seen[2].body).unwrap();
    assert!(report.errors().is_empty(), "{:?}", report.errors());
    assert_eq!(
        (report.attempt, report.runner, report.device.kind.as_str()),
        (3, RunnerKind::Cpu, "cpu")
    );
    let ReportOutcome::Measured(Measurements { precision, .. }) = report.outcome else {
        panic!("{report:?}")
    };
    assert_eq!(precision, Precision::Fp32);
    assert_eq!(
        std::fs::read_dir(work.path()).unwrap().count(),
        0,
        "the task's folder is removed"
    );
}

#[test]
fn a_lost_lease_abandons_the_task_without_a_report() {
    for status in [409, 404] {
        abandons_on(status);
    }
}

/// The server answers `status` to everything: the task is not held any more.
fn abandons_on(status: u16) {
    let (base, seen) = serve(move |_| {
        (
            status,
            "application/problem+json",
            problem("Not held", "lease lost"),
        )
    });
    let c = client(&base);
    let runner = CpuRunner::new(1, 1);
    let work = tempfile::tempdir().unwrap();
    let ctx = TaskContext {
        client: &c,
        runner: &runner,
        kind: "cpu",
        work_root: work.path(),
    };
    assert_eq!(handle(&ctx, &task(10, 10)).unwrap(), TaskOutcome::Abandoned);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1, "only the download was tried: {seen:?}");
}

#[test]
fn a_model_that_cannot_run_is_reported_as_failed() {
    let (base, seen) = serve(|r| match r.method.as_str() {
        "GET" => (200, "application/octet-stream", b"not onnx".to_vec()),
        _ => (204, "text/plain", vec![]),
    });
    let c = client(&base);
    let runner = CpuRunner::new(1, 1);
    let work = tempfile::tempdir().unwrap();
    let ctx = TaskContext {
        client: &c,
        runner: &runner,
        kind: "cpu",
        work_root: work.path(),
    };
    let outcome = handle(&ctx, &task(8, 8)).unwrap();
    let TaskOutcome::Failed(error) = outcome else {
        panic!("{outcome:?}")
    };
    assert!(
        error.starts_with("original model: tract could not load"),
        "{error}"
    );
    let seen = seen.lock().unwrap();
    let report: BenchmarkReport = serde_json::from_slice(&seen.last().unwrap().body).unwrap();
    assert!(matches!(report.outcome, ReportOutcome::Failed(_)));
}
