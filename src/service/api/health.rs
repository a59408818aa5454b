//! Liveness and readiness.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::service::AppState;
use crate::service::problem::Problem;

/// The process is up.
#[utoipa::path(get, path = "/healthz", operation_id = "healthz", tag = "operations", responses((status = 200, description = "Up", body = Object)))]
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// The process can serve: its job store and queue answer.
#[utoipa::path(get, path = "/readyz", operation_id = "readyz", tag = "operations", responses(
    (status = 200, description = "Ready", body = Object),
    (status = 503, description = "A backend does not answer", content_type = "application/problem+json", body = crate::service::problem::Problem)))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, Problem> {
    state.jobs.ping().await.map_err(|e| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-ready",
            format!("the job store does not answer: {e}"),
        )
    })?;
    let depth = state.queue.depth().await.map_err(|e| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-ready",
            format!("the queue does not answer: {e}"),
        )
    })?;
    state.objects.ping().await.map_err(|e| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-ready",
            format!("the object store does not answer: {e}"),
        )
    })?;
    Ok(Json(json!({ "status": "ready", "queued_jobs": depth })))
}
