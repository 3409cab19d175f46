"""Do re-rankers trained differently add up? Evaluate saved single re-rankers together.

Takes models saved by `two_stage.py --save-model` on one config (same index, same stage 1:
read from two_stage.py's cache) and evaluates them two ways:
* `mean`: their logits averaged, as `reranker.ensemble_size` does (`RerankerEnsemble`), the
  fusion weights fit on validation as the pipeline fits them;
* `fused`: each member's logit its own fused score, `a * stage1 + sum_i b_i * stage2_i`,
  the multipliers fit on validation by the same listwise likelihood (`fit_list_softmax`).
With one model, `mean` reproduces that model's own two_stage.py line.

    S="--set data.name=generated-fine-grained-s1 --set data.seed=1 --set reranker.ensemble_size=1"
    CROSSTVR_HOME=.crosstvr .venv/bin/python experiments/two_stage.py $S --save-model /tmp/a.pt
    CROSSTVR_HOME=.crosstvr .venv/bin/python experiments/two_stage.py $S \
        --set train.stage1_distillation=1 --save-model /tmp/b.pt
    CROSSTVR_HOME=.crosstvr .venv/bin/python experiments/saved_ensemble.py $S /tmp/a.pt /tmp/b.pt
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from crosstvr_core import pipeline
from crosstvr_core.config import load_config
from crosstvr_core.models.reranker_ensemble import RerankerEnsemble
from crosstvr_core.retrieval.metrics import retrieval_metrics
from crosstvr_core.retrieval.two_stage import (
    fit_list_softmax,
    fuse_top_k,
    relevance,
)
from crosstvr_core.synthetic import FACTORS, near_duplicate_accuracy
from crosstvr_core.training.reranker import Validation, validate_two_stage

sys.path.insert(0, str(Path(__file__).parent))
import two_stage  # noqa: E402  (this folder's scripts, not a package)
from twin_failures import candidates  # noqa: E402


def averaged(cfg, banks, saved: dict, models: list) -> dict[str, float]:
    """`mean`: the members' averaged logit, evaluated as the flow evaluates a re-ranker."""
    model = models[0] if len(models) == 1 else RerankerEnsemble(models)
    model.eval()
    split = pipeline.reranker_split(cfg, banks.train, banks.val)
    e = cfg.eval
    validation = Validation(split.val, saved["val_sim"], e.top_k, e.fusion_weight,
                            e.fusion_score, e.batch_size, e.fusion_pick)
    record = validate_two_stage(model, validation, torch.device("cpu"), cfg.train.precision)
    model.set_fusion_weights(record["val_t2v_fusion_weight"], record["val_v2t_fusion_weight"])
    return pipeline.evaluate_two_stage(cfg, model, banks.test, saved["test_sim"],
                                       banks.metas).metrics


def fused_apart(cfg, banks, saved: dict, models: list) -> dict[str, float]:
    """`fused`: one fused score per member, the multipliers fit on validation."""
    k = cfg.eval.top_k
    splits = {"val": (banks.val, saved["val_sim"].float()),
              "test": (banks.test, saved["test_sim"].float())}
    scored = {name: [candidates(model, bank, sim, k, cfg.eval.batch_size, cfg.train.precision)
                     for model in models]
              for name, (bank, sim) in splits.items()}
    matrices = {}
    for direction in ("t2v", "v2t"):
        def parts(name: str, direction: str = direction) -> tuple:
            """(stage 1 oriented, top-K rows, each member's logits, right items oriented)."""
            bank = splits[name][0]
            stage1, top, _ = scored[name][0][direction]
            truth = relevance(bank.caption_video, bank.num_videos)
            return (stage1, top, [member[direction][2].float() for member in scored[name]],
                    truth if direction == "t2v" else truth.T)

        stage1, top, scores, truth = parts("val")
        first, *rest = fit_list_softmax([stage1.gather(1, top), *scores], truth.gather(1, top))
        stage1, top, scores, _ = parts("test")
        fused = fuse_top_k(stage1, top, sum(b / first * s for b, s in zip(rest, scores, strict=True)),
                           1.0)
        matrices[direction] = fused if direction == "t2v" else fused.T
    test = banks.test
    metrics = {f"twostage/{d}_R1": retrieval_metrics(matrices[d], test.caption_video)[d]["R1"]
               for d in ("t2v", "v2t")}
    for direction, matrix in matrices.items():
        twins = near_duplicate_accuracy(matrix.numpy(), test.caption_video.numpy(),
                                        test.video_ids, banks.metas, direction=direction)
        metrics.update({f"twostage/{direction}_twin_acc_{f}": v for f, v in twins.items()})
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path, help="two_stage.py --save-model files")
    parser.add_argument("--config", default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--mode", choices=("mean", "fused", "both"), default="both")
    parser.add_argument("--tag", default="saved-ensemble")
    parser.add_argument("--out", default=None, help="append the metrics here as JSON lines")
    args = parser.parse_args()
    cfg = load_config(args.config, args.set)
    torch.set_num_threads(cfg.train.torch_threads)
    banks = two_stage.load_banks(cfg)
    cache = (cfg.home_path / "experiment_cache"
             / f"stage1-{two_stage.stage1_key(cfg, banks.index_id)}.pt")
    if not cache.is_file():
        raise SystemExit(f"{cache} is missing: run two_stage.py on this config first")
    saved = torch.load(cache, weights_only=False)
    models = [torch.load(path, weights_only=False)["model"].eval() for path in args.models]
    modes = ("mean", "fused") if args.mode == "both" else (args.mode,)
    for mode in modes:
        evaluate = averaged if mode == "mean" else fused_apart
        metrics = evaluate(cfg, banks, saved, models)
        line = (f"{mode}: R@1 {metrics['twostage/t2v_R1']:.1f} / {metrics['twostage/v2t_R1']:.1f}"
                + "".join(f"; {d} twins " + " / ".join(
                    f"{metrics[f'twostage/{d}_twin_acc_{f}']:.1f}" for f in FACTORS
                    if f"twostage/{d}_twin_acc_{f}" in metrics) for d in ("t2v", "v2t")))
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as out:
                out.write(json.dumps({"tag": f"{args.tag}-{mode}", "set": args.set,
                                      "models": [str(path) for path in args.models],
                                      "metrics": metrics}) + "\n")


if __name__ == "__main__":
    main()
