//! Tab 2: firmware versions, update stages, update counters and rollouts.

use fleet_core::ota::OtaStage;
use fleet_metrics::FleetSnapshot;
use fleet_metrics::ota::RolloutLive;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Gauge, Paragraph};

use super::state_style;
use crate::widgets::{
    Theme, bar_line, bar_width_for, bytes, count, item, kv_grid, percent, styled,
};

/// Lines one rollout takes: title, gauge, counts.
const ROLLOUT_ROWS: u16 = 3;

pub fn render(frame: &mut Frame, t: Theme, snap: &FleetSnapshot, area: Rect) {
    let top_rows = (snap.versions.len().max(OtaStage::ALL.len()) as u16).saturating_add(2);
    let [top, counters, rollouts] = Layout::vertical([
        Constraint::Length(top_rows.min(area.height / 2)),
        Constraint::Length(10),
        Constraint::Min(3),
    ])
    .areas(area);
    let [versions, stages] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(top);
    render_versions(frame, t, snap, versions);
    render_stages(frame, t, snap, stages);
    render_counters(frame, t, snap, counters);
    render_rollouts(frame, t, snap, rollouts);
}

fn render_versions(frame: &mut Frame, t: Theme, snap: &FleetSnapshot, area: Rect) {
    let block = t.block(&format!("Firmware versions · {}", snap.versions.len()));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let total: u64 = snap.versions.iter().sum();
    let label_w = snap
        .version_labels
        .iter()
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(0)
        .clamp(8, 24);
    let bw = bar_width_for(inner.width, label_w);
    let lines: Vec<Line> = if snap.versions.is_empty() {
        vec![Line::styled("no firmware versions reported", t.dim())]
    } else {
        snap.versions
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let fallback = format!("version {i}");
                let label = snap.version_labels.get(i).unwrap_or(&fallback);
                let label: String = label.chars().take(label_w).collect();
                bar_line(&label, label_w, *n, total, bw, t.accent())
            })
            .collect()
    };
    frame.render_widget(Paragraph::new(lines), inner);
}

fn render_stages(frame: &mut Frame, t: Theme, snap: &FleetSnapshot, area: Rect) {
    let block = t.block("Update stages");
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let total: u64 = snap.ota_stages.iter().sum();
    const W: usize = 11;
    let bw = bar_width_for(inner.width, W);
    let lines: Vec<Line> = OtaStage::ALL
        .iter()
        .map(|s| {
            let n = snap.ota_stages[s.index()];
            bar_line(s.as_str(), W, n, total, bw, state_style(t, s.as_str()))
        })
        .collect();
    frame.render_widget(Paragraph::new(lines), inner);
}

fn render_counters(frame: &mut Frame, t: Theme, snap: &FleetSnapshot, area: Rect) {
    let block = t.block("Update counters");
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let o = &snap.ota;
    let f = &o.failures_by_stage;
    let bad = |n: u64| if n > 0 { t.err() } else { t.dim() };
    let items = vec![
        item("jobs received", count(o.jobs_received)),
        item("accepted", count(o.accepted)),
        styled("rejected", count(o.rejected), bad(o.rejected)),
        styled("succeeded", count(o.succeeded), t.ok()),
        styled("failed", count(o.failed), bad(o.failed)),
        styled("rolled back", count(o.rolled_back), bad(o.rolled_back)),
        styled("bricked", count(o.bricked), bad(o.bricked)),
        item("cancelled", count(o.cancelled)),
        item("failed: download", count(f.download)),
        item("failed: verify", count(f.verify)),
        item("failed: install", count(f.install)),
        item("failed: boot", count(f.boot)),
        item("failed: trial", count(f.trial)),
        item("boot failures", count(o.boot_failures)),
        item("power losses", count(o.power_losses)),
        item("status reports", count(o.status_reports)),
        item("downloads paused", count(o.download_pauses)),
        item("downloads restarted", count(o.download_restarts)),
        item("downloads stalled", count(o.download_stalls)),
        item("downloads failed", count(o.download_failures)),
        item("http requests", count(o.http.requests)),
        item("http bytes", bytes(o.http.bytes)),
        item("http resumes", count(o.http.resumes)),
        item("http errors", count(o.http.errors)),
    ];
    kv_grid(frame, inner, &items, 3, t.dim());
}

fn render_rollouts(frame: &mut Frame, t: Theme, snap: &FleetSnapshot, area: Rect) {
    let block = t.block(&format!("Rollouts · {}", snap.rollouts.len()));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    if snap.rollouts.is_empty() {
        frame.render_widget(
            Paragraph::new(Line::styled(
                "no rollouts in this run (R starts one)",
                t.dim(),
            )),
            inner,
        );
        return;
    }
    let fits = usize::from(inner.height / (ROLLOUT_ROWS + 1)).max(1);
    let mut y = inner.y;
    for (i, r) in snap.rollouts.iter().enumerate() {
        if i == fits - 1 && snap.rollouts.len() > fits {
            let more = snap.rollouts.len() - i;
            let row = Rect::new(inner.x, y, inner.width, 1);
            frame.render_widget(
                Paragraph::new(Line::styled(format!("+{more} more rollouts"), t.dim())),
                row,
            );
            break;
        }
        let rows = ROLLOUT_ROWS.min(inner.bottom().saturating_sub(y));
        if rows == 0 {
            break;
        }
        render_rollout(frame, t, r, Rect::new(inner.x, y, inner.width, rows));
        y = y.saturating_add(ROLLOUT_ROWS + 1);
    }
}

/// Jobs of a rollout that have an outcome.
fn executed(r: &RolloutLive) -> u64 {
    let c = &r.reported;
    c.succeeded + c.failed + c.rejected + c.timed_out
}

fn render_rollout(frame: &mut Frame, t: Theme, r: &RolloutLive, area: Rect) {
    let [title, gauge, counts] = Layout::vertical([Constraint::Length(1); 3]).areas(area);
    let dim = |s: &'static str| Span::styled(s, t.dim());
    let state_style = match r.state.as_str() {
        "running" => t.accent(),
        other => state_style(t, other),
    };
    frame.render_widget(
        Paragraph::new(Line::from(vec![
            Span::styled(r.name.clone(), t.bold()),
            dim(" -> "),
            Span::raw(r.target_version.clone()),
            dim("  "),
            Span::styled(r.state.clone(), state_style),
            dim("  wave "),
            Span::raw(format!("{}/{}", r.wave, r.waves)),
            dim("  targets "),
            Span::raw(count(r.targets)),
        ])),
        title,
    );
    let done = executed(r);
    let ratio = if r.targets == 0 {
        0.0
    } else {
        (done as f64 / r.targets as f64).clamp(0.0, 1.0)
    };
    let gauge_style = if r.reported.failed + r.reported.timed_out > 0 && r.state == "aborted" {
        t.err()
    } else {
        t.ok()
    };
    frame.render_widget(
        Gauge::default()
            .ratio(ratio)
            .use_unicode(true)
            .gauge_style(gauge_style)
            .label(format!(
                "{} executed · {} / {}",
                percent(done, r.targets),
                count(done),
                count(r.targets)
            )),
        gauge,
    );
    let c = &r.reported;
    let bad = |n: u64| t.err_if(n > 0);
    frame.render_widget(
        Paragraph::new(Line::from(vec![
            dim("notified "),
            Span::raw(count(c.notified)),
            dim("  started "),
            Span::raw(count(c.started)),
            dim("  succeeded "),
            Span::styled(count(c.succeeded), t.ok()),
            dim("  failed "),
            Span::styled(count(c.failed), bad(c.failed)),
            dim("  rejected "),
            Span::styled(count(c.rejected), bad(c.rejected)),
            dim("  timed out "),
            Span::styled(count(c.timed_out), bad(c.timed_out)),
        ])),
        counts,
    );
}
