"""Quality sweep on the generated benchmark: stage 1 (meanP, seqTransf) vs two-stage.

Reads the cached tokens of an indexed home (no Ray, no Prefect, no MLflow) and reproduces
the flow's stage-1, re-ranker training and two-stage steps in-process, so one config delta
costs minutes instead of a whole `make benchmark`. Each run prints and appends one JSON
line to `--out`: overall t2v R@1/R@5, R@1 per scene kind (motion / events), per-factor
near-duplicate accuracy (colour, position, direction, order; chance 50), recall@K, seconds.

The banks are cached once as `<home>/quality_banks.pt` (the Lance read takes ~30 s).

    CROSSTVR_HOME=/tmp/quality-home .venv/bin/python benchmarks/quality_sweep.py \
        --set stage1.epochs=40 --set reranker.hidden_size=128 --tag my-run
    # stage 1 only: --stage1-only ; a config file as the flow takes it: --config configs/full.yaml
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import lancedb
import numpy as np
import torch

from crosstvr_core import synthetic
from crosstvr_core.config import CrossTVRConfig, load_config
from crosstvr_core.metrics import retrieval_metrics, text_to_video_ranks
from crosstvr_core.report import per_family_recall
from crosstvr_core.reranker import CrossTVRReranker, reranker_shape_kwargs
from crosstvr_core.reranker_training import (
    NegativeScores,
    Validation,
    score_pairs,
    train_reranker,
)
from crosstvr_core.stage1 import meanp_similarity, stage1_training_bank, top_k_candidates
from crosstvr_core.storage import ENCODER_KEY, SHAPES_KEY, VIDEO_TOKENS, TokenIndex, TokenShapes
from crosstvr_core.temporal_head import TemporalHead, dual_softmax
from crosstvr_core.temporal_head_training import temporal_similarity, train_temporal_head
from crosstvr_core.token_bank import TokenBank
from crosstvr_core.token_dataset import split_validation
from crosstvr_core.two_stage import fuse_top_k, rerank_text_to_video


def open_index(cfg: CrossTVRConfig) -> TokenIndex:
    """The index the flow wrote for cfg.data.name, bound to the encoder its tables record."""
    db = lancedb.connect(cfg.lance_uri)
    if VIDEO_TOKENS not in db.list_tables().tables:
        raise SystemExit(f"no '{VIDEO_TOKENS}' table in {cfg.lance_uri}: index the home first")
    meta = db.open_table(VIDEO_TOKENS).schema.metadata
    shapes = TokenShapes(**json.loads(meta[SHAPES_KEY]))
    return TokenIndex(cfg.lance_uri, meta[ENCODER_KEY].decode(), shapes)


def load_banks(cfg: CrossTVRConfig) -> tuple[dict[str, TokenBank], list[dict], dict]:
    """Train and test banks, the test captions' metadata and the token shapes (cached)."""
    cache = cfg.home_path / "quality_banks.pt"
    if cache.exists():
        saved = torch.load(cache, weights_only=False)
        return saved["banks"], saved["test_meta"], saved["shapes"]
    index = open_index(cfg)
    banks = {split: index.load_token_bank(split) for split in ("train", "test")}
    meta = index.caption_meta(banks["test"].caption_ids)
    shapes = dict(index.shapes.__dict__)
    torch.save({"banks": banks, "test_meta": meta, "shapes": shapes}, cache)
    return banks, meta, shapes


def quality(sim: torch.Tensor, bank: TokenBank, meta: list[dict], k: int) -> dict:
    """Overall, per scene kind and per factor numbers of one test similarity [T, V]."""
    ranks = text_to_video_ranks(sim, bank.caption_video)
    t2v = retrieval_metrics(sim, bank.caption_video)["t2v"]
    kinds = per_family_recall(ranks, [m.get("variant", "") for m in meta])
    factors = synthetic.near_duplicate_accuracy(
        sim.numpy(), bank.caption_video.tolist(), bank.video_ids, meta)
    return {"R1": round(t2v["R1"], 2), "R5": round(t2v["R5"], 2),
            f"recall_at_{k}": round(float(100.0 * np.mean(ranks < k)), 2),
            **{f"R1_{kind}": round(v, 2) for kind, v in kinds.items() if kind != "all"},
            **{f"nd_{factor}": round(v, 2) for factor, v in factors.items()}}


def run_stage1(cfg: CrossTVRConfig, banks: dict[str, TokenBank]) -> dict[str, torch.Tensor]:
    """seqTransf similarities for train and test, as tasks/retrieval.run_stage1 makes them.

    Cached per stage-1 config under <home>/quality_stage1/, so re-ranker sweeps that keep
    stage 1 fixed do not retrain it (delete the folder after changing the head's code).
    """
    held_out = (cfg.train.val_fraction, cfg.train.seed)  # what stage1_training_bank leaves out
    key = hashlib.sha256(f"{cfg.stage1.model_dump_json()}{held_out}".encode()).hexdigest()[:12]
    cache = cfg.home_path / "quality_stage1" / f"{key}.pt"
    if cache.exists():
        return torch.load(cache)
    train = stage1_training_bank(cfg, banks["train"])
    head = TemporalHead.for_bank(cfg.stage1, train)
    train_temporal_head(head, train, cfg.stage1, progress=False)
    sims = {split: temporal_similarity(head, bank) for split, bank in banks.items()}
    if cfg.stage1.dual_softmax:
        sims["test"] = dual_softmax(sims["test"], cfg.stage1.dual_softmax_temperature)
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sims, cache)
    return sims


def build_reranker(cfg: CrossTVRConfig, shapes: dict) -> CrossTVRReranker:
    """An untrained re-ranker sized by the index's token shapes."""
    return CrossTVRReranker(cfg.reranker, **reranker_shape_kwargs(shapes))


def run_reranker(cfg: CrossTVRConfig, banks: dict[str, TokenBank], shapes: dict,
                 train_sim: torch.Tensor) -> tuple[CrossTVRReranker, list[dict]]:
    """Train as tasks/retrieval.run_train_reranker does (validation split, early stopping)."""
    t, e = cfg.train, cfg.eval
    torch.manual_seed(t.seed)
    full = banks["train"]
    scores = NegativeScores.from_similarity(train_sim)
    bank, validation = full, None
    if t.val_fraction > 0:
        split = split_validation(full, t.val_fraction, t.seed)
        bank = split.train
        scores = NegativeScores(scores.videos_per_caption[split.train_captions][:, split.train_videos],
                                scores.captions_per_video[split.train_videos][:, split.train_captions])
        validation = Validation(split.val, train_sim[split.val_captions][:, split.val_videos],
                                e.top_k, e.fusion_weight, e.fusion_score, e.batch_size)
    model = build_reranker(cfg, shapes)
    model.fit_input_stats(bank)

    def report_epoch(epoch: int, record: dict, _model) -> None:
        shown = {k: round(v, 4) for k, v in record.items() if isinstance(v, float)}
        print(f"  reranker epoch {epoch}: {shown}", flush=True)

    history = train_reranker(model, bank, scores, t, progress=False, validation=validation,
                             on_epoch_end=report_epoch)
    return model, history


def two_stage(cfg: CrossTVRConfig, model: CrossTVRReranker, bank: TokenBank,
              sim: torch.Tensor, weights: list[float]) -> dict[float, torch.Tensor]:
    """Fused t2v matrices, one per fusion weight, from one scoring pass over the top K."""
    e = cfg.eval

    def scorer(text_rows: torch.Tensor, video_rows: torch.Tensor) -> torch.Tensor:
        logits = score_pairs(model, bank, text_rows, bank, video_rows, e.batch_size)
        return torch.sigmoid(logits) if e.fusion_score == "prob" else logits

    _, stage2 = rerank_text_to_video(sim, e.top_k, scorer, e.fusion_weight)
    _, top = top_k_candidates(sim, e.top_k)
    return {w: fuse_top_k(sim, top, stage2, w) for w in weights}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="a config file, as the flow takes it")
    parser.add_argument("--set", action="append", default=[], help="dotted override")
    parser.add_argument("--tag", default="", help="a name for this run in the log")
    parser.add_argument("--stage1-only", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fusion-weights", type=float, nargs="*", default=[0.05, 0.2, 0.5],
                        help="also report two-stage with these eval.fusion_weight values")
    parser.add_argument("--out", default="quality_sweep.jsonl")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.set)
    banks, meta, shapes = load_banks(cfg)
    test, k = banks["test"], cfg.eval.top_k
    result = {"tag": args.tag, "config": args.config, "overrides": args.set,
              "meanP": quality(meanp_similarity(test), test, meta, k)}
    started = time.perf_counter()
    sims = run_stage1(cfg, banks)
    result["stage1_seconds"] = round(time.perf_counter() - started, 1)
    result["seqTransf"] = quality(sims["test"], test, meta, k)
    print(json.dumps(result), flush=True)
    if not args.stage1_only:
        started = time.perf_counter()
        model, history = run_reranker(cfg, banks, shapes, sims["train"])
        result["reranker_seconds"] = round(time.perf_counter() - started, 1)
        result["reranker_epochs_run"] = len(history)
        started = time.perf_counter()
        weights = sorted({cfg.eval.fusion_weight, *args.fusion_weights})
        fused = two_stage(cfg, model, test, sims["test"], weights)
        result["eval_seconds"] = round(time.perf_counter() - started, 1)
        result["two_stage"] = quality(fused[cfg.eval.fusion_weight], test, meta, k)
        for weight in weights:  # other weights: how much the re-ranker should count
            result[f"two_stage_w{weight:g}"] = quality(fused[weight], test, meta, k)
    print(json.dumps(result), flush=True)
    with Path(args.out).open("a") as out:
        out.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
