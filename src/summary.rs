//! The human-readable end-of-run summary.

use std::fmt::Write as _;
use std::path::Path;

use fleet_metrics::RunReport;

/// Microseconds in the largest unit that keeps them readable: `850 us`, `4.57 ms`, `1.20 s`.
pub fn us(v: u64) -> String {
    if v >= 1_000_000 {
        format!("{:.2} s", v as f64 / 1e6)
    } else if v >= 1_000 {
        format!("{:.2} ms", v as f64 / 1e3)
    } else {
        format!("{v} us")
    }
}

use fleet_metrics::thousands as n;

fn slo_value(metric: &str, v: f64) -> String {
    if metric.starts_with("latency_us") {
        us(v as u64)
    } else if metric.ends_with("_ratio") {
        format!("{:.4}", v)
    } else if metric.ends_with("_ms") {
        format!("{v:.1} ms")
    } else {
        format!("{v}")
    }
}

pub fn render(r: &RunReport, report_path: Option<&Path>) -> String {
    let mut o = String::new();
    let run = &r.run;
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "fleetsim {}  run {}  scenario {} ({})",
        run.fleetsim_version, run.id, run.scenario, run.scenario_path
    );
    let _ = writeln!(
        o,
        "  seed {}  clock {}  duration {}s  elapsed {:.1}s  shards {}{}  broker {}  mqtt {}{}",
        run.seed,
        run.clock,
        run.duration_s,
        run.elapsed_s,
        run.shards,
        if run.processes > 1 {
            format!(" in {} processes", run.processes)
        } else {
            String::new()
        },
        run.broker,
        run.mqtt_version,
        if run.interrupted {
            "  (interrupted)"
        } else {
            ""
        }
    );
    let d = &r.devices;
    let state = |s: &str| d.by_state.get(s).copied().unwrap_or(0);
    let _ = writeln!(
        o,
        "devices      {} total, at end: {} online, {} offline, {} connecting, {} booting, {} dead; peak online {}",
        n(d.total),
        n(state("online")),
        n(state("offline")),
        n(state("connecting")),
        n(state("booting")),
        n(state("dead")),
        n(d.peak_online)
    );
    let m = &r.messages;
    let _ = writeln!(
        o,
        "messages     published {}  acked {} ({:.2}%)  failed {}  in flight {}  buffered {}  ({} bytes sent)",
        n(m.published),
        n(m.acked),
        m.delivered_ratio * 100.0,
        n(m.failed),
        n(m.in_flight),
        n(m.buffered),
        n(m.bytes_sent)
    );
    if m.failed > 0 {
        let reasons: Vec<String> = m
            .failed_by_reason
            .iter()
            .filter(|(_, v)| **v > 0)
            .map(|(k, v)| format!("{} {}", k.replace('_', " "), n(*v)))
            .collect();
        let _ = writeln!(o, "             failed: {}", reasons.join(", "));
    }
    let _ = writeln!(
        o,
        "             accounting: published = acked + in flight + buffered + failed; unaccounted: {}{}",
        m.unaccounted,
        match m.devices_unaccounted {
            0 => String::new(),
            d => format!(" (devices whose messages do not add up: {})", n(d)),
        }
    );
    let c = &r.connections;
    let _ = writeln!(
        o,
        "connections  attempts {}  ok {}  failed {}  skipped (no link) {}  link drops {}  sessions lost {}",
        n(c.attempts),
        n(c.succeeded),
        n(c.failed),
        n(c.skipped_no_link),
        n(c.link_drops),
        n(c.sessions_lost)
    );
    let cm = &r.commands;
    if cm.received > 0 || cm.reboots > 0 {
        let _ = writeln!(
            o,
            "commands     received {}  rejected {}  reboots {}",
            n(cm.received),
            n(cm.rejected),
            n(cm.reboots)
        );
    }
    let p = &r.latency_us.publish_ack;
    let _ = writeln!(
        o,
        "latency      publish->ack  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (n={}, from scheduled send time)",
        us(p.p50),
        us(p.p90),
        us(p.p99),
        us(p.p999),
        us(p.max),
        n(p.count)
    );
    let cl = &r.latency_us.connect;
    let _ = writeln!(
        o,
        "             connect       p50 {}  p90 {}  p99 {}  max {}  (n={})",
        us(cl.p50),
        us(cl.p90),
        us(cl.p99),
        us(cl.max),
        n(cl.count)
    );
    if cl.count > 0 {
        // The connect latency distribution: a reconnect storm is a second hump.
        let last = cl.histogram.len().saturating_sub(1);
        let buckets: Vec<String> = cl
            .histogram
            .iter()
            .enumerate()
            .filter(|(_, (_, count))| *count > 0)
            .map(|(i, &(up_to, count))| match i {
                // The last bucket is open-ended: everything above the one before it.
                i if i == last && i > 0 => format!(">{} {}", us(cl.histogram[i - 1].0), n(count)),
                _ => format!("<={} {}", us(up_to), n(count)),
            })
            .collect();
        let _ = writeln!(
            o,
            "             connects by latency: {}",
            buckets.join(", ")
        );
    }
    let mb = &r.modbus.counters;
    if mb.requests > 0 || mb.connections > 0 || mb.malformed_frames > 0 {
        let exceptions: Vec<String> = mb
            .exceptions
            .iter()
            .enumerate()
            .filter(|(_, v)| **v > 0)
            .map(|(code, v)| format!("0x{code:02X} {}", n(*v)))
            .collect();
        let _ = writeln!(
            o,
            "modbus       requests {}  answered {}  exceptions {}{}  silent {}  writes {}  unknown unit {}  bad frames {}",
            n(mb.requests),
            n(mb.responses),
            n(r.modbus.exceptions),
            if exceptions.is_empty() {
                String::new()
            } else {
                format!(" ({})", exceptions.join(", "))
            },
            n(mb.silent),
            n(mb.writes),
            n(mb.unknown_unit),
            n(mb.malformed_frames)
        );
        let sv = &r.modbus.service_us;
        let _ = writeln!(
            o,
            "             service time  p50 {}  p99 {}  max {}  (n={}; injected: {} delayed, {} dropped, {} bad CRC, {} truncated, {} swapped)",
            us(sv.p50),
            us(sv.p99),
            us(sv.max),
            n(sv.count),
            n(mb.delayed),
            n(mb.dropped_connections),
            n(mb.bad_crc),
            n(mb.truncated),
            n(mb.swapped_words)
        );
    }
    let se = &r.serial;
    if se.ports_opened > 0 || se.open_errors > 0 {
        let _ = writeln!(
            o,
            "serial       ports {}  lines out {} ({} bytes)  in {} ({} bytes)  commands {} ({} errors, {} unsolicited)  injected: {} corrupted, {} dropped bytes, {} bad checksums, {} unplugs  overruns {}  open errors {}",
            n(se.ports_opened),
            n(se.lines_out),
            n(se.bytes_out),
            n(se.lines_in),
            n(se.bytes_in),
            n(se.commands),
            n(se.command_errors),
            n(se.unsolicited),
            n(se.corrupted_bytes),
            n(se.dropped_bytes),
            n(se.bad_checksums),
            n(se.unplugs),
            n(se.overruns),
            n(se.open_errors)
        );
    }
    render_ota(&mut o, r);
    let g = &r.generator;
    let _ = writeln!(
        o,
        "generator    {}  max lag {:.1} ms  lag p99 {:.1} ms  steps {} ({:.0}/s)",
        if g.saturated {
            "SATURATED (fell behind its schedule)"
        } else {
            "kept up"
        },
        g.max_lag_ms,
        g.lag_p99_ms,
        n(g.steps),
        g.steps_per_s
    );
    let pr = &r.process;
    let _ = writeln!(
        o,
        "process      cpu {:.1} s user + {:.1} s system  peak RSS {:.1} MiB{}",
        pr.cpu_user_s,
        pr.cpu_system_s,
        pr.rss_peak_bytes as f64 / (1024.0 * 1024.0),
        if run.processes > 1 {
            format!(
                "  (summed over {} processes: RSS is the sum of their peaks)",
                run.processes
            )
        } else {
            String::new()
        }
    );
    render_parts(&mut o, r);
    render_events(&mut o, r);
    for (i, s) in r.slo.iter().enumerate() {
        let value = s
            .value
            .map(|v| slo_value(&s.metric, v))
            .unwrap_or_else(|| "no data".into());
        let op = if s.bound == "max" { "<=" } else { ">=" };
        let _ = writeln!(
            o,
            "{}{}  {}: {} = {} {} {}",
            if i == 0 {
                "SLOs         "
            } else {
                "             "
            },
            if s.ok { "ok  " } else { "FAIL" },
            s.name,
            s.metric,
            value,
            op,
            slo_value(&s.metric, s.limit)
        );
    }
    let failed = r.slo.iter().filter(|s| !s.ok).count();
    let verdict = if r.slo.is_empty() {
        "OK (no SLOs in this scenario)".to_string()
    } else if failed == 0 {
        format!("OK: all {} SLOs met", r.slo.len())
    } else {
        format!("FAILED: {failed} of {} SLOs not met", r.slo.len())
    };
    let missing = r.missing_parts().count();
    let verdict = if r.complete {
        verdict
    } else {
        format!(
            "INCOMPLETE: {missing} of {} shards missing (the figures cover the others); {verdict}",
            r.parts.len()
        )
    };
    let _ = write!(o, "result       {verdict}");
    if let Some(p) = report_path {
        let _ = write!(o, "  (report: {})", p.display());
    }
    let _ = writeln!(o);
    o
}

/// Missing shards named in the summary; the report lists them all.
const SUMMARY_MISSING: usize = 10;

/// The shards of a run as several processes: how many were merged, and each missing one with
/// its device ids and why.
fn render_parts(o: &mut String, r: &RunReport) {
    if r.parts.is_empty() {
        return;
    }
    let missing: Vec<_> = r.missing_parts().collect();
    let _ = writeln!(
        o,
        "parts        {} of {} shards merged",
        n((r.parts.len() - missing.len()) as u64),
        n(r.parts.len() as u64)
    );
    for p in missing.iter().take(SUMMARY_MISSING) {
        let ranges: Vec<String> = p
            .ranges
            .iter()
            .filter(|(_, [a, b])| a < b)
            .map(|(cohort, [a, b])| format!("{cohort} {a}..{b}"))
            .collect();
        let _ = writeln!(
            o,
            "             shard {} ({}) {}",
            p.shard,
            ranges.join(", "),
            p.status
        );
    }
    if missing.len() > SUMMARY_MISSING {
        let _ = writeln!(
            o,
            "             ... {} more shards missing (the report lists them)",
            missing.len() - SUMMARY_MISSING
        );
    }
}

/// Notable events shown in the summary; the report keeps them all.
const SUMMARY_EVENTS: usize = 8;

/// The run's notable events, the latest few (commands given by hand always).
fn render_events(o: &mut String, r: &RunReport) {
    let commands = r
        .events
        .iter()
        .filter(|e| e.kind == fleet_metrics::LiveEventKind::Control)
        .count();
    let shown = &r.events[r.events.len().saturating_sub(SUMMARY_EVENTS)..];
    for (i, e) in shown.iter().enumerate() {
        let _ = writeln!(
            o,
            "{}t={:<7} {:<8} {}",
            if i == 0 {
                "events       "
            } else {
                "             "
            },
            format!("{:.0}s", e.sim_time_s),
            e.kind.as_str(),
            e.message
        );
    }
    if r.events.len() > shown.len() {
        let _ = writeln!(
            o,
            "             ... {} earlier events in the report",
            r.events.len() - shown.len()
        );
    }
    if commands > 0 {
        let _ = writeln!(
            o,
            "             steered by hand ({commands} command{}): the seed alone does not reproduce this run",
            if commands == 1 { "" } else { "s" }
        );
    }
}

/// Firmware updates and rollouts (nothing when no device had a job).
fn render_ota(o: &mut String, r: &RunReport) {
    let ota = &r.ota;
    let c = &ota.counters;
    if c.jobs_received > 0 || !r.rollouts.is_empty() {
        let f = &c.failures_by_stage;
        let _ = writeln!(
            o,
            "ota          jobs {}  started {}  succeeded {}  failed {} (download {}, verify {}, install {}, boot {}, trial {}; {} rolled back)  rejected {}  bricked {}  reports lost {}",
            n(c.jobs_received),
            n(c.accepted),
            n(c.succeeded),
            n(c.failed),
            n(f.download),
            n(f.verify),
            n(f.install),
            n(f.boot),
            n(f.trial),
            n(c.rolled_back),
            n(c.rejected),
            n(c.bricked),
            n(c.reports_lost)
        );
        if c.http.requests > 0 {
            let _ = writeln!(
                o,
                "             http  requests {}  bytes {}  resumed {}  errors {}",
                n(c.http.requests),
                n(c.http.bytes),
                n(c.http.resumes),
                n(c.http.errors)
            );
        }
        let versions: Vec<String> = ota
            .versions
            .iter()
            .map(|(v, k)| format!("{v}: {}", n(*k)))
            .collect();
        let _ = writeln!(o, "             versions at end  {}", versions.join(", "));
    }
    for ro in &r.rollouts {
        let c = &ro.reported;
        let secs = |v: Option<f64>| v.map(|s| format!("{s:.0} s")).unwrap_or_else(|| "-".into());
        let _ = writeln!(
            o,
            "rollout      {} -> {}: {}  targets {}  notified {}  succeeded {}  failed {}  rejected {}  timed out {}  in progress {}  waves {}  started {}  finished {}",
            ro.name,
            ro.target_version,
            ro.state,
            n(ro.targets),
            n(c.notified),
            n(c.succeeded),
            n(c.failed),
            n(c.rejected),
            n(c.timed_out),
            n(ro.in_progress),
            ro.waves.len(),
            secs(ro.started_at_s),
            secs(ro.finished_at_s)
        );
        if let Some(a) = &ro.abort {
            let _ = writeln!(
                o,
                "             abort when {}: threshold truly crossed at {}, aborted at {} (time to halt {}); after the crossing {} notified, {} updated, {} failed",
                a.criteria,
                secs(a.threshold_crossed_at_s),
                secs(a.aborted_at_s),
                secs(a.time_to_halt_s),
                n(a.overshoot.notified),
                n(a.overshoot.updated),
                n(a.overshoot.failed)
            );
        }
        let t = &ro.truth;
        let _ = writeln!(
            o,
            "             truth: succeeded {}  failed {} ({} rolled back)  bricked {}  stuck {}  final reports lost {}",
            n(t.succeeded),
            n(t.failed),
            n(t.rolled_back),
            n(t.bricked),
            n(t.stuck),
            n(t.reports_lost)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_get_thousands_separators() {
        assert_eq!(n(0), "0");
        assert_eq!(n(1234), "1,234");
        assert_eq!(n(1234567), "1,234,567");
    }
}
