"""The `crosstvr-pretrain` flow: the stills-pretrained embedded encoder of a config.

Served as the deployment `crosstvr-pretrain/encoder`. It pretrains the encoder named by
`encoder.*` on generated stills (section `pretrain`) unless this machine already has that
checkpoint, logs it to MLflow and registers it as `crosstvr-encoder@champion`. The other flows
and `crosstvr index` run the same step before indexing, so this one only pays the cost ahead
of time (or shows the pretraining on its own in MLflow).
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from crosstvr_core.config import STILLS_PRETRAINED
from flows.params import RunParams, validate_params
from tasks.pretrain import ensure_stills_encoder_task
from tasks.runtime import retrying
from tasks.tracking import DATASET_TAG, FLOW_RUN_TAG, parent_run


@flow(name="crosstvr-pretrain", log_prints=True)
def crosstvr_pretrain(config_file: str | None = None, overrides: list[str] | None = None
                      ) -> dict:
    """Make (or find) the stills checkpoint of the config; returns its path and summary."""
    # first thing: a bad parameter fails the run here, naming it, before MLflow
    cfg = validate_params(RunParams, "crosstvr-pretrain", config_file=config_file,
                          overrides=overrides).config
    logger = get_run_logger()
    if cfg.encoder.pretrained != STILLS_PRETRAINED:
        logger.warning("encoder.pretrained=%r: pretraining the stills encoder of this config "
                       "anyway; runs use it with encoder.pretrained=%s", cfg.encoder.pretrained,
                       STILLS_PRETRAINED)
        cfg = cfg.model_copy(deep=True)
        cfg.encoder.pretrained = STILLS_PRETRAINED
    tags = {FLOW_RUN_TAG: str(flow_run.get_id() or "local"), DATASET_TAG: cfg.data.name,
            "crosstvr.flow": "pretrain"}
    with parent_run(cfg, f"pretrain-{flow_run.get_name() or 'local'}", tags) as parent_id:
        ref = retrying(ensure_stills_encoder_task, cfg)(cfg, parent_id)
    logger.info("stills encoder %s: %s", "reused" if ref.reused else "pretrained",
                ref.checkpoint)
    return {"mlflow_run_id": parent_id, "checkpoint": ref.checkpoint, "reused": ref.reused,
            "sha256": ref.sha256, "summary": ref.summary, "model_version": ref.model_version}
