"""Clean old Lance versions, keeping every version a recorded run or a registered model names.

Where versions are recorded (`tasks/tracking.py`): each flow run's parent run, and each of
its nested step runs, carries `crosstvr.lance_uri` and `crosstvr.lance.version.<table>`
tags: the versions its index step wrote, which every later step read. A registered
re-ranker or stage-1 version points at such a parent run (its `run_id`, and the tag
`crosstvr.parent_run_id`). So the protected set of one database is:

* the version tags of every active run, in every active experiment of the tracking store,
  whose `crosstvr.lance_uri` is this database;
* the version tags of the run of every registered model version, even when that run was
  deleted: a registered model still names it.

Everything else older than `index.cleanup_min_age_s` is removed
(`crosstvr_core.table_retention`). If the tracking store cannot be read, nothing is
removed: a cleanup never guesses what is protected. Deleting a run in MLflow releases its
versions at the next cleanup.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import asdict

import mlflow
from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException
from prefect import task

from crosstvr_core.config import CrossTVRConfig
from crosstvr_core.table_retention import RetentionReport, clean_old_versions
from tasks.tracking import LANCE_URI_TAG, LANCE_VERSION_TAG, use_experiment

PARENT_RUN_TAG = "crosstvr.parent_run_id"  # on registered model versions (tasks/registry.py)


class RetentionError(RuntimeError):
    """The protected set could not be computed, so nothing was cleaned."""


def same_uri(a: str, b: str) -> bool:
    """Two spellings of one database: local paths compared resolved, URIs as written."""
    def norm(uri: str) -> str:
        uri = uri.rstrip("/")
        if "://" in uri and not uri.startswith("file://"):
            return uri
        return os.path.realpath(uri.removeprefix("file://"))
    return norm(a) == norm(b)


def _pages(fetch: Callable[[str | None], list]) -> Iterator:
    token = None
    while True:
        page = fetch(token)
        yield from page
        token = page.token
        if not token:
            return


def _versions_of(tags: dict[str, str], uri: str) -> dict[str, int]:
    if not same_uri(tags.get(LANCE_URI_TAG, ""), uri):
        return {}
    out = {}
    for key, value in tags.items():
        if key.startswith(LANCE_VERSION_TAG):
            try:
                out[key.removeprefix(LANCE_VERSION_TAG)] = int(value)
            except ValueError:
                continue
    return out


def recorded_versions(uri: str, client: mlflow.MlflowClient | None = None
                      ) -> tuple[dict[str, set[int]], dict[str, list[str]]]:
    """table -> the versions of the database at `uri` that runs and registered models
    name, and table -> the run ids that name them (for the report)."""
    client = client or mlflow.MlflowClient()
    protected: dict[str, set[int]] = {}
    named_by: dict[str, list[str]] = {}

    def add(run_id: str, tags: dict[str, str]) -> None:
        for table, version in _versions_of(tags, uri).items():
            protected.setdefault(table, set()).add(version)
            named_by.setdefault(table, []).append(run_id)

    experiments = [e.experiment_id for e in _pages(lambda t: client.search_experiments(
        view_type=ViewType.ACTIVE_ONLY, max_results=1000, page_token=t))]
    name = os.path.basename(uri.rstrip("/")).replace("'", "_")  # LIKE: _ matches the quote
    for start in range(0, len(experiments), 100):
        ids = experiments[start:start + 100]
        for run in _pages(lambda t, ids=ids: client.search_runs(
                ids, filter_string=f"tags.`{LANCE_URI_TAG}` LIKE '%{name}'",
                run_view_type=ViewType.ACTIVE_ONLY, max_results=1000, page_token=t)):
            add(run.info.run_id, run.data.tags)
    for version in _pages(lambda t: client.search_model_versions(max_results=1000,
                                                                 page_token=t)):
        for run_id in {version.run_id, version.tags.get(PARENT_RUN_TAG)} - {None, ""}:
            try:
                run = client.get_run(run_id)
            except MlflowException:  # the run is gone for good: nothing left to name
                continue
            add(run_id, run.data.tags)
    return protected, named_by


def clean_index_versions(cfg: CrossTVRConfig, dry_run: bool = False) -> RetentionReport:
    """Clean the old versions of `cfg`'s database, keeping what its tracking store names."""
    uri = cfg.lance_uri
    try:
        use_experiment(cfg)  # points MLflow at the configured tracking store
        protected, _ = recorded_versions(uri)
    except MlflowException as exc:
        raise RetentionError(
            f"old versions of {uri} not cleaned: the tracking store "
            f"{mlflow.get_tracking_uri()} could not list the runs and registered models that "
            f"name table versions ({exc.message[:300]}); nothing was removed") from exc
    return clean_old_versions(uri, protected, cfg.index.cleanup_min_age_s,
                              cfg.index.storage_options, dry_run=dry_run)


clean_versions_task = task(clean_index_versions, name="clean-old-versions")


def log_retention(report: RetentionReport) -> None:
    """What a cleanup did, on the active MLflow run."""
    mlflow.log_metrics({
        "retention/versions_removed": sum(len(t.removed) for t in report.tables.values()),
        "retention/versions_kept": sum(len(t.kept) for t in report.tables.values()),
        "retention/bytes_removed": sum(t.bytes_removed for t in report.tables.values()),
        **({"retention/bytes_after": report.bytes_after}
           if report.bytes_after is not None else {}),
    })
    mlflow.log_dict({"uri": report.uri, "bytes_before": report.bytes_before,
                     "bytes_after": report.bytes_after,
                     "tables": {n: asdict(t) for n, t in report.tables.items()}},
                    "lineage/retention.json")
