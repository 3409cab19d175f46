"""Exact chunked top-k equals torch.topk; the LanceDB ANN index finds the same neighbours."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from crosstvr_core.retrieval.search import (
    AnnIndex,
    GalleryIndex,
    chunk_plan,
    exact_top_k,
    recall_at_k,
)


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _clustered(n: int, d: int, seed: int, clusters: int = 64) -> torch.Tensor:
    """Unit vectors around a few centres: neighbourhoods an index can learn, like CLIP's."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, d, generator=g)
    assign = torch.randint(0, clusters, (n,), generator=g)
    return F.normalize(centres[assign] + 0.6 * torch.randn(n, d, generator=g), dim=-1)


def _separated(ref_s: torch.Tensor, eps: float) -> torch.Tensor:
    """Mask of ranks whose exact score differs from both neighbours' by more than eps."""
    wide = torch.full((ref_s.shape[0], 1), math.inf)
    gaps = torch.cat([wide, ref_s[:, :-1] - ref_s[:, 1:], wide], 1)
    return (gaps[:, :-1] > eps) & (gaps[:, 1:] > eps)


def _assert_same_top_k(q, g, scores, idx, ref_s, ref_i, atol=1e-6):
    """Equal to torch.topk up to fp32 rounding: same scores, the scores belong to the
    returned rows, and the same row at every rank that is not a near-tie."""
    torch.testing.assert_close(scores, ref_s, rtol=0, atol=atol)
    torch.testing.assert_close((q.unsqueeze(1) * g[idx]).sum(-1), scores, rtol=0, atol=1e-5)
    mask = _separated(ref_s, 2 * atol)
    assert mask.float().mean() > 0.8
    assert torch.equal(idx[mask], ref_i[mask])


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return _unit(37, 64, 1), _unit(3000, 64, 2)


@pytest.mark.parametrize(
    ("budget_mb", "k"),
    [
        (256.0, 15),  # one chunk
        (0.5, 15),  # a few gallery chunks
        (0.02, 15),  # many gallery chunks and query chunks
        (0.02, 50),  # many chunks, larger k
        (4.0, 3000),  # k == N
    ],
)
def test_exact_equals_torch_topk(data, budget_mb, k):
    q, g = data
    ref_s, ref_i = torch.topk(q @ g.T, k, dim=1)
    scores, idx = exact_top_k(q, g, k, memory_budget_mb=budget_mb)
    assert scores.shape == idx.shape == (37, k) and scores.dtype == torch.float32
    _assert_same_top_k(q, g, scores, idx, ref_s, ref_i)


def test_k_larger_than_a_gallery_chunk(data):
    """The budget allows fewer gallery rows per step than k: chunks' top-k merge anyway."""
    q, g = data
    k, budget = 1500, 0.057
    plan = chunk_plan(37, 3000, 64, k, memory_budget_mb=budget)
    assert plan.gallery_rows < k and plan.query_rows == 1
    scores, idx = exact_top_k(q, g, k, memory_budget_mb=budget)
    ref_s, ref_i = torch.topk(q @ g.T, k, dim=1)
    _assert_same_top_k(q, g, scores, idx, ref_s, ref_i)


@pytest.mark.parametrize("budget_mb", [0.01, 0.1, 1.0, 64.0])
def test_plan_respects_budget(budget_mb):
    for dtype in (torch.float32, torch.float16):
        for nq in (1, 7, 256):
            plan = chunk_plan(nq, 100_000, 512, 15, memory_budget_mb=budget_mb, dtype=dtype,
                              gallery_dtype=torch.float32, normalize=True)
            assert plan.peak_bytes <= budget_mb * 2**20
            assert 1 <= plan.query_rows <= nq and 1 <= plan.gallery_rows <= 100_000


def test_budget_too_small_is_refused(data):
    q, g = data
    with pytest.raises(ValueError, match="too small"):
        exact_top_k(q, g, 15, memory_budget_mb=1e-4)


def test_normalize_flag_gives_cosine(data):
    q, g = data
    raw_q, raw_g = q * 3.0, g * torch.linspace(0.5, 2.0, g.shape[0]).unsqueeze(1)
    scores, idx = exact_top_k(raw_q, raw_g, 10, normalize=True, memory_budget_mb=0.05)
    ref_s, ref_i = torch.topk(F.normalize(raw_q, dim=-1) @ F.normalize(raw_g, dim=-1).T, 10)
    assert torch.equal(idx, ref_i)
    torch.testing.assert_close(scores, ref_s, rtol=0, atol=1e-5)


@pytest.mark.parametrize("nq", [1, 5, 37])  # fp16 GEMV path (<= 8 rows) and up-cast path
def test_fp16_close_and_same_order_when_separated(data, nq):
    q, g = data
    q = q[:nq]
    ref_s, ref_i = torch.topk(q @ g.T, 10)
    for index in (None, GalleryIndex(g, dtype=torch.float16)):
        if index is None:
            scores, idx = exact_top_k(q, g, 10, dtype=torch.float16, memory_budget_mb=0.2)
        else:
            scores, idx = index.search(q, 10)
        torch.testing.assert_close(scores, ref_s, rtol=0, atol=2e-3)
        # where neighbouring exact scores differ by more than fp16 error the order is exact
        separated = _separated(ref_s, 4e-3)
        assert separated.any()
        assert torch.equal(idx[separated], ref_i[separated])


def test_gallery_index_matches_function(data):
    q, g = data
    index = GalleryIndex(g * 2.0, normalize=True)
    assert len(index) == 3000 and index.dim == 64
    _, idx = index.search(q * 5.0, 15)
    assert torch.equal(idx, torch.topk(q @ g.T, 15).indices)


def test_single_query_vector_returns_one_row(data):
    q, g = data
    scores, idx = exact_top_k(q[0], g, 5)
    assert scores.shape == (1, 5)
    assert torch.equal(idx[0], torch.topk(g @ q[0], 5).indices)


def test_exact_errors_are_clear(data):
    q, g = data
    with pytest.raises(ValueError, match=r"k=3001 must be in \[1, N\] where N=3000"):
        exact_top_k(q, g, 3001)
    with pytest.raises(ValueError, match="dimension mismatch: queries have D=32, gallery has D=64"):
        exact_top_k(q[:, :32], g, 5)
    with pytest.raises(ValueError, match="empty gallery"):
        exact_top_k(q, g[:0], 1)
    with pytest.raises(ValueError, match="empty gallery"):
        GalleryIndex(g[:0])
    with pytest.raises(ValueError, match="dtype"):
        exact_top_k(q, g, 5, dtype=torch.bfloat16)


# --------------------------------------------------------------------------------------
# AnnIndex
# --------------------------------------------------------------------------------------
N_ANN, D_ANN = 4000, 64


@pytest.fixture(scope="module")
def ann_data() -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    g = _clustered(N_ANN, D_ANN, 3)
    rows = torch.randint(0, N_ANN, (40,), generator=torch.Generator().manual_seed(4))
    q = F.normalize(g[rows] + 0.3 * _unit(40, D_ANN, 5), dim=-1)
    return q, g, [f"vid-{i}" for i in range(N_ANN)]


@pytest.mark.parametrize(
    ("index_type", "params"),
    [("ivf_pq", {"nprobes": 8, "refine_factor": 20}), ("ivf_hnsw_sq", {"ef": 200})],
)
def test_ann_index_recall_and_ids(tmp_path, ann_data, index_type, params):
    q, g, ids = ann_data
    index = AnnIndex.build(tmp_path / "db", g, ids, index_type=index_type, brute_force_below=1000)
    assert not index.brute_force and index.index_type == index_type
    assert index.build_recall is not None and 0.5 < index.build_recall <= 1.0  # self-measured
    exact = exact_top_k(q, g, 10).indices
    assert index.recall_at_k(q, 10, exact, **params) > 0.9

    result = index.search(q[:3], 10, **params)
    assert len(result.ids) == 3 and all(len(row) == 10 for row in result.ids)
    assert all(v in set(ids) for row in result.ids for v in row)
    assert torch.equal(torch.tensor([[ids.index(v) for v in row] for row in result.ids]),
                       result.indices)
    # scores are exact cosines of the returned rows, best first
    torch.testing.assert_close(result.scores, (q[:3].unsqueeze(1) * g[result.indices]).sum(-1),
                               rtol=0, atol=1e-5)
    assert bool((result.scores[:, :-1] >= result.scores[:, 1:]).all())

    reopened = AnnIndex.open(tmp_path / "db")
    assert reopened.index_type == index_type and len(reopened) == N_ANN
    assert reopened.num_partitions == index.num_partitions
    assert reopened.search(q[0], 10, **params).ids == index.search(q[0], 10, **params).ids


def test_brute_force_mode_equals_exact(tmp_path, ann_data):
    q, g, ids = ann_data
    raw = g * 3.0  # the index normalises what it stores
    index = AnnIndex.build(tmp_path / "db", raw, ids)  # N < default threshold: no index
    assert index.brute_force and index.table.list_indices() == []
    assert index.build_recall == 1.0
    exact_s, exact_i = exact_top_k(q, g, 15)
    result = index.search(q, 15)
    assert torch.equal(result.indices, exact_i)
    torch.testing.assert_close(result.scores, exact_s, rtol=0, atol=1e-6)
    assert result.ids[0] == [ids[i] for i in exact_i[0].tolist()]
    assert index.recall_at_k(q, 15, exact_i) == 1.0

    reopened = AnnIndex.open(tmp_path / "db")
    assert reopened.brute_force
    assert torch.equal(reopened.search(q, 15).indices, exact_i)


def test_ann_errors_are_clear(tmp_path, ann_data):
    q, g, ids = ann_data
    index = AnnIndex.build(tmp_path / "db", g[:100], ids[:100])
    with pytest.raises(ValueError, match=r"k=101 must be in \[1, N\] where N=100"):
        index.search(q, 101)
    with pytest.raises(ValueError, match="dimension mismatch"):
        index.search(q[:, :32], 5)
    with pytest.raises(ValueError, match="empty gallery"):
        AnnIndex.build(tmp_path / "empty", g[:0], [])
    with pytest.raises(ValueError, match="unique"):
        AnnIndex.build(tmp_path / "dup", g[:2], ["a", "a"])
    with pytest.raises(ValueError, match="256 rows"):
        AnnIndex.build(tmp_path / "small", g[:100], ids[:100], brute_force_below=10)
    with pytest.raises(ValueError, match="index_type"):
        AnnIndex.build(tmp_path / "bad", g, ids, index_type="flat",  # type: ignore[arg-type]
                       brute_force_below=10)


def test_recall_at_k_counts_overlap():
    found = torch.tensor([[1, 2, 3], [4, 5, -1]])
    truth = torch.tensor([[3, 2, 1], [4, 6, 7]])
    assert recall_at_k(found, truth) == pytest.approx((1.0 + 1 / 3) / 2)


def test_thread_setting_is_restored(data):
    q, g = data
    before = torch.get_num_threads()
    exact_top_k(q[:1], g, 5, dtype=torch.float16)  # auto: one thread for the fp16 GEMV
    exact_top_k(q, g, 5, num_threads=1)
    assert torch.get_num_threads() == before
