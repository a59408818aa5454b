//! `GET /v1/webhook-secret`: how a tenant checks that a notification came from this
//! service.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;

use crate::service::AppState;
use crate::service::auth::Tenant;
use crate::service::problem::Problem;

/// The key a tenant's notifications are signed with, and how.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebhookSecret {
    /// The HMAC-SHA256 key (as the text it is; use its bytes).
    pub secret: String,
    /// The header each notification carries its signature in.
    pub header: &'static str,
    /// What the header holds.
    pub scheme: &'static str,
}

/// `GET /v1/webhook-secret`.
#[utoipa::path(get, path = "/v1/webhook-secret", operation_id = "get_webhook_secret", tag = "jobs",
    responses(
        (status = 200, body = WebhookSecret),
        (status = 401, description = "Missing or wrong API key", content_type = "application/problem+json", body = crate::service::problem::Problem),
        (status = 404, description = "This server sends no notifications", content_type = "application/problem+json", body = crate::service::problem::Problem),
    ),
    security(("bearer" = [])))]
pub async fn secret(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
) -> Result<Json<WebhookSecret>, Problem> {
    let secret = state.webhooks.tenant_secret(&tenant).ok_or_else(|| {
        Problem::new(
            StatusCode::NOT_FOUND,
            "webhooks-off",
            "this server sends no notifications: its operator sets EFFP_WEBHOOK_SECRET to enable them",
        )
    })?;
    Ok(Json(WebhookSecret {
        secret,
        header: effp_protocol::webhook::SIGNATURE_HEADER,
        scheme: "t=<unix seconds>,v1=<hex HMAC-SHA256 under the secret of \"<t>.<raw body>\">",
    }))
}
