//! The in-process worker: claims jobs from the queue, runs them through the same
//! pruning pipeline as `effp prune`, heartbeats while it works, and stores the
//! artifacts.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Parser;
use serde_json::json;

use super::AppState;
use super::api::jobs::{JobSpec, artifact_entry};
use super::store::JobRecord;
use crate::cli::prune::PruneArgs;

/// How long a claim lasts without a heartbeat.
const LEASE: Duration = Duration::from_secs(30);
/// Claims of one job before it is given up.
const MAX_ATTEMPTS: u32 = 3;

/// `effp prune`'s arguments, parsed the way the command line parses them, so that a
/// job gets exactly the command's defaults.
#[derive(Debug, Parser)]
#[command(name = "prune")]
struct PruneCommand {
    #[command(flatten)]
    args: PruneArgs,
}

/// Runs jobs until the process ends.
pub async fn run(state: AppState, index: usize) {
    loop {
        let wake = state.wake.notified();
        match state.queue.claim(LEASE, MAX_ATTEMPTS).await {
            Ok(Some(job)) => {
                tracing::info!(worker = index, job = %job.id, "claimed");
                run_job(&state, job).await;
            }
            Ok(None) => {
                let _ = tokio::time::timeout(Duration::from_secs(2), wake).await;
            }
            Err(e) => {
                tracing::error!(%e, "cannot claim jobs");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

async fn run_job(state: &AppState, job: JobRecord) {
    let cancel = Arc::new(AtomicBool::new(job.cancel_requested));
    let heartbeat = {
        let (state, id, cancel) = (state.clone(), job.id.clone(), Arc::clone(&cancel));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(LEASE / 3).await;
                match state.queue.heartbeat(&id, LEASE).await {
                    Ok(true) => cancel.store(true, Ordering::SeqCst),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(%e, job = %id, "heartbeat failed"),
                }
            }
        })
    };
    let started = std::time::Instant::now();
    let outcome = execute(state, &job, &cancel).await;
    heartbeat.abort();
    let (final_state, error, artifacts) = match outcome {
        Ok(artifacts) => ("succeeded", None, artifacts),
        Err(_) if cancel.load(Ordering::SeqCst) => ("cancelled", None, json!({})),
        Err(e) => ("failed", Some(format!("{e:#}")), json!({})),
    };
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

/// Runs one job: fetch the model, prune, store the pruned ONNX and the report.
async fn execute(
    state: &AppState,
    job: &JobRecord,
    cancel: &Arc<AtomicBool>,
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
        .report(&job.id, "prune", 0.1, &json!({}))
        .await?;
    let work = tempfile::tempdir_in(&state.scratch)?;
    let source = state.objects.local_file(&model.sha256, work.path()).await?;
    let argv = prune_argv(&spec, &source, work.path());
    let cancel_flag = Arc::clone(cancel);
    let report = tokio::task::spawn_blocking(move || {
        let command = PruneCommand::try_parse_from(argv)?;
        crate::cli::prune::execute(&command.args, &cancel_flag, &mut |_| {})
    })
    .await??;
    let metrics = json!({
        "flops_before": report.before.flops,
        "flops_after": report.after.flops,
        "params_before": report.before.params,
        "params_after": report.after.params,
        "flops_ratio": report.flops_ratio,
        "params_ratio": report.params_ratio,
    });
    state.queue.report(&job.id, "store", 0.9, &metrics).await?;
    let mut artifacts = serde_json::Map::new();
    for name in ["pruned.onnx", "report.json"] {
        let file = tokio::fs::File::open(work.path().join(name)).await?;
        let stream = Box::pin(tokio_util::io::ReaderStream::new(file));
        let stored = state.objects.put(stream, u64::MAX).await?;
        artifacts.insert(name.into(), artifact_entry(&stored.sha256, stored.size));
    }
    Ok(serde_json::Value::Object(artifacts))
}

fn prune_argv(spec: &JobSpec, model: &Path, work: &Path) -> Vec<String> {
    let mut argv: Vec<String> = vec![
        "prune".into(),
        model.display().to_string(),
        "--method".into(),
        "l1".into(),
        "--out".into(),
        work.join("pruned.onnx").display().to_string(),
        "--report".into(),
        work.join("report.json").display().to_string(),
        "--device".into(),
        spec.device.clone(),
        "--min-channels".into(),
        spec.options.min_channels.to_string(),
        "--min-fraction".into(),
        spec.options.min_fraction.to_string(),
        "--round-to".into(),
        spec.options.round_to.to_string(),
    ];
    let t = &spec.target;
    if let Some(r) = t.flops_ratio {
        argv.extend(["--target-flops".into(), r.to_string()]);
    } else if let Some(f) = t.flops {
        argv.extend(["--target-flops".into(), f.to_string()]);
    } else if let Some(r) = t.params_ratio {
        argv.extend(["--target-params".into(), r.to_string()]);
    }
    if let Some(size) = &spec.input_size {
        argv.extend(["--input-size".into(), size.clone()]);
    }
    argv
}
