//! fleet-engine: runs a fleet.
//!
//! Shards (one thread each) own a contiguous range of device ids, their state machines, a
//! scheduler of deadlines and the devices' sessions. The virtual clock jumps from deadline to
//! deadline against a simulated broker; the wall clock runs a current-thread tokio runtime per
//! shard and talks to a real broker through an `Adapter`. The engine knows no protocol.

pub mod adapter;
pub mod control;
pub mod event_log;
pub mod plan;
pub mod process;
pub mod query;
pub mod rollout;
pub mod run;
pub mod scheduler;
pub mod service;
pub mod shard;
mod virtual_clock;
mod wall_clock;

pub use adapter::{Adapter, GatewayFault, GatewayNote, IdleAdapter, NetInput, SendOutcome};
pub use control::Control;
pub use plan::RunPlan;
pub use query::{Query, QueryCx, QueryError, QueryInboxes, QueryRouter};
pub use run::{
    BackgroundRun, EngineError, RunOptions, RunOutcome, SATURATION_LAG_US, run_virtual, run_wall,
};
pub use service::ServiceThread;
pub use virtual_clock::NoAdapter;
pub use wall_clock::{ADAPTER_TICK, INBOX_CAPACITY, MAX_EVENTS_PER_TURN, MAX_STEPS_PER_TURN};

/// `ADAPTER_TICK` in milliseconds, for adapters' constants.
pub const fn wall_clock_tick_ms() -> u32 {
    (ADAPTER_TICK.0 / 1_000) as u32
}
