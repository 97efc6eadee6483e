//! fleet-core: the device model of fleetsim.
//!
//! Ids, simulated time, the run seed and per-device generators, the file formats (profiles,
//! firmware models, scenarios: raw serde structs validated into trusted types), and the device
//! state machine. No tokio, no sockets, no clocks: `now` is always passed in.

pub mod command;
pub mod defaults;
pub mod device;
pub mod dist;
pub mod error;
pub mod firmware;
pub mod ids;
pub mod load;
pub mod modbus;
pub mod ota;
pub mod payload;
pub mod profile;
pub mod rollout;
pub mod scenario;
pub mod security;
pub mod seed;
pub mod sensor;
pub mod serial;
pub mod slice;
pub mod slo;
pub mod template;
pub mod time;

pub use device::{
    Device, DeviceCtx, DeviceState, DeviceView, Effect, Effects, Event, Input, Publish, TopicKind,
};
pub use error::{ConfigError, ConfigErrors};
pub use ids::{CohortId, DeviceId, ShardId};
pub use load::{Cohort, Fleet};
pub use seed::RunSeed;
pub use time::{SimDuration, SimTime};
