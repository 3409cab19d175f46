"""Stage 1, re-ranker training and two-stage evaluation as pipeline steps.

Each step reads the Lance tables named by an `IndexRef`, writes its outputs under the run
directory, logs a nested MLflow run, and returns a small reference to what it wrote.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import torch
from prefect import task

from crosstvr_core import report
from crosstvr_core.config import CrossTVRConfig
from crosstvr_core.metrics import retrieval_metrics, text_to_video_ranks, video_to_text_ranks
from crosstvr_core.reranker import CrossTVRReranker
from crosstvr_core.reranker_training import score_pairs, train_reranker
from crosstvr_core.stage1 import meanp_similarity
from crosstvr_core.two_stage import rerank_text_to_video, rerank_video_to_text
from tasks.index import IndexRef
from tasks.tracking import log_metrics_to, step_run

TRAIN_SPLIT, TEST_SPLIT = "train", "test"


@dataclass(frozen=True)
class Stage1Ref:
    sim_paths: dict  # split -> path of the [T, V] similarity (torch.save)
    metrics: dict


@dataclass(frozen=True)
class RerankerRef:
    checkpoint: str
    model_kwargs: dict
    model_uri: str | None


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def run_stage1(cfg: CrossTVRConfig, index_ref: IndexRef, run_dir: str, parent_run_id: str
               ) -> Stage1Ref:
    """meanP cosine similarities for train (hard negatives) and test (evaluation)."""
    index = index_ref.open()
    out = Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    with step_run(cfg, parent_run_id, "stage1"):
        paths = {}
        for split in (TRAIN_SPLIT, TEST_SPLIT):
            bank = index.load_token_bank(split)
            if bank.num_videos == 0 or bank.num_captions == 0:
                raise ValueError(f"split '{split}': no indexed videos or captions in {index.uri}")
            sim = meanp_similarity(bank)
            paths[split] = str(out / f"stage1_{split}.pt")
            torch.save(sim, paths[split])
            if split == TEST_SPLIT:
                metrics = report.flat_metrics("stage1", retrieval_metrics(sim, bank.caption_video))
                ranks = text_to_video_ranks(sim, bank.caption_video)
                k = cfg.eval.top_k
                metrics[f"stage1/t2v_recall_at_{k}"] = float(100.0 * np.mean(ranks < k))
        mlflow.log_params({"stage1.num_test_captions": bank.num_captions,
                           "stage1.num_test_videos": bank.num_videos})
        mlflow.log_metrics(metrics)
    log_metrics_to(parent_run_id, metrics)
    return Stage1Ref(paths, metrics)


def build_reranker(cfg: CrossTVRConfig, index_ref: IndexRef) -> tuple[CrossTVRReranker, dict]:
    s = index_ref.shapes
    kwargs = {"embed_dim": s["embed_dim"], "vision_width": s["vision_width"],
              "text_width": s["text_width"], "num_frames": s["num_frames"],
              "num_patches": s["num_patches"]}
    return CrossTVRReranker(cfg.reranker, **kwargs), kwargs


def run_train_reranker(cfg: CrossTVRConfig, index_ref: IndexRef, stage1_ref: Stage1Ref,
                       run_dir: str, parent_run_id: str) -> RerankerRef:
    """Train on cached tokens only, with hard negatives from the stage-1 train similarities."""
    torch.set_num_threads(cfg.train.torch_threads)
    torch.manual_seed(cfg.train.seed)
    bank = index_ref.open().load_token_bank(TRAIN_SPLIT)
    sim = torch.load(stage1_ref.sim_paths[TRAIN_SPLIT])
    model, kwargs = build_reranker(cfg, index_ref)
    model.fit_input_stats(bank)
    checkpoint = Path(run_dir) / "reranker.pt"
    device = _device()

    with step_run(cfg, parent_run_id, "train-reranker"):
        mlflow.log_params({"train.num_captions": bank.num_captions,
                           "train.num_videos": bank.num_videos,
                           "reranker.num_parameters": sum(p.numel() for p in model.parameters())})

        def on_epoch_end(epoch: int, record: dict, trained) -> None:
            numeric = {f"train/{k}": float(v) for k, v in record.items()
                       if isinstance(v, int | float) and k != "epoch"}
            mlflow.log_metrics(numeric, step=epoch)
            torch.save({"state_dict": trained.state_dict(), "kwargs": kwargs, "epoch": epoch,
                        "reranker": cfg.reranker.model_dump()}, checkpoint)

        started = time.perf_counter()
        history = train_reranker(model, bank, sim, cfg.train, device=device,
                                 on_epoch_end=on_epoch_end)
        mlflow.log_metric("train/seconds", time.perf_counter() - started)
        mlflow.log_figure(report.training_curve_figure(history), "figures/training_curve.png")
        mlflow.log_dict({"history": history}, "training_history.json")
        model_uri = None
        if cfg.tracking.log_model:
            info = mlflow.pytorch.log_model(model.cpu(), name="reranker",
                                            serialization_format="pickle")
            model_uri = info.model_uri
    return RerankerRef(str(checkpoint), kwargs, model_uri)


def load_reranker(cfg: CrossTVRConfig, ref: RerankerRef) -> CrossTVRReranker:
    state = torch.load(ref.checkpoint, map_location="cpu")
    model = CrossTVRReranker(cfg.reranker, **ref.model_kwargs)
    model.load_state_dict(state["state_dict"])
    return model.eval()


def run_two_stage_eval(cfg: CrossTVRConfig, index_ref: IndexRef, stage1_ref: Stage1Ref,
                       reranker_ref: RerankerRef, run_dir: str, parent_run_id: str) -> dict:
    """Top-K stage-1 candidates per query re-scored; both directions; per-family R@1."""
    torch.set_num_threads(cfg.train.torch_threads)
    index = index_ref.open()
    bank = index.load_token_bank(TEST_SPLIT)
    sim = torch.load(stage1_ref.sim_paths[TEST_SPLIT])
    model = load_reranker(cfg, reranker_ref).to(_device())
    e = cfg.eval

    def scorer(text_rows: torch.Tensor, video_rows: torch.Tensor) -> torch.Tensor:
        logits = score_pairs(model, bank, text_rows, bank, video_rows, e.batch_size,
                             device=_device(), progress=True)
        return torch.sigmoid(logits) if e.fusion_score == "prob" else logits

    with step_run(cfg, parent_run_id, "two-stage-eval"):
        started = time.perf_counter()
        fused_t2v, _ = rerank_text_to_video(sim, e.top_k, scorer, e.fusion_weight)
        t2v_seconds = time.perf_counter() - started
        fused_v2t, _ = rerank_video_to_text(sim, e.top_k, scorer, e.fusion_weight)
        metrics = report.flat_metrics("twostage", {
            "t2v": retrieval_metrics(fused_t2v, bank.caption_video)["t2v"],
            "v2t": retrieval_metrics(fused_v2t, bank.caption_video)["v2t"],
        })
        metrics["twostage/t2v_ms_per_query"] = 1000.0 * t2v_seconds / max(1, bank.num_captions)

        ranks = {"stage 1": text_to_video_ranks(sim, bank.caption_video),
                 "two-stage": text_to_video_ranks(fused_t2v, bank.caption_video)}
        v2t_ranks = {"stage 1": video_to_text_ranks(sim, bank.caption_video),
                     "two-stage": video_to_text_ranks(fused_v2t, bank.caption_video)}
        families = [m.get("variant", "") for m in index.caption_meta(bank.caption_ids)]
        by_family = {label: report.per_family_recall(r, families) for label, r in ranks.items()}
        for label, key in (("stage 1", "stage1"), ("two-stage", "twostage")):
            for family, value in by_family[label].items():
                metrics[f"{key}/t2v_R1_{family}"] = value
        mlflow.log_metrics(metrics)
        max_k = min(50, bank.num_videos)
        mlflow.log_figure(report.recall_curve_figure(ranks, max_k, "text -> video"),
                          "figures/recall_at_k_t2v.png")
        mlflow.log_figure(report.recall_curve_figure(v2t_ranks, max_k, "video -> text"),
                          "figures/recall_at_k_v2t.png")
        mlflow.log_figure(report.rank_histogram_figure(ranks, "text -> video ranks"),
                          "figures/rank_histogram_t2v.png")
        if any(families):
            mlflow.log_figure(report.family_bar_figure(by_family, "t2v R@1 per factor family"),
                              "figures/per_family_r1.png")
    log_metrics_to(parent_run_id, metrics)
    Path(run_dir, "two_stage_metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


stage1_task = task(run_stage1, name="stage1-candidates", retries=1)
train_task = task(run_train_reranker, name="train-reranker")
eval_task = task(run_two_stage_eval, name="two-stage-eval", retries=1)
