//! Tab 5: notable events, newest first, coloured by kind; scrollable.

use fleet_metrics::{FleetSnapshot, LiveEventKind};
use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;

use crate::app::App;
use crate::widgets::{Theme, clock};

pub fn kind_style(t: Theme, kind: LiveEventKind) -> Style {
    match kind {
        LiveEventKind::Fault => t.err(),
        LiveEventKind::Control => t.accent(),
        LiveEventKind::Storm => t.warn(),
        LiveEventKind::Rollout => t.magenta(),
        LiveEventKind::Slo => t.err().patch(t.bold()),
        LiveEventKind::Shard => t.info(),
    }
}

pub fn render(frame: &mut Frame, app: &App, snap: &FleetSnapshot, area: Rect) {
    let t = app.theme();
    let visible = usize::from(area.height.saturating_sub(3)).max(1);
    let n = snap.events.len();
    let first = app.events_scroll.min(n.saturating_sub(visible));
    let title = if n == 0 {
        "Events".to_string()
    } else {
        format!(
            "Events · {n}, newest first · rows {}-{} · j/k scroll",
            first + 1,
            (first + visible).min(n)
        )
    };
    let block = t.block(&title);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let mut lines = vec![Line::styled(
        format!(
            "{:>6} {:>10} {:>10}  {:<8} what",
            "#", "elapsed", "sim time", "kind"
        ),
        t.dim(),
    )];
    if n == 0 {
        lines.push(Line::styled("no notable events yet", t.dim()));
    }
    for e in snap.events.iter().rev().skip(first).take(visible) {
        let style = kind_style(t, e.kind);
        lines.push(Line::from(vec![
            Span::styled(
                format!(
                    "{:>6} {:>10} {:>10}  ",
                    e.seq,
                    format!("{:.1}s", e.elapsed_s),
                    clock(e.sim_time_s)
                ),
                t.dim(),
            ),
            Span::styled(format!("{:<8} ", e.kind.as_str()), style),
            Span::styled(e.message.clone(), style),
        ]));
    }
    frame.render_widget(Paragraph::new(lines), inner);
}
