//! Job notifications over real HTTP: a job that names a `notify` URL is POSTed to it
//! when it ends, signed with the tenant's key, retried after a failure, and the job
//! shows where its notification stands; URLs the service must not call are refused.

mod service;

use service::*;

const KEYS: &str = "t1:tenant-one-key-0123456789,t2:tenant-two-key-0123456789";
const T1: Option<&str> = Some("tenant-one-key-0123456789");
const T2: Option<&str> = Some("tenant-two-key-0123456789");

fn job_with_notify(base: &str, token: Option<&str>, url: &str) -> Reply {
    let bytes = fixture_bytes("yolov8t.onnx");
    let model = call("POST", &format!("{base}/v1/models"), token, Some(&bytes));
    // 201 the first time, 200 when the same file is uploaded again.
    assert!(matches!(model.status, 200 | 201), "{}", model.status);
    let body = serde_json::json!({
        "model": model.json()["id"], "target": {"flops_ratio": 0.5}, "device": "cpu", "notify": url,
    });
    call(
        "POST",
        &format!("{base}/v1/jobs"),
        token,
        Some(body.to_string().as_bytes()),
    )
}

fn an_ended_job_is_posted_signed_to_its_notify_url_and_retried_after_a_failure(shape: Shape) {
    let receiver = Receiver::start(1);
    let server = Deployment::start(
        shape,
        &[],
        &[
            ("EFFP_API_KEYS", KEYS),
            ("EFFP_WEBHOOK_SECRET", "a-secret-of-this-deployment"),
            ("EFFP_WEBHOOK_ALLOW_PRIVATE", "true"),
        ],
    );
    let base = &server.url;
    let submitted = job_with_notify(base, T1, &receiver.url);
    assert_eq!(
        submitted.status,
        201,
        "{}",
        String::from_utf8_lossy(&submitted.body)
    );
    let id = submitted.json()["id"].as_str().unwrap().to_string();
    assert_eq!(wait_for_end(base, &id, T1)["state"], "succeeded");

    let first = receiver.next(30);
    let second = receiver.next(30);
    let job = wait_for_notification(base, &id, T1);
    assert_eq!(job["notification"]["state"], "delivered", "{job}");
    assert_eq!(job["notification"]["attempts"], 2, "{job}");
    assert_eq!(job["notification"]["url"], receiver.url.as_str());

    // Both tries carry the same delivery id; the second is a whole, signed copy.
    assert_eq!(
        first.headers["effp-delivery"],
        second.headers["effp-delivery"]
    );
    assert_eq!(second.headers["effp-event"], "job.succeeded");
    assert_eq!(second.headers["content-type"], "application/json");
    let payload: serde_json::Value = serde_json::from_slice(&second.body).unwrap();
    assert_eq!(payload["event"], "job.succeeded");
    assert_eq!(payload["job"]["id"], id.as_str());
    assert_eq!(payload["job"]["state"], "succeeded");
    assert!(payload["job"]["artifacts"]["pruned.onnx"]["sha256"].is_string());

    let secret = call("GET", &format!("{base}/v1/webhook-secret"), T1, None).json();
    let key = secret["secret"].as_str().unwrap();
    assert_eq!(secret["header"], "effp-signature");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let signature = &second.headers["effp-signature"];
    assert!(effp_protocol::webhook::verify(
        key.as_bytes(),
        signature,
        &second.body,
        now,
        300
    ));
    // Another tenant's key does not verify it: tenants cannot sign for each other.
    let other = call("GET", &format!("{base}/v1/webhook-secret"), T2, None).json();
    assert_ne!(other["secret"], secret["secret"]);
    assert!(!effp_protocol::webhook::verify(
        other["secret"].as_str().unwrap().as_bytes(),
        signature,
        &second.body,
        now,
        300
    ));
}

fn notify_urls_the_service_must_not_call_are_refused_at_the_field(shape: Shape) {
    let server = Deployment::start(
        shape,
        &[],
        &[("EFFP_WEBHOOK_SECRET", "a-secret-of-this-deployment")],
    );
    let base = &server.url;
    for (url, says) in [
        ("http://127.0.0.1:9/hook", "private or loopback"),
        (
            "http://169.254.169.254/latest/meta-data",
            "private or loopback",
        ),
        ("http://localhost/hook", "private or loopback"),
        ("ftp://example.com/hook", "http or https"),
        ("https://user:secret@example.com/hook", "credentials"),
    ] {
        let refused = job_with_notify(base, None, url);
        let p = refused.problem(422);
        assert_eq!(p["errors"][0]["path"], "/notify", "{url}: {p}");
        assert!(
            p["errors"][0]["message"].as_str().unwrap().contains(says),
            "{url}: {p}"
        );
    }
    assert_eq!(
        call("GET", &format!("{base}/v1/jobs"), None, None).json()["items"],
        serde_json::json!([])
    );
}

crate::on_both_deployments!(
    an_ended_job_is_posted_signed_to_its_notify_url_and_retried_after_a_failure,
    notify_urls_the_service_must_not_call_are_refused_at_the_field,
);
