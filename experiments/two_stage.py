"""Stage 1 vs two-stage on an indexed home, in-process: the flow's steps without Prefect,
Ray or MLflow, so one config change costs minutes instead of a whole `make benchmark`.

It calls the same library functions as the flow's tasks (crosstvr_core.pipeline) on the same
cached tokens, so with the same config it gives the flow's numbers. Prints the metrics as
JSON and appends them, with the config delta and a tag, to `--out`.

    CROSSTVR_HOME=<indexed home> .venv/bin/python experiments/two_stage.py \
        --set train.epochs=4 --set reranker.temporal_layers=2 --tag deeper-time
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from typing import NamedTuple

import torch

from crosstvr_core import pipeline
from crosstvr_core.config import CrossTVRConfig, load_config
from crosstvr_core.storage import TokenIndex
from crosstvr_core.token_bank import TokenBank
from crosstvr_core.training.caption_variants import CaptionVariants


class Banks(NamedTuple):
    """What a run reads from the index."""

    train: TokenBank
    val: TokenBank | None  # the validation split; None: validation is held out of train
    test: TokenBank
    metas: list[dict]  # the eval captions' metadata
    shapes: dict
    index_id: str  # the encoder and the tables' versions: a re-indexed home invalidates caches
    variants: CaptionVariants | None  # the training captions' variants (train.caption_variants)


def load_banks(cfg: CrossTVRConfig) -> Banks:
    index = TokenIndex.open_existing(cfg.lance_uri)
    train = index.load_token_bank(cfg.data.train_split, cfg.index.token_memory_gb)
    test = index.load_token_bank(cfg.data.eval_split, cfg.index.token_memory_gb)
    val = pipeline.validation_bank(
        cfg, lambda name: index.load_token_bank(name, cfg.index.token_memory_gb))
    index_id = f"{index.encoder_id}|{json.dumps(index.versions(), sort_keys=True)}"
    train, val, test = pipeline.reranker_banks(cfg, index, train, val, test)
    return Banks(train, val, test, index.caption_meta(test.caption_ids),
                 dict(index.shapes.__dict__), index_id,
                 pipeline.caption_variants(cfg, index, train))


def stage1_key(cfg: CrossTVRConfig, index_id: str) -> str:
    """What stage 1 and the training lists depend on: reuse them across re-ranker runs."""
    key = {"index": index_id, "data": cfg.data.model_dump(), "stage1": cfg.stage1.model_dump(),
           "train": {k: getattr(cfg.train, k) for k in ("seed", "val_fraction", "stage1_folds", "lists_from", "fold_epochs",
                                                        "list_size", "loss")},
           "k": cfg.eval.top_k,
           "lists_keep_scores": cfg.train.reads_stage1_scores}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def run(cfg: CrossTVRConfig, banks: Banks, progress: bool = True, cache: Path | None = None,
        save_model: Path | None = None) -> dict:
    """The flow's stage 1, training lists, re-ranker training and evaluation, in order.
    With `cache`, stage 1 and the lists are read from it when this config made them before."""
    train, val, test, metas = banks.train, banks.val, banks.test, banks.metas
    torch.manual_seed(cfg.train.seed)
    seconds: dict[str, float] = {}
    split = pipeline.reranker_split(cfg, train, val)
    part = split.train if split else train
    if cache is not None and cache.is_file():
        saved = torch.load(cache, weights_only=False)
        metrics, train_sim, val_sim, test_sim, lists = (
            saved[k] for k in ("metrics", "train_sim", "val_sim", "test_sim", "lists"))
    else:
        started = time.perf_counter()
        k = cfg.eval.top_k
        metrics = pipeline.stage1_metrics(pipeline.stage1_test_similarity(cfg, None, test), test,
                                          k, "stage1_meanP", metas)
        head = pipeline.fit_stage1_for_reranking(cfg, train, separate_val=val is not None,
                                                 progress=progress)
        train_sim = pipeline.stage1_scorer(head)(train, train)
        test_sim = pipeline.stage1_test_similarity(cfg, head, test)
        metrics.update(pipeline.stage1_metrics(test_sim, test, k, "stage1", metas))
        val_sim = None
        if val is not None:
            val_sim = pipeline.stage1_test_similarity(cfg, head, val)
            metrics.update(pipeline.stage1_metrics(val_sim, val, k, "stage1_val"))
        seconds["stage1"] = time.perf_counter() - started

        started = time.perf_counter()
        lists = None
        if cfg.train.loss == "listwise":
            part_sim = (train_sim[split.train_captions][:, split.train_videos] if split
                        else train_sim)
            lists = pipeline.training_lists(cfg, part, part_sim)
            metrics.update({f"lists/{name}": v
                            for name, v in pipeline.list_recall(lists, part).items()})
        seconds["lists"] = time.perf_counter() - started
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"metrics": metrics, "train_sim": train_sim, "val_sim": val_sim,
                        "test_sim": test_sim, "lists": lists}, cache)
    metrics = dict(metrics)

    started = time.perf_counter()
    model = pipeline.build_reranker(cfg, banks.shapes)
    history = pipeline.train_stage2(cfg, model, train, train_sim, lists, split,
                                    val_stage1_sim=val_sim, progress=progress,
                                    variants=banks.variants)
    seconds["reranker"] = time.perf_counter() - started
    if save_model is not None:  # for experiments/twin_breakdown.py
        save_model.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": model, "test_sim": test_sim}, save_model)
    started = time.perf_counter()
    metrics.update(pipeline.evaluate_two_stage(cfg, model, test, test_sim, metas).metrics)
    seconds["eval"] = time.perf_counter() - started
    return {"metrics": metrics, "history": history, "seconds": seconds}


SUMMARY_KEYS = ("stage1_meanP/t2v_R1", "stage1/t2v_R1", "stage1/v2t_R1", "twostage/t2v_R1",
                "twostage/v2t_R1", "stage2only/t2v_top1_in_top15", "stage2only/v2t_top1_in_top15",
                "twostage/t2v_fusion_weight", "twostage/v2t_fusion_weight")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="YAML/TOML config, as the flow takes")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted config override (repeatable)")
    parser.add_argument("--tag", default="run")
    parser.add_argument("--out", default="experiments/results.jsonl")
    parser.add_argument("--no-cache", action="store_true",
                        help="recompute stage 1 and the training lists even if cached")
    parser.add_argument("--save-model", type=Path, default=None,
                        help="save the trained re-ranker and stage 1's test similarity here")
    args = parser.parse_args()
    cfg = load_config(args.config, args.set)
    torch.set_num_threads(cfg.train.torch_threads)
    banks = load_banks(cfg)
    cache = None if args.no_cache else (
        cfg.home_path / "experiment_cache" / f"stage1-{stage1_key(cfg, banks.index_id)}.pt")
    result = run(cfg, banks, cache=cache, save_model=args.save_model)
    metrics = result["metrics"]
    summary = {key: round(metrics[key], 2) for key in SUMMARY_KEYS if key in metrics}
    validated = [r for r in result["history"] if "val_mean_R1" in r]
    if validated:  # what selection saw: compare configs on this, and look at the test last
        best = max(validated, key=lambda r: r["val_mean_R1"])
        summary.update({f"val/{k}": round(best[f"val_{k}"], 2)
                        for k in ("t2v_R1", "v2t_R1", "mean_R1")})
        summary["val/best_epoch"] = best["epoch"]
    factors = {key: round(v, 1) for key, v in metrics.items() if "twin_acc" in key}
    line = {"tag": args.tag, "set": args.set, "index": banks.index_id, "summary": summary,
            "twins": factors, "seconds": {k: round(v, 1) for k, v in result["seconds"].items()},
            "history": result["history"], "metrics": metrics}
    print(json.dumps({k: line[k] for k in ("tag", "summary", "twins", "seconds")}, indent=1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as handle:
        handle.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
