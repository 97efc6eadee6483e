//! MQTT over TLS (rustls with the ring provider).
//!
//! A `TlsConnector` is built once per run from the scenario's `[broker.tls]`: the trust roots
//! (the CA file, or the system's store) and the verifier are made once and shared; connections
//! without a client certificate share one `ClientConfig`. A device with a certificate of its
//! own has it read at connect time into a `ClientConfig` for that connection, cloned from the
//! shared one, so nothing per device stays in memory between connections.
//!
//! Session resumption is off: every connect is a full handshake, as for a fleet of devices
//! that each keep no ticket (and no device resumes a session another device started).
//!
//! Errors carry a short static reason for counters and a detail for a log line; neither ever
//! holds key material.

use std::io;
use std::path::Path;
use std::sync::Arc;

use fleet_core::security::BrokerTls;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore,
};
use tokio::io::{AsyncRead, AsyncWrite};

pub use tokio_rustls::client::TlsStream;

/// Why TLS failed: `reason` is short and static (a counter label, the device's last error);
/// `detail` is for a log line (file names, what the library said; never key material).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct TlsError {
    pub reason: &'static str,
    pub detail: String,
}

impl TlsError {
    fn new(reason: &'static str, detail: impl Into<String>) -> TlsError {
        TlsError {
            reason,
            detail: detail.into(),
        }
    }
}

pub const UNTRUSTED: &str = "TLS handshake failed: certificate not trusted";
pub const NAME_MISMATCH: &str = "TLS handshake failed: certificate name mismatch";
pub const EXPIRED: &str = "TLS handshake failed: certificate expired or not yet valid";
pub const REVOKED: &str = "TLS handshake failed: certificate revoked";
pub const WRONG_PURPOSE: &str = "TLS handshake failed: certificate not for this use";
pub const CLIENT_CERT_REQUIRED: &str = "TLS handshake failed: broker requires a client certificate";
pub const CLIENT_CERT_REFUSED: &str = "TLS handshake failed: broker refused the client certificate";
pub const NO_COMMON_PARAMETERS: &str = "TLS handshake failed: no common protocol version or cipher";
pub const NO_ALPN: &str = "TLS handshake failed: no common ALPN protocol";
pub const ALERT: &str = "TLS handshake failed: alert from the broker";
pub const NOT_TLS: &str = "TLS handshake failed: not a TLS server";
pub const PROTOCOL: &str = "TLS handshake failed: protocol error";
pub const CLOSED: &str = "TLS handshake failed: connection closed";
pub const IO: &str = "TLS handshake failed: I/O error";
pub const CANNOT_READ_CLIENT_CERT: &str = "TLS: cannot read client certificate";
pub const CANNOT_READ_CLIENT_KEY: &str = "TLS: cannot read client key";
pub const CLIENT_KEY_MISMATCH: &str = "TLS: client key does not match certificate";
pub const BAD_SERVER_NAME: &str = "TLS: invalid server name";
pub const CANNOT_READ_CA: &str = "TLS: cannot read CA file";
pub const NO_SYSTEM_ROOTS: &str = "TLS: no system CA certificates";

/// Connects devices over TLS with the scenario's settings. Cheap to share (`Arc` inside).
#[derive(Clone)]
pub struct TlsConnector {
    provider: Arc<CryptoProvider>,
    /// Connections without a client certificate (and the template of those with one).
    shared: Arc<ClientConfig>,
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConnector")
            .field("server_name", &self.server_name)
            .field("alpn", &self.shared.alpn_protocols.len())
            .finish_non_exhaustive()
    }
}

impl TlsConnector {
    /// Builds the trust roots and verifier once. Reads `ca_file` (or the system's store);
    /// warns loudly, once, when verification is skipped.
    pub fn new(cfg: &BrokerTls) -> Result<TlsConnector, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier: Arc<dyn ServerCertVerifier> = if cfg.insecure_skip_verify {
            tracing::warn!(
                "[broker.tls] insecure_skip_verify = true: the broker's certificate is NOT verified; \
                 anyone on the path can impersonate the broker. Use this with test brokers only."
            );
            Arc::new(AcceptAnyServerCert {
                algorithms: provider.signature_verification_algorithms,
            })
        } else {
            let roots = match &cfg.ca_file {
                Some(path) => roots_from_file(path)?,
                None => system_roots()?,
            };
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| TlsError::new(CANNOT_READ_CA, e.to_string()))?
        };
        let mut shared = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::new(NO_COMMON_PARAMETERS, e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        shared.alpn_protocols = cfg.alpn.clone();
        shared.resumption = Resumption::disabled();
        let server_name = match &cfg.server_name {
            Some(n) => Some(server_name(n)?),
            None => None,
        };
        Ok(TlsConnector {
            provider,
            shared: Arc::new(shared),
            server_name,
        })
    }

    /// TLS handshake over `io` (a connected TCP stream). `host` is the broker URL's host: the
    /// name checked in the broker's certificate and sent as SNI, unless `[broker.tls]
    /// server_name` overrides it. `client_cert` is the device's (certificate, key) PEM files.
    pub async fn connect<IO>(
        &self,
        io: IO,
        host: &str,
        client_cert: Option<(&Path, &Path)>,
    ) -> Result<TlsStream<IO>, TlsError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => server_name(host)?,
        };
        let config = match client_cert {
            None => self.shared.clone(),
            Some((cert, key)) => Arc::new(self.config_with_identity(cert, key)?),
        };
        tokio_rustls::TlsConnector::from(config)
            .connect(name, io)
            .await
            .map_err(|e| classify(&e))
    }

    /// Reads a client certificate and key and checks they belong together, as `connect` does
    /// (for a check before the run).
    pub fn check_client_cert(&self, cert: &Path, key: &Path) -> Result<(), TlsError> {
        self.config_with_identity(cert, key).map(|_| ())
    }

    fn config_with_identity(&self, cert: &Path, key: &Path) -> Result<ClientConfig, TlsError> {
        let chain = read_cert_chain(cert)?;
        let key_der = read_private_key(key)?;
        let certified = CertifiedKey::from_der(chain, key_der, &self.provider).map_err(|e| {
            match e {
                rustls::Error::InconsistentKeys(_) => TlsError::new(
                    CLIENT_KEY_MISMATCH,
                    format!("{} is not the key of {}", key.display(), cert.display()),
                ),
                // The library's message names the key type it could not use, not the key.
                other => TlsError::new(
                    CANNOT_READ_CLIENT_KEY,
                    format!("{}: {other}", key.display()),
                ),
            }
        })?;
        let mut config = (*self.shared).clone();
        config.client_auth_cert_resolver = Arc::new(SingleCertAndKey::from(certified));
        Ok(config)
    }
}

fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_string()).map_err(|_| {
        TlsError::new(
            BAD_SERVER_NAME,
            format!("{name:?} is not a DNS name or an IP address"),
        )
    })
}

fn roots_from_file(path: &Path) -> Result<RootCertStore, TlsError> {
    let what = |e: &dyn std::fmt::Display| {
        TlsError::new(CANNOT_READ_CA, format!("{}: {e}", path.display()))
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| what(&pem_reason(&e)))? {
        let cert = cert.map_err(|e| what(&pem_reason(&e)))?;
        roots
            .add(cert)
            .map_err(|e| what(&format!("not a usable CA certificate ({e})")))?;
    }
    if roots.is_empty() {
        return Err(what(&"holds no CERTIFICATE (PEM)"));
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        return Err(TlsError::new(
            NO_SYSTEM_ROOTS,
            format!(
                "the system's trust store has no CA certificate{why}: set [broker.tls] ca_file"
            ),
        ));
    }
    Ok(roots)
}

fn read_cert_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let what = |e: &dyn std::fmt::Display| {
        TlsError::new(CANNOT_READ_CLIENT_CERT, format!("{}: {e}", path.display()))
    };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| what(&pem_reason(&e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| what(&pem_reason(&e)))?;
    if chain.is_empty() {
        return Err(what(&"holds no CERTIFICATE (PEM)"));
    }
    Ok(chain)
}

fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        TlsError::new(
            CANNOT_READ_CLIENT_KEY,
            format!("{}: {}", path.display(), pem_reason(&e)),
        )
    })
}

/// What went wrong reading a PEM file, in words that never quote the file's contents.
fn pem_reason(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error as E;
    match e {
        E::Io(io) => io.to_string(),
        E::NoItemsFound => "holds no PEM item of the expected kind (a certificate: CERTIFICATE; \
             a key: PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)"
            .into(),
        E::MissingSectionEnd { .. } => "a PEM section has no END line".into(),
        E::IllegalSectionStart { .. } => "a PEM BEGIN line is malformed".into(),
        E::Base64Decode(_) => "a PEM section is not valid base64".into(),
        _ => "is not valid PEM".into(),
    }
}

/// The reason for a failed handshake or a TLS error on an established connection (the
/// broker's refusal of a client certificate arrives on the first read under TLS 1.3).
/// Errors that are not TLS errors classify by their I/O kind.
pub fn classify(e: &io::Error) -> TlsError {
    if let Some(tls) = rustls_error(e) {
        return TlsError::new(tls_reason(tls), tls.to_string());
    }
    let reason = match e.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => CLOSED,
        _ => IO,
    };
    TlsError::new(reason, e.to_string())
}

fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

/// The reason of an I/O error on a TLS stream when TLS caused it (an alert from the broker, a
/// refused certificate after the handshake), None for plain I/O errors.
pub fn error_reason(e: &io::Error) -> Option<&'static str> {
    rustls_error(e).map(tls_reason)
}

fn tls_reason(e: &rustls::Error) -> &'static str {
    use rustls::Error as E;
    match e {
        E::InvalidCertificate(c) => cert_reason(c),
        E::AlertReceived(a) => alert_reason(*a),
        E::NoApplicationProtocol => NO_ALPN,
        E::PeerIncompatible(_) => NO_COMMON_PARAMETERS,
        E::InvalidMessage(_) | E::InappropriateMessage { .. } => NOT_TLS,
        _ => PROTOCOL,
    }
}

fn cert_reason(e: &CertificateError) -> &'static str {
    use CertificateError as C;
    match e {
        C::NotValidForName | C::NotValidForNameContext { .. } => NAME_MISMATCH,
        C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. } => {
            EXPIRED
        }
        C::Revoked => REVOKED,
        C::InvalidPurpose | C::InvalidPurposeContext { .. } => WRONG_PURPOSE,
        _ => UNTRUSTED,
    }
}

fn alert_reason(a: AlertDescription) -> &'static str {
    use AlertDescription as A;
    match a {
        A::CertificateRequired => CLIENT_CERT_REQUIRED,
        A::BadCertificate
        | A::UnsupportedCertificate
        | A::CertificateRevoked
        | A::CertificateExpired
        | A::CertificateUnknown
        | A::UnknownCA
        | A::AccessDenied => CLIENT_CERT_REFUSED,
        A::HandshakeFailure | A::ProtocolVersion | A::InsufficientSecurity => NO_COMMON_PARAMETERS,
        A::NoApplicationProtocol => NO_ALPN,
        _ => ALERT,
    }
}

/// `insecure_skip_verify`: any certificate is accepted, but the handshake's signatures are
/// still checked with the provider's algorithms (the peer must hold the key of the
/// certificate it sent).
#[derive(Debug)]
struct AcceptAnyServerCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_ca_file_is_named_with_a_short_reason() {
        let cfg = BrokerTls {
            ca_file: Some("/nonexistent/ca.pem".into()),
            server_name: None,
            insecure_skip_verify: false,
            client_cert: None,
            alpn: Vec::new(),
        };
        let e = TlsConnector::new(&cfg).unwrap_err();
        assert_eq!(e.reason, CANNOT_READ_CA);
        assert!(e.detail.starts_with("/nonexistent/ca.pem: "), "{e}");
    }

    #[test]
    fn a_bad_server_name_is_refused_when_the_connector_is_built() {
        let cfg = BrokerTls {
            ca_file: None,
            server_name: Some("no such name!".into()),
            insecure_skip_verify: true,
            client_cert: None,
            alpn: Vec::new(),
        };
        assert_eq!(TlsConnector::new(&cfg).unwrap_err().reason, BAD_SERVER_NAME);
    }

    #[test]
    fn io_errors_without_tls_inside_classify_by_kind() {
        let e = io::Error::from(io::ErrorKind::UnexpectedEof);
        assert_eq!(classify(&e).reason, CLOSED);
        let e = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        assert_eq!(classify(&e).reason, UNTRUSTED);
        let e = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(AlertDescription::CertificateRequired),
        );
        assert_eq!(classify(&e).reason, CLIENT_CERT_REQUIRED);
    }
}
