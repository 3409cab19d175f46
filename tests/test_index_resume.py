"""Kill the index run for real (a Ray worker, then the driver); the re-run completes it.

The run is the `crosstvr index` CLI in its own session: a real driver with its own local Ray
runtime, killed with SIGKILL while it commits to Lance.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import lancedb
from index_fixtures import write_corpus
from process_helpers import descendants, kill, wait_until

REPO = Path(__file__).resolve().parents[1]
NUM_VIDEOS = 40


def _ok_rows(db_uri) -> int:
    try:
        table = lancedb.connect(db_uri).open_table("videos")
    except (ValueError, FileNotFoundError):
        return 0
    return table.count_rows("status = 'ok'")


def _wait(predicate, timeout: float, what: str) -> None:
    """Poll fast: the run commits one video at a time and must be caught mid-way."""
    wait_until(predicate, timeout, what, poll_s=0.1)


def _process_title(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_killed_index_run_resumes_without_duplicates_or_reencoding(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", NUM_VIDEOS, broken=False)
    home = tmp_path / "home"
    db_uri = home / "lance" / "resume.lancedb"
    command = [
        sys.executable, "-m", "flows.cli", "index", str(corpus["root"]),
        "--captions", str(corpus["captions"]), "--name", "resume", "sampling.num_frames=4",
        "encoder.pretrained=null",  # a random-init encoder: no pretraining before the kill
        "ray.decode_batch_size=1", "index.write_batch_rows=1",
    ]
    env = {**os.environ, "CROSSTVR_HOME": str(home)}
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
    family: list[int] = []
    try:
        _wait(lambda: _ok_rows(db_uri) >= 2, 300, "the first committed videos")
        family = descendants(first.pid)
        encoders = [p for p in family if "FrameEncoderActor" in _process_title(p)]
        assert encoders, "no encoder actor process found"
        kill(encoders[:1])  # a Ray worker dies: Ray restarts it and the run goes on
        written = _ok_rows(db_uri)
        _wait(lambda: _ok_rows(db_uri) >= written + 1, 300, "progress after the worker kill")
        family = sorted(set(family) | set(descendants(first.pid)))
        first.send_signal(signal.SIGKILL)  # then the driver dies mid-run
        first.wait(timeout=30)
    finally:
        kill([first.pid, *family])
        time.sleep(1)
        kill(descendants(first.pid))
        log.close()
    done_before = _ok_rows(db_uri)
    assert 0 < done_before < NUM_VIDEOS, f"kill came too late or too early: {done_before}"

    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=600, start_new_session=True)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    summary = re.search(r"indexed (\d+)\s+skipped \(unchanged\) (\d+)\s+failed (\d+)",
                        second.stdout)
    assert summary, second.stdout[-3000:]
    indexed, skipped, failed = map(int, summary.groups())
    # already written videos are not decoded or encoded again; the rest are completed
    assert (indexed, skipped, failed) == (NUM_VIDEOS - done_before, done_before, 0)

    db = lancedb.connect(db_uri)
    for table, key in (("videos", "video_id"), ("video_tokens", "video_id"),
                       ("captions", "caption_id")):
        ids = db.open_table(table).to_arrow().column(key).to_pylist()
        assert len(ids) == len(set(ids)) == NUM_VIDEOS, table
    token_ids = db.open_table("video_tokens").to_arrow().column("video_id").to_pylist()
    assert sorted(token_ids) == corpus["good"]
