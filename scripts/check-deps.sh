#!/usr/bin/env bash
# The crate boundaries of docs/architecture.md, checked with `cargo tree`:
# fleet-core and fleet-metrics never depend on tokio; fleet-engine never depends on an adapter
# or a UI; adapters do not depend on each other; anyhow lives only in the binary; the
# dashboard and the API see snapshots and commands, not the engine.
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
forbid fleet-tui fleet-engine "the dashboard renders snapshots and sends commands, nothing else"
forbid fleet-tui tokio "the dashboard renders snapshots and sends commands, nothing else"
forbid fleet-tui fleet-mqtt "the dashboard knows no protocol"
forbid fleet-tui anyhow "libraries use thiserror"
forbid fleet-api fleet-engine "the API speaks FleetPort, not the engine"
forbid fleet-api fleet-mqtt "the API knows no device protocol"
forbid fleet-api ratatui "the API knows no UI"
forbid fleet-api anyhow "libraries use thiserror"
forbid fleet-engine fleet-api "the engine knows no control surface"
forbid fleet-engine fleet-tui "the engine knows no UI"
forbid fleet-core rustls "the device model holds TLS settings and secrets, not a TLS library"
forbid fleet-engine rustls "the engine knows no protocol"
forbid fleet-mqtt rcgen "the adapter uses certificates; fleetsim certs makes them"
forbid fleetsim aws-lc-rs "one crypto provider: rustls and rcgen use ring"
exit $fail
