//! Tab 6: one device in detail (looked up with `/`, refreshed about once a second).

use fleet_metrics::DeviceDetail;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::Line;
use ratatui::widgets::{Cell, Gauge, Paragraph, Row, Table};

use super::state_style;
use crate::app::App;
use crate::widgets::{Theme, clock, count, item, kv_grid, secs, styled};

/// Lines of the device's identity and state block.
const INFO_ROWS: u16 = 16;

pub fn render(frame: &mut Frame, app: &App, area: Rect) {
    let t = app.theme();
    let view = &app.device;
    let Some(d) = &view.detail else {
        let mut lines = Vec::new();
        if let Some(e) = &view.error {
            lines.push(Line::styled(e.clone(), t.err()));
            lines.push(Line::raw(""));
        }
        match &view.key {
            Some(k) if view.error.is_none() => {
                lines.push(Line::styled(format!("looking up device {k:?}…"), t.dim()))
            }
            _ => lines.push(Line::styled(
                "Press / to look up a device by number (42) or id (env-000042).",
                t.dim(),
            )),
        }
        frame.render_widget(Paragraph::new(lines).block(t.block("Device")), area);
        return;
    };
    let [top, bottom] = if view.error.is_some() {
        Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(area)
    } else {
        [Rect::new(area.x, area.y, area.width, 0), area]
    };
    if let Some(e) = &view.error {
        frame.render_widget(
            Paragraph::new(Line::styled(
                format!(" {e} (showing the last answer)"),
                t.err(),
            )),
            top,
        );
    }
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(bottom);
    let [info, battery, _] = Layout::vertical([
        Constraint::Length(INFO_ROWS + 2),
        Constraint::Length(3),
        Constraint::Min(0),
    ])
    .areas(left);
    let sensors_rows = u16::try_from(d.sensors.len()).unwrap_or(u16::MAX);
    let [sensors, recent] = Layout::vertical([
        Constraint::Length(sensors_rows.saturating_add(3).min(right.height / 2)),
        Constraint::Min(3),
    ])
    .areas(right);
    render_info(frame, t, d, info);
    render_battery(frame, t, d, battery);
    render_sensors(frame, t, d, sensors);
    render_recent(frame, t, d, recent);
}

fn yes_no(b: bool, yes: &'static str, no: &'static str) -> String {
    if b { yes.into() } else { no.into() }
}

fn render_info(frame: &mut Frame, t: Theme, d: &DeviceDetail, area: Rect) {
    let block = t.block(&format!("Device {} · {}", d.id, d.device_id));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let items = vec![
        item("number", d.id.to_string()),
        item("device id", d.device_id.clone()),
        item("cohort", d.cohort.clone()),
        item("profile", d.profile.clone()),
        item("shard", d.shard.to_string()),
        styled("state", d.state.clone(), state_style(t, &d.state)),
        styled(
            "powered",
            yes_no(d.powered, "yes", "no"),
            if d.powered { t.ok() } else { t.dim() },
        ),
        styled(
            "link",
            yes_no(d.link_up, "up", "down"),
            if d.link_up { t.ok() } else { t.err() },
        ),
        item(
            "uptime",
            d.uptime_s.map_or_else(|| "not tracked".to_string(), clock),
        ),
        item("seq", count(d.seq)),
        styled(
            "buffered",
            count(d.buffered),
            if d.buffered > 0 { t.warn() } else { t.dim() },
        ),
        item("interval", secs(d.interval_s)),
        item("firmware", d.firmware.clone()),
        item("slot", d.slot.clone()),
        styled(
            "update stage",
            d.ota_stage.clone(),
            state_style(t, &d.ota_stage),
        ),
        item("read at sim", clock(d.sim_time_s)),
    ];
    let cols = if usize::from(inner.height) >= items.len() {
        1
    } else {
        2
    };
    kv_grid(frame, inner, &items, cols, t.dim());
}

fn render_battery(frame: &mut Frame, t: Theme, d: &DeviceDetail, area: Rect) {
    let block = t.block("Battery");
    match d.battery_percent {
        Some(p) => {
            let style = if d.low_battery {
                t.err()
            } else if p < 50.0 {
                t.warn()
            } else {
                t.ok()
            };
            let label = if d.low_battery {
                format!("{p:.1}%  LOW BATTERY")
            } else {
                format!("{p:.1}%")
            };
            frame.render_widget(
                Gauge::default()
                    .block(block)
                    .ratio((p / 100.0).clamp(0.0, 1.0))
                    .use_unicode(true)
                    .gauge_style(style)
                    .label(label),
                area,
            );
        }
        None => frame.render_widget(
            Paragraph::new(Line::styled("no battery (mains powered)", t.dim())).block(block),
            area,
        ),
    }
}

fn render_sensors(frame: &mut Frame, t: Theme, d: &DeviceDetail, area: Rect) {
    let rows: Vec<Row> = d
        .sensors
        .iter()
        .map(|s| {
            Row::new(vec![
                Cell::from(s.name.clone()),
                Cell::from(Line::from(format!("{:.2}", s.value)).right_aligned()),
                Cell::from(s.unit.clone()),
            ])
        })
        .collect();
    let header = Row::new(vec![
        Cell::from("name"),
        Cell::from(Line::from("value").right_aligned()),
        Cell::from("unit"),
    ])
    .style(t.dim());
    let table = Table::new(
        rows,
        [
            Constraint::Fill(2),
            Constraint::Fill(1),
            Constraint::Length(8),
        ],
    )
    .header(header)
    .block(t.block(&format!("Sensors · {}", d.sensors.len())));
    frame.render_widget(table, area);
}

fn render_recent(frame: &mut Frame, t: Theme, d: &DeviceDetail, area: Rect) {
    let block = t.block(&format!(
        "Recent events · complete since sim {}",
        clock(d.watched_since_s)
    ));
    let lines: Vec<Line> = if d.recent.is_empty() {
        vec![Line::styled("nothing yet", t.dim())]
    } else {
        d.recent
            .iter()
            .rev()
            .map(|e| {
                Line::from(vec![
                    ratatui::text::Span::styled(format!("{:>10}  ", clock(e.sim_time_s)), t.dim()),
                    ratatui::text::Span::raw(e.text.clone()),
                ])
            })
            .collect()
    };
    frame.render_widget(Paragraph::new(lines).block(block), area);
}
