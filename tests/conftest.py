"""Shared fixtures. State of the whole session lives in one temporary CROSSTVR_HOME."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

# before any project module reads it (Prefect's home is derived from it at import)
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="crosstvr-tests-"))
os.environ["CROSSTVR_HOME"] = str(_SESSION_HOME)
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("MLFLOW_TRACKING_URI", None)

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "configs" / "tiny.yaml"


def pytest_sessionfinish(session, exitstatus):
    """The session's CROSSTVR_HOME goes with the session (its servers are stopped by then):
    a suite run must not leave its tables, models and logs behind in the temp folder."""
    if not os.environ.get("CROSSTVR_KEEP_TEST_HOME"):
        shutil.rmtree(_SESSION_HOME, ignore_errors=True)


@pytest.fixture
def one_thread():
    """Torch on one thread for the test: tiny tensors gain nothing from threads, and
    spin-waiting threads slow tests down many times over when other processes hold the
    cores. Modules of small-tensor tests use it: `pytest.mark.usefixtures("one_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def session_home() -> Path:
    return _SESSION_HOME


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect server (its own SQLite database) for every test that runs a
    flow in-process; its start-up is paid once per session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray runtime for the tests that run Ray Data pipelines."""
    import ray

    from tasks.runtime import apply_offline_env

    apply_offline_env()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_encoder(session_home):
    """The embedded default encoder (random init saved to disk, loaded back)."""
    from crosstvr_core.models.encoder import EncoderSpec, load_frozen_encoder

    return load_frozen_encoder(
        EncoderSpec("crosstvr-tiny-vit"), init_seed=0, weights_dir=session_home / "weights"
    )
