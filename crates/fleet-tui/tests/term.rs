//! The terminal loop over a `TestBackend`, scripted keys and a fake port: actions reach the
//! port, answers reach the screen, and the loop leaves when asked.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_metrics::{
    Command, CommandAck, DeviceDetail, ErrorKind, FleetPort, FleetSnapshot, PortError,
};
use fleet_tui::{App, EventSource, Exit, RunOptions, fixture, run_loop};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{Event, KeyCode, KeyEvent};

#[derive(Default)]
struct FakePort {
    snapshot: Option<Arc<FleetSnapshot>>,
    commands: Mutex<Vec<Command>>,
    lookups: Mutex<Vec<String>>,
}

impl FleetPort for FakePort {
    fn snapshot(&self) -> Option<Arc<FleetSnapshot>> {
        self.snapshot.clone()
    }
    fn command(&self, cmd: Command) -> Result<CommandAck, PortError> {
        self.commands.lock().expect("lock").push(cmd);
        Ok(CommandAck {
            message: "paused".into(),
            sim_time_s: 300.0,
        })
    }
    fn device(&self, key: &str) -> Result<DeviceDetail, PortError> {
        self.lookups.lock().expect("lock").push(key.into());
        if key == "42" {
            Ok(fixture::device())
        } else {
            Err(PortError::new(
                ErrorKind::NotFound,
                format!("no device {key}"),
            ))
        }
    }
}

/// Keys from a list; when it runs out, raises `done` (the run "ends").
struct Script {
    keys: VecDeque<Event>,
    done: Arc<AtomicBool>,
}

impl Script {
    fn new(keys: &str, done: Arc<AtomicBool>) -> Script {
        Script {
            keys: keys
                .chars()
                .map(|c| {
                    let code = match c {
                        '\n' => KeyCode::Enter,
                        c => KeyCode::Char(c),
                    };
                    Event::Key(KeyEvent::from(code))
                })
                .collect(),
            done,
        }
    }
}

impl EventSource for Script {
    fn next(&mut self, _timeout: Duration) -> io::Result<Option<Event>> {
        let next = self.keys.pop_front();
        if next.is_none() {
            self.done.store(true, Ordering::Release);
        }
        Ok(next)
    }
}

fn run(port: &FakePort, keys: &str) -> (Exit, App, String) {
    let done = Arc::new(AtomicBool::new(false));
    let opts = RunOptions {
        attached: false,
        stop_when: Some(done.clone()),
    };
    let mut terminal = Terminal::new(TestBackend::new(120, 40)).expect("test backend");
    let mut app = App::new(false);
    let exit = run_loop(
        &mut terminal,
        &mut app,
        port,
        &opts,
        &mut Script::new(keys, done),
    )
    .expect("loop");
    let screen = terminal.backend().to_string();
    (exit, app, screen)
}

#[test]
fn a_confirmed_pause_reaches_the_port_and_its_ack_the_status_line() {
    let port = FakePort {
        snapshot: Some(Arc::new(fixture::snapshot())),
        ..FakePort::default()
    };
    let (exit, _app, screen) = run(&port, "py");
    assert_eq!(exit, Exit::RunEnded);
    assert_eq!(*port.commands.lock().expect("lock"), vec![Command::Pause]);
    assert!(screen.contains(" paused (sim 00:05:00)"), "{screen}");
}

#[test]
fn a_refused_confirmation_sends_nothing() {
    let port = FakePort {
        snapshot: Some(Arc::new(fixture::snapshot())),
        ..FakePort::default()
    };
    let (_, _, _) = run(&port, "pn");
    assert!(port.commands.lock().expect("lock").is_empty());
}

#[test]
fn q_quits() {
    let port = FakePort::default();
    let (exit, _, _) = run(&port, "q");
    assert_eq!(exit, Exit::Quit);
}

#[test]
fn a_device_lookup_goes_to_the_port_and_shows_the_device() {
    let port = FakePort {
        snapshot: Some(Arc::new(fixture::snapshot())),
        ..FakePort::default()
    };
    let (_, app, screen) = run(&port, "/42\n");
    assert_eq!(
        port.lookups
            .lock()
            .expect("lock")
            .first()
            .map(String::as_str),
        Some("42")
    );
    assert_eq!(app.device.detail.as_ref().map(|d| d.id), Some(42));
    assert!(screen.contains("meter-000042"), "{screen}");
}

#[test]
fn without_a_snapshot_it_waits() {
    let port = FakePort::default();
    let (exit, _, screen) = run(&port, "");
    assert_eq!(exit, Exit::RunEnded);
    assert!(
        screen.contains("waiting for the first snapshot"),
        "{screen}"
    );
}
