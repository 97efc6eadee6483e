//! Drawing: a pure function of the app state and one snapshot. Nothing here loops over
//! devices (a snapshot has none): the cost grows only with shards, versions, rollouts and
//! events, which are few.

mod device;
mod events;
mod firmware;
mod header;
mod overlay;
mod overview;
mod protocols;
mod shards;

use fleet_metrics::FleetSnapshot;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Modifier;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Tabs};

use crate::app::{App, Mode, StatusLevel, Tab};
use crate::widgets::{Theme, centered};

/// The generator counts as saturated when its deadlines run this late: the same threshold as
/// `fleet_engine::SATURATION_LAG_US` (this crate sees only snapshots, not the engine).
pub const SATURATION_LAG_US: u64 = 1_000_000;

/// Draws the whole dashboard for `snap`.
pub fn render(frame: &mut Frame, app: &App, snap: &FleetSnapshot) {
    let t = app.theme();
    let [tabs, head, body, status, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(2),
        Constraint::Min(0),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    render_tabs(frame, app, tabs);
    header::render(frame, t, snap, head);
    match app.tab {
        Tab::Overview => overview::render(frame, app, snap, body),
        Tab::Firmware => firmware::render(frame, t, snap, body),
        Tab::Protocols => protocols::render(frame, t, snap, body),
        Tab::Shards => shards::render(frame, app, snap, body),
        Tab::Events => events::render(frame, app, snap, body),
        Tab::Device => device::render(frame, app, body),
    }
    render_status(frame, app, Some(snap), status);
    render_footer(frame, app, footer);
    overlay::render(frame, app);
}

/// Draws the dashboard before the first snapshot has arrived.
pub fn render_waiting(frame: &mut Frame, app: &App) {
    let t = app.theme();
    let [tabs, body, status, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(0),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    render_tabs(frame, app, tabs);
    let msg = Paragraph::new(Line::styled("waiting for the first snapshot…", t.dim()))
        .centered()
        .block(t.block("fleetsim"));
    frame.render_widget(msg, centered(body, 44, 3));
    render_status(frame, app, None, status);
    render_footer(frame, app, footer);
    overlay::render(frame, app);
}

fn render_tabs(frame: &mut Frame, app: &App, area: Rect) {
    let t = app.theme();
    let [name, rest] = Layout::horizontal([Constraint::Length(10), Constraint::Min(0)]).areas(area);
    frame.render_widget(
        Paragraph::new(Span::styled(" fleetsim", t.bold().patch(t.accent()))),
        name,
    );
    let titles = Tab::ALL
        .iter()
        .map(|tab| format!("{} {}", tab.index() + 1, tab.title()));
    let tabs = Tabs::new(titles)
        .select(app.tab.index())
        .style(t.dim())
        .highlight_style(t.bold().add_modifier(Modifier::REVERSED))
        .divider("│");
    frame.render_widget(tabs, rest);
}

fn render_status(frame: &mut Frame, app: &App, snap: Option<&FleetSnapshot>, area: Rect) {
    let t = app.theme();
    let line = match &app.status {
        Some(s) => {
            let style = match s.level {
                StatusLevel::Info => t.accent(),
                StatusLevel::Ok => t.ok(),
                StatusLevel::Error => t.err(),
            };
            Line::styled(format!(" {}", s.text), style)
        }
        None => {
            let source = snap.map_or("", |s| s.run.source.as_str());
            let text = match (app.attached, source) {
                (true, "") => " attached: commands go to every attached run".to_string(),
                (true, _) => format!(" attached to {source}: commands go to every run"),
                (false, "" | "local") => " local run".to_string(),
                // A local run says where else it can be reached (its control API).
                (false, _) => format!(" {source}"),
            };
            Line::styled(text, t.dim())
        }
    };
    frame.render_widget(Paragraph::new(line), area);
}

/// The keys of the current mode, in one line.
fn footer_keys(app: &App) -> &'static [(&'static str, &'static str)] {
    match &app.mode {
        Mode::Normal => &[
            ("q", "quit"),
            ("?", "help"),
            ("/", "device"),
            ("p", "pause"),
            ("r", "resume"),
            ("o", "fault"),
            ("R", "rollout"),
            ("1-6 Tab", "screens"),
            ("j/k", "scroll"),
        ],
        Mode::Help => &[("? Esc", "close help"), ("q", "quit")],
        Mode::Search { .. } => &[("Enter", "look up"), ("Esc", "cancel")],
        Mode::Form(_) => &[
            ("Tab", "next field"),
            ("S-Tab", "previous"),
            ("Enter", "confirm"),
            ("Esc", "cancel"),
        ],
        Mode::Confirm(_) => &[("y", "yes"), ("n Esc", "no")],
    }
}

fn render_footer(frame: &mut Frame, app: &App, area: Rect) {
    let t = app.theme();
    let mut spans = vec![Span::raw(" ")];
    for (key, what) in footer_keys(app) {
        spans.push(Span::styled(*key, t.bold().patch(t.accent())));
        spans.push(Span::styled(format!(" {what}  "), t.dim()));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

/// The theme's style for a device state or an update stage by name.
pub(crate) fn state_style(t: Theme, state: &str) -> ratatui::style::Style {
    match state {
        "online" | "completed" | "idle" => t.ok(),
        "connecting" | "booting" | "queued" | "downloading" | "verifying" | "installing"
        | "rebooting" | "trial" | "running" => t.warn(),
        "offline" | "dead" | "bricked" | "aborted" => t.err(),
        _ => t.dim(),
    }
}
