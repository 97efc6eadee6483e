//! What sits on top of a screen: the help, the device prompt, a form, a confirmation.

use ratatui::Frame;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Clear, Paragraph, Wrap};

use crate::app::{App, Confirm, Mode};
use crate::forms::Form;
use crate::widgets::{Theme, centered};

/// Every key, for the help overlay (and docs/tui.md).
pub const HELP: [(&str, &str); 16] = [
    (
        "1-6",
        "screens: overview firmware protocols shards events device",
    ),
    ("Tab / S-Tab", "next / previous screen (also ← →)"),
    ("j k ↓ ↑", "scroll the shards and events screens"),
    ("PgDn PgUp", "scroll by ten rows"),
    ("g G", "scroll to the top / bottom"),
    ("/", "look up a device by number or id (opens screen 6)"),
    ("p", "pause the fleet (asks first)"),
    ("r", "resume the fleet (asks first)"),
    (
        "o",
        "network fault form: outage, partition, latency spike (asks first)",
    ),
    (
        "R",
        "rollout form: name, version, percent, waves (asks first)",
    ),
    ("y / n", "answer a confirmation (Enter and Esc mean no)"),
    ("Tab", "in a form: next field (S-Tab previous)"),
    ("Enter", "in a form or prompt: submit"),
    (
        "Esc",
        "close the help, a form, a prompt; clear the status line",
    ),
    ("?", "toggle this help"),
    ("q Ctrl-C", "quit (a local run ends and writes its report)"),
];

pub fn render(frame: &mut Frame, app: &App) {
    let t = app.theme();
    match &app.mode {
        Mode::Normal => {}
        Mode::Help => help(frame, t),
        Mode::Search { text, error } => search(frame, t, text, error.as_deref()),
        Mode::Form(form) => form_popup(frame, t, form),
        Mode::Confirm(c) => confirm(frame, t, c, app.attached),
    }
}

fn help(frame: &mut Frame, t: Theme) {
    let key_w = HELP
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let lines: Vec<Line> = HELP
        .iter()
        .map(|(k, what)| {
            Line::from(vec![
                Span::styled(format!(" {k:<key_w$}  "), t.bold().patch(t.accent())),
                Span::raw(*what),
            ])
        })
        .collect();
    let width = lines.iter().map(Line::width).max().unwrap_or(0) + 3;
    let area = centered(
        frame.area(),
        u16::try_from(width).unwrap_or(u16::MAX),
        HELP.len() as u16 + 2,
    );
    frame.render_widget(Clear, area);
    frame.render_widget(
        Paragraph::new(lines).block(t.block("Keys · ? or Esc closes")),
        area,
    );
}

fn search(frame: &mut Frame, t: Theme, text: &str, error: Option<&str>) {
    let mut lines = vec![Line::from(vec![
        Span::styled("device id or number: ", t.bold()),
        Span::raw(text.to_string()),
        Span::styled("_", t.accent()),
    ])];
    match error {
        Some(e) => lines.push(Line::styled(e.to_string(), t.err())),
        None => lines.push(Line::styled("e.g. 42 or env-000042", t.dim())),
    }
    let area = centered(frame.area(), 60, 4);
    frame.render_widget(Clear, area);
    frame.render_widget(
        Paragraph::new(lines).block(t.block("Look up a device · Enter / Esc")),
        area,
    );
}

fn form_popup(frame: &mut Frame, t: Theme, form: &Form) {
    let label_w = form
        .fields
        .iter()
        .map(|f| f.label.chars().count())
        .max()
        .unwrap_or(0);
    let mut lines = Vec::new();
    for (i, f) in form.fields.iter().enumerate() {
        let focused = i == form.focus;
        let marker = if focused { "> " } else { "  " };
        let mut spans = vec![
            Span::styled(marker, t.accent()),
            Span::styled(
                format!("{:<label_w$}  ", f.label),
                if focused { t.bold() } else { t.dim() },
            ),
            // A suggested default shows dim: the first key typed replaces it.
            if f.suggested {
                Span::styled(f.value.clone(), t.dim())
            } else {
                Span::raw(f.value.clone())
            },
        ];
        if focused {
            spans.push(Span::styled("_", t.accent()));
        }
        lines.push(Line::from(spans));
        lines.push(Line::styled(
            format!("  {:<label_w$}  {}", "", f.hint),
            t.dim(),
        ));
    }
    lines.push(Line::raw(""));
    match &form.error {
        Some(e) => lines.push(Line::styled(e.clone(), t.err())),
        None => lines.push(Line::styled(
            "Tab next field · Enter confirm · Esc cancel",
            t.dim(),
        )),
    }
    let area = centered(frame.area(), 72, lines.len() as u16 + 2);
    frame.render_widget(Clear, area);
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(t.block(form.title())),
        area,
    );
}

fn confirm(frame: &mut Frame, t: Theme, c: &Confirm, attached: bool) {
    let mut lines = vec![Line::styled(c.question.clone(), t.bold().patch(t.warn()))];
    if attached {
        lines.push(Line::styled(
            "attached: this goes to every attached run",
            t.dim(),
        ));
    }
    lines.push(Line::styled("y yes · n, Enter or Esc no", t.dim()));
    let width = lines
        .iter()
        .map(|l| l.width() as u16)
        .max()
        .unwrap_or(0)
        .saturating_add(4)
        .max(40);
    let area = centered(frame.area(), width, lines.len() as u16 + 2);
    frame.render_widget(Clear, area);
    frame.render_widget(
        Paragraph::new(lines).centered().block(t.block("Confirm")),
        area,
    );
}
