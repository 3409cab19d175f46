#!/usr/bin/env bash
# Install what is missing: Debian's ffmpeg, then a .venv with the pinned stack.
# Idempotent: a stamp holding the hash of pyproject.toml skips a second install.
# ffmpeg's apt install runs beside the Python install; the Python stack goes in with uv when
# uv installs (several times faster than pip at unpacking the ~7 GB of wheels), else with
# pip. uv is given exactly the package sources pip is configured with (infra/pip_to_uv.sh).
# Then the stack's bytecode is written once: where PYTHONDONTWRITEBYTECODE is set, no
# import ever writes it, and every process (each Ray worker, server, flow run, test) would
# compile torch, Ray, Prefect and MLflow from source again: about 20 s per process against 9.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$CROSSTVR_REPO"

ffmpeg_pid=""
ffmpeg_log="$CROSSTVR_LOG_DIR/apt-ffmpeg.log"
if ! command -v ffmpeg >/dev/null || ! command -v ffprobe >/dev/null; then
    echo "[bootstrap] installing Debian ffmpeg (log: $ffmpeg_log)"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    ( $SUDO apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq ffmpeg ) \
        >"$ffmpeg_log" 2>&1 &
    ffmpeg_pid=$!
fi
wait_for_ffmpeg() {
    [ -n "$ffmpeg_pid" ] || return 0
    if ! wait "$ffmpeg_pid"; then
        echo "[bootstrap] apt-get could not install ffmpeg:" >&2
        tail -n 20 "$ffmpeg_log" >&2
        exit 1
    fi
    ffmpeg_pid=""
}
trap 'wait_for_ffmpeg' EXIT

PYTHON="${CROSSTVR_PYTHON:-$(command -v python3.11 || command -v python3)}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "[bootstrap] need Python 3.11 (the pinned torch wheels are cp311); got $("$PYTHON" -V)" >&2
    exit 1
fi

stamp="$CROSSTVR_VENV/.crosstvr-install-stamp"
# the pins, plus what this script does with them (a venv made before bytecode was compiled
# at install gets it once)
want="$(sha256sum pyproject.toml | cut -d' ' -f1) compiled"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$CROSSTVR_VENV/bin/crosstvr" ]; then
    exit 0
fi
echo "[bootstrap] creating $CROSSTVR_VENV with the pinned stack (a few minutes the first time)"
[ -x "$CROSSTVR_VENV/bin/python" ] || "$PYTHON" -m venv "$CROSSTVR_VENV"
pip=("$CROSSTVR_VENV/bin/pip" --disable-pip-version-check)

install_with_uv() {
    "${pip[@]}" install -q "uv==0.13.9" || return 1
    local -a sources
    mapfile -t sources < <("$CROSSTVR_REPO/infra/pip_to_uv.sh" "$CROSSTVR_VENV/bin/pip")
    # the cache lies beside the venv, so uv hard-links the unpacked files instead of copying
    # them; removing it afterwards leaves the venv whole
    local cache="$CROSSTVR_HOME/uv-cache" cert
    local -a env=(UV_CACHE_DIR="$cache")
    # pip's certificate bundle, for uv too (it reads SSL_CERT_FILE)
    cert="$("${pip[@]}" config list 2>/dev/null | sed -n "s/^[^=]*\.cert='\(.*\)'$/\1/p" | tail -n 1)"
    [ -z "${SSL_CERT_FILE:-}" ] && [ -n "$cert" ] && env+=(SSL_CERT_FILE="$cert")
    env "${env[@]}" "$CROSSTVR_VENV/bin/uv" pip install -q \
        --python "$CROSSTVR_VENV/bin/python" "${sources[@]}" -e ".[dev]" || return 1
    rm -rf "$cache"
}
if ! install_with_uv; then
    echo "[bootstrap] uv did not install the stack; installing with pip"
    "${pip[@]}" install -q -U pip
    "${pip[@]}" install -q -e ".[dev]"
fi
# all of site-packages (about 30 s on 2 cores; what is already compiled is skipped). A few
# packages ship files that are not Python 3 (test data, templates): compileall reports them
# and goes on, so its exit status says nothing here
site="$("$CROSSTVR_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
"$CROSSTVR_VENV/bin/python" -m compileall -q -j 0 "$site" >"$CROSSTVR_LOG_DIR/compileall.log" 2>&1 || true
"$CROSSTVR_VENV/bin/python" -c "import torch, torchvision, open_clip, ray, lancedb, prefect, mlflow, ffmpeg" \
    || { echo "[bootstrap] the installed stack does not import" >&2; exit 1; }
wait_for_ffmpeg
echo "$want" > "$stamp"
echo "[bootstrap] done"
