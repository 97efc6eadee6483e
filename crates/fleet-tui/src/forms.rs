//! The forms that build a command (outage, rollout): text fields, focus, and validation into a
//! `Command`. Invalid input becomes a message shown in the form, never a command.

use fleet_core::time::parse_duration;
use fleet_metrics::{Command, FaultRequest, RolloutRequest};

/// Longest text a field accepts (a silent cap would surprise: the field stops taking keys).
pub const FIELD_MAX_CHARS: usize = 64;

/// One labelled line of text input.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TextField {
    pub label: &'static str,
    pub hint: &'static str,
    pub value: String,
    /// The value is the suggested default, untouched: the first key typed replaces it (as a
    /// selected text would be).
    pub suggested: bool,
}

impl TextField {
    fn new(label: &'static str, hint: &'static str, value: &str) -> TextField {
        TextField {
            label,
            hint,
            value: value.into(),
            suggested: !value.is_empty(),
        }
    }
    fn edit(&mut self) {
        if std::mem::take(&mut self.suggested) {
            self.value.clear();
        }
    }
    pub fn push(&mut self, c: char) {
        if c.is_control() {
            return;
        }
        self.edit();
        if self.value.chars().count() < FIELD_MAX_CHARS {
            self.value.push(c);
        }
    }
    pub fn pop(&mut self) {
        self.edit();
        self.value.pop();
    }
}

/// A form: fields, the focused one, and the last validation error.
#[derive(Clone, Debug, PartialEq)]
pub struct Form {
    pub kind: FormKind,
    pub fields: Vec<TextField>,
    pub focus: usize,
    pub error: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormKind {
    Outage,
    Rollout,
}

impl Form {
    /// A network fault: percent of the fleet, duration, optional cohort, then its kind (an
    /// outage unless told otherwise) and, for a latency spike, the added delay.
    pub fn outage() -> Form {
        Form {
            kind: FormKind::Outage,
            fields: vec![
                TextField::new("percent of the fleet", "0 < p <= 100", "10"),
                TextField::new("duration", "30s, 5m, 1h30m", "30s"),
                TextField::new("cohort", "optional: all cohorts when empty", ""),
                TextField::new("kind", "outage, partition or latency_spike", "outage"),
                TextField::new("delay", "latency_spike only: like 800ms", ""),
            ],
            focus: 0,
            error: None,
        }
    }

    /// Rollout: name, target version, percent of the targets, optional waves.
    pub fn rollout() -> Form {
        Form {
            kind: FormKind::Rollout,
            fields: vec![
                TextField::new("name", "shown in events and the report", ""),
                TextField::new("target version", "as in the firmware model", ""),
                TextField::new("percent of targets", "0 < p <= 100", "100"),
                TextField::new("waves", "optional: cumulative %, like 1,10,50,100", ""),
            ],
            focus: 0,
            error: None,
        }
    }

    pub fn title(&self) -> &'static str {
        match self.kind {
            FormKind::Outage => "Network fault",
            FormKind::Rollout => "Start a rollout",
        }
    }

    pub fn next(&mut self) {
        self.focus = (self.focus + 1) % self.fields.len().max(1);
    }
    pub fn prev(&mut self) {
        let n = self.fields.len().max(1);
        self.focus = (self.focus + n - 1) % n;
    }
    pub fn focused(&mut self) -> Option<&mut TextField> {
        self.fields.get_mut(self.focus)
    }

    fn value(&self, i: usize) -> &str {
        self.fields.get(i).map_or("", |f| f.value.trim())
    }

    /// The command the form describes, or what is wrong with it.
    pub fn command(&self) -> Result<Command, String> {
        match self.kind {
            FormKind::Outage => self.outage_command(),
            FormKind::Rollout => self.rollout_command(),
        }
    }

    fn outage_command(&self) -> Result<Command, String> {
        let p = percent("percent of the fleet", self.value(0))?;
        let duration = self.value(1);
        if duration.is_empty() {
            return Err("duration: required (30s, 5m, 1h30m)".into());
        }
        let d = parse_duration(duration).map_err(|e| format!("duration: {e}"))?;
        if d.as_micros() == 0 {
            return Err(format!("duration = {duration}: must be longer than 0"));
        }
        let cohort = Some(self.value(2))
            .filter(|c| !c.is_empty())
            .map(String::from);
        let kind = match self.value(3) {
            "" => "outage",
            k @ ("outage" | "partition" | "latency_spike") => k,
            other => {
                return Err(format!(
                    "kind = {other}: must be outage, partition or latency_spike"
                ));
            }
        };
        let delay = match (kind, self.value(4)) {
            ("latency_spike", "") => {
                return Err("delay: required for a latency spike (like 800ms)".into());
            }
            ("latency_spike", d) => {
                parse_duration(d).map_err(|e| format!("delay: {e}"))?;
                Some(d.to_string())
            }
            (_, "") => None,
            (_, _) => return Err("delay: applies to latency_spike only".into()),
        };
        Ok(Command::Fault(FaultRequest {
            kind: kind.into(),
            fraction: Some(p / 100.0),
            duration: Some(duration.into()),
            cohort,
            delay,
            ..FaultRequest::default()
        }))
    }

    fn rollout_command(&self) -> Result<Command, String> {
        let name = self.value(0);
        if name.is_empty() {
            return Err("name: required".into());
        }
        let target = self.value(1);
        if target.is_empty() {
            return Err("target version: required".into());
        }
        let p = percent("percent of targets", self.value(2))?;
        let waves = waves(self.value(3))?;
        Ok(Command::Rollout(RolloutRequest {
            name: name.into(),
            target_version: target.into(),
            fraction: Some(p / 100.0),
            waves,
            ..RolloutRequest::default()
        }))
    }
}

/// A percentage in (0, 100].
fn percent(what: &str, text: &str) -> Result<f64, String> {
    let p: f64 = text
        .parse()
        .map_err(|_| format!("{what} = {text:?}: not a number (0 < p <= 100)"))?;
    if p.is_finite() && p > 0.0 && p <= 100.0 {
        Ok(p)
    } else {
        Err(format!("{what} = {text}: must be > 0 and <= 100"))
    }
}

/// Cumulative wave percentages, `1,10,50,100`; empty for none.
fn waves(text: &str) -> Result<Option<Vec<f64>>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    let mut out = Vec::new();
    for part in text.split(',') {
        out.push(percent("waves", part.trim())?);
    }
    if out.windows(2).any(|w| w[1] <= w[0]) {
        return Err(format!(
            "waves = {text}: must be increasing cumulative percentages, like 1,10,50,100"
        ));
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_form_with_defaults_is_ten_percent_for_thirty_seconds() {
        let Ok(Command::Fault(f)) = Form::outage().command() else {
            panic!("the default outage form is valid");
        };
        assert_eq!(f.fraction, Some(0.1));
        assert_eq!(f.duration.as_deref(), Some("30s"));
        assert_eq!(f.cohort, None);
        assert_eq!(f.kind, "outage");
    }

    #[test]
    fn the_fault_form_makes_partitions_and_latency_spikes() {
        let mut form = Form::outage();
        form.fields[3].value = "partition".into();
        let Ok(Command::Fault(f)) = form.command() else {
            panic!("a partition is valid");
        };
        assert_eq!((f.kind.as_str(), f.delay), ("partition", None));
        form.fields[3].value = "latency_spike".into();
        assert!(form.command().unwrap_err().contains("delay: required"));
        form.fields[4].value = "800ms".into();
        let Ok(Command::Fault(f)) = form.command() else {
            panic!("a latency spike with a delay is valid");
        };
        assert_eq!(f.delay.as_deref(), Some("800ms"));
        form.fields[3].value = "partition".into();
        assert!(form.command().unwrap_err().contains("latency_spike only"));
        form.fields[3].value = "flood".into();
        assert!(form.command().unwrap_err().contains("kind = flood"));
    }

    #[test]
    fn waves_must_increase() {
        assert_eq!(waves("1, 10,100"), Ok(Some(vec![1.0, 10.0, 100.0])));
        assert!(waves("10,5").unwrap_err().contains("increasing"));
        assert!(waves("10,abc").unwrap_err().contains("not a number"));
        assert!(waves("0,50").unwrap_err().contains("> 0"));
    }

    #[test]
    fn a_rollout_needs_a_name_and_a_version() {
        let mut f = Form::rollout();
        assert!(f.command().unwrap_err().contains("name"));
        f.fields[0].value = "canary".into();
        assert!(f.command().unwrap_err().contains("target version"));
        f.fields[1].value = "meter 2.0.0".into();
        f.fields[2].value = "50".into();
        let Ok(Command::Rollout(r)) = f.command() else {
            panic!("valid");
        };
        assert_eq!(r.fraction, Some(0.5));
        assert_eq!(r.waves, None);
    }
}
