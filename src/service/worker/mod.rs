//! The worker: claims jobs from the queue and runs each in its own worker process
//! (`effp run-job`, the same pipeline as `effp prune`), heartbeats and reports progress
//! while it works, keeps training checkpoints in the object store so that a restart
//! (or another worker) resumes the job, and stores the artifacts. A worker process that dies costs its job an attempt, not the service.

use effp_protocol::artifact::{PRUNE_REPORT, PRUNED_MODEL};
use effp_protocol::report::PruneReport;
use effp_protocol::{ArtifactRef, Artifacts, JobState};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use effp_protocol::report::StepRecord;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::api::jobs::JobSpec;
use crate::service::isolation::{self, ChildExit};
use crate::service::limits::ByteSize;
use child::{ChildMessage, JobRun};
use effp_store::{Checkpoints, Content, JobRecord, JobStore, ObjectStore, Queue, StoreError};
use std::path::PathBuf;

pub mod child;
#[cfg(feature = "engine")]
pub mod run_job;
mod sanitize;
#[cfg(feature = "engine")]
pub mod standalone;

use sanitize::tenant_message;

/// Longest wait for work between two claims (the queue wakes idle workers sooner
/// when a job arrives or a lease runs out).
const IDLE_WAIT: Duration = Duration::from_secs(5);
/// Shortest time between two progress reports of a training job.
const REPORT_EVERY: Duration = Duration::from_millis(500);

/// What a worker needs: the stores, where to work, its limits and when to stop.
#[derive(Clone)]
pub struct WorkerContext {
    pub(crate) jobs: Arc<dyn JobStore>,
    pub(crate) queue: Arc<dyn Queue>,
    /// Device benchmark tasks (a job that asks for one waits for it).
    pub(crate) benchmarks: Arc<dyn effp_store::Benchmarks>,
    /// How device benchmarks are claimed and held.
    pub(crate) benchmark: crate::service::config::BenchmarkSettings,
    pub(crate) objects: Arc<dyn ObjectStore>,
    /// Stored content with its reference counts (artifacts).
    pub(crate) content: Content,
    /// Running jobs' training state, kept between attempts.
    pub(crate) checkpoints: Checkpoints,
    /// This process's scratch folder.
    pub(crate) scratch: PathBuf,
    /// The data directory (left out of what tenants read).
    pub(crate) data_dir: PathBuf,
    pub(crate) checkpoint_every: usize,
    /// How long a claim lasts without a heartbeat.
    pub(crate) lease: Duration,
    /// Claims of one job before it is given up.
    pub(crate) max_attempts: u32,
    /// Memory a job's worker process may use, in bytes.
    pub(crate) job_memory_limit: u64,
    /// Device this process trains jobs on.
    pub(crate) device: effp_protocol::DeviceChoice,
    /// Job durations by method and final state.
    pub(crate) jobs_seconds: prometheus::HistogramVec,
    /// Cancelled when the process starts shutting down.
    pub(crate) shutdown: CancellationToken,
}

/// How often a running job renews its lease and looks for a cancellation: three
/// times a lease, so that one late heartbeat does not lose it.
fn heartbeat_every(lease: Duration) -> Duration {
    (lease / 3).max(Duration::from_millis(100))
}

/// Runs jobs until the process shuts down; a job running then is checkpointed and
/// put back in the queue.
pub async fn run(state: WorkerContext, index: usize) {
    while !state.shutdown.is_cancelled() {
        match state.queue.claim(state.lease, state.max_attempts).await {
            Ok(Some(job)) => {
                tracing::info!(worker = index, job = %job.id, attempt = job.attempts, "claimed");
                run_job(&state, job).await;
            }
            Ok(None) => {
                tokio::select! {
                    _ = state.queue.wait_for_work(IDLE_WAIT) => {}
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

async fn run_job(state: &WorkerContext, job: JobRecord) {
    // `stop` fires on the client's cancellation and on the service's shutdown; what
    // happens after the worker process stops depends on which.
    let stop = CancellationToken::new();
    let cancelled = Arc::new(AtomicBool::new(job.cancel_requested));
    // Set when another worker took the job over: this one must leave it alone.
    let lost = Arc::new(AtomicBool::new(false));
    if job.cancel_requested {
        stop.cancel();
    }
    let heartbeat = {
        let (state, id, attempt) = (state.clone(), job.id.clone(), job.attempts);
        let lease = state.lease;
        let (stop, cancelled, lost) = (stop.clone(), Arc::clone(&cancelled), Arc::clone(&lost));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(heartbeat_every(lease)) => {}
                    _ = state.shutdown.cancelled() => {
                        stop.cancel();
                        // Keep the lease until the job is released.
                        tokio::time::sleep(heartbeat_every(lease)).await;
                    }
                }
                match state.queue.heartbeat(&id, attempt, lease).await {
                    Ok(true) => {
                        cancelled.store(true, Ordering::SeqCst);
                        stop.cancel();
                    }
                    Ok(false) => {}
                    Err(e @ StoreError::LeaseLost { .. }) => {
                        tracing::error!(%e, job = %id, "stopping the job: another worker claimed it");
                        lost.store(true, Ordering::SeqCst);
                        stop.cancel();
                        return;
                    }
                    Err(e) => tracing::warn!(%e, job = %id, "heartbeat failed"),
                }
            }
        })
    };
    let started = std::time::Instant::now();
    let outcome = execute(state, &job, &stop).await;
    if let Ok(Outcome::Done(artifacts)) = &outcome
        && !stop.is_cancelled()
    {
        // The pruned model is stored: only a client's cancellation or the shutdown
        // cuts the wait short, and the job then succeeds without the benchmark.
        await_benchmark(state, &job, artifacts, &stop).await;
        if lost.load(Ordering::SeqCst) {
            return;
        }
        if stop.is_cancelled() && !cancelled.load(Ordering::SeqCst) {
            tracing::info!(job = %job.id, "shutting down: the job succeeds without waiting for its benchmark");
        }
    }
    heartbeat.abort();
    if lost.load(Ordering::SeqCst) {
        // Its checkpoint and its end belong to the worker that holds it now.
        return;
    }
    let (final_state, error, artifacts) = match outcome {
        Ok(Outcome::Done(artifacts)) => (JobState::Succeeded, None, artifacts),
        Ok(Outcome::Stopped) if cancelled.load(Ordering::SeqCst) => {
            (JobState::Cancelled, None, Artifacts::new())
        }
        Ok(Outcome::Stopped) => {
            tracing::info!(job = %job.id, "shutting down: the job goes back to the queue");
            if let Err(e) = state.queue.release(&job.id, job.attempts).await {
                tracing::error!(%e, job = %job.id, "cannot put the job back in the queue");
            }
            return;
        }
        Ok(Outcome::Died(reason)) => {
            // Possibly a passing cause (the machine ran out of memory, an operator
            // killed it): the next attempt resumes from the last checkpoint.
            tracing::warn!(job = %job.id, %reason, attempt = job.attempts, "the job's worker process died");
            if let Err(e) = state
                .queue
                .retry(&job.id, job.attempts, &reason, state.max_attempts)
                .await
            {
                tracing::error!(%e, job = %job.id, "cannot put the job back in the queue");
            }
            return;
        }
        Ok(Outcome::Failed(message)) => (JobState::Failed, Some(message), Artifacts::new()),
        Err(e)
            if matches!(
                e.downcast_ref::<StoreError>(),
                Some(StoreError::Unavailable(_))
            ) =>
        {
            // Storage that cannot be reached now may be back for the next attempt.
            tracing::warn!(job = %job.id, error = %format!("{e:#}"), "storage unavailable: the job goes back to the queue");
            if let Err(e) = state
                .queue
                .retry(&job.id, job.attempts, &format!("{e:#}"), state.max_attempts)
                .await
            {
                tracing::error!(%e, job = %job.id, "cannot put the job back in the queue");
            }
            return;
        }
        Err(e) => {
            let id = uuid::Uuid::new_v4().simple().to_string();
            tracing::error!(job = %job.id, error_id = %id, error = %format!("{e:#}"), "job failed inside the service");
            (
                JobState::Failed,
                Some(format!(
                    "the service could not run the job (error id {id}; the server log has the details)"
                )),
                Artifacts::new(),
            )
        }
    };
    if let Err(e) = state.checkpoints.remove(&job.id).await {
        tracing::warn!(%e, job = %job.id, "cannot remove the job's checkpoint");
    }
    let method = job.spec["method"].as_str().unwrap_or("unknown").to_string();
    state
        .jobs_seconds
        .with_label_values(&[method.as_str(), final_state.as_str()])
        .observe(started.elapsed().as_secs_f64());
    if let Err(e) = state
        .queue
        .finish(
            &job.id,
            job.attempts,
            final_state,
            error.as_deref(),
            &artifacts,
        )
        .await
    {
        tracing::error!(%e, job = %job.id, "cannot record the end of the job");
    }
}

/// How often a job waiting for its benchmark looks at it.
const BENCHMARK_POLL: Duration = Duration::from_millis(500);

/// Phase `benchmark`: queues the device benchmark the job asked for, if it asked for
/// one, and waits until an agent has reported it or it expired unclaimed (or `stop`
/// fires). Each change of the benchmark is a `benchmark` event on the job, and its
/// metrics carry the benchmark as it stands.
async fn await_benchmark(
    state: &WorkerContext,
    job: &JobRecord,
    artifacts: &Artifacts,
    stop: &CancellationToken,
) {
    let Some(request) = job
        .spec
        .get("benchmark")
        .and_then(|b| serde_json::from_value::<effp_protocol::BenchmarkRequest>(b.clone()).ok())
    else {
        return;
    };
    let mut pruned = job.clone();
    pruned.artifacts = artifacts.clone();
    let queued = crate::service::benchmark::queue_benchmark(
        state.benchmarks.as_ref(),
        state.jobs.as_ref(),
        &pruned,
        request,
        state.benchmark.claim_within,
    )
    .await;
    let mut record = match queued {
        Ok(Some(record)) => record,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(%e, job = %job.id, "cannot queue the job's benchmark: it succeeds without");
            return;
        }
    };
    // Keep what the job reported so far (FLOPs, mAP) beside the benchmark.
    let mut metrics = match state.jobs.job(&job.tenant, &job.id).await {
        Ok(Some(now)) => now.metrics,
        _ => json!({}),
    };
    let mut seen = None;
    loop {
        if seen != Some(record.state) {
            seen = Some(record.state);
            metrics["benchmark"] = json!(record.view());
            let progress = if record.state.is_final() { 0.99 } else { 0.97 };
            if let Err(e) = state
                .queue
                .report(&job.id, job.attempts, "benchmark", progress, &metrics)
                .await
            {
                tracing::warn!(%e, job = %job.id, "cannot report the benchmark");
            }
        }
        if record.state.is_final() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(BENCHMARK_POLL) => {}
            _ = stop.cancelled() => return,
        }
        if record.state == effp_protocol::BenchmarkState::Queued
            && effp_store::now().1 > record.claim_by_ms
            && let Err(e) = state.benchmarks.expire_benchmark(&record.id).await
        {
            tracing::warn!(%e, benchmark = %record.id, "cannot expire the benchmark");
        }
        match state.benchmarks.benchmark(&record.id).await {
            Ok(Some(now)) => record = now,
            Ok(None) => return,
            Err(e) => tracing::warn!(%e, benchmark = %record.id, "cannot read the benchmark"),
        }
    }
}

/// How a job's run ended, as far as the worker loop is concerned.
enum Outcome {
    /// The artifacts, stored.
    Done(Artifacts),
    /// Stopped on request with a checkpoint.
    Stopped,
    /// Failed for a reason the client may read.
    Failed(String),
    /// The worker process died; worth another attempt.
    Died(String),
}

/// Runs one job in a worker process: fetch the model (and dataset), prune, store the
/// pruned ONNX and the report.
async fn execute(
    state: &WorkerContext,
    job: &JobRecord,
    stop: &CancellationToken,
) -> anyhow::Result<Outcome> {
    let spec: JobSpec = serde_json::from_value(job.spec.clone())?;
    let Some(model) = state.jobs.model(&job.tenant, &spec.model).await? else {
        return Ok(Outcome::Failed(format!(
            "the model {} was deleted before the job ran",
            spec.model
        )));
    };
    state
        .queue
        .report(&job.id, job.attempts, "prepare", 0.02, &json!({}))
        .await?;
    let work = tempfile::tempdir_in(&state.scratch)?;
    let source = state.objects.local_file(&model.sha256, work.path()).await?;
    let data = match &spec.dataset {
        Some(id) => {
            let Some(dataset) = state.jobs.dataset(&job.tenant, id).await? else {
                return Ok(Outcome::Failed(format!(
                    "the dataset {id} was deleted before the job ran"
                )));
            };
            Some(
                state
                    .objects
                    .local_file(&dataset.sha256, work.path())
                    .await?,
            )
        }
        None => None,
    };
    let checkpoint = work.path().join("checkpoint.ckpt");
    let resume = match state.checkpoints.fetch(&job.id, &checkpoint).await {
        Ok(found) => found,
        Err(e @ StoreError::Unavailable(_)) => return Err(e.into()),
        Err(e) => {
            // A checkpoint only saves time: one that cannot be read whole costs the
            // job its steps so far, not the job.
            tracing::warn!(%e, job = %job.id, "the job's checkpoint cannot be read: it starts over");
            let _ = tokio::fs::remove_file(&checkpoint).await;
            false
        }
    };
    let trains = spec.trains();
    let mut spec = spec;
    // Validated when queued; where it runs is this worker's to say.
    if let Ok(asked) = spec.device.parse() {
        spec.device = state.device.place(asked).to_string();
    }
    let cpu = spec.device == "cpu";
    let run = JobRun {
        spec,
        model: source,
        data,
        work: work.path().to_path_buf(),
        checkpoint: checkpoint.clone(),
        checkpoint_every: state.checkpoint_every,
        resume,
        archive_limits: Default::default(),
    };
    let request = work.path().join("job.json");
    tokio::fs::write(&request, serde_json::to_vec(&run)?).await?;
    state
        .queue
        .report(
            &job.id,
            job.attempts,
            if trains { "train" } else { "prune" },
            0.05,
            &json!({}),
        )
        .await?;
    let (steps_tx, steps_rx) = tokio::sync::mpsc::unbounded_channel::<StepRecord>();
    let reporter = tokio::spawn(report_steps(
        state.clone(),
        (job.id.clone(), job.attempts),
        run.spec.training.steps as usize,
        steps_rx,
    ));
    let (saved_tx, saved_rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let keeper = tokio::spawn(keep_checkpoints(
        state.clone(),
        job.id.clone(),
        checkpoint.clone(),
        saved_rx,
    ));
    let error = Arc::new(std::sync::Mutex::new(None::<String>));
    let exit = {
        let error = Arc::clone(&error);
        isolation::run_isolated(
            &["run-job".as_ref(), request.as_os_str()],
            isolation::Supervision {
                work: work.path(),
                memory_limit: state.job_memory_limit,
                cap_address_space: cpu,
                stop: stop.clone(),
            },
            move |line| match serde_json::from_str::<ChildMessage>(&line) {
                Ok(ChildMessage::Step(r)) => {
                    let _ = steps_tx.send(r);
                }
                Ok(ChildMessage::Saved { step }) => {
                    let _ = saved_tx.send(step);
                }
                Ok(ChildMessage::Error(e)) => {
                    *error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                }
                Err(_) => tracing::debug!(line, "worker process output"),
            },
        )
        .await?
    };
    let _ = reporter.await;
    let _ = keeper.await;
    if matches!(exit, ChildExit::Stopped | ChildExit::Died(_)) {
        // The last checkpoint the worker process wrote (when stopped: just now).
        keep_checkpoint(state, &job.id, &checkpoint).await;
    }
    match exit {
        ChildExit::Succeeded => {}
        ChildExit::Stopped => return Ok(Outcome::Stopped),
        ChildExit::Failed(code) => {
            let message = error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
                .unwrap_or_else(|| format!("the worker process exited with status {code}"));
            return Ok(Outcome::Failed(tenant_message(
                &message,
                work.path(),
                state,
            )));
        }
        ChildExit::OverMemory { used } => {
            return Ok(Outcome::Failed(format!(
                "the job used more memory than its budget of {} (EFFP_JOB_MEMORY_LIMIT): it reached {} and was stopped; \
                 use a smaller input_size or training.batch",
                ByteSize(state.job_memory_limit),
                ByteSize(used)
            )));
        }
        ChildExit::Died(reason) => return Ok(Outcome::Died(reason)),
    }
    let report: PruneReport =
        serde_json::from_slice(&tokio::fs::read(child::report_path(work.path())).await?)?;
    let mut metrics = json!({
        "flops_before": report.before.flops,
        "flops_after": report.after.flops,
        "params_before": report.before.params,
        "params_after": report.after.params,
        "flops_ratio": report.flops_ratio,
        "params_ratio": report.params_ratio,
    });
    if let Some(accuracy) = &report.accuracy {
        metrics["map50_95_before"] = json!(accuracy.before.map50_95);
        metrics["map50_95_after"] = json!(accuracy.after.map50_95);
        metrics["map50_before"] = json!(accuracy.before.map50);
        metrics["map50_after"] = json!(accuracy.after.map50);
    }
    if let Some(training) = &report.training {
        metrics["steps"] = json!(training.steps);
        metrics["resumed_from_step"] = json!(training.resumed_from_step);
    }
    state
        .queue
        .report(&job.id, job.attempts, "store", 0.95, &metrics)
        .await?;
    let mut artifacts = Artifacts::new();
    for (name, path) in [
        (PRUNED_MODEL, child::pruned_path(work.path())),
        (PRUNE_REPORT, child::report_path(work.path())),
    ] {
        let file = tokio::fs::File::open(&path).await?;
        let stream = Box::pin(tokio_util::io::ReaderStream::new(file));
        let stored = state.content.store(stream, u64::MAX).await?;
        artifacts.insert(
            name.to_string(),
            ArtifactRef {
                sha256: stored.sha256,
                size: stored.size,
            },
        );
    }
    Ok(Outcome::Done(artifacts))
}

/// Copies each checkpoint the worker process writes to the object store (the latest
/// one when several were written during a copy), until the run ends.
async fn keep_checkpoints(
    state: WorkerContext,
    job_id: String,
    checkpoint: std::path::PathBuf,
    mut saved: tokio::sync::mpsc::UnboundedReceiver<usize>,
) {
    while let Some(mut step) = saved.recv().await {
        while let Ok(later) = saved.try_recv() {
            step = later;
        }
        tracing::debug!(job = %job_id, step, "checkpoint written");
        keep_checkpoint(&state, &job_id, &checkpoint).await;
    }
}

/// Copies a job's checkpoint file to the object store, if there is one.
async fn keep_checkpoint(state: &WorkerContext, job_id: &str, checkpoint: &std::path::Path) {
    if !tokio::fs::try_exists(checkpoint).await.unwrap_or(false) {
        return;
    }
    if let Err(e) = state.checkpoints.save(job_id, checkpoint).await {
        tracing::warn!(%e, job = %job_id, "cannot keep the job's checkpoint: a restart would begin it again");
    }
}

/// Turns training steps into progress reports (at most one per [`REPORT_EVERY`],
/// always the latest, and the last one), until the run ends.
async fn report_steps(
    state: WorkerContext,
    (job_id, attempt): (String, u32),
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
            if let Err(e) = state
                .queue
                .report(&job_id, attempt, phase, progress, &metrics)
                .await
            {
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
