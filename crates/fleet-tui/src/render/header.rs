//! The two header lines: what the run is, and how far it has got.

use fleet_metrics::FleetSnapshot;
use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;

use crate::widgets::{Theme, clock, count, rate};

pub fn render(frame: &mut Frame, t: Theme, snap: &FleetSnapshot, area: Rect) {
    let run = &snap.run;
    let key = |k: &'static str| Span::styled(k, t.dim());
    let val = |v: String| Span::styled(v, t.bold());
    let mut first = vec![Span::raw(" ")];
    if snap.paused {
        let badge = if t.color {
            Style::new()
                .fg(Color::Black)
                .bg(Color::Red)
                .add_modifier(Modifier::BOLD)
        } else {
            Style::new().add_modifier(Modifier::BOLD | Modifier::REVERSED)
        };
        first.push(Span::styled(" PAUSED ", badge));
        first.push(Span::raw(" "));
    }
    let scenario = if run.scenario.is_empty() {
        "(unnamed)".to_string()
    } else {
        run.scenario.clone()
    };
    first.extend([
        Span::styled(scenario, t.bold().patch(t.accent())),
        key("  seed "),
        val(run.seed.to_string()),
        key("  clock "),
        val(non_empty(&run.clock)),
        key("  broker "),
        val(non_empty(&run.broker)),
        key("  shards "),
        val(run.shards.max(snap.shards.len() as u16).to_string()),
        key("  processes "),
        val(run.processes.max(1).to_string()),
    ]);
    if !run.run_id.is_empty() {
        first.extend([key("  run "), Span::styled(run.run_id.clone(), t.dim())]);
    }

    let remaining = (run.duration_s - snap.sim_time_s).max(0.0);
    let mut second = vec![
        key(" sim "),
        val(clock(snap.sim_time_s)),
        key(" / "),
        val(clock(run.duration_s)),
        key("  left "),
        val(clock(remaining)),
        key("  elapsed "),
        val(clock(snap.elapsed_s)),
        key("  devices "),
        val(count(snap.devices_total)),
        key("  steps/s "),
        val(rate(snap.steps_per_s)),
    ];
    if snap.shards_done() {
        second.push(Span::styled("  finished", t.ok()));
    }
    frame.render_widget(
        Paragraph::new(vec![Line::from(first), Line::from(second)]),
        area,
    );
}

fn non_empty(s: &str) -> String {
    if s.is_empty() { "-".into() } else { s.into() }
}
