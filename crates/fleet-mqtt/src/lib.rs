//! fleet-mqtt: devices as MQTT clients.
//!
//! - `codec`: packets, written by hand on the hot path, decoded with rumqttc's codecs;
//! - `adapter`: one shard's sessions (one per device), driven by the shard loop;
//! - `gateway`: one session per gateway for the devices behind it (`[gateway]` profiles),
//!   run by a mux thread the shards hand their children's messages to;
//! - `broker`: the embedded rumqttd broker used when a scenario names none;
//! - `url`: broker URLs;
//! - `http`: a small HTTP/1.1 client that downloads firmware images from an artifact server;
//! - `tls`: MQTT over TLS (rustls with ring): trust roots, per-device client certificates.

pub mod adapter;
pub mod broker;
pub mod codec;
pub mod downloads;
pub mod gateway;
pub mod http;
pub mod tls;
pub mod url;

pub use adapter::{MqttAdapter, MqttConfig, MqttEvent};
pub use codec::Version;
