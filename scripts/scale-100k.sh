#!/usr/bin/env bash
# Scale test: DEVICES live MQTT sessions on this machine, as PROCESSES fleetsim processes against
# PROCESSES mosquitto instances on loopback (process k talks to mosquitto k), each process and
# each mosquitto under the open-files limit (20,000 on the reference machine), for MINUTES
# minutes; prints the connect rate, memory per session, CPU per message and the latencies.
#
#   scripts/scale-100k.sh [DEVICES] [MINUTES] [PROCESSES]   # defaults: 100000, 5, 6
#   scripts/scale-100k.sh 6000 2 3                           # a quick try
#   SCALE_OUT=/tmp/scale nohup scripts/scale-100k.sh 100000 6 >scale.out 2>&1 &
#
# What it does: builds the release binary (cargo build --release; skipped with FLEETSIM_BIN or
# SCALE_NO_BUILD=1), waits (up to SCALE_QUIET_WAIT seconds) until no other benchmark runs and
# (up to SCALE_TW_WAIT seconds) until the TIME_WAIT sockets of an earlier run are gone, starts
# PROCESSES mosquittos on free 127.0.0.1 ports (anonymous, no connection limit, no persistence,
# open files raised to the hard limit), runs
#   fleetsim run scenarios/scale-100k.toml --processes P --broker mqtt://127.0.0.1:PORT1 ...
#       --devices N --duration Mm --headless --api-listen 127.0.0.1:0 --run-dir OUT/run
#       --report OUT/report.json
# under `timeout`, and every SCALE_INTERVAL seconds samples from /proc the RSS, peak RSS, open
# files, threads and CPU time (utime + stime) of the fleetsim parent, of every fleetsim child and
# of every mosquitto (OUT/procs.csv, one line per process and sample), and the fleet's counters
# from the parent's GET /api/v1/snapshot (sessions online, published, acked, ...) with the
# machine's CPU use (interrupts and softirqs apart: on loopback they deliver our packets), the
# CPU used by every other process on the machine, hypervisor steal, available memory, kernel
# slab, TCP sockets and listen-queue overflows (OUT/fleet.csv). The children's logs are in
# OUT/run/shard-K-of-N/fleetsim.log.
#
# Figures (OUT/summary.md): time to connect every session and the connect rate (the report's
# first-connect figures: the ramp's rate unless the machine is slower), peak sessions online,
# memory per session (sum of the children's peak RSS / sessions; mosquitto's the same way),
# the most open files of any process, CPU per message (fleetsim's and mosquitto's, for the
# whole run and for the steady state: from one report interval after the whole fleet is
# online to the end), messages/s, publish->ack p50/p99, generator lag, fleetsim's exit code.
#
# Verdict (exit 0 = pass, 1 = a limit broken, 2 = bad usage, 3 = the set-up or the run failed):
#   - fleetsim exited 0 (the scenario's SLOs met on the merged report), the report complete;
#   - every session online at once (the parent's snapshot) and none lost afterwards;
#   - every process (fleetsim child, mosquitto) below the open-files limit in every sample.
#
# Environment:
#   FLEETSIM_BIN      the fleetsim binary to run (default target/release/fleetsim, built first)
#   SCALE_NO_BUILD=1  do not run cargo build (with the default binary)
#   SCALE_OUT         output directory (default target/scale/YYYYmmdd-HHMMSS)
#   SCALE_INTERVAL    seconds between samples (default 10)
#   SCALE_SCENARIO    scenario file (default scenarios/scale-100k.toml)
#   SCALE_QUIET_WAIT  seconds to wait for other benchmarks (gateway-bench, gateway-1m, soak.sh,
#                     load-bench.sh) to end before starting, polling every 30 s (default 1200;
#                     0: do not wait). The summary says whether any ran meanwhile.
#   SCALE_TW_WAIT     seconds to wait, before starting, for the TIME_WAIT sockets of an earlier
#                     run to expire (more than 1,000 of them; default 120, 0: do not wait)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
usage() {
    echo "usage: scripts/scale-100k.sh [DEVICES=100000] [MINUTES=5] [PROCESSES=6]   (env: FLEETSIM_BIN, SCALE_NO_BUILD, SCALE_OUT, SCALE_INTERVAL, SCALE_SCENARIO, SCALE_QUIET_WAIT, SCALE_TW_WAIT; see the header)" >&2
}
case ${1:-} in -h | --help) usage; exit 0 ;; esac
[[ $# -le 3 ]] || { usage; exit 2; }
DEVICES=${1:-100000}
MINUTES=${2:-5}
PROCESSES=${3:-6}
INTERVAL=${SCALE_INTERVAL:-10}
QUIET_WAIT=${SCALE_QUIET_WAIT:-1200}
SCENARIO=${SCALE_SCENARIO:-$ROOT/scenarios/scale-100k.toml}
OUT=${SCALE_OUT:-$ROOT/target/scale/$(date +%Y%m%d-%H%M%S)}
PY=$(command -v python3 || true)
OTHERS='gateway-bench|gateway-1m|soak\.sh|load-bench\.sh'

log() { echo "scale: $*" >&2; }
die() { echo "scale: $*" >&2; exit "${2:-3}"; }
bad_usage() { echo "scale: $*" >&2; usage; exit 2; }

[[ $DEVICES =~ ^[0-9]+$ && $DEVICES -ge 1 ]] || bad_usage "DEVICES must be a positive integer"
[[ $MINUTES =~ ^[0-9]+$ && $MINUTES -ge 1 ]] || bad_usage "MINUTES must be a positive integer"
[[ $PROCESSES =~ ^[0-9]+$ && $PROCESSES -ge 1 && $PROCESSES -le 64 ]] || bad_usage "PROCESSES must be 1 to 64"
[[ $PROCESSES -le $DEVICES ]] || bad_usage "PROCESSES must not exceed DEVICES"
[[ $INTERVAL =~ ^[0-9]+$ && $INTERVAL -ge 1 ]] || bad_usage "SCALE_INTERVAL must be a positive integer"
[[ $QUIET_WAIT =~ ^[0-9]+$ ]] || bad_usage "SCALE_QUIET_WAIT must be seconds"
[[ -f $SCENARIO ]] || bad_usage "scenario $SCENARIO not found"
[[ -n $PY ]] || die "python3 is needed to sample and to read the report"
DURATION_S=$((MINUTES * 60))
PER_PROCESS=$(((DEVICES + PROCESSES - 1) / PROCESSES))

# --- tools -------------------------------------------------------------------------------
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
[[ -x $MOSQUITTO ]] || die "mosquitto not found (Debian: apt-get install mosquitto)"

# One socket per session in each fleetsim process and in each mosquitto, plus a few hundred
# for the rest (listeners, the control API, logs, the runtime).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
if [[ $NOFILE != unlimited && $PER_PROCESS -gt $((NOFILE - 300)) ]]; then
    bad_usage "$PER_PROCESS sessions per process and per mosquitto do not fit in $NOFILE open files (at most $((NOFILE - 300))): use more PROCESSES (at least $(((DEVICES + NOFILE - 301) / (NOFILE - 300))))"
fi
[[ $NOFILE == unlimited ]] && NOFILE=0

if [[ -n ${FLEETSIM_BIN:-} ]]; then
    BIN=$FLEETSIM_BIN
else
    BIN=$ROOT/target/release/fleetsim
    if [[ ${SCALE_NO_BUILD:-0} != 1 ]]; then
        log "cargo build --release"
        (cd "$ROOT" && timeout 1800 cargo build --release --quiet) || die "build failed"
    fi
fi
[[ -x $BIN ]] || die "$BIN is not an executable (build it, or set FLEETSIM_BIN)"
"$BIN" validate "$SCENARIO" >/dev/null || die "$SCENARIO does not validate" 2

# --- temp dir, output dir, cleanup ---------------------------------------------------------
mkdir -p "$OUT" || die "cannot create $OUT"
OUT=$(cd "$OUT" && pwd)
TMP=$(mktemp -d "${TMPDIR:-/tmp}/fleetsim-scale.XXXXXX")
MOSQ_PIDS=()
RUN_PID=""
SAMPLER_PID=""
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    if [[ -n $SAMPLER_PID ]]; then kill "$SAMPLER_PID" 2>/dev/null || true; fi
    if [[ -n $RUN_PID ]]; then
        # timeout passes SIGINT on to fleetsim, which stops its children (each writes its
        # results) and merges the report.
        kill -INT "$RUN_PID" 2>/dev/null || true
        wait "$RUN_PID" 2>/dev/null || true
    fi
    local p
    for p in "${MOSQ_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${MOSQ_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

log "output directory: $OUT"

# --- wait until no other benchmark runs ----------------------------------------------------
others() { pgrep -af "$OTHERS" | grep -v -e "pgrep" -e "scale-100k" || true; }
WAITED=0
if [[ $QUIET_WAIT -gt 0 ]]; then
    while [[ -n $(others) && $WAITED -lt $QUIET_WAIT ]]; do
        [[ $WAITED -eq 0 ]] && log "another benchmark runs, waiting (up to ${QUIET_WAIT}s): $(others | cut -c1-120 | tr '\n' ';')"
        sleep 30
        WAITED=$((WAITED + 30))
    done
fi
# Sessions an earlier run closed stay in TIME_WAIT for 60 s on its 127.0.0.x source addresses;
# fleetsim binds each session's source address before connecting (bind(ip, 0)), and such a bind
# searches the address's ports past every TIME_WAIT one: a run started right after another
# connected 40 times slower per session, starved the brokers and lost connects (docs/benchmarks.md,
# 100,000 live MQTT sessions). So wait until they are gone (at most SCALE_TW_WAIT seconds, default 120).
TW_WAIT=${SCALE_TW_WAIT:-120}
[[ $TW_WAIT =~ ^[0-9]+$ ]] || bad_usage "SCALE_TW_WAIT must be seconds"
time_wait() { ss -Htan state time-wait 2>/dev/null | wc -l; }
TW_START=$(time_wait)
TW_WAITED=0
while [[ $(time_wait) -gt 1000 && $TW_WAITED -lt $TW_WAIT ]]; do
    [[ $TW_WAITED -eq 0 ]] && log "$(time_wait) TCP sockets in TIME_WAIT (an earlier run): waiting for them to expire (up to ${TW_WAIT}s)"
    sleep 5
    TW_WAITED=$((TW_WAITED + 5))
done
{
    echo "waited ${WAITED}s for other benchmarks to end"
    echo "TCP sockets in TIME_WAIT: $TW_START, waited ${TW_WAITED}s; $(time_wait) at the start"
    if [[ -n $(others) ]]; then echo "still running at the start: $(others | cut -c1-200 | tr '\n' ';')"; else echo "none running at the start"; fi
} >"$OUT/others.txt"
log "$(tr '\n' ';' <"$OUT/others.txt")"

# --- mosquittos ----------------------------------------------------------------------------
mapfile -t PORTS < <("$PY" - "$PROCESSES" <<'PYEOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
for s in socks:
    print(s.getsockname()[1])
PYEOF
)
[[ ${#PORTS[@]} -eq $PROCESSES ]] || die "could not find $PROCESSES free ports"
BROKER_ARGS=()
: >"$OUT/mosquittos.txt"
for k in $(seq 0 $((PROCESSES - 1))); do
    port=${PORTS[$k]}
    conf=$TMP/mosquitto-$k.conf
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
    cp "$conf" "$OUT/mosquitto-$k.conf"
    "$MOSQUITTO" -c "$conf" >"$OUT/mosquitto-$k.log" 2>&1 &
    MOSQ_PIDS+=("$!")
    BROKER_ARGS+=(--broker "mqtt://127.0.0.1:$port")
done
for k in $(seq 0 $((PROCESSES - 1))); do
    port=${PORTS[$k]}
    pid=${MOSQ_PIDS[$k]}
    for _ in $(seq 1 100); do
        ss -Hltn "sport = :$port" 2>/dev/null | grep -q . && break
        kill -0 "$pid" 2>/dev/null || die "mosquitto $k exited: $(cat "$OUT/mosquitto-$k.log")"
        sleep 0.1
    done
    ss -Hltn "sport = :$port" 2>/dev/null | grep -q . || die "mosquitto $k did not listen on port $port"
    limit=$(awk '/Max open files/ {print $4}' "/proc/$pid/limits")
    echo "$k $pid $port $limit" >>"$OUT/mosquittos.txt"
done
log "$PROCESSES x mosquitto $("$MOSQUITTO" -h 2>&1 | awk 'NR == 1 {print $3}') on 127.0.0.1 ports ${PORTS[*]} (pids ${MOSQ_PIDS[*]}), open files limit $NOFILE each"

# --- the run -------------------------------------------------------------------------------
LIMIT=$((DURATION_S + 300))
CMD=("$BIN" run "$SCENARIO" --processes "$PROCESSES" "${BROKER_ARGS[@]}" --devices "$DEVICES"
    --duration "${MINUTES}m" --headless --progress-every 10s --api-listen 127.0.0.1:0
    --run-dir "$OUT/run" --report "$OUT/report.json")
printf '%q ' "${CMD[@]}" >"$OUT/command.txt"
echo >>"$OUT/command.txt"
log "running $DEVICES devices in $PROCESSES processes ($PER_PROCESS each) for $MINUTES min (at most ${LIMIT}s): $(cat "$OUT/command.txt")"
log "samples every ${INTERVAL}s to $OUT/procs.csv and $OUT/fleet.csv"
date -u +%Y-%m-%dT%H:%M:%SZ >"$OUT/started.txt"
timeout -s INT -k 60 "$LIMIT" "${CMD[@]}" >"$OUT/fleetsim.out" 2>"$OUT/fleetsim.log" &
RUN_PID=$!
START=$(date +%s.%N)
FLEET_PID=""
for _ in $(seq 1 100); do
    FLEET_PID=$(pgrep -P "$RUN_PID" -x fleetsim || true)
    [[ -n $FLEET_PID ]] && break
    sleep 0.05
done
[[ -n $FLEET_PID ]] || die "fleetsim did not start: $(cat "$OUT/fleetsim.log")"

# The sampler: every INTERVAL seconds while the fleetsim parent lives, one line per process to
# procs.csv and one line for the fleet and the machine to fleet.csv. Open files are counted
# before the API is asked, so the sampler's own connection is never in the count.
PYTHONPATH="$ROOT/scripts" "$PY" - "$FLEET_PID" "$OUT" "$START" "$INTERVAL" "${MOSQ_PIDS[@]}" <<'PYEOF' &
import os, re, sys, time
parent, out, start, every = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
mosqs = [int(p) for p in sys.argv[5:]]
tck = os.sysconf("SC_CLK_TCK")
me = os.getpid()
PCOLS = ["unix_s", "elapsed_s", "role", "index", "pid", "rss_kib", "hwm_kib", "open_files", "threads", "cpu_s"]
FCOLS = ["unix_s", "elapsed_s", "sim_time_s", "online", "connecting", "offline", "published", "acked",
         "failed", "in_flight", "buffered", "sessions_lost", "connects_ok", "connects_failed", "max_lag_ms",
         "fleetsim_cpu_s", "mosquitto_cpu_s", "machine_busy_cores", "softirq_cores", "others_cores", "steal_cores",
         "mem_available_mib", "slab_mib", "tcp_inuse", "tcp_mem_mib", "listen_overflows", "listen_drops",
         "others_running"]

from procstat import ApiFromLog, nfds, status
from procstat import cpu_and_parent as cpu  # (CPU seconds, parent pid)

def all_cpu():
    # CPU seconds of every process now, by pid, with the pids' parents
    r = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            c, pp = cpu(d)
            if c is not None:
                r[int(d)] = (c, pp)
    return r

def machine_busy():
    # user nice system idle iowait irq softirq steal (guest time is already in user and nice).
    # Time in interrupts and softirqs (with the loopback, the receive side of every packet) is
    # not charged to any process: it is counted apart. steal = time the hypervisor gave elsewhere.
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return (v[0] + v[1] + v[2]) / tck, (v[5] + v[6]) / tck, v[7] / tck

def netstat():
    r = {}
    try:
        lines = open("/proc/net/netstat").read().splitlines()
        for a, b in zip(lines[::2], lines[1::2]):
            if a.startswith("TcpExt:"):
                r = dict(zip(a.split()[1:], b.split()[1:]))
    except OSError:
        pass
    return r

def sockstat():
    try:
        for line in open("/proc/net/sockstat"):
            if line.startswith("TCP:"):
                f = line.split()
                d = dict(zip(f[1::2], f[2::2]))
                return d.get("inuse", ""), int(d.get("mem", 0)) * os.sysconf("SC_PAGE_SIZE") / 1048576
    except OSError:
        pass
    return "", ""

def meminfo():
    # MiB available, MiB of kernel slab (where the kernel's socket structures live)
    r = {}
    try:
        for line in open("/proc/meminfo"):
            k, _, v = line.partition(":")
            r[k] = int(v.split()[0]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return r.get("MemAvailable", 0.0), r.get("Slab", 0.0)

OTHERS = re.compile(r"gateway-bench|gateway-1m|soak\.sh|load-bench\.sh")
def others_running():
    n = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                c = open(f"/proc/{d}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if OTHERS.search(c) and "scale-100k" not in c:
                n.append(d)
    return len(n)

snapshot = ApiFromLog(f"{out}/fleetsim.log", timeout=5).snapshot

def shard_index(pid):
    try:
        a = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        return int(a[a.index(b"--shard") + 1].split(b"/")[0])
    except (OSError, ValueError, IndexError):
        return ""

pf = open(f"{out}/procs.csv", "w")
ff = open(f"{out}/fleet.csv", "w")
pf.write(",".join(PCOLS) + "\n")
ff.write(",".join(FCOLS) + "\n")
(prev_busy, prev_irq, prev_steal), prev_all = machine_busy(), all_cpu()
k = 0
while True:
    if status(parent) is None:
        break
    now = time.time()
    el = f"{now - start:.1f}"
    allc = all_cpu()
    kids = sorted(p for p, (_, pp) in allc.items() if pp == parent)
    procs = [("parent", "", parent)] + [("child", shard_index(p), p) for p in kids] + \
            [("mosquitto", i, p) for i, p in enumerate(mosqs)]
    fcpu = mcpu = 0.0
    for role, idx, p in procs:
        st = status(p)
        if st is None:
            continue
        c = allc.get(p, (None, None))[0]
        if c is None:
            c = cpu(p)[0] or 0.0
        if role == "mosquitto":
            mcpu += c
        else:
            fcpu += c
        pf.write(",".join(str(x) for x in [f"{now:.1f}", el, role, idx, p, st.get("VmRSS", ""), st.get("VmHWM", ""),
                                            nfds(p), st.get("Threads", ""), f"{c:.2f}"]) + "\n")
    pf.flush()
    # The CPU everything else on the machine used since the last sample (other users' builds,
    # benchmarks): the machine's busy time minus the time of processes that lived through both
    # samples and are ours (fleetsim, its children, the mosquittos, this sampler).
    busy, irq, steal = machine_busy()
    dt = every if k else max(now - start, 1e-3)
    ours = {parent, me, *kids, *mosqs}
    our_delta = sum(allc[p][0] - prev_all.get(p, (0.0, 0))[0] for p in ours if p in allc)
    row = dict.fromkeys(FCOLS, "")
    ns = netstat()
    inuse, tmem = sockstat()
    avail, slab = meminfo()
    row.update(unix_s=f"{now:.1f}", elapsed_s=el, fleetsim_cpu_s=f"{fcpu:.2f}", mosquitto_cpu_s=f"{mcpu:.2f}",
               machine_busy_cores=f"{max(0.0, busy + irq - prev_busy - prev_irq) / dt:.3f}",
               softirq_cores=f"{(irq - prev_irq) / dt:.3f}",
               others_cores=f"{max(0.0, (busy - prev_busy) - our_delta) / dt:.3f}",
               steal_cores=f"{(steal - prev_steal) / dt:.3f}",
               mem_available_mib=f"{avail:.0f}", slab_mib=f"{slab:.1f}", tcp_inuse=inuse,
               tcp_mem_mib=f"{tmem:.1f}" if tmem != "" else "",
               listen_overflows=ns.get("ListenOverflows", ""), listen_drops=ns.get("ListenDrops", ""),
               others_running=others_running())
    prev_busy, prev_irq, prev_steal, prev_all = busy, irq, steal, allc
    s = snapshot()
    if s is not None:
        t, states = s["totals"], s["states"]
        row.update(sim_time_s=f'{s["sim_time_s"]:.1f}', online=states["online"],
                   connecting=states["connecting"], offline=states["offline"],
                   published=t["published"], acked=t["acked"],
                   failed=sum(v for key, v in t.items() if key.startswith("failed_")),
                   in_flight=s["in_flight"], buffered=s["buffered"],
                   sessions_lost=t.get("sessions_lost", ""), connects_ok=t.get("connects_ok", ""),
                   connects_failed=t.get("connects_failed", ""),
                   max_lag_ms=f'{s["max_lag_us"] / 1000:.1f}')
    ff.write(",".join(str(row[c]) for c in FCOLS) + "\n")
    ff.flush()
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
# mosquitto's totals before it stops: CPU seconds (utime + stime), peak RSS, open files now
TCK=$(getconf CLK_TCK)
: >"$OUT/mosquitto-end.txt"
for k in $(seq 0 $((PROCESSES - 1))); do
    pid=${MOSQ_PIDS[$k]}
    if [[ -r /proc/$pid/stat ]]; then
        cpu=$(sed 's/.*) //' "/proc/$pid/stat" | awk -v t="$TCK" '{printf "%.2f", ($12 + $13) / t}')
        hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status")
        echo "$k $pid $cpu $hwm" >>"$OUT/mosquitto-end.txt"
    else
        echo "$k $pid exited" >>"$OUT/mosquitto-end.txt"
    fi
done
for p in "${MOSQ_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
for p in "${MOSQ_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
MOSQ_PIDS=()
echo "$RC" >"$OUT/fleetsim.rc"
case $RC in
    0) ;;
    1) log "fleetsim exited 1: an SLO of the scenario was not met" ;;
    124) log "fleetsim did not finish within ${LIMIT}s (timeout)" ;;
    *) log "fleetsim exited $RC (see $OUT/fleetsim.log and $OUT/run/shard-*/fleetsim.log)" ;;
esac

# --- the figures and the verdict -----------------------------------------------------------
set +e
"$PY" - "$OUT" "$DEVICES" "$DURATION_S" "$PROCESSES" "$NOFILE" "$RC" <<'PYEOF'
import csv, json, sys
out, n, dur, procs, nofile, rc = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
lines, problems, fatal = [], [], []
say = lambda s="": lines.append(s)
mib = lambda b: b / 1048576

def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None

prows = [{k: (v if k == "role" else num(v)) for k, v in r.items()} for r in csv.DictReader(open(f"{out}/procs.csv"))]
frows = [{k: num(v) for k, v in r.items()} for r in csv.DictReader(open(f"{out}/fleet.csv"))]
try:
    rep = json.load(open(f"{out}/report.json"))
except (OSError, ValueError):
    rep = None
    fatal.append("no report (report.json) was written")
mend = {}
for line in open(f"{out}/mosquitto-end.txt"):
    f = line.split()
    if len(f) == 4:
        mend[int(f[0])] = (float(f[2]), int(f[3]))
others = open(f"{out}/others.txt").read().strip().replace("\n", "; ")

say(f"## scale: {n:,} sessions, {procs} fleetsim processes, {procs} mosquittos, {dur / 60:g} min")
say()
say(f"output {out}; {len(frows)} samples; open files limit {nofile:,} per process; {others}")
busy = [r["machine_busy_cores"] for r in frows[1:] if r["machine_busy_cores"] is not None]
oth = [r["others_cores"] for r in frows[1:] if r["others_cores"] is not None]
orun = [r["others_running"] for r in frows if r["others_running"]]
if oth:
    say(f"the rest of the machine meanwhile: {sum(oth) / len(oth):.2f} cores on average, at most {max(oth):.2f} "
        f"(machine busy {sum(busy) / len(busy):.2f} cores on average); other benchmarks seen in {len(orun)} of {len(frows)} samples")
say()

# --- sessions ----------------------------------------------------------------------------
online = [(r["elapsed_s"], r["online"]) for r in frows if r["online"] is not None]
peak_sampled = max((o for _, o in online), default=0)
full = next((t for t, o in online if o >= n), None)
if full is None:
    problems.append(f"never all {n:,} sessions online at once (at most {peak_sampled:,.0f} in the samples)")
rows = []
def row(what, value):
    rows.append(f"| {what} | {value} |")

if rep is not None:
    c, d, m, g, p = rep["connections"], rep["devices"], rep["messages"], rep["generator"], rep["process"]
    a, cl = rep["latency_us"]["publish_ack"], rep["latency_us"]["connect"]
    parts = rep.get("parts", [])
    if not rep.get("complete", True):
        fatal.append("the report is incomplete: " + "; ".join(f"{x['shard']} {x['status']}" for x in parts if x["status"] != "ok"))
    row("sessions online at once (peak, sampled every 10 s from the parent's snapshot)", f"**{peak_sampled:,.0f}** of {n:,}")
    row("devices online at the end of the duration (report)", f"{d['by_state'].get('online', 0):,} ({d['connected_ratio'] * 100:.3f} %)")
    row("connections: attempts / ok / failed / sessions lost", f"{c['attempts']:,} / {c['succeeded']:,} / {c['failed']:,} / {c['sessions_lost']:,}")
    row("time to connect every session (last first connect)", f"**{c['last_first_connect_s']:.1f} s**")
    row("connect rate (first connects / that time)", f"**{c['first_connect_rate_per_s']:,.0f} sessions/s**")
    row("connect latency p50 / p99 / max", f"{cl['p50'] / 1e3:.2f} / {cl['p99'] / 1e3:.2f} / {cl['max'] / 1e3:.1f} ms")
    if full is not None:
        say(f"every session online in the sample at {full:.0f} s")

    # --- memory ------------------------------------------------------------------------
    sessions = max(peak_sampled, 1)
    child_peaks = [x["rss_peak_bytes"] for x in parts if x.get("rss_peak_bytes") is not None]
    fs_peak = sum(child_peaks) if child_peaks else p["rss_peak_bytes"]
    row("fleetsim peak RSS, sum of the children's peaks", f"{mib(fs_peak):.1f} MiB ({', '.join(f'{mib(b):.1f}' for b in child_peaks)})")
    row("**fleetsim memory per session**", f"**{fs_peak / sessions / 1024:.2f} KiB** ({fs_peak / sessions:,.0f} B)")
    par = [r for r in prows if r["role"] == "parent"]
    if par:
        row("fleetsim parent (watches, merges) peak RSS", f"{max(r['hwm_kib'] or 0 for r in par) / 1024:.1f} MiB")
    mq = [r for r in prows if r["role"] == "mosquitto"]
    if mq:
        first_t = min(r["elapsed_s"] for r in mq)
        base = sum(r["rss_kib"] for r in mq if r["elapsed_s"] == first_t) * 1024
        hwm = {}
        for r in mq:
            hwm[r["index"]] = max(hwm.get(r["index"], 0), r["hwm_kib"] or 0)
        for i, (_, h) in mend.items():
            hwm[i] = max(hwm.get(i, 0), h)
        mq_peak = sum(hwm.values()) * 1024
        row("mosquitto peak RSS, sum of the peaks", f"{mib(mq_peak):.1f} MiB ({', '.join(f'{v / 1024:.1f}' for _, v in sorted(hwm.items()))})")
        row("**mosquitto memory per session**", f"**{mq_peak / sessions / 1024:.2f} KiB** "
            f"({(mq_peak - base) / sessions / 1024:.2f} KiB above the {mib(base):.1f} MiB of the idle mosquittos)")

    # --- open files ----------------------------------------------------------------------
    worst = {}
    for r in prows:
        if r["open_files"] is None or r["role"] == "parent" or r["index"] is None:
            continue  # (a child caught between fork and exec has no --shard yet)
        key = (r["role"], int(r["index"]) if r["index"] is not None else -1)
        worst[key] = max(worst.get(key, 0), r["open_files"])
    if worst:
        (wr, wi), wv = max(worst.items(), key=lambda kv: kv[1])
        fl = ", ".join(f"{v:,.0f}" for (r_, _), v in sorted(worst.items()) if r_ == "child")
        ml = ", ".join(f"{v:,.0f}" for (r_, _), v in sorted(worst.items()) if r_ == "mosquitto")
        ok = nofile == 0 or wv < nofile
        row("most open files of any process (limit per process)", f"**{wv:,.0f}** ({wr} {wi}; limit {nofile:,}) {'ok' if ok else 'LIMIT REACHED'}")
        row("open files, peak per fleetsim child / per mosquitto", f"{fl} / {ml}")
        if not ok:
            problems.append(f"{wr} {wi} reached the open files limit ({wv:,.0f} of {nofile:,})")

    # --- messages and CPU ----------------------------------------------------------------
    fs_cpu = sum(x["cpu_s"] for x in parts if x.get("cpu_s") is not None) or (p["cpu_user_s"] + p["cpu_system_s"])
    par_cpu = max((r["cpu_s"] or 0 for r in par), default=0.0)
    mq_cpu = sum(v[0] for v in mend.values())
    pub = max(m["published"], 1)
    row("messages published / acked / failed / in flight at the end", f"{m['published']:,} / {m['acked']:,} / {m['failed']:,} / {m['in_flight']:,} (delivered {m['delivered_ratio'] * 100:.3f} %)")
    row("fleetsim CPU, children (whole run) / parent", f"{fs_cpu:.1f} s ({rep['process']['cpu_user_s']:.1f} user + {rep['process']['cpu_system_s']:.1f} system) / {par_cpu:.1f} s")
    row("mosquitto CPU (whole run, all instances)", f"{mq_cpu:.1f} s")
    row("CPU per message, whole run (connects included): fleetsim children / mosquitto", f"{fs_cpu / pub * 1e6:.1f} µs / {mq_cpu / pub * 1e6:.1f} µs")
    # steady state: from one report interval (30 s) after every session is online, to the last
    # sample before the duration ran out
    st = [r for r in frows if r["published"] is not None and r["elapsed_s"] < dur - 1
          and (r["sim_time_s"] is None or r["sim_time_s"] < dur - 2)]
    if full is not None:
        st = [r for r in st if r["elapsed_s"] >= full + 30]
    if len(st) >= 2:
        a0, a1 = st[0], st[-1]
        span = a1["elapsed_s"] - a0["elapsed_s"]
        dm = a1["published"] - a0["published"]
        ckid = lambda t: sum(r["cpu_s"] for r in prows if r["role"] == "child" and r["unix_s"] == t)
        cmq = lambda t: sum(r["cpu_s"] for r in prows if r["role"] == "mosquitto" and r["unix_s"] == t)
        dfs, dmq = ckid(a1["unix_s"]) - ckid(a0["unix_s"]), cmq(a1["unix_s"]) - cmq(a0["unix_s"])
        if dm > 0 and span > 0:
            row(f"steady state ({a0['elapsed_s']:.0f}-{a1['elapsed_s']:.0f} s): messages/s", f"**{dm / span:,.0f}/s**")
            row("**CPU per message, steady: fleetsim children / mosquitto**", f"**{dfs / dm * 1e6:.1f} µs / {dmq / dm * 1e6:.1f} µs** "
                f"({dfs / span:.3f} / {dmq / span:.3f} cores)")
            # the same over the intervals when the rest of the machine was quiet (< 0.15 cores):
            # other work on the two cores makes every process here slower per message
            qm = qf = qq = 0.0
            qn = 0
            for r0, r1 in zip(st, st[1:]):
                if r1["others_cores"] is not None and r1["others_cores"] < 0.15:
                    qm += r1["published"] - r0["published"]
                    qf += ckid(r1["unix_s"]) - ckid(r0["unix_s"])
                    qq += cmq(r1["unix_s"]) - cmq(r0["unix_s"])
                    qn += 1
            if qm > 0:
                row(f"CPU per message, steady, quiet intervals only ({qn} of {len(st) - 1}): fleetsim children / mosquitto",
                    f"{qf / qm * 1e6:.1f} µs / {qq / qm * 1e6:.1f} µs")
            mb = [r["machine_busy_cores"] for r in st[1:] if r["machine_busy_cores"] is not None]
            si = [r["softirq_cores"] for r in st[1:] if r["softirq_cores"] is not None]
            if mb:
                row("machine busy, steady (every process, interrupts and softirqs included)", f"{sum(mb) / len(mb):.2f} of 2 cores")
            if si:
                row("of which interrupts and softirqs (charged to no process: loopback packet delivery, mostly ours)",
                    f"{sum(si) / len(si):.3f} cores = {sum(si) / len(si) * span / dm * 1e6:.1f} µs per message")
        lost = [r["sessions_lost"] for r in st if r["sessions_lost"] is not None]
        if lost and lost[-1] > lost[0]:
            problems.append(f"{lost[-1] - lost[0]:.0f} sessions lost in the steady state")
        low = [r["online"] for r in st if r["online"] is not None]
        if low and min(low) < n:
            problems.append(f"sessions online fell to {min(low):,.0f} of {n:,} in the steady state")
    else:
        say("steady state: too few samples after the whole fleet was online")
    row("publish->ack p50 / p99 / max", f"**{a['p50'] / 1e3:.2f} / {a['p99'] / 1e3:.2f} ms** / {a['max'] / 1e3:.1f} ms")
    row("generator: saturated / max lag / lag p99", f"{str(g['saturated']).lower()} / {g['max_lag_ms']:.1f} ms / {g['lag_p99_ms']:.1f} ms")
    lo = [r["listen_overflows"] for r in frows if r["listen_overflows"] is not None]
    if lo:
        row("listen queue overflows (machine, during the run)", f"{lo[-1] - lo[0]:,.0f}")
    # the kernel's side, while the fleet runs (the close at the end queues DISCONNECTs and wills)
    run_rows = [r for r in frows if r["elapsed_s"] < dur - 1]
    tm = [r["tcp_mem_mib"] for r in run_rows if r["tcp_mem_mib"] is not None]
    ma = [r["mem_available_mib"] for r in run_rows if r["mem_available_mib"] is not None]
    sl = [r["slab_mib"] for r in run_rows if r["slab_mib"] is not None]
    if tm and ma:
        row("kernel TCP buffers, peak while running / machine memory available, lowest", f"{max(tm):.1f} MiB / {min(ma) / 1024:.1f} GiB")
    if len(sl) >= 2:
        # both ends of every connection are on this machine: two sockets per session
        row("kernel slab growth, peak while running (both ends of every connection)",
            f"{max(sl) - sl[0]:.0f} MiB = {(max(sl) - sl[0]) * 1048576 / sessions / 1024:.1f} KiB per session")
    stl = [r["steal_cores"] for r in frows[1:] if r["steal_cores"] is not None]
    if stl:
        row("CPU stolen by the hypervisor (average / most, cores)", f"{sum(stl) / len(stl):.2f} / {max(stl):.2f}")
    row("fleetsim exit code", f"{rc}")
    for s in rep.get("slo", []):
        row(f"SLO {s['name']}", f"{'met' if s['ok'] else 'NOT met'}: {s['metric']} = {s['value']}")
    if rep["run"].get("interrupted"):
        fatal.append("the run was interrupted")
    say()
    say("| what | measured |")
    say("|---|---|")
    lines.extend(rows)
    say()
    say("| process | devices | peak RSS MiB | CPU s | status |")
    say("|---|---:|---:|---:|---|")
    for x in parts:
        say(f"| fleetsim {x['shard']} | {x['devices']:,} | {mib(x['rss_peak_bytes'] or 0):.1f} | {x['cpu_s'] or 0:.1f} | {x['status']} |")
    for i, (cs, h) in sorted(mend.items()):
        say(f"| mosquitto {i} | | {h / 1024:.1f} | {cs:.1f} | |")
    say()

# a table of the samples: sessions online, messages, CPU over time
if frows:
    say("| elapsed | online | published | acked | in flight | fleetsim CPU s | mosquitto CPU s | machine busy cores | softirq cores | others cores |")
    say("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    f = lambda v: "" if v is None else f"{v:,.0f}"
    g2 = lambda v: "" if v is None else f"{v:.2f}"
    for r in frows:
        mm, ss = divmod(int(round(r["elapsed_s"])), 60)
        say(f"| {mm}:{ss:02d} | {f(r['online'])} | {f(r['published'])} | {f(r['acked'])} | {f(r['in_flight'])} | "
            f"{g2(r['fleetsim_cpu_s'])} | {g2(r['mosquitto_cpu_s'])} | {g2(r['machine_busy_cores'])} | {g2(r['softirq_cores'])} | {g2(r['others_cores'])} |")
    say()

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
