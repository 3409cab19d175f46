"""A real two-node Ray cluster on loopback: the index step spreads over both nodes, and
killing the second node mid-run still completes the run, without duplicate rows.

Each node is a `ray start --block` process in its own session and temp dir; the test stops
them by the pids it started (never `ray stop`, which would kill every Ray on the machine).
The index runs as `crosstvr index ... ray.address=127.0.0.1:<port>` in a subprocess: a real
driver that connects with `address=` (tasks.runtime.ray_runtime -> tasks.index.index_dataset).
Where tasks ran is read from the GCS task-event store, the source of Ray's state API.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lancedb
import pytest
from index_fixtures import write_corpus
from process_helpers import descendants, kill, wait_until

from tasks.runtime import OFFLINE_ENV

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
DECODE_TASK = "decode_batch"
pytestmark = pytest.mark.integration
# A worker node only joins with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1, under which Ray listens on
# every interface. So the cluster tests run inside a private network namespace whose only
# interface is loopback (`unshare -n`), started by the outer test below.
INNER = os.environ.get("CROSSTVR_TEST_NETNS") == "1"
inner_only = pytest.mark.skipif(
    not INNER, reason="runs inside a loopback-only network namespace, started by "
    "test_two_node_cluster_in_a_loopback_only_namespace")


def test_two_node_cluster_in_a_loopback_only_namespace():
    """Runs this file's cluster tests in `unshare -n` (root on Linux): nothing the two
    nodes open is reachable from outside the machine, whatever address Ray binds."""
    if INNER:
        pytest.skip("the inner run itself")
    probe = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("cannot make a loopback-only network namespace (unshare -n + ip): the "
                    f"two-node cluster would listen beyond loopback: {probe.stderr.strip()}")
    inner = subprocess.run(
        ["unshare", "-n", "sh", "-c", "ip link set lo up && exec \"$0\" -m pytest -q -x "
         "-p no:cacheprovider \"$1\" -k 'spreads or killing'", sys.executable, __file__],
        cwd=REPO, env={**os.environ, "CROSSTVR_TEST_NETNS": "1"}, capture_output=True,
        text=True, timeout=900)
    out = inner.stdout[-5000:] + inner.stderr[-3000:]
    assert inner.returncode == 0 and "2 passed" in inner.stdout, out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayNode:
    """One `ray start --block` process (a head or a worker node) and everything under it."""

    def __init__(self, args: list[str], temp_dir: Path, log: Path, env: dict) -> None:
        temp_dir.mkdir(parents=True, exist_ok=True)
        self.log = log
        self._log_file = log.open("w")
        self.process = subprocess.Popen(
            [RAY, "start", "--block", "--num-cpus", "1", "--node-ip-address", "127.0.0.1",
             "--temp-dir", str(temp_dir), "--object-store-memory", str(150 * 2**20),
             "--dashboard-agent-listen-port", str(_free_port()), "--disable-usage-stats",
             *args],
            cwd=REPO, env=env, stdout=self._log_file, stderr=subprocess.STDOUT,
            start_new_session=True)
        self.family: set[int] = set()

    def wait_started(self, timeout: float = 120) -> None:
        def started() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"ray start exited: {self.log.read_text()[-3000:]}")
            return "Ray runtime started" in self.log.read_text()

        wait_until(started, timeout, f"ray start ({self.log.name})")
        self.family |= set(descendants(self.process.pid))

    def kill(self) -> None:
        """SIGKILL the node: raylet, object store, workers, then the `ray start` process."""
        self.family |= set(descendants(self.process.pid))
        kill(sorted(self.family))
        kill([self.process.pid])
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.family |= set(descendants(self.process.pid))
            self.process.send_signal(signal.SIGTERM)  # --block: shuts its processes down
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=20)
        kill(sorted(self.family) + [self.process.pid])
        self._log_file.close()


class GcsView:
    """Nodes and task events straight from the GCS, through Ray's own state accessor (the
    data `ray list tasks` shows), without a driver connected to the cluster."""

    def __init__(self, address: str) -> None:
        from ray._private.state import GlobalState
        from ray._raylet import GcsClientOptions

        self._state = GlobalState()
        self._state._initialize_global_state(GcsClientOptions.create(
            address, None, allow_cluster_id_nil=True, fetch_cluster_id_if_nil=True))

    def alive_nodes(self) -> set[str]:
        return {n["NodeID"] for n in self._state.node_table() if n["Alive"]}

    def task_nodes(self, name_part: str) -> dict[str, set[str]]:
        """node id -> ids of the tasks whose name contains `name_part` that ran there."""
        by_node: dict[str, set[str]] = {}
        for event in self._state._get_all_task_events():
            if name_part not in event.task_info.name:
                continue
            node = event.state_updates.node_id or event.task_info.node_id
            if node:
                by_node.setdefault(node.hex(), set()).add(event.task_id.hex())
        return by_node

    def close(self) -> None:
        self._state.disconnect()


@pytest.fixture(scope="module")
def cluster():
    # short: Ray's socket paths under the temp dir must stay below 107 bytes
    root = Path(tempfile.mkdtemp(prefix="rc-", dir="/tmp"))
    # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (the offline default) forbids a worker node from
    # joining; every node is pinned to 127.0.0.1 by --node-ip-address instead
    env = {**os.environ, **OFFLINE_ENV, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1",
           "HOME": str(root)}  # HOME: no ~/.ray of the user's
    (root / "ray_bootstrap_config.yaml").write_text("provider: {type: local}\n")
    port = _free_port()
    address = f"127.0.0.1:{port}"
    head = RayNode(["--head", "--port", str(port), "--include-dashboard", "false"],
                   root / "head", root / "head.log", env)
    nodes = [head]
    try:
        head.wait_started()
        gcs = GcsView(address)
        wait_until(lambda: len(gcs.alive_nodes()) == 1, 60, "the head node")
        head_id = next(iter(gcs.alive_nodes()))
        worker = RayNode(["--address", address], root / "worker", root / "worker.log", env)
        nodes.append(worker)
        worker.wait_started()
        wait_until(lambda: len(gcs.alive_nodes()) == 2, 60, "two alive nodes")
        worker_id = next(iter(gcs.alive_nodes() - {head_id}))
        yield {"address": address, "head": head, "worker": worker, "gcs": gcs, "env": env,
               "head_id": head_id, "worker_id": worker_id}
        gcs.close()
    finally:
        for node in reversed(nodes):
            node.stop()
        shutil.rmtree(root, ignore_errors=True)


def _index_command(corpus: dict, name: str, address: str) -> list[str]:
    return [
        sys.executable, "-m", "flows.cli", "index", str(corpus["root"]),
        "--captions", str(corpus["captions"]), "--name", name, "sampling.num_frames=4",
        "encoder.pretrained=null",
        f"ray.address={address}", "ray.decode_batch_size=1", "ray.decode_threads=1",
        "ray.decode_num_cpus=0.5", "ray.encode_num_cpus=0.5", "index.write_batch_rows=2",
    ]


def _rows(db_uri: Path, table: str, key: str) -> list[str]:
    try:
        return lancedb.connect(db_uri).open_table(table).to_arrow().column(key).to_pylist()
    except (ValueError, FileNotFoundError):
        return []


@inner_only
def test_index_work_spreads_over_both_nodes(cluster, tmp_path):
    corpus = write_corpus(tmp_path / "corpus", 12, broken=False)
    home = tmp_path / "home"
    run = subprocess.run(_index_command(corpus, "spread", cluster["address"]), cwd=REPO,
                         env={**cluster["env"], "CROSSTVR_HOME": str(home)},
                         capture_output=True, text=True, timeout=240, start_new_session=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert re.search(r"indexed 12\s+skipped \(unchanged\) 0\s+failed 0", run.stdout), run.stdout
    nodes = cluster["gcs"].alive_nodes()
    # task events are flushed every second or so
    wait_until(lambda: sum(map(len, cluster["gcs"].task_nodes(DECODE_TASK).values())) > 0, 20,
          "decode task events")
    time.sleep(2)
    decode_by_node = cluster["gcs"].task_nodes(DECODE_TASK)
    print("decode tasks per node:", {n[:8]: len(t) for n, t in decode_by_node.items()})
    assert set(decode_by_node) == nodes, "decode tasks did not run on both nodes"
    ids = _rows(home / "lance" / "spread.lancedb", "video_tokens", "video_id")
    assert sorted(ids) == corpus["good"]


@inner_only
def test_killing_the_second_node_mid_run_still_completes(cluster, tmp_path):
    num_videos = 24
    corpus = write_corpus(tmp_path / "corpus", num_videos, broken=False)
    home = tmp_path / "home"
    db_uri = home / "lance" / "killed.lancedb"
    gcs, worker = cluster["gcs"], cluster["worker"]
    worker_node = cluster["worker_id"]
    before = gcs.task_nodes(DECODE_TASK).get(worker_node, set())
    log = (tmp_path / "index.log").open("w")
    run = subprocess.Popen(_index_command(corpus, "killed", cluster["address"]), cwd=REPO,
                           env={**cluster["env"], "CROSSTVR_HOME": str(home)}, stdout=log,
                           stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        # mid-run: videos committed, and this run's decode tasks have run on the worker node
        wait_until(lambda: len(gcs.task_nodes(DECODE_TASK).get(worker_node, set()) - before) >= 1
              and len(_rows(db_uri, "videos", "video_id")) >= 2, 180,
              "decode tasks on the worker node and the first commits")
        done_at_kill = len(_rows(db_uri, "videos", "video_id"))
        worker.kill()
        wait_until(lambda: worker_node not in gcs.alive_nodes(), 90, "the GCS to mark the node dead")
        code = run.wait(timeout=240)
    finally:
        if run.poll() is None:
            kill(descendants(run.pid) + [run.pid])
        log.close()
    output = (tmp_path / "index.log").read_text()
    assert code == 0, output[-4000:]
    assert done_at_kill < num_videos, f"the kill came after the run: {done_at_kill} done"
    summary = re.search(r"indexed (\d+)\s+skipped \(unchanged\) (\d+)\s+failed (\d+)", output)
    assert summary and summary.groups() == (str(num_videos), "0", "0"), output[-3000:]
    for table, key in (("videos", "video_id"), ("video_tokens", "video_id"),
                       ("captions", "caption_id")):
        ids = _rows(db_uri, table, key)
        assert len(ids) == len(set(ids)) == num_videos, f"{table}: {len(ids)} rows"
    statuses = lancedb.connect(db_uri).open_table("videos").to_arrow().column("status")
    assert set(statuses.to_pylist()) == {"ok"}

