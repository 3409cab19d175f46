"""The encoder-pretraining step: the stills-pretrained embedded encoder, made once per machine.

`encoder.pretrained = "stills"` (the default) names a checkpoint under <home>/weights whose
file name hashes everything that determines it (crosstvr_core.training.encoder_pretraining). This step
reuses that file when it exists. Otherwise it pretrains, in an MLflow run of its own (nested
`pretrain-encoder` under the flow's run, when there is one): the `pretrain` section as params,
loss / logit scale / lr per logged step, held-out still retrieval before and after, a loss
curve, the checkpoint as an artifact; then it registers the encoder as `crosstvr-encoder`
with the aliases `champion` (the latest pretrained) and `stills-<config hash>`.

A file lock beside the checkpoint keeps two runs on one machine from training it twice (the
second waits, then reuses); the checkpoint is written atomically, so a killed run leaves none.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import torch
from prefect import get_run_logger, task
from prefect.exceptions import MissingContextError

from crosstvr_core import report
from crosstvr_core.config import STILLS_PRETRAINED, CrossTVRConfig
from crosstvr_core.models.encoder import file_sha256
from crosstvr_core.training.encoder_pretraining import (
    excluded_key,
    excluded_test_scenes,
    pretrain_encoder,
    stills_checkpoint,
)
from tasks.registry import ensure_registered_model
from tasks.tracking import DATASET_TAG, log_config, step_run, use_experiment

STEP = "pretrain-encoder"
ENCODER_MODEL = "crosstvr-encoder"
CHAMPION = "champion"
SHA256_TAG = "crosstvr.checkpoint_sha256"
CONFIG_HASH_TAG = "crosstvr.pretrain.config_hash"
CHECKPOINT_TAG = "crosstvr.encoder_checkpoint"
REUSED_TAG = "crosstvr.pretrain.reused"


@dataclass(frozen=True)
class PretrainedEncoderRef:
    """The stills checkpoint a config uses (None: the config uses other weights)."""

    checkpoint: str | None
    reused: bool = False
    sha256: str | None = None
    summary: dict | None = None  # pretrain_encoder's, when this call trained
    mlflow_run_id: str | None = None  # the run that logged the pretraining
    model_version: str | None = None  # of crosstvr-encoder, when registered


def _logger():
    try:
        return get_run_logger()
    except MissingContextError:  # called outside a flow (the CLI)
        return logging.getLogger(__name__)


def config_hash(checkpoint: Path) -> str:
    """The hash in the checkpoint's file name (`<model>-stills-<hash>.pt`)."""
    return checkpoint.stem.rsplit("-", 1)[-1]


@contextlib.contextmanager
def _machine_lock(checkpoint: Path) -> Iterator[None]:
    """An exclusive lock on `<checkpoint>.lock`; released by the OS if the process dies."""
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    with open(checkpoint.with_suffix(".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _tracking_run(cfg: CrossTVRConfig, parent_run_id: str | None) -> Iterator[str]:
    """A nested step run under the flow's run, or a run of its own (with the full config)."""
    if parent_run_id:
        with step_run(cfg, parent_run_id, STEP) as run_id:
            yield run_id
        return
    experiment_id = use_experiment(cfg)
    with mlflow.start_run(experiment_id=experiment_id, run_name=STEP,
                          nested=mlflow.active_run() is not None,
                          tags={"crosstvr.step": STEP, DATASET_TAG: cfg.data.name}) as run:
        log_config(cfg)
        yield run.info.run_id


def register_encoder(model_id: str, run_id: str, sha256: str, cfg_hash: str,
                     accuracy: dict, client: mlflow.MlflowClient | None = None) -> str:
    """A new version of `crosstvr-encoder` from a logged model; aliases `champion` and
    `stills-<config hash>` point at it. Returns the version."""
    client = client or mlflow.MlflowClient()
    ensure_registered_model(
        client, ENCODER_MODEL, "The embedded open_clip encoder pretrained on generated "
        "stills (crosstvr-pretrain), frozen downstream; `champion` = the latest pretrained, "
        "`stills-<config hash>` = the one of a pretrain config")
    tags = {SHA256_TAG: sha256, CONFIG_HASH_TAG: cfg_hash,
            **{f"crosstvr.pretrain.{k}": f"{v:.2f}" for k, v in accuracy.items()}}
    version = client.create_model_version(ENCODER_MODEL, f"models:/{model_id}", run_id=run_id,
                                          model_id=model_id, tags=tags)
    client.set_registered_model_alias(ENCODER_MODEL, CHAMPION, version.version)
    client.set_registered_model_alias(ENCODER_MODEL, f"stills-{cfg_hash}", version.version)
    return str(version.version)


def _log_summary(summary: dict) -> None:
    metrics = {"pretrain/seconds": summary["seconds"],
               "pretrain/data_seconds": summary["data_seconds"]}
    if summary["final_loss"] is not None:
        metrics["pretrain/final_loss"] = summary["final_loss"]
    metrics.update({f"pretrain/random_init_{k}": v for k, v in summary["random_init"].items()})
    metrics.update({f"pretrain/{k}": v for k, v in summary["pretrained"].items()})
    mlflow.log_metrics(metrics)
    mlflow.log_dict(summary, "pretrain_summary.json")
    if summary["history"]:
        fig = report.pretraining_curve_figure(summary["history"])
        mlflow.log_figure(fig, "figures/pretraining_curve.png")
        report.plt.close(fig)


def _pretrain(cfg: CrossTVRConfig, checkpoint: Path, parent_run_id: str | None,
              logger) -> PretrainedEncoderRef:
    import open_clip

    from crosstvr_core.models.encoder import register_bundled_model_configs

    excluded = excluded_test_scenes(cfg.data.num_test_groups, cfg.data.seed)
    p = cfg.pretrain
    logger.info("pretraining %s on %d generated stills, %d steps of %d (once per machine) "
                "-> %s", cfg.encoder.name, p.num_stills, p.steps, p.batch_size, checkpoint)
    cfg_hash = config_hash(checkpoint)
    with _tracking_run(cfg, parent_run_id) as run_id:
        mlflow.log_params({**{f"pretrain.{k}": v for k, v in p.model_dump().items()},
                           "encoder.name": cfg.encoder.name,
                           "encoder.init_seed": cfg.encoder.init_seed,
                           "pretrain.excluded": excluded_key(cfg),
                           "pretrain.num_excluded_scenes": len(excluded),
                           "pretrain.config_hash": cfg_hash})

        def on_log(step: int, record: dict) -> None:
            mlflow.log_metrics({f"pretrain/{k}": float(v) for k, v in record.items()},
                               step=step)
            logger.info("pretrain step %d/%d: loss %.4f, logit scale %.2f, lr %.2e", step,
                        p.steps, record["loss"], record["logit_scale"], record["lr"])

        threads = torch.get_num_threads()  # pretrain_encoder sets its own; later steps theirs
        try:
            summary = pretrain_encoder(cfg.encoder.name, p, checkpoint,
                                       weights_dir=cfg.home_path / "weights",
                                       init_seed=cfg.encoder.init_seed, excluded=excluded,
                                       on_log=on_log, progress=False)
        finally:
            torch.set_num_threads(threads)
        sha = file_sha256(checkpoint)
        mlflow.set_tags({SHA256_TAG: sha, CONFIG_HASH_TAG: cfg_hash,
                         CHECKPOINT_TAG: str(checkpoint)})
        _log_summary(summary)
        mlflow.log_artifact(str(checkpoint), artifact_path="checkpoint")
        model_id = None
        if cfg.tracking.log_model:
            register_bundled_model_configs()
            model = open_clip.create_model(cfg.encoder.name, pretrained=str(checkpoint)).eval()
            model_id = mlflow.pytorch.log_model(model, name="encoder",
                                                serialization_format="pickle").model_id
    # registered only once its run has ended FINISHED: a tracking server that dies before
    # then leaves no champion pointing at a half-logged run
    version = None
    if model_id is not None:
        status = mlflow.MlflowClient().get_run(run_id).info.status
        if status != "FINISHED":
            raise RuntimeError(f"pretrain-encoder: run {run_id} ended {status}, not FINISHED; "
                               "the encoder is not registered")
        version = register_encoder(model_id, run_id, sha, cfg_hash, summary["pretrained"])
    logger.info("pretrained %s in %.0f s: held-out still retrieval i2t top-1 %s -> %s; "
                "registered %s", checkpoint.name, summary["seconds"],
                summary["random_init"].get("i2t_top1"), summary["pretrained"].get("i2t_top1"),
                f"{ENCODER_MODEL} v{version}" if version else "no model (tracking.log_model)")
    return PretrainedEncoderRef(str(checkpoint), False, sha, summary, run_id, version)


def ensure_stills_encoder(cfg: CrossTVRConfig, parent_run_id: str | None = None
                          ) -> PretrainedEncoderRef:
    """The stills checkpoint of `cfg` (when encoder.pretrained = "stills"): reused when this
    machine has it, else pretrained now, logged to MLflow and registered."""
    logger = _logger()
    if cfg.encoder.pretrained != STILLS_PRETRAINED:
        return PretrainedEncoderRef(None)
    checkpoint = stills_checkpoint(cfg)
    ref = None
    if not checkpoint.is_file():
        with _machine_lock(checkpoint):
            if not checkpoint.is_file():  # else another run made it while this one waited
                ref = _pretrain(cfg, checkpoint, parent_run_id, logger)
    if ref is None:
        ref = PretrainedEncoderRef(str(checkpoint), True, file_sha256(checkpoint))
        logger.info("reusing the stills-pretrained encoder %s (sha256 %s)", checkpoint,
                    ref.sha256[:16])
    if parent_run_id:
        client = mlflow.MlflowClient()
        for key, value in ((CHECKPOINT_TAG, ref.checkpoint), (SHA256_TAG, ref.sha256),
                           (REUSED_TAG, str(ref.reused).lower())):
            client.set_tag(parent_run_id, key, value)
    return ref


# a retried step pretrains again from scratch (only a finished checkpoint is ever written)
ensure_stills_encoder_task = task(ensure_stills_encoder, name="pretrain-encoder")
