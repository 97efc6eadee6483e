//! Commands a backend sends a device, and how they are parsed.
//!
//! Wire format (JSON on the device's command topic):
//! `{"cmd": "set_interval", "interval_ms": 5000, "request_id": "r-17"}`,
//! `{"cmd": "reboot"}`, `{"cmd": "ping"}`, `{"cmd": "report_now"}`. Unknown fields are ignored
//! (backends add their own); a malformed or unknown command is answered with
//! `"status": "error"` and counted, never dropped in silence.

use serde::Deserialize;

use crate::time::SimDuration;

/// Shortest and longest reporting interval `set_interval` accepts.
pub const MIN_INTERVAL: SimDuration = SimDuration::from_millis(100);
pub const MAX_INTERVAL: SimDuration = SimDuration::from_secs(7 * 86_400);
/// Longest `request_id` echoed back.
pub const MAX_REQUEST_ID: usize = 128;

#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    SetInterval(SimDuration),
    Reboot,
    Ping,
    ReportNow,
}

impl Command {
    pub fn name(&self) -> &'static str {
        match self {
            Command::SetInterval(_) => "set_interval",
            Command::Reboot => "reboot",
            Command::Ping => "ping",
            Command::ReportNow => "report_now",
        }
    }
}

/// A parsed command message: the command (or why it is not one) and the request id to echo.
#[derive(Clone, Debug, PartialEq)]
pub struct CommandMessage {
    pub request_id: Option<String>,
    /// The `cmd` field as sent, for the answer (truncated).
    pub name: Option<String>,
    pub command: Result<Command, String>,
}

#[derive(Deserialize)]
struct Wire {
    cmd: Option<String>,
    request_id: Option<serde_json::Value>,
    interval_ms: Option<f64>,
}

pub fn parse_command(payload: &[u8]) -> CommandMessage {
    let wire: Wire = match serde_json::from_slice(payload) {
        Ok(w) => w,
        Err(e) => {
            return CommandMessage {
                request_id: None,
                name: None,
                command: Err(format!("not a JSON command object: {e}")),
            };
        }
    };
    let request_id = wire.request_id.map(|v| {
        let mut s = match v {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        };
        if s.len() > MAX_REQUEST_ID {
            let mut cut = MAX_REQUEST_ID;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
        }
        s
    });
    let name = wire.cmd.clone().map(|mut s| {
        s.truncate(s.char_indices().nth(64).map(|(i, _)| i).unwrap_or(s.len()));
        s
    });
    let command = match wire.cmd.as_deref() {
        None => Err("missing \"cmd\"".to_string()),
        Some("set_interval") => match wire.interval_ms {
            None => Err("set_interval needs \"interval_ms\"".to_string()),
            Some(ms)
                if ms.is_finite()
                    && ms >= MIN_INTERVAL.as_millis() as f64
                    && ms <= MAX_INTERVAL.as_millis() as f64 =>
            {
                Ok(Command::SetInterval(SimDuration::from_micros(
                    (ms * 1000.0) as u64,
                )))
            }
            Some(ms) => Err(format!(
                "interval_ms = {ms}: must be between {} and {}",
                MIN_INTERVAL.as_millis(),
                MAX_INTERVAL.as_millis()
            )),
        },
        Some("reboot") => Ok(Command::Reboot),
        Some("ping") => Ok(Command::Ping),
        Some("report_now") => Ok(Command::ReportNow),
        Some(other) => Err(format!("unknown command {other:?}")),
    };
    CommandMessage {
        request_id,
        name,
        command,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_with_their_arguments() {
        let m = parse_command(
            br#"{"cmd":"set_interval","interval_ms":5000,"request_id":"r1","extra":true}"#,
        );
        assert_eq!(
            m.command,
            Ok(Command::SetInterval(SimDuration::from_secs(5)))
        );
        assert_eq!(m.request_id.as_deref(), Some("r1"));
        assert_eq!(
            parse_command(br#"{"cmd":"ping","request_id":7}"#)
                .request_id
                .as_deref(),
            Some("7")
        );
    }

    #[test]
    fn bad_commands_say_why() {
        assert!(
            parse_command(b"nope")
                .command
                .unwrap_err()
                .contains("not a JSON")
        );
        assert!(
            parse_command(br#"{"cmd":"selfdestruct"}"#)
                .command
                .unwrap_err()
                .contains("unknown command")
        );
        assert!(
            parse_command(br#"{"cmd":"set_interval","interval_ms":1}"#)
                .command
                .unwrap_err()
                .contains("between")
        );
        assert!(
            parse_command(br#"{"request_id":"x"}"#)
                .command
                .unwrap_err()
                .contains("missing")
        );
    }
}
