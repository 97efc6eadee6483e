#!/usr/bin/env bash
# Rollout rehearsal benchmark: 1,000,000 NB-IoT meters for 7 simulated days on the virtual
# clock (scenarios/rollout-week.toml), two rollouts: the scenario's bad release (aborted) and
# the good release in five waves (fleetsim rollout). Prints elapsed time, steps, CPU and peak
# RSS of each, and the rollout's outcome. Target: each run to its report in under 2 minutes on
# the 2-core reference machine (docs/benchmarks.md).
#
#   bash scripts/rollout-bench.sh                 # both runs, ~2 minutes
#   BENCH_DEVICES=100000 bash scripts/rollout-bench.sh   # a quick check
#
# Environment: FLEETSIM (binary; default: cargo build --release), BENCH_DEVICES (default
# 1000000), BENCH_OUT (reports; default target/rollout-bench).
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICES="${BENCH_DEVICES:-1000000}"
OUT="${BENCH_OUT:-target/rollout-bench}"
mkdir -p "$OUT"
if [[ -z "${FLEETSIM:-}" ]]; then
    cargo build --release --quiet
    FLEETSIM=target/release/fleetsim
fi
command -v python3 >/dev/null || { echo "rollout-bench: needs python3 to read the reports" >&2; exit 2; }

run() { # NAME ARGS...: one timed run; its report in $OUT/NAME.json, time in $OUT/NAME.time
    local name="$1"; shift
    local start end
    start=$(date +%s.%N)
    # Exit code 1 is an SLO verdict (the bad release aborts on purpose), not a failure.
    /usr/bin/env time -f "%e %U %S %M" -o "$OUT/$name.time" "$FLEETSIM" "$@" --devices "$DEVICES" \
        --headless --report "$OUT/$name.json" >"$OUT/$name.out" 2>"$OUT/$name.err" || [[ $? -eq 1 ]]
    end=$(date +%s.%N)
    python3 - "$name" "$OUT/$name.json" "$OUT/$name.time" <<'PY'
import json, sys
name, report, timing = sys.argv[1:4]
r = json.load(open(report))
elapsed, user, system, rss_kb = open(timing).read().split()[-4:]
g = r["generator"]
ro = r["rollouts"][0]
c = ro
print(f"{name:5} elapsed {float(elapsed):6.1f} s  steps {g['steps']:,} ({g['steps_per_s']/1e6:.2f} M/s)  "
      f"cpu {float(user):.1f} s user + {float(system):.1f} s system  peak RSS {int(rss_kb)/1024:.0f} MiB")
a = ro.get("abort") or {}
halt = a.get("time_to_halt_s")
halt = "-" if halt is None else f"{halt:.1f} s"
print(f"      rollout {ro['name']}: {ro['state']}, {c['notified']:,} of {ro['targets']:,} notified, "
      f"{c['succeeded']:,} succeeded, {c['failed']:,} failed, {c['timed_out']:,} timed out; "
      f"time to halt {halt}; versions {r['ota']['versions']}")
PY
}

echo "rollout-bench: $DEVICES devices, 7 simulated days, $(nproc) cores"
run bad run scenarios/rollout-week.toml
run good rollout scenarios/rollout-week.toml --target 3.5.0 --name fw-3.5.0 --at 2h \
    --waves 1,5,20,50,100 --wave-soak 2h --timeout 6h --evaluate-every 5m \
    --abort-failure-percent 5 --abort-min-executed 200 --abort-on failed,timed_out
echo "reports: $OUT"
