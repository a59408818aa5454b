//! What an upload must be before it is kept: a model effp can read, or a dataset
//! whose archive is safe and whose labels are right. The checks parse files a tenant
//! sent, so they run in a process of their own (`effp check-upload`) under the same
//! memory budget as jobs: a file that makes a parser misbehave ends that process and
//! is refused, while the service carries on.

mod dataset;
mod model;

use std::path::PathBuf;
use std::time::Duration;

use axum::http::StatusCode;
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::isolation::{self, ChildExit, Supervision};
use super::limits::ByteSize;
use super::problem::Problem;

/// Longest an upload's check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(600);

/// The kinds of upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Upload {
    /// An ONNX model.
    Model,
    /// A dataset archive.
    Dataset,
}

/// Why an upload is refused: what the problem document will say.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refusal {
    /// HTTP status.
    pub status: u16,
    /// Problem type slug (`invalid-model`, `unsafe-archive`, …).
    pub kind: String,
    /// What is wrong and what to do.
    pub detail: String,
}

impl Refusal {
    /// 422: the upload is not what it must be.
    pub fn unprocessable(kind: &str, detail: impl Into<String>) -> Self {
        Self {
            status: 422,
            kind: kind.into(),
            detail: detail.into(),
        }
    }

    /// 500: the server failed; the detail goes to the log, not to the client.
    pub fn internal(detail: impl Into<String>) -> Self {
        Self {
            status: 500,
            kind: "internal".into(),
            detail: detail.into(),
        }
    }

    fn into_problem(self) -> Problem {
        if self.status >= 500 {
            return Problem::internal("checking the upload failed", self.detail);
        }
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY);
        Problem::new(status, &self.kind, self.detail)
    }
}

/// What `effp check-upload` prints: one JSON object.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Verdict {
    /// The upload's summary (the model's inspect object, the dataset's summary).
    Accepted(serde_json::Value),
    /// Why it is refused.
    Refused(Refusal),
}

/// Arguments of the hidden `effp check-upload` command.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// What the file is meant to be.
    #[arg(value_enum)]
    pub upload: Upload,
    /// The file.
    pub file: PathBuf,
    /// Where a dataset is unpacked.
    #[arg(long)]
    pub scratch: PathBuf,
}

/// `effp check-upload`: checks the file and prints the verdict (exit status 0 either
/// way; any other outcome means the check itself broke).
pub fn run_command(args: &CheckArgs) -> anyhow::Result<u8> {
    let outcome = match args.upload {
        Upload::Model => model::check_model(&args.file),
        Upload::Dataset => dataset::check_dataset(&args.file, &args.scratch, Default::default()),
    };
    let verdict = match outcome {
        Ok(summary) => Verdict::Accepted(summary),
        Err(refusal) => Verdict::Refused(refusal),
    };
    println!("{}", serde_json::to_string(&verdict)?);
    Ok(0)
}

/// Checks the stored upload `sha256` in its own process: its summary, or the
/// problem document that refuses it.
pub async fn check(
    state: &AppState,
    upload: Upload,
    sha256: &str,
) -> Result<serde_json::Value, Problem> {
    let scratch = tempfile::tempdir_in(&state.scratch)
        .map_err(|e| Problem::internal("cannot create a scratch folder", e))?;
    let file = state.objects.local_file(sha256, scratch.path()).await?;
    let kind = match upload {
        Upload::Model => "model",
        Upload::Dataset => "dataset",
    };
    let verdict = std::sync::Arc::new(std::sync::Mutex::new(None::<Verdict>));
    let stop = tokio_util::sync::CancellationToken::new();
    let args: [&std::ffi::OsStr; 5] = [
        "check-upload".as_ref(),
        kind.as_ref(),
        file.as_os_str(),
        "--scratch".as_ref(),
        scratch.path().as_os_str(),
    ];
    let run = {
        let verdict = std::sync::Arc::clone(&verdict);
        isolation::run_isolated(
            &args,
            Supervision {
                work: scratch.path(),
                memory_limit: state.job_memory_limit,
                cap_address_space: true,
                stop: stop.clone(),
            },
            move |line| {
                if let Ok(v) = serde_json::from_str::<Verdict>(&line) {
                    *verdict.lock().unwrap_or_else(|p| p.into_inner()) = Some(v);
                }
            },
        )
    };
    // Dropping the run (a timeout, a client gone) kills the process.
    let exit = tokio::time::timeout(CHECK_TIMEOUT, run)
        .await
        .map_err(|_| {
            Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                &format!("invalid-{kind}"),
                format!(
                    "checking the {kind} took longer than {} s; it was refused",
                    CHECK_TIMEOUT.as_secs()
                ),
            )
        })?
        .map_err(|e| Problem::internal("cannot start the upload's check", e))?;
    let verdict = verdict.lock().unwrap_or_else(|p| p.into_inner()).take();
    match (exit, verdict) {
        (ChildExit::Succeeded, Some(Verdict::Accepted(summary))) => Ok(summary),
        (ChildExit::Succeeded, Some(Verdict::Refused(refusal))) => Err(refusal.into_problem()),
        (ChildExit::OverMemory { used }, _) => Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("invalid-{kind}"),
            format!(
                "reading the {kind} took more than {} of memory (it reached {}; EFFP_JOB_MEMORY_LIMIT): it was refused",
                ByteSize(state.job_memory_limit),
                ByteSize(used)
            ),
        )),
        (ChildExit::Died(reason), _) => Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("invalid-{kind}"),
            format!(
                "the {kind} could not be read: {}",
                reason.replace("its worker process", "the process reading it")
            ),
        )),
        (exit, _) => Err(Problem::internal(
            "checking the upload failed",
            format!("{exit:?}"),
        )),
    }
}
