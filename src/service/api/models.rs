//! `/v1/models`: upload, list, show, download and delete detector models.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};

use super::extract::Query;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::service::AppState;
use crate::service::auth::Tenant;
use crate::service::problem::Problem;
use crate::service::store::ModelRecord;

use super::upload::{Received, answer_existing, created, discard, receive};
use crate::service::checks::Upload;

/// Query of an upload.
#[derive(Debug, Deserialize)]
pub struct UploadQuery {
    /// A name to show (default: the multipart file name, else a generic one).
    pub name: Option<String>,
}

/// A multipart upload: the file in a part named `file`.
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)] // Describes the request in the OpenAPI document only.
pub struct UploadForm {
    /// The file.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
}

/// A file's bytes as the raw body (`application/octet-stream`), in the OpenAPI
/// document: binary content, which is what generated clients send and receive.
pub struct FileBytes;

impl utoipa::PartialSchema for FileBytes {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .description(Some("The file's bytes."))
            .into()
    }
}

impl utoipa::ToSchema for FileBytes {}

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

/// Paging of a list.
#[derive(Debug, Deserialize)]
pub struct Page {
    /// Page size, 1–500 (default 50).
    pub limit: Option<u32>,
    /// Items skipped, at most 2³¹ − 1 (default 0).
    pub offset: Option<u32>,
}

impl Page {
    /// The page size and offset, or a problem when the size is out of range.
    pub fn checked(&self) -> Result<(u32, u32), Problem> {
        let limit = self.limit.unwrap_or(50);
        if !(1..=500).contains(&limit) {
            let mut p = Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-query",
                "limit must be between 1 and 500",
            );
            p.errors.push(crate::service::problem::FieldError {
                path: "/limit".into(),
                message: format!("{limit} is not in 1..=500"),
            });
            return Err(p);
        }
        let offset = self.offset.unwrap_or(0);
        if offset > i32::MAX as u32 {
            let mut p = Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-query",
                "offset must be at most 2147483647",
            );
            p.errors.push(crate::service::problem::FieldError {
                path: "/offset".into(),
                message: format!("{offset} is too large"),
            });
            return Err(p);
        }
        Ok((limit, offset))
    }
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
    let Received { object, name } =
        receive(&state, &tenant, &headers, body, query.name, "model.onnx").await?;
    let known = state.jobs.model_by_hash(&tenant, &object.sha256).await;
    if let Some(answer) = answer_existing(&state, &object, known).await {
        return answer;
    }
    let inspect = match crate::service::checks::check(&state, Upload::Model, &object.sha256).await {
        Ok(v) => v,
        Err(problem) => {
            // Nothing is kept of a file that is not a model.
            discard(&state, &object).await;
            return Err(problem);
        }
    };
    let record = ModelRecord {
        id: format!("mdl_{}", uuid::Uuid::new_v4().simple()),
        tenant,
        name,
        sha256: object.sha256.clone(),
        size: object.size,
        created_at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        inspect,
    };
    // The same file may have arrived twice at once: one record, one reference.
    let inserted = state.jobs.insert_model(&record).await;
    if let Some(answer) = answer_existing(&state, &object, inserted).await {
        return answer;
    }
    Ok(created(format!("/v1/models/{}", record.id), &record))
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
    let items = state.jobs.models(&tenant, limit, offset).await?;
    Ok(Json(
        json!({ "items": items, "limit": limit, "offset": offset }),
    ))
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
    state
        .jobs
        .model(&tenant, &id)
        .await?
        .map(Json)
        .ok_or_else(|| Problem::not_found("model", &id))
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
    let model = state
        .jobs
        .model(&tenant, &id)
        .await?
        .ok_or_else(|| Problem::not_found("model", &id))?;
    let content_type = "application/octet-stream";
    stream_object(
        &state,
        &model.sha256,
        model.size,
        &model.name,
        content_type,
        &headers,
    )
    .await
}

/// `Content-Disposition` for a download named `name` (RFC 6266): an ASCII fallback
/// with anything unsafe replaced by `_`, and the exact name as UTF-8 in `filename*`.
pub(super) fn content_disposition(name: &str) -> String {
    let fallback: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && !matches!(c, '"' | '\\' | '%' | ';') || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}")
}

/// Streams a stored object as a download, with its SHA-256 as ETag (304 when the
/// client has it).
pub(super) async fn stream_object(
    state: &AppState,
    sha256: &str,
    size: u64,
    name: &str,
    content_type: &str,
    headers: &HeaderMap,
) -> Result<Response, Problem> {
    let etag = format!("\"{sha256}\"");
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag))
    {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    let stream = state
        .objects
        .get(sha256)
        .await?
        .ok_or_else(|| Problem::internal("a stored file is missing", sha256))?;
    Ok((
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (header::CONTENT_LENGTH, size.to_string()),
            (header::ETAG, etag),
            (header::CONTENT_DISPOSITION, content_disposition(name)),
        ],
        Body::from_stream(stream),
    )
        .into_response())
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
    refuse_if_in_use(&state, &tenant, "model", &id).await?;
    let model = state
        .jobs
        .delete_model(&tenant, &id)
        .await?
        .ok_or_else(|| Problem::not_found("model", &id))?;
    release_object(&state, &model.sha256).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// 409 when queued or running jobs of the tenant use the model or dataset `id`.
pub(super) async fn refuse_if_in_use(
    state: &AppState,
    tenant: &str,
    kind: &str,
    id: &str,
) -> Result<(), Problem> {
    let users = state.jobs.active_jobs_using(tenant, id).await?;
    if users.is_empty() {
        return Ok(());
    }
    Err(Problem::new(
        StatusCode::CONFLICT,
        "in-use",
        format!(
            "{kind} {id} is used by queued or running jobs ({}); cancel them or wait for them to end",
            users.join(", ")
        ),
    ))
}

/// Gives back a deleted record's reference to its stored file.
pub(super) async fn release_object(state: &AppState, sha256: &str) -> Result<(), Problem> {
    state.content.release(sha256).await.map_err(Problem::from)
}
