"""Can a re-ranker config learn frame order at all on this index? A 2-minute diagnostic.

The hardest near-duplicates (direction, order) share their frames with a twin, so only
temporal modelling can tell them apart. This probe trains the re-ranker on exactly that and
nothing else: each training caption against its own video (label 1) and the same video
played backwards (label 0), then reports the share of held-out captions (on held-out videos)
whose forward video outscores the reversed one. Chance is 50%; a value that stays there
while the training loss falls means the config memorises scenes instead of learning order.

Check the kept frames before trusting a rise. When a moving object touches a frame edge at
one end of the kept frames only (e.g. frames 1, 3, ..., 15 of 16), a clip played backwards
shows that edge at the wrong end. A video-only model then wins about 66% without reading
the caption (docs/quality-log.md). The uniform sampler's 0, 2, 4, 6, 9, ..., 15 has no such cue.

It reads the train split's cached tokens of an indexed home (as benchmarks/quality_sweep.py
does, sharing its bank cache) and never runs the encoder.

    CROSSTVR_HOME=/tmp/quality-home .venv/bin/python benchmarks/order_probe.py \
        --steps 1500 --set reranker.hidden_size=64 --set reranker.num_queries=4 \
        --set train.lr=1e-3
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from quality_sweep import build_reranker, load_banks

from crosstvr_core.config import load_config
from crosstvr_core.reranker import CrossTVRReranker
from crosstvr_core.reranker_training import play_backwards
from crosstvr_core.token_bank import TokenBank
from crosstvr_core.token_dataset import VTMPairDataset, split_validation


def forward_and_reversed(bank: TokenBank, rows: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """Inputs of (caption, its video) then (caption, its video backwards), and labels."""
    twice = torch.cat([rows, rows])
    inputs = VTMPairDataset(bank).pairs(twice, bank.caption_video[twice])
    labels = torch.cat([torch.ones(len(rows)), torch.zeros(len(rows))])
    return play_backwards(inputs, start=len(rows)), labels


@torch.no_grad()
def forward_wins(model: CrossTVRReranker, bank: TokenBank, batch_size: int = 256) -> float:
    """% of captions whose own video outscores it played backwards."""
    model.eval()
    wins = 0
    for start in range(0, bank.num_captions, batch_size):
        rows = torch.arange(start, min(start + batch_size, bank.num_captions))
        inputs, _ = forward_and_reversed(bank, rows)
        logits = model(**inputs)
        wins += int((logits[: len(rows)] > logits[len(rows):]).sum())
    model.train()
    return 100.0 * wins / bank.num_captions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None)
    parser.add_argument("--set", action="append", default=[], help="dotted override")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=32, help="captions per step")
    parser.add_argument("--report-every", type=int, default=250)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.set)
    banks, _, shapes = load_banks(cfg)
    split = split_validation(banks["train"], 0.1, cfg.train.seed)
    train, held_out = split.train, split.val
    torch.manual_seed(cfg.train.seed)
    model = build_reranker(cfg, shapes)
    model.fit_input_stats(train)
    optimizer = torch.optim.AdamW(model.optimizer_groups(cfg.train.weight_decay),
                                  lr=cfg.train.lr)
    generator = torch.Generator().manual_seed(cfg.train.seed)
    started, running = time.perf_counter(), []
    for step in range(1, args.steps + 1):
        rows = torch.randint(0, train.num_captions, (args.batch_size,), generator=generator)
        inputs, labels = forward_and_reversed(train, rows)
        loss = F.binary_cross_entropy_with_logits(model(**inputs), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        optimizer.step()
        running.append(loss.item())
        if step % args.report_every == 0 or step == args.steps:
            print(json.dumps({
                "step": step, "train_loss": round(sum(running) / len(running), 4),
                "held_out_forward_wins": round(forward_wins(model, held_out), 1),
                "seconds": round(time.perf_counter() - started, 1),
            }), flush=True)
            running = []


if __name__ == "__main__":
    main()
