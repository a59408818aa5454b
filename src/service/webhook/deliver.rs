//! One try of a notification: a signed POST to the job's `notify` URL, to an
//! address checked when it is connected to (so a name that re-resolves to a private
//! address is caught), without following redirects.

use std::net::SocketAddr;
use std::time::Duration;

use effp_protocol::webhook::{DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, signature};

use super::address::allowed_addresses;

/// How long one try may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Resolves names to the addresses a notification may reach.
struct Checked {
    allow_private: bool,
}

impl ureq::Resolver for Checked {
    fn resolve(&self, netloc: &str) -> std::io::Result<Vec<SocketAddr>> {
        let (host, port) = netloc
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h, p.parse().ok()?)))
            .ok_or_else(|| std::io::Error::other(format!("no port in {netloc}")))?;
        allowed_addresses(host, port, self.allow_private).map_err(std::io::Error::other)
    }
}

/// POSTs `body` to `url`, signed with `secret`; why not, when the receiver did not
/// answer 2xx.
pub fn post(
    url: &str,
    body: &[u8],
    event: &str,
    delivery: &str,
    secret: &[u8],
    allow_private: bool,
) -> Result<(), String> {
    let agent = ureq::AgentBuilder::new()
        .resolver(Checked { allow_private })
        .redirects(0)
        .timeout(TIMEOUT)
        .user_agent(concat!("effp/", env!("CARGO_PKG_VERSION")))
        .build();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let answer = agent
        .post(url)
        .set("content-type", "application/json")
        .set(EVENT_HEADER, event)
        .set(DELIVERY_HEADER, delivery)
        .set(SIGNATURE_HEADER, &signature(secret, now, body))
        .send_bytes(body);
    match answer {
        Ok(r) if (200..300).contains(&r.status()) => Ok(()),
        Ok(r) => Err(format!("the receiver answered {}", r.status())),
        Err(ureq::Error::Status(code, _)) => Err(format!("the receiver answered {code}")),
        Err(ureq::Error::Transport(t)) => Err(format!("cannot reach the receiver: {t}")),
    }
}
