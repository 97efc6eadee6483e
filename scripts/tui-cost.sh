#!/usr/bin/env bash
# What the dashboard costs: runs `fleetsim run --tui` in a detached tmux (a real terminal,
# 200x60) with N devices on the virtual clock, and reads the CPU time of the dashboard's own
# thread ("tui") from /proc after S seconds. The dashboard renders a snapshot, so its cost
# should not depend on N.
#
#   bash scripts/tui-cost.sh [DEVICES] [SECONDS]      (default 100000 60)
#
# Prints: devices, seconds, tui thread CPU seconds, share of one core; and the process's.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEVICES="${1:-100000}"
SECS="${2:-60}"
BIN="${FLEETSIM:-$ROOT/target/release/fleetsim}"
[[ -x "$BIN" ]] || (cd "$ROOT" && cargo build --release -q)
TMP="$(mktemp -d)"
SOCK="fleetsim-tui-cost-$$"
cleanup() { tmux -L "$SOCK" kill-server 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
tmux -L "$SOCK" new-session -d -x 200 -y 60 \
    "$BIN run --tui --clock virtual --devices $DEVICES --duration 365d --run-dir $TMP"
# The pane runs the command through sh -c (which may exec it): find fleetsim itself.
pid=""
for _ in $(seq 1 100); do
    pane="$(tmux -L "$SOCK" display -p '#{pane_pid}' 2>/dev/null || true)"
    if [[ -n "$pane" ]]; then
        if [[ "$(cat /proc/"$pane"/comm 2>/dev/null)" == fleetsim ]]; then
            pid="$pane"
        else
            pid="$(pgrep -P "$pane" -x fleetsim | head -1 || true)"
        fi
    fi
    [[ -n "$pid" ]] && break
    sleep 0.1
done
[[ -n "$pid" ]] || { echo "fleetsim did not start" >&2; exit 1; }
tick="$(getconf CLK_TCK)"
thread_cpu() { # pid, thread name -> CPU seconds of that thread
    local t
    for t in /proc/"$1"/task/*; do
        if [[ "$(cat "$t/comm" 2>/dev/null)" == "$2" ]]; then
            awk -v tk="$tick" '{print ($14 + $15) / tk}' "$t/stat"
            return
        fi
    done
    echo 0
}
proc_cpu() { awk -v tk="$tick" '{print ($14 + $15) / tk}' /proc/"$1"/stat; }
sleep 5 # past start-up
t0="$(thread_cpu "$pid" tui)"; p0="$(proc_cpu "$pid")"; s0="$(date +%s.%N)"
sleep "$SECS"
t1="$(thread_cpu "$pid" tui)"; p1="$(proc_cpu "$pid")"; s1="$(date +%s.%N)"
tmux -L "$SOCK" capture-pane -p > "$TMP/screen.txt" || true
tmux -L "$SOCK" send-keys q
awk -v d="$DEVICES" -v t0="$t0" -v t1="$t1" -v p0="$p0" -v p1="$p1" -v s0="$s0" -v s1="$s1" 'BEGIN {
    w = s1 - s0;
    printf "devices %d  over %.1f s: dashboard thread %.2f s CPU = %.2f %% of one core; whole process %.1f s CPU (%.0f %%)\n",
        d, w, t1 - t0, 100 * (t1 - t0) / w, p1 - p0, 100 * (p1 - p0) / w }'
grep -m1 "steps/s" "$TMP/screen.txt" || true
