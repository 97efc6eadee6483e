//! `GET /metrics`: a `FleetSnapshot` in the Prometheus text exposition format 0.0.4.
//!
//! Every family is written with `# HELP` and `# TYPE`, even when it has no sample yet (no
//! rollout, no shard), so the set of names does not depend on the run's state; the names, their
//! labels and meanings are listed in `docs/api.md`. Latencies are histograms in seconds over the
//! whole run, with fixed buckets (`LATENCY_BUCKETS_S`) counted from the run's HdrHistograms.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use fleet_core::DeviceState;
use fleet_core::ota::OtaStage;
use fleet_metrics::modbus::FUNCTIONS;
use fleet_metrics::{FleetSnapshot, LatencyHistogram, ShardLoad};

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds (seconds) of the latency histograms' buckets; `+Inf` follows.
pub const LATENCY_BUCKETS_S: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A sample's value: integers are written as integers.
#[derive(Clone, Copy)]
enum Value {
    Int(u64),
    Float(f64),
}

impl From<u64> for Value {
    fn from(v: u64) -> Value {
        Value::Int(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Float(v)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Int(u64::from(v))
    }
}

struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {}", kind.as_str());
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Into<Value>) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                self.text.push_str(k);
                self.text.push_str("=\"");
                escape_label_value(&mut self.text, v);
                self.text.push('"');
            }
            self.text.push('}');
        }
        self.text.push(' ');
        match value.into() {
            Value::Int(v) => {
                let _ = write!(self.text, "{v}");
            }
            Value::Float(v) => write_float(&mut self.text, v),
        }
        self.text.push('\n');
    }

    /// A family with one unlabelled sample.
    fn single(&mut self, name: &str, kind: Kind, help: &str, value: impl Into<Value>) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// A family with one sample per value of one label.
    fn by_label<V: Into<Value>>(
        &mut self,
        name: &str,
        kind: Kind,
        help: &str,
        label: &str,
        samples: impl IntoIterator<Item = (&'static str, V)>,
    ) {
        self.family(name, kind, help);
        for (v, n) in samples {
            self.sample(name, &[(label, v)], n);
        }
    }

    /// A latency histogram in seconds from an HdrHistogram in microseconds.
    fn histogram(&mut self, name: &str, help: &str, h: &LatencyHistogram) {
        self.family(name, Kind::Histogram, help);
        let counts = bucket_counts(h);
        let bucket = format!("{name}_bucket");
        let mut le = String::new();
        for (bound, count) in LATENCY_BUCKETS_S.iter().zip(counts) {
            le.clear();
            write_float(&mut le, *bound);
            self.sample(&bucket, &[("le", &le)], count);
        }
        self.sample(&bucket, &[("le", "+Inf")], h.count());
        // HdrHistogram keeps no exact sum: the mean (within its 0.1 % resolution) times count.
        let sum_s = if h.count() == 0 {
            0.0
        } else {
            h.inner().mean() * h.count() as f64 / 1e6
        };
        self.sample(&format!("{name}_sum"), &[], sum_s);
        self.sample(&format!("{name}_count"), &[], h.count());
    }
}

/// Cumulative counts of values at or below each of `LATENCY_BUCKETS_S` (a value counts by the
/// lowest value of its HdrHistogram bucket, as `count_between(0, bound)` does).
fn bucket_counts(h: &LatencyHistogram) -> [u64; LATENCY_BUCKETS_S.len()] {
    let bounds_us = LATENCY_BUCKETS_S.map(|s| (s * 1e6).round() as u64);
    let mut per_bucket = [0u64; LATENCY_BUCKETS_S.len()];
    let inner = h.inner();
    for v in inner.iter_recorded() {
        let value = inner.lowest_equivalent(v.value_iterated_to());
        if let Some(i) = bounds_us.iter().position(|b| value <= *b) {
            per_bucket[i] += v.count_at_value();
        }
    }
    let mut total = 0;
    per_bucket.map(|n| {
        total += n;
        total
    })
}

fn escape_label_value(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn write_float(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{v}");
    }
}

fn seconds(us: u64) -> f64 {
    us as f64 / 1e6
}

/// The snapshot in the Prometheus text format 0.0.4 (`CONTENT_TYPE`).
pub fn render_metrics(s: &FleetSnapshot) -> String {
    let mut e = Exposition {
        text: String::with_capacity(16 * 1024),
    };
    run(&mut e, s);
    devices(&mut e, s);
    traffic(&mut e, s);
    latency(&mut e, s);
    generator(&mut e, s);
    ota(&mut e, s);
    rollouts(&mut e, s);
    modbus(&mut e, s);
    serial(&mut e, s);
    e.text
}

fn run(e: &mut Exposition, s: &FleetSnapshot) {
    let seed = s.run.seed.to_string();
    e.family(
        "fleetsim_run_info",
        Kind::Gauge,
        "The run this process serves (always 1; the labels say which).",
    );
    e.sample(
        "fleetsim_run_info",
        &[
            ("run_id", &s.run.run_id),
            ("scenario", &s.run.scenario),
            ("seed", &seed),
            ("clock", &s.run.clock),
            ("broker", &s.run.broker),
        ],
        1u64,
    );
    e.single(
        "fleetsim_processes",
        Kind::Gauge,
        "fleetsim processes this view covers (1 unless merged).",
        u64::from(s.run.processes),
    );
    e.single(
        "fleetsim_run_duration_seconds",
        Kind::Gauge,
        "The scenario's duration in simulated seconds.",
        s.run.duration_s,
    );
    e.single(
        "fleetsim_elapsed_seconds",
        Kind::Gauge,
        "Wall-clock seconds since the run started.",
        s.elapsed_s,
    );
    e.single(
        "fleetsim_sim_time_seconds",
        Kind::Gauge,
        "Simulated seconds since the run started (the slowest shard).",
        s.sim_time_s,
    );
    e.single(
        "fleetsim_paused",
        Kind::Gauge,
        "1 while simulated time is paused, else 0.",
        s.paused,
    );
}

fn devices(e: &mut Exposition, s: &FleetSnapshot) {
    e.by_label(
        "fleetsim_devices",
        Kind::Gauge,
        "Devices by state.",
        "state",
        DeviceState::ALL.map(|st| (st.as_str(), s.state(st))),
    );
    e.single(
        "fleetsim_devices_total",
        Kind::Gauge,
        "Devices in the fleet.",
        s.devices_total,
    );
    e.single(
        "fleetsim_devices_low_battery",
        Kind::Gauge,
        "Devices below their profile's low-battery threshold (not dead).",
        s.low_battery,
    );
    e.single(
        "fleetsim_devices_connected_once",
        Kind::Gauge,
        "Devices that have had a session at least once.",
        s.first_connects,
    );
    e.single(
        "fleetsim_last_first_connect_seconds",
        Kind::Gauge,
        "Seconds into the run at which a device last connected for the first time.",
        s.last_first_connect_s,
    );
    e.single(
        "fleetsim_peak_online",
        Kind::Gauge,
        "Most devices online at once so far (a sum of the processes' peaks when merged).",
        s.peak_online,
    );
    e.single(
        "fleetsim_in_flight",
        Kind::Gauge,
        "QoS >= 1 telemetry sent and not yet acknowledged.",
        s.in_flight,
    );
    e.single(
        "fleetsim_buffered",
        Kind::Gauge,
        "Telemetry waiting in offline buffers.",
        s.buffered,
    );
}

fn traffic(e: &mut Exposition, s: &FleetSnapshot) {
    let t = &s.totals;
    e.single(
        "fleetsim_telemetry_published_total",
        Kind::Counter,
        "Telemetry messages devices produced.",
        t.published,
    );
    e.single(
        "fleetsim_telemetry_acked_total",
        Kind::Counter,
        "Telemetry confirmed (PUBACK/PUBCOMP for QoS 1/2, fully written for QoS 0).",
        t.acked,
    );
    e.by_label(
        "fleetsim_telemetry_failed_total",
        Kind::Counter,
        "Telemetry lost, by reason.",
        "reason",
        t.failed_by_reason(),
    );
    e.single(
        "fleetsim_telemetry_retransmits_total",
        Kind::Counter,
        "Messages the link model delayed by a retransmission.",
        t.retransmits,
    );
    e.single(
        "fleetsim_telemetry_flushed_total",
        Kind::Counter,
        "Telemetry sent from offline buffers after a reconnect.",
        t.flushed,
    );
    e.single(
        "fleetsim_messages_sent_total",
        Kind::Counter,
        "Messages handed to the network (telemetry, responses, status).",
        t.sent,
    );
    e.single(
        "fleetsim_bytes_sent_total",
        Kind::Counter,
        "Bytes of messages handed to the network.",
        t.bytes_sent,
    );
    e.single(
        "fleetsim_connect_attempts_total",
        Kind::Counter,
        "Connection attempts.",
        t.connect_attempts,
    );
    e.by_label(
        "fleetsim_connects_total",
        Kind::Counter,
        "Connection attempts by result (no_link: skipped, the device's link was down).",
        "result",
        [
            ("ok", t.connects_ok),
            ("failed", t.connects_failed),
            ("no_link", t.connects_no_link),
        ],
    );
    e.single(
        "fleetsim_sessions_lost_total",
        Kind::Counter,
        "Sessions that died under the device (broker closed, I/O error, keep-alive).",
        t.sessions_lost,
    );
    e.single(
        "fleetsim_link_drops_total",
        Kind::Counter,
        "Link drops drawn from the link model.",
        t.link_drops,
    );
    e.single(
        "fleetsim_commands_total",
        Kind::Counter,
        "Commands devices received.",
        t.commands,
    );
    e.single(
        "fleetsim_commands_rejected_total",
        Kind::Counter,
        "Commands devices rejected.",
        t.commands_rejected,
    );
    e.single(
        "fleetsim_reboots_total",
        Kind::Counter,
        "Device reboots.",
        t.reboots,
    );
    e.single(
        "fleetsim_batteries_depleted_total",
        Kind::Counter,
        "Devices whose battery ran out.",
        t.batteries_depleted,
    );
    e.single(
        "fleetsim_malformed_packets_total",
        Kind::Counter,
        "Inbound packets that could not be decoded.",
        t.malformed_packets,
    );
    e.single(
        "fleetsim_device_steps_total",
        Kind::Counter,
        "Device steps taken by the engine.",
        t.steps,
    );
}

fn latency(e: &mut Exposition, s: &FleetSnapshot) {
    let h = &s.histograms;
    e.histogram(
        "fleetsim_publish_ack_latency_seconds",
        "Publish -> acknowledgement latency (QoS >= 1) from the scheduled send time, whole run.",
        &h.publish_ack_us,
    );
    e.histogram(
        "fleetsim_connect_latency_seconds",
        "Connection attempt -> CONNACK latency, whole run.",
        &h.connect_us,
    );
    e.histogram(
        "fleetsim_modbus_service_seconds",
        "Modbus request arrival -> answer (injected delay included), whole run.",
        &h.modbus_service_us,
    );
}

fn generator(e: &mut Exposition, s: &FleetSnapshot) {
    e.single(
        "fleetsim_generator_lag_p99_seconds",
        Kind::Gauge,
        "99th percentile of how late shards ran their deadlines, whole run (the worst process's when merged).",
        seconds(s.lag_p99_us),
    );
    e.single(
        "fleetsim_generator_lag_max_seconds",
        Kind::Gauge,
        "The most any shard was late running a deadline, whole run.",
        seconds(s.max_lag_us),
    );
    let per_shard = |e: &mut Exposition,
                     name: &str,
                     kind: Kind,
                     help: &str,
                     f: &dyn Fn(&ShardLoad) -> Value| {
        e.family(name, kind, help);
        for sh in &s.shards {
            let (shard, process) = (sh.shard.to_string(), sh.process.to_string());
            e.sample(name, &[("shard", &shard), ("process", &process)], f(sh));
        }
    };
    per_shard(
        e,
        "fleetsim_shard_devices",
        Kind::Gauge,
        "Devices a shard owns.",
        &|sh| sh.devices.into(),
    );
    per_shard(
        e,
        "fleetsim_shard_online_devices",
        Kind::Gauge,
        "Devices online on a shard.",
        &|sh| sh.online.into(),
    );
    per_shard(
        e,
        "fleetsim_shard_lag_max_seconds",
        Kind::Gauge,
        "The most the shard was late running a deadline, whole run.",
        &|sh| (sh.max_lag_ms / 1e3).into(),
    );
    per_shard(
        e,
        "fleetsim_shard_sim_time_seconds",
        Kind::Gauge,
        "The shard's simulated time.",
        &|sh| sh.sim_time_s.into(),
    );
    per_shard(
        e,
        "fleetsim_shard_steps_total",
        Kind::Counter,
        "Device steps the shard took.",
        &|sh| sh.steps.into(),
    );
    per_shard(
        e,
        "fleetsim_shard_done",
        Kind::Gauge,
        "1 once the shard has finished its run.",
        &|sh| sh.done.into(),
    );
}

fn ota(e: &mut Exposition, s: &FleetSnapshot) {
    e.family(
        "fleetsim_firmware_devices",
        Kind::Gauge,
        "Devices by running firmware (\"model version\").",
    );
    for (i, n) in s.versions.iter().enumerate() {
        let fallback;
        let label = match s.version_labels.get(i) {
            Some(l) => l.as_str(),
            None => {
                fallback = format!("version #{i}");
                &fallback
            }
        };
        e.sample("fleetsim_firmware_devices", &[("version", label)], *n);
    }
    e.by_label(
        "fleetsim_ota_stage_devices",
        Kind::Gauge,
        "Devices by firmware update stage.",
        "stage",
        OtaStage::ALL.map(|st| (st.as_str(), s.ota_stages[st.index()])),
    );
    let o = &s.ota;
    e.single(
        "fleetsim_ota_jobs_received_total",
        Kind::Counter,
        "Update jobs that reached a device.",
        o.jobs_received,
    );
    e.single(
        "fleetsim_ota_jobs_started_total",
        Kind::Counter,
        "Update jobs a device started (its download began).",
        o.accepted,
    );
    e.by_label(
        "fleetsim_ota_updates_total",
        Kind::Counter,
        "Update outcomes as the devices know them (bricked and rolled_back are failures too).",
        "outcome",
        [
            ("succeeded", o.succeeded),
            ("failed", o.failed),
            ("rejected", o.rejected),
            ("bricked", o.bricked),
            ("rolled_back", o.rolled_back),
        ],
    );
    let f = &o.failures_by_stage;
    e.by_label(
        "fleetsim_ota_failures_total",
        Kind::Counter,
        "Failed updates by the stage they failed in.",
        "stage",
        [
            ("download", f.download),
            ("verify", f.verify),
            ("install", f.install),
            ("boot", f.boot),
            ("trial", f.trial),
        ],
    );
    e.single(
        "fleetsim_ota_reports_lost_total",
        Kind::Counter,
        "Final update reports lost (injected): the backend never hears.",
        o.reports_lost,
    );
    e.single(
        "fleetsim_ota_cancelled_total",
        Kind::Counter,
        "Update jobs cancelled.",
        o.cancelled,
    );
    e.single(
        "fleetsim_ota_download_requests_total",
        Kind::Counter,
        "HTTP image download requests (a resume is a request of its own).",
        o.http.requests,
    );
    e.single(
        "fleetsim_ota_download_bytes_total",
        Kind::Counter,
        "Image bytes received over HTTP.",
        o.http.bytes,
    );
    e.single(
        "fleetsim_ota_download_errors_total",
        Kind::Counter,
        "HTTP image download attempts that failed.",
        o.http.errors,
    );
}

fn rollouts(e: &mut Exposition, s: &FleetSnapshot) {
    // Two rollouts of one name would make duplicate series: the later ones get a suffix.
    let mut seen = BTreeSet::new();
    let names: Vec<String> = s
        .rollouts
        .iter()
        .map(|r| {
            let mut name = r.name.clone();
            let mut k = 2;
            while !seen.insert(name.clone()) {
                name = format!("{} #{k}", r.name);
                k += 1;
            }
            name
        })
        .collect();
    e.family(
        "fleetsim_rollout_info",
        Kind::Gauge,
        "A rollout fleetsim runs (always 1; state: not_started, running, completed, aborted).",
    );
    for (r, name) in s.rollouts.iter().zip(&names) {
        e.sample(
            "fleetsim_rollout_info",
            &[
                ("rollout", name),
                ("target_version", &r.target_version),
                ("state", &r.state),
            ],
            1u64,
        );
    }
    e.family(
        "fleetsim_rollout_devices",
        Kind::Gauge,
        "A rollout's devices by status, as reported to its orchestrator.",
    );
    for (r, name) in s.rollouts.iter().zip(&names) {
        let c = &r.reported;
        for (status, n) in [
            ("targets", r.targets),
            ("notified", c.notified),
            ("started", c.started),
            ("succeeded", c.succeeded),
            ("failed", c.failed),
            ("rejected", c.rejected),
            ("timed_out", c.timed_out),
        ] {
            e.sample(
                "fleetsim_rollout_devices",
                &[("rollout", name), ("status", status)],
                n,
            );
        }
    }
    e.family(
        "fleetsim_rollout_wave",
        Kind::Gauge,
        "Waves a rollout has started (0 before its start).",
    );
    for (r, name) in s.rollouts.iter().zip(&names) {
        e.sample(
            "fleetsim_rollout_wave",
            &[("rollout", name)],
            u64::from(r.wave),
        );
    }
    e.family(
        "fleetsim_rollout_waves",
        Kind::Gauge,
        "Waves a rollout has in all.",
    );
    for (r, name) in s.rollouts.iter().zip(&names) {
        e.sample(
            "fleetsim_rollout_waves",
            &[("rollout", name)],
            u64::from(r.waves),
        );
    }
}

fn modbus(e: &mut Exposition, s: &FleetSnapshot) {
    let m = &s.modbus;
    e.family(
        "fleetsim_modbus_requests_total",
        Kind::Counter,
        "Modbus requests that reached a device, by function.",
    );
    for (i, (_, name)) in FUNCTIONS.iter().enumerate() {
        e.sample(
            "fleetsim_modbus_requests_total",
            &[("function", name)],
            m.by_function[i],
        );
    }
    e.sample(
        "fleetsim_modbus_requests_total",
        &[("function", "other")],
        m.by_function[FUNCTIONS.len()],
    );
    e.single(
        "fleetsim_modbus_responses_total",
        Kind::Counter,
        "Normal Modbus responses sent.",
        m.responses,
    );
    e.family(
        "fleetsim_modbus_exceptions_total",
        Kind::Counter,
        "Modbus exception responses sent, by code (hex; 0B counts 0B and higher).",
    );
    for (code, n) in m.exceptions.iter().enumerate().skip(1) {
        let label = format!("{code:02X}");
        e.sample("fleetsim_modbus_exceptions_total", &[("code", &label)], *n);
    }
    e.by_label(
        "fleetsim_modbus_injected_faults_total",
        Kind::Counter,
        "Modbus faults injected, by kind.",
        "fault",
        [
            ("exception", m.injected_exceptions),
            ("silence", m.silent.saturating_sub(m.not_serving)),
            ("dropped_connection", m.dropped_connections),
            ("bad_crc", m.bad_crc),
            ("truncated", m.truncated),
            ("swapped_words", m.swapped_words),
            ("delay", m.delayed),
        ],
    );
    e.by_label(
        "fleetsim_modbus_silent_total",
        Kind::Counter,
        "Modbus requests left unanswered, by cause.",
        "cause",
        [
            ("injected", m.silent.saturating_sub(m.not_serving)),
            ("not_serving", m.not_serving),
        ],
    );
    e.single(
        "fleetsim_modbus_broadcasts_total",
        Kind::Counter,
        "Modbus broadcast requests (carried out, never answered).",
        m.broadcasts,
    );
    e.single(
        "fleetsim_modbus_writes_total",
        Kind::Counter,
        "Modbus writes that changed a device.",
        m.writes,
    );
    e.single(
        "fleetsim_modbus_unknown_unit_total",
        Kind::Counter,
        "Modbus TCP requests for a unit id no device has.",
        m.unknown_unit,
    );
    e.single(
        "fleetsim_modbus_malformed_frames_total",
        Kind::Counter,
        "Modbus frames that made no request (bad MBAP header, CRC error, garbage).",
        m.malformed_frames,
    );
    e.single(
        "fleetsim_modbus_connections_total",
        Kind::Counter,
        "Modbus TCP connections accepted and RTU lines opened.",
        m.connections,
    );
}

fn serial(e: &mut Exposition, s: &FleetSnapshot) {
    let c = &s.serial;
    e.single(
        "fleetsim_serial_ports_opened_total",
        Kind::Counter,
        "Serial ports opened (reopens after an unplug included).",
        c.ports_opened,
    );
    e.by_label(
        "fleetsim_serial_lines_total",
        Kind::Counter,
        "Serial lines sent (out) and command lines received (in).",
        "direction",
        [("out", c.lines_out), ("in", c.lines_in)],
    );
    e.by_label(
        "fleetsim_serial_bytes_total",
        Kind::Counter,
        "Serial bytes sent (out) and received (in).",
        "direction",
        [("out", c.bytes_out), ("in", c.bytes_in)],
    );
    e.single(
        "fleetsim_serial_commands_total",
        Kind::Counter,
        "Serial (AT) commands answered.",
        c.commands,
    );
    e.single(
        "fleetsim_serial_command_errors_total",
        Kind::Counter,
        "Serial (AT) commands answered with an error.",
        c.command_errors,
    );
    e.single(
        "fleetsim_serial_unsolicited_total",
        Kind::Counter,
        "Unsolicited result codes sent.",
        c.unsolicited,
    );
    e.by_label(
        "fleetsim_serial_impairments_total",
        Kind::Counter,
        "Serial impairments carried out, by kind.",
        "kind",
        [
            ("corrupted_byte", c.corrupted_bytes),
            ("dropped_byte", c.dropped_bytes),
            ("bad_checksum", c.bad_checksums),
            ("unplug", c.unplugs),
        ],
    );
    e.single(
        "fleetsim_serial_overruns_total",
        Kind::Counter,
        "Serial output skipped because the line was still busy at its baud rate.",
        c.overruns,
    );
    e.single(
        "fleetsim_serial_open_errors_total",
        Kind::Counter,
        "Failures to open or reopen a serial port.",
        c.open_errors,
    );
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};

    use fleet_metrics::ota::RolloutLive;

    use super::*;

    /// One parsed sample line.
    #[derive(Debug)]
    struct Sample {
        name: String,
        labels: Vec<(String, String)>,
        value: f64,
    }

    fn parse_labels(mut rest: &str) -> (Vec<(String, String)>, &str) {
        let mut labels = Vec::new();
        loop {
            if let Some(r) = rest.strip_prefix('}') {
                return (labels, r);
            }
            let eq = rest.find('=').expect("label has a value");
            let key = rest[..eq].to_string();
            assert!(
                key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "label name {key:?}"
            );
            let mut chars = rest[eq + 1..].char_indices();
            assert_eq!(chars.next().map(|(_, c)| c), Some('"'));
            let mut value = String::new();
            let end = loop {
                let (i, c) = chars.next().expect("label value is closed");
                match c {
                    '\\' => match chars.next().map(|(_, c)| c) {
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        Some('n') => value.push('\n'),
                        other => panic!("bad escape {other:?}"),
                    },
                    '"' => break eq + 1 + i + 1,
                    '\n' => panic!("raw newline in a label value"),
                    c => value.push(c),
                }
            };
            labels.push((key, value));
            rest = &rest[end..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
    }

    /// Parses the exposition; panics on anything malformed. Returns (family -> type, samples).
    fn parse(text: &str) -> (BTreeMap<String, String>, Vec<Sample>) {
        let mut types = BTreeMap::new();
        let mut helped = HashSet::new();
        let mut samples = Vec::new();
        let mut current: Option<String> = None;
        let mut finished = HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap_or_default().to_string();
                assert!(helped.insert(name.clone()), "HELP twice for {name}");
                if let Some(prev) = current.replace(name.clone()) {
                    finished.insert(prev);
                }
                assert!(!finished.contains(&name), "family {name} interleaved");
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split(' ');
                let name = it.next().unwrap_or_default().to_string();
                let kind = it.next().unwrap_or_default().to_string();
                assert!(
                    ["counter", "gauge", "histogram"].contains(&kind.as_str()),
                    "{line}"
                );
                assert_eq!(current.as_deref(), Some(name.as_str()), "TYPE after HELP");
                assert!(types.insert(name, kind).is_none(), "TYPE twice: {line}");
                continue;
            }
            assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
            let name_end = line.find(['{', ' ']).expect("sample has a value");
            let name = line[..name_end].to_string();
            assert!(name.starts_with("fleetsim_"), "{line}");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit()),
                "{line}"
            );
            let (labels, rest) = match line[name_end..].strip_prefix('{') {
                Some(r) => parse_labels(r),
                None => (Vec::new(), &line[name_end..]),
            };
            let value = rest.strip_prefix(' ').expect("one space before the value");
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("value of {line:?}")),
            };
            let family = current.clone().expect("sample after its HELP");
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|b| types.get(*b).map(String::as_str) == Some("histogram"))
                .unwrap_or(&name);
            assert_eq!(base, family, "sample {name} outside its family");
            samples.push(Sample {
                name,
                labels,
                value,
            });
        }
        (types, samples)
    }

    fn fixture() -> FleetSnapshot {
        let mut s = FleetSnapshot {
            devices_total: 10,
            elapsed_s: 12.5,
            sim_time_s: 12.0,
            versions: vec![7, 3],
            version_labels: vec!["env \"1.0\"".into(), "env 1.1\\beta\nx".into()],
            ..FleetSnapshot::default()
        };
        s.run.scenario = "demo".into();
        s.states[DeviceState::Online.index()] = 8;
        s.totals.published = 100;
        s.totals.failed_offline = 3;
        for v in [
            100, 400, 500, 900, 1_000, 2_400, 2_600, 70_000, 3_000_000, 90_000_000,
        ] {
            s.histograms.publish_ack_us.record(v);
        }
        s.histograms.connect_us.record(20_000);
        s.shards = vec![ShardLoad {
            shard: 0,
            devices: 10,
            max_lag_ms: 3.0,
            ..ShardLoad::default()
        }];
        s.rollouts = vec![
            RolloutLive {
                name: "canary".into(),
                targets: 5,
                ..RolloutLive::default()
            },
            RolloutLive {
                name: "canary".into(),
                ..RolloutLive::default()
            },
        ];
        s.modbus.count_request(0x03);
        s.modbus.count_exception(0x02);
        s
    }

    fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
        samples
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.iter().any(|(a, b)| a == k && b == v))
            })
            .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
            .value
    }

    #[test]
    fn every_line_parses_and_each_family_is_written_once() {
        let (types, samples) = parse(&render_metrics(&fixture()));
        assert!(types.len() > 60, "{} families", types.len());
        assert_eq!(
            value(&samples, "fleetsim_devices", &[("state", "online")]),
            8.0
        );
        assert_eq!(
            value(
                &samples,
                "fleetsim_telemetry_failed_total",
                &[("reason", "offline_buffer_full")]
            ),
            3.0
        );
        assert_eq!(
            value(
                &samples,
                "fleetsim_firmware_devices",
                &[("version", "env \"1.0\"")]
            ),
            7.0
        );
        assert_eq!(
            value(
                &samples,
                "fleetsim_firmware_devices",
                &[("version", "env 1.1\\beta\nx")]
            ),
            3.0
        );
        assert_eq!(
            value(
                &samples,
                "fleetsim_rollout_devices",
                &[("rollout", "canary #2"), ("status", "targets")]
            ),
            0.0
        );
        assert_eq!(
            value(
                &samples,
                "fleetsim_modbus_requests_total",
                &[("function", "read_holding_registers")]
            ),
            1.0
        );
        assert_eq!(
            value(
                &samples,
                "fleetsim_modbus_exceptions_total",
                &[("code", "02")]
            ),
            1.0
        );
        assert_eq!(
            value(
                &samples,
                "fleetsim_shard_lag_max_seconds",
                &[("shard", "0")]
            ),
            0.003
        );
    }

    #[test]
    fn histograms_are_cumulative_and_end_at_their_count() {
        let snap = fixture();
        let (types, samples) = parse(&render_metrics(&snap));
        for (family, _) in types.iter().filter(|(_, t)| *t == "histogram") {
            let buckets: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.name == format!("{family}_bucket"))
                .collect();
            assert_eq!(buckets.len(), LATENCY_BUCKETS_S.len() + 1);
            let les: Vec<f64> = buckets
                .iter()
                .map(|b| {
                    let le = &b.labels.iter().find(|(k, _)| k == "le").expect("le").1;
                    if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse().expect("le is a number")
                    }
                })
                .collect();
            assert!(les.windows(2).all(|w| w[0] < w[1]), "{family}: {les:?}");
            assert!(
                buckets.windows(2).all(|w| w[0].value <= w[1].value),
                "{family} not cumulative"
            );
            let count = value(&samples, &format!("{family}_count"), &[]);
            assert_eq!(buckets.last().map(|b| b.value), Some(count));
        }
        // 100, 400, 500 <= 0.5 ms; 900, 1000 <= 1 ms; 2400 <= 2.5 ms; 2600 <= 5 ms; 70 ms;
        // 3 s; 90 s only in +Inf.
        let le = |b: &str| {
            value(
                &samples,
                "fleetsim_publish_ack_latency_seconds_bucket",
                &[("le", b)],
            )
        };
        assert_eq!(le("0.0005"), 3.0);
        assert_eq!(le("0.001"), 5.0);
        assert_eq!(le("0.0025"), 6.0);
        assert_eq!(le("0.005"), 7.0);
        assert_eq!(le("0.1"), 8.0);
        assert_eq!(le("5"), 9.0);
        assert_eq!(le("60"), 9.0);
        assert_eq!(le("+Inf"), 10.0);
        let sum = value(&samples, "fleetsim_publish_ack_latency_seconds_sum", &[]);
        assert!((sum - 93.078).abs() < 0.1, "sum {sum}");
    }

    #[test]
    fn an_empty_snapshot_still_names_every_family() {
        let (empty, _) = parse(&render_metrics(&FleetSnapshot::default()));
        let (full, _) = parse(&render_metrics(&fixture()));
        assert_eq!(empty, full);
    }
}
