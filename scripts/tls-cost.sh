#!/usr/bin/env bash
# What TLS sessions cost fleetsim: the same fleet once over plain MQTT and once over TLS with a
# certificate per device, against one local mosquitto (a plain and a TLS listener with
# require_certificate). Prints, per run: peak RSS, connections, CPU user/system, messages acked.
#
#   bash scripts/tls-cost.sh [DEVICES]        # default 5000; needs mosquitto, a release build
#
# docs/benchmarks.md (## TLS) has the figures of the reference machine.
set -euo pipefail
N="${1:-5000}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
F="${FLEETSIM:-$ROOT/target/release/fleetsim}"
[[ -x "$F" ]] || (cd "$ROOT" && cargo build --release -q)
export PATH="$PATH:/usr/sbin"
TMP="$(mktemp -d)"
MP=""
trap '[[ -n "$MP" ]] && kill "$MP" 2>/dev/null; rm -rf "$TMP"' EXIT
cd "$TMP"
port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PLAIN=$(port)
TLS=$(port)
scen() { # NAME URL [TLS TABLE]
    cat > "$1.toml" <<EOT
name = "$1"
duration = "40s"
drain = "3s"
[ramp]
mode = "rate"
per_second = 500
[broker]
url = "$2"
${3:-}
[[cohorts]]
name = "env"
profile = "$ROOT/device-profiles/env-sensor.toml"
count = $N
EOT
}
scen plain "mqtt://127.0.0.1:$PLAIN"
scen tls "mqtts://127.0.0.1:$TLS" '[broker.tls]
ca_file = "certs/ca.pem"
client_cert = "certs/devices/{device_id}.pem"
client_key = "certs/devices/{device_id}.key"'
"$F" certs tls.toml --cohort env --out certs > /dev/null
cat > m.conf <<EOT
per_listener_settings true
listener $PLAIN 127.0.0.1
allow_anonymous true
listener $TLS 127.0.0.1
cafile $TMP/certs/ca.pem
certfile $TMP/certs/server.pem
keyfile $TMP/certs/server.key
require_certificate true
use_identity_as_username true
max_connections -1
EOT
[[ $(id -u) -eq 0 ]] && echo "user root" >> m.conf
ulimit -n "$(ulimit -Hn)"
mosquitto -c m.conf > mosquitto.out 2>&1 &
MP=$!
sleep 1
echo "run    peak_rss_bytes  connections  cpu_user_s  cpu_system_s  acked"
for k in plain tls; do
    timeout 300 "$F" run "$k.toml" --headless --report "$k.json" > "$k.out" 2>&1 || true
    python3 -c "import json, sys; r = json.load(open('$k.json')); p = r['process']
print(f\"$k  {p['rss_peak_bytes']:>14}  {r['connections']['succeeded']:>11}  {p['cpu_user_s']:>10.2f}  {p['cpu_system_s']:>12.2f}  {r['messages']['acked']:>5}\")"
done
