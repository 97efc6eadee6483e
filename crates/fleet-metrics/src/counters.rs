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
    /// QoS 0 telemetry produced while disconnected and not buffered (`buffer_qos0 = false`).
    pub failed_qos0_offline: u64,
    /// Buffered telemetry older than the profile's `max_age` when its turn came.
    pub failed_expired: u64,
    /// QoS >= 1 telemetry the broker refused (MQTT 5 PUBACK/PUBREC reason code >= 0x80).
    pub failed_rejected: u64,
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
    /// Telemetry lost, by reason, under the names the report, `/metrics` and the dashboard use.
    pub fn failed_by_reason(&self) -> [(&'static str, u64); 7] {
        [
            ("lost_on_link", self.failed_lost_link),
            ("offline_buffer_full", self.failed_offline),
            ("qos0_while_disconnected", self.failed_qos0_offline),
            ("expired", self.failed_expired),
            ("broker_rejected", self.failed_rejected),
            ("write_error", self.failed_write),
            ("unacked_when_session_lost", self.failed_unacked),
        ]
    }

    pub fn failed(&self) -> u64 {
        self.failed_lost_link
            + self.failed_offline
            + self.failed_write
            + self.failed_unacked
            + self.failed_qos0_offline
            + self.failed_expired
            + self.failed_rejected
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
            failed_qos0_offline,
            failed_expired,
            failed_rejected,
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
