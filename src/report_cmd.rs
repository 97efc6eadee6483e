//! `fleetsim report merge`: the results of the processes of one run, added up into one report
//! with the SLOs evaluated on the sum.

use fleet_metrics::results::{MissingSlice, merge_results, read_results};

use crate::Failure;
use crate::cli::{ReportArgs, ReportCommand, ReportMergeArgs};

/// Missing shards named in the error message (the report and the summary name them all).
const MISSING_NAMED: usize = 5;

pub fn run(args: ReportArgs) -> Result<bool, Failure> {
    match args.command {
        ReportCommand::Merge(a) => merge(&a),
    }
}

/// Exit code as for `run` (0 SLOs met, 1 an SLO failed); 2 for inputs that cannot be read or
/// merged; 3 when shards are missing, after writing and printing the incomplete report.
fn merge(args: &ReportMergeArgs) -> Result<bool, Failure> {
    if let Some(p) = &args.report {
        crate::run_cmd::ensure_writable(p, "--report")?;
    }
    let parts = read_results(&args.paths).map_err(|e| Failure::Usage(e.to_string()))?;
    let merged = merge_results(&parts, &[]).map_err(|e| Failure::Usage(e.to_string()))?;
    let report = &merged.report;
    if let Some(p) = &args.report {
        crate::run_cmd::write_report(p, report).map_err(Failure::Runtime)?;
    }
    print!("{}", crate::summary::render(report, args.report.as_deref()));
    if !merged.missing.is_empty() {
        return Err(Failure::Runtime(anyhow::anyhow!(
            "{} of {} shards missing, the merged report covers the others: {}",
            merged.missing.len(),
            report.parts.len(),
            describe(&merged.missing)
        )));
    }
    Ok(report.ok)
}

/// "shard 2/4 (meters 500..750) missing: why; ...", the first few.
fn describe(missing: &[MissingSlice]) -> String {
    let mut named: Vec<String> = missing
        .iter()
        .take(MISSING_NAMED)
        .map(|m| {
            let ranges: Vec<String> = m
                .ranges
                .iter()
                .filter(|(_, r)| !r.is_empty())
                .map(|(cohort, r)| format!("{cohort} {}..{}", r.start, r.end))
                .collect();
            format!(
                "shard {} ({}) missing: {}",
                m.slice,
                ranges.join(", "),
                m.reason
            )
        })
        .collect();
    if missing.len() > MISSING_NAMED {
        named.push(format!("and {} more", missing.len() - MISSING_NAMED));
    }
    named.join("; ")
}
