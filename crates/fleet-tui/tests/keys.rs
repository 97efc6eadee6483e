//! Keys in, actions out: what each key emits, and that nothing that changes the run is
//! emitted without a confirmation.

use std::time::{Duration, Instant};

use fleet_metrics::{Command, ErrorKind, FaultRequest, PortError, RolloutRequest};
use fleet_tui::{Action, App, Mode, Tab, fixture};
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

fn press(app: &mut App, code: KeyCode) -> Option<Action> {
    app.on_key(KeyEvent::from(code))
}

fn typed(app: &mut App, s: &str) -> Vec<Action> {
    s.chars()
        .filter_map(|c| press(app, KeyCode::Char(c)))
        .collect()
}

/// Clears the focused field of a form.
fn clear_field(app: &mut App) {
    for _ in 0..20 {
        press(app, KeyCode::Backspace);
    }
}

#[test]
fn p_then_y_pauses() {
    let mut app = App::new(false);
    assert_eq!(press(&mut app, KeyCode::Char('p')), None);
    assert!(matches!(app.mode, Mode::Confirm(_)));
    assert_eq!(
        press(&mut app, KeyCode::Char('y')),
        Some(Action::Command(Command::Pause))
    );
    assert_eq!(app.mode, Mode::Normal);
}

#[test]
fn p_then_n_or_esc_or_enter_emits_nothing() {
    for answer in [KeyCode::Char('n'), KeyCode::Esc, KeyCode::Enter] {
        let mut app = App::new(false);
        press(&mut app, KeyCode::Char('p'));
        assert_eq!(press(&mut app, answer), None, "{answer:?}");
        assert_eq!(app.mode, Mode::Normal);
        assert!(
            app.status
                .as_ref()
                .is_some_and(|s| s.text.contains("cancelled"))
        );
    }
}

#[test]
fn other_keys_leave_the_question_open() {
    let mut app = App::new(false);
    press(&mut app, KeyCode::Char('r'));
    assert_eq!(press(&mut app, KeyCode::Char('x')), None);
    assert!(matches!(&app.mode, Mode::Confirm(c) if c.question == "Resume the fleet? [y/N]"));
    assert_eq!(
        press(&mut app, KeyCode::Char('Y')),
        Some(Action::Command(Command::Resume))
    );
}

#[test]
fn an_outage_of_ten_percent_for_thirty_seconds_after_confirmation() {
    let mut app = App::new(false);
    press(&mut app, KeyCode::Char('o'));
    clear_field(&mut app);
    assert!(typed(&mut app, "10").is_empty());
    press(&mut app, KeyCode::Tab);
    clear_field(&mut app);
    typed(&mut app, "30s");
    press(&mut app, KeyCode::Tab);
    typed(&mut app, "meters-north");
    assert_eq!(press(&mut app, KeyCode::Enter), None, "Enter only asks");
    let Mode::Confirm(c) = &app.mode else {
        panic!("a confirmation, not {:?}", app.mode);
    };
    assert_eq!(
        c.question,
        "Start an outage of 10% of cohort meters-north for 30s? [y/N]"
    );
    assert_eq!(
        press(&mut app, KeyCode::Char('y')),
        Some(Action::Command(Command::Fault(FaultRequest {
            kind: "outage".into(),
            fraction: Some(0.1),
            duration: Some("30s".into()),
            cohort: Some("meters-north".into()),
            ..FaultRequest::default()
        })))
    );
}

#[test]
fn typing_over_a_suggested_value_replaces_it_and_an_untouched_one_is_kept() {
    let mut app = App::new(false);
    press(&mut app, KeyCode::Char('o'));
    typed(&mut app, "25");
    press(&mut app, KeyCode::Enter);
    let Mode::Confirm(c) = &app.mode else {
        panic!("a confirmation, not {:?}", app.mode);
    };
    assert_eq!(c.question, "Start an outage of 25% for 30s? [y/N]");
}

#[test]
fn an_invalid_percent_shows_an_error_and_emits_nothing() {
    for bad in ["0", "150", "ten", "-5", ""] {
        let mut app = App::new(false);
        press(&mut app, KeyCode::Char('o'));
        clear_field(&mut app);
        typed(&mut app, bad);
        assert_eq!(press(&mut app, KeyCode::Enter), None);
        let Mode::Form(form) = &app.mode else {
            panic!("{bad:?}: the form stays open, not {:?}", app.mode);
        };
        let error = form.error.as_deref().unwrap_or_default();
        assert!(error.contains("percent of the fleet"), "{bad:?}: {error}");
        // y now types into the form: still nothing is sent.
        assert_eq!(press(&mut app, KeyCode::Char('y')), None);
    }
}

#[test]
fn an_invalid_duration_shows_an_error() {
    let mut app = App::new(false);
    press(&mut app, KeyCode::Char('o'));
    press(&mut app, KeyCode::Tab);
    clear_field(&mut app);
    typed(&mut app, "30 parsecs");
    assert_eq!(press(&mut app, KeyCode::Enter), None);
    let Mode::Form(form) = &app.mode else {
        panic!("the form stays open");
    };
    assert!(
        form.error
            .as_deref()
            .is_some_and(|e| e.contains("unknown unit")),
        "{:?}",
        form.error
    );
}

#[test]
fn a_rollout_form_emits_a_rollout_after_confirmation() {
    let mut app = App::new(false);
    press(&mut app, KeyCode::Char('R'));
    typed(&mut app, "fleet-2.0");
    press(&mut app, KeyCode::Tab);
    typed(&mut app, "meter 2.0.0");
    press(&mut app, KeyCode::Tab);
    clear_field(&mut app);
    typed(&mut app, "50");
    press(&mut app, KeyCode::Tab);
    typed(&mut app, "1,10,50,100");
    assert_eq!(press(&mut app, KeyCode::Enter), None);
    assert!(matches!(app.mode, Mode::Confirm(_)));
    assert_eq!(
        press(&mut app, KeyCode::Char('y')),
        Some(Action::Command(Command::Rollout(RolloutRequest {
            name: "fleet-2.0".into(),
            target_version: "meter 2.0.0".into(),
            fraction: Some(0.5),
            waves: Some(vec![1.0, 10.0, 50.0, 100.0]),
            ..RolloutRequest::default()
        })))
    );
}

#[test]
fn esc_closes_a_form_without_a_command() {
    let mut app = App::new(false);
    press(&mut app, KeyCode::Char('R'));
    typed(&mut app, "q");
    assert!(matches!(app.mode, Mode::Form(_)), "q is text in a form");
    assert_eq!(press(&mut app, KeyCode::Esc), None);
    assert_eq!(app.mode, Mode::Normal);
}

#[test]
fn slash_42_enter_looks_up_device_42() {
    let mut app = App::new(false);
    press(&mut app, KeyCode::Char('/'));
    assert!(typed(&mut app, "42").is_empty());
    assert_eq!(
        press(&mut app, KeyCode::Enter),
        Some(Action::LookupDevice("42".into()))
    );
    assert_eq!(app.tab, Tab::Device);
    assert_eq!(app.mode, Mode::Normal);
}

#[test]
fn an_empty_lookup_is_refused() {
    let mut app = App::new(false);
    press(&mut app, KeyCode::Char('/'));
    assert_eq!(press(&mut app, KeyCode::Enter), None);
    assert!(matches!(&app.mode, Mode::Search { error: Some(_), .. }));
}

#[test]
fn the_device_tab_asks_again_about_once_a_second() {
    let mut app = App::new(false);
    let t0 = Instant::now();
    assert_eq!(app.wants_device_refresh(t0), None, "nothing looked up yet");
    press(&mut app, KeyCode::Char('/'));
    typed(&mut app, "42");
    press(&mut app, KeyCode::Enter);
    app.on_device("42", Ok(fixture::device()), t0);
    assert_eq!(
        app.wants_device_refresh(t0 + Duration::from_millis(500)),
        None
    );
    assert_eq!(
        app.wants_device_refresh(t0 + Duration::from_millis(1_000)),
        Some("42".into())
    );
    press(&mut app, KeyCode::Char('1'));
    assert_eq!(
        app.wants_device_refresh(t0 + Duration::from_secs(5)),
        None,
        "only while the device tab is open"
    );
}

#[test]
fn an_unknown_device_is_not_asked_for_again() {
    let mut app = App::new(false);
    press(&mut app, KeyCode::Char('/'));
    typed(&mut app, "nope");
    press(&mut app, KeyCode::Enter);
    let now = Instant::now();
    app.on_device(
        "nope",
        Err(PortError::new(ErrorKind::NotFound, "no device nope")),
        now,
    );
    assert!(app.device.error.is_some());
    assert_eq!(app.wants_device_refresh(now + Duration::from_secs(5)), None);
}

#[test]
fn q_and_ctrl_c_quit() {
    let mut app = App::new(false);
    assert_eq!(press(&mut app, KeyCode::Char('q')), Some(Action::Quit));
    let mut app = App::new(false);
    press(&mut app, KeyCode::Char('o'));
    assert_eq!(
        app.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
        Some(Action::Quit),
        "Ctrl-C quits even inside a form"
    );
}

#[test]
fn control_letters_are_not_commands() {
    let mut app = App::new(false);
    assert_eq!(
        app.on_key(KeyEvent::new(KeyCode::Char('p'), KeyModifiers::CONTROL)),
        None
    );
    assert_eq!(app.mode, Mode::Normal);
}

#[test]
fn question_mark_toggles_help() {
    let mut app = App::new(false);
    press(&mut app, KeyCode::Char('?'));
    assert_eq!(app.mode, Mode::Help);
    press(&mut app, KeyCode::Char('?'));
    assert_eq!(app.mode, Mode::Normal);
    press(&mut app, KeyCode::Char('?'));
    press(&mut app, KeyCode::Esc);
    assert_eq!(app.mode, Mode::Normal);
}

#[test]
fn tab_keys_switch_screens() {
    let mut app = App::new(false);
    assert_eq!(app.tab, Tab::Overview);
    press(&mut app, KeyCode::Char('3'));
    assert_eq!(app.tab, Tab::Protocols);
    press(&mut app, KeyCode::Tab);
    assert_eq!(app.tab, Tab::Shards);
    press(&mut app, KeyCode::BackTab);
    press(&mut app, KeyCode::BackTab);
    assert_eq!(app.tab, Tab::Firmware);
    press(&mut app, KeyCode::Char('6'));
    press(&mut app, KeyCode::Tab);
    assert_eq!(app.tab, Tab::Overview, "wraps around");
    press(&mut app, KeyCode::BackTab);
    assert_eq!(app.tab, Tab::Device, "wraps around backwards");
}

#[test]
fn key_releases_are_ignored() {
    let mut app = App::new(false);
    let mut release = KeyEvent::from(KeyCode::Char('q'));
    release.kind = KeyEventKind::Release;
    assert_eq!(app.on_key(release), None);
}

#[test]
fn a_new_snapshot_adds_one_sample_per_sparkline() {
    let mut app = App::new(false);
    let mut snap = fixture::snapshot();
    app.on_snapshot(&snap);
    app.on_snapshot(&snap);
    assert_eq!(
        app.published.len(),
        1,
        "the same snapshot twice is one sample"
    );
    for i in 0..300 {
        snap.elapsed_s += 1.0;
        snap.published_per_s = f64::from(i);
        app.on_snapshot(&snap);
    }
    assert_eq!(app.published.len(), fleet_tui::HISTORY_LEN);
    assert_eq!(app.published.last(1).collect::<Vec<_>>(), vec![299]);
}
