//! fleet-mqtt: devices as MQTT clients.
//!
//! - `codec`: packets, written by hand on the hot path, decoded with rumqttc's codecs;
//! - `adapter`: one shard's sessions (one per device), driven by the shard loop;
//! - `broker`: the embedded rumqttd broker used when a scenario names none;
//! - `url`: broker URLs.

pub mod adapter;
pub mod broker;
pub mod codec;
pub mod url;

pub use adapter::{MqttAdapter, MqttConfig, MqttEvent};
pub use codec::Version;
