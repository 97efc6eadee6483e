#!/usr/bin/env bash
# Gateway benchmark: one fleetsim process runs DEVICES devices behind gateways of 1,000
# (scenarios/gateway-1m.toml: device-profiles/edge-gateway-child.toml, one QoS 1 message a
# minute each) for MINUTES minutes of real time against its own mosquitto on loopback, and this
# prints what it cost: messages per second against the expected DEVICES / 60, publish->ack
# p99, the generator's lag, RSS per device, CPU per message.
#
#   scripts/gateway-bench.sh [DEVICES] [MINUTES]     # defaults: 1000000 devices, 5 minutes
#   scripts/gateway-bench.sh 100000 2                 # a quick try
#   GW_BENCH_BROKER=embedded scripts/gateway-bench.sh # the embedded rumqttd instead
#
# What it does: builds the release binary (skipped with FLEETSIM_BIN or GW_BENCH_NO_BUILD=1),
# starts a mosquitto on 127.0.0.1 on a free port (anonymous, no connection limit, no
# persistence), runs
#   fleetsim run scenarios/gateway-1m.toml --broker mqtt://127.0.0.1:PORT --devices N
#       --duration Mm --headless --api-listen 127.0.0.1:0 --report OUT/report.json
# under `timeout` (the duration plus 5 minutes at most), and every GW_BENCH_INTERVAL seconds
# samples fleetsim's and mosquitto's RSS and CPU time from /proc and fleetsim's counters from
# GET /api/v1/snapshot into OUT/samples.csv. "Steady" figures are taken between the first
# sample after every device is online and the last one before the duration runs out.
#
# Exit: 0 when the run met its scenario's SLOs, 1 when it did not, 2 bad usage, 3 when the run
# or its set-up failed.
#
# Environment:
#   FLEETSIM_BIN          the binary (default target/release/fleetsim, built first)
#   GW_BENCH_NO_BUILD=1   do not run cargo build
#   GW_BENCH_OUT          output directory (default target/gateway-bench/YYYYmmdd-HHMMSS)
#   GW_BENCH_INTERVAL     seconds between samples (default 10)
#   GW_BENCH_BROKER       mosquitto (default) or embedded (fleetsim's own rumqttd)
#   GW_BENCH_IDEAL_LINK=1 the children's simulated radio latency set to 0 (a cohort link
#                         override in a copy of the scenario), so publish->ack is the stack's own
#   GW_BENCH_SHARDS       --shards (default: fleetsim's, one per core)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
usage() {
    echo "usage: scripts/gateway-bench.sh [DEVICES=1000000] [MINUTES=5]   (env: FLEETSIM_BIN, GW_BENCH_OUT, GW_BENCH_INTERVAL, GW_BENCH_BROKER, GW_BENCH_IDEAL_LINK, GW_BENCH_SHARDS; see the header)" >&2
}
case ${1:-} in -h | --help) usage; exit 0 ;; esac
[[ $# -le 2 ]] || { usage; exit 2; }
DEVICES=${1:-1000000}
MINUTES=${2:-5}
INTERVAL=${GW_BENCH_INTERVAL:-10}
BROKER=${GW_BENCH_BROKER:-mosquitto}
SCENARIO=$ROOT/scenarios/gateway-1m.toml
OUT=${GW_BENCH_OUT:-$ROOT/target/gateway-bench/$(date +%Y%m%d-%H%M%S)}
PY=$(command -v python3 || true)

log() { echo "gateway-bench: $*" >&2; }
die() { echo "gateway-bench: $*" >&2; exit "${2:-3}"; }
bad_usage() { echo "gateway-bench: $*" >&2; usage; exit 2; }

[[ $DEVICES =~ ^[0-9]+$ && $DEVICES -ge 1000 ]] || bad_usage "DEVICES must be an integer >= 1000 (one gateway's worth)"
[[ $MINUTES =~ ^[0-9]+$ && $MINUTES -ge 1 && $MINUTES -le 120 ]] || bad_usage "MINUTES must be 1 to 120"
[[ $INTERVAL =~ ^[0-9]+$ && $INTERVAL -ge 1 ]] || bad_usage "GW_BENCH_INTERVAL must be a positive integer"
[[ $BROKER == mosquitto || $BROKER == embedded ]] || bad_usage "GW_BENCH_BROKER must be mosquitto or embedded"
[[ -n ${GW_BENCH_SHARDS:-} && ! ${GW_BENCH_SHARDS} =~ ^[0-9]+$ ]] && bad_usage "GW_BENCH_SHARDS must be a number"
[[ -n $PY ]] || die "python3 is needed to sample and to read the report"
DURATION_S=$((MINUTES * 60))

if [[ -n ${FLEETSIM_BIN:-} ]]; then
    BIN=$FLEETSIM_BIN
else
    BIN=$ROOT/target/release/fleetsim
    if [[ ${GW_BENCH_NO_BUILD:-0} != 1 ]]; then
        log "cargo build --release"
        (cd "$ROOT" && timeout 1800 cargo build --release --quiet) || die "build failed"
    fi
fi
[[ -x $BIN ]] || die "$BIN is not an executable (build it, or set FLEETSIM_BIN)"
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
if [[ $BROKER == mosquitto && ! -x $MOSQUITTO ]]; then
    die "mosquitto not found (Debian: apt-get install mosquitto), or use GW_BENCH_BROKER=embedded"
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

mkdir -p "$OUT" || die "cannot create $OUT"
OUT=$(cd "$OUT" && pwd)
TMP=$(mktemp -d "${TMPDIR:-/tmp}/fleetsim-gwbench.XXXXXX")
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

if [[ ${GW_BENCH_IDEAL_LINK:-0} == 1 ]]; then
    # The same scenario with the children's radio latency at 0 (paths stay relative to scenarios/).
    mkdir -p "$TMP/scenarios"
    sed 's#^count = \([0-9]*\)$#count = \1\nlink = { latency_ms = 0 }#' "$SCENARIO" \
        | sed 's#"\.\./device-profiles/#"'"$ROOT"'/device-profiles/#' >"$TMP/scenarios/gateway-1m.toml"
    SCENARIO=$TMP/scenarios/gateway-1m.toml
fi
"$BIN" validate "$SCENARIO" >/dev/null || die "$SCENARIO does not validate" 2

# --- the broker ----------------------------------------------------------------------------
BROKER_ARGS=()
if [[ $BROKER == mosquitto ]]; then
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
    "$MOSQUITTO" -c "$TMP/mosquitto.conf" >"$OUT/mosquitto.log" 2>&1 &
    MOSQ_PID=$!
    for _ in $(seq 1 100); do
        ss -Hltn "sport = :$PORT" 2>/dev/null | grep -q . && break
        kill -0 "$MOSQ_PID" 2>/dev/null || die "mosquitto exited: $(cat "$OUT/mosquitto.log")"
        sleep 0.1
    done
    ss -Hltn "sport = :$PORT" 2>/dev/null | grep -q . || die "mosquitto did not listen on port $PORT"
    BROKER_ARGS=(--broker "mqtt://127.0.0.1:$PORT")
    log "mosquitto $("$MOSQUITTO" -h 2>&1 | awk 'NR == 1 {print $3}') (pid $MOSQ_PID) on 127.0.0.1:$PORT"
else
    # No [broker] and no --broker: the scenario names one, so hand fleetsim a copy without it.
    mkdir -p "$TMP/scenarios"
    awk '/^\[broker\]/ {skip = 1; next} /^\[/ {skip = 0} !(skip && /^url/)' "$SCENARIO" \
        | sed 's#"\.\./device-profiles/#"'"$ROOT"'/device-profiles/#' >"$TMP/scenarios/embedded.toml"
    SCENARIO=$TMP/scenarios/embedded.toml
    "$BIN" validate "$SCENARIO" >/dev/null || die "$SCENARIO does not validate" 2
    log "the embedded rumqttd (in fleetsim's process: its RSS and CPU are counted with fleetsim's)"
fi

# --- the run -------------------------------------------------------------------------------
LIMIT=$((DURATION_S + 300))
CMD=("$BIN" run "$SCENARIO" "${BROKER_ARGS[@]}" --devices "$DEVICES" --duration "${MINUTES}m"
    --headless --progress-every 10s --api-listen 127.0.0.1:0 --run-dir "$TMP/run"
    --report "$OUT/report.json")
if [[ -n ${GW_BENCH_SHARDS:-} ]]; then CMD+=(--shards "$GW_BENCH_SHARDS"); fi
printf '%q ' "${CMD[@]}" >"$OUT/command.txt"
echo >>"$OUT/command.txt"
log "running $DEVICES devices for $MINUTES min (at most ${LIMIT}s): $(cat "$OUT/command.txt")"
date -u +%Y-%m-%dT%H:%M:%SZ >"$OUT/started.txt"
timeout -s INT -k 30 "$LIMIT" "${CMD[@]}" >"$OUT/fleetsim.out" 2>"$OUT/fleetsim.log" &
RUN_PID=$!
START=$(date +%s.%N)
FLEET_PID=""
for _ in $(seq 1 200); do
    FLEET_PID=$(pgrep -P "$RUN_PID" -x fleetsim || true)
    [[ -n $FLEET_PID ]] && break
    sleep 0.05
done
[[ -n $FLEET_PID ]] || die "fleetsim did not start: $(cat "$OUT/fleetsim.log")"

PYTHONPATH="$ROOT/scripts" "$PY" - "$FLEET_PID" "${MOSQ_PID:-0}" "$OUT/fleetsim.log" "$OUT/samples.csv" "$START" "$INTERVAL" <<'PYEOF' &
import sys, time
pid, mpid, logf, out, start, every = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]), int(sys.argv[6])
COLS = ["elapsed_s", "rss_kib", "hwm_kib", "cpu_s", "threads", "sim_time_s", "online", "published",
        "acked", "failed", "in_flight", "buffered", "sessions_lost", "connects_ok", "max_lag_ms",
        "mosq_rss_kib", "mosq_cpu_s"]

from procstat import ApiFromLog, cpu, status

snapshot = ApiFromLog(logf).snapshot

with open(out, "w") as f:
    f.write(",".join(COLS) + "\n")
    k = 0
    while True:
        st = status(pid)
        if st is None:
            break
        row = dict.fromkeys(COLS, "")
        row.update(elapsed_s=f"{time.time() - start:.1f}", rss_kib=st.get("VmRSS", ""),
                   hwm_kib=st.get("VmHWM", ""), cpu_s=cpu(pid), threads=st.get("Threads", ""))
        if mpid != "0":
            ms = status(mpid)
            if ms is not None:
                row.update(mosq_rss_kib=ms.get("VmRSS", ""), mosq_cpu_s=cpu(mpid))
        s = snapshot()
        if s is not None:
            t = s["totals"]
            row.update(sim_time_s=f'{s["sim_time_s"]:.1f}', online=s["states"]["online"],
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
if [[ -n $MOSQ_PID ]]; then
    kill "$MOSQ_PID" 2>/dev/null || true
    wait "$MOSQ_PID" 2>/dev/null || true
    MOSQ_PID=""
fi
echo "$RC" >"$OUT/fleetsim.rc"

# --- the figures ---------------------------------------------------------------------------
set +e
"$PY" - "$OUT" "$DEVICES" "$DURATION_S" "$RC" "$BROKER" <<'PYEOF'
import csv, json, os, sys
out, n, dur, rc, broker = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]

def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None

rows = [{k: num(v) for k, v in r.items()} for r in csv.DictReader(open(f"{out}/samples.csv"))]
try:
    rep = json.load(open(f"{out}/report.json"))
except (OSError, ValueError):
    print(f"gateway-bench: no report in {out} (fleetsim exit {rc}; see {out}/fleetsim.log)")
    sys.exit(3)
lines = []
say = lines.append
m, g, p, c = rep["messages"], rep["generator"], rep["process"], rep["connections"]
ack = rep["latency_us"]["publish_ack"]
expected = n / 60.0
say(f"## gateway-bench: {n:,} devices ({n // 1000:,} gateways of 1,000), {dur / 60:g} min, broker {broker}")
say("")
say(f"- command: `{open(f'{out}/command.txt').read().strip()}`")
say(f"- started {open(f'{out}/started.txt').read().strip()}, ended {open(f'{out}/ended.txt').read().strip()}; fleetsim exit {rc}")
steady = [r for r in rows if r["online"] is not None and r["online"] >= n
          and r["sim_time_s"] is not None and r["sim_time_s"] < dur - 2 and r["published"] is not None]
ok = True
say("")
say("| figure | measured | expected |")
say("|---|---:|---:|")
if len(steady) >= 2:
    a, b = steady[0], steady[-1]
    span = b["elapsed_s"] - a["elapsed_s"]
    rate = (b["published"] - a["published"]) / span
    acked_rate = (b["acked"] - a["acked"]) / span
    cpu_msg = (b["cpu_s"] - a["cpu_s"]) / max(1.0, b["published"] - a["published"]) * 1e6
    cores = (b["cpu_s"] - a["cpu_s"]) / span
    say(f"| messages/s, steady ({a['elapsed_s']:.0f}-{b['elapsed_s']:.0f} s) | {rate:,.0f} published, {acked_rate:,.0f} acked | {expected:,.0f} |")
    say(f"| fleetsim CPU per message, steady | {cpu_msg:.1f} µs ({cores:.2f} cores) | |")
    if a["mosq_cpu_s"] is not None and b["mosq_cpu_s"] is not None:
        mcpu = (b["mosq_cpu_s"] - a["mosq_cpu_s"]) / max(1.0, b["published"] - a["published"]) * 1e6
        say(f"| mosquitto CPU per message, steady | {mcpu:.1f} µs ({(b['mosq_cpu_s'] - a['mosq_cpu_s']) / span:.2f} cores) | |")
    rss_steady = max(r["rss_kib"] for r in steady) * 1024
    say(f"| fleetsim RSS, steady (max of samples) | {rss_steady / 2**20:,.1f} MiB = {rss_steady / n:,.0f} B per device | < 1,024 B |")
    if abs(rate - expected) / expected > 0.02:
        ok = False
else:
    say("| messages/s, steady | (the fleet never had every device online inside the duration) | |")
    ok = False
cpu_all = (p["cpu_user_s"] + p["cpu_system_s"]) / max(1, m["published"]) * 1e6
say(f"| fleetsim CPU per message, whole run | {cpu_all:.1f} µs ({p['cpu_user_s']:.1f} s user + {p['cpu_system_s']:.1f} s system) | |")
say(f"| fleetsim peak RSS (`process.rss_peak_bytes`) | {p['rss_peak_bytes'] / 2**20:,.1f} MiB = {p['rss_peak_bytes'] / n:,.0f} B per device | < 1,024 B |")
if p["rss_peak_bytes"] / n >= 1024:
    ok = False
mosq = [r["mosq_rss_kib"] for r in rows if r["mosq_rss_kib"] is not None]
if mosq:
    say(f"| mosquitto RSS, max | {max(mosq) / 1024:,.1f} MiB | |")
say(f"| publish->ack p50 / p99 / p99.9 / max | {ack['p50'] / 1e3:.2f} / {ack['p99'] / 1e3:.2f} / {ack['p999'] / 1e3:.2f} / {ack['max'] / 1e3:.1f} ms (n = {ack['count']:,}) | |")
say(f"| generator lag p99 / max | {g['lag_p99_ms']:.1f} / {g['max_lag_ms']:.1f} ms ({'saturated' if g['saturated'] else 'kept up'}) | < 1,000 ms |")
say(f"| messages | published {m['published']:,}, acked {m['acked']:,}, failed {m['failed']:,}, in flight {m['in_flight']:,}, buffered {m['buffered']:,}; unaccounted {m['unaccounted']}, devices unaccounted {m['devices_unaccounted']} | 0 unaccounted |")
say(f"| MQTT sessions (gateways) | {c['succeeded']:,} connects, {c['failed']:,} failed, {c['sessions_lost']:,} lost | {-(-n // 1000):,} |")
say(f"| devices online at the end | {rep['devices']['by_state']['online']:,} of {rep['devices']['total']:,}; all up {c['last_first_connect_s']:.0f} s into the run | |")
if m["unaccounted"] != 0 or m["devices_unaccounted"] != 0 or g["saturated"]:
    ok = False
say("")
say(f"verdict: {'OK' if ok and rc == 0 else 'NOT MET'} (samples: {out}/samples.csv, report: {out}/report.json)")
text = "\n".join(lines)
print(text)
open(f"{out}/summary.md", "w").write(text + "\n")
sys.exit(0 if ok and rc == 0 else 1)
PYEOF
VERDICT=$?
exit $((RC > 1 ? 3 : VERDICT))
