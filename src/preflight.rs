//! Checks that a run fits this machine before it starts, with advice when it does not.

use fleet_engine::process;

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

/// Open files and source ports for a wall-clock run. `embedded`: the broker's sockets are in
/// this process too (two per device).
pub fn check(devices: u32, embedded: bool, targets: usize, sources: usize) -> Result<(), String> {
    let limit = process::raise_open_files_limit();
    let per_device: u64 = if embedded { 2 } else { 1 };
    let need = u64::from(devices) * per_device + RESERVED_FDS;
    if need > limit {
        let max_devices = limit.saturating_sub(RESERVED_FDS) / per_device;
        let mut msg = format!(
            "this run needs about {need} open files ({devices} devices x {per_device} socket{}{} + {RESERVED_FDS} reserved), \
             but this process may open only {limit} (RLIMIT_NOFILE, hard limit).\n  \
             fix: --devices {max_devices} or fewer",
            if per_device == 2 { "s" } else { "" },
            if embedded {
                ": the embedded broker's end of each connection lives in this process too"
            } else {
                ""
            },
        );
        if embedded {
            msg.push_str(&format!(
                ", or point the fleet at an external broker with --broker mqtt://HOST:PORT (one socket per device: up to {} devices)",
                limit.saturating_sub(RESERVED_FDS)
            ));
        }
        msg.push_str(", or run several fleetsim processes with a part of the fleet each");
        return Err(msg);
    }
    let ports = ephemeral_ports();
    let pairs = (targets.max(1) * sources.max(1)) as u64;
    let per_pair = u64::from(devices).div_ceil(pairs);
    if per_pair > ports {
        return Err(format!(
            "{devices} sessions over {} source address(es) x {} broker listener(s) is {per_pair} per pair, \
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
        let e = check(too_many, true, 1, 1).unwrap_err();
        assert!(e.contains("--devices"), "{e}");
        assert!(e.contains("--broker"), "{e}");
        assert!(check(100, true, 1, 1).is_ok());
    }

    #[test]
    fn too_many_sessions_per_source_address_are_refused() {
        let e = check(60_000, false, 1, 1);
        // Either limit may speak first; both name a fix.
        assert!(e.unwrap_err().contains("fix:"));
    }
}
