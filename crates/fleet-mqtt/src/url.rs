//! Broker URLs: `mqtt://host:port` (port 1883 when left out), `mqtts://host:port` (TLS, 8883).

use std::net::{SocketAddr, ToSocketAddrs};

#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("broker URL {url:?}: {why}")]
    Invalid { url: String, why: String },
    #[error("broker URL {url:?}: cannot resolve {host}: {source}")]
    Resolve {
        url: String,
        host: String,
        source: std::io::Error,
    },
}

/// The host part of a broker URL, as written (the name a TLS certificate is checked against).
pub fn host(url: &str) -> Option<&str> {
    let rest = fleet_core::scenario::broker_authority(url)?;
    fleet_core::scenario::split_host_port(rest)
        .ok()
        .map(|(h, _)| h)
}

/// Resolves a broker URL to a socket address (the first the resolver gives).
pub fn resolve(url: &str) -> Result<SocketAddr, UrlError> {
    fleet_core::scenario::check_broker_url(url).map_err(|why| UrlError::Invalid {
        url: url.to_string(),
        why,
    })?;
    let tls = fleet_core::scenario::is_tls_url(url);
    let rest = fleet_core::scenario::broker_authority(url).unwrap_or(url);
    let (host, port) =
        fleet_core::scenario::split_host_port(rest).map_err(|why| UrlError::Invalid {
            url: url.to_string(),
            why,
        })?;
    let host_port = format!(
        "{}:{}",
        if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        },
        port.unwrap_or(if tls { 8883 } else { 1883 })
    );
    let mut addrs = host_port
        .to_socket_addrs()
        .map_err(|source| UrlError::Resolve {
            url: url.to_string(),
            host: host_port.clone(),
            source,
        })?;
    addrs.next().ok_or_else(|| UrlError::Invalid {
        url: url.to_string(),
        why: "resolves to no address".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_resolve_with_and_without_a_port() {
        assert_eq!(resolve("mqtt://127.0.0.1:1884").unwrap().port(), 1884);
        assert_eq!(resolve("mqtt://127.0.0.1").unwrap().port(), 1883);
        assert_eq!(resolve("mqtt://localhost:9").unwrap().port(), 9);
        assert_eq!(resolve("mqtt://[::1]").unwrap().port(), 1883);
        assert_eq!(resolve("mqtt://[::1]:1884").unwrap().port(), 1884);
    }

    #[test]
    fn bad_urls_say_why() {
        assert!(
            resolve("http://x")
                .unwrap_err()
                .to_string()
                .contains("mqtt://")
        );
        assert!(
            resolve("mqtt://h:99999")
                .unwrap_err()
                .to_string()
                .contains("port")
        );
        assert!(
            resolve("mqtt://h:0")
                .unwrap_err()
                .to_string()
                .contains("port 0")
        );
    }
}
