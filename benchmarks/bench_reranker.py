"""Re-ranker benchmark: why tokens are cached, and what re-ranking costs per query.

1. Training step on cached tokens vs the same step recomputing the frozen encoder.
   The batch is what one training step of train_reranker reads: B captions with their
   videos, one negative video per caption and one negative caption per video (3B pairs,
   2B distinct videos, 2B distinct captions). The "recompute" step runs
   crosstvr_core.models.encoder (random-init open_clip weights: the tiny embedded ViT and
   ViT-B-32) on the raw frames and texts of those videos and captions (no decoding), then
   the same re-ranker forward + backward + AdamW step. The "cached" step reads the same
   tokens, fp16, from a TokenBank. The paper's scalability claim needs this ratio >> 1 (goal >= 20x).
2. Per-query re-ranking latency at K = 15 (score_pairs, eval mode, CPU): one query at a
   time, and amortised over a batch of queries; versus re-ranking the whole gallery
   (N = 1,000 videos, the MSR-VTT 1k-A test size) for one query. For the embedded config
   (tiny encoder token shapes) and ViT-B/32 token shapes (F = 12, P = 49, Wv = 768,
   D = 512, L = 77, Wt = 512) with a re-ranker of hidden 512, 8 heads, 2 layers, and with
   the default re-ranker (hidden 128, 4 heads, 1 layer).

Not a test: run it by hand (about 4 minutes on one thread), e.g.

    .venv/bin/python benchmarks/bench_reranker.py --threads 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from crosstvr_core.config import RerankerConfig
from crosstvr_core.models.encoder import EncoderSpec, FrozenEncoder, register_bundled_model_configs
from crosstvr_core.models.reranker import CrossTVRReranker
from crosstvr_core.retrieval.pair_scoring import score_pairs
from crosstvr_core.token_bank import TokenBank

K = 15
CORPUS = 1000


@dataclass(frozen=True)
class Setup:
    name: str
    encoder: str  # open_clip model name
    frames: int
    reranker: RerankerConfig
    # token shapes (for the latency part, which needs no encoder)
    embed_dim: int
    num_patches: int
    vision_width: int
    context_length: int
    text_width: int


SETUPS = {
    "embedded": Setup("embedded (tiny ViT, default re-ranker)", "crosstvr-tiny-vit", 8,
                      RerankerConfig(), 128, 16, 128, 32, 128),
    "vitb32": Setup("ViT-B/32, re-ranker hidden 512 x 2 layers", "ViT-B-32", 12,
                    RerankerConfig(hidden_size=512, num_heads=8, num_layers=2),
                    512, 49, 768, 77, 512),
    "vitb32-small": Setup("ViT-B/32, default re-ranker (hidden 128 x 1 layer)", "ViT-B-32", 12,
                          RerankerConfig(), 512, 49, 768, 77, 512),
}
_ENCODERS: dict[str, FrozenEncoder] = {}


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def load_random_encoder(name: str) -> FrozenEncoder:
    """crosstvr_core.models.encoder around a seeded random-init open_clip model (no weights file)."""
    register_bundled_model_configs()
    torch.manual_seed(0)
    model = open_clip.create_model(name, pretrained=None)
    return FrozenEncoder(model, open_clip.get_tokenizer(name), EncoderSpec(name), "random-seed0")


def make_step(model: CrossTVRReranker, optimizer: torch.optim.Optimizer):
    """One training step of the re-ranker on given pair inputs (forward, backward, AdamW)."""

    def step(inputs: dict[str, torch.Tensor], labels: torch.Tensor) -> None:
        loss = F.binary_cross_entropy_with_logits(model(**inputs), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    return step


def bench_training_step(setup: Setup, batch: int, repeats: int) -> dict[str, float]:
    """Seconds per training step: recomputing the encoder vs reading cached tokens."""
    if setup.encoder not in _ENCODERS:
        _ENCODERS[setup.encoder] = load_random_encoder(setup.encoder)
    encoder = _ENCODERS[setup.encoder]
    size = encoder.image_size
    rng = np.random.default_rng(0)
    num_videos, num_captions = 2 * batch, 2 * batch  # positives + negative videos / captions
    frames = rng.integers(0, 256, (num_videos, setup.frames, size, size, 3), dtype=np.uint8)
    texts = [f"a red square moves left, then a blue circle appears at the top {i}"
             for i in range(num_captions)]
    # pairs: (caption i, video i) positive, (caption i, video B+i), (caption B+i, video i)
    first = torch.arange(batch)
    pair_text = torch.cat([first, first, first + batch])
    pair_video = torch.cat([first, first + batch, first])
    labels = torch.cat([torch.ones(batch), torch.zeros(2 * batch)])

    def encode_all() -> TokenBank:
        cls, patches = encoder.encode_frames(frames.reshape(-1, size, size, 3))
        _, tokens, lengths = encoder.encode_captions(texts)
        return TokenBank(
            video_ids=[f"v{i}" for i in range(num_videos)],
            video_cls=cls.reshape(num_videos, setup.frames, -1).half(),
            video_patches=patches.reshape(num_videos, setup.frames, *patches.shape[1:]).half(),
            frame_mask=torch.ones(num_videos, setup.frames, dtype=torch.bool),
            caption_ids=[f"c{i}" for i in range(num_captions)],
            text_eot=torch.zeros(num_captions, cls.shape[-1]).half(),
            text_tokens=tokens.half(),
            text_mask=torch.arange(tokens.shape[1])[None, :] < lengths[:, None],
            caption_video=torch.arange(num_captions) % num_videos,
        )

    bank = encode_all()
    model = CrossTVRReranker(setup.reranker, bank.video_cls.shape[-1],
                             bank.video_patches.shape[-1], bank.text_tokens.shape[-1],
                             setup.frames, bank.video_patches.shape[2])
    model.fit_input_stats(bank)
    model.train()
    step = make_step(model, torch.optim.AdamW(model.parameters(), lr=1e-4))

    def pair_inputs(source: TokenBank) -> dict[str, torch.Tensor]:
        return {**source.text_batch(pair_text), **source.video_batch(pair_video)}

    cached = timed(lambda: step(pair_inputs(bank), labels), repeats)
    # the encoder already ran once (warm) to fill the bank; ViT-B/32 steps take many seconds
    recompute = timed(lambda: step(pair_inputs(encode_all()), labels), max(1, repeats // 4),
                      warmup=0)
    return {"cached_s": statistics.median(cached), "recompute_s": statistics.median(recompute),
            "frames": num_videos * setup.frames, "pairs": len(pair_text)}


def random_bank(setup: Setup, num_videos: int, num_captions: int) -> TokenBank:
    gen = torch.Generator().manual_seed(0)
    return TokenBank(
        video_ids=[f"v{i}" for i in range(num_videos)],
        video_cls=torch.randn(num_videos, setup.frames, setup.embed_dim, generator=gen).half(),
        video_patches=torch.randn(num_videos, setup.frames, setup.num_patches,
                                  setup.vision_width, generator=gen).half(),
        frame_mask=torch.ones(num_videos, setup.frames, dtype=torch.bool),
        caption_ids=[f"c{i}" for i in range(num_captions)],
        text_eot=torch.zeros(num_captions, setup.embed_dim).half(),
        text_tokens=torch.randn(num_captions, setup.context_length, setup.text_width,
                                generator=gen).half(),
        text_mask=(torch.arange(setup.context_length) < 16).expand(num_captions, -1).clone(),
        caption_video=torch.arange(num_captions) % num_videos,
    )


def bench_latency(setup: Setup, queries: int, batch_size: int) -> dict[str, float]:
    """Per-query re-ranking latency (ms) at K = 15 and for the whole gallery."""
    bank = random_bank(setup, CORPUS, queries)
    model = CrossTVRReranker(setup.reranker, setup.embed_dim, setup.vision_width,
                             setup.text_width, setup.frames, setup.num_patches)
    model.fit_input_stats(bank)
    gen = torch.Generator().manual_seed(1)
    top_k = torch.stack([torch.randperm(CORPUS, generator=gen)[:K] for _ in range(queries)])

    def one_query(q: int) -> None:
        score_pairs(model, bank, torch.full((K,), q), bank, top_k[q], batch_size)

    single = [timed(lambda q=q: one_query(q), 1, warmup=1 if q == 0 else 0)[0]
              for q in range(queries)]
    rows = torch.arange(queries).repeat_interleave(K)
    batched = timed(lambda: score_pairs(model, bank, rows, bank, top_k.reshape(-1), batch_size),
                    1)[0] / queries
    corpus = timed(lambda: score_pairs(model, bank, torch.zeros(CORPUS, dtype=torch.long), bank,
                                       torch.arange(CORPUS), batch_size), 1, warmup=0)[0]
    params = sum(p.numel() for p in model.parameters())
    return {"k15_single_ms": 1000 * statistics.median(single), "k15_batched_ms": 1000 * batched,
            "corpus_ms": 1000 * corpus, "params_m": params / 1e6}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setups", default="embedded,vitb32,vitb32-small")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8, help="captions per training step")
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--queries", type=int, default=16)
    ap.add_argument("--score-batch", type=int, default=256)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, load average "
          f"{os.getloadavg()[0]:.1f} at start\n")

    print("| setup | step on cached tokens | step recomputing the encoder | ratio |")
    print("|---|---|---|---|")
    for key in args.setups.split(","):
        setup = SETUPS[key]
        r = bench_training_step(setup, args.batch, args.repeats)
        print(f"| {setup.name}: {r['pairs']} pairs, {r['frames']} frames | "
              f"{1000 * r['cached_s']:.0f} ms | {1000 * r['recompute_s']:.0f} ms | "
              f"{r['recompute_s'] / r['cached_s']:.0f}x |", flush=True)

    print(f"\n| setup | params | K={K}, one query | K={K}, batched ({args.queries} queries) "
          f"| whole gallery (N={CORPUS}), one query | ratio gallery / K={K} |")
    print("|---|---|---|---|---|---|")
    for key in args.setups.split(","):
        setup = SETUPS[key]
        r = bench_latency(setup, args.queries, args.score_batch)
        print(f"| {setup.name} | {r['params_m']:.2f} M | {r['k15_single_ms']:.1f} ms | "
              f"{r['k15_batched_ms']:.1f} ms | {r['corpus_ms']:.0f} ms | "
              f"{r['corpus_ms'] / r['k15_single_ms']:.0f}x |", flush=True)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
