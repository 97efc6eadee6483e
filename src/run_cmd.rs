//! `fleetsim run`: load, size, check, start the broker, run, report.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use fleet_core::Fleet;
use fleet_core::load::{FsSource, load_fleet};
use fleet_core::scenario::{Clock, MqttVersion};
use fleet_core::slice::Slice;
use fleet_engine::{RunOptions, RunPlan, SATURATION_LAG_US, process};
use fleet_metrics::{ProcessStats, RunInfo, RunReport};
use fleet_mqtt::{MqttAdapter, MqttConfig, Version};

use crate::cli::{ClockArg, MqttVersionArg, RolloutArgs, RunArgs};
use crate::progress::Progress;
use crate::{Failure, builtin, preflight, summary};

/// Loads the scenario named on the command line, or the demo.
fn load(args: &RunArgs) -> Result<Fleet, Failure> {
    let fleet = match &args.scenario {
        Some(path) => load_fleet(&FsSource, path),
        None if Path::new(builtin::DEMO_PATH).exists() => {
            load_fleet(&FsSource, Path::new(builtin::DEMO_PATH))
        }
        None => {
            tracing::info!(
                "no scenario given and no {} here: running the built-in demo",
                builtin::DEMO_PATH
            );
            load_fleet(&builtin::FILES, Path::new(builtin::DEMO_PATH))
        }
    };
    fleet.map_err(Failure::Config)
}

/// Applies the command line's overrides to the scenario.
fn apply_overrides(fleet: &mut Fleet, args: &RunArgs) -> Result<(), Failure> {
    let s = &mut fleet.settings;
    if let Some(d) = args.duration {
        if d == fleet_core::SimDuration::ZERO {
            return Err(Failure::Usage("--duration must be longer than zero".into()));
        }
        s.duration = d;
        // Events past the new end would never fire: say which are skipped.
        for e in s.events.iter().filter(|e| e.at >= d) {
            tracing::warn!(
                "--duration {d}: skipping the scenario's event at {} (after the end of the run)",
                e.at
            );
        }
        s.events.retain(|e| e.at < d);
        for r in s.rollouts.iter().filter(|r| r.at >= d) {
            tracing::warn!(
                "--duration {d}: the scenario's rollout {:?} starts at {} (after the end of the run): it will not start",
                r.name,
                r.at
            );
        }
    }
    if let Some(seed) = args.seed {
        s.seed = seed;
    }
    if let Some(c) = args.clock {
        s.clock = match c {
            ClockArg::Wall => Clock::Wall,
            ClockArg::Virtual => Clock::Virtual,
        };
    }
    if !args.broker.is_empty() {
        s.broker_urls = args.broker.clone();
    }
    if let Some(v) = args.mqtt_version {
        s.mqtt_version = match v {
            MqttVersionArg::V311 => MqttVersion::V311,
            MqttVersionArg::V5 => MqttVersion::V5,
        };
    }
    if !args.source_addr.is_empty() {
        s.source_addrs = args.source_addr.clone();
    }
    if let Some(n) = args.tcp_nodelay {
        s.tcp_nodelay = n;
    }
    if let Some(n) = args.max_connecting {
        s.max_connecting = n;
    }
    if let Some(p) = args.modbus_port {
        s.modbus.port = p;
    }
    if let Some(ip) = args.modbus_listen {
        s.modbus.listen = ip;
    }
    if let Some(n) = args.devices {
        if n == 0 {
            return Err(Failure::Usage("--devices must be at least 1".into()));
        }
        if n > fleet_core::load::MAX_DEVICES {
            return Err(Failure::Usage(format!(
                "--devices {n}: one process simulates at most {} devices",
                fleet_core::load::MAX_DEVICES
            )));
        }
        fleet.scale_to(n);
    }
    Ok(())
}

/// The slice of the fleet this process owns: `--shard K/N`, or `--shards-total N` with K from
/// `JOB_COMPLETION_INDEX`; the whole fleet otherwise.
fn slice_of(args: &RunArgs) -> Result<Slice, Failure> {
    if let Some(s) = args.shard {
        return Ok(s);
    }
    let Some(n) = args.shards_total else {
        return Ok(Slice::WHOLE);
    };
    let k = std::env::var(JOB_INDEX_ENV).map_err(|_| {
        Failure::Usage(format!(
            "--shards-total {n}: the environment variable {JOB_INDEX_ENV} (the shard's index, 0 to {}) is not set; \
             Kubernetes sets it in the pods of an Indexed Job, elsewhere give --shard K/{n}",
            n.saturating_sub(1)
        ))
    })?;
    let k: u32 = k.trim().parse().map_err(|_| {
        Failure::Usage(format!(
            "{JOB_INDEX_ENV}={k:?}: expected the shard's index, a number from 0 to {}",
            n.saturating_sub(1)
        ))
    })?;
    Slice::new(k, n)
        .map_err(|e| Failure::Usage(format!("--shards-total {n} with {JOB_INDEX_ENV}={k}: {e}")))
}

/// Where Kubernetes puts a pod's index in an Indexed Job.
pub const JOB_INDEX_ENV: &str = "JOB_COMPLETION_INDEX";

/// Devices served over Modbus or a serial port keep their addresses (ports, unit ids, PTYs)
/// in the whole fleet's layout, which a slice would tear apart: those fleets run in one process.
fn check_sliceable(fleet: &Fleet) -> Result<(), Failure> {
    for c in fleet.cohorts.iter().filter(|c| c.count > 0) {
        let modbus = fleet.modbus_home(c).is_some();
        let serial = c.profile.serial.is_some() && fleet.has_serial_ports(c);
        if modbus || serial {
            return Err(Failure::Usage(format!(
                "cohort {:?} is served over {}: --shard, --shards-total and --processes cut MQTT fleets only \
                 (a Modbus map or serial ports belong to one process); run such cohorts in a scenario of their own without them",
                c.name,
                if modbus { "Modbus" } else { "serial ports" }
            )));
        }
    }
    Ok(())
}

/// `--dry-run`: the devices this process would own, per cohort (global ids, half-open).
fn dry_run(fleet: &Fleet, slice: Slice) -> String {
    use std::fmt::Write;
    let s = &fleet.settings;
    let mut out = String::from("dry run: nothing is started\n");
    let _ = writeln!(
        out,
        "scenario {}, seed {}, {} devices in {} cohorts",
        s.name,
        s.seed,
        fleet.total_devices(),
        fleet.cohorts.len()
    );
    let ranges: Vec<std::ops::Range<u32>> =
        fleet.cohorts.iter().map(|c| c.in_slice(slice)).collect();
    let owned: usize = ranges.iter().map(|r| r.len()).sum();
    let _ = writeln!(out, "shard {slice} owns {owned} devices:");
    let mut buf = Vec::new();
    let mut render = |c: &fleet_core::Cohort, id: u32| {
        buf.clear();
        c.render_device_id(fleet_core::DeviceId(id), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    };
    for (c, r) in fleet.cohorts.iter().zip(&ranges) {
        if r.is_empty() {
            let _ = writeln!(out, "  {}: ids {}..{} (0 devices)", c.name, r.start, r.end);
        } else {
            let (first, last) = (render(c, r.start), render(c, r.end - 1));
            let gateways = match c.sessions_in(r.clone()) {
                n if c.slice_unit() > 1 => format!(", behind {n} gateways"),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "  {}: ids {}..{} ({} devices, {first} .. {last}{gateways})",
                c.name,
                r.start,
                r.end,
                r.len()
            );
        }
    }
    out
}

/// rumqttd (the embedded broker) refuses subscriptions to topics that start with `$`, which
/// AWS IoT Jobs devices need: say so before the run instead of letting every device fail.
fn check_embedded_broker_topics(fleet: &Fleet) -> Result<(), Failure> {
    let s = &fleet.settings;
    if !s.broker_urls.is_empty() || s.clock != Clock::Wall {
        return Ok(());
    }
    for c in fleet.cohorts.iter().filter(|c| c.mqtt) {
        if let Some(o) = &c.profile.ota
            && o.protocol == fleet_core::profile::OtaProtocol::AwsJobs
            && o.aws_topic_prefix.starts_with('$')
        {
            return Err(Failure::Usage(format!(
                "cohort {:?} speaks AWS IoT Jobs on {}/things/..., and the embedded broker (rumqttd) refuses subscriptions to topics that start with $: \
                 run against mosquitto or EMQX with --broker mqtt://HOST:PORT, or set [ota] aws_topic_prefix (e.g. \"aws\") in {}",
                c.name, o.aws_topic_prefix, c.profile.name
            )));
        }
    }
    Ok(())
}

fn run_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{:016x}",
        fleet_core::seed::mix64(nanos as u64 ^ (u64::from(std::process::id()) << 32))
    )
}

pub fn ensure_writable(path: &Path, what: &str) -> Result<(), Failure> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            Failure::Usage(format!(
                "{what} {}: cannot create folder {}: {e}",
                path.display(),
                dir.display()
            ))
        })?;
    }
    let existed = path.exists();
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Failure::Usage(format!("{what} {}: cannot write: {e}", path.display())))?;
    if !existed {
        // A run refused later (pre-flight, TLS files) leaves no empty file behind.
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// `fleetsim rollout`: the scenario with this rollout (and, if asked, its own).
pub fn rollout(args: RolloutArgs) -> Result<bool, Failure> {
    if args.run.processes.is_some_and(|n| n > 1) {
        return Err(Failure::Usage(
            "fleetsim rollout runs in one process (or one per --shard K/N, each orchestrating its slice); \
             for --processes, put the rollout in the scenario's [[rollouts]] and use fleetsim run"
                .into(),
        ));
    }
    use fleet_core::rollout::{AbortRaw, RateRaw, RolloutRaw};
    // Options that only mean something with another: say so instead of ignoring them.
    if args.abort_failure_percent.is_none() {
        let defaults = crate::cli::RolloutArgs::abort_defaults();
        if args.abort_min_executed != defaults.0 || args.abort_on != defaults.1 {
            return Err(Failure::Usage(
                "--abort-min-executed and --abort-on need --abort-failure-percent P".into(),
            ));
        }
    }
    if args.rate_base.is_none()
        && (args.rate_max.is_some()
            || args.rate_increase_after.is_some()
            || args.rate_increase_on_success
            || args.rate_factor != 2.0)
    {
        return Err(Failure::Usage(
            "--rate-max, --rate-factor and --rate-increase-after need --rate-base N".into(),
        ));
    }
    let raw = RolloutRaw {
        name: args.name.clone(),
        at: args.at.clone(),
        target_version: args.target.clone(),
        cohorts: args.cohorts.clone(),
        fraction: args.fraction,
        timeout: args.timeout.clone(),
        evaluate_every: args.evaluate_every.clone(),
        waves: (!args.waves.is_empty()).then(|| args.waves.clone()),
        wave_soak: args.wave_soak.clone(),
        wave_interval: args.wave_interval.clone(),
        rate: args.rate_base.map(|base| RateRaw {
            base_per_minute: base,
            increment_factor: args.rate_factor,
            max_per_minute: args.rate_max.unwrap_or(base),
            notified_to_increase: args
                .rate_increase_after
                .filter(|_| !args.rate_increase_on_success),
            succeeded_to_increase: args
                .rate_increase_after
                .filter(|_| args.rate_increase_on_success),
        }),
        url: args.url.clone(),
        size: args.size,
        sha256: args.sha256.clone(),
        abort: args.abort_failure_percent.map(|p| AbortRaw {
            failure_percent: p,
            min_executed: args.abort_min_executed,
            failure_types: args.abort_on.clone(),
        }),
    };
    let mut c = fleet_core::error::Checker::new("fleetsim rollout");
    let spec = raw.validate(&mut c, "rollout");
    if !c.errors.is_empty() {
        return Err(Failure::Config(c.errors));
    }
    run(args.run, Some((spec, args.keep_scenario_rollouts)))
}

pub fn run(
    args: RunArgs,
    extra_rollout: Option<(fleet_core::rollout::RolloutSpec, bool)>,
) -> Result<bool, Failure> {
    crate::surfaces::api_config(&args)?;
    let mut fleet = load(&args)?;
    apply_overrides(&mut fleet, &args)?;
    if let Some((spec, keep)) = extra_rollout {
        if !keep {
            fleet.settings.rollouts.clear();
            fleet.rollouts.clear();
        }
        fleet
            .add_rollout(spec, "fleetsim rollout")
            .map_err(Failure::Config)?;
    }
    check_embedded_broker_topics(&fleet)?;
    let slice = slice_of(&args)?;
    if !slice.is_whole() {
        check_sliceable(&fleet)?;
    }
    if let Some(n) = args.processes.filter(|&n| n > 1) {
        if args.dry_run {
            for k in 0..n {
                let slice = Slice::new(k, n).map_err(Failure::Usage)?;
                print!("{}", dry_run(&fleet, slice));
            }
            return Ok(true);
        }
        return crate::processes::run(args, fleet, n);
    }
    if let Some(p) = &args.report {
        ensure_writable(p, "--report")?;
    }
    if let Some(p) = &args.event_log {
        ensure_writable(p, "--event-log")?;
    }
    // Devices this process simulates (its slice of the fleet).
    let owned = |c: &fleet_core::Cohort| c.in_slice(slice).len() as u32;
    let devices: u32 = fleet.cohorts.iter().map(owned).sum();
    let shards = args
        .shards
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get() as u16)
                .unwrap_or(1)
        })
        .min(devices.max(1).min(u32::from(u16::MAX)) as u16);
    let settings = fleet.settings.clone();
    // MQTT sessions: one per device with MQTT (the others only sample, for Modbus), one per
    // gateway for devices behind gateways. Sockets, ports and memory are counted per session.
    let mqtt_devices: u32 = fleet
        .cohorts
        .iter()
        .map(|c| c.sessions_in(c.in_slice(slice)))
        .sum();
    preflight::check_memory(
        devices,
        mqtt_devices,
        settings.clock == Clock::Wall,
        settings.broker_urls.is_empty(),
        settings
            .broker_urls
            .iter()
            .any(|u| fleet_core::scenario::is_tls_url(u)),
    )
    .map_err(Failure::Usage)?;
    if args.dry_run {
        // What can be checked without the network: TLS files, credentials.
        if settings.clock == Clock::Wall && mqtt_devices > 0 {
            mqtt_tls(&settings, &args, &fleet)?;
            if !settings.broker_urls.is_empty() {
                credentials(&settings, &args, &fleet)?;
            }
        }
        print!("{}", dry_run(&fleet, slice));
        return Ok(true);
    }
    let modbus_plan =
        fleet_modbus::ModbusPlan::new(&fleet).map_err(|e| Failure::Usage(e.to_string()))?;
    let serial_devices: u32 = fleet
        .cohorts
        .iter()
        .filter(|c| c.profile.serial.is_some())
        .map(|c| c.count)
        .sum();
    if settings.clock == Clock::Virtual && serial_devices > 0 {
        tracing::warn!(
            "{serial_devices} serial devices get no ports on the virtual clock (a serial line runs in real time); they sample as usual"
        );
    }
    if settings.clock == Clock::Virtual && !modbus_plan.is_empty() {
        tracing::warn!(
            "{} Modbus devices are not served on the virtual clock (a master polls in real time); they sample as usual",
            modbus_plan.devices()
        );
    }
    let scenario_path = fleet.scenario_path.clone();
    let run_id = run_id();
    let span = tracing::info_span!("run", run_id = %run_id);
    let _enter = span.enter();

    let version = match settings.mqtt_version {
        MqttVersion::V311 => Version::V311,
        MqttVersion::V5 => Version::V5,
    };
    let stop = Arc::new(AtomicBool::new(false));
    crate::signals::install(stop.clone());
    if let Some(pid) = args.parent_pid {
        crate::signals::stop_with_parent(pid, stop.clone());
    }
    let control = fleet_engine::Control::new(shards);
    let mut opts = RunOptions {
        event_log: args.event_log.clone(),
        queries: None,
        control: Some(control.clone()),
        meta: fleet_metrics::RunMeta {
            run_id: run_id.clone(),
            scenario: settings.name.clone(),
            seed: settings.seed,
            clock: settings.clock.as_str().to_string(),
            duration_s: settings.duration.as_secs_f64(),
            shards,
            broker: String::new(),
            processes: 1,
            source: "local".into(),
        },
    };
    let mut progress = Progress::new(
        &settings,
        devices,
        args.headless || crate::surfaces::tui_wanted(&args),
        args.progress_every.to_std(),
    );

    let version_labels = fleet.version_labels().0;
    let cohorts: Vec<fleet_metrics::results::CohortSpan> = fleet
        .cohorts
        .iter()
        .map(|c| fleet_metrics::results::CohortSpan {
            name: c.name.clone(),
            first: c.first_device,
            count: c.count,
            unit: c.slice_unit(),
        })
        .collect();
    let mut results = match &args.results {
        None => None,
        Some(dir) => {
            let start_ms = match settings.clock {
                Clock::Virtual => settings
                    .start_epoch_ms
                    .unwrap_or(fleet_core::defaults::VIRTUAL_EPOCH_MS),
                Clock::Wall => SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
            };
            Some(
                fleet_metrics::results::ResultsWriter::create(dir, slice, start_ms)
                    .map_err(|e| Failure::Usage(format!("--results {}: {e}", dir.display())))?,
            )
        }
    };
    let (outcome, broker_desc) = match settings.clock {
        Clock::Virtual => {
            let epoch_ms = settings
                .start_epoch_ms
                .unwrap_or(fleet_core::defaults::VIRTUAL_EPOCH_MS);
            let plan = RunPlan::sliced(Arc::new(fleet), shards, epoch_ms, slice);
            let desc = "simulated (virtual clock)".to_string();
            opts.meta.broker = desc.clone();
            let (plan, port, surfaces) = steer(&args, plan, &control, &stop)?;
            describe_surfaces(&mut opts, surfaces.as_ref());
            tracing::info!(devices, shards, seed = settings.seed, duration = %settings.duration, "virtual run: simulated broker");
            let out = fleet_engine::run_virtual(
                plan,
                &opts,
                stop.clone(),
                observer(&mut progress, &port, &mut results),
            )
            .map_err(|e| Failure::Runtime(e.into()))?;
            drop(surfaces);
            (out, desc)
        }
        Clock::Wall => {
            let embedded = settings.broker_urls.is_empty() && mqtt_devices > 0;
            let listeners = if embedded {
                if settings.embedded_listeners > 0 {
                    settings.embedded_listeners
                } else {
                    fleet_mqtt::broker::default_listeners(mqtt_devices)
                }
            } else {
                settings.broker_urls.len() as u16
            };
            // Resolve external brokers first; the embedded one listens on loopback.
            let mut resolved = Vec::new();
            for url in &settings.broker_urls {
                resolved.push(
                    fleet_mqtt::url::resolve(url).map_err(|e| Failure::Usage(e.to_string()))?,
                );
            }
            let planned: Vec<std::net::SocketAddr> = if embedded {
                vec![std::net::SocketAddr::from(([127, 0, 0, 1], 0)); usize::from(listeners)]
            } else {
                resolved.clone()
            };
            let source_addrs =
                preflight::source_addrs(mqtt_devices, &planned, &settings.source_addrs);
            let epoch_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let serial_plan = fleet_serial::SerialPlan::new(&fleet, &args.run_dir, epoch_ms)
                .map_err(|e| Failure::Usage(e.to_string()))?;
            // Before anything starts: does the fleet fit this process?
            let modbus_fds = if modbus_plan.is_empty() {
                0
            } else {
                modbus_plan.open_files()
                    + modbus_plan.tcp.len() as u64 * u64::from(settings.modbus.max_connections)
            } + serial_plan.open_files();
            preflight::check(
                mqtt_devices,
                embedded,
                planned.len(),
                source_addrs.len(),
                modbus_fds,
            )
            .map_err(Failure::Usage)?;
            // Trust, client certificates and credentials are checked before anything starts.
            let tls = mqtt_tls(&settings, &args, &fleet)?;
            let auth = if embedded {
                None
            } else {
                credentials(&settings, &args, &fleet)?
            };
            let (targets, desc) = if mqtt_devices == 0 {
                (Vec::new(), "none (no device speaks MQTT)".to_string())
            } else if embedded {
                let b = fleet_mqtt::broker::start(mqtt_devices, listeners, version)
                    .map_err(|e| Failure::Runtime(e.into()))?;
                let listening: Vec<String> = b.listeners.iter().map(|a| a.to_string()).collect();
                let desc = format!("embedded rumqttd ({})", listening.join(", "));
                (b.listeners, desc)
            } else {
                (resolved, settings.broker_urls.join(", "))
            };
            let fleet = Arc::new(fleet);
            opts.meta.broker = desc.clone();
            let (plan, port, surfaces) = steer(
                &args,
                RunPlan::sliced(fleet.clone(), shards, epoch_ms, slice),
                &control,
                &stop,
            )?;
            describe_surfaces(&mut opts, surfaces.as_ref());
            tracing::info!(devices, shards, seed = settings.seed, duration = %settings.duration, broker = %desc, "wall-clock run");
            let router = if modbus_plan.is_empty() && serial_plan.is_empty() {
                None
            } else {
                let (router, inboxes) = fleet_engine::QueryRouter::new(&plan);
                opts.queries = Some(inboxes);
                Some(router)
            };
            let _modbus = match &router {
                Some(router) if !modbus_plan.is_empty() => {
                    let servers =
                        fleet_modbus::start(&modbus_plan, &fleet, router.clone(), &args.run_dir)
                            .map_err(|e| Failure::Usage(e.to_string()))?;
                    announce_modbus(&modbus_plan, &servers);
                    Some(servers)
                }
                _ => None,
            };
            let _serial = match &router {
                Some(router) if !serial_plan.is_empty() => {
                    let servers = fleet_serial::start(&serial_plan, router.clone(), &args.run_dir)
                        .map_err(|e| Failure::Usage(e.to_string()))?;
                    announce_serial(&servers);
                    Some(servers)
                }
                _ => None,
            };
            let cfg = Arc::new(MqttConfig {
                tls,
                auth,
                version,
                targets,
                source_addrs,
                tcp_nodelay: settings.tcp_nodelay,
                max_connecting: match settings.max_connecting {
                    0 => fleet_mqtt::adapter::DEFAULT_MAX_CONNECTING,
                    n => n as usize,
                },
                download_slots: fleet_mqtt::http::DownloadSlots::new(
                    settings.ota_max_downloads as usize,
                ),
            });
            let plan_for_adapters = plan.clone();
            let out = fleet_engine::run_wall(
                plan,
                move |k| {
                    MqttAdapter::new(
                        cfg.clone(),
                        plan_for_adapters.shard_len(k),
                        plan_for_adapters.shards,
                    )
                },
                &opts,
                stop.clone(),
                observer(&mut progress, &port, &mut results),
            )
            .map_err(|e| Failure::Runtime(e.into()))?;
            drop(surfaces);
            (out, desc)
        }
    };
    progress.finish();

    let usage = process::usage();
    let info = RunInfo {
        id: run_id.clone(),
        seed: settings.seed,
        scenario: settings.name.clone(),
        scenario_path,
        clock: settings.clock.as_str().to_string(),
        duration_s: settings.duration.as_secs_f64(),
        elapsed_s: outcome.elapsed.as_secs_f64(),
        shards,
        broker: broker_desc,
        mqtt_version: match version {
            Version::V311 => "3.1.1".into(),
            Version::V5 => "5".into(),
        },
        fleetsim_version: env!("CARGO_PKG_VERSION").into(),
        interrupted: outcome.interrupted,
        processes: 1,
    };
    let report_labels = version_labels;
    let stats = ProcessStats {
        rss_peak_bytes: usage.rss_peak_bytes,
        cpu_user_s: usage.cpu_user_s,
        cpu_system_s: usage.cpu_system_s,
        open_files_limit: process::open_files_limit(),
    };
    let report = RunReport::build(
        info,
        &outcome.at_end,
        &outcome.last,
        stats,
        SATURATION_LAG_US,
        &settings.slos,
        fleet_metrics::OtaInputs {
            version_labels: report_labels.clone(),
            rollouts: outcome.rollouts.clone(),
        },
    );
    if report.messages.unaccounted != 0 || report.messages.devices_unaccounted != 0 {
        tracing::error!(
            unaccounted = report.messages.unaccounted,
            devices = report.messages.devices_unaccounted,
            "fleetsim lost count of telemetry messages (a bug: please report it with the scenario and seed)"
        );
    }
    if let Some(path) = &args.report {
        write_report(path, &report).map_err(Failure::Runtime)?;
    }
    if let Some(w) = results {
        let out = fleet_metrics::results::ShardResults {
            slice,
            cohorts,
            run: report.run.clone(),
            process: stats,
            slos: settings.slos.clone(),
            saturation_threshold_us: SATURATION_LAG_US,
            version_labels: report_labels,
            rollouts: outcome.rollouts.clone(),
            at_end: outcome.at_end.clone(),
            ..Default::default()
        };
        let path = w
            .finish(out, &outcome.last)
            .map_err(|e| Failure::Runtime(anyhow::anyhow!("--results: {e}")))?;
        tracing::info!("results for `fleetsim report merge`: {}", path.display());
    }
    print!("{}", summary::render(&report, args.report.as_deref()));
    Ok(report.ok)
}

/// The plan, the port the surfaces read, and the surfaces started (no port, no surfaces when
/// nobody steers the run).
type Steered = (
    Arc<RunPlan>,
    Option<Arc<crate::port::LocalPort>>,
    Option<crate::surfaces::Surfaces>,
);

/// The plan, with rollouts that may be started while it runs when someone can steer it; the
/// port the surfaces read; the surfaces (the dashboard, the API) started.
fn steer(
    args: &RunArgs,
    plan: RunPlan,
    control: &Arc<fleet_engine::Control>,
    stop: &Arc<AtomicBool>,
) -> Result<Steered, Failure> {
    let steered = crate::surfaces::wanted(args);
    let plan = Arc::new(if steered {
        plan.with_live_rollouts()
    } else {
        plan
    });
    if !steered {
        return Ok((plan, None, None));
    }
    let port = crate::port::LocalPort::new(plan.clone(), control.clone());
    let surfaces = crate::surfaces::Surfaces::start(args, port.clone(), stop.clone())?;
    Ok((plan, Some(port), Some(surfaces)))
}

/// What a run does with each snapshot: the progress line, the port of its surfaces, the
/// results' interval log.
fn observer<'a>(
    progress: &'a mut Progress,
    port: &'a Option<Arc<crate::port::LocalPort>>,
    results: &'a mut Option<fleet_metrics::results::ResultsWriter>,
) -> impl FnMut(&fleet_metrics::FleetSnapshot) + 'a {
    move |s| {
        progress.update(s);
        if let Some(port) = port {
            port.publish(s);
        }
        if let Some(w) = results
            && let Err(e) = w.observe(s)
        {
            tracing::error!(
                "--results: cannot write the interval log {}: {e}; no results from this process",
                w.log_path().display()
            );
            *results = None;
        }
    }
}

/// Where the run can be reached, for the dashboard's status line (its log is in a file then).
fn describe_surfaces(opts: &mut RunOptions, surfaces: Option<&crate::surfaces::Surfaces>) {
    if let Some(addr) = surfaces.and_then(crate::surfaces::Surfaces::api_addr) {
        opts.meta.source = format!("local run · control API on http://{addr}");
    }
}

/// Says where the serial ports are (also written to the map file).
fn announce_serial(servers: &fleet_serial::SerialServers) {
    let mut by_persona: std::collections::BTreeMap<&str, usize> = Default::default();
    for (_, _, persona, _) in &servers.ports {
        *by_persona.entry(persona).or_default() += 1;
    }
    let kinds: Vec<String> = by_persona.iter().map(|(p, n)| format!("{n} {p}")).collect();
    if let Some((name, path, persona, baud)) = servers.ports.first() {
        tracing::info!(
            "serial: {} ports ({}); e.g. {name} ({persona}, {baud} baud) at {}",
            servers.ports.len(),
            kinds.join(", "),
            path.display()
        );
    }
    tracing::info!("serial: map of every port: {}", servers.map_file.display());
}

/// Says where the Modbus slaves are (also written to the map file).
fn announce_modbus(plan: &fleet_modbus::ModbusPlan, servers: &fleet_modbus::ModbusServers) {
    let tcp_devices: usize = plan.tcp.iter().map(|p| p.units.len()).sum();
    if let (Some(first), Some(last)) = (servers.tcp.first(), servers.tcp.last()) {
        let ports = if first.port() == last.port() {
            first.to_string()
        } else {
            format!("{first} .. port {}", last.port())
        };
        tracing::info!(
            "modbus: {tcp_devices} devices as TCP slaves on {} port(s) ({ports}), unit ids from 1",
            servers.tcp.len()
        );
    }
    for (bus, path) in plan.rtu.iter().zip(&servers.rtu) {
        tracing::info!(
            "modbus: RTU line {} with {} slaves (units 1..{}) at {} ({} baud)",
            bus.name,
            bus.units.len(),
            bus.units.len(),
            path.display(),
            bus.baud
        );
    }
    tracing::info!(
        "modbus: map of every device: {}",
        servers.map_file.display()
    );
}

pub fn write_report(path: &Path, report: &RunReport) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(&report.to_json()).context("encoding the report")?;
    std::fs::write(path, text + "\n")
        .with_context(|| format!("writing the report to {}", path.display()))
}

/// TLS for `mqtts://` brokers: the scenario's `[broker.tls]` with `--ca-file` /
/// `--insecure-skip-verify` on top; the broker's certificate is verified unless told not to.
fn mqtt_tls(
    settings: &fleet_core::scenario::ScenarioSettings,
    args: &RunArgs,
    fleet: &Fleet,
) -> Result<Option<Arc<fleet_mqtt::adapter::MqttTls>>, Failure> {
    let urls = &settings.broker_urls;
    let secure = urls
        .iter()
        .filter(|u| fleet_core::scenario::is_tls_url(u))
        .count();
    if secure == 0 {
        if args.ca_file.is_some() || args.insecure_skip_verify {
            return Err(Failure::Usage(
                "--ca-file and --insecure-skip-verify apply to TLS brokers: use an mqtts:// URL"
                    .into(),
            ));
        }
        return Ok(None);
    }
    if secure < urls.len() {
        return Err(Failure::Usage(format!(
            "broker URLs {} mix mqtts:// and mqtt://: every listener of a run speaks TLS or none does",
            urls.join(", ")
        )));
    }
    let mut cfg = settings
        .broker_tls
        .clone()
        .unwrap_or(fleet_core::security::BrokerTls {
            ca_file: None,
            server_name: None,
            insecure_skip_verify: false,
            client_cert: None,
            alpn: Vec::new(),
        });
    if let Some(ca) = &args.ca_file {
        cfg.ca_file = Some(ca.clone());
    }
    cfg.insecure_skip_verify |= args.insecure_skip_verify;
    let connector = fleet_mqtt::tls::TlsConnector::new(&cfg)
        .map_err(|e| Failure::Usage(format!("[broker.tls]: {e}")))?;
    if let Some(certs) = &cfg.client_cert {
        check_client_certs(&connector, certs, fleet)?;
    }
    let host = fleet_mqtt::url::host(&urls[0]).unwrap_or("").to_string();
    Ok(Some(Arc::new(fleet_mqtt::adapter::MqttTls {
        connector,
        host,
        client_cert: cfg.client_cert,
    })))
}

/// `[broker.auth]`: the credentials file read once, and checked to name every device that
/// speaks MQTT (a device missing from it would be refused at every attempt).
fn credentials(
    settings: &fleet_core::scenario::ScenarioSettings,
    args: &RunArgs,
    fleet: &Fleet,
) -> Result<Option<Arc<fleet_core::security::Credentials>>, Failure> {
    let Some(auth) = &settings.broker_auth else {
        return Ok(None);
    };
    let scenario = args
        .scenario
        .clone()
        .unwrap_or_else(|| std::path::PathBuf::from(builtin::DEMO_PATH));
    let file = scenario.display().to_string();
    let credentials = auth
        .load(&FsSource, &file, "broker.auth")
        .map_err(Failure::Config)?;
    let mut ids: Vec<Vec<u8>> = Vec::new();
    for cohort in fleet.cohorts.iter().filter(|c| c.mqtt) {
        for id in cohort.first_device..cohort.first_device + cohort.count {
            let mut buf = Vec::new();
            cohort.render_device_id(fleet_core::DeviceId(id), &mut buf);
            ids.push(buf);
        }
    }
    credentials
        .check_devices(ids.iter().map(Vec::as_slice))
        .map_err(|e| Failure::Config(e.into()))?;
    Ok(Some(Arc::new(credentials)))
}

/// Every device that speaks MQTT has its certificate and key files; the first device's are
/// read and checked to belong together (a run whose devices would all fail to connect stops
/// here, with the file named).
fn check_client_certs(
    connector: &fleet_mqtt::tls::TlsConnector,
    certs: &fleet_core::security::ClientCertTemplates,
    fleet: &Fleet,
) -> Result<(), Failure> {
    let mut missing = Vec::new();
    let mut missing_count = 0usize;
    let mut first = None;
    let mut buf = Vec::new();
    for cohort in fleet.cohorts.iter().filter(|c| c.mqtt) {
        for id in cohort.first_device..cohort.first_device + cohort.count {
            let id = fleet_core::DeviceId(id);
            buf.clear();
            cohort.render_device_id(id, &mut buf);
            let (cert, key) = certs.paths(&cohort.vars(id, &buf));
            for path in [&cert, &key] {
                if !path.is_file() {
                    missing_count += 1;
                    if missing.len() < 3 {
                        missing.push(path.display().to_string());
                    }
                }
            }
            first.get_or_insert((cert, key));
            if !certs.is_per_device() {
                break; // one certificate for every device
            }
        }
    }
    if missing_count > 0 {
        return Err(Failure::Usage(format!(
            "[broker.tls] client_cert / client_key: {missing_count} file(s) missing, e.g. {}.\n  \
             fix: create them (`fleetsim certs SCENARIO --cohort NAME` writes a test CA and a \
             certificate per device) or correct the templates",
            missing.join(", ")
        )));
    }
    if let Some((cert, key)) = first {
        connector
            .check_client_cert(&cert, &key)
            .map_err(|e| Failure::Usage(format!("[broker.tls] client certificate: {e}")))?;
    }
    Ok(())
}
