#!/usr/bin/env bash
# Soak test: one fleetsim process holds DEVICES MQTT sessions at 1 QoS 1 message per second each
# for MINUTES minutes against its own mosquitto on loopback, and the process must stay flat.
#
#   scripts/soak.sh [DEVICES] [MINUTES]        # defaults: 15000 devices, 30 minutes
#   scripts/soak.sh 2000 3                     # a quick try
#   FLEETSIM_BIN=/tmp/soak-bin/fleetsim nohup scripts/soak.sh >soak.out 2>&1 &
#
# What it does: builds the release binary (cargo build --release; skipped with FLEETSIM_BIN or
# SOAK_NO_BUILD=1), starts a dedicated mosquitto on 127.0.0.1 on a free port (anonymous, no
# connection limit, no persistence, open files raised to the hard limit), runs
#   fleetsim run scenarios/soak.toml --broker mqtt://127.0.0.1:PORT --devices N --duration Mm
#       --headless --api-listen 127.0.0.1:0 --run-dir TMP/run --report OUT/report.json
# under `timeout`, and every SOAK_INTERVAL seconds samples from /proc/PID fleetsim's RSS
# (VmRSS, RssAnon), open files (entries of /proc/PID/fd) and threads, the same for mosquitto,
# and fleetsim's own counters from GET /api/v1/snapshot (sessions online, published, acked,
# failed, in flight, sessions lost). Samples go to OUT/samples.csv.
#
# Warm-up: it ends at the first sample taken at least W seconds into the run with every device
# online, where W = SOAK_WARMUP if set, else 5 minutes, or 20 % of the run when that is shorter
# (min(300 s, duration / 5)). "End" is the last sample taken while the fleet was still
# running: more than 1 s before the duration ran out (then the sessions close and the drain
# begins).
#
# Verdict (exit 0 = pass, 1 = a limit broken, 2 = bad usage, 3 = the run or its set-up failed):
#   - fleetsim exited 0 (its scenario's SLOs met) and wrote its report, not interrupted;
#   - RSS growth from warm-up end to end < SOAK_MAX_GROWTH_PCT (2) %;
#   - open files after warm-up: max - min <= SOAK_FD_SLACK (5);
#   - every device online in every sample after warm-up, and no session lost after it.
#
# Environment:
#   FLEETSIM_BIN        the fleetsim binary to run (default target/release/fleetsim, built first)
#   SOAK_NO_BUILD=1     do not run cargo build (with the default binary)
#   SOAK_OUT            output directory (default target/soak/YYYYmmdd-HHMMSS)
#   SOAK_INTERVAL       seconds between samples (default 10)
#   SOAK_WARMUP         warm-up in seconds (default: min(300, duration / 5))
#   SOAK_MAX_GROWTH_PCT RSS growth limit after warm-up, percent (default 2)
#   SOAK_FD_SLACK       open files may move by this much after warm-up (default 5)
#   SOAK_SCENARIO       scenario file (default scenarios/soak.toml)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
usage() {
    echo "usage: scripts/soak.sh [DEVICES=15000] [MINUTES=30]   (env: FLEETSIM_BIN, SOAK_OUT, SOAK_INTERVAL, SOAK_WARMUP, SOAK_MAX_GROWTH_PCT, SOAK_FD_SLACK; see the header)" >&2
}
case ${1:-} in -h | --help) usage; exit 0 ;; esac
[[ $# -le 2 ]] || { usage; exit 2; }
DEVICES=${1:-15000}
MINUTES=${2:-30}
INTERVAL=${SOAK_INTERVAL:-10}
MAX_GROWTH=${SOAK_MAX_GROWTH_PCT:-2}
FD_SLACK=${SOAK_FD_SLACK:-5}
SCENARIO=${SOAK_SCENARIO:-$ROOT/scenarios/soak.toml}
OUT=${SOAK_OUT:-$ROOT/target/soak/$(date +%Y%m%d-%H%M%S)}
PY=$(command -v python3 || true)

log() { echo "soak: $*" >&2; }
die() { echo "soak: $*" >&2; exit "${2:-3}"; }
bad_usage() { echo "soak: $*" >&2; usage; exit 2; }

[[ $DEVICES =~ ^[0-9]+$ && $DEVICES -ge 1 ]] || bad_usage "DEVICES must be a positive integer"
[[ $MINUTES =~ ^[0-9]+$ && $MINUTES -ge 1 ]] || bad_usage "MINUTES must be a positive integer"
[[ $INTERVAL =~ ^[0-9]+$ && $INTERVAL -ge 1 ]] || bad_usage "SOAK_INTERVAL must be a positive integer"
[[ -z ${SOAK_WARMUP:-} || ${SOAK_WARMUP} =~ ^[0-9]+$ ]] || bad_usage "SOAK_WARMUP must be seconds"
[[ $FD_SLACK =~ ^[0-9]+$ ]] || bad_usage "SOAK_FD_SLACK must be a non-negative integer"
[[ $MAX_GROWTH =~ ^[0-9]+([.][0-9]+)?$ ]] || bad_usage "SOAK_MAX_GROWTH_PCT must be a number"
[[ -f $SCENARIO ]] || bad_usage "scenario $SCENARIO not found"
[[ -n $PY ]] || die "python3 is needed to sample and to read the report"
DURATION_S=$((MINUTES * 60))
WARMUP_S=${SOAK_WARMUP:-$((DURATION_S / 5 < 300 ? DURATION_S / 5 : 300))}

# --- tools -------------------------------------------------------------------------------
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
[[ -x $MOSQUITTO ]] || die "mosquitto not found (Debian: apt-get install mosquitto)"

if [[ -n ${FLEETSIM_BIN:-} ]]; then
    BIN=$FLEETSIM_BIN
else
    BIN=$ROOT/target/release/fleetsim
    if [[ ${SOAK_NO_BUILD:-0} != 1 ]]; then
        log "cargo build --release"
        (cd "$ROOT" && timeout 1800 cargo build --release --quiet) || die "build failed"
    fi
fi
[[ -x $BIN ]] || die "$BIN is not an executable (build it, or set FLEETSIM_BIN)"

# One socket per session, plus a few hundred for the rest; mosquitto needs as many.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
if [[ $NOFILE != unlimited && $NOFILE -lt $((DEVICES + 300)) ]]; then
    die "open files limit $NOFILE is too low for $DEVICES sessions (needs about $((DEVICES + 300)))"
fi

# --- temp dir, output dir, cleanup ---------------------------------------------------------
mkdir -p "$OUT" || die "cannot create $OUT"
OUT=$(cd "$OUT" && pwd)
TMP=$(mktemp -d "${TMPDIR:-/tmp}/fleetsim-soak.XXXXXX")
MOSQ_PID=""
RUN_PID=""
SAMPLER_PID=""
cleanup() {
    if [[ -n $SAMPLER_PID ]]; then kill "$SAMPLER_PID" 2>/dev/null || true; fi
    if [[ -n $RUN_PID ]]; then
        # timeout passes SIGINT on to fleetsim, which closes its sessions and writes its report.
        kill -INT "$RUN_PID" 2>/dev/null || true
        wait "$RUN_PID" 2>/dev/null || true
    fi
    if [[ -n $MOSQ_PID ]]; then
        kill "$MOSQ_PID" 2>/dev/null || true
        wait "$MOSQ_PID" 2>/dev/null || true
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

log "output directory: $OUT"
"$BIN" validate "$SCENARIO" >/dev/null || die "$SCENARIO does not validate" 2

# --- mosquitto -----------------------------------------------------------------------------
PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$TMP/mosquitto.conf" <<EOF
listener $PORT 127.0.0.1
allow_anonymous true
max_connections -1
persistence false
set_tcp_nodelay true
log_dest stderr
log_type error
log_type warning
EOF
if [[ $(id -u) -eq 0 ]]; then echo "user root" >>"$TMP/mosquitto.conf"; fi
cp "$TMP/mosquitto.conf" "$OUT/mosquitto.conf"
"$MOSQUITTO" -c "$TMP/mosquitto.conf" >"$OUT/mosquitto.log" 2>&1 &
MOSQ_PID=$!
for _ in $(seq 1 100); do
    ss -Hltn "sport = :$PORT" 2>/dev/null | grep -q . && break
    kill -0 "$MOSQ_PID" 2>/dev/null || die "mosquitto exited: $(cat "$OUT/mosquitto.log")"
    sleep 0.1
done
ss -Hltn "sport = :$PORT" 2>/dev/null | grep -q . || die "mosquitto did not listen on port $PORT"
log "mosquitto $("$MOSQUITTO" -h 2>&1 | awk 'NR == 1 {print $3}') (pid $MOSQ_PID) on 127.0.0.1:$PORT, open files limit $(awk '/Max open files/ {print $4}' "/proc/$MOSQ_PID/limits")"

# --- the run -------------------------------------------------------------------------------
LIMIT=$((DURATION_S + 300))
CMD=("$BIN" run "$SCENARIO" --broker "mqtt://127.0.0.1:$PORT" --devices "$DEVICES"
    --duration "${MINUTES}m" --headless --progress-every 10s --api-listen 127.0.0.1:0
    --run-dir "$TMP/run" --report "$OUT/report.json")
printf '%q ' "${CMD[@]}" >"$OUT/command.txt"
echo >>"$OUT/command.txt"
log "running $DEVICES devices for $MINUTES min (at most ${LIMIT}s): $(cat "$OUT/command.txt")"
log "samples every ${INTERVAL}s to $OUT/samples.csv; warm-up ${WARMUP_S}s and every device online"
date -u +%Y-%m-%dT%H:%M:%SZ >"$OUT/started.txt"
timeout -s INT -k 30 "$LIMIT" "${CMD[@]}" >"$OUT/fleetsim.out" 2>"$OUT/fleetsim.log" &
RUN_PID=$!
START=$(date +%s.%N)
FLEET_PID=""
for _ in $(seq 1 100); do
    FLEET_PID=$(pgrep -P "$RUN_PID" -x fleetsim || true)
    [[ -n $FLEET_PID ]] && break
    sleep 0.05
done
[[ -n $FLEET_PID ]] || die "fleetsim did not start: $(cat "$OUT/fleetsim.log")"

# The sampler: one CSV line every INTERVAL seconds while fleetsim lives. Open files are counted
# before the API is asked, so the sampler's own connection is never in the count.
PYTHONPATH="$ROOT/scripts" "$PY" - "$FLEET_PID" "$MOSQ_PID" "$OUT/fleetsim.log" "$OUT/samples.csv" "$START" "$INTERVAL" <<'PYEOF' &
import sys, time
pid, mpid, logf, out, start, every = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]), int(sys.argv[6])
COLS = ["unix_s", "elapsed_s", "rss_kib", "rss_anon_kib", "open_files", "threads",
        "sim_time_s", "online", "connecting", "offline", "published", "acked", "failed",
        "in_flight", "buffered", "sessions_lost", "connects_ok", "max_lag_ms",
        "mosq_rss_kib", "mosq_open_files"]

from procstat import ApiFromLog, nfds, status

snapshot = ApiFromLog(logf).snapshot

with open(out, "w") as f:
    f.write(",".join(COLS) + "\n")
    k = 0
    while True:
        st = status(pid)
        if st is None:
            break
        row = dict.fromkeys(COLS, "")
        now = time.time()
        row.update(unix_s=f"{now:.1f}", elapsed_s=f"{now - start:.1f}", rss_kib=st.get("VmRSS", ""),
                   rss_anon_kib=st.get("RssAnon", ""), open_files=nfds(pid), threads=st.get("Threads", ""))
        ms = status(mpid)
        if ms is not None:
            row.update(mosq_rss_kib=ms.get("VmRSS", ""), mosq_open_files=nfds(mpid))
        s = snapshot()
        if s is not None:
            t, states = s["totals"], s["states"]
            row.update(sim_time_s=f'{s["sim_time_s"]:.1f}', online=states["online"],
                       connecting=states["connecting"], offline=states["offline"],
                       published=t["published"], acked=t["acked"],
                       failed=sum(v for key, v in t.items() if key.startswith("failed_")),
                       in_flight=s["in_flight"], buffered=s["buffered"],
                       sessions_lost=t.get("sessions_lost", ""), connects_ok=t.get("connects_ok", ""),
                       max_lag_ms=f'{s["max_lag_us"] / 1000:.1f}')
        f.write(",".join(str(row[c]) for c in COLS) + "\n")
        f.flush()
        k += 1
        time.sleep(max(0.0, start + k * every - time.time()))
PYEOF
SAMPLER_PID=$!

RC=0
wait "$RUN_PID" || RC=$?
RUN_PID=""
wait "$SAMPLER_PID" 2>/dev/null || true
SAMPLER_PID=""
date -u +%Y-%m-%dT%H:%M:%SZ >"$OUT/ended.txt"
MOSQ_END=$(grep -E '^(VmRSS|VmHWM)' "/proc/$MOSQ_PID/status" 2>/dev/null | tr -s ' \t' ' ' | tr '\n' ' ' || true)
kill "$MOSQ_PID" 2>/dev/null || true
wait "$MOSQ_PID" 2>/dev/null || true
MOSQ_PID=""
echo "$RC" >"$OUT/fleetsim.rc"
case $RC in
    0) ;;
    1) log "fleetsim exited 1: an SLO of the scenario was not met" ;;
    124) log "fleetsim did not finish within ${LIMIT}s (timeout)" ;;
    *) log "fleetsim exited $RC (see $OUT/fleetsim.log)" ;;
esac

# --- the verdict ---------------------------------------------------------------------------
set +e
"$PY" - "$OUT" "$DEVICES" "$DURATION_S" "$WARMUP_S" "$MAX_GROWTH" "$FD_SLACK" "$RC" "$MOSQ_END" <<'PYEOF'
import csv, json, sys
out, n, dur, warm, max_growth, slack, rc, mosq_end = sys.argv[1:9]
n, dur, warm, max_growth, slack, rc = int(n), float(dur), float(warm), float(max_growth), int(slack), int(rc)
lines, problems, fatal = [], [], []
def say(s=""):
    lines.append(s)

def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None

rows = []
with open(f"{out}/samples.csv") as f:
    for r in csv.DictReader(f):
        rows.append({k: num(v) for k, v in r.items()})
try:
    rep = json.load(open(f"{out}/report.json"))
except (OSError, ValueError):
    rep = None
    fatal.append("no report (report.json) was written")

def running(r):
    # Still inside the fleet's duration, a second of margin on both clocks: the wall clock since
    # the process started, and the snapshot's simulated time (the snapshot is up to 1 s old).
    return r["elapsed_s"] < dur - 1 and (r["sim_time_s"] is None or r["sim_time_s"] < dur - 2)

say(f"soak: {n:,} devices, {dur / 60:g} min, {len(rows)} samples; output {out}")
say(f"warm-up rule: ends at the first sample >= {warm:g} s into the run with all {n:,} devices online")
steady = [r for r in rows if running(r) and r["rss_kib"] is not None]
warm_i = next((i for i, r in enumerate(steady)
               if r["elapsed_s"] >= warm and (r["online"] is None or r["online"] >= n)), None)
if warm_i is None:
    problems.append("warm-up never ended (not every device online, or the run was too short)")
else:
    after = steady[warm_i:]
    w, e = after[0], after[-1]
    mib = lambda kib: kib / 1024
    growth = (e["rss_kib"] - w["rss_kib"]) / w["rss_kib"] * 100
    peak = max(after, key=lambda r: r["rss_kib"])
    peak_growth = (peak["rss_kib"] - w["rss_kib"]) / w["rss_kib"] * 100
    # least-squares slope of RSS after warm-up, MiB per hour
    xs, ys = [r["elapsed_s"] for r in after], [mib(r["rss_kib"]) for r in after]
    if len(xs) > 1:
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        den = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den * 3600 if den else 0.0
    else:
        slope = 0.0
    fds = [int(r["open_files"]) for r in after if r["open_files"] is not None]
    say(f"warm-up end: {w['elapsed_s']:.0f} s;  end (last sample before the duration ran out): {e['elapsed_s']:.0f} s")
    ok = growth < max_growth
    say(f"RSS: {mib(w['rss_kib']):.1f} MiB at warm-up end -> {mib(e['rss_kib']):.1f} MiB at the end: "
        f"{growth:+.2f} %  (limit < {max_growth:g} %)  {'ok' if ok else 'FAIL'}")
    if not ok:
        problems.append(f"RSS grew {growth:+.2f} % after warm-up (limit {max_growth:g} %)")
    say(f"     peak after warm-up {mib(peak['rss_kib']):.1f} MiB at {peak['elapsed_s']:.0f} s ({peak_growth:+.2f} %); "
        f"trend {slope:+.2f} MiB/h (least squares over {len(after)} samples)")
    if w["rss_anon_kib"] and e["rss_anon_kib"]:
        say(f"     anonymous RSS {mib(w['rss_anon_kib']):.1f} -> {mib(e['rss_anon_kib']):.1f} MiB "
            f"({(e['rss_anon_kib'] - w['rss_anon_kib']) / w['rss_anon_kib'] * 100:+.2f} %)")
    if fds:
        ok = max(fds) - min(fds) <= slack
        say(f"open files after warm-up: min {min(fds):,} max {max(fds):,} (moved {max(fds) - min(fds)}, limit {slack})  "
            f"{'ok' if ok else 'FAIL'}")
        if not ok:
            problems.append(f"open files moved by {max(fds) - min(fds)} after warm-up (limit {slack})")
    thr = [int(r["threads"]) for r in after if r["threads"] is not None]
    if thr:
        say(f"threads after warm-up: min {min(thr)} max {max(thr)}")
    onl = [int(r["online"]) for r in after if r["online"] is not None]
    if onl:
        ok = min(onl) >= n
        say(f"sessions online after warm-up: min {min(onl):,} max {max(onl):,} of {n:,}  {'ok' if ok else 'FAIL'}")
        if not ok:
            problems.append(f"sessions online fell to {min(onl):,} of {n:,} after warm-up")
    else:
        say("sessions online: no snapshot from the control API (not sampled)")
    lost = [r["sessions_lost"] for r in after if r["sessions_lost"] is not None]
    if lost and lost[-1] > lost[0]:
        problems.append(f"{lost[-1] - lost[0]:.0f} sessions lost after warm-up")
    mq = [r for r in rows if r["mosq_rss_kib"] is not None]
    if mq:
        say(f"mosquitto RSS: {mib(mq[0]['mosq_rss_kib']):.1f} MiB at the first sample, "
            f"{mib(w['mosq_rss_kib'] or 0):.1f} at warm-up end, {mib(e['mosq_rss_kib'] or 0):.1f} at the end; "
            f"open files {int(w['mosq_open_files'] or 0):,} -> {int(e['mosq_open_files'] or 0):,}")
    if mosq_end:
        say(f"mosquitto at exit: {mosq_end.strip()}")

    # a table: about six rows over the run, the warm-up end and the end
    step = max(10, round(dur / 6 / 10) * 10)
    pick, nxt = [], 0.0
    for r in steady:
        if r["elapsed_s"] >= nxt:
            pick.append(r)
            nxt = (int(r["elapsed_s"] // step) + 1) * step
    for r in (w, e):
        if r not in pick:
            pick.append(r)
    pick.sort(key=lambda r: r["elapsed_s"])
    hdr = "| elapsed | sessions online | RSS MiB | open files | threads | published | acked | failed | in flight | mosquitto RSS MiB |"
    table = [hdr, "|" + "---:|" * 10]
    fmt = lambda v, f="{:,.0f}": "" if v is None else f.format(v)
    for r in pick:
        tag = " (warm-up end)" if r is w else (" (end)" if r is e else "")
        m, s = divmod(int(round(r["elapsed_s"])), 60)
        table.append(f"| {m}:{s:02d}{tag} | {fmt(r['online'])} | {mib(r['rss_kib']):.1f} | {fmt(r['open_files'])} | "
                     f"{fmt(r['threads'])} | {fmt(r['published'])} | {fmt(r['acked'])} | {fmt(r['failed'])} | "
                     f"{fmt(r['in_flight'])} | {fmt(r['mosq_rss_kib'] and mib(r['mosq_rss_kib']), '{:.1f}')} |")
    say()
    lines.extend(table)
    say()

if rep is not None:
    m, c, d, g, p = rep["messages"], rep["connections"], rep["devices"], rep["generator"], rep["process"]
    a = rep["latency_us"]["publish_ack"]
    say(f"report: messages published {m['published']:,}  acked {m['acked']:,} ({m['delivered_ratio'] * 100:.3f} %)  "
        f"failed {m['failed']:,} {m['failed_by_reason']}  in flight {m['in_flight']:,}  buffered {m['buffered']:,}")
    say(f"        devices {d['total']:,}: online at the end {d['by_state']['online']:,}, peak {d['peak_online']:,};  "
        f"connections attempts {c['attempts']:,} ok {c['succeeded']:,} failed {c['failed']:,}, sessions lost {c['sessions_lost']:,}")
    say(f"        publish->ack p50 {a['p50'] / 1e3:.2f} ms  p99 {a['p99'] / 1e3:.2f} ms  max {a['max'] / 1e3:.1f} ms;  "
        f"generator saturated {str(g['saturated']).lower()}, max lag {g['max_lag_ms']:.1f} ms;  "
        f"cpu {p['cpu_user_s']:.1f} s user + {p['cpu_system_s']:.1f} s system;  peak RSS {p['rss_peak_bytes'] / 1048576:.1f} MiB")
    for s in rep.get("slo", []):
        say(f"        SLO {'ok ' if s['ok'] else 'NOT'} {s['name']}: {s['metric']} = {s['value']}")
    if rep["run"].get("interrupted"):
        fatal.append("the run was interrupted")
if rc == 1:
    problems.append("fleetsim exited 1: an SLO of the scenario was not met")
elif rc != 0:
    fatal.append(f"fleetsim exited {rc}" + (" (timeout)" if rc == 124 else ""))
verdict = "FAIL" if problems or fatal else "PASS"
say(f"verdict: {verdict}" + ("" if verdict == "PASS" else ": " + "; ".join(fatal + problems)))
text = "\n".join(lines)
print(text)
open(f"{out}/summary.md", "w").write(text + "\n")
sys.exit(3 if fatal else (1 if problems else 0))
PYEOF
VERDICT=$?
set -e
log "samples, report, logs and summary in $OUT"
exit "$VERDICT"
