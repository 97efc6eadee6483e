//! fleet-tui: the live dashboard of a run, like `oha` or `trippy`.
//!
//! App = state + pure render + event handling. [`App`] holds what the dashboard remembers
//! (screen, sparkline histories, input mode, the device looked up, the status line);
//! [`render`] draws it over one [`fleet_metrics::FleetSnapshot`] and never does I/O; keys go
//! in through [`App::on_key`], which returns an [`Action`] (quit, a confirmed command, a
//! device lookup). [`run`] is the terminal loop around them: it talks to the run only through
//! a [`fleet_metrics::FleetPort`], local or attached. The crate sees snapshots and commands,
//! never the engine or a protocol.

mod app;
mod forms;
mod render;
mod term;
mod widgets;

#[doc(hidden)]
pub mod fixture;

pub use app::{
    Action, App, Confirm, DEVICE_REFRESH, DeviceView, HISTORY_LEN, History, Mode, Status,
    StatusLevel, Tab,
};
pub use forms::{Form, FormKind, TextField};
pub use render::{SATURATION_LAG_US, render, render_waiting};
pub use term::{
    CrosstermEvents, EventSource, Exit, POLL_TIMEOUT, REDRAW_EVERY, RunOptions, color_enabled, run,
    run_loop,
};
