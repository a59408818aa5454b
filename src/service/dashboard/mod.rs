//! The web dashboard at `/`: a page for people to upload detectors, start and watch
//! jobs and download results with a mouse. It calls only the public API, with the
//! key the person enters; its files are compiled into the binary and served under a
//! Content-Security-Policy that allows nothing but them.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::AppState;
use super::problem::Problem;

/// The dashboard's policy: its own scripts, styles and images, calls to this server
/// only, no inline script or style, no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                       img-src 'self' data: blob:; connect-src 'self'; font-src 'self'; \
                       manifest-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// One file of the dashboard: its name under /ui/ (or index.html), type and text.
type Asset = (&'static str, &'static str, &'static str);

const JS: &str = "text/javascript; charset=utf-8";

const INDEX: Asset = (
    "index.html",
    "text/html; charset=utf-8",
    include_str!("assets/index.html"),
);

const ASSETS: &[Asset] = &[
    ("app.js", JS, include_str!("assets/app.js")),
    ("api.js", JS, include_str!("assets/api.js")),
    ("charts.js", JS, include_str!("assets/charts.js")),
    ("dom.js", JS, include_str!("assets/dom.js")),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("assets/app.css"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("assets/favicon.svg"),
    ),
];

/// The dashboard's routes: the page at `/` and its files under `/ui/`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/ui/{file}", get(asset))
}

/// Whether `path` is one of the dashboard's, which get its CSP.
pub fn is_dashboard(path: &str) -> bool {
    path == "/" || path.starts_with("/ui/")
}

async fn index() -> Response {
    serve(&INDEX)
}

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some(asset) => serve(asset),
        None => Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "no such dashboard file; the dashboard is at /",
        )
        .into_response(),
    }
}

fn serve(&(_, content_type, body): &Asset) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Revalidated on every load, so an upgraded server's page is never mixed with
    // the old one's scripts.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
