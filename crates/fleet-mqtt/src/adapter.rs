//! One shard's MQTT sessions, driven by the shard loop.
//!
//! The shard owns each session's write half and protocol state (packet ids, in-flight messages,
//! keep-alive) in a compact `Session`; a small reader task per live connection decodes inbound
//! packets and sends them to the shard as events. Connecting happens in a short-lived task
//! (TCP connect, CONNECT, wait for CONNACK, SUBSCRIBE), bounded per shard by a semaphore so a
//! fleet that starts at once does not overflow the broker's listen backlog.

use std::collections::{HashMap, VecDeque};
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use fleet_core::profile::Qos;
use fleet_core::{Device, DeviceCtx, Publish, SimTime, TopicKind};
use fleet_engine::shard::Shard;
use fleet_engine::{Adapter, GatewayFault, NetInput, SendOutcome};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;

use crate::codec::{self, ConnectOptions, DecodeError, Inbound, Version, Will};

/// Connection attempts in progress at once per process (TCP handshake + CONNECT/CONNACK),
/// split over the shards: below mosquitto's listen backlog of 100, so a fleet that powers on at
/// once is not met with dropped SYNs (each costs a 1 s retry). Raise it for a remote broker,
/// where each attempt takes a round trip.
pub const DEFAULT_MAX_CONNECTING: usize = 96;
/// Bytes a session may queue when its socket is full; a publish beyond it fails (counted).
pub const MAX_PENDING_BYTES: usize = 256 * 1024;
/// QoS >= 1 messages a session may have unacknowledged; a publish beyond it fails (counted).
pub const MAX_INFLIGHT_PER_SESSION: usize = 1024;
/// Bytes a reader asks the socket for at a time.
const READ_CHUNK: usize = 512;
/// Keep-alive: a session is dead when nothing was heard for this many keep-alive periods.
const KEEPALIVE_GRACE: f64 = 1.5;
/// How long the reader of a cleanly closed session waits for the broker to close its end.
const CLOSE_LINGER: std::time::Duration = std::time::Duration::from_secs(2);
/// How often the engine calls `tick` (milliseconds; fleet_engine's ADAPTER_TICK).
const TICK_MS: u32 = fleet_engine::wall_clock_tick_ms();

/// Settings shared by every shard's adapter.
#[derive(Clone, Debug)]
pub struct MqttConfig {
    pub version: Version,
    /// Broker listeners; device `id` uses `targets[id % len]`.
    pub targets: Vec<SocketAddr>,
    /// Local addresses to bind; device `id` uses `source_addrs[id % len]` (empty: the OS picks).
    pub source_addrs: Vec<IpAddr>,
    pub tcp_nodelay: bool,
    /// Connection attempts in progress at once, for the whole process.
    pub max_connecting: usize,
    /// HTTP image downloads in progress at once, for the whole process (shared by the shards).
    pub download_slots: crate::http::DownloadSlots,
    /// MQTT over TLS (`mqtts://`); None: plain TCP.
    pub tls: Option<Arc<MqttTls>>,
    /// Per-device user names and passwords (`[broker.auth]`); None: CONNECT carries neither.
    pub auth: Option<Arc<fleet_core::security::Credentials>>,
}

/// The shard's side of a connection: where it writes.
pub enum Conn {
    /// Plain TCP: the socket's write half, written without waiting (`try_write`).
    Tcp(OwnedWriteHalf),
    /// TLS: a task owns the encrypted stream and writes what it is given, in order.
    Tls(mpsc::Sender<Bytes>),
}

/// Packets queued to a TLS session's writer task; beyond that the session's `out` holds them.
const TLS_WRITE_QUEUE: usize = 64;

impl Conn {
    /// Writes what the connection takes now; returns how much. Err on a dead connection.
    fn write_now(&self, bytes: &[u8]) -> Result<usize, ()> {
        match self {
            Conn::Tcp(w) => match w.try_write(bytes) {
                Ok(n) => Ok(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(0),
                Err(_) => Err(()),
            },
            Conn::Tls(tx) => match tx.try_reserve() {
                Ok(permit) => {
                    permit.send(Bytes::copy_from_slice(bytes));
                    Ok(bytes.len())
                }
                Err(mpsc::error::TrySendError::Full(())) => Ok(0),
                Err(mpsc::error::TrySendError::Closed(())) => Err(()),
            },
        }
    }
}

/// A connection that got its CONNACK, and what was read past it.
enum Established {
    Tcp(TcpStream, BytesMut),
    Tls(Box<crate::tls::TlsStream<TcpStream>>, BytesMut),
}

/// TLS settings shared by every session of the process.
#[derive(Clone, Debug)]
pub struct MqttTls {
    pub connector: crate::tls::TlsConnector,
    /// The broker URL's host (the name its certificate is checked against, unless
    /// `[broker.tls] server_name` says otherwise).
    pub host: String,
    /// Per-device client certificate and key paths.
    pub client_cert: Option<fleet_core::security::ClientCertTemplates>,
}

/// What the adapter's tasks tell the shard.
pub enum MqttEvent {
    Connected {
        dev: u32,
        epoch: u32,
        write: Conn,
        reader: JoinHandle<()>,
        latency_us: u64,
    },
    ConnectFailed {
        dev: u32,
        epoch: u32,
        reason: &'static str,
    },
    Packet {
        dev: u32,
        epoch: u32,
        packet: Inbound,
    },
    Closed {
        dev: u32,
        epoch: u32,
        reason: &'static str,
        malformed: bool,
    },
    DownloadProgress {
        dev: u32,
        epoch: u32,
        bytes: u64,
        total: Option<u64>,
    },
    DownloadEnded(Box<crate::downloads::Finished>),
    /// From a gateway's task (or this shard's own wake-up), for the gateway's children.
    Gateway(crate::gateway::GwEvent),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
enum State {
    #[default]
    Idle,
    Connecting,
    Up,
}

#[derive(Clone, Debug)]
struct Inflight {
    pkid: u16,
    telemetry: bool,
    /// QoS 2: PUBREC seen, waiting for PUBCOMP.
    released: bool,
    scheduled: SimTime,
    from_buffer: bool,
    /// Persistent sessions: the PUBLISH as written, sent again (DUP) after a reconnect.
    packet: Option<Box<[u8]>>,
}

/// A device's session as the shard holds it (about 120 bytes when idle).
#[derive(Default)]
struct Session {
    epoch: u32,
    state: State,
    write: Option<Conn>,
    reader: Option<JoinHandle<()>>,
    /// Bytes the socket has not taken yet.
    out: BytesMut,
    next_pkid: u16,
    inflight: VecDeque<Inflight>,
    keep_alive_s: u16,
    /// `clean_session = false`: unacknowledged QoS >= 1 messages outlive the connection and
    /// are sent again on the next one, as MQTT asks of a client with a persistent session.
    persistent: bool,
    /// Milliseconds of run time when the session last wrote and last heard something.
    last_write_ms: u32,
    last_read_ms: u32,
}

impl Session {
    fn telemetry_in_flight(&self) -> u32 {
        self.inflight.iter().filter(|i| i.telemetry).count() as u32
    }

    /// The next packet id for a PUBLISH (1 is the SUBSCRIBE's, sent on every connect).
    fn next_pkid(&mut self) -> u16 {
        self.next_pkid = self.next_pkid.wrapping_add(1);
        if self.next_pkid < 2 {
            self.next_pkid = 2;
        }
        self.next_pkid
    }

    /// Drops the connection; returns the write half, pending bytes and the telemetry messages
    /// given up. A persistent session keeps its unacknowledged messages unless `forget`.
    fn reset(&mut self, forget: bool) -> (Option<Conn>, BytesMut, u32) {
        self.epoch = self.epoch.wrapping_add(1);
        self.state = State::Idle;
        if let Some(r) = self.reader.take() {
            r.abort();
        }
        let mut lost = 0;
        if forget || !self.persistent {
            lost = self.telemetry_in_flight();
            self.inflight = VecDeque::new();
        }
        (self.write.take(), std::mem::take(&mut self.out), lost)
    }
}

/// The MQTT side of one shard.
pub struct MqttAdapter {
    cfg: Arc<MqttConfig>,
    /// One per device, made when the first device with a session of its own connects (a
    /// fleet of gateway children needs none: their sessions are their gateways').
    sessions: Vec<Session>,
    devices: usize,
    events: Option<mpsc::Sender<MqttEvent>>,
    connecting: Arc<Semaphore>,
    start: Instant,
    /// Sessions whose `out` is not empty.
    blocked: Vec<u32>,
    /// Cleanly closed sessions still flushing their last bytes (DISCONNECT last).
    closing: Vec<(Conn, BytesMut)>,
    open: u64,
    in_flight: u64,
    device_id: Vec<u8>,
    topic: Vec<u8>,
    packet: BytesMut,
    downloads: crate::downloads::Downloads,
    /// Devices cut off by a partition, and until when (shard time).
    partitioned: HashMap<u32, SimTime>,
    /// What arrived for them meanwhile, handed over when the partition heals.
    held: Vec<MqttEvent>,
    /// Tasks that still have a connection's end to see through: TLS writers (their last bytes
    /// and close_notify) and the readers of cleanly closed sessions (until the broker closes).
    closing_tasks: Arc<AtomicUsize>,
    /// Devices behind gateways (`[gateway]` profiles): their sessions are their gateways'.
    children: crate::gateway::Children,
}

/// Run time in milliseconds (wraps after 49 days; compared with wrapping arithmetic).
fn millis(now: SimTime) -> u32 {
    now.as_millis() as u32
}

/// `io_reason`, or the TLS reason when TLS caused the error (under TLS 1.3 a broker's refusal
/// of a client certificate arrives as an alert on the first read, after the handshake).
pub(crate) fn tls_io_reason(e: &std::io::Error) -> &'static str {
    crate::tls::error_reason(e).unwrap_or_else(|| io_reason(e))
}

pub(crate) fn io_reason(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(24) => "too many open files (EMFILE)",
        Some(99) => "no free local port for this source address (EADDRNOTAVAIL)",
        _ => match e.kind() {
            ErrorKind::ConnectionRefused => "connection refused",
            ErrorKind::ConnectionReset => "connection reset",
            ErrorKind::TimedOut => "timed out",
            ErrorKind::AddrNotAvailable => "source address not available",
            ErrorKind::UnexpectedEof => "closed by broker",
            _ => "network error",
        },
    }
}

impl MqttAdapter {
    /// The adapter for a shard of `devices` devices, one of `shards`.
    pub fn new(cfg: Arc<MqttConfig>, devices: usize, shards: u16) -> MqttAdapter {
        let n = devices;
        let connecting = (cfg.max_connecting / usize::from(shards.max(1))).max(1);
        let downloads = crate::downloads::Downloads::new(cfg.download_slots.clone());
        MqttAdapter {
            sessions: Vec::new(),
            devices: n,
            events: None,
            connecting: Arc::new(Semaphore::new(connecting)),
            start: Instant::now(),
            blocked: Vec::new(),
            closing: Vec::new(),
            open: 0,
            in_flight: 0,
            device_id: Vec::with_capacity(32),
            topic: Vec::with_capacity(96),
            packet: BytesMut::with_capacity(1024),
            downloads,
            partitioned: HashMap::new(),
            held: Vec::new(),
            closing_tasks: Arc::new(AtomicUsize::new(0)),
            children: crate::gateway::Children::new(&cfg, n, shards),
            cfg,
        }
    }

    /// Renders the topic of `kind` for `device` into `self.topic`; false if the profile has none.
    fn render_topic(&mut self, device: &Device, ctx: &DeviceCtx, kind: TopicKind) -> bool {
        let Some(template) = ctx.cohort.profile.identity.topic(kind) else {
            return false;
        };
        self.device_id.clear();
        device.render_device_id(ctx, &mut self.device_id);
        self.topic.clear();
        template.render_into(&ctx.vars(device.id, &self.device_id), &mut self.topic);
        true
    }

    fn is_partitioned(&self, dev: u32) -> bool {
        !self.partitioned.is_empty() && self.partitioned.contains_key(&dev)
    }

    /// Queues `self.packet` on the session. False if the session cannot take it.
    fn send_packet(&mut self, dev: u32, now: SimTime) -> bool {
        let held = self.is_partitioned(dev);
        let s = &mut self.sessions[dev as usize];
        let Some(w) = &s.write else { return false };
        if held {
            // Cut off: the bytes wait (TCP's retransmission queue) until the partition heals.
            if s.out.len() + self.packet.len() > MAX_PENDING_BYTES {
                return false;
            }
            s.out.extend_from_slice(&self.packet);
        } else if s.out.is_empty() {
            match w.write_now(&self.packet) {
                Ok(n) if n == self.packet.len() => {}
                Ok(n) => {
                    s.out.extend_from_slice(&self.packet[n..]);
                    self.blocked.push(dev);
                }
                Err(()) => return false, // the reader reports the closed socket
            }
        } else if s.out.len() + self.packet.len() > MAX_PENDING_BYTES {
            return false;
        } else {
            s.out.extend_from_slice(&self.packet);
        }
        s.last_write_ms = millis(now);
        true
    }

    fn lost(&mut self, dev: u32, reason: &'static str, out: &mut Vec<(u32, NetInput)>) {
        let s = &mut self.sessions[dev as usize];
        if s.state == State::Idle {
            return;
        }
        let was_up = s.state == State::Up;
        let (_, _, unacked) = s.reset(false);
        self.in_flight -= u64::from(unacked);
        if was_up {
            self.open -= 1;
            out.push((dev, NetInput::SessionLost { reason, unacked }));
        } else {
            out.push((dev, NetInput::ConnectFailed { reason }));
        }
    }

    /// Ends the partitions that are over: what waited to be written goes, what arrived meanwhile
    /// is handed over (for the connection it came on, if it is still the device's).
    fn heal(&mut self, now: SimTime, out: &mut Vec<(u32, NetInput)>) {
        let before = self.partitioned.len();
        self.partitioned.retain(|_, until| *until > now);
        if self.partitioned.len() == before {
            return;
        }
        for dev in 0..self.sessions.len() as u32 {
            let s = &self.sessions[dev as usize];
            if !s.out.is_empty() && !self.blocked.contains(&dev) && !self.is_partitioned(dev) {
                self.blocked.push(dev);
            }
        }
        let held = std::mem::take(&mut self.held);
        for event in held {
            self.on_event(event, now, out);
        }
    }

    /// A persistent session's first act on a new connection: every unacknowledged PUBLISH again
    /// (DUP set, same packet id), and PUBREL for QoS 2 messages the broker had received.
    fn resend_inflight(&mut self, dev: u32, now: SimTime) {
        let s = &mut self.sessions[dev as usize];
        if s.inflight.is_empty() {
            return;
        }
        let mut again = BytesMut::new();
        for i in &s.inflight {
            match &i.packet {
                _ if i.released => codec::write_ack(&mut again, codec::PUBREL, i.pkid),
                Some(p) => {
                    let start = again.len();
                    again.extend_from_slice(p);
                    again[start] |= codec::DUP;
                }
                None => {}
            }
        }
        std::mem::swap(&mut self.packet, &mut again);
        self.send_packet(dev, now);
        std::mem::swap(&mut self.packet, &mut again);
    }

    fn on_packet(
        &mut self,
        dev: u32,
        packet: Inbound,
        now: SimTime,
        out: &mut Vec<(u32, NetInput)>,
    ) {
        let s = &mut self.sessions[dev as usize];
        s.last_read_ms = millis(now);
        match packet {
            Inbound::PubAck(pkid) | Inbound::PubComp(pkid) => {
                if let Some(pos) = s.inflight.iter().position(|i| i.pkid == pkid)
                    && let Some(i) = s.inflight.remove(pos)
                    && i.telemetry
                {
                    self.in_flight -= 1;
                    out.push((
                        dev,
                        NetInput::Acked {
                            scheduled: i.scheduled,
                            from_buffer: i.from_buffer,
                        },
                    ));
                }
            }
            Inbound::PubRefused { pkid, reason } => {
                if let Some(pos) = s.inflight.iter().position(|i| i.pkid == pkid)
                    && let Some(i) = s.inflight.remove(pos)
                    && i.telemetry
                {
                    self.in_flight -= 1;
                    out.push((dev, NetInput::Rejected { reason }));
                }
            }
            Inbound::PubRec(pkid) => {
                if let Some(i) = s.inflight.iter_mut().find(|i| i.pkid == pkid) {
                    i.released = true;
                }
                self.packet.clear();
                codec::write_ack(&mut self.packet, codec::PUBREL, pkid);
                self.send_packet(dev, now);
            }
            Inbound::PubRel(pkid) => {
                self.packet.clear();
                codec::write_ack(&mut self.packet, codec::PUBCOMP, pkid);
                self.send_packet(dev, now);
            }
            Inbound::Publish {
                qos,
                pkid,
                topic,
                payload,
            } => {
                if qos > 0 {
                    self.packet.clear();
                    codec::write_ack(
                        &mut self.packet,
                        if qos == 1 {
                            codec::PUBACK
                        } else {
                            codec::PUBREC
                        },
                        pkid,
                    );
                    self.send_packet(dev, now);
                }
                out.push((dev, NetInput::Message { topic, payload }));
            }
            Inbound::SubAck { .. } | Inbound::PingResp => {}
            Inbound::Disconnect => self.lost(dev, "DISCONNECT from broker", out),
            Inbound::ConnAck { .. } | Inbound::Unexpected(_) => {
                out.push((dev, NetInput::Malformed));
                self.lost(dev, "protocol error", out);
            }
        }
    }
}

impl Adapter for MqttAdapter {
    type Event = MqttEvent;

    fn start(&mut self, events: mpsc::Sender<MqttEvent>) {
        self.children.start(events.clone());
        self.events = Some(events);
    }

    fn gateway_fault(&mut self, dev: u32, device: &Device, ctx: &DeviceCtx, f: GatewayFault) {
        self.children.fault(dev, device, ctx, f);
    }

    fn connect(&mut self, dev: u32, device: &Device, ctx: &DeviceCtx, now: SimTime) {
        if self.children.connect(dev, device, ctx) {
            return;
        }
        let Some(events) = self.events.clone() else {
            return;
        };
        let profile = &ctx.cohort.profile;
        let cfg = &self.cfg;
        let id = device.id.0 as usize;
        let target = cfg.targets[id % cfg.targets.len()];
        let source =
            (!cfg.source_addrs.is_empty()).then(|| cfg.source_addrs[id % cfg.source_addrs.len()]);
        let version = cfg.version;
        let nodelay = cfg.tcp_nodelay;

        // CONNECT: client id, keep-alive, session, will.
        self.device_id.clear();
        device.render_device_id(ctx, &mut self.device_id);
        let mut client_id = Vec::with_capacity(32);
        profile
            .identity
            .client_id
            .render_into(&ctx.vars(device.id, &self.device_id), &mut client_id);
        let mut will_payload = Vec::new();
        let has_will = profile.mqtt.last_will && self.render_topic(device, ctx, TopicKind::Status);
        if has_will {
            Shard::will_payload(device, ctx, now, &mut will_payload);
        }
        let login = match self.cfg.auth.clone() {
            None => None,
            Some(credentials) => {
                match credentials.lookup(&ctx.vars(device.id, &self.device_id)) {
                    Ok(login) => Some(login),
                    Err(why) => {
                        // Checked before the run for credentials files; a template cannot fail.
                        tracing::warn!(device = %String::from_utf8_lossy(&self.device_id), "{why}");
                        None
                    }
                }
            }
        };
        let keep_alive_s = (profile.mqtt.keep_alive.as_micros() / 1_000_000).min(65_535) as u16;
        let session_expiry_s = match (profile.mqtt.clean_session, profile.mqtt.session_expiry) {
            (_, Some(d)) => Some((d.as_micros() / 1_000_000).min(u64::from(u32::MAX)) as u32),
            (true, None) => None,
            (false, None) => Some(3600),
        };
        let mut hello = BytesMut::with_capacity(128);
        codec::write_connect(
            &mut hello,
            &ConnectOptions {
                version,
                client_id: &client_id,
                keep_alive_s,
                clean: profile.mqtt.clean_session,
                session_expiry_s,
                will: has_will.then(|| Will {
                    topic: &self.topic,
                    payload: &will_payload,
                    qos: 1,
                    retain: true,
                }),
                username: login.as_ref().map(|l| l.username.as_slice()),
                password: login
                    .as_ref()
                    .and_then(|l| l.password.as_ref())
                    .map(|p| p.expose()),
            },
        );
        let mut filters: Vec<Vec<u8>> = Vec::new();
        if let Some(t) = &profile.identity.command_topic
            && profile.commands != fleet_core::profile::CommandSet::default()
        {
            let mut filter = Vec::with_capacity(64);
            t.render_into(&ctx.vars(device.id, &self.device_id), &mut filter);
            filters.push(filter);
        }
        if let Some(ota) = &profile.ota {
            let vars = ctx.vars(device.id, &self.device_id);
            match ota.protocol {
                fleet_core::profile::OtaProtocol::AwsJobs => {
                    let mut thing = Vec::with_capacity(32);
                    ota.thing_name.render_into(&vars, &mut thing);
                    filters.extend(fleet_core::ota::aws_filters(&ota.aws_topic_prefix, &thing));
                }
                fleet_core::profile::OtaProtocol::Generic => {
                    let mut f = Vec::with_capacity(64);
                    ota.job_topic.render_into(&vars, &mut f);
                    filters.push(f);
                }
            }
        }
        let subscribe = (!filters.is_empty()).then(|| {
            let refs: Vec<&[u8]> = filters.iter().map(Vec::as_slice).collect();
            let mut sub =
                BytesMut::with_capacity(refs.iter().map(|f| f.len() + 4).sum::<usize>() + 8);
            let qos = if profile.identity.command_topic.is_some() {
                profile.command_qos as u8
            } else {
                1
            };
            codec::write_subscribe_many(&mut sub, version, 1, &refs, qos.max(1));
            sub
        });

        if self.sessions.is_empty() {
            self.sessions = (0..self.devices).map(|_| Session::default()).collect();
        }
        let Some(s) = self.sessions.get_mut(dev as usize) else {
            return;
        };
        let (_, _, unacked) = s.reset(false);
        debug_assert_eq!(unacked, 0, "connect() follows a close or a loss");
        s.state = State::Connecting;
        s.keep_alive_s = keep_alive_s;
        s.persistent = !profile.mqtt.clean_session;
        let epoch = s.epoch;
        let timeout = ctx.cohort.link.connect_timeout.to_std();
        if self.is_partitioned(dev) {
            // The SYN goes nowhere.
            tokio::spawn(async move {
                tokio::time::sleep(timeout).await;
                let reason = "connect timed out";
                let _ = events
                    .send(MqttEvent::ConnectFailed { dev, epoch, reason })
                    .await;
            });
            return;
        }
        let tls = self.cfg.tls.clone();
        let tls_writers = self.closing_tasks.clone();
        let cert_paths = tls
            .as_ref()
            .and_then(|t| t.client_cert.as_ref())
            .map(|c| c.paths(&ctx.vars(device.id, &self.device_id)));
        let permits = self.connecting.clone();
        tokio::spawn(async move {
            // Waiting for a slot (`--max-connecting`) is fleetsim's own queue, not the broker's:
            // the attempt's timeout and its latency start once it has one.
            let permit = permits.acquire_owned().await;
            let started = Instant::now();
            let result = tokio::time::timeout(timeout, async {
                let _permit = permit.map_err(|_| "shutting down")?;
                let mut tcp = tcp_connect(target, source, nodelay).await?;
                let sub = subscribe.as_deref();
                let Some(tls) = &tls else {
                    let leftover = mqtt_hello(&mut tcp, version, &hello, sub, io_reason).await?;
                    return Ok(Established::Tcp(tcp, leftover));
                };
                let certs = cert_paths.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
                let mut stream =
                    tls.connector
                        .connect(tcp, &tls.host, certs)
                        .await
                        .map_err(|e| {
                            tracing::debug!(device = dev, error = %e, "TLS connect failed");
                            e.reason
                        })?;
                let leftover = mqtt_hello(&mut stream, version, &hello, sub, tls_io_reason).await?;
                Ok(Established::Tls(Box::new(stream), leftover))
            })
            .await;
            let latency_us = started.elapsed().as_micros() as u64;
            match result {
                Ok(Ok(established)) => {
                    let Ok(permit) = events.reserve().await else {
                        return;
                    };
                    let (write, reader) = match established {
                        Established::Tcp(stream, leftover) => {
                            let (read, write) = stream.into_split();
                            let reader = tokio::spawn(read_loop(
                                dev,
                                epoch,
                                version,
                                read,
                                leftover,
                                events.clone(),
                            ));
                            (Conn::Tcp(write), reader)
                        }
                        Established::Tls(stream, leftover) => {
                            let (read, write) = tokio::io::split(*stream);
                            let (tx, rx) = mpsc::channel(TLS_WRITE_QUEUE);
                            tls_writers.fetch_add(1, Ordering::Relaxed);
                            tokio::spawn(write_loop_tls(write, rx, tls_writers));
                            let reader = tokio::spawn(read_loop_tls(
                                dev,
                                epoch,
                                version,
                                read,
                                leftover,
                                events.clone(),
                            ));
                            (Conn::Tls(tx), reader)
                        }
                    };
                    permit.send(MqttEvent::Connected {
                        dev,
                        epoch,
                        write,
                        reader,
                        latency_us,
                    });
                }
                Ok(Err(reason)) => {
                    let _ = events
                        .send(MqttEvent::ConnectFailed { dev, epoch, reason })
                        .await;
                }
                Err(_) => {
                    let _ = events
                        .send(MqttEvent::ConnectFailed {
                            dev,
                            epoch,
                            reason: "connect timed out",
                        })
                        .await;
                }
            }
        });
    }

    fn publish(
        &mut self,
        dev: u32,
        device: &Device,
        ctx: &DeviceCtx,
        p: &Publish,
        payload: &[u8],
    ) -> SendOutcome {
        if self.children.is_child(dev) {
            let version = self.cfg.version;
            return self.children.publish(dev, device, ctx, p, payload, version);
        }
        let Some(s) = self.sessions.get(dev as usize) else {
            return SendOutcome::Failed; // never connected
        };
        // A persistent session holds QoS >= 1 messages while it has no connection: they go
        // first thing on the next one (a message that waited out its link latency while the
        // session died).
        let queue_only = s.state != State::Up;
        if (queue_only && !(s.persistent && p.qos != Qos::AtMostOnce))
            || (p.qos != Qos::AtMostOnce && s.inflight.len() >= MAX_INFLIGHT_PER_SESSION)
        {
            return SendOutcome::Failed;
        }
        let payload = if p.topic == TopicKind::Ota {
            let (topic, body) = p.split(payload);
            self.topic.clear();
            self.topic.extend_from_slice(topic);
            body
        } else {
            if !self.render_topic(device, ctx, p.topic) {
                return SendOutcome::Failed;
            }
            payload
        };
        let s = &mut self.sessions[dev as usize];
        let pkid = if p.qos == Qos::AtMostOnce {
            0
        } else {
            s.next_pkid()
        };
        self.packet.clear();
        codec::write_publish(
            &mut self.packet,
            self.cfg.version,
            &self.topic,
            p.qos as u8,
            p.retain,
            pkid,
            payload,
        );
        let now = SimTime(self.start.elapsed().as_micros() as u64);
        if !queue_only && !self.send_packet(dev, now) {
            return SendOutcome::Failed;
        }
        if p.qos == Qos::AtMostOnce {
            return SendOutcome::Written;
        }
        let telemetry = p.topic == TopicKind::Telemetry;
        let s = &mut self.sessions[dev as usize];
        s.inflight.push_back(Inflight {
            pkid,
            telemetry,
            released: false,
            scheduled: p.scheduled,
            from_buffer: p.from_buffer,
            packet: s.persistent.then(|| self.packet[..].into()),
        });
        if telemetry {
            self.in_flight += 1;
            SendOutcome::AwaitingAck
        } else {
            SendOutcome::Written
        }
    }

    fn close(&mut self, dev: u32, clean: bool) -> u32 {
        if self.children.is_child(dev) {
            return self.children.close(dev);
        }
        let Some(s) = self.sessions.get_mut(dev as usize) else {
            return 0; // never connected
        };
        let was_up = s.state == State::Up;
        // Leaving cleanly, the reader stays until the broker closes the connection: closing it
        // with acknowledgements unread would make the kernel answer with a reset, and a broker
        // that had not yet read the DISCONNECT would drop it and publish the will.
        let reader = if clean { s.reader.take() } else { None };
        // A link that drops keeps a persistent session's messages for the next connection; a
        // device that leaves (reboot, end of run) forgets them.
        let (write, mut pending, unacked) = s.reset(clean);
        if let Some(mut reader) = reader {
            let tasks = self.closing_tasks.clone();
            tasks.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                if tokio::time::timeout(CLOSE_LINGER, &mut reader)
                    .await
                    .is_err()
                {
                    reader.abort();
                }
                tasks.fetch_sub(1, Ordering::Relaxed);
            });
        }
        if was_up {
            self.open -= 1;
        }
        self.in_flight -= u64::from(unacked);
        if let (true, Some(w)) = (clean, write) {
            codec::write_disconnect(&mut pending, self.cfg.version);
            match w.write_now(&pending) {
                Ok(n) if n == pending.len() => {}
                Ok(n) => {
                    let _ = pending.split_to(n);
                    self.closing.push((w, pending));
                }
                Err(()) => {}
            }
        }
        // An abrupt close drops the write half here: the broker sees the connection end without
        // DISCONNECT and publishes the will.
        unacked
    }

    fn partition(&mut self, dev: u32, until: SimTime) {
        let end = self.partitioned.entry(dev).or_insert(until);
        *end = (*end).max(until);
    }

    fn on_event(&mut self, event: MqttEvent, now: SimTime, out: &mut Vec<(u32, NetInput)>) {
        if let MqttEvent::Packet { dev, .. } | MqttEvent::Closed { dev, .. } = &event
            && self.is_partitioned(*dev)
        {
            self.held.push(event); // the device hears nothing meanwhile
            return;
        }
        match event {
            MqttEvent::Connected {
                dev,
                epoch,
                write,
                reader,
                latency_us,
            } => {
                let s = &mut self.sessions[dev as usize];
                if s.epoch != epoch || s.state != State::Connecting {
                    reader.abort(); // the device gave up on this attempt meanwhile
                    return;
                }
                s.state = State::Up;
                s.write = Some(write);
                s.reader = Some(reader);
                s.last_read_ms = millis(now);
                s.last_write_ms = millis(now);
                self.open += 1;
                self.resend_inflight(dev, now);
                out.push((dev, NetInput::Connected { latency_us }));
            }
            MqttEvent::ConnectFailed { dev, epoch, reason } => {
                let s = &mut self.sessions[dev as usize];
                if s.epoch == epoch && s.state == State::Connecting {
                    let (_, _, unacked) = s.reset(false);
                    debug_assert_eq!(unacked, 0, "only persistent sessions keep messages");
                    out.push((dev, NetInput::ConnectFailed { reason }));
                }
            }
            MqttEvent::Packet { dev, epoch, packet } => {
                if self.sessions[dev as usize].epoch == epoch
                    && self.sessions[dev as usize].state == State::Up
                {
                    self.on_packet(dev, packet, now, out);
                }
            }
            MqttEvent::Closed {
                dev,
                epoch,
                reason,
                malformed,
            } => {
                if self.sessions[dev as usize].epoch == epoch {
                    if malformed {
                        out.push((dev, NetInput::Malformed));
                    }
                    self.lost(dev, reason, out);
                }
            }
            MqttEvent::DownloadProgress {
                dev,
                epoch,
                bytes,
                total,
            } => {
                if self.downloads.current(dev, epoch) {
                    out.push((dev, NetInput::DownloadProgress { bytes, total }));
                }
            }
            MqttEvent::Gateway(ev) => {
                self.children.clock(now);
                self.children.on_event(ev, out);
            }
            MqttEvent::DownloadEnded(mut f) => {
                use crate::downloads::Ended;
                // Read before `finished` takes the state back for a resume.
                let (fetched, resumed, bytes) = (f.fetched, f.resumed, f.state.bytes);
                if !self.downloads.finished(&mut f) {
                    return;
                }
                match f.ended {
                    Ended::Done => out.push((
                        f.dev,
                        NetInput::DownloadDone {
                            bytes,
                            sha256: f.state.sha256_hex(),
                            fetched,
                            resumed,
                        },
                    )),
                    Ended::Failed(e) => out.push((
                        f.dev,
                        NetInput::DownloadFailed {
                            bytes,
                            retryable: e.is_retryable(),
                            reason: e.message().to_string(),
                            fetched,
                            resumed,
                        },
                    )),
                    Ended::Cancelled => {}
                }
            }
        }
    }

    fn download(&mut self, dev: u32, url: &str, offset: u64) {
        if let Some(events) = &self.events {
            self.downloads.start(dev, url, offset, events);
        }
    }

    fn cancel_download(&mut self, dev: u32) {
        self.downloads.cancel(dev);
    }

    fn tick(&mut self, now: SimTime, out: &mut Vec<(u32, NetInput)>) {
        self.children.tick(now, out);
        for (dev, reason) in self.downloads.refused.drain(..) {
            out.push((
                dev,
                NetInput::DownloadFailed {
                    bytes: 0,
                    retryable: false,
                    reason,
                    fetched: 0,
                    resumed: false,
                },
            ));
        }
        if !self.partitioned.is_empty() {
            self.heal(now, out);
        }
        let now_ms = millis(now);
        for dev in 0..self.sessions.len() as u32 {
            let s = &self.sessions[dev as usize];
            if s.state != State::Up || s.keep_alive_s == 0 {
                continue;
            }
            let ka_ms = u32::from(s.keep_alive_s) * 1000;
            // Ping two ticks early, so the broker never waits longer than the keep-alive
            // (and at least every half keep-alive for short ones).
            let ping_after_ms = ka_ms.saturating_sub(2 * TICK_MS).max(ka_ms / 2);
            if f64::from(now_ms.wrapping_sub(s.last_read_ms)) > f64::from(ka_ms) * KEEPALIVE_GRACE {
                self.lost(dev, "keep-alive timeout (broker silent)", out);
            } else if now_ms.wrapping_sub(s.last_write_ms) >= ping_after_ms {
                self.packet.clear();
                codec::write_pingreq(&mut self.packet);
                self.send_packet(dev, now);
            }
        }
    }

    fn flush(&mut self) -> bool {
        let mut i = 0;
        while i < self.blocked.len() {
            let dev = self.blocked[i];
            if self.is_partitioned(dev) {
                i += 1; // written when the partition heals
                continue;
            }
            let s = &mut self.sessions[dev as usize];
            let done = match &s.write {
                Some(w) if !s.out.is_empty() => match w.write_now(&s.out) {
                    Ok(n) => {
                        let _ = s.out.split_to(n);
                        s.out.is_empty()
                    }
                    Err(()) => true,
                },
                _ => true,
            };
            if done {
                s.out = BytesMut::new();
                self.blocked.swap_remove(i);
            } else {
                i += 1;
            }
        }
        self.closing
            .retain_mut(|(w, pending)| match w.write_now(pending) {
                Ok(n) => {
                    let _ = pending.split_to(n);
                    !pending.is_empty()
                }
                Err(()) => false,
            });
        !self.blocked.is_empty() || !self.closing.is_empty()
    }

    fn sessions_open(&self) -> u64 {
        self.open
    }

    fn in_flight(&self) -> u64 {
        self.in_flight + self.children.in_flight()
    }

    fn pending_bytes(&self) -> u64 {
        let open: usize = self
            .blocked
            .iter()
            .map(|d| self.sessions[*d as usize].out.len())
            .sum();
        let closing: usize = self.closing.iter().map(|(_, p)| p.len()).sum();
        // A TLS session's writer that is still running has bytes (at least close_notify) to
        // send, a lingering reader a close to see; while sessions are up this counts their
        // writers too, which is harmless: the engine asks only at the end, after every session
        // was closed.
        let tasks = self.closing_tasks.load(Ordering::Relaxed);
        (open + closing + tasks) as u64
    }
}

/// TCP connect, from `source` if given.
pub(crate) async fn tcp_connect(
    target: SocketAddr,
    source: Option<IpAddr>,
    nodelay: bool,
) -> Result<TcpStream, &'static str> {
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| io_reason(&e))?;
    if let Some(ip) = source {
        // The port is chosen at connect time, for this destination (see the function's doc).
        fleet_engine::process::bind_address_no_port(&socket);
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| io_reason(&e))?;
    }
    let stream = socket.connect(target).await.map_err(|e| io_reason(&e))?;
    let _ = stream.set_nodelay(nodelay);
    Ok(stream)
}

/// CONNECT, wait for CONNACK, SUBSCRIBE; returns what was read past the CONNACK.
pub(crate) async fn mqtt_hello<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    version: Version,
    hello: &[u8],
    subscribe: Option<&[u8]>,
    io_reason: fn(&std::io::Error) -> &'static str,
) -> Result<BytesMut, &'static str> {
    stream.write_all(hello).await.map_err(|e| io_reason(&e))?;
    stream.flush().await.map_err(|e| io_reason(&e))?;
    let mut buf = BytesMut::with_capacity(64);
    loop {
        match codec::read_packet(&mut buf, version) {
            Ok(Inbound::ConnAck { accepted: true, .. }) => break,
            Ok(Inbound::ConnAck {
                accepted: false,
                code,
                ..
            }) => return Err(connack_refusal(version, code)),
            Ok(_) => return Err("protocol error: packet before CONNACK"),
            Err(DecodeError::Malformed(_)) => return Err("malformed CONNACK"),
            Err(DecodeError::Incomplete) => {
                if stream.read_buf(&mut buf).await.map_err(|e| io_reason(&e))? == 0 {
                    return Err("closed by broker before CONNACK");
                }
            }
        }
    }
    if let Some(sub) = subscribe {
        stream.write_all(sub).await.map_err(|e| io_reason(&e))?;
        stream.flush().await.map_err(|e| io_reason(&e))?;
    }
    Ok(buf)
}

/// Why a broker refused a CONNECT, from its return (3.1.1) or reason (5) code.
fn connack_refusal(version: Version, code: u8) -> &'static str {
    match (version, code) {
        (Version::V311, 4) | (Version::V5, 0x86) => "refused by broker: bad user name or password",
        (Version::V311, 5) | (Version::V5, 0x87) => "refused by broker: not authorized",
        (Version::V311, 2) | (Version::V5, 0x85) => "refused by broker: client id not allowed",
        (Version::V311, 3) | (Version::V5, 0x88) | (Version::V5, 0x89) => {
            "refused by broker: server unavailable or busy"
        }
        (Version::V5, 0x97) => "refused by broker: quota exceeded",
        (Version::V5, 0x9F) => "refused by broker: connection rate exceeded",
        _ => "refused by broker (CONNACK)",
    }
}

/// Decodes the whole packets in `buf` and forwards them to the shard. False when the reader
/// must stop: a malformed packet (reported) or the shard gone.
async fn forward_packets(
    buf: &mut BytesMut,
    dev: u32,
    epoch: u32,
    version: Version,
    events: &mpsc::Sender<MqttEvent>,
) -> bool {
    loop {
        match codec::read_packet(buf, version) {
            Ok(packet) => {
                if events
                    .send(MqttEvent::Packet { dev, epoch, packet })
                    .await
                    .is_err()
                {
                    return false;
                }
            }
            Err(DecodeError::Incomplete) => return true,
            Err(DecodeError::Malformed(_)) => {
                let _ = events
                    .send(MqttEvent::Closed {
                        dev,
                        epoch,
                        reason: "malformed packet from broker",
                        malformed: true,
                    })
                    .await;
                return false;
            }
        }
    }
}

/// Decodes inbound packets of one plain connection and forwards them to the shard. Waits for
/// readability before taking a buffer, so idle sessions hold none.
async fn read_loop(
    dev: u32,
    epoch: u32,
    version: Version,
    read: OwnedReadHalf,
    mut buf: BytesMut,
    events: mpsc::Sender<MqttEvent>,
) {
    let reason = loop {
        if !forward_packets(&mut buf, dev, epoch, version, &events).await {
            return;
        }
        if buf.is_empty() && buf.capacity() > 0 {
            buf = BytesMut::new(); // idle sessions hold no read buffer
        }
        if let Err(e) = read.readable().await {
            break io_reason(&e);
        }
        buf.reserve(READ_CHUNK);
        match read.try_read_buf(&mut buf) {
            Ok(0) => break "closed by broker",
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => break io_reason(&e),
        }
    };
    closed(&events, dev, epoch, reason).await;
}

/// Tells the shard that a connection's reader saw it end (not malformed: `forward_packets`
/// reports that).
async fn closed(events: &mpsc::Sender<MqttEvent>, dev: u32, epoch: u32, reason: &'static str) {
    let _ = events
        .send(MqttEvent::Closed {
            dev,
            epoch,
            reason,
            malformed: false,
        })
        .await;
}

/// The reader of a TLS connection: decrypts, decodes and forwards.
async fn read_loop_tls<R: AsyncRead + Unpin>(
    dev: u32,
    epoch: u32,
    version: Version,
    mut read: R,
    mut buf: BytesMut,
    events: mpsc::Sender<MqttEvent>,
) {
    let reason = loop {
        if !forward_packets(&mut buf, dev, epoch, version, &events).await {
            return;
        }
        buf.reserve(READ_CHUNK);
        match read.read_buf(&mut buf).await {
            Ok(0) => break "closed by broker",
            Ok(_) => {}
            Err(e) => break tls_io_reason(&e),
        }
    };
    closed(&events, dev, epoch, reason).await;
}

/// The writer of a TLS connection: writes what the shard queues, in order; when the shard lets
/// go of the queue (the session ended), sends TLS close_notify and ends. Counted in `running`
/// (by its spawner) until it ends, so that the end of a run waits for the last DISCONNECTs.
async fn write_loop_tls<W: AsyncWrite + Unpin>(
    mut write: W,
    mut queue: mpsc::Receiver<Bytes>,
    running: Arc<AtomicUsize>,
) {
    struct Running(Arc<AtomicUsize>);
    impl Drop for Running {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
    let _running = Running(running);
    while let Some(bytes) = queue.recv().await {
        if write.write_all(&bytes).await.is_err() {
            return;
        }
        while let Ok(more) = queue.try_recv() {
            if write.write_all(&more).await.is_err() {
                return;
            }
        }
        if write.flush().await.is_err() {
            return;
        }
    }
    let _ = write.shutdown().await;
}
