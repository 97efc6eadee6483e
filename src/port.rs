//! The running fleet as the TUI and the control API see it (`FleetPort`): the latest snapshot,
//! and commands checked here (files' rules: a fault is checked like a scenario's `[[events]]`
//! entry, a rollout like a `[[rollouts]]` entry) before the engine carries them out.

use std::sync::{Arc, Mutex, PoisonError};

use fleet_core::Fleet;
use fleet_core::scenario::{Clock, EventRaw};
use fleet_engine::Control;
use fleet_engine::RunPlan;
use fleet_engine::rollout::RolloutPlan;
use fleet_metrics::FleetSnapshot;
use fleet_metrics::live::{
    Command, CommandAck, DeviceDetail, ErrorKind, FaultRequest, FleetPort, LiveEventKind,
    PortError, RolloutRequest,
};

/// Where commands come from, for the event feed ("api", "tui").
pub struct LocalPort {
    plan: Arc<RunPlan>,
    control: Arc<Control>,
    latest: Mutex<Option<Arc<FleetSnapshot>>>,
}

fn bad(message: impl Into<String>) -> PortError {
    PortError::new(ErrorKind::BadRequest, message)
}

/// Problems with a request, each as `field = value: what was expected` (the request is a
/// scenario entry without a file: `rollouts[3].` and the like are left out).
fn config_errors(e: fleet_core::ConfigErrors) -> PortError {
    let lines: Vec<String> =
        e.0.iter()
            .map(|e| {
                let key = e.key.rsplit_once('.').map_or(e.key.as_str(), |(_, k)| k);
                match &e.value {
                    Some(v) => format!("{key} = {v}: {}", e.message),
                    None => format!("{key}: {}", e.message),
                }
            })
            .collect();
    bad(lines.join("; "))
}

impl LocalPort {
    pub fn new(plan: Arc<RunPlan>, control: Arc<Control>) -> Arc<LocalPort> {
        Arc::new(LocalPort {
            plan,
            control,
            latest: Mutex::new(None),
        })
    }

    /// A new snapshot (the run's observer calls this once a second).
    pub fn publish(&self, snap: &FleetSnapshot) {
        *self.latest.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(snap.clone()));
    }

    fn fleet(&self) -> &Fleet {
        &self.plan.fleet
    }

    fn sim_time_s(&self) -> f64 {
        self.control.sim_time_s()
    }

    fn fault(&self, req: &FaultRequest) -> Result<String, PortError> {
        // The request is a scenario's [[events]] entry without `at`: check it by the same rules.
        let mut value = serde_json::to_value(req).map_err(|e| bad(e.to_string()))?;
        if let Some(m) = value.as_object_mut() {
            m.insert("at".into(), "0s".into());
        }
        let raw: EventRaw = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
        let mut c = fleet_core::error::Checker::new("fault");
        let cohorts = &self.fleet().cohorts;
        let event = fleet_core::scenario::validate_event(
            &mut c,
            "fault",
            &raw,
            fleet_core::SimDuration::ZERO,
            |name| cohorts.iter().any(|co| co.name == name),
        );
        if !c.errors.is_empty() {
            return Err(config_errors(c.errors));
        }
        let text = fleet_engine::control::describe_event(&event);
        let first = self.fleet().settings.events.len() as u32;
        self.control.inject(event, first)?;
        Ok(text)
    }

    fn rollout(&self, req: &RolloutRequest) -> Result<String, PortError> {
        if self.plan.clock == Clock::Virtual {
            return Err(PortError::new(
                ErrorKind::Conflict,
                "rollouts cannot be started by hand on the virtual clock (the run is not in real time): add a [[rollouts]] entry to the scenario, or use `fleetsim rollout`",
            ));
        }
        let Some(hub) = &self.plan.rollouts else {
            return Err(PortError::new(
                ErrorKind::Conflict,
                "no device of this run takes updates (no profile has an [ota] table)",
            ));
        };
        let raw = fleet_core::rollout::RolloutRaw {
            name: req.name.clone(),
            at: "0s".into(),
            target_version: req.target_version.clone(),
            cohorts: req.cohorts.clone(),
            fraction: req.fraction.unwrap_or(1.0),
            timeout: req.timeout.clone().unwrap_or_else(|| "1h".into()),
            evaluate_every: req
                .evaluate_every
                .clone()
                .unwrap_or_else(|| format!("{}s", hub.period.as_secs_f64())),
            waves: req.waves.clone(),
            wave_soak: req.wave_soak.clone(),
            wave_interval: req.wave_interval.clone(),
            rate: None,
            abort: match (req.abort_failure_percent, req.abort_min_executed) {
                (Some(p), n) => {
                    let mut a = fleet_core::rollout::AbortRaw::new(p);
                    if let Some(n) = n {
                        a.min_executed = u32::try_from(n)
                            .map_err(|_| bad(format!("abort_min_executed {n}: too large")))?;
                    }
                    Some(a)
                }
                (None, Some(_)) => {
                    return Err(bad("abort_min_executed needs abort_failure_percent"));
                }
                (None, None) => None,
            },
            url: req.url.clone(),
            size: req.size,
            sha256: req.sha256.clone(),
        };
        let mut c = fleet_core::error::Checker::new("rollout");
        let mut spec = raw.validate(&mut c, "rollout");
        if !c.errors.is_empty() {
            return Err(config_errors(c.errors));
        }
        let targets = self
            .fleet()
            .resolve_rollout(&spec, "rollout")
            .map_err(config_errors)?;
        // It starts at the orchestrator's next tick.
        spec.at = fleet_core::SimDuration::from_secs_f64(self.sim_time_s());
        let i = hub.len();
        let plan = RolloutPlan::one(
            self.fleet(),
            self.plan.seed,
            i,
            &spec,
            &targets,
            &self.plan.owned,
        );
        let n = plan.order.len();
        hub.add(plan)
            .map_err(|m| PortError::new(ErrorKind::Conflict, m))?;
        Ok(format!(
            "rollout {:?} of {} to {n} devices, starting at the next evaluation (every {})",
            spec.name, spec.target_version, hub.period
        ))
    }
}

impl FleetPort for LocalPort {
    fn snapshot(&self) -> Option<Arc<FleetSnapshot>> {
        self.latest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn command(&self, cmd: Command) -> Result<CommandAck, PortError> {
        let message = match &cmd {
            Command::Pause => self.control.pause().map(|()| {
                "paused: simulated time stands still, sessions are kept alive".to_string()
            })?,
            Command::Resume => self.control.resume().map(|()| "resumed".to_string())?,
            Command::Fault(f) => self.fault(f)?,
            Command::Rollout(r) => self.rollout(r)?,
        };
        let sim_time_s = self.sim_time_s();
        self.control
            .note(LiveEventKind::Control, sim_time_s, message.clone());
        Ok(CommandAck {
            message,
            sim_time_s,
        })
    }

    fn device(&self, key: &str) -> Result<DeviceDetail, PortError> {
        self.control.device(&self.plan, key)
    }
}
