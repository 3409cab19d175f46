"""Serve the deployments: `crosstvr/full-benchmark` (the whole DAG), `crosstvr-index/reindex`,
`crosstvr-ablation/ablation` (re-ranker variants on the same tokens and stage 1),
`crosstvr-pretrain/encoder` (the stills-pretrained embedded encoder, once per machine) and
`crosstvr-search/batch` (a file of text queries against an index's champion models).

`make up` runs this in the background; `prefect deployment run crosstvr/full-benchmark`
then schedules a run that this process picks up and executes in a subprocess.

The re-index deployment indexes the corpus of `$CROSSTVR_REINDEX_CONFIG` (a config file);
it runs on the schedule that file sets (`index.schedule_cron` or `index.schedule_interval_s`),
and only when asked while none is set. At most one re-index runs at a time (a deployment
concurrency limit), so two scheduled runs never write the same tables at once.
"""

from __future__ import annotations

import datetime as dt
import os

from prefect import serve

from crosstvr_core.config import ConfigError, CrossTVRConfig, load_config
from flows.ablation import crosstvr_ablation
from flows.full_benchmark import crosstvr
from flows.pretrain import crosstvr_pretrain
from flows.reindex import crosstvr_index
from flows.search import crosstvr_search

FULL_BENCHMARK = "full-benchmark"
REINDEX = "reindex"
ABLATION = "ablation"
PRETRAIN = "encoder"
BATCH_SEARCH = "batch"
REINDEX_CONFIG_ENV = "CROSSTVR_REINDEX_CONFIG"


def reindex_schedule(cfg: CrossTVRConfig) -> dict:
    """`to_deployment` schedule arguments from the config: cron, interval, or none."""
    cron, interval = cfg.index.schedule_cron, cfg.index.schedule_interval_s
    if cron and interval:
        raise ConfigError("index.schedule_cron and index.schedule_interval_s: set one, not both")
    if cron:
        return {"cron": cron}
    if interval:
        return {"interval": dt.timedelta(seconds=interval)}
    return {}


def deployments() -> list:
    config_file = os.environ.get(REINDEX_CONFIG_ENV) or None
    reindex_cfg = load_config(config_file)  # fails at start-up, naming the bad key
    return [
        crosstvr.to_deployment(
            name=FULL_BENCHMARK,
            description="(pretrain the stills encoder once per machine) -> index -> stage 1 "
            "-> train CrossTVR re-ranker -> two-stage eval -> report, on the configured "
            "dataset (default: the embedded generated benchmark)",
            tags=["crosstvr", "benchmark"],
        ),
        crosstvr_index.to_deployment(
            name=REINDEX,
            description=f"re-index the corpus of {config_file or 'the default config'}: only "
            "new, changed, failed and removed videos are touched",
            tags=["crosstvr", "index"],
            parameters={"config_file": config_file, "overrides": []},
            concurrency_limit=1,
            **reindex_schedule(reindex_cfg),
        ),
        crosstvr_ablation.to_deployment(
            name=ABLATION,
            description="index + stage 1 once, then train and evaluate each re-ranker variant "
            "(default: the paper's ablation table) on the same tokens; logs a table + figure",
            tags=["crosstvr", "ablation"],
        ),
        crosstvr_pretrain.to_deployment(
            name=PRETRAIN,
            description="pretrain the embedded encoder (encoder.*) on generated stills "
            "(image-text contrastive, section pretrain) unless this machine has that "
            "checkpoint; logs it to MLflow and registers crosstvr-encoder@champion. The other "
            "deployments run this step themselves when the checkpoint is missing",
            tags=["crosstvr", "encoder"],
        ),
        crosstvr_search.to_deployment(
            name=BATCH_SEARCH,
            description="answer a queries file (txt, or CSV/JSONL with `query` and an "
            "optional ground-truth `video`) with the dataset's champion models on Ray; "
            "answers in the index's search_results Lance table, R@K and a gallery in MLflow",
            tags=["crosstvr", "search"],
        ),
    ]


def main() -> None:
    serve(*deployments())


if __name__ == "__main__":
    main()
