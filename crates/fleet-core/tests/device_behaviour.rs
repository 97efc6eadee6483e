//! The device state machine, driven directly: table-style behaviour cases with timed inputs,
//! and property tests of its accounting against random input sequences.

use std::path::Path;

use fleet_core::load::{EmbeddedSource, load_fleet};
use fleet_core::{
    Device, DeviceCtx, DeviceId, DeviceState, Effect, Effects, Event, Fleet, Input, RunSeed,
    SimDuration, SimTime, TopicKind,
};
use proptest::prelude::*;

const FIRMWARE: &str = r#"
name = "fw"
[[versions]]
version = "1.0.0"
image_size_kb = 10
boot_s = 1
"#;

/// A profile: 10 s reports without jitter, QoS 1, buffer of 3, 1 s -> 8 s backoff without jitter.
const PROFILE: &str = r#"
name = "p"
[identity]
device_id = "d-{id}"
telemetry_topic = "t/{device_id}"
command_topic = "c/{device_id}"
response_topic = "r/{device_id}"
status_topic = "s/{device_id}"
[reporting]
interval = "10s"
qos = 1
offline_buffer = 3
[sensors.x]
kind = "random_walk"
start = 5.0
step = 1.0
min = 0.0
max = 10.0
[link]
reconnect = { initial = "1s", max = "8s", multiplier = 2.0, jitter = 0.0 }
[firmware]
model = "fw.toml"
version = "1.0.0"
"#;

fn fleet(profile_extra: &str) -> Fleet {
    let profile: &'static str = Box::leak(format!("{PROFILE}{profile_extra}").into_boxed_str());
    let scenario = "name = \"s\"\nduration = \"1d\"\n[[cohorts]]\nname = \"c\"\nprofile = \"p.toml\"\ncount = 1\n";
    let files: &'static [(&'static str, &'static str)] = Box::leak(
        vec![
            ("s.toml", scenario),
            ("p.toml", profile),
            ("fw.toml", FIRMWARE),
        ]
        .into_boxed_slice(),
    );
    load_fleet(&EmbeddedSource(files), Path::new("s.toml")).expect("valid")
}

struct Rig {
    fleet: Fleet,
    device: Device,
    fx: Effects,
    log: Vec<(u64, Event)>,
    effects: Vec<(u64, Effect)>,
}

impl Rig {
    fn new(profile_extra: &str, seed: u64) -> Rig {
        let fleet = fleet(profile_extra);
        let mut device = Device::new(RunSeed(seed), DeviceId(0), &fleet.cohorts[0]);
        device.power_on_at(SimTime::ZERO);
        Rig {
            fleet,
            device,
            fx: Effects::default(),
            log: Vec::new(),
            effects: Vec::new(),
        }
    }

    fn input(&mut self, at_s: f64, input: Input) {
        let now = SimTime(SimDuration::from_secs_f64(at_s).as_micros());
        let ctx = DeviceCtx {
            cohort: &self.fleet.cohorts[0],
            epoch_ms: 0,
            end: SimTime::NEVER,
            real_network: false,
        };
        self.fx.clear();
        self.device.handle(now, input, &ctx, &mut self.fx);
        self.log
            .extend(self.fx.events.iter().map(|e| (now.as_micros(), *e)));
        self.effects
            .extend(self.fx.list.iter().map(|e| (now.as_micros(), e.clone())));
    }

    /// Wakes the device at each of its deadlines up to `until_s`, answering connects with `answer`.
    fn run_until(&mut self, until_s: f64, answer: Option<Input<'static>>) {
        let until = SimTime(SimDuration::from_secs_f64(until_s).as_micros());
        while self.device.wake_at() <= until {
            let at = self.device.wake_at().as_secs_f64();
            self.input(at, Input::Wake);
            if let (Some(a), true) = (answer, self.fx.list.contains(&Effect::Connect)) {
                self.input(at, a);
            }
        }
    }

    fn events(&self) -> Vec<Event> {
        self.log.iter().map(|(_, e)| *e).collect()
    }

    fn reports(&self) -> Vec<u64> {
        self.log
            .iter()
            .filter_map(|(_, e)| {
                if let Event::Report { seq } = e {
                    Some(*seq)
                } else {
                    None
                }
            })
            .collect()
    }
}

#[test]
fn a_device_boots_connects_says_online_and_reports_on_its_interval() {
    let mut r = Rig::new("", 1);
    r.run_until(60.0, Some(Input::Connected));
    let ev = r.events();
    assert_eq!(
        &ev[..3],
        &[
            Event::PoweredOn,
            Event::Booted,
            Event::ConnectAttempt { attempt: 0 }
        ]
    );
    assert!(ev.contains(&Event::Connected));
    let status = r.effects.iter().find_map(|(_, e)| match e {
        Effect::Publish(p) if p.topic == TopicKind::Status => Some(p.clone()),
        _ => None,
    });
    assert!(
        status.is_some_and(|p| p.retain),
        "a retained status message after connecting"
    );
    let times: Vec<u64> = r
        .log
        .iter()
        .filter(|(_, e)| matches!(e, Event::Report { .. }))
        .map(|(t, _)| *t)
        .collect();
    assert!(times.len() >= 5, "{times:?}");
    assert!(
        times.windows(2).all(|w| w[1] - w[0] == 10_000_000),
        "no jitter: exactly 10 s apart: {times:?}"
    );
    assert_eq!(r.reports(), (1..=times.len() as u64).collect::<Vec<_>>());
}

#[test]
fn reports_made_offline_are_buffered_and_flushed_in_order_and_the_oldest_dropped_when_full() {
    let mut r = Rig::new("", 2);
    // Never answer the connect: the device stays in Connecting and buffers.
    r.run_until(55.0, None);
    let ev = r.events();
    let buffered: Vec<u64> = ev
        .iter()
        .filter_map(|e| {
            if let Event::Buffered { seq } = e {
                Some(*seq)
            } else {
                None
            }
        })
        .collect();
    let dropped: Vec<u64> = ev
        .iter()
        .filter_map(|e| {
            if let Event::DroppedOffline { seq } = e {
                Some(*seq)
            } else {
                None
            }
        })
        .collect();
    assert!(buffered.len() >= 5, "{ev:?}");
    assert_eq!(
        dropped,
        (1..=(buffered.len() as u64 - 3)).collect::<Vec<_>>(),
        "buffer of 3 keeps the newest"
    );
    assert_eq!(r.device.buffered(), 3);
    r.effects.clear();
    r.input(56.0, Input::Connected);
    let flushed: Vec<(u64, bool)> = r
        .effects
        .iter()
        .filter_map(|(_, e)| match e {
            Effect::Publish(p) if p.topic == TopicKind::Telemetry => Some((p.seq, p.from_buffer)),
            _ => None,
        })
        .collect();
    let n = buffered.len() as u64;
    assert_eq!(flushed, vec![(n - 2, true), (n - 1, true), (n, true)]);
    assert_eq!(r.device.buffered(), 0);
}

#[test]
fn failed_connects_back_off_exponentially_up_to_the_maximum() {
    let mut r = Rig::new("", 3);
    r.run_until(100.0, Some(Input::ConnectFailed));
    let delays: Vec<u64> = r
        .events()
        .iter()
        .filter_map(|e| {
            if let Event::ConnectFailed { retry_in } = e {
                Some(retry_in.as_millis())
            } else {
                None
            }
        })
        .take(6)
        .collect();
    assert_eq!(delays, vec![1_000, 2_000, 4_000, 8_000, 8_000, 8_000]);
}

#[test]
fn backoff_jitter_stays_within_its_fraction() {
    let b = fleet_core::profile::Backoff {
        initial: SimDuration::from_secs(2),
        max: SimDuration::from_secs(60),
        multiplier: 2.0,
        jitter: 0.5,
    };
    for (attempt, base) in [(0u16, 2.0), (1, 4.0), (5, 60.0)] {
        for u in [0.0, 0.3, 0.999] {
            let d = fleet_core::device::backoff_delay(&b, attempt, u).as_secs_f64();
            assert!(
                d <= base && d >= base * 0.5,
                "attempt {attempt}, u {u}: {d}"
            );
        }
    }
}

#[test]
fn an_outage_drops_the_link_and_the_device_retries_without_network_until_it_ends() {
    let mut r = Rig::new("", 4);
    r.run_until(20.0, Some(Input::Connected));
    r.effects.clear();
    r.input(
        20.0,
        Input::Outage {
            until: SimTime::ZERO + SimDuration::from_secs(40),
        },
    );
    assert_eq!(r.effects.first().map(|(_, e)| e), Some(&Effect::DropLink));
    assert_eq!(r.device.state(), DeviceState::Offline);
    r.effects.clear();
    r.run_until(39.9, Some(Input::Connected));
    assert!(
        r.effects.iter().all(|(_, e)| *e != Effect::Connect),
        "no connect while the link is down"
    );
    assert!(r.events().iter().any(|e| matches!(e, Event::NoLink { .. })));
    r.run_until(80.0, Some(Input::Connected));
    assert_eq!(
        r.device.state(),
        DeviceState::Online,
        "back after the outage"
    );
}

#[test]
fn a_battery_that_runs_out_drops_the_link_and_the_device_goes_dark_for_good() {
    let mut r = Rig::new(
        "[battery]\ncapacity_mah = 1\nidle_ma = 36\ntx_mah = 0.01\nlow_percent = 50\nlow_interval_factor = 2\n",
        5,
    );
    // 1 mAh at 36 mA lasts 100 s.
    r.run_until(1_000.0, Some(Input::Connected));
    let ev = r.events();
    assert!(ev.contains(&Event::BatteryLow));
    assert!(ev.contains(&Event::BatteryDepleted));
    assert_eq!(r.device.state(), DeviceState::Dead);
    assert!(r.device.wake_at().is_never());
    let died_at = r
        .log
        .iter()
        .find(|(_, e)| *e == Event::BatteryDepleted)
        .map(|(t, _)| *t)
        .unwrap();
    // 100 s of idle draw, a little less for the messages sent (0.01 mAh each).
    assert!(
        (90_000_000..=100_000_001).contains(&died_at),
        "died at {died_at} us"
    );
    let times: Vec<u64> = r
        .log
        .iter()
        .filter(|(_, e)| matches!(e, Event::Report { .. }))
        .map(|(t, _)| *t)
        .collect();
    let gaps: Vec<u64> = times
        .windows(2)
        .map(|w| (w[1] - w[0]) / 1_000_000)
        .collect();
    assert!(
        gaps.first() == Some(&10) && gaps.last() == Some(&20),
        "low battery doubles the interval: {gaps:?}"
    );
}

#[test]
fn commands_are_answered_and_act() {
    let mut r = Rig::new("", 6);
    r.run_until(15.0, Some(Input::Connected));
    let answers = |r: &Rig| -> Vec<serde_json::Value> {
        r.effects
            .iter()
            .filter_map(|(_, e)| match e {
                Effect::Publish(p) if p.topic == TopicKind::Response => Some(p.clone()),
                _ => None,
            })
            .map(|p| {
                serde_json::from_slice(
                    &r.fx.payload[p.payload.start as usize..p.payload.end as usize],
                )
                .unwrap()
            })
            .collect()
    };
    r.effects.clear();
    r.input(
        15.0,
        Input::Command(br#"{"cmd":"set_interval","interval_ms":2000,"request_id":"a"}"#),
    );
    let a = answers(&r);
    assert_eq!(a[0]["status"], "ok");
    assert_eq!(a[0]["interval_ms"], 2000);
    assert_eq!(a[0]["request_id"], "a");
    r.effects.clear();
    r.input(15.0, Input::Command(b"{\"cmd\":\"fly\"}"));
    assert_eq!(answers(&r)[0]["status"], "error");
    let before = r.reports().len();
    r.run_until(25.0, Some(Input::Connected));
    assert!(r.reports().len() - before >= 4, "2 s interval now");
    r.effects.clear();
    r.input(25.5, Input::Command(br#"{"cmd":"reboot"}"#));
    assert!(r.effects.iter().any(|(_, e)| *e == Effect::Disconnect));
    assert_eq!(r.device.state(), DeviceState::Booting);
    r.run_until(40.0, Some(Input::Connected));
    assert_eq!(
        r.device.state(),
        DeviceState::Online,
        "back after the reboot"
    );
}

#[derive(Clone, Debug)]
enum Step {
    Wake,
    Connected,
    ConnectFailed,
    LinkLost,
    Command(u8),
    Outage(u32),
    Reboot(u32),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => Just(Step::Wake),
        2 => Just(Step::Connected),
        1 => Just(Step::ConnectFailed),
        1 => Just(Step::LinkLost),
        1 => (0u8..4).prop_map(Step::Command),
        1 => (1u32..120).prop_map(Step::Outage),
        1 => (0u32..30).prop_map(Step::Reboot),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Whatever happens to a device, every report is accounted for exactly once (sent, lost,
    /// buffered or dropped), seq counts up by one, and the device never asks to wake in the past.
    #[test]
    fn every_report_is_accounted_for_and_seq_counts_up(seed in any::<u64>(), steps in prop::collection::vec((1u32..20_000, step()), 1..200)) {
        let mut r = Rig::new("[battery]\ncapacity_mah = 5\nidle_ma = 1\ntx_mah = 0.01\n", seed);
        let mut now_ms = 0u64;
        let mut sent = std::collections::BTreeSet::new();
        for (dt_ms, s) in steps {
            now_ms += u64::from(dt_ms);
            let wake = r.device.wake_at();
            if let Step::Wake = s {
                if wake.is_never() {
                    continue;
                }
                // Time only moves forward, as in the engine: a deadline is run when it is due or later.
                now_ms = now_ms.max(wake.as_micros().div_ceil(1000));
            }
            let at = now_ms as f64 / 1000.0;
            match s {
                Step::Wake => r.input(at, Input::Wake),
                Step::Connected => r.input(at, Input::Connected),
                Step::ConnectFailed => r.input(at, Input::ConnectFailed),
                Step::LinkLost => r.input(at, Input::LinkLost),
                Step::Command(k) => {
                    let body: &[u8] = match k { 0 => br#"{"cmd":"ping"}"#, 1 => br#"{"cmd":"report_now"}"#, 2 => br#"{"cmd":"set_interval","interval_ms":500}"#, _ => b"garbage" };
                    r.input(at, Input::Command(body));
                }
                Step::Outage(s) => r.input(at, Input::Outage { until: SimTime(now_ms * 1000 + u64::from(s) * 1_000_000) }),
                Step::Reboot(s) => r.input(at, Input::Reboot { at: SimTime(now_ms * 1000 + u64::from(s) * 1_000_000) }),
            }
            for p in r.fx.list.iter().filter_map(|e| if let Effect::Publish(p) = e { Some(p) } else { None }) {
                if p.topic == TopicKind::Telemetry {
                    prop_assert!(sent.insert(p.seq), "seq {} sent twice", p.seq);
                    let v: serde_json::Value = serde_json::from_slice(r.fx.payload_of(p)).expect("telemetry is JSON");
                    prop_assert_eq!(v["seq"].as_u64(), Some(p.seq));
                }
            }
        }
        let reports = r.reports();
        prop_assert_eq!(reports.clone(), (1..=reports.len() as u64).collect::<Vec<_>>());
        let ev = r.events();
        let count = |f: &dyn Fn(&Event) -> bool| ev.iter().filter(|e| f(e)).count();
        let lost = count(&|e| matches!(e, Event::LostOnLink { .. }));
        let dropped = count(&|e| matches!(e, Event::DroppedOffline { .. }));
        // Each report is sent (directly or from the buffer), lost, dropped, or still buffered.
        prop_assert_eq!(reports.len(), sent.len() + lost + dropped + r.device.buffered());
    }
}

// ------------------------------------------------------------------ Modbus -------------------

use fleet_core::modbus::{ForcedFault, Table};

const MODBUS: &str = r#"
[modbus]
[[modbus.registers]]
name = "x"
table = "input"
address = 0
type = "f64"
source = "sensor.x"
[[modbus.registers]]
name = "x_tenths"
table = "input"
address = 4
type = "i32"
order = "CDAB"
scale = 0.1
source = "sensor.x"
[[modbus.registers]]
name = "seq"
table = "input"
address = 6
type = "u32"
source = "seq"
[[modbus.registers]]
name = "interval"
table = "holding"
address = 0
type = "u16"
source = "interval"
"#;

impl Rig {
    fn ctx(&self) -> DeviceCtx<'_> {
        DeviceCtx {
            cohort: &self.fleet.cohorts[0],
            epoch_ms: 0,
            end: SimTime::NEVER,
            real_network: false,
        }
    }

    fn read(&self, at_s: f64, table: Table, addr: u16, n: u16) -> Result<Vec<u16>, u8> {
        let mut out = Vec::new();
        let now = SimTime(SimDuration::from_secs_f64(at_s).as_micros());
        self.device
            .modbus_read(table, addr, n, now, &self.ctx(), false, &mut out)
            .map(|_| out)
    }

    fn serving(&self, at_s: f64) -> bool {
        self.device
            .modbus_serving(SimTime(SimDuration::from_secs_f64(at_s).as_micros()))
    }
}

fn secs(s: u64) -> SimTime {
    SimTime(s * 1_000_000)
}

fn x_in(payload: &[u8]) -> f64 {
    let text = std::str::from_utf8(payload).expect("utf-8");
    let start = text.find("\"x\":").expect("values.x") + 4;
    let rest = &text[start..];
    let end = rest.find(['}', ',']).expect("end of number");
    rest[..end].parse().expect("a number")
}

fn f64_of(regs: &[u16]) -> f64 {
    f64::from_bits(regs.iter().fold(0u64, |a, w| (a << 16) | u64::from(*w)))
}

#[test]
fn a_modbus_master_reads_what_the_latest_telemetry_said() {
    let mut r = Rig::new(MODBUS, 5);
    let mut checked = 0;
    let until = secs(120);
    while r.device.wake_at() <= until {
        let at = r.device.wake_at().as_secs_f64();
        r.fx.clear();
        let ctx = DeviceCtx {
            cohort: &r.fleet.cohorts[0],
            epoch_ms: 0,
            end: SimTime::NEVER,
            real_network: false,
        };
        let now = r.device.wake_at();
        r.device.handle(now, Input::Wake, &ctx, &mut r.fx);
        if r.fx.list.contains(&Effect::Connect) {
            r.fx.clear();
            r.device.handle(now, Input::Connected, &ctx, &mut r.fx);
        }
        let telemetry = r.fx.list.iter().find_map(|e| match e {
            Effect::Publish(p) if p.topic == TopicKind::Telemetry => Some(x_in(r.fx.payload_of(p))),
            _ => None,
        });
        if let Some(x) = telemetry {
            let regs = r.read(at, Table::Input, 0, 8).expect("readable");
            assert_eq!(f64_of(&regs[..4]), x, "f64 register = telemetry value");
            // i32, CDAB, tenths: low word first.
            let tenths = i32::from_be_bytes(
                [regs[5].to_be_bytes(), regs[4].to_be_bytes()]
                    .concat()
                    .try_into()
                    .expect("4 bytes"),
            );
            assert_eq!(f64::from(tenths), (x * 10.0).round(), "scaled register");
            let seq = (u32::from(regs[6]) << 16) | u32::from(regs[7]);
            assert_eq!(u64::from(seq), r.device.seq());
            checked += 1;
        }
    }
    assert!(checked >= 10, "{checked} reports compared");
}

#[test]
fn a_device_without_mqtt_samples_and_serves_but_never_connects() {
    let mut r = Rig::new(&format!("{MODBUS}\n[mqtt]\nenabled = false\n"), 7);
    assert!(!r.serving(0.5), "booting: not serving");
    r.run_until(60.0, Some(Input::Connected));
    let ev = r.events();
    assert!(
        !ev.iter().any(|e| matches!(e, Event::ConnectAttempt { .. })),
        "{ev:?}"
    );
    assert!(
        !r.effects
            .iter()
            .any(|(_, e)| matches!(e, Effect::Publish(_) | Effect::Connect))
    );
    let samples = ev
        .iter()
        .filter(|e| matches!(e, Event::Sampled { .. }))
        .count();
    assert!(samples >= 5, "{ev:?}");
    assert_eq!(r.device.state(), DeviceState::Online);
    assert!(r.serving(60.0));
    // An outage silences it until the link is back.
    r.input(61.0, Input::Outage { until: secs(70) });
    assert!(!r.serving(65.0));
    r.run_until(120.0, None);
    assert!(r.serving(120.0));
    assert!(
        !r.effects.iter().any(|(_, e)| matches!(e, Effect::DropLink)),
        "no session to drop"
    );
}

#[test]
fn a_scheduled_fault_holds_until_its_end_and_draws_are_reproducible() {
    let mut r = Rig::new(MODBUS, 9);
    r.run_until(5.0, Some(Input::Connected));
    r.input(
        10.0,
        Input::ModbusFault {
            fault: ForcedFault::Exception(6),
            until: secs(20),
        },
    );
    let ctx = DeviceCtx {
        cohort: &r.fleet.cohorts[0],
        epoch_ms: 0,
        end: SimTime::NEVER,
        real_network: false,
    };
    assert_eq!(r.device.modbus_faults(secs(15), &ctx).exception, Some(6));
    assert_eq!(r.device.modbus_faults(secs(25), &ctx).exception, None);
    // With probabilities, the same seed gives the same decisions.
    let faulty = format!(
        "{MODBUS}\n[modbus.faults]\nsilence = 0.3\nexception = 0.2\ndelay_ms = {{ dist = \"exponential\", mean = 20.0 }}\n"
    );
    let decisions = |seed| {
        let r = Rig::new(&faulty, seed);
        let mut d = r.device.clone();
        let ctx = DeviceCtx {
            cohort: &r.fleet.cohorts[0],
            epoch_ms: 0,
            end: SimTime::NEVER,
            real_network: false,
        };
        (0..200)
            .map(|i| d.modbus_faults(secs(i), &ctx))
            .collect::<Vec<_>>()
    };
    let a = decisions(3);
    assert_eq!(a, decisions(3));
    assert_ne!(a, decisions(4));
    let silent = a.iter().filter(|d| d.silence).count();
    assert!((30..90).contains(&silent), "{silent} of 200 at p = 0.3");
}

#[test]
fn writing_the_interval_register_re_times_the_reports() {
    let mut r = Rig::new(MODBUS, 11);
    r.run_until(30.0, Some(Input::Connected));
    let ctx = DeviceCtx {
        cohort: &r.fleet.cohorts[0],
        epoch_ms: 0,
        end: SimTime::NEVER,
        real_network: false,
    };
    let mut fx = Effects::default();
    let now = secs(31);
    assert_eq!(
        r.device
            .modbus_write(Table::Holding, 0, &[0], now, &ctx, &mut fx),
        Err(fleet_core::modbus::exception::ILLEGAL_DATA_VALUE)
    );
    assert_eq!(
        r.device
            .modbus_write(Table::Holding, 0, &[2], now, &ctx, &mut fx),
        Ok(())
    );
    assert!(fx.events.contains(&Event::IntervalChanged {
        interval: SimDuration::from_secs(2)
    }));
    let before = r.device.seq();
    r.run_until(51.0, Some(Input::Connected));
    let made = r.device.seq() - before;
    assert!(
        (9..=11).contains(&made),
        "{made} reports in 20 s at a 2 s interval"
    );
    assert_eq!(r.read(51.0, Table::Holding, 0, 1), Ok(vec![2]));
}

proptest! {
    /// Any read or write a master can send to any table of a shipped register map gives data of
    /// the right length or an exception code, never a panic; a failed write changes nothing.
    #[test]
    fn register_map_reads_and_writes_never_panic(
        table in 0usize..4,
        addr in any::<u16>(),
        count in 0u16..130,
        values in proptest::collection::vec(any::<u16>(), 0..130),
    ) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scenarios/modbus-plant.toml");
        let fleet = fleet_core::load::load_fleet(&fleet_core::load::FsSource, &path).expect("plant");
        let cohort = &fleet.cohorts[0];
        let ctx = DeviceCtx { cohort, epoch_ms: 0, end: SimTime::NEVER,
        real_network: false,
    };
        let mut d = Device::new(RunSeed(1), DeviceId(0), cohort);
        d.power_on_at(SimTime::ZERO);
        let mut fx = Effects::default();
        for _ in 0..5 {
            let now = d.wake_at();
            fx.clear();
            d.handle(now, Input::Wake, &ctx, &mut fx);
        }
        let now = secs(10);
        let t = Table::ALL[table];
        let mut out = Vec::new();
        match d.modbus_read(t, addr, count, now, &ctx, false, &mut out) {
            Ok(()) => prop_assert_eq!(out.len(), usize::from(count)),
            Err(code) => prop_assert!(matches!(code, 1..=4 | 0x0B), "{code}"),
        }
        let mut before = Vec::new();
        let _ = d.modbus_read(Table::Holding, 0, 7, now, &ctx, false, &mut before);
        let r = d.modbus_write(t, addr, &values, now, &ctx, &mut fx);
        if r.is_err() {
            let mut after = Vec::new();
            let _ = d.modbus_read(Table::Holding, 0, 7, now, &ctx, false, &mut after);
            prop_assert_eq!(before, after, "a refused write changed the device");
        }
    }

    /// A line template from arbitrary text parses or says why; it never panics.
    #[test]
    fn any_line_template_parses_or_explains(text in ".{0,80}") {
        let _ = fleet_core::serial::parse_line_template(&text, &[]);
    }
}
