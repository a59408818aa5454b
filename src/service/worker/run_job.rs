//! `effp run-job`: the worker process that runs one job through the prune pipeline
//! (full build only: it needs the engine).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use clap::Args;
use effp_engine::pipeline::{self, PipelineError, PruneEnv, PruneJob, TrainEvent};
use effp_engine::prune::Target;

use super::child::{ChildMessage, JobRun, pruned_path, report_path};

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
    let (prune, env) = pipeline_of(&job)?;
    std::fs::create_dir_all(&env.scratch)
        .with_context(|| format!("cannot create '{}'", env.scratch.display()))?;
    let outcome = pipeline::run(&prune, &env, &stop, &mut |event| match event {
        TrainEvent::Step(r) => send(&ChildMessage::Step(r.clone())),
        TrainEvent::Saved { step } => send(&ChildMessage::Saved { step }),
    });
    match outcome {
        Ok(_) => Ok(0),
        Err(PipelineError::Cancelled(_)) => Ok(crate::cli::EXIT_INTERRUPTED),
        Err(e) => {
            send(&ChildMessage::Error(e.to_string()));
            Ok(crate::cli::EXIT_FAILURE)
        }
    }
}

/// The pruning job a [`JobRun`] describes, and its environment: the request's
/// settings, the service's work folder as scratch space and the job's checkpoint.
fn pipeline_of(run: &JobRun) -> anyhow::Result<(PruneJob, PruneEnv)> {
    let spec = &run.spec;
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
        model: run.model.clone(),
        method: spec.method(),
        target,
        options: spec.options.clone(),
        training: spec.training.clone(),
        input_size,
        device,
        data: run.data.clone(),
        out: pruned_path(&run.work),
        report: Some(report_path(&run.work)),
        verify: true,
    };
    let env = PruneEnv {
        scratch: run.work.join("scratch"),
        archive_limits: run.archive_limits,
        checkpoint: Some(run.checkpoint.clone()),
        checkpoint_every: run.checkpoint_every,
        resume: run.resume.then(|| run.checkpoint.clone()),
    };
    Ok((job, env))
}

/// Writes one message to the service, a JSON object on its own line.
fn send(message: &ChildMessage) {
    use std::io::Write;
    if let Ok(line) = serde_json::to_string(message) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}
