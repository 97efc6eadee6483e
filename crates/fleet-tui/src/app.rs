//! The dashboard's state and its key handling. No I/O: keys come in as `KeyEvent`s, what the
//! user asked for goes out as an `Action`, and the answers come back through `on_*` methods.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use fleet_metrics::{Command, CommandAck, DeviceDetail, ErrorKind, FleetSnapshot, PortError};
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use crate::forms::Form;
use crate::widgets::Theme;

/// Samples kept for each sparkline (one per snapshot: about two minutes).
pub const HISTORY_LEN: usize = 120;
/// How often the device tab asks for its device again.
pub const DEVICE_REFRESH: Duration = Duration::from_secs(1);
/// Longest device key the search prompt takes.
const SEARCH_MAX_CHARS: usize = 64;

/// The screens, in tab order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tab {
    Overview,
    Firmware,
    Protocols,
    Shards,
    Events,
    Device,
}

impl Tab {
    pub const ALL: [Tab; 6] = [
        Tab::Overview,
        Tab::Firmware,
        Tab::Protocols,
        Tab::Shards,
        Tab::Events,
        Tab::Device,
    ];
    pub fn title(self) -> &'static str {
        match self {
            Tab::Overview => "Overview",
            Tab::Firmware => "Firmware",
            Tab::Protocols => "Protocols",
            Tab::Shards => "Shards",
            Tab::Events => "Events",
            Tab::Device => "Device",
        }
    }
    pub fn index(self) -> usize {
        self as usize
    }
    fn from_index(i: usize) -> Tab {
        Tab::ALL[i % Tab::ALL.len()]
    }
}

/// What the user asked for; the terminal loop carries it out.
#[derive(Clone, Debug, PartialEq)]
#[allow(
    clippy::large_enum_variant,
    reason = "at most one action per key press, moved once: boxing the command buys nothing"
)]
pub enum Action {
    /// Leave the dashboard (the caller ends the run and writes the report).
    Quit,
    /// Send a command to the run (already confirmed).
    Command(Command),
    /// Look a device up by number or id; the answer goes to `App::on_device`.
    LookupDevice(String),
}

/// A question before a command that changes the run.
#[derive(Clone, Debug, PartialEq)]
pub struct Confirm {
    pub command: Command,
    pub question: String,
}

/// What keys currently do.
#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    Normal,
    Help,
    /// The device prompt: text typed so far, and why the last Enter was refused.
    Search {
        text: String,
        error: Option<String>,
    },
    Form(Form),
    Confirm(Box<Confirm>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusLevel {
    Info,
    Ok,
    Error,
}

/// The status line: the last command's outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct Status {
    pub level: StatusLevel,
    pub text: String,
}

/// The last samples of one rate.
#[derive(Clone, Debug, Default)]
pub struct History {
    samples: VecDeque<u64>,
}

impl History {
    fn push(&mut self, x: f64) {
        if self.samples.len() == HISTORY_LEN {
            self.samples.pop_front();
        }
        let v = if x.is_finite() && x > 0.0 {
            x.round() as u64
        } else {
            0
        };
        self.samples.push_back(v);
    }
    /// The newest `n` samples, oldest first.
    pub fn last(&self, n: usize) -> impl Iterator<Item = u64> + '_ {
        self.samples
            .iter()
            .skip(self.samples.len().saturating_sub(n))
            .copied()
    }
    pub fn len(&self) -> usize {
        self.samples.len()
    }
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

/// The device tab: which device, its last answer, and when it came.
#[derive(Clone, Debug, Default)]
pub struct DeviceView {
    /// What the user typed (number or id); None before the first lookup.
    pub key: Option<String>,
    pub detail: Option<DeviceDetail>,
    /// The last lookup failed: why.
    pub error: Option<String>,
    answered_at: Option<Instant>,
}

/// Everything the dashboard remembers between frames.
#[derive(Clone, Debug)]
pub struct App {
    pub tab: Tab,
    pub mode: Mode,
    pub published: History,
    pub acked: History,
    pub connects: History,
    /// `elapsed_s` of the last snapshot sampled into the histories.
    last_elapsed_s: Option<f64>,
    pub device: DeviceView,
    pub status: Option<Status>,
    /// Attached to a remote run (`top --attach`) rather than running locally.
    pub attached: bool,
    /// Colours on; `run` turns them off when `NO_COLOR` is set.
    pub color: bool,
    /// First row shown on the shards and events tabs.
    pub shards_scroll: usize,
    pub events_scroll: usize,
    shard_rows: usize,
    event_rows: usize,
}

impl App {
    pub fn new(attached: bool) -> App {
        App {
            tab: Tab::Overview,
            mode: Mode::Normal,
            published: History::default(),
            acked: History::default(),
            connects: History::default(),
            last_elapsed_s: None,
            device: DeviceView::default(),
            status: None,
            attached,
            color: true,
            shards_scroll: 0,
            events_scroll: 0,
            shard_rows: 0,
            event_rows: 0,
        }
    }

    pub(crate) fn theme(&self) -> Theme {
        Theme { color: self.color }
    }

    /// Takes in a snapshot: a new one (another `elapsed_s`) adds a sample to each sparkline.
    pub fn on_snapshot(&mut self, snap: &FleetSnapshot) {
        self.shard_rows = snap.shards.len();
        self.event_rows = snap.events.len();
        self.shards_scroll = self.shards_scroll.min(self.shard_rows.saturating_sub(1));
        self.events_scroll = self.events_scroll.min(self.event_rows.saturating_sub(1));
        if self.last_elapsed_s == Some(snap.elapsed_s) {
            return;
        }
        self.last_elapsed_s = Some(snap.elapsed_s);
        self.published.push(snap.published_per_s);
        self.acked.push(snap.acked_per_s);
        self.connects.push(snap.connects_per_s);
    }

    /// The answer to a command this app emitted.
    pub fn on_command(&mut self, command: &Command, result: Result<CommandAck, PortError>) {
        let what = command.describe();
        self.status = Some(match result {
            // The run says what it did (it knows more: how many devices, when it starts).
            Ok(ack) => Status {
                level: StatusLevel::Ok,
                text: format!(
                    "{} (sim {})",
                    ack.message,
                    crate::widgets::clock(ack.sim_time_s)
                ),
            },
            Err(e) => Status {
                level: StatusLevel::Error,
                text: format!("{what} failed: {}", e.message),
            },
        });
    }

    /// The answer to a device lookup (first or refresh) for `key`, received at `now`.
    pub fn on_device(&mut self, key: &str, result: Result<DeviceDetail, PortError>, now: Instant) {
        if self.device.key.as_deref() != Some(key) {
            return; // an answer for a device the user has since left
        }
        self.device.answered_at = Some(now);
        match result {
            Ok(d) => {
                self.device.detail = Some(d);
                self.device.error = None;
            }
            Err(e) => {
                if e.kind == ErrorKind::NotFound || e.kind == ErrorKind::BadRequest {
                    // Asking again will not help: stop refreshing.
                    self.device.key = None;
                    self.device.detail = None;
                }
                self.device.error = Some(format!("device {key:?}: {}", e.message));
            }
        }
    }

    /// The device to ask for again, when the device tab is open and its last answer is at
    /// least `DEVICE_REFRESH` old (the loop calls this every turn).
    pub fn wants_device_refresh(&self, now: Instant) -> Option<String> {
        if self.tab != Tab::Device {
            return None;
        }
        let key = self.device.key.as_ref()?;
        match self.device.answered_at {
            Some(t) if now.saturating_duration_since(t) < DEVICE_REFRESH => None,
            _ => Some(key.clone()),
        }
    }

    /// Handles one key; returns what the loop should do, if anything.
    pub fn on_key(&mut self, key: KeyEvent) -> Option<Action> {
        if key.kind == KeyEventKind::Release {
            return None;
        }
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return Some(Action::Quit);
        }
        match std::mem::replace(&mut self.mode, Mode::Normal) {
            Mode::Normal => self.normal_key(key),
            Mode::Help => self.help_key(key),
            Mode::Search { text, error } => self.search_key(key, text, error),
            Mode::Form(form) => self.form_key(key, form),
            Mode::Confirm(c) => self.confirm_key(key, *c),
        }
    }

    fn normal_key(&mut self, key: KeyEvent) -> Option<Action> {
        if key
            .modifiers
            .intersects(KeyModifiers::CONTROL | KeyModifiers::ALT)
        {
            return None; // Ctrl-P is not p: commands take plain keys only
        }
        match key.code {
            KeyCode::Char('q') => return Some(Action::Quit),
            KeyCode::Char('?') => self.mode = Mode::Help,
            KeyCode::Char('/') => {
                self.mode = Mode::Search {
                    text: String::new(),
                    error: None,
                }
            }
            KeyCode::Char('p') => self.confirm(Command::Pause),
            KeyCode::Char('r') => self.confirm(Command::Resume),
            KeyCode::Char('o') => self.mode = Mode::Form(Form::outage()),
            KeyCode::Char('R') => self.mode = Mode::Form(Form::rollout()),
            KeyCode::Char(c @ '1'..='6') => {
                self.tab = Tab::from_index(usize::from(c as u8 - b'1'));
            }
            KeyCode::Tab | KeyCode::Right => self.tab = Tab::from_index(self.tab.index() + 1),
            KeyCode::BackTab | KeyCode::Left => {
                self.tab = Tab::from_index(self.tab.index() + Tab::ALL.len() - 1)
            }
            KeyCode::Char('j') | KeyCode::Down => self.scroll(1),
            KeyCode::Char('k') | KeyCode::Up => self.scroll(-1),
            KeyCode::PageDown => self.scroll(10),
            KeyCode::PageUp => self.scroll(-10),
            KeyCode::Char('g') | KeyCode::Home => self.scroll(isize::MIN),
            KeyCode::Char('G') | KeyCode::End => self.scroll(isize::MAX),
            KeyCode::Esc => self.status = None,
            _ => {}
        }
        None
    }

    fn help_key(&mut self, key: KeyEvent) -> Option<Action> {
        match key.code {
            KeyCode::Char('q') => Some(Action::Quit),
            KeyCode::Char('?') | KeyCode::Esc | KeyCode::Enter => None,
            _ => {
                self.mode = Mode::Help;
                None
            }
        }
    }

    fn search_key(
        &mut self,
        key: KeyEvent,
        mut text: String,
        error: Option<String>,
    ) -> Option<Action> {
        match key.code {
            KeyCode::Esc => None,
            KeyCode::Enter => {
                let wanted = text.trim().to_string();
                if wanted.is_empty() {
                    self.mode = Mode::Search {
                        text,
                        error: Some("type a device number (42) or id (env-000042)".into()),
                    };
                    return None;
                }
                self.tab = Tab::Device;
                self.device = DeviceView {
                    key: Some(wanted.clone()),
                    ..DeviceView::default()
                };
                Some(Action::LookupDevice(wanted))
            }
            KeyCode::Backspace => {
                text.pop();
                self.mode = Mode::Search { text, error: None };
                None
            }
            KeyCode::Char(c) if !c.is_control() => {
                if text.chars().count() < SEARCH_MAX_CHARS {
                    text.push(c);
                }
                self.mode = Mode::Search { text, error: None };
                None
            }
            _ => {
                self.mode = Mode::Search { text, error };
                None
            }
        }
    }

    fn form_key(&mut self, key: KeyEvent, mut form: Form) -> Option<Action> {
        match key.code {
            KeyCode::Esc => return None,
            KeyCode::Tab | KeyCode::Down => form.next(),
            KeyCode::BackTab | KeyCode::Up => form.prev(),
            KeyCode::Backspace => {
                if let Some(f) = form.focused() {
                    f.pop();
                }
            }
            KeyCode::Enter => match form.command() {
                Ok(command) => {
                    self.confirm(command);
                    return None;
                }
                Err(e) => form.error = Some(e),
            },
            KeyCode::Char(c) => {
                if let Some(f) = form.focused() {
                    f.push(c);
                }
            }
            _ => {}
        }
        self.mode = Mode::Form(form);
        None
    }

    fn confirm_key(&mut self, key: KeyEvent, c: Confirm) -> Option<Action> {
        match key.code {
            KeyCode::Char('y') | KeyCode::Char('Y') => {
                self.status = Some(Status {
                    level: StatusLevel::Info,
                    text: format!("sending {}…", c.command.describe()),
                });
                Some(Action::Command(c.command))
            }
            KeyCode::Char('n') | KeyCode::Char('N') | KeyCode::Esc | KeyCode::Enter => {
                self.status = Some(Status {
                    level: StatusLevel::Info,
                    text: format!("cancelled: {}", c.command.describe()),
                });
                None
            }
            _ => {
                self.mode = Mode::Confirm(Box::new(c));
                None
            }
        }
    }

    fn confirm(&mut self, command: Command) {
        let question = match &command {
            Command::Pause => "Pause the fleet? [y/N]".to_string(),
            Command::Resume => "Resume the fleet? [y/N]".to_string(),
            Command::Fault(f) if f.kind == "outage" => {
                format!("Start an {}? [y/N]", command.describe())
            }
            Command::Fault(_) => format!("Inject a fault: {}? [y/N]", command.describe()),
            Command::Rollout(_) => format!("Start {}? [y/N]", command.describe()),
        };
        self.mode = Mode::Confirm(Box::new(Confirm { command, question }));
    }

    fn scroll(&mut self, by: isize) {
        let (pos, rows) = match self.tab {
            Tab::Shards => (&mut self.shards_scroll, self.shard_rows),
            Tab::Events => (&mut self.events_scroll, self.event_rows),
            _ => return,
        };
        let last = rows.saturating_sub(1);
        *pos = pos.saturating_add_signed(by).min(last);
    }
}
