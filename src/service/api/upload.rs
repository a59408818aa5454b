//! Receiving an uploaded file, as the raw body (`curl --data-binary @file`) or as the
//! `file` part of a `multipart/form-data` body (`curl -F file=@file`), streamed into
//! the object store within the upload limit.

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use futures_util::TryStreamExt;

use crate::service::AppState;
use crate::service::problem::{FieldError, Problem};
use effp_store::{StoreError, StoredObject};

/// An upload stored in the object store.
pub struct Received {
    /// The stored content.
    pub object: StoredObject,
    /// The name to show: `?name=`, else the multipart part's file name, else the default.
    pub name: String,
}

/// Streams the upload in `body` to the object store; `name` is the `?name=` query
/// value, `default_name` what to call it when neither the query nor a multipart part
/// names it.
pub async fn receive(
    state: &AppState,
    tenant: &str,
    headers: &HeaderMap,
    body: Body,
    name: Option<String>,
    default_name: &str,
) -> Result<Received, Problem> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let room = crate::service::quota::upload_room(state, tenant, declared).await;
    let limit = state.max_upload_bytes.min(*room.as_ref().unwrap_or(&0));
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    // A multipart body carries some framing beside the file.
    let framing = if content_type.starts_with("multipart/") {
        64 << 10
    } else {
        0
    };
    let refusal = if let Err(quota) = room {
        Some(quota)
    } else if declared.is_some_and(|n| n > limit.saturating_add(framing)) {
        Some(Problem::from(StoreError::TooLarge { limit }))
    } else {
        name.as_deref().map(check_name).transpose().err()
    };
    let mut stream = super::deadline::stall_limit(
        body.into_data_stream().map_err(std::io::Error::other),
        state.upload_stall,
        state.upload_min_rate,
    );
    if let Some(problem) = refusal {
        drain_before_refusing(headers, declared, &mut stream).await;
        return Err(problem);
    }
    if !content_type.starts_with("multipart/") {
        let stored = state.content.store(Box::pin(&mut stream), limit).await;
        if stored.is_err() {
            drain_before_refusing(headers, None, &mut stream).await;
        }
        let object = stored?;
        return Ok(Received {
            object,
            name: name.unwrap_or_else(|| default_name.to_string()),
        });
    }
    let boundary = multer::parse_boundary(content_type).map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "bad-multipart",
            format!(
                "the multipart body cannot be read: {e}; send multipart/form-data with a boundary"
            ),
        )
    })?;
    // The whole form, not only its file part, counts against the limit.
    let constraints = multer::Constraints::new()
        .size_limit(multer::SizeLimit::new().whole_stream(limit.saturating_add(framing)));
    let mut parts = multer::Multipart::with_constraints(stream, boundary, constraints);
    loop {
        let part = parts.next_field().await.map_err(bad_multipart)?;
        let Some(part) = part else {
            let mut p = Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "missing-file",
                "the multipart body has no part named 'file' (curl -F file=@path)",
            );
            p.errors.push(FieldError {
                path: "/file".into(),
                message: "required".into(),
            });
            return Err(p);
        };
        if part.name() != Some("file") {
            continue;
        }
        let part_name = part.file_name().map(|n| {
            // Browsers may send a path; only its last component names the file.
            n.rsplit(['/', '\\']).next().unwrap_or(n).to_string()
        });
        let name = match (name, part_name) {
            (Some(n), _) => n,
            (None, Some(n)) if !n.is_empty() => {
                check_name(&n)?;
                n
            }
            _ => default_name.to_string(),
        };
        let object = state
            .content
            .store(Box::pin(part.map_err(std::io::Error::other)), limit)
            .await?;
        return Ok(Received { object, name });
    }
}

/// Sends `refusal` (a request refused before its upload was looked at, such as one
/// without a valid API key) once what the client may still be sending is drained.
pub async fn drain_then(
    headers: &HeaderMap,
    body: Body,
    refusal: axum::response::Response,
) -> axum::response::Response {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut stream = body.into_data_stream().map_err(std::io::Error::other);
    drain_before_refusing(headers, declared, &mut stream).await;
    refusal
}

/// Most body bytes read and dropped before a refusal is sent.
const DRAIN_CAP: u64 = 32 << 20;

/// Reads and drops what is left of a refused body (at most [`DRAIN_CAP`] bytes, for
/// at most 10 s), so that a client still sending it gets the problem document
/// instead of a connection closed under it. A client that asked
/// `Expect: 100-continue` has sent nothing yet and gets the answer at once.
async fn drain_before_refusing<S>(headers: &HeaderMap, declared: Option<u64>, stream: &mut S)
where
    S: futures_util::Stream<Item = Result<axum::body::Bytes, std::io::Error>> + Unpin,
{
    use futures_util::StreamExt;
    let expects_continue = headers
        .get(header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    if expects_continue || declared.is_some_and(|n| n > DRAIN_CAP) {
        return;
    }
    let drain = async {
        let mut read = 0u64;
        while let Some(Ok(chunk)) = stream.next().await {
            read += chunk.len() as u64;
            if read > DRAIN_CAP {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), drain).await;
}

fn bad_multipart(e: multer::Error) -> Problem {
    if let multer::Error::StreamSizeExceeded { limit } = e {
        return Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            format!("the form exceeds the limit of {limit} bytes (EFFP_MAX_UPLOAD_BYTES)"),
        );
    }
    Problem::new(
        StatusCode::BAD_REQUEST,
        "bad-multipart",
        format!("the multipart body cannot be read: {e}"),
    )
}

/// A display name: 1–255 characters, none of them control characters.
fn check_name(name: &str) -> Result<(), Problem> {
    if name.is_empty() || name.chars().count() > 255 || name.chars().any(char::is_control) {
        let mut p = Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-name",
            "name must be 1–255 characters without control characters",
        );
        p.errors.push(FieldError {
            path: "/name".into(),
            message: format!("{} characters given", name.chars().count()),
        });
        return Err(p);
    }
    Ok(())
}

/// Gives back the reference an upload holds (it turned out unusable, or the tenant
/// already had the same content); the content goes if nothing else uses it.
pub async fn discard(state: &AppState, object: &StoredObject) {
    if let Err(e) = state.content.release(&object.sha256).await {
        tracing::error!(%e, sha256 = %object.sha256, "cannot release an upload");
    }
}

/// The answer to an upload whose tenant already keeps the same content (`lookup`
/// found its record, or a concurrent upload of the same bytes wrote it first): that
/// record (200), with the upload's reference given back; `None` when there is no such
/// record.
pub async fn answer_existing<T: serde::Serialize>(
    state: &AppState,
    object: &StoredObject,
    lookup: Result<Option<T>, StoreError>,
) -> Option<Result<axum::response::Response, Problem>> {
    use axum::response::IntoResponse;
    let answer = match lookup {
        Ok(None) => return None,
        Ok(Some(existing)) => Ok((StatusCode::OK, axum::Json(existing)).into_response()),
        Err(e) => Err(e.into()),
    };
    discard(state, object).await;
    Some(answer)
}

/// The 201 answer to an upload: the new resource, with its URL as `Location`.
pub fn created<T: serde::Serialize>(location: String, record: &T) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        axum::Json(record),
    )
        .into_response()
}
