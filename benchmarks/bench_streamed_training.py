"""Re-ranker training from a token table larger than memory: peak RSS and steps/s.

Writes (or reuses, with --keep) a token table of random fp16 tokens in ViT-B/16 shapes
(12 frames, all 196 patches of width 768, CLS 512; one caption per video, 77 tokens of
width 512): about 3.6 MB per video, by default more videos than this machine has memory.
Then, each in its own process so that each peak RSS is its own:

1. disk: one listwise epoch (`train_reranker`, the library's training) over the whole table,
   with `index.token_memory_gb` far below its size, so the patches stay in Lance and every
   step reads its rows there;
2. memory: the same training, one epoch over as many videos as --memory-steps steps visit,
   loaded into memory: the speed the streamed epoch is compared with.

Lists are the top K of a random "stage 1" (caption EOT x mean frame CLS): the speed of a step
does not depend on what the lists mean. Not a test: run it by hand, e.g.

    .venv/bin/python benchmarks/bench_streamed_training.py --keep /big/disk/bench-stream
    .venv/bin/python benchmarks/bench_streamed_training.py --videos 400 --memory-steps 20  # quick
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("LANCE_LOG", "error")
os.environ.setdefault("LANCEDB_LOG", "error")

import torch  # noqa: E402

from crosstvr_core.bank_split import bank_subset  # noqa: E402
from crosstvr_core.config import load_config  # noqa: E402
from crosstvr_core.disk_tokens import DiskPatches  # noqa: E402
from crosstvr_core.models.reranker import CrossTVRReranker, reranker_shape_kwargs  # noqa: E402
from crosstvr_core.storage import TokenIndex, TokenShapes  # noqa: E402
from crosstvr_core.synthetic.token_tables import write_random_token_index  # noqa: E402
from crosstvr_core.token_bank import TokenBank  # noqa: E402
from crosstvr_core.training.lists import lists_from_similarity  # noqa: E402
from crosstvr_core.training.reranker import train_reranker  # noqa: E402

VIT_B16 = TokenShapes(num_frames=12, embed_dim=512, num_patches=196, vision_width=768,
                      context_length=77, text_width=512)
ENCODER_ID = "random-tokens:ViT-B-16-shapes"
SPLIT = "train"


class TimedReads(DiskPatches):
    """DiskPatches that count the seconds and bytes of their reads."""

    seconds = 0.0
    bytes = 0

    def __getitem__(self, rows) -> torch.Tensor:
        started = time.perf_counter()
        out = super().__getitem__(rows)
        TimedReads.seconds += time.perf_counter() - started
        TimedReads.bytes += out.numel() * 2
        return out


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def random_lists(bank: TokenBank, k: int):
    """Top-K lists of a random stage 1: caption EOT against the mean of the frame CLS."""
    video = bank.video_cls.float().mean(1)
    sim = torch.nn.functional.normalize(bank.text_eot.float(), dim=-1) @ \
        torch.nn.functional.normalize(video, dim=-1).T
    return lists_from_similarity(sim, sim, k)


def train(args: argparse.Namespace, mode: str) -> dict:
    """One phase in this process: load, fit input statistics, train; figures as a dict."""
    torch.set_num_threads(args.threads)
    cfg = load_config(None, ["train.epochs=1", f"train.list_batch_size={args.batch}",
                             f"train.list_size={args.k}"])
    index = TokenIndex.open_existing(args.uri)
    started = time.perf_counter()
    bank = index.load_token_bank(SPLIT, memory_budget_gb=args.budget_gb)
    if mode == "memory":  # the first videos, as many as --memory-steps steps visit
        bank, _ = bank_subset(bank, torch.arange(min(args.memory_steps * args.batch,
                                                     bank.num_videos)))
        bank.video_patches = bank.video_patches.to_memory()
    else:
        patches = bank.video_patches
        assert isinstance(patches, DiskPatches), "the table fits the budget: raise --videos"
        bank.video_patches = TimedReads(patches._dataset, patches._offsets, index.shapes)
    loaded = time.perf_counter() - started
    lists = random_lists(bank, args.k)
    model = CrossTVRReranker(cfg.reranker, **reranker_shape_kwargs(index.shapes.__dict__))
    started = time.perf_counter()
    model.fit_input_stats(bank)
    stats_seconds = time.perf_counter() - started
    steps = math.ceil(bank.num_videos / args.batch)
    TimedReads.seconds, TimedReads.bytes = 0.0, 0
    started = time.perf_counter()
    train_reranker(model, bank, None, cfg.train, lists=lists, progress=True)
    seconds = time.perf_counter() - started
    return {"mode": mode, "videos": bank.num_videos, "steps": steps, "seconds": seconds,
            "steps_per_s": steps / seconds, "load_s": loaded, "stats_s": stats_seconds,
            "read_s": TimedReads.seconds, "read_gb": TimedReads.bytes / 1e9,
            "peak_rss_gib": peak_rss_gib()}


def write(args: argparse.Namespace) -> None:
    index = None
    if Path(args.uri).exists():
        index = TokenIndex.open_existing(args.uri)
        if index.videos.count_rows() == args.videos:
            print(f"reusing the table of {args.videos:,} videos at {args.uri}")
            return
        shutil.rmtree(args.uri)
    started = time.perf_counter()
    write_random_token_index(
        args.uri, ENCODER_ID, VIT_B16, args.videos, split=SPLIT, captions_per_video=1,
        compact=False,  # appends of ~270 MB each: compaction would rewrite 25 GiB
        progress=lambda n: print(f"\r  wrote {n:,} / {args.videos:,} videos", end="",
                                 flush=True))
    size = sum(f.stat().st_size for f in Path(args.uri).rglob("*") if f.is_file())
    print(f"\nwrote {args.videos:,} videos, {size / 2**30:.1f} GiB on disk, in "
          f"{time.perf_counter() - started:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=7_500,
                        help="videos in the table (default: 25 GiB of tokens, more than "
                        "this machine's memory)")
    parser.add_argument("--memory-steps", type=int, default=60,
                        help="steps of the in-memory comparison (its videos: steps x batch)")
    parser.add_argument("--batch", type=int, default=2,
                        help="train.list_batch_size (a step of 2 captions over ViT-B/16 "
                        "tokens already holds about 2.5 GiB of activations)")
    parser.add_argument("--k", type=int, default=7, help="train.list_size")
    parser.add_argument("--budget-gb", type=float, default=2.0, help="index.token_memory_gb")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", help="write the table here and keep it (default: temp)")
    parser.add_argument("--phase", choices=["write", "disk", "memory"], help=argparse.SUPPRESS)
    parser.add_argument("--uri", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.phase:  # one phase, in a child process
        if args.phase == "write":
            write(args)
        else:
            print("RESULT " + json.dumps(train(args, args.phase)), flush=True)
        return

    root = Path(args.keep or tempfile.mkdtemp(prefix="bench-stream-"))
    uri = str(root / "index.lancedb")
    try:
        results = {}
        for phase in ("write", "memory", "disk"):
            print(f"--- {phase}", flush=True)
            command = [sys.executable, __file__, *sys.argv[1:], "--phase", phase, "--uri", uri]
            out = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
            for line in out.stdout.splitlines():
                if line.startswith("RESULT "):
                    results[phase] = json.loads(line[len("RESULT "):])
                else:
                    print(line)
        for r in results.values():
            print(f"{r['mode']:>6}: {r['videos']:,} videos, {r['steps']} steps of "
                  f"{args.batch} captions x (K = {args.k} videos + the reversed clip, "
                  f"K captions): {r['steps_per_s']:.2f} steps/s; reads {r['read_gb']:.1f} GB "
                  f"in {r['read_s']:.0f} s; load {r['load_s']:.0f} s, input statistics "
                  f"{r['stats_s']:.0f} s; peak RSS {r['peak_rss_gib']:.2f} GiB")
        ratio = results["disk"]["steps_per_s"] / results["memory"]["steps_per_s"]
        print(f"streamed / in-memory steps/s: {ratio:.2f}")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
