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
import torch.nn.functional as F
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
    heads = getattr(model, "ground_heads", 1)
    expected_first, observed_first = [], []
    with torch.inference_mode():
        for row, first, second in items:
            rows = torch.tensor([row])
            video, text = bank.video_batch(bank.caption_video[rows]), bank.text_batch(rows)
            states = model.encode_text(text["text_tokens"], text["text_mask"])  # [1, L, H]
            visual = model.encode_video(video["video_cls"], video["video_patches"],
                                        video["frame_mask"])
            keys = F.normalize(model.ground_text(states).unflatten(-1, (heads, -1)), dim=-1)
            content = visual[:, :, 1:]
            tokens = F.normalize(model.ground_video(content).unflatten(-1, (heads, -1)), dim=-1)
            similarity = torch.einsum("blgh,bftgh->bglft", keys, tokens).amax(dim=-1)
            place = torch.linspace(-1, 1, similarity.shape[-1])
            observed = ((similarity * model.ground_sharpness.exp()).softmax(-1) * place).sum(-1)[0]
            when = model.ground_when(states).unflatten(-1, (2, heads))[0, :, 0]  # [L, G]
            expected_first.append((when[first] < when[second]).float().numpy())
            observed_first.append((observed[:, first] < observed[:, second]).float().numpy())
    print(f"{args.split}: {len(items)} colour-change captions")
    for head in range(heads):
        print(f"head {head}: expected time puts C1 first "
              f"{100 * np.mean([e[head] for e in expected_first]):.1f}%, observed time "
              f"{100 * np.mean([o[head] for o in observed_first]):.1f}%")


if __name__ == "__main__":
    main()
