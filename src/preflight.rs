//! Checks that a run fits this machine before it starts, with advice when it does not.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use fleet_engine::process;

/// Memory a device costs, measured (docs/benchmarks.md) and rounded up: on the virtual clock
/// (state machine, scheduler entries, simulated in-flight acks), and on the wall clock per
/// session (plus the broker's side when it is embedded: rumqttd keeps ~44 KB per connection).
pub const VIRTUAL_BYTES_PER_DEVICE: u64 = 1_024;
pub const WALL_BYTES_PER_SESSION: u64 = 2_048;
pub const EMBEDDED_BROKER_BYTES_PER_SESSION: u64 = 48 * 1024;
/// A TLS session adds rustls' state and buffers, a writer task and, with a client certificate,
/// its own configuration: 13.2 KB of process RSS per session measured with 5,000 (benchmarks).
pub const TLS_BYTES_PER_SESSION: u64 = 16 * 1024;
/// Share of the available memory a run may plan to use.
const MEMORY_HEADROOM: f64 = 0.8;

/// `MemAvailable` from /proc/meminfo, in bytes (None where it cannot be read).
fn memory_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    let machine = kb * 1024;
    // In a container (a Kubernetes pod) the cgroup's limit is what counts, not the node's.
    Some(cgroup_room().map_or(machine, |room| room.min(machine)))
}

/// Memory this process's cgroup may still take: its limit minus its use (cgroup v2, else v1);
/// None without a limit.
fn cgroup_room() -> Option<u64> {
    let read = |p: &str| -> Option<String> {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
    };
    let (limit, used) = match read("/sys/fs/cgroup/memory.max") {
        Some(max) => (max, read("/sys/fs/cgroup/memory.current")?),
        None => (
            read("/sys/fs/cgroup/memory/memory.limit_in_bytes")?,
            read("/sys/fs/cgroup/memory/memory.usage_in_bytes")?,
        ),
    };
    let limit: u64 = limit.parse().ok()?; // "max": no limit
    // cgroup v1 says "no limit" with a huge number.
    if limit >= 1 << 60 {
        return None;
    }
    Some(limit.saturating_sub(used.parse().ok()?))
}

/// Refuses a run whose estimated memory exceeds what the machine has available. `sessions`:
/// the MQTT sessions of the fleet (one per device, or one per gateway for devices behind
/// gateways, which cost a device's state each).
pub fn check_memory(
    devices: u32,
    sessions: u32,
    wall: bool,
    embedded: bool,
    tls: bool,
) -> Result<(), String> {
    let per_device = if !wall {
        VIRTUAL_BYTES_PER_DEVICE
    } else if embedded {
        WALL_BYTES_PER_SESSION + EMBEDDED_BROKER_BYTES_PER_SESSION
    } else if tls {
        WALL_BYTES_PER_SESSION + TLS_BYTES_PER_SESSION
    } else {
        WALL_BYTES_PER_SESSION
    };
    // Devices without a session of their own (no MQTT, or behind a gateway) cost a device's
    // state only.
    let sessions = u64::from(sessions.min(devices));
    let need = sessions * per_device + (u64::from(devices) - sessions) * VIRTUAL_BYTES_PER_DEVICE;
    let Some(available) = memory_available() else {
        return Ok(());
    };
    let budget = (available as f64 * MEMORY_HEADROOM) as u64;
    if need > budget {
        let mib = |b: u64| b / (1024 * 1024);
        // The largest fleet of the same mix that fits.
        let fits = (u64::from(devices) as f64 * budget as f64 / need as f64) as u64;
        let shared = if sessions < u64::from(devices) {
            format!(
                " and {} without a session of their own at {VIRTUAL_BYTES_PER_DEVICE} bytes",
                u64::from(devices) - sessions
            )
        } else {
            String::new()
        };
        return Err(format!(
            "{devices} devices need about {} MiB ({sessions} sessions at {per_device} bytes each{}{shared}), but only {} MiB are available \
             (80 % of MemAvailable).\n  fix: --devices {} or fewer{}",
            mib(need),
            if wall && embedded {
                ", most of it the embedded broker's"
            } else {
                ""
            },
            mib(budget),
            fits,
            if wall && embedded {
                ", or an external broker (--broker)"
            } else {
                ""
            }
        ));
    }
    Ok(())
}

/// File descriptors kept free for everything that is not a device socket (listeners, logs,
/// the runtime's own, the report).
pub const RESERVED_FDS: u64 = 256;

/// The local port range for outgoing connections (Linux), or the common default.
fn ephemeral_ports() -> u64 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            let mut it = t.split_whitespace().map(|n| n.parse::<u64>().ok());
            let (lo, hi) = (it.next()??, it.next()??);
            Some(hi.saturating_sub(lo) + 1)
        })
        .unwrap_or(28_232)
}

/// Sessions per (source address, broker address) above which Linux's `connect()` gets slow:
/// it prefers even local ports, and once those are taken every further connect scans them all
/// (measured: a 0.6 s burst of kernel time and a 75 ms connect p99 at 15,000 sessions from one
/// address, 1.4 ms from three).
pub const FAST_SESSIONS_PER_SOURCE: u64 = 10_000;

/// The source addresses to use for `sessions` MQTT sessions. Given ones are kept (with a
/// warning when they are few for the fleet); with none given and a loopback broker, enough
/// 127.0.0.x addresses are chosen to keep every (source, listener) pair under
/// `FAST_SESSIONS_PER_SOURCE`.
pub fn source_addrs(sessions: u32, targets: &[SocketAddr], given: &[IpAddr]) -> Vec<IpAddr> {
    let per_target = u64::from(sessions).div_ceil(targets.len().max(1) as u64);
    let needed = per_target.div_ceil(FAST_SESSIONS_PER_SOURCE).max(1);
    if !given.is_empty() {
        if (given.len() as u64) < needed {
            tracing::warn!(
                "{per_target} sessions per broker listener over {} source address(es): above {FAST_SESSIONS_PER_SOURCE} \
                 per address the kernel's port search makes connects slow; {needed} addresses would avoid it",
                given.len()
            );
        }
        return given.to_vec();
    }
    if needed == 1 {
        return Vec::new(); // one address: let the OS pick
    }
    if targets.iter().all(|t| t.ip().is_loopback() && t.is_ipv4()) {
        let addrs: Vec<IpAddr> = (1..=needed.min(254) as u8)
            .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
            .collect();
        tracing::info!(
            "{per_target} sessions per listener: binding them over {} loopback source addresses (127.0.0.1-127.0.0.{}) \
             to keep connects fast; give --source-addr to choose",
            addrs.len(),
            addrs.len()
        );
        return addrs;
    }
    tracing::warn!(
        "{per_target} sessions per broker listener from one source address: above {FAST_SESSIONS_PER_SOURCE} the kernel's \
         port search makes connects slow; give --source-addr (several local addresses) or more --broker listeners"
    );
    Vec::new()
}

/// Open files and source ports for a wall-clock run of `sessions` MQTT sessions (one per
/// device, or one per gateway for devices behind gateways). `embedded`: the broker's sockets
/// are in this process too (two per session).
/// `extra`: descriptors of other servers (Modbus listeners, lines and their connections).
pub fn check(
    sessions: u32,
    embedded: bool,
    targets: usize,
    sources: usize,
    extra: u64,
) -> Result<(), String> {
    let limit = process::raise_open_files_limit();
    let per_session: u64 = if embedded { 2 } else { 1 };
    let need = u64::from(sessions) * per_session + RESERVED_FDS + extra;
    if need > limit {
        let max_sessions = limit.saturating_sub(RESERVED_FDS + extra) / per_session;
        let mut msg = format!(
            "this run needs about {need} open files ({sessions} MQTT sessions x {per_session} socket{}{} + {RESERVED_FDS} reserved{}), \
             but this process may open only {limit} (RLIMIT_NOFILE, hard limit).\n  \
             fix: at most {max_sessions} sessions (--devices {max_sessions} or fewer for devices with a session each; \
             devices behind a gateway share its session: [gateway] in the profile)",
            if per_session == 2 { "s" } else { "" },
            if embedded {
                ": the embedded broker's end of each connection lives in this process too"
            } else {
                ""
            },
            if extra > 0 {
                format!(" + {extra} for Modbus listeners, lines and connections")
            } else {
                String::new()
            },
        );
        if embedded {
            msg.push_str(&format!(
                ", or point the fleet at an external broker with --broker mqtt://HOST:PORT (one socket per session: up to {} sessions)",
                limit.saturating_sub(RESERVED_FDS)
            ));
        }
        msg.push_str(", or run several fleetsim processes with a part of the fleet each");
        return Err(msg);
    }
    let ports = ephemeral_ports();
    let pairs = (targets.max(1) * sources.max(1)) as u64;
    let per_pair = u64::from(sessions).div_ceil(pairs);
    if per_pair > ports {
        return Err(format!(
            "{sessions} sessions over {} source address(es) x {} broker listener(s) is {per_pair} per pair, \
             but one source address has only {ports} local ports per broker address.\n  \
             fix: add source addresses (--source-addr 127.0.0.2 ... on loopback, or [mqtt] source_addrs) \
             or broker listeners (repeat --broker)",
            sources.max(1),
            targets.max(1)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fleet_beyond_the_open_files_limit_is_refused_with_advice() {
        let limit = process::raise_open_files_limit();
        let too_many = (limit / 2 + 1) as u32;
        let e = check(too_many, true, 1, 1, 0).unwrap_err();
        assert!(e.contains("--devices"), "{e}");
        assert!(e.contains("--broker"), "{e}");
        assert!(check(100, true, 1, 1, 0).is_ok());
    }

    #[test]
    fn a_fleet_larger_than_memory_is_refused_with_advice() {
        let e = check_memory(fleet_core::load::MAX_DEVICES, 0, false, false, false).unwrap_err();
        assert!(e.contains("MiB") && e.contains("--devices"), "{e}");
        assert!(check_memory(1_000, 1_000, true, true, false).is_ok());
        // TLS sessions cost more: the most that fit is fewer than for plain ones.
        let most = |tls| {
            let e = check_memory(u32::MAX, u32::MAX, true, false, tls).unwrap_err();
            let after = e.split("--devices ").nth(1).unwrap_or_default().to_string();
            after
                .split(' ')
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0)
        };
        assert!(
            most(true) > 0 && most(true) < most(false) / 4,
            "{} {}",
            most(true),
            most(false)
        );
    }

    #[test]
    fn big_loopback_fleets_get_several_source_addresses() {
        let lo: SocketAddr = "127.0.0.1:1883".parse().unwrap();
        assert!(source_addrs(5_000, &[lo], &[]).is_empty());
        let addrs = source_addrs(25_000, &[lo], &[]);
        assert_eq!(addrs.len(), 3);
        assert_eq!(addrs[2], "127.0.0.3".parse::<IpAddr>().unwrap());
        let given: IpAddr = "127.0.0.9".parse().unwrap();
        assert_eq!(source_addrs(25_000, &[lo], &[given]), vec![given]);
        let remote: SocketAddr = "10.1.2.3:1883".parse().unwrap();
        assert!(source_addrs(25_000, &[remote], &[]).is_empty());
    }

    #[test]
    fn a_million_devices_behind_a_thousand_gateways_fit_as_a_thousand_sessions() {
        // One session per gateway: 1,000 sockets, even with the embedded broker's ends.
        assert!(check(1_000, true, 1, 1, 0).is_ok());
        assert!(source_addrs(1_000, &["127.0.0.1:1883".parse().unwrap()], &[]).is_empty());
        // Memory: 1,000 sessions and 999,000 devices' state, about 1 GiB; a fleet of a
        // million sessions would need 2 GiB more than that.
        let gateways = check_memory(1_000_000, 1_000, true, false, false);
        let sessions = check_memory(1_000_000, 1_000_000, true, false, false);
        if let (Err(g), Err(s)) = (&gateways, &sessions) {
            assert!(g.contains("999000 without a session"), "{g}");
            assert!(s.contains("1000000 sessions"), "{s}");
        }
        if memory_available().is_some_and(|m| m > 4 << 30) {
            assert!(gateways.is_ok(), "{gateways:?}");
        }
    }

    #[test]
    fn too_many_sessions_per_source_address_are_refused() {
        let e = check(60_000, false, 1, 1, 0);
        // Either limit may speak first; both name a fix.
        assert!(e.unwrap_err().contains("fix:"));
    }
}
