"""Can a re-ranker config learn frame order? Each caption's list is [its video, one random
video, its video played backwards]; the share of steps where the caption's own video beats
its reversal (train and held-out) says whether the model reads time at all, separately from
everything else two-stage needs. Uses the library's own listwise training step.

    CROSSTVR_HOME=<indexed home> .venv/bin/python experiments/order_probe.py --epochs 4 \
        --set reranker.hidden_size=64
"""

from __future__ import annotations

import argparse

import torch
from two_stage import load_banks  # experiments/ is the script folder

from crosstvr_core import pipeline
from crosstvr_core.config import load_config
from crosstvr_core.training.lists import lists_from_similarity
from crosstvr_core.training.reranker import pair_logits, train_reranker


def held_out_order_accuracy(model, bank, device: str, precision: str) -> float:
    """% of captions whose own video scores above the same video played backwards."""
    rows = torch.arange(bank.num_captions)
    video = bank.caption_video
    with torch.no_grad():
        model.eval()
        forward = torch.cat([pair_logits(model, bank, rows[i:i + 256], video[i:i + 256],
                                         torch.zeros(len(rows[i:i + 256]), dtype=torch.long),
                                         torch.device(device), precision)
                             for i in range(0, len(rows), 256)])
        backward = torch.cat([pair_logits(model, bank, rows[i:i + 256], video[i:i + 256],
                                          torch.ones(len(rows[i:i + 256]), dtype=torch.bool),
                                          torch.device(device), precision)
                              for i in range(0, len(rows), 256)])
    return 100.0 * float((forward > backward).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    cfg = load_config(None, ["train.list_size=2", "train.hard_negative_warmup=0", *args.set])
    torch.set_num_threads(cfg.train.torch_threads)
    banks = load_banks(cfg)
    train, shapes = banks.train, banks.shapes
    split = pipeline.reranker_split(cfg, train, banks.val)
    random = torch.rand(split.train.num_captions, split.train.num_videos,
                        generator=torch.Generator().manual_seed(0))
    lists = lists_from_similarity(random, random, cfg.train.list_size)
    model = pipeline.build_reranker(cfg, shapes)
    model.fit_input_stats(split.train)

    def report(epoch: int, record: dict, model) -> None:
        held = held_out_order_accuracy(model, split.val, pipeline.device(), cfg.train.precision)
        model.train()
        print(f"epoch {epoch}: loss {record['loss']:.3f}, own beats reversed: train "
              f"{100 * record['pos_beats_neg_video']:.1f}%, held-out {held:.1f}%", flush=True)

    train_reranker(model, split.train, None, cfg.train, lists=lists, device=pipeline.device(),
                   on_epoch_end=report, progress=False)


if __name__ == "__main__":
    main()
