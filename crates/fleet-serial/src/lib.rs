//! Serial devices for fleetsim: personas that speak over a serial line (NMEA 0183 GPS
//! receiver, AT-command modem, Modbus RTU slave, template lines), on virtual PTY pairs or real
//! ports, with line impairments.

pub mod at;
pub mod line;
pub mod nmea;
pub mod persona;
pub mod server;

pub use server::{SerialPlan, SerialServers, start};
