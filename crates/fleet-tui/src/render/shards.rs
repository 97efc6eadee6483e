//! Tab 4: one row per shard, scrollable (a merged view of several processes may have many).

use fleet_metrics::FleetSnapshot;
use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::text::Line;
use ratatui::widgets::{Cell, Row, Table};

use super::SATURATION_LAG_US;
use crate::app::App;
use crate::widgets::{clock, count, micros, percent};

const HEADERS: [&str; 9] = [
    "process", "shard", "devices", "online", "online %", "sim time", "max lag", "steps", "state",
];

pub fn render(frame: &mut Frame, app: &App, snap: &FleetSnapshot, area: Rect) {
    let t = app.theme();
    // Borders and the header row take three lines.
    let visible = usize::from(area.height.saturating_sub(3)).max(1);
    let first = app
        .shards_scroll
        .min(snap.shards.len().saturating_sub(visible));
    let last = (first + visible).min(snap.shards.len());
    let right = |s: String| Cell::from(Line::from(s).right_aligned());
    let rows: Vec<Row> = snap.shards[first..last]
        .iter()
        .map(|s| {
            let lag_us = (s.max_lag_ms * 1e3) as u64;
            let (state, state_style) = if s.done {
                ("done", t.dim())
            } else {
                ("running", t.ok())
            };
            Row::new(vec![
                right(s.process.to_string()),
                right(s.shard.to_string()),
                right(count(s.devices)),
                right(count(s.online)),
                right(percent(s.online, s.devices)),
                right(clock(s.sim_time_s)),
                Cell::from(
                    Line::styled(micros(lag_us), t.err_if(lag_us >= SATURATION_LAG_US))
                        .right_aligned(),
                ),
                right(count(s.steps)),
                Cell::from(Line::styled(state, state_style).right_aligned()),
            ])
        })
        .collect();
    let header = Row::new(
        HEADERS
            .iter()
            .map(|h| Cell::from(Line::from(*h).right_aligned())),
    )
    .style(t.dim());
    let title = if snap.shards.is_empty() {
        "Shards · none reported yet".to_string()
    } else {
        format!(
            "Shards · rows {}-{} of {} · j/k scroll",
            first + 1,
            last,
            snap.shards.len()
        )
    };
    let table = Table::new(rows, [Constraint::Fill(1); HEADERS.len()])
        .header(header)
        .block(t.block(&title));
    frame.render_widget(table, area);
}
