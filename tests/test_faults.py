"""The stack survives its own services failing: real processes, real faults, loopback only.

* the Prefect server restarts, and the MLflow server dies and comes back, during one
  benchmark run (SIGKILL of each server's whole session);
* the disk fills during a Lance write (a size-limited tmpfs);
* the encoder actor is killed for memory (SIGKILL, as the OOM killer does) on every batch.

After each fault: the run completes, or fails naming the reason; the tables stay readable at
their last good version without duplicate rows; a rerun completes. The MLflow and Prefect
servers are started once for the module, each in its own session on a free loopback port,
with their state (SQLite) under the module's temporary folder.

`python tests/test_faults.py disk WORKDIR CORPUS` is the disk-full scenario's child process,
for a user who is not root (run inside `unshare --user --map-root-user --mount`, where it
may mount a tmpfs).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # also when run as the disk child

from index_fixtures import write_corpus  # noqa: E402
from process_helpers import (  # noqa: E402
    Service,
    descendants,
    free_port,
    kill,
    process_title,
    wait_until,
)

TINY_CONFIG = REPO / "configs" / "tiny.yaml"
BIN = REPO / ".venv" / "bin"
pytestmark = pytest.mark.integration

# the flow processes' MLflow client gives up after ~3 s instead of ~4 min, so an outage
# longer than that reaches the flow (its task retries, its error messages) within the test
FAST_MLFLOW_CLIENT = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                      "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                      "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
                      "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "MLFLOW_", "CROSSTVR_"))}
    env.update({"DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "RAY_USAGE_STATS_ENABLED": "0",
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "HF_HUB_OFFLINE": "1"})
    return env


class Stack:
    """An MLflow server and a Prefect server, as `make up` runs them, on free ports."""

    def __init__(self, root: Path):
        self.root = root
        env = clean_env()
        mport, pport = free_port(), free_port()
        self.mlflow_url = f"http://127.0.0.1:{mport}"
        self.prefect_api = f"http://127.0.0.1:{pport}/api"
        self.mlflow_db = root / "mlflow" / "mlflow.db"
        (root / "mlflow" / "artifacts").mkdir(parents=True)
        self.mlflow = Service(
            "mlflow", [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port",
                       str(mport), "--workers", "1", "--backend-store-uri",
                       f"sqlite:///{self.mlflow_db}", "--artifacts-destination",
                       str(root / "mlflow" / "artifacts")],
            env, f"{self.mlflow_url}/health", root / "mlflow.log")
        self.prefect = Service(
            "prefect", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                        "--port", str(pport)],
            {**env, "PREFECT_HOME": str(root / "prefect-server"),
             "PREFECT_UI_ENABLED": "false"},
            f"{self.prefect_api}/health", root / "prefect.log")

    def flow_env(self, home: Path, **extra: str) -> dict[str, str]:
        return {**clean_env(), "CROSSTVR_HOME": str(home), "PREFECT_API_URL": self.prefect_api,
                "MLFLOW_TRACKING_URI": self.mlflow_url, **extra}

    def mlflow_rows(self, sql: str) -> list[tuple]:
        """Read the MLflow server's SQLite store directly (also while the server is down)."""
        try:
            with sqlite3.connect(f"file:{self.mlflow_db}?mode=ro", uri=True, timeout=5) as db:
                return db.execute(sql).fetchall()
        except sqlite3.OperationalError:  # not created yet
            return []

    def prefect_post(self, path: str, body: dict) -> list[dict]:
        request = urllib.request.Request(f"{self.prefect_api}/{path}",
                                         data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("faults"))
    try:
        stack.mlflow.start()
        stack.prefect.start()
        stack.mlflow.wait_ready()
        stack.prefect.wait_ready()
        yield stack
    finally:
        stack.prefect.stop()
        stack.mlflow.stop()


def unique_ids(db_uri: Path, tables: dict[str, str]) -> dict[str, int]:
    """table -> row count, asserting every key occurs once (reads the latest version)."""
    import lancedb

    db = lancedb.connect(db_uri)
    counts = {}
    for table, key in tables.items():
        ids = db.open_table(table).to_arrow().column(key).to_pylist()
        assert len(ids) == len(set(ids)), f"{table}: duplicate {key}s"
        counts[table] = len(ids)
    return counts


def ok_rows(db_uri: Path) -> int:
    import lancedb

    try:
        return lancedb.connect(db_uri).open_table("videos").count_rows("status = 'ok'")
    except (ValueError, FileNotFoundError, OSError):
        return 0


def run_logged(command: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float) -> int:
    try:
        return proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            kill([proc.pid, *descendants(proc.pid)])
            proc.wait(timeout=30)


# --- MLflow and Prefect ---------------------------------------------------------------------
DATASET = "faults-stack"
TABLES = {"videos": "video_id", "video_tokens": "video_id", "captions": "caption_id"}


def test_services_die_mid_run_and_come_back(stack, ray_local, tmp_path):
    """One benchmark flow run against the two servers, as `make up` runs them.

    * The Prefect server is SIGKILLed while the index step commits, and restarted: the flow
      goes on, and the server ends up holding it, and each of its task runs, COMPLETED.
    * The MLflow server is SIGKILLed as soon as the registry gives an alias to the run's
      model, and restarted at once. The registration step fails (the flow's MLflow client
      gives up after ~3 s here), says why and how to finish it, and its retry finds the
      server back. No alias ever named a version of a run that had not finished (before:
      the registry crowned the run while it was still RUNNING, and a server that died then
      left the champion alias on a run that never finished), and the registration was
      completed, not done twice.

    Then the rerun: the index step on the same corpus has nothing to index and writes no
    duplicate, and the retention step (`crosstvr cleanup`, also the re-index flow's last
    step) removes the old table versions except those the run names, so the champion's run
    still checks out the tables it was trained and evaluated on."""
    import lancedb
    import mlflow

    from crosstvr_core.config import load_config
    from tasks.index import index_dataset
    from tasks.prepare_dataset import prepare_dataset
    from tasks.retention import clean_index_versions
    from tasks.tracking import checkout_run_tables

    home = tmp_path / "home"
    db_uri = home / "lance" / f"{DATASET}.lancedb"
    log = tmp_path / "flow.log"
    overrides = [f"home={home}", "encoder.pretrained=null", f"data.name={DATASET}",
                 "data.num_train_videos=16", "data.num_test_groups=1",
                 # no val cubes: this run also takes the held-out validation path
                 "data.num_val_groups=0",
                 "data.captions_per_train_video=1", "stage1.method=meanP",
                 "train.lists_from=zero_shot", "train.epochs=1",
                 "ray.decode_batch_size=2", "index.write_batch_rows=2",
                 # a retry waits out an MLflow server restart (~20 s on 2 busy cores)
                 "orchestration.task_retries=1", "orchestration.retry_delay_s=20"]
    flow = run_logged([str(BIN / "python"), "-m", "flows.cli", "run", "--config",
                       str(TINY_CONFIG), *overrides],
                      stack.flow_env(home, **FAST_MLFLOW_CLIENT), log)
    at_crash: list[tuple] = []  # the registry when the MLflow server died, from its store
    try:
        wait_until(lambda: ok_rows(db_uri) >= 2 or flow.poll() is not None, 400,
                   "the index step's first commits", poll_s=0.1)
        down = time.monotonic()
        stack.prefect.restart()
        prefect_down = time.monotonic() - down
        wait_until(lambda: stack.mlflow_rows("select 1 from registered_model_aliases")
                   or flow.poll() is not None, 400, "the registration", poll_s=0.02)
        stack.mlflow.crash()
        at_crash = stack.mlflow_rows(
            "select a.name, a.alias, r.status from registered_model_aliases a "
            "join model_versions v on v.name = a.name and v.version = a.version "
            "join runs r on r.run_uuid = v.run_id")
        stack.mlflow.start()
        stack.mlflow.wait_ready()
        rc = finish(flow, 400)
    finally:
        if flow.poll() is None:
            finish(flow, 0)
        if stack.mlflow.proc.poll() is not None:
            stack.mlflow.start()
    stack.mlflow.wait_ready()
    out = log.read_text()
    print(f"\nPrefect server down {prefect_down:.0f} s during the index step; MLflow down "
          f"at the registration: {at_crash}")
    assert at_crash and all(status == "FINISHED" for *_, status in at_crash), at_crash
    assert rc == 0, out[-4000:]
    # the registration step failed, said why, and its retry completed it
    assert out.count("Retry 1/1 will start") == 1, out[-4000:]
    assert "finished, but registering its models" in out, out[-4000:]
    assert "crosstvr register" in out

    # Prefect: the run and every task run ended COMPLETED on the restarted server
    runs = stack.prefect_post("flow_runs/filter", {"flows": {"name": {"any_": ["crosstvr"]}}})
    assert [r["state_type"] for r in runs] == ["COMPLETED"], runs
    tasks = stack.prefect_post("task_runs/filter",
                               {"flow_runs": {"id": {"any_": [runs[0]["id"]]}}})
    assert {t["name"].rsplit("-", 1)[0] for t in tasks} >= {"index-corpus", "register-models"}
    assert all(t["state_type"] == "COMPLETED" for t in tasks), \
        [(t["name"], t["state_type"]) for t in tasks]

    client = mlflow.MlflowClient(stack.mlflow_url)
    try:
        experiment = client.get_experiment_by_name("crosstvr").experiment_id
        parents = client.search_runs([experiment], "tags.`crosstvr.flow` = 'full-benchmark'")
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        run_id = parents[0].info.run_id
        # `crosstvr register` again: nothing left to do, nothing registered twice
        from flows.cli import main

        assert main(["register", run_id, f"tracking.tracking_uri={stack.mlflow_url}"]) == 0
        aliases = half_registered(client)
        assert aliases["finished"] and not aliases["unfinished"], aliases
        versions = client.search_model_versions("name = 'crosstvr-reranker'")
        assert [v.run_id for v in versions] == [run_id]
        assert client.get_model_version_by_alias("crosstvr-reranker", "champion").run_id \
            == run_id
        assert unique_ids(db_uri, TABLES) == {t: 16 + 8 for t in TABLES}

        # the rerun, in this process: the index step, then the retention step
        cfg = load_config(TINY_CONFIG, [*overrides, "index.cleanup_min_age_s=0",
                                        f"tracking.tracking_uri={stack.mlflow_url}"])
        counts = index_dataset(cfg, prepare_dataset(cfg).load()).ref.counts
        assert (counts["videos_skip"], counts["videos_ok"]) == (24, 0)
        assert unique_ids(db_uri, TABLES) == {t: 16 + 8 for t in TABLES}
        report = clean_index_versions(cfg)
        print(f"retention after the run: {report.summary()}")
        assert report.bytes_after < report.bytes_before
        # left: what the run names (= the latest); the champion's data still checks out
        named = checkout_run_tables(run_id, client)
        db = lancedb.connect(db_uri)
        for table in TABLES:
            left = {v["version"] for v in db.open_table(table).list_versions()}
            assert left == {named[table].version}, (table, left)
        assert named["video_tokens"].count_rows() == 24
    finally:
        mlflow.set_tracking_uri(None)


def half_registered(client) -> dict[str, list]:
    """Every alias of every registered model, split by whether its version's run ended
    FINISHED."""
    out = {"finished": [], "unfinished": []}
    for model in client.search_registered_models():
        for alias, version in (model.aliases or {}).items():
            run = client.get_run(client.get_model_version(model.name, version).run_id)
            key = "finished" if run.info.status == "FINISHED" else "unfinished"
            out[key].append((model.name, alias, version, run.info.status))
    return out


# --- the disk fills -------------------------------------------------------------------------
DISK_SIZE = "4m"


def _can_mount_here() -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    probe = Path(tempfile.mkdtemp(prefix="crosstvr-mount-probe-"))
    try:
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)],
                          capture_output=True).returncode != 0:
            return False
        subprocess.run(["umount", str(probe)], check=True)
        return True
    finally:
        probe.rmdir()


def _user_namespace() -> list[str] | None:
    """`unshare` into a user + mount namespace mapped to root, where an unprivileged user
    may mount a tmpfs (where the kernel allows user namespaces); None when it cannot."""
    prefix = ["unshare", "--user", "--map-root-user", "--mount"]
    if shutil.which("unshare") and subprocess.run(
            [*prefix, "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", "/tmp"],
            capture_output=True).returncode == 0:
        return prefix
    return None


def test_disk_fills_during_a_lance_write(ray_local, tmp_path):
    """The Lance database lives on a 4 MiB tmpfs (root mounts it here, under the test's
    temporary folder; anyone else gets a user namespace for it), filled to 24 KiB while the
    index step writes: the step fails naming the full disk, the tables stay readable at
    their last commit without duplicates, and once space is freed the rerun indexes the
    rest, skipping what was committed."""
    corpus = write_corpus(tmp_path / "corpus", 12, broken=False)
    if _can_mount_here():
        report = _disk_scenario(tmp_path, corpus["root"])
    else:
        prefix = _user_namespace()
        if prefix is None:
            pytest.skip("no size-limited filesystem: needs root, or user namespaces")
        child = subprocess.run([*prefix, str(BIN / "python"), __file__, "disk", str(tmp_path),
                                str(corpus["root"])], cwd=REPO, env=clean_env(),
                               capture_output=True, text=True, timeout=600)
        assert child.returncode == 0, child.stdout[-3000:] + child.stderr[-5000:]
        report = json.loads(child.stdout.rsplit("REPORT", 1)[1])
    print(f"\ndisk full: {report['error'][:300]}")
    assert report["error_type"] == "IndexStepError", report["error"]
    assert "no space left on the device (ENOSPC)" in report["error"]
    assert "stay readable at their last commit" in report["error"]
    after = report["after_failure"]
    assert after["good_version_rows"] == 4  # the first run's version checks out
    assert after["unique"] and 4 <= after["ok"] < 12
    rerun = report["rerun"]
    assert rerun["counts"] == {t: 12 for t in TABLES if t != "captions"} | {"captions": 0}
    # what was committed before the disk filled is not indexed again
    assert (rerun["indexed"], rerun["skipped"]) == (12 - after["ok"], after["ok"])


def _disk_scenario(work: Path, corpus_root: Path) -> dict:
    """A tmpfs for the Lance database; index 4 videos, fill the disk, index 12 (fails), free
    the space, index again. Runs where Ray is up (the test's, or the child's own)."""
    import lancedb

    from crosstvr_core.config import load_config
    from tasks.corpus import load_corpus
    from tasks.index import index_dataset

    mnt = work / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE}", "tmpfs", str(mnt)],
                   check=True)
    try:
        clips = sorted((corpus_root / "videos").glob("*.mp4"))
        folder = work / "folder"
        folder.mkdir()
        for clip in clips[:4]:
            shutil.copy(clip, folder / clip.name)
        cfg = load_config(None, [
            f"home={work / 'home'}", "encoder.pretrained=null", "sampling.num_frames=2",
            "data.kind=folder", f"data.root={folder}", "data.name=disk",
            f"index.lance_root={mnt}", "ray.decode_batch_size=2", "index.write_batch_rows=2"])
        good = index_dataset(cfg, load_corpus(cfg.data)).ref
        for clip in clips[4:]:
            shutil.copy(clip, folder / clip.name)
        stat = os.statvfs(mnt)
        with (mnt / "ballast").open("wb") as handle:  # all but 24 KiB of the disk
            handle.write(b"\0" * (stat.f_bavail * stat.f_frsize - 24 * 1024))
        error, error_type = "", ""
        try:
            index_dataset(cfg, load_corpus(cfg.data))
        except Exception as exc:  # what the step reports is what the test checks
            error, error_type = str(exc), type(exc).__name__
        old = lancedb.connect(cfg.lance_uri).open_table("videos")
        old.checkout(good.versions["videos"])
        after = {"good_version_rows": old.count_rows(), "ok": ok_rows(cfg.lance_uri)}
        try:
            unique_ids(cfg.lance_uri, TABLES)
            after["unique"] = True
        except AssertionError:
            after["unique"] = False
        (mnt / "ballast").unlink()
        ref = index_dataset(cfg, load_corpus(cfg.data)).ref
        rerun = {"indexed": ref.counts["videos_ok"], "skipped": ref.counts["videos_skip"],
                 "counts": unique_ids(cfg.lance_uri, TABLES)}
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
    return {"error": error, "error_type": error_type, "after_failure": after, "rerun": rerun}


def _disk_child(work: Path, corpus_root: Path) -> None:
    """The disk scenario in a user + mount namespace, with a Ray runtime of its own."""
    import ray

    from tasks.runtime import apply_offline_env

    apply_offline_env()
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        report = _disk_scenario(work, corpus_root)
    finally:
        ray.shutdown()
    print("REPORT" + json.dumps(report))


# --- a Ray worker killed for memory ---------------------------------------------------------
MAX_KILLS = 6  # then the OOM stops: the step has failed by then, or it never would


def test_encoder_actor_killed_for_memory_on_every_batch(ray_local, tmp_path):
    """The encoder actor's process is SIGKILLed whenever it encodes (as the OOM killer kills
    a process that runs out of memory on every batch; Ray restarts it). The step fails after
    `ray.encode_max_restarts` restarts, naming the dead worker, instead of retrying for ever
    (before: it never ended); the tables stay as they were, and the rerun, in the same Ray
    runtime, writes every video once. (tests/test_index_resume.py kills it once: the run
    goes on.)"""
    import lancedb

    from crosstvr_core.config import load_config
    from tasks.corpus import load_corpus
    from tasks.index import IndexStepError, index_dataset

    corpus = write_corpus(tmp_path / "corpus", 12, broken=False)
    # one encode batch of 12 videos x 8 frames through a random-init ViT-B/32 (224 px): about
    # a second on CPU, long enough to be caught encoding however fast the machine (the tiny
    # encoder's 64 px batch can end between two looks of the killer)
    cfg = load_config(None, [f"home={tmp_path / 'home'}", "encoder.pretrained=null",
                             "encoder.name=ViT-B-32",
                             "sampling.num_frames=8", "data.kind=folder",
                             f"data.root={corpus['root'] / 'videos'}", "data.name=oom",
                             "ray.decode_batch_size=4", "ray.encode_max_restarts=1"])
    db_uri = Path(cfg.lance_uri)
    tables = {"videos": "video_id", "video_tokens": "video_id"}
    kills: list[int] = []
    stop = threading.Event()

    def oom_killer():
        while len(kills) < MAX_KILLS and not stop.wait(0.05):
            encoding = [p for p in descendants(os.getpid())
                        if "FrameEncoderActor)).submit" in process_title(p)]
            kill(encoding)
            kills.extend(encoding)

    killer = threading.Thread(target=oom_killer, daemon=True)
    killer.start()
    started = time.monotonic()
    try:
        with pytest.raises(IndexStepError) as failed:
            index_dataset(cfg, load_corpus(cfg.data))
    finally:
        stop.set()
        killer.join(timeout=10)
    message = str(failed.value)
    print(f"\nOOM on every batch: the step failed after {time.monotonic() - started:.0f} s "
          f"and {len(kills)} kills: {message[:300]}")
    assert len(kills) == 2  # the batch, then its one retry on the restarted actor
    assert "a Ray worker process died" in message and "ray.encode_max_restarts=1" in message
    assert "stay readable at their last commit" in message
    db = lancedb.connect(db_uri)
    for table in tables:  # nothing half-written: the tables are as they were created
        assert db.open_table(table).version == 1
    assert unique_ids(db_uri, tables) == {t: 0 for t in tables}

    counts = index_dataset(cfg, load_corpus(cfg.data)).ref.counts
    assert (counts["videos_ok"], counts["videos_skip"]) == (12, 0)
    assert unique_ids(db_uri, tables) == {t: 12 for t in tables}


if __name__ == "__main__" and sys.argv[1:2] == ["disk"]:
    _disk_child(Path(sys.argv[2]), Path(sys.argv[3]))
