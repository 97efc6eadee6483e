//! One serial line: a PTY pair (fleetsim keeps the master and a handle on the slave, and links
//! the slave's `/dev/pts/N` under a stable name) or a real port; writes paced at the line's
//! baud rate; byte impairments.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet_core::serial::Impairments;
use fleet_metrics::SerialCounters;
use rand::RngExt;
use rand_pcg::Pcg32;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_serial::SerialPort as _;

/// Bits on the wire per byte: start, 8 data bits, stop (8N1).
pub const BITS_PER_BYTE: u32 = 10;
/// How long a write may wait for the other end to take bytes before they are thrown away (a
/// PTY nobody reads fills up; a real UART would have sent them into the void).
const STALL: Duration = Duration::from_millis(50);

/// Where a line goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    /// A PTY pair; the slave is linked at this path.
    Pty(PathBuf),
    /// A real port (or anything that opens like one: a socat PTY).
    Real(String),
}

/// An open line.
pub struct Line {
    pub stream: tokio_serial::SerialStream,
    /// PTY: fleetsim's own handle on the slave end (keeps the line up while no one has it
    /// open, and lets stale output be flushed).
    slave: Option<tokio_serial::SerialStream>,
    link: Option<PathBuf>,
}

impl std::fmt::Debug for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Line").field("link", &self.link).finish()
    }
}

impl Line {
    /// Opens the line (inside a tokio runtime). A PTY's link replaces whatever was at its path.
    pub fn open(place: &Place, baud: u32) -> io::Result<Line> {
        match place {
            Place::Pty(link) => {
                let (master, slave) =
                    tokio_serial::SerialStream::pair().map_err(io::Error::other)?;
                let name = slave
                    .name()
                    .ok_or_else(|| io::Error::other("the PTY has no name"))?;
                let _ = std::fs::remove_file(link);
                std::os::unix::fs::symlink(&name, link)?;
                Ok(Line {
                    stream: master,
                    slave: Some(slave),
                    link: Some(link.clone()),
                })
            }
            Place::Real(path) => {
                let stream = tokio_serial::SerialStream::open(&tokio_serial::new(path, baud))
                    .map_err(io::Error::other)?;
                Ok(Line {
                    stream,
                    slave: None,
                    link: None,
                })
            }
        }
    }

    /// Throws away output the other end has not read (PTY only); how many bytes that was.
    fn flush_stale(&mut self) -> u64 {
        match &self.slave {
            Some(s) => {
                let queued = s.bytes_to_read().map(u64::from).unwrap_or(0);
                let _ = s.clear(tokio_serial::ClearBuffer::Input);
                queued
            }
            None => 0,
        }
    }

    /// Closes the line: the PTY's link disappears with it (an unplugged port).
    pub fn close(self) {
        if let Some(link) = &self.link {
            let _ = std::fs::remove_file(link);
        }
    }
}

/// Paces writes at the line's speed: a burst of n bytes occupies the line for n × 10 bits.
#[derive(Debug)]
pub struct Pacer {
    per_byte: Duration,
    busy_until: Instant,
}

impl Pacer {
    pub fn new(baud: u32) -> Pacer {
        Pacer {
            per_byte: byte_time(baud),
            busy_until: Instant::now(),
        }
    }

    /// True when what was written before is still on the wire at `at`.
    pub fn busy_at(&self, at: Instant) -> bool {
        self.busy_until > at
    }

    /// Writes `bytes` once the line is free, then marks it busy for their transmission time.
    /// Output nobody takes within a short while is thrown away (and counted as dropped).
    pub async fn write(
        &mut self,
        line: &mut Line,
        bytes: &[u8],
        c: &mut SerialCounters,
    ) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        tokio::time::sleep_until(self.busy_until).await;
        if write_or_stall(&mut line.stream, bytes).await?.is_err() {
            // Nobody is reading: what is queued is stale; drop it and try once more.
            c.dropped_bytes += line.flush_stale();
            if write_or_stall(&mut line.stream, bytes).await?.is_err() {
                c.dropped_bytes += line.flush_stale();
            }
        }
        let now = Instant::now();
        self.busy_until = now.max(self.busy_until) + self.per_byte * bytes.len() as u32;
        Ok(())
    }
}

/// Ok(Ok(())) written; Ok(Err(())) the other end did not take it in time; Err an I/O error.
async fn write_or_stall<S: AsyncWrite + Unpin>(
    s: &mut S,
    bytes: &[u8],
) -> io::Result<Result<(), ()>> {
    match tokio::time::timeout(STALL, s.write_all(bytes)).await {
        Ok(Ok(())) => Ok(Ok(())),
        Ok(Err(e)) => Err(e),
        Err(_) => Ok(Err(())),
    }
}

/// Time one byte takes on the wire at `baud` (8N1).
pub fn byte_time(baud: u32) -> Duration {
    Duration::from_nanos(u64::from(BITS_PER_BYTE) * 1_000_000_000 / u64::from(baud.max(1)))
}

/// Drops and corrupts bytes of `buf` with the impairments' probabilities.
pub fn impair(buf: &mut Vec<u8>, imp: &Impairments, rng: &mut Pcg32, c: &mut SerialCounters) {
    if imp.corrupt_byte <= 0.0 && imp.drop_byte <= 0.0 {
        return;
    }
    let mut out = Vec::with_capacity(buf.len());
    for &b in buf.iter() {
        if imp.drop_byte > 0.0 && rng.random::<f64>() < imp.drop_byte {
            c.dropped_bytes += 1;
            continue;
        }
        if imp.corrupt_byte > 0.0 && rng.random::<f64>() < imp.corrupt_byte {
            c.corrupted_bytes += 1;
            out.push(b ^ (1u8 << rng.random_range(0..8u32)));
            continue;
        }
        out.push(b);
    }
    *buf = out;
}

/// Counts the lines (LF-terminated, or CR for CR-only lines) in `bytes`.
pub fn count_lines(bytes: &[u8]) -> u64 {
    let lf = bytes.iter().filter(|b| **b == b'\n').count();
    if lf > 0 {
        lf as u64
    } else {
        bytes.iter().filter(|b| **b == b'\r').count() as u64
    }
}

/// The path a PTY of device `device_id` is linked at.
pub fn pty_link(run_dir: &Path, device_id: &str) -> PathBuf {
    run_dir.join("serial").join(device_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_core::serial::Impairments;

    #[test]
    fn a_byte_takes_ten_bit_times() {
        assert_eq!(byte_time(9_600), Duration::from_nanos(1_041_666));
        assert_eq!(byte_time(115_200), Duration::from_nanos(86_805));
    }

    #[test]
    fn impairments_drop_and_flip_at_their_rates() {
        let imp = Impairments {
            corrupt_byte: 0.1,
            drop_byte: 0.05,
            ..Impairments::default()
        };
        let mut rng = Pcg32::new(1, 1);
        let mut c = SerialCounters::default();
        let mut buf = vec![0u8; 100_000];
        impair(&mut buf, &imp, &mut rng, &mut c);
        assert_eq!(buf.len() as u64, 100_000 - c.dropped_bytes);
        assert!((4_000..6_000).contains(&c.dropped_bytes), "{c:?}");
        assert!((8_000..11_000).contains(&c.corrupted_bytes), "{c:?}");
        let flipped = buf.iter().filter(|b| **b != 0).count() as u64;
        assert_eq!(
            flipped, c.corrupted_bytes,
            "one bit flipped per corrupted byte"
        );
        assert!(buf.iter().all(|b| b.count_ones() <= 1));
    }

    #[test]
    fn no_impairments_leave_the_bytes_alone() {
        let mut rng = Pcg32::new(1, 1);
        let mut c = SerialCounters::default();
        let mut buf = b"$GPGGA,...*00\r\n".to_vec();
        impair(&mut buf, &Impairments::default(), &mut rng, &mut c);
        assert_eq!(buf, b"$GPGGA,...*00\r\n");
        assert_eq!(count_lines(b"a\r\nb\r\n"), 2);
        assert_eq!(count_lines(b"a\rb\r"), 2);
    }
}
