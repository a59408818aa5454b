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
/// for `idle`, or once a period of `idle` brought fewer than `min_rate` bytes per
/// second, so that a stalled or trickling client does not hold a connection and a
/// file open.
pub fn stall_limit<S>(
    body: S,
    idle: Duration,
    min_rate: u64,
) -> impl futures_util::Stream<Item = Result<axum::body::Bytes, std::io::Error>> + Send + Unpin
where
    S: futures_util::Stream<Item = Result<axum::body::Bytes, std::io::Error>> + Send + Unpin,
{
    use futures_util::StreamExt;
    use tokio::time::Instant;
    struct Pace<S> {
        body: S,
        failed: bool,
        window_start: Instant,
        window_bytes: u64,
    }
    let timed_out = |message: String| std::io::Error::new(std::io::ErrorKind::TimedOut, message);
    let pace = Pace {
        body,
        failed: false,
        window_start: Instant::now(),
        window_bytes: 0,
    };
    Box::pin(futures_util::stream::unfold(
        pace,
        move |mut p| async move {
            if p.failed {
                return None;
            }
            match tokio::time::timeout(idle, p.body.next()).await {
                Ok(Some(Ok(chunk))) => {
                    p.window_bytes += chunk.len() as u64;
                    let elapsed = p.window_start.elapsed();
                    if elapsed >= idle {
                        let needed = min_rate.saturating_mul(elapsed.as_secs().max(1));
                        if p.window_bytes < needed {
                            p.failed = true;
                            let message = format!(
                                "{} bytes arrived in the last {} s, slower than the minimum of {min_rate} bytes/s",
                                p.window_bytes,
                                elapsed.as_secs()
                            );
                            return Some((Err(timed_out(message)), p));
                        }
                        p.window_start = Instant::now();
                        p.window_bytes = 0;
                    }
                    Some((Ok(chunk), p))
                }
                Ok(Some(Err(e))) => Some((Err(e), p)),
                Ok(None) => None,
                Err(_) => {
                    p.failed = true;
                    let message = format!("no data for {} s", idle.as_secs());
                    Some((Err(timed_out(message)), p))
                }
            }
        },
    )
    // Fused: a refused upload is drained after its store may have read it to the
    // end, and an ended unfold must not be polled again.
    .fuse())
}
