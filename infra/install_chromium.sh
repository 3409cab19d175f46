#!/usr/bin/env bash
# Install Debian's headless-capable Chromium for the gallery's browser test (tests/test_gallery.py).
# Idempotent, and never fatal: without apt the test skips with a clear reason instead.
set -uo pipefail

if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "[install_chromium] apt-get is not available: Chromium not installed; the gallery's" \
         "browser test will skip" >&2
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null; then
        echo "[install_chromium] not root and no sudo: Chromium not installed; the gallery's" \
             "browser test will skip" >&2
        exit 0
    fi
    SUDO="sudo"
fi
echo "[install_chromium] installing Debian chromium"
if ! { $SUDO apt-get update -qq \
       && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null; }; then
    echo "[install_chromium] apt-get could not install chromium: the gallery's browser test" \
         "will skip" >&2
fi
exit 0
