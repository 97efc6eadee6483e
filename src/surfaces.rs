//! The run's control surfaces: the dashboard (fleet-tui) on this terminal, the control API
//! (fleet-api) for Prometheus, scripts and `fleetsim top --attach`, and `top` itself.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use fleet_metrics::FleetPort;

use crate::Failure;
use crate::cli::{RunArgs, TopArgs};

/// Both ends of the terminal are a person's: the dashboard is the default.
pub fn on_terminal() -> bool {
    std::io::stdin().is_terminal() && std::io::stdout().is_terminal()
}

pub fn tui_wanted(args: &RunArgs) -> bool {
    args.tui || (!args.headless && on_terminal())
}

/// The control API's settings, checked (before the run starts anything).
pub fn api_config(args: &RunArgs) -> Result<Option<fleet_api::ApiConfig>, Failure> {
    let Some(listen) = args.api_listen else {
        return Ok(None);
    };
    let cfg = fleet_api::ApiConfig {
        listen,
        token: args.api_token.clone(),
        read_only: args.api_read_only,
    };
    cfg.check().map_err(|e| Failure::Usage(e.to_string()))?;
    Ok(Some(cfg))
}

/// The run has someone who may steer it.
pub fn wanted(args: &RunArgs) -> bool {
    args.api_listen.is_some() || tui_wanted(args)
}

pub struct Surfaces {
    api: Option<fleet_api::ApiServer>,
    tui: Option<std::thread::JoinHandle<std::io::Result<fleet_tui::Exit>>>,
    run_done: Arc<AtomicBool>,
}

impl Surfaces {
    /// Starts what `args` asks for. Quitting the dashboard stops the run (`stop`), as Ctrl-C
    /// does: sessions close and the report is written.
    pub fn start(
        args: &RunArgs,
        port: Arc<dyn FleetPort>,
        stop: Arc<AtomicBool>,
    ) -> Result<Surfaces, Failure> {
        let run_done = Arc::new(AtomicBool::new(false));
        // The dashboard owns the terminal from here: log lines (the API's address first) go to
        // the log file.
        let tui_wanted = tui_wanted(args);
        if tui_wanted {
            let log = args.run_dir.join("fleetsim.log");
            crate::logsink::to_file(&log).map_err(|e| {
                Failure::Usage(format!(
                    "--run-dir {}: cannot write the log file {}: {e}",
                    args.run_dir.display(),
                    log.display()
                ))
            })?;
        }
        let api = match api_config(args)? {
            Some(cfg) => {
                let server = fleet_api::serve(port.clone(), cfg)
                    .map_err(|e| Failure::Usage(e.to_string()))?;
                if args.api_read_only {
                    tracing::info!(
                        "control API (read-only) on http://{} (GET /metrics, /api/v1/snapshot, /api/v1/devices/ID; docs/api.md)",
                        server.local_addr
                    );
                } else {
                    tracing::info!(
                        "control API on http://{} (GET /metrics, /api/v1/snapshot, /api/v1/devices/ID; POST /api/v1/pause, resume, faults, rollouts; docs/api.md)",
                        server.local_addr
                    );
                }
                if let Some(path) = &args.api_addr_file {
                    write_addr_file(path, server.local_addr)?;
                }
                Some(server)
            }
            None => None,
        };
        let tui = if tui_wanted {
            let opts = fleet_tui::RunOptions {
                attached: false,
                stop_when: Some(run_done.clone()),
            };
            let thread = std::thread::Builder::new()
                .name("tui".into())
                .spawn(move || {
                    let exit = fleet_tui::run(port, opts);
                    if !matches!(exit, Ok(fleet_tui::Exit::RunEnded)) {
                        // Quit, or the terminal failed: end the run, write the report.
                        stop.store(true, Ordering::Relaxed);
                    }
                    exit
                })
                .map_err(|e| Failure::Runtime(e.into()))?;
            Some(thread)
        } else {
            None
        };
        Ok(Surfaces { api, tui, run_done })
    }
}

/// Writes the API's address for whoever started this process (`--processes`): to a temporary
/// name first, so a reader never sees half of it.
fn write_addr_file(path: &std::path::Path, addr: std::net::SocketAddr) -> Result<(), Failure> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{addr}\n"))
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| Failure::Usage(format!("--api-addr-file {}: {e}", path.display())))
}

impl Surfaces {
    /// Where the control API listens.
    pub fn api_addr(&self) -> Option<std::net::SocketAddr> {
        self.api.as_ref().map(|a| a.local_addr)
    }
}

/// The run is over: the dashboard leaves (the terminal is restored before the summary), log
/// lines go to stderr again, the API stops.
impl Drop for Surfaces {
    fn drop(&mut self) {
        self.run_done.store(true, Ordering::Relaxed);
        if let Some(t) = self.tui.take() {
            match t.join() {
                Ok(Err(e)) => {
                    crate::logsink::to_stderr();
                    tracing::warn!("the dashboard failed: {e}");
                }
                Err(_) => {
                    crate::logsink::to_stderr();
                    tracing::warn!("the dashboard stopped unexpectedly");
                }
                Ok(Ok(_)) => {}
            }
        }
        crate::logsink::to_stderr();
        if let Some(api) = self.api.take() {
            api.shutdown();
        }
    }
}

/// `fleetsim top --attach URL...`: the dashboard over runs elsewhere.
pub fn top(args: TopArgs) -> Result<bool, Failure> {
    let remote = fleet_api::RemoteFleet::connect(args.attach.clone(), args.token.clone())
        .map_err(|e| Failure::Usage(e.to_string()))?;
    if !on_terminal() {
        return Err(Failure::Usage(
            "fleetsim top needs a terminal (for numbers in a script: curl URL/metrics or URL/api/v1/snapshot)".into(),
        ));
    }
    let log = std::env::temp_dir().join("fleetsim-top.log");
    if crate::logsink::to_file(&log).is_err() {
        crate::logsink::to_file(std::path::Path::new("/dev/null"))
            .map_err(|e| Failure::Runtime(e.into()))?;
    }
    let port: Arc<dyn FleetPort> = Arc::new(remote);
    let exit = fleet_tui::run(
        port,
        fleet_tui::RunOptions {
            attached: true,
            stop_when: None,
        },
    );
    crate::logsink::to_stderr();
    exit.map_err(|e| Failure::Runtime(e.into()))?;
    Ok(true)
}
