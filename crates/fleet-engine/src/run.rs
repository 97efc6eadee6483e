//! Running a plan: one thread per shard, a collector on the caller's thread that merges shard
//! reports into a snapshot every second, and the outcome when every shard has finished.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use fleet_metrics::{Collector, FleetSnapshot, ShardMetrics, ShardReport};

use crate::adapter::Adapter;
use crate::control::Control;
use crate::event_log;
use crate::plan::RunPlan;
use crate::query::QueryInboxes;
use crate::shard::Shard;
use fleet_metrics::detect::Detector;
use fleet_metrics::live::RunMeta;

/// How often shards report and the collector publishes a snapshot.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// How long after each whole second the collector takes its snapshot.
const SNAPSHOT_OFFSET: Duration = Duration::from_millis(200);
/// Shard reports queued per shard before a shard keeps its interval to itself (and folds it
/// into the next report: nothing is lost, only delayed).
const REPORT_QUEUE_PER_SHARD: usize = 4;
/// The generator counts as saturated when a deadline ran this late.
pub const SATURATION_LAG_US: u64 = 1_000_000;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("shard {shard} failed: {message}")]
    Shard { shard: u16, message: String },
    #[error("event log {path}: {source}")]
    EventLog {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot start shard thread: {0}")]
    Spawn(std::io::Error),
}

pub(crate) enum ShardMsg {
    Report(ShardReport),
    /// The shard reached the end of the scenario's duration (this report is the state then).
    Ended(ShardReport),
    Failed {
        shard: u16,
        message: String,
    },
}

/// What a shard thread gets to talk to the run.
pub(crate) struct ShardControl {
    tx: SyncSender<ShardMsg>,
    stop: Arc<AtomicBool>,
    pub start: Instant,
}

impl ShardControl {
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Sends a periodic report; when the queue is full, keeps its histograms for the next one.
    pub fn try_send(&self, r: ShardReport, metrics: &mut ShardMetrics) {
        match self.tx.try_send(ShardMsg::Report(r)) {
            Ok(()) => {}
            Err(TrySendError::Full(ShardMsg::Report(r))) => metrics.restore(r),
            Err(_) => {}
        }
    }

    pub fn send_ended(&self, r: ShardReport) {
        self.send(ShardMsg::Ended(r));
    }

    pub fn send(&self, m: ShardMsg) {
        let _ = self.tx.send(m);
    }
}

#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub event_log: Option<PathBuf>,
    /// Inboxes for servers' queries (wall clock; see `QueryRouter`).
    pub queries: Option<Arc<QueryInboxes>>,
    /// Steering (pause, faults, device lookups) and the feed of notable events. The run makes
    /// one when none is given; give one to steer the run from outside.
    pub control: Option<Arc<Control>>,
    /// What snapshots say the run is.
    pub meta: RunMeta,
}

/// How a run went.
#[derive(Clone, Debug)]
pub struct RunOutcome {
    /// The fleet when the scenario's duration ended (before shutdown).
    pub at_end: FleetSnapshot,
    /// The fleet after drain and shutdown: final counts.
    pub last: FleetSnapshot,
    pub elapsed: Duration,
    pub interrupted: bool,
    /// The scenario's rollouts, as the orchestrator saw them and as they truly went.
    pub rollouts: Vec<fleet_metrics::RolloutReport>,
}

/// Runs `plan` on the virtual clock against the simulated broker.
pub fn run_virtual(
    plan: Arc<RunPlan>,
    opts: &RunOptions,
    stop: Arc<AtomicBool>,
    observe: impl FnMut(&FleetSnapshot),
) -> Result<RunOutcome, EngineError> {
    run_shards(plan, opts, stop, observe, |shard, ctl| {
        crate::virtual_clock::run_virtual(shard, ctl)
    })
}

/// Runs `plan` on the wall clock with one adapter per shard.
pub fn run_wall<A, F>(
    plan: Arc<RunPlan>,
    make_adapter: F,
    opts: &RunOptions,
    stop: Arc<AtomicBool>,
    observe: impl FnMut(&FleetSnapshot),
) -> Result<RunOutcome, EngineError>
where
    A: Adapter,
    F: Fn(u16) -> A + Send + Sync,
{
    let queries = opts.queries.clone();
    run_shards(plan, opts, stop, observe, move |shard, ctl| {
        let adapter = make_adapter(shard.id);
        let inbox = queries.as_ref().and_then(|q| q.take(shard.id));
        crate::wall_clock::run_wall(shard, adapter, ctl, inbox)
    })
}

fn run_shards<F>(
    plan: Arc<RunPlan>,
    opts: &RunOptions,
    stop: Arc<AtomicBool>,
    mut observe: impl FnMut(&FleetSnapshot),
    drive: F,
) -> Result<RunOutcome, EngineError>
where
    F: Fn(Shard, &ShardControl) -> std::io::Result<()> + Send + Sync,
{
    let shards = plan.shards;
    let (tx, rx) = mpsc::sync_channel(usize::from(shards) * REPORT_QUEUE_PER_SHARD + 4);
    let start = Instant::now();
    let mut collector = Collector::new(usize::from(shards), u64::from(plan.total_devices()));
    // Shard threads log inside the caller's span (the run id).
    let span = tracing::Span::current();
    let hub = plan.rollouts.clone();
    let end = plan.end;
    let control = opts.control.clone().unwrap_or_else(|| Control::new(shards));
    let mut outcome = std::thread::scope(|scope| {
        for k in 0..shards {
            let span = span.clone();
            let ctl = ShardControl {
                tx: tx.clone(),
                stop: stop.clone(),
                start,
            };
            let plan = plan.clone();
            let log_part = opts.event_log.as_ref().map(|p| event_log::part_path(p, k));
            let drive = &drive;
            let control = control.clone();
            std::thread::Builder::new()
                .name(format!("shard-{k}"))
                .spawn_scoped(scope, move || {
                    let _run = span.enter();
                    let _shard = tracing::info_span!("shard", shard = k).entered();
                    let hub = plan.rollouts.clone();
                    let result = match Shard::new(k, plan, log_part.as_deref()) {
                        Ok(mut shard) => {
                            shard.set_control(Some(control));
                            drive(shard, &ctl)
                        }
                        Err(e) => {
                            // Never joined the rollout ticks: the others must not wait for it.
                            if let Some(h) = hub {
                                h.leave(&mut Vec::new(), None);
                            }
                            Err(e)
                        }
                    };
                    if let Err(e) = result {
                        ctl.send(ShardMsg::Failed {
                            shard: k,
                            message: e.to_string(),
                        });
                    }
                })
                .map_err(EngineError::Spawn)?;
        }
        drop(tx);
        let live = Live {
            plan: &plan,
            control: &control,
            meta: &opts.meta,
            detector: Detector::new(),
        };
        let out = collect(
            &rx,
            &mut collector,
            shards,
            start,
            &stop,
            &mut observe,
            live,
        );
        control.close();
        out
    })?;
    if let Some(path) = &opts.event_log {
        event_log::join_parts(path, shards).map_err(|source| EngineError::EventLog {
            path: path.display().to_string(),
            source,
        })?;
    }
    if let Some(h) = hub {
        outcome.rollouts = h.reports(end);
    }
    Ok(outcome)
}

/// What snapshots carry beyond the shards' metrics.
struct Live<'a> {
    plan: &'a RunPlan,
    control: &'a Control,
    meta: &'a RunMeta,
    detector: Detector,
}

impl Live<'_> {
    fn fill(&mut self, snap: &mut FleetSnapshot) {
        if let Some(h) = &self.plan.rollouts {
            snap.rollouts = h.live();
        }
        snap.run = self.meta.clone();
        snap.paused = self.control.paused();
        snap.version_labels = self.plan.version_labels.to_vec();
        let noticed =
            self.detector
                .observe(snap, &self.plan.fleet.settings.slos, SATURATION_LAG_US);
        for (kind, message) in noticed {
            self.control.note(kind, snap.sim_time_s, message);
        }
        snap.events = self.control.events();
    }
}

fn collect(
    rx: &Receiver<ShardMsg>,
    collector: &mut Collector,
    shards: u16,
    start: Instant,
    stop: &AtomicBool,
    observe: &mut impl FnMut(&FleetSnapshot),
    mut live: Live<'_>,
) -> Result<RunOutcome, EngineError> {
    let mut done = 0u16;
    let mut at_end: Option<FleetSnapshot> = None;
    let mut failure: Option<EngineError> = None;
    // Shards report on whole seconds of the run; snapshots come a little after, so they show
    // the second that just ended rather than the one before.
    let mut next_snapshot = start + REPORT_INTERVAL + SNAPSHOT_OFFSET;
    loop {
        let wait = next_snapshot.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(ShardMsg::Report(r)) => {
                if r.done {
                    done += 1;
                }
                collector.ingest(r);
            }
            Ok(ShardMsg::Ended(r)) => {
                collector.ingest_ended(r);
                if at_end.is_none() && collector.all_ended() {
                    at_end = Some(collector.snapshot_at_end(start.elapsed().as_secs_f64()));
                }
            }
            Ok(ShardMsg::Failed { shard, message }) => {
                // Stop the others: a run with a dead shard measures nothing trustworthy.
                stop.store(true, Ordering::Relaxed);
                failure.get_or_insert(EngineError::Shard { shard, message });
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if Instant::now() >= next_snapshot {
            next_snapshot += REPORT_INTERVAL;
            let mut snap = collector.snapshot(start.elapsed().as_secs_f64());
            live.fill(&mut snap);
            observe(&snap);
        }
        if done == shards {
            break;
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let mut last = collector.snapshot(start.elapsed().as_secs_f64());
    live.fill(&mut last);
    observe(&last);
    Ok(RunOutcome {
        at_end: at_end.unwrap_or_else(|| last.clone()),
        last,
        elapsed: start.elapsed(),
        interrupted: stop.load(Ordering::Relaxed),
        rollouts: Vec::new(),
    })
}

/// A wall-clock run on a thread of its own whose devices speak no session protocol (they are
/// reached through queries: Modbus slaves, serial ports). For embedding and for tests: `finish`
/// stops it and returns the outcome; dropping it stops it too.
pub struct BackgroundRun {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<RunOutcome, EngineError>>>,
}

impl BackgroundRun {
    pub fn start(plan: Arc<RunPlan>, opts: RunOptions) -> BackgroundRun {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            run_wall(
                plan,
                |_| crate::adapter::IdleAdapter::default(),
                &opts,
                flag,
                |_| {},
            )
        });
        BackgroundRun {
            stop,
            thread: Some(thread),
        }
    }

    /// Ends the run (as Ctrl-C would) and waits for its outcome.
    pub fn finish(mut self) -> Result<RunOutcome, EngineError> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(r)) => r,
            _ => Err(EngineError::Shard {
                shard: 0,
                message: "the run's thread panicked".into(),
            }),
        }
    }
}

impl Drop for BackgroundRun {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for BackgroundRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BackgroundRun")
    }
}
