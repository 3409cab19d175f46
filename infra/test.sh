#!/usr/bin/env bash
# Lint, then the test suite (unit + integration; the stack test starts and stops its own
# Prefect server, MLflow server and serve process on free loopback ports).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$CROSSTVR_REPO"
"$CROSSTVR_VENV/bin/ruff" check .
exec "$CROSSTVR_VENV/bin/python" -m pytest "$@"
