"""Process helpers for the tests that kill real runs and services: find a run's processes,
kill, wait; start a loopback service in its own session, kill it as a crash would, start it
again on the same port."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path


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


def process_title(pid: int) -> str:
    """The command line of `pid` (Ray actors show their class name there); "" when gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


class Service:
    """A server on 127.0.0.1 in its own session (its pid leads the process group), so a test
    can kill it and every child it forked at once, as a crash or the OOM killer would, and
    start it again on the same port with the same state on disk."""

    def __init__(self, name: str, argv: list[str], env: dict, health_url: str, log: Path):
        self.name, self.argv, self.env, self.health_url, self.log = \
            name, argv, env, health_url, log
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        with self.log.open("a") as out:
            out.write(f"\n--- start {self.starts} ---\n")
            out.flush()
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)

    def wait_ready(self, timeout: float = 180) -> None:
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited ({self.proc.returncode}): "
                                     f"{self.log.read_text()[-3000:]}")
            return http_ok(self.health_url)
        wait_until(ready, timeout, f"{self.name} at {self.health_url}", poll_s=0.5)

    def crash(self) -> None:
        """SIGKILL the whole session: no shutdown handler runs."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def restart(self, timeout: float = 180) -> None:
        self.crash()
        self.start()
        self.wait_ready(timeout)

    def stop(self) -> None:
        """SIGTERM the session, SIGKILL what is left after 15 s."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError):  # children left in the group
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=15)
