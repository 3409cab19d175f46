"""Text search over a Lance index: the stage-1 gallery table (exact and ANN), fused ranking,
the errors a user meets, and the batch queries file. The index is written with the real
schemas and random tokens; the encoder is the real (random-init) tiny open_clip model."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
import torch

from crosstvr_core.config import load_config
from crosstvr_core.models.reranker import CrossTVRReranker, reranker_shape_kwargs
from crosstvr_core.models.temporal_head import TemporalHead
from crosstvr_core.retrieval.stage1 import mean_pooled_video_embeddings
from crosstvr_core.retrieval.text_search import (
    EMBEDDINGS_PREFIX,
    SearchError,
    SearchModels,
    TextSearcher,
    open_stage1_gallery,
    stage1_key,
    stage1_video_embeddings,
)
from crosstvr_core.storage import TokenIndex, TokenShapes, fixed_list, fixed_list_to_numpy
from crosstvr_core.training.stage1 import temporal_video_embeddings
from tasks.search import read_queries


def _write_videos(index: TokenIndex, start: int, count: int, seed: int) -> list[str]:
    s = index.shapes
    rng = np.random.default_rng(seed)
    ids = [f"v{i:05d}" for i in range(start, start + count)]
    mask = np.ones((count, s.num_frames), bool)
    mask[::7, -1] = False  # some clips one frame short
    index.upsert("video_tokens", pa.table({
        "video_id": ids, "content_hash": ids, "encoder_id": [index.encoder_id] * count,
        "frame_mask": pa.FixedSizeListArray.from_arrays(pa.array(mask.reshape(-1)),
                                                        s.num_frames),
        "cls": fixed_list(rng.standard_normal((count, s.num_frames * s.embed_dim))),
        "patches": fixed_list(rng.standard_normal(
            (count, s.num_frames * s.num_patches * s.vision_width))),
        "patch_index": fixed_list(np.tile(np.arange(s.num_patches), (count, s.num_frames)),
                                  np.int16),
    }), key="video_id")
    columns = {name: [None] * count for name in index.videos.schema.names}
    columns.update(video_id=ids, split=["test"] * count, uri=[f"/corpus/{v}.mp4" for v in ids],
                   status=["ok"] * count, encoder_id=[index.encoder_id] * count)
    index.upsert("videos", pa.table(columns, schema=index.videos.schema), key="video_id")
    return ids


@pytest.fixture()
def index(tmp_path, tiny_encoder):
    e = tiny_encoder
    shapes = TokenShapes(4, e.embed_dim, e.num_patches, e.vision_width, e.context_length,
                         e.text_width)
    index = TokenIndex(tmp_path / "db.lancedb", e.encoder_id, shapes)
    _write_videos(index, 0, 300, seed=0)
    return index


def _models(index: TokenIndex, head: bool = True) -> SearchModels:
    cfg = load_config(None, ["reranker.hidden_size=32", "reranker.num_heads=2"])
    s = index.shapes
    stage1 = TemporalHead.from_config(cfg.stage1, s.embed_dim, s.num_frames, s.text_width,
                                      s.context_length, s.vision_width,
                                      s.num_patches).eval() if head else None
    torch.manual_seed(0)
    reranker = CrossTVRReranker(cfg.reranker, **reranker_shape_kwargs(s.__dict__)).eval()
    reranker.set_fusion_weights(0.5, 0.5)
    return SearchModels(stage1, reranker, stage1_key(stage1), {"run": "test"})


def test_streamed_stage1_embeddings_are_the_banks(index):
    """Streaming the token table in batches gives what the in-memory bank path gives."""
    s = index.shapes
    table = TokenIndex.open_existing(index.uri).video_tokens.to_arrow()
    bank = SimpleNamespace(
        video_ids=table.column("video_id").to_pylist(), num_videos=table.num_rows,
        video_cls=torch.from_numpy(fixed_list_to_numpy(table.column("cls"),
                                                       (s.num_frames, s.embed_dim))),
        video_patches=torch.from_numpy(fixed_list_to_numpy(
            table.column("patches"), (s.num_frames, s.num_patches, s.vision_width))),
        frame_mask=torch.from_numpy(fixed_list_to_numpy(table.column("frame_mask"),
                                                        (s.num_frames,)).astype(bool)))
    ids, meanp = stage1_video_embeddings(index, None, batch_rows=64)
    order = [ids.index(v) for v in bank.video_ids]
    assert torch.allclose(meanp[order], mean_pooled_video_embeddings(bank), atol=1e-6)
    head = _models(index).stage1
    ids, embedded = stage1_video_embeddings(index, head, batch_rows=50)
    order = [ids.index(v) for v in bank.video_ids]
    assert torch.allclose(embedded[order], temporal_video_embeddings(head, bank), atol=1e-5)


def test_gallery_table_is_exact_small_ann_large_and_follows_the_tokens(index):
    models = _models(index)
    exact, info = open_stage1_gallery(index, models, brute_force_below=1000)
    assert info.exact and info.built_now and info.size == 300
    assert info.table == f"{EMBEDDINGS_PREFIX}_{models.stage1_key}_v{index.video_tokens.version}"
    _, again = open_stage1_gallery(index, models, brute_force_below=1000)
    assert not again.built_now
    _write_videos(index, 300, 20, seed=1)  # a re-index: a new token table version
    ann, fresh = open_stage1_gallery(index, models, brute_force_below=100)
    assert fresh.built_now and fresh.size == 320 and not fresh.exact
    assert 0.0 <= fresh.build_recall <= 1.0
    _, reopened = open_stage1_gallery(index, models, brute_force_below=100)
    assert not reopened.built_now and reopened.build_recall == fresh.build_recall
    tables = [t for t in index.db.list_tables().tables if t.startswith(EMBEDDINGS_PREFIX)]
    assert tables == [fresh.table]  # the stale version is dropped


def test_search_fuses_stage1_and_reranker_and_says_what_was_cut(index, tiny_encoder):
    models = _models(index)
    searcher = TextSearcher(index, tiny_encoder, models, brute_force_below=1000)
    long = " ".join(["a red circle moves left"] * 30)
    results = searcher.search(["a red circle moves left", long], 5, candidates=12)
    assert [r.truncated for r in results] == [False, True]
    first = results[0]
    assert [h.rank for h in first.hits] == [1, 2, 3, 4, 5]
    for hit in first.hits:
        assert hit.fused == pytest.approx(hit.stage1 + 0.5 * hit.stage2, abs=1e-5)
        assert hit.uri == f"/corpus/{hit.video_id}.mp4"
    assert [h.fused for h in first.hits] == sorted((h.fused for h in first.hits), reverse=True)
    # stage 1 alone: the exact cosine order over all 300 videos
    plain = searcher.search(["a red circle moves left"], 300, rerank=False)[0]
    query = searcher.encode(["a red circle moves left"])["embedding"]
    ids, vectors = stage1_video_embeddings(index, models.stage1)
    expected = (vectors @ query[0]).topk(5)
    assert [h.video_id for h in plain.hits[:5]] == [ids[i] for i in expected.indices]
    assert [h.stage1 for h in plain.hits[:5]] == pytest.approx(expected.values.tolist(), abs=1e-5)
    assert all(h.stage2 is None for h in plain.hits)
    assert set(searcher.seconds) >= {"encode", "stage1", "tokens", "rerank"}


def test_search_refuses_what_it_cannot_answer(index, tiny_encoder, tmp_path):
    searcher = TextSearcher(index, tiny_encoder, _models(index, head=False),
                            brute_force_below=1000)
    for bad, message in (([""], "empty"), (["ok", "  "], "query #2 is empty"), ([], "no query")):
        with pytest.raises(SearchError, match=message):
            searcher.search(bad, 3)
    with pytest.raises(SearchError, match="k must be"):
        searcher.search(["a"], 0)
    other = TokenIndex(tmp_path / "other.lancedb", "another-encoder|x|64px", index.shapes)
    with pytest.raises(SearchError, match="encoder mismatch"):
        TextSearcher(other, tiny_encoder, _models(index), brute_force_below=10)
    empty = TokenIndex(tmp_path / "empty.lancedb", tiny_encoder.encoder_id, index.shapes)
    with pytest.raises(SearchError, match="holds no video tokens"):
        TextSearcher(empty, tiny_encoder, _models(index), brute_force_below=10)


def test_queries_files_in_three_formats_and_their_errors(tmp_path):
    (tmp_path / "q.txt").write_text("a red circle\n\n  two squares  \n")
    assert [q.query for q in read_queries(tmp_path / "q.txt")] == ["a red circle", "two squares"]
    (tmp_path / "q.csv").write_text("query,video\na red circle,v1\nblue,\n")
    rows = read_queries(tmp_path / "q.csv")
    assert [(q.query, q.truth) for q in rows] == [("a red circle", "v1"), ("blue", None)]
    (tmp_path / "q.jsonl").write_text(json.dumps({"query": "x", "video": "v2",
                                                  "query_id": "mine"}) + "\n")
    assert read_queries(tmp_path / "q.jsonl")[0].query_id == "mine"
    bad = {"none.txt": None, "q.tsv": "query\n", "nocol.csv": "text\nx\n",
           "broken.jsonl": "{not json\n", "noquery.jsonl": '{"video": "v"}\n',
           "blank.jsonl": '{"query": " "}\n', "empty.txt": "\n"}
    for name, content in bad.items():
        if content is not None:
            (tmp_path / name).write_text(content)
        with pytest.raises(SearchError, match=name.split(".")[0]):
            read_queries(tmp_path / name)


def test_rows_an_ann_index_did_not_find_are_left_out(index, tiny_encoder):
    """An ANN index pads a short answer with "" ids and -inf scores: those are no hits."""
    from crosstvr_core.retrieval.search import AnnResult

    searcher = TextSearcher(index, tiny_encoder, _models(index), brute_force_below=1000)
    search = searcher.gallery.search

    def short(queries, k):
        found = search(queries, k)
        ids = [row[:-2] + ["", ""] for row in found.ids]
        scores = found.scores.clone()
        scores[:, -2:] = float("-inf")
        return AnnResult(ids, scores, found.indices)

    searcher.gallery.search = short
    result = searcher.search(["a red circle"], 5, candidates=6)[0]
    assert len(result.hits) == 4 and all(h.video_id for h in result.hits)
    assert all(h.stage2 is not None for h in result.hits)
