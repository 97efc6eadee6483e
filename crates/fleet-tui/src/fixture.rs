//! A fixed, realistic snapshot (100,000 devices, 4 shards, 2 firmware versions, a rollout in
//! wave 2 of 4, events of every kind, Modbus and serial activity) and a device, shared by the
//! render tests and the render bench. Not part of the API.

use fleet_core::DeviceState;
use fleet_core::ota::OtaStage;
use fleet_metrics::live::{DeviceEventLine, SensorReading};
use fleet_metrics::ota::{RolloutCounts, RolloutLive, StageCounts};
use fleet_metrics::{
    Counters, DeviceDetail, FleetSnapshot, LatencyHistogram, LiveEvent, LiveEventKind,
    ModbusCounters, OtaCounters, RunMeta, SerialCounters, ShardLoad, SnapshotHistograms,
};

use crate::app::App;

/// Devices in the fixture.
pub const DEVICES: u64 = 100_000;

/// A histogram of `n` values around `median_us` with a long tail, from a fixed generator.
fn histogram(n: u64, median_us: f64, tail: f64) -> LatencyHistogram {
    let mut h = LatencyHistogram::new();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..n {
        // xorshift64*: fixed, portable, good enough for a picture.
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let u = (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64;
        // Log-normal-ish: median_us * e^(tail * z) with z from a logistic draw.
        let z = (u.max(1e-12) / (1.0 - u).max(1e-12)).ln() / 1.7;
        h.record((median_us * (tail * z).exp()) as u64);
    }
    h
}

fn states() -> [u64; fleet_metrics::STATE_COUNT] {
    let mut s = [0u64; fleet_metrics::STATE_COUNT];
    for (state, n) in [
        (DeviceState::Off, 1_200),
        (DeviceState::Booting, 310),
        (DeviceState::Connecting, 740),
        (DeviceState::Online, 93_800),
        (DeviceState::Offline, 3_750),
        (DeviceState::Dead, 200),
    ] {
        s[state.index()] = n;
    }
    s
}

fn ota_stages() -> [u64; fleet_metrics::ota::OTA_STAGE_COUNT] {
    let mut s = [0u64; fleet_metrics::ota::OTA_STAGE_COUNT];
    for (stage, n) in [
        (OtaStage::Idle, 99_653),
        (OtaStage::Queued, 120),
        (OtaStage::Downloading, 160),
        (OtaStage::Verifying, 12),
        (OtaStage::Installing, 18),
        (OtaStage::Rebooting, 9),
        (OtaStage::Trial, 21),
        (OtaStage::Bricked, 7),
    ] {
        s[stage.index()] = n;
    }
    s
}

fn totals() -> Counters {
    Counters {
        published: 498_720,
        sent: 512_340,
        acked: 495_210,
        failed_lost_link: 1_204,
        failed_offline: 2_118,
        failed_write: 3,
        failed_unacked: 185,
        failed_qos0_offline: 0,
        failed_expired: 0,
        failed_rejected: 0,
        retransmits: 4_410,
        flushed: 1_950,
        bytes_sent: 118_402_331,
        connect_attempts: 104_520,
        connects_ok: 101_870,
        connects_failed: 1_320,
        connects_no_link: 1_330,
        link_drops: 2_840,
        sessions_lost: 2_410,
        commands: 320,
        commands_rejected: 4,
        reboots: 610,
        batteries_depleted: 200,
        malformed_packets: 0,
        steps: 2_345_678,
    }
}

fn modbus() -> ModbusCounters {
    let mut m = ModbusCounters {
        requests: 48_200,
        responses: 47_600,
        injected_exceptions: 300,
        silent: 250,
        not_serving: 180,
        dropped_connections: 3,
        bad_crc: 12,
        truncated: 5,
        delayed: 90,
        writes: 2_000,
        unknown_unit: 40,
        malformed_frames: 7,
        connections: 16,
        ..ModbusCounters::default()
    };
    // read holding 40,100; read input 6,000; write single 1,500; write multiple 500; other 100.
    m.by_function[2] = 40_100;
    m.by_function[3] = 6_000;
    m.by_function[5] = 1_500;
    m.by_function[7] = 500;
    m.by_function[fleet_metrics::modbus::FUNCTIONS.len()] = 100;
    m.exceptions[0x02] = 310;
    m.exceptions[0x0B] = 40;
    m
}

fn serial() -> SerialCounters {
    SerialCounters {
        ports_opened: 64,
        lines_out: 182_000,
        bytes_out: 12_480_000,
        lines_in: 3_200,
        bytes_in: 41_000,
        commands: 3_150,
        command_errors: 22,
        unsolicited: 130,
        corrupted_bytes: 48,
        dropped_bytes: 17,
        bad_checksums: 9,
        unplugs: 2,
        overruns: 0,
        open_errors: 0,
    }
}

fn ota() -> OtaCounters {
    let mut o = OtaCounters {
        jobs_received: 6_600,
        accepted: 6_470,
        rejected: 3,
        succeeded: 6_198,
        failed: 52,
        bricked: 7,
        rolled_back: 22,
        failures_by_stage: StageCounts {
            download: 20,
            verify: 4,
            install: 6,
            boot: 12,
            trial: 10,
        },
        status_reports: 25_800,
        reports_lost: 2,
        download_pauses: 140,
        download_restarts: 33,
        download_stalls: 18,
        download_failures: 20,
        reboots_mid_download: 11,
        power_losses: 6,
        boot_failures: 40,
        ..OtaCounters::default()
    };
    o.http.requests = 6_720;
    o.http.bytes = 6_655_000_000;
    o.http.resumes = 250;
    o.http.errors = 41;
    o
}

fn rollouts() -> Vec<RolloutLive> {
    vec![
        RolloutLive {
            name: "canary-1.5.0".into(),
            target_version: "meter 1.5.0".into(),
            state: "completed".into(),
            wave: 1,
            waves: 1,
            targets: 600,
            reported: RolloutCounts {
                notified: 600,
                started: 598,
                succeeded: 588,
                failed: 10,
                rejected: 0,
                timed_out: 2,
            },
        },
        RolloutLive {
            name: "fleet-1.5.0".into(),
            target_version: "meter 1.5.0".into(),
            state: "running".into(),
            wave: 2,
            waves: 4,
            targets: 60_000,
            reported: RolloutCounts {
                notified: 6_000,
                started: 5_880,
                succeeded: 5_610,
                failed: 42,
                rejected: 3,
                timed_out: 5,
            },
        },
    ]
}

fn events() -> Vec<LiveEvent> {
    let list = [
        (
            LiveEventKind::Shard,
            "shard 0..3 started: 25,000 devices each",
        ),
        (
            LiveEventKind::Rollout,
            "rollout canary-1.5.0 started: 600 targets",
        ),
        (
            LiveEventKind::Storm,
            "reconnect storm: 4,210 connects in 1 s",
        ),
        (
            LiveEventKind::Fault,
            "outage of 5% for 30s fired (5,000 devices)",
        ),
        (
            LiveEventKind::Slo,
            "slo publish_ack_p99 < 250ms would fail: 310ms",
        ),
        (LiveEventKind::Control, "pause (from the TUI)"),
        (LiveEventKind::Control, "resume (from the TUI)"),
        (
            LiveEventKind::Rollout,
            "rollout canary-1.5.0 completed: 588 succeeded",
        ),
        (
            LiveEventKind::Slo,
            "slo publish_ack_p99 < 250ms recovered: 180ms",
        ),
        (LiveEventKind::Storm, "sessions lost: 1,900 in 1 s"),
        (
            LiveEventKind::Fault,
            "reboot_wave of 2% over 60s fired (2,000 devices)",
        ),
        (
            LiveEventKind::Rollout,
            "rollout fleet-1.5.0 wave 2/4: 6,000 notified",
        ),
        (LiveEventKind::Shard, "shard 2 fell behind: lag 48ms"),
    ];
    list.iter()
        .enumerate()
        .map(|(i, (kind, message))| LiveEvent {
            seq: i as u64 + 1,
            elapsed_s: 2.0 + i as f64 * 23.5,
            sim_time_s: 1.8 + i as f64 * 22.9,
            kind: *kind,
            message: (*message).into(),
        })
        .collect()
}

fn shards() -> Vec<ShardLoad> {
    (0..4u16)
        .map(|i| ShardLoad {
            shard: i,
            process: 0,
            devices: DEVICES / 4,
            online: 23_450,
            sim_time_s: 300.0 + f64::from(i) * 0.1,
            max_lag_ms: [2.1, 3.4, 48.0, 1.9][usize::from(i)],
            steps: 586_419 + u64::from(i),
            done: false,
        })
        .collect()
}

/// The fixture snapshot: a wall-clock run of 100,000 devices, 312 s in.
pub fn snapshot() -> FleetSnapshot {
    let publish_ack_us = histogram(40_000, 9_000.0, 0.9);
    let publish_ack_interval_us = histogram(1_600, 8_000.0, 0.8);
    let connect_us = histogram(20_000, 35_000.0, 0.7);
    let modbus_service_us = histogram(8_000, 1_200.0, 0.6);
    FleetSnapshot {
        run: RunMeta {
            run_id: "20250301-101500-42".into(),
            scenario: "smart-meters".into(),
            seed: 42,
            clock: "wall".into(),
            duration_s: 1_800.0,
            shards: 4,
            broker: "mqtt://127.0.0.1:1883".into(),
            processes: 1,
            source: "local".into(),
        },
        paused: false,
        elapsed_s: 312.4,
        sim_time_s: 300.0,
        devices_total: DEVICES,
        states: states(),
        low_battery: 1_284,
        totals: totals(),
        published_per_s: 1_662.4,
        acked_per_s: 1_650.1,
        connects_per_s: 12.0,
        steps_per_s: 7_512.0,
        publish_ack_interval: publish_ack_interval_us.percentiles(),
        publish_ack: publish_ack_us.percentiles(),
        connect: connect_us.percentiles(),
        modbus: modbus(),
        modbus_service: modbus_service_us.percentiles(),
        modbus_requests_per_s: 154.0,
        serial: serial(),
        ota: ota(),
        ota_stages: ota_stages(),
        versions: vec![94_390, 5_610],
        version_labels: vec!["meter 1.4.2".into(), "meter 1.5.0".into()],
        rollouts: rollouts(),
        lag_interval_p99_us: 3_100,
        lag_p99_us: 4_800,
        max_lag_us: 48_000,
        in_flight: 88,
        buffered: 6_120,
        devices_unaccounted: 0,
        peak_online: 94_120,
        first_connects: 98_650,
        last_first_connect_s: 241.7,
        shards: shards(),
        events: events(),
        histograms: SnapshotHistograms {
            publish_ack_us,
            publish_ack_interval_us,
            connect_us,
            modbus_service_us,
        },
    }
}

/// The fixture with `factor` times the devices (every device gauge scaled, nothing else).
pub fn snapshot_scaled(factor: u64) -> FleetSnapshot {
    let mut s = snapshot();
    s.devices_total *= factor;
    s.states.iter_mut().for_each(|n| *n *= factor);
    s.ota_stages.iter_mut().for_each(|n| *n *= factor);
    s.versions.iter_mut().for_each(|n| *n *= factor);
    s.low_battery *= factor;
    s.peak_online *= factor;
    for sh in &mut s.shards {
        sh.devices *= factor;
        sh.online *= factor;
    }
    s
}

/// A device as the drill-down shows it.
pub fn device() -> DeviceDetail {
    DeviceDetail {
        id: 42,
        device_id: "meter-000042".into(),
        cohort: "meters-north".into(),
        profile: "smart-meter".into(),
        shard: 2,
        sim_time_s: 300.2,
        state: "online".into(),
        powered: true,
        link_up: true,
        uptime_s: Some(287.5),
        battery_percent: Some(18.5),
        low_battery: true,
        sensors: vec![
            SensorReading {
                name: "power".into(),
                value: 1_234.5,
                unit: "W".into(),
            },
            SensorReading {
                name: "voltage".into(),
                value: 229.81,
                unit: "V".into(),
            },
            SensorReading {
                name: "energy".into(),
                value: 18_342.25,
                unit: "kWh".into(),
            },
        ],
        seq: 5,
        buffered: 0,
        interval_s: 60.0,
        firmware: "meter 1.4.2".into(),
        slot: "a".into(),
        ota_stage: "downloading".into(),
        recent: vec![
            DeviceEventLine {
                sim_time_s: 12.5,
                text: "powered on".into(),
            },
            DeviceEventLine {
                sim_time_s: 14.1,
                text: "connected (session 1)".into(),
            },
            DeviceEventLine {
                sim_time_s: 254.0,
                text: "battery low: 19.9%".into(),
            },
            DeviceEventLine {
                sim_time_s: 290.3,
                text: "update job fleet-1.5.0 received: downloading".into(),
            },
        ],
        watched_since_s: 0.0,
    }
}

/// An app that has seen `samples` snapshots, so its sparklines have a shape.
pub fn app_with_history(samples: usize) -> App {
    let mut app = App::new(false);
    let mut s = snapshot();
    for i in 0..samples {
        let wave = ((i as f64) / 6.0).sin();
        s.elapsed_s = i as f64;
        s.published_per_s = 1_600.0 + 300.0 * wave;
        s.acked_per_s = 1_590.0 + 290.0 * wave;
        s.connects_per_s = if i % 20 == 5 { 900.0 } else { 12.0 };
        app.on_snapshot(&s);
    }
    app
}
