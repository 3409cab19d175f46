"""Does the re-ranker read order from the caption, or does it spot a clip played backwards?

Training puts each caption's own clip *played backwards* (its frame tokens in reverse order)
among its negatives. On the generated benchmark a direction or order twin has exactly the
reversed frames of its video, but rendered and encoded forwards. If the model learned the
order the caption says, these four accuracies agree; if it learned to spot token-reversed
clips (codec traces: the keyframe is first in every encoded clip), the reversal accuracies
are high and the twin ones are not:

* twin:          s(c, V) > s(c, W)       W = the twin video (rendered)
* reversal:      s(c, V) > s(c, rev V)   the training negative
* reversed twin: s(c, rev W) > s(c, W)   rev W has V's content, played backwards
* other caption: s(c', V) > s(c', rev V) for a random caption c': 50 if the model has no
  caption-independent preference for forward clips

A split without twins (training) gets the last two only.

    CROSSTVR_HOME=<indexed home> .venv/bin/python experiments/reversal_probe.py PATH

PATH: a model saved by `two_stage.py --save-model`, or a flow run's `runs/<id>/reranker.pt`.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from twin_breakdown import pattern

from crosstvr_core.config import load_config
from crosstvr_core.models.reranker import CrossTVRReranker
from crosstvr_core.retrieval.pair_scoring import score_pairs
from crosstvr_core.storage import TokenIndex
from crosstvr_core.synthetic import video_key
from crosstvr_core.training.negatives import play_backwards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("saved", type=Path)
    parser.add_argument("--split", default=None, help="default: data.eval_split")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    cfg = load_config(None, args.set)
    torch.set_num_threads(cfg.train.torch_threads)
    saved = torch.load(args.saved, weights_only=False)
    if "model" in saved:  # two_stage.py --save-model
        model = saved["model"]
    else:  # a flow run's reranker.pt
        model = CrossTVRReranker(cfg.reranker, **saved["kwargs"])
        model.load_state_dict(saved["state_dict"])
    index = TokenIndex.open_existing(cfg.lance_uri)
    bank = index.load_token_bank(args.split or cfg.data.eval_split, cfg.index.token_memory_gb)
    metas = index.caption_meta(bank.caption_ids)
    texts = index.caption_texts()
    backwards = play_backwards({"video_cls": bank.video_cls, "video_patches": bank.video_patches,
                                "frame_mask": bank.frame_mask})
    reversed_bank = dataclasses.replace(bank, video_cls=backwards["video_cls"],
                                        video_patches=backwards["video_patches"])
    row_of = {video_key(v): j for j, v in enumerate(bank.video_ids)}
    rng = np.random.default_rng(0)
    caption, video, twin, other, keys = [], [], [], [], []
    for i, meta in enumerate(metas):
        kind = pattern(texts[bank.caption_ids[i]], meta.get("variant", ""))
        factors = [f for f in ("direction", "order") if meta.get(f"twin_{f}")] or ["(none)"]
        for factor in factors:
            value = meta.get(f"twin_{factor}")
            caption.append(i)
            video.append(int(bank.caption_video[i]))
            twin.append(row_of[video_key(value)] if value else -1)
            other.append(int(rng.integers(bank.num_captions)))
            keys.append((factor, kind))
    c, v, w, o = (torch.tensor(x) for x in (caption, video, twin, other))
    has_twin = w >= 0

    def score(text_rows, video_bank, video_rows):
        return score_pairs(model, bank, text_rows, video_bank, video_rows, 256,
                           precision=cfg.train.precision).numpy()

    def twin_scores(video_bank):  # NaN where a caption has no twin
        out = np.full(len(c), np.nan)
        if has_twin.any():
            out[has_twin.numpy()] = score(c[has_twin], video_bank, w[has_twin])
        return out

    own, twin_rendered = score(c, bank, v), twin_scores(bank)
    checks = {
        "twin": own - twin_rendered,
        "reversal": own - score(c, reversed_bank, v),
        "reversed twin": twin_scores(reversed_bank) - twin_rendered,
        "other caption": score(o, bank, v) - score(o, reversed_bank, v),
    }
    groups: dict[tuple, list[int]] = defaultdict(list)
    for n, key in enumerate(keys):
        groups[key].append(n)
    print("factor | captions | n | " + " | ".join(checks))
    for key in sorted(groups):
        n = np.array(groups[key])
        cells = [f"{100 * np.mean(values[n] > 0):.1f}" if not np.isnan(values[n]).any()
                 else "-" for values in checks.values()]
        print(f"{key[0]} | {key[1]} | {len(n)} | " + " | ".join(cells))
    if not has_twin.any():
        return
    v, w = v[has_twin], w[has_twin]
    # how far apart the rendered twin and the played-backwards video are, in frozen tokens
    real = bank.frame_mask[v].bool()
    gap = (reversed_bank.video_patches[v] - bank.video_patches[w]).norm(dim=-1)[real].mean()
    spread = (bank.video_patches[v] - bank.video_patches[w]).norm(dim=-1)[real].mean()
    print(f"patch-token distance, rev V vs W: {float(gap):.4f}; V vs W: {float(spread):.4f}")


if __name__ == "__main__":
    main()
