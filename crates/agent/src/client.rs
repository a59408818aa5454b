//! The agent's calls to the effp server (`/v1/agent/...`): claim a task, renew its
//! lease, download its models, report what was measured.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use effp_protocol::{BenchmarkReport, BenchmarkTask, ClaimRequest, LeaseRenewal};
use serde::Deserialize;

use crate::settings::AgentKey;

/// Longest wait to open a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest silence while reading an answer (a download stalls at most this long).
const READ_TIMEOUT: Duration = Duration::from_secs(120);
/// How much longer than its `wait_s` a claim may take before it counts as lost.
const CLAIM_MARGIN: Duration = Duration::from_secs(30);
/// Most bytes of an error body kept for a message.
const MAX_DETAIL_LEN: usize = 600;

/// Why a call to the server failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// 401 or 403: the key is wrong. The agent cannot go on.
    #[error(
        "the server refused the agent key (HTTP {status}: {detail}); check EFFP_AGENT_KEY \
         against the keys the server lists in EFFP_AGENT_KEYS"
    )]
    Unauthorized {
        /// The HTTP status.
        status: u16,
        /// The server's explanation.
        detail: String,
    },
    /// 409: another agent holds the task now.
    #[error("the lease on the task is lost (HTTP 409: {detail}); another agent has it now")]
    LeaseLost {
        /// The server's explanation.
        detail: String,
    },
    /// The server could not be reached, or the connection broke.
    #[error("cannot reach the server at {url}: {message}")]
    Unreachable {
        /// What was called.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The server failed (5xx) or asked to come back later (408, 429).
    #[error("the server failed on {url} (HTTP {status}: {detail})")]
    ServerError {
        /// What was called.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The server's explanation.
        detail: String,
    },
    /// The server refused the call for another reason (e.g. 404, 422).
    #[error("the server refused {url} (HTTP {status}: {detail})")]
    Refused {
        /// What was called.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The server's explanation.
        detail: String,
    },
    /// The server answered something this agent does not understand.
    #[error("the server's answer to {url} is not what effp-agent {version} expects: {detail}; update the agent", version = env!("CARGO_PKG_VERSION"))]
    Protocol {
        /// What was called.
        url: String,
        /// What was wrong with the answer.
        detail: String,
    },
    /// A model download is larger than the task said.
    #[error("the {what} model is larger than the {limit} bytes the task announced; refusing it")]
    TooLarge {
        /// Which model.
        what: &'static str,
        /// The size the task announced.
        limit: u64,
    },
    /// A model download ended early.
    #[error(
        "the {what} model download ended after {got} of the {expected} bytes the task announced"
    )]
    Truncated {
        /// Which model.
        what: &'static str,
        /// The size the task announced.
        expected: u64,
        /// The bytes received.
        got: u64,
    },
    /// A downloaded model could not be written.
    #[error("cannot write {}: {source}; check that the work directory is writable and has room", path.display())]
    Write {
        /// Where it was being written.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
}

impl ClientError {
    /// Whether trying again later may work (the server or the network was down).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Unreachable { .. } | Self::ServerError { .. } | Self::Truncated { .. }
        )
    }
}

/// Which of a task's two models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// The model before pruning.
    Original,
    /// The pruned model.
    Pruned,
}

impl ModelKind {
    /// The name in the download path (`…/original`, `…/pruned`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Original => "original",
            Self::Pruned => "pruned",
        }
    }
}

/// What the server answers a lease renewal with.
#[derive(Debug, Clone, Copy, Deserialize)]
struct LeaseAnswer {
    lease_s: u32,
}

/// An RFC 9457 problem document, as far as messages need it.
#[derive(Debug, Default, Deserialize)]
struct Problem {
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    detail: Option<String>,
}

/// A connection to one effp server with one agent key.
#[derive(Debug, Clone)]
pub struct Client {
    agent: ureq::Agent,
    base: String,
    key: AgentKey,
}

impl Client {
    /// A client for the server at `base` (no trailing `/`) authenticating with `key`.
    pub fn new(base: &str, key: AgentKey) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(CONNECT_TIMEOUT)
            .timeout_read(READ_TIMEOUT)
            .timeout_write(READ_TIMEOUT)
            .user_agent(concat!("effp-agent/", env!("CARGO_PKG_VERSION")))
            .build();
        Self {
            agent,
            base: base.trim_end_matches('/').to_string(),
            key,
        }
    }

    /// Asks for a task, waiting up to `request.wait_s` seconds for one; `None` when
    /// none came (204).
    pub fn claim(&self, request: &ClaimRequest) -> Result<Option<BenchmarkTask>, ClientError> {
        let url = format!("{}/v1/agent/claim", self.base);
        let timeout = Duration::from_secs(u64::from(request.wait_s)) + CLAIM_MARGIN;
        let response = self.send_json(self.agent.post(&url).timeout(timeout), &url, request)?;
        if response.status() == 204 {
            return Ok(None);
        }
        let task: BenchmarkTask = read_json(response, &url)?;
        check_id(&task.id, &url)?;
        Ok(Some(task))
    }

    /// Renews the lease on task `id`; returns the lease's new length in seconds.
    pub fn renew(&self, id: &str, attempt: u32) -> Result<u32, ClientError> {
        let url = format!("{}/v1/agent/benchmarks/{}/lease", self.base, path_id(id)?);
        let response = self.send_json(self.agent.post(&url), &url, &LeaseRenewal { attempt })?;
        let answer: LeaseAnswer = read_json(response, &url)?;
        Ok(answer.lease_s)
    }

    /// Downloads one model of task `id` into `dest`; refuses more bytes than
    /// `expected` and fails on fewer.
    pub fn download(
        &self,
        id: &str,
        attempt: u32,
        kind: ModelKind,
        expected: u64,
        dest: &Path,
    ) -> Result<(), ClientError> {
        let url = format!(
            "{}/v1/agent/benchmarks/{}/{}?attempt={attempt}",
            self.base,
            path_id(id)?,
            kind.as_str()
        );
        let response = self.send(self.authorized(self.agent.get(&url)), &url, None)?;
        let announced = response
            .header("Content-Length")
            .and_then(|v| v.trim().parse::<u64>().ok());
        if announced.is_some_and(|n| n > expected) {
            return Err(ClientError::TooLarge {
                what: kind.as_str(),
                limit: expected,
            });
        }
        let write_error = |source| ClientError::Write {
            path: dest.to_path_buf(),
            source,
        };
        let mut file = File::create(dest).map_err(write_error)?;
        let mut reader = response.into_reader().take(expected.saturating_add(1));
        let mut buf = vec![0u8; 256 * 1024];
        let mut got: u64 = 0;
        loop {
            let n = reader
                .read(&mut buf)
                .map_err(|e| ClientError::Unreachable {
                    url: url.clone(),
                    message: format!("the download broke after {got} bytes: {e}"),
                })?;
            if n == 0 {
                break;
            }
            got += n as u64;
            if got > expected {
                return Err(ClientError::TooLarge {
                    what: kind.as_str(),
                    limit: expected,
                });
            }
            file.write_all(&buf[..n]).map_err(write_error)?;
        }
        file.sync_all().map_err(write_error)?;
        if got < expected {
            return Err(ClientError::Truncated {
                what: kind.as_str(),
                expected,
                got,
            });
        }
        Ok(())
    }

    /// Reports what was measured for task `id`.
    pub fn report(&self, id: &str, report: &BenchmarkReport) -> Result<(), ClientError> {
        let url = format!("{}/v1/agent/benchmarks/{}/report", self.base, path_id(id)?);
        self.send_json(self.agent.post(&url), &url, report)?;
        Ok(())
    }

    fn authorized(&self, request: ureq::Request) -> ureq::Request {
        request.set("Authorization", &format!("Bearer {}", self.key.secret()))
    }

    fn send_json<T: serde::Serialize>(
        &self,
        request: ureq::Request,
        url: &str,
        body: &T,
    ) -> Result<ureq::Response, ClientError> {
        let body = serde_json::to_vec(body).map_err(|e| ClientError::Protocol {
            url: url.to_string(),
            detail: format!("the request could not be written as JSON: {e}"),
        })?;
        let request = self
            .authorized(request)
            .set("Content-Type", "application/json");
        self.send(request, url, Some(&body))
    }

    fn send(
        &self,
        request: ureq::Request,
        url: &str,
        body: Option<&[u8]>,
    ) -> Result<ureq::Response, ClientError> {
        let result = match body {
            Some(bytes) => request.send_bytes(bytes),
            None => request.call(),
        };
        match result {
            Ok(response) => Ok(response),
            Err(ureq::Error::Status(status, response)) => Err(status_error(url, status, response)),
            Err(ureq::Error::Transport(transport)) => Err(ClientError::Unreachable {
                url: url.to_string(),
                message: transport_message(&transport),
            }),
        }
    }
}

/// What broke, without the URL ureq repeats: `Connection Failed: Connect error:
/// Connection refused (os error 111)`.
fn transport_message(transport: &ureq::Transport) -> String {
    let mut parts = vec![transport.kind().to_string()];
    parts.extend(transport.message().map(str::to_string));
    let mut source = std::error::Error::source(transport);
    while let Some(cause) = source {
        parts.push(cause.to_string());
        source = cause.source();
    }
    parts.join(": ")
}

/// The error an HTTP error status means, with the server's explanation.
fn status_error(url: &str, status: u16, response: ureq::Response) -> ClientError {
    let detail = problem_detail(response);
    let url = url.to_string();
    match status {
        401 | 403 => ClientError::Unauthorized { status, detail },
        409 => ClientError::LeaseLost { detail },
        408 | 429 | 500..=599 => ClientError::ServerError {
            url,
            status,
            detail,
        },
        _ => ClientError::Refused {
            url,
            status,
            detail,
        },
    }
}

/// `title: detail` of a problem document, else the start of the body.
fn problem_detail(response: ureq::Response) -> String {
    let mut body = String::new();
    let _ = response
        .into_reader()
        .take(64 * 1024)
        .read_to_string(&mut body);
    if let Ok(problem) = serde_json::from_str::<Problem>(&body) {
        let parts: Vec<String> = [problem.title, problem.detail]
            .into_iter()
            .flatten()
            .filter(|s| !s.is_empty())
            .collect();
        if !parts.is_empty() {
            return truncate(&parts.join(": "), MAX_DETAIL_LEN);
        }
    }
    let body = body.trim();
    if body.is_empty() {
        "no explanation".to_string()
    } else {
        truncate(body, MAX_DETAIL_LEN)
    }
}

fn read_json<T: serde::de::DeserializeOwned>(
    response: ureq::Response,
    url: &str,
) -> Result<T, ClientError> {
    let mut body = Vec::new();
    response
        .into_reader()
        .take(16 * 1024 * 1024)
        .read_to_end(&mut body)
        .map_err(|e| ClientError::Unreachable {
            url: url.to_string(),
            message: format!("the answer broke off: {e}"),
        })?;
    serde_json::from_slice(&body).map_err(|e| ClientError::Protocol {
        url: url.to_string(),
        detail: e.to_string(),
    })
}

/// Task ids go into URL paths: only plain ids are accepted.
fn check_id(id: &str, url: &str) -> Result<(), ClientError> {
    if !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        Ok(())
    } else {
        Err(ClientError::Protocol {
            url: url.to_string(),
            detail: format!("the task id {id:?} is not a plain id"),
        })
    }
}

fn path_id(id: &str) -> Result<&str, ClientError> {
    check_id(id, "a task URL").map(|()| id)
}

/// `s` cut to at most `max` bytes on a character boundary, with `…` when cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_characters_whole() {
        assert_eq!(truncate("abc", 5), "abc");
        let cut = truncate("ééééé", 6);
        assert!(cut.len() <= 6 && cut.ends_with('…'), "{cut}");
    }

    #[test]
    fn only_plain_ids_go_into_paths() {
        assert!(path_id("bm_01HX-abc").is_ok());
        assert!(path_id("../admin").is_err());
        assert!(path_id("").is_err());
    }
}
