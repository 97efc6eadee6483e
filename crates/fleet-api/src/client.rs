//! `RemoteFleet`: a `FleetPort` over the HTTP API of one or several fleetsim processes
//! (`fleetsim top --attach URL...`). A thread of its own ("api-attach", current-thread
//! runtime) polls every URL's snapshot once a second and merges the latest of each.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fleet_metrics::{
    Command, CommandAck, DeviceDetail, ErrorKind, FleetPort, FleetSnapshot, LiveEvent,
    LiveEventKind, PortError, live::EVENTS_KEPT, merge_snapshots,
};
use hyper::Method;
use tokio::sync::watch;

use crate::error::{ApiError, port_error_from_http};
use crate::http::{Target, encode_segment};

/// How often each URL's snapshot is fetched.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How long `command` and `device` wait for every process to answer (each request is bounded
/// by `REQUEST_TIMEOUT`; this is the margin over it).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A run (or several, merged) seen through the control API.
pub struct RemoteFleet {
    targets: Arc<Vec<Target>>,
    token: Option<Arc<str>>,
    latest: Arc<Latest>,
    lost: Lost,
    runtime: tokio::runtime::Handle,
    stop: Option<watch::Sender<bool>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for RemoteFleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteFleet")
            .field(
                "urls",
                &self.targets.iter().map(|t| &t.url).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Processes known to be gone for good (`RemoteFleet::mark_lost`), with why, by target.
type Lost = Arc<Mutex<Vec<Option<String>>>>;

/// The latest merged snapshot, and a signal for `wait_for_snapshot`.
#[derive(Default)]
struct Latest {
    snapshot: Mutex<Option<Arc<FleetSnapshot>>>,
    changed: Condvar,
}

impl Latest {
    fn lock(&self) -> MutexGuard<'_, Option<Arc<FleetSnapshot>>> {
        self.snapshot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl RemoteFleet {
    /// Checks the URLs (`http://HOST:PORT[/PREFIX]`; https is refused) and the token
    /// (`--token`), and starts polling. Does not wait for an answer: `snapshot()` is None
    /// until one process has answered (`wait_for_snapshot` waits for it).
    pub fn connect(urls: Vec<String>, token: Option<String>) -> Result<RemoteFleet, ApiError> {
        if urls.is_empty() {
            return Err(ApiError::NoUrls);
        }
        if let Some(t) = &token {
            crate::error::check_token("--token", t)?;
        }
        let mut targets: Vec<Target> = Vec::with_capacity(urls.len());
        for url in &urls {
            let t = Target::parse(url)?;
            if targets.iter().any(|o| o.url == t.url) {
                return Err(ApiError::BadUrl {
                    url: url.clone(),
                    reason: "given twice".into(),
                });
            }
            targets.push(t);
        }
        let targets = Arc::new(targets);
        let token: Option<Arc<str>> = token.map(Arc::from);
        let runtime = crate::error::runtime()?;
        let handle = runtime.handle().clone();
        let latest = Arc::new(Latest::default());
        let (stop_tx, stop_rx) = watch::channel(false);
        let lost: Lost = Arc::new(Mutex::new(vec![None; targets.len()]));
        let poller = Poller {
            targets: targets.clone(),
            token: token.clone(),
            latest: latest.clone(),
            lost: lost.clone(),
            state: targets.iter().map(|_| TargetState::default()).collect(),
            notes: Vec::new(),
            seq: 0,
        };
        let thread = std::thread::Builder::new()
            .name("api-attach".into())
            .spawn(move || {
                runtime.block_on(poller.run(stop_rx));
                runtime.shutdown_timeout(Duration::from_millis(100));
            })
            .map_err(|source| ApiError::Start {
                what: "thread",
                source,
            })?;
        Ok(RemoteFleet {
            targets,
            token,
            latest,
            lost,
            runtime: handle,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Waits (at most `timeout`) until some process has answered; the latest merged snapshot.
    pub fn wait_for_snapshot(&self, timeout: Duration) -> Option<Arc<FleetSnapshot>> {
        let deadline = Instant::now() + timeout;
        let mut guard = self.latest.lock();
        loop {
            if let Some(s) = guard.as_ref() {
                return Some(s.clone());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            guard = self
                .latest
                .changed
                .wait_timeout(guard, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// Process number `index` (in the order of the URLs) is gone for good, for the reason
    /// given (`run --processes` knows when a child died): it leaves the merged view at the next
    /// poll, with a note in the event feed and in `run.source`, instead of showing its last
    /// numbers as if it were still running.
    pub fn mark_lost(&self, index: usize, why: String) {
        let mut lost = self
            .lost
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(slot) = lost.get_mut(index) {
            slot.get_or_insert(why);
        }
    }

    /// Runs `f` for every target on the polling thread's runtime, all at once; their results
    /// in the targets' order.
    fn on_every_target<T: Send + 'static>(
        &self,
        what: &str,
        method: Method,
        path: String,
        body: Option<Vec<u8>>,
        f: fn(&Target, u16, &[u8]) -> T,
        on_error: fn(&Target, String) -> T,
    ) -> Result<Vec<T>, PortError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let targets = self.targets.clone();
        let token = self.token.clone();
        // Lost processes are not asked (they are gone; the others still answer).
        let live: Vec<usize> = {
            let lost = self
                .lost
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            (0..targets.len())
                .filter(|&i| lost.get(i).is_none_or(Option::is_none))
                .collect()
        };
        self.runtime.spawn(async move {
            let mut tasks = Vec::with_capacity(live.len());
            for &i in &live {
                let (targets, token) = (targets.clone(), token.clone());
                let (method, path, body) = (method.clone(), path.clone(), body.clone());
                tasks.push(tokio::spawn(async move {
                    let t = &targets[i];
                    match t.request(token.as_deref(), method, &path, body).await {
                        Ok((status, bytes)) => f(t, status, &bytes),
                        Err(e) => on_error(t, e),
                    }
                }));
            }
            let mut out = Vec::with_capacity(tasks.len());
            for (task, t) in tasks.into_iter().zip(live.iter().map(|&i| &targets[i])) {
                out.push(match task.await {
                    Ok(r) => r,
                    Err(e) => on_error(t, format!("task failed: {e}")),
                });
            }
            let _ = tx.send(out);
        });
        rx.recv_timeout(CALL_TIMEOUT).map_err(|_| {
            PortError::new(
                ErrorKind::Unavailable,
                format!("{what}: no answer within {} s", CALL_TIMEOUT.as_secs_f64()),
            )
        })
    }
}

impl Drop for RemoteFleet {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn unreachable_error(t: &Target, e: String) -> PortError {
    PortError::new(
        ErrorKind::Unavailable,
        format!("{}: not answering: {e}", t.url),
    )
}

/// A process's answer: the JSON of `T` when `ok`, its error (JSON or not) otherwise.
fn answer<T: serde::de::DeserializeOwned>(
    t: &Target,
    ok: bool,
    status: u16,
    bytes: &[u8],
) -> Result<T, PortError> {
    if !ok {
        return Err(port_error_from_http(&t.url, status, bytes));
    }
    serde_json::from_slice::<T>(bytes).map_err(|e| {
        PortError::new(
            ErrorKind::Unavailable,
            format!("{}: unexpected answer: {e}", t.url),
        )
    })
}

impl FleetPort for RemoteFleet {
    fn snapshot(&self) -> Option<Arc<FleetSnapshot>> {
        self.latest.lock().clone()
    }

    /// Sent to every process; succeeds when all of them accepted it, otherwise the first
    /// error, naming its URL.
    fn command(&self, cmd: Command) -> Result<CommandAck, PortError> {
        let describe = cmd.describe();
        let (path, body) = match &cmd {
            Command::Pause => ("/api/v1/pause", None),
            Command::Resume => ("/api/v1/resume", None),
            Command::Fault(f) => ("/api/v1/faults", Some(serde_json::to_vec(f))),
            Command::Rollout(r) => ("/api/v1/rollouts", Some(serde_json::to_vec(r))),
        };
        let body = body
            .transpose()
            .map_err(|e| PortError::new(ErrorKind::BadRequest, format!("{describe}: {e}")))?;
        let results = self.on_every_target(
            &describe,
            Method::POST,
            path.to_string(),
            body,
            |t, status, bytes| answer::<CommandAck>(t, (200..300).contains(&status), status, bytes),
            |t, e| Err(unreachable_error(t, e)),
        )?;
        let n = results.len();
        let mut acks = Vec::with_capacity(n);
        for r in results {
            acks.push(r?);
        }
        let mut ack = acks.into_iter().next().ok_or_else(|| {
            PortError::new(ErrorKind::Unavailable, "no process to send the command to")
        })?;
        if n > 1 {
            ack.message = format!("{} (on all {n} processes)", ack.message);
        }
        Ok(ack)
    }

    /// Asks every process; the first (in URL order) that has the device answers.
    fn device(&self, key: &str) -> Result<DeviceDetail, PortError> {
        let path = format!("/api/v1/devices/{}", encode_segment(key));
        let results = self.on_every_target(
            &format!("device {key}"),
            Method::GET,
            path,
            None,
            |t, status, bytes| answer::<DeviceDetail>(t, status == 200, status, bytes),
            |t, e| Err(unreachable_error(t, e)),
        )?;
        let mut first_error = None;
        for r in results {
            match r {
                Ok(d) => return Ok(d),
                Err(e) if e.kind == ErrorKind::NotFound => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.unwrap_or_else(|| {
            PortError::new(
                ErrorKind::NotFound,
                format!(
                    "device {key:?}: no such device in any of the {} processes",
                    self.targets.len()
                ),
            )
        }))
    }
}

#[derive(Default)]
struct TargetState {
    last: Option<FleetSnapshot>,
    /// Not answering now (said once, in an event).
    down: bool,
    /// Why it did not answer last, when it never has.
    never_answered: Option<String>,
    /// Gone for good (`RemoteFleet::mark_lost`): no longer polled nor merged.
    lost: bool,
}

/// The polling loop's own state (on the "api-attach" thread).
struct Poller {
    targets: Arc<Vec<Target>>,
    token: Option<Arc<str>>,
    latest: Arc<Latest>,
    lost: Lost,
    state: Vec<TargetState>,
    /// Events of the view itself (a process stopped or started answering again).
    notes: Vec<LiveEvent>,
    seq: u64,
}

impl Poller {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tick.tick() => {}
            }
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = self.poll_once() => {}
            }
        }
    }

    async fn poll_once(&mut self) {
        let lost: Vec<Option<String>> = self
            .lost
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut changes = Vec::new();
        for ((st, why), t) in self.state.iter_mut().zip(&lost).zip(self.targets.iter()) {
            if let Some(why) = why
                && !st.lost
            {
                st.lost = true;
                st.last = None;
                st.never_answered = None;
                changes.push(format!("{} lost: {why}", t.url));
            }
        }
        let mut tasks = Vec::with_capacity(self.targets.len());
        for i in 0..self.targets.len() {
            if self.state[i].lost {
                tasks.push(None);
                continue;
            }
            let (targets, token) = (self.targets.clone(), self.token.clone());
            tasks.push(Some(tokio::spawn(async move {
                let t = &targets[i];
                let (status, bytes) = t
                    .request(token.as_deref(), Method::GET, "/api/v1/snapshot", None)
                    .await?;
                if status != 200 {
                    return Err(port_error_from_http(&t.url, status, &bytes).message);
                }
                serde_json::from_slice::<FleetSnapshot>(&bytes)
                    .map_err(|e| format!("not a snapshot: {e}"))
            })));
        }
        for (i, task) in tasks.into_iter().enumerate() {
            let Some(task) = task else { continue };
            let result = task
                .await
                .unwrap_or_else(|e| Err(format!("task failed: {e}")));
            let url = &self.targets[i].url;
            let st = &mut self.state[i];
            match result {
                Ok(snap) => {
                    if st.down {
                        changes.push(format!("{url} answering again"));
                    }
                    st.down = false;
                    st.never_answered = None;
                    st.last = Some(snap);
                }
                Err(e) if st.last.is_some() => {
                    if !st.down {
                        changes.push(format!("{url} not answering: {e}"));
                    }
                    st.down = true;
                }
                Err(e) => st.never_answered = Some(e),
            }
        }
        self.publish(changes);
    }

    /// Merges the latest snapshot of every process that has answered, with the view's own
    /// events, and makes it the one `snapshot()` returns.
    fn publish(&mut self, changes: Vec<String>) {
        let parts: Vec<(String, FleetSnapshot)> = self
            .targets
            .iter()
            .zip(&self.state)
            .filter_map(|(t, st)| st.last.clone().map(|s| (t.url.clone(), s)))
            .collect();
        if parts.is_empty() {
            return;
        }
        let mut merged = merge_snapshots(&parts);
        for message in changes {
            self.seq += 1;
            self.notes.push(LiveEvent {
                seq: self.seq,
                elapsed_s: merged.elapsed_s,
                sim_time_s: merged.sim_time_s,
                kind: LiveEventKind::Shard,
                message,
            });
        }
        let extra = self.notes.len().saturating_sub(EVENTS_KEPT);
        self.notes.drain(..extra);
        if !self.notes.is_empty() {
            merged.events.extend(self.notes.iter().cloned());
            merged
                .events
                .sort_by(|a, b| a.elapsed_s.total_cmp(&b.elapsed_s));
            let extra = merged.events.len().saturating_sub(EVENTS_KEPT);
            merged.events.drain(..extra);
        }
        let silent: Vec<String> = self
            .targets
            .iter()
            .zip(&self.state)
            .filter_map(|(t, st)| {
                st.never_answered
                    .as_ref()
                    .filter(|_| st.last.is_none())
                    .map(|e| format!("{} ({e})", t.url))
            })
            .collect();
        if !silent.is_empty() {
            merged.run.source = format!(
                "{}; never answered: {}",
                merged.run.source,
                silent.join(", ")
            );
        }
        let lost = self.state.iter().filter(|st| st.lost).count();
        if lost > 0 {
            merged.run.source = format!(
                "{}; {lost} of {} processes lost (their devices are not counted)",
                merged.run.source,
                self.targets.len()
            );
        }
        *self.latest.lock() = Some(Arc::new(merged));
        self.latest.changed.notify_all();
    }
}
