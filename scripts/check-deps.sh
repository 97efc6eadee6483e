#!/usr/bin/env bash
# The crate boundaries of docs/architecture.md, checked with `cargo tree`:
# fleet-core and fleet-metrics never depend on tokio; fleet-engine never depends on an adapter
# or a UI; adapters do not depend on each other; anyhow lives only in the binary.
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0
deps() { cargo tree -q -p "$1" -e normal --prefix none | awk '{print $1}' | sort -u; }
forbid() { # crate, forbidden dependency, why
    if deps "$1" | grep -qx "$2"; then
        echo "FAIL  $1 depends on $2: $3"
        fail=1
    else
        echo "ok    $1 does not depend on $2"
    fi
}
forbid fleet-core tokio "the device model is sans-IO"
forbid fleet-metrics tokio "metrics are plain data"
forbid fleet-core anyhow "libraries use thiserror; anyhow lives in the binary"
forbid fleet-metrics anyhow "libraries use thiserror"
forbid fleet-engine anyhow "libraries use thiserror"
forbid fleet-mqtt anyhow "libraries use thiserror"
forbid fleet-engine fleet-mqtt "the engine knows no protocol"
forbid fleet-engine rumqttc "the engine knows no protocol"
forbid fleet-engine ratatui "the engine knows no UI"
forbid fleet-engine fleet-modbus "the engine knows no protocol"
forbid fleet-engine tokio-serial "the engine knows no port"
forbid fleet-modbus fleet-mqtt "adapters do not depend on each other"
forbid fleet-mqtt fleet-modbus "adapters do not depend on each other"
forbid fleet-modbus anyhow "libraries use thiserror"
forbid fleet-serial anyhow "libraries use thiserror"
forbid fleet-serial fleet-mqtt "adapters do not depend on each other"
forbid fleet-engine fleet-serial "the engine knows no protocol"
exit $fail
