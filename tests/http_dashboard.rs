//! The dashboard's page over HTTP (its files, its Content-Security-Policy), keys
//! kept out of the log, and CORS for the dashboards of others (`EFFP_CORS_ORIGINS`).

mod service;

use service::*;

const KEY: &str = "tenant-key-0123456789ab";
const ALLOWED: &str = "https://mlops.example.com";
const OTHER: &str = "https://evil.example.net";

fn server(origins: &str) -> Server {
    Server::start(
        &[],
        &[
            ("EFFP_API_KEYS", &format!("t:{KEY}")),
            ("EFFP_CORS_ORIGINS", origins),
        ],
    )
}

fn preflight(base: &str, origin: &str) -> Reply {
    call_with(
        "OPTIONS",
        &format!("{base}/v1/models"),
        None,
        &[
            ("Origin", origin),
            ("Access-Control-Request-Method", "POST"),
            (
                "Access-Control-Request-Headers",
                "authorization, content-type",
            ),
        ],
        None,
    )
}

#[test]
fn an_allowed_origin_gets_the_headers_on_preflight_and_on_the_request() {
    let server = server(&format!("{ALLOWED},http://localhost:3000"));
    let base = &server.url;
    let pre = preflight(base, ALLOWED);
    assert!(pre.status < 300, "preflight answered {}", pre.status);
    assert_eq!(pre.header("access-control-allow-origin"), Some(ALLOWED));
    let methods = pre
        .header("access-control-allow-methods")
        .unwrap()
        .to_ascii_uppercase();
    for m in ["GET", "POST", "DELETE"] {
        assert!(methods.contains(m), "{methods}");
    }
    let headers = pre
        .header("access-control-allow-headers")
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        headers.contains("authorization") && headers.contains("content-type"),
        "{headers}"
    );
    // Keys travel as bearer tokens: credentials (cookies) are never allowed.
    assert_eq!(pre.header("access-control-allow-credentials"), None);

    let real = call_with(
        "GET",
        &format!("{base}/v1/models"),
        Some(KEY),
        &[("Origin", ALLOWED)],
        None,
    );
    assert_eq!(real.status, 200);
    assert_eq!(real.header("access-control-allow-origin"), Some(ALLOWED));
    assert!(
        real.header("vary")
            .unwrap_or_default()
            .to_ascii_lowercase()
            .contains("origin"),
        "caches must keep answers per origin"
    );
    // An error answer carries them too, so that a page can read the problem.
    let refused = call_with(
        "GET",
        &format!("{base}/v1/models"),
        Some("wrong-key-0123456789abcdef"),
        &[("Origin", "http://localhost:3000")],
        None,
    );
    assert_eq!(refused.status, 401);
    assert_eq!(
        refused.header("access-control-allow-origin"),
        Some("http://localhost:3000")
    );
}

#[test]
fn another_origin_gets_no_cors_headers() {
    let server = server(ALLOWED);
    let base = &server.url;
    let pre = preflight(base, OTHER);
    assert_eq!(pre.header("access-control-allow-origin"), None);
    assert_eq!(pre.header("access-control-allow-methods"), None);
    let real = call_with(
        "GET",
        &format!("{base}/v1/models"),
        Some(KEY),
        &[("Origin", OTHER)],
        None,
    );
    assert_eq!(
        real.status, 200,
        "the server answers; the browser withholds it"
    );
    assert_eq!(real.header("access-control-allow-origin"), None);
}

#[test]
fn without_the_setting_no_origin_is_allowed() {
    let server = Server::start(&[], &[("EFFP_API_KEYS", &format!("t:{KEY}"))]);
    let pre = preflight(&server.url, ALLOWED);
    assert_eq!(pre.header("access-control-allow-origin"), None);
    let real = call_with(
        "GET",
        &format!("{}/v1/models", server.url),
        Some(KEY),
        &[("Origin", ALLOWED)],
        None,
    );
    assert_eq!(real.header("access-control-allow-origin"), None);
}

#[test]
fn a_wildcard_or_a_path_is_refused_at_start_with_the_reason() {
    for (origins, says) in [
        ("*", "list each origin"),
        ("https://a.example.com/app", "without a path"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_effp"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(tempfile::tempdir().unwrap().path())
            .env("EFFP_CORS_ORIGINS", origins)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{origins}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("EFFP_CORS_ORIGINS") || stderr.contains("--cors-origins"),
            "{stderr}"
        );
        assert!(stderr.contains(says), "{stderr}");
    }
}

#[test]
fn the_dashboard_is_served_under_a_policy_that_allows_only_its_own_files() {
    let server = Server::start(&[], &[]);
    let base = &server.url;
    let page = call("GET", &format!("{base}/"), None, None);
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    let csp = page.header("content-security-policy").unwrap().to_string();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} in {csp}");
    }
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    let html = String::from_utf8_lossy(&page.body).into_owned();
    assert!(!html.contains("<script>"), "no inline script");
    // Every file the page names is served, with its type, from this server.
    for (file, kind) in [
        ("app.js", "text/javascript"),
        ("api.js", "text/javascript"),
        ("charts.js", "text/javascript"),
        ("dom.js", "text/javascript"),
        ("app.css", "text/css"),
        ("favicon.svg", "image/svg+xml"),
    ] {
        let asset = call("GET", &format!("{base}/ui/{file}"), None, None);
        assert_eq!(asset.status, 200, "{file}");
        assert!(
            asset.header("content-type").unwrap().starts_with(kind),
            "{file}"
        );
        assert!(asset.header("content-security-policy").is_some(), "{file}");
    }
    for referenced in ["/ui/app.js", "/ui/app.css", "/ui/favicon.svg"] {
        assert!(html.contains(referenced), "{referenced}");
    }
    let missing = call("GET", &format!("{base}/ui/nope.js"), None, None).problem(404);
    assert_eq!(missing["status"], 404);
    // The API's answers keep their own headers (no page policy on tenant data).
    let api = call("GET", &format!("{base}/v1/models"), None, None);
    assert_eq!(api.header("cache-control"), Some("private, no-store"));
}

#[test]
fn keys_never_reach_the_log_even_at_trace_level() {
    let data = tempfile::tempdir().unwrap();
    let log_path = data.path().join("serve.log");
    let port = effp_testkit::servers::free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_effp"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(data.path().join("data"))
        .env("EFFP_API_KEYS", format!("t:{KEY}"))
        .env("EFFP_LOG", "trace")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let started = std::time::Instant::now();
    while try_call("GET", &format!("{base}/healthz"), None, &[], None).is_err() {
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(
        call("GET", &format!("{base}/v1/models"), Some(KEY), None).status,
        200
    );
    let wrong = "wrong-key-0123456789abcdef";
    assert_eq!(
        call("GET", &format!("{base}/v1/jobs"), Some(wrong), None).status,
        401
    );
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("/v1/models"),
        "the requests were logged: {log}"
    );
    assert!(
        !log.contains(KEY) && !log.contains(wrong),
        "a key reached the log"
    );
}
