//! `effp run-job`: the worker process that runs one job. The service starts one per
//! job, so that whatever the job does to its process (an abort in native code, running
//! out of memory) ends that job and not the service.
//!
//! The parent hands it a [`JobRun`] file; the child writes `pruned.onnx` and
//! `report.json` into the run's work folder and reports on standard output, one JSON
//! object a line ([`ChildMessage`]). SIGTERM or Ctrl-C stop a training run after its
//! current step with a checkpoint (exit status 130).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use clap::Args;
use effp_engine::data::archive::ArchiveLimits;
use effp_engine::pipeline::{self, PipelineError, PruneEnv, PruneJob};
use effp_engine::prune::Target;
use effp_engine::train::session::StepRecord;
use serde::{Deserialize, Serialize};

use crate::service::api::jobs::JobSpec;

/// Everything a worker process needs to run one job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRun {
    /// The validated request.
    pub spec: JobSpec,
    /// The model file.
    pub model: PathBuf,
    /// The dataset archive, if the job has one.
    pub data: Option<PathBuf>,
    /// Where `pruned.onnx` and `report.json` are written (and datasets unpacked).
    pub work: PathBuf,
    /// The job's training checkpoint.
    pub checkpoint: PathBuf,
    /// Steps between checkpoints.
    pub checkpoint_every: usize,
    /// Whether to continue from `checkpoint`.
    pub resume: bool,
    /// Limits on what the dataset archive may unpack to (the service's, as its
    /// upload check applied them).
    #[serde(default)]
    pub archive_limits: ArchiveLimits,
}

impl JobRun {
    /// The pruning job and its environment: the request's settings, the service's
    /// work folder as scratch space and the job's checkpoint.
    fn pipeline(&self) -> anyhow::Result<(PruneJob, PruneEnv)> {
        let spec = &self.spec;
        let target = Target::from_spec(&spec.target)
            .context("the job names no single target (it was validated when queued)")?;
        let input_size = spec
            .input_size
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|e: String| anyhow::anyhow!("input_size: {e}"))?;
        let device = spec
            .device
            .parse()
            .map_err(|e: String| anyhow::anyhow!("device: {e}"))?;
        let job = PruneJob {
            model: self.model.clone(),
            method: spec.method(),
            target,
            options: spec.options.clone(),
            training: spec.training.clone(),
            input_size,
            device,
            data: self.data.clone(),
            out: pruned_path(&self.work),
            report: Some(report_path(&self.work)),
            verify: true,
        };
        let env = PruneEnv {
            scratch: self.work.join("scratch"),
            archive_limits: self.archive_limits,
            checkpoint: Some(self.checkpoint.clone()),
            checkpoint_every: self.checkpoint_every,
            resume: self.resume.then(|| self.checkpoint.clone()),
        };
        Ok((job, env))
    }
}

/// What a worker process reports, one JSON object per line of its standard output.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChildMessage {
    /// A training step ended.
    Step(StepRecord),
    /// The run failed: what to tell the client.
    Error(String),
}

/// Arguments of the hidden `effp run-job` command.
#[derive(Debug, Args)]
pub struct RunJobArgs {
    /// The [`JobRun`] file written by the service.
    pub request: PathBuf,
}

/// Runs the job of `args.request`; exit status 0 when the artifacts are written,
/// 130 when stopped by a signal (checkpoint written), 1 on failure.
pub fn run(args: &RunJobArgs) -> anyhow::Result<u8> {
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("cannot install the SIGTERM handler")?;
    }
    let text = std::fs::read(&args.request)
        .with_context(|| format!("cannot read '{}'", args.request.display()))?;
    let job: JobRun = serde_json::from_slice(&text).context("the job file is not valid")?;
    let (prune, env) = job.pipeline()?;
    std::fs::create_dir_all(&env.scratch)
        .with_context(|| format!("cannot create '{}'", env.scratch.display()))?;
    let outcome = pipeline::run(&prune, &env, &stop, &mut |r| {
        send(&ChildMessage::Step(r.clone()));
    });
    match outcome {
        Ok(_) => Ok(0),
        Err(PipelineError::Cancelled(_)) => Ok(crate::cli::prune::EXIT_INTERRUPTED),
        Err(e) => {
            send(&ChildMessage::Error(e.to_string()));
            Ok(crate::cli::EXIT_FAILURE)
        }
    }
}

fn send(message: &ChildMessage) {
    use std::io::Write;
    if let Ok(line) = serde_json::to_string(message) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// The outputs of a run in its work folder.
pub fn pruned_path(work: &Path) -> PathBuf {
    work.join("pruned.onnx")
}

/// The report of a run in its work folder.
pub fn report_path(work: &Path) -> PathBuf {
    work.join("report.json")
}
