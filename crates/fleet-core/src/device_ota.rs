//! The device's A/B update cycle: notified (or queued until connected) -> downloading (at the
//! link's bandwidth, or a real HTTP GET; paused by link drops and reboots, resumed) ->
//! verifying -> installing -> rebooting into the other slot -> trial boot with a boot-attempt
//! counter -> committed, or rolled back to the old slot. Faults are drawn once per job from the
//! device's OTA stream, a fixed set of draws, so a job's fate depends only on the seed, the
//! device and how many jobs it had before.
//!
//! A child module of `device` (it reads the device's private state); `handle` calls
//! `ota_sync` after every input, which starts queued jobs, pauses and resumes downloads as the
//! device's connection comes and goes, and sends reports that waited for a connection.

use std::sync::Arc;

use rand::RngExt;

use super::{Device, DeviceCtx, DeviceState, Effect, Effects, Event, TopicKind};
use crate::ota::{
    AwsReply, AwsTopic, FailStage, GenericMsg, JobDoc, JobSource, OtaStage, Outcome, RejectReason,
    StatusReport, classify_aws_topic, encode_aws_request, encode_aws_update, encode_generic_status,
    parse_aws_reply, parse_generic, push_aws_topic, reason_text,
};
use crate::profile::{DownloadMode, OtaProtocol, OtaSpec};
use crate::time::{SimDuration, SimTime};

/// What a job's faults will be, drawn when it starts.
#[derive(Clone, Copy, Debug, Default)]
struct FaultPlan {
    /// Fraction of the image at which the download stalls (None: no stall).
    stall_at: Option<f64>,
    stall_s: f64,
    reboot_at: Option<f64>,
    corrupt: bool,
    install_failure: bool,
    boot_loop: bool,
    trial_failure: bool,
    never_returns: bool,
    lost_report: bool,
}

/// The last report sent, kept to re-send it after an AWS VersionMismatch.
#[derive(Clone, Copy, Debug)]
struct Sent {
    status: &'static str,
    stage: &'static str,
    progress: Option<u8>,
    outcome: Option<Outcome>,
}

/// A job under way (boxed: most devices have none).
#[derive(Clone, Debug)]
pub(super) struct OtaJob {
    /// Shared by every device of a rollout (one allocation per job, not per device).
    doc: Arc<JobDoc>,
    source: JobSource,
    target: u16,
    stage: OtaStage,
    /// The current stage's next deadline (NEVER when waiting on something else).
    until: SimTime,
    total: u64,
    done: u64,
    /// Simulated download speed, bytes per second.
    rate: f64,
    /// Start of the current download segment; NEVER while paused.
    seg_start: SimTime,
    /// A stall holds progress until then.
    stalled_until: SimTime,
    next_pct: u8,
    attempts: u8,
    boot_attempts: u8,
    plan: FaultPlan,
    /// HTTP mode: a download request is out (the adapter is fetching).
    http: bool,
    fetching: bool,
    /// HTTP mode: the size and sha256 the adapter measured match the job document.
    http_ok: bool,
    /// The decided outcome, reported once connected.
    outcome: Option<Outcome>,
    /// An IN_PROGRESS report waits for a connection.
    report_due: bool,
    /// AWS: the execution's versionNumber as last learnt, the last update, re-sends so far, and
    /// whether the terminal update still waits for its acceptance.
    version_number: Option<u64>,
    last: Option<Sent>,
    retries: u8,
    awaiting_final_ack: bool,
    /// The job was checked (version known, not a downgrade, battery): a rollout's job that
    /// reaches an offline device waits unchecked until the device picks it up.
    admitted: bool,
    /// The last download error (HTTP), for the FAILED report's reason.
    error: Option<Box<str>>,
}

/// An input that concerns the update cycle.
#[derive(Clone, Copy, Debug)]
pub enum OtaInput<'a> {
    /// A job from a rollout fleetsim runs (delivered by the engine).
    Job {
        doc: &'a Arc<JobDoc>,
        source: JobSource,
    },
    /// A rollout was aborted: a job of it that has not started is dropped.
    Cancel { rollout: u16 },
    /// HTTP download progress: bytes so far (of `total`, when known).
    DownloadProgress { bytes: u64, total: Option<u64> },
    /// The HTTP download finished: `bytes` received with this lowercase hex sha256.
    DownloadDone { bytes: u64, sha256: &'a str },
    /// The HTTP download attempt failed.
    /// `reason` (the HTTP status or the network error) goes into the FAILED report.
    DownloadFailed {
        bytes: u64,
        retryable: bool,
        reason: &'a str,
    },
}

fn slot_name(slot: u8) -> &'static str {
    if slot == 0 { "A" } else { "B" }
}

impl Device {
    /// The firmware version the device runs (an index into its cohort's model).
    pub fn running_version(&self) -> u16 {
        self.fw_slots[usize::from(self.fw_active)]
    }

    /// "A" or "B".
    pub fn active_slot(&self) -> &'static str {
        slot_name(self.fw_active)
    }

    /// Where the device is in an update.
    pub fn ota_stage(&self) -> OtaStage {
        match &self.ota {
            Some(j) => j.stage,
            None => OtaStage::Idle,
        }
    }

    /// The job's id and the download URL, for an adapter asked to fetch (`Effect::Download`).
    pub fn ota_download_url(&self) -> Option<&str> {
        self.ota.as_ref().and_then(|j| j.doc.url.as_deref())
    }

    /// The update cycle's next deadline (NEVER without one); part of `wake_at`.
    pub fn ota_deadline(&self) -> SimTime {
        match &self.ota {
            Some(j) => j.until,
            None => SimTime::NEVER,
        }
    }

    /// Handles one input of the update cycle.
    pub(super) fn on_ota(
        &mut self,
        now: SimTime,
        input: OtaInput,
        ctx: &DeviceCtx,
        fx: &mut Effects,
    ) {
        match input {
            OtaInput::Job { doc, source } => self.ota_job(now, doc, source, None, ctx, fx),
            OtaInput::Cancel { rollout } => {
                if let Some(j) = &self.ota
                    && j.source == JobSource::Rollout(rollout)
                    && j.stage == OtaStage::Queued
                {
                    self.ota = None;
                    fx.events.push(Event::OtaCancelled {
                        rollout: Some(rollout),
                    });
                }
            }
            OtaInput::DownloadProgress { bytes, total } => {
                let Some(j) = &mut self.ota else { return };
                if j.stage != OtaStage::Downloading || !j.http {
                    return;
                }
                if let Some(t) = total {
                    j.total = t.max(1);
                }
                j.done = bytes.min(j.total);
                self.ota_progress_reports(now, ctx, fx);
            }
            OtaInput::DownloadDone { bytes, sha256 } => {
                let Some(j) = &mut self.ota else { return };
                if j.stage != OtaStage::Downloading || !j.http {
                    return;
                }
                j.fetching = false;
                let size_ok = j.doc.size.is_none_or(|s| s == bytes);
                let hash_ok = j.doc.sha256.as_deref().is_none_or(|h| h == sha256);
                j.http_ok = size_ok && hash_ok;
                j.total = bytes.max(1);
                j.done = j.total;
                self.ota_progress_reports(now, ctx, fx);
                self.ota_verify(now, ctx, fx);
            }
            OtaInput::DownloadFailed {
                bytes,
                retryable,
                reason,
            } => {
                let Some(j) = &mut self.ota else { return };
                if j.stage != OtaStage::Downloading || !j.http {
                    return;
                }
                j.fetching = false;
                j.done = bytes;
                j.attempts += 1;
                j.error = Some(reason.chars().take(200).collect::<String>().into());
                fx.events.push(Event::OtaDownloadFailed { retryable });
                if !retryable || j.attempts >= ctx.cohort.firmware.cycle.download_attempts {
                    self.ota_finish(now, Outcome::Failed(FailStage::Download), ctx, fx);
                } else {
                    // Retry after a pause that grows with the attempts.
                    j.seg_start = SimTime::NEVER;
                    j.stalled_until =
                        now + crate::defaults::OTA_DOWNLOAD_RETRY.mul_f64(f64::from(j.attempts));
                    j.until = j.stalled_until;
                }
            }
        }
    }

    /// A message on one of the device's subscriptions that is not a command.
    pub(super) fn on_ota_message(
        &mut self,
        now: SimTime,
        topic: &[u8],
        payload: &[u8],
        ctx: &DeviceCtx,
        fx: &mut Effects,
    ) -> bool {
        let Some(spec) = &ctx.cohort.profile.ota else {
            return false;
        };
        match spec.protocol {
            OtaProtocol::AwsJobs => {
                let Some((kind, job_id)) = classify_aws_topic(&spec.aws_topic_prefix, topic) else {
                    return false;
                };
                let job_id = job_id.to_string();
                match parse_aws_reply(payload) {
                    Ok(reply) => self.on_aws(now, kind, &job_id, reply, ctx, fx),
                    Err(_) => fx.events.push(Event::OtaBadMessage),
                }
                true
            }
            OtaProtocol::Generic => {
                let mut t = Vec::with_capacity(64);
                self.render_ota_topic(ctx, &spec.job_topic, &mut t);
                if t != topic {
                    return false;
                }
                match parse_generic(payload) {
                    Ok(GenericMsg::Job(doc)) => {
                        self.ota_job(now, &Arc::new(doc), JobSource::Generic, None, ctx, fx)
                    }
                    Ok(GenericMsg::Cancel { job_id }) => {
                        self.ota_generic_cancel(now, &job_id, ctx, fx)
                    }
                    Err((job_id, _why)) => {
                        fx.events.push(Event::OtaBadMessage);
                        if let Some(job_id) = job_id {
                            self.ota_reject_unreadable(
                                now,
                                job_id,
                                JobSource::Generic,
                                None,
                                ctx,
                                fx,
                            );
                        }
                    }
                }
                true
            }
        }
    }

    /// Rejects job `job_id`, whose document could not be read.
    fn ota_reject_unreadable(
        &mut self,
        now: SimTime,
        job_id: String,
        source: JobSource,
        version_number: Option<u64>,
        ctx: &DeviceCtx,
        fx: &mut Effects,
    ) {
        let doc = JobDoc {
            job_id,
            version: String::new(),
            url: None,
            size: None,
            sha256: None,
        };
        self.ota_reject(
            now,
            &doc,
            source,
            RejectReason::BadDocument,
            version_number,
            ctx,
            fx,
        );
    }

    fn on_aws(
        &mut self,
        now: SimTime,
        kind: AwsTopic,
        job_id: &str,
        reply: AwsReply,
        ctx: &DeviceCtx,
        fx: &mut Effects,
    ) {
        match kind {
            AwsTopic::NotifyNext => {
                if reply.job_id.is_some() && self.ota.is_none() {
                    self.aws_request(now, None, "start-next", ctx, fx);
                }
            }
            AwsTopic::StartNextAccepted => {
                let (Some(id), Some(doc)) = (reply.job_id, reply.document) else {
                    return; // nothing queued
                };
                match doc {
                    Ok(doc) => {
                        self.ota_job(
                            now,
                            &Arc::new(doc),
                            JobSource::Aws,
                            reply.version_number,
                            ctx,
                            fx,
                        );
                    }
                    Err(_) => {
                        self.ota_reject_unreadable(
                            now,
                            id,
                            JobSource::Aws,
                            reply.version_number,
                            ctx,
                            fx,
                        );
                    }
                }
            }
            AwsTopic::StartNextRejected | AwsTopic::GetRejected => {
                fx.events.push(Event::OtaRequestRejected);
            }
            AwsTopic::UpdateAccepted => {
                let Some(j) = &mut self.ota else { return };
                if j.doc.job_id != job_id || j.source != JobSource::Aws {
                    return;
                }
                // Updates may be in flight: keep the higher of what was learnt and what was used.
                j.version_number = match (j.version_number, reply.version_number) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
                j.retries = 0;
                if j.awaiting_final_ack {
                    self.ota = None;
                    // The job is done: ask for the next one.
                    self.aws_request(now, None, "start-next", ctx, fx);
                }
            }
            AwsTopic::UpdateRejected => {
                let Some(j) = &mut self.ota else { return };
                if j.doc.job_id != job_id || j.source != JobSource::Aws {
                    return;
                }
                fx.events.push(Event::OtaUpdateRejected);
                let mismatch = reply.code.as_deref() == Some("VersionMismatch");
                if mismatch && j.retries < crate::defaults::OTA_MAX_UPDATE_RETRIES {
                    j.retries += 1;
                    match reply.version_number {
                        Some(v) => {
                            j.version_number = Some(v);
                            self.aws_resend(now, ctx, fx);
                        }
                        None => {
                            let id = j.doc.job_id.clone();
                            self.aws_request(now, Some(&id), "get", ctx, fx);
                        }
                    }
                } else if j.outcome.is_some() {
                    // The final update was refused: the backend already has the execution in
                    // a final state (an acceptance that got lost). Done; ask for the next job.
                    self.ota = None;
                    self.aws_request(now, None, "start-next", ctx, fx);
                } else {
                    // The job is gone for the backend (cancelled, removed): stop working on it
                    // unless the image is already being written, then ask for the next one.
                    let keep = matches!(
                        j.stage,
                        OtaStage::Installing | OtaStage::Rebooting | OtaStage::Trial
                    );
                    if !keep {
                        if j.fetching {
                            fx.list.push(Effect::CancelDownload);
                        }
                        self.ota = None;
                        fx.events.push(Event::OtaAbandoned);
                        self.aws_request(now, None, "start-next", ctx, fx);
                    }
                }
            }
            AwsTopic::GetAccepted => {
                let Some(j) = &mut self.ota else { return };
                if j.doc.job_id != job_id || j.source != JobSource::Aws {
                    return;
                }
                if reply.version_number.is_some() {
                    j.version_number = reply.version_number;
                }
                self.aws_resend(now, ctx, fx);
            }
        }
    }

    fn ota_generic_cancel(
        &mut self,
        now: SimTime,
        job_id: &str,
        ctx: &DeviceCtx,
        fx: &mut Effects,
    ) {
        let Some(j) = &self.ota else { return };
        if j.doc.job_id != job_id || j.source != JobSource::Generic {
            return;
        }
        if !matches!(
            j.stage,
            OtaStage::Queued | OtaStage::Downloading | OtaStage::Verifying
        ) {
            fx.events.push(Event::OtaCancelRefused);
            return;
        }
        if j.fetching {
            fx.list.push(Effect::CancelDownload);
        }
        let sent = Sent {
            status: "CANCELED",
            stage: j.stage.as_str(),
            progress: None,
            outcome: None,
        };
        self.ota_publish(now, sent, ctx, fx);
        self.ota = None;
        fx.events.push(Event::OtaCancelled { rollout: None });
    }

    /// A job arrives; `version_number` is an AWS execution's.
    fn ota_job(
        &mut self,
        now: SimTime,
        doc: &Arc<JobDoc>,
        source: JobSource,
        version_number: Option<u64>,
        ctx: &DeviceCtx,
        fx: &mut Effects,
    ) {
        if let Some(j) = &self.ota {
            if j.doc.job_id == doc.job_id && j.source == source {
                return; // the same job again (a repeated notification)
            }
            if source.rollout().is_some() {
                // A rollout's backend queues the job behind the one under way, as AWS IoT
                // queues executions: the device picks it up when it is done.
                fx.events.push(Event::OtaJobReceived {
                    rollout: source.rollout(),
                });
                self.ota_next = Some(Box::new((doc.clone(), source)));
                return;
            }
            self.ota_reject(
                now,
                doc,
                source,
                RejectReason::Busy,
                version_number,
                ctx,
                fx,
            );
            return;
        }
        fx.events.push(Event::OtaJobReceived {
            rollout: source.rollout(),
        });
        if self.state != DeviceState::Online {
            // Nobody to report to yet: the device looks at the job when it picks it up.
            let mut j = new_job(doc.clone(), source, self.running_version());
            j.version_number = version_number;
            j.admitted = false;
            self.ota = Some(Box::new(j));
            return;
        }
        self.ota_admit(now, doc, source, version_number, ctx, fx);
    }

    /// Checks a job and takes it (queued: `ota_sync` starts it), or rejects it with a reason.
    fn ota_admit(
        &mut self,
        now: SimTime,
        doc: &Arc<JobDoc>,
        source: JobSource,
        version_number: Option<u64>,
        ctx: &DeviceCtx,
        fx: &mut Effects,
    ) {
        let reject = |d: &mut Device, why, fx: &mut Effects| {
            d.ota_reject(now, doc, source, why, version_number, ctx, fx);
        };
        let model = &ctx.cohort.firmware;
        let spec = ctx.cohort.profile.ota.as_ref();
        let running = self.running_version();
        let Some(target) = model.version_index(&doc.version) else {
            reject(self, RejectReason::UnknownVersion, fx);
            return;
        };
        if target < running && !spec.is_some_and(|s| s.allow_downgrade) {
            reject(self, RejectReason::Downgrade, fx);
            return;
        }
        if let (Some(s), Some(p)) = (spec, self.battery_percent(ctx))
            && p < s.min_battery_percent
        {
            reject(self, RejectReason::LowBattery, fx);
            return;
        }
        let http = self.ota_uses_http(doc, spec, ctx);
        if spec.is_some_and(|s| s.download == DownloadMode::Http) && doc.url.is_none() {
            reject(self, RejectReason::NoUrl, fx);
            return;
        }
        let image = u64::from(model.versions[usize::from(target)].image_size_kb) * 1024;
        let mut j = new_job(doc.clone(), source, target);
        j.total = doc.size.filter(|_| http).unwrap_or(image).max(1);
        j.http = http;
        j.version_number = version_number;
        self.ota = Some(Box::new(j));
        if target == running {
            // Already there: nothing to download, the job succeeds at once.
            self.ota_finish(now, Outcome::Succeeded, ctx, fx);
        }
    }

    fn ota_uses_http(&self, doc: &JobDoc, spec: Option<&OtaSpec>, ctx: &DeviceCtx) -> bool {
        doc.url.is_some()
            && ctx.real_network
            && match spec.map(|s| s.download).unwrap_or_default() {
                DownloadMode::Auto | DownloadMode::Http => true,
                DownloadMode::Simulated => false,
            }
    }

    #[allow(clippy::too_many_arguments)]
    fn ota_reject(
        &mut self,
        now: SimTime,
        doc: &JobDoc,
        source: JobSource,
        why: RejectReason,
        version_number: Option<u64>,
        ctx: &DeviceCtx,
        fx: &mut Effects,
    ) {
        let outcome = Outcome::Rejected(why);
        fx.events.push(Event::OtaOutcome {
            outcome,
            rollout: source.rollout(),
        });
        // Report it without disturbing a job under way.
        let saved = self.ota.take();
        let mut j = new_job(Arc::new(doc.clone()), source, self.running_version());
        j.stage = OtaStage::Idle;
        j.outcome = Some(outcome);
        j.version_number = version_number;
        self.ota = Some(Box::new(j));
        self.ota_report_outcome(now, ctx, fx);
        // A rejection is not retried: its job ends with the report. An AWS device with nothing
        // else to do keeps it until the backend accepts the update, then asks for its next job.
        let awaiting = self.ota.as_ref().is_some_and(|j| j.awaiting_final_ack);
        if saved.is_some() || !awaiting {
            self.ota = saved;
        }
    }

    /// Starts a queued job: draws its faults and begins the download.
    fn ota_start(&mut self, now: SimTime, ctx: &DeviceCtx, fx: &mut Effects) {
        let Some(j) = &mut self.ota else { return };
        let v = &ctx.cohort.firmware.versions[usize::from(j.target)];
        let f = &v.ota.faults;
        let rng = &mut self.ota_rng;
        // Always the same draws per job, whatever the probabilities.
        let u: [f64; 10] = std::array::from_fn(|_| rng.random::<f64>());
        let stall_s = f
            .stall_s
            .as_ref()
            .map(|d| d.sample(rng))
            .unwrap_or(60.0)
            .max(0.0);
        let bandwidth = ctx.cohort.link.bandwidth_kbps.sample(rng).max(0.1);
        j.plan = FaultPlan {
            stall_at: (u[0] < f.download_stall).then_some(u[1]),
            stall_s,
            reboot_at: (u[2] < f.reboot_mid_download).then_some(u[3]),
            corrupt: u[4] < f.corrupt_image,
            install_failure: u[5] < f.install_failure,
            boot_loop: u[6] < f.boot_loop,
            trial_failure: u[7] < f.trial_failure,
            never_returns: u[8] < f.never_returns,
            lost_report: u[9] < f.lost_report,
        };
        j.rate = bandwidth * 1000.0 / 8.0;
        j.stage = OtaStage::Downloading;
        fx.events.push(Event::OtaStage {
            stage: OtaStage::Downloading,
        });
        fx.events.push(Event::OtaStarted {
            rollout: j.source.rollout(),
        });
        self.ota_progress_reports(now, ctx, fx);
        self.ota_resume(now, fx);
    }

    /// (Re)starts the download segment now.
    fn ota_resume(&mut self, now: SimTime, fx: &mut Effects) {
        let Some(j) = &mut self.ota else { return };
        if j.http {
            if !j.fetching && now >= j.stalled_until {
                j.fetching = true;
                j.until = SimTime::NEVER;
                fx.list.push(Effect::Download { offset: j.done });
            }
            return;
        }
        if j.seg_start.is_never() {
            j.seg_start = now.max(j.stalled_until);
        }
        j.until = download_point(j);
    }

    /// Pauses the download (the link went away).
    fn ota_pause(&mut self, now: SimTime, resume: bool, fx: &mut Effects) {
        let Some(j) = &mut self.ota else { return };
        if j.http {
            if j.fetching {
                j.fetching = false;
                fx.list.push(Effect::CancelDownload);
            }
        } else if !j.seg_start.is_never() {
            advance(j, now);
            j.seg_start = SimTime::NEVER;
        } else {
            return;
        }
        j.until = SimTime::NEVER;
        if resume {
            fx.events.push(Event::OtaDownloadPaused);
        } else {
            j.done = 0;
            j.next_pct = 0;
            fx.events.push(Event::OtaDownloadRestarted);
        }
    }

    /// Called after every input: queued jobs start, downloads follow the connection, reports
    /// that waited for a connection go out.
    pub(super) fn ota_sync(&mut self, now: SimTime, ctx: &DeviceCtx, fx: &mut Effects) {
        if self.ota.is_none()
            && let Some(next) = self.ota_next.take()
        {
            // The job that waited behind the last one (already counted as received).
            let (doc, source) = *next;
            let mut j = new_job(doc, source, self.running_version());
            j.admitted = false;
            self.ota = Some(Box::new(j));
        }
        let Some(j) = &self.ota else { return };
        let online = self.state == DeviceState::Online;
        let resume = ctx.cohort.profile.ota.as_ref().is_none_or(|s| s.resume);
        match j.stage {
            OtaStage::Queued if online && !j.admitted => {
                // A rollout's job that waited: look at it now.
                let Some(j) = self.ota.take() else { return };
                let (doc, source, version_number) = (j.doc, j.source, j.version_number);
                self.ota_admit(now, &doc, source, version_number, ctx, fx);
                if self
                    .ota
                    .as_ref()
                    .is_some_and(|j| j.stage == OtaStage::Queued)
                {
                    self.ota_start(now, ctx, fx);
                }
            }
            OtaStage::Queued if online => self.ota_start(now, ctx, fx),
            OtaStage::Downloading => {
                let paused = if j.http {
                    !j.fetching
                } else {
                    j.seg_start.is_never()
                };
                if online && paused {
                    self.ota_resume(now, fx);
                } else if !online && !paused {
                    self.ota_pause(now, resume, fx);
                }
            }
            _ => {}
        }
        let Some(j) = &self.ota else { return };
        if online && j.outcome.is_some() && !j.awaiting_final_ack {
            self.ota_report_outcome(now, ctx, fx);
        } else if online && j.report_due {
            self.ota_report_progress(now, ctx, fx);
        }
    }

    /// The OTA deadline has come (`wake_at` includes it).
    pub(super) fn ota_wake(&mut self, now: SimTime, ctx: &DeviceCtx, fx: &mut Effects) {
        let Some(j) = &mut self.ota else { return };
        if j.until > now {
            return;
        }
        j.until = SimTime::NEVER;
        match j.stage {
            OtaStage::Downloading => self.ota_download_step(now, ctx, fx),
            OtaStage::Verifying => {
                let ok = !j.plan.corrupt && j.http_ok;
                if ok {
                    let v = &ctx.cohort.firmware.versions[usize::from(j.target)];
                    j.stage = OtaStage::Installing;
                    j.until = now + secs(v.ota.install_s.sample(&mut self.ota_rng));
                    fx.events.push(Event::OtaStage {
                        stage: OtaStage::Installing,
                    });
                    self.ota_report_progress(now, ctx, fx);
                } else {
                    self.ota_finish(now, Outcome::Failed(FailStage::Verify), ctx, fx);
                }
            }
            OtaStage::Installing => {
                if j.plan.install_failure {
                    // Power lost while writing: the link dies with it (no DISCONNECT: the
                    // broker sends the will) and the old slot boots again.
                    fx.events.push(Event::OtaPowerLoss);
                    fx.events.push(Event::Reboot);
                    if ctx.cohort.mqtt
                        && matches!(self.state, DeviceState::Online | DeviceState::Connecting)
                    {
                        fx.list.push(Effect::DropLink);
                    }
                    self.boot(now, ctx);
                    // Reported once the device is back (booting now: not online).
                    self.ota_finish(now, Outcome::Failed(FailStage::Install), ctx, fx);
                } else {
                    let other = 1 - self.fw_active;
                    self.fw_slots[usize::from(other)] = j.target;
                    j.stage = OtaStage::Rebooting;
                    j.boot_attempts = 0;
                    fx.events.push(Event::OtaStage {
                        stage: OtaStage::Rebooting,
                    });
                    self.ota_report_progress(now, ctx, fx);
                    // Going down for the update: the retained status says so (a device that
                    // never comes back stays offline, not online forever).
                    if self.state == DeviceState::Online {
                        self.publish_status(now, false, ctx, fx);
                    }
                    self.fw_active = other;
                    self.reboot_at = now;
                }
            }
            OtaStage::Trial => {
                if j.plan.trial_failure {
                    self.fw_active = 1 - self.fw_active;
                    self.reboot_at = now;
                    fx.events.push(Event::OtaRolledBack);
                    self.ota_finish(now, Outcome::Failed(FailStage::Trial), ctx, fx);
                } else {
                    self.ota_finish(now, Outcome::Succeeded, ctx, fx);
                }
            }
            OtaStage::Idle | OtaStage::Queued | OtaStage::Rebooting | OtaStage::Bricked => {}
        }
    }

    fn ota_download_step(&mut self, now: SimTime, ctx: &DeviceCtx, fx: &mut Effects) {
        let cycle = &ctx.cohort.firmware.cycle;
        let Some(j) = &mut self.ota else { return };
        if j.http {
            // A retry's pause is over.
            if self.state == DeviceState::Online {
                self.ota_resume(now, fx);
            }
            return;
        }
        advance(j, now);
        let frac = j.done as f64 / j.total as f64;
        if let Some(at) = j.plan.stall_at
            && frac >= at
        {
            j.plan.stall_at = None;
            let timeout = cycle.stall_timeout.as_secs_f64();
            fx.events.push(Event::OtaDownloadStalled);
            let stall = j.plan.stall_s;
            if stall > timeout {
                // The firmware gives up on the stalled transfer and tries again; the new
                // attempt may stall too (a fresh draw per attempt).
                j.attempts += 1;
                if j.attempts >= cycle.download_attempts {
                    self.ota_finish(now, Outcome::Failed(FailStage::Download), ctx, fx);
                    return;
                }
                let v = &ctx.cohort.firmware.versions[usize::from(j.target)];
                let f = &v.ota.faults;
                let (u, w): (f64, f64) = (self.ota_rng.random(), self.ota_rng.random());
                if u < f.download_stall {
                    j.plan.stall_at = Some(frac + (1.0 - frac) * w);
                    j.plan.stall_s = f
                        .stall_s
                        .as_ref()
                        .map(|d| d.sample(&mut self.ota_rng))
                        .unwrap_or(60.0)
                        .max(0.0);
                }
            }
            j.stalled_until = now + secs(stall.min(timeout));
            j.seg_start = j.stalled_until;
        }
        if let Some(at) = j.plan.reboot_at
            && frac >= at
        {
            j.plan.reboot_at = None;
            fx.events.push(Event::OtaRebootMidDownload);
            self.reboot_at = now;
        }
        self.ota_progress_reports(now, ctx, fx);
        let Some(j) = &mut self.ota else { return };
        if j.done >= j.total {
            self.ota_verify(now, ctx, fx);
        } else if !j.seg_start.is_never() {
            j.until = download_point(j);
        }
    }

    fn ota_verify(&mut self, now: SimTime, ctx: &DeviceCtx, fx: &mut Effects) {
        let Some(j) = &mut self.ota else { return };
        let v = &ctx.cohort.firmware.versions[usize::from(j.target)];
        j.stage = OtaStage::Verifying;
        j.seg_start = SimTime::NEVER;
        j.until = now + secs(v.ota.verify_s.sample(&mut self.ota_rng));
        fx.events.push(Event::OtaStage {
            stage: OtaStage::Verifying,
        });
        self.ota_report_progress(now, ctx, fx);
    }

    /// Reports download progress when it passed another step.
    fn ota_progress_reports(&mut self, now: SimTime, ctx: &DeviceCtx, fx: &mut Effects) {
        let step = ctx
            .cohort
            .profile
            .ota
            .as_ref()
            .map(|s| s.progress_step_percent)
            .unwrap_or(25)
            .max(1);
        let Some(j) = &mut self.ota else { return };
        let pct = percent(j.done, j.total);
        if pct < j.next_pct {
            return;
        }
        // The next step; 100 % is always reported, whatever the step.
        j.next_pct = if pct >= 100 {
            101
        } else {
            (pct / step + 1).saturating_mul(step).min(100)
        };
        self.ota_report_progress(now, ctx, fx);
    }

    /// A reboot completed (`retry_at` of the booting state). Returns true when the device
    /// keeps booting (a failed boot of the new image, or the rollback's boot) or never comes
    /// back, so it must not connect now.
    pub(super) fn ota_booted(&mut self, now: SimTime, ctx: &DeviceCtx, fx: &mut Effects) -> bool {
        let Some(j) = &mut self.ota else { return false };
        if j.stage != OtaStage::Rebooting {
            return false;
        }
        let max = ctx.cohort.firmware.cycle.max_boot_attempts;
        j.boot_attempts += 1;
        if j.plan.never_returns {
            j.stage = OtaStage::Bricked;
            fx.events.push(Event::OtaOutcome {
                outcome: Outcome::Bricked,
                rollout: j.source.rollout(),
            });
            self.state = DeviceState::Dead;
            self.wake_at = SimTime::NEVER;
            return true;
        }
        let v = &ctx.cohort.firmware.versions[usize::from(j.target)];
        let u: f64 = self.ota_rng.random();
        if j.plan.boot_loop || u < v.ota.faults.boot_failure {
            fx.events.push(Event::OtaBootFailed {
                attempt: j.boot_attempts,
            });
            if j.boot_attempts >= max {
                // The bootloader gives up on the new slot.
                self.fw_active = 1 - self.fw_active;
                fx.events.push(Event::OtaRolledBack);
                self.ota_finish(now, Outcome::Failed(FailStage::Boot), ctx, fx);
            }
            self.boot(now, ctx);
            return true;
        }
        j.stage = OtaStage::Trial;
        j.until = now + secs(v.ota.trial_s.sample(&mut self.ota_rng));
        fx.events.push(Event::OtaStage {
            stage: OtaStage::Trial,
        });
        j.report_due = true;
        false
    }

    /// A reboot is about to happen: an install under way is interrupted.
    pub(super) fn ota_before_reboot(&mut self, now: SimTime, ctx: &DeviceCtx, fx: &mut Effects) {
        if let Some(j) = &self.ota
            && j.stage == OtaStage::Installing
        {
            fx.events.push(Event::OtaPowerLoss);
            self.ota_finish(now, Outcome::Failed(FailStage::Install), ctx, fx);
        }
    }

    /// The job's outcome is decided: the truth is logged now, the report goes out when the
    /// device is connected.
    fn ota_finish(&mut self, now: SimTime, outcome: Outcome, ctx: &DeviceCtx, fx: &mut Effects) {
        let Some(j) = &mut self.ota else { return };
        j.stage = OtaStage::Idle;
        j.until = SimTime::NEVER;
        j.seg_start = SimTime::NEVER;
        j.outcome = Some(outcome);
        fx.events.push(Event::OtaOutcome {
            outcome,
            rollout: j.source.rollout(),
        });
        // A device about to reboot (power loss, rollback) reports once it is back.
        if self.state == DeviceState::Online && self.reboot_at > now {
            self.ota_report_outcome(now, ctx, fx);
        }
    }

    fn ota_report_progress(&mut self, now: SimTime, ctx: &DeviceCtx, fx: &mut Effects) {
        let Some(j) = &mut self.ota else { return };
        if self.state != DeviceState::Online {
            j.report_due = true;
            return;
        }
        j.report_due = false;
        let progress = (j.stage == OtaStage::Downloading).then(|| percent(j.done, j.total));
        let sent = Sent {
            status: "IN_PROGRESS",
            stage: j.stage.as_str(),
            progress,
            outcome: None,
        };
        self.ota_publish(now, sent, ctx, fx);
    }

    fn ota_report_outcome(&mut self, now: SimTime, ctx: &DeviceCtx, fx: &mut Effects) {
        let Some(j) = &mut self.ota else { return };
        let Some(outcome) = j.outcome else { return };
        if outcome == Outcome::Bricked {
            return;
        }
        let stage = match outcome {
            Outcome::Succeeded => "committed",
            Outcome::Failed(s) => s.report_stage(),
            Outcome::Rejected(_) | Outcome::Bricked => "rejected",
        };
        let sent = Sent {
            status: outcome.status(),
            stage,
            progress: None,
            outcome: Some(outcome),
        };
        let lost = j.plan.lost_report;
        let source = j.source;
        let before = fx.list.len();
        if lost {
            fx.events.push(Event::OtaReportLost);
        } else {
            self.ota_publish(now, sent, ctx, fx);
        }
        if let Some(r) = source.rollout() {
            let delay = if fx.list.len() > before {
                self.last_ota_delay(fx)
            } else {
                SimDuration::ZERO
            };
            fx.events.push(Event::OtaReported {
                rollout: r,
                outcome: Some(outcome),
                lost,
                delay,
            });
        }
        let aws = source == JobSource::Aws && !lost;
        match &mut self.ota {
            Some(j) if aws => j.awaiting_final_ack = true,
            _ => self.ota = None,
        }
    }

    /// The uplink delay of the report just published (zero without a publish).
    fn last_ota_delay(&self, fx: &Effects) -> SimDuration {
        match fx.list.last() {
            Some(Effect::Publish(p)) if p.topic == TopicKind::Ota => p.delay,
            _ => SimDuration::ZERO,
        }
    }

    /// Publishes a status report of the current job in its protocol's form.
    fn ota_publish(&mut self, now: SimTime, sent: Sent, ctx: &DeviceCtx, fx: &mut Effects) {
        let Some(j) = &mut self.ota else { return };
        j.last = Some(sent);
        let first = sent.status == "IN_PROGRESS" && sent.progress == Some(0);
        if let (Some(r), true) = (j.source.rollout(), first) {
            fx.events.push(Event::OtaReported {
                rollout: r,
                outcome: None,
                lost: false,
                delay: SimDuration::ZERO,
            });
        }
        fx.events.push(Event::OtaStatusSent);
        let Some(spec) = ctx.cohort.profile.ota.as_ref().filter(|_| ctx.cohort.mqtt) else {
            return;
        };
        let source = j.source;
        let job_id = j.doc.job_id.clone();
        let model = &ctx.cohort.firmware;
        let target = if j.doc.version.is_empty() {
            model.versions[usize::from(j.target)].version.clone()
        } else {
            j.doc.version.clone()
        };
        let expected = if spec.expected_version && source == JobSource::Aws {
            let v = j.version_number;
            // The backend increments the version with each accepted update.
            j.version_number = v.map(|v| v + 1);
            v
        } else {
            None
        };
        let error = j.error.clone();
        let running = &model.versions[usize::from(self.running_version())].version;
        let reason = sent.outcome.map(|o| match (o, &error) {
            (Outcome::Failed(FailStage::Download), Some(e)) => {
                format!("download failed: {e}")
            }
            _ => reason_text(o, model.cycle.max_boot_attempts),
        });
        let mut device_id = Vec::with_capacity(24);
        self.render_device_id(ctx, &mut device_id);
        let report = StatusReport {
            device_id: &device_id,
            job_id: &job_id,
            status: sent.status,
            stage: sent.stage,
            progress: sent.progress,
            version: running,
            target: &target,
            slot: slot_name(self.fw_active),
            reason: reason.as_deref().filter(|r| !r.is_empty()),
            ts_ms: ctx.epoch_ms + now.as_millis(),
        };
        let start = fx.payload.len();
        let topic_len;
        if source == JobSource::Aws {
            let mut thing = Vec::with_capacity(24);
            spec.thing_name
                .render_into(&ctx.vars(self.id, &device_id), &mut thing);
            push_aws_topic(
                &spec.aws_topic_prefix,
                &thing,
                Some(&job_id),
                "update",
                &mut fx.payload,
            );
            topic_len = fx.payload.len() - start;
            let token = self.next_client_token(&thing);
            encode_aws_update(&report, expected, &token, &mut fx.payload);
        } else {
            spec.status_topic
                .render_into(&ctx.vars(self.id, &device_id), &mut fx.payload);
            topic_len = fx.payload.len() - start;
            encode_generic_status(&report, &mut fx.payload);
        }
        self.push_publish_topic(now, start, topic_len, ctx, fx);
    }

    /// AWS: re-sends the last update with the versionNumber just learnt.
    fn aws_resend(&mut self, now: SimTime, ctx: &DeviceCtx, fx: &mut Effects) {
        let Some(j) = &self.ota else { return };
        let Some(last) = j.last else { return };
        fx.events.push(Event::OtaUpdateRetried);
        self.ota_publish(now, last, ctx, fx);
    }

    /// AWS: `start-next` (job None) or `{jobId}/get`.
    fn aws_request(
        &mut self,
        now: SimTime,
        job: Option<&str>,
        verb: &str,
        ctx: &DeviceCtx,
        fx: &mut Effects,
    ) {
        let Some(spec) = ctx.cohort.profile.ota.as_ref() else {
            return;
        };
        if !ctx.cohort.mqtt || self.state != DeviceState::Online {
            return;
        }
        let mut device_id = Vec::with_capacity(24);
        self.render_device_id(ctx, &mut device_id);
        let mut thing = Vec::with_capacity(24);
        spec.thing_name
            .render_into(&ctx.vars(self.id, &device_id), &mut thing);
        let start = fx.payload.len();
        push_aws_topic(&spec.aws_topic_prefix, &thing, job, verb, &mut fx.payload);
        let topic_len = fx.payload.len() - start;
        let token = self.next_client_token(&thing);
        encode_aws_request(&token, job.is_some(), &mut fx.payload);
        fx.events.push(Event::OtaStatusSent);
        self.push_publish_topic(now, start, topic_len, ctx, fx);
    }

    /// After a connect: an AWS device asks for its next job unless one is under way; any
    /// device re-sends a report that waited.
    pub(super) fn ota_connected(&mut self, now: SimTime, ctx: &DeviceCtx, fx: &mut Effects) {
        let Some(spec) = ctx.cohort.profile.ota.as_ref() else {
            return;
        };
        if spec.protocol == OtaProtocol::AwsJobs && ctx.cohort.mqtt {
            // Busy with any job (a rollout's too): the next AWS job waits until it is done.
            let busy = self.ota.is_some();
            if !busy {
                self.aws_request(now, None, "start-next", ctx, fx);
            } else if let Some(j) = &mut self.ota
                && j.awaiting_final_ack
            {
                // The terminal update may not have reached the backend: send it again.
                j.awaiting_final_ack = false;
            }
        }
    }

    fn next_client_token(&mut self, thing: &[u8]) -> Vec<u8> {
        self.ota_tokens = self.ota_tokens.wrapping_add(1);
        let mut t = Vec::with_capacity(thing.len() + 8);
        t.extend_from_slice(&thing[..thing.len().min(48)]);
        t.push(b'-');
        crate::payload::push_u64(&mut t, u64::from(self.ota_tokens));
        t
    }

    fn render_ota_topic(&self, ctx: &DeviceCtx, t: &crate::template::Template, out: &mut Vec<u8>) {
        let mut device_id = Vec::with_capacity(24);
        self.render_device_id(ctx, &mut device_id);
        t.render_into(&ctx.vars(self.id, &device_id), out);
    }
}

/// A job as it arrives: queued, checked, nothing drawn yet.
fn new_job(doc: Arc<JobDoc>, source: JobSource, target: u16) -> OtaJob {
    OtaJob {
        doc,
        source,
        target,
        stage: OtaStage::Queued,
        until: SimTime::NEVER,
        total: 1,
        done: 0,
        rate: 1.0,
        seg_start: SimTime::NEVER,
        stalled_until: SimTime::ZERO,
        next_pct: 0,
        attempts: 0,
        boot_attempts: 0,
        plan: FaultPlan::default(),
        http: false,
        fetching: false,
        http_ok: true,
        outcome: None,
        report_due: false,
        version_number: None,
        last: None,
        retries: 0,
        awaiting_final_ack: false,
        admitted: true,
        error: None,
    }
}

/// `done` of `total` in whole percent (0..=100), without overflow for any size.
fn percent(done: u64, total: u64) -> u8 {
    (u128::from(done.min(total)) * 100 / u128::from(total.max(1))) as u8
}

fn secs(s: f64) -> SimDuration {
    SimDuration::from_secs_f64(s.max(0.0))
}

/// Brings `done` up to `now` at the job's rate.
fn advance(j: &mut OtaJob, now: SimTime) {
    if j.seg_start.is_never() || now <= j.seg_start {
        return;
    }
    let got = (now.saturating_since(j.seg_start).as_secs_f64() * j.rate) as u64;
    j.done = j.done.saturating_add(got).min(j.total);
    j.seg_start = now;
}

/// When the download next needs the device: the next progress step, stall, reboot or the end.
fn download_point(j: &OtaJob) -> SimTime {
    let mut target = j.total;
    let at_frac = |f: f64| ((f * j.total as f64).ceil() as u64).clamp(1, j.total);
    if let Some(f) = j.plan.stall_at {
        target = target.min(at_frac(f).max(j.done));
    }
    if let Some(f) = j.plan.reboot_at {
        target = target.min(at_frac(f).max(j.done));
    }
    if j.next_pct <= 100 {
        let b = ((u128::from(j.next_pct) * u128::from(j.total)).div_ceil(100))
            .min(u128::from(j.total)) as u64;
        let b = b.max(j.done);
        target = target.min(b);
    }
    let left = target.saturating_sub(j.done) as f64;
    // Round up so `advance` reaches the milestone.
    j.seg_start + SimDuration::from_micros((left / j.rate * 1e6).ceil() as u64 + 1)
}
