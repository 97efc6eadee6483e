//! Ctrl-C and SIGTERM end the run gracefully (sessions disconnect, the report is written); a
//! second one ends the process at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub fn install(stop: Arc<AtomicBool>) {
    let spawned = std::thread::Builder::new().name("signals".into()).spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            return;
        };
        rt.block_on(async move {
            #[cfg(unix)]
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            loop {
                #[cfg(unix)]
                let got = tokio::select! {
                    r = tokio::signal::ctrl_c() => r.is_ok(),
                    _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => true,
                };
                #[cfg(not(unix))]
                let got = tokio::signal::ctrl_c().await.is_ok();
                if !got {
                    return;
                }
                if stop.swap(true, Ordering::Relaxed) {
                    eprintln!("fleetsim: second interrupt, exiting without a report");
                    std::process::exit(130);
                }
                tracing::warn!("interrupted: stopping the run, disconnecting sessions and writing the report (again to exit at once)");
            }
        });
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot watch for Ctrl-C; the run stops only at its end");
    }
}

/// Ends the run like SIGTERM does once process `pid` is gone (checked every second): a child
/// of `run --processes` whose parent was killed stops and writes its results instead of
/// running on unwatched.
pub fn stop_with_parent(pid: u32, stop: Arc<AtomicBool>) {
    let proc_dir = std::path::PathBuf::from(format!("/proc/{pid}"));
    let spawned = std::thread::Builder::new()
        .name("parent-watch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if !proc_dir.exists() {
                    tracing::warn!(
                        "the parent process ({pid}) is gone: stopping the run and writing the results"
                    );
                    stop.store(true, Ordering::Relaxed);
                    return;
                }
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot watch the parent process");
    }
}
