#!/usr/bin/env bash
# Trigger `crosstvr/full-benchmark` through the Prefect CLI, wait for it, print the results.
# Arguments are config overrides (key=value), e.g. train.epochs=3; CROSSTVR_CONFIG names a
# YAML/TOML config file readable by the serving process.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$CROSSTVR_REPO"
BIN="$CROSSTVR_VENV/bin"

params="$("$BIN/python" - "$@" <<'PY'
import json, os, sys
params = {"overrides": sys.argv[1:]}
if os.environ.get("CROSSTVR_CONFIG"):
    params["config_file"] = os.path.abspath(os.environ["CROSSTVR_CONFIG"])
print(json.dumps(params))
PY
)"
# fail fast on a bad override, before a flow run is created
"$BIN/crosstvr" config ${CROSSTVR_CONFIG:+--config "$CROSSTVR_CONFIG"} "$@" >/dev/null

log="$CROSSTVR_LOG_DIR/benchmark-$(date +%Y%m%d-%H%M%S).log"
started=$(date +%s)
set +e
"$BIN/prefect" deployment run crosstvr/full-benchmark --params "$params" --watch 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
flow_run_id="$(grep -oE 'UUID: [0-9a-f-]{36}' "$log" | head -1 | cut -d' ' -f2)"
echo "flow run $flow_run_id finished in $(( $(date +%s) - started )) s (exit $status)"
if [ "$status" -ne 0 ] || ! grep -q "Completed" "$log"; then
    echo "the flow run did not complete; flow-run output: $CROSSTVR_LOG_DIR/serve.log" >&2
    tail -30 "$CROSSTVR_LOG_DIR/serve.log" >&2
    exit 1
fi
"$BIN/crosstvr" results --flow-run-id "$flow_run_id" ${CROSSTVR_CONFIG:+--config "$CROSSTVR_CONFIG"}
