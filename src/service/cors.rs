//! Cross-origin requests: which other web origins' pages (dashboards of MLOps
//! platforms) may call the API from a browser. Nothing is allowed by default.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::Response;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// The origins allowed to call the API from a browser (`EFFP_CORS_ORIGINS`), each
/// `scheme://host[:port]`, as a browser sends it in `Origin`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CorsOrigins(Vec<String>);

impl FromStr for CorsOrigins {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut origins = Vec::new();
        for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            origins.push(parse_origin(entry)?);
        }
        origins.dedup();
        Ok(Self(origins))
    }
}

impl fmt::Display for CorsOrigins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

/// One origin, normalised as browsers send it (lower-case scheme and host, no
/// default port, no trailing slash).
fn parse_origin(entry: &str) -> Result<String, String> {
    if entry == "*" || entry == "null" {
        return Err(format!(
            "'{entry}' is not allowed as a CORS origin: list each origin, e.g. https://dashboard.example.com"
        ));
    }
    let url = url::Url::parse(entry).map_err(|e| {
        format!("'{entry}' is not an origin ({e}): write scheme://host[:port], e.g. https://dashboard.example.com")
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("'{entry}' is not an http(s) origin"));
    }
    if url.host_str().is_none()
        || url.path() != "/"
        || url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return Err(format!(
            "'{entry}' is not an origin: write only scheme://host[:port], without a path, user or query"
        ));
    }
    Ok(url.origin().ascii_serialization())
}

impl CorsOrigins {
    /// Whether no origin is allowed (the default).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `app` answering preflights and adding `Access-Control-*` headers for the
    /// allowed origins, and for no other: a page of another origin gets no CORS
    /// header at all. Unchanged when no origin is allowed.
    pub fn apply(&self, app: Router) -> Router {
        let Some(layer) = self.layer() else {
            return app;
        };
        let allowed: Arc<[HeaderValue]> = self.header_values().into();
        app.layer(layer)
            .layer(axum::middleware::from_fn(move |request, next| {
                strip_for_others(allowed.clone(), request, next)
            }))
    }

    fn header_values(&self) -> Vec<HeaderValue> {
        self.0
            .iter()
            .map(|o| HeaderValue::from_str(o).expect("an origin is a valid header value"))
            .collect()
    }

    /// The layer answering preflights and adding `Access-Control-*` headers for the
    /// allowed origins; `None` when there are none. Requests authenticate with a
    /// bearer key, never with cookies, so credentials are never allowed.
    fn layer(&self) -> Option<CorsLayer> {
        if self.is_empty() {
            return None;
        }
        let origins = self.header_values();
        Some(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(origins))
                .allow_methods([Method::GET, Method::POST, Method::DELETE])
                .allow_headers([
                    header::AUTHORIZATION,
                    header::CONTENT_TYPE,
                    HeaderName::from_static("last-event-id"),
                    HeaderName::from_static("idempotency-key"),
                ])
                .expose_headers([
                    header::LOCATION,
                    header::RETRY_AFTER,
                    header::CONTENT_DISPOSITION,
                    HeaderName::from_static("x-request-id"),
                ])
                .allow_credentials(false)
                .max_age(Duration::from_secs(600)),
        )
    }
}

/// Removes the CORS headers tower-http's layer adds to a preflight whatever its
/// origin (the allowed methods and headers) when the origin is not allowed.
async fn strip_for_others(allowed: Arc<[HeaderValue]>, request: Request, next: Next) -> Response {
    let allowed_origin = request
        .headers()
        .get(header::ORIGIN)
        .is_some_and(|origin| allowed.contains(origin));
    let mut response = next.run(request).await;
    if !allowed_origin {
        let names: Vec<HeaderName> = response
            .headers()
            .keys()
            .filter(|name| name.as_str().starts_with("access-control-"))
            .cloned()
            .collect();
        for name in names {
            response.headers_mut().remove(name);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_normalised_as_browsers_send_them() {
        let o: CorsOrigins =
            "https://Dash.Example.com, http://localhost:3000/ ,https://a.example:443"
                .parse()
                .unwrap();
        assert_eq!(
            o.to_string(),
            "https://dash.example.com,http://localhost:3000,https://a.example"
        );
        assert!("".parse::<CorsOrigins>().unwrap().is_empty());
        assert!(" , ".parse::<CorsOrigins>().unwrap().layer().is_none());
        assert!(
            "https://a.example"
                .parse::<CorsOrigins>()
                .unwrap()
                .layer()
                .is_some()
        );
    }

    #[test]
    fn wildcards_paths_and_other_schemes_are_refused_with_the_reason() {
        for (bad, says) in [
            ("*", "list each origin"),
            ("null", "list each origin"),
            ("https://a.example/app", "without a path"),
            ("https://user@a.example", "without a path, user"),
            ("https://a.example?x=1", "without a path"),
            ("ftp://a.example", "not an http(s) origin"),
            ("a.example", "not an origin"),
        ] {
            let err = bad.parse::<CorsOrigins>().unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
