//! Gateways on the wall clock, against the embedded rumqttd and a subscriber: every child's
//! telemetry arrives on its own topic through its gateway's session, the broker sees one
//! session per gateway, a gateway's outage takes its children offline and back, commands reach
//! a child through its gateway, Sparkplug-style topics. Each run's accounting is exact.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_core::load::{EmbeddedSource, load_fleet};
use fleet_engine::{RunOptions, RunOutcome, RunPlan, run_wall};
use fleet_mqtt::{MqttAdapter, MqttConfig, Version};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

const FIRMWARE: &str =
    "name = \"fw\"\n[[versions]]\nversion = \"1.0.0\"\nimage_size_kb = 1\nboot_s = 0.1\n";

/// 10 children per gateway, a report every 250 ms at QoS 1.
fn child(extra: &str) -> String {
    format!(
        r#"
name = "child"
[identity]
device_id = "c-{{id:05}}"
[reporting]
interval = "250ms"
qos = 1
offline_buffer = 100
[sensors.t]
kind = "constant"
value = 20.5
decimals = 1
[link]
reconnect = {{ initial = "100ms", max = "200ms", jitter = 0.0 }}
[mqtt]
keep_alive = "5s"
[firmware]
model = "fw.toml"
version = "1.0.0"
{extra}
"#
    )
}

fn scenario(devices: u32, duration: &str, events: &str) -> String {
    format!(
        "name = \"g\"\nduration = \"{duration}\"\ndrain = \"3s\"\n[ramp]\nmode = \"all\"\n\
         [[cohorts]]\nname = \"edge\"\nprofile = \"child.toml\"\ncount = {devices}\n{events}"
    )
}

/// Everything the subscriber saw: (topic, payload), in order.
type Seen = Arc<Mutex<Vec<(String, String)>>>;

/// A subscriber to `#` on `broker` (on its own thread), ready when this returns. Publishes
/// `commands` (topic, payload) once it has seen `after` on a topic.
fn subscribe(broker: std::net::SocketAddr, commands: Vec<(String, String)>, after: &str) -> Seen {
    let seen: Seen = Arc::default();
    let out = seen.clone();
    let after = after.to_string();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let mut opts = MqttOptions::new("audit", broker.ip().to_string(), broker.port());
            opts.set_keep_alive(Duration::from_secs(30));
            opts.set_max_packet_size(1 << 20, 1 << 20);
            let (client, mut events) = AsyncClient::new(opts, 10_000);
            client
                .subscribe("#", QoS::AtLeastOnce)
                .await
                .expect("subscribe");
            let mut commands = Some(commands);
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ready_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let topic = p.topic.clone();
                        let text = String::from_utf8_lossy(&p.payload).into_owned();
                        if topic.contains(&after)
                            && let Some(cmds) = commands.take()
                        {
                            for (t, body) in cmds {
                                client
                                    .publish(t, QoS::AtLeastOnce, false, body)
                                    .await
                                    .expect("publish");
                            }
                        }
                        out.lock().expect("lock").push((topic, text));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the subscriber is ready");
    seen
}

/// Runs the scenario on the wall clock with 2 shards against `broker` (MQTT 3.1.1).
fn run(
    files: Vec<(&'static str, String)>,
    broker: std::net::SocketAddr,
    log: Option<&Path>,
) -> RunOutcome {
    run_version(files, broker, log, Version::V311)
}

fn run_version(
    files: Vec<(&'static str, String)>,
    broker: std::net::SocketAddr,
    log: Option<&Path>,
    version: Version,
) -> RunOutcome {
    let files: Vec<(&'static str, &'static str)> = files
        .into_iter()
        .map(|(n, t)| (n, &*Box::leak(t.into_boxed_str())))
        .collect();
    let files: &'static [(&str, &str)] = Box::leak(files.into_boxed_slice());
    let fleet = load_fleet(&EmbeddedSource(files), Path::new("g.toml")).expect("valid");
    let plan = Arc::new(RunPlan::new(Arc::new(fleet), 2, 1_767_225_600_000));
    let cfg = Arc::new(MqttConfig {
        version,
        targets: vec![broker],
        source_addrs: Vec::new(),
        tcp_nodelay: true,
        max_connecting: 8,
        download_slots: fleet_mqtt::http::DownloadSlots::new(4),
        tls: None,
        auth: None,
    });
    let p = plan.clone();
    let opts = RunOptions {
        event_log: log.map(Path::to_path_buf),
        ..RunOptions::default()
    };
    run_wall(
        plan,
        move |k| MqttAdapter::new(cfg.clone(), p.shard_len(k), p.shards),
        &opts,
        Arc::new(AtomicBool::new(false)),
        |_| {},
    )
    .expect("the run completes")
}

/// The value of `"key":` in a flat JSON object, as written (a number or a quoted string).
fn field<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let start = json.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = &json[start..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim_matches('"'))
}

fn assert_balanced(out: &RunOutcome) {
    let t = out.last.totals;
    assert_eq!(
        t.published,
        t.acked + t.failed() + out.last.in_flight + out.last.buffered,
        "{t:?} in_flight={} buffered={}",
        out.last.in_flight,
        out.last.buffered
    );
    assert_eq!(out.last.devices_unaccounted, 0, "{t:?}");
}

#[test]
fn every_child_publishes_on_its_own_topic_through_one_session_per_gateway() {
    let broker = fleet_mqtt::broker::start(16, 1, Version::V311).expect("broker");
    let addr = broker.listeners[0];
    let seen = subscribe(addr, Vec::new(), "-");
    let out = run(
        vec![
            ("g.toml", scenario(45, "3s", "")),
            (
                "child.toml",
                child("[gateway]\nchildren = 10\n[commands]\nenabled = []\n"),
            ),
            ("fw.toml", FIRMWARE.to_string()),
        ],
        addr,
        None,
    );
    std::thread::sleep(Duration::from_millis(500));
    let seen = seen.lock().expect("lock").clone();
    let t = out.last.totals;
    assert_balanced(&out);
    assert_eq!(t.failed(), 0, "{t:?}");
    assert_eq!(t.published, t.acked, "{t:?}");
    // The broker saw 5 sessions (45 children, 10 per gateway), each connected once.
    assert_eq!(t.connect_attempts, 5, "{t:?}");
    assert_eq!(t.connects_ok, 5, "{t:?}");
    // Every child's telemetry arrived on its own topic under its gateway, every seq once or
    // more (QoS 1), and nothing else on a telemetry topic.
    let mut seqs: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for (topic, payload) in seen.iter().filter(|(t, _)| t.ends_with("/telemetry")) {
        let id = field(payload, "device_id").expect("device_id").to_string();
        let n: u32 = id[2..].parse().expect("child number");
        assert_eq!(
            topic,
            &format!("edge-gw-{:04}/{id}/telemetry", n / 10),
            "{payload}"
        );
        let seq = field(payload, "seq")
            .and_then(|s| s.parse().ok())
            .expect("seq");
        seqs.entry(id).or_default().insert(seq);
    }
    assert_eq!(seqs.len(), 45, "every child: {:?}", seqs.keys());
    let received: u64 = seqs.values().map(|s| s.len() as u64).sum();
    assert_eq!(received, t.published, "every message, once");
    for s in seqs.values() {
        assert_eq!(
            s.len() as u64,
            s.last().copied().unwrap_or(0),
            "no gap: {s:?}"
        );
    }
    // Each gateway said it was online, and offline when it left cleanly at the end; each child
    // said online on its own status topic.
    for g in 0..5 {
        let statuses: Vec<&String> = seen
            .iter()
            .filter(|(t, _)| t == &format!("edge-gw-{g:04}/status"))
            .map(|(_, p)| p)
            .collect();
        assert!(
            statuses
                .first()
                .is_some_and(|p| p.contains("\"online\":true")),
            "{statuses:?}"
        );
        assert!(
            statuses
                .last()
                .is_some_and(|p| p.contains("\"online\":false")),
            "{statuses:?}"
        );
        let children = if g == 4 { "5" } else { "10" };
        assert_eq!(field(statuses[0], "children"), Some(children));
    }
    let child_online = seen
        .iter()
        .filter(|(t, p)| {
            t.ends_with("/status") && t.matches('/').count() == 2 && p.contains("true")
        })
        .count();
    assert_eq!(child_online, 45);
}

#[test]
fn a_gateway_outage_takes_its_children_offline_and_back_and_every_message_is_accounted_for() {
    let broker = fleet_mqtt::broker::start(16, 1, Version::V311).expect("broker");
    let addr = broker.listeners[0];
    let seen = subscribe(addr, Vec::new(), "-");
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("events.log");
    let events =
        "[[events]]\nat = \"1500ms\"\nkind = \"outage\"\nfraction = 1.0\nduration = \"1500ms\"\n";
    let out = run(
        vec![
            ("g.toml", scenario(30, "5s", events)),
            (
                "child.toml",
                child("[gateway]\nchildren = 10\n[commands]\nenabled = []\n"),
            ),
            ("fw.toml", FIRMWARE.to_string()),
        ],
        addr,
        Some(&log),
    );
    std::thread::sleep(Duration::from_millis(500));
    let seen = seen.lock().expect("lock").clone();
    let t = out.last.totals;
    assert_balanced(&out);
    // The outage cut each of the 3 gateways once; each came back: the broker saw 3 sessions
    // lost and 6 connects, not 30.
    assert_eq!(t.sessions_lost, 3, "{t:?}");
    assert_eq!(t.connects_ok, 6, "{t:?}");
    assert_eq!(
        t.failed(),
        t.failed_unacked,
        "only what was in flight at the cut is lost: {t:?}"
    );
    assert!(t.flushed > 0, "children buffered while offline: {t:?}");
    // Every child lost its session with its gateway, and came back.
    let text = std::fs::read_to_string(&log).expect("event log");
    let lost: BTreeSet<&str> = text
        .lines()
        .filter(|l| l.contains("session_error reason=gateway session lost"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(lost.len(), 30, "every child lost its session");
    let connected = text.lines().filter(|l| l.ends_with(" connected")).count();
    assert_eq!(connected, 60, "every child connected twice");
    // The broker published each gateway's will (the link died without DISCONNECT).
    let wills = seen
        .iter()
        .filter(|(t, p)| t.ends_with("-gw-0000/status") && p.contains("\"online\":false"))
        .count();
    assert!(wills >= 2, "the will and the clean end: {wills}");
    // What the subscriber has is what was acknowledged, each seq at least once.
    let got: BTreeSet<(String, u64)> = seen
        .iter()
        .filter(|(t, _)| t.ends_with("/telemetry"))
        .filter_map(|(_, p)| {
            Some((
                field(p, "device_id")?.to_string(),
                field(p, "seq")?.parse().ok()?,
            ))
        })
        .collect();
    assert!(got.len() as u64 >= t.acked, "{} < {}", got.len(), t.acked);
    assert!(got.len() as u64 <= t.acked + t.failed_unacked);
}

#[test]
fn commands_reach_a_child_through_its_gateway_with_sparkplug_topics() {
    let broker = fleet_mqtt::broker::start(16, 1, Version::V311).expect("broker");
    let addr = broker.listeners[0];
    let cmd = r#"{"cmd":"ping","request_id":"r-1"}"#;
    let bad = r#"{"cmd":"selfdestruct"}"#;
    let seen = subscribe(
        addr,
        vec![
            ("spBv1.0/plant/DCMD/edge-gw-0001/c-00012".into(), cmd.into()),
            ("spBv1.0/plant/DCMD/edge-gw-0001/c-00013".into(), bad.into()),
            // Not a child of this gateway: nobody answers.
            ("spBv1.0/plant/DCMD/edge-gw-0001/c-00002".into(), cmd.into()),
        ],
        "DBIRTH/edge-gw-0001/c-00013",
    );
    let out = run(
        vec![
            ("g.toml", scenario(20, "3s", "")),
            (
                "child.toml",
                child(
                    "[gateway]\nchildren = 10\ntopics = \"sparkplug\"\ngroup = \"plant\"\n[commands]\nenabled = [\"ping\"]\n",
                ),
            ),
            ("fw.toml", FIRMWARE.to_string()),
        ],
        addr,
        None,
    );
    std::thread::sleep(Duration::from_millis(500));
    let seen = seen.lock().expect("lock").clone();
    let t = out.last.totals;
    assert_balanced(&out);
    assert_eq!(t.connects_ok, 2, "{t:?}");
    assert_eq!(t.commands, 2, "two commands reached their child: {t:?}");
    assert_eq!(t.commands_rejected, 1, "{t:?}");
    let on = |topic: &str| -> Vec<&String> {
        seen.iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, p)| p)
            .collect()
    };
    let ddata = on("spBv1.0/plant/DDATA/edge-gw-0001/c-00012");
    assert!(
        ddata
            .iter()
            .any(|p| p.contains("\"request_id\":\"r-1\"") && p.contains("\"pong\":true")),
        "{ddata:?}"
    );
    assert!(ddata.iter().any(|p| p.contains("\"values\":{\"t\":20.5}")));
    assert!(
        on("spBv1.0/plant/DDATA/edge-gw-0001/c-00013")
            .iter()
            .any(|p| p.contains("\"status\":\"error\"")),
    );
    assert!(
        !on("spBv1.0/plant/DDATA/edge-gw-0000/c-00002")
            .iter()
            .any(|p| p.contains("pong")),
        "a command on another gateway's topic reaches nobody"
    );
    // Births and deaths: NBIRTH per gateway, DBIRTH per child; at the end DDEATH per child
    // and the gateway's NDEATH (sent by the gateway itself, leaving cleanly).
    for g in 0..2 {
        assert_eq!(on(&format!("spBv1.0/plant/NBIRTH/edge-gw-{g:04}")).len(), 1);
        let death = on(&format!("spBv1.0/plant/NDEATH/edge-gw-{g:04}"));
        assert!(
            death.iter().all(|p| p.contains("\"online\":false")),
            "{death:?}"
        );
        assert_eq!(death.len(), 1, "{death:?}");
    }
    let births = seen.iter().filter(|(t, _)| t.contains("/DBIRTH/")).count();
    let deaths = seen.iter().filter(|(t, _)| t.contains("/DDEATH/")).count();
    assert_eq!((births, deaths), (20, 20));
}

/// A partition shorter than keep-alive (MQTT 5 this time): the gateway's session stays, what
/// its children send meanwhile waits and goes when it heals; nothing is lost.
#[test]
fn a_short_partition_of_a_gateway_holds_its_childrens_messages_and_loses_none() {
    let broker = fleet_mqtt::broker::start(16, 1, Version::V5).expect("broker");
    let addr = broker.listeners[0];
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("events.log");
    let events =
        "[[events]]\nat = \"1s\"\nkind = \"partition\"\nfraction = 1.0\nduration = \"1500ms\"\n";
    let out = run_version(
        vec![
            ("g.toml", scenario(20, "4s", events)),
            (
                "child.toml",
                child("[gateway]\nchildren = 10\n[commands]\nenabled = []\n"),
            ),
            ("fw.toml", FIRMWARE.to_string()),
        ],
        addr,
        Some(&log),
        Version::V5,
    );
    let t = out.last.totals;
    assert_balanced(&out);
    assert_eq!(t.sessions_lost, 0, "{t:?}");
    assert_eq!(t.failed(), 0, "{t:?}");
    assert_eq!(t.published, t.acked, "{t:?}");
    assert_eq!(t.connects_ok, 2, "{t:?}");
    let text = std::fs::read_to_string(&log).expect("event log");
    let partitions = text
        .lines()
        .filter(|l| l.contains(" gateway edge-gw-") && l.contains("partition until_s"))
        .count();
    assert_eq!(partitions, 2, "each gateway was cut off once");
}
