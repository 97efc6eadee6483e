//! `fleetsim certs`: a test CA, a broker certificate and one per device of a cohort, checked
//! with rustls' own verifiers (the chain to ca.pem, the names, client/server use).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fleetsim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fleetsim"))
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .output()
        .expect("fleetsim runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A scenario in `dir` with two cohorts of shipped profiles: sensors (ids env-000000..2) and
/// gateways (gw-000003..6, numbered after the sensors).
fn scenario(dir: &Path) -> PathBuf {
    let profiles = root().join("device-profiles");
    let text = format!(
        "name = \"tls\"\nduration = \"10s\"\n\
         [[cohorts]]\nname = \"sensors\"\nprofile = \"{p}/env-sensor.toml\"\ncount = 3\n\
         [[cohorts]]\nname = \"gateways\"\nprofile = \"{p}/industrial-gateway.toml\"\ncount = 4\n",
        p = profiles.display()
    );
    let path = dir.join("scenario.toml");
    std::fs::write(&path, text).expect("scenario written");
    path
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &Path) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("ca.pem") {
        roots.add(c.expect("a certificate")).expect("a CA");
    }
    Arc::new(roots)
}

fn chain(cert: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(cert)
        .expect("cert file")
        .collect::<Result<_, _>>()
        .expect("PEM")
}

/// The device certificate chains to ca.pem for client authentication, and the key is its key.
fn verify_device(ca: &Path, cert: &Path, key: &Path) -> Result<(), rustls::Error> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca), provider())
        .build()
        .expect("verifier");
    let chain = chain(cert);
    verifier.verify_client_cert(&chain[0], &chain[1..], UnixTime::now())?;
    let key = PrivateKeyDer::from_pem_file(key).expect("key");
    CertifiedKey::from_der(chain, key, &provider()).map(|_| ())
}

fn verify_server(ca: &Path, cert: &Path, name: &str) -> Result<(), rustls::Error> {
    let verifier = WebPkiServerVerifier::builder_with_provider(roots(ca), provider())
        .build()
        .expect("verifier");
    let chain = chain(cert);
    let name = ServerName::try_from(name.to_string()).expect("name");
    verifier
        .verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now())
        .map(|_| ())
}

/// The certificate's subject carries `cn` as a UTF8String.
fn has_common_name(cert: &Path, cn: &str) -> bool {
    let der = chain(cert).remove(0);
    let mut needle = vec![0x0c, cn.len() as u8];
    needle.extend_from_slice(cn.as_bytes());
    der.windows(needle.len()).any(|w| w == needle.as_slice())
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .expect("exists")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn certificates_for_a_cohort_chain_to_the_ca_and_name_each_device() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = scenario(dir.path());
    let out = dir.path().join("certs");
    let o = fleetsim(&[
        "certs",
        s.to_str().expect("utf-8"),
        "--cohort",
        "gateways",
        "--out",
        out.to_str().expect("utf-8"),
        "--devices",
        "2",
        "--server-name",
        "broker.test",
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    for part in [
        "[broker.tls]",
        "ca_file = \"certs/ca.pem\"",
        "client_cert = \"certs/devices/{device_id}.pem\"",
        "client_key = \"certs/devices/{device_id}.key\"",
        "listener 8883",
        "require_certificate true",
        "use_identity_as_username true",
        "gw-000003, gw-000004",
    ] {
        assert!(t.contains(part), "{part:?} in:\n{t}");
    }
    let ca = out.join("ca.pem");
    for id in ["gw-000003", "gw-000004"] {
        let (cert, key) = (
            out.join(format!("devices/{id}.pem")),
            out.join(format!("devices/{id}.key")),
        );
        verify_device(&ca, &cert, &key).expect("the device certificate verifies");
        assert!(has_common_name(&cert, id), "CN = {id}");
        #[cfg(unix)]
        assert_eq!(mode(&key), 0o600, "{id}.key is private");
    }
    assert!(
        !out.join("devices/gw-000005.pem").exists(),
        "only the first 2"
    );
    assert!(
        !out.join("devices/env-000000.pem").exists(),
        "only the cohort"
    );

    let server = out.join("server.pem");
    for name in ["localhost", "127.0.0.1", "::1", "broker.test"] {
        verify_server(&ca, &server, name).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    assert!(verify_server(&ca, &server, "elsewhere.test").is_err());
    // A device certificate is not a server certificate, nor the other way round.
    assert!(verify_server(&ca, &out.join("devices/gw-000003.pem"), "localhost").is_err());
    assert!(verify_device(&ca, &server, &out.join("server.key")).is_err());
    #[cfg(unix)]
    {
        assert_eq!(mode(&out.join("ca.key")), 0o600);
        assert_eq!(mode(&out.join("server.key")), 0o600);
    }
}

#[test]
fn running_again_reuses_the_ca_so_devices_can_be_added() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = scenario(dir.path());
    let out = dir.path().join("pki");
    let args = |n: &str| {
        fleetsim(&[
            "certs",
            s.to_str().expect("utf-8"),
            "--cohort",
            "sensors",
            "--out",
            out.to_str().expect("utf-8"),
            "--devices",
            n,
            "--days",
            "30",
        ])
    };
    let first = args("1");
    assert!(first.status.success(), "{}", text(&first));
    assert!(text(&first).contains("(new"), "{}", text(&first));
    let ca_before = std::fs::read(out.join("ca.pem")).expect("ca.pem");

    let again = args("3");
    assert!(again.status.success(), "{}", text(&again));
    assert!(text(&again).contains("(reused)"), "{}", text(&again));
    assert_eq!(
        std::fs::read(out.join("ca.pem")).expect("ca.pem"),
        ca_before
    );
    let ca = out.join("ca.pem");
    for id in ["env-000000", "env-000001", "env-000002"] {
        verify_device(
            &ca,
            &out.join(format!("devices/{id}.pem")),
            &out.join(format!("devices/{id}.key")),
        )
        .unwrap_or_else(|e| panic!("{id}: {e}"));
    }

    std::fs::remove_file(out.join("ca.key")).expect("remove");
    let o = args("1");
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("ca.pem is there without"), "{}", text(&o));
}

#[test]
fn mistakes_are_explained_with_a_failing_exit_code() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = scenario(dir.path());
    let s = s.to_str().expect("utf-8");

    let o = fleetsim(&["certs", s, "--cohort", "meters", "--out", "x"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("no such cohort (its cohorts: \"sensors\", \"gateways\")"),
        "{}",
        text(&o)
    );

    let o = fleetsim(&["certs", s, "--cohort", "sensors", "--devices", "9"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("has 3 devices"), "{}", text(&o));

    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, "not a folder").expect("write");
    let inside = blocker.join("certs");
    let o = fleetsim(&[
        "certs",
        s,
        "--cohort",
        "sensors",
        "--out",
        inside.to_str().expect("utf-8"),
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("cannot create"), "{}", text(&o));
    assert!(!text(&o).contains("panicked"), "{}", text(&o));

    let o = fleetsim(&["certs", "no/such/scenario.toml", "--cohort", "x"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("no/such/scenario.toml"), "{}", text(&o));
}
