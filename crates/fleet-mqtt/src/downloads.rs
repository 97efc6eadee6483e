//! HTTP image downloads of one shard's devices: at most `max` at once (a semaphore shared by
//! the shard), each in a task of its own that reports progress and hands its state back when
//! it ends, so a cancelled or failed download resumes where it stopped (HTTP Range).

use std::collections::HashMap;

use tokio::sync::{mpsc, oneshot};

use crate::adapter::MqttEvent;
use crate::http::{DownloadSlots, DownloadState, FetchError, FetchOptions, fetch, parse_http_url};

/// How a download attempt ended.
#[derive(Debug)]
pub enum Ended {
    Done,
    Failed(FetchError),
    Cancelled,
}

/// What a finished attempt hands back.
#[derive(Debug)]
pub struct Finished {
    pub dev: u32,
    pub epoch: u32,
    pub state: DownloadState,
    pub ended: Ended,
    /// Bytes this attempt received, and whether it asked for a range.
    pub fetched: u64,
    pub resumed: bool,
}

struct Slot {
    epoch: u32,
    /// None while a task holds it.
    state: Option<DownloadState>,
    cancel: Option<oneshot::Sender<()>>,
}

/// The downloads of one shard.
pub struct Downloads {
    slots: DownloadSlots,
    opts: FetchOptions,
    by_dev: HashMap<u32, Slot>,
    /// Attempts that could not start (bad URL): reported on the next tick.
    pub refused: Vec<(u32, String)>,
}

impl Downloads {
    /// The downloads of one shard, sharing `slots` (the whole process's bound) with the others.
    pub fn new(slots: DownloadSlots) -> Downloads {
        Downloads {
            slots,
            opts: FetchOptions::default(),
            by_dev: HashMap::new(),
            refused: Vec::new(),
        }
    }

    /// Starts (or resumes from `offset`) device `dev`'s download of `url`.
    pub fn start(&mut self, dev: u32, url: &str, offset: u64, events: &mpsc::Sender<MqttEvent>) {
        let parsed = match parse_http_url(url) {
            Ok(u) => u,
            Err(e) => {
                self.refused.push((dev, e));
                return;
            }
        };
        let slot = self.by_dev.entry(dev).or_insert(Slot {
            epoch: 0,
            state: Some(DownloadState::new()),
            cancel: None,
        });
        if let Some(c) = slot.cancel.take() {
            let _ = c.send(()); // an attempt still out is superseded
        }
        slot.epoch = slot.epoch.wrapping_add(1);
        let mut state = slot.state.take().unwrap_or_default();
        // The device asks for 0 to start over; any other offset means "continue": what this
        // side kept is the truth (the device's own count lags by up to a progress step).
        if offset == 0 {
            state.restart();
        }
        let (tx, mut rx) = oneshot::channel();
        slot.cancel = Some(tx);
        let epoch = slot.epoch;
        let slots = self.slots.clone();
        let opts = self.opts.clone();
        let events = events.clone();
        tokio::spawn(async move {
            let start_bytes = state.bytes;
            let resumed = start_bytes > 0;
            let ended = tokio::select! {
                _ = &mut rx => Ended::Cancelled,
                r = async {
                    let Some(_permit) = slots.acquire().await else {
                        return Err(FetchError::Retryable("shutting down".into()));
                    };
                    let progress_tx = events.clone();
                    fetch(&parsed, &mut state, &opts, |bytes, total| {
                        let _ = progress_tx.try_send(MqttEvent::DownloadProgress {
                            dev,
                            epoch,
                            bytes,
                            total,
                        });
                    })
                    .await
                } => match r {
                    Ok(()) => Ended::Done,
                    Err(e) => Ended::Failed(e),
                },
            };
            let fetched = state.bytes.saturating_sub(start_bytes);
            let _ = events
                .send(MqttEvent::DownloadEnded(Box::new(Finished {
                    dev,
                    epoch,
                    state,
                    ended,
                    fetched,
                    resumed,
                })))
                .await;
        });
    }

    /// Stops device `dev`'s attempt (its bytes are kept for a resume).
    pub fn cancel(&mut self, dev: u32) {
        if let Some(slot) = self.by_dev.get_mut(&dev)
            && let Some(c) = slot.cancel.take()
        {
            let _ = c.send(());
        }
    }

    /// Takes an attempt's state back; false if the attempt is stale.
    pub fn finished(&mut self, f: &mut Finished) -> bool {
        let Some(slot) = self.by_dev.get_mut(&f.dev) else {
            return false;
        };
        if slot.epoch != f.epoch {
            return false;
        }
        slot.cancel = None;
        let state = std::mem::take(&mut f.state);
        let done = matches!(f.ended, Ended::Done);
        slot.state = Some(state);
        if done {
            // The image is with the device now.
            let s = self.by_dev.remove(&f.dev).and_then(|s| s.state);
            if let Some(s) = s {
                f.state = s;
            }
        }
        true
    }

    /// Whether progress of this attempt is current.
    pub fn current(&self, dev: u32, epoch: u32) -> bool {
        self.by_dev.get(&dev).is_some_and(|s| s.epoch == epoch)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use sha2::{Digest, Sha256};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Serves `body` slowly (4 KiB every 5 ms), honouring `Range: bytes=N-`; records each
    /// request's Range header.
    async fn slow_server(body: Arc<Vec<u8>>, ranges: Arc<Mutex<Vec<Option<u64>>>>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let (body, ranges) = (body.clone(), ranges.clone());
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&req).to_ascii_lowercase();
                    let from = text
                        .lines()
                        .find_map(|l| l.strip_prefix("range: bytes="))
                        .and_then(|r| r.trim_end_matches('-').trim().parse::<u64>().ok());
                    ranges.lock().expect("lock").push(from);
                    let start = from.unwrap_or(0) as usize;
                    let head = match from {
                        Some(f) => format!(
                            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {f}-{}/{}\r\nConnection: close\r\n\r\n",
                            body.len() - start,
                            body.len() - 1,
                            body.len()
                        ),
                        None => format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        ),
                    };
                    if sock.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    for chunk in body[start..].chunks(4096) {
                        if sock.write_all(chunk).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                });
            }
        });
        format!("http://{addr}/fw.bin")
    }

    async fn next_end(rx: &mut mpsc::Receiver<MqttEvent>) -> Box<Finished> {
        loop {
            match tokio::time::timeout(Duration::from_secs(20), rx.recv()).await {
                Ok(Some(MqttEvent::DownloadEnded(f))) => return f,
                Ok(Some(_)) => {}
                other => panic!("no end of the download: {:?}", other.is_ok()),
            }
        }
    }

    #[tokio::test]
    async fn a_download_stopped_by_a_link_drop_resumes_from_the_bytes_it_kept() {
        let body: Arc<Vec<u8>> = Arc::new((0..200_000u32).map(|i| (i % 251) as u8).collect());
        let ranges = Arc::new(Mutex::new(Vec::new()));
        let url = slow_server(body.clone(), ranges.clone()).await;
        let (tx, mut rx) = mpsc::channel(1024);
        let mut d = Downloads::new(DownloadSlots::new(2));
        d.start(7, &url, 0, &tx);
        // Let some of it arrive, then the link drops.
        loop {
            match tokio::time::timeout(Duration::from_secs(20), rx.recv()).await {
                Ok(Some(MqttEvent::DownloadProgress { bytes, .. })) if bytes >= 65_536 => break,
                Ok(Some(_)) => {}
                other => panic!("no progress: {:?}", other.is_ok()),
            }
        }
        d.cancel(7);
        let mut f = next_end(&mut rx).await;
        assert!(matches!(f.ended, Ended::Cancelled), "{:?}", f.ended);
        let kept = f.state.bytes;
        assert!((65_536..200_000).contains(&kept), "{kept}");
        assert!(d.finished(&mut f));
        // The device asks to continue from what it was last told (less than what arrived).
        d.start(7, &url, 65_536, &tx);
        let mut f = next_end(&mut rx).await;
        assert!(matches!(f.ended, Ended::Done), "{:?}", f.ended);
        assert!(f.resumed);
        assert!(d.finished(&mut f));
        assert_eq!(f.state.bytes, 200_000);
        let want: String = Sha256::digest(&body[..])
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            f.state.sha256_hex(),
            want,
            "the resumed image verifies whole"
        );
        assert_eq!(
            *ranges.lock().expect("lock"),
            vec![None, Some(kept)],
            "the second GET asked for the rest"
        );
    }
}
