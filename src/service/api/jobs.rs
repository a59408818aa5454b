//! `/v1/jobs`: submit pruning jobs, follow them, cancel them, fetch their artifacts.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};

use super::extract::Query;
use axum::http::{HeaderMap, StatusCode, header};
use std::collections::VecDeque;
use std::convert::Infallible;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::service::AppState;
use crate::service::auth::Tenant;
use crate::service::problem::{FieldError, Problem};
use effp_store::JobRecord;

pub use effp_protocol::JobSpec;
use effp_protocol::JobState;

pub(crate) fn invalid(errors: Vec<FieldError>) -> Problem {
    let mut p = Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-job",
        "the job request is not valid: see errors",
    );
    p.errors = errors;
    p
}

pub(crate) fn field(path: &str, message: impl Into<String>) -> FieldError {
    FieldError::new(path, message)
}

/// Parses and checks a request body; every problem found is reported at once.
fn parse_spec(body: &[u8]) -> Result<JobSpec, Problem> {
    let mut spec: JobSpec = super::shared::parse_json(body, "job request", invalid)?;
    // The stored job names the method it runs, defaulted or not.
    spec.method = Some(spec.method());
    let errors = spec.validate();
    if errors.is_empty() {
        Ok(spec)
    } else {
        Err(invalid(errors))
    }
}

/// `POST /v1/jobs`.
#[utoipa::path(post, path = "/v1/jobs", operation_id = "create_job", tag = "jobs",
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retried call return the same job")),
    request_body = JobSpec,
    responses(
        (status = 201, description = "Queued", body = JobRecord),
        (status = 200, description = "The job created before with this Idempotency-Key", body = JobRecord),
        (status = 400, description = "Bad Idempotency-Key", content_type = "application/problem+json", body = crate::service::problem::Problem),
        (status = 401, description = "Missing or wrong API key", content_type = "application/problem+json", body = crate::service::problem::Problem),
        (status = 422, description = "Invalid request: errors lists every bad field (also a job estimated over the job memory limit, or asking for more training steps than a tenant may queue)", content_type = "application/problem+json", body = crate::service::problem::Problem),
        (status = 429, description = "The tenant's queued jobs or their training steps are at their quota; Retry-After says when to try again", content_type = "application/problem+json", body = crate::service::problem::Problem),
    ),
    security(("bearer" = [])))]
pub async fn submit(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let key = headers
        .get("idempotency-key")
        .map(|v| {
            v.to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= 255)
                .map(str::to_string)
                .ok_or_else(|| {
                    Problem::new(
                        StatusCode::BAD_REQUEST,
                        "bad-idempotency-key",
                        "Idempotency-Key must be 1–255 visible ASCII characters",
                    )
                })
        })
        .transpose()?;
    let spec = parse_spec(&body)?;
    let spec_value =
        serde_json::to_value(&spec).map_err(|e| Problem::internal("cannot encode the job", e))?;
    if let Some(k) = &key
        && let Some(existing) = state.jobs.job_by_key(&tenant, k).await?
    {
        return replay(existing, &spec_value, k);
    }
    let mut missing = Vec::new();
    let model = state.jobs.model(&tenant, &spec.model).await?;
    if model.is_none() {
        missing.push(field(
            "/model",
            format!("no model with id '{}'", spec.model),
        ));
    }
    if let Some(dataset) = &spec.dataset
        && state.jobs.dataset(&tenant, dataset).await?.is_none()
    {
        missing.push(field("/dataset", format!("no dataset with id '{dataset}'")));
    }
    if let Some(url) = &spec.notify
        && let Err(why) = notify_reachable(&state, url).await
    {
        missing.push(field("/notify", why));
    }
    if !missing.is_empty() {
        return Err(invalid(missing));
    }
    if let Some(model) = &model {
        if model.inspect["free_input_size"] == json!(true) && spec.input_size.is_none() {
            return Err(invalid(vec![field(
                "/input_size",
                format!(
                    "model '{}' has free input sizes (a dynamic-shape export): give the size to \
                     prune and train at, e.g. \"640x640\"; the pruned model keeps its free sizes",
                    spec.model
                ),
            )]));
        }
        crate::service::budget::check_job(&state, model, &spec).await?;
    }
    if let Err(refused) = crate::service::quota::check_job(&state, &tenant, &spec).await {
        // A retry of a request that made the job that filled the quota gets that job.
        if let Some(k) = &key
            && let Some(existing) = state.jobs.job_by_key(&tenant, k).await?
        {
            return replay(existing, &spec_value, k);
        }
        return Err(refused);
    }
    let job = JobRecord::queued(
        format!("job_{}", uuid::Uuid::new_v4().simple()),
        tenant,
        spec_value,
        key,
    );
    if let Some(existing) = state.jobs.insert_job(&job, state.quotas.active()).await? {
        // Another request with the same Idempotency-Key got there first.
        let key = job.idempotency_key.as_deref().unwrap_or_default();
        return replay(existing, &job.spec, key);
    }
    let location = format!("/v1/jobs/{}", job.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(job),
    )
        .into_response())
}

/// The answer to a request that repeats an Idempotency-Key: the job made the first
/// time (200), or 422 when the request differs from that one.
fn replay(existing: JobRecord, spec: &serde_json::Value, key: &str) -> Result<Response, Problem> {
    if existing.spec != *spec {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
            format!(
                "Idempotency-Key '{key}' was used for job {} with a different request",
                existing.id
            ),
        ));
    }
    Ok((StatusCode::OK, Json(existing)).into_response())
}

/// A page of jobs.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobList {
    /// The jobs.
    pub items: Vec<JobRecord>,
    /// Page size.
    pub limit: u32,
    /// Jobs skipped.
    pub offset: u32,
}

/// Filter and paging of `GET /v1/jobs`.
#[derive(Debug, Deserialize)]
pub struct JobQuery {
    state: Option<String>,
    limit: Option<u32>,
    offset: Option<u32>,
}

/// `GET /v1/jobs`.
#[utoipa::path(get, path = "/v1/jobs", operation_id = "list_jobs", tag = "jobs",
    params(("state" = Option<String>, Query, description = "queued, running, succeeded, failed or cancelled"),
           ("limit" = Option<u32>, Query, description = "1–500, default 50", minimum = 1, maximum = 500), ("offset" = Option<u32>, Query, minimum = 0, maximum = 2147483647)),
    responses(
        (status = 200, description = "The tenant's jobs, newest first", body = JobList),
        (status = 401, description = "Missing or wrong API key", content_type = "application/problem+json", body = crate::service::problem::Problem),
        (status = 422, description = "Invalid filter or paging", content_type = "application/problem+json", body = crate::service::problem::Problem),
    ),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Query(q): Query<JobQuery>,
) -> Result<Json<serde_json::Value>, Problem> {
    let page = super::shared::Page {
        limit: q.limit,
        offset: q.offset,
    }
    .checked();
    let mut errors = page
        .as_ref()
        .err()
        .map(|p| p.errors.clone())
        .unwrap_or_default();
    let filter = match q.state.as_deref().map(str::parse::<JobState>).transpose() {
        Ok(filter) => filter,
        Err(e) => {
            errors.push(field("/state", e));
            None
        }
    };
    if !errors.is_empty() {
        return Err(invalid(errors));
    }
    let (limit, offset) = page?;
    let items = state.jobs.jobs(&tenant, filter, limit, offset).await?;
    Ok(Json(
        json!({ "items": items, "limit": limit, "offset": offset }),
    ))
}

async fn find(state: &AppState, tenant: &str, id: &str) -> Result<JobRecord, Problem> {
    state
        .jobs
        .job(tenant, id)
        .await?
        .ok_or_else(|| Problem::not_found("job", id))
}

/// `GET /v1/jobs/{id}`.
#[utoipa::path(get, path = "/v1/jobs/{id}", operation_id = "get_job", tag = "jobs",
    params(("id" = String, Path)),
    responses(
        (status = 200, body = JobRecord),
        (status = 401, description = "Missing or wrong API key", content_type = "application/problem+json", body = crate::service::problem::Problem),
        (status = 404, description = "No such job for this tenant", content_type = "application/problem+json", body = crate::service::problem::Problem),
    ),
    security(("bearer" = [])))]
pub async fn show(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Json<JobRecord>, Problem> {
    let mut job = find(&state, &tenant, &id).await?;
    job.notification = state.notifications.notification(&job.id).await?;
    job.benchmarks = super::benchmarks::views(&state, &job.id).await?;
    Ok(Json(job))
}

/// Why notifications cannot go to `url` from this service, if they cannot: webhooks
/// are not configured, or the host resolves to addresses they may not reach.
async fn notify_reachable(state: &AppState, url: &str) -> Result<(), String> {
    if state.webhooks.secret.is_none() {
        return Err(
            "this server does not send notifications: its operator sets EFFP_WEBHOOK_SECRET to enable them"
                .into(),
        );
    }
    let parsed = effp_protocol::webhook::check_url(url)?;
    let host = parsed.host_str().unwrap_or_default().to_string();
    let port = parsed.port_or_known_default().unwrap_or(443);
    let allow_private = state.webhooks.allow_private;
    tokio::task::spawn_blocking(move || {
        crate::service::webhook::address::allowed_addresses(&host, port, allow_private)
    })
    .await
    .map_err(|e| e.to_string())?
    .map(|_| ())
}

/// `POST /v1/jobs/{id}/cancel`.
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", operation_id = "cancel_job", tag = "jobs",
    params(("id" = String, Path)),
    responses(
        (status = 200, description = "Cancelled (it was queued)", body = JobRecord),
        (status = 202, description = "Its worker will stop it", body = JobRecord),
        (status = 401, description = "Missing or wrong API key", content_type = "application/problem+json", body = crate::service::problem::Problem),
        (status = 404, description = "No such job for this tenant", content_type = "application/problem+json", body = crate::service::problem::Problem),
        (status = 409, description = "The job has already ended", content_type = "application/problem+json", body = crate::service::problem::Problem),
    ),
    security(("bearer" = [])))]
pub async fn cancel(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let job = find(&state, &tenant, &id).await?;
    if job.state.is_final() {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "job-finished",
            format!("job {id} has already ended ({})", job.state),
        ));
    }
    let job = state
        .jobs
        .cancel_job(&tenant, &id)
        .await?
        .ok_or_else(|| Problem::not_found("job", &id))?;
    let status = if job.state == JobState::Cancelled {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(job)).into_response())
}

/// `GET /v1/jobs/{id}/artifacts`.
#[utoipa::path(get, path = "/v1/jobs/{id}/artifacts", operation_id = "list_artifacts", tag = "jobs",
    params(("id" = String, Path)),
    responses(
        (status = 200, description = "Artifact name → sha256 and size", body = Object),
        (status = 401, description = "Missing or wrong API key", content_type = "application/problem+json", body = crate::service::problem::Problem),
        (status = 404, description = "No such job for this tenant", content_type = "application/problem+json", body = crate::service::problem::Problem),
    ),
    security(("bearer" = [])))]
pub async fn artifacts(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, Problem> {
    let job = find(&state, &tenant, &id).await?;
    Ok(Json(json!({ "items": job.artifacts })))
}

/// `GET /v1/jobs/{id}/artifacts/{name}`: streamed, with its SHA-256 as ETag.
#[utoipa::path(get, path = "/v1/jobs/{id}/artifacts/{name}", operation_id = "download_artifact", tag = "jobs",
    params(("id" = String, Path), ("name" = String, Path, description = "pruned.onnx or report.json")),
    responses(
        (status = 200, description = "The file; ETag is its SHA-256", content_type = "application/octet-stream", body = inline(super::shared::FileBytes)),
        (status = 304, description = "If-None-Match matched"),
        (status = 401, description = "Missing or wrong API key", content_type = "application/problem+json", body = crate::service::problem::Problem),
        (status = 404, description = "No such job or artifact for this tenant", content_type = "application/problem+json", body = crate::service::problem::Problem),
    ),
    security(("bearer" = [])))]
pub async fn artifact(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path((id, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let job = find(&state, &tenant, &id).await?;
    let Some(entry) = job.artifacts.get(&name) else {
        return Err(Problem::not_found("artifact", &format!("{id}/{name}")));
    };
    let content_type = if name.ends_with(".json") {
        "application/json"
    } else {
        "application/octet-stream"
    };
    super::shared::stream_object(
        &state,
        &entry.sha256,
        entry.size,
        &name,
        content_type,
        &headers,
    )
    .await
}

/// `GET /v1/jobs/{id}/events`: Server-Sent Events, one per state change or progress
/// report, each with its sequence number as id; `Last-Event-ID` resumes after it. The
/// stream ends once the job has ended and every event was sent.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", operation_id = "job_events", tag = "jobs",
    params(("id" = String, Path), ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this event", minimum = 0)),
    responses(
        (status = 200, description = "Server-Sent Events, one per state change or progress report", content_type = "text/event-stream", body = JobEventMessage),
        (status = 401, description = "Missing or wrong API key", content_type = "application/problem+json", body = crate::service::problem::Problem),
        (status = 404, description = "No such job for this tenant", content_type = "application/problem+json", body = crate::service::problem::Problem),
        (status = 422, description = "Last-Event-ID is not an event id", content_type = "application/problem+json", body = crate::service::problem::Problem),
    ),
    security(("bearer" = [])))]
pub async fn events(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>>, Problem> {
    find(&state, &tenant, &id).await?;
    let after = match headers.get("last-event-id") {
        None => 0,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
            .filter(|&n| n >= 0)
            .ok_or_else(|| {
                invalid(vec![field(
                    "/Last-Event-ID",
                    "must be the id of an event of this stream (a non-negative integer)",
                )])
            })?,
    };
    let start = Follow {
        state,
        tenant,
        id,
        after,
        pending: VecDeque::new(),
        ended: false,
    };
    let stream = futures_util::stream::unfold(start, |mut f| async move {
        loop {
            if let Some(e) = f.pending.pop_front() {
                f.after = e.seq;
                let event = Event::default()
                    .id(e.seq.to_string())
                    .event(e.kind.clone())
                    .json_data(&e.data)
                    .unwrap_or_else(|_| Event::default().comment("unencodable event"));
                return Some((Ok(event), f));
            }
            if f.ended || f.state.shutdown.is_cancelled() {
                return None;
            }
            // Read the job's state before its events: an end seen here is followed
            // by no event the read below misses.
            let ended = match f.state.jobs.job(&f.tenant, &f.id).await {
                Ok(Some(job)) => job.state.is_final(),
                _ => true,
            };
            match f.state.jobs.events(&f.id, f.after).await {
                Ok(batch) if !batch.is_empty() => f.pending.extend(batch),
                Ok(_) if ended => f.ended = true,
                Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
                Err(e) => {
                    tracing::warn!(%e, job = %f.id, "cannot read job events");
                    f.ended = true;
                }
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// One event of `GET /v1/jobs/{id}/events` as it goes over the wire.
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)] // Describes the stream in the OpenAPI document only.
pub struct JobEventMessage {
    /// The event's sequence number; send the last one seen as `Last-Event-ID` to resume.
    #[schema(pattern = "^[0-9]+$")]
    id: String,
    /// `state` for a change of state, `progress` for phase and metrics.
    #[schema(pattern = "^(state|progress)$")]
    event: String,
    /// JSON object: the job's state, phase, progress, metrics, artifacts, error and
    /// attempts at that moment.
    #[schema(content_media_type = "application/json")]
    data: String,
}

/// Where an event stream stands.
struct Follow {
    state: AppState,
    tenant: String,
    id: String,
    after: i64,
    pending: VecDeque<effp_store::JobEvent>,
    ended: bool,
}
