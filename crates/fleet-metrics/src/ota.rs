//! Firmware update counters (cumulative per shard, summed across shards like `Counters`), the
//! update-stage and version gauges, and the report of a rollout fleetsim ran itself.

use serde::{Deserialize, Serialize};

use fleet_core::ota::{FailStage, OtaStage};

/// Number of update stages (`OtaStage::ALL`).
pub const OTA_STAGE_COUNT: usize = OtaStage::ALL.len();

/// Failures by the stage they happened in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageCounts {
    pub download: u64,
    pub verify: u64,
    pub install: u64,
    pub boot: u64,
    pub trial: u64,
}

impl StageCounts {
    pub fn bump(&mut self, s: FailStage) {
        match s {
            FailStage::Download => self.download += 1,
            FailStage::Verify => self.verify += 1,
            FailStage::Install => self.install += 1,
            FailStage::Boot => self.boot += 1,
            FailStage::Trial => self.trial += 1,
        }
    }
    pub fn add(&mut self, o: &StageCounts) {
        self.download += o.download;
        self.verify += o.verify;
        self.install += o.install;
        self.boot += o.boot;
        self.trial += o.trial;
    }
    pub fn total(&self) -> u64 {
        self.download + self.verify + self.install + self.boot + self.trial
    }
}

/// HTTP image downloads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpCounters {
    /// GET requests made (a resume is a request of its own).
    pub requests: u64,
    /// Image bytes received.
    pub bytes: u64,
    /// Requests that asked for a range (continuing after a drop).
    pub resumes: u64,
    /// Attempts that failed (connection, timeout, HTTP status); retried ones included.
    pub errors: u64,
}

impl HttpCounters {
    /// One download attempt ended: `fetched` bytes received, a range asked for or not,
    /// failed or complete.
    pub fn attempt(&mut self, fetched: u64, resumed: bool, failed: bool) {
        self.requests += 1;
        self.bytes += fetched;
        self.resumes += u64::from(resumed);
        self.errors += u64::from(failed);
    }

    pub fn add(&mut self, o: &HttpCounters) {
        self.requests += o.requests;
        self.bytes += o.bytes;
        self.resumes += o.resumes;
        self.errors += o.errors;
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OtaCounters {
    /// Jobs that reached a device (from a rollout, the generic protocol or AWS IoT Jobs).
    pub jobs_received: u64,
    /// Jobs a device started (its download began).
    pub accepted: u64,
    pub rejected: u64,
    /// Outcomes as the devices know them (reported or not).
    pub succeeded: u64,
    pub failed: u64,
    /// Devices that never came back after rebooting into the new image.
    pub bricked: u64,
    /// Failed updates that went back to the old slot (boot loop, failed trial).
    pub rolled_back: u64,
    pub failures_by_stage: StageCounts,
    /// Status messages and job requests sent.
    pub status_reports: u64,
    /// Final reports lost (the `lost_report` fault): the backend never hears.
    pub reports_lost: u64,
    pub download_pauses: u64,
    pub download_restarts: u64,
    pub download_stalls: u64,
    pub download_failures: u64,
    pub reboots_mid_download: u64,
    pub power_losses: u64,
    /// Boots of a new image that failed (each retried until the attempts run out).
    pub boot_failures: u64,
    pub cancelled: u64,
    pub cancel_refused: u64,
    /// Job messages that could not be understood (answered with REJECTED when they had a job id).
    pub bad_messages: u64,
    /// AWS IoT Jobs: updates rejected by the backend, and re-sent after a VersionMismatch;
    /// start-next/get rejections; jobs dropped because the backend no longer knew them.
    pub update_rejections: u64,
    pub update_retries: u64,
    pub request_rejections: u64,
    pub abandoned: u64,
    pub http: HttpCounters,
}

impl OtaCounters {
    pub fn add(&mut self, o: &OtaCounters) {
        macro_rules! sum {
            ($($f:ident),*) => { $( self.$f += o.$f; )* };
        }
        sum!(
            jobs_received,
            accepted,
            rejected,
            succeeded,
            failed,
            bricked,
            rolled_back,
            status_reports,
            reports_lost,
            download_pauses,
            download_restarts,
            download_stalls,
            download_failures,
            reboots_mid_download,
            power_losses,
            boot_failures,
            cancelled,
            cancel_refused,
            bad_messages,
            update_rejections,
            update_retries,
            request_rejections,
            abandoned
        );
        self.failures_by_stage.add(&o.failures_by_stage);
        self.http.add(&o.http);
    }
}

/// Devices per update stage, by name.
pub fn stage_map(stages: &[u64; OTA_STAGE_COUNT]) -> std::collections::BTreeMap<&'static str, u64> {
    OtaStage::ALL
        .iter()
        .map(|s| (s.as_str(), stages[s.index()]))
        .collect()
}

/// Outcome counts of a rollout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutCounts {
    pub notified: u64,
    pub started: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub rejected: u64,
    pub timed_out: u64,
}

/// One wave of a rollout.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WaveReport {
    pub wave: u32,
    pub started_at_s: f64,
    /// Targets of this wave.
    pub devices: u64,
    #[serde(flatten)]
    pub reported: RolloutCounts,
}

/// Devices updated (or harmed) after the abort threshold was truly crossed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overshoot {
    /// Notified after the crossing.
    pub notified: u64,
    /// Started their download after the crossing.
    pub started: u64,
    /// Committed the new version after the crossing.
    pub updated: u64,
    /// Failed (bricked included) after the crossing.
    pub failed: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AbortReport {
    pub criteria: String,
    /// When the orchestrator aborted, from what was reported to it.
    pub aborted_at_s: Option<f64>,
    /// When the criteria were met by what truly happened (failures fleetsim injected, reported
    /// or not, bricked devices included).
    pub threshold_crossed_at_s: Option<f64>,
    /// aborted_at - threshold_crossed_at.
    pub time_to_halt_s: Option<f64>,
    pub overshoot: Overshoot,
}

/// What fleetsim injected, whatever was reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutTruth {
    pub succeeded: u64,
    pub failed: u64,
    pub rejected: u64,
    pub bricked: u64,
    pub rolled_back: u64,
    /// Devices that dropped a job they had not started because the rollout aborted.
    pub cancelled: u64,
    /// Notified devices with no outcome at the end (never started, or stuck mid-update).
    pub stuck: u64,
    pub failures_by_stage: StageCounts,
    /// Final reports that never reached the orchestrator.
    pub reports_lost: u64,
}

/// The report of one rollout.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RolloutReport {
    pub name: String,
    pub target_version: String,
    pub cohorts: Vec<String>,
    /// not_started, running, completed, aborted.
    pub state: String,
    pub targets: u64,
    pub started_at_s: Option<f64>,
    /// Every target executed (or the rollout aborted and nothing is left running).
    pub finished_at_s: Option<f64>,
    /// As reported to the orchestrator.
    #[serde(flatten)]
    pub reported: RolloutCounts,
    /// Targets never notified because the rollout aborted, and queued jobs cancelled.
    pub not_notified: u64,
    pub cancelled: u64,
    /// Notified, with no final report at the end.
    pub in_progress: u64,
    pub abort: Option<AbortReport>,
    pub truth: RolloutTruth,
    pub waves: Vec<WaveReport>,
}

/// A rollout while it runs, for progress lines and live views (cheap to take every second).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RolloutLive {
    pub name: String,
    pub target_version: String,
    pub state: String,
    /// Waves started so far (1-based; 0 before the start).
    pub wave: u32,
    pub waves: u32,
    pub targets: u64,
    #[serde(flatten)]
    pub reported: RolloutCounts,
}
