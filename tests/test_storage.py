import numpy as np
import pyarrow as pa
import pytest

from crosstvr_core.storage import (
    EncoderMismatchError,
    TokenIndex,
    TokenShapes,
    decode_video_tokens,
    fixed_list,
)

SHAPES = TokenShapes(num_frames=3, embed_dim=4, num_patches=2, vision_width=5,
                     context_length=6, text_width=7)


def _video_rows(ids, encoder_id="enc-a", status="ok"):
    n = len(ids)
    return pa.table({
        "video_id": ids, "corpus": ["c"] * n, "split": ["test"] * n, "uri": ids,
        "content_hash": [f"h-{i}" for i in ids], "duration": [1.0] * n, "fps": [8.0] * n,
        "width": [64] * n, "height": [64] * n, "size_bytes": [10] * n,
        "num_frames_sampled": [3] * n, "status": [status] * n, "error": [""] * n,
        "encoder_id": [encoder_id] * n,
        "indexed_at": pa.array([None] * n, pa.timestamp("us", tz="UTC")),
    })


def _token_rows(ids, rng, encoder_id="enc-a"):
    n = len(ids)
    return pa.table({
        "video_id": ids, "content_hash": [f"h-{i}" for i in ids], "encoder_id": [encoder_id] * n,
        "frame_mask": fixed_list(np.array([[True, True, False]] * n), np.bool_),
        "cls": fixed_list(rng.normal(size=(n, 3, 4))),
        "patches": fixed_list(rng.normal(size=(n, 3, 2, 5))),
    })


def _caption_rows(ids, rng):
    n = len(ids)
    return pa.table({
        "caption_id": [f"{i}#0" for i in ids], "video_id": ids, "split": ["test"] * n,
        "text": [f"caption of {i}" for i in ids], "meta": ['{"variant": "base"}'] * n,
        "encoder_id": ["enc-a"] * n, "eot": fixed_list(rng.normal(size=(n, 4))),
        "tokens": fixed_list(rng.normal(size=(n, 6, 7))), "length": pa.array([3] * n, pa.int32()),
    })


def test_round_trip_into_a_token_bank(tmp_path):
    rng = np.random.default_rng(0)
    index = TokenIndex(tmp_path / "db", "enc-a", SHAPES)
    tokens = _token_rows(["b", "a"], rng)
    index.upsert("video_tokens", tokens, key="video_id")
    index.upsert("videos", _video_rows(["b", "a"]), key="video_id")
    index.upsert("captions", _caption_rows(["a", "b"], rng), key="caption_id")
    bank = index.load_token_bank("test")
    assert bank.video_ids == ["a", "b"]  # sorted, aligned with tokens
    assert bank.video_patches.shape == (2, 3, 2, 5)
    assert bank.frame_mask[0].tolist() == [True, True, False]
    b_cls = np.asarray(tokens.column("cls")[0].as_py(), np.float16).reshape(3, 4)
    np.testing.assert_array_equal(bank.video_cls[1].numpy(), b_cls)  # fp16 exact
    assert bank.caption_video.tolist() == [0, 1]
    assert bank.text_mask[0].tolist() == [True] * 3 + [False] * 3
    assert index.caption_meta(bank.caption_ids)[0] == {"variant": "base"}


def test_upsert_replaces_and_counts(tmp_path):
    rng = np.random.default_rng(1)
    index = TokenIndex(tmp_path / "db", "enc-a", SHAPES)
    assert index.upsert("videos", _video_rows(["a", "b"]), "video_id") == {"inserted": 2, "updated": 0}
    assert index.upsert("videos", _video_rows(["b", "c"]), "video_id") == {"inserted": 1, "updated": 1}
    assert index.videos.count_rows() == 3
    index.upsert("video_tokens", _token_rows(["a", "b"], rng), "video_id")
    states = index.video_states()
    assert states["a"] == ("h-a", "ok") and states["c"] == ("h-c", "incomplete")
    index.delete_videos(["a"])
    assert "a" not in index.video_states() and index.video_tokens.count_rows() == 1


def test_another_encoder_is_refused(tmp_path):
    TokenIndex(tmp_path / "db", "enc-a", SHAPES)
    with pytest.raises(EncoderMismatchError, match="enc-a"):
        TokenIndex(tmp_path / "db", "enc-b", SHAPES)
    other_shapes = TokenShapes(**{**SHAPES.__dict__, "num_frames": 4})
    with pytest.raises(EncoderMismatchError, match="shapes"):
        TokenIndex(tmp_path / "db", "enc-a", other_shapes)


def test_rows_of_another_encoder_are_refused(tmp_path):
    index = TokenIndex(tmp_path / "db", "enc-a", SHAPES)
    with pytest.raises(EncoderMismatchError, match="enc-b"):
        index.upsert("video_tokens", _token_rows(["x"], np.random.default_rng(2), "enc-b"),
                     "video_id")
    assert index.video_tokens.count_rows() == 0


def test_a_table_of_another_layout_is_refused(tmp_path):
    """A database written by another version (other columns) is named, not silently mixed."""
    import lancedb

    from crosstvr_core.storage import SchemaMismatchError

    db = lancedb.connect(tmp_path / "db")
    db.create_table("videos", schema=pa.schema([("video_id", pa.string())]))
    with pytest.raises(SchemaMismatchError, match="videos.*has columns"):
        TokenIndex(tmp_path / "db", "enc-a", SHAPES)


def test_rows_missing_a_column_are_named(tmp_path):
    index = TokenIndex(tmp_path / "db", "enc-a", SHAPES)
    rows = _video_rows(["a"]).drop_columns(["uri"])
    with pytest.raises(ValueError, match=r"lack column\(s\) \['uri'\]"):
        index.upsert("videos", rows, "video_id")
    assert index.videos.count_rows() == 0


def test_pinned_versions_read_what_was_written_then(tmp_path):
    """A later step opens the versions its index step wrote, even after a re-index."""
    index = TokenIndex(tmp_path / "db", "enc-a", SHAPES)
    index.upsert("videos", _video_rows(["a"]), "video_id")
    pinned_versions = index.versions()
    index.upsert("videos", _video_rows(["b", "c"]), "video_id")
    pinned = TokenIndex(tmp_path / "db", "enc-a", SHAPES, versions=pinned_versions)
    assert pinned.videos.count_rows() == 1
    assert pinned.videos.to_lance().to_table(columns=["video_id"]).num_rows == 1
    assert TokenIndex(tmp_path / "db", "enc-a", SHAPES).videos.count_rows() == 3


def test_lance_root_joins_object_store_uris_as_strings():
    from crosstvr_core.config import load_config

    cfg = load_config(None, ["index.lance_root=s3://bucket/crosstvr/", "data.name=msrvtt"])
    assert cfg.lance_uri == "s3://bucket/crosstvr/msrvtt.lancedb"


def test_upsert_takes_columns_in_the_tables_types(tmp_path):
    """Columns given as numpy arrays / lists take the table's types (storage.table_rows)."""
    index = TokenIndex(tmp_path / "db", "enc-a", SHAPES)
    columns = {name: column.to_pylist() for name, column in
               zip(_video_rows(["a"]).column_names, _video_rows(["a"]).columns, strict=True)}
    columns["width"] = np.array([64.0])  # probe facts arrive as float64
    assert index.upsert("videos", columns, "video_id") == {"inserted": 1, "updated": 0}
    rng = np.random.default_rng(3)
    assert index.upsert("video_tokens", {
        "video_id": np.array(["a"], dtype=object), "content_hash": ["h-a"],
        "encoder_id": ["enc-a"], "frame_mask": np.ones((1, 3), bool),
        "cls": rng.normal(size=(1, 3, 4)), "patches": rng.normal(size=(1, 3, 2, 5)),
    }, "video_id")["inserted"] == 1
    stored = index.videos.to_lance().to_table(columns=["width"]).column("width")
    assert stored.type == pa.int32() and stored.to_pylist() == [64]
    tokens = decode_video_tokens(index.video_tokens.to_lance().to_table(), SHAPES)
    assert tokens["video_patches"].shape == (1, 3, 2, 5) and tokens["frame_mask"].all()
    with pytest.raises(ValueError, match=r"columns \['colour'\] are not in"):
        index.upsert("videos", {**columns, "colour": ["red"]}, "video_id")


def test_an_index_written_before_a_column_existed_opens_with_it_filled(tmp_path):
    """An upgrade keeps a stored index: the videos table of a release without
    `decode_warning` gains it (empty), its rows and the other tables untouched."""
    import lancedb

    from crosstvr_core.storage import videos_schema

    old = pa.schema([f for f in videos_schema() if f.name != "decode_warning"])
    db = lancedb.connect(tmp_path / "db")
    db.create_table("videos", _video_rows(["a", "b"]).append_column(
        "error_reason", pa.array(["", ""])).select(old.names).cast(old))
    index = TokenIndex(tmp_path / "db", "enc-a", SHAPES)
    assert index.videos.schema.names == videos_schema().names
    rows = index.videos.to_arrow().sort_by("video_id")
    assert rows.column("video_id").to_pylist() == ["a", "b"]
    assert rows.column("decode_warning").to_pylist() == ["", ""]
    index.upsert("videos", _video_rows(["c"]), "video_id")  # and takes new rows
    assert index.videos.count_rows() == 3


def test_compact_indexes_the_id_columns_and_commits_nothing_when_idle(tmp_path) -> None:
    """Reads by id go through a BTREE index after compaction; a compaction with nothing new
    leaves every table's version alone (search keys its gallery by the token version)."""
    rng = np.random.default_rng(0)
    index = TokenIndex(tmp_path / "db", "enc-a", SHAPES)
    index.upsert("video_tokens", _token_rows(["a", "b", "c"], rng), key="video_id")
    index.compact()
    indexed = [ix["fields"] for ix in index.video_tokens.to_lance().list_indices()]
    assert ["video_id"] in indexed
    versions = index.versions()
    index.compact()
    assert index.versions() == versions
    index.upsert("video_tokens", _token_rows(["d"], rng), key="video_id")
    index.compact()
    stats = index.video_tokens.to_lance().stats.index_stats("video_id_btree")
    assert stats["num_unindexed_rows"] == 0 and stats["num_indexed_rows"] == 4
    found, tokens = index.video_tokens_of(["d", "a"])
    assert sorted(found) == ["a", "d"] and tokens["video_cls"].shape[0] == 2
