//! `effp serve`: the pruning service on the embedded default (SQLite job store, a
//! local object directory), reachable over HTTP.

mod api;
mod auth;
pub mod benchmark;
mod budget;
pub mod checks;
pub mod config;
pub mod cors;
mod dashboard;
mod isolation;
pub mod limits;
mod listener;
pub(crate) mod metrics;
mod problem;
mod quota;
pub mod webhook;
pub mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use auth::ApiKeys;
use effp_store::{Checkpoints, Content, JobStore, ObjectStore, Queue};

/// Arguments (and environment) of `effp serve`.
#[derive(Debug, Args)]
#[command(after_help = config::LOG_HELP)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, env = "EFFP_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where jobs, records and objects are kept.
    #[command(flatten)]
    pub store: config::StoreArgs,
    /// How jobs run here.
    #[command(flatten)]
    pub jobs: config::JobRunArgs,
    /// Job notifications.
    #[command(flatten)]
    pub webhooks: config::WebhookArgs,
    /// Largest upload accepted, in bytes.
    #[arg(long, env = "EFFP_MAX_UPLOAD_BYTES", default_value_t = 1 << 30)]
    pub max_upload_bytes: u64,
    /// Jobs run at once, each in its own worker process.
    #[arg(long, env = "EFFP_WORKERS", default_value_t = 1)]
    pub workers: usize,
    /// Serve the API only: run no jobs here (they wait in the queue for workers
    /// elsewhere). The API-only build (no engine) runs only this way.
    #[arg(long)]
    pub no_worker: bool,
    /// Keys of device benchmark agents as name:key[,name:key…]: they may only
    /// claim, renew and report benchmarks and download the models of a benchmark
    /// they hold. Without keys (and without API keys), agents on loopback need none.
    #[arg(
        long,
        env = "EFFP_AGENT_KEYS",
        hide_env_values = true,
        default_value = ""
    )]
    pub agent_keys: String,
    /// API keys as tenant:key[,tenant:key…]; without keys only loopback is served.
    #[arg(
        long,
        env = "EFFP_API_KEYS",
        hide_env_values = true,
        default_value = ""
    )]
    pub api_keys: String,
    /// Seconds a request (other than an upload) may take to be answered.
    #[arg(long, env = "EFFP_REQUEST_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_secs: u64,
    /// Seconds an upload may go without a byte arriving before it is dropped.
    #[arg(long, env = "EFFP_UPLOAD_STALL_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub upload_stall_secs: u64,
    /// Slowest upload accepted, in bytes per second averaged over each period of
    /// --upload-stall-secs (a client trickling bytes is dropped with 408).
    #[arg(long, env = "EFFP_UPLOAD_MIN_RATE", default_value = "4KiB")]
    pub upload_min_rate: limits::ByteSize,
    /// Connections served at once; more are answered 503 and closed.
    #[arg(long, env = "EFFP_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: u64,
    /// Seconds a client has to send a request's head; also how long an idle
    /// keep-alive connection stays open.
    #[arg(long, env = "EFFP_HEADER_READ_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout_secs: u64,
    /// Jobs one tenant may have queued or running at once (429 beyond).
    #[arg(long, env = "EFFP_MAX_QUEUED_JOBS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_queued_jobs: u64,
    /// Training steps one tenant's queued and running jobs may ask for together
    /// (429 beyond), and the most one job may ask for (422 beyond).
    #[arg(long, env = "EFFP_MAX_TRAINING_STEPS", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_training_steps: u64,
    /// Bytes of models and datasets one tenant may keep (413 beyond).
    #[arg(long, env = "EFFP_MAX_STORED_BYTES", default_value = "50GiB")]
    pub max_stored_bytes: limits::ByteSize,
    /// Web origins whose pages may call the API from a browser, as
    /// scheme://host[:port][,…] (CORS); none by default.
    #[arg(long, env = "EFFP_CORS_ORIGINS", default_value = "")]
    pub cors_origins: cors::CorsOrigins,
}

/// The API's OpenAPI document as pretty JSON.
pub fn openapi_document() -> String {
    api::openapi::document()
}

/// What every request handler shares.
#[derive(Clone)]
pub struct AppState {
    jobs: Arc<dyn JobStore>,
    queue: Arc<dyn Queue>,
    /// The notification outbox.
    notifications: Arc<dyn effp_store::Notifications>,
    /// Device benchmark tasks.
    benchmarks: Arc<dyn effp_store::Benchmarks>,
    /// How device benchmarks are claimed and held.
    benchmark: config::BenchmarkSettings,
    /// Keys of benchmark agents.
    agent_keys: Arc<auth::AgentKeys>,
    /// How notifications are signed and where they may go.
    webhooks: webhook::WebhookConfig,
    objects: Arc<dyn ObjectStore>,
    /// Stored content with its reference counts (uploads, records, artifacts).
    content: Content,
    /// What one tenant may hold at once.
    quotas: quota::Quotas,
    /// Slowest upload accepted, in bytes per second.
    upload_min_rate: u64,
    metrics: metrics::Metrics,
    keys: Arc<ApiKeys>,
    max_upload_bytes: u64,
    scratch: PathBuf,
    /// The data directory.
    data_dir: PathBuf,
    /// Running jobs' training state, kept between attempts.
    checkpoints: Checkpoints,
    checkpoint_every: usize,
    /// How long a worker's claim lasts without a heartbeat.
    lease: std::time::Duration,
    /// Claims of one job before it is given up.
    max_attempts: u32,
    /// Memory a job's worker process may use, in bytes.
    job_memory_limit: u64,
    /// Device this process trains jobs on.
    device: effp_protocol::DeviceChoice,
    request_timeout: std::time::Duration,
    upload_stall: std::time::Duration,
    /// Cancelled when the service starts shutting down.
    shutdown: tokio_util::sync::CancellationToken,
}

impl ServeArgs {
    /// Job worker processes this service runs: none with `--no-worker`.
    fn job_workers(&self) -> usize {
        if self.no_worker { 0 } else { self.workers }
    }
}

/// Runs the service until SIGTERM or Ctrl-C.
pub fn run(args: &ServeArgs) -> anyhow::Result<u8> {
    #[cfg(not(feature = "engine"))]
    if !args.no_worker {
        eprintln!(
            "error: this API-only build (no engine) cannot run jobs: start it with \
             `effp serve --no-worker` and run workers with the full build"
        );
        return Ok(crate::cli::EXIT_UNAVAILABLE);
    }
    let keys = ApiKeys::parse(&args.api_keys).map_err(anyhow::Error::msg)?;
    let agent_keys = auth::AgentKeys::parse(&args.agent_keys, &keys).map_err(anyhow::Error::msg)?;
    if keys.is_empty() && !args.listen.ip().is_loopback() {
        anyhow::bail!(
            "refusing to listen on {} without API keys: set EFFP_API_KEYS=tenant:key (keys of at least 16 characters) \
             or listen on a loopback address",
            args.listen
        );
    }
    raise_open_file_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let stores = args.store.open().await?;
        let embedded = stores.embedded;
        let webhooks = args.webhooks.config(&stores, &args.store.data_dir)?;
        serve(
            args,
            app_state(args, (keys, agent_keys), stores, webhooks),
            embedded,
        )
        .await
    })
}

/// The state of the API and its workers over opened stores.
fn app_state(
    args: &ServeArgs,
    (keys, agent_keys): (ApiKeys, auth::AgentKeys),
    stores: config::Stores,
    webhooks: webhook::WebhookConfig,
) -> AppState {
    let config::Stores {
        jobs,
        queue,
        notifications,
        benchmarks,
        objects,
        scratch,
        ..
    } = stores;
    AppState {
        queue,
        notifications,
        benchmarks,
        benchmark: args.jobs.benchmarks(),
        agent_keys: Arc::new(agent_keys),
        webhooks,
        content: Content::new(objects.clone(), jobs.clone()),
        checkpoints: Checkpoints::new(objects.clone()),
        quotas: quota::Quotas {
            jobs: args.max_queued_jobs,
            training_steps: args.max_training_steps,
            stored_bytes: args.max_stored_bytes.0,
        },
        upload_min_rate: args.upload_min_rate.0,
        jobs,
        metrics: metrics::Metrics::new(),
        objects,
        keys: Arc::new(keys),
        max_upload_bytes: args.max_upload_bytes,
        scratch,
        data_dir: args.store.data_dir.clone(),
        checkpoint_every: args.jobs.checkpoint_every as usize,
        lease: args.jobs.lease(),
        max_attempts: args.jobs.max_attempts,
        job_memory_limit: args.jobs.job_memory_limit.map_or_else(
            || limits::default_job_memory(args.job_workers().max(1)),
            |b| b.0,
        ),
        device: args.jobs.device,
        request_timeout: std::time::Duration::from_secs(args.request_timeout_secs),
        upload_stall: std::time::Duration::from_secs(args.upload_stall_secs),
        shutdown: tokio_util::sync::CancellationToken::new(),
    }
}

impl AppState {
    /// What this process's workers need.
    fn worker_context(&self) -> worker::WorkerContext {
        worker::WorkerContext {
            jobs: self.jobs.clone(),
            queue: self.queue.clone(),
            benchmarks: self.benchmarks.clone(),
            benchmark: self.benchmark,
            objects: self.objects.clone(),
            content: self.content.clone(),
            checkpoints: self.checkpoints.clone(),
            scratch: self.scratch.clone(),
            data_dir: self.data_dir.clone(),
            checkpoint_every: self.checkpoint_every,
            lease: self.lease,
            max_attempts: self.max_attempts,
            job_memory_limit: self.job_memory_limit,
            device: self.device,
            jobs_seconds: self.metrics.jobs_seconds.clone(),
            shutdown: self.shutdown.clone(),
        }
    }
}

async fn serve(args: &ServeArgs, state: AppState, embedded: bool) -> anyhow::Result<u8> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    let signal = shutdown_signal()?;
    sweep(&state, embedded).await?;
    println!(
        "effp serving on http://{address} (data in {}{}{})",
        args.store.data_dir.display(),
        if embedded { "" } else { ", jobs in Redis" },
        match &args.store.s3.s3_bucket {
            Some(bucket) => format!(", objects in the S3 bucket {bucket}"),
            None => String::new(),
        }
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let workers: Vec<_> = (0..args.job_workers())
        .map(|index| tokio::spawn(worker::run(state.worker_context(), index)))
        .collect();
    tokio::spawn(webhook::run(
        state.notifications.clone(),
        state.webhooks.clone(),
        state.shutdown.clone(),
    ));
    let token = state.shutdown.clone();
    let app = with_request_ids(args.cors_origins.apply(api::router(state)));
    let limits = listener::ConnectionLimits {
        max_connections: args.max_connections as usize,
        header_read_timeout: std::time::Duration::from_secs(args.header_read_timeout_secs),
    };
    listener::serve(listener, app, limits, async move {
        signal.await;
        token.cancel();
    })
    .await;
    // Running jobs stop after their current step, write a checkpoint and go back to
    // the queue; the next start resumes them.
    let stopped = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        futures_util::future::join_all(workers),
    )
    .await;
    if stopped.is_err() {
        tracing::warn!(
            "workers did not stop within 120 s; their jobs resume from the last checkpoint"
        );
    }
    Ok(0)
}

/// Lifts the soft limit on open files to the hard one: every connection is a file,
/// and the usual soft default (1024) is below the connection cap.
pub(crate) fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// At start-up, before anything else uses the stores: content that no record refers
/// to (an upload a crash cut short; only with the embedded store, whose one process
/// is this one) and checkpoints of jobs that have ended go.
async fn sweep(state: &AppState, embedded: bool) -> anyhow::Result<()> {
    let removed = if embedded {
        state.content.sweep().await?
    } else {
        0
    };
    let checkpointed = state.checkpoints.jobs().await?;
    let ended = state.jobs.ended_jobs(&checkpointed).await?;
    for id in &ended {
        state.checkpoints.remove(id).await?;
    }
    if removed + ended.len() > 0 {
        tracing::info!(
            objects = removed,
            checkpoints = ended.len(),
            "removed what no record refers to"
        );
    }
    Ok(())
}

/// Gives every request an `x-request-id` (the client's, or a new UUID), logs each
/// request in a span carrying it, and returns it on the response.
fn with_request_ids(app: axum::Router) -> axum::Router {
    use axum::http::{HeaderName, Request};
    use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
    let header = HeaderName::from_static("x-request-id");
    let trace = tower_http::trace::TraceLayer::new_for_http().make_span_with(|request: &Request<_>| {
        let id = request
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        tracing::info_span!("request", method = %request.method(), uri = %request.uri(), request_id = %id)
    });
    app.layer(PropagateRequestIdLayer::new(header.clone()))
        .layer(trace)
        .layer(SetRequestIdLayer::new(header, MakeRequestUuid))
}

/// Resolves on SIGTERM or Ctrl-C. The handlers are installed when this is called,
/// not when first polled, so a signal right after the URL is printed is not lost.
pub(crate) fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
        Ok(async move {
            tokio::select! {
                _ = terminate.recv() => {},
                _ = interrupt.recv() => {},
            }
            tracing::info!("shutting down");
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("shutting down");
        })
    }
}
