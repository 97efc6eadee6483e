//! The MQTT adapter when the network or the broker lets a device down, against scripted
//! brokers: a persistent session sends its unacknowledged messages again (DUP, same packet id)
//! on the next connection and loses none; a broker's refusal (MQTT 5 reason code) is counted
//! as such; a partition is found by keep-alive and heals. In every case each device's
//! messages add up (published = acked + in flight + buffered + dropped).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use fleet_core::load::{EmbeddedSource, load_fleet};
use fleet_engine::{RunOptions, RunOutcome, RunPlan, run_wall};
use fleet_mqtt::{MqttAdapter, MqttConfig, Version};
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;

const FIRMWARE: &str =
    "name = \"fw\"\n[[versions]]\nversion = \"1.0.0\"\nimage_size_kb = 1\nboot_s = 0.1\n";

fn profile(mqtt: &str) -> String {
    format!(
        r#"
name = "p"
[identity]
device_id = "d-{{id}}"
telemetry_topic = "t/{{device_id}}"
[reporting]
interval = "250ms"
qos = 1
[link]
reconnect = {{ initial = "200ms", max = "400ms", jitter = 0.0 }}
[firmware]
model = "fw.toml"
version = "1.0.0"
[mqtt]
last_will = false
{mqtt}
[commands]
enabled = []
"#
    )
}

fn run(scenario: &str, mqtt: &str, version: Version, addr: SocketAddr) -> RunOutcome {
    // EmbeddedSource takes 'static files: leak the few bytes of each test's.
    let p: &'static str = Box::leak(profile(mqtt).into_boxed_str());
    let scenario: &'static str = Box::leak(scenario.to_string().into_boxed_str());
    let files: &'static [(&str, &str)] = Box::leak(Box::new([
        ("s.toml", scenario),
        ("p.toml", p),
        ("fw.toml", FIRMWARE),
    ]));
    let fleet = load_fleet(&EmbeddedSource(files), Path::new("s.toml")).expect("valid");
    let plan = Arc::new(RunPlan::new(Arc::new(fleet), 1, 0));
    let cfg = Arc::new(MqttConfig {
        version,
        targets: vec![addr],
        source_addrs: Vec::new(),
        tcp_nodelay: true,
        max_connecting: 8,
        download_slots: fleet_mqtt::http::DownloadSlots::new(4),
        tls: None,
        auth: None,
    });
    let p = plan.clone();
    run_wall(
        plan,
        move |k| MqttAdapter::new(cfg.clone(), p.shard_len(k), p.shards),
        &RunOptions::default(),
        Arc::new(AtomicBool::new(false)),
        |_| {},
    )
    .expect("the run completes")
}

/// Reads from `stream` into `buf` until `parse` returns a packet; None when the peer is gone.
fn next<P>(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    parse: impl Fn(&mut BytesMut) -> Option<Result<P, ()>>,
) -> Option<P> {
    let mut chunk = [0u8; 4096];
    loop {
        match parse(buf) {
            Some(Ok(p)) => return Some(p),
            Some(Err(())) => return None,
            None => match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            },
        }
    }
}

fn v4_packet(buf: &mut BytesMut) -> Option<Result<v4::Packet, ()>> {
    match v4::Packet::read(buf, 1 << 16) {
        Ok(p) => Some(Ok(p)),
        Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => None,
        Err(_) => Some(Err(())),
    }
}

fn v5_packet(buf: &mut BytesMut) -> Option<Result<v5::Packet, ()>> {
    match v5::Packet::read(buf, Some(1 << 16)) {
        Ok(p) => Some(Ok(p)),
        Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => None,
        Err(_) => Some(Err(())),
    }
}

/// What the scripted 3.1.1 broker saw: per connection, the PUBLISHes (packet id, DUP flag,
/// payload) and the CONNECT's clean-session flag.
#[derive(Default, Debug)]
struct Seen {
    connections: Vec<(bool, Vec<Received>)>,
}

/// A PUBLISH as the broker got it: packet id, DUP flag, payload.
type Received = (u16, bool, Vec<u8>);

/// A 3.1.1 broker that acknowledges everything, but with `cut_after` = Some(n) its first
/// connection acknowledges nothing and is cut after n PUBLISHes.
fn broker(cut_after: Option<usize>, seen: Arc<Mutex<Seen>>) -> SocketAddr {
    listen(move |n, mut stream| {
        let mut buf = BytesMut::new();
        let Some(v4::Packet::Connect(c)) = next(&mut stream, &mut buf, v4_packet) else {
            return;
        };
        let idx = {
            let mut s = seen.lock().expect("lock");
            s.connections.push((c.clean_session, Vec::new()));
            s.connections.len() - 1
        };
        let present = u8::from(n > 0 && cut_after.is_some());
        let _ = stream.write_all(&[0x20, 0x02, present, 0x00]);
        let mut count = 0;
        while let Some(p) = next(&mut stream, &mut buf, v4_packet) {
            match p {
                v4::Packet::Publish(p) => {
                    count += 1;
                    seen.lock().expect("lock").connections[idx].1.push((
                        p.pkid,
                        p.dup,
                        p.payload.to_vec(),
                    ));
                    if let (0, Some(cut)) = (n, cut_after) {
                        if count >= cut {
                            return; // the broker goes away, nothing acknowledged
                        }
                        continue;
                    }
                    let ack = [0x40, 0x02, (p.pkid >> 8) as u8, p.pkid as u8];
                    if stream.write_all(&ack).is_err() {
                        return;
                    }
                }
                v4::Packet::PingReq => {
                    let _ = stream.write_all(&[0xD0, 0x00]);
                }
                v4::Packet::Disconnect => return,
                _ => {}
            }
        }
    })
}

/// A broker on 127.0.0.1 (a port the OS picks) serving each connection, numbered from 0, in a
/// thread of its own.
fn listen(serve: impl Fn(usize, TcpStream) + Clone + Send + 'static) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(stream) = stream else { continue };
            let serve = serve.clone();
            std::thread::spawn(move || serve(n, stream));
        }
    });
    addr
}

/// Every `seq` the broker received, over all connections, sorted, each once.
fn distinct_seqs(seen: &Seen) -> Vec<u64> {
    let mut seqs: Vec<u64> = seen
        .connections
        .iter()
        .flat_map(|c| c.1.iter().map(|(_, _, p)| seq_of(p)))
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    seqs
}

fn seq_of(payload: &[u8]) -> u64 {
    let text = std::str::from_utf8(payload).expect("telemetry is UTF-8");
    let rest = &text[text.find("\"seq\":").expect("seq") + 6..];
    let end = rest.find(',').expect("more after seq");
    rest[..end].parse().expect("seq is a number")
}

const SCENARIO: &str = "name = \"s\"\nduration = \"3s\"\ndrain = \"2s\"\n[ramp]\nmode = \"all\"\n[[cohorts]]\nname = \"c\"\nprofile = \"p.toml\"\ncount = 1\n";

#[test]
fn a_persistent_session_sends_unacknowledged_messages_again_and_loses_none() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let addr = broker(Some(3), seen.clone());
    let out = run(SCENARIO, "clean_session = false", Version::V311, addr);
    let t = out.last.totals;
    let seen = seen.lock().expect("lock");
    assert!(seen.connections.len() >= 2, "{seen:?}");
    assert!(
        seen.connections.iter().all(|c| !c.0),
        "every CONNECT asks for the session to be kept"
    );
    // The first connection's three messages come again, first thing, with DUP and their ids.
    let first: Vec<(u16, Vec<u8>)> = seen.connections[0]
        .1
        .iter()
        .map(|(id, _, p)| (*id, p.clone()))
        .collect();
    assert_eq!(first.len(), 3, "{seen:?}");
    let again: Vec<(u16, Vec<u8>)> = seen.connections[1].1[..3]
        .iter()
        .map(|(id, dup, p)| {
            assert!(*dup, "a message sent again has DUP set");
            (*id, p.clone())
        })
        .collect();
    assert_eq!(again, first);
    // Every seq reached the broker; none counted lost; each device adds up.
    let seqs = distinct_seqs(&seen);
    assert_eq!(seqs.len() as u64, t.published, "{t:?}");
    assert_eq!(seqs.last().copied(), Some(t.published));
    assert_eq!(t.failed_unacked, 0, "{t:?}");
    assert!(t.sessions_lost >= 1, "{t:?}");
    assert_eq!(
        t.acked + out.last.in_flight + out.last.buffered + t.failed(),
        t.published
    );
    assert_eq!(out.last.devices_unaccounted, 0);
}

#[test]
fn a_clean_session_counts_what_was_in_flight_as_lost() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let addr = broker(Some(3), seen.clone());
    let out = run(SCENARIO, "", Version::V311, addr);
    let t = out.last.totals;
    let seen = seen.lock().expect("lock");
    assert!(seen.connections.len() >= 2, "{seen:?}");
    assert!(
        seen.connections[1].1.iter().all(|(_, dup, _)| !dup),
        "nothing is sent again"
    );
    assert_eq!(t.failed_unacked, 3, "{t:?}");
    assert_eq!(
        t.acked + out.last.in_flight + out.last.buffered + t.failed(),
        t.published
    );
    assert_eq!(out.last.devices_unaccounted, 0);
}

/// An MQTT 5 broker that refuses every PUBLISH with PUBACK reason 0x87 (not authorized).
fn refusing_broker() -> SocketAddr {
    listen(|_, mut stream| {
        let mut buf = BytesMut::new();
        let Some(v5::Packet::Connect(..)) = next(&mut stream, &mut buf, v5_packet) else {
            return;
        };
        let _ = stream.write_all(&[0x20, 0x03, 0x00, 0x00, 0x00]);
        while let Some(p) = next(&mut stream, &mut buf, v5_packet) {
            match p {
                v5::Packet::Publish(p) => {
                    let ack = [0x40, 0x04, (p.pkid >> 8) as u8, p.pkid as u8, 0x87, 0x00];
                    if stream.write_all(&ack).is_err() {
                        return;
                    }
                }
                v5::Packet::PingReq(_) => {
                    let _ = stream.write_all(&[0xD0, 0x00]);
                }
                v5::Packet::Disconnect(_) => return,
                _ => {}
            }
        }
    })
}

#[test]
fn a_broker_refusal_is_counted_as_rejected_not_acked() {
    let addr = refusing_broker();
    let out = run(SCENARIO, "", Version::V5, addr);
    let t = out.last.totals;
    assert!(t.published >= 8, "{t:?}");
    assert_eq!(t.acked, 0, "{t:?}");
    assert_eq!(t.failed_rejected, t.published, "{t:?}");
    assert_eq!(out.last.devices_unaccounted, 0);
    assert_eq!(
        t.connects_ok, 1,
        "a refusal does not end the session: {t:?}"
    );
}

#[test]
fn a_partition_is_found_by_keep_alive_and_heals() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let addr = broker(None, seen.clone());
    // Keep-alive 1 s: the session is declared dead 1.5 s into the 3 s partition; attempts
    // during it time out (connect timeout 500 ms); after it the device reconnects.
    let scenario = "name = \"s\"\nduration = \"6s\"\ndrain = \"2s\"\n[ramp]\nmode = \"all\"\n[[cohorts]]\nname = \"c\"\nprofile = \"p.toml\"\ncount = 1\nlink = { connect_timeout = \"500ms\" }\n[[events]]\nat = \"1s\"\nkind = \"partition\"\nduration = \"3s\"\n";
    let out = run(
        scenario,
        "keep_alive = \"1s\"\nclean_session = false",
        Version::V311,
        addr,
    );
    let t = out.last.totals;
    let seen = seen.lock().expect("lock");
    assert_eq!(
        seen.connections.len(),
        2,
        "one connection, then one after the partition: {seen:?} {t:?}"
    );
    assert_eq!(t.sessions_lost, 1, "{t:?}");
    assert!(
        t.connects_failed >= 1,
        "attempts during the partition time out: {t:?}"
    );
    // Persistent session and offline buffer: the broker gets every seq.
    let seqs = distinct_seqs(&seen);
    assert_eq!(seqs.len() as u64, t.published, "{t:?}");
    assert_eq!(t.failed(), 0, "{t:?}");
    assert_eq!(out.last.devices_unaccounted, 0);
}
