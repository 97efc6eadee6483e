//! fleet-api: the HTTP control API of a run, and the client that attaches to it.
//!
//! - `serve` puts a `FleetPort` (the engine's control) behind HTTP on a thread of its own:
//!   `/metrics` (Prometheus text format, see `render_metrics`), `/api/v1/snapshot`,
//!   `/api/v1/devices/{key}`, `/api/v1/pause|resume|faults|rollouts`, `/api/v1/health`.
//!   Every error is JSON: `{"error": {"kind": "...", "message": "..."}}`.
//! - `RemoteFleet` is a `FleetPort` over the API of one or several processes (`fleetsim top
//!   --attach URL...`): snapshots merged with `fleet_metrics::merge_snapshots`, commands sent
//!   to every process.
//!
//! The endpoints, metric names and the token rule are documented in `docs/api.md`.

mod client;
mod error;
mod http;
pub mod metrics;
mod server;

pub use client::{POLL_INTERVAL, RemoteFleet};
pub use error::ApiError;
pub use http::{MAX_RESPONSE_BYTES, REQUEST_TIMEOUT};
pub use metrics::render_metrics;
pub use server::{ApiConfig, ApiServer, MAX_BODY_BYTES, TOKEN_ENV, serve};
