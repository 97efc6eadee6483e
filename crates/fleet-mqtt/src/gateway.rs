//! Gateways: one MQTT session per gateway, carrying the telemetry of its children (the devices
//! of a profile with `[gateway]`).
//!
//! A gateway's children are spread over the shards like any devices, so its session cannot
//! belong to one shard's adapter. A *mux* thread (its own current-thread runtime) runs one task
//! per gateway: it connects with the gateway's client id and will, subscribes to its children's
//! command topics with one wildcard filter, keeps the session alive, reconnects on the profile's
//! backoff, and writes what the shards hand it, in order. Everything per child stays in the
//! child's shard: each shard's adapter keeps a view of each gateway (up or down, its session
//! number, its children there and what they have in flight) and numbers its PUBLISHes from its
//! own share of the packet ids, so the mux routes an acknowledgement to the shard that sent the
//! message by its packet id alone. Nothing on a hot path is shared between shards.
//!
//! Shards and the mux talk over bounded channels: a shard sends `GwCmd`s to a gateway's task
//! (`Write` a packet on session `epoch`, a `Fault`, `Done`); the task sends `GwEvent`s to the
//! shards (`Up`, `Down`, acknowledgements, a child's command). A write for a session that has
//! ended is dropped: the shard counts what it had in flight on that session as unacknowledged
//! when it hears of the end (`Down` follows every acknowledgement of its session on the same
//! channel), so the accounting stays exact.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use fleet_core::load::{Cohort, GatewayRef};
use fleet_core::profile::{Backoff, Qos};
use fleet_core::{Device, DeviceCtx, DeviceId, Publish, SimTime, TopicKind};
use fleet_engine::{GatewayFault, GatewayNote, NetInput, SendOutcome};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};

use crate::adapter::{MqttConfig, MqttEvent, io_reason, mqtt_hello, tcp_connect, tls_io_reason};
use crate::codec::{self, ConnectOptions, DecodeError, Inbound, Version, Will};

/// A gateway: (cohort, its number in the cohort).
pub type GatewayKey = (u16, u32);

/// Packet ids below this are the gateway's own (its SUBSCRIBE and its status messages); shard
/// `r` of `S` numbers its PUBLISHes `FIRST_SHARD_PKID + r + S·j`.
pub const FIRST_SHARD_PKID: u16 = 8;
const PKID_SUBSCRIBE: u16 = 1;
const PKID_STATUS_ONLINE: u16 = 2;
const PKID_STATUS_OFFLINE: u16 = 3;
/// Commands a gateway's task holds from the shards: room for the burst after a reconnect,
/// when every child flushes its offline buffer at once. Past it a publish fails (counted).
pub const GATEWAY_QUEUE: usize = 65_536;
/// Bytes a gateway may have waiting for its socket; past it the session is given up ("send
/// queue full") and its children's messages in flight are counted as lost.
pub const GATEWAY_MAX_PENDING_BYTES: usize = 16 * 1024 * 1024;
/// How often a gateway's task checks its keep-alive.
const KEEPALIVE_TICK: Duration = Duration::from_millis(250);
/// Keep-alive: a session is dead when nothing was heard for this many periods.
const KEEPALIVE_GRACE: f64 = 1.5;
/// How long a gateway leaving cleanly waits for the broker to close the connection.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// How long the last shard to finish waits for the gateways to leave cleanly.
const FINISH_WAIT: Duration = Duration::from_secs(4);
/// Bytes a gateway's reader asks the socket for at a time.
const READ_CHUNK: usize = 16 * 1024;

/// What a shard asks of a gateway's task.
pub enum GwCmd {
    /// Shard `shard` has children of the gateway: tell it when the session comes and goes (and
    /// at once, if it is up).
    Want {
        shard: u16,
    },
    /// A packet to write on session `epoch` (dropped when that session is gone).
    Write {
        epoch: u32,
        bytes: Bytes,
    },
    /// A fault of the gateway's uplink, until an instant.
    Outage {
        until: Instant,
    },
    Partition {
        until: Instant,
    },
    /// Shard `shard` has finished the run.
    Done {
        shard: u16,
    },
}

/// What a gateway's task tells a shard.
pub enum GwEvent {
    /// Session `epoch` is up. `counted`: this shard counts it in the fleet's connections.
    Up {
        key: GatewayKey,
        epoch: u32,
        latency_us: u64,
        counted: bool,
    },
    Down {
        key: GatewayKey,
        epoch: u32,
        reason: &'static str,
        counted: bool,
    },
    /// An attempt or a failed one (to the counting shard only).
    Note { key: GatewayKey, note: GatewayNote },
    /// An acknowledgement of a PUBLISH this shard numbered.
    Packet {
        key: GatewayKey,
        epoch: u32,
        packet: Inbound,
    },
    /// A command for child `child` (a device id), to every shard with children of the gateway.
    Command {
        key: GatewayKey,
        child: u32,
        topic: Bytes,
        payload: Bytes,
    },
    /// The shard's own wake-up: attach the children that asked to connect.
    Attach,
}

/// What a gateway's task needs: its identity, session settings and children.
struct GatewayDesc {
    key: GatewayKey,
    name: Vec<u8>,
    client_id: Vec<u8>,
    version: Version,
    keep_alive_s: u16,
    connect_timeout: Duration,
    backoff: Backoff,
    target: Option<SocketAddr>,
    source: Option<IpAddr>,
    nodelay: bool,
    login: Option<fleet_core::security::Login>,
    cert_paths: Option<(PathBuf, PathBuf)>,
    status_topic: Vec<u8>,
    will_topic: Vec<u8>,
    retain: bool,
    last_will: bool,
    command_filter: Option<Vec<u8>>,
    command_qos: u8,
    cohort: Cohort,
    gateway: GatewayRef,
}

/// The gateways of one run, shared by the shards' adapters (all built from one
/// `Arc<MqttConfig>`).
pub struct GatewayHub {
    cfg: Arc<MqttConfig>,
    shards: u16,
    registered: Mutex<u16>,
    senders: Vec<OnceLock<mpsc::Sender<MqttEvent>>>,
    /// Gateway tasks by key, and the shards that have finished. Taken once per shard and
    /// gateway (to find its task), and when a shard finishes: never per message.
    tasks: Mutex<Tasks>,
    connecting: Arc<Semaphore>,
    /// Gateway tasks still running.
    running: Arc<AtomicUsize>,
}

#[derive(Default)]
struct Tasks {
    by_key: HashMap<GatewayKey, mpsc::Sender<GwCmd>>,
    done: Vec<bool>,
    mux: Option<Mux>,
}

/// The mux thread: a current-thread runtime the gateway tasks run on.
struct Mux {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Hubs of the runs in progress, found by their `MqttConfig` (each run builds one and gives a
/// clone of the `Arc` to every shard's adapter).
static HUBS: Mutex<Vec<(Weak<MqttConfig>, Weak<GatewayHub>)>> = Mutex::new(Vec::new());

impl GatewayHub {
    /// The hub of the run whose adapters share `cfg`.
    pub fn for_config(cfg: &Arc<MqttConfig>, shards: u16) -> Arc<GatewayHub> {
        let mut hubs = HUBS.lock().unwrap_or_else(|e| e.into_inner());
        hubs.retain(|(c, h)| c.strong_count() > 0 && h.strong_count() > 0);
        let found = hubs
            .iter()
            .find(|(c, _)| std::ptr::eq(c.as_ptr(), Arc::as_ptr(cfg)))
            .and_then(|(_, h)| h.upgrade());
        if let Some(h) = found {
            return h;
        }
        let shards = shards.max(1);
        let hub = Arc::new(GatewayHub {
            cfg: cfg.clone(),
            shards,
            registered: Mutex::new(0),
            senders: (0..shards).map(|_| OnceLock::new()).collect(),
            tasks: Mutex::new(Tasks {
                done: vec![false; usize::from(shards)],
                ..Tasks::default()
            }),
            connecting: Arc::new(Semaphore::new(cfg.max_connecting.max(1))),
            running: Arc::new(AtomicUsize::new(0)),
        });
        hubs.push((Arc::downgrade(cfg), Arc::downgrade(&hub)));
        hub
    }

    /// A shard's adapter joins with its event channel; returns its number (0..shards).
    fn register(&self, events: mpsc::Sender<MqttEvent>) -> u16 {
        let mut n = self.registered.lock().unwrap_or_else(|e| e.into_inner());
        let shard = (*n).min(self.shards - 1);
        *n += 1;
        let _ = self.senders[usize::from(shard)].set(events);
        shard
    }

    fn sender(&self, shard: u16) -> Option<&mpsc::Sender<MqttEvent>> {
        self.senders.get(usize::from(shard))?.get()
    }

    /// The task of gateway `key`, started with `desc()` if it has none yet; `shard` wants it.
    fn task(
        self: &Arc<Self>,
        key: GatewayKey,
        shard: u16,
        desc: impl FnOnce() -> GatewayDesc,
    ) -> Option<mpsc::Sender<GwCmd>> {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = tasks.by_key.get(&key) {
            let _ = tx.try_send(GwCmd::Want { shard });
            return Some(tx.clone());
        }
        if tasks.mux.is_none() {
            tasks.mux = Some(start_mux().ok()?);
        }
        let handle = tasks.mux.as_ref()?.handle.clone();
        let (tx, rx) = mpsc::channel(GATEWAY_QUEUE);
        let done = tasks.done.clone();
        self.running.fetch_add(1, Ordering::Relaxed);
        handle.spawn(run_gateway(desc(), rx, self.clone(), done, shard));
        tasks.by_key.insert(key, tx.clone());
        Some(tx)
    }

    /// Shard `shard` has finished. The last one waits (briefly) for the gateways to leave
    /// cleanly and stops the mux.
    fn shard_done(&self, shard: u16) {
        let (senders, last) = {
            let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(d) = tasks.done.get_mut(usize::from(shard)) {
                *d = true;
            }
            let senders: Vec<_> = tasks.by_key.values().cloned().collect();
            (senders, tasks.done.iter().all(|d| *d))
        };
        let in_runtime = tokio::runtime::Handle::try_current().is_ok();
        for tx in senders {
            // The shard's runtime has ended: waiting for room is fine here.
            let _ = match tx.try_send(GwCmd::Done { shard }) {
                Err(mpsc::error::TrySendError::Full(cmd)) if !in_runtime => {
                    tx.blocking_send(cmd).map_err(|_| ())
                }
                _ => Ok(()),
            };
        }
        if !last {
            return;
        }
        let deadline = Instant::now() + FINISH_WAIT;
        while self.running.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let mux = self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .mux
            .take();
        if let Some(mut mux) = mux {
            if let Some(stop) = mux.stop.take() {
                let _ = stop.send(());
            }
            if let Some(t) = mux.thread.take() {
                let _ = t.join();
            }
        }
    }
}

fn start_mux() -> std::io::Result<Mux> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("gateways".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let _ = tx.send(Ok(rt.handle().clone()));
            rt.block_on(async {
                let _ = stop_rx.await;
            });
        })?;
    let handle = rx
        .recv()
        .map_err(|_| std::io::Error::other("the gateway thread ended at once"))??;
    Ok(Mux {
        handle,
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

// ---------------------------------------------------------------- the gateway's task --------

/// How a session ended.
enum End {
    Lost(&'static str),
    Outage,
    /// Every shard has finished (the gateway left cleanly), or the run is gone.
    Finished,
}

/// A gateway's task's state across its sessions.
struct Task {
    desc: GatewayDesc,
    hub: Arc<GatewayHub>,
    cmds: mpsc::Receiver<GwCmd>,
    interested: Vec<bool>,
    done: Vec<bool>,
    epoch: u32,
    up: bool,
    attempt: u16,
    rng: u64,
    outage_until: Option<Instant>,
    partition_until: Option<Instant>,
}

impl Task {
    fn all_done(&self) -> bool {
        self.done.iter().all(|d| *d)
    }

    /// The shard that counts this gateway's session: the first one with children of it still
    /// running.
    fn counting_shard(&self) -> Option<u16> {
        (0..self.interested.len())
            .find(|&s| self.interested[s] && !self.done[s])
            .map(|s| s as u16)
    }

    async fn send(&self, shard: u16, ev: GwEvent) {
        if let Some(tx) = self.hub.sender(shard) {
            let _ = tx.send(MqttEvent::Gateway(ev)).await;
        }
    }

    async fn note(&self, note: GatewayNote) {
        if let Some(s) = self.counting_shard() {
            let key = self.desc.key;
            self.send(s, GwEvent::Note { key, note }).await;
        }
    }

    async fn broadcast_up(&self, latency_us: u64) {
        let counting = self.counting_shard();
        for s in 0..self.interested.len() as u16 {
            if self.interested[usize::from(s)] && !self.done[usize::from(s)] {
                let ev = GwEvent::Up {
                    key: self.desc.key,
                    epoch: self.epoch,
                    latency_us,
                    counted: counting == Some(s),
                };
                self.send(s, ev).await;
            }
        }
    }

    async fn broadcast_down(&self, reason: &'static str) {
        let counting = self.counting_shard();
        for s in 0..self.interested.len() as u16 {
            if self.interested[usize::from(s)] && !self.done[usize::from(s)] {
                let ev = GwEvent::Down {
                    key: self.desc.key,
                    epoch: self.epoch,
                    reason,
                    counted: counting == Some(s),
                };
                self.send(s, ev).await;
            }
        }
    }

    /// A command while no session is up: interest and faults are kept, writes dropped (their
    /// session is gone; the shards count them). False when every shard has finished.
    fn idle_command(&mut self, cmd: Option<GwCmd>) -> bool {
        match cmd {
            None => {
                self.done.iter_mut().for_each(|d| *d = true);
            }
            Some(GwCmd::Want { shard }) => self.want(shard),
            Some(GwCmd::Write { .. }) => {}
            Some(GwCmd::Outage { until }) => {
                self.outage_until = Some(self.outage_until.map_or(until, |u| u.max(until)));
            }
            Some(GwCmd::Partition { until }) => {
                self.partition_until = Some(self.partition_until.map_or(until, |u| u.max(until)));
            }
            Some(GwCmd::Done { shard }) => self.finish(shard),
        }
        !self.all_done()
    }

    fn want(&mut self, shard: u16) {
        if let Some(i) = self.interested.get_mut(usize::from(shard)) {
            *i = true;
        }
    }

    fn finish(&mut self, shard: u16) {
        if let Some(d) = self.done.get_mut(usize::from(shard)) {
            *d = true;
        }
    }

    /// Waits until `until`, serving commands. False when every shard has finished.
    async fn wait(&mut self, until: Instant) -> bool {
        loop {
            if self.all_done() {
                return false;
            }
            tokio::select! {
                cmd = self.cmds.recv() => {
                    if !self.idle_command(cmd) {
                        return false;
                    }
                }
                _ = tokio::time::sleep_until(until.into()) => return true,
            }
        }
    }

    /// The delay before the next attempt: the profile's backoff, with its jitter.
    fn backoff(&mut self) -> Duration {
        self.rng = fleet_core::seed::mix64(self.rng);
        let u = (self.rng >> 11) as f64 / (1u64 << 53) as f64;
        let d = fleet_core::device::backoff_delay(&self.desc.backoff, self.attempt, u);
        self.attempt = self.attempt.saturating_add(1);
        d.to_std()
    }
}

/// A gateway's life: connect, serve the session, reconnect after its backoff, until every
/// shard has finished.
async fn run_gateway(
    desc: GatewayDesc,
    cmds: mpsc::Receiver<GwCmd>,
    hub: Arc<GatewayHub>,
    done: Vec<bool>,
    first: u16,
) {
    let running = hub.running.clone();
    let rng = fleet_core::seed::mix64(u64::from(desc.key.0) << 32 | u64::from(desc.key.1));
    let mut interested = vec![false; done.len()];
    if let Some(i) = interested.get_mut(usize::from(first)) {
        *i = true;
    }
    let mut t = Task {
        interested,
        done,
        desc,
        hub,
        cmds,
        epoch: 0,
        up: false,
        attempt: 0,
        rng,
        outage_until: None,
        partition_until: None,
    };
    loop {
        // Take the commands that came meanwhile (interest, faults) before deciding.
        while let Ok(cmd) = t.cmds.try_recv() {
            t.idle_command(Some(cmd));
        }
        if t.all_done() {
            break;
        }
        if let Some(until) = t.outage_until
            && Instant::now() < until
        {
            // No network: the attempt is skipped, as a device's is, on the backoff.
            let retry = Instant::now() + t.backoff();
            if !t.wait(retry).await {
                break;
            }
            continue;
        }
        t.note(GatewayNote::Attempt).await;
        let started = Instant::now();
        let result = if t.partition_until.is_some_and(|u| Instant::now() < u) {
            // The SYN goes nowhere: the attempt times out.
            let timeout = Instant::now() + t.desc.connect_timeout;
            if !t.wait(timeout).await {
                break;
            }
            Err("connect timed out")
        } else {
            connect(&t.desc, &t.hub).await
        };
        match result {
            Ok(established) => {
                t.epoch = t.epoch.wrapping_add(1);
                t.attempt = 0;
                t.up = true;
                // A shard that asked meanwhile hears of the session with everyone else.
                while let Ok(cmd) = t.cmds.try_recv() {
                    t.idle_command(Some(cmd));
                }
                t.broadcast_up(started.elapsed().as_micros() as u64).await;
                let end = match established {
                    Established::Tcp(s, buf) => {
                        let (rd, wr) = s.into_split();
                        session(&mut t, rd, wr, buf, false).await
                    }
                    Established::Tls(s, buf) => {
                        let (rd, wr) = tokio::io::split(*s);
                        session(&mut t, rd, wr, buf, true).await
                    }
                };
                t.up = false;
                match end {
                    End::Finished => break,
                    End::Outage => t.broadcast_down("link down (outage)").await,
                    End::Lost(reason) => {
                        t.broadcast_down(reason).await;
                        let retry = Instant::now() + t.backoff();
                        if !t.wait(retry).await {
                            break;
                        }
                    }
                }
            }
            Err(reason) => {
                t.note(GatewayNote::ConnectFailed { reason }).await;
                let retry = Instant::now() + t.backoff();
                if !t.wait(retry).await {
                    break;
                }
            }
        }
    }
    running.fetch_sub(1, Ordering::Relaxed);
}

enum Established {
    Tcp(TcpStream, BytesMut),
    Tls(Box<crate::tls::TlsStream<TcpStream>>, BytesMut),
}

/// Milliseconds since the Unix epoch (the `ts` of the gateway's status messages).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn status_payload(desc: &GatewayDesc, online: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    fleet_core::payload::encode_gateway_status(
        &desc.name,
        online,
        now_ms(),
        desc.gateway.children,
        &mut out,
    );
    out
}

/// TCP (and TLS) connect, CONNECT with the gateway's will, CONNACK, SUBSCRIBE to its
/// children's commands.
async fn connect(desc: &GatewayDesc, hub: &GatewayHub) -> Result<Established, &'static str> {
    let will_payload = status_payload(desc, false);
    let mut hello = BytesMut::with_capacity(256);
    codec::write_connect(
        &mut hello,
        &ConnectOptions {
            version: desc.version,
            client_id: &desc.client_id,
            keep_alive_s: desc.keep_alive_s,
            clean: true,
            session_expiry_s: None,
            will: desc.last_will.then(|| Will {
                topic: &desc.will_topic,
                payload: &will_payload,
                qos: 1,
                retain: desc.retain,
            }),
            username: desc.login.as_ref().map(|l| l.username.as_slice()),
            password: desc
                .login
                .as_ref()
                .and_then(|l| l.password.as_ref())
                .map(|p| p.expose()),
        },
    );
    let subscribe = desc.command_filter.as_ref().map(|f| {
        let mut sub = BytesMut::with_capacity(f.len() + 16);
        let filters: [&[u8]; 1] = [f];
        codec::write_subscribe_many(
            &mut sub,
            desc.version,
            PKID_SUBSCRIBE,
            &filters,
            desc.command_qos.max(1),
        );
        sub
    });
    let tls = hub.cfg.tls.clone();
    let attempt = async {
        let _permit = hub
            .connecting
            .acquire()
            .await
            .map_err(|_| "shutting down")?;
        let target = desc.target.ok_or("no broker address")?;
        let mut tcp = tcp_connect(target, desc.source, desc.nodelay).await?;
        let sub = subscribe.as_deref();
        let Some(tls) = &tls else {
            let left = mqtt_hello(&mut tcp, desc.version, &hello, sub, io_reason).await?;
            return Ok(Established::Tcp(tcp, left));
        };
        let certs = desc
            .cert_paths
            .as_ref()
            .map(|(c, k)| (c.as_path(), k.as_path()));
        let mut stream = tls
            .connector
            .connect(tcp, &tls.host, certs)
            .await
            .map_err(|e| e.reason)?;
        let left = mqtt_hello(&mut stream, desc.version, &hello, sub, tls_io_reason).await?;
        Ok(Established::Tls(Box::new(stream), left))
    };
    match tokio::time::timeout(desc.connect_timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err("connect timed out"),
    }
}

/// Bytes a gateway takes from its commands before it writes them out (one write per batch).
const WRITE_BATCH: usize = 64 * 1024;

/// What the gateway has to write on its session, written by its own task (no hop to another):
/// the commands that arrive while the socket is busy join the next write.
struct Writer {
    out: BytesMut,
    /// The stream buffers (TLS): flush once `out` has gone.
    flush: bool,
    needs_flush: bool,
    last_write: Instant,
}

impl Writer {
    /// Queues `bytes`; false when past its bound (the session must be given up).
    fn send(&mut self, bytes: &[u8]) -> bool {
        self.out.extend_from_slice(bytes);
        self.last_write = Instant::now();
        self.out.len() <= GATEWAY_MAX_PENDING_BYTES
    }

    fn packet(&mut self, f: impl FnOnce(&mut BytesMut)) -> bool {
        f(&mut self.out);
        self.last_write = Instant::now();
        self.out.len() <= GATEWAY_MAX_PENDING_BYTES
    }
}

/// Writes some of `out` (how much: the result), or flushes when it is empty (0). Cancel safe,
/// like both of those.
async fn write_or_flush<W: AsyncWrite + Unpin>(wr: &mut W, out: &[u8]) -> std::io::Result<usize> {
    if out.is_empty() {
        wr.flush().await.map(|()| 0)
    } else {
        wr.write(out).await
    }
}

/// Serves one session: writes, acknowledgements (routed to the shard that numbered the
/// message), commands (to the shards with children), keep-alive, faults, the clean end.
/// `flush`: the write half buffers (TLS).
async fn session<R, W>(t: &mut Task, mut rd: R, mut wr: W, mut buf: BytesMut, flush: bool) -> End
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut w = Writer {
        out: BytesMut::with_capacity(1024),
        flush,
        needs_flush: false,
        last_write: Instant::now(),
    };
    let version = t.desc.version;
    let status = status_payload(&t.desc, true);
    let (topic, retain) = (t.desc.status_topic.clone(), t.desc.retain);
    w.packet(|b| codec::write_publish(b, version, &topic, 1, retain, PKID_STATUS_ONLINE, &status));
    let mut held: Vec<Bytes> = Vec::new();
    let mut last_read = Instant::now();
    let ka = Duration::from_secs(u64::from(t.desc.keep_alive_s));
    let ping_after = ka.saturating_sub(Duration::from_millis(500)).max(ka / 2);
    let mut tick = tokio::time::interval(KEEPALIVE_TICK);
    loop {
        let partitioned = t.partition_until.filter(|u| Instant::now() < *u);
        let writable = partitioned.is_none() && !w.out.is_empty();
        let flushing = partitioned.is_none() && w.out.is_empty() && w.needs_flush;
        tokio::select! {
            biased;
            cmd = t.cmds.recv(), if w.out.len() < WRITE_BATCH => match cmd {
                None => return End::Finished,
                Some(GwCmd::Write { epoch, bytes }) if epoch == t.epoch => {
                    if partitioned.is_some() {
                        // Cut off: TCP would hold the bytes until the partition heals.
                        held.push(bytes);
                    } else if !w.send(&bytes) {
                        return End::Lost("send queue full");
                    }
                }
                Some(GwCmd::Write { .. }) => {}
                Some(GwCmd::Want { shard }) => {
                    t.want(shard);
                    let ev = GwEvent::Up {
                        key: t.desc.key,
                        epoch: t.epoch,
                        latency_us: 0,
                        counted: false,
                    };
                    t.send(shard, ev).await;
                }
                Some(GwCmd::Outage { until }) => {
                    t.outage_until = Some(t.outage_until.map_or(until, |u| u.max(until)));
                    return End::Outage;
                }
                Some(GwCmd::Partition { until }) => {
                    t.partition_until = Some(t.partition_until.map_or(until, |u| u.max(until)));
                }
                Some(GwCmd::Done { shard }) => {
                    t.finish(shard);
                    if t.all_done() {
                        leave(t, w, &mut rd, &mut wr, &mut buf).await;
                        return End::Finished;
                    }
                }
            },
            r = rd.read_buf(&mut buf), if partitioned.is_none() => match r {
                Ok(0) => return End::Lost("closed by broker"),
                Err(e) => return End::Lost(tls_io_reason(&e)),
                Ok(_) => {
                    last_read = Instant::now();
                    if let Some(end) = route_packets(t, &mut w, &mut buf).await {
                        return end;
                    }
                    if buf.is_empty() && buf.capacity() > READ_CHUNK * 4 {
                        buf = BytesMut::new();
                    }
                    buf.reserve(READ_CHUNK);
                }
            },
            r = write_or_flush(&mut wr, &w.out), if writable || flushing => match r {
                Ok(0) if writable => return End::Lost("closed by broker"),
                Err(e) => return End::Lost(tls_io_reason(&e)),
                Ok(n) => {
                    let _ = w.out.split_to(n);
                    // A write leaves bytes in a TLS stream's buffer: flush once all are out.
                    w.needs_flush = w.flush && writable;
                    if w.out.is_empty() && w.out.capacity() > WRITE_BATCH * 4 {
                        w.out = BytesMut::with_capacity(1024);
                    }
                }
            },
            _ = tokio::time::sleep_until(partitioned.unwrap_or_else(Instant::now).into()), if partitioned.is_some() => {
                t.partition_until = None;
                for b in held.drain(..) {
                    w.send(&b);
                }
            }
            _ = tick.tick() => {
                if ka.is_zero() {
                    continue;
                }
                if last_read.elapsed().as_secs_f64() > ka.as_secs_f64() * KEEPALIVE_GRACE {
                    return End::Lost("keep-alive timeout (broker silent)");
                }
                if partitioned.is_none() && w.last_write.elapsed() >= ping_after {
                    w.packet(codec::write_pingreq);
                }
            }
        }
    }
    // Returning drops both halves: an abrupt end, no DISCONNECT (the broker sends the will).
}

/// Decodes what was read and sends each packet where it belongs. Some(end) when the session
/// must end.
async fn route_packets(t: &mut Task, w: &mut Writer, buf: &mut BytesMut) -> Option<End> {
    let version = t.desc.version;
    let shards = t.interested.len() as u16;
    loop {
        let packet = match codec::read_packet(buf, version) {
            Ok(p) => p,
            Err(DecodeError::Incomplete) => return None,
            Err(DecodeError::Malformed(_)) => {
                return Some(End::Lost("malformed packet from broker"));
            }
        };
        match packet {
            Inbound::PubAck(pkid) | Inbound::PubComp(pkid) | Inbound::PubRefused { pkid, .. }
                if pkid >= FIRST_SHARD_PKID =>
            {
                let owner = (pkid - FIRST_SHARD_PKID) % shards.max(1);
                let ev = GwEvent::Packet {
                    key: t.desc.key,
                    epoch: t.epoch,
                    packet,
                };
                t.send(owner, ev).await;
            }
            Inbound::PubAck(_) | Inbound::PubComp(_) | Inbound::PubRefused { .. } => {}
            Inbound::PubRec(pkid) => {
                w.packet(|b| codec::write_ack(b, codec::PUBREL, pkid));
            }
            Inbound::PubRel(pkid) => {
                w.packet(|b| codec::write_ack(b, codec::PUBCOMP, pkid));
            }
            Inbound::Publish {
                qos,
                pkid,
                topic,
                payload,
            } => {
                if qos > 0 {
                    let kind = if qos == 1 {
                        codec::PUBACK
                    } else {
                        codec::PUBREC
                    };
                    w.packet(|b| codec::write_ack(b, kind, pkid));
                }
                if let Some(child) = command_child(&t.desc, &topic) {
                    for s in 0..shards {
                        if t.interested[usize::from(s)] && !t.done[usize::from(s)] {
                            let ev = GwEvent::Command {
                                key: t.desc.key,
                                child,
                                topic: topic.clone(),
                                payload: payload.clone(),
                            };
                            t.send(s, ev).await;
                        }
                    }
                }
            }
            Inbound::SubAck { .. } | Inbound::PingResp => {}
            Inbound::Disconnect => return Some(End::Lost("DISCONNECT from broker")),
            Inbound::ConnAck { .. } | Inbound::Unexpected(_) => {
                return Some(End::Lost("protocol error"));
            }
        }
    }
}

/// The child a command on `topic` is for: the topic matches the gateway's command filter, and
/// its `+` level is the device id of one of the gateway's children.
fn command_child(desc: &GatewayDesc, topic: &[u8]) -> Option<u32> {
    let filter = desc.command_filter.as_ref()?;
    let mut device = None;
    let mut levels = topic.split(|b| *b == b'/');
    for f in filter.split(|b| *b == b'/') {
        let level = levels.next()?;
        if f == b"+" {
            device = Some(level);
        } else if f != level {
            return None;
        }
    }
    if levels.next().is_some() {
        return None;
    }
    let device = device?;
    let mut rendered = Vec::with_capacity(device.len());
    (desc.gateway.first.0..desc.gateway.first.0 + desc.gateway.children).find(|&id| {
        rendered.clear();
        desc.cohort.render_device_id(DeviceId(id), &mut rendered);
        rendered == device
    })
}

/// The clean end: the gateway's offline status, DISCONNECT, then wait (briefly) for the broker
/// to close the connection, so the will is not published.
async fn leave<R, W>(t: &mut Task, mut w: Writer, rd: &mut R, wr: &mut W, buf: &mut BytesMut)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let version = t.desc.version;
    let status = status_payload(&t.desc, false);
    let (topic, retain) = (t.desc.will_topic.clone(), t.desc.retain);
    w.packet(|b| codec::write_publish(b, version, &topic, 1, retain, PKID_STATUS_OFFLINE, &status));
    w.packet(|b| codec::write_disconnect(b, version));
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        wr.write_all(&w.out).await?;
        wr.flush().await?;
        wr.shutdown().await
    })
    .await;
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        loop {
            buf.clear();
            match rd.read_buf(buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

// ---------------------------------------------------------------- a shard's side ------------

/// Where a child stands with its gateway (per device, in its shard).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(u8)]
enum Child {
    /// Not a gateway's child, or not seen yet.
    #[default]
    Unknown,
    /// Known, without a session (not connecting).
    Idle,
    /// Asked to connect: attached when the gateway's session is (or comes) up.
    Waiting,
    /// Online through the gateway.
    Attached,
}

/// A QoS >= 1 message of a child, sent through its gateway and not yet acknowledged.
struct Inflight {
    dev: u32,
    telemetry: bool,
    scheduled: SimTime,
    from_buffer: bool,
}

/// One gateway as one shard sees it.
struct View {
    cmds: mpsc::Sender<GwCmd>,
    /// The gateway's id, rendered once (for its children's topics).
    name: Vec<u8>,
    /// The session it is up on.
    epoch: Option<u32>,
    /// This shard's children of it (local index, device id), in the order they were seen.
    members: Vec<(u32, u32)>,
    inflight: HashMap<u16, Inflight>,
    next_j: u32,
    outage_until: Option<Instant>,
    partition_until: Option<Instant>,
}

/// The gateway children of one shard: their gateways' views and their per-child state.
pub struct Children {
    hub: Arc<GatewayHub>,
    /// This shard's number in the hub (its share of the packet ids), once started.
    shard: u16,
    events: Option<mpsc::Sender<MqttEvent>>,
    views: Vec<View>,
    view_of: HashMap<GatewayKey, u32>,
    /// Per local device: its gateway's view (u32::MAX: none) and its state. Empty until the
    /// first child connects.
    view: Vec<u32>,
    state: Vec<Child>,
    devices: usize,
    /// Children that asked to connect, attached at the next event or tick.
    attach: Vec<u32>,
    attach_wake: bool,
    /// Telemetry awaiting acknowledgement.
    in_flight: u64,
    /// The run's time (what the engine passes as `now`) at an instant, to turn a fault's
    /// `until` into an instant for the mux.
    origin: Option<(Instant, SimTime)>,
    topic: Vec<u8>,
    device_id: Vec<u8>,
    packet: BytesMut,
}

const NO_VIEW: u32 = u32::MAX;

impl Children {
    pub fn new(cfg: &Arc<MqttConfig>, devices: usize, shards: u16) -> Children {
        Children {
            hub: GatewayHub::for_config(cfg, shards),
            shard: 0,
            events: None,
            views: Vec::new(),
            view_of: HashMap::new(),
            view: Vec::new(),
            state: Vec::new(),
            devices,
            attach: Vec::new(),
            attach_wake: false,
            in_flight: 0,
            origin: None,
            topic: Vec::with_capacity(96),
            device_id: Vec::with_capacity(32),
            packet: BytesMut::with_capacity(512),
        }
    }

    pub fn start(&mut self, events: mpsc::Sender<MqttEvent>) {
        self.shard = self.hub.register(events.clone());
        self.events = Some(events);
    }

    /// Telemetry awaiting acknowledgement through gateways.
    pub fn in_flight(&self) -> u64 {
        self.in_flight
    }

    /// Whether device `dev` is a gateway's child (known to this side).
    pub fn is_child(&self, dev: u32) -> bool {
        self.state
            .get(dev as usize)
            .is_some_and(|s| *s != Child::Unknown)
    }

    /// Notes the run's time `now` (from `tick` and `on_event`).
    pub fn clock(&mut self, now: SimTime) {
        if self.origin.is_none() {
            self.origin = Some((Instant::now(), now));
        }
    }

    fn instant_of(&self, t: SimTime) -> Instant {
        match self.origin {
            Some((at, now)) => at + t.saturating_since(now).to_std(),
            None => Instant::now() + Duration::from_micros(t.0),
        }
    }

    /// The view of device `dev`'s gateway, made (and its task found or started) on first use.
    fn view_for(&mut self, dev: u32, device: &Device, ctx: &DeviceCtx) -> Option<u32> {
        if let Some(&v) = self.view.get(dev as usize)
            && v != NO_VIEW
        {
            return Some(v);
        }
        let cohort = ctx.cohort;
        let g = cohort.gateway_of(device.id)?;
        let spec = cohort.profile.gateway.as_ref()?;
        if self.view.is_empty() {
            self.view = vec![NO_VIEW; self.devices];
            self.state = vec![Child::Unknown; self.devices];
        }
        let key = (cohort.id.0, g.index);
        let v = match self.view_of.get(&key) {
            Some(&v) => v,
            None => {
                let mut name = Vec::with_capacity(32);
                cohort.render_gateway_id(g.index, &mut name);
                let cfg = self.hub.cfg.clone();
                let cmds = self
                    .hub
                    .task(key, self.shard, || describe(&cfg, cohort, spec, g, &name))?;
                self.views.push(View {
                    cmds,
                    name,
                    epoch: None,
                    members: Vec::new(),
                    inflight: HashMap::new(),
                    next_j: 0,
                    outage_until: None,
                    partition_until: None,
                });
                let v = (self.views.len() - 1) as u32;
                self.view_of.insert(key, v);
                v
            }
        };
        if let (Some(slot), Some(state)) = (
            self.view.get_mut(dev as usize),
            self.state.get_mut(dev as usize),
        ) {
            *slot = v;
            *state = Child::Idle;
            self.views[v as usize].members.push((dev, device.id.0));
        }
        Some(v)
    }

    /// Child `dev` asks for a session: it gets one when its gateway has one. False when `dev`
    /// is not a gateway's child.
    pub fn connect(&mut self, dev: u32, device: &Device, ctx: &DeviceCtx) -> bool {
        if ctx.cohort.gateway_of(device.id).is_none() {
            return false;
        }
        if self.view_for(dev, device, ctx).is_none() {
            return false;
        }
        self.state[dev as usize] = Child::Waiting;
        self.attach.push(dev);
        if !self.attach_wake
            && let Some(events) = &self.events
            && events.try_send(MqttEvent::Gateway(GwEvent::Attach)).is_ok()
        {
            self.attach_wake = true;
        }
        true
    }

    /// Attaches the children that asked, whose gateway is up.
    fn attach_waiting(&mut self, out: &mut Vec<(u32, NetInput)>) {
        self.attach_wake = false;
        for dev in std::mem::take(&mut self.attach) {
            let i = dev as usize;
            let up = self.views[self.view[i] as usize].epoch.is_some();
            if self.state[i] == Child::Waiting && up {
                self.state[i] = Child::Attached;
                out.push((dev, NetInput::Connected { latency_us: 0 }));
            }
        }
    }

    /// A child's session ends (it leaves, reboots, its own radio drops): what it sent stays
    /// in flight on the gateway's session and is acknowledged there. Returns the messages
    /// given up: none.
    pub fn close(&mut self, dev: u32) -> u32 {
        if let Some(s) = self.state.get_mut(dev as usize) {
            *s = Child::Idle;
        }
        0
    }

    /// Publishes a child's message through its gateway.
    pub fn publish(
        &mut self,
        dev: u32,
        device: &Device,
        ctx: &DeviceCtx,
        p: &Publish,
        payload: &[u8],
        version: Version,
    ) -> SendOutcome {
        let i = dev as usize;
        if self.state.get(i) != Some(&Child::Attached) {
            return SendOutcome::Failed;
        }
        let v = self.view[i] as usize;
        let Some(epoch) = self.views[v].epoch else {
            return SendOutcome::Failed;
        };
        let shards = self.hub.shards;
        let view = &mut self.views[v];
        let pkid = if p.qos == Qos::AtMostOnce {
            0
        } else {
            match next_pkid(view, self.shard, shards) {
                Some(p) => p,
                None => return SendOutcome::Failed,
            }
        };
        let body = if p.topic == TopicKind::Ota {
            let (topic, body) = p.split(payload);
            self.topic.clear();
            self.topic.extend_from_slice(topic);
            body
        } else {
            let Some(template) = ctx.cohort.profile.identity.topic(p.topic) else {
                return SendOutcome::Failed;
            };
            self.device_id.clear();
            device.render_device_id(ctx, &mut self.device_id);
            self.topic.clear();
            let vars = ctx
                .cohort
                .child_vars(device.id, &self.device_id, &view.name);
            template.render_into(&vars, &mut self.topic);
            payload
        };
        self.packet.clear();
        codec::write_publish(
            &mut self.packet,
            version,
            &self.topic,
            p.qos as u8,
            p.retain,
            pkid,
            body,
        );
        let bytes = Bytes::copy_from_slice(&self.packet);
        if view.cmds.try_send(GwCmd::Write { epoch, bytes }).is_err() {
            return SendOutcome::Failed;
        }
        if p.qos == Qos::AtMostOnce {
            return SendOutcome::Written;
        }
        let telemetry = p.topic == TopicKind::Telemetry;
        view.inflight.insert(
            pkid,
            Inflight {
                dev,
                telemetry,
                scheduled: p.scheduled,
                from_buffer: p.from_buffer,
            },
        );
        if telemetry {
            self.in_flight += 1;
            SendOutcome::AwaitingAck
        } else {
            SendOutcome::Written
        }
    }

    /// A fault of child `dev`'s gateway's uplink, `until` on the run's clock: told to the
    /// gateway's task once (every shard with children of it tells it; the first one counts).
    pub fn fault(&mut self, dev: u32, device: &Device, ctx: &DeviceCtx, f: GatewayFault) {
        let Some(v) = self.view_for(dev, device, ctx) else {
            return;
        };
        let (until, outage) = match f {
            GatewayFault::Outage { until } => (until, true),
            GatewayFault::Partition { until } => (until, false),
        };
        let until = self.instant_of(until);
        let view = &mut self.views[v as usize];
        let seen = if outage {
            &mut view.outage_until
        } else {
            &mut view.partition_until
        };
        if seen.is_some_and(|s| s >= until) {
            return;
        }
        *seen = Some(until);
        let cmd = if outage {
            GwCmd::Outage { until }
        } else {
            GwCmd::Partition { until }
        };
        let _ = view.cmds.try_send(cmd);
    }

    /// Turns a gateway's event into inputs for its children here.
    pub fn on_event(&mut self, ev: GwEvent, out: &mut Vec<(u32, NetInput)>) {
        let view_of = |s: &Self, key: GatewayKey| s.view_of.get(&key).map(|v| *v as usize);
        match ev {
            GwEvent::Attach => self.attach_waiting(out),
            GwEvent::Up {
                key,
                epoch,
                latency_us,
                counted,
            } => {
                let Some(v) = view_of(self, key) else { return };
                if self.views[v].epoch == Some(epoch) {
                    return; // told twice (a shard that asked while it came up)
                }
                self.views[v].epoch = Some(epoch);
                let view = &self.views[v];
                if counted && let Some(&(dev, _)) = view.members.first() {
                    out.push((
                        dev,
                        NetInput::Gateway(GatewayNote::Connected { latency_us }),
                    ));
                }
                for &(dev, _) in &view.members {
                    let s = &mut self.state[dev as usize];
                    if *s == Child::Waiting {
                        *s = Child::Attached;
                        out.push((dev, NetInput::Connected { latency_us: 0 }));
                    }
                }
            }
            GwEvent::Down {
                key,
                epoch,
                reason,
                counted,
            } => {
                let Some(v) = view_of(self, key) else { return };
                if self.views[v].epoch != Some(epoch) {
                    return;
                }
                let view = &mut self.views[v];
                view.epoch = None;
                if counted && let Some(&(dev, _)) = view.members.first() {
                    out.push((dev, NetInput::Gateway(GatewayNote::Lost { reason })));
                }
                // What this shard's children had in flight on the session is lost.
                let mut unacked: HashMap<u32, u32> = HashMap::new();
                for (_, i) in view.inflight.drain() {
                    if i.telemetry {
                        *unacked.entry(i.dev).or_default() += 1;
                    }
                }
                let total: u64 = unacked.values().map(|n| u64::from(*n)).sum();
                self.in_flight -= total;
                for &(dev, _) in &view.members {
                    let s = &mut self.state[dev as usize];
                    let n = unacked.remove(&dev).unwrap_or(0);
                    if *s == Child::Attached || n > 0 {
                        if *s == Child::Attached {
                            *s = Child::Idle;
                        }
                        let reason = "gateway session lost";
                        out.push((dev, NetInput::SessionLost { reason, unacked: n }));
                    }
                }
            }
            GwEvent::Note { key, note } => {
                if let Some(v) = view_of(self, key)
                    && let Some(&(dev, _)) = self.views[v].members.first()
                {
                    out.push((dev, NetInput::Gateway(note)));
                }
            }
            GwEvent::Packet { key, epoch, packet } => {
                let Some(v) = view_of(self, key) else { return };
                let view = &mut self.views[v];
                if view.epoch != Some(epoch) {
                    return;
                }
                let (pkid, refused) = match packet {
                    Inbound::PubAck(p) | Inbound::PubComp(p) => (p, None),
                    Inbound::PubRefused { pkid, reason } => (pkid, Some(reason)),
                    _ => return,
                };
                let Some(i) = view.inflight.remove(&pkid) else {
                    return;
                };
                if !i.telemetry {
                    return;
                }
                self.in_flight -= 1;
                out.push((
                    i.dev,
                    match refused {
                        None => NetInput::Acked {
                            scheduled: i.scheduled,
                            from_buffer: i.from_buffer,
                        },
                        Some(reason) => NetInput::Rejected { reason },
                    },
                ));
            }
            GwEvent::Command {
                key,
                child,
                topic,
                payload,
            } => {
                let Some(v) = view_of(self, key) else { return };
                let found = self.views[v]
                    .members
                    .iter()
                    .find(|(_, id)| *id == child)
                    .map(|(dev, _)| *dev);
                if let Some(dev) = found
                    && self.state[dev as usize] == Child::Attached
                {
                    out.push((dev, NetInput::Message { topic, payload }));
                }
            }
        }
    }

    /// Every tick: children whose wake-up event could not be queued are attached now.
    pub fn tick(&mut self, now: SimTime, out: &mut Vec<(u32, NetInput)>) {
        self.clock(now);
        if !self.attach.is_empty() {
            self.attach_waiting(out);
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        if self.events.is_some() {
            self.hub.shard_done(self.shard);
        }
    }
}

/// The next packet id of this shard's share on a gateway's session (skipping ones still in
/// flight); None when its whole share is in flight.
fn next_pkid(view: &mut View, shard: u16, shards: u16) -> Option<u16> {
    let shards = u32::from(shards.max(1));
    let base = u32::from(FIRST_SHARD_PKID) + u32::from(shard);
    let Some(span) = u32::from(u16::MAX).checked_sub(base) else {
        return None; // more shards than packet ids
    };
    let share = span / shards + 1;
    if view.inflight.len() as u32 >= share {
        return None;
    }
    loop {
        let p = (base + shards * view.next_j) as u16;
        view.next_j = (view.next_j + 1) % share;
        if !view.inflight.contains_key(&p) {
            return Some(p);
        }
    }
}

/// What the gateway's task needs, from its cohort and the run's MQTT settings. Per-device
/// templates (credentials, client certificates) are rendered for the gateway, with its id as
/// `{device_id}`.
fn describe(
    cfg: &MqttConfig,
    cohort: &Cohort,
    spec: &fleet_core::profile::GatewaySpec,
    g: GatewayRef,
    name: &[u8],
) -> GatewayDesc {
    let profile = &cohort.profile;
    let vars = cohort.gateway_vars(g.index, name);
    let mut client_id = Vec::with_capacity(32);
    spec.client_id.render_into(&vars, &mut client_id);
    let mut status_topic = Vec::with_capacity(64);
    spec.status_topic.render_into(&vars, &mut status_topic);
    let mut will_topic = Vec::with_capacity(64);
    spec.will_topic.render_into(&vars, &mut will_topic);
    let command_filter = spec.command_filter.as_ref().map(|f| {
        let mut out = Vec::with_capacity(64);
        f.render_into(&vars, &mut out);
        out
    });
    // Per-device templates see the gateway's id as the device id.
    let as_device = fleet_core::template::TemplateVars {
        device_id: name,
        ..vars
    };
    let login = cfg.auth.as_ref().and_then(|c| match c.lookup(&as_device) {
        Ok(l) => Some(l),
        Err(why) => {
            tracing::warn!(gateway = %String::from_utf8_lossy(name), "{why}");
            None
        }
    });
    let cert_paths = cfg
        .tls
        .as_ref()
        .and_then(|t| t.client_cert.as_ref())
        .map(|c| c.paths(&as_device));
    let spread = (cohort.first_device / spec.children.max(1)) as usize + g.index as usize;
    GatewayDesc {
        key: (cohort.id.0, g.index),
        name: name.to_vec(),
        client_id,
        version: cfg.version,
        keep_alive_s: (profile.mqtt.keep_alive.as_micros() / 1_000_000).min(65_535) as u16,
        connect_timeout: cohort.link.connect_timeout.to_std(),
        backoff: cohort.link.reconnect.clone(),
        target: cfg.targets.get(spread % cfg.targets.len().max(1)).copied(),
        source: (!cfg.source_addrs.is_empty())
            .then(|| cfg.source_addrs[spread % cfg.source_addrs.len()]),
        nodelay: cfg.tcp_nodelay,
        login,
        cert_paths,
        status_topic,
        will_topic,
        retain: spec.retain_status,
        last_will: profile.mqtt.last_will,
        command_filter,
        command_qos: profile.command_qos as u8,
        cohort: cohort.clone(),
        gateway: g,
    }
}
