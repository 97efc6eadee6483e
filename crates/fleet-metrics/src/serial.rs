//! Serial port counters: what went over the lines, what the impairments did to it, and what
//! the personas answered. Cumulative per shard, summed across shards like `Counters`.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialCounters {
    /// Ports opened (PTY pairs made or real ports opened), reopens after an unplug included.
    pub ports_opened: u64,
    /// Lines (NMEA sentences, modem responses, template lines) and bytes sent.
    pub lines_out: u64,
    pub bytes_out: u64,
    /// Command lines and bytes received.
    pub lines_in: u64,
    pub bytes_in: u64,
    /// Commands answered (AT), and of them those answered with ERROR / +CME ERROR.
    pub commands: u64,
    pub command_errors: u64,
    /// Unsolicited result codes sent (AT: registration changes).
    pub unsolicited: u64,
    /// Impairments carried out: bytes with a flipped bit, bytes dropped, NMEA sentences with a
    /// wrong checksum, unplugs.
    pub corrupted_bytes: u64,
    pub dropped_bytes: u64,
    pub bad_checksums: u64,
    pub unplugs: u64,
    /// Output skipped because the line was still busy sending the previous burst at its baud
    /// rate (an NMEA rate too high for the line's speed).
    pub overruns: u64,
    /// Opening or reopening a port failed (counted; retried).
    pub open_errors: u64,
}

impl SerialCounters {
    pub fn add(&mut self, o: &SerialCounters) {
        macro_rules! sum {
            ($($f:ident),*) => { $( self.$f += o.$f; )* };
        }
        sum!(
            ports_opened,
            lines_out,
            bytes_out,
            lines_in,
            bytes_in,
            commands,
            command_errors,
            unsolicited,
            corrupted_bytes,
            dropped_bytes,
            bad_checksums,
            unplugs,
            overruns,
            open_errors
        );
    }

    /// Injected errors of every kind.
    pub fn errors_injected(&self) -> u64 {
        self.corrupted_bytes + self.dropped_bytes + self.bad_checksums + self.unplugs
    }
}
