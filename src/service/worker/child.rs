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
use clap::{Args, Parser};
use effp_engine::train::session::StepRecord;
use serde::{Deserialize, Serialize};

use crate::cli::prune::PruneArgs;
use crate::service::api::jobs::{CriterionSpec, FineTuneSpec, JobSpec, ScopeSpec};

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

/// `effp prune`'s arguments, parsed the way the command line parses them, so that a
/// job gets exactly the command's defaults.
#[derive(Debug, Parser)]
#[command(name = "prune")]
struct PruneCommand {
    #[command(flatten)]
    args: PruneArgs,
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
    let outcome = PruneCommand::try_parse_from(prune_argv(&job))
        .map_err(anyhow::Error::from)
        .and_then(|command| {
            crate::cli::prune::execute(&command.args, &stop, &mut |r| {
                send(&ChildMessage::Step(r.clone()));
            })
        });
    match outcome {
        Ok(_) => Ok(0),
        Err(e) if e.downcast_ref::<crate::cli::prune::Interrupted>().is_some() => {
            Ok(crate::cli::prune::EXIT_INTERRUPTED)
        }
        Err(e) => {
            send(&ChildMessage::Error(format!("{e:#}")));
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

fn prune_argv(job: &JobRun) -> Vec<String> {
    let spec = &job.spec;
    let method = serde_json::to_value(spec.method)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "l1".into());
    let t = &spec.training;
    let criterion = match t.criterion {
        CriterionSpec::Curvature => "curvature",
        CriterionSpec::Taylor => "taylor",
        CriterionSpec::Magnitude => "magnitude",
    };
    let mut argv: Vec<String> = vec![
        "prune".into(),
        job.model.display().to_string(),
        "--method".into(),
        method,
        "--out".into(),
        pruned_path(&job.work).display().to_string(),
        "--report".into(),
        report_path(&job.work).display().to_string(),
        "--device".into(),
        spec.device.clone(),
        "--min-channels".into(),
        spec.options.min_channels.to_string(),
        "--round-to".into(),
        spec.options.round_to.to_string(),
        "--activation-cost".into(),
        spec.options.activation_cost.to_string(),
        "--steps".into(),
        t.steps.to_string(),
        "--prune-share".into(),
        t.prune_share.to_string(),
        "--interval".into(),
        t.interval.to_string(),
        "--regrow".into(),
        t.regrow.to_string(),
        "--criterion".into(),
        criterion.into(),
        "--stages".into(),
        t.stages.to_string(),
        "--batch".into(),
        t.batch.to_string(),
        "--lr".into(),
        t.lr.to_string(),
        "--seed".into(),
        t.seed.to_string(),
        "--label-weight".into(),
        t.label_weight.to_string(),
        "--mosaic".into(),
        t.mosaic.to_string(),
        "--fine-tune".into(),
        match t.fine_tune {
            FineTuneSpec::Compacted => "compacted",
            FineTuneSpec::Masked => "masked",
        }
        .into(),
        "--checkpoint".into(),
        job.checkpoint.display().to_string(),
        "--checkpoint-every".into(),
        job.checkpoint_every.to_string(),
    ];
    if let Some(scope) = spec.options.scope {
        let scope = match scope {
            ScopeSpec::Global => "global",
            ScopeSpec::Layer => "layer",
        };
        argv.extend(["--scope".into(), scope.into()]);
    }
    if let Some(fraction) = spec.options.min_fraction {
        argv.extend(["--min-fraction".into(), fraction.to_string()]);
    }
    if job.resume {
        argv.extend(["--resume".into(), job.checkpoint.display().to_string()]);
    }
    if let Some(data) = &job.data {
        argv.extend(["--data".into(), data.display().to_string()]);
    }
    let target = &spec.target;
    if let Some(r) = target.flops_ratio {
        argv.extend(["--target-flops".into(), r.to_string()]);
    } else if let Some(f) = target.flops {
        argv.extend(["--target-flops".into(), f.to_string()]);
    } else if let Some(r) = target.params_ratio {
        argv.extend(["--target-params".into(), r.to_string()]);
    }
    if let Some(size) = &spec.input_size {
        argv.extend(["--input-size".into(), size.clone()]);
    }
    argv
}
