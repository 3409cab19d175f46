#!/usr/bin/env bash
# Install what is missing: Debian's ffmpeg, then a .venv with the pinned stack.
# Idempotent: a stamp holding the hash of pyproject.toml skips a second pip install.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$CROSSTVR_REPO"

if ! command -v ffmpeg >/dev/null || ! command -v ffprobe >/dev/null; then
    echo "[bootstrap] installing Debian ffmpeg"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq ffmpeg >/dev/null
fi
"$CROSSTVR_REPO/infra/install_chromium.sh"  # for the gallery browser test; never fails

PYTHON="${CROSSTVR_PYTHON:-$(command -v python3.11 || command -v python3)}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "[bootstrap] need Python 3.11 (the pinned torch wheels are cp311); got $("$PYTHON" -V)" >&2
    exit 1
fi

stamp="$CROSSTVR_VENV/.crosstvr-install-stamp"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$CROSSTVR_VENV/bin/crosstvr" ]; then
    exit 0
fi
echo "[bootstrap] creating $CROSSTVR_VENV with the pinned stack (a few minutes the first time)"
[ -x "$CROSSTVR_VENV/bin/python" ] || "$PYTHON" -m venv "$CROSSTVR_VENV"
"$CROSSTVR_VENV/bin/pip" install -q --disable-pip-version-check -U pip
"$CROSSTVR_VENV/bin/pip" install -q --disable-pip-version-check -e ".[dev]"
"$CROSSTVR_VENV/bin/python" -c "import torch, torchvision, open_clip, ray, lancedb, prefect, mlflow, ffmpeg" \
    || { echo "[bootstrap] the installed stack does not import" >&2; exit 1; }
echo "$want" > "$stamp"
echo "[bootstrap] done"
