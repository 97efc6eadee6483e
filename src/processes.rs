//! `fleetsim run --processes N`: the fleet as N child processes on this machine, each owning a
//! slice (`--shard K/N`) with its own open-file budget, spread over the broker listeners and
//! source addresses. The parent watches them through their control APIs (merged live for the
//! dashboard, `/metrics` and the progress line), and merges their results into one report at
//! the end. A child that dies is reported with the device range it held: the run does not
//! silently shrink.

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fleet_core::Fleet;
use fleet_core::slice::Slice;
use fleet_metrics::FleetPort;

use crate::Failure;
use crate::cli::{ClockArg, MqttVersionArg, RunArgs};
use crate::progress::Progress;

/// How long a child may take to load its slice and open its control API.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How often the parent looks at its children and the merged snapshot.
const TICK: Duration = Duration::from_millis(250);
/// After the run's end (and its drain), how long the parent waits for a child to write its
/// results and exit before it is killed and reported missing.
const EXIT_GRACE: Duration = Duration::from_secs(60);

/// One child: its slice, the process, where its log and API address go.
struct Shard {
    slice: Slice,
    child: Child,
    log: PathBuf,
    addr_file: PathBuf,
    /// What the slice holds, for messages: "meters 500..750, trackers 40..50".
    ranges: String,
    ended: Option<ExitStatus>,
}

pub fn run(args: RunArgs, fleet: Fleet, n: u32) -> Result<bool, Failure> {
    let total = fleet.total_devices();
    if n > total {
        return Err(Failure::Usage(format!(
            "--processes {n}: the fleet has {total} devices; use at most one process per device"
        )));
    }
    if args.shards_total.is_some() || args.shard.is_some() {
        return Err(Failure::Usage(
            "--processes cuts the fleet itself: leave out --shard and --shards-total".into(),
        ));
    }
    if let Some(p) = &args.report {
        crate::run_cmd::ensure_writable(p, "--report")?;
    }
    let settings = fleet.settings.clone();
    // Each child checks its own open files and source ports; memory is the machine's, shared.
    let sessions: u32 = fleet
        .cohorts
        .iter()
        .map(|c| c.sessions_in(c.first_device..c.first_device + c.count))
        .sum();
    crate::preflight::check_memory(
        total,
        sessions,
        settings.clock == fleet_core::scenario::Clock::Wall,
        settings.broker_urls.is_empty(),
        settings
            .broker_urls
            .iter()
            .any(|u| fleet_core::scenario::is_tls_url(u)),
    )
    .map_err(|e| {
        Failure::Usage(format!(
            "--processes {n} (all of them on this machine): {e}"
        ))
    })?;
    let results = args
        .results
        .clone()
        .unwrap_or_else(|| args.run_dir.join("results"));
    clear_results(&results, n)?;
    let exe = std::env::current_exe()
        .map_err(|e| Failure::Runtime(anyhow::anyhow!("cannot find fleetsim's own binary: {e}")))?;
    let spread = Spread::new(&settings, &fleet, n);
    let threads = args.shards.unwrap_or_else(|| {
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get() as u32);
        cores.div_ceil(n).max(1) as u16
    });
    let stop = Arc::new(AtomicBool::new(false));
    crate::signals::install(stop.clone());

    let mut shards = Vec::with_capacity(n as usize);
    for k in 0..n {
        let slice = Slice { index: k, count: n };
        let dir = args.run_dir.join(format!("shard-{k}-of-{n}"));
        std::fs::create_dir_all(&dir).map_err(|e| {
            Failure::Usage(format!(
                "--run-dir {}: cannot create {}: {e}",
                args.run_dir.display(),
                dir.display()
            ))
        })?;
        let log = dir.join("fleetsim.log");
        let addr_file = dir.join("api-addr");
        let _ = std::fs::remove_file(&addr_file);
        let out = std::fs::File::create(&log)
            .map_err(|e| Failure::Usage(format!("cannot write {}: {e}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(|e| Failure::Runtime(anyhow::anyhow!("{}: {e}", log.display())))?;
        let argv = child_args(&args, &spread, slice, threads, &results, &dir, &addr_file);
        let child = std::process::Command::new(&exe)
            .args(&argv)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| Failure::Runtime(anyhow::anyhow!("cannot start shard {slice}: {e}")))?;
        shards.push(Shard {
            slice,
            child,
            log,
            addr_file,
            ranges: describe_ranges(&fleet, slice),
            ended: None,
        });
    }
    tracing::info!(
        processes = n,
        devices = total,
        "fleet cut into {n} processes (logs: {}/shard-K-of-{n}/fleetsim.log)",
        args.run_dir.display()
    );
    for s in &shards {
        tracing::debug!(shard = %s.slice, pid = s.child.id(), "{}", s.ranges);
    }

    let urls = match wait_for_apis(&mut shards, &stop) {
        Ok(urls) => urls,
        Err(e) => {
            end_all(&mut shards);
            return Err(e);
        }
    };
    // The API of each shard, by its position among the URLs watched.
    let mut watched = vec![None; shards.len()];
    let mut live_urls = Vec::new();
    for (k, url) in urls.into_iter().enumerate() {
        if let Some(url) = url {
            watched[k] = Some(live_urls.len());
            live_urls.push(url);
        }
    }
    let watching = fleet_api::RemoteFleet::connect(live_urls, None)
        .map_err(|e| Failure::Runtime(anyhow::anyhow!("watching the shards: {e}")))
        .and_then(|remote| {
            let remote = Arc::new(remote);
            let port: Arc<dyn FleetPort> = remote.clone();
            let surfaces = if crate::surfaces::wanted(&args) {
                Some(crate::surfaces::Surfaces::start(
                    &args,
                    port.clone(),
                    stop.clone(),
                )?)
            } else {
                None
            };
            Ok((remote, port, surfaces))
        });
    let (remote, port, surfaces) = match watching {
        Ok(w) => w,
        Err(e) => {
            // Nobody would watch them: the children stop (and the reason is the parent's).
            end_all(&mut shards);
            return Err(e);
        }
    };
    let mut progress = Progress::new(
        &settings,
        total,
        args.headless || crate::surfaces::tui_wanted(&args),
        args.progress_every.to_std(),
    );

    // Watch until every child has exited.
    let mut forwarded = false;
    let mut last_snapshot = None;
    let mut ended_at: Option<Instant> = None;
    let run_len = settings.duration.to_std() + settings.drain.to_std();
    let started = Instant::now();
    loop {
        if stop.load(Ordering::Relaxed) && !forwarded {
            forwarded = true;
            for s in shards.iter().filter(|s| s.ended.is_none()) {
                terminate(&s.child);
            }
        }
        for s in shards.iter_mut().filter(|s| s.ended.is_none()) {
            if let Ok(Some(status)) = s.child.try_wait() {
                s.ended = Some(status);
                if !exited_well(status) {
                    if let Some(i) = watched[s.slice.index as usize] {
                        remote.mark_lost(
                            i,
                            format!("shard {} ({}) {}", s.slice, s.ranges, describe_exit(status)),
                        );
                    }
                    tracing::error!(
                        "shard {} ({}) {}; the others go on, and the report will say these devices are missing{}",
                        s.slice,
                        s.ranges,
                        describe_exit(status),
                        last_lines(&s.log)
                    );
                }
            }
        }
        if let Some(snap) = port.snapshot()
            && last_snapshot
                .as_ref()
                .is_none_or(|l: &Arc<fleet_metrics::FleetSnapshot>| !Arc::ptr_eq(l, &snap))
        {
            progress.update(&snap);
            last_snapshot = Some(snap);
        }
        if shards.iter().all(|s| s.ended.is_some()) {
            break;
        }
        // Past the run's end (virtual runs end whenever the CPU gets there): bounded wait.
        if settings.clock == fleet_core::scenario::Clock::Wall
            && started.elapsed() > run_len
            && ended_at.is_none()
        {
            ended_at = Some(Instant::now());
        }
        if ended_at.is_some_and(|t| t.elapsed() > EXIT_GRACE) {
            for s in shards.iter_mut().filter(|s| s.ended.is_none()) {
                tracing::error!(
                    "shard {} ({}) has not ended {} s after the run: killing it",
                    s.slice,
                    s.ranges,
                    EXIT_GRACE.as_secs()
                );
                let _ = s.child.kill();
                s.ended = s.child.wait().ok();
            }
            break;
        }
        std::thread::sleep(TICK);
    }
    progress.finish();
    drop(surfaces);
    drop(port);
    drop(remote);

    let failures: Vec<(u32, String)> = shards
        .iter()
        .filter_map(|s| {
            let status = s.ended?;
            (!exited_well(status)).then(|| (s.slice.index, describe_exit(status)))
        })
        .collect();
    if let Some(path) = &args.event_log {
        join_event_logs(path, &shards)?;
    }
    merge(&args, &settings, &results, &shards, &failures)
}

/// The children's results, merged into the run's report and summary; exit code as for one
/// process, 3 when a slice is missing.
fn merge(
    args: &RunArgs,
    settings: &fleet_core::scenario::ScenarioSettings,
    results: &Path,
    shards: &[Shard],
    failures: &[(u32, String)],
) -> Result<bool, Failure> {
    let parts = fleet_metrics::results::read_results(&[results.to_path_buf()])
        .map_err(|e| Failure::Runtime(anyhow::anyhow!("reading the shards' results: {e}")))?;
    let merged = fleet_metrics::results::merge_results(&parts, failures)
        .map_err(|e| Failure::Runtime(anyhow::anyhow!("merging the shards' results: {e}")))?;
    let report = merged.report;
    if let Some(path) = &args.report {
        crate::run_cmd::write_report(path, &report).map_err(Failure::Runtime)?;
    }
    print!(
        "{}",
        crate::summary::render(&report, args.report.as_deref())
    );
    let lost: Vec<String> = shards
        .iter()
        .filter(|s| s.ended.is_none_or(|st| !exited_well(st)))
        .map(|s| format!("shard {} ({}) {}", s.slice, s.ranges, describe_exit_of(s)))
        .collect();
    if !lost.is_empty() {
        return Err(Failure::Runtime(anyhow::anyhow!(
            "{} of {} processes did not finish, their devices are missing from the report: {}",
            lost.len(),
            shards.len(),
            lost.join("; ")
        )));
    }
    tracing::debug!(scenario = %settings.name, "merged the results of {} processes", shards.len());
    Ok(report.ok)
}

/// Leftover results of an earlier run in the folder would be merged into this one.
fn clear_results(dir: &Path, n: u32) -> Result<(), Failure> {
    std::fs::create_dir_all(dir).map_err(|e| {
        Failure::Usage(format!(
            "--results {}: cannot create the folder: {e}",
            dir.display()
        ))
    })?;
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Failure::Usage(format!("--results {}: {e}", dir.display())))?;
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("shard-") && (name.ends_with(".json") || name.ends_with(".hlog")) {
            std::fs::remove_file(e.path()).map_err(|err| {
                Failure::Usage(format!(
                    "--results {}: cannot remove the earlier run's {name}: {err}",
                    dir.display()
                ))
            })?;
        }
    }
    tracing::debug!("results of the {n} processes go to {}", dir.display());
    Ok(())
}

/// Which brokers and source addresses each child gets.
struct Spread {
    brokers: Vec<Vec<String>>,
    sources: Vec<Vec<IpAddr>>,
    max_connecting: Option<u32>,
}

impl Spread {
    fn new(s: &fleet_core::scenario::ScenarioSettings, fleet: &Fleet, n: u32) -> Spread {
        let n = n as usize;
        let deal = |k: usize, len: usize| -> Vec<usize> {
            if len >= n {
                (k..len).step_by(n).collect()
            } else {
                vec![k % len]
            }
        };
        let brokers: Vec<Vec<String>> = (0..n)
            .map(|k| {
                if s.broker_urls.is_empty() {
                    Vec::new() // each child starts its own embedded broker
                } else {
                    deal(k, s.broker_urls.len())
                        .into_iter()
                        .map(|i| s.broker_urls[i].clone())
                        .collect()
                }
            })
            .collect();
        let mqtt: u32 = fleet
            .cohorts
            .iter()
            .map(|c| c.sessions_in(c.first_device..c.first_device + c.count))
            .sum();
        let sources: Vec<Vec<IpAddr>> = if !s.source_addrs.is_empty() {
            (0..n)
                .map(|k| {
                    deal(k, s.source_addrs.len())
                        .into_iter()
                        .map(|i| s.source_addrs[i])
                        .collect()
                })
                .collect()
        } else if !s.broker_urls.is_empty() && loopback_brokers(&s.broker_urls) {
            // Children sharing a loopback listener get source addresses of their own, so their
            // sessions do not compete for the same source ports.
            let sharing = n.div_ceil(s.broker_urls.len()).max(1) as u64;
            let per_child = (u64::from(mqtt) / n as u64 / brokers[0].len().max(1) as u64).max(1);
            let each = per_child
                .div_ceil(crate::preflight::FAST_SESSIONS_PER_SOURCE)
                .max(1);
            // 127.0.0.10 .. 127.0.0.254: past that, children share addresses (said once).
            const FIRST: u64 = 10;
            const AVAILABLE: u64 = 245;
            if sharing == 1 && each == 1 {
                vec![Vec::new(); n]
            } else {
                if n as u64 * each > AVAILABLE {
                    tracing::warn!(
                        "{n} processes would need {} loopback source addresses of their own; 127.0.0.10-254 are shared among them (give --source-addr to choose)",
                        n as u64 * each
                    );
                }
                (0..n as u64)
                    .map(|k| {
                        (0..each)
                            .map(|j| FIRST + (k * each + j) % AVAILABLE)
                            .map(|x| IpAddr::V4(Ipv4Addr::new(127, 0, 0, x as u8)))
                            .collect()
                    })
                    .collect()
            }
        } else {
            vec![Vec::new(); n]
        };
        // The default number of connects in progress is per process: children sharing a
        // listener share its listen backlog.
        let max_connecting = (s.max_connecting == 0 && !s.broker_urls.is_empty()).then(|| {
            let sharing = n.div_ceil(s.broker_urls.len()).max(1);
            (fleet_mqtt::adapter::DEFAULT_MAX_CONNECTING / sharing).max(8) as u32
        });
        Spread {
            brokers,
            sources,
            max_connecting,
        }
    }
}

fn loopback_brokers(urls: &[String]) -> bool {
    urls.iter().all(|u| {
        fleet_mqtt::url::host(u).is_some_and(|h| {
            h == "localhost"
                || h.trim_matches(['[', ']'])
                    .parse::<IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        })
    })
}

/// The child's command line: the parent's run options, its slice, its brokers and sources,
/// headless, its control API on a free loopback port.
fn child_args(
    args: &RunArgs,
    spread: &Spread,
    slice: Slice,
    threads: u16,
    results: &Path,
    dir: &Path,
    addr_file: &Path,
) -> Vec<OsString> {
    let k = slice.index as usize;
    let mut v: Vec<OsString> = vec!["run".into()];
    let mut opt = |name: &str, value: String| {
        v.push(format!("--{name}").into());
        v.push(value.into());
    };
    if let Ok(level) = std::env::var("FLEETSIM_CHILD_LOG_LEVEL") {
        opt("log-level", level);
    }
    opt("shard", slice.to_string());
    opt("shards", threads.to_string());
    opt("results", results.display().to_string());
    opt("run-dir", dir.display().to_string());
    opt("api-listen", "127.0.0.1:0".into());
    opt("api-addr-file", addr_file.display().to_string());
    opt("progress-every", "10s".into());
    opt("parent-pid", std::process::id().to_string());
    for b in &spread.brokers[k] {
        opt("broker", b.clone());
    }
    for a in &spread.sources[k] {
        opt("source-addr", a.to_string());
    }
    if let Some(n) = args.max_connecting.or(spread.max_connecting) {
        opt("max-connecting", n.to_string());
    }
    if let Some(p) = &args.ca_file {
        opt("ca-file", p.display().to_string());
    }
    if let Some(n) = args.devices {
        opt("devices", n.to_string());
    }
    if let Some(d) = args.duration {
        opt("duration", d.to_string());
    }
    if let Some(s) = args.seed {
        opt("seed", s.to_string());
    }
    if let Some(c) = args.clock {
        let c = match c {
            ClockArg::Wall => "wall",
            ClockArg::Virtual => "virtual",
        };
        opt("clock", c.into());
    }
    if let Some(m) = args.mqtt_version {
        let m = match m {
            MqttVersionArg::V311 => "3.1.1",
            MqttVersionArg::V5 => "5",
        };
        opt("mqtt-version", m.into());
    }
    if let Some(b) = args.tcp_nodelay {
        opt("tcp-nodelay", b.to_string());
    }
    if let Some(p) = &args.event_log {
        opt("event-log", part_path(p, slice).display().to_string());
    }
    v.push("--headless".into());
    if args.insecure_skip_verify {
        v.push("--insecure-skip-verify".into());
    }
    if let Some(s) = &args.scenario {
        v.push(s.clone().into_os_string());
    }
    v
}

/// `events.log` -> `events.log.shard-2-of-4`.
fn part_path(p: &Path, slice: Slice) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(format!(".shard-{}-of-{}", slice.index, slice.count));
    PathBuf::from(s)
}

/// The children's event logs, one after the other, into the one the user asked for.
fn join_event_logs(path: &Path, shards: &[Shard]) -> Result<(), Failure> {
    let write_err = |e: std::io::Error| {
        Failure::Runtime(anyhow::anyhow!(
            "--event-log {}: cannot write: {e}",
            path.display()
        ))
    };
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).map_err(write_err)?);
    for s in shards {
        let part = part_path(path, s.slice);
        let Ok(mut f) = std::fs::File::open(&part) else {
            continue; // a child that died before writing one
        };
        std::io::copy(&mut f, &mut out).map_err(write_err)?;
        let _ = std::fs::remove_file(&part);
    }
    std::io::Write::flush(&mut out).map_err(write_err)
}

/// Waits until every child's control API listens; the URL of each (None for a child that was
/// killed while it started: it is reported like one that dies later). A child that exits with
/// an error first ends the start: its own words (its log's last lines) say why.
fn wait_for_apis(shards: &mut [Shard], stop: &AtomicBool) -> Result<Vec<Option<String>>, Failure> {
    let deadline = Instant::now() + START_TIMEOUT;
    let mut urls: Vec<Option<String>> = vec![None; shards.len()];
    loop {
        for (s, url) in shards.iter_mut().zip(urls.iter_mut()) {
            if url.is_some() || s.ended.is_some() {
                continue;
            }
            if let Ok(text) = std::fs::read_to_string(&s.addr_file)
                && !text.trim().is_empty()
            {
                *url = Some(format!("http://{}", text.trim()));
                continue;
            }
            if let Ok(Some(status)) = s.child.try_wait() {
                s.ended = Some(status);
                let msg = format!(
                    "shard {} ({}) {} before it started{}",
                    s.slice,
                    s.ranges,
                    describe_exit(status),
                    last_lines(&s.log)
                );
                match status.code() {
                    Some(2) => return Err(Failure::Usage(msg)),
                    Some(_) => return Err(Failure::Runtime(anyhow::anyhow!(msg))),
                    None => tracing::error!(
                        "{msg}; the others go on, and the report will say these devices are missing"
                    ),
                }
            }
        }
        if shards
            .iter()
            .zip(&urls)
            .all(|(s, u)| u.is_some() || s.ended.is_some())
        {
            if urls.iter().all(Option::is_none) {
                return Err(Failure::Runtime(anyhow::anyhow!(
                    "every process ended before it started"
                )));
            }
            return Ok(urls);
        }
        if stop.load(Ordering::Relaxed) {
            return Err(Failure::Runtime(anyhow::anyhow!(
                "interrupted while the processes started"
            )));
        }
        if Instant::now() > deadline {
            let late: Vec<String> = shards
                .iter()
                .zip(&urls)
                .filter(|(s, u)| u.is_none() && s.ended.is_none())
                .map(|(s, _)| s.slice.to_string())
                .collect();
            return Err(Failure::Runtime(anyhow::anyhow!(
                "shard(s) {} did not open their control API within {} s (see their logs under the run folder)",
                late.join(", "),
                START_TIMEOUT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stops every child still running (a failed start).
fn end_all(shards: &mut [Shard]) {
    for s in shards.iter_mut().filter(|s| s.ended.is_none()) {
        terminate(&s.child);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for s in shards.iter_mut().filter(|s| s.ended.is_none()) {
        loop {
            if let Ok(Some(st)) = s.child.try_wait() {
                s.ended = Some(st);
                break;
            }
            if Instant::now() > deadline {
                let _ = s.child.kill();
                s.ended = s.child.wait().ok();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// SIGTERM to a child not reaped yet (so its pid is still ours): it stops as on Ctrl-C,
/// writing its results.
fn terminate(child: &Child) {
    fleet_engine::process::terminate(child.id());
}

/// 0 (SLOs met) and 1 (an SLO failed in its slice) are runs carried out; the merged report
/// judges the SLOs again on the whole fleet.
fn exited_well(status: ExitStatus) -> bool {
    matches!(status.code(), Some(0 | 1))
}

fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with code {c}"),
        (None, Some(s)) => format!("was killed by signal {s}{}", signal_name(s)),
        _ => "ended".into(),
    }
}

fn describe_exit_of(s: &Shard) -> String {
    s.ended.map_or_else(|| "did not end".into(), describe_exit)
}

fn signal_name(s: i32) -> &'static str {
    match s {
        9 => " (SIGKILL: killed, e.g. by the OOM killer or kill -9)",
        15 => " (SIGTERM)",
        11 => " (SIGSEGV)",
        6 => " (SIGABRT: an abort)",
        2 => " (SIGINT)",
        _ => "",
    }
}

/// The slice's devices in words: "meters 500..750, trackers 40..50".
pub fn describe_ranges(fleet: &Fleet, slice: Slice) -> String {
    let parts: Vec<String> = fleet
        .cohorts
        .iter()
        .map(|c| (c, c.in_slice(slice)))
        .filter(|(_, r)| !r.is_empty())
        .map(|(c, r)| format!("{} {}..{}", c.name, r.start, r.end))
        .collect();
    if parts.is_empty() {
        "no devices".into()
    } else {
        parts.join(", ")
    }
}

/// The last lines of a child's log, to say why it ended.
fn last_lines(log: &Path) -> String {
    let Ok(text) = std::fs::read_to_string(log) else {
        return String::new();
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = &lines[lines.len().saturating_sub(4)..];
    if tail.is_empty() {
        return String::new();
    }
    format!(
        "; its log ({}) ends with:\n    {}",
        log.display(),
        tail.join("\n    ")
    )
}
