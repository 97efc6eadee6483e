//! The embedded broker: rumqttd in this process, configured in code, limits raised to the fleet.
//!
//! rumqttd binds its listeners itself and does not report the port it got, so each listener's
//! port is found by binding port 0 on 127.0.0.1 and releasing it just before rumqttd binds it.
//! The broker is ready when every listener accepts a TCP connection.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

use crate::codec::Version;

/// One listener per this many devices (one rumqttd listener accepts a few hundred connections
/// a second).
pub const DEVICES_PER_LISTENER: u32 = 2_000;
/// At most this many listeners.
pub const MAX_LISTENERS: u16 = 16;
/// Retention per topic filter: segment size x count. Small: the embedded broker is a sink.
const SEGMENT_SIZE: usize = 256 * 1024;
const SEGMENT_COUNT: usize = 2;
/// Largest payload the embedded broker accepts.
const MAX_PAYLOAD: usize = 256 * 1024;
/// How long to wait for the listeners to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("embedded broker: no free port on 127.0.0.1: {0}")]
    Port(std::io::Error),
    #[error("embedded broker: cannot start its thread: {0}")]
    Thread(std::io::Error),
    #[error("embedded broker: listener {0} did not come up within {1:?}")]
    NotReady(SocketAddr, Duration),
}

/// A running embedded broker: the addresses of its listeners.
#[derive(Clone, Debug)]
pub struct EmbeddedBroker {
    pub listeners: Vec<SocketAddr>,
}

/// How many listeners a fleet of `devices` gets when the scenario does not say.
pub fn default_listeners(devices: u32) -> u16 {
    (devices.div_ceil(DEVICES_PER_LISTENER)).clamp(1, u32::from(MAX_LISTENERS)) as u16
}

fn free_port() -> Result<SocketAddr, BrokerError> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(BrokerError::Port)?;
    l.local_addr().map_err(BrokerError::Port)
}

/// Starts rumqttd sized for `devices` sessions with `listeners` listeners of `version`.
pub fn start(
    devices: u32,
    listeners: u16,
    version: Version,
) -> Result<EmbeddedBroker, BrokerError> {
    let listeners = listeners.clamp(1, MAX_LISTENERS);
    let mut servers = HashMap::new();
    let mut addrs = Vec::new();
    for i in 0..listeners {
        let addr = free_port()?;
        addrs.push(addr);
        servers.insert(
            format!("fleetsim-{i}"),
            ServerSettings {
                name: format!("fleetsim-{i}"),
                listen: addr,
                tls: None,
                next_connection_delay_ms: 0,
                connections: ConnectionSettings {
                    connection_timeout_ms: 60_000,
                    max_payload_size: MAX_PAYLOAD,
                    max_inflight_count: 1024,
                    auth: None,
                    external_auth: None,
                    dynamic_filters: true,
                },
            },
        );
    }
    let mut config = Config {
        router: RouterConfig {
            max_connections: devices as usize + 1024,
            max_outgoing_packet_count: 1024,
            max_segment_size: SEGMENT_SIZE,
            max_segment_count: SEGMENT_COUNT,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        ..Config::default()
    };
    match version {
        Version::V311 => config.v4 = Some(servers),
        Version::V5 => config.v5 = Some(servers),
    }
    let mut broker = Broker::new(config);
    std::thread::Builder::new()
        .name("embedded-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })
        .map_err(BrokerError::Thread)?;
    for addr in &addrs {
        let deadline = Instant::now() + READY_TIMEOUT;
        while TcpStream::connect_timeout(addr, Duration::from_millis(200)).is_err() {
            if Instant::now() >= deadline {
                return Err(BrokerError::NotReady(*addr, READY_TIMEOUT));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(EmbeddedBroker { listeners: addrs })
}
