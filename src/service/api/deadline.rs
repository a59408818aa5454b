//! Time limits on requests: an answer within the request timeout for everything but
//! uploads, and for uploads a limit on how long the body may stall.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::service::AppState;
use crate::service::problem::Problem;

/// Whether a request carries an upload, whose answer takes as long as its body.
fn is_upload(request: &Request) -> bool {
    request.method() == Method::POST
        && matches!(request.uri().path(), "/v1/models" | "/v1/datasets")
}

/// Answers 503 with a problem document when a request's answer (its status and
/// headers; streamed bodies may take longer) is not ready within the request
/// timeout. Uploads are limited by [`stall_limit`] instead.
pub async fn request_deadline(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if is_upload(&request) {
        return next.run(request).await;
    }
    let limit = state.request_timeout;
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!(
                "no answer within {} s (EFFP_REQUEST_TIMEOUT_SECS); try again",
                limit.as_secs()
            ),
        )
        .into_response(),
    }
}

/// An upload's body as a stream that fails with `TimedOut` once no byte has arrived
/// for `idle`, so that a stalled client does not hold a worker and a file open.
pub fn stall_limit<S>(
    body: S,
    idle: Duration,
) -> impl futures_util::Stream<Item = Result<axum::body::Bytes, std::io::Error>> + Send + Unpin
where
    S: futures_util::Stream<Item = Result<axum::body::Bytes, std::io::Error>> + Send + Unpin,
{
    use futures_util::StreamExt;
    Box::pin(futures_util::stream::unfold(
        (body, false),
        move |(mut body, failed)| async move {
            if failed {
                return None;
            }
            match tokio::time::timeout(idle, body.next()).await {
                Ok(Some(item)) => Some((item, (body, false))),
                Ok(None) => None,
                Err(_) => Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no data for {} s", idle.as_secs()),
                    )),
                    (body, true),
                )),
            }
        },
    ))
}
