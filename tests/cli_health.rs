//! `effp health`, the containers' health check: exit 0 when the endpoint answers 2xx,
//! 1 with the reason otherwise.

mod common;
mod service;

use common::{effp, text};

#[test]
fn health_passes_on_a_ready_server_and_fails_with_the_reason_otherwise() {
    let server = service::Server::start(&[], &[]);
    let ready = effp(&["health", &format!("{}/readyz", server.url)]);
    assert_eq!(ready.status.code(), Some(0), "{}", text(&ready.stderr));
    assert!(text(&ready.stdout).starts_with("200 "));

    let missing = effp(&["health", &format!("{}/no-such-path", server.url)]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        text(&missing.stderr).contains("answered 404"),
        "{}",
        text(&missing.stderr)
    );

    let port = effp_testkit::servers::free_port();
    let down = effp(&[
        "health",
        "--timeout-s",
        "2",
        &format!("http://127.0.0.1:{port}/healthz"),
    ]);
    assert_eq!(down.status.code(), Some(1));
    assert!(
        text(&down.stderr).contains("Connection refused"),
        "{}",
        text(&down.stderr)
    );

    let bad = effp(&["health", "ftp://example.com/"]);
    assert_eq!(bad.status.code(), Some(2), "a usage error");
    assert!(text(&bad.stderr).contains("not an http(s) URL"));
}
