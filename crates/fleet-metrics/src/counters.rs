use serde::{Deserialize, Serialize};

/// Monotonic counters of one shard (or, summed, of the fleet).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Telemetry messages devices produced (one per `seq`).
    pub published: u64,
    /// Messages handed to the network (telemetry, responses, status).
    pub sent: u64,
    /// Telemetry confirmed: PUBACK/PUBCOMP for QoS 1/2, fully written to the socket for QoS 0.
    pub acked: u64,
    /// QoS 0 telemetry lost by the simulated link.
    pub failed_lost_link: u64,
    /// Telemetry dropped because the device was offline and its buffer was full (or absent).
    pub failed_offline: u64,
    /// Telemetry that could not be written (socket error, send queue full).
    pub failed_write: u64,
    /// QoS >= 1 telemetry in flight when its session died.
    pub failed_unacked: u64,
    /// Messages the link model delayed by a retransmission.
    pub retransmits: u64,
    /// Telemetry sent from the offline buffer after a reconnect.
    pub flushed: u64,
    pub bytes_sent: u64,
    pub connect_attempts: u64,
    pub connects_ok: u64,
    pub connects_failed: u64,
    /// Attempts skipped because the device's link was down (outage, link drop).
    pub connects_no_link: u64,
    /// Link drops drawn from the link model (MTBF).
    pub link_drops: u64,
    /// Sessions that died under the device (broker closed, I/O error, keep-alive).
    pub sessions_lost: u64,
    pub commands: u64,
    pub commands_rejected: u64,
    pub reboots: u64,
    pub batteries_depleted: u64,
    /// Inbound packets that could not be decoded (the session is closed and counted here).
    pub malformed_packets: u64,
    /// Device steps taken by the engine.
    pub steps: u64,
}

impl Counters {
    pub fn failed(&self) -> u64 {
        self.failed_lost_link + self.failed_offline + self.failed_write + self.failed_unacked
    }

    pub fn add(&mut self, o: &Counters) {
        macro_rules! sum {
            ($($f:ident),*) => { $( self.$f += o.$f; )* };
        }
        sum!(
            published,
            sent,
            acked,
            failed_lost_link,
            failed_offline,
            failed_write,
            failed_unacked,
            retransmits,
            flushed,
            bytes_sent,
            connect_attempts,
            connects_ok,
            connects_failed,
            connects_no_link,
            link_drops,
            sessions_lost,
            commands,
            commands_rejected,
            reboots,
            batteries_depleted,
            malformed_packets,
            steps
        );
    }
}
