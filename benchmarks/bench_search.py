"""Stage-1 candidate search benchmark: exact (fp32 / fp16) vs LanceDB ANN indexes.

Synthetic 512-d "video embeddings" shaped like CLIP's (a mean direction shared by all items,
an anisotropic power-law spectrum, ~2k Gaussian clusters of Zipf-distributed sizes; random
pairs have cosine ~0.3, cluster mates ~0.8) and queries that are perturbed gallery items
(cosine ~0.9 to their source), so top-15 neighbourhoods are dense and recall is meaningful.

For each gallery size N it prints one markdown table row per method: build time, single-query
latency p50/p95 (one query per call, >= 100 calls), recall@15 against exact fp32, and batch
throughput at Q=256. Exact search runs with torch's thread count and with one thread (on 2
shared cores the second thread mostly adds waiting). For N >= --ann-min it builds each ANN
index type and raises nprobes / refine_factor / ef until recall@15 >= --target-recall + 0.01
on tuning queries that are not timed, then times that setting on the measured queries.
Not a test: run it by hand, e.g.

    .venv/bin/python benchmarks/bench_search.py --sizes 10k,100k,1M
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

# no "dataset will be created" warnings from the Rust side
os.environ.setdefault("LANCE_LOG", "error")
os.environ.setdefault("LANCEDB_LOG", "error")

from crosstvr_core.retrieval.search import AnnIndex, GalleryIndex, default_index_config, recall_at_k

DIM = 512
K = 15
GOAL_MS = 20.0


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------
class ClipLikeData:
    """Seeded generator of CLIP-like unit vectors and perturbed-item queries."""

    def __init__(self, dim: int = DIM, num_clusters: int = 2048, seed: int = 0):
        self.dim = dim
        self.gen = torch.Generator().manual_seed(seed)
        scales = torch.arange(1, dim + 1, dtype=torch.float32) ** -0.5  # power-law spectrum
        self.scales = scales / scales.pow(2).mean().sqrt()
        self.rotation, _ = torch.linalg.qr(torch.randn(dim, dim, generator=self.gen))
        mean = F.normalize(torch.randn(dim, generator=self.gen), dim=0)
        self.centers = mean + 1.3 * self._aniso(num_clusters)
        weights = 1.0 / torch.arange(1, num_clusters + 1).float() ** 0.7  # Zipf-like sizes
        self.weights = weights / weights.sum()

    def _aniso(self, m: int) -> torch.Tensor:
        noise = torch.randn(m, self.dim, generator=self.gen) * self.scales
        return noise @ self.rotation / math.sqrt(self.dim)

    def gallery(self, n: int, chunk: int = 100_000) -> torch.Tensor:
        assign = torch.multinomial(self.weights, n, replacement=True, generator=self.gen)
        out = torch.empty(n, self.dim)
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            out[s:e] = F.normalize(self.centers[assign[s:e]] + 0.9 * self._aniso(e - s), dim=-1)
        return out

    def queries(self, gallery: torch.Tensor, q: int) -> torch.Tensor:
        rows = torch.randint(0, gallery.shape[0], (q,), generator=self.gen)
        return F.normalize(gallery[rows] + 0.5 * self._aniso(q), dim=-1)


# --------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------
@dataclass
class Row:
    n: int
    method: str
    build_s: float | None
    p50_ms: float
    p95_ms: float
    recall: float | None
    batch_qps: float | None = None


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def time_single(search: Callable[[torch.Tensor], object], queries: torch.Tensor,
                warmup: int = 5) -> tuple[float, float]:
    """p50, p95 in ms of one call per query (the first `warmup` calls also run untimed)."""
    for row in queries[:warmup]:
        search(row.unsqueeze(0))
    times = []
    for row in queries:
        q = row.unsqueeze(0)
        start = time.perf_counter()
        search(q)
        times.append((time.perf_counter() - start) * 1e3)
    return percentile(times, 50), percentile(times, 95)


def time_batch(search: Callable[[torch.Tensor], object], queries: torch.Tensor,
               reps: int = 3) -> float:
    """Queries per second for one call over the whole batch (median of reps)."""
    search(queries[:8])
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        search(queries)
        times.append(time.perf_counter() - start)
    return queries.shape[0] / statistics.median(times)


# --------------------------------------------------------------------------------------
# methods
# --------------------------------------------------------------------------------------
def bench_exact(n: int, gallery: torch.Tensor, lat_q: torch.Tensor, batch_q: torch.Tensor,
                truth: torch.Tensor, dtype: torch.dtype, num_threads: int) -> Row:
    """GalleryIndex; 'build' is the one-time cast of the resident gallery."""
    start = time.perf_counter()
    index = GalleryIndex(gallery, dtype=dtype, num_threads=num_threads)
    build = time.perf_counter() - start
    big = n >= 1_000_000  # 100 queries and one batch: a 1M scan takes ~0.1-0.25 s per query
    p50, p95 = time_single(lambda q: index.search(q, K), lat_q[:100] if big else lat_q)
    qps = time_batch(lambda q: index.search(q, K), batch_q, reps=1 if big else 3)
    found = index.search(lat_q, K).indices
    name = "exact fp32" if dtype == torch.float32 else "exact fp16"
    name += f", {num_threads} thread{'s' if num_threads > 1 else ''}"
    return Row(n, name, build, p50, p95, recall_at_k(found, truth), qps)


def ann_candidates(index_type: str, partitions: int) -> list[dict[str, int]]:
    """Search settings in increasing cost order; the first reaching the target is kept."""
    fractions = (64, 32, 16, 12, 8, 6, 4, 3, 2, 1)
    probes = sorted({max(1, math.ceil(partitions / f)) for f in fractions})
    if index_type == "ivf_pq":
        return [{"nprobes": p, "refine_factor": r} for p in probes for r in (20, 50)]
    return [{"nprobes": p, "ef": ef} for p in probes for ef in (32, 100)]


def bench_ann(n: int, gallery: torch.Tensor, lat_q: torch.Tensor, truth: torch.Tensor,
              tune_q: torch.Tensor, tune_truth: torch.Tensor, index_type: str, workdir: Path,
              target: float) -> Row:
    """Build, pick the cheapest setting whose recall on the tuning queries (disjoint from the
    measured ones) clears target + 0.01, then time it on the measured queries."""
    uri = workdir / f"ann-{index_type}-{n}"
    ids = [f"video{i:07d}" for i in range(n)]
    config = default_index_config(index_type, n, DIM)  # type: ignore[arg-type]
    start = time.perf_counter()
    index = AnnIndex.build(uri, gallery, ids, index_type=index_type,  # type: ignore[arg-type]
                           brute_force_below=0, index_config=config)
    build = time.perf_counter() - start
    log(f"  {index_type} N={n}: built in {build:.1f}s ({config})")
    chosen, tune_recall = None, 0.0
    for params in ann_candidates(index_type, index.num_partitions):
        tune_recall = index.recall_at_k(tune_q, K, tune_truth, **params)
        log(f"    {params}: recall@{K} {tune_recall:.3f} on {len(tune_q)} tuning queries")
        chosen = params
        if tune_recall >= target + 0.01:
            break
    assert chosen is not None
    p50, p95 = time_single(lambda q: index.search(q, K, **chosen), lat_q)
    recall = index.recall_at_k(lat_q, K, truth, **chosen)
    knobs = ", ".join(f"{k}={v}" for k, v in chosen.items())
    shutil.rmtree(uri, ignore_errors=True)
    return Row(n, f"{index_type} ({knobs})", build, p50, p95, recall)


# --------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------
def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_size(text: str) -> int:
    text = text.strip().lower()
    mult = {"k": 1_000, "m": 1_000_000}.get(text[-1], 1)
    return int(float(text.rstrip("km")) * mult)


def fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def table(rows: list[Row]) -> str:
    lines = ["| N | method | build s | p50 ms | p95 ms | recall@15 | Q=256 queries/s |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.n:,} | {r.method} | {fmt(r.build_s, '.1f')} | {r.p50_ms:.2f} | "
                     f"{r.p95_ms:.2f} | {fmt(r.recall, '.3f')} | {fmt(r.batch_qps, ',.0f')} |")
    return "\n".join(lines)


def goals(rows: list[Row]) -> list[str]:
    out = []
    exact100k = [r for r in rows if r.n == 100_000 and r.method.startswith("exact")]
    if exact100k:
        best = min(exact100k, key=lambda r: r.p50_ms)
        met = best.p50_ms <= GOAL_MS
        out.append(f"exact top-15 over 100k <= {GOAL_MS:.0f} ms: {'MET' if met else 'NOT MET'} "
                   f"(best {best.method}: p50 {best.p50_ms:.1f} ms, p95 {best.p95_ms:.1f} ms)")
        for r in exact100k:
            verdict = "meets" if r.p50_ms <= GOAL_MS else "misses"
            out.append(f"  {r.method} {verdict} it at p50 ({r.p50_ms:.1f} ms; p95 "
                       f"{r.p95_ms:.1f} ms {'within' if r.p95_ms <= GOAL_MS else 'over'})")
    ann1m = [r for r in rows if r.n == 1_000_000 and not r.method.startswith("exact")]
    if ann1m:
        ok = [r for r in ann1m if r.p50_ms <= GOAL_MS and (r.recall or 0) >= 0.95]
        best = min(ok or ann1m, key=lambda r: r.p50_ms)
        out.append(f"ANN over 1M <= {GOAL_MS:.0f} ms with recall@15 >= 0.95: "
                   f"{'MET' if ok else 'NOT MET'} (best {best.method}: p50 {best.p50_ms:.1f} ms, "
                   f"p95 {best.p95_ms:.1f} ms, recall {best.recall:.3f})")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10k,100k,1M", help="gallery sizes, e.g. 10k,100k,1M")
    ap.add_argument("--queries", type=int, default=200, help="single-query latency samples")
    ap.add_argument("--tune-queries", type=int, default=200,
                    help="extra queries (not timed) used to pick ANN search settings")
    ap.add_argument("--batch", type=int, default=256, help="batch size for throughput")
    ap.add_argument("--index-types", default="ivf_pq,ivf_hnsw_sq")
    ap.add_argument("--ann-min", default="100k", help="smallest N that gets ANN indexes")
    ap.add_argument("--target-recall", type=float, default=0.95)
    ap.add_argument("--workdir", type=Path, default=None, help="where LanceDB tables go")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.queries < 100:
        ap.error("--queries must be >= 100 for a meaningful p95")

    workdir = Path(tempfile.mkdtemp(prefix="bench-search-", dir=args.workdir))
    index_types = [t.strip() for t in args.index_types.split(",") if t.strip()]
    rows: list[Row] = []
    log(f"torch {torch.__version__}, {torch.get_num_threads()} threads, workdir {workdir}")
    try:
        for n in (parse_size(s) for s in args.sizes.split(",")):
            data = ClipLikeData(seed=args.seed)
            gallery = data.gallery(n)
            queries = data.queries(gallery, max(args.queries, args.batch) + args.tune_queries)
            lat_q, batch_q = queries[: args.queries], queries[: args.batch]
            tune_q = queries[-args.tune_queries:]
            exact = GalleryIndex(gallery)
            truth = exact.search(lat_q, K).indices
            tune_truth = exact.search(tune_q, K).indices
            del exact
            for dtype in (torch.float32, torch.float16):
                for threads in (torch.get_num_threads(), 1):
                    rows.append(bench_exact(n, gallery, lat_q, batch_q, truth, dtype, threads))
                    log(table(rows[-1:]).splitlines()[-1])
            if n >= parse_size(args.ann_min):
                for index_type in index_types:
                    rows.append(bench_ann(n, gallery, lat_q, truth, tune_q, tune_truth,
                                          index_type, workdir, args.target_recall))
                    log(table(rows[-1:]).splitlines()[-1])
            del gallery, queries
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(table(rows))
    print()
    for line in goals(rows):
        print(f"* {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
