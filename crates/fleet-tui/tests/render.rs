//! Every screen and overlay rendered from the fixed fixture into a 120x40 `TestBackend` and
//! compared, as text, with `tests/snapshots/<name>.txt`. `UPDATE_SNAPSHOTS=1 cargo test -p
//! fleet-tui` rewrites the files (then read the diff).

use std::path::PathBuf;
use std::time::Instant;

use fleet_metrics::FleetSnapshot;
use fleet_tui::{App, Tab, fixture, render, render_waiting};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::buffer::Buffer;
use ratatui::crossterm::event::{KeyCode, KeyEvent};
use ratatui::style::Color;

const WIDTH: u16 = 120;
const HEIGHT: u16 = 40;

fn draw(app: &App, snap: Option<&FleetSnapshot>) -> Buffer {
    let mut terminal = Terminal::new(TestBackend::new(WIDTH, HEIGHT)).expect("test backend");
    terminal
        .draw(|f| match snap {
            Some(s) => render(f, app, s),
            None => render_waiting(f, app),
        })
        .expect("draw");
    terminal.backend().buffer().clone()
}

/// The buffer as lines of text, trailing blanks trimmed.
fn text(buf: &Buffer) -> String {
    let width = usize::from(buf.area.width);
    let mut out = String::new();
    for row in buf.content.chunks(width) {
        // The screens use no double-width characters: one cell, one symbol.
        let line: String = row.iter().map(|c| c.symbol()).collect();
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Compares `actual` with the stored snapshot `name`, or rewrites it under UPDATE_SNAPSHOTS=1.
fn check(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(format!("{name}.txt"));
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some_and(|v| v == "1") {
        std::fs::write(&path, actual).expect("write snapshot");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run `UPDATE_SNAPSHOTS=1 cargo test -p fleet-tui` to create it",
            path.display()
        )
    });
    if expected != actual {
        let first = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(expected.lines().count().min(actual.lines().count()));
        panic!(
            "{name}: the screen differs from {} (first at line {}):\n\
             expected: {:?}\n  actual: {:?}\n\n--- actual screen ---\n{actual}\n\
             (UPDATE_SNAPSHOTS=1 rewrites the file if the change is intended)",
            path.display(),
            first + 1,
            expected.lines().nth(first).unwrap_or(""),
            actual.lines().nth(first).unwrap_or(""),
        );
    }
}

fn key(app: &mut App, code: KeyCode) {
    let _ = app.on_key(KeyEvent::from(code));
}

fn typed(app: &mut App, s: &str) {
    for c in s.chars() {
        key(app, KeyCode::Char(c));
    }
}

fn screen(app: &App, snap: &FleetSnapshot) -> String {
    text(&draw(app, Some(snap)))
}

fn app_on(tab: Tab) -> App {
    let mut app = fixture::app_with_history(90);
    app.tab = tab;
    app
}

#[test]
fn overview_shows_states_rates_latency_errors_and_lag() {
    let snap = fixture::snapshot();
    let s = screen(&app_on(Tab::Overview), &snap);
    check("overview", &s);
    for want in [
        "smart-meters",
        "seed 42",
        "Devices 100,000",
        "93,800",
        "updating",
        "340",
        "low battery",
        "1,284",
        "p99",
        "p99.9",
        "pub-ack 1s",
        "1,662",
        "offline_buffer_full",
        "2,118",
        "modbus malformed frames",
        "10ms",
        "on time",
    ] {
        assert!(s.contains(want), "overview lacks {want:?}:\n{s}");
    }
    assert!(!s.contains("PAUSED"));
    assert!(!s.contains("SATURATED"));
}

#[test]
fn a_paused_run_shows_the_badge() {
    let mut snap = fixture::snapshot();
    snap.paused = true;
    let s = screen(&app_on(Tab::Overview), &snap);
    check("overview_paused", &s);
    assert!(s.lines().nth(1).is_some_and(|l| l.contains("PAUSED")));
}

#[test]
fn a_late_generator_is_flagged_saturated() {
    let mut snap = fixture::snapshot();
    snap.lag_interval_p99_us = 1_520_000;
    snap.max_lag_us = 2_300_000;
    let s = screen(&app_on(Tab::Overview), &snap);
    assert!(
        s.contains("SATURATED: the generator is late by 1.52s"),
        "{s}"
    );
    snap.lag_interval_p99_us = 3_000;
    let s = screen(&app_on(Tab::Overview), &snap);
    assert!(!s.contains("SATURATED"));
    assert!(s.contains("was late by up to 2.30s"), "{s}");
}

#[test]
fn firmware_shows_versions_stages_counters_and_rollouts() {
    let snap = fixture::snapshot();
    let s = screen(&app_on(Tab::Firmware), &snap);
    check("firmware", &s);
    for want in [
        "meter 1.4.2",
        "94,390",
        "meter 1.5.0",
        "downloading",
        "bricked",
        "jobs received",
        "6,600",
        "fleet-1.5.0",
        "wave 2/4",
        "targets 60,000",
        "timed out",
        "canary-1.5.0",
        "completed",
    ] {
        assert!(s.contains(want), "firmware lacks {want:?}:\n{s}");
    }
}

#[test]
fn protocols_show_mqtt_modbus_and_serial() {
    let snap = fixture::snapshot();
    let s = screen(&app_on(Tab::Protocols), &snap);
    check("protocols", &s);
    for want in [
        "connect attempts",
        "104,520",
        "03 read_holding_registers",
        "40,100",
        "exception 02",
        "service p99",
        "lines out",
        "182,000",
    ] {
        assert!(s.contains(want), "protocols lack {want:?}:\n{s}");
    }
    assert!(!s.contains("not in this run"));
}

#[test]
fn a_protocol_without_activity_is_not_in_this_run() {
    let mut snap = fixture::snapshot();
    snap.modbus = Default::default();
    snap.serial = Default::default();
    let s = screen(&app_on(Tab::Protocols), &snap);
    assert_eq!(s.matches("not in this run").count(), 2, "{s}");
}

#[test]
fn shards_are_a_table() {
    let snap = fixture::snapshot();
    let s = screen(&app_on(Tab::Shards), &snap);
    check("shards", &s);
    assert!(s.contains("rows 1-4 of 4"), "{s}");
    assert!(s.contains("586,421"), "{s}");
}

#[test]
fn many_shards_scroll() {
    let mut snap = fixture::snapshot();
    let template = snap.shards[0].clone();
    snap.shards = (0..100u16)
        .map(|i| fleet_metrics::ShardLoad {
            shard: i,
            steps: 1_000 + u64::from(i),
            ..template.clone()
        })
        .collect();
    let mut app = app_on(Tab::Shards);
    app.on_snapshot(&snap);
    for _ in 0..50 {
        key(&mut app, KeyCode::Char('j'));
    }
    let s = screen(&app, &snap);
    assert!(s.contains("rows 51-"), "{s}");
    assert!(s.contains("1,050"), "{s}");
    assert!(!s.contains("1,049"), "{s}");
    key(&mut app, KeyCode::Char('G'));
    let s = screen(&app, &snap);
    assert!(s.contains("of 100"), "{s}");
    assert!(
        s.contains("1,099"),
        "the last shard is shown at the bottom:\n{s}"
    );
}

#[test]
fn events_are_newest_first() {
    let snap = fixture::snapshot();
    let s = screen(&app_on(Tab::Events), &snap);
    check("events", &s);
    let newest = s.find("shard 2 fell behind").expect("newest event shown");
    let oldest = s.find("shard 0..3 started").expect("oldest event shown");
    assert!(newest < oldest);
    for kind in ["fault", "control", "storm", "rollout", "slo", "shard"] {
        assert!(s.contains(kind), "no {kind} event:\n{s}");
    }
}

#[test]
fn the_device_tab_shows_the_detail() {
    let snap = fixture::snapshot();
    let mut app = app_on(Tab::Overview);
    key(&mut app, KeyCode::Char('/'));
    typed(&mut app, "42");
    key(&mut app, KeyCode::Enter);
    assert_eq!(app.tab, Tab::Device);
    let before = screen(&app, &snap);
    assert!(before.contains("looking up device \"42\""), "{before}");
    app.on_device("42", Ok(fixture::device()), Instant::now());
    let s = screen(&app, &snap);
    check("device", &s);
    for want in [
        "meter-000042",
        "meters-north",
        "smart-meter",
        "18.5%",
        "LOW BATTERY",
        "voltage",
        "229.81",
        "kWh",
        "downloading",
        "update job fleet-1.5.0 received",
        "complete since sim 00:00:00",
    ] {
        assert!(s.contains(want), "device lacks {want:?}:\n{s}");
    }
}

#[test]
fn the_device_tab_explains_itself_before_a_lookup() {
    let snap = fixture::snapshot();
    let s = screen(&app_on(Tab::Device), &snap);
    assert!(s.contains("Press / to look up a device"), "{s}");
}

#[test]
fn help_lists_every_key() {
    let snap = fixture::snapshot();
    let mut app = app_on(Tab::Overview);
    key(&mut app, KeyCode::Char('?'));
    let s = screen(&app, &snap);
    check("help", &s);
    for want in [
        "pause the fleet",
        "fault form",
        "rollout form",
        "quit",
        "toggle this help",
    ] {
        assert!(s.contains(want), "help lacks {want:?}:\n{s}");
    }
}

#[test]
fn the_outage_form_and_its_error() {
    let snap = fixture::snapshot();
    let mut app = app_on(Tab::Overview);
    key(&mut app, KeyCode::Char('o'));
    let s = screen(&app, &snap);
    check("outage_form", &s);
    assert!(s.contains("percent of the fleet"), "{s}");
    assert!(s.contains("duration"), "{s}");
    key(&mut app, KeyCode::Backspace);
    key(&mut app, KeyCode::Backspace);
    typed(&mut app, "150");
    key(&mut app, KeyCode::Enter);
    let s = screen(&app, &snap);
    check("outage_form_error", &s);
    assert!(
        s.contains("percent of the fleet = 150: must be > 0 and <= 100"),
        "{s}"
    );
}

#[test]
fn the_confirmation_dialog_asks_before_pausing() {
    let snap = fixture::snapshot();
    let mut app = app_on(Tab::Overview);
    key(&mut app, KeyCode::Char('p'));
    let s = screen(&app, &snap);
    check("confirm_pause", &s);
    assert!(s.contains("Pause the fleet? [y/N]"), "{s}");
}

#[test]
fn the_rollout_form_renders() {
    let snap = fixture::snapshot();
    let mut app = app_on(Tab::Firmware);
    key(&mut app, KeyCode::Char('R'));
    typed(&mut app, "fleet-2.0");
    let s = screen(&app, &snap);
    check("rollout_form", &s);
    assert!(s.contains("fleet-2.0"), "{s}");
    assert!(s.contains("target version"), "{s}");
}

#[test]
fn before_the_first_snapshot_it_waits() {
    let app = App::new(false);
    let s = text(&draw(&app, None));
    check("waiting", &s);
    assert!(s.contains("waiting for the first snapshot…"), "{s}");
}

#[test]
fn the_status_line_shows_a_command_error() {
    let snap = fixture::snapshot();
    let mut app = app_on(Tab::Overview);
    app.on_command(
        &fleet_metrics::Command::Resume,
        Err(fleet_metrics::PortError::new(
            fleet_metrics::ErrorKind::Conflict,
            "the run is not paused",
        )),
    );
    let s = screen(&app, &snap);
    assert!(s.contains("resume failed: the run is not paused"), "{s}");
}

/// The screen with every digit, separator, blank and border dash removed: what is left is the layout.
fn layout_only(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_ascii_digit() && !matches!(c, ',' | '.' | ' ' | '─'))
        .collect()
}

#[test]
fn a_million_devices_render_the_same_screens_as_a_hundred_thousand() {
    let small = fixture::snapshot();
    let big = fixture::snapshot_scaled(10);
    assert_eq!(big.devices_total, 1_000_000);
    for tab in Tab::ALL {
        let app = app_on(tab);
        let (a, b) = (screen(&app, &small), screen(&app, &big));
        assert_eq!(
            layout_only(&a),
            layout_only(&b),
            "{tab:?} changes shape with the device count:\n{a}\n{b}"
        );
        if tab == Tab::Overview {
            assert!(b.contains("Devices 1,000,000"), "{b}");
        }
    }
}

#[test]
fn no_color_renders_without_colours() {
    let snap = fixture::snapshot();
    let mut app = app_on(Tab::Overview);
    let coloured = draw(&app, Some(&snap));
    assert!(
        coloured.content.iter().any(|c| c.fg == Color::Green),
        "colours are on by default"
    );
    app.color = false;
    for tab in Tab::ALL {
        app.tab = tab;
        let buf = draw(&app, Some(&snap));
        let colours: Vec<_> = buf
            .content
            .iter()
            .filter(|c| c.fg != Color::Reset || c.bg != Color::Reset)
            .map(|c| (c.symbol().to_string(), c.fg, c.bg))
            .take(5)
            .collect();
        assert!(colours.is_empty(), "{tab:?} has colours: {colours:?}");
    }
}

#[test]
fn any_terminal_size_renders_without_panicking() {
    let snap = fixture::snapshot();
    let mut screens: Vec<App> = Tab::ALL.iter().map(|t| app_on(*t)).collect();
    let mut device = app_on(Tab::Overview);
    key(&mut device, KeyCode::Char('/'));
    typed(&mut device, "42");
    key(&mut device, KeyCode::Enter);
    device.on_device("42", Ok(fixture::device()), Instant::now());
    screens.push(device);
    for overlay in ['?', 'o', 'R', 'p', '/'] {
        let mut app = app_on(Tab::Firmware);
        key(&mut app, KeyCode::Char(overlay));
        screens.push(app);
    }
    for (w, h) in [(1, 1), (10, 3), (40, 12), (80, 24), (300, 100)] {
        for app in &screens {
            let mut terminal = Terminal::new(TestBackend::new(w, h)).expect("test backend");
            terminal.draw(|f| render(f, app, &snap)).expect("draw");
            terminal.draw(|f| render_waiting(f, app)).expect("draw");
        }
    }
}
