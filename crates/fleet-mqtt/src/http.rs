//! A small HTTP/1.1 client that downloads firmware images for OTA updates.
//!
//! Simulated devices fetch their image from the user's own artifact server with real `GET`
//! requests, so the server sees the real thundering herd: one TCP connection per device,
//! resumed downloads (`Range: bytes=N-`), and the stalls and retries that follow from them.
//!
//! Split like the rest of the crate: the protocol pieces ([`parse_http_url`], the response
//! head, `Content-Range`, the chunked decoder) are pure functions over bytes; [`fetch`] does
//! the I/O around them, one request per connection.
//!
//! Scope, on purpose: plain `http://` only, `GET` only, `Connection: close`, no redirects
//! (a 3xx is fatal and names the `Location`), no content codings (`Accept-Encoding: identity`).

use std::fmt;
use std::net::Ipv6Addr;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::timeout;

/// Default for [`FetchOptions::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default for [`FetchOptions::idle_timeout`].
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for [`FetchOptions::max_header_bytes`].
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
/// [`fetch`] reports progress at most once per this many bytes (and once at the end).
pub const PROGRESS_STEP_BYTES: u64 = 64 * 1024;
/// The default port of `http://` URLs.
pub const HTTP_DEFAULT_PORT: u16 = 80;

/// Size of the read buffer of one download: small, because a herd holds thousands of them.
const READ_BUF_BYTES: usize = 16 * 1024;
/// Longest chunk-size line (size plus extensions) accepted in a chunked body.
const MAX_CHUNK_LINE_BYTES: usize = 4 * 1024;
/// Most trailer bytes accepted after the last chunk of a chunked body.
const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// Most interim (1xx) responses skipped before the final one.
const MAX_INTERIM_RESPONSES: usize = 8;
/// After a complete body, how long to wait for the server to close the connection (and so
/// show that it sent nothing more than it declared); a server that keeps it open past this
/// is not an error, the body is complete.
const EOF_GRACE: Duration = Duration::from_secs(1);
/// What an `https://` URL is told.
const HTTPS_UNSUPPORTED: &str = "https:// URLs are not supported yet: serve the image over http:// or use download = \"simulated\"";

// ---------------------------------------------------------------------------------------------
// URLs

/// A parsed `http://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// Host name or IP address; an IPv6 address is kept without its brackets (`::1`).
    pub host: String,
    /// TCP port ([`HTTP_DEFAULT_PORT`] when the URL names none).
    pub port: u16,
    /// Request target: path and query, always starting with `/` (the fragment is dropped).
    pub path_and_query: String,
}

impl HttpUrl {
    /// `host[:port]` as written in a URL and in the `Host` header: IPv6 in brackets, the
    /// port left out when it is the default.
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == HTTP_DEFAULT_PORT {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority(), self.path_and_query)
    }
}

/// Parses an `http://host[:port][/path][?query]` URL.
///
/// The scheme is case-insensitive; an IPv6 host goes in brackets (`http://[::1]:8080/fw`);
/// the port defaults to 80; an empty path becomes `/`; a `#fragment` is dropped. Errors
/// name the URL and what is wrong with it, e.g. an `https://` URL, a missing host, a port
/// outside 1..=65535, credentials, or characters that would have to be percent-encoded.
pub fn parse_http_url(url: &str) -> Result<HttpUrl, String> {
    parse_http_url_inner(url).map_err(|why| format!("URL {url:?}: {why}"))
}

fn parse_http_url_inner(url: &str) -> Result<HttpUrl, String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err("missing scheme: expected http://host[:port]/path".into());
    };
    match scheme.to_ascii_lowercase().as_str() {
        "http" => {}
        "https" => return Err(HTTPS_UNSUPPORTED.into()),
        _ => return Err(format!("unsupported scheme {scheme:?}: expected http://")),
    }
    let rest = rest.split_once('#').map_or(rest, |(before, _)| before);
    let target_at = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, target) = rest.split_at(target_at);
    if authority.contains('@') {
        return Err("credentials in the URL (user@host) are not supported".into());
    }
    let (host, port) = split_authority(authority)?;
    if let Some(bad) = target.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "path has the character {bad:?}: percent-encode spaces, control and non-ASCII characters"
        ));
    }
    let path_and_query = if target.is_empty() {
        "/".to_string()
    } else if target.starts_with('?') {
        format!("/{target}")
    } else {
        target.to_string()
    };
    Ok(HttpUrl {
        host,
        port,
        path_and_query,
    })
}

/// Splits `host[:port]` / `[v6][:port]` into a host (without brackets) and a port.
fn split_authority(authority: &str) -> Result<(String, u16), String> {
    if authority.is_empty() {
        return Err("missing host: expected http://host[:port]/path".into());
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let Some((v6, after)) = bracketed.split_once(']') else {
            return Err("IPv6 address without its closing ']'".into());
        };
        if v6.parse::<Ipv6Addr>().is_err() {
            return Err(format!("{v6:?} is not an IPv6 address"));
        }
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(port) => Some(port),
                None => return Err(format!("expected ':port' after ']', found {after:?}")),
            },
        };
        (v6, port)
    } else {
        match authority.split_once(':') {
            Some((_, port)) if port.contains(':') => {
                return Err("IPv6 addresses go in brackets: http://[::1]:8080/path".into());
            }
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("missing host: expected http://host[:port]/path".into());
    }
    let is_v6 = authority.starts_with('[');
    if !is_v6
        && let Some(bad) = host
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
    {
        return Err(format!(
            "host {host:?} has the character {bad:?}: expected letters, digits, '-', '.', '_' \
             (internationalized names in their xn-- form)"
        ));
    }
    let port = match port {
        None => HTTP_DEFAULT_PORT,
        Some("") => return Err("empty port after ':': expected a number in 1..=65535".into()),
        Some(port) => match port.parse::<u16>() {
            Ok(n) if n > 0 && port.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(format!("port {port:?}: expected a number in 1..=65535")),
        },
    };
    Ok((host.to_string(), port))
}

// ---------------------------------------------------------------------------------------------
// Download state, options, errors

/// What survives between attempts of one device's download: the bytes received so far and
/// the SHA-256 state of exactly those bytes, so a resumed download still verifies the whole
/// image.
#[derive(Clone)]
pub struct DownloadState {
    /// Bytes of the image received so far (the next attempt resumes here).
    pub bytes: u64,
    /// Size of the whole image, once a response has told it.
    pub total: Option<u64>,
    /// SHA-256 of the first `bytes` bytes.
    hasher: Sha256,
    /// The image's strong `ETag` (or else its `Last-Modified`), sent as `If-Range` when
    /// resuming so that a server whose image changed sends the whole new one.
    validator: Option<String>,
}

impl DownloadState {
    /// An empty download: nothing received, size unknown.
    pub fn new() -> Self {
        Self {
            bytes: 0,
            total: None,
            hasher: Sha256::new(),
            validator: None,
        }
    }

    /// Forgets everything received: the next attempt starts at byte 0.
    pub fn restart(&mut self) {
        *self = Self::new();
    }

    /// SHA-256 of the bytes received so far, as lowercase hex (does not consume the state).
    pub fn sha256_hex(&self) -> String {
        let digest = self.hasher.clone().finalize();
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn append(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.bytes += data.len() as u64;
    }
}

impl Default for DownloadState {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for DownloadState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DownloadState")
            .field("bytes", &self.bytes)
            .field("total", &self.total)
            .field("sha256", &self.sha256_hex())
            .field("validator", &self.validator)
            .finish()
    }
}

/// How one [`fetch`] behaves on the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchOptions {
    /// Longest wait for the TCP connection (name resolution included).
    pub connect_timeout: Duration,
    /// Longest wait for the next byte (or for the request to be written): no progress for
    /// this long fails the attempt with [`FetchError::Retryable`]. Must be above zero.
    pub idle_timeout: Duration,
    /// The `User-Agent` header (`fleetsim/<version>` by default).
    pub user_agent: String,
    /// Largest response head (status line and headers) accepted.
    pub max_header_bytes: usize,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            user_agent: concat!("fleetsim/", env!("CARGO_PKG_VERSION")).to_string(),
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
        }
    }
}

/// Why a [`fetch`] did not complete. Each message names the request and what went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// Worth retrying later (connection refused/reset/closed early, timeouts, 5xx, 408, 429):
    /// the next attempt resumes from `state.bytes`.
    #[error("{0}")]
    Retryable(String),
    /// Not worth retrying (404, 403, other 4xx, 3xx, a malformed response, a URL or option this
    /// client cannot use, a `Content-Range` that still does not match after a restart, a
    /// body longer than declared).
    #[error("{0}")]
    Fatal(String),
}

impl FetchError {
    /// Whether a later attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Retryable(_))
    }

    /// The message, whatever the kind.
    pub fn message(&self) -> &str {
        match self {
            Self::Retryable(m) | Self::Fatal(m) => m,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Bounded concurrency

/// A bound on the downloads running at once: the adapter holds one permit per active
/// download, and a device waits for a slot before connecting.
#[derive(Debug, Clone)]
pub struct DownloadSlots {
    sem: Arc<Semaphore>,
    max: usize,
}

impl DownloadSlots {
    /// At most `max` downloads at once; `max` is taken in `1..=Semaphore::MAX_PERMITS`
    /// (0 would let no download run at all, so it counts as 1).
    pub fn new(max: usize) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            sem: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// Waits for a free slot; the slot is given back when the permit drops. `None` once
    /// [`close`](Self::close) was called.
    pub async fn acquire(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.sem).acquire_owned().await.ok()
    }

    /// A free slot now, or `None` when all are in use (or the slots are closed).
    pub fn try_acquire(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.sem).try_acquire_owned().ok()
    }

    /// Slots currently held.
    pub fn in_use(&self) -> usize {
        self.max.saturating_sub(self.sem.available_permits())
    }

    /// The bound given to [`new`](Self::new) (after clamping).
    pub fn max(&self) -> usize {
        self.max
    }

    /// Wakes every waiter with `None` and refuses new acquisitions (for shutdown).
    pub fn close(&self) {
        self.sem.close();
    }
}

// ---------------------------------------------------------------------------------------------
// fetch: the I/O

/// GETs `url` into `state`, resuming at `state.bytes` with `Range: bytes=N-` (and `If-Range`
/// when the image's validator is known) when N > 0.
///
/// - 206 with a matching `Content-Range: bytes N-M/T`: appends; `total = T`. A range that
///   does not start at N, or a size or `ETag` that changed, restarts the state from 0 and
///   asks again once; a second mismatch is [`FetchError::Fatal`].
/// - 200 when a range was asked: the server ignored the range (or the image changed): the
///   state restarts from 0 and takes the whole body.
/// - 416 when `state.bytes` equals the known size: done, nothing to fetch; otherwise the
///   state restarts from 0 and asks again once.
/// - The body is delimited by `Content-Length`, `Transfer-Encoding: chunked`, or the end of
///   the connection (HTTP/1.0 style; a connection lost early is then indistinguishable from
///   the end, which is what the caller's SHA-256 check is for).
/// - `progress(bytes_so_far, total)` is called as data arrives, at most once per
///   [`PROGRESS_STEP_BYTES`], and once at the end.
/// - `Connection: close`: one request per connection.
///
/// Returns `Ok(())` when the whole image is in `state`; then `state.total == Some(state.bytes)`.
/// On an error `state` keeps every byte received and verified so far.
pub async fn fetch(
    url: &HttpUrl,
    state: &mut DownloadState,
    opts: &FetchOptions,
    progress: impl FnMut(u64, Option<u64>),
) -> Result<(), FetchError> {
    let mut progress = Progress::new(progress);
    let result = fetch_with_one_restart(url, state, opts, &mut progress).await;
    progress.flush(state.bytes, state.total);
    result
}

async fn fetch_with_one_restart<F: FnMut(u64, Option<u64>)>(
    url: &HttpUrl,
    state: &mut DownloadState,
    opts: &FetchOptions,
    progress: &mut Progress<F>,
) -> Result<(), FetchError> {
    if let Some(bad) = opts.user_agent.chars().find(|c| c.is_control()) {
        return Err(FetchError::Fatal(format!(
            "user agent {:?} has the control character {bad:?}: expected printable text",
            opts.user_agent
        )));
    }
    let mut restarted = false;
    loop {
        let stream = connect(url, opts).await?;
        match exchange(stream, url, state, opts, progress).await? {
            Exchange::Done => return Ok(()),
            Exchange::Restart(why) if !restarted => {
                tracing::debug!(%url, %why, "restarting the download from byte 0");
                state.restart();
                restarted = true;
            }
            Exchange::Restart(why) => {
                return Err(FetchError::Fatal(format!(
                    "{why}; again after restarting from byte 0"
                )));
            }
        }
    }
}

async fn connect(url: &HttpUrl, opts: &FetchOptions) -> Result<TcpStream, FetchError> {
    let addr = (url.host.as_str(), url.port);
    match timeout(opts.connect_timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(FetchError::Retryable(format!(
            "GET {url}: connecting to {}: {e}",
            url.authority()
        ))),
        Err(_) => Err(FetchError::Retryable(format!(
            "GET {url}: connecting to {}: no answer within {:?}",
            url.authority(),
            opts.connect_timeout
        ))),
    }
}

/// How one request/response ended, when it did not fail.
#[derive(Debug)]
enum Exchange {
    /// The whole image is in the state.
    Done,
    /// The server's idea of the image does not match the state: start again from byte 0.
    Restart(String),
}

/// One request and its response on `stream`.
async fn exchange<S, F>(
    stream: S,
    url: &HttpUrl,
    state: &mut DownloadState,
    opts: &FetchOptions,
    progress: &mut Progress<F>,
) -> Result<Exchange, FetchError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(u64, Option<u64>),
{
    let mut conn = Conn {
        stream,
        read_buf: vec![0; READ_BUF_BYTES],
        idle: opts.idle_timeout,
        ctx: format!("GET {url}"),
    };
    let range_start = state.bytes;
    let request = build_request(
        url,
        range_start,
        state.validator.as_deref(),
        &opts.user_agent,
    );
    conn.send(request.as_bytes()).await?;
    let (head, leftover) = conn.read_head(opts.max_header_bytes).await?;
    let ctx = conn.ctx.clone();
    let framing = |head: &ResponseHead| {
        Framing::from_head(head).map_err(|why| FetchError::Fatal(format!("{ctx}: {why}")))
    };
    match head.status {
        200 => {
            let framing = framing(&head)?;
            if range_start > 0 {
                tracing::debug!(%url, range_start, "server answered a range request with 200");
                state.restart();
            }
            state.total = framing.content_length;
            state.validator = head.validator();
            let mut sink = Sink::new(state, progress, None);
            conn.read_body(&leftover, framing.decoder, &mut sink)
                .await?;
            state.total = Some(state.bytes);
            Ok(Exchange::Done)
        }
        206 => {
            let framing = framing(&head)?;
            let range = match head.header("content-range").map(parse_content_range) {
                Some(Ok(ContentRange::Satisfied { start, end, total })) => (start, end, total),
                Some(Ok(ContentRange::Unsatisfied { .. })) | None => {
                    return Err(FetchError::Fatal(format!(
                        "{ctx}: 206 Partial Content without a byte range in Content-Range"
                    )));
                }
                Some(Err(why)) => return Err(FetchError::Fatal(format!("{ctx}: {why}"))),
            };
            if let Some(why) = range_mismatch(range, &head, state) {
                return restart_or_fatal(range_start, format!("{ctx}: {why}"));
            }
            let (start, end, total) = range;
            let range_len = end - start + 1;
            if let Some(length) = framing.content_length
                && length != range_len
            {
                return Err(FetchError::Fatal(format!(
                    "{ctx}: Content-Length {length} disagrees with Content-Range bytes {start}-{end} \
                     ({range_len} bytes)"
                )));
            }
            let decoder = match framing.decoder {
                BodyDecoder::Chunked(chunked) => BodyDecoder::Chunked(chunked),
                // The range itself says how long the body is.
                BodyDecoder::Length { .. } | BodyDecoder::UntilClose => BodyDecoder::Length {
                    remaining: range_len,
                },
            };
            if total.is_some() {
                state.total = total;
            }
            if state.validator.is_none() {
                state.validator = head.validator();
            }
            let mut sink = Sink::new(state, progress, Some(range_len));
            conn.read_body(&leftover, decoder, &mut sink).await?;
            if sink.received < range_len {
                return Err(FetchError::Fatal(format!(
                    "{ctx}: chunked body ended after {} of the {range_len} bytes of Content-Range \
                     bytes {start}-{end}",
                    sink.received
                )));
            }
            match state.total {
                Some(total) if state.bytes < total => Err(FetchError::Retryable(format!(
                    "{ctx}: server sent bytes {start}-{end} of {total}; resume from byte {}",
                    state.bytes
                ))),
                _ => {
                    // `bytes N-M/*`: the size is not known, the range is taken as the rest.
                    state.total = Some(state.bytes);
                    Ok(Exchange::Done)
                }
            }
        }
        416 => {
            let server_total = match head.header("content-range").map(parse_content_range) {
                Some(Ok(ContentRange::Unsatisfied { total })) => Some(total),
                Some(Ok(ContentRange::Satisfied { total, .. })) => total,
                Some(Err(_)) | None => None,
            };
            let known_total = server_total.or(state.total);
            if range_start > 0 && known_total == Some(state.bytes) {
                state.total = known_total;
                return Ok(Exchange::Done);
            }
            let size = known_total.map_or_else(|| "unknown".to_string(), |t| t.to_string());
            restart_or_fatal(
                range_start,
                format!(
                    "{ctx}: HTTP 416 for bytes={range_start}- (size of the image on the server: \
                     {size})"
                ),
            )
        }
        _ => Err(status_error(&head, &ctx)),
    }
}

/// A mismatch restarts the download when a range was asked, and is fatal otherwise (the
/// server answered a plain GET with something about ranges).
fn restart_or_fatal(range_start: u64, why: String) -> Result<Exchange, FetchError> {
    if range_start > 0 {
        Ok(Exchange::Restart(why))
    } else {
        Err(FetchError::Fatal(format!(
            "{why} (in answer to a request for the whole image, without Range)"
        )))
    }
}

/// Why a 206 response cannot continue this download, if it cannot.
fn range_mismatch(
    (start, _end, total): (u64, u64, Option<u64>),
    head: &ResponseHead,
    state: &DownloadState,
) -> Option<String> {
    if start != state.bytes {
        return Some(format!(
            "Content-Range starts at byte {start}, but the download has {} bytes",
            state.bytes
        ));
    }
    if let (Some(total), Some(known)) = (total, state.total)
        && total != known
    {
        return Some(format!(
            "the image is {total} bytes now, it was {known} bytes when the download began"
        ));
    }
    if let (Some(ours), Some(theirs)) = (state.validator.as_deref(), head.strong_etag())
        && ours.starts_with('"')
        && ours != theirs
    {
        return Some(format!(
            "the image's ETag is {theirs} now, it was {ours} when the download began"
        ));
    }
    None
}

/// The error for a status other than 200, 206 and 416.
fn status_error(head: &ResponseHead, ctx: &str) -> FetchError {
    let what = format!("{ctx}: HTTP {} {}", head.status, head.reason)
        .trim_end()
        .to_string();
    match head.status {
        408 | 429 | 500..=599 => match head.header("retry-after") {
            Some(after) => FetchError::Retryable(format!("{what} (Retry-After: {after})")),
            None => FetchError::Retryable(what),
        },
        300..=399 => match head.header("location") {
            Some(location) => FetchError::Fatal(format!(
                "{what}: redirects are not followed: point the URL at {location}"
            )),
            None => FetchError::Fatal(format!("{what}: redirects are not followed")),
        },
        400..=499 => FetchError::Fatal(what),
        _ => FetchError::Fatal(format!("{what}: expected 200, 206 or 416")),
    }
}

fn build_request(
    url: &HttpUrl,
    range_start: u64,
    validator: Option<&str>,
    user_agent: &str,
) -> String {
    let mut request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: {user_agent}\r\nAccept: */*\r\n\
         Accept-Encoding: identity\r\nConnection: close\r\n",
        url.path_and_query,
        url.authority()
    );
    if range_start > 0 {
        request.push_str(&format!("Range: bytes={range_start}-\r\n"));
        if let Some(validator) = validator {
            request.push_str(&format!("If-Range: {validator}\r\n"));
        }
    }
    request.push_str("\r\n");
    request
}

/// One connection: the stream, its read buffer and the idle bound on every wait.
struct Conn<S> {
    stream: S,
    read_buf: Vec<u8>,
    idle: Duration,
    /// `GET <url>`, the start of every message.
    ctx: String,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    async fn send(&mut self, request: &[u8]) -> Result<(), FetchError> {
        let write = async {
            self.stream.write_all(request).await?;
            self.stream.flush().await
        };
        match timeout(self.idle, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(FetchError::Retryable(format!(
                "{}: sending the request: {e}",
                self.ctx
            ))),
            Err(_) => Err(FetchError::Retryable(format!(
                "{}: sending the request: stalled for {:?}",
                self.ctx, self.idle
            ))),
        }
    }

    /// Reads what is there into `read_buf` (0 at the end of the stream).
    async fn read_some(&mut self, during: &str) -> Result<usize, FetchError> {
        match timeout(self.idle, self.stream.read(&mut self.read_buf)).await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(FetchError::Retryable(format!(
                "{}: {during}: {e}",
                self.ctx
            ))),
            Err(_) => Err(FetchError::Retryable(format!(
                "{}: {during}: no data for {:?}",
                self.ctx, self.idle
            ))),
        }
    }

    /// The final response head (interim 1xx ones skipped) and the bytes read after it.
    async fn read_head(&mut self, max_bytes: usize) -> Result<(ResponseHead, Vec<u8>), FetchError> {
        let mut pending = Vec::new();
        let mut interim = 0;
        loop {
            if let Some(end) = find_head_end(&pending) {
                if end > max_bytes {
                    return Err(self.head_too_long(max_bytes));
                }
                let head = ResponseHead::parse(&pending[..end]).map_err(|why| {
                    FetchError::Fatal(format!("{}: malformed response head: {why}", self.ctx))
                })?;
                let rest = pending.split_off(end);
                if (100..200).contains(&head.status) && head.status != 101 {
                    interim += 1;
                    if interim > MAX_INTERIM_RESPONSES {
                        return Err(FetchError::Fatal(format!(
                            "{}: more than {MAX_INTERIM_RESPONSES} interim 1xx responses",
                            self.ctx
                        )));
                    }
                    pending = rest;
                    continue;
                }
                return Ok((head, rest));
            }
            if pending.len() > max_bytes {
                return Err(self.head_too_long(max_bytes));
            }
            let n = self.read_some("reading the response head").await?;
            if n == 0 {
                let when = if pending.is_empty() {
                    "before any response"
                } else {
                    "in the middle of the response head"
                };
                return Err(FetchError::Retryable(format!(
                    "{}: connection closed {when}",
                    self.ctx
                )));
            }
            pending.extend_from_slice(&self.read_buf[..n]);
        }
    }

    fn head_too_long(&self, max_bytes: usize) -> FetchError {
        FetchError::Fatal(format!(
            "{}: response head longer than {max_bytes} bytes (max_header_bytes)",
            self.ctx
        ))
    }

    /// Feeds `leftover` and then the stream through `decoder` into `sink` until the body ends.
    async fn read_body<F: FnMut(u64, Option<u64>)>(
        &mut self,
        leftover: &[u8],
        mut decoder: BodyDecoder,
        sink: &mut Sink<'_, F>,
    ) -> Result<(), FetchError> {
        let mut done = feed(&mut decoder, leftover, sink, &self.ctx)?;
        while !done {
            let n = self.read_some("reading the body").await?;
            if n == 0 {
                return decoder.finish_at_eof().map_err(|why| {
                    FetchError::Retryable(format!(
                        "{}: connection closed after {} bytes of the image: {why}",
                        self.ctx, sink.state.bytes
                    ))
                });
            }
            done = feed(&mut decoder, &self.read_buf[..n], sink, &self.ctx)?;
        }
        self.expect_eof().await
    }

    /// After a complete body: anything more before the server closes is a body longer than
    /// declared. A server that keeps the connection open past [`EOF_GRACE`] is let be.
    async fn expect_eof(&mut self) -> Result<(), FetchError> {
        let wait = self.idle.min(EOF_GRACE);
        match timeout(wait, self.stream.read(&mut self.read_buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => Ok(()),
            Ok(Ok(n)) => Err(FetchError::Fatal(format!(
                "{}: body longer than declared: {n} more bytes after its end",
                self.ctx
            ))),
        }
    }
}

/// Passes `input` through `decoder` into `sink`; whether the body is complete.
fn feed<F: FnMut(u64, Option<u64>)>(
    decoder: &mut BodyDecoder,
    mut input: &[u8],
    sink: &mut Sink<'_, F>,
    ctx: &str,
) -> Result<bool, FetchError> {
    while !input.is_empty() {
        if decoder.is_done() {
            return Err(FetchError::Fatal(format!(
                "{ctx}: body longer than declared: {} more bytes after its end",
                input.len()
            )));
        }
        let (used, data) = decoder
            .decode(input)
            .map_err(|why| FetchError::Fatal(format!("{ctx}: malformed chunked body: {why}")))?;
        sink.take(data)
            .map_err(|why| FetchError::Fatal(format!("{ctx}: {why}")))?;
        input = &input[used..];
    }
    Ok(decoder.is_done())
}

/// Where body bytes go: the download state, and progress reports.
struct Sink<'a, F> {
    state: &'a mut DownloadState,
    progress: &'a mut Progress<F>,
    /// Body bytes of this response so far.
    received: u64,
    /// Most body bytes this response may have (from `Content-Range`).
    limit: Option<u64>,
}

impl<'a, F: FnMut(u64, Option<u64>)> Sink<'a, F> {
    fn new(
        state: &'a mut DownloadState,
        progress: &'a mut Progress<F>,
        limit: Option<u64>,
    ) -> Self {
        Self {
            state,
            progress,
            received: 0,
            limit,
        }
    }

    fn take(&mut self, data: &[u8]) -> Result<(), String> {
        if data.is_empty() {
            return Ok(());
        }
        let n = data.len() as u64;
        if let Some(limit) = self.limit
            && self.received + n > limit
        {
            return Err(format!(
                "body longer than declared: more than the {limit} bytes of its Content-Range"
            ));
        }
        self.state.append(data);
        self.received += n;
        self.progress.update(self.state.bytes, self.state.total);
        Ok(())
    }
}

/// Throttled progress reports.
struct Progress<F> {
    report: F,
    last: Option<(u64, Option<u64>)>,
}

impl<F: FnMut(u64, Option<u64>)> Progress<F> {
    fn new(report: F) -> Self {
        Self { report, last: None }
    }

    /// Reports when [`PROGRESS_STEP_BYTES`] arrived since the last report (or on the first
    /// data, or when the count went back after a restart).
    fn update(&mut self, bytes: u64, total: Option<u64>) {
        let due = match self.last {
            None => true,
            Some((last, _)) => bytes < last || bytes - last >= PROGRESS_STEP_BYTES,
        };
        if due {
            self.emit(bytes, total);
        }
    }

    /// Reports unless the last report said exactly this.
    fn flush(&mut self, bytes: u64, total: Option<u64>) {
        if self.last != Some((bytes, total)) {
            self.emit(bytes, total);
        }
    }

    fn emit(&mut self, bytes: u64, total: Option<u64>) {
        self.last = Some((bytes, total));
        (self.report)(bytes, total);
    }
}

// ---------------------------------------------------------------------------------------------
// The protocol, sans I/O

/// Where the response head ends in `buf` (just past the blank line), if it is all there.
/// Accepts bare `\n` line ends as well as `\r\n`.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.iter().enumerate().find_map(|(i, &b)| {
        if b != b'\n' {
            return None;
        }
        match (buf.get(i + 1), buf.get(i + 2)) {
            (Some(b'\n'), _) => Some(i + 2),
            (Some(b'\r'), Some(b'\n')) => Some(i + 3),
            _ => None,
        }
    })
}

/// A response's status line and headers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ResponseHead {
    status: u16,
    reason: String,
    /// Header names lowercased, in order.
    headers: Vec<(String, String)>,
}

impl ResponseHead {
    /// Parses a head as cut by [`find_head_end`].
    fn parse(raw: &[u8]) -> Result<Self, String> {
        let text = String::from_utf8_lossy(raw);
        let mut lines = text
            .split('\n')
            .map(|line| line.strip_suffix('\r').unwrap_or(line));
        let status_line = lines.next().unwrap_or_default();
        let (version, rest) = status_line.split_once(' ').unwrap_or((status_line, ""));
        if !matches!(version, "HTTP/1.0" | "HTTP/1.1") {
            return Err(format!(
                "status line {status_line:?}: expected it to start with HTTP/1.1 or HTTP/1.0"
            ));
        }
        let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
        let status = match code.parse::<u16>() {
            Ok(status) if code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()) => status,
            _ => {
                return Err(format!(
                    "status line {status_line:?}: expected a three-digit status code"
                ));
            }
        };
        let mut headers = Vec::new();
        for line in lines.filter(|line| !line.is_empty()) {
            if line.starts_with([' ', '\t']) {
                return Err(format!(
                    "header line {line:?} is folded onto the previous one (obsolete, refused)"
                ));
            }
            let Some((name, value)) = line.split_once(':') else {
                return Err(format!("header line {line:?} has no ':'"));
            };
            if name.is_empty() || !name.bytes().all(is_token_byte) {
                return Err(format!("header name {name:?} is not a token"));
            }
            headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
        }
        Ok(Self {
            status,
            reason: reason.trim().to_string(),
            headers,
        })
    }

    /// The first value of header `name` (lowercase).
    fn header(&self, name: &str) -> Option<&str> {
        self.headers_named(name).next()
    }

    /// Every value of header `name` (lowercase).
    fn headers_named<'a, 'n>(
        &'a self,
        name: &'n str,
    ) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `ETag`, if it is a strong one (only those may go in `If-Range` as ETags).
    fn strong_etag(&self) -> Option<&str> {
        self.header("etag")
            .filter(|etag| etag.starts_with('"') && etag.len() >= 2 && etag.ends_with('"'))
    }

    /// What identifies this version of the image for `If-Range`: the strong `ETag`, else
    /// `Last-Modified`; only if it is plain printable text.
    fn validator(&self) -> Option<String> {
        self.strong_etag()
            .or_else(|| self.header("last-modified"))
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b == b' ' || b.is_ascii_graphic()))
            .map(str::to_string)
    }
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// How a response's body is delimited, read from its headers.
#[derive(Debug)]
struct Framing {
    decoder: BodyDecoder,
    /// `Content-Length`, when the body is delimited by it.
    content_length: Option<u64>,
}

impl Framing {
    fn from_head(head: &ResponseHead) -> Result<Self, String> {
        if let Some(coding) = head
            .headers_named("content-encoding")
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .find(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"))
        {
            return Err(format!(
                "Content-Encoding {coding:?} is not supported (the request asked for identity)"
            ));
        }
        let codings: Vec<&str> = head
            .headers_named("transfer-encoding")
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"))
            .collect();
        match codings.as_slice() {
            [] => {}
            [chunked] if chunked.eq_ignore_ascii_case("chunked") => {
                // Chunked wins over any Content-Length (RFC 9112 §6.3).
                return Ok(Self {
                    decoder: BodyDecoder::Chunked(ChunkedDecoder::new()),
                    content_length: None,
                });
            }
            _ => {
                return Err(format!(
                    "Transfer-Encoding {:?} is not supported: expected chunked",
                    codings.join(", ")
                ));
            }
        }
        let mut content_length = None;
        for value in head
            .headers_named("content-length")
            .flat_map(|v| v.split(','))
        {
            let length = parse_decimal(value.trim())
                .map_err(|why| format!("Content-Length {value:?}: {why}"))?;
            if content_length.is_some_and(|l| l != length) {
                return Err("Content-Length headers disagree".into());
            }
            content_length = Some(length);
        }
        Ok(match content_length {
            Some(length) => Self {
                decoder: BodyDecoder::Length { remaining: length },
                content_length,
            },
            None => Self {
                decoder: BodyDecoder::UntilClose,
                content_length: None,
            },
        })
    }
}

/// A non-negative decimal number, digits only.
fn parse_decimal(s: &str) -> Result<u64, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err("expected a decimal number".into());
    }
    s.parse::<u64>()
        .map_err(|_| "number too large for 64 bits".to_string())
}

/// A `Content-Range` header value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ContentRange {
    /// `bytes START-END/TOTAL` (`TOTAL` may be `*`, unknown).
    Satisfied {
        start: u64,
        end: u64,
        total: Option<u64>,
    },
    /// `bytes */TOTAL`, sent with 416.
    Unsatisfied { total: u64 },
}

fn parse_content_range(value: &str) -> Result<ContentRange, String> {
    let bad = |why: &str| format!("Content-Range {value:?}: {why}");
    let Some(rest) = value.trim().strip_prefix("bytes ") else {
        return Err(bad("expected \"bytes START-END/TOTAL\""));
    };
    let Some((range, total)) = rest.trim().split_once('/') else {
        return Err(bad("expected \"/TOTAL\" after the range"));
    };
    let total = match total {
        "*" => None,
        total => Some(parse_decimal(total).map_err(|why| bad(&format!("total: {why}")))?),
    };
    if range == "*" {
        return match total {
            Some(total) => Ok(ContentRange::Unsatisfied { total }),
            None => Err(bad("neither a range nor a total")),
        };
    }
    let Some((start, end)) = range.split_once('-') else {
        return Err(bad("expected START-END"));
    };
    let start = parse_decimal(start).map_err(|why| bad(&format!("start: {why}")))?;
    let end = parse_decimal(end).map_err(|why| bad(&format!("end: {why}")))?;
    if end < start {
        return Err(bad("the range ends before it starts"));
    }
    if let Some(total) = total
        && end >= total
    {
        return Err(bad("the range ends past the total"));
    }
    Ok(ContentRange::Satisfied { start, end, total })
}

/// Cuts a body out of the byte stream.
#[derive(Debug)]
enum BodyDecoder {
    /// `Content-Length` (or a `Content-Range`'s length): this many bytes more.
    Length { remaining: u64 },
    /// `Transfer-Encoding: chunked`.
    Chunked(ChunkedDecoder),
    /// No length: the body ends when the server closes the connection.
    UntilClose,
}

impl BodyDecoder {
    /// Consumes a prefix of `input` (at least one byte when `input` is not empty and the
    /// body is not done); returns how much, and the body bytes within it.
    fn decode<'a>(&mut self, input: &'a [u8]) -> Result<(usize, &'a [u8]), String> {
        match self {
            Self::Length { remaining } => {
                let n = usize::try_from(*remaining).map_or(input.len(), |r| r.min(input.len()));
                *remaining -= n as u64;
                Ok((n, &input[..n]))
            }
            Self::Chunked(chunked) => chunked.decode(input),
            Self::UntilClose => Ok((input.len(), input)),
        }
    }

    fn is_done(&self) -> bool {
        match self {
            Self::Length { remaining } => *remaining == 0,
            Self::Chunked(chunked) => chunked.is_done(),
            Self::UntilClose => false,
        }
    }

    /// The connection closed before [`is_done`](Self::is_done): the end of the body for
    /// [`UntilClose`](Self::UntilClose), a cut-off body otherwise.
    fn finish_at_eof(&self) -> Result<(), String> {
        match self {
            Self::UntilClose => Ok(()),
            Self::Length { remaining } => Err(format!("{remaining} bytes were still to come")),
            Self::Chunked(_) => Err("the chunked body was not finished".into()),
        }
    }
}

/// Decodes `Transfer-Encoding: chunked`, fed any split of the stream.
#[derive(Debug)]
struct ChunkedDecoder {
    state: ChunkState,
    /// The line being read (chunk size, the CRLF after data, or a trailer).
    line: Vec<u8>,
    trailer_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading a chunk-size line.
    Size,
    /// Inside a chunk's data.
    Data {
        remaining: u64,
    },
    /// Reading the empty line after a chunk's data.
    DataEnd,
    /// After the last (zero) chunk: trailer lines up to an empty one.
    Trailers,
    Done,
}

impl ChunkedDecoder {
    fn new() -> Self {
        Self {
            state: ChunkState::Size,
            line: Vec::new(),
            trailer_bytes: 0,
        }
    }

    fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Consumes a prefix of `input`; returns how much, and the chunk data within it (one
    /// contiguous piece, so the caller loops until `input` is used up).
    fn decode<'a>(&mut self, input: &'a [u8]) -> Result<(usize, &'a [u8]), String> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                ChunkState::Done => break,
                ChunkState::Data { remaining } => {
                    let available = input.len() - i;
                    let n = usize::try_from(remaining).map_or(available, |r| r.min(available));
                    let left = remaining - n as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data { remaining: left }
                    };
                    return Ok((i + n, &input[i..i + n]));
                }
                ChunkState::Size | ChunkState::DataEnd | ChunkState::Trailers => {
                    let byte = input[i];
                    i += 1;
                    if byte != b'\n' {
                        if self.line.len() >= MAX_CHUNK_LINE_BYTES {
                            return Err(format!("a line longer than {MAX_CHUNK_LINE_BYTES} bytes"));
                        }
                        self.line.push(byte);
                        continue;
                    }
                    let mut line = std::mem::take(&mut self.line);
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    self.end_line(&line)?;
                }
            }
        }
        Ok((i, &input[i..i]))
    }

    fn end_line(&mut self, line: &[u8]) -> Result<(), String> {
        self.state = match self.state {
            ChunkState::Size => match parse_chunk_size(line)? {
                0 => ChunkState::Trailers,
                size => ChunkState::Data { remaining: size },
            },
            ChunkState::DataEnd if line.is_empty() => ChunkState::Size,
            ChunkState::DataEnd => {
                return Err(format!(
                    "expected CRLF after the chunk data, found {:?}",
                    String::from_utf8_lossy(line)
                ));
            }
            ChunkState::Trailers if line.is_empty() => ChunkState::Done,
            ChunkState::Trailers => {
                self.trailer_bytes += line.len();
                if self.trailer_bytes > MAX_TRAILER_BYTES {
                    return Err(format!("trailers longer than {MAX_TRAILER_BYTES} bytes"));
                }
                ChunkState::Trailers
            }
            state @ (ChunkState::Data { .. } | ChunkState::Done) => state,
        };
        Ok(())
    }
}

/// `1a2b[;ext=...]` -> 0x1a2b.
fn parse_chunk_size(line: &[u8]) -> Result<u64, String> {
    let text = String::from_utf8_lossy(line);
    let size = text.split(';').next().unwrap_or_default().trim();
    if size.is_empty() || size.len() > 16 || !size.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "chunk size line {text:?}: expected hexadecimal digits (at most 16)"
        ));
    }
    u64::from_str_radix(size, 16).map_err(|e| format!("chunk size {size:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::net::TcpListener;

    /// Every test step gets this long at most.
    const STEP_TIMEOUT: Duration = Duration::from_secs(20);
    const BODY_BYTES: usize = 300_000;
    const ETAG: &str = "\"v1\"";

    async fn bounded<T>(step: impl Future<Output = T>) -> T {
        timeout(STEP_TIMEOUT, step)
            .await
            .expect("test step took longer than STEP_TIMEOUT")
    }

    fn body(len: usize, salt: u32) -> Arc<Vec<u8>> {
        Arc::new(
            (0..len as u32)
                .map(|i| (i.wrapping_add(salt).wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect(),
        )
    }

    fn sha256_hex(data: &[u8]) -> String {
        Sha256::digest(data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn state_with_prefix(data: &[u8]) -> DownloadState {
        let mut state = DownloadState::new();
        state.append(data);
        state
    }

    /// How the test server answers.
    #[derive(Debug, Clone, Copy)]
    enum Mode {
        /// 200, 206 for `Range: bytes=N-`, 416 past the end; `ETag: "v1"`.
        Ranges,
        /// 200 with a chunked body (odd chunk sizes) and a trailer.
        Chunked,
        /// 200 with the whole body whatever the request.
        IgnoreRange,
        /// Like `Ranges`, but the first connection closes after this many body bytes.
        CloseOnceAfter(usize),
        /// Like `Ranges`, but sends this many body bytes and then nothing, connection open.
        StallAfter(usize),
        /// Reads the request, answers nothing, keeps the connection open.
        Silent,
        /// This status with a short body.
        Status(u16),
        /// HTTP/1.0 200 without Content-Length: the body ends at the close.
        UntilClose,
        /// Content-Length says the body, and more bytes follow.
        LongerThanDeclared,
        /// Always 206 `bytes 5-END/LEN`, whatever was asked.
        WrongRangeStart,
        /// A header of 20 KiB.
        HugeHead,
    }

    struct TestServer {
        url: HttpUrl,
        requests: Arc<Mutex<Vec<String>>>,
    }

    impl TestServer {
        async fn start(mode: Mode, body: Arc<Vec<u8>>) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let requests = Arc::new(Mutex::new(Vec::new()));
            let connections = Arc::new(AtomicUsize::new(0));
            let seen = Arc::clone(&requests);
            tokio::spawn(async move {
                while let Ok((socket, _)) = listener.accept().await {
                    let nth = connections.fetch_add(1, Ordering::SeqCst);
                    let (body, seen) = (Arc::clone(&body), Arc::clone(&seen));
                    tokio::spawn(answer(socket, mode, nth, body, seen));
                }
            });
            let url = parse_http_url(&format!("http://127.0.0.1:{port}/fw/image.bin")).unwrap();
            Self { url, requests }
        }

        fn requests(&self) -> Vec<String> {
            self.requests.lock().unwrap().clone()
        }
    }

    async fn read_request(socket: &mut TcpStream) -> String {
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while find_head_end(&request).is_none() {
            let n = socket.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            request.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(request).unwrap()
    }

    fn range_start_of(request: &str) -> Option<usize> {
        let line = request.lines().find(|l| l.starts_with("Range: bytes="))?;
        line.trim_start_matches("Range: bytes=")
            .trim_end_matches('-')
            .parse()
            .ok()
    }

    /// A `Ranges`-style answer: head and body bytes.
    fn ranged(body: &[u8], range: Option<usize>) -> (String, Vec<u8>) {
        let len = body.len();
        match range {
            Some(start) if start >= len => (
                format!(
                    "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\n\
                     Content-Length: 0\r\n\r\n"
                ),
                Vec::new(),
            ),
            Some(start) => (
                format!(
                    "HTTP/1.1 206 Partial Content\r\nETag: {ETAG}\r\n\
                     Content-Range: bytes {start}-{}/{len}\r\nContent-Length: {}\r\n\r\n",
                    len - 1,
                    len - start
                ),
                body[start..].to_vec(),
            ),
            None => (
                format!("HTTP/1.1 200 OK\r\nETag: {ETAG}\r\nContent-Length: {len}\r\n\r\n"),
                body.to_vec(),
            ),
        }
    }

    fn chunked(body: &[u8]) -> Vec<u8> {
        let sizes = [1, 4096, 65_536, 7, 30_000, 100];
        let mut out = Vec::new();
        let mut at = 0;
        for size in sizes.iter().cycle() {
            if at == body.len() {
                break;
            }
            let n = (*size).min(body.len() - at);
            out.extend_from_slice(format!("{n:x};ext=1\r\n").as_bytes());
            out.extend_from_slice(&body[at..at + n]);
            out.extend_from_slice(b"\r\n");
            at += n;
        }
        out.extend_from_slice(b"0\r\nX-Trailer: yes\r\n\r\n");
        out
    }

    async fn answer(
        mut socket: TcpStream,
        mode: Mode,
        nth: usize,
        body: Arc<Vec<u8>>,
        seen: Arc<Mutex<Vec<String>>>,
    ) {
        let request = read_request(&mut socket).await;
        let range = range_start_of(&request);
        seen.lock().unwrap().push(request);
        let len = body.len();
        let (head, payload) = match mode {
            Mode::Ranges => ranged(&body, range),
            Mode::CloseOnceAfter(cut) => {
                let (head, mut payload) = ranged(&body, range);
                if nth == 0 {
                    payload.truncate(cut);
                }
                (head, payload)
            }
            Mode::StallAfter(cut) => {
                let (head, mut payload) = ranged(&body, range);
                payload.truncate(cut);
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(&payload).await;
                std::future::pending::<()>().await;
                return;
            }
            Mode::Silent => {
                std::future::pending::<()>().await;
                return;
            }
            Mode::Chunked => (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_string(),
                chunked(&body),
            ),
            Mode::IgnoreRange => ranged(&body, None),
            Mode::Status(code) => (
                format!(
                    "HTTP/1.1 {code} Test Status\r\nRetry-After: 7\r\nContent-Length: 5\r\n\r\n"
                ),
                b"nope.".to_vec(),
            ),
            Mode::UntilClose => ("HTTP/1.0 200 OK\r\n\r\n".to_string(), body.to_vec()),
            Mode::LongerThanDeclared => (
                format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n"),
                [body.as_slice(), b"EXTRA"].concat(),
            ),
            Mode::WrongRangeStart => (
                format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 5-{}/{len}\r\n\
                     Content-Length: {}\r\n\r\n",
                    len - 1,
                    len - 5
                ),
                body[5..].to_vec(),
            ),
            Mode::HugeHead => (
                format!(
                    "HTTP/1.1 200 OK\r\nX-Huge: {}\r\nContent-Length: 0\r\n\r\n",
                    "h".repeat(20 * 1024)
                ),
                Vec::new(),
            ),
        };
        let _ = socket
            .write_all(&[head.as_bytes(), &payload].concat())
            .await;
        let _ = socket.shutdown().await;
    }

    async fn fetch_quietly(
        url: &HttpUrl,
        state: &mut DownloadState,
        opts: &FetchOptions,
    ) -> Result<(), FetchError> {
        bounded(fetch(url, state, opts, |_, _| {})).await
    }

    fn assert_complete(state: &DownloadState, body: &[u8]) {
        assert_eq!(state.bytes, body.len() as u64);
        assert_eq!(state.total, Some(body.len() as u64));
        assert_eq!(state.sha256_hex(), sha256_hex(body));
    }

    #[tokio::test]
    async fn a_whole_image_downloads_and_verifies() {
        let body = body(BODY_BYTES, 0);
        let server = TestServer::start(Mode::Ranges, Arc::clone(&body)).await;
        let mut state = DownloadState::new();
        fetch_quietly(&server.url, &mut state, &FetchOptions::default())
            .await
            .unwrap();
        assert_complete(&state, &body);
        let requests = server.requests();
        assert_eq!(requests.len(), 1);
        let request = &requests[0];
        assert!(
            request.starts_with("GET /fw/image.bin HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(request.contains(&format!("\r\nHost: 127.0.0.1:{}\r\n", server.url.port)));
        assert!(request.contains(concat!(
            "\r\nUser-Agent: fleetsim/",
            env!("CARGO_PKG_VERSION")
        )));
        assert!(request.contains("\r\nConnection: close\r\n"));
        assert!(!request.contains("Range:"), "{request}");
    }

    #[tokio::test]
    async fn a_chunked_image_downloads_and_verifies() {
        let body = body(BODY_BYTES, 1);
        let server = TestServer::start(Mode::Chunked, Arc::clone(&body)).await;
        let mut state = DownloadState::new();
        fetch_quietly(&server.url, &mut state, &FetchOptions::default())
            .await
            .unwrap();
        assert_complete(&state, &body);
    }

    #[tokio::test]
    async fn a_close_delimited_body_is_taken_whole() {
        let body = body(BODY_BYTES, 2);
        let server = TestServer::start(Mode::UntilClose, Arc::clone(&body)).await;
        let mut state = DownloadState::new();
        fetch_quietly(&server.url, &mut state, &FetchOptions::default())
            .await
            .unwrap();
        assert_complete(&state, &body);
    }

    #[tokio::test]
    async fn a_dropped_connection_is_retryable_and_the_next_attempt_resumes_with_a_range() {
        const CUT: usize = 100_000;
        let body = body(BODY_BYTES, 3);
        let server = TestServer::start(Mode::CloseOnceAfter(CUT), Arc::clone(&body)).await;
        let opts = FetchOptions::default();
        let mut state = DownloadState::new();

        let first = fetch_quietly(&server.url, &mut state, &opts).await;
        assert!(matches!(first, Err(FetchError::Retryable(_))), "{first:?}");
        assert_eq!(state.bytes, CUT as u64);
        assert_eq!(state.total, Some(BODY_BYTES as u64));
        assert_eq!(state.sha256_hex(), sha256_hex(&body[..CUT]));

        fetch_quietly(&server.url, &mut state, &opts).await.unwrap();
        assert_complete(&state, &body);
        let requests = server.requests();
        assert_eq!(requests.len(), 2);
        assert!(!requests[0].contains("Range:"));
        assert!(
            requests[1].contains(&format!("\r\nRange: bytes={CUT}-\r\n")),
            "{}",
            requests[1]
        );
        assert!(
            requests[1].contains(&format!("\r\nIf-Range: {ETAG}\r\n")),
            "{}",
            requests[1]
        );
    }

    #[tokio::test]
    async fn a_server_that_ignores_range_restarts_the_download_from_zero() {
        let body = body(BODY_BYTES, 4);
        let server = TestServer::start(Mode::IgnoreRange, Arc::clone(&body)).await;
        let mut state = state_with_prefix(&body[..1234]);
        fetch_quietly(&server.url, &mut state, &FetchOptions::default())
            .await
            .unwrap();
        assert_complete(&state, &body);
        let requests = server.requests();
        assert_eq!(requests.len(), 1);
        assert!(requests[0].contains("\r\nRange: bytes=1234-\r\n"));
    }

    #[tokio::test]
    async fn a_complete_download_asked_again_gets_416_and_is_done() {
        let body = body(BODY_BYTES, 5);
        let server = TestServer::start(Mode::Ranges, Arc::clone(&body)).await;
        let mut state = state_with_prefix(&body);
        fetch_quietly(&server.url, &mut state, &FetchOptions::default())
            .await
            .unwrap();
        assert_complete(&state, &body);
        let requests = server.requests();
        assert_eq!(requests.len(), 1);
        assert!(requests[0].contains(&format!("\r\nRange: bytes={BODY_BYTES}-\r\n")));
    }

    #[tokio::test]
    async fn a_416_for_an_image_of_another_size_restarts_once_and_takes_the_new_image() {
        let old = body(BODY_BYTES, 6);
        let new = body(100_000, 7);
        let server = TestServer::start(Mode::Ranges, Arc::clone(&new)).await;
        let mut state = state_with_prefix(&old);
        state.total = Some(BODY_BYTES as u64);
        fetch_quietly(&server.url, &mut state, &FetchOptions::default())
            .await
            .unwrap();
        assert_complete(&state, &new);
        let requests = server.requests();
        assert_eq!(requests.len(), 2);
        assert!(requests[0].contains(&format!("\r\nRange: bytes={BODY_BYTES}-\r\n")));
        assert!(!requests[1].contains("Range:"));
    }

    #[tokio::test]
    async fn a_content_range_that_never_matches_is_fatal_after_one_restart() {
        let body = body(BODY_BYTES, 8);
        let server = TestServer::start(Mode::WrongRangeStart, Arc::clone(&body)).await;
        let mut state = state_with_prefix(&body[..1000]);
        let result = fetch_quietly(&server.url, &mut state, &FetchOptions::default()).await;
        let Err(FetchError::Fatal(message)) = result else {
            panic!("expected Fatal, got {result:?}");
        };
        assert!(message.contains("starts at byte 5"), "{message}");
        assert!(message.contains("without Range"), "{message}");
        let requests = server.requests();
        assert_eq!(requests.len(), 2);
        assert!(requests[0].contains("\r\nRange: bytes=1000-\r\n"));
        assert!(!requests[1].contains("Range:"));
    }

    #[tokio::test]
    async fn statuses_are_retryable_or_fatal_and_leave_the_state_alone() {
        let cases = [
            (404, false),
            (403, false),
            (410, false),
            (301, false),
            (408, true),
            (429, true),
            (500, true),
            (503, true),
        ];
        for (status, retryable) in cases {
            let body = body(1000, 9);
            let server = TestServer::start(Mode::Status(status), Arc::clone(&body)).await;
            let mut state = state_with_prefix(&body[..10]);
            let error = fetch_quietly(&server.url, &mut state, &FetchOptions::default())
                .await
                .unwrap_err();
            assert_eq!(error.is_retryable(), retryable, "HTTP {status}: {error:?}");
            assert!(
                error.message().contains(&format!("HTTP {status} ")),
                "{error}"
            );
            assert_eq!(state.bytes, 10, "HTTP {status}");
            assert_eq!(state.sha256_hex(), sha256_hex(&body[..10]));
            if retryable {
                assert!(error.message().contains("Retry-After: 7"), "{error}");
            }
        }
    }

    #[tokio::test]
    async fn a_stalled_server_fails_with_retryable_after_the_idle_timeout() {
        let opts = FetchOptions {
            idle_timeout: Duration::from_millis(200),
            ..FetchOptions::default()
        };
        for (mode, bytes_before_the_stall) in [(Mode::StallAfter(1000), 1000), (Mode::Silent, 0)] {
            let body = body(BODY_BYTES, 10);
            let server = TestServer::start(mode, Arc::clone(&body)).await;
            let mut state = DownloadState::new();
            let error = fetch_quietly(&server.url, &mut state, &opts)
                .await
                .unwrap_err();
            assert!(error.is_retryable(), "{mode:?}: {error:?}");
            assert!(error.message().contains("no data for 200ms"), "{error}");
            assert_eq!(state.bytes, bytes_before_the_stall, "{mode:?}");
        }
    }

    #[tokio::test]
    async fn a_body_longer_than_its_content_length_is_fatal() {
        let body = body(BODY_BYTES, 11);
        let server = TestServer::start(Mode::LongerThanDeclared, Arc::clone(&body)).await;
        let mut state = DownloadState::new();
        let error = fetch_quietly(&server.url, &mut state, &FetchOptions::default())
            .await
            .unwrap_err();
        assert!(!error.is_retryable(), "{error:?}");
        assert!(
            error.message().contains("body longer than declared"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_response_head_over_the_limit_is_fatal() {
        let server = TestServer::start(Mode::HugeHead, body(10, 12)).await;
        let mut state = DownloadState::new();
        let error = fetch_quietly(&server.url, &mut state, &FetchOptions::default())
            .await
            .unwrap_err();
        assert!(!error.is_retryable(), "{error:?}");
        assert!(error.message().contains("max_header_bytes"), "{error}");
    }

    #[tokio::test]
    async fn a_refused_connection_is_retryable() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let url = parse_http_url(&format!("http://127.0.0.1:{port}/fw.bin")).unwrap();
        let mut state = DownloadState::new();
        let error = fetch_quietly(&url, &mut state, &FetchOptions::default())
            .await
            .unwrap_err();
        assert!(error.is_retryable(), "{error:?}");
        assert!(
            error.message().contains("connecting to 127.0.0.1:"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_user_agent_with_a_newline_is_fatal_before_connecting() {
        let url = parse_http_url("http://127.0.0.1:9/fw.bin").unwrap();
        let opts = FetchOptions {
            user_agent: "x\r\nInjected: 1".into(),
            ..FetchOptions::default()
        };
        let error = fetch_quietly(&url, &mut DownloadState::new(), &opts)
            .await
            .unwrap_err();
        assert!(!error.is_retryable());
        assert!(error.message().contains("user agent"), "{error}");
    }

    #[tokio::test]
    async fn progress_is_throttled_monotonic_and_ends_with_the_total() {
        let body = body(BODY_BYTES, 13);
        let server = TestServer::start(Mode::Chunked, Arc::clone(&body)).await;
        let mut state = DownloadState::new();
        let mut reports = Vec::new();
        bounded(fetch(
            &server.url,
            &mut state,
            &FetchOptions::default(),
            |bytes, total| reports.push((bytes, total)),
        ))
        .await
        .unwrap();
        let len = BODY_BYTES as u64;
        assert_eq!(reports.last(), Some(&(len, Some(len))));
        assert!(reports.windows(2).all(|w| w[0].0 <= w[1].0), "{reports:?}");
        assert!(
            reports.len() as u64 <= len / PROGRESS_STEP_BYTES + 2,
            "{reports:?}"
        );
    }

    #[test]
    fn fetch_is_send_so_the_adapter_can_spawn_it() {
        fn assert_send<T: Send>(_: &T) {}
        let url = parse_http_url("http://h/fw").unwrap();
        let mut state = DownloadState::new();
        let opts = FetchOptions::default();
        assert_send(&fetch(&url, &mut state, &opts, |_, _| {}));
    }

    #[test]
    fn urls_parse_with_their_defaults() {
        let cases = [
            ("http://h", "h", 80, "/"),
            ("HTTP://Example.com:8080", "Example.com", 8080, "/"),
            (
                "http://10.0.0.1:81/fw/a.bin?v=2#top",
                "10.0.0.1",
                81,
                "/fw/a.bin?v=2",
            ),
            ("http://h?x=1", "h", 80, "/?x=1"),
            ("http://[::1]:8080/fw.bin", "::1", 8080, "/fw.bin"),
            ("http://[::1]", "::1", 80, "/"),
            ("http://my_host-1.local/", "my_host-1.local", 80, "/"),
        ];
        for (text, host, port, path) in cases {
            let url = parse_http_url(text).unwrap();
            assert_eq!(
                (url.host.as_str(), url.port, url.path_and_query.as_str()),
                (host, port, path),
                "{text}"
            );
        }
        let v6 = parse_http_url("http://[::1]:8080/fw.bin").unwrap();
        assert_eq!(v6.authority(), "[::1]:8080");
        assert_eq!(v6.to_string(), "http://[::1]:8080/fw.bin");
        assert_eq!(parse_http_url("http://h:80").unwrap().authority(), "h");
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        let cases = [
            (
                "https://h/fw.bin",
                "https:// URLs are not supported yet: serve the image over http:// or use download = \"simulated\"",
            ),
            ("ftp://h/fw.bin", "unsupported scheme \"ftp\""),
            ("h/fw.bin", "missing scheme"),
            ("http://", "missing host"),
            ("http:///fw.bin", "missing host"),
            ("http://:8080/fw.bin", "missing host"),
            ("http://h:/fw.bin", "empty port"),
            ("http://h:0/", "port \"0\""),
            ("http://h:65536/", "port \"65536\""),
            ("http://h:+80/", "port \"+80\""),
            ("http://h:x/", "port \"x\""),
            ("http://::1/", "brackets"),
            ("http://[::1/", "closing ']'"),
            ("http://[zz]/", "not an IPv6 address"),
            ("http://[::1]x/", "expected ':port'"),
            ("http://u:p@h/", "credentials"),
            ("http://h/a b", "percent-encode"),
            ("http://h/a\r\nX: y", "percent-encode"),
            ("http://h\u{e9}/", "has the character"),
        ];
        for (text, expected) in cases {
            let error = parse_http_url(text).unwrap_err();
            assert!(error.contains(expected), "{text:?}: {error}");
            assert!(error.starts_with(&format!("URL {text:?}: ")), "{error}");
        }
    }

    #[test]
    fn sha256_covers_exactly_the_bytes_so_far() {
        let mut state = DownloadState::new();
        assert_eq!(
            state.sha256_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        state.append(b"ab");
        state.append(b"c");
        assert_eq!(
            state.sha256_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(state.sha256_hex(), state.sha256_hex(), "does not consume");
        state.total = Some(3);
        state.restart();
        assert_eq!((state.bytes, state.total), (0, None));
        assert!(state.sha256_hex().starts_with("e3b0c442"));
    }

    #[test]
    fn the_chunked_decoder_gives_the_same_body_for_any_split() {
        let body = body(70_000, 14);
        let encoded = chunked(&body);
        for piece in [1, 2, 3, 5, 64, 1000, 4096, 65_536, encoded.len()] {
            let mut decoder = ChunkedDecoder::new();
            let mut out = Vec::new();
            for mut input in encoded.chunks(piece) {
                while !input.is_empty() {
                    assert!(!decoder.is_done(), "data after the end, piece {piece}");
                    let (used, data) = decoder.decode(input).unwrap();
                    assert!(used > 0);
                    out.extend_from_slice(data);
                    input = &input[used..];
                }
            }
            assert!(decoder.is_done(), "piece {piece}");
            assert!(out == *body, "piece {piece}");
        }
    }

    #[test]
    fn malformed_chunked_bodies_say_why() {
        let cases: [(&[u8], &str); 4] = [
            (b"zz\r\n", "hexadecimal"),
            (b"\r\n", "hexadecimal"),
            (b"3\r\nabcX\r\n", "expected CRLF"),
            (b"11111111111111111\r\n", "at most 16"),
        ];
        for (input, expected) in cases {
            let mut decoder = ChunkedDecoder::new();
            let mut rest = input;
            let error = loop {
                match decoder.decode(rest) {
                    Ok((used, _)) => rest = &rest[used..],
                    Err(error) => break error,
                }
                assert!(!rest.is_empty(), "{input:?} decoded without error");
            };
            assert!(error.contains(expected), "{input:?}: {error}");
        }
        let long_line = vec![b'1'; MAX_CHUNK_LINE_BYTES + 1];
        assert!(ChunkedDecoder::new().decode(&long_line).is_err());
    }

    #[test]
    fn content_ranges_parse_or_say_why() {
        assert_eq!(
            parse_content_range("bytes 10-19/20"),
            Ok(ContentRange::Satisfied {
                start: 10,
                end: 19,
                total: Some(20)
            })
        );
        assert_eq!(
            parse_content_range("bytes 0-9/*"),
            Ok(ContentRange::Satisfied {
                start: 0,
                end: 9,
                total: None
            })
        );
        assert_eq!(
            parse_content_range("bytes */300"),
            Ok(ContentRange::Unsatisfied { total: 300 })
        );
        for bad in [
            "bytes 10-9/20",
            "bytes 10-20/20",
            "bytes */*",
            "items 0-1/2",
            "bytes 0-1",
            "bytes -1-2/3",
            "bytes 0-x/3",
        ] {
            let error = parse_content_range(bad).unwrap_err();
            assert!(error.contains(bad), "{error}");
        }
    }

    #[test]
    fn response_heads_parse_or_say_why() {
        let raw = b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 1-2/3\r\nETag: \"a\"\r\n\
                    X-Empty:\r\n\r\n";
        assert_eq!(find_head_end(raw), Some(raw.len()));
        let head = ResponseHead::parse(raw).unwrap();
        assert_eq!(head.status, 206);
        assert_eq!(head.reason, "Partial Content");
        assert_eq!(head.header("content-range"), Some("bytes 1-2/3"));
        assert_eq!(head.header("x-empty"), Some(""));
        assert_eq!(head.validator().as_deref(), Some("\"a\""));

        let bare = b"HTTP/1.0 200\nContent-Length: 3\n\nabc";
        assert_eq!(find_head_end(bare), Some(bare.len() - 3));
        assert_eq!(
            ResponseHead::parse(&bare[..bare.len() - 3]).unwrap().status,
            200
        );

        for (raw, expected) in [
            (&b"SSH-2.0-OpenSSH\r\n\r\n"[..], "HTTP/1.1"),
            (b"HTTP/1.1 20 OK\r\n\r\n", "three-digit"),
            (b"HTTP/1.1 200 OK\r\nNo colon\r\n\r\n", "no ':'"),
            (b"HTTP/1.1 200 OK\r\nA: b\r\n folded\r\n\r\n", "folded"),
            (b"HTTP/1.1 200 OK\r\nBad Name: b\r\n\r\n", "not a token"),
        ] {
            let error = ResponseHead::parse(raw).unwrap_err();
            assert!(error.contains(expected), "{error}");
        }
    }

    #[test]
    fn framing_follows_the_headers() {
        let head = |headers: &str| {
            ResponseHead::parse(format!("HTTP/1.1 200 OK\r\n{headers}\r\n").as_bytes()).unwrap()
        };
        let framing = Framing::from_head(&head("Content-Length: 42\r\n")).unwrap();
        assert_eq!(framing.content_length, Some(42));
        let framing = Framing::from_head(&head(
            "Transfer-Encoding: chunked\r\nContent-Length: 42\r\n",
        ))
        .unwrap();
        assert!(matches!(framing.decoder, BodyDecoder::Chunked(_)));
        assert!(matches!(
            Framing::from_head(&head("")).unwrap().decoder,
            BodyDecoder::UntilClose
        ));
        for (headers, expected) in [
            ("Transfer-Encoding: gzip, chunked\r\n", "Transfer-Encoding"),
            ("Content-Encoding: gzip\r\n", "Content-Encoding"),
            ("Content-Length: 1\r\nContent-Length: 2\r\n", "disagree"),
            ("Content-Length: -1\r\n", "decimal"),
        ] {
            let error = Framing::from_head(&head(headers)).unwrap_err();
            assert!(error.contains(expected), "{headers:?}: {error}");
        }
    }

    #[tokio::test]
    async fn download_slots_bound_the_downloads_in_flight() {
        let slots = DownloadSlots::new(2);
        assert_eq!((slots.max(), slots.in_use()), (2, 0));
        let a = bounded(slots.acquire()).await.unwrap();
        let _b = bounded(slots.acquire()).await.unwrap();
        assert_eq!(slots.in_use(), 2);
        assert!(slots.try_acquire().is_none());
        drop(a);
        assert_eq!(slots.in_use(), 1);
        let _c = slots.try_acquire().unwrap();
        slots.close();
        assert!(bounded(slots.acquire()).await.is_none());
        assert_eq!(DownloadSlots::new(0).max(), 1);
    }
}
