//! `effp worker`: a process that only runs jobs, claimed from the shared queue, beside
//! API replicas (`effp serve --no-worker`) that only serve. Full build only.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use effp_store::{Checkpoints, Content};

use super::WorkerContext;
use crate::service::config::{JobRunArgs, StoreArgs};
use crate::service::limits;

/// Arguments (and environment) of `effp worker`.
#[derive(Debug, Args)]
#[command(after_help = crate::service::config::LOG_HELP)]
pub struct WorkerArgs {
    /// Where jobs, records and objects are kept (EFFP_REDIS_URL is required: the
    /// embedded store belongs to one `effp serve`).
    #[command(flatten)]
    pub store: StoreArgs,
    /// How jobs run here.
    #[command(flatten)]
    pub jobs: JobRunArgs,
    /// Job notifications (this worker delivers those of the jobs it ends, and any
    /// other that is due).
    #[command(flatten)]
    pub webhooks: crate::service::config::WebhookArgs,
    /// Jobs this worker runs at once, each in its own process.
    #[arg(long, env = "EFFP_WORKER_CONCURRENCY", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub concurrency: u64,
    /// Address to serve this worker's Prometheus metrics (`GET /metrics`: job
    /// durations by method and final state) and its liveness (`GET /healthz`) on;
    /// none unless set. Port 0 picks a free one (the start-up line says which).
    #[arg(long, env = "EFFP_WORKER_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// Runs jobs until SIGTERM or Ctrl-C; the jobs running then are checkpointed and go
/// back to the queue without spending an attempt.
pub fn run(args: &WorkerArgs) -> anyhow::Result<u8> {
    if args.store.redis_url.is_none() {
        eprintln!(
            "error: effp worker takes its jobs from a shared queue: set EFFP_REDIS_URL (or --redis-url); \
             with the embedded store, `effp serve` runs the jobs itself"
        );
        return Ok(crate::cli::EXIT_UNAVAILABLE);
    }
    crate::service::raise_open_file_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(work(args))
}

async fn work(args: &WorkerArgs) -> anyhow::Result<u8> {
    let stores = args.store.open().await?;
    let webhooks = args.webhooks.config(&stores, &args.store.data_dir)?;
    let notifications = stores.notifications.clone();
    let slots = args.concurrency as usize;
    let metrics = crate::service::metrics::Metrics::new();
    let context = WorkerContext {
        content: Content::new(stores.objects.clone(), stores.jobs.clone()),
        checkpoints: Checkpoints::new(stores.objects.clone()),
        jobs: stores.jobs,
        queue: stores.queue,
        benchmarks: stores.benchmarks,
        benchmark: args.jobs.benchmarks(),
        objects: stores.objects,
        scratch: stores.scratch,
        data_dir: args.store.data_dir.clone(),
        checkpoint_every: args.jobs.checkpoint_every as usize,
        lease: args.jobs.lease(),
        max_attempts: args.jobs.max_attempts,
        job_memory_limit: args
            .jobs
            .job_memory_limit
            .map_or_else(|| limits::default_job_memory(slots), |b| b.0),
        device: args.jobs.device,
        jobs_seconds: metrics.jobs_seconds.clone(),
        shutdown: tokio_util::sync::CancellationToken::new(),
    };
    let signal = crate::service::shutdown_signal()?;
    let serving = match args.metrics_listen {
        Some(address) => format!(
            "; metrics on http://{}/metrics",
            serve_metrics(address, metrics, context.shutdown.clone()).await?
        ),
        None => String::new(),
    };
    println!(
        "effp worker running {slots} job(s) at once on device {}, jobs from Redis, {}{serving}",
        args.jobs.device,
        match &args.store.s3.s3_bucket {
            Some(bucket) => format!("objects in the S3 bucket {bucket}"),
            None => format!("data in {}", args.store.data_dir.display()),
        }
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
    tokio::spawn(crate::service::webhook::run(
        notifications,
        webhooks,
        context.shutdown.clone(),
    ));
    let loops: Vec<_> = (0..slots)
        .map(|index| tokio::spawn(super::run(context.clone(), index)))
        .collect();
    signal.await;
    context.shutdown.cancel();
    let stopped = tokio::time::timeout(
        Duration::from_secs(120),
        futures_util::future::join_all(loops),
    )
    .await;
    if stopped.is_err() {
        tracing::warn!("jobs did not stop within 120 s; they resume from their last checkpoint");
    }
    Ok(0)
}

/// Serves `GET /metrics` and `GET /healthz` on `address` until shutdown; the address
/// it listens on.
async fn serve_metrics(
    address: std::net::SocketAddr,
    metrics: crate::service::metrics::Metrics,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<std::net::SocketAddr> {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address} for metrics (--metrics-listen)"))?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let response = metrics.response();
                async move {
                    response.unwrap_or_else(|e| {
                        (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
                    })
                }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }));
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(%e, "the metrics endpoint stopped");
        }
    });
    Ok(bound)
}
