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

from crosstvr_core import report, synthetic
from crosstvr_core.config import CrossTVRConfig
from crosstvr_core.external_similarity import load_external_similarity
from crosstvr_core.hard_negatives import scores_from_candidates
from crosstvr_core.metrics import retrieval_metrics, text_to_video_ranks, video_to_text_ranks
from crosstvr_core.reranker import CrossTVRReranker, reranker_shape_kwargs
from crosstvr_core.reranker_training import (
    NegativeScores,
    Validation,
    score_pairs,
    train_reranker,
)
from crosstvr_core.stage1 import meanp_similarity, stage1_training_bank, top_k_candidates
from crosstvr_core.storage import STAGE1_CANDIDATES
from crosstvr_core.temporal_head import TemporalHead, dual_softmax
from crosstvr_core.temporal_head_training import temporal_similarity, train_temporal_head
from crosstvr_core.token_dataset import split_validation
from crosstvr_core.two_stage import rerank_text_to_video, rerank_video_to_text
from tasks.index import IndexRef
from tasks.tracking import log_metrics_to, step_run

# roles, not split names: data.train_split / data.eval_split say which splits play them
TRAIN_SPLIT, TEST_SPLIT = "train", "test"


def split_names(cfg: CrossTVRConfig) -> dict[str, str]:
    return {TRAIN_SPLIT: cfg.data.train_split, TEST_SPLIT: cfg.data.eval_split}


@dataclass(frozen=True)
class Stage1Ref:
    sim_paths: dict  # split -> path of the [T, V] similarity (torch.save)
    metrics: dict
    model_id: str | None = None  # whose top-K lists are in the stage1_candidates table


@dataclass(frozen=True)
class RerankerRef:
    checkpoint: str
    model_kwargs: dict
    model_uri: str | None


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _ceiling(sim: torch.Tensor, bank, k: int, prefix: str) -> dict[str, float]:
    """Recall of the true item within the top K: the re-ranker's ceiling, both directions."""
    t2v = text_to_video_ranks(sim, bank.caption_video)
    v2t = video_to_text_ranks(sim, bank.caption_video)
    return {f"{prefix}/t2v_recall_at_{k}": float(100.0 * np.mean(t2v < k)),
            f"{prefix}/v2t_recall_at_{k}": float(100.0 * np.mean(v2t < k))}


def _stage1_metrics(sim: torch.Tensor, bank, k: int, prefix: str) -> dict[str, float]:
    metrics = report.flat_metrics(prefix, retrieval_metrics(sim, bank.caption_video))
    metrics.update(_ceiling(sim, bank, k, prefix))
    return metrics


def _train_seqtransf(cfg: CrossTVRConfig, train, run_dir: Path) -> tuple[TemporalHead, str]:
    """Train the CLIP4Clip seqTransf head on cached frame embeddings; returns it + its id."""
    head = TemporalHead.for_bank(cfg.stage1, train)  # sized by the cached token shapes

    def on_epoch_end(epoch: int, record: dict, _head) -> None:
        mlflow.log_metrics({f"stage1_train/{k}": float(v) for k, v in record.items()
                            if isinstance(v, int | float) and k != "epoch"}, step=epoch)

    history = train_temporal_head(head, train, cfg.stage1, device=_device(),
                                  on_epoch_end=on_epoch_end)
    mlflow.log_figure(report.training_curve_figure(history, "stage-1 seqTransf training"),
                      "figures/stage1_training_curve.png")
    path = run_dir / "stage1_seqtransf.pt"
    torch.save({"state_dict": head.state_dict(), "stage1": cfg.stage1.model_dump(),
                "embed_dim": head.embed_dim, "num_frames": head.num_frames,
                "text_width": head.text_width, "context_length": head.context_length,
                "patch_shapes": list(train.video_patches.shape[2:])}, path)
    if cfg.tracking.log_model:
        mlflow.pytorch.log_model(head.cpu(), name="stage1_seqtransf",
                                 serialization_format="pickle")
    return head.eval(), f"seqTransf|{mlflow.active_run().info.run_id}"


def _export_candidates(index, model_id: str, split: str, bank, sim: torch.Tensor, k: int):
    """Each caption's top-K videos and each video's top-K captions, for hard negatives."""
    scores, top = top_k_candidates(sim, k)
    index.write_stage1_candidates(model_id, split, "caption", bank.caption_ids,
                                  [[bank.video_ids[i] for i in row] for row in top.tolist()],
                                  scores.numpy())
    scores, top = top_k_candidates(sim.T, k)
    index.write_stage1_candidates(model_id, split, "video", bank.video_ids,
                                  [[bank.caption_ids[i] for i in row] for row in top.tolist()],
                                  scores.numpy())


def run_stage1(cfg: CrossTVRConfig, index_ref: IndexRef, run_dir: str, parent_run_id: str
               ) -> Stage1Ref:
    """Stage-1 similarities for train (hard negatives) and test (evaluation).

    meanP is always computed as the zero-shot baseline; seqTransf trains a temporal head on
    the cached train tokens; external reads another retriever's test matrix (train negatives
    then come from meanP). DSL, when on, re-weights the test matrix only.
    """
    torch.set_num_threads(cfg.train.torch_threads)
    s1, k = cfg.stage1, cfg.eval.top_k
    index = index_ref.open()
    out = Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = split_names(cfg)
    banks = {role: index.load_token_bank(names[role]) for role in (TRAIN_SPLIT, TEST_SPLIT)}
    for role, bank in banks.items():
        if bank.num_videos == 0 or bank.num_captions == 0:
            raise ValueError(f"split '{names[role]}' (data.{role.replace('test', 'eval')}_split):"
                             f" no indexed videos or captions in {index.uri}")
    train, test = banks[TRAIN_SPLIT], banks[TEST_SPLIT]
    with step_run(cfg, parent_run_id, "stage1", reads=index_ref):
        mlflow.log_params({"stage1.num_test_captions": test.num_captions,
                           "stage1.num_test_videos": test.num_videos})
        sims = {split: meanp_similarity(bank) for split, bank in banks.items()}
        metrics = _stage1_metrics(sims[TEST_SPLIT], test, k, "stage1_meanP")
        model_id = f"meanP|{index_ref.encoder_id}"
        if s1.method == "seqTransf":
            head, model_id = _train_seqtransf(cfg, stage1_training_bank(cfg, train), out)
            sims = {split: temporal_similarity(head, bank, device=_device())
                    for split, bank in banks.items()}
        elif s1.method == "external":
            if not (s1.external_similarity and s1.external_caption_ids and s1.external_video_ids):
                raise ValueError("stage1.method=external needs stage1.external_similarity, "
                                 "stage1.external_caption_ids and stage1.external_video_ids")
            sims[TEST_SPLIT] = load_external_similarity(
                s1.external_similarity, s1.external_caption_ids, s1.external_video_ids,
                test.caption_ids, test.video_ids)
            model_id = f"external|{Path(s1.external_similarity).name}"
        if s1.dual_softmax:
            sims[TEST_SPLIT] = dual_softmax(sims[TEST_SPLIT], s1.dual_softmax_temperature)
        metrics.update(_stage1_metrics(sims[TEST_SPLIT], test, k, "stage1"))
        paths = {}
        for split, bank in banks.items():
            paths[split] = str(out / f"stage1_{split}.pt")
            torch.save(sims[split], paths[split])
            _export_candidates(index, model_id, names[split], bank, sims[split], k)
        mlflow.set_tag("crosstvr.stage1_model_id", model_id)
        mlflow.log_metrics(metrics)
    log_metrics_to(parent_run_id, metrics)
    return Stage1Ref(paths, metrics, model_id)


def build_reranker(cfg: CrossTVRConfig, index_ref: IndexRef) -> tuple[CrossTVRReranker, dict]:
    kwargs = reranker_shape_kwargs(index_ref.shapes)
    return CrossTVRReranker(cfg.reranker, **kwargs), kwargs


def _stage1_model_id(stage1_ref: Stage1Ref, parent_run_id: str) -> str:
    """The stage-1 model whose top-K lists to read: the Stage1Ref's, else the tag its
    MLflow step run recorded under this parent run."""
    model_id = getattr(stage1_ref, "model_id", None)
    if model_id:
        return model_id
    runs = mlflow.search_runs(
        search_all_experiments=True, output_format="list",
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' "
                      "and tags.`crosstvr.step` = 'stage1'")
    ids = {r.data.tags.get("crosstvr.stage1_model_id") for r in runs} - {None}
    if len(ids) != 1:
        raise ValueError(f"train.negative_source=stage1_top_k: cannot tell which stage-1 model's "
                         f"candidates to use under run {parent_run_id} (found {sorted(ids)})")
    return ids.pop()


def _stored_top_k_scores(index, model_id: str, bank, train_split: str) -> NegativeScores:
    """Hard-negative scores restricted to the stage-1 top K stored in `stage1_candidates`."""
    if STAGE1_CANDIDATES not in index.db.list_tables().tables:
        raise ValueError(f"train.negative_source=stage1_top_k: no table '{STAGE1_CANDIDATES}' "
                         f"in {index.uri}; run stage 1 first")
    table = index.db.open_table(STAGE1_CANDIDATES).to_lance()
    quoted = model_id.replace("'", "''")

    def read(kind: str, rows: list[str], columns: list[str]) -> torch.Tensor:
        stored = table.to_table(
            columns=["query_id", "candidate_ids", "scores"],
            filter=f"stage1_model_id = '{quoted}' AND split = '{train_split}' "
                   f"AND query_kind = '{kind}'")
        return scores_from_candidates(
            stored.column("query_id").to_pylist(), stored.column("candidate_ids").to_pylist(),
            stored.column("scores").to_pylist(), rows, columns)

    return NegativeScores(read("caption", bank.caption_ids, bank.video_ids),
                          read("video", bank.video_ids, bank.caption_ids))


def run_train_reranker(cfg: CrossTVRConfig, index_ref: IndexRef, stage1_ref: Stage1Ref,
                       run_dir: str, parent_run_id: str) -> RerankerRef:
    """Train on cached tokens only, with hard negatives from stage 1 (its train similarity,
    or its stored top-K lists), validating on held-out train videos each epoch.

    Every epoch's checkpoint is logged to MLflow under `checkpoints/`; a retry of this step
    in the same run directory resumes from the last one.
    """
    t = cfg.train
    torch.set_num_threads(t.torch_threads)
    torch.manual_seed(t.seed)
    index = index_ref.open()
    full = index.load_token_bank(cfg.data.train_split)
    sim = torch.load(stage1_ref.sim_paths[TRAIN_SPLIT])
    if t.negative_source == "stage1_top_k":
        scores = _stored_top_k_scores(index, _stage1_model_id(stage1_ref, parent_run_id), full,
                                      cfg.data.train_split)
    else:
        scores = NegativeScores.from_similarity(sim)
    bank, validation = full, None
    if t.val_fraction > 0:
        split = split_validation(full, t.val_fraction, t.seed)
        bank, captions, videos = split.train, split.train_captions, split.train_videos
        scores = NegativeScores(scores.videos_per_caption[captions][:, videos],
                                scores.captions_per_video[videos][:, captions])
        e = cfg.eval
        # the split stage 1 left out of its training (stage1_training_bank), so the
        # validation lists are those of unseen videos, as on the test split
        validation = Validation(split.val, sim[split.val_captions][:, split.val_videos],
                                e.top_k, e.fusion_weight, e.fusion_score, e.batch_size)
    model, kwargs = build_reranker(cfg, index_ref)
    model.fit_input_stats(bank)
    checkpoint = Path(run_dir) / "reranker.pt"
    device = _device()

    with step_run(cfg, parent_run_id, "train-reranker", reads=index_ref):
        mlflow.log_params({"train.num_captions": bank.num_captions,
                           "train.num_videos": bank.num_videos,
                           "train.num_val_videos": validation.bank.num_videos if validation else 0,
                           "reranker.num_parameters": sum(p.numel() for p in model.parameters())})

        def on_epoch_end(epoch: int, record: dict, _model) -> None:
            numeric = {f"train/{k}": float(v) for k, v in record.items()
                       if isinstance(v, int | float) and k != "epoch"}
            mlflow.log_metrics(numeric, step=epoch)
            if "checkpoint" in record:
                mlflow.log_artifact(record["checkpoint"], artifact_path="checkpoints")

        started = time.perf_counter()
        history = train_reranker(model, bank, scores, t, device=device,
                                 on_epoch_end=on_epoch_end, validation=validation,
                                 checkpoint_dir=Path(run_dir) / "reranker_checkpoints",
                                 resume=True)
        mlflow.log_metric("train/seconds", time.perf_counter() - started)
        best = max(history, key=lambda r: r.get("val_t2v_R1", 0.0)) if validation else history[-1]
        mlflow.log_metric("train/best_epoch", best["epoch"])
        tmp = checkpoint.with_suffix(".pt.tmp")
        torch.save({"state_dict": model.state_dict(), "kwargs": kwargs, "epoch": best["epoch"],
                    "reranker": cfg.reranker.model_dump()}, tmp)
        tmp.replace(checkpoint)  # the weights the evaluation reads, never half written
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


def _twin_accuracy(matrices: dict[str, torch.Tensor], bank, metas: list[dict]) -> dict:
    """Per factor of the generated benchmark: own video above its one-factor twin (%).

    Empty for corpora without twins (any real dataset)."""
    if not any(any(k.startswith("twin_") for k in m) for m in metas):
        return {}
    caption_video = bank.caption_video.numpy()
    return {label: synthetic.near_duplicate_accuracy(mat.float().numpy(), caption_video,
                                                     bank.video_ids, metas)
            for label, mat in matrices.items()}


def run_two_stage_eval(cfg: CrossTVRConfig, index_ref: IndexRef, stage1_ref: Stage1Ref,
                       reranker_ref: RerankerRef, run_dir: str, parent_run_id: str) -> dict:
    """Top-K stage-1 candidates per query re-scored; both directions; per-family R@1."""
    torch.set_num_threads(cfg.train.torch_threads)
    index = index_ref.open()
    bank = index.load_token_bank(cfg.data.eval_split)
    sim = torch.load(stage1_ref.sim_paths[TEST_SPLIT])
    model = load_reranker(cfg, reranker_ref).to(_device())
    e = cfg.eval

    def scorer(text_rows: torch.Tensor, video_rows: torch.Tensor) -> torch.Tensor:
        logits = score_pairs(model, bank, text_rows, bank, video_rows, e.batch_size,
                             device=_device(), progress=True, precision=cfg.train.precision)
        return torch.sigmoid(logits) if e.fusion_score == "prob" else logits

    with step_run(cfg, parent_run_id, "two-stage-eval", reads=index_ref):
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
        metas = index.caption_meta(bank.caption_ids)
        families = [m.get("variant", "") for m in metas]
        by_family = {label: report.per_family_recall(r, families) for label, r in ranks.items()}
        for label, key in (("stage 1", "stage1"), ("two-stage", "twostage")):
            for family, value in by_family[label].items():
                metrics[f"{key}/t2v_R1_{family}"] = value
        twins = _twin_accuracy({"stage 1": sim, "two-stage": fused_t2v}, bank, metas)
        for label, key in (("stage 1", "stage1"), ("two-stage", "twostage")):
            for factor, value in twins.get(label, {}).items():
                metrics[f"{key}/t2v_twin_acc_{factor}"] = value
        mlflow.log_metrics(metrics)
        max_k = min(50, bank.num_videos)
        mlflow.log_figure(report.recall_curve_figure(ranks, max_k, "text -> video"),
                          "figures/recall_at_k_t2v.png")
        mlflow.log_figure(report.recall_curve_figure(v2t_ranks, max_k, "video -> text"),
                          "figures/recall_at_k_v2t.png")
        mlflow.log_figure(report.rank_histogram_figure(ranks, "text -> video ranks"),
                          "figures/rank_histogram_t2v.png")
        if any(families):
            mlflow.log_figure(report.family_bar_figure(by_family, "t2v R@1 per scene kind"),
                              "figures/per_family_r1.png")
        if twins:
            mlflow.log_figure(
                report.family_bar_figure(twins, "caption scores its video above the one-factor "
                                         "twin (%; chance 50)"), "figures/per_factor_twin_acc.png")
    log_metrics_to(parent_run_id, metrics)
    Path(run_dir, "two_stage_metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


stage1_task = task(run_stage1, name="stage1-candidates", retries=1)
# a retried training step resumes from its last per-epoch checkpoint in the run directory
train_task = task(run_train_reranker, name="train-reranker", retries=1)
eval_task = task(run_two_stage_eval, name="two-stage-eval", retries=1)
