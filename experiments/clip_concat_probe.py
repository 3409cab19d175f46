"""Does training on concatenated clips teach the re-ranker when named things happen?

Test of Time (Bagad et al., CVPR 2023) teaches a video-language model time with pairs of
clips played one after the other and captioned with a temporal connective. Here: N pairs of
training videos (x, y); a composite video is half the frames of x (every other one) followed
by half of y, captioned "<caption of x>, then <caption of y>" (or another template); its
training lists put first the composite played the other way round (and its caption), then
x and y alone, then x's own stage-1 list. The composites join the training bank for the
re-ranker only; stage 1 and the lists of real captions come from `two_stage.py`'s cache
(run it once first on the same config). Each epoch then visits 2N more captions.

    CROSSTVR_HOME=.crosstvr .venv/bin/python experiments/clip_concat_probe.py --pairs 500 \
        --set reranker.ensemble_size=1 --tag concat500
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from crosstvr_core import pipeline
from crosstvr_core.storage import TokenIndex
from crosstvr_core.token_bank import CaptionWords, TokenBank
from crosstvr_core.training.caption_variants import encode_variants
from crosstvr_core.training.lists import TrainingLists

sys.path.insert(0, str(Path(__file__).parent))
import two_stage  # noqa: E402  (this folder's script, not a package)

TEMPLATES = ("{a}, then {b}", "{a}, followed by {b}", "{a}, and after that {b}", "{b}, after {a}")


def composite_bank(bank: TokenBank, texts: dict[str, str], encoder, pairs: int, seed: int
                   ) -> tuple[TokenBank, list[tuple[int, int, int, int]]]:
    """`bank` with 2 * pairs composite videos and captions appended (rows V + 2i: x then y,
    V + 2i + 1: y then x; caption rows T + 2i, T + 2i + 1 likewise), and each pair's
    (x, y, caption of x, caption of y) rows."""
    rng = np.random.default_rng(seed)
    num_videos, length = bank.num_videos, bank.text_tokens.shape[1]
    captions_of: dict[int, list[int]] = {}
    for row, video in enumerate(bank.caption_video.tolist()):
        captions_of.setdefault(video, []).append(row)
    made, written = [], []
    for _ in range(pairs * 20):
        if len(made) == pairs:
            break
        x, y = (int(v) for v in rng.choice(num_videos, 2, replace=False))
        cx, cy = (captions_of[v][rng.integers(len(captions_of[v]))] for v in (x, y))
        template = TEMPLATES[rng.integers(len(TEMPLATES))]
        forward = template.format(a=texts[bank.caption_ids[cx]], b=texts[bank.caption_ids[cy]])
        backward = template.format(a=texts[bank.caption_ids[cy]], b=texts[bank.caption_ids[cx]])
        if int((encoder.tokenize([forward, backward]) != 0).sum(1).max()) > length:
            continue  # would be cut: the second clip's words would be lost
        made.append((x, y, cx, cy))
        written += [forward, backward]
    half = torch.arange(0, bank.frame_mask.shape[1], 2)
    xs, ys = torch.tensor([m[0] for m in made]), torch.tensor([m[1] for m in made])

    def joined(name: str) -> torch.Tensor:
        values = getattr(bank, name)
        forward = torch.cat([values[xs][:, half], values[ys][:, half]], 1)
        backward = torch.cat([values[ys][:, half], values[xs][:, half]], 1)
        return torch.cat([values, torch.stack([forward, backward], 1).flatten(0, 1)])

    ids = [f"concat-{i}" for i in range(len(written))]
    encoded = encode_variants(encoder, [[t] for t in written], ids, length,
                              bank.text_words is not None)
    words = None
    if bank.text_words is not None:
        table = bank.text_words.table
        words = CaptionWords(torch.cat([bank.text_words.ids,
                                        encoded.text_words.ids + len(table)]),
                             torch.cat([table, encoded.text_words.table]))
    joined_bank = TokenBank(
        bank.video_ids + ids, joined("video_cls"), joined("video_patches"), joined("frame_mask"),
        bank.caption_ids + [f"{i}#0" for i in ids],
        torch.cat([bank.text_eot, encoded.text_eot.to(bank.text_eot.dtype)]),
        torch.cat([bank.text_tokens, encoded.text_tokens.to(bank.text_tokens.dtype)]),
        torch.cat([bank.text_mask, encoded.text_mask]),
        torch.cat([bank.caption_video, num_videos + torch.arange(len(written))]), words)
    return joined_bank, made


def composite_lists(lists: TrainingLists, made, num_videos: int, num_captions: int
                    ) -> TrainingLists:
    """The lists with the composites' appended: the composite the other way round first,
    then its two clips alone, then the first clip's own stage-1 list."""
    k = lists.videos_per_caption.shape[1]
    by_caption, by_video = [lists.videos_per_caption], [lists.captions_per_video]
    for i, (x, y, cx, cy) in enumerate(made):
        for own, other, first, second, c_first, c_second in (
                (2 * i, 2 * i + 1, x, y, cx, cy), (2 * i + 1, 2 * i, y, x, cy, cx)):
            head = [num_videos + own, num_videos + other, first, second]
            rest = [v for v in lists.videos_per_caption[c_first].tolist() if v not in head]
            by_caption.append(torch.tensor((head + rest)[:k]).unsqueeze(0))
            head = [num_captions + own, num_captions + other, c_first, c_second]
            rest = [c for c in lists.captions_per_video[first].tolist() if c not in head]
            by_video.append(torch.tensor((head + rest)[:k]).unsqueeze(0))
    return TrainingLists(torch.cat(by_caption), torch.cat(by_video))


def patch(pairs: int) -> None:
    train, build = pipeline.train_reranker, pipeline.build_reranker
    state: dict = {}

    def build_reranker(cfg, shapes):
        state["cfg"] = cfg
        return build(cfg, shapes)

    def train_reranker(model, bank, stage1_sim, cfg, *, lists=None, **kwargs):
        key = (bank.num_videos, bank.num_captions)
        if key not in state:  # every member trains on the same composites
            full = state["cfg"]
            encoder = pipeline.load_encoder(full)
            texts = TokenIndex.open_existing(full.lance_uri).caption_texts()
            joined, made = composite_bank(bank, texts, encoder, pairs, full.train.seed)
            print(f"[clip_concat_probe] {len(made)} pairs of clips", flush=True)
            state[key] = (joined, composite_lists(lists, made, bank.num_videos,
                                                  bank.num_captions))
        joined, joined_lists = state[key]
        return train(model, joined, stage1_sim, cfg, lists=joined_lists, **kwargs)

    pipeline.build_reranker, pipeline.train_reranker = build_reranker, train_reranker


if __name__ == "__main__":
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--pairs", type=int, default=500)
    args, rest = parser.parse_known_args()
    patch(args.pairs)
    sys.argv = [sys.argv[0], *rest]
    two_stage.main()
