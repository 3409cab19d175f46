"""Stage 1, re-ranker training and two-stage evaluation as pipeline steps.

Each step reads the Lance tables named by an `IndexRef`, writes its outputs under the run
directory, logs a nested MLflow run, and returns a small reference to what it wrote.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import torch
from prefect import task

from crosstvr_core import pipeline, report
from crosstvr_core.config import CrossTVRConfig
from crosstvr_core.gallery import write_gallery
from crosstvr_core.gallery_data import two_stage_gallery
from crosstvr_core.models.reranker import reranker_shape_kwargs
from crosstvr_core.models.reranker_ensemble import Reranker, new_reranker
from crosstvr_core.models.temporal_head import TemporalHead
from crosstvr_core.retrieval.external_similarity import load_external_similarity
from crosstvr_core.retrieval.stage1 import meanp_similarity, top_k_candidates
from crosstvr_core.storage import STAGE1_CANDIDATES, TokenIndex, fixed_list_to_numpy
from crosstvr_core.token_bank import TokenBank
from crosstvr_core.training.negatives import scores_from_candidates
from crosstvr_core.training.reranker import NegativeScores
from tasks.index import IndexRef
from tasks.tracking import log_metrics_to, step_run

# roles, not split names: data.train_split / data.eval_split / data.val_split say which
# splits play them (validation only when pipeline.validation_bank finds that split usable)
TRAIN_SPLIT, TEST_SPLIT, VAL_SPLIT = "train", "test", "val"
GALLERY_ARTIFACTS = "gallery"  # artifact folder of the evaluation gallery (index.html)
DEFAULT_DISPLAY_FRAME_SIZE = 96  # gallery frames when the encoder id names no input size

log = logging.getLogger(__name__)


def split_names(cfg: CrossTVRConfig) -> dict[str, str]:
    return {TRAIN_SPLIT: cfg.data.train_split, TEST_SPLIT: cfg.data.eval_split,
            VAL_SPLIT: cfg.data.val_split or ""}


def load_validation_bank(cfg: CrossTVRConfig, index: TokenIndex) -> TokenBank | None:
    """The validation split's bank, or None when validation is held out of the train split."""
    return pipeline.validation_bank(
        cfg, lambda name: index.load_token_bank(name, cfg.index.token_memory_gb))


@dataclass(frozen=True)
class Stage1Ref:
    sim_paths: dict  # split -> path of the [T, V] similarity (torch.save)
    metrics: dict
    model_id: str  # whose top-K lists are in the stage1_candidates table


@dataclass(frozen=True)
class RerankerRef:
    checkpoint: str
    model_kwargs: dict
    model_uri: str | None


def _device() -> str:
    return pipeline.device()


def _train_seqtransf(cfg: CrossTVRConfig, train, run_dir: Path, separate_val: bool
                     ) -> tuple[TemporalHead, str]:
    """Train the CLIP4Clip seqTransf head on cached frame embeddings; returns it + its id."""

    def on_epoch_end(epoch: int, record: dict, _head) -> None:
        mlflow.log_metrics({f"stage1_train/{k}": float(v) for k, v in record.items()
                            if isinstance(v, int | float) and k != "epoch"}, step=epoch)

    history: list[dict] = []

    def keep(epoch: int, record: dict, head) -> None:
        history.append(record)
        on_epoch_end(epoch, record, head)

    # a retried step resumes from the last epoch's checkpoint in the run directory
    head = pipeline.fit_stage1_for_reranking(cfg, train, separate_val=separate_val,
                                             on_epoch_end=keep,
                                             checkpoint_dir=run_dir / "stage1_checkpoints")
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
    """Stage-1 similarities for train (hard negatives), test (evaluation) and the
    validation split when there is one (the re-ranker's early stopping and fusion weights).

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
    banks = {role: index.load_token_bank(names[role], cfg.index.token_memory_gb)
             for role in (TRAIN_SPLIT, TEST_SPLIT)}
    for role, bank in banks.items():
        if bank.num_videos == 0 or bank.num_captions == 0:
            raise ValueError(f"split '{names[role]}' (data.{role.replace('test', 'eval')}_split):"
                             f" no indexed videos or captions in {index.uri}")
    train, test = banks[TRAIN_SPLIT], banks[TEST_SPLIT]
    val = load_validation_bank(cfg, index)
    if val is not None:
        banks[VAL_SPLIT] = val
    elif cfg.data.val_split:
        log.info("stage 1: split %r cannot validate (absent from %s, under 2 captioned videos,"
                 " or the train or eval split): the re-ranker validates on %.0f%% of the "
                 "train videos held out", cfg.data.val_split, index.uri,
                 100 * cfg.train.val_fraction)
    metas = index.caption_meta(test.caption_ids)
    with step_run(cfg, parent_run_id, "stage1", reads=index_ref):
        mlflow.log_params({"stage1.num_test_captions": test.num_captions,
                           "stage1.num_test_videos": test.num_videos,
                           "stage1.validation_split": names[VAL_SPLIT] if val else "held out"})
        sims = {split: meanp_similarity(bank) for split, bank in banks.items()}
        metrics = pipeline.stage1_metrics(sims[TEST_SPLIT], test, k, "stage1_meanP", metas)
        model_id = f"meanP|{index_ref.encoder_id}"
        head = None
        if s1.method == "seqTransf":
            head, model_id = _train_seqtransf(cfg, train, out, separate_val=val is not None)
            sims = {TRAIN_SPLIT: pipeline.stage1_scorer(head)(train, train),
                    TEST_SPLIT: pipeline.stage1_test_similarity(cfg, head, test)}
        if val is not None:  # scored as the test split is, so validation lists look like it
            sims[VAL_SPLIT] = pipeline.stage1_test_similarity(cfg, head, val)
            metrics.update(pipeline.stage1_metrics(sims[VAL_SPLIT], val, k, "stage1_val",
                                                   index.caption_meta(val.caption_ids)))
        elif s1.method == "external":
            if not (s1.external_similarity and s1.external_caption_ids and s1.external_video_ids):
                raise ValueError("stage1.method=external needs stage1.external_similarity, "
                                 "stage1.external_caption_ids and stage1.external_video_ids")
            sims[TEST_SPLIT] = load_external_similarity(
                s1.external_similarity, s1.external_caption_ids, s1.external_video_ids,
                test.caption_ids, test.video_ids)
            model_id = f"external|{Path(s1.external_similarity).name}"
        else:
            sims[TEST_SPLIT] = pipeline.stage1_test_similarity(cfg, None, test)
        metrics.update(pipeline.stage1_metrics(sims[TEST_SPLIT], test, k, "stage1", metas))
        paths = {}
        for split, bank in banks.items():
            paths[split] = str(out / f"stage1_{split}.pt")
            torch.save(sims[split], paths[split])
            _export_candidates(index, model_id, names[split], bank, sims[split], k)
        mlflow.set_tag("crosstvr.stage1_model_id", model_id)
        mlflow.log_metrics(metrics)
    log_metrics_to(parent_run_id, metrics)
    return Stage1Ref(paths, metrics, model_id)


def build_reranker(cfg: CrossTVRConfig, index_ref: IndexRef) -> tuple[Reranker, dict]:
    return (pipeline.build_reranker(cfg, index_ref.shapes),
            reranker_shape_kwargs(index_ref.shapes))


def _stored_top_k_scores(index, model_id: str, bank, train_split: str) -> NegativeScores:
    """Hard-negative scores restricted to the stage-1 top K stored in `stage1_candidates`."""

    def read(kind: str, rows: list[str], columns: list[str]) -> torch.Tensor:
        stored = index.stage1_candidates(model_id, train_split, kind)
        if stored is None:
            raise ValueError(f"train.negative_source=stage1_top_k: no table "
                             f"'{STAGE1_CANDIDATES}' in {index.uri}; run stage 1 first")
        return scores_from_candidates(
            stored.column("query_id").to_pylist(), stored.column("candidate_ids").to_pylist(),
            stored.column("scores").to_pylist(), rows, columns)

    return NegativeScores(read("caption", bank.caption_ids, bank.video_ids),
                          read("video", bank.video_ids, bank.caption_ids))


def run_train_reranker(cfg: CrossTVRConfig, index_ref: IndexRef, stage1_ref: Stage1Ref,
                       run_dir: str, parent_run_id: str) -> RerankerRef:
    """Train on cached tokens only, with hard negatives from stage 1 (its train similarity,
    or its stored top-K lists), validating each epoch on the validation split or on held-out
    train videos.

    Every epoch's checkpoint is logged to MLflow under `checkpoints/`; a retry of this step
    in the same run directory resumes from the last one.
    """
    t = cfg.train
    torch.set_num_threads(t.torch_threads)
    torch.manual_seed(t.seed)
    index = index_ref.open()
    full = index.load_token_bank(cfg.data.train_split, cfg.index.token_memory_gb)
    sim = torch.load(stage1_ref.sim_paths[TRAIN_SPLIT])
    negatives = None
    if t.loss == "bce" and t.negative_source == "stage1_top_k":
        negatives = _stored_top_k_scores(index, stage1_ref.model_id, full,
                                         cfg.data.train_split)
    # the validation videos are a split of their own, or those stage 1 left out of its
    # training (stage1_training_bank): either way their lists look like the test split's
    val, val_sim = None, None
    if VAL_SPLIT in stage1_ref.sim_paths:
        val = load_validation_bank(cfg, index)
        val_sim = torch.load(stage1_ref.sim_paths[VAL_SPLIT])
    full, val = pipeline.reranker_banks(cfg, index, full, val)
    variants = pipeline.caption_variants(cfg, index, full)
    if variants is not None:
        made = len(variants) / max(1, full.num_captions)
        log.info("caption variants: %d for %d captions (%.1f each, %d asked)", len(variants),
                 full.num_captions, made, t.caption_variants)
        if made < t.caption_variants / 2:
            log.warning("caption variants: few could be made; the training captions share few "
                        "word contexts, or train.caption_variant_max_similarity=%s finds "
                        "most word pairs alike in the frozen text tower",
                        t.caption_variant_max_similarity)
    split = pipeline.reranker_split(cfg, full, val)
    bank = split.train if split else full  # train_stage2 cuts the negatives to it
    model, kwargs = build_reranker(cfg, index_ref)
    checkpoint = Path(run_dir) / "reranker.pt"

    with step_run(cfg, parent_run_id, "train-reranker", reads=index_ref):
        mlflow.log_params({"train.num_captions": bank.num_captions,
                           "train.num_videos": bank.num_videos,
                           "train.num_val_videos": split.val.num_videos if split else 0,
                           "train.validation": pipeline.describe_validation(split),
                           "train.num_caption_variants": len(variants) if variants else 0,
                           "reranker.num_parameters": sum(p.numel() for p in model.parameters())})
        if variants:  # what the negatives look like, next to the captions they came from
            texts = index.caption_texts()
            mlflow.log_dict({"caption_variants": [
                {"caption": texts[source], "variant": text}
                for source, text in list(zip(variants.source_ids, variants.texts,
                                             strict=True))[:200]]},
                "caption_variants_sample.json")
        lists = None
        if t.loss == "listwise":
            started = time.perf_counter()
            part_sim = sim[split.train_captions][:, split.train_videos] if split else sim
            lists = pipeline.training_lists(cfg, bank, part_sim)
            mlflow.log_metrics({"lists/seconds": time.perf_counter() - started,
                                **{f"lists/{k}": v
                                   for k, v in pipeline.list_recall(lists, bank).items()}})

        def on_epoch_end(epoch: int, record: dict, _model) -> None:
            # an ensemble member's curves and checkpoints under train/member<i>/...
            member = "" if "member" not in record else f"member{record['member']}/"
            numeric = {f"train/{member}{k}": float(v) for k, v in record.items()
                       if isinstance(v, int | float) and k not in ("epoch", "member")}
            mlflow.log_metrics(numeric, step=epoch)
            if "checkpoint" in record:
                mlflow.log_artifact(record["checkpoint"],
                                    artifact_path=f"checkpoints/{member}".rstrip("/"))

        started = time.perf_counter()
        history = pipeline.train_stage2(
            cfg, model, full, sim, lists, split, val_stage1_sim=val_sim, negatives=negatives,
            on_epoch_end=on_epoch_end, variants=variants,
            checkpoint_dir=Path(run_dir) / "reranker_checkpoints")
        # not train/seconds: the epochs log their own seconds under that key, step by step
        mlflow.log_metric("train/total_seconds", time.perf_counter() - started)
        best_epochs = _best_epochs(history, split is not None)
        mlflow.log_metrics({"train/fusion_weight_t2v": model.fusion_weight_t2v,
                            "train/fusion_weight_v2t": model.fusion_weight_v2t})
        if len(best_epochs) == 1:
            mlflow.log_metric("train/best_epoch", best_epochs[0])
        else:
            mlflow.log_metrics({f"train/member{i}/best_epoch": epoch
                                for i, epoch in enumerate(best_epochs)})
            mlflow.log_metrics({f"train/ensemble_{k}": v for k, v in history[-1].items()
                                if k.startswith("val_")})
        tmp = checkpoint.with_suffix(".pt.tmp")
        epoch = best_epochs[0] if len(best_epochs) == 1 else best_epochs
        torch.save({"state_dict": model.state_dict(), "kwargs": kwargs, "epoch": epoch,
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


def _best_epochs(history: list[dict], validated: bool) -> list[int]:
    """The epoch each member kept (the one of its best validation score, else its last); one
    entry for a single re-ranker."""
    return [(max(records, key=lambda r: r.get("val_mean_R1", 0.0)) if validated
             else records[-1])["epoch"] for records in report.member_histories(history).values()]


def load_reranker(cfg: CrossTVRConfig, ref: RerankerRef) -> Reranker:
    state = torch.load(ref.checkpoint, map_location="cpu")
    model = new_reranker(cfg.reranker, cfg.train.seed, **ref.model_kwargs)
    model.load_state_dict(state["state_dict"])
    return model.eval()


def run_two_stage_eval(cfg: CrossTVRConfig, index_ref: IndexRef, stage1_ref: Stage1Ref,
                       reranker_ref: RerankerRef, run_dir: str, parent_run_id: str) -> dict:
    """Top-K stage-1 candidates per query re-scored; both directions; the re-ranker alone;
    per scene kind and per twin factor; figures."""
    torch.set_num_threads(cfg.train.torch_threads)
    index = index_ref.open()
    bank = index.load_token_bank(cfg.data.eval_split, cfg.index.token_memory_gb)
    (bank,) = pipeline.reranker_banks(cfg, index, bank)
    sim = torch.load(stage1_ref.sim_paths[TEST_SPLIT])
    model = load_reranker(cfg, reranker_ref).to(_device())
    metas = index.caption_meta(bank.caption_ids)

    with step_run(cfg, parent_run_id, "two-stage-eval", reads=index_ref):
        started = time.perf_counter()
        result = pipeline.evaluate_two_stage(cfg, model, bank, sim, metas, progress=True)
        evaluated = time.perf_counter()
        metrics = result.metrics
        metrics["twostage/ms_per_query"] = (1000.0 * (evaluated - started)
                                            / max(1, bank.num_captions + bank.num_videos))
        mlflow.log_metrics(metrics)
        max_k = min(50, bank.num_videos)
        mlflow.log_figure(report.recall_curve_figure(result.ranks, max_k, "text -> video"),
                          "figures/recall_at_k_t2v.png")
        mlflow.log_figure(report.recall_curve_figure(result.v2t_ranks, max_k, "video -> text"),
                          "figures/recall_at_k_v2t.png")
        mlflow.log_figure(report.rank_histogram_figure(result.ranks, "text -> video ranks"),
                          "figures/rank_histogram_t2v.png")
        if any(result.families):
            by_family = {label: report.per_family_recall(r, result.families)
                         for label, r in result.ranks.items()}
            mlflow.log_figure(report.family_bar_figure(by_family, "t2v R@1 per scene kind"),
                              "figures/per_family_r1.png")
        if result.twins:
            mlflow.log_figure(
                report.family_bar_figure(result.twins, "caption scores its video above the "
                                         "one-factor twin (%; chance 50)"),
                "figures/per_factor_twin_acc.png")
        try:  # a picture for people: it must never cost the step its metrics
            log_eval_gallery(cfg, index, index_ref, model, bank, sim, result, metas,
                             parent_run_id)
        except Exception as exc:  # any failure, logged with its traceback
            log.warning("two-stage eval: no gallery (%s: %s)", type(exc).__name__, exc,
                        exc_info=True)
            mlflow.set_tag("crosstvr.gallery_error", f"{type(exc).__name__}: {exc}"[:5000])
    log_metrics_to(parent_run_id, metrics)
    Path(run_dir, "two_stage_metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def display_frame_size(encoder_id: str) -> int:
    """The frame size the encoder saw (its id names it, e.g. '...|64px'): the gallery shows
    the frames at that size, as the index sampled them."""
    match = re.search(r"\|(\d+)px", encoder_id)
    return int(match.group(1)) if match else DEFAULT_DISPLAY_FRAME_SIZE


def _patch_grid(index: TokenIndex, shapes: dict, bank: TokenBank
                ) -> tuple[torch.Tensor | None, int | None]:
    """(patch_index [V, F, P] aligned with the bank's videos, the grid's patch count) for an
    index that keeps only some patches per frame (index.keep_patches); (None, None) when the
    stored patches are the whole grid."""
    grid = int(shapes.get("source_patches") or 0)
    if grid <= shapes["num_patches"]:
        return None, None
    table = index.video_tokens.to_lance().to_table(columns=["video_id", "patch_index"])
    row_of = {v: i for i, v in enumerate(table.column("video_id").to_pylist())}
    positions = fixed_list_to_numpy(table.column("patch_index"),
                                    (shapes["num_frames"], shapes["num_patches"]))
    rows = [row_of[v] for v in bank.video_ids]
    return torch.from_numpy(positions[rows].astype(np.int64)), grid


def log_eval_gallery(cfg: CrossTVRConfig, index: TokenIndex, index_ref: IndexRef,
                     model: Reranker, bank: TokenBank, sim: torch.Tensor,
                     result: pipeline.TwoStageResult, metas: list[dict], parent_run_id: str
                     ) -> None:
    """The evaluation gallery (gallery_data.two_stage_gallery: the queries the re-ranker fixed
    and broke most, twins it ranks above the truth; attention maps, frames decoded again),
    logged under `gallery/` to the active (step) run and to the parent run.

    About 20 queries x 10 hits, each clip decoded once: seconds, whatever the split's size.
    """
    started = time.perf_counter()
    patch_index, grid = _patch_grid(index, index_ref.shapes, bank)
    sections = two_stage_gallery(
        model, bank, sim, result.fused_t2v, result.ranks, metas,
        index.video_uris(bank.video_ids), index.caption_texts(),
        top_k=cfg.eval.top_k, fusion_weight=model.fusion_weight_t2v,
        fusion_score=cfg.eval.fusion_score, frame_size=display_frame_size(index_ref.encoder_id),
        patch_index=patch_index, grid_patches=grid)
    queries = [q for qs in sections.values() for q in qs]
    subtitle = (f"{cfg.data.name}, split {cfg.data.eval_split}: {bank.num_captions} captions, "
                f"{bank.num_videos} videos; stage 1 ({cfg.stage1.method}) top "
                f"{cfg.eval.top_k} re-ranked, fused = stage 1 + {model.fusion_weight_t2v:.3g} "
                f"x stage 2 ({cfg.eval.fusion_score}). Bars under a strip: the re-ranker's "
                "attention over frames; the second strip: its attention over patches.")
    with tempfile.TemporaryDirectory(prefix="crosstvr-gallery-") as tmp:
        write_gallery(queries, Path(tmp), "Two-stage evaluation gallery", subtitle,
                      sections=sections)
        mlflow.log_artifacts(tmp, GALLERY_ARTIFACTS)
        mlflow.MlflowClient().log_artifacts(parent_run_id, tmp, GALLERY_ARTIFACTS)
    mlflow.log_metrics({"gallery/seconds": time.perf_counter() - started,
                        "gallery/queries": float(len(queries))})


stage1_task = task(run_stage1, name="stage1-candidates")
# a retried training step resumes from its last per-epoch checkpoint in the run directory
train_task = task(run_train_reranker, name="train-reranker")
eval_task = task(run_two_stage_eval, name="two-stage-eval")
