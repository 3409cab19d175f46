#!/usr/bin/env bash
# A two-node Ray cluster on this machine, on loopback, to try `ray.address=...` by hand:
#   infra/ray_cluster.sh up [PORT]   # head + one worker node, 1 CPU each
#   .venv/bin/python -m flows.cli index DIR ray.address=127.0.0.1:PORT ...
#   infra/ray_cluster.sh down        # stops only the two nodes this script started
# Never `ray stop`: it kills every Ray on the machine. tests/test_ray_cluster.py does the same
# from Python. RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER must be 1 here or the worker cannot join, and
# with it Ray listens on every interface: run this inside `unshare -n` (as the test does) or
# behind a firewall.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1
RAY="$CROSSTVR_VENV/bin/ray"
PORT="${2:-6380}"
TMP_ROOT="${CROSSTVR_RAY_TMP:-/tmp/crosstvr-ray}"   # short: socket paths must be < 107 bytes

start_node() {  # name, extra args...
  local name="$1"; shift
  mkdir -p "$TMP_ROOT/$name"
  setsid "$RAY" start --block --num-cpus 1 --node-ip-address 127.0.0.1 \
    --temp-dir "$TMP_ROOT/$name" --disable-usage-stats "$@" \
    >"$CROSSTVR_LOG_DIR/ray-$name.log" 2>&1 &
  echo $! >"$CROSSTVR_RUN_DIR/ray-$name.pid"
  for _ in $(seq 120); do
    grep -q "Ray runtime started" "$CROSSTVR_LOG_DIR/ray-$name.log" && return 0
    kill -0 "$(cat "$CROSSTVR_RUN_DIR/ray-$name.pid")" 2>/dev/null || break
    sleep 1
  done
  echo "ray $name did not start, see $CROSSTVR_LOG_DIR/ray-$name.log" >&2
  return 1
}

stop_node() {
  local pidfile="$CROSSTVR_RUN_DIR/ray-$1.pid"
  [[ -f "$pidfile" ]] || return 0
  local pid; pid="$(cat "$pidfile")"
  # the node's own process group (setsid): `ray start --block` and what it started
  kill -TERM -- "-$pid" 2>/dev/null || true
  sleep 3
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

case "${1:-}" in
  up)
    start_node head --head --port "$PORT" --include-dashboard false
    start_node worker --address "127.0.0.1:$PORT"
    echo "Ray cluster up: ray.address=127.0.0.1:$PORT (2 nodes)"
    ;;
  down)
    stop_node worker
    stop_node head
    ;;
  *)
    echo "usage: $0 up [PORT] | down" >&2
    exit 2
    ;;
esac
