//! Where a request comes from: the client IP behind trusted proxies, and its geolocation.

pub mod ipinfo;

use std::net::IpAddr;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) are the IPv4 address they carry.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The socket peer, unless it is a trusted proxy: then the right-most address of
/// `X-Forwarded-For` that is not itself trusted (or `X-Real-IP`).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse::<IpAddr>().ok())
        .map(canonical)
        .collect();
    if let Some(ip) = forwarded.iter().rev().find(|ip| !is_trusted(ip)) {
        return *ip;
    }
    headers
        .get("x-real-ip")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<IpAddr>().ok())
        .map(canonical)
        .unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn untrusted_peers_cannot_claim_another_address() {
        let h = headers(&[("x-forwarded-for", "8.8.8.8")]);
        assert_eq!(
            client_ip("203.0.113.9".parse().unwrap(), &h, &[]),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn trusted_proxy_gives_the_rightmost_untrusted_address() {
        let trusted: Vec<IpNet> = vec![
            "10.0.0.0/8".parse().unwrap(),
            "127.0.0.1/32".parse().unwrap(),
        ];
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 8.8.8.8, 10.0.0.5")]);
        assert_eq!(
            client_ip("127.0.0.1".parse().unwrap(), &h, &trusted),
            "8.8.8.8".parse::<IpAddr>().unwrap()
        );
        let h = headers(&[("x-real-ip", "9.9.9.9")]);
        assert_eq!(
            client_ip("10.1.2.3".parse().unwrap(), &h, &trusted),
            "9.9.9.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(
                "::ffff:10.1.2.3".parse().unwrap(),
                &HeaderMap::new(),
                &trusted
            ),
            "10.1.2.3".parse::<IpAddr>().unwrap()
        );
    }
}
