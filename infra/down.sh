#!/usr/bin/env bash
# Stop exactly what up.sh started: each service's session (its pid and its children), by
# the pids up.sh recorded. Idempotent: nothing recorded, nothing stopped.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

stop() {
    local name="$1" pidfile="$CROSSTVR_RUN_DIR/$1.pid"
    [ -f "$pidfile" ] || return 0
    local pid; pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
        # setsid made pid the leader of its own process group: signal the whole group
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        if kill -0 "$pid" 2>/dev/null; then kill -KILL -- "-$pid" 2>/dev/null; fi
        echo "[down] $name stopped (pid $pid)"
    fi
    # children that outlived their leader (same process group) are stopped too
    if pgrep -g "$pid" >/dev/null 2>&1; then kill -KILL -- "-$pid" 2>/dev/null; fi
    rm -f "$pidfile"
}

for name in serve mlflow prefect-server; do stop "$name"; done
