//! Errors as RFC 9457 problem documents: every HTTP error the service returns.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use effp_store::StoreError;

pub use effp_protocol::FieldError;

/// An `application/problem+json` document.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the kind.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong with this request and what to do.
    pub detail: String,
    /// Invalid fields, for validation failures.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// Seconds after which the client may try again (the `Retry-After` header).
    #[serde(skip)]
    #[schema(ignore)]
    pub retry_after: Option<u64>,
}

impl Problem {
    /// A problem of a kind (a short slug, e.g. `not-found`) with a status and detail.
    pub fn new(status: StatusCode, kind: &str, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("https://effp.dev/problems/{kind}"),
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            detail: detail.into(),
            errors: Vec::new(),
            retry_after: None,
        }
    }

    /// 404 for a resource that does not exist or belongs to another tenant.
    pub fn not_found(what: &str, id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("no {what} with id '{id}'"),
        )
    }

    /// 500 that hides internals from the client (they go to the log).
    pub fn internal(context: &str, error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "{context}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{context}; the server log has the details"),
        )
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, axum::Json(&self)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Seconds a client is asked to wait when the storage cannot be reached.
const STORAGE_RETRY_AFTER_SECS: u64 = 5;

/// The problem document for a storage error, so that handlers can `?` one.
impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::TooLarge { limit } => Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-large",
                format!("the upload exceeds the limit of {limit} bytes (EFFP_MAX_UPLOAD_BYTES)"),
            ),
            StoreError::TooManyActive {
                jobs,
                steps,
                requested,
                limits,
            } => crate::service::quota::queue_full(jobs, steps, requested, limits),
            StoreError::QuotaExceeded { used, size, limit } => {
                crate::service::quota::storage_full(used, Some(size), limit)
            }
            StoreError::Body(m) => Problem::new(StatusCode::BAD_REQUEST, "bad-body", m),
            StoreError::Stalled(m) => Problem::new(
                StatusCode::REQUEST_TIMEOUT,
                "upload-stalled",
                format!(
                    "the upload stalled ({m}; EFFP_UPLOAD_STALL_SECS, EFFP_UPLOAD_MIN_RATE); send it again"
                ),
            ),
            StoreError::Backend(m) => Problem::internal("storage failed", m),
            StoreError::Unavailable(m) => {
                tracing::warn!(error = %m, "storage is unavailable");
                let mut p = Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage-unavailable",
                    "the service's storage cannot be reached right now; nothing was changed: try again shortly",
                );
                p.retry_after = Some(STORAGE_RETRY_AFTER_SECS);
                p
            }
            e @ (StoreError::InvalidName(_)
            | StoreError::InUse(_)
            | StoreError::LeaseLost { .. }) => Problem::internal("storage failed", e.to_string()),
        }
    }
}
