//! A service thread: servers that answer the outside world (Modbus listeners, serial ports) on
//! a current-thread runtime of their own, so their I/O never runs on a shard's thread. Build the
//! runtime first (`runtime()`), open sockets and ports inside it (`Runtime::enter`) so a failure
//! stops the run before it starts, then hand it over with `spawn`. Stopped (every task dropped,
//! every socket closed) by `stop` or on drop.

use std::io;
use std::path::PathBuf;
use std::thread::JoinHandle;

use tokio::runtime::Runtime;
use tokio::sync::oneshot;

#[derive(Debug)]
pub struct ServiceThread {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    /// Files the service made for others to find (PTY links), removed once it has stopped:
    /// they would point at nothing.
    cleanup: Vec<PathBuf>,
}

impl ServiceThread {
    /// The runtime a service thread will run.
    pub fn runtime() -> io::Result<Runtime> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    }

    /// Runs `rt` on a thread named `name`: `start` spawns the service's tasks (it runs inside
    /// the runtime), which then run until `stop`.
    pub fn spawn(
        name: &str,
        rt: Runtime,
        cleanup: Vec<PathBuf>,
        start: impl FnOnce() + Send + 'static,
    ) -> io::Result<ServiceThread> {
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                rt.block_on(async move {
                    start();
                    let _ = stop_rx.await;
                });
                // Dropping the runtime drops every task: listeners, connections, lines close.
            })?;
        Ok(ServiceThread {
            stop: Some(stop_tx),
            thread: Some(thread),
            cleanup,
        })
    }

    /// Stops the service and waits for its thread.
    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for path in self.cleanup.drain(..) {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Drop for ServiceThread {
    fn drop(&mut self) {
        self.stop();
    }
}
