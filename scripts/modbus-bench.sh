#!/usr/bin/env bash
# Modbus load benchmark: scenarios/modbus-plant.toml (10,000 power meters, 9,968 on 100 Modbus
# TCP ports) polled by the lean poller in crates/fleet-modbus/examples/modbus_poll.rs, both on
# this machine. Prints the poller's requests/s and round trips, fleetsim's service time and the
# CPU fleetsim spent per request.
#
#   bash scripts/modbus-bench.sh [SECONDS=40] [CONNECTIONS_PER_PORT=1] [REGISTERS=18]
#
# Bounded: fleetsim runs SECONDS + 25 s at most; the poller SECONDS.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SECS="${1:-40}"
CONNS="${2:-1}"
REGS="${3:-18}"
TMP="$(mktemp -d)"
trap 'kill "$FLEET_PID" 2>/dev/null || true; rm -rf "$TMP"' EXIT

cargo build --release -q
cargo build --release -q -p fleet-modbus --example modbus_poll

./target/release/fleetsim run scenarios/modbus-plant.toml --headless --progress-every 1s \
    --modbus-port 0 --run-dir "$TMP/run" --duration "$((SECS + 20))s" \
    --report "$TMP/report.json" >"$TMP/fleet.out" 2>&1 &
FLEET_PID=$!

# Wait (at most 30 s) for every meter to be up.
for _ in $(seq 1 150); do
    grep -q "online 10000/10000" "$TMP/fleet.out" 2>/dev/null && break
    sleep 0.2
done
grep -q "online 10000/10000" "$TMP/fleet.out" || { echo "the fleet did not come up"; cat "$TMP/fleet.out"; exit 1; }

./target/release/examples/modbus_poll "$TMP/run/modbus-map.csv" --duration "${SECS}s" \
    --connections "$CONNS" --registers "$REGS"

for _ in $(seq 1 150); do
    kill -0 "$FLEET_PID" 2>/dev/null || break
    sleep 0.2
done
wait "$FLEET_PID" || true
grep -E "^(modbus|             service|process|generator)" "$TMP/fleet.out"
python3 - "$TMP/report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
m, p = r["modbus"], r["process"]
cpu = p["cpu_user_s"] + p["cpu_system_s"]
print(f"fleetsim: {m['requests']} requests, {cpu:.1f} s CPU in all "
      f"({cpu / max(m['requests'], 1) * 1e6:.2f} us per request, whole run), "
      f"peak RSS {p['rss_peak_bytes'] / 2**20:.1f} MiB for 10,000 devices")
PY
