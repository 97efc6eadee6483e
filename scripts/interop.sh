#!/usr/bin/env bash
# Interop test: fleetsim against real peers (a mosquitto broker, mosquitto_sub/mosquitto_pub).
#
#   bash scripts/interop.sh
#
# A  MQTT 3.1.1 telemetry contract: a subscriber on fleetsim/# receives every telemetry message
#    of scenarios/smoke.toml, each one well-formed (docs/telemetry.md), seq 1..N per device with
#    no gap or duplicate, as many as the report's messages.published and messages.acked; status
#    messages are well-formed and retained.
# B  MQTT 5: the same fleet, smaller, with --mqtt-version 5 connects (as MQTT 5, per the broker's
#    log) and delivers everything.
# C  Commands: ping, set_interval and a malformed command sent with mosquitto_pub to one device
#    of a running fleet are answered; set_interval raises its reporting rate; the report counts them.
# D  A dead broker is not a crash: fleetsim exits 0 or 1 (the SLO verdict) and its report shows
#    failed connections and nothing acked.
# E  Modbus (scripts/modbus_interop.py): power meters served as Modbus TCP slaves (4 units per
#    port) and RTU slaves on a PTY line, polled by real masters: mbpoll (f32, u16, int32, coils,
#    discrete inputs, TCP and RTU; a write of interval_s that makes readings come every second;
#    an unknown unit id -> exception 0x0B) and pymodbus (every register type of the map, exceptions
#    0x02/0x03/0x0B, write and read back; RTU: units on the line, silence for a unit not on it, a
#    broadcast write); two of the meters also publish over MQTT, and what Modbus reads equals
#    their telemetry; the report's modbus counters show all of it.
# F  Serial (scripts/serial_interop.py): GPS receivers, an LTE modem, a Modbus RTU meter and a
#    weather station on PTYs, and a GPS receiver on a real port (one end of a socat PTY pair,
#    read at the other end): pyserial reads NMEA that pynmea2 parses with valid checksums (all
#    five sentences; no-fix sentences before the first fix, then fixes around Berlin, 1 s apart,
#    and a fix that survives an unplug of the port); an AT dialogue (ATE0, ATI, AT+CGSN, AT+CSQ,
#    AT+CREG?, AT+COPS?, ERROR and +CME ERROR in both modes) and +CREG URCs over a scheduled
#    outage; the weather station's lines; the meter read with pymodbus over RTU; a scheduled
#    unplug (the link goes and comes back, reading again works); the report's serial counters.
# G  OTA firmware jobs (scripts/ota_interop.py): scenarios/ota-lab.toml's 6 devices take jobs
#    from an independent job server (paho-mqtt) that starts fleetsim once it is subscribed:
#    AWS IoT Jobs over MQTT for lab-000..003 (notify-next, start-next, updates checked for
#    expectedVersion and legal transitions) and the generic JSON protocol for lab-004/005. A good
#    update (stages in order, download progress never going back, committed to slot B, telemetry
#    on 1.1.0 afterwards), a bad release rolled back after its boot attempts, an update rejected
#    with VersionMismatch (the server bumps the version behind the device's back) and sent again
#    as it was, unknown versions rejected with a reason, a download from a Range-capable HTTP
#    server that cuts the first transfer at 40 % (the device resumes with Range: bytes=N-), a
#    wrong sha256 failing at verifying; the report's ota counters match what the server saw.
#    (`python3 scripts/ota_interop.py --self-test` proves the checks against a fake fleet.)
# H  The live surfaces as a person uses them (scripts/tui_interop.py; the demo scenario, 2,000
#    devices on the embedded broker): /metrics of a run with --api-listen parsed by Python's
#    prometheus_client (every family docs/api.md lists, with its type; only fleetsim_ names;
#    devices by state summing to the total; counters growing; histograms with the documented
#    buckets, cumulative, +Inf = _count > 0); the JSON API (health, snapshot, pause: published
#    and simulated time stand still; resume, 409 when not paused; a fault and its "control"
#    event; malformed bodies -> 400 {"error": ...}; 405; devices by id and number, 404), the
#    run's report. The dashboard (`run --tui`) in tmux: overview and header, screens 2-6, the
#    help, an outage from the form with its [y/N] ("control" then "storm" on the Events
#    screen), a device looked up with /, q (the summary on the terminal, exit 0 or 1, the
#    report interrupted, log lines in RUN_DIR/fleetsim.log only). `top --attach` over two runs
#    in tmux: the merged header (processes 2, devices 600), pause and resume of both runs, q
#    leaving both running, then Ctrl-C ending each with its report.
# I  Reliability (scripts/reliability_interop.py; device-profiles/reliable-sensor.toml: 1 msg/s,
#    QoS 1, persistent sessions, keep-alive 2 s), each check against its own mosquitto and a
#    paho-mqtt subscriber that audits seq per device: mosquitto (persistence on) stopped with
#    SIGTERM mid-run and started again 3 s later (every seq arrives, distinct = acked, nothing
#    failed, unaccounted 0, sessions lost and the reconnect storm in the report); mosquitto
#    frozen with SIGSTOP for 3 x keep-alive (keep-alive timeouts in the event log, all back
#    online, nothing lost); scenarios/reliability.toml's partition, latency spike (arrival - ts
#    >= the delay) and outage; the same faults through POST /api/v1/faults (and 400s naming the
#    missing field); SIGINT and SIGTERM on 500 devices (exit within 5 s with the report, a
#    DISCONNECT per device in mosquitto's log, no will); MQTT 5 with an acl_file denying one
#    cohort's telemetry (PUBACK 0x87 counted as broker_rejected, exactly that cohort's
#    messages); the pre-flight refusing more devices than the open-file limit allows.
# J  TLS and identities (scripts/tls_interop.py; 200 env sensors): `fleetsim certs` (a CA, a
#    broker certificate, one per device, keys 0600); mosquitto with require_certificate and
#    use_identity_as_username: every device connects over mqtts:// with its own certificate and
#    is named by its CN, mosquitto_sub over TLS gets telemetry from all 200, every device leaves
#    with DISCONNECT; another CA's broker certificate refused with its reason;
#    --insecure-skip-verify connecting with its warning; no client certificate refused; missing
#    certificate files stopping the run before it starts; passwords from a CSV file against
#    mosquitto's password_file (the wrong one refused and counted, no password in any output).
# K  Kubernetes (scripts/k8s_check.py; no cluster): the kustomize base and every overlay under
#    deploy/kubernetes render with `kubectl kustomize`; every object is valid against the
#    Kubernetes 1.29 and 1.37 schemas (kubernetes-validate, strict, offline); the Job is Indexed
#    with completions = parallelism = --shards-total, mounts the rendered ConfigMap holding its
#    scenario, has the Prometheus annotations on its metrics port, requests and limits sized for
#    its pods' sessions, a non-root read-only pod, a podFailurePolicy; a headless Service selects
#    its pods; the ConfigMap's scenario passes `fleetsim validate` in the image's layout; each
#    pod's command and args, run here with JOB_COMPLETION_INDEX=k and --dry-run, own the k-th
#    contiguous slice of every cohort (every pod of the small overlays, whose slices cover every
#    device exactly once; first, middle and last of 1m-devices); the Dockerfile's shape; a
#    missing or bad JOB_COMPLETION_INDEX exits 2; broken copies of an overlay are caught. Then
#    overlays/smoke's 3 pods run for real for 15 s on loopback: the readiness probe's and the
#    scrape annotations' paths answer, the API is read-only, a pod killed mid-run and started
#    again on its index leaves its slice missing from a merge until it ends, and the results
#    reader's `fleetsim report merge` gives the whole fleet, each slice where the dry run said.
# L  Past one process, against real mosquittos and subscribers (scripts/scaleout_interop.py):
#    `run --processes 3` with three `--broker` listeners: each mosquitto serves exactly one
#    slice's client ids, the subscribers together see every device's seqs without a gap and as
#    many as the merged report's acked, the parent's /metrics counts the whole fleet, one joined
#    event log, `report merge` of the results folder gives the report again; a child killed with
#    SIGKILL is named at once with its devices, its devices stop while the others go on, exit 3,
#    the report names the slice missing; SIGTERM to the parent stops every child cleanly (a
#    DISCONNECT for every session) with the merged report. Gateway mode: 1,000 children behind
#    10 gateways as `--processes 3` (mosquitto sees exactly the 10 gateway client ids, none taken
#    over: slices never cut a gateway), every child's seqs under its own topic; Sparkplug-style
#    topics (DDATA per child, NBIRTH per gateway, DBIRTH per child).
#
# Needs root (or sudo) for apt-get when mosquitto, mosquitto_sub/pub, python3, (for E) mbpoll,
# (for F) socat, (for H) tmux or (for K) kubectl are missing, and pip for pymodbus + pyserial (E,
# F), pynmea2 (F), paho-mqtt (G, I, L), prometheus_client (H) and kubernetes-validate with PyYAML (K)
# when python3 lacks them.
# Environment:
#   INTEROP_ONLY=E,...      run only these tests (letters A-L, comma-separated; "modbus" = E,
#                           "serial" = F, "ota" = G, "tui" = H, "reliability" = I, "tls" = J,
#                           "kubernetes" = K, "scaleout" = L)
#   FLEETSIM=path           use this binary instead of `cargo build --release`
#   INTEROP_STRICT=0        report known fleetsim bugs as KNOWN instead of failing (default 1: they fail)
#   INTEROP_KEEP_TMP=1      keep the temp folder (broker logs, subscriber output, reports, H's
#                           screens H-tui-NN-*.txt and H-top-NN-*.txt, I's files under I/)
#   INTEROP_BUILD_TIMEOUT   seconds for cargo build (default 3600)
# Ends with the line "N passed, M failed"; exits 0 only when M is 0.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -n "${FLEETSIM:-}" && "$FLEETSIM" != /* ]]; then
    FLEETSIM="$PWD/$FLEETSIM"
fi
cd "$ROOT"
export PATH="$PATH:/usr/sbin:/sbin:/usr/local/sbin"
export LC_ALL=C.UTF-8 NO_COLOR=1

STRICT="${INTEROP_STRICT:-1}"
ONLY=",${INTEROP_ONLY:-},"
ONLY="${ONLY//,modbus,/,E,}"
ONLY="${ONLY//,serial,/,F,}"
ONLY="${ONLY//,ota,/,G,}"
ONLY="${ONLY//,tui,/,H,}"
ONLY="${ONLY//,reliability,/,I,}"
ONLY="${ONLY//,tls,/,J,}"
ONLY="${ONLY//,kubernetes,/,K,}"
ONLY="${ONLY//,scaleout,/,L,}"
want() { [[ "$ONLY" == ",," || "$ONLY" == *",$1,"* ]]; } # want TEST: is test TEST selected?
PASSED=0
FAILED=0
BG_PIDS=()
BROKER_PID=""
PORT=""
TMP=""
T0=$SECONDS

log() { printf '%s\n' "== $*"; }
pass() { PASSED=$((PASSED + 1)); printf 'PASS  %s\n' "$*"; }
fail() { FAILED=$((FAILED + 1)); printf 'FAIL  %s\n' "$*"; }
die() {
    printf 'interop: %s\n' "$*" >&2
    FAILED=$((FAILED + 1))
    exit 1
}

cleanup() {
    local rc=$?
    set +e
    for pid in "${BG_PIDS[@]}"; do
        kill "$pid" 2>/dev/null
    done
    for pid in "${BG_PIDS[@]}"; do
        wait "$pid" 2>/dev/null
    done
    # Test H's tmux sessions (tui_interop.py ends them itself, unless it was killed).
    if want H && command -v tmux >/dev/null 2>&1; then
        for session in "tui-$$" "top-$$"; do
            tmux -L fleetsim-interop kill-session -t "=$session" 2>/dev/null
        done
    fi
    if [[ -n "$TMP" && -d "$TMP" ]]; then
        if [[ "${INTEROP_KEEP_TMP:-0}" == 1 ]]; then
            echo "interop: kept $TMP"
        else
            rm -rf "$TMP"
        fi
    fi
    # The closing line, also when a step died on the way.
    if [[ $rc -ne 0 && $FAILED -eq 0 ]]; then
        FAILED=1
    fi
    echo "interop: took $((SECONDS - T0)) s"
    echo "$PASSED passed, $FAILED failed"
    if [[ $FAILED -ne 0 ]]; then
        exit 1
    fi
    exit 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now_ms() { date +%s%3N; }

# A free TCP port on 127.0.0.1, chosen by the OS.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

[[ "$ONLY" == ",," || "$ONLY" =~ ^,([A-L],)+$ ]] ||
    die "INTEROP_ONLY=${INTEROP_ONLY:-}: want test letters A-L (or modbus, serial, ota, tui, reliability, tls, kubernetes, scaleout), comma-separated"

# ---------------------------------------------------------------------------------------------
# Tools
need_install=0
APT_PACKAGES=(mosquitto mosquitto-clients python3)
TOOLS=(mosquitto mosquitto_sub mosquitto_pub python3)
if want E; then
    APT_PACKAGES+=(mbpoll)
    TOOLS+=(mbpoll)
fi
if want F; then
    APT_PACKAGES+=(socat)
    TOOLS+=(socat)
fi
if want H; then
    APT_PACKAGES+=(tmux)
    TOOLS+=(tmux)
fi
if want K; then
    APT_PACKAGES+=(kubectl)
    TOOLS+=(kubectl)
fi
for tool in "${TOOLS[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || need_install=1
done
SUDO=""
if [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
fi
if [[ $need_install == 1 ]]; then
    log "installing ${APT_PACKAGES[*]} (apt-get)"
    if [[ $(id -u) -ne 0 && -z "$SUDO" ]]; then
        die "not root and no sudo: cannot apt-get install ${APT_PACKAGES[*]}"
    fi
    export DEBIAN_FRONTEND=noninteractive
    timeout 600 $SUDO apt-get update -q || die "apt-get update failed"
    timeout 900 $SUDO apt-get install -y -q "${APT_PACKAGES[@]}" || die "apt-get install failed"
fi
for tool in "${TOOLS[@]}" timeout; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not on PATH"
done
log "mosquitto: $(mosquitto -h 2>/dev/null | head -1)"
# Test E's Modbus master library (also F's, for the RTU meter): pymodbus (pinned: its client
# API changes between minor releases) with pyserial for RTU, from PyPI. pip refuses a system
# Python managed by Debian (PEP 668) without --break-system-packages.
pip_install() { # WHAT SPEC...: pip install the pinned SPECs, with pip from apt-get when missing
    local what=$1
    shift
    log "installing $* (pip)"
    if ! python3 -m pip --version >/dev/null 2>&1; then
        export DEBIAN_FRONTEND=noninteractive
        { timeout 600 $SUDO apt-get update -q && timeout 900 $SUDO apt-get install -y -q python3-pip; } \
            || die "python3 has no pip, and apt-get install python3-pip failed"
    fi
    local cmd=(timeout 600)
    [[ -n "$SUDO" ]] && cmd+=("$SUDO")
    cmd+=(env PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --disable-pip-version-check "$@")
    "${cmd[@]}" || "${cmd[@]}" --break-system-packages || die "pip install $what failed"
}
PYMODBUS_VERSION=3.16.1
if { want E || want F; } && ! python3 -c 'import sys, serial, pymodbus; sys.exit(pymodbus.__version__ != sys.argv[1])' \
    "$PYMODBUS_VERSION" 2>/dev/null; then
    pip_install pymodbus "pymodbus[serial]==$PYMODBUS_VERSION"
fi
if want E; then
    log "mbpoll: $(mbpoll -V 2>&1 | head -1); pymodbus: $(python3 -c 'import pymodbus; print(pymodbus.__version__)')"
fi
# Test F's serial reader and NMEA parser: pyserial (already there with pymodbus[serial]) and
# pynmea2, pinned.
PYSERIAL_VERSION=3.5
PYNMEA2_VERSION=1.19.0
if want F && ! python3 -c 'import sys, serial, pynmea2
sys.exit((serial.__version__, pynmea2.__version__) != tuple(sys.argv[1:]))' \
    "$PYSERIAL_VERSION" "$PYNMEA2_VERSION" 2>/dev/null; then
    pip_install "pyserial and pynmea2" "pyserial==$PYSERIAL_VERSION" "pynmea2==$PYNMEA2_VERSION"
fi
if want F; then
    log "socat: $(socat -V 2>/dev/null | grep -m1 'socat version' || echo '?'); pyserial, pynmea2, pymodbus: $(python3 -c 'import serial, pynmea2, pymodbus; print(serial.__version__, pynmea2.__version__, pymodbus.__version__)')"
fi
# Test G's job server and test I's subscribers: paho-mqtt, pinned (2.0 changed the callback
# API; the scripts use CallbackAPIVersion.VERSION2).
PAHO_MQTT_VERSION=2.2.0
if { want G || want I || want L; } && ! python3 -c 'import sys, paho.mqtt; sys.exit(paho.mqtt.__version__ != sys.argv[1])' \
    "$PAHO_MQTT_VERSION" 2>/dev/null; then
    pip_install paho-mqtt "paho-mqtt==$PAHO_MQTT_VERSION"
fi
if want G || want I || want L; then
    log "paho-mqtt: $(python3 -c 'import paho.mqtt; print(paho.mqtt.__version__)')"
fi
# Test H's Prometheus parser: prometheus_client, pinned (its text parser is the reference
# reader of the exposition format; it has no __version__, hence importlib.metadata).
PROMETHEUS_CLIENT_VERSION=0.21.1
if want H && ! python3 -c 'import sys, prometheus_client.parser
from importlib.metadata import version
sys.exit(version("prometheus-client") != sys.argv[1])' "$PROMETHEUS_CLIENT_VERSION" 2>/dev/null; then
    pip_install prometheus_client "prometheus-client==$PROMETHEUS_CLIENT_VERSION"
fi
if want H; then
    log "tmux: $(tmux -V); prometheus_client: $(python3 -c 'from importlib.metadata import version; print(version("prometheus-client"))')"
fi
# Test K's schema check: kubernetes-validate, pinned (it bundles the Kubernetes JSON schemas of
# 1.25-1.37 and validates offline), with its dependencies importlib-resources and packaging, and
# PyYAML for reading kubectl's output; pinned too.
KUBERNETES_VALIDATE_VERSION=1.37.0
K_PIP=("kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "importlib-resources==7.1.0" "packaging==26.3" "PyYAML==6.0.3")
if want K && ! python3 -c 'import sys, yaml, kubernetes_validate.utils
from importlib.metadata import version
sys.exit(version("kubernetes-validate") != sys.argv[1])' "$KUBERNETES_VALIDATE_VERSION" 2>/dev/null; then
    pip_install kubernetes-validate "${K_PIP[@]}"
fi
if want K; then
    log "kubectl: $(kubectl version --client 2>/dev/null | tr '\n' ' '); kubernetes-validate: $(python3 -c 'from importlib.metadata import version; print(version("kubernetes-validate"))')"
fi

TMP="$(mktemp -d "${TMPDIR:-/tmp}/fleetsim-interop.XXXXXX")"

# ---------------------------------------------------------------------------------------------
# fleetsim
if [[ -n "${FLEETSIM:-}" ]]; then
    [[ -x "$FLEETSIM" ]] || die "FLEETSIM=$FLEETSIM is not an executable"
    log "fleetsim: $FLEETSIM (from \$FLEETSIM)"
else
    log "building fleetsim (cargo build --release)"
    timeout "${INTEROP_BUILD_TIMEOUT:-3600}" cargo build --release || die "cargo build --release failed"
    FLEETSIM="$ROOT/target/release/fleetsim"
    [[ -x "$FLEETSIM" ]] || die "no $FLEETSIM after the build"
fi

# ---------------------------------------------------------------------------------------------
# The broker: a fresh mosquitto per test (so retained statuses and persistent sessions of one
# test do not reach the next), on a free loopback port, in the foreground of a background job.
start_broker() { # NAME
    local name=$1
    PORT=$(free_port)
    local conf="$TMP/$name-mosquitto.conf"
    cat >"$conf" <<EOF
listener $PORT 127.0.0.1
allow_anonymous true
max_connections -1
persistence false
log_dest stdout
log_type error
log_type warning
log_type notice
log_type information
connection_messages true
EOF
    mosquitto -c "$conf" >"$TMP/$name-mosquitto.log" 2>&1 &
    BROKER_PID=$!
    BG_PIDS+=("$BROKER_PID")
    local deadline=$((SECONDS + 15))
    until python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()' "$PORT" 2>/dev/null; do
        if ! kill -0 "$BROKER_PID" 2>/dev/null; then
            cat "$TMP/$name-mosquitto.log" >&2
            die "mosquitto exited at start"
        fi
        ((SECONDS < deadline)) || die "mosquitto does not accept connections on 127.0.0.1:$PORT after 15 s"
        sleep 0.1
    done
    log "mosquitto for test $name: pid $BROKER_PID on 127.0.0.1:$PORT"
}

stop_broker() {
    if [[ -n "$BROKER_PID" ]]; then
        kill "$BROKER_PID" 2>/dev/null || true
        wait "$BROKER_PID" 2>/dev/null || true
        BROKER_PID=""
    fi
}

# Starts a subscriber writing "arrival retain qos topic payload" lines to $TMP/NAME.txt and
# returns once it is subscribed: it also listens on interop/NAME/#, and a marker published
# there shows up in its output only after its SUBSCRIBE has been processed. Sets SUB_PID.
SUB_PID=""
start_sub() { # NAME TOPIC [mosquitto_sub options...]
    local name=$1 topic=$2
    shift 2
    local out="$TMP/$name.txt"
    : >"$out"
    timeout 300 mosquitto_sub -h 127.0.0.1 -p "$PORT" -q 1 -F '%U %r %q %t %p' \
        -t "interop/$name/#" -t "$topic" "$@" >"$out" 2>"$TMP/$name.err" &
    SUB_PID=$!
    BG_PIDS+=("$SUB_PID")
    local deadline=$((SECONDS + 15))
    until grep -q " interop/$name/ready " "$out"; do
        ((SECONDS < deadline)) || die "subscriber $name is not subscribed after 15 s: $(cat "$TMP/$name.err")"
        timeout 5 mosquitto_pub -h 127.0.0.1 -p "$PORT" -q 1 -t "interop/$name/ready" -m x >/dev/null 2>&1 || true
        sleep 0.2
    done
}

# Waits until everything the broker had for the subscriber has arrived (a marker published
# now arrives after it), then stops it.
stop_sub() { # NAME PID
    local name=$1 pid=$2 deadline=$((SECONDS + 15))
    until grep -q " interop/$name/done " "$TMP/$name.txt"; do
        if ((SECONDS >= deadline)); then
            echo "interop: subscriber $name did not see its end marker in 15 s" >&2
            break
        fi
        timeout 5 mosquitto_pub -h 127.0.0.1 -p "$PORT" -q 1 -t "interop/$name/done" -m x >/dev/null 2>&1 || true
        sleep 0.2
    done
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# Runs fleetsim (bounded); sets RUN_RC, RUN_START_MS, RUN_END_MS. Output in $TMP/NAME.out/.err.
run_fleetsim() { # NAME LIMIT_S ARGS...
    local name=$1 limit=$2
    shift 2
    RUN_START_MS=$(now_ms)
    set +e
    timeout -k 10 "$limit" "$FLEETSIM" "$@" >"$TMP/$name.out" 2>"$TMP/$name.err"
    RUN_RC=$?
    set -e
    RUN_END_MS=$(now_ms)
    echo "   fleetsim $* -> exit $RUN_RC in $(((RUN_END_MS - RUN_START_MS) / 1000)) s"
}

show_run() { # NAME: fleetsim's output, for a failure
    sed 's/^/   | /' "$TMP/$1.out" | tail -20
    sed 's/^/   | /' "$TMP/$1.err" | tail -10
}

# Runs the checker; adds its PASS/FAIL lines to the counts.
checker() {
    local out rc=0
    local strict=()
    [[ "$STRICT" == 1 ]] && strict=(--strict)
    out=$(timeout 120 python3 "$ROOT/scripts/check_telemetry.py" "$1" "${strict[@]}" "${@:2}" 2>&1) || rc=$?
    printf '%s\n' "$out"
    local p f
    p=$(printf '%s\n' "$out" | grep -c '^PASS' || true)
    f=$(printf '%s\n' "$out" | grep -c '^FAIL' || true)
    PASSED=$((PASSED + p))
    FAILED=$((FAILED + f))
    if [[ $rc -ne 0 && $f -eq 0 ]]; then
        fail "checker exited $rc without saying why"
    fi
}

# Clients fleetsim's devices connected with, per protocol ("p2" is 3.1.1, "p5" is 5), from the
# broker's log.
count_clients() { # LOG PROTO
    { grep -E "New client connected from .* as (trk|gw)-[0-9]+ \($2," "$1" || true; } | sed -E 's/.* as ([^ ]+) .*/\1/' | sort -u | wc -l
}

report_get() { # REPORT DOTTED.PATH: the value, or -1 when the report has no such key
    python3 -c 'import json, sys
v = json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."):
    v = v[k]
print(v)' "$1" "$2" 2>/dev/null || echo -1
}

# Runs a Python check script (LETTER SCRIPT TIMEOUT ARGS...) and counts its PASS/FAIL lines
# (like `checker`).
py_checks() {
    local letter=$1 script=$2 out rc=0 p f
    shift 2
    out=$(timeout "$1" python3 "$ROOT/scripts/$script" "${@:2}" 2>&1) || rc=$?
    printf '%s\n' "$out"
    p=$(printf '%s\n' "$out" | grep -c '^PASS' || true)
    f=$(printf '%s\n' "$out" | grep -c '^FAIL' || true)
    PASSED=$((PASSED + p))
    FAILED=$((FAILED + f))
    if [[ $rc -ne 0 && $f -eq 0 ]]; then
        fail "$letter  $script $2 exited $rc without saying why"
    fi
}
modbus_checks() { py_checks E modbus_interop.py "$@"; }
serial_checks() { py_checks F serial_interop.py "$@"; }
ota_checks() { py_checks G ota_interop.py "$@"; }
tui_checks() { py_checks H tui_interop.py "$@"; }
rel_checks() { py_checks I reliability_interop.py "$@"; }
tls_checks() { py_checks J tls_interop.py "$@"; }
k8s_checks() { py_checks K k8s_check.py "$@"; }
scaleout_checks() { py_checks L scaleout_interop.py "$@"; }

# Tests A-D run scenarios/smoke.toml; each test sits in an `if want X` (INTEROP_ONLY), its
# lines left as they were, not indented under it.
SCENARIO="scenarios/smoke.toml"
if want A || want B || want C || want D; then
[[ -f "$SCENARIO" ]] || die "$SCENARIO is missing"
# The checks rely on smoke.toml's fleet: QoS 1 telemetry, no link loss or drops, no events,
# topics under fleetsim/ (the shipped profiles' templates). Say so if that changes.
checker scenario --test setup "$SCENARIO"
fi

# ---------------------------------------------------------------------------------------------
if want A; then
log "Test A: telemetry contract over MQTT 3.1.1 ($SCENARIO, 50 devices, 5 s)"
start_broker A
start_sub A_all 'fleetsim/#'
A_SUB=$SUB_PID
run_fleetsim A 120 run "$SCENARIO" --broker "mqtt://127.0.0.1:$PORT" --report "$TMP/A.json" --headless
stop_sub A_all "$A_SUB"
# A new subscriber's view of the retained statuses.
timeout 20 mosquitto_sub -h 127.0.0.1 -p "$PORT" -q 1 -F '%U %r %q %t %p' -t 'fleetsim/+/+/status' \
    --retained-only -W 3 >"$TMP/A_retained.txt" 2>"$TMP/A_retained.err" || true
stop_broker # (also flushes its log, read below)
if [[ $RUN_RC -eq 0 ]]; then
    pass "A  fleetsim exit: 0 (SLOs met)"
else
    fail "A  fleetsim exit: $RUN_RC, expected 0"
    show_run A
fi
if [[ -s "$TMP/A.json" ]]; then
    checker telemetry --test A --messages "$TMP/A_all.txt" --report "$TMP/A.json" \
        --start-ms "$RUN_START_MS" --end-ms "$RUN_END_MS" --retained "$TMP/A_retained.txt" --mqtt-version 3.1.1
    total=$(report_get "$TMP/A.json" devices.total)
    n=$(count_clients "$TMP/A-mosquitto.log" p2)
    if [[ "$n" -eq "$total" ]]; then
        pass "A  broker saw MQTT 3.1.1: all $total devices connected with protocol p2 (mosquitto log)"
    else
        fail "A  broker saw $n of $total devices connect with MQTT 3.1.1 (p2)"
    fi
else
    fail "A  no report written"
fi
fi

# ---------------------------------------------------------------------------------------------
if want B; then
log "Test B: MQTT 5 ($SCENARIO --mqtt-version 5 --devices 20 --duration 4s)"
start_broker B
start_sub B_all 'fleetsim/#' -V mqttv5
B_SUB=$SUB_PID
run_fleetsim B 120 run "$SCENARIO" --broker "mqtt://127.0.0.1:$PORT" --mqtt-version 5 --devices 20 \
    --duration 4s --report "$TMP/B.json" --headless
stop_sub B_all "$B_SUB"
stop_broker # (also flushes its log, read below)
if [[ $RUN_RC -eq 0 ]]; then
    pass "B  fleetsim exit: 0 (SLOs met)"
else
    fail "B  fleetsim exit: $RUN_RC, expected 0"
    show_run B
fi
if [[ -s "$TMP/B.json" ]]; then
    checker telemetry --test B --messages "$TMP/B_all.txt" --report "$TMP/B.json" \
        --start-ms "$RUN_START_MS" --end-ms "$RUN_END_MS" --mqtt-version 5
    total=$(report_get "$TMP/B.json" devices.total)
    n5=$(count_clients "$TMP/B-mosquitto.log" p5)
    n2=$(count_clients "$TMP/B-mosquitto.log" p2)
    if [[ "$n5" -eq "$total" && "$n2" -eq 0 ]]; then
        pass "B  broker saw MQTT 5: all $total devices connected with protocol p5 (mosquitto log)"
    else
        fail "B  broker saw $n5 of $total devices connect with MQTT 5 (p5), $n2 with 3.1.1"
    fi
else
    fail "B  no report written"
fi
fi

# ---------------------------------------------------------------------------------------------
if want C; then
C_DURATION=20
log "Test C: commands ($SCENARIO --devices 4 --duration ${C_DURATION}s)"
start_broker C
start_sub C_all 'fleetsim/#'
C_SUB=$SUB_PID
# The target: the first GPS tracker (trk-000000, reporting every 5 s): its topics follow the
# profile's templates fleetsim/{profile}/{device_id}/cmd and .../cmd/response.
DEVICE=trk-000000
CMD_TOPIC="fleetsim/gps-tracker/$DEVICE/cmd"
RESP_TOPIC="fleetsim/gps-tracker/$DEVICE/cmd/response"
start_sub C_resp "$RESP_TOPIC"
C_RESP=$SUB_PID

RUN_START_MS=$(now_ms)
set +e
timeout -k 10 $((C_DURATION + 60)) "$FLEETSIM" run "$SCENARIO" --broker "mqtt://127.0.0.1:$PORT" --devices 4 \
    --duration "${C_DURATION}s" --report "$TMP/C.json" --headless >"$TMP/C.out" 2>"$TMP/C.err" &
C_PID=$!
set -e
BG_PIDS+=("$C_PID")

c_ok=1
pub_cmd() { # PAYLOAD
    timeout 10 mosquitto_pub -h 127.0.0.1 -p "$PORT" -q 1 -t "$CMD_TOPIC" -m "$1" \
        || { fail "C  mosquitto_pub of $1 failed"; c_ok=0; }
}
# The device subscribes to its command topic before it publishes its online status.
deadline=$((SECONDS + 15))
until grep -q " fleetsim/gps-tracker/$DEVICE/status {.*\"online\":true" "$TMP/C_all.txt"; do
    if ((SECONDS >= deadline)) || ! kill -0 "$C_PID" 2>/dev/null; then
        fail "C  $DEVICE did not come online within 15 s"
        c_ok=0
        break
    fi
    sleep 0.1
done
if [[ $c_ok == 1 ]]; then
    pub_cmd '{"cmd":"ping","request_id":"interop-1"}'
    pub_cmd 'not json'
    # Two reports at the profile's 5 s first, to have a rate to compare with.
    deadline=$((SECONDS + 12))
    while [[ $(grep -c " fleetsim/gps-tracker/$DEVICE/telemetry " "$TMP/C_all.txt" || true) -lt 2 ]] && ((SECONDS < deadline)); do
        sleep 0.1
    done
    pub_cmd '{"cmd":"set_interval","interval_ms":1000,"request_id":"interop-2"}'
    echo "   sent ping, 'not json' and set_interval to $CMD_TOPIC"
    deadline=$((SECONDS + 10))
    while [[ $(grep -c " $RESP_TOPIC " "$TMP/C_resp.txt" || true) -lt 3 ]]; do
        if ((SECONDS >= deadline)); then
            fail "C  only $(grep -c " $RESP_TOPIC " "$TMP/C_resp.txt" || true) of 3 responses arrived within 10 s"
            break
        fi
        sleep 0.1
    done
fi
set +e
wait "$C_PID"
RUN_RC=$?
set -e
RUN_END_MS=$(now_ms)
echo "   fleetsim run $SCENARIO --devices 4 --duration ${C_DURATION}s -> exit $RUN_RC in $(((RUN_END_MS - RUN_START_MS) / 1000)) s"
stop_sub C_all "$C_SUB"
stop_sub C_resp "$C_RESP"
if [[ $RUN_RC -eq 0 ]]; then
    pass "C  fleetsim exit: 0 (SLOs met)"
else
    fail "C  fleetsim exit: $RUN_RC, expected 0"
    show_run C
fi
if [[ -s "$TMP/C.json" ]]; then
    checker commands --test C --messages "$TMP/C_all.txt" --responses "$TMP/C_resp.txt" --report "$TMP/C.json" \
        --start-ms "$RUN_START_MS" --end-ms "$RUN_END_MS" --device "$DEVICE" \
        --run-end-ms $((RUN_START_MS + C_DURATION * 1000)) --old-interval-ms 5000
else
    fail "C  no report written"
fi
stop_broker
fi

# ---------------------------------------------------------------------------------------------
if want D; then
log "Test D: a dead broker (nothing listens on the port) is not a crash"
DEAD_PORT=$(free_port)
run_fleetsim D 60 run "$SCENARIO" --broker "mqtt://127.0.0.1:$DEAD_PORT" --devices 10 --duration 6s \
    --report "$TMP/D.json" --headless
case $RUN_RC in
    0 | 1) pass "D  fleetsim exit: $RUN_RC (an SLO verdict, not a crash)" ;;
    124 | 137) fail "D  fleetsim did not finish within 60 s (timeout)" ;;
    2)
        fail "D  fleetsim exit 2 (usage error) against a dead broker: $(tail -3 "$TMP/D.err" | tr '\n' ' ')"
        ;;
    *)
        fail "D  fleetsim exit $RUN_RC against a dead broker (a crash or runtime failure)"
        show_run D
        ;;
esac
if [[ -s "$TMP/D.json" ]]; then
    cf=$(report_get "$TMP/D.json" connections.failed)
    ma=$(report_get "$TMP/D.json" messages.acked)
    if [[ "$cf" -gt 0 ]]; then pass "D  report connections.failed = $cf (> 0)"; else fail "D  report connections.failed = $cf, expected > 0"; fi
    if [[ "$ma" -eq 0 ]]; then pass "D  report messages.acked = 0"; else fail "D  report messages.acked = $ma, expected 0"; fi
else
    fail "D  no report written"
fi
fi

# ---------------------------------------------------------------------------------------------
if want E; then
E_DURATION=60
log "Test E: Modbus slaves against mbpoll and pymodbus (TCP and RTU), and against MQTT (${E_DURATION}s)"
# 13 power meters: "meters" (8) as Modbus TCP slaves, 4 unit ids per port (ports 1-2);
# "rs485" (3) as RTU slaves on one PTY line; "cloud" (2) as TCP slaves (port 3) that also
# publish telemetry over MQTT. Device ids follow cohort order: the cloud meters are the last two.
E_DIR="$TMP/E-run"
mkdir -p "$E_DIR"
cat >"$TMP/E.toml" <<EOF
name = "modbus-interop"
duration = "${E_DURATION}s"

[modbus]
port = 0
units_per_port = 4

[[modbus.rtu]]
cohort = "rs485"
per_bus = 3

[[cohorts]]
name = "meters"
profile = "$ROOT/device-profiles/power-meter.toml"
count = 8
mqtt = false

[[cohorts]]
name = "rs485"
profile = "$ROOT/device-profiles/power-meter.toml"
count = 3
mqtt = false

[[cohorts]]
name = "cloud"
profile = "$ROOT/device-profiles/power-meter.toml"
count = 2
EOF
E_MQTT_DEVICES="pm-000011,pm-000012"
start_broker E
start_sub E_all 'fleetsim/#'
E_SUB=$SUB_PID


RUN_START_MS=$(now_ms)
set +e
timeout -k 10 $((E_DURATION + 60)) "$FLEETSIM" run "$TMP/E.toml" --headless --run-dir "$E_DIR" \
    --modbus-port 0 --broker "mqtt://127.0.0.1:$PORT" --duration "${E_DURATION}s" \
    --report "$TMP/E.json" >"$TMP/E.out" 2>"$TMP/E.err" &
E_PID=$!
set -e
BG_PIDS+=("$E_PID")
# Waits for the map (the servers are up), then polls and writes while the fleet runs.
modbus_checks $((E_DURATION + 30)) live --map "$E_DIR/modbus-map.csv" --map-timeout 30 \
    --fleetsim-cwd "$ROOT" --expect-devices 13 --expect-rtu 3 --units-per-port 4 \
    --mqtt-devices "$E_MQTT_DEVICES" --telemetry "$TMP/E_all.txt"
set +e
wait "$E_PID"
RUN_RC=$?
set -e
RUN_END_MS=$(now_ms)
echo "   fleetsim run E.toml --modbus-port 0 --duration ${E_DURATION}s -> exit $RUN_RC in $(((RUN_END_MS - RUN_START_MS) / 1000)) s"
stop_sub E_all "$E_SUB"
stop_broker
if [[ $RUN_RC -ne 0 ]]; then
    show_run E
fi
modbus_checks 60 report --report "$TMP/E.json" --exit-code "$RUN_RC" --min-writes 4
fi

# ---------------------------------------------------------------------------------------------
if want F; then
F_DURATION=60
log "Test F: serial devices on PTYs and a real port (a socat pair) against pyserial, pynmea2 and pymodbus (${F_DURATION}s)"
# Cohorts, in device-id order: "gps" (gnss-0000, watched through its unplug; gnss-0001, read
# until it has a fix), "modem" (modem-0002), "meter" (din-0003), "weather" (wx-004), each on a
# PTY linked under $F_DIR/serial/, and "rig" (gnss-0005) on a real port: one end of a socat PTY
# pair, read at the other end. The GPS ports are unplugged at 25 s for 5 s, the modem loses the
# network at 30 s for 6 s. The receivers' ttff is 20-40 s (the profile); the seed is fixed, and
# with seed 12 gnss-0001 has its first fix at about 21 s, before the unplug, so the test also
# sees whether a fix survives an unplug (and the modem's link model, mtbf 10m, does not drop the
# network during the dialogue, as it could on another seed).
F_DIR="$TMP/F-run"
F_RIG="$TMP/F-rigA"
F_FAR="$TMP/F-rigB"
F_UNPLUG_AT=25
F_UNPLUG_FOR=5
F_OUTAGE_AT=30
F_OUTAGE_FOR=6
socat -d -d "pty,raw,echo=0,link=$F_RIG" "pty,raw,echo=0,link=$F_FAR" >"$TMP/F-socat.log" 2>&1 &
F_SOCAT=$!
BG_PIDS+=("$F_SOCAT")
deadline=$((SECONDS + 10))
until [[ -e "$F_RIG" && -e "$F_FAR" ]]; do
    if ((SECONDS >= deadline)) || ! kill -0 "$F_SOCAT" 2>/dev/null; then
        sed 's/^/   | /' "$TMP/F-socat.log" >&2
        die "socat did not link $F_RIG and $F_FAR within 10 s"
    fi
    sleep 0.1
done
log "socat pair: pid $F_SOCAT, $F_RIG -> $(readlink "$F_RIG"), $F_FAR -> $(readlink "$F_FAR")"
cat >"$TMP/F.toml" <<EOF
name = "serial-interop"
seed = 12
duration = "${F_DURATION}s"
clock = "wall"

[ramp]
mode = "all"

[[cohorts]]
name = "gps"
profile = "$ROOT/device-profiles/gnss-receiver.toml"
count = 2

[[cohorts]]
name = "modem"
profile = "$ROOT/device-profiles/lte-modem.toml"
count = 1

[[cohorts]]
name = "meter"
profile = "$ROOT/device-profiles/rtu-meter.toml"
count = 1

[[cohorts]]
name = "weather"
profile = "$ROOT/device-profiles/weather-station.toml"
count = 1

[[cohorts]]
name = "rig"
profile = "$ROOT/device-profiles/gnss-receiver.toml"
count = 1

[[serial]]
cohort = "rig"
port = "$F_RIG"
baud = 9600

[[events]]
at = "${F_UNPLUG_AT}s"
kind = "unplug"
cohort = "gps"
duration = "${F_UNPLUG_FOR}s"

[[events]]
at = "${F_OUTAGE_AT}s"
kind = "outage"
cohort = "modem"
duration = "${F_OUTAGE_FOR}s"

[[slo]]
name = "every port opened"
metric = "serial.open_errors"
max = 0.0
EOF


RUN_START_MS=$(now_ms)
set +e
timeout -k 10 $((F_DURATION + 60)) "$FLEETSIM" run "$TMP/F.toml" --headless --run-dir "$F_DIR" \
    --duration "${F_DURATION}s" --report "$TMP/F.json" >"$TMP/F.out" 2>"$TMP/F.err" &
F_PID=$!
set -e
BG_PIDS+=("$F_PID")
# Waits for the map (the ports are up), then reads, talks and polls while the fleet runs.
serial_checks $((F_DURATION + 30)) live --map "$F_DIR/serial-map.csv" --map-timeout 30 \
    --fleetsim-cwd "$ROOT" --expect nmea=3,at_modem=1,modbus_rtu=1,lines=1 \
    --real-port "$F_RIG" --real-far-end "$F_FAR" --ttff-max 40 \
    --unplug-at "$F_UNPLUG_AT" --unplug-for "$F_UNPLUG_FOR" \
    --outage-at "$F_OUTAGE_AT" --outage-for "$F_OUTAGE_FOR"
set +e
wait "$F_PID"
RUN_RC=$?
set -e
RUN_END_MS=$(now_ms)
echo "   fleetsim run F.toml --run-dir F-run --duration ${F_DURATION}s -> exit $RUN_RC in $(((RUN_END_MS - RUN_START_MS) / 1000)) s"
kill "$F_SOCAT" 2>/dev/null || true
wait "$F_SOCAT" 2>/dev/null || true
if [[ $RUN_RC -ne 0 ]]; then
    show_run F
fi
serial_checks 60 report --report "$TMP/F.json" --exit-code "$RUN_RC" --ports 6 --unplugs 2 \
    --min-commands 10 --min-command-errors 3 --run-dir "$F_DIR"
fi

# ---------------------------------------------------------------------------------------------
if want G; then
G_DURATION=45
G_SCENARIO="scenarios/ota-lab.toml"
log "Test G: OTA firmware jobs against an independent job server (AWS IoT Jobs and generic, paho-mqtt) and a Range-capable HTTP server ($G_SCENARIO, ${G_DURATION}s)"
if [[ ! -f "$G_SCENARIO" ]]; then
    fail "G  $G_SCENARIO is missing"
else
start_broker G
# The job server subscribes first and then starts fleetsim itself (so the devices' start-next
# on connect finds it), queues the jobs once all 6 devices are online (the AWS devices and the
# generic ones at once), waits for the run's end (bounded) and checks the report. Its MQTT
# traffic, HTTP request log and summary, and fleetsim's output: $TMP/G-traffic.txt,
# G-http.txt, G-server.json, G.out, G.err (INTEROP_KEEP_TMP=1 keeps them).
ota_checks $((G_DURATION + 120)) live --port "$PORT" --report "$TMP/G.json" --log-dir "$TMP" --name G \
    --run-timeout $((G_DURATION + 60)) -- "$FLEETSIM" run "$G_SCENARIO" --broker "mqtt://127.0.0.1:$PORT" \
    --duration "${G_DURATION}s" --report "$TMP/G.json" --headless --run-dir "$TMP/G-run"
stop_broker
fi
fi

# ---------------------------------------------------------------------------------------------
if want H; then
log "Test H: /metrics through prometheus_client and the control API; run --tui and top --attach driven in tmux (scenarios/demo.toml)"
# scripts/tui_interop.py starts every fleetsim itself (from $ROOT, so `run` plays the demo:
# 2,000 devices), reads screens with tmux -L fleetsim-interop (sessions tui-$$ and top-$$) and
# ends what it started. Outputs, reports and every screen it read: $TMP/H-* (INTEROP_KEEP_TMP=1).
H_ARGS=(--fleetsim "$FLEETSIM" --tmp "$TMP" --cwd "$ROOT" --tag "$$")
# run --headless --duration 30s --api-listen 127.0.0.1:0 (about 35 s: paused 2-3 s on the way, the drain)
tui_checks 150 metrics "${H_ARGS[@]}" --run-timeout 100
# run --tui --duration 60s in a 140x45 tmux session, quit with q once the checks are done (10-30 s)
tui_checks 150 tui "${H_ARGS[@]}"
# two run --headless --devices 300 --duration 40s --api-listen, and top --attach over both
tui_checks 120 attach "${H_ARGS[@]}"
fi

# ---------------------------------------------------------------------------------------------
if want I; then
log "Test I: reliability against mosquitto and paho-mqtt: broker restart, half-open, partition/spike/outage, signals, MQTT 5 rejects, pre-flight"
# scripts/reliability_interop.py starts its own mosquittos (fresh config and port each; the
# restart check's with persistence), subscribers and fleetsims, and ends them on the way out.
# Configs, broker logs, reports and event logs: $TMP/I/ (INTEROP_KEEP_TMP=1 keeps them).
I_ARGS=(--fleetsim "$FLEETSIM" --tmp "$TMP/I" --cwd "$ROOT")
rel_checks 90 restart "${I_ARGS[@]}"   # 200 devices, 30 s; mosquitto down from 10 s to 13 s
rel_checks 80 halfopen "${I_ARGS[@]}"  # 100 devices, 24 s; mosquitto frozen from 6 s to 12 s
rel_checks 100 events "${I_ARGS[@]}"   # scenarios/reliability.toml: 200 devices, 40 s
rel_checks 90 api "${I_ARGS[@]}"       # 100 devices, 30 s, faults through the control API
rel_checks 90 signals "${I_ARGS[@]}"   # 500 devices, twice: SIGINT, SIGTERM once all are online
rel_checks 60 reject "${I_ARGS[@]}"    # 20 devices over MQTT 5, 8 s, an acl_file
rel_checks 60 preflight "${I_ARGS[@]}" # --devices (hard open-file limit + 10,000)
fi

# ---------------------------------------------------------------------------------------------
if want J; then
log "Test J: TLS and identities against mosquitto: fleetsim certs, mqtts:// with per-device certificates, verification, passwords from a CSV"
# scripts/tls_interop.py starts its own mosquittos (a TLS listener requiring certificates, a
# listener with a password_file) and ends them on the way out. Files: $TMP/J/.
tls_checks 300 --fleetsim "$FLEETSIM" --tmp "$TMP/J"   # seven short runs of 200 devices
fi

# ---------------------------------------------------------------------------------------------
if want K; then
log "Test K: Kubernetes deployment without a cluster: kustomize renders, schemas, the Job's rules, fleetsim validate, each pod's slice (--dry-run)"
# scripts/k8s_check.py runs `kubectl kustomize` on deploy/kubernetes/base and every overlay, and
# fleetsim (validate, certs, run --dry-run) in a copy of each pod's file system under $TMP/K
# (INTEROP_KEEP_TMP=1 keeps it, with the live pods' logs); then overlays/smoke's 3 pods for
# 15 s (servers on 127.0.0.1 only, each ended by the script). About 25 s in all.
k8s_checks 180 --fleetsim "$FLEETSIM" --kubectl "$(command -v kubectl)" --tmp "$TMP/K"
fi

# ---------------------------------------------------------------------------------------------
if want L; then
log "Test L: past one process against mosquitto: --processes 3 over three brokers, a child killed, SIGTERM to the parent, gateways"
scaleout_checks 360 all --fleetsim "$FLEETSIM" --tmp "$TMP/L"   # five runs, about 100 s
fi

# cleanup (the EXIT trap) prints "N passed, M failed" and sets the exit code.
