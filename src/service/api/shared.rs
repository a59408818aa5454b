//! What the handlers share: upload queries and forms as the OpenAPI document
//! describes them, paging, downloads of stored files, and the checks before a record
//! is deleted.

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::service::AppState;
use crate::service::problem::{FieldError, Problem};

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
            p.errors.push(FieldError {
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
            p.errors.push(FieldError {
                path: "/offset".into(),
                message: format!("{offset} is too large"),
            });
            return Err(p);
        }
        Ok((limit, offset))
    }
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

/// A JSON request body as a `T`; what is wrong with it goes to `invalid` as one
/// field error at its JSON pointer (`what` names the document in the message).
pub(super) fn parse_json<T: serde::de::DeserializeOwned>(
    body: &[u8],
    what: &str,
    invalid: fn(Vec<crate::service::problem::FieldError>) -> Problem,
) -> Result<T, Problem> {
    use crate::service::problem::FieldError;
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| invalid(vec![FieldError::new("", format!("not a JSON {what}: {e}"))]))?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let pointer = if path == "." {
            String::new()
        } else {
            format!("/{}", path.replace('.', "/"))
        };
        invalid(vec![FieldError::new(&pointer, e.inner().to_string())])
    })
}
