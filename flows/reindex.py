"""The `crosstvr-index` flow: bring a configured corpus's Lance tables up to date.

Served as the deployment `crosstvr-index/reindex`, on a schedule when the config sets one
(`index.schedule_cron` or `index.schedule_interval_s`). Re-indexing only does what changed:
unchanged videos are skipped before decoding, failed ones retried, removed ones deleted.
Then old table versions are cleaned (`index.cleanup_versions`): every version a run or a
registered model in the tracking store names is kept (tasks/retention.py).
With the default encoder (encoder.pretrained = "stills") the pretrained checkpoint is made
first when this machine lacks it (tasks/pretrain.py), then reused.
"""

from __future__ import annotations

import mlflow
from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.params import RunParams, validate_params
from tasks.index import index_task, log_index_run
from tasks.prepare_dataset import prepare_dataset_task
from tasks.pretrain import ensure_stills_encoder_task
from tasks.retention import clean_versions_task, log_retention
from tasks.runtime import ray_runtime, retrying
from tasks.tracking import FLOW_RUN_TAG, parent_run, tag_index_lineage


@flow(name="crosstvr-index", log_prints=True)
def crosstvr_index(config_file: str | None = None, overrides: list[str] | None = None) -> dict:
    """Index (or re-index) the configured corpus; returns the counts and table versions."""
    # first thing: a bad parameter fails the run here, naming it, before Ray or MLflow
    cfg = validate_params(RunParams, "crosstvr-index", config_file=config_file,
                          overrides=overrides).config
    tags = {FLOW_RUN_TAG: str(flow_run.get_id() or "local"), "crosstvr.dataset": cfg.data.name,
            "crosstvr.flow": "reindex"}
    with ray_runtime(cfg.ray), parent_run(cfg, f"reindex-{flow_run.get_name() or 'local'}",
                                          tags) as parent_id:
        dataset = retrying(prepare_dataset_task, cfg)(cfg)
        # the stills-pretrained encoder (the default): made once per machine, then reused
        retrying(ensure_stills_encoder_task, cfg)(cfg, parent_id)
        indexed = retrying(index_task, cfg, kind="index")(cfg, dataset)
        log_index_run(indexed)
        tag_index_lineage(parent_id, indexed.ref)
        mlflow.log_metrics({f"index/{k}": v for k, v in indexed.ref.counts.items()})
        retention = None
        if cfg.index.cleanup_versions:
            # after the lineage tags: this run's versions are protected like every other's
            retention = retrying(clean_versions_task, cfg)(cfg)
            log_retention(retention)
    counts = indexed.ref.counts
    get_run_logger().info(
        "%s: indexed %d, unchanged %d, failed %d (%s), removed %d; tables %s",
        cfg.data.name, counts["videos_ok"], counts["videos_skip"], counts["videos_failed"],
        ", ".join(f"{r} x{len(v)}" for r, v in indexed.failures.items()) or "none",
        counts["videos_removed"], indexed.ref.versions,
    )
    if retention is not None:
        get_run_logger().info("old versions: %s", retention.summary())
    return {"mlflow_run_id": parent_id, "counts": counts, "versions": indexed.ref.versions,
            "retention": None if retention is None else retention.summary()}
