//! What the HTTP tests share: a real `effp serve` process on loopback with its own
//! data directory, and a small client for it.
#![allow(dead_code)] // Each test binary uses its own part of the harness.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use effp_testkit::fixtures;

mod deployment;
#[allow(unused_imports)] // Not every test binary starts deployments.
pub use deployment::*;

/// A running `effp serve` with its own data directory; killed when dropped.
pub struct Server {
    pub child: Child,
    pub url: String,
    pub data: tempfile::TempDir,
}

impl Server {
    /// Starts a server on a fresh data directory.
    pub fn start(extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), extra, env)
    }

    /// Starts a server on an existing data directory (a restart).
    pub fn start_in(data: tempfile::TempDir, extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_binary(env!("CARGO_BIN_EXE_effp").as_ref(), data, extra, env)
    }

    /// Starts a server from a given effp binary (another build of it).
    pub fn start_binary(
        binary: &std::path::Path,
        data: tempfile::TempDir,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut cmd = Command::new(binary);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data.path())
            .args(extra)
            .env_remove("EFFP_API_KEYS")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no URL in {line:?}"))
            .to_string();
        Self { child, url, data }
    }

    /// Kills the server with SIGKILL, as a crash would, and hands back its data.
    pub fn kill(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.data, tempfile::tempdir().unwrap())
    }

    /// The files in the object store.
    pub fn objects(&self) -> Vec<PathBuf> {
        let dir = self.data.path().join("objects").join("objects");
        std::fs::read_dir(dir)
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default()
    }

    /// What the server's scratch folder holds (requests and jobs in progress).
    pub fn scratch(&self) -> Vec<PathBuf> {
        let mine = self
            .data
            .path()
            .join("scratch")
            .join(self.child.id().to_string());
        assert!(
            mine.is_dir(),
            "the server's scratch folder {}",
            mine.display()
        );
        std::fs::read_dir(mine)
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap()
    }

    /// The training checkpoints kept in the object store (one per job).
    pub fn checkpoints(&self) -> Vec<PathBuf> {
        checkpoints_in(self.data.path())
    }
}

/// Where the embedded object store of the data directory `data` keeps checkpoints.
pub fn checkpoint_dir(data: &Path) -> PathBuf {
    data.join("objects").join("named").join("checkpoints")
}

/// The training checkpoints kept in the data directory `data`.
pub fn checkpoints_in(data: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(checkpoint_dir(data))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default()
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What came back.
pub struct Reply {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Reply {
    /// A response header's value (names in any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }

    /// Asserts an RFC 9457 problem document with this status and returns it.
    pub fn problem(&self, status: u16) -> serde_json::Value {
        assert_eq!(
            self.status,
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(self.headers["content-type"], "application/problem+json");
        let p = self.json();
        assert_eq!(p["status"], status);
        assert!(p["type"].as_str().unwrap().starts_with("https://"));
        assert!(!p["detail"].as_str().unwrap().is_empty());
        p
    }
}

/// Sends a request with an optional bearer token and raw body.
pub fn call(method: &str, url: &str, token: Option<&str>, body: Option<&[u8]>) -> Reply {
    call_with(method, url, token, &[], body)
}

/// Sends a request with an optional bearer token, extra headers and a raw body.
pub fn call_with(
    method: &str,
    url: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Reply {
    try_call(method, url, token, headers, body).unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

/// Sends a request; an error when no HTTP answer came back (the connection failed).
pub fn try_call(
    method: &str,
    url: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<Reply, String> {
    let mut req = ureq::request(method, url);
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    for (name, value) in headers {
        req = req.set(name, value);
    }
    let result = match body {
        Some(b) => req.send_bytes(b),
        None => req.call(),
    };
    let response = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(e.to_string()),
    };
    let status = response.status();
    let headers = response
        .headers_names()
        .into_iter()
        .map(|n| {
            let v = response.header(&n).unwrap_or_default().to_string();
            (n.to_lowercase(), v)
        })
        .collect();
    let mut body = Vec::new();
    response
        .into_reader()
        .read_to_end(&mut body)
        .map_err(|e| e.to_string())?;
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// Sends a request as a client of a replicated service does: a lost connection or a
/// 502/503 is retried (for up to a minute), anything else is the answer.
pub fn call_retrying(
    method: &str,
    url: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Reply {
    let started = std::time::Instant::now();
    loop {
        let outcome = try_call(method, url, token, headers, body);
        match &outcome {
            Ok(reply) if !matches!(reply.status, 502 | 503) => return outcome.unwrap(),
            _ if started.elapsed().as_secs() > 60 => {
                panic!(
                    "{method} {url} failed for a minute: {:?}",
                    outcome.map(|r| r.status)
                )
            }
            _ => std::thread::sleep(std::time::Duration::from_millis(200)),
        }
    }
}

/// Sends only the head of a POST that declares `length` body bytes and asks
/// `Expect: 100-continue`; returns what the server answers before the body follows.
pub fn raw_post_head(base: &str, path: &str, length: u64) -> String {
    use std::io::Write;
    let address = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Length: {length}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

/// A `multipart/form-data` body with one file part: its content type and bytes.
pub fn multipart(part: &str, file_name: &str, content: &[u8]) -> (String, Vec<u8>) {
    let boundary = "effp-test-boundary-7d1f";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nignored\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"{part}\"; filename=\"{file_name}\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(content);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// The bytes of a fixture file.
pub fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixtures::path(name)).unwrap()
}
/// One Server-Sent Event.
#[derive(Debug)]
pub struct Sse {
    pub id: i64,
    pub kind: String,
    pub data: serde_json::Value,
}

/// Reads an event stream to its end.
pub fn sse(url: &str, last_event_id: Option<i64>) -> Vec<Sse> {
    sse_as(url, None, last_event_id)
}

/// Reads an event stream to its end as the tenant of `token`.
pub fn sse_as(url: &str, token: Option<&str>, last_event_id: Option<i64>) -> Vec<Sse> {
    let mut req = ureq::get(url).set("Accept", "text/event-stream");
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    if let Some(id) = last_event_id {
        req = req.set("Last-Event-ID", &id.to_string());
    }
    let response = req.call().unwrap();
    assert_eq!(response.content_type(), "text/event-stream");
    let text = response.into_string().unwrap();
    text.split("\n\n")
        .filter_map(|block| {
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
            };
            Some(Sse {
                id: field("id:")?.parse().ok()?,
                kind: field("event:")?,
                data: serde_json::from_str(&field("data:")?).ok()?,
            })
        })
        .collect()
}

/// Polls a job until it has ended (at most 300 s) and returns it.
pub fn wait_for_end(base: &str, id: &str, token: Option<&str>) -> serde_json::Value {
    let started = std::time::Instant::now();
    loop {
        let job = call("GET", &format!("{base}/v1/jobs/{id}"), token, None).json();
        if matches!(
            job["state"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        ) {
            return job;
        }
        assert!(
            started.elapsed().as_secs() < 300,
            "job {id} did not end: {job}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Resident memory of a process in bytes.
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// The processes a process started (its worker processes, for a server).
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
                out.extend(
                    text.split_whitespace()
                        .filter_map(|p| p.parse::<u32>().ok()),
                );
            }
        }
    }
    out
}

/// Whether a process is still running (and not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.split(") ").nth(1).unwrap_or("").starts_with('Z'))
        .unwrap_or(false)
}

/// Submits a job as `token`'s tenant; asserts 201 and returns its id.
pub fn submit_job(base: &str, token: Option<&str>, body: &serde_json::Value) -> String {
    let created = call(
        "POST",
        &format!("{base}/v1/jobs"),
        token,
        Some(body.to_string().as_bytes()),
    );
    assert_eq!(
        created.status,
        201,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
    created.json()["id"].as_str().unwrap().to_string()
}

/// Uploads `bytes` to `/v1/{what}` (models or datasets); asserts it was kept (201, or
/// 200 for content the tenant had) and returns the id.
pub fn upload(base: &str, what: &str, token: Option<&str>, bytes: &[u8]) -> String {
    let reply = call("POST", &format!("{base}/v1/{what}"), token, Some(bytes));
    assert!(
        matches!(reply.status, 200 | 201),
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    reply.json()["id"].as_str().unwrap().to_string()
}

/// Downloads a job's artifact into `dir` (failing the test unless it is served) and
/// returns the file's path.
#[allow(dead_code)]
pub fn download_artifact(
    base: &str,
    id: &str,
    name: &str,
    dir: &std::path::Path,
) -> std::path::PathBuf {
    let reply = call(
        "GET",
        &format!("{base}/v1/jobs/{id}/artifacts/{name}"),
        None,
        None,
    );
    assert_eq!(reply.status, 200, "{name} of {id}");
    let path = dir.join(name);
    std::fs::write(&path, &reply.body).unwrap();
    path
}

/// Every file below `dir` (one level of subfolders deep is enough for the YOLO
/// layout: `images/<split>/…`), as its path relative to `dir` and its bytes.
pub fn files_of(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let name = path
                    .strip_prefix(dir)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_string();
                files.push((name, std::fs::read(&path).unwrap()));
            }
        }
    }
    files
}

/// A .zip of the folder `dir`'s files.
pub fn zip_dir(dir: &std::path::Path) -> Vec<u8> {
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in files_of(dir) {
        z.start_file(name, opts).unwrap();
        std::io::Write::write_all(&mut z, &bytes).unwrap();
    }
    z.finish().unwrap().into_inner()
}

/// A small synthetic dataset made by `effp synth` (20 images of 64 px).
pub fn small_dataset(dir: &std::path::Path) -> std::path::PathBuf {
    let out = dir.join("set");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_effp"))
        .args(["synth", "--images", "20", "--imgsz", "64", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(status.status.success());
    out
}

/// Submits a short EFFP job (CPU, target 0.6 of the FLOPs) that checkpoints as it
/// trains; its id.
pub fn submit_training_job(base: &str, model: &str, dataset: &str, steps: u64) -> String {
    submit_job(
        base,
        None,
        &serde_json::json!({
            "model": model, "dataset": dataset, "method": "effp",
            "target": { "flops_ratio": 0.6 },
            "training": { "steps": steps, "interval": 2, "batch": 4 },
            "device": "cpu",
        }),
    )
}

/// The step a finished job resumed from, checked against its report: the curve
/// still has every step.
pub fn resumed_from(base: &str, id: &str, job: &serde_json::Value, steps: u64) -> u64 {
    let from = job["metrics"]["resumed_from_step"].as_u64().unwrap();
    let report = report_of(base, id);
    assert_eq!(report["training"]["resumed_from_step"], from);
    assert_eq!(report["curve"].as_array().unwrap().len(), steps as usize);
    from
}

/// A finished job's report (`report.json`), asked for until a replica answers.
pub fn report_of(base: &str, id: &str) -> serde_json::Value {
    call_retrying(
        "GET",
        &format!("{base}/v1/jobs/{id}/artifacts/report.json"),
        None,
        &[],
        None,
    )
    .json()
}

/// The states of a job's `state` events, in order.
pub fn states_of(events: &[Sse]) -> Vec<&str> {
    events
        .iter()
        .filter(|e| e.kind == "state")
        .filter_map(|e| e.data["state"].as_str())
        .collect()
}

/// A .tar.gz of the folder `dir`, inside a top-level folder `top`.
pub fn tar_gz_folder(dir: &Path, top: &str) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    tar.append_dir_all(top, dir).unwrap();
    tar.into_inner().unwrap().finish().unwrap()
}

/// Uploads the trained fixture detector and its synthetic dataset; their ids.
pub fn upload_model_and_data(base: &str, token: Option<&str>) -> (String, String) {
    let model = call(
        "POST",
        &format!("{base}/v1/models?name=trained.onnx"),
        token,
        Some(&fixture_bytes("trained.onnx")),
    );
    assert_eq!(model.status, 201);
    let data = call(
        "POST",
        &format!("{base}/v1/datasets?name=synth.tar.gz"),
        token,
        Some(&tar_gz_folder(&fixtures::dir().join("synth"), "synth")),
    );
    assert_eq!(data.status, 201, "{}", String::from_utf8_lossy(&data.body));
    (
        model.json()["id"].as_str().unwrap().to_string(),
        data.json()["id"].as_str().unwrap().to_string(),
    )
}

/// Waits until a running job has reported at least `step` training steps.
pub fn wait_for_step(base: &str, id: &str, token: Option<&str>, step: u64) -> serde_json::Value {
    let started = std::time::Instant::now();
    loop {
        let job = call("GET", &format!("{base}/v1/jobs/{id}"), token, None).json();
        if job["metrics"]["step"].as_u64().is_some_and(|s| s >= step) {
            return job;
        }
        assert_ne!(job["state"], "succeeded", "the job ended first: {job}");
        assert_ne!(job["state"], "failed", "{job}");
        assert!(started.elapsed().as_secs() < 120, "no step {step}: {job}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A request a [`Receiver`] got.
pub struct Received {
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

/// A webhook receiver on a free loopback port: answers the first `failures`
/// requests 500 and the rest 204, and hands every request over.
pub struct Receiver {
    pub url: String,
    pub requests: std::sync::mpsc::Receiver<Received>,
}

impl Receiver {
    pub fn start(failures: usize) -> Self {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let (tx, requests) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut headers = HashMap::new();
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                loop {
                    line.clear();
                    reader.read_line(&mut line).unwrap();
                    let Some((k, v)) = line.trim_end().split_once(':') else {
                        break;
                    };
                    headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                }
                let length = headers["content-length"].parse().unwrap();
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                let status = if n < failures {
                    "500 Internal Server Error"
                } else {
                    "204 No Content"
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                if tx.send(Received { headers, body }).is_err() {
                    return;
                }
            }
        });
        Self { url, requests }
    }

    /// The next request, within `secs` seconds.
    pub fn next(&self, secs: u64) -> Received {
        self.requests
            .recv_timeout(std::time::Duration::from_secs(secs))
            .expect("a notification arrives")
    }
}

/// Polls job `id` until its notification has left `pending`; the job.
pub fn wait_for_notification(base: &str, id: &str, token: Option<&str>) -> serde_json::Value {
    let started = std::time::Instant::now();
    loop {
        let job = call("GET", &format!("{base}/v1/jobs/{id}"), token, None).json();
        if job["notification"]["state"] != "pending" {
            return job;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "the notification is still pending: {job}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
