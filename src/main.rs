//! fleetsim: the binary. Parses the command line, sets up logging, and wires the crates.

mod builtin;
mod certs;
mod cli;
mod logsink;
mod port;
mod preflight;
mod processes;
mod progress;
mod report_cmd;
mod run_cmd;
mod signals;
mod summary;
mod surfaces;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use fleet_core::load::{FileKind, FsSource, validate_file};
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command, LogFormat};

/// Exit codes: 0 all SLOs met; 1 an SLO failed; 2 bad usage or bad files; 3 the run could not
/// be carried out (broker would not start, a shard failed, a file could not be written).
pub enum Failure {
    Config(fleet_core::ConfigErrors),
    Usage(String),
    Runtime(anyhow::Error),
}

/// The dashboard will own the terminal (log lines then go to a file: no colour codes there).
fn dashboard_likely(cli: &Cli) -> bool {
    match &cli.command {
        Command::Run(a) => a.tui || (!a.headless && surfaces::on_terminal()),
        Command::Rollout(a) => a.run.tui || (!a.run.headless && surfaces::on_terminal()),
        Command::Top(_) => true,
        _ => false,
    }
}

fn init_logging(cli: &Cli) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(format!("{},rumqttd=off", cli.log_level)))
        .unwrap_or_else(|_| EnvFilter::new("info,rumqttd=off"));
    let ansi = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && !dashboard_likely(cli);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| logsink::LogWriter);
    match cli.log_format {
        LogFormat::Human => builder.with_ansi(ansi).with_target(false).init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

fn validate(paths: &[std::path::PathBuf]) -> ExitCode {
    let mut bad = 0;
    for path in paths {
        match validate_file(&FsSource, path) {
            Ok(kind) => {
                let kind = match kind {
                    FileKind::Scenario => "scenario (with its profiles and firmware models)",
                    FileKind::Profile => "device profile",
                    FileKind::Firmware => "firmware model",
                };
                println!("ok    {}: {kind}", path.display());
            }
            Err(errors) => {
                bad += 1;
                println!(
                    "FAIL  {}: {} problem{}",
                    path.display(),
                    errors.len(),
                    if errors.len() == 1 { "" } else { "s" }
                );
                for e in &errors.0 {
                    println!("      {e}");
                }
            }
        }
    }
    if bad == 0 {
        println!(
            "{} file{} valid",
            paths.len(),
            if paths.len() == 1 { "" } else { "s" }
        );
        ExitCode::SUCCESS
    } else {
        println!(
            "{bad} of {} file{} invalid",
            paths.len(),
            if paths.len() == 1 { "" } else { "s" }
        );
        ExitCode::from(2)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    match cli.command {
        Command::Validate { paths } => validate(&paths),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "fleetsim",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Command::Run(args) => finish(run_cmd::run(*args, None)),
        Command::Rollout(args) => finish(run_cmd::rollout(*args)),
        Command::Top(args) => finish(surfaces::top(args)),
        Command::Certs(args) => finish(certs::run(&args)),
        Command::Report(args) => finish(report_cmd::run(args)),
    }
}

/// The exit code of a run, with its problems on stderr.
fn finish(result: Result<bool, Failure>) -> ExitCode {
    {
        match result {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(Failure::Config(errors)) => {
                eprintln!(
                    "fleetsim: the scenario has {} problem{}:",
                    errors.len(),
                    if errors.len() == 1 { "" } else { "s" }
                );
                for e in &errors.0 {
                    eprintln!("  {e}");
                }
                ExitCode::from(2)
            }
            Err(Failure::Usage(msg)) => {
                eprintln!("fleetsim: {msg}");
                ExitCode::from(2)
            }
            Err(Failure::Runtime(e)) => {
                eprintln!("fleetsim: {e:#}");
                ExitCode::from(3)
            }
        }
    }
}
