"""The product as a user runs it: `make up`, `prefect deployment run crosstvr/full-benchmark`
through the real CLI (infra/run_benchmark.sh), results from MLflow, `make down`.

Runs on free loopback ports with its own CROSSTVR_HOME, so it never touches a user's stack.
"""

import os
import re
import socket
import subprocess
import time
from pathlib import Path

import lancedb
import pytest
import yaml
from index_fixtures import write_corpus

from tests.conftest import REPO, TINY_CONFIG

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _group_members(pgid: int) -> list[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,pgid="], capture_output=True, text=True).stdout
    return [int(p) for p, g in (line.split() for line in out.splitlines()) if int(g) == pgid]


@pytest.fixture()
def stack_env(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", 6, broken=False)
    reindex_config = tmp_path / "reindex.yaml"
    reindex_config.write_text(yaml.safe_dump({
        "data": {"kind": "folder", "root": str(corpus["root"]),
                 "captions_file": str(corpus["captions"]), "name": "reindex-test"},
        "encoder": {"pretrained": None},  # the full benchmark (tiny.yaml) pretrains its own
        "sampling": {"num_frames": 2},
        "index": {"schedule_interval_s": 3600},
    }))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "MLFLOW_", "CROSSTVR_"))}
    env.update({
        "CROSSTVR_HOME": str(tmp_path / "home"),
        "CROSSTVR_PREFECT_PORT": str(_free_port()),
        "CROSSTVR_MLFLOW_PORT": str(_free_port()),
        "CROSSTVR_CONFIG": str(TINY_CONFIG),
        "CROSSTVR_REINDEX_CONFIG": str(reindex_config),
    })
    yield env
    subprocess.run([str(REPO / "infra" / "down.sh")], env=env, timeout=120)


def _run(script: str, env: dict, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / "infra" / script), *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def test_up_deployment_run_results_down(stack_env):
    up = _run("up.sh", stack_env, timeout=300)
    assert up.returncode == 0, up.stdout + up.stderr
    run_dir = Path(stack_env["CROSSTVR_HOME"]) / "run"
    pids = {name: int((run_dir / f"{name}.pid").read_text())
            for name in ("prefect-server", "mlflow", "serve")}
    assert all(_pid_alive(pid) for pid in pids.values())

    again = _run("up.sh", stack_env, timeout=120)  # idempotent: nothing started twice
    assert again.returncode == 0 and again.stdout.count("already running") == 3

    started = time.time()
    bench = _run("run_benchmark.sh", stack_env, "train.epochs=1")
    out = bench.stdout + bench.stderr
    assert bench.returncode == 0, out[-4000:]
    assert "Completed" in out
    for row in ("stage 1      t2v", "stage 1      v2t", "two-stage    t2v", "stage 2 only v2t"):
        assert row in out
    assert f"http://127.0.0.1:{stack_env['CROSSTVR_MLFLOW_PORT']}/#/experiments/" in out
    assert time.time() - started < 600

    _two_reindex_runs_at_once(stack_env)

    down = _run("down.sh", stack_env, timeout=120)
    assert down.returncode == 0, down.stderr
    deadline = time.time() + 30
    while time.time() < deadline and any(_pid_alive(p) for p in pids.values()):
        time.sleep(0.5)
    assert not any(_pid_alive(p) for p in pids.values())
    assert not any(_group_members(p) for p in pids.values())  # no child left behind
    assert not os.listdir(run_dir)
    assert "stopped" not in _run("down.sh", stack_env, timeout=60).stdout  # idempotent


def _two_reindex_runs_at_once(env: dict) -> None:
    """The scheduled re-index deployment: two runs at once wait on the concurrency limit,
    complete, and leave each video exactly once; the second finds nothing to do."""
    prefect = str(REPO / ".venv" / "bin" / "prefect")
    penv = {**env, "PREFECT_API_URL": f"http://127.0.0.1:{env['CROSSTVR_PREFECT_PORT']}/api"}
    inspect = subprocess.run([prefect, "deployment", "inspect", "crosstvr-index/reindex"],
                             env=penv, capture_output=True, text=True, timeout=60)
    assert inspect.returncode == 0, inspect.stderr
    assert "'interval': 3600.0" in inspect.stdout, inspect.stdout  # the config's schedule
    assert re.search(r"'global_concurrency_limit': \{[^}]*'limit': 1,", inspect.stdout)
    runs = [subprocess.Popen([prefect, "deployment", "run", "crosstvr-index/reindex", "--watch"],
                             env=penv, cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [run.communicate(timeout=600)[0] for run in runs]
    assert all(run.returncode == 0 for run in runs), "\n".join(o[-3000:] for o in outs)
    assert all("Completed" in out for out in outs)
    db = lancedb.connect(Path(env["CROSSTVR_HOME"]) / "lance" / "reindex-test.lancedb")
    for table in ("videos", "video_tokens"):
        ids = db.open_table(table).to_arrow().column("video_id").to_pylist()
        assert len(ids) == len(set(ids)) == 6, table
    assert len(db.open_table("videos").list_versions()) >= 2
