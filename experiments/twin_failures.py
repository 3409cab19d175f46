"""Which test captions does two-stage get wrong on one twin factor, and why? (generated
benchmark only)

Reads a finished `make benchmark` run's files (`.crosstvr/runs/<run id>/`: reranker.pt,
stage1_test.pt, stage1_val.pt) and lists every caption whose one-factor twin the fused score
ranks above its own video: stage 1's margin (own - twin), the re-ranker's logits of both,
and the two captions; then, per factor and direction, the twins two-stage wins and loses
against stage 1 caption by caption, with the exact McNemar p-value. With `--meanp` it also
fits `a * stage1 + b * stage2 + c * meanP` (the frozen encoder's zero-shot score as a third
fused score) on the validation split, as the flow fits its two-score fusion, and prints the
twin accuracies of both fusions.

    CROSSTVR_HOME=.crosstvr .venv/bin/python experiments/twin_failures.py \
        .crosstvr/runs/<run id> --factor colour --meanp [--set data.name=... --set data.seed=...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from crosstvr_core import pipeline
from crosstvr_core.config import load_config
from crosstvr_core.gallery_data import pick_twin_failures
from crosstvr_core.models.reranker_ensemble import new_reranker
from crosstvr_core.retrieval.metrics import retrieval_metrics
from crosstvr_core.retrieval.pair_scoring import score_pairs
from crosstvr_core.retrieval.two_stage import (
    fit_list_softmax,
    fuse_top_k,
    relevance,
    text_to_video_candidates,
    video_to_text_candidates,
)
from crosstvr_core.storage import TokenIndex
from crosstvr_core.synthetic import FACTORS, near_duplicate_accuracy


def candidates(model, bank, sim: torch.Tensor, k: int, batch_size: int = 256,
               precision: str = "fp32") -> dict[str, tuple]:
    """Per direction: (stage-1 matrix oriented as queries x items, top-K rows, stage-2 logits)."""
    def scorer(text_rows, video_rows):
        return score_pairs(model, bank, text_rows, bank, video_rows, batch_size, device="cpu",
                           precision=precision)
    return {"t2v": (sim, *text_to_video_candidates(sim, k, scorer)),
            "v2t": (sim.T, *video_to_text_candidates(sim, k, scorer))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--config", default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--factor", default="colour", choices=FACTORS)
    parser.add_argument("--meanp", action="store_true")
    args = parser.parse_args()
    cfg = load_config(args.config, args.set)
    torch.set_num_threads(cfg.train.torch_threads)
    index = TokenIndex.open_existing(cfg.lance_uri)
    test, val = pipeline.reranker_banks(cfg, index, index.load_token_bank(cfg.data.eval_split),
                                        index.load_token_bank(cfg.data.val_split))
    metas, texts = index.caption_meta(test.caption_ids), index.caption_texts()
    state = torch.load(args.run_dir / "reranker.pt", map_location="cpu")
    model = new_reranker(cfg.reranker, cfg.train.seed, **state["kwargs"])
    model.load_state_dict(state["state_dict"])
    model.eval()
    k = cfg.eval.top_k
    sims = {"test": torch.load(args.run_dir / "stage1_test.pt").float(),
            "val": torch.load(args.run_dir / "stage1_val.pt").float()}
    scored = {"test": candidates(model, test, sims["test"], k)}
    weights = {"t2v": model.fusion_weight_t2v, "v2t": model.fusion_weight_v2t}
    fused = {d: fuse_top_k(s1, idx, weights[d] * s2, 1.0)
             for d, (s1, idx, s2) in scored["test"].items()}

    first_caption = {}
    for row, video in enumerate(test.caption_video.tolist()):
        first_caption.setdefault(video, row)
    sim, (_, idx, s2) = sims["test"], scored["test"]["t2v"]
    failures = pick_twin_failures(fused["t2v"], test.caption_video, test.video_ids, metas,
                                  count=len(metas)).get(args.factor, [])
    for row, other in failures:
        own, listed = int(test.caption_video[row]), idx[row].tolist()
        logit = {v: (f"{float(s2[row, listed.index(v)]):.2f}" if v in listed else "not listed")
                 for v in (own, other)}
        print(f"stage-1 margin {float(sim[row, own] - sim[row, other]):+.4f}  stage 2 own "
              f"{logit[own]} twin {logit[other]}  [{metas[row].get('variant', '')}]\n"
              f"  own:  {texts[test.caption_ids[row]]}\n"
              f"  twin: {texts[test.caption_ids[first_caption[other]]]}")
    wrong = len(failures)
    print(f"{wrong} captions rank their {args.factor} twin above their own video (t2v)")
    for d in ("t2v", "v2t"):
        after = fused[d] if d == "t2v" else fused[d].T
        changes = pipeline.twin_changes_metrics(
            pipeline.twin_outcomes(sims["test"], test, metas, d),
            pipeline.twin_outcomes(after, test, metas, d), d)
        print(f"{d} against stage 1, caption by caption: " + "; ".join(
            f"{f} +{changes[f'twostage/{d}_twin_gained_{f}']:.0f} "
            f"-{changes[f'twostage/{d}_twin_lost_{f}']:.0f} "
            f"(p {changes[f'twostage/{d}_twin_p_{f}']:.2f})" for f in FACTORS
            if f"twostage/{d}_twin_p_{f}" in changes))

    if args.meanp:
        scored["val"] = candidates(model, val, sims["val"], k)
        meanp = {split: pipeline.stage1_test_similarity(cfg, None, bank).float()
                 for split, bank in (("test", test), ("val", val))}
        three = {}
        for d in ("t2v", "v2t"):
            s1, idx, s2 = scored["val"][d]
            truth = relevance(val.caption_video, val.num_videos)
            hits = (truth if d == "t2v" else truth.T).gather(1, idx)
            zero_shot = (meanp["val"] if d == "t2v" else meanp["val"].T).gather(1, idx)
            a, b, c = fit_list_softmax([s1.gather(1, idx), s2, zero_shot], hits)
            print(f"{d}: three-score fusion weights stage 2 {b / a:.4f}, meanP {c / a:.4f} "
                  f"(two-score: {weights[d]:.4f})")
            s1, idx, s2 = scored["test"][d]
            zero_shot = (meanp["test"] if d == "t2v" else meanp["test"].T).gather(1, idx)
            three[d] = fuse_top_k(s1, idx, (b / a) * s2 + (c / a) * zero_shot, 1.0)
        for name, matrices in (("two scores", fused), ("with meanP", three)):
            t2v, v2t = matrices["t2v"], matrices["v2t"].T
            r1 = (retrieval_metrics(t2v, test.caption_video)["t2v"]["R1"],
                  retrieval_metrics(v2t, test.caption_video)["v2t"]["R1"])
            twins = [near_duplicate_accuracy(m.numpy(), test.caption_video.numpy(),
                                             test.video_ids, metas, direction=d)
                     for m, d in ((t2v, "t2v"), (v2t, "v2t"))]
            print(f"{name}: R@1 {r1[0]:.1f} / {r1[1]:.1f}; twins t2v "
                  + " / ".join(f"{twins[0][f]:.1f}" for f in FACTORS) + "; v2t "
                  + " / ".join(f"{twins[1][f]:.1f}" for f in FACTORS))


if __name__ == "__main__":
    main()
