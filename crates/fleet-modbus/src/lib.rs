//! Modbus slaves for fleetsim's devices: the protocol data units (`pdu`), TCP and RTU framing
//! (`frame`), the device side of a request (`slave`, run on the device's shard), and the
//! servers that route each unit id to the simulated device behind it (`server`).

pub mod frame;
pub mod pdu;
pub mod server;
pub mod slave;

pub use server::{ModbusPlan, ModbusServers, ServeError, serve_rtu, start};
pub use slave::Transport;
