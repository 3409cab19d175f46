"""Text search latency and throughput over a large synthetic index.

Writes a synthetic token table of N videos (random fp16 tokens of the configured encoder's
shapes; the models are random-init too: latency does not depend on what they learned), then
times `TextSearcher.search` end to end: text encode, stage 1 over all N (exact below
`--exact-below`, else the LanceDB ANN index it builds and measures), the re-ranker over the
top K = 15 candidates read by id from Lance. Prints single-query p50 / p95 and a batch's
queries per second with the share of each stage. Not a test: run it by hand, e.g.

    .venv/bin/python benchmarks/bench_query.py --videos 100000
    .venv/bin/python benchmarks/bench_query.py --videos 1000000 --keep-patches 4 \
        --queries 50 --batch 1000 --keep /big/disk/bench-1m   # then once more, same --keep
    .venv/bin/python benchmarks/bench_query.py --videos 100000 --encoder ViT-B-32 \\
        --frames 12 --keep-patches 4 --hidden 256
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("LANCE_LOG", "error")
os.environ.setdefault("LANCEDB_LOG", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from crosstvr_core.config import load_config  # noqa: E402
from crosstvr_core.models.encoder import EncoderSpec, load_frozen_encoder  # noqa: E402
from crosstvr_core.models.reranker import reranker_shape_kwargs  # noqa: E402
from crosstvr_core.models.reranker_ensemble import new_reranker  # noqa: E402
from crosstvr_core.models.temporal_head import TemporalHead  # noqa: E402
from crosstvr_core.retrieval.text_search import SearchModels, TextSearcher, stage1_key  # noqa: E402
from crosstvr_core.storage import TokenIndex, TokenShapes  # noqa: E402
from crosstvr_core.synthetic.token_tables import write_random_token_index  # noqa: E402

WORDS = ("a", "small", "big", "red", "blue", "green", "yellow", "circle", "square",
         "triangle", "moves", "left", "right", "up", "down", "appears", "leaves", "then",
         "first", "later", "top", "bottom", "centre", "corner", "changes", "colour")


def peak_rss_gib() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def current_rss_gib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def random_query(rng: np.random.Generator) -> str:
    return " ".join(rng.choice(WORDS, size=int(rng.integers(6, 14))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=100_000)
    parser.add_argument("--encoder", default="crosstvr-tiny-vit")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--keep-patches", type=int, default=None)
    parser.add_argument("--hidden", type=int, default=64, help="reranker.hidden_size")
    parser.add_argument("--members", type=int, default=None,
                        help="reranker.ensemble_size (default: the config's)")
    parser.add_argument("--exact-below", type=int, default=50_000)
    parser.add_argument("--queries", type=int, default=100, help="timed single queries")
    parser.add_argument("--batch", type=int, default=10_000, help="queries in the batch run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", help="write the index here and keep it (default: temp)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cfg = load_config(None, [f"reranker.hidden_size={args.hidden}"]
                      + ([] if args.members is None else [f"reranker.ensemble_size={args.members}"]))
    root = Path(args.keep or tempfile.mkdtemp(prefix="bench-query-"))
    encoder = load_frozen_encoder(EncoderSpec(args.encoder), weights_dir=root / "weights")
    shapes = TokenShapes(args.frames, encoder.embed_dim, args.keep_patches or encoder.num_patches,
                         encoder.vision_width, encoder.context_length, encoder.text_width)
    uri = str(root / "index.lancedb")
    started = time.perf_counter()
    try:
        index = TokenIndex(uri, encoder.encoder_id, shapes)
        if index.video_tokens.count_rows() == args.videos:
            index.compact()  # a kept index written before the id indexes existed gains them
        else:
            shutil.rmtree(uri, ignore_errors=True)
            index = write_random_token_index(
                uri, encoder.encoder_id, shapes, args.videos,
                progress=lambda n: print(f"\r  wrote {n:,} / {args.videos:,} videos", end="",
                                         flush=True))
            print()
        print(f"index of {args.videos:,} videos ({args.encoder}, {shapes.num_frames} frames x "
              f"{shapes.num_patches} patches) ready in {time.perf_counter() - started:.0f} s")
        head = TemporalHead.from_config(cfg.stage1, shapes.embed_dim, shapes.num_frames,
                                        shapes.text_width, shapes.context_length,
                                        shapes.vision_width, shapes.num_patches).eval()
        # the configured re-ranker: two members by default, each scoring every candidate
        reranker = new_reranker(cfg.reranker, cfg.train.seed,
                                **reranker_shape_kwargs(shapes.__dict__)).eval()
        models = SearchModels(head, reranker, stage1_key(head), {})
        started = time.perf_counter()
        searcher = TextSearcher(index, encoder, models, brute_force_below=args.exact_below)
        info = searcher.gallery_info
        print(f"stage-1 gallery: {info.size:,} videos, "
              + ("exact" if info.exact else f"ANN (recall@15 at build {info.build_recall:.3f})")
              + f", {'built' if info.built_now else 'opened'} in "
              f"{time.perf_counter() - started:.0f} s; RSS now {current_rss_gib():.2f} GiB, "
              f"peak so far {peak_rss_gib():.2f} GiB")

        rng = np.random.default_rng(1)
        for _ in range(3):  # warm-up
            searcher.search([random_query(rng)], 10, candidates=15)
        latencies = []
        for _ in range(args.queries):
            query = random_query(rng)
            started = time.perf_counter()
            searcher.search([query], 10, candidates=15)
            latencies.append(1000 * (time.perf_counter() - started))
        latencies.sort()
        p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]
        print(f"one query (encode + stage 1 over {args.videos:,} + re-rank 15): "
              f"p50 {statistics.median(latencies):.1f} ms, p95 {p95:.1f} ms "
              f"({args.threads} threads)")

        searcher.seconds.clear()
        queries = [random_query(rng) for _ in range(args.batch)]
        started = time.perf_counter()
        for start in range(0, len(queries), 256):
            searcher.search(queries[start:start + 256], 10, candidates=15)
        total = time.perf_counter() - started
        shares = ", ".join(f"{name} {100 * s / total:.0f}%" for name, s in
                           sorted(searcher.seconds.items(), key=lambda kv: -kv[1]))
        print(f"batch of {len(queries):,} queries (256 per call): {len(queries) / total:.1f} "
              f"queries/s ({1000 * total / len(queries):.1f} ms per query); {shares}")
        print(f"peak RSS of this process: {peak_rss_gib():.2f} GiB (run it again with the same "
              "--keep to see the peak of searching alone, the gallery opened from disk)")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
