//! A small HTTP/1.1 client on hyper 1 for `RemoteFleet`: one connection per request, every
//! request bounded by `REQUEST_TIMEOUT`, every answer by `MAX_RESPONSE_BYTES`.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header;
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::error::ApiError;

/// Connect, send, and read the whole answer within this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest answer read (a snapshot with its histograms is a few hundred KB at most).
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// One API base URL, checked: `http://HOST[:PORT][/PREFIX]`.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    /// As given, without a trailing slash (the label of its snapshot and its errors).
    pub url: String,
    host: String,
    port: u16,
    authority: String,
    prefix: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, ApiError> {
        let bad = |reason: &str| ApiError::BadUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let trimmed = url.trim().trim_end_matches('/');
        let uri: Uri = trimmed
            .parse()
            .map_err(|e| bad(&format!("not a URL ({e}); expected http://HOST:PORT")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(bad(
                    "https is not supported: the API speaks plain http (put a TLS proxy in front and attach to it over http, or use an SSH tunnel)",
                ));
            }
            Some(other) => {
                return Err(bad(&format!(
                    "scheme {other:?} is not supported; expected http://HOST:PORT"
                )));
            }
            None => return Err(bad("no scheme; expected http://HOST:PORT")),
        }
        let authority = uri
            .authority()
            .ok_or_else(|| bad("no host; expected http://HOST:PORT"))?;
        if authority.as_str().contains('@') {
            return Err(bad(
                "user info in the URL is not supported: pass the token with --api-token",
            ));
        }
        if uri.query().is_some() {
            return Err(bad("a query string is not supported"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() {
            return Err(bad("no host; expected http://HOST:PORT"));
        }
        Ok(Target {
            url: trimmed.to_string(),
            host,
            port: authority.port_u16().unwrap_or(80),
            authority: authority.as_str().to_string(),
            prefix: uri.path().trim_end_matches('/').to_string(),
        })
    }

    /// Sends one request; the answer's status and body, or why there was none.
    pub async fn request(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        json: Option<Vec<u8>>,
    ) -> Result<(u16, Bytes), String> {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(token, method, path, json)).await
        {
            Ok(r) => r,
            Err(_) => Err(format!(
                "no answer within {} s",
                REQUEST_TIMEOUT.as_secs_f64()
            )),
        }
    }

    async fn exchange(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        json: Option<Vec<u8>>,
    ) -> Result<(u16, Bytes), String> {
        let stream = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.prefix))
            .header(header::HOST, &self.authority)
            .header(header::ACCEPT, "application/json");
        if let Some(token) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match json {
            Some(bytes) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(bytes))
            }
            None => Full::new(Bytes::new()),
        };
        let req = req.body(body).map_err(|e| format!("request: {e}"))?;
        let result = async {
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| format!("request: {e}"))?;
            let status = resp.status().as_u16();
            let body = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            Ok((status, body))
        }
        .await;
        driver.abort();
        result
    }
}

/// A path segment percent-encoded (a device key may be any string).
pub(crate) fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        let t = Target::parse("http://127.0.0.1:9000/").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 9000));
        assert_eq!(t.url, "http://127.0.0.1:9000");
        let t = Target::parse("http://[::1]:9000/fleet").unwrap();
        assert_eq!((t.host.as_str(), t.prefix.as_str()), ("::1", "/fleet"));
        assert_eq!(Target::parse("http://example.com").unwrap().port, 80);
        for bad in [
            "https://127.0.0.1:9000",
            "127.0.0.1:9000",
            "ftp://x",
            "http://u:p@x:1",
            "http://x:1/?a=b",
            "",
        ] {
            let e = Target::parse(bad).unwrap_err().to_string();
            assert!(e.starts_with("--attach "), "{bad}: {e}");
        }
    }

    #[test]
    fn keys_are_percent_encoded() {
        assert_eq!(encode_segment("env-000042"), "env-000042");
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
    }
}
