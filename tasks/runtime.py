"""Process-level set-up shared by every task: offline settings and the Ray runtime.

The offline settings are applied by the project, not by the user's shell: importing
`tasks` sets them (without overriding values the user set on purpose).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from crosstvr_core.config import default_home

# Nothing leaves the machine: telemetry, analytics and hub look-ups all off.
OFFLINE_ENV = {
    "DO_NOT_TRACK": "true",  # MLflow wants the word true, not 1
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "HF_HUB_OFFLINE": "1",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "TOKENIZERS_PARALLELISM": "false",
}


# A temporary Prefect server (flow run without PREFECT_API_URL) can take > 20 s on 2 busy cores.
# The client retries a request 7 times, backing off 2, 4, ... 128 s (about 4 minutes, as
# MLflow's client does), not 5 (about 1 minute): a Prefect server restarted mid-run on 2
# busy cores is back before a flow gives up on it (tests/test_faults.py).
PREFECT_ENV = {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
               "PREFECT_CLIENT_MAX_RETRIES": "7"}


def apply_offline_env() -> None:
    """Offline defaults, and Prefect's home under CROSSTVR_HOME (its SQLite needs the dir)."""
    for key, value in {**OFFLINE_ENV, **PREFECT_ENV}.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("PREFECT_HOME", str(Path(default_home()) / "prefect"))
    Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)


@contextmanager
def ray_runtime(ray_cfg) -> Iterator[None]:
    """Connect to `ray_cfg.address`, or start a local runtime sized by config for this run.

    A runtime this function started is shut down on exit; an existing one is left alone.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    kwargs = {
        "include_dashboard": ray_cfg.include_dashboard,
        "log_to_driver": True,
        "configure_logging": True,
        "logging_level": "WARNING",
    }
    if ray_cfg.address:
        ray.init(address=ray_cfg.address, **kwargs)
    else:
        # "local": always a fresh runtime, never an unrelated `ray start` cluster found on disk
        ray.init(address="local", num_cpus=ray_cfg.num_cpus, **kwargs)
    try:
        yield
    finally:
        ray.shutdown()


# which `orchestration.*` retry count a step gets: the index step has its own
RETRY_COUNTS = {"step": "task_retries", "index": "index_retries"}


def retrying(prefect_task, cfg, kind: Literal["step", "index"] = "step"):
    """`prefect_task` with the config's retry policy: `orchestration.index_retries` for
    kind="index", `orchestration.task_retries` for any other step; `retry_delay_s` for both.

    The tasks are defined without retries: this is where their policy comes from."""
    o = cfg.orchestration
    return prefect_task.with_options(retries=getattr(o, RETRY_COUNTS[kind]),
                                     retry_delay_seconds=o.retry_delay_s)


def failure_reason(exc: BaseException) -> str | None:
    """What a fault of the machine or the cluster looks like to a user, or None when `exc`
    is not one: a full disk (ENOSPC), a file size limit (EFBIG), a Ray worker that died
    (killed for memory, or by a signal). Lance and Ray wrap the OS error in their own
    exceptions, so the chain and the message are both searched."""
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    text = " ".join(f"{type(e).__name__}: {e}" for e in seen)
    errnos = {getattr(e, "errno", None) for e in seen}
    if errno.ENOSPC in errnos or "No space left on device" in text or "os error 28" in text:
        return "no space left on the device (ENOSPC)"
    if errno.EFBIG in errnos or "File too large" in text or "os error 27" in text:
        return "a file grew past the size limit of the writing process (EFBIG)"
    died = {"RayActorError", "WorkerCrashedError", "OutOfMemoryError"}
    if any(died & {k.__name__ for k in type(e).__mro__} for e in seen):
        detail = "killed for memory (OOM) or by a signal"
        if "OutOfMemoryError" in text or "memory monitor" in text:
            detail = "killed by Ray's memory monitor (out of memory)"
        return f"a Ray worker process died: {detail}"
    return None
