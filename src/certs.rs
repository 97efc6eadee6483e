//! `fleetsim certs`: a test CA, a certificate for a test broker and one per device of a cohort,
//! for MQTT over TLS with client certificates (docs/security.md).
//!
//! The CA in the folder is reused when present, so certificates can be added later. Device
//! ids are rendered exactly as a run renders them; a device certificate's CN is its id (so
//! mosquitto's `use_identity_as_username true` makes it the user name). Keys are written with
//! mode 0600.

use std::fs;
use std::io::Write as _;
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, anyhow};
use fleet_core::load::{FsSource, load_fleet};
use fleet_core::{Cohort, DeviceId};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

use crate::Failure;
use crate::cli::CertsArgs;

/// Validity of a CA made here, in days (device and broker certificates take `--days`).
const CA_DAYS: i64 = 3650;
/// The most days a certificate may be valid for.
const MAX_DAYS: u32 = 36_500;
/// Names every test broker certificate carries.
const LOCAL_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];
/// Device ids printed as examples.
const IDS_SHOWN: usize = 3;

pub fn run(args: &CertsArgs) -> Result<bool, Failure> {
    let fleet = load_fleet(&FsSource, &args.scenario).map_err(Failure::Config)?;
    let Some(cohort) = fleet.cohorts.iter().find(|c| c.name == args.cohort) else {
        let known: Vec<String> = fleet
            .cohorts
            .iter()
            .map(|c| format!("{:?}", c.name))
            .collect();
        return Err(Failure::Usage(format!(
            "--cohort {:?}: {} has no such cohort (its cohorts: {})",
            args.cohort,
            args.scenario.display(),
            known.join(", ")
        )));
    };
    let count = match args.devices {
        None => cohort.count,
        Some(0) => return Err(Failure::Usage("--devices must be at least 1".into())),
        Some(n) if n > cohort.count => {
            return Err(Failure::Usage(format!(
                "--devices {n}: cohort {:?} has {} devices",
                cohort.name, cohort.count
            )));
        }
        Some(n) => n,
    };
    if args.days == 0 || args.days > MAX_DAYS {
        return Err(Failure::Usage(format!(
            "--days {}: must be 1 to {MAX_DAYS}",
            args.days
        )));
    }
    let ids = device_ids(cohort, count)?;
    let written = write_all(args, &ids).map_err(Failure::Runtime)?;
    // A closed stdout (`| head`) is not an error: the files are written.
    let _ = std::io::stdout()
        .lock()
        .write_all(summary(args, cohort, &ids, &written).as_bytes());
    Ok(true)
}

/// The ids of the cohort's first `count` devices, rendered as the run renders them
/// (`Device::render_device_id`), each checked to be usable as a file name under `devices/`.
fn device_ids(cohort: &Cohort, count: u32) -> Result<Vec<String>, Failure> {
    let mut ids = Vec::with_capacity(count as usize);
    let mut buf = Vec::new();
    for id in cohort.first_device..cohort.first_device + count {
        buf.clear();
        cohort.render_device_id(DeviceId(id), &mut buf);
        let name = String::from_utf8_lossy(&buf).into_owned();
        if !is_relative_file_name(&name) {
            return Err(Failure::Usage(format!(
                "device id {name:?} of cohort {:?} cannot name a file under devices/ \
                 (it must not be empty, start with /, or hold `..`, `.` or empty path parts)",
                cohort.name
            )));
        }
        ids.push(name);
    }
    Ok(ids)
}

fn is_relative_file_name(name: &str) -> bool {
    !name.is_empty()
        && !name.contains('\0')
        && !name.ends_with('/')
        && !name.contains("//")
        && Path::new(name)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

/// What was written, for the summary.
struct Written {
    ca_reused: bool,
    out_abs: PathBuf,
}

fn write_all(args: &CertsArgs, ids: &[String]) -> anyhow::Result<Written> {
    let out = &args.out;
    let devices_dir = out.join("devices");
    fs::create_dir_all(&devices_dir)
        .with_context(|| format!("cannot create {}", devices_dir.display()))?;
    let now = OffsetDateTime::from(SystemTime::now());
    let (ca, ca_reused) = ca(out, now)?;
    let not_after = now + Duration::days(i64::from(args.days));

    let mut names: Vec<String> = LOCAL_NAMES.iter().map(|s| s.to_string()).collect();
    names.extend(args.server_names.iter().cloned());
    let mut server = CertificateParams::new(names)
        .map_err(|e| anyhow!("--server-name: not a DNS name or an IP address ({e})"))?;
    server
        .distinguished_name
        .push(DnType::CommonName, "fleetsim test broker");
    leaf(
        &mut server,
        now,
        not_after,
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    issue(
        &server,
        &ca,
        &out.join("server.pem"),
        &out.join("server.key"),
    )?;

    for id in ids {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, id.as_str());
        params
            .distinguished_name
            .push(DnType::OrganizationName, "fleetsim");
        leaf(
            &mut params,
            now,
            not_after,
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let cert = devices_dir.join(format!("{id}.pem"));
        let key = devices_dir.join(format!("{id}.key"));
        if let Some(parent) = cert.parent() {
            fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        issue(&params, &ca, &cert, &key)?;
    }
    let out_abs = fs::canonicalize(out).with_context(|| format!("{}", out.display()))?;
    Ok(Written { ca_reused, out_abs })
}

/// Settings shared by the broker's and the devices' certificates.
fn leaf(
    p: &mut CertificateParams,
    now: OffsetDateTime,
    not_after: OffsetDateTime,
    eku: ExtendedKeyUsagePurpose,
) {
    // An hour of slack for clocks that run behind.
    p.not_before = now - Duration::hours(1);
    p.not_after = not_after;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![eku];
    p.use_authority_key_identifier_extension = true;
}

fn issue(
    params: &CertificateParams,
    ca: &Issuer<'static, KeyPair>,
    cert_path: &Path,
    key_path: &Path,
) -> anyhow::Result<()> {
    let key = KeyPair::generate().context("cannot generate a key")?;
    let cert = params
        .signed_by(&key, ca)
        .with_context(|| format!("cannot sign {}", cert_path.display()))?;
    write_private(key_path, key.serialize_pem().as_bytes())?;
    fs::write(cert_path, cert.pem())
        .with_context(|| format!("cannot write {}", cert_path.display()))
}

/// The CA of `out`: `ca.pem` and `ca.key` when both are there, else a new one.
fn ca(out: &Path, now: OffsetDateTime) -> anyhow::Result<(Issuer<'static, KeyPair>, bool)> {
    let (pem_path, key_path) = (out.join("ca.pem"), out.join("ca.key"));
    match (pem_path.exists(), key_path.exists()) {
        (true, true) => {
            let key_pem = fs::read_to_string(&key_path)
                .with_context(|| format!("cannot read {}", key_path.display()))?;
            let key = KeyPair::from_pem(&key_pem)
                .map_err(|e| anyhow!("{}: not a private key in PEM ({e})", key_path.display()))?;
            let pem = fs::read_to_string(&pem_path)
                .with_context(|| format!("cannot read {}", pem_path.display()))?;
            let issuer = Issuer::from_ca_cert_pem(&pem, key).map_err(|e| {
                anyhow!("{}: not a CA certificate in PEM ({e})", pem_path.display())
            })?;
            Ok((issuer, true))
        }
        (false, false) => {
            let mut params = CertificateParams::default();
            params.distinguished_name = rcgen::DistinguishedName::new();
            params
                .distinguished_name
                .push(DnType::CommonName, "fleetsim test CA");
            params
                .distinguished_name
                .push(DnType::OrganizationName, "fleetsim");
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            params.not_before = now - Duration::hours(1);
            params.not_after = now + Duration::days(CA_DAYS);
            let key = KeyPair::generate().context("cannot generate a key")?;
            let cert = params.self_signed(&key).context("cannot sign the CA")?;
            write_private(&key_path, key.serialize_pem().as_bytes())?;
            fs::write(&pem_path, cert.pem())
                .with_context(|| format!("cannot write {}", pem_path.display()))?;
            Ok((Issuer::new(params, key), false))
        }
        (true, false) => Err(anyhow!(
            "{} is there without {}: both are needed to sign (remove ca.pem to make a new CA)",
            pem_path.display(),
            key_path.display()
        )),
        (false, true) => Err(anyhow!(
            "{} is there without {}: both are needed to sign (remove ca.key to make a new CA)",
            key_path.display(),
            pem_path.display()
        )),
    }
}

/// Writes a private key readable by its owner only (mode 0600, also when the file existed).
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        options.mode(0o600);
        let mut f = options
            .open(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        f.set_permissions(fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot make {} private", path.display()))?;
        f.write_all(bytes)
            .with_context(|| format!("cannot write {}", path.display()))
    }
    #[cfg(not(unix))]
    {
        let mut f = options
            .open(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        f.write_all(bytes)
            .with_context(|| format!("cannot write {}", path.display()))
    }
}

/// What was written and what to paste where.
fn summary(args: &CertsArgs, cohort: &Cohort, ids: &[String], w: &Written) -> String {
    let mut o = String::new();
    macro_rules! say {
        () => {
            o.push('\n')
        };
        ($($t:tt)*) => {{
            o.push_str(&format!($($t)*));
            o.push('\n');
        }};
    }
    let out = args.out.display();
    let mut shown: Vec<&str> = ids.iter().take(IDS_SHOWN).map(String::as_str).collect();
    if ids.len() > IDS_SHOWN {
        shown.push("…");
        if let Some(last) = ids.last() {
            shown.push(last);
        }
    }
    let mut names: Vec<&str> = LOCAL_NAMES.to_vec();
    names.extend(args.server_names.iter().map(String::as_str));
    say!(
        "fleetsim certs: cohort {:?} of {}, {} device{}",
        cohort.name,
        args.scenario.display(),
        ids.len(),
        if ids.len() == 1 { "" } else { "s" }
    );
    say!(
        "  CA        {out}/ca.pem  {out}/ca.key  ({})",
        if w.ca_reused {
            "reused"
        } else {
            "new, valid 10 years"
        }
    );
    say!(
        "  broker    {out}/server.pem  {out}/server.key  (names: {}; valid {} days)",
        names.join(", "),
        args.days
    );
    say!(
        "  devices   {out}/devices/<device_id>.pem and .key  ({}; CN = device id, client auth; valid {} days)",
        shown.join(", "),
        args.days
    );
    say!("  keys are readable by their owner only (mode 0600)");

    let dir = path_from_scenario(&args.scenario, &w.out_abs);
    let tmpl = escape_template(&dir);
    say!();
    say!(
        "Paste into {} (relative paths are relative to its folder):",
        args.scenario.display()
    );
    say!();
    say!("[broker]");
    say!("url = \"mqtts://localhost:8883\"");
    say!();
    say!("[broker.tls]");
    say!("ca_file = {}", toml_str(&format!("{dir}/ca.pem")));
    say!(
        "client_cert = {}",
        toml_str(&format!("{tmpl}/devices/{{device_id}}.pem"))
    );
    say!(
        "client_key = {}",
        toml_str(&format!("{tmpl}/devices/{{device_id}}.key"))
    );
    let abs = w.out_abs.display();
    say!();
    say!("A mosquitto listener for these certificates (mosquitto.conf):");
    say!();
    say!("listener 8883");
    say!("cafile {abs}/ca.pem");
    say!("certfile {abs}/server.pem");
    say!("keyfile {abs}/server.key");
    say!("require_certificate true");
    say!("use_identity_as_username true");
    say!();
    say!(
        "(mosquitto started as root runs as the user mosquitto, which must be able to read {out}/server.key)"
    );
    o
}

/// `out` as the scenario would name it: relative to the scenario's folder when they share more
/// than the root, else absolute.
fn path_from_scenario(scenario: &Path, out_abs: &Path) -> String {
    let scenario_dir = scenario
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .and_then(|p| fs::canonicalize(p).ok());
    let Some(base) = scenario_dir else {
        return out_abs.display().to_string();
    };
    let a: Vec<Component> = base.components().collect();
    let b: Vec<Component> = out_abs.components().collect();
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    if common <= 1 {
        return out_abs.display().to_string();
    }
    let mut rel = PathBuf::new();
    for _ in common..a.len() {
        rel.push("..");
    }
    for c in &b[common..] {
        rel.push(c.as_os_str());
    }
    if rel.as_os_str().is_empty() {
        ".".into()
    } else {
        rel.display().to_string()
    }
}

/// Braces in a path are literal in a template: `{{` and `}}`.
fn escape_template(s: &str) -> String {
    s.replace('{', "{{").replace('}', "}}")
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_that_would_escape_the_folder_are_refused() {
        for ok in ["meter-000001", "site-a/meter-1", "a.b"] {
            assert!(is_relative_file_name(ok), "{ok}");
        }
        for bad in ["", "/abs", "../up", "a/../b", "a//b", "a/", "./a", "a\0b"] {
            assert!(!is_relative_file_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn paths_in_the_snippet_are_escaped_for_templates_and_toml() {
        assert_eq!(escape_template("c{1}"), "c{{1}}");
        assert_eq!(toml_str("a\\b\"c"), "\"a\\\\b\\\"c\"");
    }
}
