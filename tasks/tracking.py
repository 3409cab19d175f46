"""MLflow wiring: one parent run per flow run, one nested run per step.

Steps receive the parent run id (a reference), not an active-run object, so they can run in
any thread or process and still nest under the right parent.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import yaml

from crosstvr_core.config import CrossTVRConfig

FLOW_RUN_TAG = "prefect.flow_run_id"


def tracking_uri(cfg: CrossTVRConfig) -> str:
    """Config, else $MLFLOW_TRACKING_URI, else a SQLite store under <home>/mlflow."""
    if cfg.tracking.tracking_uri:
        return cfg.tracking.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    store = cfg.home_path / "mlflow"
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}"


def use_experiment(cfg: CrossTVRConfig) -> str:
    """Point MLflow at the configured store and experiment; returns the experiment id."""
    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name(cfg.tracking.experiment)
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = None
    if uri.startswith("sqlite:") or uri.startswith("file:"):
        # a direct store keeps artifacts beside it, never in the current directory
        artifact_location = (cfg.home_path / "mlflow" / "artifacts").as_uri()
    try:
        return mlflow.create_experiment(cfg.tracking.experiment, artifact_location=artifact_location)
    except mlflow.exceptions.MlflowException:
        # created concurrently by another run
        return mlflow.get_experiment_by_name(cfg.tracking.experiment).experiment_id


def log_config(cfg: CrossTVRConfig) -> None:
    """The full resolved config: every key as a param, and the YAML as an artifact."""
    params = {k: ("None" if v is None else v) for k, v in cfg.flat().items()}
    mlflow.log_params(params)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
        mlflow.log_artifact(str(path))


@contextmanager
def parent_run(cfg: CrossTVRConfig, run_name: str, tags: dict[str, str]) -> Iterator[str]:
    experiment_id = use_experiment(cfg)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as run:
        log_config(cfg)
        yield run.info.run_id


@contextmanager
def step_run(cfg: CrossTVRConfig, parent_run_id: str, step: str) -> Iterator[str]:
    """A nested run for one step, whatever run (if any) is active in this thread."""
    experiment_id = use_experiment(cfg)
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=step, nested=True, parent_run_id=parent_run_id,
        tags={"crosstvr.step": step},
    ) as run:
        yield run.info.run_id


def log_metrics_to(run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
    """Log to a given run (e.g. the parent) without changing the active run."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(key, float(value), now, step or 0) for key, value in metrics.items()]
    mlflow.MlflowClient().log_batch(run_id, metrics=batch)
