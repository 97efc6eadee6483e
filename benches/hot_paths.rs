//! Micro-benchmarks of fleetsim's hot paths.
//!
//!   cargo bench --bench hot_paths
//!   cargo bench --bench hot_paths -- device_step      (one group)
//!
//! - `device_step`: one `Device::handle(now, Input::Wake)` with a report, per shipped profile
//!   (devices of `scenarios/demo.toml`; `env-sensor` is device 0);
//! - `encode_telemetry`: the telemetry JSON of each of the four shipped profiles;
//! - `histogram_record`: `LatencyHistogram::record` with values spread from 50 us to 10 s;
//! - `mqtt_codec`: `write_publish` (QoS 0 / 1, MQTT 3.1.1 / 5) and `read_packet` of a PUBACK;
//! - `scheduler`: a steady-state pop + push (a device's next wake) on queues of 10k and 100k
//!   entries 1-60 s ahead, and of 1,000,000 entries an hour ahead (hourly reports);
//! - `ota`: a whole firmware update of one NB-IoT meter (job in, download at its bandwidth,
//!   verify, install, reboot, trial, commit, every status report encoded), on the virtual clock;
//! - `modbus_slave`: what the shard does for one Modbus request to a `power-meter` (parse the
//!   PDU, draw the faults, read the registers, encode the answer) for a 2-register f32 read, the
//!   whole 18-register input block, and a write of the interval; plus the TCP framing around it.
//!
//! Every measurement counts one operation as one element, so criterion's "thrpt" is operations
//! per second on one core. Results and what they mean: docs/benchmarks.md.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fleet_core::load::{FsSource, load_fleet};
use fleet_core::{
    Cohort, Device, DeviceCtx, DeviceId, DeviceState, Effect, Effects, Fleet, Input, RunSeed,
    SimDuration, SimTime,
};
use fleet_engine::scheduler::{Due, Scheduler};
use fleet_metrics::LatencyHistogram;
use fleet_mqtt::codec::{self, Inbound, Version};

/// Wall-clock ms since the epoch at SimTime::ZERO (any fixed value: 2026-01-01).
const EPOCH_MS: u64 = 1_767_225_600_000;

fn demo_fleet() -> Fleet {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/demo.toml");
    load_fleet(&FsSource, &path).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

fn ctx(cohort: &Cohort) -> DeviceCtx<'_> {
    DeviceCtx {
        cohort,
        epoch_ms: EPOCH_MS,
        end: SimTime::NEVER,
        real_network: false,
    }
}

/// Short measurements: the whole file runs in about two minutes.
fn config() -> Criterion {
    Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(30)
}

/// A powered-on device of `cohort`, online: stepped until it asked to connect, then connected.
fn online_device(cohort: &Cohort, id: DeviceId, fx: &mut Effects) -> Device {
    let c = ctx(cohort);
    let mut d = Device::new(RunSeed(1), id, cohort);
    d.power_on_at(SimTime::ZERO);
    for _ in 0..100 {
        if d.state() == DeviceState::Online {
            break;
        }
        let now = d.wake_at();
        fx.clear();
        d.handle(now, Input::Wake, &c, fx);
        if fx.list.contains(&Effect::Connect) {
            fx.clear();
            d.handle(now, Input::Connected, &c, fx);
        }
    }
    assert_eq!(
        d.state(),
        DeviceState::Online,
        "device {id:?} of cohort {} did not come online",
        cohort.name
    );
    d
}

/// One step: wake the device at its deadline. A step that asks to connect (after a link drop)
/// is answered at once with `Connected`, so the device stays online and keeps reporting; a
/// device whose battery ran out is replaced (rare: once per simulated battery life).
fn step(device: &mut Device, cohort: &Cohort, dctx: &DeviceCtx, fx: &mut Effects) {
    let now = device.wake_at();
    if now.is_never() || device.state() == DeviceState::Dead {
        *device = online_device(cohort, device.id, fx);
        return;
    }
    fx.clear();
    device.handle(now, Input::Wake, dctx, fx);
    if fx.list.contains(&Effect::Connect) {
        device.handle(now, Input::Connected, dctx, fx);
    }
}

fn bench_device_step(c: &mut Criterion) {
    let fleet = demo_fleet();
    let mut g = c.benchmark_group("device_step");
    g.throughput(Throughput::Elements(1));
    for cohort in &fleet.cohorts {
        let id = DeviceId(cohort.first_device);
        // Device 0 built as Fleet::cohort_of finds it, as the engine does.
        let cohort = fleet.cohort_of(id);
        let dctx = ctx(cohort);
        let mut fx = Effects::default();
        let mut device = online_device(cohort, id, &mut fx);
        // What a step is made of, for reading the numbers: the share of steps that publish.
        let (mut steps, mut publishing) = (0u32, 0u32);
        while steps < 10_000 {
            step(&mut device, cohort, &dctx, &mut fx);
            steps += 1;
            publishing += u32::from(fx.list.iter().any(|e| matches!(e, Effect::Publish(_))));
        }
        eprintln!(
            "device_step/{}: {:.1} % of steps publish telemetry",
            cohort.profile.name,
            f64::from(publishing) * 100.0 / f64::from(steps)
        );
        g.bench_function(cohort.profile.name.as_str(), |b| {
            b.iter(|| {
                step(&mut device, cohort, &dctx, &mut fx);
                black_box(&fx);
            });
        });
    }
    g.finish();
}

fn bench_encode_telemetry(c: &mut Criterion) {
    let fleet = demo_fleet();
    let mut g = c.benchmark_group("encode_telemetry");
    g.throughput(Throughput::Elements(1));
    for cohort in &fleet.cohorts {
        let id = DeviceId(cohort.first_device);
        let dctx = ctx(cohort);
        let mut fx = Effects::default();
        let mut device = online_device(cohort, id, &mut fx);
        let mut out = Vec::with_capacity(512);
        let mut seq = 0u64;
        let mut at = SimTime(1_000_000_000);
        g.bench_function(cohort.profile.name.as_str(), |b| {
            b.iter(|| {
                seq += 1;
                at += SimDuration::from_secs(10);
                out.clear();
                device.encode_telemetry(at, seq, &dctx, &mut out);
                black_box(&out);
            });
        });
    }
    g.finish();
}

/// Latencies from 50 us to ~10 s, log-spread (what a run's publish-ack histogram sees).
fn latency_values(n: usize) -> Vec<u64> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let u = (x >> 11) as f64 / (1u64 << 53) as f64;
            (50.0 * (200_000.0f64).powf(u)) as u64
        })
        .collect()
}

fn bench_histogram(c: &mut Criterion) {
    let values = latency_values(4096);
    let mut g = c.benchmark_group("histogram_record");
    g.throughput(Throughput::Elements(1));
    let mut h = LatencyHistogram::new();
    let mut i = 0usize;
    g.bench_function("varied_50us_10s", |b| {
        b.iter(|| {
            h.record(black_box(values[i & 4095]));
            i = i.wrapping_add(1);
        });
    });
    g.finish();
    black_box(h.count());
}

fn bench_mqtt_codec(c: &mut Criterion) {
    let fleet = demo_fleet();
    // A real telemetry payload and topic: the first smart meter of the demo.
    let cohort = fleet
        .cohorts
        .iter()
        .find(|c| c.profile.name == "smart-meter")
        .unwrap_or(&fleet.cohorts[0]);
    let dctx = ctx(cohort);
    let mut fx = Effects::default();
    let mut device = online_device(cohort, DeviceId(cohort.first_device), &mut fx);
    let mut payload = Vec::new();
    device.encode_telemetry(SimTime(1_000_000), 1, &dctx, &mut payload);
    let mut device_id = Vec::new();
    device.render_device_id(&dctx, &mut device_id);
    let mut topic = Vec::new();
    cohort
        .profile
        .identity
        .telemetry_topic
        .render_into(&dctx.vars(device.id, &device_id), &mut topic);

    eprintln!(
        "mqtt_codec: topic {} bytes, payload {} bytes",
        topic.len(),
        payload.len()
    );
    let mut g = c.benchmark_group("mqtt_codec");
    g.throughput(Throughput::Elements(1));
    let mut out = BytesMut::with_capacity(1024);
    for (name, version, qos) in [
        ("write_publish_v311_qos0", Version::V311, 0u8),
        ("write_publish_v311_qos1", Version::V311, 1),
        ("write_publish_v5_qos1", Version::V5, 1),
    ] {
        let mut pkid = 0u16;
        g.bench_function(name, |b| {
            b.iter(|| {
                pkid = pkid.wrapping_add(1).max(1);
                out.clear();
                codec::write_publish(
                    &mut out,
                    version,
                    black_box(&topic),
                    qos,
                    false,
                    pkid,
                    black_box(&payload),
                );
                black_box(&out);
            });
        });
    }
    for (name, version, bytes) in [
        (
            "read_puback_v311",
            Version::V311,
            &[0x40u8, 0x02, 0x12, 0x34][..],
        ),
        (
            "read_puback_v5",
            Version::V5,
            &[0x40u8, 0x02, 0x12, 0x34][..],
        ),
    ] {
        let mut buf = BytesMut::with_capacity(64);
        g.bench_function(name, |b| {
            b.iter(|| {
                buf.extend_from_slice(bytes);
                let p = codec::read_packet(&mut buf, version);
                assert!(matches!(p, Ok(Inbound::PubAck(0x1234))), "{p:?}");
                black_box(p)
            });
        });
    }
    g.finish();
}

/// Steady state of a shard's timer heap: pop the earliest wake, push the device's next one
/// (now + its interval, 1-60 s), so the heap keeps its size.
fn bench_scheduler(c: &mut Criterion) {
    let mut g = c.benchmark_group("scheduler");
    g.throughput(Throughput::Elements(1));
    for n in [10_000u32, 100_000] {
        let intervals = latency_values(4096);
        let mut s = Scheduler::with_capacity(n as usize + 16);
        for dev in 0..n {
            s.push(SimTime(u64::from(dev) * 997 % 60_000_000), dev, Due::Wake);
        }
        let mut i = 0usize;
        g.bench_function(format!("pop_push_{}k", n / 1000), |b| {
            b.iter(|| {
                let e = s.pop().expect("the heap never empties");
                let next = SimTime(e.at.0 + 1_000_000 + intervals[i & 4095] * 3 % 59_000_000);
                i = i.wrapping_add(1);
                s.push(next, e.dev, Due::Wake);
                black_box(e.dev)
            });
        });
    }
    // Hourly deadlines of a large fleet (the rollout rehearsals' NB-IoT meters): they wait in
    // the calendar's second level, not in the far heap.
    let n = 1_000_000u32;
    let mut s = Scheduler::with_capacity(n as usize + 16);
    for dev in 0..n {
        s.push(SimTime(u64::from(dev) * 3_600), dev, Due::Wake);
    }
    g.bench_function("pop_push_1000k_hourly", |b| {
        b.iter(|| {
            let e = s.pop().expect("the queue never empties");
            s.push(SimTime(e.at.0 + 3_600_000_000), e.dev, Due::Wake);
            black_box(e.dev)
        });
    });
    g.finish();
}

/// One whole update of an NB-IoT meter (no faults drawn: the firmware model's faults are
/// zeroed), driven like the virtual clock drives it: wake at each deadline, connect at once.
fn bench_ota(c: &mut Criterion) {
    use fleet_core::ota::{JobDoc, JobSource, OtaStage};
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/rollout-week.toml");
    let mut fleet =
        load_fleet(&FsSource, &path).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()));
    let mut model = (*fleet.cohorts[0].firmware).clone();
    for v in &mut model.versions {
        v.ota.faults = Default::default();
    }
    let mut link = fleet.cohorts[0].link.clone();
    link.mtbf = None;
    link.loss = 0.0;
    fleet.cohorts[0].firmware = std::sync::Arc::new(model);
    fleet.cohorts[0].link = link;
    let cohort = &fleet.cohorts[0];
    let dctx = ctx(cohort);
    let mut fx = Effects::default();
    let base = online_device(cohort, DeviceId(0), &mut fx);
    let doc = std::sync::Arc::new(JobDoc {
        job_id: "fw-3.5.0".into(),
        version: "3.5.0".into(),
        url: None,
        size: None,
        sha256: None,
    });
    let mut g = c.benchmark_group("ota");
    g.throughput(Throughput::Elements(1));
    let run = |d: &mut Device, fx: &mut Effects| -> u32 {
        let mut now = d.wake_at().min(SimTime(3_600_000_000));
        fx.clear();
        let job = fleet_core::device::OtaInput::Job {
            doc: &doc,
            source: JobSource::Rollout(0),
        };
        d.handle(now, Input::Ota(job), &dctx, fx);
        let mut steps = 1u32;
        while d.ota_stage() != OtaStage::Idle && steps < 10_000 {
            now = d.wake_at();
            fx.clear();
            d.handle(now, Input::Wake, &dctx, fx);
            if fx.list.contains(&Effect::Connect) {
                d.handle(now, Input::Connected, &dctx, fx);
            }
            steps += 1;
        }
        assert_eq!(d.running_version(), 1, "the update committed 3.5.0");
        steps
    };
    let steps = run(&mut base.clone(), &mut fx);
    eprintln!("ota/update_cycle_nbiot_meter: {steps} device steps per update");
    g.bench_function("update_cycle_nbiot_meter", |b| {
        b.iter_batched(
            || base.clone(),
            |mut d| black_box(run(&mut d, &mut fx)),
            criterion::BatchSize::SmallInput,
        );
    });
    g.finish();
}

fn bench_modbus_slave(c: &mut Criterion) {
    use fleet_metrics::ModbusCounters;
    use fleet_modbus::{Transport, frame, slave};
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/modbus-plant.toml");
    let fleet =
        load_fleet(&FsSource, &path).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()));
    let cohort = &fleet.cohorts[0];
    let mut fx = Effects::default();
    let mut device = online_device(cohort, DeviceId(0), &mut fx);
    let dctx = ctx(cohort);
    let now = device.wake_at();
    let mut counters = ModbusCounters::default();
    let mut g = c.benchmark_group("modbus_slave");
    g.throughput(Throughput::Elements(1));
    let cases: [(&str, &[u8]); 3] = [
        ("read_f32", &[0x04, 0x00, 0x00, 0x00, 0x02]),
        ("read_18_registers", &[0x04, 0x00, 0x00, 0x00, 0x12]),
        ("write_interval", &[0x06, 0x00, 0x00, 0x00, 0x05]),
    ];
    for (name, pdu) in cases {
        g.bench_function(name, |b| {
            b.iter(|| {
                fx.clear();
                let out = slave::execute(
                    &mut device,
                    &dctx,
                    now,
                    &mut fx,
                    &mut counters,
                    black_box(pdu),
                    Transport::Tcp,
                    false,
                );
                black_box(out.pdu.len())
            })
        });
    }
    let mut request = Vec::new();
    frame::encode_tcp(&mut request, 7, 1, &[0x04, 0x00, 0x00, 0x00, 0x12]);
    let mut buf = BytesMut::new();
    let mut out = Vec::with_capacity(64);
    g.bench_function("tcp_frame_decode_encode", |b| {
        b.iter(|| {
            buf.extend_from_slice(black_box(&request));
            let f = frame::decode_tcp(&mut buf).ok().flatten();
            out.clear();
            if let Some(f) = f {
                frame::encode_tcp(&mut out, f.transaction, f.unit, &[0x04, 0x02, 0x00, 0x01]);
            }
            black_box(out.len())
        })
    });
    g.finish();
}

criterion_group! {
    name = hot_paths;
    config = config();
    targets = bench_device_step, bench_encode_telemetry, bench_histogram, bench_mqtt_codec, bench_scheduler, bench_ota, bench_modbus_slave
}
criterion_main!(hot_paths);
