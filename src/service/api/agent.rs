//! `/v1/agent`: what benchmark agents do, with their own keys: claim a task of
//! their device kind (a long poll), renew its lease, download its two models, and
//! report what they measured.

use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::extract::Query;
use crate::service::AppState;
use crate::service::auth::AgentKey;
use crate::service::problem::{FieldError, Problem};
use effp_protocol::{
    BenchmarkReport, BenchmarkResult, BenchmarkTask, ClaimRequest, LeaseRenewal, Measurements,
    ReportOutcome, RunnerFailure,
};
use effp_store::{BenchmarkRecord, StoreError};

/// How often a waiting claim looks for a new task.
const CLAIM_POLL: Duration = Duration::from_millis(250);

fn invalid(errors: Vec<FieldError>) -> Problem {
    let mut p = Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-agent-request",
        "the agent's request is not valid: see errors",
    );
    p.errors = errors;
    p
}

/// The name a claim is held under: the agent key's name and the agent's own, so
/// that agents sharing a key still hold their own tasks.
fn holder(key: &AgentKey, agent: &str) -> String {
    format!("{}/{agent}", key.0)
}

fn not_held(id: &str) -> Problem {
    Problem::new(
        StatusCode::CONFLICT,
        "lease-lost",
        format!(
            "this agent does not hold benchmark {id} (its lease ran out and another agent \
             claimed it, or it has ended): stop measuring it and claim again"
        ),
    )
}

/// Task `id`, as long as agents of `key` may know of it: 404 when there is no such
/// task or another key's agent holds it.
async fn visible(state: &AppState, key: &AgentKey, id: &str) -> Result<BenchmarkRecord, Problem> {
    let task = state
        .benchmarks
        .benchmark(id)
        .await?
        .ok_or_else(|| Problem::not_found("benchmark", id))?;
    let prefix = format!("{}/", key.0);
    if !task
        .agent
        .as_deref()
        .is_some_and(|a| a.starts_with(&prefix))
    {
        // Tasks other agents hold are not this agent's to know about.
        return Err(Problem::not_found("benchmark", id));
    }
    Ok(task)
}

/// `task` as long as its claim `attempt` still holds: 409 otherwise.
fn still_held(task: BenchmarkRecord, attempt: u32) -> Result<BenchmarkRecord, Problem> {
    if task.state != effp_protocol::BenchmarkState::Running || task.attempts != attempt {
        return Err(not_held(&task.id));
    }
    Ok(task)
}

/// The task `id` as long as `key`'s agent holds claim `attempt` of it: 404 when
/// there is no such task, 409 when the agent does not hold it.
async fn held(
    state: &AppState,
    key: &AgentKey,
    id: &str,
    attempt: u32,
) -> Result<BenchmarkRecord, Problem> {
    still_held(visible(state, key, id).await?, attempt)
}

fn lease_lost(e: StoreError, id: &str) -> Problem {
    match e {
        StoreError::LeaseLost { .. } => not_held(id),
        other => other.into(),
    }
}

/// `POST /v1/agent/claim`: the oldest benchmark task of the agent's device kind,
/// waiting up to `wait_s` (bounded by the request timeout) for one to arrive.
#[utoipa::path(post, path = "/v1/agent/claim", operation_id = "agent_claim", tag = "agents",
    request_body = ClaimRequest,
    responses(
        (status = 200, description = "A task, held until its lease runs out", body = BenchmarkTask),
        (status = 204, description = "No task of this device kind arrived in time"),
        (status = 401, description = "Missing or wrong agent key", content_type = "application/problem+json", body = Problem),
        (status = 403, description = "A tenant's key: only agent keys may claim", content_type = "application/problem+json", body = Problem),
        (status = 422, description = "Invalid claim", content_type = "application/problem+json", body = Problem),
    ),
    security(("bearer" = [])))]
pub async fn claim(
    State(state): State<AppState>,
    key: AgentKey,
    body: Bytes,
) -> Result<Response, Problem> {
    let request: ClaimRequest = super::shared::parse_json(&body, "claim", invalid)?;
    let errors = request.errors();
    if !errors.is_empty() {
        return Err(invalid(errors));
    }
    let holder = holder(&key, &request.agent);
    // Answer before the request deadline cuts the wait short.
    let wait = Duration::from_secs(request.wait_s.into())
        .min(state.request_timeout.saturating_sub(Duration::from_secs(2)));
    let started = Instant::now();
    loop {
        let claimed = state
            .benchmarks
            .claim_benchmark(
                &request.facts.kind,
                &holder,
                state.benchmark.lease,
                state.benchmark.max_attempts,
            )
            .await?;
        if let Some(task) = claimed {
            tracing::info!(benchmark = %task.id, job = %task.job_id, agent = %holder, attempt = task.attempts, "benchmark claimed");
            return Ok(Json(BenchmarkTask {
                id: task.id,
                job: task.job_id,
                attempt: task.attempts,
                request: task.request,
                lease_s: state.benchmark.lease.as_secs() as u32,
                original_bytes: task.original.1,
                pruned_bytes: task.pruned.1,
            })
            .into_response());
        }
        if started.elapsed() + CLAIM_POLL > wait || state.shutdown.is_cancelled() {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        tokio::time::sleep(CLAIM_POLL).await;
    }
}

/// The lease an agent holds, renewed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LeaseRenewed {
    /// Seconds the lease lasts from now.
    pub lease_s: u32,
}

/// `POST /v1/agent/benchmarks/{id}/lease`.
#[utoipa::path(post, path = "/v1/agent/benchmarks/{id}/lease", operation_id = "agent_renew", tag = "agents",
    params(("id" = String, Path)),
    request_body = LeaseRenewal,
    responses(
        (status = 200, description = "Renewed", body = LeaseRenewed),
        (status = 401, description = "Missing or wrong agent key", content_type = "application/problem+json", body = Problem),
        (status = 404, description = "No such task held by this agent key", content_type = "application/problem+json", body = Problem),
        (status = 409, description = "The lease is lost: stop measuring", content_type = "application/problem+json", body = Problem),
        (status = 422, description = "Invalid body", content_type = "application/problem+json", body = Problem),
    ),
    security(("bearer" = [])))]
pub async fn renew(
    State(state): State<AppState>,
    key: AgentKey,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<LeaseRenewed>, Problem> {
    let renewal: LeaseRenewal = super::shared::parse_json(&body, "lease renewal", invalid)?;
    let task = held(&state, &key, &id, renewal.attempt).await?;
    let agent = task.agent.unwrap_or_default();
    state
        .benchmarks
        .renew_benchmark(&id, &agent, renewal.attempt, state.benchmark.lease)
        .await
        .map_err(|e| lease_lost(e, &id))?;
    Ok(Json(LeaseRenewed {
        lease_s: state.benchmark.lease.as_secs() as u32,
    }))
}

/// Which claim a download is for.
#[derive(Debug, Deserialize)]
pub struct AttemptQuery {
    attempt: u32,
}

/// `GET /v1/agent/benchmarks/{id}/{model}`: `original` or `pruned`, streamed.
#[utoipa::path(get, path = "/v1/agent/benchmarks/{id}/{model}", operation_id = "agent_download", tag = "agents",
    params(("id" = String, Path), ("model" = String, Path, description = "original or pruned"),
           ("attempt" = u32, Query, description = "The claim's attempt")),
    responses(
        (status = 200, description = "The ONNX file; ETag is its SHA-256", content_type = "application/octet-stream", body = inline(super::shared::FileBytes)),
        (status = 401, description = "Missing or wrong agent key", content_type = "application/problem+json", body = Problem),
        (status = 404, description = "No such task held by this agent key, or no such model", content_type = "application/problem+json", body = Problem),
        (status = 409, description = "The lease is lost", content_type = "application/problem+json", body = Problem),
        (status = 422, description = "No attempt given", content_type = "application/problem+json", body = Problem),
    ),
    security(("bearer" = [])))]
pub async fn download(
    State(state): State<AppState>,
    key: AgentKey,
    Path((id, model)): Path<(String, String)>,
    Query(q): Query<AttemptQuery>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let task = held(&state, &key, &id, q.attempt).await?;
    let (sha256, size) = match model.as_str() {
        "original" => task.original,
        "pruned" => task.pruned,
        _ => {
            return Err(Problem::not_found(
                "model (use original or pruned) of benchmark",
                &format!("{id}/{model}"),
            ));
        }
    };
    super::shared::stream_object(
        &state,
        &sha256,
        size,
        &format!("{model}.onnx"),
        "application/octet-stream",
        &headers,
    )
    .await
}

/// `POST /v1/agent/benchmarks/{id}/report`: both models measured, or why not.
#[utoipa::path(post, path = "/v1/agent/benchmarks/{id}/report", operation_id = "agent_report", tag = "agents",
    params(("id" = String, Path)),
    request_body = BenchmarkReport,
    responses(
        (status = 204, description = "Recorded on the job"),
        (status = 401, description = "Missing or wrong agent key", content_type = "application/problem+json", body = Problem),
        (status = 404, description = "No such task held by this agent key", content_type = "application/problem+json", body = Problem),
        (status = 409, description = "This agent does not hold the task (any more)", content_type = "application/problem+json", body = Problem),
        (status = 422, description = "Malformed report: nothing changed", content_type = "application/problem+json", body = Problem),
    ),
    security(("bearer" = [])))]
pub async fn report(
    State(state): State<AppState>,
    key: AgentKey,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Problem> {
    // An unknown task is a 404 whatever the body holds.
    let task = visible(&state, &key, &id).await?;
    let report: BenchmarkReport = super::shared::parse_json(&body, "benchmark report", invalid)?;
    let mut errors = report.errors();
    let task = still_held(task, report.attempt)?;
    if report.device.kind != task.request.device {
        errors.push(FieldError::new(
            "/device/kind",
            format!(
                "the task is for device kind '{}', not '{}'",
                task.request.device, report.device.kind
            ),
        ));
    }
    if !errors.is_empty() {
        return Err(invalid(errors));
    }
    let outcome = match report.outcome {
        ReportOutcome::Measured(Measurements {
            precision,
            original,
            pruned,
        }) => Ok(BenchmarkResult {
            request: task.request.clone(),
            runner: report.runner,
            precision,
            device: report.device,
            original,
            pruned,
        }),
        ReportOutcome::Failed(RunnerFailure { error }) => Err(error),
    };
    let agent = task.agent.unwrap_or_default();
    state
        .benchmarks
        .finish_benchmark(&id, &agent, report.attempt, outcome)
        .await
        .map_err(|e| lease_lost(e, &id))?;
    tracing::info!(benchmark = %id, job = %task.job_id, %agent, "benchmark reported");
    Ok(StatusCode::NO_CONTENT.into_response())
}
