//! The heap one idle, established TLS client session costs: live bytes counted by a global
//! allocator on the client's thread only (the server runs on a thread of its own), before and
//! after opening `SESSIONS` sessions, against the same count for plain TCP streams.
//! `cargo test -p fleet-mqtt --test tls_memory -- --nocapture` prints the numbers.
#![allow(unsafe_code)] // the counting allocator

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};

use fleet_core::security::BrokerTls;
use fleet_mqtt::tls::TlsConnector;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SESSIONS: usize = 200;

/// Counts live heap bytes allocated and freed on threads that opted in.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

thread_local! {
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

fn counted() -> bool {
    COUNTED.try_with(Cell::get).unwrap_or(false)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counted() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if counted() {
            LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        }
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if counted() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if counted() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn write_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf, PathBuf) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("test setup");
    ca.distinguished_name.push(DnType::CommonName, "memory CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("test setup"))
        .expect("test setup");
    let write = |name: &str, sans: Vec<String>, eku| {
        let mut p = CertificateParams::new(sans).expect("test setup");
        p.distinguished_name.push(DnType::CommonName, name);
        p.extended_key_usages = vec![eku];
        let key = KeyPair::generate().expect("test setup");
        let cert = p.signed_by(&key, &ca).expect("test setup");
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).expect("test setup");
        std::fs::write(&k, key.serialize_pem()).expect("test setup");
        (c, k)
    };
    let server = write(
        "broker",
        vec!["localhost".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let device = write("device", vec![], ExtendedKeyUsagePurpose::ClientAuth);
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).expect("test setup");
    (ca_path, server.0, server.1, device.0, device.1)
}

/// A TLS server on its own thread (optional client certificates, so one server serves both
/// kinds of session): "ok" after each handshake, then it holds the connection open.
fn spawn_server(ca: &Path, cert: &Path, key: &Path) -> SocketAddr {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("test setup") {
        roots.add(c.expect("test setup")).expect("test setup");
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .expect("test setup");
    let chain = CertificateDer::pem_file_iter(cert)
        .expect("test setup")
        .collect::<Result<Vec<_>, _>>()
        .expect("test setup");
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("test setup")
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            chain,
            PrivateKeyDer::from_pem_file(key).expect("test setup"),
        )
        .expect("test setup");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("test setup");
    std_listener.set_nonblocking(true).expect("test setup");
    let addr = std_listener.local_addr().expect("test setup");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("test setup");
        rt.block_on(async move {
            let listener = TcpListener::from_std(std_listener).expect("test setup");
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let _ = tcp.set_nodelay(true);
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let _ = tls.write_all(b"ok").await;
                    let _ = tls.flush().await;
                    let mut buf = [0u8; 16];
                    let _ = tls.read(&mut buf).await;
                });
            }
        });
    });
    addr
}

/// Live bytes held per session after opening `SESSIONS` of them with `open`.
async fn bytes_per_session<T, F, Fut>(open: F) -> isize
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let mut held: Vec<T> = Vec::with_capacity(SESSIONS);
    drop(open().await); // warm-up: lazy statics, driver pages
    let before = LIVE.load(Ordering::Relaxed);
    for _ in 0..SESSIONS {
        held.push(open().await);
    }
    let after = LIVE.load(Ordering::Relaxed);
    drop(held);
    (after - before) / SESSIONS as isize
}

#[test]
fn an_idle_tls_session_costs_a_bounded_amount_of_heap() {
    let tmp = tempfile::tempdir().unwrap();
    let (ca, server_cert, server_key, device_cert, device_key) = write_pki(tmp.path());
    let addr = spawn_server(&ca, &server_cert, &server_key);
    let connector = TlsConnector::new(&BrokerTls {
        ca_file: Some(ca),
        server_name: None,
        insecure_skip_verify: false,
        client_cert: None,
        alpn: Vec::new(),
    })
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    COUNTED.with(|c| c.set(true));
    let (tcp, tls, mtls) = rt.block_on(async {
        let tcp = bytes_per_session(|| async { TcpStream::connect(addr).await.unwrap() }).await;
        let established = |cert: Option<(PathBuf, PathBuf)>| {
            let connector = &connector;
            async move {
                let tcp = TcpStream::connect(addr).await.unwrap();
                tcp.set_nodelay(true).unwrap();
                let pair = cert.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
                let mut s = connector.connect(tcp, "localhost", pair).await.unwrap();
                let mut ok = [0u8; 2];
                s.read_exact(&mut ok).await.unwrap();
                s
            }
        };
        let tls = bytes_per_session(|| established(None)).await;
        let device = Some((device_cert.clone(), device_key.clone()));
        let mtls = bytes_per_session(|| established(device.clone())).await;
        (tcp, tls, mtls)
    });
    COUNTED.with(|c| c.set(false));
    eprintln!(
        "heap per idle session ({SESSIONS} sessions): plain TCP {tcp} B; TLS {tls} B \
         (+{} B over TCP); TLS with a client certificate {mtls} B (+{} B over TCP)",
        tls - tcp,
        mtls - tcp
    );
    assert!(tls - tcp < 64 * 1024, "TLS session costs {} B", tls - tcp);
    assert!(
        mtls - tcp < 64 * 1024,
        "mTLS session costs {} B",
        mtls - tcp
    );
}
