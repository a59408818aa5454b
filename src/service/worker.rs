//! The in-process worker: claims jobs from the queue, runs them through the same
//! pruning pipeline as `effp prune`, heartbeats and reports progress while it works,
//! checkpoints training so that a restart resumes it, and stores the artifacts.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Parser;
use effp_engine::train::session::StepRecord;
use serde_json::json;

use super::AppState;
use super::api::jobs::{CriterionSpec, JobMethod, JobSpec, artifact_entry};
use super::store::JobRecord;
use crate::cli::prune::PruneArgs;

/// How long a claim lasts without a heartbeat.
const LEASE: Duration = Duration::from_secs(30);
/// How often a running job renews its lease and looks for a cancellation.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// Claims of one job before it is given up.
const MAX_ATTEMPTS: u32 = 3;
/// Shortest time between two progress reports of a training job.
const REPORT_EVERY: Duration = Duration::from_millis(500);

/// `effp prune`'s arguments, parsed the way the command line parses them, so that a
/// job gets exactly the command's defaults.
#[derive(Debug, Parser)]
#[command(name = "prune")]
struct PruneCommand {
    #[command(flatten)]
    args: PruneArgs,
}

/// Runs jobs until the service shuts down; a job running then is checkpointed and
/// put back in the queue.
pub async fn run(state: AppState, index: usize) {
    while !state.shutdown.is_cancelled() {
        let wake = state.wake.notified();
        match state.queue.claim(LEASE, MAX_ATTEMPTS).await {
            Ok(Some(job)) => {
                tracing::info!(worker = index, job = %job.id, attempt = job.attempts, "claimed");
                run_job(&state, job).await;
            }
            Ok(None) => {
                tokio::select! {
                    _ = tokio::time::timeout(Duration::from_secs(2), wake) => {}
                    _ = state.shutdown.cancelled() => {}
                }
            }
            Err(e) => {
                tracing::error!(%e, "cannot claim jobs");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

/// Where a job's training state is kept between attempts.
fn checkpoint_path(state: &AppState, job_id: &str) -> PathBuf {
    state.checkpoints.join(format!("{job_id}.ckpt"))
}

async fn run_job(state: &AppState, job: JobRecord) {
    // `stop` is what the pruning run watches; the client's cancellation and the
    // service's shutdown both set it, and what happens next depends on which.
    let stop = Arc::new(AtomicBool::new(job.cancel_requested));
    let cancelled = Arc::new(AtomicBool::new(job.cancel_requested));
    let heartbeat = {
        let (state, id) = (state.clone(), job.id.clone());
        let (stop, cancelled) = (Arc::clone(&stop), Arc::clone(&cancelled));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(HEARTBEAT) => {}
                    _ = state.shutdown.cancelled() => {
                        stop.store(true, Ordering::SeqCst);
                        // Keep the lease until the job is released.
                        tokio::time::sleep(HEARTBEAT).await;
                    }
                }
                match state.queue.heartbeat(&id, LEASE).await {
                    Ok(true) => {
                        cancelled.store(true, Ordering::SeqCst);
                        stop.store(true, Ordering::SeqCst);
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(%e, job = %id, "heartbeat failed"),
                }
            }
        })
    };
    let started = std::time::Instant::now();
    let outcome = execute(state, &job, &stop).await;
    heartbeat.abort();
    let checkpoint = checkpoint_path(state, &job.id);
    let (final_state, error, artifacts) = match outcome {
        Ok(artifacts) => ("succeeded", None, artifacts),
        Err(_) if cancelled.load(Ordering::SeqCst) => ("cancelled", None, json!({})),
        Err(e) if state.shutdown.is_cancelled() => {
            tracing::info!(job = %job.id, reason = %format!("{e:#}"), "shutting down: the job goes back to the queue");
            if let Err(e) = state.queue.release(&job.id).await {
                tracing::error!(%e, job = %job.id, "cannot put the job back in the queue");
            }
            return;
        }
        Err(e) => ("failed", Some(format!("{e:#}")), json!({})),
    };
    let _ = tokio::fs::remove_file(&checkpoint).await;
    let method = job.spec["method"].as_str().unwrap_or("unknown").to_string();
    state
        .metrics
        .jobs_seconds
        .with_label_values(&[method.as_str(), final_state])
        .observe(started.elapsed().as_secs_f64());
    if let Err(e) = state
        .queue
        .finish(&job.id, final_state, error.as_deref(), &artifacts)
        .await
    {
        tracing::error!(%e, job = %job.id, "cannot record the end of the job");
    }
}

/// Runs one job: fetch the model (and dataset), prune, store the pruned ONNX and the
/// report.
async fn execute(
    state: &AppState,
    job: &JobRecord,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<serde_json::Value> {
    let spec: JobSpec = serde_json::from_value(job.spec.clone())?;
    let model = state
        .jobs
        .model(&job.tenant, &spec.model)
        .await?
        .ok_or_else(|| {
            anyhow::anyhow!("the model {} was deleted before the job ran", spec.model)
        })?;
    state
        .queue
        .report(&job.id, "prepare", 0.02, &json!({}))
        .await?;
    let work = tempfile::tempdir_in(&state.scratch)?;
    let source = state.objects.local_file(&model.sha256, work.path()).await?;
    let data = match &spec.dataset {
        Some(id) => {
            let dataset = state.jobs.dataset(&job.tenant, id).await?.ok_or_else(|| {
                anyhow::anyhow!("the dataset {id} was deleted before the job ran")
            })?;
            Some(
                state
                    .objects
                    .local_file(&dataset.sha256, work.path())
                    .await?,
            )
        }
        None => None,
    };
    let checkpoint = checkpoint_path(state, &job.id);
    let resume = tokio::fs::try_exists(&checkpoint).await.unwrap_or(false);
    let argv = prune_argv(
        &spec,
        &Inputs {
            model: &source,
            data: data.as_deref(),
            work: work.path(),
            checkpoint: &checkpoint,
            checkpoint_every: state.checkpoint_every,
            resume,
        },
    );
    let trains = spec.method != JobMethod::L1 || (data.is_some() && spec.training.steps > 0);
    state
        .queue
        .report(
            &job.id,
            if trains { "train" } else { "prune" },
            0.05,
            &json!({}),
        )
        .await?;
    let (steps_tx, steps_rx) = tokio::sync::mpsc::unbounded_channel::<StepRecord>();
    let reporter = tokio::spawn(report_steps(
        state.clone(),
        job.id.clone(),
        spec.training.steps as usize,
        steps_rx,
    ));
    let stop_flag = Arc::clone(stop);
    let report = tokio::task::spawn_blocking(move || {
        let command = PruneCommand::try_parse_from(argv)?;
        crate::cli::prune::execute(&command.args, &stop_flag, &mut |r| {
            let _ = steps_tx.send(r.clone());
        })
    })
    .await?;
    let _ = reporter.await;
    let report = serde_json::to_value(report?)?;
    let mut metrics = json!({
        "flops_before": report["before"]["flops"],
        "flops_after": report["after"]["flops"],
        "params_before": report["before"]["params"],
        "params_after": report["after"]["params"],
        "flops_ratio": report["flops_ratio"],
        "params_ratio": report["params_ratio"],
    });
    if let Some(accuracy) = report.get("accuracy") {
        metrics["map50_95_before"] = accuracy["before"]["map50_95"].clone();
        metrics["map50_95_after"] = accuracy["after"]["map50_95"].clone();
        metrics["map50_before"] = accuracy["before"]["map50"].clone();
        metrics["map50_after"] = accuracy["after"]["map50"].clone();
    }
    if let Some(training) = report.get("training") {
        metrics["steps"] = training["steps"].clone();
        metrics["resumed_from_step"] = training["resumed_from_step"].clone();
    }
    state.queue.report(&job.id, "store", 0.95, &metrics).await?;
    let mut artifacts = serde_json::Map::new();
    for name in ["pruned.onnx", "report.json"] {
        let file = tokio::fs::File::open(work.path().join(name)).await?;
        let stream = Box::pin(tokio_util::io::ReaderStream::new(file));
        let stored = state.objects.put(stream, u64::MAX).await?;
        artifacts.insert(name.into(), artifact_entry(&stored.sha256, stored.size));
    }
    Ok(serde_json::Value::Object(artifacts))
}

/// Turns training steps into progress reports (at most one per [`REPORT_EVERY`],
/// always the latest, and the last one), until the run ends.
async fn report_steps(
    state: AppState,
    job_id: String,
    steps: usize,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<StepRecord>,
) {
    let mut last_sent = std::time::Instant::now() - REPORT_EVERY;
    let mut pending: Option<StepRecord> = None;
    loop {
        let next = tokio::time::timeout(REPORT_EVERY, rx.recv()).await;
        let ended = matches!(next, Ok(None));
        if let Ok(Some(r)) = next {
            pending = Some(r);
        }
        if let Some(r) = &pending
            && (ended || last_sent.elapsed() >= REPORT_EVERY)
        {
            let done = r.step + 1;
            let phase = if done >= steps { "verify" } else { "train" };
            let progress = 0.05 + 0.85 * done as f64 / steps.max(1) as f64;
            let metrics = json!({
                "step": done,
                "steps": steps,
                "loss": r.loss,
                "flops_ratio": r.flops_ratio,
                "budget": r.budget,
                "active_groups": r.active_groups,
                "regrown": r.regrown,
                "pruned": r.pruned,
            });
            if let Err(e) = state.queue.report(&job_id, phase, progress, &metrics).await {
                tracing::warn!(%e, job = %job_id, "cannot report progress");
            }
            last_sent = std::time::Instant::now();
            pending = None;
        }
        if ended {
            return;
        }
    }
}

/// Files a job's run reads and writes.
struct Inputs<'a> {
    model: &'a Path,
    data: Option<&'a Path>,
    work: &'a Path,
    checkpoint: &'a Path,
    checkpoint_every: usize,
    resume: bool,
}

fn prune_argv(spec: &JobSpec, inputs: &Inputs<'_>) -> Vec<String> {
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
        inputs.model.display().to_string(),
        "--method".into(),
        method,
        "--out".into(),
        inputs.work.join("pruned.onnx").display().to_string(),
        "--report".into(),
        inputs.work.join("report.json").display().to_string(),
        "--device".into(),
        spec.device.clone(),
        "--min-channels".into(),
        spec.options.min_channels.to_string(),
        "--min-fraction".into(),
        spec.options.min_fraction.to_string(),
        "--round-to".into(),
        spec.options.round_to.to_string(),
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
        "--checkpoint".into(),
        inputs.checkpoint.display().to_string(),
        "--checkpoint-every".into(),
        inputs.checkpoint_every.to_string(),
    ];
    if inputs.resume {
        argv.extend(["--resume".into(), inputs.checkpoint.display().to_string()]);
    }
    if let Some(data) = inputs.data {
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
