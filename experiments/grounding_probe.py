"""Where the grounding term loses a colour change: the text side or the video side?

For captions "X ... from C1 to C2" (or "is C1 at first and C2 later") of the generated
benchmark, with a re-ranker saved by `two_stage.py --save-model`: the share whose
*expected* time (read from the caption by the grounding term) puts C1 before C2, and the
share whose *observed* time (where in the caption's own clip the grounding finds each
colour) puts C1 before C2. A term that reads the change needs both. Per grounding head.

    CROSSTVR_HOME=<indexed home> .venv/bin/python experiments/grounding_probe.py PATH [--split train]
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import open_clip
import torch
from twin_breakdown import pattern

from crosstvr_core.config import load_config
from crosstvr_core.models.encoder import register_bundled_model_configs
from crosstvr_core.storage import TokenIndex

CHANGE = re.compile(r"(?:from|is) (\w+) (?:to|at first and) (\w+)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("saved", type=Path)
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=400)
    args = parser.parse_args()
    cfg = load_config(None, [])
    torch.set_num_threads(cfg.train.torch_threads)
    register_bundled_model_configs()
    tokenizer = open_clip.get_tokenizer(cfg.encoder.name)
    model = torch.load(args.saved, weights_only=False)["model"].eval()
    index = TokenIndex.open_existing(cfg.lance_uri)
    texts = index.caption_texts()
    bank = index.load_token_bank(args.split)
    metas = index.caption_meta(bank.caption_ids)

    def position(text: str, char: int) -> int:
        """Token index of the word starting at `char` (SOT first, as the tokens are stored)."""
        return int((tokenizer([text[:char].rstrip()])[0] != 0).sum()) - 1

    items = []
    for row, caption_id in enumerate(bank.caption_ids):
        kind = pattern(texts[caption_id], metas[row].get("variant", ""))
        found = CHANGE.search(texts[caption_id])
        if kind == "events/change" and found:
            text = texts[caption_id]
            items.append((row, position(text, found.start(1)), position(text, found.start(2))))
    items = items[: args.limit]
    expected_first, observed_first = [], []
    one = torch.zeros(1, dtype=torch.long)
    with torch.inference_mode():
        for row, first, second in items:
            rows = torch.tensor([row])
            video, text = bank.video_batch(bank.caption_video[rows]), bank.text_batch(rows)
            states = model.encode_text(text["text_tokens"], text["text_mask"])  # [1, L, H]
            visual = model.encode_video(video["video_cls"], video["video_patches"],
                                        video["frame_mask"])
            expected, _, observed = model.grounding_times(
                states, text["text_mask"].bool(), one, visual, video["frame_mask"].bool(), one)
            expected_first.append((expected[0, first] < expected[0, second]).float().numpy())
            observed_first.append((observed[0, :, first] < observed[0, :, second]).float().numpy())
    print(f"{args.split}: {len(items)} colour-change captions")
    for head in range(len(expected_first[0])):
        print(f"head {head}: expected time puts C1 first "
              f"{100 * np.mean([e[head] for e in expected_first]):.1f}%, observed time "
              f"{100 * np.mean([o[head] for o in observed_first]):.1f}%")


if __name__ == "__main__":
    main()
