//! The MQTT adapter against a broker that misbehaves: a malformed frame is counted, the session
//! closed, and the device reconnects through its backoff; the run goes on.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::BytesMut;
use fleet_core::load::{EmbeddedSource, load_fleet};
use fleet_engine::{RunOptions, RunPlan, run_wall};
use fleet_mqtt::{MqttAdapter, MqttConfig, Version};

const FILES: &[(&str, &str)] = &[
    (
        "s.toml",
        "name = \"s\"\nduration = \"4s\"\ndrain = \"0s\"\n[ramp]\nmode = \"all\"\n[[cohorts]]\nname = \"c\"\nprofile = \"p.toml\"\ncount = 1\n",
    ),
    (
        "p.toml",
        r#"
name = "p"
[identity]
device_id = "d-{id}"
telemetry_topic = "t/{device_id}"
[reporting]
interval = "500ms"
qos = 1
[link]
reconnect = { initial = "200ms", max = "400ms", jitter = 0.0 }
[firmware]
model = "fw.toml"
version = "1.0.0"
[mqtt]
last_will = false
[commands]
enabled = []
"#,
    ),
    (
        "fw.toml",
        "name = \"fw\"\n[[versions]]\nversion = \"1.0.0\"\nimage_size_kb = 1\nboot_s = 0.1\n",
    ),
];

/// Accepts connections; answers CONNECT with CONNACK, then sends a frame no MQTT packet starts
/// with (type 0). Counts the connections it saw.
fn misbehaving_broker(accepted: Arc<AtomicUsize>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            accepted.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut buf = BytesMut::new();
                let mut chunk = [0u8; 256];
                loop {
                    match rumqttc::mqttbytes::v4::Packet::read(&mut buf, 1 << 16) {
                        Ok(rumqttc::mqttbytes::v4::Packet::Connect(_)) => break,
                        Ok(_) => {}
                        Err(_) => match stream.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        },
                    }
                }
                let _ = stream.write_all(&[0x20, 0x02, 0x00, 0x00]); // CONNACK, accepted
                std::thread::sleep(std::time::Duration::from_millis(300));
                let _ = stream.write_all(&[0x00, 0x00]); // malformed
                let _ = stream.read(&mut chunk); // until the client hangs up
            });
        }
    });
    addr
}

#[test]
fn a_malformed_frame_is_counted_and_the_device_reconnects() {
    let accepted = Arc::new(AtomicUsize::new(0));
    let addr = misbehaving_broker(accepted.clone());
    let fleet = load_fleet(&EmbeddedSource(FILES), Path::new("s.toml")).expect("valid");
    let plan = Arc::new(RunPlan::new(Arc::new(fleet), 1, 0));
    let cfg = Arc::new(MqttConfig {
        version: Version::V311,
        targets: vec![addr],
        source_addrs: Vec::new(),
        tcp_nodelay: true,
        max_connecting: 8,
        download_slots: fleet_mqtt::http::DownloadSlots::new(4),
        tls: None,
        auth: None,
    });
    let p = plan.clone();
    let out = run_wall(
        plan,
        move |k| MqttAdapter::new(cfg.clone(), p.shard_len(k), p.shards),
        &RunOptions::default(),
        Arc::new(AtomicBool::new(false)),
        |_| {},
    )
    .expect("the run completes");
    let t = out.last.totals;
    assert!(t.malformed_packets >= 3, "{t:?}");
    assert!(t.sessions_lost >= 3, "{t:?}");
    assert!(t.connects_ok >= 3, "reconnected each time: {t:?}");
    assert!(accepted.load(Ordering::SeqCst) >= 3);
}
