//! Firmware updates end to end over MQTT: fleetsim's lab devices (scenarios/ota-lab.toml)
//! against the embedded broker and a small job server and HTTP image server in this test.
//! rumqttd refuses subscriptions to `$` topics, so here the AWS IoT Jobs topics live under
//! `lab/aws/...` (`[ota] aws_topic_prefix`) instead of `$aws/...`.
//! The same flows against mosquitto and an independent AWS IoT Jobs server written in Python
//! are interop test G (scripts/interop.sh).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Serves `image` at any path, whole (no ranges), to every GET; returns its address.
async fn image_server(image: Vec<u8>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let image = image.clone();
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    image.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(&image).await;
            });
        }
    });
    addr
}

/// The lab files in a temporary folder, with the AWS topics moved under lab/aws.
fn lab_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (path, edit) in [
        ("scenarios/ota-lab.toml", None),
        ("firmware-models/lab-fw.toml", None),
        (
            "device-profiles/lab-device.toml",
            Some((
                "protocol = \"aws_jobs\"",
                "protocol = \"aws_jobs\"\naws_topic_prefix = \"lab/aws\"",
            )),
        ),
    ] {
        let mut text = std::fs::read_to_string(root().join(path)).expect("lab file");
        if let Some((from, to)) = edit {
            assert!(text.contains(from), "{path} has {from}");
            text = text.replace(from, to);
        }
        let dest = dir.path().join(path);
        std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
        std::fs::write(dest, text).expect("write");
    }
    dir
}

fn lab_image() -> (Vec<u8>, String) {
    let image: Vec<u8> = (0..288 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    let sha: String = Sha256::digest(&image)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    (image, sha)
}

/// A rollout fleetsim runs itself, with the image on an artifact server: every targeted device
/// GETs it on the wall clock and verifies it.
#[tokio::test]
async fn a_rollout_with_a_url_sends_every_device_to_the_artifact_server() {
    let (image, sha) = lab_image();
    let http = image_server(image.clone()).await;
    let dir = lab_copy();
    let rep = dir.path().join("r.json");
    let size = image.len().to_string();
    let url = format!("http://{http}/fw/lab-fw-1.1.0.bin");
    let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleetsim"))
        .current_dir(dir.path())
        .args([
            "rollout",
            "scenarios/ota-lab.toml",
            "--cohort",
            "generic",
            "--target",
            "1.1.0",
            "--url",
            &url,
            "--size",
            &size,
            "--sha256",
            &sha,
            "--evaluate-every",
            "1s",
            "--timeout",
            "30s",
            "--duration",
            "12s",
            "--headless",
            "--report",
            rep.to_str().expect("utf-8"),
        ])
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    let status = tokio::time::timeout(Duration::from_secs(60), status)
        .await
        .expect("fleetsim finishes")
        .expect("exit status");
    assert!(status.success(), "exit {status:?}");
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(&rep).expect("report")).expect("json");
    let ro = &r["rollouts"][0];
    assert_eq!(ro["state"], "completed", "{ro}");
    assert_eq!(ro["succeeded"], 2, "{ro}");
    assert_eq!(r["ota"]["http"]["requests"], 2, "{}", r["ota"]);
    assert_eq!(r["ota"]["http"]["bytes"], 2 * image.len() as u64);
    assert_eq!(r["ota"]["versions"]["lab-fw 1.1.0"], 2, "{}", r["ota"]);
}

#[tokio::test]
async fn devices_take_jobs_over_both_protocols_and_roll_back_a_bad_release() {
    let broker = fleet_mqtt::broker::start(100, 1, fleet_mqtt::Version::V311).expect("broker");
    let addr = broker.listeners[0];
    let mut opts = MqttOptions::new("job-server", addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(opts, 10_000);
    for filter in [
        "fleetsim/#",
        "lab/aws/things/+/jobs/start-next",
        "lab/aws/things/+/jobs/+/update",
    ] {
        client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("subscribe");
    }
    let (image, sha) = lab_image();
    let http = image_server(image.clone()).await;

    let dir = lab_copy();
    let rep = dir.path().join("r.json");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleetsim"))
        .current_dir(dir.path())
        .args([
            "run",
            "scenarios/ota-lab.toml",
            "--duration",
            "20s",
            "--headless",
            "--broker",
            &format!("mqtt://{addr}"),
            "--report",
            rep.to_str().expect("utf-8"),
        ])
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("fleetsim starts");

    // lab-000 (AWS) gets 1.1.0 on its first start-next; lab-004 (generic) gets 1.1.0 from the
    // HTTP server; lab-005 (generic) gets the bad release 1.2.0.
    let mut aws_version = 1u64;
    let mut aws_statuses: Vec<Value> = Vec::new();
    let mut generic: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut telemetry: BTreeMap<String, Value> = BTreeMap::new();
    let mut jobs_sent = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        tokio::select! {
            st = child.wait() => break st.expect("exit status"),
            ev = events.poll() => {
                let Ok(Event::Incoming(Packet::Publish(p))) = ev else { continue };
                let Ok(v) = serde_json::from_slice::<Value>(&p.payload) else { continue };
                let topic = p.topic.clone();
                if topic == "lab/aws/things/lab-000/jobs/start-next" {
                    let token = v["clientToken"].clone();
                    let reply = if aws_version == 1 {
                        aws_version = 2;
                        json!({"clientToken": token, "timestamp": 1, "execution": {
                            "jobId": "aws-1", "thingName": "lab-000", "status": "IN_PROGRESS",
                            "versionNumber": 2, "executionNumber": 1,
                            "jobDocument": {"operation": "firmware_update", "version": "1.1.0"}}})
                    } else {
                        json!({"clientToken": token, "timestamp": 2})
                    };
                    client.publish("lab/aws/things/lab-000/jobs/start-next/accepted", QoS::AtLeastOnce, false, reply.to_string()).await.expect("publish");
                } else if topic == "lab/aws/things/lab-000/jobs/aws-1/update" {
                    assert_eq!(v["expectedVersion"].as_u64(), Some(aws_version), "{v}");
                    assert!(v["statusDetails"].as_object().expect("statusDetails").values().all(Value::is_string), "{v}");
                    aws_version += 1;
                    let reply = json!({"clientToken": v["clientToken"], "timestamp": 3,
                        "executionState": {"status": v["status"], "versionNumber": aws_version}});
                    client.publish("lab/aws/things/lab-000/jobs/aws-1/update/accepted", QoS::AtLeastOnce, false, reply.to_string()).await.expect("publish");
                    aws_statuses.push(v);
                } else if let Some(dev) = topic.strip_suffix("/ota/status") {
                    generic.entry(dev.rsplit('/').next().unwrap_or("").to_string()).or_default().push(v);
                } else if topic.ends_with("/telemetry") {
                    let id = v["device_id"].as_str().unwrap_or("").to_string();
                    if !jobs_sent && id == "lab-004" {
                        jobs_sent = true;
                        let good = json!({"job_id": "g-1", "version": "1.1.0",
                            "url": format!("http://{http}/fw/lab-fw-1.1.0.bin"), "size": image.len(), "sha256": sha});
                        client.publish("fleetsim/lab-device/lab-004/ota/job", QoS::AtLeastOnce, false, good.to_string()).await.expect("publish");
                        let bad = json!({"job_id": "g-2", "version": "1.2.0"});
                        client.publish("fleetsim/lab-device/lab-005/ota/job", QoS::AtLeastOnce, false, bad.to_string()).await.expect("publish");
                    }
                    telemetry.insert(id, v);
                }
            }
            _ = tokio::time::sleep_until(deadline) => panic!("fleetsim did not finish in time"),
        }
    };
    assert!(status.success(), "exit {status:?}");

    let stages = |list: &[Value], key: &str| -> Vec<String> {
        list.iter()
            .map(|v| {
                let s = if key.is_empty() { v } else { &v[key] };
                s["stage"].as_str().unwrap_or("?").to_string()
            })
            .collect()
    };
    // AWS: IN_PROGRESS through every stage, then SUCCEEDED on slot B.
    let aws_stages = stages(&aws_statuses, "statusDetails");
    assert_eq!(
        aws_stages.first().map(String::as_str),
        Some("downloading"),
        "{aws_stages:?}"
    );
    for s in ["verifying", "installing", "rebooting", "trial", "committed"] {
        assert!(aws_stages.iter().any(|x| x == s), "{s} in {aws_stages:?}");
    }
    let last = aws_statuses.last().expect("AWS updates");
    assert_eq!(last["status"], "SUCCEEDED", "{last}");
    assert_eq!(last["statusDetails"]["slot"], "B", "{last}");
    // Generic over HTTP: downloaded, verified, committed.
    let g = &generic["lab-004"];
    let last = g.last().expect("lab-004 statuses");
    assert_eq!(last["status"], "SUCCEEDED", "{g:?}");
    assert_eq!(last["version"], "1.1.0");
    // The bad release: every boot fails, the device rolls back and says so.
    let b = &generic["lab-005"];
    let last = b.last().expect("lab-005 statuses");
    assert_eq!(last["status"], "FAILED", "{b:?}");
    assert_eq!(last["stage"], "rolled_back");
    assert_eq!(last["version"], "1.0.0");
    assert!(
        last["reason"]
            .as_str()
            .unwrap_or("")
            .contains("3 boot attempts"),
        "{last}"
    );
    // What telemetry says afterwards.
    assert_eq!(telemetry["lab-000"]["fw"], "1.1.0");
    assert_eq!(telemetry["lab-000"]["slot"], "B");
    assert_eq!(telemetry["lab-005"]["fw"], "1.0.0");
    assert_eq!(telemetry["lab-005"]["slot"], "A");

    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(&rep).expect("report")).expect("json");
    let ota = &r["ota"];
    assert_eq!(ota["succeeded"], 2, "{ota}");
    assert_eq!(ota["failed"], 1, "{ota}");
    assert_eq!(ota["rolled_back"], 1, "{ota}");
    assert_eq!(ota["http"]["requests"], 1, "{ota}");
    assert_eq!(ota["http"]["bytes"], image.len() as u64, "{ota}");
    assert_eq!(ota["versions"]["lab-fw 1.1.0"], 2, "{ota}");
    assert_eq!(ota["versions"]["lab-fw 1.0.0"], 4, "{ota}");
}
