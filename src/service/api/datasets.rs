//! `/v1/datasets`: upload, list, show and delete datasets (archives of images and
//! labels that the trained methods learn from and mAP is measured on).

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::extract::Query;
use super::resource;
use super::shared::{FileBytes, Page, UploadForm, UploadQuery};
use crate::service::AppState;
use crate::service::auth::Tenant;
use crate::service::problem::Problem;
use effp_store::DatasetRecord;

/// A page of datasets.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct DatasetList {
    /// The datasets.
    pub items: Vec<DatasetRecord>,
    /// Page size.
    pub limit: u32,
    /// Datasets skipped.
    pub offset: u32,
}

/// `POST /v1/datasets`: a .zip, .tar or .tar.gz archive in the YOLO layout
/// (`data.yaml`, `images/<split>/`, `labels/<split>/`) or with COCO JSON, as the raw
/// body or the `file` part of a multipart form. It is unpacked within limits and every
/// label checked before anything is kept.
#[utoipa::path(post, path = "/v1/datasets", operation_id = "upload_dataset", tag = "datasets",
    params(("name" = Option<String>, Query, description = "Name to show (default: the multipart file name, else dataset)", min_length = 1, max_length = 255, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]+$")),
    request_body(description = "The archive", content(
        (inline(FileBytes) = "application/octet-stream"),
        (UploadForm = "multipart/form-data"),
    )),
    responses(
        (status = 201, description = "Stored and checked", body = DatasetRecord),
        (status = 200, description = "The same archive was uploaded before", body = DatasetRecord),
        (status = 400, description = "Unreadable body", content_type = "application/problem+json", body = crate::service::problem::Problem),
        (status = 401, description = "Missing or wrong API key", content_type = "application/problem+json", body = crate::service::problem::Problem),
        (status = 408, description = "The upload stalled", content_type = "application/problem+json", body = crate::service::problem::Problem),
        (status = 413, description = "Larger than the upload limit, or than the tenant's storage quota leaves room for", content_type = "application/problem+json", body = crate::service::problem::Problem),
        (status = 422, description = "Not a dataset, bad labels, or an unsafe archive (links, paths outside it, decompression bomb)", content_type = "application/problem+json", body = crate::service::problem::Problem),
    ),
    security(("bearer" = [])))]
pub async fn upload(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Query(query): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    resource::upload::<DatasetRecord>(&state, tenant, query.name, &headers, body).await
}

/// `GET /v1/datasets`: the tenant's datasets, newest first.
#[utoipa::path(get, path = "/v1/datasets", operation_id = "list_datasets", tag = "datasets",
    params(("limit" = Option<u32>, Query, description = "1–500, default 50", minimum = 1, maximum = 500), ("offset" = Option<u32>, Query, minimum = 0, maximum = 2147483647)),
    responses(
        (status = 200, description = "The tenant's datasets, newest first", body = DatasetList),
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
    resource::list::<DatasetRecord>(&state, &tenant, limit, offset).await
}

/// `GET /v1/datasets/{id}`.
#[utoipa::path(get, path = "/v1/datasets/{id}", operation_id = "get_dataset", tag = "datasets",
    params(("id" = String, Path)),
    responses(
        (status = 200, body = DatasetRecord),
        (status = 401, description = "Missing or wrong API key", content_type = "application/problem+json", body = crate::service::problem::Problem),
        (status = 404, description = "No such dataset for this tenant", content_type = "application/problem+json", body = crate::service::problem::Problem),
    ),
    security(("bearer" = [])))]
pub async fn show(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Json<DatasetRecord>, Problem> {
    resource::show(&state, &tenant, &id).await.map(Json)
}

/// `DELETE /v1/datasets/{id}`: the record, and the archive when nothing else uses it.
#[utoipa::path(delete, path = "/v1/datasets/{id}", operation_id = "delete_dataset", tag = "datasets",
    params(("id" = String, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or wrong API key", content_type = "application/problem+json", body = crate::service::problem::Problem),
        (status = 404, description = "No such dataset for this tenant", content_type = "application/problem+json", body = crate::service::problem::Problem),
        (status = 409, description = "Queued or running jobs use it", content_type = "application/problem+json", body = crate::service::problem::Problem),
    ),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    resource::delete::<DatasetRecord>(&state, &tenant, &id).await
}
