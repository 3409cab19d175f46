"""Process helpers for the tests that kill real runs: find a run's processes, kill, wait."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (Ray puts its workers in their own sessions)."""
    out = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout
    parent = {}
    for line in out.splitlines():
        child, ppid = map(int, line.split())
        parent[child] = ppid
    found, frontier = [], {pid}
    while frontier:
        frontier = {c for c, p in parent.items() if p in frontier}
        found += sorted(frontier)
    return found


def kill(pids: list[int], sig: int = signal.SIGKILL) -> None:
    """Signal each pid; ones already gone are skipped."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def wait_until(predicate, timeout: float, what: str, poll_s: float = 0.2) -> None:
    """Poll `predicate` until true; an AssertionError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll_s)
