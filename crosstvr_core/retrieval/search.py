"""Stage-1 candidate search: the top K gallery items per query by cosine similarity.

Two ways to get them:
  * exact: `exact_top_k` / `GalleryIndex` compute q @ g.T in chunks sized by a memory budget
    and merge per-chunk top-k, so a million-video gallery never needs a [Q, N] matrix;
  * approximate: `AnnIndex` keeps the embeddings in a LanceDB table (`video_embeddings`) with an
    IVF_PQ or IVF_HNSW_SQ index, for galleries too large to scan per query in time. Below a
    size threshold it builds no index and answers exactly (a scan is fast and has recall 1).

Cosine = dot product of unit vectors. The exact functions take inputs as given (the stage-1
embeddings are already L2-normalised, and re-normalising would perturb them by an ulp and
break the equality with `torch.topk(q @ g.T)`); pass `normalize=True` for raw vectors.
`AnnIndex` always normalises: it stores unit vectors and returns exact cosines.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import lancedb
import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from lancedb.index import HnswSq, IvfPq

TABLE_NAME = "video_embeddings"
BUILD_RECALL_KEY = "crosstvr.build_recall"
DEFAULT_BRUTE_FORCE_BELOW = 50_000
# CPU fp16 matmul in torch is a fast fp16 GEMV for a few query rows (half the bytes of fp32
# read, so ~2x faster when memory-bound) but falls to a slow path for real GEMMs: from ~16
# rows on, up-casting each gallery chunk to fp32 and using sgemm wins (measured on 2 cores).
FP16_NATIVE_MAX_QUERIES = 8
# With two threads torch's fp16 GEMV took a fixed ~8 ms even over 10k x 512 (one thread:
# 0.6 ms) and was slower up to 100k; over 1M the second thread helped when its core was free.
SINGLE_THREAD_FP16_MAX_ELEMENTS = 2**26  # ~130k x 512
_MIN_GALLERY_CHUNK = 1024  # below this the per-chunk merge dominates; shrink queries first
# Up-cast chunks go through one reused buffer of at most this many rows: a fresh 100+ MB
# tensor per chunk costs more in page faults than the sgemm that reads it.
_MAX_CONVERTED_ROWS = 32_768

IndexType = Literal["ivf_pq", "ivf_hnsw_sq"]


class TopK(NamedTuple):
    """scores [Q, k] float32, best first, and their gallery row indices [Q, k] int64."""

    scores: torch.Tensor
    indices: torch.Tensor


# --------------------------------------------------------------------------------------
# exact search
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChunkPlan:
    """How one exact search is tiled: query rows and gallery rows per step, peak bytes."""

    query_rows: int
    gallery_rows: int
    peak_bytes: int  # estimate of the largest set of per-step temporaries
    native_fp16: bool  # fp16 GEMV on fp16 chunks (else fp32 sgemm)


def _check_gallery(gallery: torch.Tensor) -> None:
    if gallery.ndim != 2:
        raise ValueError(f"gallery must be [N, D], got shape {tuple(gallery.shape)}")
    if gallery.shape[0] == 0:
        raise ValueError("empty gallery: there is nothing to search")


def _check_inputs(queries: torch.Tensor, gallery: torch.Tensor, k: int) -> torch.Tensor:
    """Validated queries as [Q, D]."""
    _check_gallery(gallery)
    n, d = gallery.shape
    if queries.ndim == 1:
        queries = queries.unsqueeze(0)
    if queries.ndim != 2:
        raise ValueError(f"queries must be [D] or [Q, D], got shape {tuple(queries.shape)}")
    if queries.shape[1] != d:
        raise ValueError(
            f"dimension mismatch: queries have D={queries.shape[1]}, gallery has D={d}"
        )
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must be in [1, N] where N={n} is the gallery size")
    return queries


def _gallery_row_bytes(src: torch.dtype, dtype: torch.dtype, compute: torch.dtype,
                       normalize: bool, d: int) -> int:
    """Bytes per gallery row of the temporaries `_prepare_chunk` makes (0 for a view)."""
    size = 0
    current = src
    if normalize:
        size += (4 if current != torch.float32 else 0) + 4  # fp32 copy + normalised copy
        current = torch.float32
    if current != dtype:
        size += dtype.itemsize
        current = dtype
    if current != compute:
        size += compute.itemsize
    return size * d


def _prepare_chunk(chunk: torch.Tensor, dtype: torch.dtype, compute: torch.dtype,
                   normalize: bool, buffer: torch.Tensor | None) -> torch.Tensor:
    """Gallery rows -> (normalised,) rounded to the storage dtype, in the compute dtype
    (written into `buffer` when an up-cast is needed)."""
    if normalize:
        chunk = F.normalize(chunk.float(), dim=-1)
    chunk = chunk.to(dtype)
    if chunk.dtype == compute:
        return chunk
    if buffer is None:
        return chunk.to(compute)
    out = buffer[: chunk.shape[0]]
    out.copy_(chunk)
    return out


@contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Run torch CPU ops with `num_threads` intra-op threads, then restore the setting.

    Why: one query is a memory-bound GEMV; on a small or shared machine the second thread
    mostly adds a synchronisation wait (a scheduler time slice when the core is busy), so a
    single thread has the lower latency. The setting is process-wide: do not use it while
    other Python threads run torch work.
    """
    previous = torch.get_num_threads()
    if num_threads is None or num_threads == previous:
        yield
        return
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def chunk_plan(num_queries: int, num_gallery: int, dim: int, k: int, *,
               memory_budget_mb: float = 256.0, dtype: torch.dtype = torch.float32,
               gallery_dtype: torch.dtype | None = None, normalize: bool = False) -> ChunkPlan:
    """Tile sizes that keep every per-step temporary within the budget.

    Big gallery chunks are preferred (fewer merges, the gallery is read once); queries are
    split only when even a 1024-row gallery chunk would not fit next to all of them.
    """
    budget = int(memory_budget_mb * 2**20)
    gallery_dtype = gallery_dtype or dtype
    native = dtype == torch.float16 and num_queries <= FP16_NATIVE_MAX_QUERIES
    compute = torch.float16 if native else torch.float32
    score_bytes = compute.itemsize + (4 if native else 0)  # fp16 scores are up-cast for topk
    row_bytes = _gallery_row_bytes(gallery_dtype, dtype, compute, normalize, dim)
    kk = min(k, num_gallery)
    # per query row: its converted copy, the chunk's top-k, and the [2k] merge buffers
    per_query = dim * 4 * 2 + 3 * kk * 12

    def gallery_rows_for(q: int) -> int:
        return (budget - q * per_query) // (q * score_bytes + row_bytes)

    q = max(num_queries, 1)
    if gallery_rows_for(q) < min(num_gallery, _MIN_GALLERY_CHUNK):
        g_min = min(num_gallery, _MIN_GALLERY_CHUNK)
        q = max(1, min(q, (budget - g_min * row_bytes) // (g_min * score_bytes + per_query)))
    g = min(num_gallery, gallery_rows_for(q))
    if row_bytes:
        g = min(g, _MAX_CONVERTED_ROWS)
    if g < 1:
        need = per_query + score_bytes + row_bytes
        raise ValueError(
            f"memory_budget_mb={memory_budget_mb} is too small: one query against one gallery "
            f"row needs {need} bytes"
        )
    peak = q * g * score_bytes + g * row_bytes + q * per_query
    return ChunkPlan(query_rows=q, gallery_rows=g, peak_bytes=peak, native_fp16=native)


@torch.no_grad()
def exact_top_k(queries: torch.Tensor, gallery: torch.Tensor, k: int, *,
                memory_budget_mb: float = 256.0, dtype: torch.dtype = torch.float32,
                normalize: bool = False, num_threads: int | None = None) -> TopK:
    """Exact top-k of queries [Q, D] (or [D]) against gallery [N, D] by inner product.

    Equals `torch.topk(q @ g.T, k)` (ties and fp32 rounding aside) without materialising the
    [Q, N] matrix: the work is tiled by `chunk_plan` and per-chunk top-k are merged.
    `dtype=torch.float16` rounds both sides to fp16: half the bytes read, scores within
    ~2e-4 of fp32 for unit vectors, so near-ties may swap; an fp16 gallery is read as is.
    `normalize=True` L2-normalises both sides first (cosine of raw vectors). `num_threads`
    runs the search under `torch_threads`; None picks one thread for the fp16 GEMV path over
    galleries up to SINGLE_THREAD_FP16_MAX_ELEMENTS and torch's setting otherwise.
    Always returns 2-D [Q, k] results, best first; scores are float32.
    """
    if num_threads is None and dtype == torch.float16 and gallery.ndim == 2:
        rows = queries.shape[0] if queries.ndim == 2 else 1
        if rows <= FP16_NATIVE_MAX_QUERIES and gallery.numel() <= SINGLE_THREAD_FP16_MAX_ELEMENTS:
            num_threads = 1
    with torch_threads(num_threads):
        return _exact_top_k(queries, gallery, k, memory_budget_mb, dtype, normalize)


def _exact_top_k(queries: torch.Tensor, gallery: torch.Tensor, k: int,
                 memory_budget_mb: float, dtype: torch.dtype, normalize: bool) -> TopK:
    queries = _check_inputs(queries, gallery, k)
    if dtype not in (torch.float32, torch.float16):
        raise ValueError(f"dtype must be torch.float32 or torch.float16, got {dtype}")
    n, d = gallery.shape
    nq = queries.shape[0]
    if nq == 0:
        return TopK(torch.empty(0, k), torch.empty(0, k, dtype=torch.long))
    plan = chunk_plan(nq, n, d, k, memory_budget_mb=memory_budget_mb, dtype=dtype,
                      gallery_dtype=gallery.dtype, normalize=normalize)
    compute = torch.float16 if plan.native_fp16 else torch.float32
    q = F.normalize(queries.float(), dim=-1) if normalize else queries
    q = q.to(dtype).to(compute)

    best_s = torch.full((nq, k), -math.inf)
    best_i = torch.full((nq, k), -1, dtype=torch.long)
    upcast = dtype != compute  # fp16 storage, fp32 sgemm
    buffer = torch.empty(plan.gallery_rows, d, dtype=compute) if upcast else None
    for g0 in range(0, n, plan.gallery_rows):
        g1 = min(n, g0 + plan.gallery_rows)
        chunk = _prepare_chunk(gallery[g0:g1], dtype, compute, normalize, buffer)
        kc = min(k, g1 - g0)
        for q0 in range(0, nq, plan.query_rows):
            q1 = min(nq, q0 + plan.query_rows)
            scores = q[q0:q1] @ chunk.T  # [q, g]
            top_s, top_i = torch.topk(scores, kc, dim=1)
            top_s, top_i = top_s.float(), top_i + g0
            if g0 == 0 and kc == k:  # first chunk already holds k candidates per query
                best_s[q0:q1], best_i[q0:q1] = top_s, top_i
                continue
            cand_s = torch.cat([best_s[q0:q1], top_s], dim=1)
            cand_i = torch.cat([best_i[q0:q1], top_i], dim=1)
            merged_s, pos = torch.topk(cand_s, k, dim=1)
            best_s[q0:q1], best_i[q0:q1] = merged_s, cand_i.gather(1, pos)
    return TopK(best_s, best_i)


class GalleryIndex:
    """A gallery kept resident, normalised and cast once, so repeated queries pay only the
    chunked matmul (the one-shot function re-converts the gallery on every call)."""

    def __init__(self, gallery: torch.Tensor, *, dtype: torch.dtype = torch.float32,
                 normalize: bool = False, num_threads: int | None = None):
        _check_gallery(gallery)
        if dtype not in (torch.float32, torch.float16):
            raise ValueError(f"dtype must be torch.float32 or torch.float16, got {dtype}")
        if normalize:
            gallery = F.normalize(gallery.float(), dim=-1)
        self.vectors = gallery.to(dtype).contiguous()
        self.dtype = dtype
        self.normalize = normalize
        self.num_threads = num_threads

    def __len__(self) -> int:
        return self.vectors.shape[0]

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def search(self, queries: torch.Tensor, k: int, *,
               memory_budget_mb: float = 256.0) -> TopK:
        """Top-k rows per query, see `exact_top_k`."""
        if self.normalize:
            queries = F.normalize(queries.float(), dim=-1)
        return exact_top_k(queries, self.vectors, k, memory_budget_mb=memory_budget_mb,
                           dtype=self.dtype, num_threads=self.num_threads)


# --------------------------------------------------------------------------------------
# approximate search (LanceDB)
# --------------------------------------------------------------------------------------
class AnnResult(NamedTuple):
    """Per query: video ids, exact cosine scores [Q, k] and gallery row indices [Q, k], best
    first. An index that finds fewer than k rows pads with "", -inf and -1."""

    ids: list[list[str]]
    scores: torch.Tensor
    indices: torch.Tensor


def default_index_config(index_type: IndexType, num_rows: int, dim: int) -> IvfPq | HnswSq:
    """Index parameters from N and D, chosen so a 2-core machine builds a 1M x 512 index in
    about two minutes (LanceDB's defaults take several times longer):

    * IVF_PQ: ~4k rows per partition and D/16 PQ sub-vectors (LanceDB's default); the search
      re-scores `refine_factor * k` candidates with the stored fp32 vectors, so recall is
      bounded by the partitions probed, not by PQ error. k-means on 64 samples per centroid
      for 10 iterations: the codebooks are cheap to train and good enough after refining.
    * IVF_HNSW_SQ: ~16k rows per partition (each partition is one small HNSW graph: build
      cost per row grows with graph size, and graphs build in parallel), m=16,
      ef_construction=100.
    """
    if index_type == "ivf_pq":
        if num_rows < 256:
            raise ValueError(f"ivf_pq needs at least 256 rows to train PQ codebooks, got {num_rows}")
        sub = dim // 16 if dim % 16 == 0 else (dim // 8 if dim % 8 == 0 else 1)
        return IvfPq(distance_type="cosine", num_partitions=max(1, num_rows // 4096),
                     num_sub_vectors=sub, max_iterations=10, sample_rate=64)
    if index_type == "ivf_hnsw_sq":
        return HnswSq(distance_type="cosine", num_partitions=max(1, num_rows // 16_384),
                      m=16, ef_construction=100, max_iterations=10, sample_rate=64)
    raise ValueError(f"index_type must be 'ivf_pq' or 'ivf_hnsw_sq', got {index_type!r}")


def default_search_params(index_type: IndexType | None, num_partitions: int, k: int
                          ) -> dict[str, int]:
    """Query knobs with recall@15 >= 0.95 on the synthetic CLIP-like benchmark with the
    default index configs (benchmarks/bench_search.py, docs/benchmarks.md). Across runs
    IVF_PQ needed 8-12 of 24 partitions at 100k and 16-31 of 244 at 1M (refine 20-50;
    nprobes=31, refine=20 gave 0.972 at 1M); IVF_HNSW_SQ 6 of 6 at 100k, 16 of 61 at 1M.
    Real data may need more: measure with `AnnIndex.recall_at_k`."""
    if index_type == "ivf_pq":
        probes = min(num_partitions, max(12, math.ceil(num_partitions / 8)))
        return {"nprobes": probes, "refine_factor": 20}
    if index_type == "ivf_hnsw_sq":
        probes = min(num_partitions, max(6, math.ceil(num_partitions / 4)))
        return {"nprobes": probes, "ef": max(100, 2 * k)}
    return {}


def _embedding_batches(ids: Sequence[str], vectors: np.ndarray, rows: int = 65_536
                       ) -> pa.RecordBatchReader:
    """(video_id, vector) rows as a stream of record batches: the table is written without
    an Arrow copy of the whole gallery (at a million videos that copy was 1 GiB more peak)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    schema = pa.schema([("video_id", pa.string()),
                        ("vector", pa.list_(pa.float32(), vectors.shape[1]))])

    def batches():
        for start in range(0, len(ids), rows):
            part = vectors[start:start + rows]
            yield pa.RecordBatch.from_arrays(
                [pa.array(list(ids[start:start + rows]), type=pa.string()),
                 pa.FixedSizeListArray.from_arrays(pa.array(part.reshape(-1)), part.shape[1])],
                schema=schema)

    return pa.RecordBatchReader.from_batches(schema, batches())


def _num_partitions(table: lancedb.table.Table, num_rows: int) -> int:
    """IVF partitions of the table's vector index: the default nprobes is a share of them."""
    try:  # pylance's stats carry the partition count; lancedb's summary does not
        name = next(ix.name for ix in table.list_indices() if ix.columns == ["vector"])
        return int(table.to_lance().stats.index_stats(name)["indices"][0]["num_partitions"])
    except (AttributeError, KeyError, IndexError, TypeError, StopIteration):
        return max(1, round(math.sqrt(num_rows)))  # LanceDB's own default


class AnnIndex:
    """Video embeddings in a LanceDB table, searched through a vector index when the gallery
    is large enough to need one, exactly otherwise. Build with `build`, reopen with `open`."""

    def __init__(self, table: lancedb.table.Table, ids: list[str], dim: int,
                 index_type: IndexType | None, num_partitions: int = 1,
                 vectors: torch.Tensor | None = None):
        self.table = table
        self.ids = ids
        self.dim = dim
        self.index_type = index_type
        self.num_partitions = num_partitions
        self._row_of = {vid: i for i, vid in enumerate(ids)}
        self._exact: GalleryIndex | None = GalleryIndex(vectors) if vectors is not None else None
        # recall@k vs exact search measured when this index was built (kept in the table's
        # schema metadata, so a reopened index knows it; None for tables written without it)
        self.build_recall: float | None = None

    # --- construction -----------------------------------------------------------------
    @classmethod
    def build(cls, uri: str | Path, vectors: torch.Tensor | np.ndarray, ids: Sequence[str], *,
              index_type: IndexType = "ivf_pq",
              brute_force_below: int = DEFAULT_BRUTE_FORCE_BELOW,
              index_config: IvfPq | HnswSq | None = None,
              table_name: str = TABLE_NAME, recall_k: int = 15,
              recall_queries: int = 100) -> AnnIndex:
        """Write (overwrite) the table from vectors [N, D] and ids [N], then index it unless
        N < brute_force_below. Vectors are L2-normalised before they are stored.

        Every index build measures itself: `build_recall` is the recall@recall_k of the new
        index against exact search, for `recall_queries` gallery items (seeded) as queries,
        with the default search parameters (1.0 for brute force)."""
        vectors = torch.as_tensor(vectors)
        if vectors.ndim != 2:
            raise ValueError(f"vectors must be [N, D], got shape {tuple(vectors.shape)}")
        n, d = vectors.shape
        if n == 0:
            raise ValueError("empty gallery: there is nothing to index")
        ids = [str(v) for v in ids]
        if len(ids) != n:
            raise ValueError(f"{len(ids)} ids for {n} vectors")
        if len(set(ids)) != n:
            raise ValueError("video ids must be unique")
        brute = n < brute_force_below
        config = None
        if not brute:
            config = index_config or default_index_config(index_type, n, d)
        unit = F.normalize(vectors.float(), dim=-1)
        uri = str(uri)
        if "://" not in uri:
            Path(uri).mkdir(parents=True, exist_ok=True)
        db = lancedb.connect(uri)
        table = db.create_table(table_name, _embedding_batches(ids, unit.numpy()),
                                mode="overwrite")
        if config is None:
            index = cls(table, ids, d, None, vectors=unit)
            index.build_recall = 1.0
            return index
        table.create_index("vector", config=config, replace=True)
        index = cls(table, ids, d, index_type, num_partitions=_num_partitions(table, n))
        k = min(recall_k, n)
        sample = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:recall_queries]
        exact = exact_top_k(unit[sample], unit, k).indices
        index.build_recall = index.recall_at_k(unit[sample], k, exact)
        table.to_lance().update_schema_metadata({BUILD_RECALL_KEY: repr(index.build_recall)})
        return index

    @classmethod
    def open(cls, uri: str | Path, *, table_name: str = TABLE_NAME) -> AnnIndex:
        """Reopen a table written by `build`; without a vector index it searches exactly."""
        table = lancedb.connect(str(uri)).open_table(table_name)
        dim = table.schema.field("vector").type.list_size
        vector_indices = [ix for ix in table.list_indices() if ix.columns == ["vector"]]
        if not vector_indices:
            data = table.to_lance().to_table(columns=["video_id", "vector"])
            vectors = data.column("vector").combine_chunks().flatten().to_numpy()
            vectors = torch.from_numpy(vectors.reshape(-1, dim).copy())
            index = cls(table, data.column("video_id").to_pylist(), dim, None, vectors=vectors)
            index.build_recall = 1.0  # exact search
            return index
        ids = table.to_lance().to_table(columns=["video_id"]).column("video_id").to_pylist()
        kind = vector_indices[0].index_type
        index_type: IndexType = "ivf_pq" if kind == "IvfPq" else "ivf_hnsw_sq"
        index = cls(table, ids, dim, index_type, num_partitions=_num_partitions(table, len(ids)))
        recall = (table.schema.metadata or {}).get(BUILD_RECALL_KEY.encode())
        index.build_recall = None if recall is None else float(recall)
        return index

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def brute_force(self) -> bool:
        """True when there is no vector index and search is an exact scan."""
        return self.index_type is None

    # --- queries ----------------------------------------------------------------------
    def search(self, queries: torch.Tensor | np.ndarray, k: int, *, nprobes: int | None = None,
               refine_factor: int | None = None, ef: int | None = None) -> AnnResult:
        """Top-k videos per query [D] or [Q, D] (cosine). Unset knobs take
        `default_search_params`; they are ignored in brute-force mode."""
        q = torch.as_tensor(queries).float()
        if q.ndim == 1:
            q = q.unsqueeze(0)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(
                f"dimension mismatch: queries have shape {tuple(q.shape)}, index has D={self.dim}"
            )
        if not 1 <= k <= len(self):
            raise ValueError(f"k={k} must be in [1, N] where N={len(self)} is the gallery size")
        q = F.normalize(q, dim=-1)
        if self._exact is not None:
            scores, idx = self._exact.search(q, k)
            return AnnResult([[self.ids[i] for i in row] for row in idx.tolist()], scores, idx)

        params = default_search_params(self.index_type, self.num_partitions, k)
        for name, value in (("nprobes", nprobes), ("refine_factor", refine_factor), ("ef", ef)):
            if value is not None:
                params[name] = value
        ids_out: list[list[str]] = []
        scores = torch.full((q.shape[0], k), -math.inf)
        indices = torch.full((q.shape[0], k), -1, dtype=torch.long)
        q_np = q.numpy()
        for row, vec in enumerate(q_np):
            builder = (self.table.search(vec, vector_column_name="vector")
                       .distance_type("cosine").limit(k)
                       .select(["video_id", "vector", "_distance"]))
            if "nprobes" in params:
                builder = builder.nprobes(params["nprobes"])
            if "refine_factor" in params:
                builder = builder.refine_factor(params["refine_factor"])
            if "ef" in params:
                builder = builder.ef(params["ef"])
            hits = builder.to_arrow()
            # exact cosines from the stored unit vectors: the index's own distance is
            # approximate for PQ and in another convention for HNSW (squared L2)
            found = hits.column("vector").combine_chunks().flatten().to_numpy()
            exact = found.reshape(-1, self.dim) @ vec
            order = np.argsort(-exact, kind="stable")
            hit_ids = hits.column("video_id").to_pylist()
            row_ids = [hit_ids[i] for i in order]
            ids_out.append(row_ids + [""] * (k - len(row_ids)))
            scores[row, : len(order)] = torch.from_numpy(exact[order].astype(np.float32))
            indices[row, : len(order)] = torch.tensor([self._row_of[v] for v in row_ids],
                                                      dtype=torch.long)
        return AnnResult(ids_out, scores, indices)

    def recall_at_k(self, queries: torch.Tensor | np.ndarray, k: int,
                    exact_indices: torch.Tensor, **search_params: int) -> float:
        """Mean fraction of each query's exact top-k rows (exact_indices [Q, >=k]) that the
        index returns in its top k."""
        exact_indices = torch.as_tensor(exact_indices)
        if exact_indices.ndim != 2 or exact_indices.shape[1] < k:
            raise ValueError(f"exact_indices must be [Q, >= {k}], got {tuple(exact_indices.shape)}")
        found = self.search(queries, k, **search_params).indices
        if found.shape[0] != exact_indices.shape[0]:
            raise ValueError(f"{found.shape[0]} queries but {exact_indices.shape[0]} exact rows")
        return recall_at_k(found, exact_indices[:, :k])


def recall_at_k(found: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean |found ∩ truth| / |truth| per row (index sets [Q, k] each)."""
    hits = (found.unsqueeze(2) == truth.unsqueeze(1)).any(dim=1).sum(dim=1)
    return float((hits.float() / truth.shape[1]).mean())
