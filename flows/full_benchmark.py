"""The `crosstvr` flow: index -> stage 1 -> train re-ranker -> two-stage eval -> report.

Before indexing it makes sure the stills-pretrained encoder exists (encoder.pretrained =
"stills", the default): pretrained once per machine, then reused (tasks/pretrain.py).

The flow only composes tasks; its parameters are a config file and dotted overrides, so the
same deployment runs the embedded default or a real corpus with real weights.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from crosstvr_core.report import results_table
from flows.params import RunParams, validate_params
from tasks.index import index_task, log_index_run
from tasks.prepare_dataset import prepare_dataset_task
from tasks.pretrain import ensure_stills_encoder_task
from tasks.registry import register_task
from tasks.retrieval import eval_task, stage1_task, train_task
from tasks.runtime import ray_runtime, retrying
from tasks.tracking import FLOW_RUN_TAG, log_metrics_to, parent_run, tag_index_lineage


@flow(name="crosstvr", log_prints=True)
def crosstvr(config_file: str | None = None, overrides: list[str] | None = None) -> dict:
    """Run the whole benchmark DAG on the configured dataset; returns the metrics."""
    # first thing: a bad parameter fails the run here, naming it, before Ray or MLflow
    cfg = validate_params(RunParams, "crosstvr", config_file=config_file,
                          overrides=overrides).config
    run_id = flow_run.get_id() or "local"
    tags = {FLOW_RUN_TAG: str(run_id), "crosstvr.dataset": cfg.data.name,
            "crosstvr.flow": "full-benchmark"}
    with ray_runtime(cfg.ray), parent_run(cfg, f"full-benchmark-{flow_run.get_name() or 'local'}",
                                          tags) as parent_id:
        run_dir = str(cfg.home_path / "runs" / parent_id)
        dataset = retrying(prepare_dataset_task, cfg)(cfg)
        # the stills-pretrained encoder (the default): made once per machine, then reused
        retrying(ensure_stills_encoder_task, cfg)(cfg, parent_id)
        indexed = retrying(index_task, cfg, kind="index")(cfg, dataset)
        log_index_run(indexed)
        index = indexed.ref
        tag_index_lineage(parent_id, index)  # nested step runs copy these: what they read
        log_metrics_to(parent_id, {f"index/{k}": v for k, v in index.counts.items()})
        stage1 = retrying(stage1_task, cfg)(cfg, index, run_dir, parent_id)
        reranker = retrying(train_task, cfg)(cfg, index, stage1, run_dir, parent_id)
        metrics = retrying(eval_task, cfg)(cfg, index, stage1, reranker, run_dir, parent_id)
        metrics = {**stage1.metrics, **metrics}
        table = results_table(metrics)
        mlflow.log_text(table, "results.txt")
        Path(run_dir, "results.txt").write_text(table + "\n")
    # registered only once the run has ended FINISHED: a run the tracking server lost before
    # its end is never a champion (a retry completes an interrupted registration)
    if cfg.tracking.log_model:
        for reg in retrying(register_task, cfg)(parent_id):
            get_run_logger().info("registered %s v%s as %s (%s)", reg.model_name,
                                  reg.version, reg.role, reg.pair_alias)
    get_run_logger().info("results (%s):\n%s", cfg.data.name, table)
    return {"mlflow_run_id": parent_id, "metrics": metrics}
