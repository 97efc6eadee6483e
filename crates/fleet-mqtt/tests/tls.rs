//! MQTT over TLS against a tokio-rustls server on 127.0.0.1:0 with a CA and certificates made
//! by rcgen here: trust, names, skipping verification, client certificates, short reasons.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fleet_core::security::BrokerTls;
use fleet_mqtt::tls::{self, TlsConnector, TlsError};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A CA with its certificate in `dir/<name>-ca.pem`.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pem_path: PathBuf,
}

fn ca(dir: &Path, name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("test setup");
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{name} test CA"));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("test setup"))
        .expect("test setup");
    let pem_path = dir.join(format!("{name}-ca.pem"));
    std::fs::write(&pem_path, issuer.pem()).expect("test setup");
    Ca { issuer, pem_path }
}

/// A certificate and key signed by `ca`, written to `dir/<name>.pem` and `.key`.
fn leaf(dir: &Path, ca: &Ca, name: &str, sans: &[&str], client: bool) -> (PathBuf, PathBuf) {
    let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .expect("test setup");
    params.distinguished_name.push(DnType::CommonName, name);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    let key = KeyPair::generate().expect("test setup");
    let cert = params.signed_by(&key, &ca.issuer).expect("test setup");
    let (cert_path, key_path) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert_path, cert.pem()).expect("test setup");
    std::fs::write(&key_path, key.serialize_pem()).expect("test setup");
    (cert_path, key_path)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_config(cert: &Path, key: &Path, client_ca: Option<&Path>, alpn: &[&str]) -> ServerConfig {
    server_config_for(rustls::DEFAULT_VERSIONS, cert, key, client_ca, alpn)
}

fn server_config_for(
    versions: &[&'static rustls::SupportedProtocolVersion],
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
    alpn: &[&str],
) -> ServerConfig {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .expect("test setup")
        .collect::<Result<_, _>>()
        .expect("test setup");
    let key = PrivateKeyDer::from_pem_file(key).expect("test setup");
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("test setup");
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).expect("test setup") {
                roots.add(c.expect("test setup")).expect("test setup");
            }
            builder.with_client_cert_verifier(
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                    .build()
                    .expect("test setup"),
            )
        }
    };
    let mut config = builder.with_single_cert(chain, key).expect("test setup");
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    config
}

/// A TLS server: after each handshake it writes "ok" and waits for the client to close.
async fn tls_server(config: ServerConfig) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("test setup");
    let addr = listener.local_addr().expect("test setup");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let _ = tls.write_all(b"ok").await;
                    let _ = tls.flush().await;
                    let mut buf = [0u8; 16];
                    let _ = tls.read(&mut buf).await;
                }
            });
        }
    });
    addr
}

fn settings(ca_file: Option<&Path>) -> BrokerTls {
    BrokerTls {
        ca_file: ca_file.map(Path::to_path_buf),
        server_name: None,
        insecure_skip_verify: false,
        client_cert: None,
        alpn: Vec::new(),
    }
}

/// Connects, handshakes and reads the server's "ok": an established session.
async fn session(
    connector: &TlsConnector,
    addr: SocketAddr,
    host: &str,
    client_cert: Option<(&Path, &Path)>,
) -> Result<(), TlsError> {
    let tcp = TcpStream::connect(addr).await.expect("test setup");
    let mut tls = connector.connect(tcp, host, client_cert).await?;
    let mut buf = [0u8; 2];
    tls.read_exact(&mut buf)
        .await
        .map_err(|e| tls::classify(&e))?;
    assert_eq!(&buf, b"ok");
    Ok(())
}

struct Pki {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    ca: Ca,
    other: Ca,
    server: (PathBuf, PathBuf),
}

fn pki() -> Pki {
    let tmp = tempfile::tempdir().expect("test setup");
    let dir = tmp.path().to_path_buf();
    let ca = ca(&dir, "fleet");
    let other = ca_other(&dir);
    let server = leaf(&dir, &ca, "broker", &["localhost", "127.0.0.1"], false);
    Pki {
        _dir: tmp,
        dir,
        ca,
        other,
        server,
    }
}

fn ca_other(dir: &Path) -> Ca {
    ca(dir, "other")
}

#[tokio::test]
async fn a_broker_signed_by_the_given_ca_is_trusted() {
    let p = pki();
    let addr = tls_server(server_config(&p.server.0, &p.server.1, None, &[])).await;
    let c = TlsConnector::new(&settings(Some(&p.ca.pem_path))).unwrap();
    session(&c, addr, "localhost", None).await.unwrap();
    session(&c, addr, "127.0.0.1", None).await.unwrap();
}

#[tokio::test]
async fn a_broker_signed_by_another_ca_is_not_trusted() {
    let p = pki();
    let addr = tls_server(server_config(&p.server.0, &p.server.1, None, &[])).await;
    let c = TlsConnector::new(&settings(Some(&p.other.pem_path))).unwrap();
    let e = session(&c, addr, "localhost", None).await.unwrap_err();
    assert_eq!(
        e.reason, "TLS handshake failed: certificate not trusted",
        "{e}"
    );
}

#[tokio::test]
async fn a_name_the_certificate_does_not_carry_is_a_mismatch_unless_overridden() {
    let p = pki();
    let addr = tls_server(server_config(&p.server.0, &p.server.1, None, &[])).await;
    let c = TlsConnector::new(&settings(Some(&p.ca.pem_path))).unwrap();
    let e = session(&c, addr, "broker.example.com", None)
        .await
        .unwrap_err();
    assert_eq!(e.reason, tls::NAME_MISMATCH, "{e}");
    assert!(e.detail.contains("broker.example.com"), "{e}");
    let mut s = settings(Some(&p.ca.pem_path));
    s.server_name = Some("localhost".into());
    let c = TlsConnector::new(&s).unwrap();
    session(&c, addr, "broker.example.com", None).await.unwrap();
}

#[tokio::test]
async fn skipping_verification_connects_to_an_untrusted_broker() {
    let p = pki();
    let untrusted = leaf(&p.dir, &p.other, "rogue", &["rogue.invalid"], false);
    let addr = tls_server(server_config(&untrusted.0, &untrusted.1, None, &[])).await;
    let mut s = settings(None);
    s.insecure_skip_verify = true;
    let c = TlsConnector::new(&s).unwrap();
    session(&c, addr, "localhost", None).await.unwrap();
}

#[tokio::test]
async fn a_broker_requiring_client_certificates_takes_devices_signed_by_its_ca() {
    let p = pki();
    let addr = tls_server(server_config(
        &p.server.0,
        &p.server.1,
        Some(&p.ca.pem_path),
        &[],
    ))
    .await;
    let c = TlsConnector::new(&settings(Some(&p.ca.pem_path))).unwrap();
    let device = leaf(&p.dir, &p.ca, "meter-000001", &[], true);
    session(&c, addr, "localhost", Some((&device.0, &device.1)))
        .await
        .unwrap();

    let e = session(&c, addr, "localhost", None).await.unwrap_err();
    assert_eq!(e.reason, tls::CLIENT_CERT_REQUIRED, "{e}");

    let stranger = leaf(&p.dir, &p.other, "meter-999999", &[], true);
    let e = session(&c, addr, "localhost", Some((&stranger.0, &stranger.1)))
        .await
        .unwrap_err();
    assert_eq!(e.reason, tls::CLIENT_CERT_REFUSED, "{e}");
}

#[tokio::test]
async fn a_tls_1_2_broker_checks_client_certificates_during_the_handshake() {
    let p = pki();
    let config = server_config_for(
        &[&rustls::version::TLS12],
        &p.server.0,
        &p.server.1,
        Some(&p.ca.pem_path),
        &[],
    );
    let addr = tls_server(config).await;
    let c = TlsConnector::new(&settings(Some(&p.ca.pem_path))).unwrap();
    let device = leaf(&p.dir, &p.ca, "meter-000002", &[], true);
    session(&c, addr, "localhost", Some((&device.0, &device.1)))
        .await
        .unwrap();
    let stranger = leaf(&p.dir, &p.other, "meter-999998", &[], true);
    let e = session(&c, addr, "localhost", Some((&stranger.0, &stranger.1)))
        .await
        .unwrap_err();
    assert_eq!(e.reason, tls::CLIENT_CERT_REFUSED, "{e}");
}

#[tokio::test]
async fn unusable_client_certificates_fail_before_connecting_without_showing_the_key() {
    let p = pki();
    let c = TlsConnector::new(&settings(Some(&p.ca.pem_path))).unwrap();
    let a = leaf(&p.dir, &p.ca, "dev-a", &[], true);
    let b = leaf(&p.dir, &p.ca, "dev-b", &[], true);
    let missing = p.dir.join("nope.pem");

    let e = c.check_client_cert(&missing, &a.1).unwrap_err();
    assert_eq!(e.reason, tls::CANNOT_READ_CLIENT_CERT);
    assert!(e.detail.contains("nope.pem"), "{e}");

    let e = c.check_client_cert(&a.0, &b.1).unwrap_err();
    assert_eq!(e.reason, tls::CLIENT_KEY_MISMATCH, "{e}");

    // A key file that holds a certificate, and a certificate file that holds a key.
    let e = c.check_client_cert(&a.0, &a.0).unwrap_err();
    assert_eq!(e.reason, tls::CANNOT_READ_CLIENT_KEY, "{e}");
    let e = c.check_client_cert(&a.1, &a.1).unwrap_err();
    assert_eq!(e.reason, tls::CANNOT_READ_CLIENT_CERT, "{e}");

    // Garbage inside the PEM armour of a key: the message does not quote it.
    std::fs::write(
        p.dir.join("bad.key"),
        "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA!!\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let e = c
        .check_client_cert(&a.0, &p.dir.join("bad.key"))
        .unwrap_err();
    assert_eq!(e.reason, tls::CANNOT_READ_CLIENT_KEY, "{e}");
    assert!(!e.to_string().contains("c2VjcmV0"), "{e}");

    c.check_client_cert(&a.0, &a.1).unwrap();
}

#[tokio::test]
async fn alpn_is_offered_and_a_broker_without_a_common_protocol_refuses() {
    let p = pki();
    let addr = tls_server(server_config(&p.server.0, &p.server.1, None, &["mqtt"])).await;
    let mut s = settings(Some(&p.ca.pem_path));
    s.alpn = vec![b"mqtt".to_vec()];
    let c = TlsConnector::new(&s).unwrap();
    session(&c, addr, "localhost", None).await.unwrap();
    s.alpn = vec![b"x-other".to_vec()];
    let c = TlsConnector::new(&s).unwrap();
    let e = session(&c, addr, "localhost", None).await.unwrap_err();
    assert_eq!(e.reason, tls::NO_ALPN, "{e}");
}

#[tokio::test]
async fn a_plain_mqtt_listener_is_not_a_tls_server() {
    let p = pki();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 512];
        let _ = tcp.read(&mut buf).await;
        // A CONNACK where a ServerHello should be.
        let _ = tcp.write_all(&[0x20, 0x02, 0x00, 0x00]).await;
        let _ = tcp.read(&mut buf).await;
    });
    let c = TlsConnector::new(&settings(Some(&p.ca.pem_path))).unwrap();
    let e = session(&c, addr, "localhost", None).await.unwrap_err();
    assert_eq!(e.reason, tls::NOT_TLS, "{e}");
}
