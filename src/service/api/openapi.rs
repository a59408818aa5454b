//! The OpenAPI 3.1 document of the API, generated from the handlers' annotations.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{agent, benchmarks, datasets, health, jobs, models, webhooks};

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(title = "effp", description = "Pruning-as-a-service for object detectors."),
    paths(
        models::upload, models::list, models::show, models::download, models::delete,
        datasets::upload, datasets::list, datasets::show, datasets::delete,
        jobs::submit, jobs::list, jobs::show, jobs::cancel, jobs::events, jobs::artifacts, jobs::artifact,
        benchmarks::create, benchmarks::list,
        agent::claim, agent::renew, agent::download, agent::report,
        webhooks::secret,
        health::healthz, health::readyz,
    ),
    modifiers(&BearerKeys),
    tags(
        (name = "models", description = "Detector uploads"),
        (name = "datasets", description = "Training and evaluation data uploads"),
        (name = "jobs", description = "Pruning jobs"),
        (name = "agents", description = "Device benchmark agents (agent keys only)"),
        (name = "operations", description = "Health"),
    )
)]
pub struct ApiDoc;

struct BearerKeys;

impl Modify for BearerKeys {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document as pretty JSON (what `openapi/openapi.json` holds).
pub fn document() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serialises")
}

/// `GET /openapi.json`.
pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
