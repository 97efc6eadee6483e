//! An AT-command cellular modem: a subset of ITU-T V.250 and 3GPP TS 27.007.
//!
//! [`LineAssembler`] turns bytes from the serial line into command lines; [`Modem`] answers
//! each line in verbose form (`\r\n+CSQ: 21,99\r\n\r\nOK\r\n`) and reports registration changes
//! as unsolicited result codes. Pure code: the caller passes the network state.

/// The longest command line [`LineAssembler`] keeps, in bytes (without its CR).
pub const MAX_LINE: usize = 256;

/// What the modem tells about itself.
#[derive(Clone, Debug, PartialEq)]
pub struct ModemInfo {
    /// Maker, answered to AT+CGMI and ATI.
    pub manufacturer: String,
    /// Model, answered to AT+CGMM and ATI.
    pub model: String,
    /// Firmware revision, answered to AT+CGMR and ATI.
    pub revision: String,
    /// IMEI, answered to AT+CGSN.
    pub imei: String,
    /// Network operator name, answered to AT+COPS?.
    pub operator: String,
}

/// Network registration status, as in +CREG / +CEREG `<stat>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Registration {
    /// Not registered, not searching.
    NotSearching = 0,
    /// Registered on the home network.
    Home = 1,
    /// Not registered, searching.
    Searching = 2,
    /// Registration denied.
    Denied = 3,
    /// Unknown.
    Unknown = 4,
    /// Registered, roaming.
    Roaming = 5,
}

impl Registration {
    /// The `<stat>` number.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// True when registered: home or roaming.
    pub fn is_registered(self) -> bool {
        matches!(self, Registration::Home | Registration::Roaming)
    }
}

/// The network as the modem sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NetState {
    /// Registration status.
    pub registration: Registration,
    /// Received signal strength in dBm; `None` when not known (CSQ 99).
    pub rssi_dbm: Option<f64>,
    /// Access technology for +COPS / +CREG (7 = E-UTRAN).
    pub act: u8,
    /// Tracking (or location) area code.
    pub tac: u16,
    /// Cell identity.
    pub cell_id: u32,
}

/// The result of a command line, for the caller's counters.
///
/// It is the final result code sent: with AT+CMEE=0 an error is sent, and counted, as plain
/// `Error`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `OK`.
    Ok,
    /// `ERROR`.
    Error,
    /// `+CME ERROR: <n>` (numeric or text form).
    CmeError(u16),
}

/// CME error: no network service.
const CME_NO_SERVICE: u16 = 30;
/// CME error: incorrect parameters.
const CME_BAD_PARAMS: u16 = 50;

/// The text of a CME error code, as sent with AT+CMEE=2.
pub fn cme_text(code: u16) -> &'static str {
    match code {
        3 => "operation not allowed",
        4 => "operation not supported",
        10 => "SIM not inserted",
        30 => "no network service",
        50 => "incorrect parameters",
        _ => "unknown",
    }
}

/// An emulated modem: its settings (echo, error mode, URC modes, attach) and what it last
/// reported of the network.
#[derive(Clone, Debug)]
pub struct Modem {
    info: ModemInfo,
    echo: bool,
    cmee: u8,
    creg_mode: u8,
    cereg_mode: u8,
    attach_wanted: bool,
    last: Seen,
}

/// The part of [`NetState`] that URCs report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    registration: Registration,
    tac: u16,
    cell_id: u32,
    act: u8,
}

impl Seen {
    fn of(net: &NetState) -> Seen {
        Seen {
            registration: net.registration,
            tac: net.tac,
            cell_id: net.cell_id,
            act: net.act,
        }
    }
}

/// The final result before the CMEE mode is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Final {
    Ok,
    Error,
    Cme(u16),
}

/// The form of an extended (`+`) command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form<'a> {
    /// `AT+X`
    Action,
    /// `AT+X?`
    Read,
    /// `AT+X=?`
    Test,
    /// `AT+X=<params>`
    Set(&'a [u8]),
}

impl Modem {
    /// A modem with factory settings: echo on, AT+CMEE=1, no registration URCs, attach wanted.
    /// It takes the network to be `NotSearching` until [`Modem::network_changed`] says otherwise.
    pub fn new(info: ModemInfo) -> Modem {
        Modem {
            info,
            echo: true,
            cmee: 1,
            creg_mode: 0,
            cereg_mode: 0,
            attach_wanted: true,
            last: Seen {
                registration: Registration::NotSearching,
                tac: 0,
                cell_id: 0,
                act: 0,
            },
        }
    }

    /// Answers one command line (without its CR).
    ///
    /// Appends the echo (when on: the line and `\r`), then information responses and the
    /// final result code in verbose form (`\r\n+CSQ: 21,99\r\n\r\nOK\r\n`). A blank line
    /// appends nothing and gives `Outcome::Ok`. Spaces and letter case do not matter;
    /// one command per line (a line with `;` gets `ERROR`).
    pub fn command(&mut self, line: &[u8], net: &NetState, out: &mut Vec<u8>) -> Outcome {
        if line.iter().all(|b| matches!(b, b' ' | b'\t')) {
            return Outcome::Ok;
        }
        if self.echo {
            out.extend_from_slice(line);
            out.push(b'\r');
        }
        let mut info = Vec::new();
        let result = self.execute(line, net, &mut info);
        if !info.is_empty() {
            out.extend_from_slice(b"\r\n");
            for l in &info {
                out.extend_from_slice(l.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
        let (text, outcome) = match result {
            Final::Ok => ("OK".to_string(), Outcome::Ok),
            Final::Error => ("ERROR".to_string(), Outcome::Error),
            Final::Cme(_) if self.cmee == 0 => ("ERROR".to_string(), Outcome::Error),
            Final::Cme(n) if self.cmee == 1 => (format!("+CME ERROR: {n}"), Outcome::CmeError(n)),
            Final::Cme(n) => (format!("+CME ERROR: {}", cme_text(n)), Outcome::CmeError(n)),
        };
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(b"\r\n");
        outcome
    }

    /// The network state is now `net`: appends the unsolicited result codes
    /// (`\r\n+CREG: ...\r\n`, `\r\n+CEREG: ...\r\n`) this change calls for.
    ///
    /// Per the modes set with AT+CREG=n / AT+CEREG=n: 0 sends nothing; 1 sends `<stat>` when
    /// the status changes; 2 sends `<stat>,"<tac>","<ci>",<act>` (the cell part only while
    /// registered) when the status changes or, while registered, when the cell changes.
    /// Call it for every change, including the first one after start.
    pub fn network_changed(&mut self, net: &NetState, out: &mut Vec<u8>) {
        let now = Seen::of(net);
        let stat_changed = now.registration != self.last.registration;
        let cell_changed = net.registration.is_registered() && now != self.last;
        for (name, mode) in [("+CREG", self.creg_mode), ("+CEREG", self.cereg_mode)] {
            let send = match mode {
                1 => stat_changed,
                2 => stat_changed || cell_changed,
                _ => false,
            };
            if send {
                let stat = net.registration.code();
                let line = if mode == 2 && net.registration.is_registered() {
                    format!("{name}: {stat},{}", cell_part(net))
                } else {
                    format!("{name}: {stat}")
                };
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(line.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
        self.last = now;
    }

    /// True when the modem echoes command lines (ATE1, the default).
    pub fn echo(&self) -> bool {
        self.echo
    }

    /// Runs one command; information lines go to `info`.
    fn execute(&mut self, line: &[u8], net: &NetState, info: &mut Vec<String>) -> Final {
        let cmd: Vec<u8> = line
            .iter()
            .filter(|b| !matches!(b, b' ' | b'\t'))
            .map(u8::to_ascii_uppercase)
            .collect();
        let Some(rest) = cmd.strip_prefix(b"AT") else {
            return Final::Error;
        };
        if rest.contains(&b';') {
            return Final::Error;
        }
        match rest {
            b"" => Final::Ok,
            b"E" | b"E0" => {
                self.echo = false;
                Final::Ok
            }
            b"E1" => {
                self.echo = true;
                Final::Ok
            }
            [b'E', ..] => Final::Cme(CME_BAD_PARAMS),
            b"I" | b"I0" => {
                info.push(self.info.manufacturer.clone());
                info.push(self.info.model.clone());
                info.push(format!("Revision: {}", self.info.revision));
                Final::Ok
            }
            b"Z" | b"Z0" | b"&F" | b"&F0" => {
                self.echo = true;
                self.cmee = 1;
                self.creg_mode = 0;
                self.cereg_mode = 0;
                Final::Ok
            }
            [b'+', ext @ ..] => self.extended(ext, net, info),
            _ => Final::Error,
        }
    }

    /// Runs an extended command (`ext` is what follows `AT+`, upper case, no spaces).
    fn extended(&mut self, ext: &[u8], net: &NetState, info: &mut Vec<String>) -> Final {
        let split = ext
            .iter()
            .position(|b| matches!(b, b'?' | b'='))
            .unwrap_or(ext.len());
        let (name, suffix) = ext.split_at(split);
        let form = match suffix {
            b"" => Form::Action,
            b"?" => Form::Read,
            b"=?" => Form::Test,
            [b'=', params @ ..] => Form::Set(params),
            _ => return Final::Error,
        };
        let registered = net.registration.is_registered();
        match (name, form) {
            (b"CGMI" | b"GMI", Form::Action) => info.push(self.info.manufacturer.clone()),
            (b"CGMM" | b"GMM", Form::Action) => info.push(self.info.model.clone()),
            (b"CGMR" | b"GMR", Form::Action) => info.push(self.info.revision.clone()),
            (b"CGSN" | b"GSN", Form::Action) => info.push(self.info.imei.clone()),
            (
                b"CGMI" | b"GMI" | b"CGMM" | b"GMM" | b"CGMR" | b"GMR" | b"CGSN" | b"GSN",
                Form::Test,
            ) => {}
            (b"CSQ", Form::Action) => info.push(format!("+CSQ: {},99", csq_rssi(net))),
            (b"CSQ", Form::Test) => info.push("+CSQ: (0-31,99),(0-7,99)".to_string()),
            (b"CREG" | b"CEREG", Form::Read) => {
                let mode = if name == b"CREG" {
                    self.creg_mode
                } else {
                    self.cereg_mode
                };
                let label = if name == b"CREG" { "+CREG" } else { "+CEREG" };
                let stat = net.registration.code();
                info.push(if mode == 2 && registered {
                    format!("{label}: {mode},{stat},{}", cell_part(net))
                } else {
                    format!("{label}: {mode},{stat}")
                });
            }
            (b"CREG", Form::Set(p)) => match small_param(p, 2) {
                Some(n) => self.creg_mode = n,
                None => return Final::Cme(CME_BAD_PARAMS),
            },
            (b"CEREG", Form::Set(p)) => match small_param(p, 2) {
                Some(n) => self.cereg_mode = n,
                None => return Final::Cme(CME_BAD_PARAMS),
            },
            (b"CREG", Form::Test) => info.push("+CREG: (0-2)".to_string()),
            (b"CEREG", Form::Test) => info.push("+CEREG: (0-2)".to_string()),
            (b"CGATT", Form::Read) => {
                let attached = registered && self.attach_wanted;
                info.push(format!("+CGATT: {}", u8::from(attached)));
            }
            (b"CGATT", Form::Set(p)) => match small_param(p, 1) {
                Some(0) => self.attach_wanted = false,
                Some(_) if !registered => return Final::Cme(CME_NO_SERVICE),
                Some(_) => self.attach_wanted = true,
                None => return Final::Cme(CME_BAD_PARAMS),
            },
            (b"CGATT", Form::Test) => info.push("+CGATT: (0,1)".to_string()),
            (b"COPS", Form::Read) => info.push(if registered {
                format!("+COPS: 0,0,\"{}\",{}", self.info.operator, net.act)
            } else {
                "+COPS: 0".to_string()
            }),
            (b"CMEE", Form::Read) => info.push(format!("+CMEE: {}", self.cmee)),
            (b"CMEE", Form::Set(p)) => match small_param(p, 2) {
                Some(n) => self.cmee = n,
                None => return Final::Cme(CME_BAD_PARAMS),
            },
            (b"CMEE", Form::Test) => info.push("+CMEE: (0-2)".to_string()),
            (b"CFUN", Form::Read) => info.push("+CFUN: 1".to_string()),
            (b"CPIN", Form::Read) => info.push("+CPIN: READY".to_string()),
            _ => return Final::Error,
        }
        Final::Ok
    }
}

/// `"<tac>","<ci>",<act>` in hex as +CREG / +CEREG mode 2 give it.
fn cell_part(net: &NetState) -> String {
    format!("\"{:04X}\",\"{:08X}\",{}", net.tac, net.cell_id, net.act)
}

/// The +CSQ `<rssi>`: (dBm + 113) / 2 rounded down, clamped to 0..=31; 99 when unknown or
/// not registered.
fn csq_rssi(net: &NetState) -> u8 {
    match net.rssi_dbm {
        Some(dbm) if dbm.is_finite() && net.registration.is_registered() => {
            ((dbm + 113.0) / 2.0).floor().clamp(0.0, 31.0) as u8
        }
        _ => 99,
    }
}

/// A parameter of 1 to 3 decimal digits whose value is at most `max`.
fn small_param(p: &[u8], max: u8) -> Option<u8> {
    if p.is_empty() || p.len() > 3 || !p.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let v = p.iter().fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
    u8::try_from(v).ok().filter(|&v| v <= max)
}

/// What [`LineAssembler`] gives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Assembled {
    /// A complete, non-empty command line, without its CR.
    Line(Vec<u8>),
    /// A line longer than [`MAX_LINE`] bytes ended; it was dropped.
    Overflow,
}

/// Collects bytes from the serial line into command lines.
///
/// A line ends at CR; LF is ignored; backspace (0x08) and DEL (0x7F) delete the last byte.
/// Empty lines are not reported. A line is at most [`MAX_LINE`] bytes: a longer one is dropped
/// and reported as [`Assembled::Overflow`] when its CR comes.
#[derive(Clone, Debug, Default)]
pub struct LineAssembler {
    buf: Vec<u8>,
    overflow: bool,
}

impl LineAssembler {
    /// An empty assembler.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes `bytes` and appends each line they complete to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<Assembled>) {
        for &b in bytes {
            match b {
                b'\r' => {
                    if self.overflow {
                        self.overflow = false;
                        out.push(Assembled::Overflow);
                    } else if !self.buf.is_empty() {
                        out.push(Assembled::Line(std::mem::take(&mut self.buf)));
                    }
                }
                b'\n' => {}
                0x08 | 0x7F => {
                    if !self.overflow {
                        self.buf.pop();
                    }
                }
                _ if self.overflow => {}
                _ if self.buf.len() >= MAX_LINE => {
                    self.overflow = true;
                    self.buf = Vec::new();
                }
                _ => self.buf.push(b),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn info() -> ModemInfo {
        ModemInfo {
            manufacturer: "Quectel".to_string(),
            model: "EC25".to_string(),
            revision: "EC25EFAR06A06M4G".to_string(),
            imei: "867698040000001".to_string(),
            operator: "FleetNet".to_string(),
        }
    }

    fn home() -> NetState {
        NetState {
            registration: Registration::Home,
            rssi_dbm: Some(-71.0),
            act: 7,
            tac: 0x00C3,
            cell_id: 0x01A2_B3C4,
        }
    }

    fn searching() -> NetState {
        NetState {
            registration: Registration::Searching,
            rssi_dbm: None,
            act: 7,
            tac: 0,
            cell_id: 0,
        }
    }

    fn run(m: &mut Modem, line: &str, net: &NetState) -> (String, Outcome) {
        let mut out = Vec::new();
        let o = m.command(line.as_bytes(), net, &mut out);
        (String::from_utf8(out).expect("utf8"), o)
    }

    /// A modem with echo off, so the answers read plainly.
    fn quiet() -> Modem {
        let mut m = Modem::new(info());
        let (out, o) = run(&mut m, "ATE0", &home());
        assert_eq!((out.as_str(), o), ("ATE0\r\r\nOK\r\n", Outcome::Ok));
        assert!(!m.echo());
        m
    }

    /// Runs a dialogue: (line, expected output, expected outcome).
    fn dialogue(m: &mut Modem, net: &NetState, steps: &[(&str, &str, Outcome)]) {
        for (line, want, outcome) in steps {
            let (got, o) = run(m, line, net);
            assert_eq!(got, *want, "line {line:?}");
            assert_eq!(o, *outcome, "line {line:?}");
        }
    }

    const OK: Outcome = Outcome::Ok;
    const ERR: Outcome = Outcome::Error;

    #[test]
    fn echo_on_and_off() {
        let mut m = Modem::new(info());
        assert!(m.echo());
        dialogue(
            &mut m,
            &home(),
            &[
                ("AT", "AT\r\r\nOK\r\n", OK),
                ("at", "at\r\r\nOK\r\n", OK),
                ("", "", OK),
                ("   ", "", OK),
                ("ATE0", "ATE0\r\r\nOK\r\n", OK),
                ("AT", "\r\nOK\r\n", OK),
                ("ATE1", "\r\nOK\r\n", OK),
                ("AT", "AT\r\r\nOK\r\n", OK),
                ("ATE", "ATE\r\r\nOK\r\n", OK),
                ("AT", "\r\nOK\r\n", OK),
            ],
        );
        assert!(!m.echo());
    }

    #[test]
    fn identification() {
        let mut m = quiet();
        dialogue(
            &mut m,
            &home(),
            &[
                (
                    "ATI",
                    "\r\nQuectel\r\nEC25\r\nRevision: EC25EFAR06A06M4G\r\n\r\nOK\r\n",
                    OK,
                ),
                ("AT+CGMI", "\r\nQuectel\r\n\r\nOK\r\n", OK),
                ("AT+CGMM", "\r\nEC25\r\n\r\nOK\r\n", OK),
                ("AT+CGMR", "\r\nEC25EFAR06A06M4G\r\n\r\nOK\r\n", OK),
                ("AT+CGSN", "\r\n867698040000001\r\n\r\nOK\r\n", OK),
                ("at+cgsn", "\r\n867698040000001\r\n\r\nOK\r\n", OK),
                ("AT + CGSN ", "\r\n867698040000001\r\n\r\nOK\r\n", OK),
                ("AT+CGSN=?", "\r\nOK\r\n", OK),
                ("AT+CFUN?", "\r\n+CFUN: 1\r\n\r\nOK\r\n", OK),
                ("AT+CPIN?", "\r\n+CPIN: READY\r\n\r\nOK\r\n", OK),
            ],
        );
    }

    #[test]
    fn unknown_and_malformed() {
        let mut m = quiet();
        dialogue(
            &mut m,
            &home(),
            &[
                ("HELLO", "\r\nERROR\r\n", ERR),
                ("A", "\r\nERROR\r\n", ERR),
                ("AT+FOO", "\r\nERROR\r\n", ERR),
                ("AT+CSQ?", "\r\nERROR\r\n", ERR),
                ("AT+CREG", "\r\nERROR\r\n", ERR),
                ("AT+CFUN=1", "\r\nERROR\r\n", ERR),
                ("AT+CREG?;+CSQ", "\r\nERROR\r\n", ERR),
                ("ATX", "\r\nERROR\r\n", ERR),
                ("AT+", "\r\nERROR\r\n", ERR),
                ("AT+CREG?x", "\r\nERROR\r\n", ERR),
                ("\u{1b}AT", "\r\nERROR\r\n", ERR),
            ],
        );
    }

    #[test]
    fn csq_mapping() {
        let mut m = quiet();
        let csq = |m: &mut Modem, rssi: Option<f64>, reg: Registration| {
            let net = NetState {
                registration: reg,
                rssi_dbm: rssi,
                ..home()
            };
            run(m, "AT+CSQ", &net).0
        };
        let line = |v: u8| format!("\r\n+CSQ: {v},99\r\n\r\nOK\r\n");
        assert_eq!(csq(&mut m, Some(-113.0), Registration::Home), line(0));
        assert_eq!(csq(&mut m, Some(-111.0), Registration::Home), line(1));
        assert_eq!(csq(&mut m, Some(-71.0), Registration::Home), line(21));
        assert_eq!(csq(&mut m, Some(-53.0), Registration::Roaming), line(30));
        assert_eq!(csq(&mut m, Some(-51.0), Registration::Home), line(31));
        assert_eq!(csq(&mut m, Some(-20.0), Registration::Home), line(31));
        assert_eq!(csq(&mut m, Some(-200.0), Registration::Home), line(0));
        assert_eq!(csq(&mut m, None, Registration::Home), line(99));
        assert_eq!(csq(&mut m, Some(f64::NAN), Registration::Home), line(99));
        assert_eq!(csq(&mut m, Some(-71.0), Registration::Searching), line(99));
        assert_eq!(csq(&mut m, Some(-71.0), Registration::Denied), line(99));
        assert_eq!(
            run(&mut m, "AT+CSQ=?", &home()).0,
            "\r\n+CSQ: (0-31,99),(0-7,99)\r\n\r\nOK\r\n"
        );
    }

    #[test]
    fn creg_and_cereg_queries() {
        for (cmd, label) in [("AT+CREG", "+CREG"), ("AT+CEREG", "+CEREG")] {
            let mut m = quiet();
            let q = format!("{cmd}?");
            let r = |s: &str| format!("\r\n{label}: {s}\r\n\r\nOK\r\n");
            dialogue(
                &mut m,
                &home(),
                &[
                    (&q, &r("0,1"), OK),
                    (&format!("{cmd}=?"), &r("(0-2)"), OK),
                    (&format!("{cmd}=1"), "\r\nOK\r\n", OK),
                    (&q, &r("1,1"), OK),
                    (&format!("{cmd}=2"), "\r\nOK\r\n", OK),
                    (&q, &r("2,1,\"00C3\",\"01A2B3C4\",7"), OK),
                    (
                        &format!("{cmd}=7"),
                        "\r\n+CME ERROR: 50\r\n",
                        Outcome::CmeError(50),
                    ),
                    (
                        &format!("{cmd}="),
                        "\r\n+CME ERROR: 50\r\n",
                        Outcome::CmeError(50),
                    ),
                    (
                        &format!("{cmd}=1,2"),
                        "\r\n+CME ERROR: 50\r\n",
                        Outcome::CmeError(50),
                    ),
                    (&format!("{cmd}=0"), "\r\nOK\r\n", OK),
                    (&q, &r("0,1"), OK),
                ],
            );
            // Mode 2 while not registered: no cell part.
            dialogue(
                &mut m,
                &searching(),
                &[(&format!("{cmd}=2"), "\r\nOK\r\n", OK), (&q, &r("2,2"), OK)],
            );
            let roaming = NetState {
                registration: Registration::Roaming,
                ..home()
            };
            dialogue(
                &mut m,
                &roaming,
                &[(&q, &r("2,5,\"00C3\",\"01A2B3C4\",7"), OK)],
            );
        }
    }

    #[test]
    fn cmee_modes() {
        let mut m = quiet();
        dialogue(
            &mut m,
            &searching(),
            &[
                ("AT+CMEE?", "\r\n+CMEE: 1\r\n\r\nOK\r\n", OK),
                ("AT+CMEE=?", "\r\n+CMEE: (0-2)\r\n\r\nOK\r\n", OK),
                (
                    "AT+CGATT=1",
                    "\r\n+CME ERROR: 30\r\n",
                    Outcome::CmeError(30),
                ),
                ("AT+CREG=9", "\r\n+CME ERROR: 50\r\n", Outcome::CmeError(50)),
                ("AT+CMEE=2", "\r\nOK\r\n", OK),
                (
                    "AT+CGATT=1",
                    "\r\n+CME ERROR: no network service\r\n",
                    Outcome::CmeError(30),
                ),
                (
                    "AT+CEREG=x",
                    "\r\n+CME ERROR: incorrect parameters\r\n",
                    Outcome::CmeError(50),
                ),
                (
                    "ATE5",
                    "\r\n+CME ERROR: incorrect parameters\r\n",
                    Outcome::CmeError(50),
                ),
                ("AT+NOPE", "\r\nERROR\r\n", ERR),
                (
                    "AT+CMEE=3",
                    "\r\n+CME ERROR: incorrect parameters\r\n",
                    Outcome::CmeError(50),
                ),
                ("AT+CMEE=0", "\r\nOK\r\n", OK),
                ("AT+CMEE?", "\r\n+CMEE: 0\r\n\r\nOK\r\n", OK),
                ("AT+CGATT=1", "\r\nERROR\r\n", ERR),
                ("AT+CREG=7", "\r\nERROR\r\n", ERR),
                ("AT+CMEE=1", "\r\nOK\r\n", OK),
                ("AT+CMEE=01", "\r\nOK\r\n", OK),
            ],
        );
        assert_eq!(cme_text(30), "no network service");
        assert_eq!(cme_text(50), "incorrect parameters");
        assert_eq!(cme_text(9999), "unknown");
    }

    #[test]
    fn attach_and_operator() {
        let mut m = quiet();
        dialogue(
            &mut m,
            &searching(),
            &[
                ("AT+CGATT?", "\r\n+CGATT: 0\r\n\r\nOK\r\n", OK),
                ("AT+CGATT=?", "\r\n+CGATT: (0,1)\r\n\r\nOK\r\n", OK),
                ("AT+COPS?", "\r\n+COPS: 0\r\n\r\nOK\r\n", OK),
                ("AT+CGATT=0", "\r\nOK\r\n", OK),
                (
                    "AT+CGATT=2",
                    "\r\n+CME ERROR: 50\r\n",
                    Outcome::CmeError(50),
                ),
            ],
        );
        dialogue(
            &mut m,
            &home(),
            &[
                // Detached by AT+CGATT=0 above.
                ("AT+CGATT?", "\r\n+CGATT: 0\r\n\r\nOK\r\n", OK),
                ("AT+CGATT=1", "\r\nOK\r\n", OK),
                ("AT+CGATT?", "\r\n+CGATT: 1\r\n\r\nOK\r\n", OK),
                (
                    "AT+COPS?",
                    "\r\n+COPS: 0,0,\"FleetNet\",7\r\n\r\nOK\r\n",
                    OK,
                ),
                ("AT+CGATT=0", "\r\nOK\r\n", OK),
                ("AT+CGATT?", "\r\n+CGATT: 0\r\n\r\nOK\r\n", OK),
            ],
        );
        // A fresh modem wants to attach.
        let mut fresh = quiet();
        dialogue(
            &mut fresh,
            &home(),
            &[("AT+CGATT?", "\r\n+CGATT: 1\r\n\r\nOK\r\n", OK)],
        );
    }

    #[test]
    fn reset_restores_defaults() {
        let mut m = quiet();
        dialogue(
            &mut m,
            &home(),
            &[
                ("AT+CMEE=2", "\r\nOK\r\n", OK),
                ("AT+CREG=2", "\r\nOK\r\n", OK),
                ("ATZ", "\r\nOK\r\n", OK),
                ("AT+CMEE?", "AT+CMEE?\r\r\n+CMEE: 1\r\n\r\nOK\r\n", OK),
                ("AT+CREG?", "AT+CREG?\r\r\n+CREG: 0,1\r\n\r\nOK\r\n", OK),
            ],
        );
        assert!(m.echo());
    }

    fn changed(m: &mut Modem, net: &NetState) -> String {
        let mut out = Vec::new();
        m.network_changed(net, &mut out);
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn urcs_follow_the_modes() {
        let mut m = quiet();
        // Mode 0: nothing, but the state is tracked.
        assert_eq!(changed(&mut m, &searching()), "");
        assert_eq!(changed(&mut m, &home()), "");

        run(&mut m, "AT+CREG=1", &home());
        assert_eq!(changed(&mut m, &home()), "");
        assert_eq!(changed(&mut m, &searching()), "\r\n+CREG: 2\r\n");
        assert_eq!(changed(&mut m, &searching()), "");
        assert_eq!(changed(&mut m, &home()), "\r\n+CREG: 1\r\n");
        // Mode 1 ignores a cell change.
        let moved = NetState {
            cell_id: 0x0000_BEEF,
            tac: 0x1234,
            ..home()
        };
        assert_eq!(changed(&mut m, &moved), "");

        run(&mut m, "AT+CEREG=2", &home());
        let back = home();
        assert_eq!(
            changed(&mut m, &back),
            "\r\n+CEREG: 1,\"00C3\",\"01A2B3C4\",7\r\n"
        );
        assert_eq!(changed(&mut m, &back), "");
        // Signal alone is no change.
        let weaker = NetState {
            rssi_dbm: Some(-100.0),
            ..home()
        };
        assert_eq!(changed(&mut m, &weaker), "");
        let denied = NetState {
            registration: Registration::Denied,
            ..home()
        };
        assert_eq!(
            changed(&mut m, &denied),
            "\r\n+CREG: 3\r\n\r\n+CEREG: 3\r\n"
        );
        // Cell changes while not registered are not reported.
        let denied_elsewhere = NetState {
            cell_id: 5,
            ..denied
        };
        assert_eq!(changed(&mut m, &denied_elsewhere), "");

        run(&mut m, "AT+CREG=2", &home());
        let roaming = NetState {
            registration: Registration::Roaming,
            ..moved
        };
        assert_eq!(
            changed(&mut m, &roaming),
            "\r\n+CREG: 5,\"1234\",\"0000BEEF\",7\r\n\r\n+CEREG: 5,\"1234\",\"0000BEEF\",7\r\n"
        );
        run(&mut m, "AT+CREG=0", &home());
        run(&mut m, "AT+CEREG=0", &home());
        assert_eq!(changed(&mut m, &searching()), "");
    }

    #[test]
    fn first_registration_after_start_is_reported() {
        let mut m = quiet();
        run(&mut m, "AT+CEREG=1", &searching());
        assert_eq!(changed(&mut m, &home()), "\r\n+CEREG: 1\r\n");
    }

    fn assemble(chunks: &[&[u8]]) -> Vec<Assembled> {
        let mut a = LineAssembler::new();
        let mut out = Vec::new();
        for c in chunks {
            a.push(c, &mut out);
        }
        out
    }

    fn line(s: &str) -> Assembled {
        Assembled::Line(s.as_bytes().to_vec())
    }

    #[test]
    fn assembler_lines() {
        assert_eq!(assemble(&[b"AT\r\n"]), [line("AT")]);
        assert_eq!(assemble(&[b"AT\r\nATI\r\n"]), [line("AT"), line("ATI")]);
        assert_eq!(assemble(&[b"AT\rATI\r"]), [line("AT"), line("ATI")]);
        // A lone LF does not end a line.
        assert_eq!(assemble(&[b"AT\nE0\r"]), [line("ATE0")]);
        assert_eq!(assemble(&[b"AT\n"]), []);
        // Backspace and DEL delete; extra ones do nothing.
        assert_eq!(assemble(&[b"ATX\x08I\r"]), [line("ATI")]);
        assert_eq!(assemble(&[b"A\x08\x08\x08AT\x7f\x7fAT\r"]), [line("AT")]);
        // Split across pushes.
        assert_eq!(
            assemble(&[b"A", b"T+C", b"SQ", b"\r", b"\nAT", b"\r\n"]),
            [line("AT+CSQ"), line("AT")]
        );
        // Empty lines are not reported.
        assert_eq!(assemble(&[b"\r\n\r\r\n"]), []);
        assert_eq!(assemble(&[b"AT\x08\x08\r"]), []);
        // Bytes after the last CR wait for the next push.
        let mut a = LineAssembler::new();
        let mut out = Vec::new();
        a.push(b"AT+CG", &mut out);
        assert!(out.is_empty());
        a.push(b"SN\r", &mut out);
        assert_eq!(out, [line("AT+CGSN")]);
    }

    #[test]
    fn assembler_overflow() {
        let exact = vec![b'A'; MAX_LINE];
        let mut input = exact.clone();
        input.push(b'\r');
        assert_eq!(assemble(&[&input]), [Assembled::Line(exact)]);

        let mut long = vec![b'A'; MAX_LINE + 1];
        long.extend_from_slice(b"\r\nAT\r\n");
        assert_eq!(assemble(&[&long]), [Assembled::Overflow, line("AT")]);

        // Backspace does not rescue an overflowed line, and it is reported once.
        let mut a = LineAssembler::new();
        let mut out = Vec::new();
        for _ in 0..10 {
            a.push(&[b'x'; 100], &mut out);
        }
        a.push(&[0x08; 900], &mut out);
        a.push(b"\r\r", &mut out);
        a.push(b"ATI\r", &mut out);
        assert_eq!(out, [Assembled::Overflow, line("ATI")]);
    }

    /// True when `out` ends with the final result code line that `outcome` stands for.
    fn ends_with_final(out: &[u8], outcome: Outcome) -> bool {
        let text = String::from_utf8_lossy(out);
        let Some(body) = text.strip_suffix("\r\n") else {
            return false;
        };
        let Some(start) = body.rfind("\r\n") else {
            return false;
        };
        let last = &body[start + 2..];
        match outcome {
            Outcome::Ok => last == "OK",
            Outcome::Error => last == "ERROR",
            Outcome::CmeError(n) => {
                last == format!("+CME ERROR: {n}") || last == format!("+CME ERROR: {}", cme_text(n))
            }
        }
    }

    fn arb_net() -> impl Strategy<Value = NetState> {
        (
            0usize..6,
            proptest::option::of(-250.0f64..50.0),
            any::<u8>(),
            any::<u16>(),
            any::<u32>(),
        )
            .prop_map(|(r, rssi, act, tac, cell_id)| NetState {
                registration: [
                    Registration::NotSearching,
                    Registration::Home,
                    Registration::Searching,
                    Registration::Denied,
                    Registration::Unknown,
                    Registration::Roaming,
                ][r],
                rssi_dbm: rssi,
                act,
                tac,
                cell_id,
            })
    }

    /// Bytes that look somewhat like AT commands, mixed with noise.
    fn arb_input() -> impl Strategy<Value = Vec<u8>> {
        let words = prop_oneof![
            Just(b"AT".to_vec()),
            Just(b"at".to_vec()),
            Just(b"E0".to_vec()),
            Just(b"E1".to_vec()),
            Just(b"+CREG".to_vec()),
            Just(b"+CEREG".to_vec()),
            Just(b"+CMEE".to_vec()),
            Just(b"+CGATT".to_vec()),
            Just(b"+CSQ".to_vec()),
            Just(b"+COPS".to_vec()),
            Just(b"I".to_vec()),
            Just(b"Z".to_vec()),
            Just(b"=".to_vec()),
            Just(b"?".to_vec()),
            Just(b"=?".to_vec()),
            Just(b";".to_vec()),
            Just(b"0".to_vec()),
            Just(b"1".to_vec()),
            Just(b"2".to_vec()),
            Just(b"\r".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"\n".to_vec()),
            Just(vec![0x08]),
            proptest::collection::vec(any::<u8>(), 0..8),
        ];
        proptest::collection::vec(words, 0..60).prop_map(|w| w.concat())
    }

    proptest! {
        #[test]
        fn random_input_never_panics_and_always_ends_with_a_result(
            input in prop_oneof![arb_input(), proptest::collection::vec(any::<u8>(), 0..600)],
            cuts in proptest::collection::vec(0usize..600, 0..6),
            nets in proptest::collection::vec(arb_net(), 1..4),
        ) {
            let mut modem = Modem::new(info());
            let mut asm = LineAssembler::new();
            let mut lines = Vec::new();
            let mut cuts = cuts;
            cuts.push(0);
            cuts.push(input.len());
            cuts.sort_unstable();
            for w in cuts.windows(2) {
                let (a, b) = (w[0].min(input.len()), w[1].min(input.len()));
                asm.push(&input[a..b], &mut lines);
            }
            for (i, item) in lines.iter().enumerate() {
                let net = &nets[i % nets.len()];
                let mut urc = Vec::new();
                modem.network_changed(net, &mut urc);
                prop_assert!(urc.is_empty() || urc.starts_with(b"\r\n+C"));
                match item {
                    Assembled::Line(l) => {
                        prop_assert!(!l.is_empty() && l.len() <= MAX_LINE);
                        prop_assert!(!l.contains(&b'\r') && !l.contains(&b'\n'));
                        let echo = modem.echo();
                        let mut out = Vec::new();
                        let outcome = modem.command(l, net, &mut out);
                        let blank = l.iter().all(|b| matches!(b, b' ' | b'\t'));
                        if blank {
                            prop_assert!(out.is_empty());
                            continue;
                        }
                        if echo {
                            prop_assert!(out.starts_with(l));
                        }
                        prop_assert!(ends_with_final(&out, outcome), "{:?} {:?}", outcome, String::from_utf8_lossy(&out));
                    }
                    Assembled::Overflow => {}
                }
            }
        }
    }
}
