//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "fleetsim",
    version,
    about = "IoT device fleet emulator: thousands of deterministic simulated devices over MQTT",
    long_about = "fleetsim runs a fleet of simulated IoT devices (sensors that drift and spike, batteries that drain, \
flaky links) as real MQTT sessions against the embedded broker or yours, and reports what it measured.\n\n\
Quick start:  fleetsim run            (the demo fleet on the embedded broker)\n\
              fleetsim run scenarios/ingest-load.toml --broker mqtt://localhost:1883"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log format: human-readable lines, or JSON objects (one per line, with run and device ids).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    /// Log level filter (tracing syntax), e.g. `debug` or `info,fleet_mqtt=debug`. The embedded
    /// broker is silent unless named: `info,rumqttd=warn`. RUST_LOG wins.
    #[arg(long, global = true, default_value = "info")]
    pub log_level: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a scenario (the built-in demo when none is given).
    Run(Box<RunArgs>),
    /// Rehearse a firmware rollout: run a scenario with fleetsim as the orchestrator.
    #[command(
        long_about = "Rehearse a firmware rollout: run a scenario with fleetsim as the orchestrator.\n\n\
The rollout given here replaces the scenario's own [[rollouts]] (--keep-scenario-rollouts keeps them). \
Its report (and the summary) says when the rollout halted, how many devices were updated after the \
abort threshold was truly crossed, the final version distribution, and which devices are bricked or stuck. \
docs/ota.md explains every option.\n\n\
Example: fleetsim rollout scenarios/rollout-week.toml --target 3.5.0 --waves 1,10,50,100 --wave-soak 2h\n\
Example: fleetsim rollout scenarios/rollout-week.toml --target 3.6.0 --rate-base 100 --rate-max 5000 --rate-increase-after 1000 --abort-failure-percent 5"
    )]
    Rollout(Box<RolloutArgs>),
    /// Check scenario, profile and firmware files and explain every problem.
    #[command(
        long_about = "Check scenario, device profile and firmware model files and explain every problem.\n\n\
A scenario is checked together with the profiles and firmware models it names.\n\n\
Example: fleetsim validate scenarios/*.toml device-profiles/*.toml firmware-models/*.toml"
    )]
    Validate {
        /// Files to check (the kind is recognised from the file's keys).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Watch (and steer) runs started elsewhere with --api-listen: the same dashboard as
    /// `run --tui`, merging several processes (shards) into one view.
    #[command(
        long_about = "Watch (and steer) runs started elsewhere with --api-listen: the same dashboard as \
`run --tui`, merging several processes (shards) into one view. Counters add up, latency histograms merge \
losslessly, commands go to every process.\n\n\
Example: fleetsim top --attach http://127.0.0.1:9464\n\
Example: fleetsim top --attach http://10.0.0.5:9464 --attach http://10.0.0.6:9464 --token $TOKEN"
    )]
    Top(TopArgs),
    /// Make a test CA, a broker certificate and a client certificate per device of a cohort.
    #[command(
        long_about = "Make a test CA, a certificate for a test broker and a client certificate per device of a cohort, \
for MQTT over TLS with client certificates (docs/security.md).\n\n\
Writes DIR/ca.pem + ca.key (an existing CA in DIR is reused, so devices can be added later), DIR/server.pem + \
server.key (names: localhost, 127.0.0.1, ::1 and every --server-name) and DIR/devices/<device_id>.pem + .key \
(CN = the device id, as the run renders it). Keys are readable by their owner only. Prints the [broker.tls] \
table to paste into the scenario and a mosquitto listener for these files.\n\n\
Example: fleetsim certs scenarios/ingest-load.toml --cohort meters --out certs --devices 100"
    )]
    Certs(CertsArgs),
    /// Merge the results of a run as several processes (`run --shard K/N --results DIR`).
    #[command(
        long_about = "Work with run results. `fleetsim report merge` adds up the results that the processes of one run \
(`fleetsim run --shard K/N --results DIR`, a Kubernetes Indexed Job with --shards-total N) wrote: counters add, \
HdrHistogram interval logs add losslessly, and the scenario's SLOs are evaluated on the merged figures \
(docs/report.md#merged-reports).\n\n\
Exit code as for `run`: 0 every SLO met, 1 an SLO failed, 2 the inputs are unreadable or not parts of one run \
(the message names the files), 3 shards are missing (the merged report is still written and printed, marked \
incomplete, with the device ids of each missing shard).\n\n\
Example: fleetsim report merge results/ --report merged.json\n\
Example: fleetsim report merge pod-0/shard-0-of-2.json pod-1/shard-1-of-2.json"
    )]
    Report(ReportArgs),
    /// Print a shell completion script.
    #[command(long_about = "Print a shell completion script.\n\n\
Example: fleetsim completions bash > ~/.local/share/bash-completion/completions/fleetsim")]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Control API URL of a run (`fleetsim run --api-listen ...`); repeat, or give several.
    #[arg(long, value_name = "URL", required = true, num_args = 1..)]
    pub attach: Vec<String>,

    /// Bearer token of the runs' control API.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "FLEETSIM_API_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
}

#[derive(Debug, Args)]
pub struct CertsArgs {
    /// Scenario file whose cohort's devices get certificates.
    pub scenario: PathBuf,

    /// The cohort, by its name in the scenario.
    #[arg(long, value_name = "NAME")]
    pub cohort: String,

    /// Folder to write to (created if needed; a CA already in it is reused).
    #[arg(long, value_name = "DIR", default_value = "certs")]
    pub out: PathBuf,

    /// Only the cohort's first N devices (default: all of them).
    #[arg(long, value_name = "N")]
    pub devices: Option<u32>,

    /// Days the broker's and the devices' certificates are valid.
    #[arg(long, value_name = "D", default_value_t = 365)]
    pub days: u32,

    /// Another name (DNS name or IP address) for the broker's certificate; repeat for more.
    ///
    /// Example: --server-name broker.lab.example --server-name 10.0.0.5
    #[arg(long = "server-name", value_name = "NAME")]
    pub server_names: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(subcommand)]
    pub command: ReportCommand,
}

#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Add up the results of the processes of one run and evaluate its SLOs on the sum.
    #[command(
        long_about = "Add up the results of the processes of one run (`run --shard K/N --results DIR`) and evaluate \
the scenario's SLOs on the sum: every counter adds, latency histograms add losslessly (the percentiles are \
those one process running every device would have measured). Parts of different runs, or the same shard \
twice, are refused. A missing shard is named with its device ids; the report then says `complete: false` \
and the exit code is 3.\n\n\
Example: fleetsim report merge results/ --report merged.json"
    )]
    Merge(ReportMergeArgs),
}

#[derive(Debug, Args)]
pub struct ReportMergeArgs {
    /// Results folders (every shard-K-of-N.json in them, each with its .hlog) or files.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,

    /// Write the merged report (JSON) here. Keys: docs/report.md.
    ///
    /// Example: --report out/merged.json
    #[arg(long, value_name = "PATH")]
    pub report: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ClockArg {
    Wall,
    Virtual,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MqttVersionArg {
    #[value(name = "3.1.1")]
    V311,
    #[value(name = "5")]
    V5,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Scenario file. Without it: scenarios/demo.toml if it exists here, else the built-in demo.
    pub scenario: Option<PathBuf>,

    /// Point the fleet at this broker instead of the scenario's (or the embedded one).
    /// Repeat to spread sessions over several listeners.
    ///
    /// Example: --broker mqtt://10.0.0.5:1883
    #[arg(long, value_name = "URL")]
    pub broker: Vec<String>,

    /// With mqtts:// brokers: trust the CA certificates in this PEM file (instead of the
    /// scenario's [broker.tls] ca_file, or the system's store).
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,

    /// With mqtts:// brokers: do NOT verify the broker's certificate (logged loudly; test
    /// brokers only).
    #[arg(long)]
    pub insecure_skip_verify: bool,

    /// Total number of devices; every cohort is scaled in proportion.
    ///
    /// Example: --devices 10000
    #[arg(long, value_name = "N")]
    pub devices: Option<u32>,

    /// How long devices report (overrides the scenario).
    ///
    /// Example: --duration 30s, --duration 5m, --duration 2h (virtual clock: --duration 7d)
    #[arg(long, value_name = "D", value_parser = parse_duration_arg)]
    pub duration: Option<fleet_core::SimDuration>,

    /// The run's seed: the same seed gives the same fleet behaviour.
    ///
    /// Example: --seed 42
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,

    /// Engine threads (default: one per core). Devices are dealt out by id, so the fleet's
    /// behaviour does not depend on this.
    ///
    /// Example: --shards 4
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub shards: Option<u16>,

    /// Clock: wall (real time, real sockets) or virtual (simulated broker, as fast as the CPU goes).
    ///
    /// Example: --clock virtual --duration 7d
    #[arg(long, value_enum)]
    pub clock: Option<ClockArg>,

    /// No interactive display: plain progress lines, also on a terminal.
    #[arg(long, conflicts_with = "tui")]
    pub headless: bool,

    /// The live dashboard (the default when stdin and stdout are a terminal): fleet health,
    /// latency histograms, firmware, protocols, shards, events, one device in detail; pause,
    /// resume, outages and rollouts from the keyboard. Keys: `?`. Logs go to
    /// RUN_DIR/fleetsim.log meanwhile.
    #[arg(long)]
    pub tui: bool,

    /// Serve the control API here: GET /metrics (Prometheus), /api/v1/snapshot, POST pause,
    /// resume, faults, rollouts (docs/api.md). A port alone listens on 127.0.0.1; port 0 picks
    /// a free one (the log says which). Any address other than loopback needs --api-token.
    ///
    /// Example: --api-listen 9464, --api-listen 0.0.0.0:9464 --api-token $TOKEN
    #[arg(long, value_name = "[IP:]PORT", value_parser = parse_api_listen)]
    pub api_listen: Option<std::net::SocketAddr>,

    /// Bearer token the control API requires (`Authorization: Bearer TOKEN`), on every endpoint.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "FLEETSIM_API_TOKEN",
        hide_env_values = true
    )]
    pub api_token: Option<String>,

    /// Write the run report (JSON) here. Keys: docs/report.md.
    ///
    /// Example: --report out/run.json
    #[arg(long, value_name = "PATH")]
    pub report: Option<PathBuf>,

    /// Write one line per device event here (sortable by device and time).
    ///
    /// Example: --event-log out/events.log
    #[arg(long, value_name = "PATH")]
    pub event_log: Option<PathBuf>,

    /// First TCP port of the Modbus slaves (devices whose profile has a register map); further
    /// ports count up. 0: the system picks free ports (see the map file for where they are).
    ///
    /// Example: --modbus-port 1502
    #[arg(long, value_name = "PORT")]
    pub modbus_port: Option<u16>,

    /// Address the Modbus slaves listen on (default 127.0.0.1; 0.0.0.0 for a poller on
    /// another machine).
    ///
    /// Example: --modbus-listen 0.0.0.0
    #[arg(long, value_name = "IP")]
    pub modbus_listen: Option<std::net::IpAddr>,

    /// Folder for what the run makes for others to find: the Modbus map file
    /// (modbus-map.csv: device, port, unit id), links to virtual serial ports.
    ///
    /// Example: --run-dir /tmp/plant
    #[arg(long, value_name = "DIR", default_value = "fleetsim-run")]
    pub run_dir: PathBuf,

    /// MQTT protocol version (overrides the scenario).
    #[arg(long, value_enum, value_name = "VERSION")]
    pub mqtt_version: Option<MqttVersionArg>,

    /// Local address sessions bind to; repeat for more (127.0.0.2, 127.0.0.3 ... on loopback).
    /// One source address reaches about 28,000 sessions per broker listener.
    ///
    /// Example: --source-addr 127.0.0.2 --source-addr 127.0.0.3
    #[arg(long, value_name = "IP")]
    pub source_addr: Vec<std::net::IpAddr>,

    /// Connection attempts in progress at once (default 96, below mosquitto's listen backlog of
    /// 100). Raise it for a remote broker, where each attempt waits a round trip.
    ///
    /// Example: --max-connecting 500
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connecting: Option<u32>,

    /// Set TCP_NODELAY (true: no Nagle delay, best for paced QoS 1; false: fewer packets in floods).
    ///
    /// Example: --tcp-nodelay false
    #[arg(long, value_name = "BOOL")]
    pub tcp_nodelay: Option<bool>,

    /// Own only the K-th of N slices of the fleet (K from 0): the K-th contiguous part of every
    /// cohort's device ids, with the same ids, seeds and power-on times as in the whole fleet.
    /// N processes with 0/N .. N-1/N run exactly the fleet of one (docs/deploy.md).
    ///
    /// Example: --shard 2/4
    #[arg(long, value_name = "K/N", value_parser = parse_slice, conflicts_with_all = ["shards_total", "processes"])]
    pub shard: Option<fleet_core::slice::Slice>,

    /// Like --shard K/N, with K read from the environment variable JOB_COMPLETION_INDEX (set by
    /// Kubernetes for each pod of an Indexed Job).
    ///
    /// Example: --shards-total 50
    #[arg(long, value_name = "N", conflicts_with = "processes")]
    pub shards_total: Option<u32>,

    /// Run the fleet as N processes on this machine (each with its own open-file budget), each
    /// owning a slice (--shard K/N), spread over the --broker listeners and --source-addr
    /// addresses; their numbers are merged live (dashboard, /metrics) and into one report.
    ///
    /// Example: --processes 6 --broker mqtt://127.0.0.1:1883 --broker mqtt://127.0.0.1:1884
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=256))]
    pub processes: Option<u32>,

    /// Print which devices this process would own (per cohort, with --shard; every slice with
    /// --processes) after the checks that need no network (memory, TLS files, credentials),
    /// and stop without starting anything.
    #[arg(long)]
    pub dry_run: bool,

    /// Write this process's results for `fleetsim report merge` into DIR: its counters
    /// (shard-K-of-N.json) and an HdrHistogram interval log (shard-K-of-N.hlog).
    ///
    /// Example: --results out/results
    #[arg(long, value_name = "DIR")]
    pub results: Option<PathBuf>,

    /// Serve only the control API's GET endpoints (/metrics, snapshots, devices): no pause,
    /// faults or rollouts, and no token needed on any address (for Prometheus scraping).
    #[arg(long, requires = "api_listen")]
    pub api_read_only: bool,

    /// Write the control API's address here once it listens (used by `--processes`).
    #[arg(long, value_name = "PATH", hide = true, requires = "api_listen")]
    pub api_addr_file: Option<PathBuf>,

    /// Stop (cleanly, with the results) when process PID is gone: a child of `--processes`
    /// does not outlive its parent.
    #[arg(long, value_name = "PID", hide = true)]
    pub parent_pid: Option<u32>,

    /// Progress line interval when not on a terminal (or with --headless).
    #[arg(long, value_name = "D", default_value = "5s", value_parser = parse_duration_arg)]
    pub progress_every: fleet_core::SimDuration,
}

/// `9464` (loopback) or `IP:PORT`.
fn parse_api_listen(s: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse().map_err(|_| {
        format!("{s:?} is not a port (9464) or an address with a port (127.0.0.1:9464, [::1]:9464)")
    })
}

fn parse_slice(s: &str) -> Result<fleet_core::slice::Slice, String> {
    fleet_core::slice::Slice::parse(s)
}

fn parse_duration_arg(s: &str) -> Result<fleet_core::SimDuration, String> {
    fleet_core::time::parse_duration(s)
}

#[derive(Debug, Args)]
pub struct RolloutArgs {
    #[command(flatten)]
    pub run: RunArgs,

    /// The version to roll out (a version of the targeted cohorts' firmware model).
    ///
    /// Example: --target 3.5.0
    #[arg(long, value_name = "VERSION")]
    pub target: String,

    /// The rollout's name (the job id devices see).
    #[arg(long, value_name = "NAME", default_value = "rollout")]
    pub name: String,

    /// Target these cohorts (repeat); default: every cohort that can take the version.
    #[arg(long = "cohort", value_name = "NAME")]
    pub cohorts: Vec<String>,

    /// The share of the targeted devices, in (0, 1].
    #[arg(long, value_name = "F", default_value_t = 1.0)]
    pub fraction: f64,

    /// When the rollout starts, from the start of the run.
    #[arg(long, value_name = "D", default_value = "0s")]
    pub at: String,

    /// Waves as cumulative percentages of the targets.
    ///
    /// Example: --waves 1,10,50,100
    #[arg(long, value_name = "P,P,...", value_delimiter = ',')]
    pub waves: Vec<f64>,

    /// Gated waves: the next wave starts this long after the previous one finished.
    #[arg(long, value_name = "D")]
    pub wave_soak: Option<String>,

    /// Timed waves: a wave every D, finished or not.
    #[arg(long, value_name = "D", conflicts_with = "wave_soak")]
    pub wave_interval: Option<String>,

    /// Exponential rate instead of waves: devices notified per minute at first...
    #[arg(long, value_name = "N", conflicts_with = "waves")]
    pub rate_base: Option<f64>,

    /// ... multiplied by this factor (1.1 to 5) ...
    #[arg(long, value_name = "F", default_value_t = 2.0)]
    pub rate_factor: f64,

    /// ... up to this many per minute ...
    #[arg(long, value_name = "N")]
    pub rate_max: Option<f64>,

    /// ... each time this many more devices were notified (or, with
    /// --rate-increase-on-success, succeeded).
    #[arg(long, value_name = "N")]
    pub rate_increase_after: Option<u32>,

    #[arg(long)]
    pub rate_increase_on_success: bool,

    /// A device not finished this long after it was notified has timed out.
    #[arg(long, value_name = "D", default_value = "1h")]
    pub timeout: String,

    /// How often the orchestrator evaluates.
    #[arg(long, value_name = "D", default_value = "1m")]
    pub evaluate_every: String,

    /// Abort when this percentage of the executed devices failed ...
    #[arg(long, value_name = "P")]
    pub abort_failure_percent: Option<f64>,

    /// ... once at least this many executed ...
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub abort_min_executed: u32,

    /// ... counting these outcomes (failed, rejected, timed_out).
    #[arg(
        long,
        value_name = "KIND,...",
        value_delimiter = ',',
        default_value = "failed,rejected,timed_out"
    )]
    pub abort_on: Vec<String>,

    /// The image's URL on your artifact server (http://): on the wall clock every device GETs it.
    ///
    /// Example: --url http://10.0.0.9:8080/fw-3.5.0.bin --size 196608 --sha256 6330aa...
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,

    /// The image's size in bytes (checked by the devices).
    #[arg(long, value_name = "BYTES", requires = "url")]
    pub size: Option<u64>,

    /// The image's SHA-256, hex (checked by the devices).
    #[arg(long, value_name = "HEX", requires = "url")]
    pub sha256: Option<String>,

    /// Keep the scenario's own `[[rollouts]]` as well.
    #[arg(long)]
    pub keep_scenario_rollouts: bool,
}

impl RolloutArgs {
    /// The defaults of --abort-min-executed and --abort-on (to tell whether they were given).
    pub fn abort_defaults() -> (u32, Vec<String>) {
        (
            10,
            vec!["failed".into(), "rejected".into(), "timed_out".into()],
        )
    }
}
