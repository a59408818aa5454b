//! Which addresses a notification may go to: not this service's own network
//! unless the operator allows it, so that a tenant cannot make the service call
//! its internals (metadata endpoints, Redis, the bucket).

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

/// Whether `ip` is loopback, private, link-local, unique-local, unspecified,
/// shared (CGNAT), documentation, broadcast or multicast: not the public internet.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || (a == 100 && (64..128).contains(&b))
                || a == 0
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
}

/// The addresses `host:port` resolves to that a notification may go to; an error
/// saying why when none.
pub fn allowed_addresses(
    host: &str,
    port: u16,
    allow_private: bool,
) -> Result<Vec<SocketAddr>, String> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let all: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("the host {host} cannot be resolved ({e})"))?
        .collect();
    let allowed: Vec<SocketAddr> = all
        .iter()
        .copied()
        .filter(|a| allow_private || !is_private(a.ip()))
        .collect();
    if allowed.is_empty() {
        return Err(format!(
            "the host {host} resolves to private or loopback addresses only, which notifications may not \
             reach (the operator can allow them with EFFP_WEBHOOK_ALLOW_PRIVATE)"
        ));
    }
    Ok(allowed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_own_networks_are_private_and_the_internet_is_not() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "224.0.0.1",
        ] {
            assert!(is_private(private.parse().unwrap()), "{private}");
        }
        for public in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(!is_private(public.parse().unwrap()), "{public}");
        }
        assert!(allowed_addresses("127.0.0.1", 80, false).is_err());
        assert!(allowed_addresses("localhost", 80, false).is_err());
        assert_eq!(allowed_addresses("127.0.0.1", 80, true).unwrap().len(), 1);
    }
}
