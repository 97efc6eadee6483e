//! The interval log of a process's results: written as the run goes (one interval per tag and
//! snapshot), summed back into the run's histograms when read.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine as _;
use fleet_core::slice::Slice;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::serialization::interval_log::{
    IntervalLogIterator, IntervalLogWriterBuilder, LogEntry, Tag,
};

use super::{ResultsError, ShardResults, io_error, results_paths, shown};
use crate::histogram::LatencyHistogram;
use crate::snapshot::{FleetSnapshot, SnapshotHistograms};

/// The log's tags, one per latency histogram of a snapshot: publish -> ack, connect ->
/// CONNACK, Modbus service time. Microseconds.
pub const LOG_TAGS: [&str; 3] = ["publish_ack", "connect", "modbus_service"];

/// The legend line of Java's `HistogramLogWriter` (its readers skip it).
const LEGEND: &str =
    "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"";

fn tagged(h: &SnapshotHistograms) -> [&LatencyHistogram; 3] {
    [&h.publish_ack_us, &h.connect_us, &h.modbus_service_us]
}

fn tagged_mut(h: &mut SnapshotHistograms) -> [&mut LatencyHistogram; 3] {
    [
        &mut h.publish_ack_us,
        &mut h.connect_us,
        &mut h.modbus_service_us,
    ]
}

/// Writes a process's results into a folder: the interval log as the run goes, the results
/// file at the end.
///
/// ```no_run
/// # use fleet_metrics::results::{ResultsWriter, ShardResults};
/// # fn demo(snapshots: &[fleet_metrics::FleetSnapshot], results: ShardResults) -> std::io::Result<()> {
/// let slice = fleet_core::slice::Slice::parse("2/4").map_err(std::io::Error::other)?;
/// let mut w = ResultsWriter::create("results".as_ref(), slice, 1_700_000_000_000)?;
/// for s in snapshots {
///     w.observe(s)?; // every snapshot, about once a second
/// }
/// if let Some(last) = snapshots.last() {
///     w.finish(results, last)?;
/// }
/// # Ok(()) }
/// ```
pub struct ResultsWriter {
    slice: Slice,
    json_path: PathBuf,
    log_path: PathBuf,
    log: BufWriter<File>,
    serializer: V2DeflateSerializer,
    /// The cumulative histograms of the previous snapshot, by tag.
    prev: [LatencyHistogram; 3],
    prev_s: f64,
}

impl ResultsWriter {
    /// Creates `dir` if needed and starts `dir/shard-K-of-N.hlog` (header: StartTime and
    /// BaseTime = `start_epoch_ms`, the run's start in its own clock; interval timestamps are
    /// seconds since then). A results file
    /// left there by an earlier run of this slice is removed: it must not be paired with the
    /// new log.
    pub fn create(dir: &Path, slice: Slice, start_epoch_ms: u64) -> io::Result<ResultsWriter> {
        let named = |path: &Path| {
            let path = path.display().to_string();
            move |e: io::Error| io::Error::new(e.kind(), format!("{path}: {e}"))
        };
        std::fs::create_dir_all(dir).map_err(named(dir))?;
        let (json_path, log_path) = results_paths(dir, slice);
        match std::fs::remove_file(&json_path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(named(&json_path)(e)),
            _ => {}
        }
        let mut log = BufWriter::new(File::create(&log_path).map_err(named(&log_path))?);
        let mut serializer = V2DeflateSerializer::new();
        let start = UNIX_EPOCH + Duration::from_millis(start_epoch_ms);
        IntervalLogWriterBuilder::new()
            .add_comment(&format!(
                "fleetsim {} shard {slice}: latency histograms in microseconds, tags {}",
                env!("CARGO_PKG_VERSION"),
                LOG_TAGS.join(", ")
            ))
            .add_comment("[Histogram log format version 1.3]")
            .with_start_time(start)
            .with_base_time(start)
            .begin_log_with(&mut log, &mut serializer)
            .map_err(named(&log_path))?;
        writeln!(log, "{LEGEND}").map_err(named(&log_path))?;
        log.flush().map_err(named(&log_path))?;
        Ok(ResultsWriter {
            slice,
            json_path,
            log_path,
            log,
            serializer,
            prev: Default::default(),
            prev_s: 0.0,
        })
    }

    /// The interval log being written.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Logs what `snap` (a cumulative snapshot of the run) added since the previous one: one
    /// interval per tag that gained values, from the previous snapshot's time to this one's
    /// (seconds since the start: of simulated time on the virtual clock, else of wall-clock
    /// time). Call it with every snapshot, in order.
    pub fn observe(&mut self, snap: &FleetSnapshot) -> io::Result<()> {
        let now_s = if snap.run.clock == "virtual" {
            snap.sim_time_s
        } else {
            snap.elapsed_s
        };
        let end_s = now_s.max(self.prev_s);
        let start = secs(self.prev_s);
        let length = secs(end_s - self.prev_s);
        for (i, now) in tagged(&snap.histograms).into_iter().enumerate() {
            if now.count() == self.prev[i].count() {
                continue;
            }
            let interval = now.since(&self.prev[i]).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{}: the snapshot's {} histogram lost values since the previous one (snapshots must be cumulative, in order)",
                        self.log_path.display(),
                        LOG_TAGS[i]
                    ),
                )
            })?;
            if !interval.is_empty() {
                IntervalLogWriterBuilder::new()
                    .begin_log_with(&mut self.log, &mut self.serializer)?
                    .write_histogram(&interval, start, length, Tag::new(LOG_TAGS[i]))
                    .map_err(|e| io::Error::other(format!("{}: {e}", self.log_path.display())))?;
            }
            self.prev[i] = now.clone();
        }
        self.prev_s = end_s;
        self.log.flush()
    }

    /// Logs the last intervals (what `last` added: the intervals of each tag then sum to
    /// `last`'s histograms exactly), makes the log durable, then writes `results` (with
    /// `last` as its final snapshot) to `shard-K-of-N.json`: under a temporary name, renamed
    /// when complete. Returns the results file's path.
    pub fn finish(
        mut self,
        mut results: ShardResults,
        last: &FleetSnapshot,
    ) -> io::Result<PathBuf> {
        self.observe(last)?;
        let named = |path: &Path| {
            let path = path.display().to_string();
            move |e: io::Error| io::Error::new(e.kind(), format!("{path}: {e}"))
        };
        self.log
            .into_inner()
            .map_err(|e| named(&self.log_path)(e.into_error()))?
            .sync_all()
            .map_err(named(&self.log_path))?;
        results.format_version = super::RESULTS_FORMAT_VERSION;
        results.slice = self.slice;
        results.clamped = LOG_TAGS
            .iter()
            .zip(tagged(&last.histograms))
            .map(|(tag, h)| (tag.to_string(), h.clamped()))
            .collect();
        results.last = last.clone();
        let mut text = serde_json::to_vec_pretty(&results).map_err(io::Error::other)?;
        text.push(b'\n');
        let tmp = self.json_path.with_extension("json.tmp");
        let mut file = File::create(&tmp).map_err(named(&tmp))?;
        file.write_all(&text).map_err(named(&tmp))?;
        file.sync_all().map_err(named(&tmp))?;
        std::fs::rename(&tmp, &self.json_path).map_err(named(&self.json_path))?;
        Ok(self.json_path)
    }
}

/// Seconds as a duration (negative or not a number: zero).
fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.max(0.0)).unwrap_or_default()
}

/// Sums the intervals of each tag of the interval log at `path`, in `LOG_TAGS` order.
pub(super) fn read_log(path: &Path) -> Result<[LatencyHistogram; 3], ResultsError> {
    let bad = |line: u64, message: String| ResultsError::Log {
        path: shown(path),
        line,
        message,
    };
    let mut reader = BufReader::new(File::open(path).map_err(io_error(path))?);
    let mut sums: [LatencyHistogram; 3] = Default::default();
    let mut deserializer = hdrhistogram::serialization::Deserializer::new();
    let mut text = Vec::new();
    let mut line = 0u64;
    loop {
        text.clear();
        if reader
            .read_until(b'\n', &mut text)
            .map_err(io_error(path))?
            == 0
        {
            return Ok(sums);
        }
        line += 1;
        if text.last() != Some(&b'\n') {
            return Err(bad(
                line,
                "truncated: the file ends in the middle of this line (was the process stopped while writing it?)".into(),
            ));
        }
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let interval = match IntervalLogIterator::new(&text).next() {
            // A comment or the legend.
            None => continue,
            Some(Ok(LogEntry::Interval(interval))) => interval,
            Some(Ok(LogEntry::StartTime(_) | LogEntry::BaseTime(_))) => continue,
            Some(Err(_)) => {
                return Err(bad(
                    line,
                    "not an interval log line (expected a #comment, the legend, or Tag=TAG,START,LENGTH,MAX,HISTOGRAM)".into(),
                ));
            }
        };
        let tag = interval.tag().map(|t| t.as_str()).unwrap_or("");
        let Some(i) = LOG_TAGS.iter().position(|t| *t == tag) else {
            return Err(bad(
                line,
                format!(
                    "interval tagged {tag:?}: fleetsim logs only the tags {}",
                    LOG_TAGS.join(", ")
                ),
            ));
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(interval.encoded_histogram().trim())
            .map_err(|e| bad(line, format!("the {tag} histogram is not base64: {e}")))?;
        let h: Histogram<u64> = deserializer
            .deserialize(&mut &bytes[..])
            .map_err(|e| bad(line, format!("the {tag} histogram cannot be decoded: {e}")))?;
        sums[i].add_hdr(&h);
    }
}

/// Puts the log's sums into the results' final snapshot, after checking they hold as many
/// values as the process counted.
pub(super) fn restore(
    results: &mut ShardResults,
    sums: [LatencyHistogram; 3],
    log: &Path,
) -> Result<(), ResultsError> {
    let last = &mut results.last;
    let counted = [
        last.publish_ack.count,
        last.connect.count,
        last.modbus_service.count,
    ];
    for ((tag, sum), counted) in LOG_TAGS.iter().zip(&sums).zip(counted) {
        if sum.count() != counted {
            return Err(ResultsError::Invalid {
                path: shown(log),
                message: format!(
                    "the {tag} intervals hold {} values, the results file counted {counted}: the log is incomplete",
                    sum.count()
                ),
            });
        }
    }
    for ((tag, target), sum) in LOG_TAGS
        .iter()
        .zip(tagged_mut(&mut last.histograms))
        .zip(sums)
    {
        *target = sum;
        target.set_clamped(results.clamped.get(*tag).copied().unwrap_or(0));
    }
    Ok(())
}
