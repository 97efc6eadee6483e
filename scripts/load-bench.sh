#!/usr/bin/env bash
# Whole-fleet load benchmark: fleetsim (release build) against a local mosquitto on loopback.
#
#   scripts/load-bench.sh                      # 15,000 devices (about 5 minutes)
#   BENCH_DEVICES=2000 scripts/load-bench.sh   # a quick run
#
# Runs, each against a fresh mosquitto on 127.0.0.1 (an OS-chosen free port, no persistence,
# anonymous, no connection limit):
#   idle-small  1,000 idle devices (1 h report interval), ramp 2,000/s
#   idle        BENCH_DEVICES idle devices, ramp 2,000/s
#   connect     BENCH_DEVICES idle devices, ramp "all" (a connect storm)
#   qos0        BENCH_DEVICES devices at 1 msg/s, QoS 0, BENCH_SECONDS after the ramp
#   qos1        the same at QoS 1 (device-profiles/load-meter.toml)
# and prints a table: sessions held, client memory per idle session, connect rate, CPU per
# message (whole run and steady state), publish->ack latency, generator saturation.
#
# Environment:
#   BENCH_DEVICES   devices in the big runs (default 15000)
#   BENCH_SMALL     devices in the small idle run (default 1000)
#   BENCH_SECONDS   steady-state seconds of the load runs, after the ramp (default 60)
#   BENCH_RAMP      ramp rate of the "rate" runs, devices/s (default 2000)
#   BENCH_RUNS      which runs, space-separated (default "idle-small idle connect qos0 qos1")
#   BENCH_OUT       where reports, logs and the summary go (default target/load-bench)
#   BENCH_SOURCE_ADDRS  local addresses to spread sessions over, space-separated (default none:
#                   the OS picks; e.g. "127.0.0.2 127.0.0.3"), passed as --source-addr
#   BENCH_NO_BUILD  set to 1 to use target/release/fleetsim as it is
#
# Targets (2-core machine): 15,000 live sessions from one process at 1 msg/s each without the
# generator saturating; at most 2 KB of client memory per idle session. docs/benchmarks.md.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEVICES=${BENCH_DEVICES:-15000}
SMALL=${BENCH_SMALL:-1000}
LOAD_SECS=${BENCH_SECONDS:-60}
RAMP=${BENCH_RAMP:-2000}
RUNS=${BENCH_RUNS:-"idle-small idle connect qos0 qos1"}
OUT=${BENCH_OUT:-$ROOT/target/load-bench}
BIN=$ROOT/target/release/fleetsim
SOURCE_ARGS=()
for a in ${BENCH_SOURCE_ADDRS:-}; do SOURCE_ARGS+=(--source-addr "$a"); done
PY=$(command -v python3 || true)

die() { echo "load-bench: $*" >&2; exit 1; }
log() { echo "load-bench: $*" >&2; }

[[ $DEVICES =~ ^[0-9]+$ && $DEVICES -ge 1 ]] || die "BENCH_DEVICES must be a positive integer"
[[ $SMALL =~ ^[0-9]+$ && $SMALL -ge 1 ]] || die "BENCH_SMALL must be a positive integer"
[[ $LOAD_SECS =~ ^[0-9]+$ && $LOAD_SECS -ge 10 ]] || die "BENCH_SECONDS must be an integer >= 10"
[[ $RAMP =~ ^[0-9]+$ && $RAMP -ge 1 ]] || die "BENCH_RAMP must be a positive integer"
[[ -n $PY ]] || die "python3 is needed to read the reports"

# --- tools -------------------------------------------------------------------------------
if ! command -v mosquitto >/dev/null 2>&1 && [[ ! -x /usr/sbin/mosquitto ]]; then
    log "installing mosquitto (apt-get)"
    if [[ $(id -u) -eq 0 ]]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mosquitto >/dev/null
fi
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
[[ -x $MOSQUITTO ]] || die "mosquitto not found"

if [[ ${BENCH_NO_BUILD:-0} != 1 ]]; then
    log "cargo build --release"
    (cd "$ROOT" && cargo build --release --quiet) || die "build failed"
fi
[[ -x $BIN ]] || die "$BIN missing: run cargo build --release"

# As many open files as the hard limit allows (one socket per session on each side).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
if [[ $NOFILE != unlimited && $NOFILE -lt $((DEVICES + 300)) ]]; then
    die "open files limit $NOFILE is too low for $DEVICES sessions (needs about $((DEVICES + 300)))"
fi

# --- temp dir, cleanup -------------------------------------------------------------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/fleetsim-load-bench.XXXXXX")
mkdir -p "$OUT"
MOSQ_PID=""
RUN_PID=""
SAMPLER_PIDS=()
cleanup() {
    local p
    for p in "${SAMPLER_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    if [[ -n $RUN_PID ]]; then kill -INT "$RUN_PID" 2>/dev/null || true; fi
    if [[ -n $MOSQ_PID ]]; then
        kill "$MOSQ_PID" 2>/dev/null || true
        wait "$MOSQ_PID" 2>/dev/null || true
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- profiles ----------------------------------------------------------------------------
# Copies of load-meter.toml (same identity, sensors, payload, ideal link, commands) with another
# name, report interval and QoS; the firmware model is referenced by absolute path.
reporting_key() { # file key: the value of KEY in the file's [reporting] table
    awk -v key="$2" '/^\[/ { section = $0 } section == "[reporting]" && $1 == key && $2 == "=" { print $3; exit }' "$1"
}
make_profile() { # name interval qos
    local src=$ROOT/device-profiles/load-meter.toml dst=$TMP/$1.toml
    awk -v name="$1" -v interval="$2" -v qos="$3" -v dir="$ROOT/device-profiles" '
        /^\[/ { section = $0 }
        section == "" && /^name = / { print "name = \"" name "\""; next }
        section == "[reporting]" && /^interval = / { print "interval = \"" interval "\""; next }
        section == "[reporting]" && /^qos = / { print "qos = " qos; next }
        section == "[firmware]" && /^model = / {
            match($0, /"[^"]*"/); rel = substr($0, RSTART + 1, RLENGTH - 2)
            if (rel !~ /^\//) rel = dir "/" rel
            print "model = \"" rel "\""; next
        }
        { print }' "$src" >"$dst"
    if [[ $(reporting_key "$dst" interval) != "\"$2\"" || $(reporting_key "$dst" qos) != "$3" ]] \
        || ! grep -q "^name = \"$1\"" "$dst"; then
        die "could not derive profile $1 from $src"
    fi
    "$BIN" validate "$dst" >/dev/null || die "generated profile $dst is invalid"
}
make_profile bench-idle 1h 1
make_profile bench-q0 1s 0
Q1_PROFILE=$ROOT/device-profiles/load-meter.toml
if [[ $(reporting_key "$Q1_PROFILE" interval) != '"1s"' || $(reporting_key "$Q1_PROFILE" qos) != 1 ]]; then
    die "$Q1_PROFILE no longer reports once a second at QoS 1: the qos1 run needs that"
fi

# --- scenarios ---------------------------------------------------------------------------
ceil_div() { echo $((($1 + $2 - 1) / $2)); }

write_scenario() { # file name devices ramp_mode duration_s profile
    cat >"$1" <<EOF
name = "$2"
description = "load-bench: $3 devices, ramp $4, $5 s"
seed = 1
duration = "${5}s"
clock = "wall"
drain = "3s"

[mqtt]
version = "v311"
tcp_nodelay = true

[ramp]
mode = "$4"
per_second = $RAMP.0

[[cohorts]]
name = "meters"
profile = "$6"
count = $3
link = { mtbf = "never", loss = 0.0, latency_ms = 0 }
EOF
}

# --- mosquitto ---------------------------------------------------------------------------
free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start_broker() { # run name
    local port conf i
    port=$(free_port)
    conf=$TMP/mosquitto-$1.conf
    cat >"$conf" <<EOF
listener $port 127.0.0.1
allow_anonymous true
max_connections -1
persistence false
set_tcp_nodelay true
log_dest stderr
log_type error
log_type warning
EOF
    if [[ $(id -u) -eq 0 ]]; then echo "user root" >>"$conf"; fi
    "$MOSQUITTO" -c "$conf" >"$OUT/$1.mosquitto.log" 2>&1 &
    MOSQ_PID=$!
    for i in $(seq 1 100); do
        if ss -Hltn "sport = :$port" 2>/dev/null | grep -q .; then
            BROKER_PORT=$port
            return 0
        fi
        kill -0 "$MOSQ_PID" 2>/dev/null || die "mosquitto exited: $(cat "$OUT/$1.mosquitto.log")"
        sleep 0.1
    done
    die "mosquitto did not listen on port $port"
}

stop_broker() { # run name
    if [[ -n $MOSQ_PID ]]; then
        grep -E 'VmHWM' "/proc/$MOSQ_PID/status" 2>/dev/null | awk '{print $2 * 1024}' >"$OUT/$1.mosquitto.hwm" || true
        kill "$MOSQ_PID" 2>/dev/null || true
        wait "$MOSQ_PID" 2>/dev/null || true
        MOSQ_PID=""
    fi
}

# CPU ticks (utime stime) and RSS pages of a process, twice a second, with the wall time.
sampler() { # pid out
    local pid=$1 out=$2 s r
    : >"$out"
    while kill -0 "$pid" 2>/dev/null; do
        s=$(cut -d' ' -f14,15 "/proc/$pid/stat" 2>/dev/null) || break
        r=$(cut -d' ' -f2 "/proc/$pid/statm" 2>/dev/null) || break
        echo "$(date +%s.%N) $s $r" >>"$out"
        sleep 0.5
    done
}

# --- one run -----------------------------------------------------------------------------
run_one() { # run-name devices ramp-mode duration_s profile
    local name=$1 n=$2 mode=$3 dur=$4 profile=$5 scen=$TMP/$1.toml limit rc=0 child i
    write_scenario "$scen" "load-bench-$name" "$n" "$mode" "$dur" "$profile"
    start_broker "$name"
    limit=$((dur + 60))
    log "$name: $n devices, ramp $mode, ${dur}s, broker 127.0.0.1:$BROKER_PORT (timeout ${limit}s)"
    rm -f "$OUT/$name.json"
    date +%s.%N >"$OUT/$name.start"
    timeout -s INT -k 15 "$limit" "$BIN" run "$scen" --broker "mqtt://127.0.0.1:$BROKER_PORT" \
        "${SOURCE_ARGS[@]}" --report "$OUT/$name.json" --headless --progress-every 1s \
        >"$OUT/$name.out" 2>"$OUT/$name.log" &
    RUN_PID=$!
    child=""
    for i in $(seq 1 50); do
        child=$(pgrep -P "$RUN_PID" -x fleetsim || true)
        [[ -n $child ]] && break
        sleep 0.02
    done
    SAMPLER_PIDS=()
    if [[ -n $child ]]; then
        sampler "$child" "$OUT/$name.client.samples" &
        SAMPLER_PIDS+=($!)
    fi
    sampler "$MOSQ_PID" "$OUT/$name.broker.samples" &
    SAMPLER_PIDS+=($!)
    wait "$RUN_PID" || rc=$?
    RUN_PID=""
    for i in "${SAMPLER_PIDS[@]}"; do kill "$i" 2>/dev/null || true; wait "$i" 2>/dev/null || true; done
    SAMPLER_PIDS=()
    stop_broker "$name"
    # fleetsim exits 1 when an SLO fails (these scenarios have none), 124 on timeout.
    if [[ $rc -ne 0 ]]; then log "$name: fleetsim exited with $rc (see $OUT/$name.log)"; fi
    [[ -s $OUT/$name.json ]] || log "$name: no report written"
    echo "$n $mode $dur" >"$OUT/$name.params"
    echo "$rc" >"$OUT/$name.rc"
}

RAMP_S=$(ceil_div "$DEVICES" "$RAMP")
rm -f "$OUT"/*.json "$OUT"/*.params "$OUT"/*.rc
for run in $RUNS; do
    case $run in
        idle-small) run_one idle-small "$SMALL" rate $(($(ceil_div "$SMALL" "$RAMP") + 12)) "$TMP/bench-idle.toml" ;;
        idle) run_one idle "$DEVICES" rate $((RAMP_S + 12)) "$TMP/bench-idle.toml" ;;
        connect) run_one connect "$DEVICES" all 25 "$TMP/bench-idle.toml" ;;
        qos0) run_one qos0 "$DEVICES" rate $((RAMP_S + LOAD_SECS)) "$TMP/bench-q0.toml" ;;
        qos1) run_one qos1 "$DEVICES" rate $((RAMP_S + LOAD_SECS)) "$Q1_PROFILE" ;;
        *) die "unknown run $run (BENCH_RUNS)" ;;
    esac
done

# --- the table ---------------------------------------------------------------------------
REV=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)
echo "fleetsim $REV, $DEVICES devices, ${LOAD_SECS}s load runs, ramp ${RAMP}/s, mosquitto $("$MOSQUITTO" -h 2>&1 | awk 'NR == 1 {print $3}'), $(nproc) cores${BENCH_SOURCE_ADDRS:+, source addresses $BENCH_SOURCE_ADDRS}" \
    | tee "$OUT/header.txt"
"$PY" - "$OUT" "$DEVICES" "$SMALL" "$RAMP" <<'PYEOF'
import json, os, re, sys
from datetime import datetime

out, devices, small, ramp = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
TICK = os.sysconf("SC_CLK_TCK")

def load(name):
    try:
        with open(f"{out}/{name}.json") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

def progress(name):
    """(unix time, published) from the progress lines."""
    pts = []
    pat = re.compile(r"^(\S+Z)\s.*?published (\d+) ")
    try:
        with open(f"{out}/{name}.log") as f:
            for line in f:
                m = pat.search(line)
                if m:
                    t = datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
                    pts.append((t, int(m.group(2))))
    except OSError:
        pass
    return pts

def samples(name, who):
    pts = []
    try:
        with open(f"{out}/{name}.{who}.samples") as f:
            for line in f:
                p = line.split()
                if len(p) == 4:
                    pts.append((float(p[0]), (int(p[1]) + int(p[2])) / TICK, int(p[3]) * 4096))
    except OSError:
        pass
    return pts

def at(pts, t):
    """The sample closest to t."""
    return min(pts, key=lambda p: abs(p[0] - t)) if pts else None

def steady(name, r):
    """Messages/s and CPU us/msg (client, broker) between ramp end + 5 s and duration - 2 s."""
    try:
        start = float(open(f"{out}/{name}.start").read())
    except (OSError, ValueError):
        return None
    n = r["devices"]["total"]
    lo = start + n / ramp + 5.0
    hi = start + r["run"]["duration_s"] - 2.0
    prog = [p for p in progress(name) if lo <= p[0] <= hi]
    if len(prog) < 2 or hi - lo < 5:
        return None
    (t0, m0), (t1, m1) = prog[0], prog[-1]
    rate = (m1 - m0) / (t1 - t0)
    res = {"rate": rate}
    for who in ("client", "broker"):
        s = samples(name, who)
        a, b = at(s, t0), at(s, t1)
        if a and b and b[0] > a[0] and rate > 0:
            cpu = (b[1] - a[1]) / (b[0] - a[0])
            res[who + "_cpu_cores"] = cpu
            res[who + "_us_per_msg"] = cpu / rate * 1e6
    return res

def mib(b):
    return f"{b / 1048576:.1f} MiB"

R = {k: load(k) for k in ("idle-small", "idle", "connect", "qos0", "qos1")}
rows = []
def row(what, value, target="", ok=None):
    rows.append((what, value, target, "" if ok is None else ("met" if ok else "NOT met")))

def cpu_per_msg(r):
    p = r["process"]
    pub = r["messages"]["published"]
    return (p["cpu_user_s"] + p["cpu_system_s"]) * 1e6 / pub if pub else float("nan")

small_r, big_r = R["idle-small"], R["idle"]
if small_r and big_r:
    d = big_r["devices"]["total"] - small_r["devices"]["total"]
    per = (big_r["process"]["rss_peak_bytes"] - small_r["process"]["rss_peak_bytes"]) / d if d > 0 else float("nan")
    row("idle sessions held (peak online)", f'{big_r["devices"]["peak_online"]:,} of {big_r["devices"]["total"]:,}')
    row("client RSS peak, idle", f'{mib(small_r["process"]["rss_peak_bytes"])} ({small_r["devices"]["total"]:,}) / '
        f'{mib(big_r["process"]["rss_peak_bytes"])} ({big_r["devices"]["total"]:,})')
    row("client memory per idle session", f"{per:,.0f} B ({per / 1024:.2f} KiB)", "<= 2 KB (2,048 B)", per <= 2048)
if R["connect"]:
    c = R["connect"]
    row("connect storm (ramp all): first connects", f'{c["connections"]["first_connects"]:,} of {c["devices"]["total"]:,} '
        f'by {c["connections"]["last_first_connect_s"]:.2f} s')
    row("connect rate", f'{c["connections"]["first_connect_rate_per_s"]:,.0f} /s')
    lat = c["latency_us"]["connect"]
    row("connect latency p50 / p99 / max", f'{lat["p50"] / 1e3:,.1f} / {lat["p99"] / 1e3:,.1f} / {lat["max"] / 1e3:,.1f} ms')
    row("connect attempts / failed", f'{c["connections"]["attempts"]:,} / {c["connections"]["failed"]:,}')
for q in ("qos0", "qos1"):
    r = R[q]
    if not r:
        continue
    Q = q.upper().replace("QOS", "QoS ")
    m, g = r["messages"], r["generator"]
    s = steady(q, r)
    n = r["devices"]["total"]
    row(f"{Q}: sessions held (peak online)", f'{r["devices"]["peak_online"]:,} of {n:,}',
        f"{devices:,}", r["devices"]["peak_online"] >= devices)
    row(f"{Q}: messages published / acked / failed", f'{m["published"]:,} / {m["acked"]:,} / {m["failed"]:,}')
    if s:
        row(f"{Q}: steady messages/s", f'{s["rate"]:,.0f} /s', f"{n:,} /s", s["rate"] >= 0.98 * n)
    row(f"{Q}: client CPU per message, whole run", f"{cpu_per_msg(r):.1f} us",
        )
    if s and "client_us_per_msg" in s:
        row(f"{Q}: client CPU per message, steady", f'{s["client_us_per_msg"]:.1f} us ({s["client_cpu_cores"]:.2f} cores)')
    if s and "broker_us_per_msg" in s:
        row(f"{Q}: mosquitto CPU per message, steady", f'{s["broker_us_per_msg"]:.1f} us ({s["broker_cpu_cores"]:.2f} cores)')
    if q == "qos1":
        a = r["latency_us"]["publish_ack"]
        row(f"{Q}: publish->ack p50 / p99 / max", f'{a["p50"] / 1e3:.2f} / {a["p99"] / 1e3:.2f} / {a["max"] / 1e3:.1f} ms')
    row(f"{Q}: generator saturated / max lag / lag p99",
        f'{str(g["saturated"]).lower()} / {g["max_lag_ms"]:.1f} ms / {g["lag_p99_ms"]:.1f} ms',
        "not saturated", not g["saturated"])
    row(f"{Q}: client RSS peak", mib(r["process"]["rss_peak_bytes"]))

missing = [k for k, v in R.items() if v is None]
w = [max(len(r[i]) for r in rows + [("what", "measured", "target", "")]) for i in range(4)]
lines = [f'{"what":<{w[0]}}  {"measured":<{w[1]}}  {"target":<{w[2]}}  ',
         f'{"-" * w[0]}  {"-" * w[1]}  {"-" * w[2]}  {"-" * 7}']
lines += [f"{a:<{w[0]}}  {b:<{w[1]}}  {c:<{w[2]}}  {d}" for a, b, c, d in rows]
text = "\n".join(lines)
if missing:
    text += f"\n(no report from: {', '.join(missing)})"
print(text)
with open(f"{out}/summary.txt", "w") as f:
    f.write(text + "\n")
md = ["| what | measured | target | |", "|---|---|---|---|"] + [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
with open(f"{out}/summary.md", "w") as f:
    f.write("\n".join(md) + "\n")
PYEOF
log "reports, logs and samples in $OUT"
