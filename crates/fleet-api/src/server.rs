//! The HTTP server: axum on a thread of its own ("api") with a current-thread runtime, over a
//! `FleetPort`. Port calls may block (a device lookup waits for its shard), so they run on
//! the runtime's blocking pool.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use fleet_metrics::{Command, FleetPort, PortError};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::error::{ApiError, ErrorBody, ErrorDetail, kind_name};
use crate::metrics;

/// The environment variable the binary reads the token from (as `--api-token`).
pub const TOKEN_ENV: &str = "FLEETSIM_API_TOKEN";
/// Largest request body accepted (413 above).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// How long a shutdown waits for requests under way before dropping them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Where the API listens, and the token it requires (every endpoint, `/metrics` included).
#[derive(Clone)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    /// Required unless `listen` is a loopback address or the API is read-only.
    pub token: Option<String>,
    /// Only GET endpoints (metrics, snapshot, devices): every POST is refused with 403, and no
    /// token is needed on any address (`--api-read-only`, for Prometheus scraping).
    pub read_only: bool,
}

impl ApiConfig {
    /// The rules `serve` applies before it binds: a token off loopback, and a token that can
    /// travel in a header. Callers check early, before anything else starts.
    pub fn check(&self) -> Result<(), ApiError> {
        if let Some(token) = &self.token {
            crate::error::check_token("--api-token", token)?;
        } else if !self.listen.ip().is_loopback() && !self.read_only {
            return Err(ApiError::TokenRequired {
                listen: self.listen,
            });
        }
        Ok(())
    }
}

/// The token is never printed.
impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiConfig")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The running server. Dropping it (or `shutdown`) stops it and waits for its thread.
#[derive(Debug)]
pub struct ApiServer {
    /// The address it listens on (the port the system chose for port 0).
    pub local_addr: SocketAddr,
    stop: Option<watch::Sender<bool>>,
    thread: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Stops accepting, lets requests under way finish (at most `SHUTDOWN_GRACE`), and waits
    /// for the thread.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Binds `cfg.listen` now (so a bad address is reported before the run starts) and serves the
/// API on a thread of its own.
pub fn serve(port: Arc<dyn FleetPort>, cfg: ApiConfig) -> Result<ApiServer, ApiError> {
    cfg.check()?;
    let listener = TcpListener::bind(cfg.listen).map_err(|e| ApiError::Bind {
        listen: cfg.listen,
        reason: bind_reason(&e),
    })?;
    let bind_err = |e: std::io::Error| ApiError::Bind {
        listen: cfg.listen,
        reason: e.to_string(),
    };
    let local_addr = listener.local_addr().map_err(bind_err)?;
    listener.set_nonblocking(true).map_err(bind_err)?;
    let runtime = crate::error::runtime()?;
    let app = router(AppState {
        port,
        token: cfg.token.map(Arc::from),
        read_only: cfg.read_only,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let thread = std::thread::Builder::new()
        .name("api".into())
        .spawn(move || run(runtime, listener, app, stop_rx))
        .map_err(|source| ApiError::Start {
            what: "thread",
            source,
        })?;
    Ok(ApiServer {
        local_addr,
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

fn bind_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => "address in use".into(),
        std::io::ErrorKind::AddrNotAvailable => "address not available on this machine".into(),
        std::io::ErrorKind::PermissionDenied => {
            "permission denied (ports below 1024 need privileges)".into()
        }
        _ => e.to_string(),
    }
}

fn run(
    runtime: tokio::runtime::Runtime,
    listener: TcpListener,
    app: Router,
    stop: watch::Receiver<bool>,
) {
    runtime.block_on(async move {
        let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
            return;
        };
        let mut graceful = stop.clone();
        let mut hard = stop;
        let server = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = graceful.wait_for(|stop| *stop).await;
        });
        tokio::select! {
            _ = server => {}
            _ = async {
                let _ = hard.wait_for(|stop| *stop).await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => {}
        }
    });
    // Port calls still running on the blocking pool are not waited for.
    runtime.shutdown_timeout(Duration::from_millis(100));
}

#[derive(Clone)]
struct AppState {
    port: Arc<dyn FleetPort>,
    token: Option<Arc<str>>,
    read_only: bool,
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/api/v1/health", get(health))
        .route("/api/v1/snapshot", get(snapshot))
        .route("/api/v1/devices/:key", get(device))
        .route("/api/v1/pause", post(pause))
        .route("/api/v1/resume", post(resume))
        .route("/api/v1/faults", post(fault))
        .route("/api/v1/rollouts", post(rollout))
        .fallback(unknown_route)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(middleware::from_fn(errors_as_json))
        .with_state(state)
}

/// An error answer: `{"error": {"kind": ..., "message": ...}}` with its status.
#[derive(Debug)]
struct HttpError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl HttpError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> HttpError {
        HttpError {
            status,
            kind,
            message: message.into(),
        }
    }
    fn bad_request(message: impl Into<String>) -> HttpError {
        HttpError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    fn internal(message: impl Into<String>) -> HttpError {
        HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
    fn no_snapshot() -> HttpError {
        HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "no snapshot yet: the run has not reported (try again in a second)",
        )
    }
}

impl From<PortError> for HttpError {
    fn from(e: PortError) -> HttpError {
        HttpError {
            status: StatusCode::from_u16(e.kind.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            kind: kind_name(e.kind),
            message: e.message,
        }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        error_response(self.status, self.kind, self.message)
    }
}

fn error_response(status: StatusCode, kind: &str, message: String) -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            kind: kind.to_string(),
            message,
        },
    };
    json_response(status, &body)
}

fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            Body::from(bytes),
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "application/json")],
            format!(r#"{{"error":{{"kind":"internal","message":"serializing: {e}"}}}}"#),
        )
            .into_response(),
    }
}

/// Runs a port call on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, HttpError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| HttpError::internal(format!("the request's task failed: {e}")))
}

/// Every endpoint requires `Authorization: Bearer <token>` when a token is set.
async fn authorize(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if state.read_only && !matches!(*req.method(), Method::GET | Method::HEAD) {
        return HttpError::new(
            StatusCode::FORBIDDEN,
            "read_only",
            "this run's control API is read-only (--api-read-only): GET /metrics, /api/v1/snapshot and /api/v1/devices/ID only",
        )
        .into_response();
    }
    let Some(expected) = &state.token else {
        return next.run(req).await;
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim_start())
        });
    match given {
        Some(token) if same_token(expected.as_bytes(), token.as_bytes()) => next.run(req).await,
        given => {
            let message = if given.is_some() {
                "the bearer token is wrong"
            } else {
                "this API requires a token: send the header `Authorization: Bearer <token>`"
            };
            let mut resp = error_response(StatusCode::UNAUTHORIZED, "unauthorized", message.into());
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            resp
        }
    }
}

/// Compares in time that depends only on the expected token's length.
fn same_token(expected: &[u8], given: &[u8]) -> bool {
    let mut diff = expected.len() ^ given.len();
    for (i, e) in expected.iter().enumerate() {
        let g = given.get(i).copied().unwrap_or(0);
        diff |= usize::from(e ^ g);
    }
    std::hint::black_box(diff) == 0
}

/// Errors made by axum itself (405, a failed extractor) are plain text: rewritten as JSON,
/// their other headers (`Allow`) kept.
async fn errors_as_json(req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let kind = match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::CONFLICT => "conflict",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_client_error() => "bad_request",
        _ => "internal",
    };
    let message = match (status, text.is_empty()) {
        (StatusCode::METHOD_NOT_ALLOWED, _) => {
            format!("{method} is not allowed on {path} (the Allow header lists what is)")
        }
        (_, true) => status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_lowercase(),
        (_, false) => text,
    };
    let json = error_response(status, kind, message);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, json.into_body())
}

async fn unknown_route(req: Request) -> HttpError {
    HttpError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no such endpoint: {} {} (see docs/api.md)",
            req.method(),
            req.uri().path()
        ),
    )
}

async fn health() -> Response {
    json_response(StatusCode::OK, &serde_json::json!({"status": "ok"}))
}

async fn metrics_text(State(state): State<AppState>) -> Result<Response, HttpError> {
    let port = state.port;
    let text = blocking(move || port.snapshot().map(|s| metrics::render_metrics(&s))).await?;
    let text = text.ok_or_else(HttpError::no_snapshot)?;
    Ok(([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotQuery {
    /// Include the HdrHistograms (base64 V2): default true.
    histograms: Option<bool>,
}

async fn snapshot(
    State(state): State<AppState>,
    query: Result<Query<SnapshotQuery>, QueryRejection>,
) -> Result<Response, HttpError> {
    let Query(query) = query.map_err(|e| {
        HttpError::bad_request(format!(
            "expected ?histograms=true|false: {}",
            e.body_text()
        ))
    })?;
    let with_histograms = query.histograms.unwrap_or(true);
    let port = state.port;
    let body = blocking(move || {
        let snap = port.snapshot()?;
        let json = if with_histograms {
            serde_json::to_vec(&*snap)
        } else {
            let mut slim = (*snap).clone();
            slim.histograms = Default::default();
            serde_json::to_value(&slim).and_then(|mut v| {
                if let Some(map) = v.as_object_mut() {
                    map.remove("histograms");
                }
                serde_json::to_vec(&v)
            })
        };
        Some(json)
    })
    .await?
    .ok_or_else(HttpError::no_snapshot)?
    .map_err(|e| HttpError::internal(format!("serializing the snapshot: {e}")))?;
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(body),
    )
        .into_response())
}

async fn device(
    State(state): State<AppState>,
    key: Result<Path<String>, PathRejection>,
) -> Result<Response, HttpError> {
    let Path(key) = key.map_err(|e| HttpError::bad_request(e.body_text()))?;
    let port = state.port;
    let detail = blocking(move || port.device(&key)).await??;
    Ok(json_response(StatusCode::OK, &detail))
}

async fn command(state: AppState, cmd: Command) -> Result<Response, HttpError> {
    let port = state.port;
    let ack = blocking(move || port.command(cmd)).await??;
    Ok(json_response(StatusCode::ACCEPTED, &ack))
}

async fn pause(State(state): State<AppState>) -> Result<Response, HttpError> {
    command(state, Command::Pause).await
}

async fn resume(State(state): State<AppState>) -> Result<Response, HttpError> {
    command(state, Command::Resume).await
}

async fn fault(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, HttpError> {
    let req = json_body(&headers, body)?;
    command(state, Command::Fault(req)).await
}

async fn rollout(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, HttpError> {
    let req = json_body(&headers, body)?;
    command(state, Command::Rollout(req)).await
}

/// A JSON request body: the content type must say JSON; serde's message on a bad one.
fn json_body<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, HttpError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime != "application/json" && !mime.ends_with("+json") {
        return Err(HttpError::bad_request(format!(
            "the body must be JSON with `Content-Type: application/json` (got {:?})",
            content_type
        )));
    }
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => HttpError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than {MAX_BODY_BYTES} bytes"),
        ),
        _ => HttpError::bad_request(e.body_text()),
    })?;
    serde_json::from_slice(&body)
        .map_err(|e| HttpError::bad_request(format!("invalid JSON body: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_equal_only_when_identical() {
        assert!(same_token(b"secret", b"secret"));
        assert!(!same_token(b"secret", b"secreT"));
        assert!(!same_token(b"secret", b"secret2"));
        assert!(!same_token(b"secret", b"secre"));
        assert!(!same_token(b"secret", b""));
    }
}
