//! The terminal loop: read keys, refresh the snapshot, draw, carry out actions through the
//! `FleetPort`. The only I/O of the crate; the terminal is restored on every way out.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fleet_metrics::{FleetPort, FleetSnapshot};
use ratatui::Terminal;
use ratatui::backend::Backend;
use ratatui::crossterm::event::{self, Event, KeyEventKind};

use crate::app::{Action, App};
use crate::render::{render, render_waiting};

/// How long the loop waits for a key before looking at the snapshot again.
pub const POLL_TIMEOUT: Duration = Duration::from_millis(100);
/// Redraw at least this often (and at once after a key).
pub const REDRAW_EVERY: Duration = Duration::from_millis(250);

/// How the dashboard runs.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Attached to remote runs (`top --attach`) rather than a local one.
    pub attached: bool,
    /// Leave with `Exit::RunEnded` once this becomes true (the run has finished).
    pub stop_when: Option<Arc<AtomicBool>>,
}

/// Why the dashboard returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The user quit (q, Ctrl-C): the caller ends the run and writes the report.
    Quit,
    /// `RunOptions::stop_when` became true.
    RunEnded,
}

/// Where terminal events come from: crossterm, or a script in tests.
pub trait EventSource {
    /// The next event, or None when none came within `timeout`.
    fn next(&mut self, timeout: Duration) -> io::Result<Option<Event>>;
}

/// Events from the terminal.
#[derive(Debug, Default)]
pub struct CrosstermEvents;

impl EventSource for CrosstermEvents {
    fn next(&mut self, timeout: Duration) -> io::Result<Option<Event>> {
        if event::poll(timeout)? {
            event::read().map(Some)
        } else {
            Ok(None)
        }
    }
}

/// Restores the terminal when dropped: on return, on `?`, and on unwinding (ratatui's panic
/// hook restores it too, before the message is printed).
struct RestoreGuard;

impl Drop for RestoreGuard {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// Colours are off when `NO_COLOR` is set to anything but the empty string (no-color.org).
pub fn color_enabled() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Runs the dashboard on the terminal until the user quits or the run ends.
pub fn run(port: Arc<dyn FleetPort>, opts: RunOptions) -> io::Result<Exit> {
    let _guard = RestoreGuard;
    let mut terminal = ratatui::try_init()?;
    let mut app = App::new(opts.attached);
    app.color = color_enabled();
    run_loop(
        &mut terminal,
        &mut app,
        port.as_ref(),
        &opts,
        &mut CrosstermEvents,
    )
}

/// The loop itself, over any backend and event source.
pub fn run_loop<B: Backend, E: EventSource>(
    terminal: &mut Terminal<B>,
    app: &mut App,
    port: &dyn FleetPort,
    opts: &RunOptions,
    events: &mut E,
) -> io::Result<Exit> {
    let mut last_draw: Option<Instant> = None;
    let mut dirty = true;
    loop {
        if opts
            .stop_when
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Acquire))
        {
            return Ok(Exit::RunEnded);
        }
        let snap = port.snapshot();
        if let Some(s) = &snap {
            app.on_snapshot(s);
        }
        if let Some(key) = app.wants_device_refresh(Instant::now()) {
            let answer = port.device(&key);
            app.on_device(&key, answer, Instant::now());
            dirty = true;
        }
        let now = Instant::now();
        if dirty || last_draw.is_none_or(|t| now.saturating_duration_since(t) >= REDRAW_EVERY) {
            draw(terminal, app, snap.as_deref())?;
            last_draw = Some(now);
            dirty = false;
        }
        match events.next(POLL_TIMEOUT)? {
            Some(Event::Key(key)) if key.kind != KeyEventKind::Release => {
                dirty = true;
                match app.on_key(key) {
                    None => {}
                    Some(Action::Quit) => return Ok(Exit::Quit),
                    Some(Action::Command(command)) => {
                        // Show "sending …" while the port works (it may take a moment).
                        draw(terminal, app, snap.as_deref())?;
                        let answer = port.command(command.clone());
                        app.on_command(&command, answer);
                    }
                    Some(Action::LookupDevice(key)) => {
                        draw(terminal, app, snap.as_deref())?;
                        let answer = port.device(&key);
                        app.on_device(&key, answer, Instant::now());
                    }
                }
            }
            Some(Event::Resize(..)) => dirty = true,
            _ => {}
        }
    }
}

fn draw<B: Backend>(
    terminal: &mut Terminal<B>,
    app: &App,
    snap: Option<&FleetSnapshot>,
) -> io::Result<()> {
    terminal
        .draw(|frame| match snap {
            Some(s) => render(frame, app, s),
            None => render_waiting(frame, app),
        })
        .map(|_| ())
        .map_err(|e| io::Error::other(e.to_string()))
}
