//! `/v1/models`: upload, list, show, download and delete detector models.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::extract::Query;
use super::resource;
use super::shared::{FileBytes, Page, UploadForm, UploadQuery, stream_object};
use crate::service::AppState;
use crate::service::auth::Tenant;
use crate::service::problem::Problem;
use effp_store::ModelRecord;

/// A page of models.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ModelList {
    /// The models.
    pub items: Vec<ModelRecord>,
    /// Page size.
    pub limit: u32,
    /// Models skipped.
    pub offset: u32,
}

/// `POST /v1/models`: the ONNX file as the raw body (`curl --data-binary @m.onnx`) or
/// as the `file` part of a multipart form (`curl -F file=@m.onnx`).
#[utoipa::path(post, path = "/v1/models", operation_id = "upload_model", tag = "models",
    params(("name" = Option<String>, Query, description = "Name to show (default: the multipart file name, else model.onnx)", min_length = 1, max_length = 255, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]+$")),
    request_body(description = "The ONNX file", content(
        (inline(FileBytes) = "application/octet-stream"),
        (UploadForm = "multipart/form-data"),
    )),
    responses(
        (status = 201, description = "Stored and inspected", body = ModelRecord),
        (status = 200, description = "The same file was uploaded before", body = ModelRecord),
        (status = 400, description = "Unreadable body", content_type = "application/problem+json", body = crate::service::problem::Problem),
        (status = 401, description = "Missing or wrong API key", content_type = "application/problem+json", body = crate::service::problem::Problem),
        (status = 408, description = "The upload stalled", content_type = "application/problem+json", body = crate::service::problem::Problem),
        (status = 413, description = "Larger than the upload limit, or than the tenant's storage quota leaves room for", content_type = "application/problem+json", body = crate::service::problem::Problem),
        (status = 422, description = "Not an ONNX model effp can read", content_type = "application/problem+json", body = crate::service::problem::Problem),
    ),
    security(("bearer" = [])))]
pub async fn upload(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Query(query): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    resource::upload::<ModelRecord>(&state, tenant, query.name, &headers, body).await
}

/// `GET /v1/models`: the tenant's models, newest first.
#[utoipa::path(get, path = "/v1/models", operation_id = "list_models", tag = "models",
    params(("limit" = Option<u32>, Query, description = "1–500, default 50", minimum = 1, maximum = 500), ("offset" = Option<u32>, Query, minimum = 0, maximum = 2147483647)),
    responses(
        (status = 200, description = "The tenant's models, newest first", body = ModelList),
        (status = 401, description = "Missing or wrong API key", content_type = "application/problem+json", body = crate::service::problem::Problem),
        (status = 422, description = "Invalid paging", content_type = "application/problem+json", body = crate::service::problem::Problem),
    ),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Query(page): Query<Page>,
) -> Result<Json<serde_json::Value>, Problem> {
    let (limit, offset) = page.checked()?;
    resource::list::<ModelRecord>(&state, &tenant, limit, offset).await
}

/// `GET /v1/models/{id}`.
#[utoipa::path(get, path = "/v1/models/{id}", operation_id = "get_model", tag = "models",
    params(("id" = String, Path)),
    responses(
        (status = 200, body = ModelRecord),
        (status = 401, description = "Missing or wrong API key", content_type = "application/problem+json", body = crate::service::problem::Problem),
        (status = 404, description = "No such model for this tenant", content_type = "application/problem+json", body = crate::service::problem::Problem),
    ),
    security(("bearer" = [])))]
pub async fn show(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Json<ModelRecord>, Problem> {
    resource::show(&state, &tenant, &id).await.map(Json)
}

/// `GET /v1/models/{id}/file`: the ONNX file, streamed, with its SHA-256 as ETag.
#[utoipa::path(get, path = "/v1/models/{id}/file", operation_id = "download_model", tag = "models",
    params(("id" = String, Path)),
    responses(
        (status = 200, description = "The ONNX file; ETag is its SHA-256", content_type = "application/octet-stream", body = inline(FileBytes)),
        (status = 304, description = "If-None-Match matched"),
        (status = 401, description = "Missing or wrong API key", content_type = "application/problem+json", body = crate::service::problem::Problem),
        (status = 404, description = "No such model for this tenant", content_type = "application/problem+json", body = crate::service::problem::Problem),
    ),
    security(("bearer" = [])))]
pub async fn download(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let model: ModelRecord = resource::show(&state, &tenant, &id).await?;
    stream_object(
        &state,
        &model.sha256,
        model.size,
        &model.name,
        "application/octet-stream",
        &headers,
    )
    .await
}

/// `DELETE /v1/models/{id}`: the record, and the file when nothing else uses it.
#[utoipa::path(delete, path = "/v1/models/{id}", operation_id = "delete_model", tag = "models",
    params(("id" = String, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or wrong API key", content_type = "application/problem+json", body = crate::service::problem::Problem),
        (status = 404, description = "No such model for this tenant", content_type = "application/problem+json", body = crate::service::problem::Problem),
        (status = 409, description = "Queued or running jobs use it", content_type = "application/problem+json", body = crate::service::problem::Problem),
    ),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    resource::delete::<ModelRecord>(&state, &tenant, &id).await
}
