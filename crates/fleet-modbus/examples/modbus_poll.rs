//! A lean Modbus TCP poller for load tests: reads every TCP device of a fleetsim map file in a
//! loop, over a given number of connections per port, and prints requests per second and the
//! round-trip latency it saw.
//!
//!   cargo run --release -p fleet-modbus --example modbus_poll -- fleetsim-run/modbus-map.csv \
//!       --duration 60s --connections 2 --registers 18
//!
//! Each connection sends one request, waits for its answer, sends the next (as a SCADA poller
//! does). Input registers from address 0 (`--registers N`, 1..=125). Bounded by `--duration`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Args {
    map: String,
    duration: Duration,
    connections: usize,
    registers: u16,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut args = Args {
        map: String::new(),
        duration: Duration::from_secs(30),
        connections: 1,
        registers: 18,
    };
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--duration" => {
                let v = value("--duration")?;
                let secs: u64 = v
                    .trim_end_matches('s')
                    .parse()
                    .map_err(|_| format!("--duration {v}: seconds, like 60s"))?;
                args.duration = Duration::from_secs(secs);
            }
            "--connections" => {
                let v = value("--connections")?;
                args.connections = v
                    .parse()
                    .map_err(|_| format!("--connections {v}: a number"))?;
            }
            "--registers" => {
                let v = value("--registers")?;
                args.registers = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=125).contains(n))
                    .ok_or(format!("--registers {v}: 1..=125"))?;
            }
            "-h" | "--help" => {
                return Err(
                    "usage: modbus_poll MAP.csv [--duration 60s] [--connections N] [--registers N]"
                        .into(),
                );
            }
            m if args.map.is_empty() => args.map = m.to_string(),
            other => return Err(format!("unexpected argument {other}")),
        }
    }
    if args.map.is_empty() {
        return Err(
            "usage: modbus_poll MAP.csv [--duration 60s] [--connections N] [--registers N]".into(),
        );
    }
    Ok(args)
}

#[derive(Default)]
struct Tally {
    ok: u64,
    exceptions: u64,
    /// No answer within the timeout (a booting, silenced or cut-off slave): the connection is
    /// opened again so that a late answer cannot be taken for the next one.
    timeouts: u64,
    errors: u64,
    latency: Option<Histogram<u64>>,
}

async fn connect(addr: SocketAddr) -> Option<TcpStream> {
    let s = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let _ = s.set_nodelay(true);
    Some(s)
}

async fn poll(addr: SocketAddr, units: Vec<u8>, registers: u16, until: Instant) -> Tally {
    let mut t = Tally {
        latency: Histogram::new_with_bounds(1, 60_000_000, 3).ok(),
        ..Tally::default()
    };
    let mut stream = None;
    let mut tid: u16 = 0;
    let mut answer = vec![0u8; 260];
    while Instant::now() < until {
        for &unit in &units {
            if Instant::now() >= until {
                break;
            }
            let s = match &mut stream {
                Some(s) => s,
                None => match connect(addr).await {
                    Some(s) => stream.insert(s),
                    None => {
                        t.errors += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            tid = tid.wrapping_add(1);
            let r = registers.to_be_bytes();
            let id = tid.to_be_bytes();
            let req = [id[0], id[1], 0, 0, 0, 6, unit, 0x04, 0, 0, r[0], r[1]];
            let start = Instant::now();
            let exchange = async {
                s.write_all(&req).await?;
                s.read_exact(&mut answer[..7]).await?;
                let len = usize::from(u16::from_be_bytes([answer[4], answer[5]])).saturating_sub(1);
                if len == 0 || len > 253 {
                    return Err(std::io::Error::other("bad MBAP length"));
                }
                s.read_exact(&mut answer[7..7 + len]).await?;
                Ok::<bool, std::io::Error>(answer[7] & 0x80 != 0)
            };
            match tokio::time::timeout(Duration::from_secs(1), exchange).await {
                Ok(Ok(exception)) => {
                    if exception {
                        t.exceptions += 1;
                    } else {
                        t.ok += 1;
                    }
                    if let Some(h) = &mut t.latency {
                        let _ = h.record(start.elapsed().as_micros().max(1) as u64);
                    }
                }
                Ok(Err(_)) => {
                    t.errors += 1;
                    stream = None;
                }
                Err(_) => {
                    t.timeouts += 1;
                    stream = None;
                }
            }
        }
    }
    t
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let text = match std::fs::read_to_string(&args.map) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: {e}", args.map);
            std::process::exit(2);
        }
    };
    let mut ports: BTreeMap<SocketAddr, Vec<u8>> = BTreeMap::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() == 6
            && f[2] == "tcp"
            && let (Ok(addr), Ok(unit)) = (format!("{}:{}", f[3], f[4]).parse(), f[5].parse())
        {
            ports.entry(addr).or_default().push(unit);
        }
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            std::process::exit(1);
        }
    };
    let devices: usize = ports.values().map(Vec::len).sum();
    let started = Instant::now();
    let until = started + args.duration;
    let tallies = rt.block_on(async {
        let mut tasks = Vec::new();
        for (addr, units) in &ports {
            let per = units.len().div_ceil(args.connections.max(1)).max(1);
            for chunk in units.chunks(per) {
                tasks.push(tokio::spawn(poll(
                    *addr,
                    chunk.to_vec(),
                    args.registers,
                    until,
                )));
            }
        }
        let mut out = Vec::new();
        for t in tasks {
            if let Ok(t) = t.await {
                out.push(t);
            }
        }
        out
    });
    let secs = started.elapsed().as_secs_f64();
    let mut total = Tally {
        latency: Histogram::new_with_bounds(1, 60_000_000, 3).ok(),
        ..Tally::default()
    };
    for t in &tallies {
        total.ok += t.ok;
        total.exceptions += t.exceptions;
        total.timeouts += t.timeouts;
        total.errors += t.errors;
        if let (Some(a), Some(b)) = (&mut total.latency, &t.latency) {
            let _ = a.add(b);
        }
    }
    let q = |p: f64| {
        total
            .latency
            .as_ref()
            .map(|h| h.value_at_quantile(p))
            .unwrap_or(0)
    };
    println!(
        "polled {devices} devices on {} ports over {} connections for {secs:.1} s: {} answers ({} exceptions), {} timeouts, {} errors, {:.0} requests/s; round trip p50 {} us, p99 {} us, max {} us",
        ports.len(),
        tallies.len(),
        total.ok + total.exceptions,
        total.exceptions,
        total.timeouts,
        total.errors,
        (total.ok + total.exceptions) as f64 / secs,
        q(0.5),
        q(0.99),
        total.latency.as_ref().map(|h| h.max()).unwrap_or(0)
    );
    if total.errors > 0 {
        std::process::exit(1);
    }
}
