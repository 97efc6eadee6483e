//! What the operating system allows and what the process costs.

/// The soft limit on open files (RLIMIT_NOFILE) of this process.
pub fn open_files_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    #[allow(unsafe_code)]
    // SAFETY: `lim` is a valid, exclusive pointer to an rlimit for the duration of the call.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if rc == 0 { lim.rlim_cur } else { u64::MAX }
}

/// Raises the soft open-files limit to the hard limit (what a shell's `ulimit -n` would allow).
pub fn raise_open_files_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    #[allow(unsafe_code)]
    // SAFETY: valid exclusive pointers to an rlimit for the duration of each call.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    open_files_limit()
}

/// CPU time and peak resident memory of the process so far.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    pub cpu_user_s: f64,
    pub cpu_system_s: f64,
    pub rss_peak_bytes: u64,
}

pub fn usage() -> Usage {
    #[allow(unsafe_code)]
    // SAFETY: getrusage writes into the zeroed struct we own.
    let (rc, ru) = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        let rc = libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        (rc, ru)
    };
    if rc != 0 {
        return Usage::default();
    }
    let secs = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    Usage {
        cpu_user_s: secs(ru.ru_utime),
        cpu_system_s: secs(ru.ru_stime),
        rss_peak_bytes: (ru.ru_maxrss as u64) * 1024,
    }
}

/// Current resident memory in bytes (Linux: /proc/self/statm), if it can be read.
pub fn rss_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Lets the kernel choose a bound socket's local port at `connect()` instead of at `bind()`
/// (Linux's IP_BIND_ADDRESS_NO_PORT): knowing the destination, it may use any port not in use
/// towards that destination. Without it, binding a source address before connecting searches
/// for a port free towards every destination, and each port still in TIME_WAIT from an earlier
/// run makes that search longer (measured: 11 µs per connect normally, 446 µs with 10,000 such
/// sockets on the address). Best effort: false where the option does not exist.
pub fn bind_address_no_port(socket: &impl std::os::fd::AsRawFd) -> bool {
    #[cfg(target_os = "linux")]
    {
        let one: libc::c_int = 1;
        #[allow(unsafe_code)]
        // SAFETY: a valid socket descriptor, and a pointer to a c_int that lives for the call,
        // with its size.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        rc == 0
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = socket;
        false
    }
}

/// Asks process `pid` to stop (SIGTERM): how `run --processes` passes Ctrl-C or a
/// termination on to its children. A pid that is gone is no error.
pub fn terminate(pid: u32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    #[allow(unsafe_code)]
    // SAFETY: kill(2) takes no pointers; sending SIGTERM has no effect on this process's memory.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_files_limit_and_usage_are_readable() {
        assert!(open_files_limit() > 0);
        let u = usage();
        assert!(u.rss_peak_bytes > 0);
        assert!(rss_bytes().is_some_and(|b| b > 0));
    }
}
