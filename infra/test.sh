#!/usr/bin/env bash
# Chromium for the browser test, lint, then the test suite (unit + integration; the stack
# test starts and stops its own Prefect server, MLflow server and serve process on free
# loopback ports). `make benchmark` needs no browser, so only this script installs one.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$CROSSTVR_REPO"
"$CROSSTVR_REPO/infra/install_chromium.sh"  # for the gallery's browser test; never fails
"$CROSSTVR_VENV/bin/ruff" check .
exec "$CROSSTVR_VENV/bin/python" -m pytest "$@"
