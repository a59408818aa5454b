//! The HTTP API: routes under `/v1`, health endpoints, and the fallback.

mod agent;
mod benchmarks;
mod datasets;
mod deadline;
mod extract;
mod headers;
mod health;
pub mod jobs;
mod models;
pub mod openapi;
mod resource;
mod shared;
mod upload;
mod webhooks;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
use utoipa::OpenApi;

use super::AppState;
use super::problem::Problem;

pub(crate) use upload::drain_then;

/// Every route of the service.
pub fn router(state: AppState) -> Router {
    // Everything under /v1 acts for the tenant whose API key the request carries.
    let v1 = Router::new()
        .route("/v1/models", get(models::list).post(models::upload))
        .route("/v1/models/{id}", get(models::show).delete(models::delete))
        .route("/v1/models/{id}/file", get(models::download))
        .route("/v1/datasets", get(datasets::list).post(datasets::upload))
        .route(
            "/v1/datasets/{id}",
            get(datasets::show).delete(datasets::delete),
        )
        .route("/v1/jobs", get(jobs::list).post(jobs::submit))
        .route("/v1/jobs/{id}", get(jobs::show))
        .route("/v1/jobs/{id}/cancel", post(jobs::cancel))
        .route("/v1/jobs/{id}/events", get(jobs::events))
        .route("/v1/jobs/{id}/artifacts", get(jobs::artifacts))
        .route("/v1/jobs/{id}/artifacts/{name}", get(jobs::artifact))
        .route(
            "/v1/jobs/{id}/benchmarks",
            get(benchmarks::list).post(benchmarks::create),
        )
        .route("/v1/webhook-secret", get(webhooks::secret))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::service::auth::authenticate,
        ));
    // Benchmark agents, with their own keys.
    let agents = Router::new()
        .route("/v1/agent/claim", post(agent::claim))
        .route("/v1/agent/benchmarks/{id}/lease", post(agent::renew))
        .route("/v1/agent/benchmarks/{id}/report", post(agent::report))
        .route("/v1/agent/benchmarks/{id}/{model}", get(agent::download))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::service::auth::authenticate_agent,
        ));
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(crate::service::metrics::render))
        .route("/openapi.json", get(openapi::serve))
        .merge(v1)
        .merge(agents)
        .merge(crate::service::dashboard::routes())
        // Interactive documentation; the assets are compiled into the binary.
        .merge(
            utoipa_swagger_ui::SwaggerUi::new("/docs")
                .url("/docs/openapi.json", openapi::ApiDoc::openapi()),
        )
        .fallback(|| async {
            Problem::new(
                StatusCode::NOT_FOUND,
                "not-found",
                "no such endpoint; the API lives under /v1",
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            deadline::request_deadline,
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_problem,
        ))
        .layer(axum::middleware::from_fn(extract::problems_everywhere))
        .layer(axum::middleware::from_fn(headers::security_headers))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::service::metrics::track,
        ))
        .with_state(state)
}

/// A request whose handler panicked: a problem document, not a dropped connection
/// (the panic is a bug, logged with its message).
fn panic_problem(panic: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a panic without a message");
    axum::response::IntoResponse::into_response(Problem::internal(
        "the request failed inside the service",
        message,
    ))
}
