//! Job notifications (webhooks): what a job's `notify` URL may be, and how each
//! delivery is signed so that the receiver can tell it came from this service.
//!
//! A delivery is a `POST` of JSON `{"event": "job.<state>", "job": {…}}` with the
//! headers [`EVENT_HEADER`], [`DELIVERY_HEADER`] and [`SIGNATURE_HEADER`]:
//! `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">` under the tenant's
//! webhook secret. A receiver recomputes the HMAC over the raw body, compares in
//! constant time, and refuses timestamps far from its clock (replays).

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header naming the event (`job.succeeded`, `job.failed`, `job.cancelled`).
pub const EVENT_HEADER: &str = "effp-event";
/// The header with the delivery's id (the same for every retry of one
/// notification, so that a receiver can drop repeats).
pub const DELIVERY_HEADER: &str = "effp-delivery";
/// The header with the timestamp and signature.
pub const SIGNATURE_HEADER: &str = "effp-signature";
/// Longest `notify` URL.
pub const MAX_URL_LEN: usize = 2048;

/// Why `url` cannot be a job's `notify` URL, if it cannot.
pub fn check_url(url: &str) -> Result<url::Url, String> {
    if url.len() > MAX_URL_LEN {
        return Err(format!("must be at most {MAX_URL_LEN} characters"));
    }
    let parsed = url::Url::parse(url).map_err(|e| format!("is not a URL ({e})"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("must be http or https, not {}", parsed.scheme()));
    }
    if parsed.host().is_none() {
        return Err("must name a host".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not carry credentials: the deliveries are signed instead".into());
    }
    Ok(parsed)
}

/// The value of [`SIGNATURE_HEADER`] for `body` sent at `timestamp` (Unix seconds)
/// under `secret`.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    format!("t={timestamp},v1={}", hex(&mac(secret, timestamp, body)))
}

/// Whether `header` is a valid signature of `body` under `secret`, made within
/// `tolerance_secs` of `now` (Unix seconds).
pub fn verify(secret: &[u8], header: &str, body: &[u8], now: u64, tolerance_secs: u64) -> bool {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<u64>().ok(),
            Some(("v1", v)) => signatures.push(v),
            _ => {}
        }
    }
    let Some(t) = timestamp else { return false };
    if t.abs_diff(now) > tolerance_secs {
        return false;
    }
    signatures.into_iter().any(|v| {
        let Some(given) = unhex(v) else { return false };
        let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
        m.update(format!("{t}.").as_bytes());
        m.update(body);
        m.verify_slice(&given).is_ok()
    })
}

/// A tenant's webhook secret, derived from the service's: tenants cannot sign for
/// each other, and nothing per tenant needs storing.
pub fn tenant_secret(service_secret: &[u8], tenant: &str) -> String {
    let mut m = Hmac::<Sha256>::new_from_slice(service_secret).expect("any key length");
    m.update(b"effp webhook secret\0");
    m.update(tenant.as_bytes());
    hex(&m.finalize().into_bytes())
}

fn mac(secret: &[u8], timestamp: u64, body: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    m.update(format!("{timestamp}.").as_bytes());
    m.update(body);
    m.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Computed independently: Python's hmac.new(b"secret", b"1700000000.{}",
        // hashlib.sha256).hexdigest().
        assert_eq!(
            signature(b"secret", 1_700_000_000, b"{}"),
            "t=1700000000,v1=b8569b78799ff9e3cbff0fc2d63a33a2b57f3282abd07c37ae5e8e7d79a5f163"
        );
    }

    #[test]
    fn verification_refuses_a_changed_body_another_secret_and_an_old_timestamp() {
        let body = br#"{"event":"job.succeeded"}"#;
        let header = signature(b"k", 1000, body);
        assert!(verify(b"k", &header, body, 1000, 300));
        assert!(verify(b"k", &header, body, 1299, 300));
        assert!(!verify(b"k", &header, body, 1301, 300));
        assert!(!verify(b"other", &header, body, 1000, 300));
        assert!(!verify(
            b"k",
            &header,
            br#"{"event":"job.failed"}"#,
            1000,
            300
        ));
        assert!(!verify(b"k", "t=1000,v1=zz", body, 1000, 300));
        assert!(!verify(b"k", "v1=00", body, 1000, 300));
        assert_ne!(tenant_secret(b"s", "a"), tenant_secret(b"s", "b"));
        assert_eq!(tenant_secret(b"s", "a").len(), 64);
    }

    #[test]
    fn notify_urls_are_http_with_a_host_and_no_credentials() {
        assert!(check_url("https://hooks.example.com/effp?x=1").is_ok());
        assert!(check_url("http://10.0.0.1:8080/").is_ok());
        for bad in [
            "ftp://example.com/",
            "not a url",
            "https://user:pw@example.com/",
            "file:///etc/passwd",
            "https://",
            "mailto:someone@example.com",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
        assert!(check_url(&format!("https://e.com/{}", "a".repeat(MAX_URL_LEN))).is_err());
    }
}
