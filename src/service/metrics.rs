//! Prometheus metrics: jobs by state, queue depth, job and HTTP latency histograms.

use effp_protocol::JobState;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use super::AppState;
use super::problem::Problem;

/// The service's metrics and their registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    http: HistogramVec,
    /// Job durations by method and final state.
    pub jobs_seconds: HistogramVec,
    jobs: IntGaugeVec,
    queue: IntGauge,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let http = HistogramVec::new(
            HistogramOpts::new("effp_http_request_duration_seconds", "HTTP request latency")
                .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0]),
            &["method", "route", "status"],
        )
        .expect("valid metric");
        let jobs_seconds = HistogramVec::new(
            HistogramOpts::new(
                "effp_job_duration_seconds",
                "Time from claim to end of a job",
            )
            .buckets(vec![0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 7200.0]),
            &["method", "state"],
        )
        .expect("valid metric");
        let jobs = IntGaugeVec::new(Opts::new("effp_jobs", "Jobs by state"), &["state"])
            .expect("valid metric");
        let queue =
            IntGauge::new("effp_queue_depth", "Jobs waiting for a worker").expect("valid metric");
        for c in [
            Box::new(http.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(jobs_seconds.clone()),
            Box::new(jobs.clone()),
            Box::new(queue.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        Self {
            registry,
            http,
            jobs_seconds,
            jobs,
            queue,
        }
    }

    /// Every metric as a `GET /metrics` response (the Prometheus text format).
    pub fn response(&self) -> Result<Response, prometheus::Error> {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            out,
        )
            .into_response())
    }
}

/// Times every request by its route template (not its raw path: ids would explode
/// the label set).
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(request).await;
    state
        .metrics
        .http
        .with_label_values(&[method.as_str(), route.as_str(), response.status().as_str()])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// `GET /metrics` in the Prometheus text format.
pub async fn render(State(state): State<AppState>) -> Result<Response, Problem> {
    let m = &state.metrics;
    let counts = state
        .jobs
        .job_counts()
        .await
        .map_err(|e| Problem::internal("cannot count jobs", e))?;
    for s in JobState::ALL {
        m.jobs
            .with_label_values(&[s.as_str()])
            .set(counts.get(&s).copied().unwrap_or(0) as i64);
    }
    m.queue
        .set(counts.get(&JobState::Queued).copied().unwrap_or(0) as i64);
    m.response()
        .map_err(|e| Problem::internal("cannot encode metrics", e))
}
