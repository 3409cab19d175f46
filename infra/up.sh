#!/usr/bin/env bash
# Start the local stack on 127.0.0.1: Prefect server (SQLite), MLflow tracking server, and
# the process serving the deployments. Idempotent: a service whose pid is alive is kept.
# Each service runs in its own session (setsid) so `down` can stop exactly what was started.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$CROSSTVR_REPO"
BIN="$CROSSTVR_VENV/bin"

alive() { [ -f "$CROSSTVR_RUN_DIR/$1.pid" ] && kill -0 "$(cat "$CROSSTVR_RUN_DIR/$1.pid")" 2>/dev/null; }

start() {  # start NAME CMD...
    local name="$1"; shift
    if alive "$name"; then
        echo "[up] $name already running (pid $(cat "$CROSSTVR_RUN_DIR/$name.pid"))"
        return
    fi
    setsid "$@" >"$CROSSTVR_LOG_DIR/$name.log" 2>&1 < /dev/null &
    echo $! > "$CROSSTVR_RUN_DIR/$name.pid"
    echo "[up] $name started (pid $!, log $CROSSTVR_LOG_DIR/$name.log)"
}

wait_for() {  # wait_for NAME SECONDS CHECK-CMD...
    local name="$1" seconds="$2"; shift 2
    for _ in $(seq 1 "$seconds"); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        if ! alive "$name"; then
            echo "[up] $name exited; last log lines:" >&2; tail -20 "$CROSSTVR_LOG_DIR/$name.log" >&2
            exit 1
        fi
        sleep 1
    done
    echo "[up] $name not ready after ${seconds}s; last log lines:" >&2
    tail -20 "$CROSSTVR_LOG_DIR/$name.log" >&2
    exit 1
}

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for pair in "prefect-server:$CROSSTVR_PREFECT_PORT" "mlflow:$CROSSTVR_MLFLOW_PORT"; do
    name="${pair%%:*}"; port="${pair##*:}"
    if ! alive "$name" && port_taken "$port"; then
        echo "[up] port $port (for $name) is taken by another process; set" \
             "CROSSTVR_PREFECT_PORT / CROSSTVR_MLFLOW_PORT to free ports" >&2
        exit 1
    fi
done

mkdir -p "$CROSSTVR_HOME/mlflow/artifacts"
start prefect-server "$BIN/prefect" server start --host 127.0.0.1 --port "$CROSSTVR_PREFECT_PORT"
start mlflow "$BIN/mlflow" server --host 127.0.0.1 --port "$CROSSTVR_MLFLOW_PORT" --workers 1 \
    --backend-store-uri "sqlite:///$CROSSTVR_HOME/mlflow/mlflow.db" \
    --artifacts-destination "$CROSSTVR_HOME/mlflow/artifacts"
http_ok() { "$BIN/python" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" "$1"; }
wait_for prefect-server 120 http_ok "http://127.0.0.1:$CROSSTVR_PREFECT_PORT/api/health"
wait_for mlflow 120 http_ok "http://127.0.0.1:$CROSSTVR_MLFLOW_PORT/health"
start serve "$BIN/python" -m flows.serve
wait_for serve 120 "$BIN/prefect" deployment inspect crosstvr/full-benchmark
echo "[up] Prefect UI  http://127.0.0.1:$CROSSTVR_PREFECT_PORT"
echo "[up] MLflow UI   $MLFLOW_TRACKING_URI"
