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
    // Long messages wrap under the "what" column (they say what to change: keep them whole).
    let what_width = usize::from(inner.width)
        .saturating_sub(PREFIX_WIDTH)
        .max(20);
    for e in snap.events.iter().rev().skip(first) {
        if lines.len() > visible {
            break;
        }
        let style = kind_style(t, e.kind);
        for (i, part) in wrap(&e.message, what_width).into_iter().enumerate() {
            let prefix = if i == 0 {
                vec![
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
                ]
            } else {
                vec![Span::raw(" ".repeat(PREFIX_WIDTH))]
            };
            let mut spans = prefix;
            spans.push(Span::styled(part, style));
            lines.push(Line::from(spans));
        }
    }
    frame.render_widget(Paragraph::new(lines), inner);
}

/// Width of `#`, elapsed, sim time and kind before the message.
const PREFIX_WIDTH: usize = 6 + 1 + 10 + 1 + 10 + 2 + 9;

/// `text` cut into lines of at most `width` characters, at spaces where it can be.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut line = String::new();
    for word in text.split(' ') {
        let fits =
            line.chars().count() + usize::from(!line.is_empty()) + word.chars().count() <= width;
        if !fits && !line.is_empty() {
            out.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
        while line.chars().count() > width {
            let head: String = line.chars().take(width).collect();
            line = line.chars().skip(width).collect();
            out.push(head);
        }
    }
    if !line.is_empty() || out.is_empty() {
        out.push(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::wrap;

    #[test]
    fn long_messages_wrap_at_spaces_and_nothing_is_lost() {
        let text = "reconnect storm: 394 devices lost their session in the last second";
        let lines = wrap(text, 20);
        assert!(lines.iter().all(|l| l.chars().count() <= 20), "{lines:?}");
        assert_eq!(lines.join(" "), text);
        assert_eq!(wrap("x".repeat(45).as_str(), 20).len(), 3);
        assert_eq!(wrap("", 20), [""]);
    }
}
