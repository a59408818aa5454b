//! `effp serve`: the pruning service on the embedded default (SQLite job store, a
//! local object directory), reachable over HTTP.

mod api;
mod auth;
mod metrics;
mod problem;
pub mod store;
mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use auth::ApiKeys;
use store::local::LocalObjects;
use store::sqlite::SqliteStore;
use store::{JobStore, ObjectStore, Queue};

/// Arguments (and environment) of `effp serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, env = "EFFP_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Directory of the SQLite database and the stored objects.
    #[arg(long, env = "EFFP_DATA_DIR", default_value = "effp-data")]
    pub data_dir: PathBuf,
    /// Largest upload accepted, in bytes.
    #[arg(long, env = "EFFP_MAX_UPLOAD_BYTES", default_value_t = 1 << 30)]
    pub max_upload_bytes: u64,
    /// Jobs run at once by the in-process worker.
    #[arg(long, env = "EFFP_WORKERS", default_value_t = 1)]
    pub workers: usize,
    /// API keys as tenant:key[,tenant:key…]; without keys only loopback is served.
    #[arg(
        long,
        env = "EFFP_API_KEYS",
        hide_env_values = true,
        default_value = ""
    )]
    pub api_keys: String,
    /// Training steps between checkpoints of a running job (a restart resumes from
    /// the last one; shutting down always writes one).
    #[arg(long, env = "EFFP_CHECKPOINT_EVERY", default_value_t = 25, value_parser = clap::value_parser!(u64).range(1..))]
    pub checkpoint_every: u64,
    /// Seconds a request (other than an upload) may take to be answered.
    #[arg(long, env = "EFFP_REQUEST_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_secs: u64,
    /// Seconds an upload may go without a byte arriving before it is dropped.
    #[arg(long, env = "EFFP_UPLOAD_STALL_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub upload_stall_secs: u64,
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
    objects: Arc<dyn ObjectStore>,
    metrics: metrics::Metrics,
    /// Wakes idle workers when a job is submitted.
    wake: Arc<tokio::sync::Notify>,
    keys: Arc<ApiKeys>,
    max_upload_bytes: u64,
    archive_limits: effp_engine::data::archive::ArchiveLimits,
    scratch: PathBuf,
    /// Where running jobs keep their training checkpoints.
    checkpoints: PathBuf,
    checkpoint_every: usize,
    request_timeout: std::time::Duration,
    upload_stall: std::time::Duration,
    /// Cancelled when the service starts shutting down.
    shutdown: tokio_util::sync::CancellationToken,
}

/// Runs the service until SIGTERM or Ctrl-C.
pub fn run(args: &ServeArgs) -> anyhow::Result<u8> {
    let keys = ApiKeys::parse(&args.api_keys).map_err(anyhow::Error::msg)?;
    if keys.is_empty() && !args.listen.ip().is_loopback() {
        anyhow::bail!(
            "refusing to listen on {} without API keys: set EFFP_API_KEYS=tenant:key (keys of at least 16 characters) \
             or listen on a loopback address",
            args.listen
        );
    }
    std::fs::create_dir_all(&args.data_dir).with_context(|| {
        format!(
            "cannot create the data directory '{}'",
            args.data_dir.display()
        )
    })?;
    let jobs = SqliteStore::open(&args.data_dir.join("effp.sqlite3"))?;
    let objects = LocalObjects::open(&args.data_dir.join("objects"))?;
    // Scratch holds only what a running request or job is using, so whatever a
    // previous process left there is garbage.
    let scratch = args.data_dir.join("scratch");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    let checkpoints = args.data_dir.join("checkpoints");
    std::fs::create_dir_all(&checkpoints)?;
    let jobs = Arc::new(jobs);
    let state = AppState {
        queue: jobs.clone(),
        jobs,
        wake: Arc::new(tokio::sync::Notify::new()),
        metrics: metrics::Metrics::new(),
        objects: Arc::new(objects),
        keys: Arc::new(keys),
        max_upload_bytes: args.max_upload_bytes,
        archive_limits: effp_engine::data::archive::ArchiveLimits::default(),
        scratch,
        checkpoints,
        checkpoint_every: args.checkpoint_every as usize,
        request_timeout: std::time::Duration::from_secs(args.request_timeout_secs),
        upload_stall: std::time::Duration::from_secs(args.upload_stall_secs),
        shutdown: tokio_util::sync::CancellationToken::new(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(args, state))
}

async fn serve(args: &ServeArgs, state: AppState) -> anyhow::Result<u8> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    let signal = shutdown_signal()?;
    let recovered = state.queue.recover_abandoned().await?;
    if recovered > 0 {
        tracing::info!(
            jobs = recovered,
            "jobs left running by the previous process go back to the queue"
        );
    }
    println!(
        "effp serving on http://{address} (data in {})",
        args.data_dir.display()
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let workers: Vec<_> = (0..args.workers)
        .map(|index| tokio::spawn(worker::run(state.clone(), index)))
        .collect();
    let token = state.shutdown.clone();
    let app = with_request_ids(api::router(state));
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            signal.await;
            token.cancel();
        })
        .await
        .context("the server failed")?;
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
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
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
