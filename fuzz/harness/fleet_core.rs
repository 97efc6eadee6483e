//! Bad-input checks of fleet-core's entry points, shared by the fuzz targets
//! (`fuzz/fuzz_targets/{scenario,profile,firmware}_file.rs`, `device_message.rs`) and by
//! `crates/fleet-core/tests/bad_input.rs` (proptest and the corpus replay). Each function takes
//! the raw input, runs it through the same public functions the program uses, and panics when
//! a documented invariant breaks: no panic inside, an `Err` that explains (non-empty message,
//! naming a file the loader was reading), devices that only publish well-formed JSON.

use std::cell::RefCell;
use std::path::Path;
use std::sync::OnceLock;

use fleet_core::load::{
    EmbeddedSource, FileSource, load_firmware, load_fleet, load_profile, normalize, validate_file,
};
use fleet_core::ota::{parse_aws_reply, parse_generic};
use fleet_core::{
    ConfigErrors, Device, DeviceCtx, DeviceId, DeviceState, Effect, Effects, Fleet, Input, RunSeed,
    SimTime, TopicKind,
};

/// Every profile and firmware model fleetsim ships, by path from the workspace root, so a
/// fuzzed scenario can name them the way the shipped scenarios do.
pub const SHIPPED: &[(&str, &str)] = &[
    (
        "device-profiles/env-sensor.toml",
        include_str!("../../device-profiles/env-sensor.toml"),
    ),
    (
        "device-profiles/gnss-receiver.toml",
        include_str!("../../device-profiles/gnss-receiver.toml"),
    ),
    (
        "device-profiles/gps-tracker.toml",
        include_str!("../../device-profiles/gps-tracker.toml"),
    ),
    (
        "device-profiles/industrial-gateway.toml",
        include_str!("../../device-profiles/industrial-gateway.toml"),
    ),
    (
        "device-profiles/lab-device.toml",
        include_str!("../../device-profiles/lab-device.toml"),
    ),
    (
        "device-profiles/load-meter.toml",
        include_str!("../../device-profiles/load-meter.toml"),
    ),
    (
        "device-profiles/lte-modem.toml",
        include_str!("../../device-profiles/lte-modem.toml"),
    ),
    (
        "device-profiles/nbiot-meter.toml",
        include_str!("../../device-profiles/nbiot-meter.toml"),
    ),
    (
        "device-profiles/power-meter.toml",
        include_str!("../../device-profiles/power-meter.toml"),
    ),
    (
        "device-profiles/rtu-meter.toml",
        include_str!("../../device-profiles/rtu-meter.toml"),
    ),
    (
        "device-profiles/smart-meter.toml",
        include_str!("../../device-profiles/smart-meter.toml"),
    ),
    (
        "device-profiles/weather-station.toml",
        include_str!("../../device-profiles/weather-station.toml"),
    ),
    (
        "firmware-models/env-fw.toml",
        include_str!("../../firmware-models/env-fw.toml"),
    ),
    (
        "firmware-models/gateway-fw.toml",
        include_str!("../../firmware-models/gateway-fw.toml"),
    ),
    (
        "firmware-models/lab-fw.toml",
        include_str!("../../firmware-models/lab-fw.toml"),
    ),
    (
        "firmware-models/meter-fw.toml",
        include_str!("../../firmware-models/meter-fw.toml"),
    ),
    (
        "firmware-models/nbiot-meter-fw.toml",
        include_str!("../../firmware-models/nbiot-meter-fw.toml"),
    ),
    (
        "firmware-models/tracker-fw.toml",
        include_str!("../../firmware-models/tracker-fw.toml"),
    ),
];

/// Where the fuzzed file sits (so `../device-profiles/x.toml` resolves as in the real tree).
pub const SCENARIO_PATH: &str = "scenarios/fuzz.toml";
pub const PROFILE_PATH: &str = "device-profiles/fuzz.toml";
pub const FIRMWARE_PATH: &str = "firmware-models/fuzz.toml";

/// The fuzzed file at one path, the shipped files elsewhere. Like `FsSource`, bytes that are not
/// UTF-8 cannot be read. Remembers every path asked for: errors must name one of them.
struct Files<'a> {
    path: &'a str,
    input: &'a [u8],
    asked: RefCell<Vec<String>>,
}

impl<'a> Files<'a> {
    fn new(path: &'a str, input: &'a [u8]) -> Self {
        Files {
            path,
            input,
            asked: RefCell::new(vec![path.to_string()]),
        }
    }
}

impl FileSource for Files<'_> {
    fn read(&self, path: &Path) -> Result<String, String> {
        self.asked.borrow_mut().push(path.display().to_string());
        let key = normalize(path);
        if key == Path::new(self.path) {
            return std::str::from_utf8(self.input)
                .map(str::to_string)
                .map_err(|e| format!("cannot read: {e}"));
        }
        SHIPPED
            .iter()
            .find(|(name, _)| Path::new(name) == key)
            .map(|(_, text)| (*text).to_string())
            .ok_or_else(|| "cannot read: no such file".to_string())
    }
}

/// An `Err` explains: at least one error, each with a message, naming a file that was read.
fn check_errors(errors: &ConfigErrors, files: &Files, what: &str) {
    assert!(!errors.is_empty(), "{what}: an Err without any error");
    let asked = files.asked.borrow();
    for e in &errors.0 {
        assert!(
            !e.message.trim().is_empty(),
            "{what}: an error without a message: {e:?}"
        );
        assert!(
            asked.contains(&e.file),
            "{what}: the error names {:?}, not a file it read ({asked:?}): {e}",
            e.file
        );
        let shown = e.to_string();
        assert!(
            shown.starts_with(&e.file),
            "{what}: the message does not start with the file: {shown}"
        );
    }
}

/// A scenario file: `load_fleet` (what `fleetsim run` does) and `validate_file` (`fleetsim
/// validate`); a fleet that loads has its first devices powered on and stepped.
pub fn scenario_file(data: &[u8]) {
    let files = Files::new(SCENARIO_PATH, data);
    match load_fleet(&files, Path::new(SCENARIO_PATH)) {
        Ok(fleet) => run_devices(&fleet),
        Err(e) => check_errors(&e, &files, "load_fleet"),
    }
    let files = Files::new(SCENARIO_PATH, data);
    if let Err(e) = validate_file(&files, Path::new(SCENARIO_PATH)) {
        check_errors(&e, &files, "validate_file");
    }
}

/// A scenario that runs two devices of the fuzzed profile.
const PROFILE_SCENARIO: &str = r#"
name = "fuzz"
duration = "1h"
[[cohorts]]
name = "c"
profile = "../device-profiles/fuzz.toml"
count = 2
"#;
const PROFILE_SCENARIO_PATH: &str = "scenarios/profile.toml";

/// A device profile: `load_profile`, `validate_file`, and a scenario that uses it.
pub fn profile_file(data: &[u8]) {
    let files = Files::new(PROFILE_PATH, data);
    if let Err(e) = load_profile(&files, Path::new(PROFILE_PATH)) {
        check_errors(&e, &files, "load_profile");
    }
    let files = Files::new(PROFILE_PATH, data);
    if let Err(e) = validate_file(&files, Path::new(PROFILE_PATH)) {
        check_errors(&e, &files, "validate_file");
    }
    // The scenario is fixed: serve it beside the fuzzed profile.
    struct WithScenario<'a>(Files<'a>);
    impl FileSource for WithScenario<'_> {
        fn read(&self, path: &Path) -> Result<String, String> {
            if normalize(path) == Path::new(PROFILE_SCENARIO_PATH) {
                return Ok(PROFILE_SCENARIO.to_string());
            }
            self.0.read(path)
        }
    }
    let files = WithScenario(Files::new(PROFILE_PATH, data));
    files
        .0
        .asked
        .borrow_mut()
        .push(PROFILE_SCENARIO_PATH.to_string());
    match load_fleet(&files, Path::new(PROFILE_SCENARIO_PATH)) {
        Ok(fleet) => run_devices(&fleet),
        Err(e) => check_errors(&e, &files.0, "load_fleet"),
    }
}

/// A firmware model: `load_firmware` and `validate_file`.
pub fn firmware_file(data: &[u8]) {
    let files = Files::new(FIRMWARE_PATH, data);
    if let Err(e) = load_firmware(&files, Path::new(FIRMWARE_PATH)) {
        check_errors(&e, &files, "load_firmware");
    }
    let files = Files::new(FIRMWARE_PATH, data);
    if let Err(e) = validate_file(&files, Path::new(FIRMWARE_PATH)) {
        check_errors(&e, &files, "validate_file");
    }
}

/// Most devices and steps `run_devices` takes (a bound on every input's cost).
const MAX_COHORTS_RUN: usize = 4;
const MAX_STEPS: usize = 48;

/// Powers on the first device of the first cohorts and steps it through boot, connect and
/// reports: validated settings must not make the device model panic.
fn run_devices(fleet: &Fleet) {
    let end = SimTime(fleet.settings.duration.as_micros());
    for cohort in fleet
        .cohorts
        .iter()
        .filter(|c| c.count > 0)
        .take(MAX_COHORTS_RUN)
    {
        let ctx = DeviceCtx {
            cohort,
            epoch_ms: 0,
            end,
            real_network: false,
        };
        let mut dev = Device::new(
            RunSeed(fleet.settings.seed),
            DeviceId(cohort.first_device),
            cohort,
        );
        dev.power_on_at(SimTime::ZERO);
        let mut fx = Effects::default();
        for _ in 0..MAX_STEPS {
            let now = dev.wake_at();
            if now.is_never() {
                break;
            }
            step(&mut dev, now, Input::Wake, &ctx, &mut fx);
        }
    }
}

/// One input, answering a connection attempt at once (a simulated broker that accepts), and
/// the checks every step must pass.
fn step(dev: &mut Device, now: SimTime, input: Input, ctx: &DeviceCtx, fx: &mut Effects) {
    fx.clear();
    dev.handle(now, input, ctx, fx);
    check_effects(fx);
    if fx.list.contains(&Effect::Connect) {
        fx.clear();
        dev.handle(now, Input::Connected, ctx, fx);
        check_effects(fx);
    }
}

/// Every publish has its payload inside the buffer and is a JSON object (what the device echoes
/// back, a request id or a job id, is escaped); an error response says what the error is; an
/// update's topic is UTF-8.
fn check_effects(fx: &Effects) {
    for effect in &fx.list {
        let Effect::Publish(p) = effect else { continue };
        assert!(
            p.payload.start <= p.payload.end && p.payload.end as usize <= fx.payload.len(),
            "publish payload {:?} outside the buffer of {} bytes",
            p.payload,
            fx.payload.len()
        );
        let (topic, body) = p.split(fx.payload_of(p));
        let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_else(|e| {
            panic!(
                "a {:?} publish is not JSON ({e}): {}",
                p.topic,
                String::from_utf8_lossy(body)
            )
        });
        assert!(
            v.is_object(),
            "a {:?} publish is not a JSON object: {v}",
            p.topic
        );
        if p.topic == TopicKind::Response && v["status"] == "error" {
            let why = v["error"].as_str().unwrap_or_default();
            assert!(
                !why.trim().is_empty(),
                "an error response without a reason: {v}"
            );
        }
        if p.topic == TopicKind::Ota {
            assert!(
                !topic.is_empty() && std::str::from_utf8(topic).is_ok(),
                "an update publish without a UTF-8 topic: {topic:?}"
            );
        }
    }
}

// ------------------------------------------------------------------ device messages --------

/// The OTA lab: `aws` devices 0..4 (AWS IoT Jobs), `generic` devices 4..6 (the generic job
/// protocol); every device has command and response topics.
const LAB: &[(&str, &str)] = &[
    (
        "scenarios/ota-lab.toml",
        include_str!("../../scenarios/ota-lab.toml"),
    ),
    (
        "device-profiles/lab-device.toml",
        include_str!("../../device-profiles/lab-device.toml"),
    ),
    (
        "firmware-models/lab-fw.toml",
        include_str!("../../firmware-models/lab-fw.toml"),
    ),
];

/// The lab fleet and one online device of each protocol (cloned for every input).
struct Lab {
    fleet: Fleet,
    aws: (Device, SimTime),
    generic: (Device, SimTime),
}

fn lab() -> &'static Lab {
    static LAB_FLEET: OnceLock<Lab> = OnceLock::new();
    LAB_FLEET.get_or_init(|| {
        let fleet = match load_fleet(&EmbeddedSource(LAB), Path::new("scenarios/ota-lab.toml")) {
            Ok(f) => f,
            Err(e) => panic!("the shipped OTA lab scenario does not load: {e}"),
        };
        let aws = online(&fleet, DeviceId(0));
        let generic = online(&fleet, DeviceId(4));
        Lab {
            fleet,
            aws,
            generic,
        }
    })
}

fn ctx_of(fleet: &Fleet, id: DeviceId) -> DeviceCtx<'_> {
    DeviceCtx {
        cohort: fleet.cohort_of(id),
        epoch_ms: 1_700_000_000_000,
        end: SimTime::NEVER,
        real_network: false,
    }
}

/// Device `id` powered on, booted and connected; and the time it got there.
fn online(fleet: &Fleet, id: DeviceId) -> (Device, SimTime) {
    let ctx = ctx_of(fleet, id);
    let mut dev = Device::new(RunSeed(1), id, ctx.cohort);
    dev.power_on_at(SimTime::ZERO);
    let mut fx = Effects::default();
    let mut now = SimTime::ZERO;
    for _ in 0..64 {
        if dev.state() == DeviceState::Online {
            return (dev, now);
        }
        now = dev.wake_at();
        step(&mut dev, now, Input::Wake, &ctx, &mut fx);
    }
    panic!("lab device {} never came online", id.0);
}

/// Most lines of a device-message input that are acted on.
pub const MAX_OPS: usize = 32;

/// Messages to a device, one per line. The first line picks the device: `aws` (AWS IoT Jobs) or
/// `generic` (the generic job protocol). Then, per line:
/// - `cmd <payload>`: on the device's command topic; `job <payload>`: on its generic job topic;
///   `aws/<tail> <payload>`: on `$aws/things/<thing>/jobs/<tail>`; `command <payload>`: an
///   `Input::Command`; `<topic> <payload>`: on any other topic;
/// - `wake`: time moves to the device's next deadline; `lost`: the session dies.
///
/// The topics are rendered from the profile, as the device subscribes to them. Besides the
/// device's checks, the payload goes through the parsers on their own: an error has a message.
pub fn device_message(data: &[u8]) {
    let lab = lab();
    let mut lines = data.split(|b| *b == b'\n');
    let first = lines.next().unwrap_or_default();
    let (template, start) = if first == b"generic" {
        &lab.generic
    } else {
        &lab.aws
    };
    let mut dev = template.clone();
    let id = dev.id;
    let ctx = ctx_of(&lab.fleet, id);
    let mut device_id = Vec::new();
    dev.render_device_id(&ctx, &mut device_id);
    let vars = ctx.vars(id, &device_id);
    let profile = &ctx.cohort.profile;
    let command_topic = profile
        .identity
        .command_topic
        .as_ref()
        .map(|t| t.render(&vars));
    let (job_topic, aws_base) = match &profile.ota {
        Some(ota) => (
            Some(ota.job_topic.render(&vars)),
            Some(format!(
                "{}/things/{}/jobs/",
                ota.aws_topic_prefix,
                ota.thing_name.render(&vars)
            )),
        ),
        None => (None, None),
    };
    let mut now = *start;
    let mut fx = Effects::default();
    for line in lines.take(MAX_OPS) {
        match line {
            b"wake" => {
                let at = dev.wake_at();
                if !at.is_never() {
                    now = now.max(at);
                    step(&mut dev, now, Input::Wake, &ctx, &mut fx);
                }
            }
            b"lost" => step(&mut dev, now, Input::LinkLost, &ctx, &mut fx),
            _ => {
                let split = line.iter().position(|b| *b == b' ').unwrap_or(line.len());
                let (spec, rest) = line.split_at(split);
                let payload = rest.get(1..).unwrap_or_default();
                check_parsers(payload);
                let topic: Vec<u8> = match spec {
                    b"command" => {
                        step(&mut dev, now, Input::Command(payload), &ctx, &mut fx);
                        continue;
                    }
                    b"cmd" => command_topic.clone().unwrap_or_default().into_bytes(),
                    b"job" => job_topic.clone().unwrap_or_default().into_bytes(),
                    _ => match (spec.strip_prefix(b"aws/"), &aws_base) {
                        (Some(tail), Some(base)) => [base.as_bytes(), tail].concat(),
                        _ => spec.to_vec(),
                    },
                };
                let input = Input::Message {
                    topic: &topic,
                    payload,
                };
                step(&mut dev, now, input, &ctx, &mut fx);
            }
        }
    }
}

/// The payload parsers on their own: their errors say what is wrong.
fn check_parsers(payload: &[u8]) {
    if let Err(why) = fleet_core::command::parse_command(payload).command {
        assert!(
            !why.trim().is_empty(),
            "parse_command: an error without a message"
        );
    }
    if let Err((_, why)) = parse_generic(payload) {
        assert!(
            !why.trim().is_empty(),
            "parse_generic: an error without a message"
        );
    }
    if let Err(why) = parse_aws_reply(payload) {
        assert!(
            !why.trim().is_empty(),
            "parse_aws_reply: an error without a message"
        );
    }
}
