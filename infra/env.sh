# Sourced by every infra script: where state lives, where services listen, offline settings.
# Everything binds to 127.0.0.1; nothing leaves the machine.
CROSSTVR_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CROSSTVR_REPO
export CROSSTVR_HOME="${CROSSTVR_HOME:-$CROSSTVR_REPO/.crosstvr}"
export CROSSTVR_VENV="${CROSSTVR_VENV:-$CROSSTVR_REPO/.venv}"
export CROSSTVR_PREFECT_PORT="${CROSSTVR_PREFECT_PORT:-4200}"
export CROSSTVR_MLFLOW_PORT="${CROSSTVR_MLFLOW_PORT:-5000}"
export CROSSTVR_RUN_DIR="$CROSSTVR_HOME/run"     # pid files
export CROSSTVR_LOG_DIR="$CROSSTVR_HOME/logs"

export PREFECT_HOME="${PREFECT_HOME:-$CROSSTVR_HOME/prefect}"
export PREFECT_API_URL="http://127.0.0.1:$CROSSTVR_PREFECT_PORT/api"
export PREFECT_RUNNER_POLL_FREQUENCY="${PREFECT_RUNNER_POLL_FREQUENCY:-1}"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_UI_ENABLED="${PREFECT_UI_ENABLED:-true}"
export MLFLOW_TRACKING_URI="http://127.0.0.1:$CROSSTVR_MLFLOW_PORT"

# Offline: no telemetry, no hub look-ups (the Python side sets the same defaults itself).
export DO_NOT_TRACK=true
export MLFLOW_DISABLE_TELEMETRY=true
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
export RAY_USAGE_STATS_ENABLED=0
export RAY_AUTH_MODE=disabled
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
export HF_HUB_OFFLINE=1

mkdir -p "$CROSSTVR_HOME" "$PREFECT_HOME" "$CROSSTVR_RUN_DIR" "$CROSSTVR_LOG_DIR"
