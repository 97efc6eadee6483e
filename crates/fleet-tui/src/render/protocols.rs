//! Tab 3: MQTT, Modbus and serial figures; "not in this run" for a protocol with no activity.

use fleet_metrics::FleetSnapshot;
use fleet_metrics::modbus::FUNCTIONS;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::Line;
use ratatui::widgets::Paragraph;

use crate::widgets::{Kv, Theme, bytes, count, grid_rows, item, kv_grid, micros, rate, styled};

const COLUMNS: usize = 3;

pub fn render(frame: &mut Frame, t: Theme, snap: &FleetSnapshot, area: Rect) {
    let mqtt = mqtt_items(t, snap);
    let serial = serial_items(t, snap);
    let height = |items: &Option<Vec<Kv>>| match items {
        Some(v) => grid_rows(v.len(), COLUMNS) + 2,
        None => 3,
    };
    let [m, s, mb] = Layout::vertical([
        Constraint::Length(height(&mqtt)),
        Constraint::Length(height(&serial)),
        Constraint::Min(3),
    ])
    .areas(area);
    section(frame, t, "MQTT", mqtt.as_deref(), m);
    section(frame, t, "Serial", serial.as_deref(), s);
    section(frame, t, "Modbus", modbus_items(t, snap).as_deref(), mb);
}

fn section(frame: &mut Frame, t: Theme, title: &str, items: Option<&[Kv]>, area: Rect) {
    let block = t.block(title);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    match items {
        Some(items) => kv_grid(frame, inner, items, COLUMNS, t.dim()),
        None => frame.render_widget(
            Paragraph::new(Line::styled("not in this run", t.dim())),
            inner,
        ),
    }
}

fn bad(t: Theme, n: u64) -> ratatui::style::Style {
    if n > 0 { t.err() } else { t.dim() }
}

fn mqtt_items(t: Theme, snap: &FleetSnapshot) -> Option<Vec<Kv>> {
    let c = &snap.totals;
    if c.connect_attempts == 0 && c.sent == 0 {
        return None;
    }
    Some(vec![
        item("connect attempts", count(c.connect_attempts)),
        styled("connects ok", count(c.connects_ok), t.ok()),
        styled(
            "connects failed",
            count(c.connects_failed),
            bad(t, c.connects_failed),
        ),
        styled(
            "no link",
            count(c.connects_no_link),
            bad(t, c.connects_no_link),
        ),
        styled(
            "sessions lost",
            count(c.sessions_lost),
            bad(t, c.sessions_lost),
        ),
        item("link drops", count(c.link_drops)),
        item("connects/s", rate(snap.connects_per_s)),
        item("published", count(c.published)),
        item("sent", count(c.sent)),
        item("acked", count(c.acked)),
        item("bytes sent", bytes(c.bytes_sent)),
        item("in flight", count(snap.in_flight)),
        item("buffered", count(snap.buffered)),
        item("retransmits", count(c.retransmits)),
        item("flushed", count(c.flushed)),
        item("commands", count(c.commands)),
        styled(
            "commands rejected",
            count(c.commands_rejected),
            bad(t, c.commands_rejected),
        ),
        styled(
            "malformed packets",
            count(c.malformed_packets),
            bad(t, c.malformed_packets),
        ),
    ])
}

fn modbus_items(t: Theme, snap: &FleetSnapshot) -> Option<Vec<Kv>> {
    let m = &snap.modbus;
    if m.requests == 0 && m.connections == 0 && m.malformed_frames == 0 {
        return None;
    }
    let s = &snap.modbus_service;
    let mut items = vec![
        item("requests", count(m.requests)),
        item("requests/s", rate(snap.modbus_requests_per_s)),
        item("responses", count(m.responses)),
        item("service p50", micros(s.p50)),
        item("service p90", micros(s.p90)),
        item("service p99", micros(s.p99)),
        item("service p99.9", micros(s.p999)),
        item("service max", micros(s.max)),
        styled(
            "exceptions",
            count(m.exceptions_total()),
            bad(t, m.exceptions_total()),
        ),
        item("exceptions injected", count(m.injected_exceptions)),
        styled("silent", count(m.silent), bad(t, m.silent)),
        item("silent: not serving", count(m.not_serving)),
        styled(
            "malformed frames",
            count(m.malformed_frames),
            bad(t, m.malformed_frames),
        ),
        item("connections", count(m.connections)),
        item("dropped connections", count(m.dropped_connections)),
        item("bad crc", count(m.bad_crc)),
        item("truncated", count(m.truncated)),
        item("swapped words", count(m.swapped_words)),
        item("delayed", count(m.delayed)),
        item("broadcasts", count(m.broadcasts)),
        item("writes", count(m.writes)),
        item("unknown unit", count(m.unknown_unit)),
    ];
    let names = FUNCTIONS
        .iter()
        .map(|(code, name)| format!("{code:02X} {name}"))
        .chain(std::iter::once("other functions".to_string()));
    items.extend(
        names
            .zip(m.by_function)
            .filter(|(_, n)| *n > 0)
            .map(|(name, n)| item(name, count(n))),
    );
    items.extend(
        m.exceptions
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(code, n)| styled(format!("exception {code:02X}"), count(*n), t.err())),
    );
    Some(items)
}

fn serial_items(t: Theme, snap: &FleetSnapshot) -> Option<Vec<Kv>> {
    let s = &snap.serial;
    if s.ports_opened == 0 && s.lines_out == 0 && s.lines_in == 0 {
        return None;
    }
    Some(vec![
        item("ports opened", count(s.ports_opened)),
        styled("open errors", count(s.open_errors), bad(t, s.open_errors)),
        item("lines out", count(s.lines_out)),
        item("bytes out", bytes(s.bytes_out)),
        item("lines in", count(s.lines_in)),
        item("bytes in", bytes(s.bytes_in)),
        item("commands", count(s.commands)),
        styled(
            "command errors",
            count(s.command_errors),
            bad(t, s.command_errors),
        ),
        item("unsolicited", count(s.unsolicited)),
        item("corrupted bytes", count(s.corrupted_bytes)),
        item("dropped bytes", count(s.dropped_bytes)),
        item("bad checksums", count(s.bad_checksums)),
        item("unplugs", count(s.unplugs)),
        styled("overruns", count(s.overruns), bad(t, s.overruns)),
    ])
}
