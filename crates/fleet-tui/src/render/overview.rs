//! Tab 1: devices by state, message rates, latency, the latency histogram, errors and the
//! generator's health.

use fleet_core::DeviceState;
use fleet_core::ota::OtaStage;
use fleet_metrics::{FleetSnapshot, Percentiles};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Paragraph, Row, Sparkline, Table};

use super::SATURATION_LAG_US;
use crate::app::{App, History};
use crate::widgets::{
    Theme, bar, bar_line, bar_width_for, bytes, count, item, kv_grid, micros, percent, rate, short,
    styled,
};

/// Publish -> ack histogram: decades from 10 µs, the last bucket open-ended.
const HISTOGRAM_FIRST_US: u64 = 10;
const HISTOGRAM_FACTOR: f64 = 10.0;
const HISTOGRAM_LABELS: [&str; 8] = [
    "10µs", "100µs", "1ms", "10ms", "100ms", "1s", "10s", "longer",
];

pub fn render(frame: &mut Frame, app: &App, snap: &FleetSnapshot, area: Rect) {
    let t = app.theme();
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(area);
    let [devices, messages, errors] = Layout::vertical([
        Constraint::Length(10),
        Constraint::Length(7),
        Constraint::Min(3),
    ])
    .areas(left);
    let [latency, histogram, generator] = Layout::vertical([
        Constraint::Length(6),
        Constraint::Length(11),
        Constraint::Min(3),
    ])
    .areas(right);
    render_devices(frame, t, snap, devices);
    render_messages(frame, app, snap, messages);
    render_errors(frame, t, snap, errors);
    render_latency(frame, t, snap, latency);
    render_histogram(frame, t, snap, histogram);
    render_generator(frame, t, snap, generator);
}

/// Devices with an update under way: every stage but idle and bricked.
pub fn updating(snap: &FleetSnapshot) -> u64 {
    OtaStage::ALL
        .iter()
        .filter(|s| !matches!(s, OtaStage::Idle | OtaStage::Bricked))
        .map(|s| snap.ota_stages[s.index()])
        .sum()
}

fn render_devices(frame: &mut Frame, t: Theme, snap: &FleetSnapshot, area: Rect) {
    let block = t.block(&format!(
        "Devices {} · peak online {}",
        count(snap.devices_total),
        count(snap.peak_online)
    ));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let total = snap.devices_total.max(snap.states.iter().sum());
    const W: usize = 12;
    let bw = bar_width_for(inner.width, W);
    let rows = [
        ("online", snap.state(DeviceState::Online), t.ok()),
        ("connecting", snap.state(DeviceState::Connecting), t.warn()),
        ("booting", snap.state(DeviceState::Booting), t.warn()),
        ("offline", snap.state(DeviceState::Offline), t.err()),
        ("off", snap.state(DeviceState::Off), t.dim()),
        ("dead", snap.state(DeviceState::Dead), t.err()),
        ("updating", updating(snap), t.accent()),
        ("low battery", snap.low_battery, t.warn()),
    ];
    let lines: Vec<Line> = rows
        .iter()
        .map(|(label, n, style)| bar_line(label, W, *n, total, bw, *style))
        .collect();
    frame.render_widget(Paragraph::new(lines), inner);
}

fn render_messages(frame: &mut Frame, app: &App, snap: &FleetSnapshot, area: Rect) {
    let t = app.theme();
    let block = t.block("Messages");
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let [p, a, c, totals] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Min(0),
    ])
    .areas(inner);
    spark_row(
        frame,
        "published/s",
        snap.published_per_s,
        &app.published,
        t.ok(),
        p,
    );
    spark_row(frame, "acked/s", snap.acked_per_s, &app.acked, t.ok(), a);
    spark_row(
        frame,
        "connects/s",
        snap.connects_per_s,
        &app.connects,
        t.warn(),
        c,
    );
    let tot = &snap.totals;
    let dim = |s: &'static str| Span::styled(s, t.dim());
    let lines = vec![
        Line::from(vec![
            dim("published "),
            Span::raw(count(tot.published)),
            dim("  acked "),
            Span::raw(count(tot.acked)),
            dim("  failed "),
            Span::styled(count(tot.failed()), t.err_if(tot.failed() > 0)),
        ]),
        Line::from(vec![
            dim("sent "),
            Span::raw(count(tot.sent)),
            dim("  "),
            Span::raw(bytes(tot.bytes_sent)),
            dim("  in flight "),
            Span::raw(count(snap.in_flight)),
            dim("  buffered "),
            Span::raw(count(snap.buffered)),
        ]),
    ];
    frame.render_widget(Paragraph::new(lines), totals);
}

fn spark_row(frame: &mut Frame, label: &str, now: f64, h: &History, style: Style, area: Rect) {
    let [text, spark] =
        Layout::horizontal([Constraint::Length(24), Constraint::Min(0)]).areas(area);
    frame.render_widget(
        Paragraph::new(Line::from(vec![
            Span::raw(format!("{label:<12}")),
            Span::styled(format!("{:>11} ", rate(now)), style),
        ])),
        text,
    );
    let data: Vec<u64> = h.last(usize::from(spark.width)).collect();
    frame.render_widget(Sparkline::default().data(data).style(style), spark);
}

fn percentile_row(name: &'static str, p: &Percentiles, t: Theme) -> Row<'static> {
    let cell = |us: u64| Cell::from(Line::from(micros(us)).right_aligned());
    let p99_style = if p.p99 >= SATURATION_LAG_US {
        t.err()
    } else {
        Style::new()
    };
    Row::new(vec![
        Cell::from(name),
        Cell::from(Line::from(short(p.count)).right_aligned()),
        cell(p.p50),
        cell(p.p90),
        Cell::from(Line::styled(micros(p.p99), p99_style).right_aligned()),
        cell(p.p999),
        cell(p.max),
    ])
}

fn render_latency(frame: &mut Frame, t: Theme, snap: &FleetSnapshot, area: Rect) {
    let header = Row::new(
        ["", "count", "p50", "p90", "p99", "p99.9", "max"]
            .into_iter()
            .enumerate()
            .map(|(i, h)| {
                let line = Line::from(h);
                Cell::from(if i == 0 { line } else { line.right_aligned() })
            }),
    )
    .style(t.dim());
    let rows = vec![
        percentile_row("pub-ack 1s", &snap.publish_ack_interval, t),
        percentile_row("pub-ack run", &snap.publish_ack, t),
        percentile_row("connect run", &snap.connect, t),
    ];
    // Every number fits its column (`micros` is at most 6 wide below a minute): a cell
    // narrower than its text would cut digits off the front.
    let widths = [
        Constraint::Length(11),
        Constraint::Min(6),
        Constraint::Min(6),
        Constraint::Min(6),
        Constraint::Min(6),
        Constraint::Min(6),
        Constraint::Min(8),
    ];
    let table = Table::new(rows, widths)
        .header(header)
        .column_spacing(1)
        .block(t.block("Latency · publish->ack from the scheduled send"));
    frame.render_widget(table, area);
}

fn render_histogram(frame: &mut Frame, t: Theme, snap: &FleetSnapshot, area: Rect) {
    let h = &snap.histograms.publish_ack_us;
    let total = h.count();
    let buckets = h.log_buckets(HISTOGRAM_FIRST_US, HISTOGRAM_FACTOR, HISTOGRAM_LABELS.len());
    let block = t.block(&format!(
        "publish->ack latency, whole run · {} samples",
        count(total)
    ));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    // Bars are scaled to the fullest bucket; the share is of every sample.
    let fullest = buckets.iter().map(|(_, n)| *n).max().unwrap_or(0);
    const W: usize = 8;
    let bw = bar_width_for(inner.width, W);
    let mut lines = vec![Line::styled(
        format!(
            "{:>W$} {:>11} {:bw$} {:>6}",
            "up to", "samples", "", "share"
        ),
        t.dim(),
    )];
    lines.extend(buckets.iter().zip(HISTOGRAM_LABELS).map(|((_, n), label)| {
        Line::from(vec![
            Span::styled(format!("{label:>W$} "), t.dim()),
            Span::raw(format!("{:>11} ", count(*n))),
            Span::styled(bar(*n, fullest, bw), t.accent()),
            Span::raw(format!(" {:>6}", percent(*n, total))),
        ])
    }));
    frame.render_widget(Paragraph::new(lines), inner);
}

fn render_errors(frame: &mut Frame, t: Theme, snap: &FleetSnapshot, area: Rect) {
    let block = t.block(&format!(
        "Errors · {} failed messages",
        count(snap.totals.failed())
    ));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let c = &snap.totals;
    // Drop reasons only once they happen (seven of them would crowd the panel).
    let errors: Vec<(&str, u64)> = c
        .failed_by_reason()
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .chain([
            ("connects_failed", c.connects_failed),
            ("connects_no_link", c.connects_no_link),
            ("sessions_lost", c.sessions_lost),
            ("malformed_packets", c.malformed_packets),
            ("commands_rejected", c.commands_rejected),
            ("modbus malformed frames", snap.modbus.malformed_frames),
        ])
        .collect();
    let mut items: Vec<_> = errors
        .iter()
        .map(|(k, n)| styled(*k, count(*n), if *n > 0 { t.err() } else { t.dim() }))
        .collect();
    let others = [
        ("link drops", c.link_drops),
        ("reboots", c.reboots),
        ("retransmits", c.retransmits),
        ("batteries depleted", c.batteries_depleted),
    ];
    // One column when there is room for everything and a blank line, two otherwise.
    let one_column = usize::from(inner.height) > errors.len() + others.len();
    if one_column {
        items.push(item("", String::new()));
    }
    items.extend(others.iter().map(|(k, n)| item(*k, count(*n))));
    let cols = if one_column { 1 } else { 2 };
    kv_grid(frame, inner, &items, cols, t.dim());
}

fn render_generator(frame: &mut Frame, t: Theme, snap: &FleetSnapshot, area: Rect) {
    let block = t.block("Generator");
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let dim = |s: &'static str| Span::styled(s, t.dim());
    let mut lines = vec![Line::from(vec![
        dim("lag p99 1s "),
        Span::raw(micros(snap.lag_interval_p99_us)),
        dim("  p99 run "),
        Span::raw(micros(snap.lag_p99_us)),
        dim("  max "),
        Span::styled(
            micros(snap.max_lag_us),
            t.err_if(snap.max_lag_us >= SATURATION_LAG_US),
        ),
    ])];
    lines.push(if snap.lag_interval_p99_us >= SATURATION_LAG_US {
        Line::styled(
            format!(
                "SATURATED: the generator is late by {} (p99, last interval)",
                micros(snap.lag_interval_p99_us)
            ),
            t.err().patch(t.bold()),
        )
    } else if snap.max_lag_us >= SATURATION_LAG_US {
        Line::styled(
            format!(
                "on time now; was late by up to {} earlier",
                micros(snap.max_lag_us)
            ),
            t.warn(),
        )
    } else {
        Line::styled("on time: deadlines run within 1 s", t.ok())
    });
    lines.push(Line::styled(
        format!(
            "{:>7} {:>5} {:>11} {:>10}",
            "process", "shard", "sim time", "max lag"
        ),
        t.dim(),
    ));
    let room = usize::from(inner.height).saturating_sub(lines.len());
    let shown = if snap.shards.len() > room {
        room.saturating_sub(1)
    } else {
        snap.shards.len()
    };
    for s in snap.shards.iter().take(shown) {
        let lag_us = (s.max_lag_ms * 1e3) as u64;
        lines.push(Line::from(vec![
            Span::raw(format!(
                "{:>7} {:>5} {:>11} ",
                s.process,
                s.shard,
                crate::widgets::clock(s.sim_time_s)
            )),
            Span::styled(
                format!("{:>10}", micros(lag_us)),
                t.err_if(lag_us >= SATURATION_LAG_US),
            ),
            Span::styled(if s.done { "  done" } else { "" }, t.dim()),
        ]));
    }
    if shown < snap.shards.len() {
        lines.push(Line::styled(
            format!("+{} more: see 4 Shards", snap.shards.len() - shown),
            t.dim(),
        ));
    }
    frame.render_widget(Paragraph::new(lines), inner);
}
