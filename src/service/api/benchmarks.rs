//! `/v1/jobs/{id}/benchmarks`: a succeeded job's models measured on a device by a
//! benchmark agent, asked for after the job (a job may also ask for one up front).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::service::AppState;
use crate::service::auth::Tenant;
use crate::service::problem::Problem;
use effp_protocol::{BenchmarkRequest, BenchmarkView, JobState};
use effp_store::BenchmarkRecord;

/// Most benchmarks one job may have.
pub const MAX_BENCHMARKS_PER_JOB: usize = 32;

/// A job's benchmarks.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BenchmarkList {
    /// Oldest first.
    pub items: Vec<BenchmarkView>,
}

/// `POST /v1/jobs/{id}/benchmarks`.
#[utoipa::path(post, path = "/v1/jobs/{id}/benchmarks", operation_id = "create_benchmark", tag = "jobs",
    params(("id" = String, Path)),
    request_body = BenchmarkRequest,
    responses(
        (status = 201, description = "Queued for an agent of the device kind", body = BenchmarkView),
        (status = 401, description = "Missing or wrong API key", content_type = "application/problem+json", body = Problem),
        (status = 404, description = "No such job for this tenant", content_type = "application/problem+json", body = Problem),
        (status = 409, description = "The job has no pruned model (it has not succeeded, or its original model was deleted), or has as many benchmarks as it may", content_type = "application/problem+json", body = Problem),
        (status = 422, description = "Invalid request", content_type = "application/problem+json", body = Problem),
    ),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Problem> {
    let request: BenchmarkRequest =
        super::shared::parse_json(&body, "benchmark request", super::jobs::invalid)?;
    let errors = request.errors("");
    if !errors.is_empty() {
        return Err(super::jobs::invalid(errors));
    }
    let job = state
        .jobs
        .job(&tenant, &id)
        .await?
        .ok_or_else(|| Problem::not_found("job", &id))?;
    let conflict = |detail: String| Problem::new(StatusCode::CONFLICT, "no-benchmark", detail);
    if job.state != JobState::Succeeded {
        return Err(conflict(format!(
            "job {id} is {}: only a succeeded job has a pruned model to measure",
            job.state
        )));
    }
    if state.benchmarks.job_benchmarks(&id).await?.len() >= MAX_BENCHMARKS_PER_JOB {
        return Err(conflict(format!(
            "job {id} has {MAX_BENCHMARKS_PER_JOB} benchmarks, as many as a job may have"
        )));
    }
    let record = crate::service::benchmark::queue_benchmark(
        state.benchmarks.as_ref(),
        state.jobs.as_ref(),
        &job,
        request,
        state.benchmark.claim_within,
    )
    .await?
    .ok_or_else(|| {
        conflict(format!(
            "job {id} has no pruned model, or its original model was deleted: nothing to compare"
        ))
    })?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/v1/jobs/{id}/benchmarks"))],
        Json(record.view()),
    )
        .into_response())
}

/// `GET /v1/jobs/{id}/benchmarks`.
#[utoipa::path(get, path = "/v1/jobs/{id}/benchmarks", operation_id = "list_benchmarks", tag = "jobs",
    params(("id" = String, Path)),
    responses(
        (status = 200, description = "The job's benchmarks, oldest first", body = BenchmarkList),
        (status = 401, description = "Missing or wrong API key", content_type = "application/problem+json", body = Problem),
        (status = 404, description = "No such job for this tenant", content_type = "application/problem+json", body = Problem),
    ),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Json<BenchmarkList>, Problem> {
    state
        .jobs
        .job(&tenant, &id)
        .await?
        .ok_or_else(|| Problem::not_found("job", &id))?;
    let items = views(&state, &id).await?;
    Ok(Json(BenchmarkList { items }))
}

/// A job's benchmarks as it shows them.
pub(crate) async fn views(state: &AppState, job_id: &str) -> Result<Vec<BenchmarkView>, Problem> {
    Ok(state
        .benchmarks
        .job_benchmarks(job_id)
        .await?
        .iter()
        .map(BenchmarkRecord::view)
        .collect())
}
