//! The seam between the engine and a protocol: an `Adapter` owns the sessions of one shard's
//! devices. The shard calls it synchronously from its loop (connect, publish, close, tick); the
//! adapter's own tasks (connection set-up, socket readers) report back through a bounded
//! channel of `Self::Event`, which the shard hands to `on_event` to turn into `NetInput`s.

use bytes::Bytes;
use fleet_core::{Device, DeviceCtx, Publish, SimTime};
use tokio::sync::mpsc;

/// What a protocol tells the engine about a device's session.
#[derive(Clone, Debug, PartialEq)]
pub enum NetInput {
    /// The session is up; `latency_us` from the connect call to the broker's acceptance.
    Connected { latency_us: u64 },
    /// The attempt failed (refused, timed out, TCP error); `reason` for the log.
    ConnectFailed { reason: &'static str },
    /// The session died; `unacked` QoS >= 1 telemetry messages were in flight.
    SessionLost { reason: &'static str, unacked: u32 },
    /// A QoS >= 1 telemetry message was acknowledged.
    Acked {
        scheduled: SimTime,
        from_buffer: bool,
    },
    /// The broker refused a QoS >= 1 telemetry message (MQTT 5 reason code >= 0x80).
    Rejected { reason: u8 },
    /// A message arrived on one of the device's subscriptions (a command, an OTA job).
    Message { topic: Bytes, payload: Bytes },
    /// HTTP image download: progress, done (with the image's sha256, lowercase hex), failed.
    DownloadProgress { bytes: u64, total: Option<u64> },
    /// `fetched`: bytes this attempt received; `resumed`: it asked for a range.
    DownloadDone {
        bytes: u64,
        sha256: String,
        fetched: u64,
        resumed: bool,
    },
    DownloadFailed {
        bytes: u64,
        retryable: bool,
        reason: String,
        fetched: u64,
        resumed: bool,
    },
    /// An inbound packet could not be decoded (the adapter has closed the session).
    Malformed,
    /// The session of the device's gateway (profiles with `[gateway]`, wall clock): told once
    /// per gateway, to one shard, with `dev` one of the gateway's children there. The fleet's
    /// connection counters count gateway sessions, not children.
    Gateway(GatewayNote),
}

/// What became of a gateway's session.
#[derive(Clone, Debug, PartialEq)]
pub enum GatewayNote {
    Attempt,
    Connected { latency_us: u64 },
    ConnectFailed { reason: &'static str },
    Lost { reason: &'static str },
}

/// A fault of a gateway's uplink (every child of the gateway, on every shard, shares it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GatewayFault {
    /// The link is down until then: the session drops at once (the broker publishes the
    /// gateway's will) and comes back after.
    Outage { until: SimTime },
    /// Nothing passes until then, though the connection stays open.
    Partition { until: SimTime },
}

/// What became of a publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendOutcome {
    /// Handed to the socket; nothing more will be heard of it (QoS 0).
    Written,
    /// Handed to the socket; an `Acked` (or `SessionLost`) will follow (QoS >= 1).
    AwaitingAck,
    /// Could not be sent: no session, or the session's send queue is full.
    Failed,
}

/// The sessions of one shard. Implemented by the MQTT adapter; the engine knows no protocol.
pub trait Adapter {
    type Event: Send + 'static;

    /// Called once on the shard's thread, inside its runtime, before any device starts.
    fn start(&mut self, events: mpsc::Sender<Self::Event>);

    /// Open a session for local device `dev`. The outcome arrives later as an event.
    fn connect(&mut self, dev: u32, device: &Device, ctx: &DeviceCtx, now: SimTime);

    /// Send a message on the device's session.
    fn publish(
        &mut self,
        dev: u32,
        device: &Device,
        ctx: &DeviceCtx,
        p: &Publish,
        payload: &[u8],
    ) -> SendOutcome;

    /// Fetch device `dev`'s update image from `url`, from `offset`; progress and the outcome
    /// come back as `DownloadProgress` / `DownloadDone` / `DownloadFailed`.
    fn download(&mut self, dev: u32, url: &str, offset: u64);

    /// Stop device `dev`'s download (what it got so far is kept for a resume).
    fn cancel_download(&mut self, dev: u32);

    /// End the session: cleanly (DISCONNECT) or abruptly (the link died; the broker sends the
    /// will). Returns the number of QoS >= 1 telemetry messages that were still unacknowledged.
    fn close(&mut self, dev: u32, clean: bool) -> u32;

    /// A network partition: until `until`, nothing passes between device `dev` and the broker
    /// in either direction, though its connection stays open (keep-alive finds out; connect
    /// attempts time out). What was written meanwhile passes when it heals, as TCP would
    /// retransmit it. Adapters without sessions ignore it.
    fn partition(&mut self, _dev: u32, _until: SimTime) {}

    /// A fault of the uplink of device `dev`'s gateway (`dev` is a gateway's child). Called by
    /// every shard holding children of the gateway; adapters without gateways ignore it.
    fn gateway_fault(&mut self, _dev: u32, _device: &Device, _ctx: &DeviceCtx, _f: GatewayFault) {}

    /// Turns one of the adapter's events into inputs for devices.
    fn on_event(&mut self, event: Self::Event, now: SimTime, out: &mut Vec<(u32, NetInput)>);

    /// Called every `ADAPTER_TICK` (250 ms): keep-alive pings and checks, timeouts.
    fn tick(&mut self, now: SimTime, out: &mut Vec<(u32, NetInput)>);

    /// Retries writes that the sockets could not take at once. Called every loop turn; returns
    /// true while some remain (the loop then sleeps only briefly).
    fn flush(&mut self) -> bool;

    /// Live sessions and QoS >= 1 messages awaiting acknowledgement, for the metrics.
    fn sessions_open(&self) -> u64;
    fn in_flight(&self) -> u64;

    /// Bytes accepted but not yet written to sockets (shutdown waits for zero, briefly).
    fn pending_bytes(&self) -> u64;
}

/// An adapter with no sessions, for fleets whose devices speak no session protocol (Modbus
/// slaves only, serial lines): every attempt to connect fails at once.
#[derive(Debug, Default)]
pub struct IdleAdapter {
    failed: Vec<u32>,
    downloads: Vec<u32>,
}

impl Adapter for IdleAdapter {
    type Event = ();
    fn start(&mut self, _: mpsc::Sender<()>) {}
    fn connect(&mut self, dev: u32, _: &Device, _: &DeviceCtx, _: SimTime) {
        self.failed.push(dev);
    }
    fn publish(&mut self, _: u32, _: &Device, _: &DeviceCtx, _: &Publish, _: &[u8]) -> SendOutcome {
        SendOutcome::Failed
    }
    fn download(&mut self, dev: u32, _: &str, _: u64) {
        self.downloads.push(dev);
    }
    fn cancel_download(&mut self, _: u32) {}
    fn close(&mut self, _: u32, _: bool) -> u32 {
        0
    }
    fn on_event(&mut self, _: (), _: SimTime, _: &mut Vec<(u32, NetInput)>) {}
    fn tick(&mut self, _: SimTime, out: &mut Vec<(u32, NetInput)>) {
        out.extend(self.downloads.drain(..).map(|dev| {
            (
                dev,
                NetInput::DownloadFailed {
                    bytes: 0,
                    retryable: false,
                    reason: "no HTTP client without MQTT".into(),
                    fetched: 0,
                    resumed: false,
                },
            )
        }));
        out.extend(self.failed.drain(..).map(|dev| {
            (
                dev,
                NetInput::ConnectFailed {
                    reason: "no session protocol",
                },
            )
        }));
    }
    fn flush(&mut self) -> bool {
        false
    }
    fn sessions_open(&self) -> u64 {
        0
    }
    fn in_flight(&self) -> u64 {
        0
    }
    fn pending_bytes(&self) -> u64 {
        0
    }
}
