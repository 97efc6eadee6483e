//! Queries: how a server that is not a shard's adapter (a Modbus listener, a serial port)
//! asks a device something. The server sends a closure to the shard that owns the device; the
//! shard runs it on its own thread with the device, its context, `now` and the shard's
//! metrics, then carries out the effects like any other step (a write that re-times the
//! device reschedules it). The closure answers through whatever channel it captured. The
//! engine stays protocol-free: it never looks inside a query.

use std::sync::{Arc, Mutex};

use fleet_core::{Device, DeviceCtx, DeviceId, Effects, SimTime};
use fleet_metrics::ShardMetrics;
use tokio::sync::mpsc;

use crate::plan::RunPlan;

/// Queries waiting per shard; a server that finds its shard's inbox full waits (back-pressure
/// to the master) rather than queueing without bound.
pub const QUERY_INBOX_CAPACITY: usize = 8_192;

/// What a query's closure gets.
pub struct QueryCx<'a, 'b> {
    pub device: &'a mut Device,
    pub ctx: &'a DeviceCtx<'b>,
    pub now: SimTime,
    pub fx: &'a mut Effects,
    pub metrics: &'a mut ShardMetrics,
}

pub type DeviceQuery = Box<dyn FnOnce(QueryCx<'_, '_>) + Send>;
pub type MetricsQuery = Box<dyn FnOnce(&mut ShardMetrics) + Send>;

pub enum Query {
    /// Run on the device with this index in its shard.
    Device { local: u32, run: DeviceQuery },
    /// Count something that belongs to no device (a frame that made no request).
    Metrics(MetricsQuery),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("device {0} is not simulated by this process")]
    NotHere(u32),
    #[error("the run is over")]
    Closed,
}

/// Sends queries to the shard owning a device. Cheap to clone; one per server task.
#[derive(Clone)]
pub struct QueryRouter {
    senders: Arc<[mpsc::Sender<Query>]>,
    owned: crate::plan::Owned,
    shards: u32,
}

/// The receiving ends, one per shard, taken by each shard's thread when it starts.
pub struct QueryInboxes(Mutex<Vec<Option<mpsc::Receiver<Query>>>>);

impl QueryInboxes {
    pub(crate) fn take(&self, shard: u16) -> Option<mpsc::Receiver<Query>> {
        self.0
            .lock()
            .ok()
            .and_then(|mut v| v.get_mut(usize::from(shard)).and_then(Option::take))
    }
}

impl std::fmt::Debug for QueryInboxes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QueryInboxes")
    }
}

impl QueryRouter {
    pub fn new(plan: &RunPlan) -> (QueryRouter, Arc<QueryInboxes>) {
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..plan.shards)
            .map(|_| {
                let (tx, rx) = mpsc::channel(QUERY_INBOX_CAPACITY);
                (tx, Some(rx))
            })
            .unzip();
        (
            QueryRouter {
                senders: senders.into(),
                owned: plan.owned.clone(),
                shards: u32::from(plan.shards.max(1)),
            },
            Arc::new(QueryInboxes(Mutex::new(receivers))),
        )
    }

    /// The shard and index of device `id` (the plan's interleaving).
    fn locate(&self, id: DeviceId) -> Result<(usize, u32), QueryError> {
        let k = self.owned.ordinal(id.0).ok_or(QueryError::NotHere(id.0))?;
        Ok(((k % self.shards) as usize, k / self.shards))
    }

    /// Runs `run` on device `id` in its shard; waits while the shard's inbox is full.
    pub async fn device(&self, id: DeviceId, run: DeviceQuery) -> Result<(), QueryError> {
        let (shard, local) = self.locate(id)?;
        self.senders[shard]
            .send(Query::Device { local, run })
            .await
            .map_err(|_| QueryError::Closed)
    }

    /// Runs `run` on the metrics of the shard owning device `id` (any shard will do for counts
    /// that belong to no device; pass the id the frame was meant for, or the first).
    pub async fn metrics(&self, id: DeviceId, run: MetricsQuery) -> Result<(), QueryError> {
        let shard = self.locate(id).map(|(s, _)| s).unwrap_or(0);
        self.senders[shard]
            .send(Query::Metrics(run))
            .await
            .map_err(|_| QueryError::Closed)
    }

    /// True once every shard has finished (queries can no longer be answered).
    pub fn closed(&self) -> bool {
        self.senders.iter().all(|s| s.is_closed())
    }
}

impl std::fmt::Debug for QueryRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryRouter")
            .field("shards", &self.shards)
            .field("devices", &self.owned.ranges())
            .finish()
    }
}
