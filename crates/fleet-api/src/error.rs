//! The crate's error (setting up the server or the client) and the JSON error body every
//! endpoint answers with.

use std::net::SocketAddr;

use fleet_metrics::{ErrorKind, PortError};
use serde::{Deserialize, Serialize};

/// Setting up the API server or the attaching client failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("--api-listen {listen}: {reason}")]
    Bind { listen: SocketAddr, reason: String },
    #[error(
        "--api-listen {listen}: refusing to serve the control API on a non-loopback address \
         without a token: pass --api-token TOKEN (or set FLEETSIM_API_TOKEN), or listen on \
         127.0.0.1"
    )]
    TokenRequired { listen: SocketAddr },
    /// `flag` is `--api-token` (serving) or `--token` (attaching).
    #[error("{flag}: {reason}")]
    BadToken {
        flag: &'static str,
        reason: &'static str,
    },
    #[error("--attach {url}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("--attach: no URL given (expected http://HOST:PORT)")]
    NoUrls,
    #[error("api: could not start its {what}: {source}")]
    Start {
        what: &'static str,
        source: std::io::Error,
    },
}

/// A token goes into an HTTP header: printable ASCII without spaces, not empty.
pub(crate) fn check_token(flag: &'static str, token: &str) -> Result<(), ApiError> {
    if token.is_empty() {
        return Err(ApiError::BadToken {
            flag,
            reason: "must not be empty",
        });
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::BadToken {
            flag,
            reason: "must be printable ASCII without spaces",
        });
    }
    Ok(())
}

/// `{"error": {"kind": "bad_request", "message": "..."}}`
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ErrorDetail {
    /// A `PortError` kind (bad_request, not_found, conflict, unavailable) or one of the
    /// server's own: unauthorized, method_not_allowed, payload_too_large, internal.
    pub kind: String,
    pub message: String,
}

/// The wire name of a `PortError` kind.
pub(crate) fn kind_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::BadRequest => "bad_request",
        ErrorKind::NotFound => "not_found",
        ErrorKind::Conflict => "conflict",
        ErrorKind::Unavailable => "unavailable",
    }
}

/// An HTTP error answer back into a `PortError` (the client side), naming where it came from.
pub(crate) fn port_error_from_http(url: &str, status: u16, body: &[u8]) -> PortError {
    let parsed = serde_json::from_slice::<ErrorBody>(body).ok();
    let kind_from_status = match status {
        404 => ErrorKind::NotFound,
        409 => ErrorKind::Conflict,
        400..=499 => ErrorKind::BadRequest,
        _ => ErrorKind::Unavailable,
    };
    let (kind, message) = match parsed {
        Some(b) => {
            let kind = match b.error.kind.as_str() {
                "bad_request" => ErrorKind::BadRequest,
                "not_found" => ErrorKind::NotFound,
                "conflict" => ErrorKind::Conflict,
                "unavailable" => ErrorKind::Unavailable,
                _ => kind_from_status,
            };
            (kind, b.error.message)
        }
        None => {
            let text = String::from_utf8_lossy(body);
            let text: String = text.trim().chars().take(200).collect();
            (kind_from_status, format!("HTTP {status}: {text}"))
        }
    };
    PortError::new(kind, format!("{url}: {message}"))
}

/// The current-thread runtime the server and the attach client each run on (a thread apiece).
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, ApiError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| ApiError::Start {
            what: "runtime",
            source,
        })
}
