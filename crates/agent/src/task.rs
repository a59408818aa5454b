//! Handling one benchmark task: keep its lease, download both models, time the
//! original then the pruned one with the same settings, and report.

use std::path::Path;

use effp_protocol::benchmark::MAX_REPORT_ERROR_LEN;
use effp_protocol::{
    BenchmarkReport, BenchmarkTask, DeviceFacts, Measurements, ReportOutcome, RunnerFailure,
};

use crate::backoff::Backoff;
use crate::client::{Client, ClientError, ModelKind, truncate};
use crate::facts;
use crate::flag::Flag;
use crate::lease::LeaseKeeper;
use crate::runner::{Measurement, Runner, RunnerError};
use Next::{Give, Retry};

/// What a task came to.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskOutcome {
    /// Both models were measured and the report was accepted.
    Measured,
    /// The task could not be measured; the failure was reported with this message.
    Failed(String),
    /// The lease was lost (another agent has the task): nothing was reported.
    Abandoned,
    /// The server refused the report (e.g. 422); the message says why.
    ReportRefused(String),
}

/// Why the agent cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The server stopped accepting the agent key.
    #[error(transparent)]
    Unauthorized(ClientError),
    /// The task's work folder could not be made.
    #[error("cannot create a work folder in {}: {source}; check --work-dir", path.display())]
    WorkDir {
        /// Where it was to be made.
        path: std::path::PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
}

/// What handling a task needs.
pub struct TaskContext<'a> {
    /// The server.
    pub client: &'a Client,
    /// How to measure.
    pub runner: &'a dyn Runner,
    /// The device kind the agent claims for.
    pub kind: &'a str,
    /// Where each task's folder is made.
    pub work_root: &'a Path,
}

/// A step that ended the task early.
enum Stop {
    Abandoned,
    Failed(String),
    Fatal(TaskError),
}

/// Handles `task` to the end: measured and reported, failed and reported, or
/// abandoned when its lease is lost.
pub fn handle(ctx: &TaskContext<'_>, task: &BenchmarkTask) -> Result<TaskOutcome, TaskError> {
    let abandoned = Flag::new();
    let keeper = LeaseKeeper::start(
        ctx.client.clone(),
        task.id.clone(),
        task.attempt,
        task.lease_s,
        abandoned.clone(),
    );
    let folder = tempfile::Builder::new()
        .prefix(&format!("{}-", task.id))
        .tempdir_in(ctx.work_root)
        .map_err(|source| TaskError::WorkDir {
            path: ctx.work_root.to_path_buf(),
            source,
        })?;
    let outcome = match measure_both(ctx, task, folder.path(), &abandoned) {
        Ok((original, pruned)) => ReportOutcome::Measured(Measurements {
            precision: original.precision,
            original: original.timing,
            pruned: pruned.timing,
        }),
        Err(Stop::Abandoned) => {
            keeper.finish();
            return Ok(TaskOutcome::Abandoned);
        }
        Err(Stop::Fatal(e)) => return Err(e),
        Err(Stop::Failed(error)) => ReportOutcome::Failed(RunnerFailure {
            error: truncate(&error, MAX_REPORT_ERROR_LEN),
        }),
    };
    let report = build_report(task, ctx.runner.kind(), device_facts(ctx), outcome);
    let result = send_report(ctx.client, task, &report, &abandoned);
    keeper.finish();
    result
}

/// Downloads and measures the original model, then the pruned one.
fn measure_both(
    ctx: &TaskContext<'_>,
    task: &BenchmarkTask,
    folder: &Path,
    abandoned: &Flag,
) -> Result<(Measurement, Measurement), Stop> {
    let original = folder.join("original.onnx");
    let pruned = folder.join("pruned.onnx");
    download(
        ctx.client,
        task,
        ModelKind::Original,
        task.original_bytes,
        &original,
        abandoned,
    )?;
    download(
        ctx.client,
        task,
        ModelKind::Pruned,
        task.pruned_bytes,
        &pruned,
        abandoned,
    )?;
    let measure = |path: &Path, what: &str| {
        tracing::info!(task = %task.id, model = what, runner = ?ctx.runner.kind(), "measuring");
        ctx.runner
            .measure(path, &task.request, folder, abandoned)
            .map_err(|e| match e {
                RunnerError::Cancelled => Stop::Abandoned,
                RunnerError::Failed(message) => Stop::Failed(format!("{what} model: {message}")),
            })
    };
    let original = measure(&original, "original")?;
    let pruned = measure(&pruned, "pruned")?;
    Ok((original, pruned))
}

/// Downloads one model, retrying while the server is unreachable.
fn download(
    client: &Client,
    task: &BenchmarkTask,
    kind: ModelKind,
    bytes: u64,
    dest: &Path,
    abandoned: &Flag,
) -> Result<(), Stop> {
    let mut backoff = Backoff::default();
    loop {
        if abandoned.is_raised() {
            return Err(Stop::Abandoned);
        }
        match client.download(&task.id, task.attempt, kind, bytes, dest) {
            Ok(()) => {
                tracing::info!(task = %task.id, model = kind.as_str(), bytes, "downloaded");
                return Ok(());
            }
            Err(e) => match classify(e) {
                Retry(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(task = %task.id, model = kind.as_str(), error = %e, retry_in_s = delay.as_secs(), "download failed");
                    if abandoned.wait(delay) {
                        return Err(Stop::Abandoned);
                    }
                }
                Give(stop) => return Err(stop),
            },
        }
    }
}

/// What to do after a failed call: try again later, or stop the task.
enum Next {
    Retry(ClientError),
    Give(Stop),
}

/// What a failed call to one of the task's own paths means for the task.
fn classify(e: ClientError) -> Next {
    match e {
        // 404 on a task's own paths: the server knows no such task held by this key.
        ClientError::LeaseLost { .. } | ClientError::Refused { status: 404, .. } => {
            tracing::warn!(error = %e, "the task is not held any more");
            Give(Stop::Abandoned)
        }
        ClientError::Unauthorized { .. } => Give(Stop::Fatal(TaskError::Unauthorized(e))),
        e if e.is_retryable() => Retry(e),
        e => Give(Stop::Failed(e.to_string())),
    }
}

/// The device's facts now, with the TensorRT version the runner saw if the packages
/// did not say.
fn device_facts(ctx: &TaskContext<'_>) -> DeviceFacts {
    let mut facts = facts::gather(ctx.kind);
    if facts.tensorrt.is_none() {
        facts.tensorrt = ctx.runner.tensorrt_version();
    }
    facts
}

/// The report of `task`; a measurement the server would refuse becomes a failure
/// saying why.
pub fn build_report(
    task: &BenchmarkTask,
    runner: effp_protocol::Runner,
    device: DeviceFacts,
    outcome: ReportOutcome,
) -> BenchmarkReport {
    let mut report = BenchmarkReport {
        attempt: task.attempt,
        runner,
        device,
        outcome,
    };
    let problems = report.errors();
    if !problems.is_empty() && matches!(report.outcome, ReportOutcome::Measured(_)) {
        let why: Vec<String> = problems
            .iter()
            .map(|p| format!("{}: {}", p.path, p.message))
            .collect();
        report.outcome = ReportOutcome::Failed(RunnerFailure {
            error: truncate(
                &format!("the measurement is not valid: {}", why.join("; ")),
                MAX_REPORT_ERROR_LEN,
            ),
        });
    }
    report
}

/// Sends the report, retrying while the server is unreachable.
fn send_report(
    client: &Client,
    task: &BenchmarkTask,
    report: &BenchmarkReport,
    abandoned: &Flag,
) -> Result<TaskOutcome, TaskError> {
    let mut backoff = Backoff::default();
    loop {
        if abandoned.is_raised() {
            return Ok(TaskOutcome::Abandoned);
        }
        match client.report(&task.id, report) {
            Ok(()) => {
                return Ok(match &report.outcome {
                    ReportOutcome::Measured(_) => TaskOutcome::Measured,
                    ReportOutcome::Failed(RunnerFailure { error }) => {
                        TaskOutcome::Failed(error.clone())
                    }
                });
            }
            Err(e) => match classify(e) {
                Retry(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(task = %task.id, error = %e, retry_in_s = delay.as_secs(), "report failed");
                    if abandoned.wait(delay) {
                        return Ok(TaskOutcome::Abandoned);
                    }
                }
                Give(Stop::Abandoned) => return Ok(TaskOutcome::Abandoned),
                Give(Stop::Fatal(e)) => return Err(e),
                Give(Stop::Failed(message)) => return Ok(TaskOutcome::ReportRefused(message)),
            },
        }
    }
}
