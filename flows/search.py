"""The `crosstvr-search` flow: answer a file of text queries against an indexed dataset.

Served as the deployment `crosstvr-search/batch`. Queries come from a .txt (one per line),
.csv or .jsonl file (`query`, optional ground-truth `video`); the champion models of the
dataset + encoder (or the alias / run id in `model`) answer them on the Ray runtime, the
answers land in the index's `search_results` Lance table, and R@1/5/10 (with ground truth)
and a gallery go to an MLflow run. The same inputs against the same models and table
versions are answered once: a rerun is a no-op.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run
from pydantic import Field, field_validator

from flows.params import RunParams, validate_params
from tasks.runtime import ray_runtime, retrying
from tasks.search import run_batch_search
from tasks.tracking import DATASET_TAG, FLOW_RUN_TAG, parent_run


class SearchParams(RunParams):
    """The run's config plus what to search: the queries file and, as shortcuts for
    overrides, the dataset, k and the model alias or run id."""

    queries_file: str
    dataset: str | None = None
    k: int | None = Field(None, ge=1)
    model: str | None = None

    @field_validator("queries_file")
    @classmethod
    def _queries_file_exists(cls, value: str) -> str:
        from pathlib import Path

        if not Path(value).is_file():
            raise ValueError(f"queries file '{value}': not found")
        return value

    def __init__(self, **data) -> None:
        shortcuts = [f"{key}={data[name]}" for name, key in
                     (("dataset", "data.name"), ("k", "search.k"), ("model", "search.model"))
                     if data.get(name) is not None]
        data["overrides"] = [*(data.get("overrides") or []), *shortcuts]
        super().__init__(**data)


batch_search_task = task(run_batch_search, name="batch-search")


@flow(name="crosstvr-search", log_prints=True)
def crosstvr_search(queries_file: str, dataset: str | None = None, k: int | None = None,
                    model: str | None = None, config_file: str | None = None,
                    overrides: list[str] | None = None) -> dict:
    """Answer `queries_file`; returns where the answers are and, with ground truth, R@K."""
    params = validate_params(SearchParams, "crosstvr-search", queries_file=queries_file,
                             dataset=dataset, k=k, model=model, config_file=config_file,
                             overrides=overrides)
    cfg = params.config
    tags = {FLOW_RUN_TAG: str(flow_run.get_id() or "local"), DATASET_TAG: cfg.data.name,
            "crosstvr.flow": "search"}
    with ray_runtime(cfg.ray), parent_run(cfg, f"search-{flow_run.get_name() or 'local'}",
                                          tags) as parent_id:
        summary = retrying(batch_search_task, cfg)(cfg, queries_file, parent_id)
    logger = get_run_logger()
    logger.info("%d queries against %s: %s (table %s, version %s)", summary["queries"],
                cfg.data.name, "already answered, nothing to do" if summary["reused"]
                else "answered", summary["table"], summary["table_version"])
    for name, value in summary.get("metrics", {}).items():
        logger.info("  %s %.1f", name, value)
    return {"mlflow_run_id": parent_id, **summary}
