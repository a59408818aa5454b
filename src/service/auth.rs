//! Bearer API keys, each scoped to a tenant. Keys are kept only as SHA-256 hashes.

use std::collections::HashMap;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::AppState;
use super::problem::Problem;

/// Tenant of every request when no keys are configured (loopback only).
pub const LOCAL_TENANT: &str = "local";

/// The configured keys: hash of the key → tenant.
#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    by_hash: HashMap<[u8; 32], String>,
}

impl ApiKeys {
    /// Parses `tenant:key[,tenant:key…]` (as in `EFFP_API_KEYS`).
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut by_hash = HashMap::new();
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let Some((tenant, key)) = entry.split_once(':') else {
                return Err(format!(
                    "API key entry '{}…' is not tenant:key",
                    entry.chars().take(8).collect::<String>()
                ));
            };
            let (tenant, key) = (tenant.trim(), key.trim());
            if tenant.is_empty() || key.len() < 16 {
                return Err(format!(
                    "API key of tenant '{tenant}': the tenant must be named and the key at least 16 characters"
                ));
            }
            by_hash.insert(hash(key), tenant.to_string());
        }
        Ok(Self { by_hash })
    }

    /// Whether any key is configured.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    fn tenant(&self, key: &str) -> Option<&str> {
        self.by_hash.get(&hash(key)).map(String::as_str)
    }
}

/// The keys of benchmark agents: hash of the key → the key's name.
#[derive(Debug, Clone, Default)]
pub struct AgentKeys {
    by_hash: HashMap<[u8; 32], String>,
}

impl AgentKeys {
    /// Parses `name:key[,name:key…]` (as in `EFFP_AGENT_KEYS`); a key may not also
    /// be one of `tenants`' keys.
    pub fn parse(spec: &str, tenants: &ApiKeys) -> Result<Self, String> {
        let mut by_hash = HashMap::new();
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let Some((name, key)) = entry.split_once(':') else {
                return Err(format!(
                    "agent key entry '{}…' is not name:key",
                    entry.chars().take(8).collect::<String>()
                ));
            };
            let (name, key) = (name.trim(), key.trim());
            if name.is_empty() || key.len() < 16 {
                return Err(format!(
                    "agent key '{name}': the key must be named and at least 16 characters"
                ));
            }
            if tenants.tenant(key).is_some() {
                return Err(format!(
                    "agent key '{name}' is also a tenant's API key: give agents keys of their own"
                ));
            }
            by_hash.insert(hash(key), name.to_string());
        }
        Ok(Self { by_hash })
    }

    fn name(&self, key: &str) -> Option<&str> {
        self.by_hash.get(&hash(key)).map(String::as_str)
    }
}

/// The benchmark agent a request comes from, as [`authenticate_agent`] established
/// it: the name of its key.
#[derive(Debug, Clone)]
pub struct AgentKey(pub String);

/// A credential that is valid but may not do this: 403 with a problem document.
fn forbidden(detail: &'static str) -> Response {
    Problem::new(StatusCode::FORBIDDEN, "forbidden", detail).into_response()
}

/// The bearer token of a request, if it carries one.
fn bearer(headers: &header::HeaderMap) -> Option<&str> {
    // The scheme is case-insensitive (RFC 9110 §11.1); the token is not.
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()
        .and_then(|v| {
            let (scheme, token) = v.trim_start().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then_some(token.trim())
        })
}

/// Checks the agent key of a request to the agent endpoints and records its
/// [`AgentKey`]. Without any keys configured (a loopback-only server) agents need
/// none; a tenant's key is refused with 403.
pub async fn authenticate_agent(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let token = bearer(request.headers());
    let agent = if state.agent_keys.by_hash.is_empty() && state.keys.is_empty() {
        Ok(LOCAL_TENANT.to_string())
    } else {
        match token.map(|t| (t, state.agent_keys.name(t))) {
            Some((_, Some(name))) => Ok(name.to_string()),
            Some((t, None)) if state.keys.tenant(t).is_some() => Err(forbidden(
                "a tenant's API key cannot act as a benchmark agent: agents use keys of                  EFFP_AGENT_KEYS",
            )),
            Some(_) => Err(Unauthorized("the agent key is not valid").into_response()),
            None => Err(Unauthorized(
                "the agent endpoints need an agent key: send 'Authorization: Bearer <key>'",
            )
            .into_response()),
        }
    };
    match agent {
        Ok(name) => {
            request.extensions_mut().insert(AgentKey(name));
            next.run(request).await
        }
        Err(refused) => {
            let (parts, body) = request.into_parts();
            super::api::drain_then(&parts.headers, body, refused).await
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for AgentKey {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<AgentKey>().cloned().ok_or_else(|| {
            Problem::internal("a route is missing its authentication", "no AgentKey")
        })
    }
}

fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The tenant a request acts for, as [`authenticate`] established it.
#[derive(Debug, Clone)]
pub struct Tenant(pub String);

/// A refused credential: 401 with a problem document.
pub struct Unauthorized(&'static str);

impl IntoResponse for Unauthorized {
    fn into_response(self) -> Response {
        let mut response =
            Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", self.0).into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        response
    }
}

/// The tenant whose key the request carries (the local tenant when no keys are
/// configured).
fn tenant_of(keys: &ApiKeys, headers: &header::HeaderMap) -> Result<String, Unauthorized> {
    if keys.is_empty() {
        return Ok(LOCAL_TENANT.into());
    }
    if !headers.contains_key(header::AUTHORIZATION) {
        return Err(Unauthorized(
            "this server needs an API key: send 'Authorization: Bearer <key>'",
        ));
    }
    bearer(headers)
        .and_then(|t| keys.tenant(t))
        .map(str::to_string)
        .ok_or(Unauthorized("the API key is not valid"))
}

/// Checks the request's API key before any handler runs and records its [`Tenant`];
/// a refused request's body (an upload the client may still be sending) is drained
/// first, so the client reads the 401 rather than a connection closed under it.
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let refused = match tenant_of(&state.keys, request.headers()) {
        Ok(tenant) => {
            request.extensions_mut().insert(Tenant(tenant));
            return next.run(request).await;
        }
        Err(_) if bearer(request.headers()).is_some_and(|t| state.agent_keys.name(t).is_some()) => {
            forbidden(
                "an agent key can only claim, renew and report benchmarks under /v1/agent;                  use a tenant's API key here",
            )
        }
        Err(refused) => refused.into_response(),
    };
    let (parts, body) = request.into_parts();
    super::api::drain_then(&parts.headers, body, refused).await
}

impl<S: Send + Sync> FromRequestParts<S> for Tenant {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Tenant>()
            .cloned()
            .ok_or_else(|| Problem::internal("a route is missing its authentication", "no Tenant"))
    }
}
