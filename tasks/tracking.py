"""MLflow wiring: one parent run per flow run, one nested run per step, and lineage.

Steps receive the parent run id (a reference), not an active-run object, so they can run in
any thread or process and still nest under the right parent.

Lineage: a run's tags name the dataset, the encoder id, the LanceDB URI and the version of
each Lance table it read (`crosstvr.lance.version.<table>`). The flow tags the parent run
with what its index step wrote; every nested step run copies those tags (the versions the
step read). `checkout_run_tables(run_id)` opens exactly those table versions again.
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
DATASET_TAG, ENCODER_TAG, LANCE_URI_TAG = "crosstvr.dataset", "crosstvr.encoder_id", \
    "crosstvr.lance_uri"
LANCE_VERSION_TAG = "crosstvr.lance.version."  # + table name
# MLflow 3's UI opens an experiment on its GenAI overview (traces, evaluations) unless this
# tag marks it a model-training one; then it opens on the runs table, where our runs are.
# Key and value as the UI reads them (mlflow/server/js: "mlflow.experimentKind",
# ExperimentKind.CUSTOM_MODEL_DEVELOPMENT).
EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"


# The user's $MLFLOW_TRACKING_URI, read once at import: `mlflow.set_tracking_uri` writes the
# variable too, so reading it later would return the store of this process's previous run
# (another home's SQLite) instead of the one the next config asks for.
_USER_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")


def tracking_uri(cfg: CrossTVRConfig) -> str:
    """Config, else the user's $MLFLOW_TRACKING_URI, else a SQLite store under <home>/mlflow."""
    if cfg.tracking.tracking_uri:
        return cfg.tracking.tracking_uri
    if _USER_TRACKING_URI:
        return _USER_TRACKING_URI
    store = cfg.home_path / "mlflow"
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}"


def use_experiment(cfg: CrossTVRConfig) -> str:
    """Point MLflow at the configured store and experiment; returns the experiment id.

    The experiment is marked as model training (EXPERIMENT_KIND_TAG), so the UI opens it on
    its runs table: when created, and for an existing one that has no kind yet (a kind
    someone set by hand is kept).
    """
    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name(cfg.tracking.experiment)
    if experiment is None:
        artifact_location = None
        if uri.startswith("sqlite:") or uri.startswith("file:"):
            # a direct store keeps artifacts beside it, never in the current directory
            artifact_location = (cfg.home_path / "mlflow" / "artifacts").as_uri()
        try:
            return mlflow.create_experiment(
                cfg.tracking.experiment, artifact_location=artifact_location,
                tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND})
        except mlflow.exceptions.MlflowException:
            # created concurrently by another run
            experiment = mlflow.get_experiment_by_name(cfg.tracking.experiment)
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG,
                                                 MODEL_TRAINING_KIND)
    return experiment.experiment_id


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


def lineage_tags(uri: str, encoder_id: str, versions: dict[str, int]) -> dict[str, str]:
    """Tags that pin the data of a run: LanceDB URI, encoder id, table -> version."""
    return {ENCODER_TAG: encoder_id, LANCE_URI_TAG: uri,
            **{f"{LANCE_VERSION_TAG}{table}": str(v) for table, v in versions.items()}}


def tag_index_lineage(run_id: str, index_ref) -> None:
    """Tag a (parent) run with the table versions its index step produced (an IndexRef)."""
    tags = lineage_tags(index_ref.uri, index_ref.encoder_id, index_ref.versions)
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_tag(run_id, key, value)


def inherited_lineage(parent_run_id: str) -> dict[str, str]:
    """The parent's dataset and lineage tags, for a nested step that reads the same data."""
    tags = mlflow.MlflowClient().get_run(parent_run_id).data.tags
    return {k: v for k, v in tags.items()
            if k in (DATASET_TAG, ENCODER_TAG, LANCE_URI_TAG) or k.startswith(LANCE_VERSION_TAG)}


@contextmanager
def step_run(cfg: CrossTVRConfig, parent_run_id: str, step: str, reads=None) -> Iterator[str]:
    """A nested run for one step, whatever run (if any) is active in this thread.

    Lineage: the step run is tagged with the tables it read: `reads` (an IndexRef) when
    given, else the parent's lineage tags (what the flow's index step wrote).
    """
    experiment_id = use_experiment(cfg)
    tags = {"crosstvr.step": step, DATASET_TAG: cfg.data.name}
    tags.update(inherited_lineage(parent_run_id))
    if reads is not None:
        tags.update(lineage_tags(reads.uri, reads.encoder_id, reads.versions))
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=step, nested=True, parent_run_id=parent_run_id,
        tags=tags,
    ) as run:
        yield run.info.run_id


def run_lineage(run_id: str, client: mlflow.MlflowClient | None = None) -> dict:
    """{"dataset", "encoder_id", "uri", "versions": {table: version}} recorded on a run."""
    tags = (client or mlflow.MlflowClient()).get_run(run_id).data.tags
    versions = {k.removeprefix(LANCE_VERSION_TAG): int(v) for k, v in tags.items()
                if k.startswith(LANCE_VERSION_TAG)}
    if not versions or LANCE_URI_TAG not in tags:
        raise ValueError(f"run {run_id}: no Lance lineage tags ({LANCE_URI_TAG}, "
                         f"{LANCE_VERSION_TAG}<table>); only crosstvr flow runs have them")
    return {"dataset": tags.get(DATASET_TAG), "encoder_id": tags.get(ENCODER_TAG),
            "uri": tags[LANCE_URI_TAG], "versions": versions}


def checkout_run_tables(run_id: str, client: mlflow.MlflowClient | None = None,
                        storage_options: dict[str, str] | None = None) -> dict:
    """table name -> LanceDB table checked out at the version the run read (read-only).

    Old versions stay readable until `optimize` / `cleanup_old_versions` prunes them; a
    pruned version raises here, naming the table and version.
    """
    import lancedb

    lineage = run_lineage(run_id, client)
    db = lancedb.connect(lineage["uri"], storage_options=storage_options)
    tables = {}
    for name, version in lineage["versions"].items():
        table = db.open_table(name)
        try:
            table.checkout(version)
        except Exception as exc:  # lance raises ValueError / OSError / RuntimeError by backend
            raise ValueError(f"run {run_id}: table '{name}' version {version} in "
                             f"{lineage['uri']} cannot be checked out: {exc}") from exc
        tables[name] = table
    return tables


def log_metrics_to(run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
    """Log to a given run (e.g. the parent) without changing the active run."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(key, float(value), now, step or 0) for key, value in metrics.items()]
    mlflow.MlflowClient().log_batch(run_id, metrics=batch)
