//! Broker security settings of a scenario: `[broker.tls]` (trust, server name, per-device client
//! certificates, ALPN) and `[broker.auth]` (per-device user names and passwords from templates
//! or a CSV file), and `Secret`, the type that keeps passwords out of logs and reports.
//!
//! Raw serde structs validate into trusted types with a `Checker` (every problem collected).
//! Paths inside the scenario are relative to the scenario file's folder (`base_dir`). Nothing
//! here opens a socket; the credentials file is read through a `FileSource`.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Checker, ConfigError, ConfigErrors};
use crate::load::{FileSource, normalize};
use crate::template::{Template, TemplateVars, Var};

/// Placeholders of per-device templates (paths, user names, passwords): the same as topics.
const DEVICE_VARS: &[Var] = &[
    Var::Id,
    Var::Index,
    Var::Cohort,
    Var::Profile,
    Var::DeviceId,
];

/// The most problems reported for one credentials file before giving up on it.
pub const MAX_CSV_ERRORS: usize = 20;

/// How many missing devices `Credentials::check_devices` names before counting the rest.
const MISSING_NAMED: usize = 5;

// ---------------------------------------------------------------------------------------------
// Secret

/// A password, token or key: `Debug` and `Display` print `***`, it is not `Serialize`, and
/// `expose()` is the one way to its bytes, so it cannot reach a log line, the dashboard, the
/// event log or the report by accident.
#[derive(Clone)]
pub struct Secret(Box<[u8]>);

impl Secret {
    pub fn new(bytes: impl Into<Box<[u8]>>) -> Secret {
        Secret(bytes.into())
    }

    /// The secret's bytes: for the wire (CONNECT) only.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Secret {
        Secret(s.as_bytes().into())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

const SECRET_NOT_A_STRING: &str = "must be a string (the value is a secret and is not shown)";

/// Deserializes from a string only; the error for any other type does not echo the value.
impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(SECRET_NOT_A_STRING)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret::from(v))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Secret, E> {
                Err(E::custom(SECRET_NOT_A_STRING))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Secret, E> {
                Err(E::custom(SECRET_NOT_A_STRING))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Secret, E> {
                Err(E::custom(SECRET_NOT_A_STRING))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Secret, E> {
                Err(E::custom(SECRET_NOT_A_STRING))
            }
        }
        d.deserialize_str(V)
    }
}

/// A template whose rendering is a secret (a password template): `Debug` prints `***`.
#[derive(Clone)]
pub struct SecretTemplate(Template);

impl SecretTemplate {
    pub fn render(&self, vars: &TemplateVars) -> Secret {
        let mut out = Vec::new();
        self.0.render_into(vars, &mut out);
        Secret::new(out)
    }
}

impl fmt::Debug for SecretTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

// ---------------------------------------------------------------------------------------------
// Paths

/// A path named in the scenario: absolute as written, else under `base_dir` (the scenario's
/// folder), resolved like `load::relative_to` resolves profile paths.
pub fn resolve_path(base_dir: &Path, named: &str) -> PathBuf {
    let p = Path::new(named);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        normalize(&base_dir.join(p))
    }
}

fn template(c: &mut Checker, key: &str, text: &str) -> Option<Template> {
    if text.is_empty() {
        c.fail(key, "\"\"", "must not be empty");
        return None;
    }
    match Template::parse(text, DEVICE_VARS) {
        Ok(t) => Some(t),
        Err(e) => {
            c.fail(key, format!("{text:?}"), e);
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------
// [broker.tls]

/// `[broker.tls]` as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerTlsRaw {
    /// PEM file of the CA certificate(s) that sign the broker's certificate. Default: the
    /// system's trust store.
    pub ca_file: Option<String>,
    /// The name the broker's certificate must carry (and SNI). Default: the URL's host.
    pub server_name: Option<String>,
    /// Accept any broker certificate (logged loudly). For test brokers only.
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// Per-device client certificate chain (PEM), a path template: "certs/devices/{device_id}.pem".
    pub client_cert: Option<String>,
    /// Per-device private key (PEM: PKCS#8, PKCS#1 or SEC1), a path template.
    pub client_key: Option<String>,
    /// ALPN protocols offered, in order of preference (e.g. ["mqtt"] for AWS IoT on 443).
    #[serde(default)]
    pub alpn: Vec<String>,
}

/// `[broker.tls]` validated.
#[derive(Clone, Debug)]
pub struct BrokerTls {
    /// CA certificates that sign the broker's certificate; None: the system's trust store.
    pub ca_file: Option<PathBuf>,
    /// Overrides the URL's host as the name checked in the broker's certificate and sent as SNI.
    pub server_name: Option<String>,
    pub insecure_skip_verify: bool,
    /// Per-device client certificate and key.
    pub client_cert: Option<ClientCertTemplates>,
    pub alpn: Vec<Vec<u8>>,
}

/// The path templates of a device's client certificate and key.
#[derive(Clone, Debug)]
pub struct ClientCertTemplates {
    cert: Template,
    key: Template,
    base_dir: PathBuf,
}

impl ClientCertTemplates {
    /// The certificate and key paths of one device.
    pub fn paths(&self, vars: &TemplateVars) -> (PathBuf, PathBuf) {
        (
            resolve_path(&self.base_dir, &self.cert.render(vars)),
            resolve_path(&self.base_dir, &self.key.render(vars)),
        )
    }

    /// True when devices have certificates of their own (the templates use a placeholder).
    pub fn is_per_device(&self) -> bool {
        DEVICE_VARS
            .iter()
            .any(|v| self.cert.uses(*v) || self.key.uses(*v))
    }
}

impl BrokerTlsRaw {
    /// Validates the table found at `key` (e.g. "broker.tls"); paths are resolved against
    /// `base_dir`, the scenario file's folder. Problems go to `c`.
    pub fn validate(&self, c: &mut Checker, key: &str, base_dir: &Path) -> BrokerTls {
        let ca_file = self.ca_file.as_deref().and_then(|f| {
            if f.is_empty() {
                c.fail(&format!("{key}.ca_file"), "\"\"", "must not be empty");
                None
            } else {
                Some(resolve_path(base_dir, f))
            }
        });
        if self.insecure_skip_verify && self.ca_file.is_some() {
            c.fail(
                &format!("{key}.insecure_skip_verify"),
                "true",
                "skips verification, so ca_file would be unused: remove one of them",
            );
        }
        if let Some(name) = &self.server_name
            && !is_server_name(name)
        {
            c.fail(
                &format!("{key}.server_name"),
                format!("{name:?}"),
                "must be a DNS name (broker.example.com) or an IP address",
            );
        }
        let client_cert = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(k)) => {
                let cert = template(c, &format!("{key}.client_cert"), cert);
                let k = template(c, &format!("{key}.client_key"), k);
                match (cert, k) {
                    (Some(cert), Some(key)) => Some(ClientCertTemplates {
                        cert,
                        key,
                        base_dir: base_dir.to_path_buf(),
                    }),
                    _ => None,
                }
            }
            (Some(_), None) => {
                c.fail_key(
                    &format!("{key}.client_key"),
                    "is needed with client_cert (the private key of the certificate)",
                );
                None
            }
            (None, Some(_)) => {
                c.fail_key(
                    &format!("{key}.client_cert"),
                    "is needed with client_key (the certificate of the key)",
                );
                None
            }
            (None, None) => None,
        };
        let mut alpn = Vec::new();
        for (i, p) in self.alpn.iter().enumerate() {
            if p.is_empty() || p.len() > 255 {
                c.fail(
                    &format!("{key}.alpn[{i}]"),
                    format!("{p:?}"),
                    "must be 1 to 255 bytes long",
                );
            } else {
                alpn.push(p.as_bytes().to_vec());
            }
        }
        BrokerTls {
            ca_file,
            server_name: self.server_name.clone(),
            insecure_skip_verify: self.insecure_skip_verify,
            client_cert,
            alpn,
        }
    }
}

/// A DNS name or an IP address (the TLS library checks the finer rules).
fn is_server_name(name: &str) -> bool {
    if name.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

// ---------------------------------------------------------------------------------------------
// [broker.auth]

/// `[broker.auth]` as written. `Debug` shows no password.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerAuthRaw {
    /// User name template: "{device_id}".
    pub username: Option<String>,
    /// Password or token template: "s3cret-{device_id}".
    pub password: Option<Secret>,
    /// CSV file with a line per device: `device_id,username,password` (either of the last two
    /// columns may be left out and come from a template instead).
    pub credentials_file: Option<String>,
}

/// `[broker.auth]` validated; `load` reads the credentials file into `Credentials`.
#[derive(Clone, Debug)]
pub struct BrokerAuth {
    pub username: Option<Template>,
    pub password: Option<SecretTemplate>,
    pub credentials_file: Option<CredentialsFileRef>,
}

/// The credentials file as named in the scenario and as resolved.
#[derive(Clone, Debug)]
pub struct CredentialsFileRef {
    pub named: String,
    pub path: PathBuf,
}

impl BrokerAuthRaw {
    /// Validates the table found at `key` (e.g. "broker.auth"); `base_dir` is the scenario
    /// file's folder. Problems go to `c`; none of them shows a password.
    pub fn validate(&self, c: &mut Checker, key: &str, base_dir: &Path) -> BrokerAuth {
        let username = self
            .username
            .as_deref()
            .and_then(|u| template(c, &format!("{key}.username"), u));
        let password = self.password.as_ref().and_then(|p| {
            let k = format!("{key}.password");
            let Ok(text) = std::str::from_utf8(p.expose()) else {
                c.fail_key(&k, "must be UTF-8 text");
                return None;
            };
            match Template::parse(text, DEVICE_VARS) {
                Ok(t) => Some(SecretTemplate(t)),
                Err(_) => {
                    c.fail_key(
                        &k,
                        "is not a valid template: a `{...}` must be one of {id}, {id:06}, {index}, \
                         {cohort}, {profile}, {device_id}; write `{{` and `}}` for literal braces \
                         (the value is a secret and is not shown)",
                    );
                    None
                }
            }
        });
        let credentials_file = self.credentials_file.as_deref().and_then(|f| {
            if f.is_empty() {
                c.fail(
                    &format!("{key}.credentials_file"),
                    "\"\"",
                    "must not be empty",
                );
                return None;
            }
            Some(CredentialsFileRef {
                named: f.to_string(),
                path: resolve_path(base_dir, f),
            })
        });
        if self.credentials_file.is_none() {
            if self.username.is_none() && self.password.is_none() {
                c.fail_key(
                    key,
                    "needs username (and password) templates or a credentials_file; remove [broker.auth] to connect without",
                );
            } else if self.username.is_none() {
                c.fail_key(
                    &format!("{key}.username"),
                    "is needed with password (MQTT sends a password only with a user name)",
                );
            }
        } else if self.username.is_some() && self.password.is_some() {
            c.fail_key(
                &format!("{key}.credentials_file"),
                "would be unused: username and password both come from templates; remove one of them",
            );
        }
        BrokerAuth {
            username,
            password,
            credentials_file,
        }
    }
}

impl BrokerAuth {
    /// Reads the credentials file (if any) and returns the lookup. `scenario_file` and `key`
    /// (e.g. "broker.auth") name where the file was given, for the error when it cannot be
    /// read; problems inside the file name the file and the line.
    pub fn load(
        &self,
        source: &dyn FileSource,
        scenario_file: &str,
        key: &str,
    ) -> Result<Credentials, ConfigErrors> {
        let table = match &self.credentials_file {
            None => None,
            Some(f) => {
                let text = source.read(&f.path).map_err(|e| {
                    ConfigError::new(
                        scenario_file,
                        format!("{key}.credentials_file"),
                        format!("{:?}", f.named),
                        format!("names {}: {e}", f.path.display()),
                    )
                })?;
                Some(parse_credentials(
                    &f.path.display().to_string(),
                    &text,
                    key,
                    self.username.is_some(),
                    self.password.is_some(),
                )?)
            }
        };
        Ok(Credentials {
            username: self.username.clone(),
            password: self.password.clone(),
            table,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Credentials

/// A device's MQTT login. `Debug` shows the user name, never the password.
#[derive(Clone, Debug)]
pub struct Login {
    pub username: Vec<u8>,
    pub password: Option<Secret>,
}

/// Per-device user names and passwords: templates, a credentials file loaded once into a map,
/// or both (each field from one of them).
#[derive(Clone, Debug)]
pub struct Credentials {
    username: Option<Template>,
    password: Option<SecretTemplate>,
    table: Option<CredentialTable>,
}

#[derive(Clone, Debug)]
struct CredentialTable {
    file: String,
    has_username: bool,
    has_password: bool,
    rows: HashMap<Box<[u8]>, Row>,
}

#[derive(Clone, Debug)]
struct Row {
    username: Box<[u8]>,
    password: Option<Secret>,
}

impl Credentials {
    /// The login of the device whose template values (with its rendered id) are `vars`. The
    /// error (a device missing from the credentials file) names the device and the file.
    pub fn lookup(&self, vars: &TemplateVars) -> Result<Login, String> {
        let row = match &self.table {
            None => None,
            Some(t) => Some(t.rows.get(vars.device_id).ok_or_else(|| {
                format!(
                    "device {:?} has no line in the credentials file {}",
                    String::from_utf8_lossy(vars.device_id),
                    t.file
                )
            })?),
        };
        let username = match (&self.username, row) {
            (Some(t), _) => {
                let mut out = Vec::new();
                t.render_into(vars, &mut out);
                out
            }
            (None, Some(r)) => r.username.to_vec(),
            (None, None) => Vec::new(),
        };
        let password = match (&self.password, row) {
            (Some(t), _) => Some(t.render(vars)),
            (None, Some(r)) => r.password.clone(),
            (None, None) => None,
        };
        Ok(Login { username, password })
    }

    /// Checks that the credentials file has a line for every device id given (when the fleet
    /// is known at load time). The error names the file, the first few missing ids and how
    /// many are missing.
    pub fn check_devices<'a>(
        &self,
        device_ids: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<(), ConfigError> {
        let Some(t) = &self.table else {
            return Ok(());
        };
        let mut missing = 0usize;
        let mut named = Vec::new();
        for id in device_ids {
            if !t.rows.contains_key(id) {
                missing += 1;
                if named.len() < MISSING_NAMED {
                    named.push(format!("{:?}", String::from_utf8_lossy(id)));
                }
            }
        }
        if missing == 0 {
            return Ok(());
        }
        let more = if missing > named.len() {
            format!(" and {} more", missing - named.len())
        } else {
            String::new()
        };
        Err(ConfigError::without_value(
            &t.file,
            "",
            format!(
                "has no line for device{} {}{more}: every device needs a line `device_id,{}`",
                if missing == 1 { "" } else { "s" },
                named.join(", "),
                columns(t.has_username, t.has_password),
            ),
        ))
    }
}

fn columns(username: bool, password: bool) -> &'static str {
    match (username, password) {
        (true, true) => "username,password",
        (true, false) => "username",
        (false, true) => "password",
        (false, false) => "",
    }
}

/// Parses a credentials CSV: a header naming `device_id` and `username` and/or `password`,
/// then one line per device; blank lines and lines starting with `#` are skipped; fields may
/// be quoted ("a,b" and "say ""hi""") but not span lines.
fn parse_credentials(
    file: &str,
    text: &str,
    key: &str,
    username_template: bool,
    password_template: bool,
) -> Result<CredentialTable, ConfigErrors> {
    let mut errors = ConfigErrors::default();
    let mut fail = |line: usize, message: String| {
        errors.push(ConfigError::without_value(
            file,
            format!("line {line}"),
            message,
        ));
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text
        .split('\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l)))
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
    let Some((header_line, header)) = lines.next() else {
        fail(
            1,
            "is empty: the first line must be the header `device_id,username,password`".into(),
        );
        return Err(errors);
    };
    let (id_col, user_col, pass_col, width) = match parse_header(header) {
        Ok(h) => h,
        Err(e) => {
            fail(header_line, e);
            return Err(errors);
        }
    };
    if user_col.is_some() && username_template {
        fail(
            header_line,
            format!("has a username column and {key}.username is a template too: keep one"),
        );
    }
    if pass_col.is_some() && password_template {
        fail(
            header_line,
            format!("has a password column and {key}.password is a template too: keep one"),
        );
    }
    if user_col.is_none() && !username_template {
        fail(
            header_line,
            format!(
                "has no username column and {key}.username is not set: devices need a user name"
            ),
        );
    }
    let mut rows: HashMap<Box<[u8]>, Row> = HashMap::new();
    let mut first_line: HashMap<Box<[u8]>, usize> = HashMap::new();
    let mut problems = 0usize;
    for (n, line) in lines {
        if problems >= MAX_CSV_ERRORS {
            fail(n, format!("stopped after {MAX_CSV_ERRORS} problems"));
            break;
        }
        let fields = match split_csv_line(line) {
            Ok(f) => f,
            Err(e) => {
                problems += 1;
                fail(n, e.to_string());
                continue;
            }
        };
        if fields.len() != width {
            problems += 1;
            fail(
                n,
                format!(
                    "has {} field{}, the header {width}",
                    fields.len(),
                    if fields.len() == 1 { "" } else { "s" }
                ),
            );
            continue;
        }
        let mut fields: Vec<Option<String>> = fields.into_iter().map(Some).collect();
        let mut take = |col: Option<usize>| col.and_then(|c| fields.get_mut(c)?.take());
        let id = take(Some(id_col)).unwrap_or_default();
        let username = take(user_col);
        let password = take(pass_col);
        if id.is_empty() {
            problems += 1;
            fail(n, "device_id is empty".into());
            continue;
        }
        if username.as_deref() == Some("") {
            problems += 1;
            fail(n, format!("username of {id:?} is empty"));
            continue;
        }
        let id: Box<[u8]> = id.into_bytes().into();
        if let Some(first) = first_line.get(&id) {
            problems += 1;
            fail(
                n,
                format!(
                    "device {:?} is already on line {first}",
                    String::from_utf8_lossy(&id)
                ),
            );
            continue;
        }
        first_line.insert(id.clone(), n);
        rows.insert(
            id,
            Row {
                username: username.unwrap_or_default().into_bytes().into(),
                password: password
                    .filter(|p| !p.is_empty())
                    .map(|p| Secret::from(p.as_str())),
            },
        );
    }
    errors.into_result(CredentialTable {
        file: file.to_string(),
        has_username: user_col.is_some(),
        has_password: pass_col.is_some(),
        rows,
    })
}

type Header = (usize, Option<usize>, Option<usize>, usize);

fn parse_header(line: &str) -> Result<Header, String> {
    let names = split_csv_line(line).map_err(|e| format!("header: {e}"))?;
    let (mut id, mut user, mut pass) = (None, None, None);
    for (i, name) in names.iter().enumerate() {
        let slot = match name.trim() {
            "device_id" => &mut id,
            "username" => &mut user,
            "password" => &mut pass,
            other => {
                return Err(format!(
                    "header: unknown column {other:?} (columns: device_id, username, password)"
                ));
            }
        };
        if slot.is_some() {
            return Err(format!("header: column {:?} appears twice", name.trim()));
        }
        *slot = Some(i);
    }
    let id = id.ok_or("header: needs a device_id column (device_id,username,password)")?;
    if user.is_none() && pass.is_none() {
        return Err("header: needs a username and/or a password column".into());
    }
    Ok((id, user, pass, names.len()))
}

/// Splits one CSV line into fields. Quoted fields may hold commas and doubled quotes.
/// Errors do not quote the line (it may hold a password).
fn split_csv_line(line: &str) -> Result<Vec<String>, &'static str> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => return Err("a quoted field is not closed (fields cannot span lines)"),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(_) => return Err("text after the closing quote of a field"),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => {
                        fields.push(field);
                        break;
                    }
                    Some('"') => {
                        return Err(
                            "a quote inside an unquoted field (quote the whole field and double the quote)",
                        );
                    }
                    Some(c) => field.push(c),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::parse_toml;

    struct Files(Vec<(&'static str, String)>);

    impl FileSource for Files {
        fn read(&self, path: &Path) -> Result<String, String> {
            self.0
                .iter()
                .find(|(p, _)| Path::new(p) == path)
                .map(|(_, t)| t.clone())
                .ok_or_else(|| "cannot read: No such file or directory".to_string())
        }
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Broker {
        tls: Option<BrokerTlsRaw>,
        auth: Option<BrokerAuthRaw>,
    }

    fn broker(toml: &str) -> Broker {
        parse_toml("s.toml", toml).unwrap()
    }

    fn tls(toml: &str) -> Result<BrokerTls, ConfigErrors> {
        let raw = broker(toml).tls.unwrap();
        let mut c = Checker::new("s.toml");
        let t = raw.validate(&mut c, "broker.tls", Path::new("/scen"));
        c.errors.into_result(t)
    }

    fn auth(toml: &str) -> Result<BrokerAuth, ConfigErrors> {
        let raw = broker(toml).auth.unwrap();
        let mut c = Checker::new("s.toml");
        let a = raw.validate(&mut c, "broker.auth", Path::new("/scen"));
        c.errors.into_result(a)
    }

    fn credentials(toml: &str, csv: &str) -> Result<Credentials, ConfigErrors> {
        let files = Files(vec![("/scen/creds.csv", csv.to_string())]);
        auth(toml)?.load(&files, "s.toml", "broker.auth")
    }

    fn vars(device_id: &[u8]) -> TemplateVars<'_> {
        TemplateVars {
            id: 42,
            index: 2,
            cohort: "meters",
            profile: "smart-meter",
            device_id,
            gateway: &[],
            gateway_index: 0,
        }
    }

    #[test]
    fn a_secret_prints_as_stars_everywhere() {
        let s = Secret::from("hunter2");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(s.expose(), b"hunter2");
        let login = Login {
            username: b"dev".to_vec(),
            password: Some(s),
        };
        assert!(!format!("{login:?}").contains("hunter2"));
        let raw = broker("[auth]\nusername = \"u\"\npassword = \"hunter2\"\n");
        assert!(!format!("{raw:?}").contains("hunter2"), "{raw:?}");
        let a = auth("[auth]\nusername = \"u\"\npassword = \"p-{device_id}-hunter2\"\n").unwrap();
        assert!(!format!("{a:?}").contains("hunter2"), "{a:?}");
    }

    #[test]
    fn a_password_of_the_wrong_type_is_refused_without_echoing_it() {
        let e = parse_toml::<Broker>("s.toml", "[auth]\nusername = \"u\"\npassword = 987654\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("auth.password"), "{e}");
        assert!(e.contains("must be a string"), "{e}");
        assert!(!e.contains("987654"), "{e}");
    }

    #[test]
    fn tls_paths_are_relative_to_the_scenario_and_rendered_per_device() {
        let t = tls(r#"
            [tls]
            ca_file = "certs/ca.pem"
            server_name = "broker.example.com"
            client_cert = "certs/devices/{device_id}.pem"
            client_key = "/keys/{cohort}/{id:06}.key"
            alpn = ["mqtt"]
        "#)
        .unwrap();
        assert_eq!(t.ca_file.as_deref(), Some(Path::new("/scen/certs/ca.pem")));
        assert_eq!(t.server_name.as_deref(), Some("broker.example.com"));
        assert_eq!(t.alpn, vec![b"mqtt".to_vec()]);
        let certs = t.client_cert.unwrap();
        assert!(certs.is_per_device());
        let (cert, key) = certs.paths(&vars(b"meter-000042"));
        assert_eq!(cert, Path::new("/scen/certs/devices/meter-000042.pem"));
        assert_eq!(key, Path::new("/keys/meters/000042.key"));
    }

    #[test]
    fn tls_defaults_verify_with_the_system_roots_and_the_url_host() {
        let t = tls("[tls]\n").unwrap();
        assert!(t.ca_file.is_none() && !t.insecure_skip_verify && t.client_cert.is_none());
        assert_eq!(t.server_name, None, "the URL's host is checked");
    }

    #[test]
    fn tls_mistakes_name_the_key_and_the_value() {
        let e = tls(r#"
            [tls]
            ca_file = "ca.pem"
            insecure_skip_verify = true
            server_name = "not a name"
            client_cert = "certs/{serial}.pem"
            alpn = [""]
        "#)
        .unwrap_err()
        .to_string();
        for part in [
            "s.toml: broker.tls.insecure_skip_verify = true: skips verification",
            "broker.tls.server_name = \"not a name\": must be a DNS name",
            "broker.tls.client_key: is needed with client_cert",
            "broker.tls.alpn[0] = \"\": must be 1 to 255 bytes long",
        ] {
            assert!(e.contains(part), "{part} in {e}");
        }
        let e = tls("[tls]\nclient_cert = \"{serial}.pem\"\nclient_key = \"k\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("broker.tls.client_cert = \"{serial}.pem\": unknown placeholder"),
            "{e}"
        );
        let e = parse_toml::<Broker>("s.toml", "[tls]\ncafile = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cafile"), "{e}");
    }

    #[test]
    fn templates_give_each_device_its_login() {
        let c = credentials(
            "[auth]\nusername = \"{device_id}\"\npassword = \"s3cret-{id}\"\n",
            "",
        )
        .unwrap();
        let login = c.lookup(&vars(b"meter-000042")).unwrap();
        assert_eq!(login.username, b"meter-000042");
        assert_eq!(login.password.unwrap().expose(), b"s3cret-42");
        assert!(c.check_devices([b"anything".as_slice()]).is_ok());
    }

    #[test]
    fn auth_mistakes_say_what_is_missing_and_never_show_the_password() {
        let e = auth("[auth]\n").unwrap_err().to_string();
        assert!(e.contains("s.toml: broker.auth: needs username"), "{e}");
        let e = auth("[auth]\npassword = \"x\"\n").unwrap_err().to_string();
        assert!(
            e.contains("broker.auth.username: is needed with password"),
            "{e}"
        );
        let e = auth("[auth]\nusername = \"u\"\npassword = \"pw{oops-hunter2\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("broker.auth.password: is not a valid template"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
        let e =
            auth("[auth]\nusername = \"u\"\npassword = \"p\"\ncredentials_file = \"creds.csv\"\n")
                .unwrap_err()
                .to_string();
        assert!(e.contains("credentials_file: would be unused"), "{e}");
    }

    const CSV: &str = "\u{feff}# fleet credentials\r\n\
        device_id,username,password\r\n\
        \r\n\
        meter-000001,alice,plain\r\n\
        \"meter-000002\",\"bob, the second\",\"p,w\"\"d\"\n\
        # a comment between lines\n\
        meter-000003,carol,\n";

    #[test]
    fn a_credentials_file_is_read_once_with_quotes_comments_and_blank_lines() {
        let c = credentials("[auth]\ncredentials_file = \"creds.csv\"\n", CSV).unwrap();
        let l = c.lookup(&vars(b"meter-000002")).unwrap();
        assert_eq!(l.username, b"bob, the second");
        assert_eq!(l.password.unwrap().expose(), b"p,w\"d");
        let l = c.lookup(&vars(b"meter-000001")).unwrap();
        assert_eq!(
            (l.username.as_slice(), l.password.unwrap().expose()),
            (b"alice".as_slice(), b"plain".as_slice())
        );
        let l = c.lookup(&vars(b"meter-000003")).unwrap();
        assert!(
            l.password.is_none(),
            "an empty password field is no password"
        );
    }

    #[test]
    fn a_device_missing_from_the_file_is_named_with_the_file() {
        let c = credentials("[auth]\ncredentials_file = \"creds.csv\"\n", CSV).unwrap();
        let e = c.lookup(&vars(b"meter-000009")).unwrap_err();
        assert_eq!(
            e,
            "device \"meter-000009\" has no line in the credentials file /scen/creds.csv"
        );
        let ids: Vec<Vec<u8>> = (1..=9).map(|i| format!("meter-00000{i}").into()).collect();
        let e = c
            .check_devices(ids.iter().map(|i| i.as_slice()))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/scen/creds.csv: has no line for devices \"meter-000004\""),
            "{e}"
        );
        assert!(e.contains("and 1 more"), "{e}");
        assert!(
            c.check_devices(ids[..3].iter().map(|i| i.as_slice()))
                .is_ok()
        );
    }

    #[test]
    fn a_column_may_come_from_a_template_instead() {
        let c = credentials(
            "[auth]\nusername = \"{device_id}\"\ncredentials_file = \"creds.csv\"\n",
            "device_id,password\nmeter-000042,tok-abc\n",
        )
        .unwrap();
        let l = c.lookup(&vars(b"meter-000042")).unwrap();
        assert_eq!(l.username, b"meter-000042");
        assert_eq!(l.password.unwrap().expose(), b"tok-abc");
        let e = credentials(
            "[auth]\nusername = \"{device_id}\"\ncredentials_file = \"creds.csv\"\n",
            "device_id,username\nm,u\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("/scen/creds.csv: line 1: has a username column and broker.auth.username is a template too"),
            "{e}"
        );
        let e = credentials(
            "[auth]\ncredentials_file = \"creds.csv\"\n",
            "device_id,password\nm,p\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("has no username column"), "{e}");
    }

    #[test]
    fn credentials_file_problems_name_the_file_and_the_line_but_not_the_secret() {
        let e = credentials(
            "[auth]\ncredentials_file = \"creds.csv\"\n",
            "device_id,username,password\n\
             a,u,hunter2,extra\n\
             b,u,\"hunter2\n\
             c,u,hun\"ter2\n\
             ,u,p\n\
             d,,p\n\
             e,u,p\n\
             e,u2,p2\n",
        )
        .unwrap_err()
        .to_string();
        for part in [
            "/scen/creds.csv: line 2: has 4 fields, the header 3",
            "/scen/creds.csv: line 3: a quoted field is not closed",
            "/scen/creds.csv: line 4: a quote inside an unquoted field",
            "/scen/creds.csv: line 5: device_id is empty",
            "/scen/creds.csv: line 6: username of \"d\" is empty",
            "/scen/creds.csv: line 8: device \"e\" is already on line 7",
        ] {
            assert!(e.contains(part), "{part} in {e}");
        }
        assert!(!e.contains("hunter2"), "{e}");
        let e = credentials("[auth]\ncredentials_file = \"creds.csv\"\n", "id,user\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1: header: unknown column \"id\""), "{e}");
        let e = credentials("[auth]\ncredentials_file = \"creds.csv\"\n", "# only\n\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("is empty: the first line must be the header"),
            "{e}"
        );
        let e = auth("[auth]\ncredentials_file = \"nope.csv\"\n")
            .unwrap()
            .load(&Files(vec![]), "s.toml", "broker.auth")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("s.toml: broker.auth.credentials_file = \"nope.csv\": names /scen/nope.csv: cannot read"),
            "{e}"
        );
    }

    #[test]
    fn a_broken_file_stops_after_a_bounded_number_of_problems() {
        let mut csv = String::from("device_id,username,password\n");
        for _ in 0..100 {
            csv.push_str("x\n");
        }
        let e = credentials("[auth]\ncredentials_file = \"creds.csv\"\n", &csv).unwrap_err();
        assert_eq!(e.len(), MAX_CSV_ERRORS + 1);
        assert!(e.to_string().contains("stopped after 20 problems"));
    }
}
