"""The Ray Data index step on real mp4s, real Ray, real Lance tables."""

import json
import shutil

import numpy as np
import pytest
from index_fixtures import write_corpus

from crosstvr_core.config import load_config
from crosstvr_core.data.datasets import load_folder_dataset
from crosstvr_core.storage import fixed_list_to_numpy
from tasks.index import index_dataset

NUM_VIDEOS = 8


@pytest.fixture()
def corpus(tmp_path):
    return write_corpus(tmp_path / "corpus", NUM_VIDEOS)


def _cfg(home, *extra):
    # a seeded random-init encoder: these tests are about the index, not the encoder's weights
    return load_config(None, [f"home={home}", "data.name=idx", "sampling.num_frames=4",
                              "ray.decode_batch_size=4", "encoder.pretrained=null", *extra])


def _dataset(corpus):
    return load_folder_dataset(corpus["root"], corpus["captions"], "idx")


def test_index_then_reindex_is_an_upsert(corpus, tmp_path, ray_local):
    cfg = _cfg(tmp_path / "home")
    result = index_dataset(cfg, _dataset(corpus))
    ref = result.ref
    assert ref.counts["videos_ok"] == NUM_VIDEOS and ref.counts["videos_failed"] == 3
    assert ref.counts["captions_encoded"] == NUM_VIDEOS + 3
    assert {r: [v for v, _ in items] for r, items in result.failures.items()} == {
        reason: [vid] for vid, reason in corpus["broken"].items()}
    index = ref.open()
    rows = {v["video_id"]: v for v in index.videos.to_arrow().to_pylist()}
    for vid, reason in corpus["broken"].items():
        assert rows[vid]["status"] == "failed" and rows[vid]["error_reason"] == reason
        assert vid.split("/")[-1] in rows[vid]["error"]  # the error names the file
    assert index.video_tokens.count_rows() == NUM_VIDEOS  # no half row for a failed file
    bank = index.load_token_bank("test")
    assert bank.num_videos == 2 and bank.video_patches.shape[1:] == (4, 16, 128)
    assert bank.frame_mask.all()
    assert ref.read_versions != ref.versions  # lineage: what it read vs what it wrote

    # unchanged corpus: nothing decoded or encoded again; failed files are retried
    again = index_dataset(cfg, _dataset(corpus)).ref
    assert again.counts["videos_skip"] == NUM_VIDEOS and again.counts["videos_failed"] == 3
    assert again.counts["videos_retried"] == again.counts["videos_still_failing"] == 3
    assert again.counts["captions_encoded"] == 0
    assert again.counts["captions_unchanged"] == NUM_VIDEOS + 3

    # one video changed, one broken file fixed, one entry removed: replaced, added, deleted
    videos = corpus["root"] / "videos"
    shutil.copy(videos / "clip001.mp4", videos / "clip002.mp4")
    shutil.copy(videos / "clip003.mp4", videos / "empty.mp4")
    rows = [json.loads(line) for line in corpus["captions"].read_text().splitlines()]
    rows = [r for r in rows if r["video"] != "videos/text.mp4"]
    corpus["captions"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    third = index_dataset(cfg, _dataset(corpus)).ref
    assert third.counts["videos_ok"] == 2 and third.counts["videos_skip"] == NUM_VIDEOS - 1
    assert third.counts["videos_removed"] == 1 and third.counts["videos_failed"] == 1
    index = third.open()
    assert index.captions.count_rows() == NUM_VIDEOS + 2  # the removed video's caption went
    ids = index.videos.to_arrow().column("video_id").to_pylist()
    assert len(ids) == len(set(ids)) == NUM_VIDEOS + 2
    token_ids = index.video_tokens.to_arrow().column("video_id").to_pylist()
    assert sorted(token_ids) == sorted(corpus["good"] + ["videos/empty"])


def test_a_failed_video_pass_lets_the_caption_pass_finish(corpus, tmp_path, ray_local,
                                                          monkeypatch):
    """Videos and captions are encoded at once: when the video pass fails, the captions
    pass still commits, then the video pass's error is raised (a rerun does the videos)."""
    import tasks.index

    def broken(*args, **kwargs):
        raise RuntimeError("video pass broke")

    cfg = _cfg(tmp_path / "home")
    monkeypatch.setattr(tasks.index, "index_videos", broken)
    with pytest.raises(RuntimeError, match="video pass broke"):
        index_dataset(cfg, _dataset(corpus))
    monkeypatch.undo()
    again = index_dataset(cfg, _dataset(corpus)).ref
    assert again.counts["captions_unchanged"] == NUM_VIDEOS + 3  # committed by the first run
    assert again.counts["captions_encoded"] == 0 and again.counts["videos_ok"] == NUM_VIDEOS


def test_ctrl_c_stops_the_passes_after_the_batch_they_write(corpus, tmp_path, ray_local,
                                                            monkeypatch):
    """Ctrl-C reaches the main thread only, while both passes run in their own: they must
    stop after the batch they are writing (not run to the end), keep what they committed,
    and a rerun must finish the rest without duplicates."""
    import signal
    import threading
    import time

    import tasks.index

    real_write = tasks.index._write_video_batch
    writes = []

    def write_then_interrupt(*args, **kwargs):
        counts = real_write(*args, **kwargs)
        writes.append(counts)
        if len(writes) == 1:  # as if the user pressed Ctrl-C now
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            time.sleep(1.0)  # the main thread's handler runs before the next batch
        return counts

    cfg = _cfg(tmp_path / "home", "index.write_batch_rows=1")
    monkeypatch.setattr(tasks.index, "_write_video_batch", write_then_interrupt)
    # Python raises KeyboardInterrupt on SIGINT only if SIGINT was not ignored when it started,
    # and a run started in the background by a shell without job control starts ignoring it
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            index_dataset(cfg, _dataset(corpus))
    finally:
        signal.signal(signal.SIGINT, previous)
    assert len(writes) == 1  # 11 one-row batches were there to write
    # no pass left writing behind the interrupt (it would race the rerun into duplicates)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("index")]
    monkeypatch.undo()
    done_first = writes[0]["ok"]
    again = index_dataset(cfg, _dataset(corpus)).ref
    assert again.counts["videos_skip"] == done_first
    assert again.counts["videos_ok"] == NUM_VIDEOS - done_first
    index = again.open()
    ids = index.video_tokens.to_arrow().column("video_id").to_pylist()
    assert sorted(ids) == sorted(set(ids)) and len(ids) == NUM_VIDEOS
    assert index.captions.count_rows() == NUM_VIDEOS + 3


def test_keep_patches_stores_the_cls_attended_subset(corpus, tmp_path, ray_local):
    """M patches per frame: exactly the full index's tokens at the stored grid positions."""
    full = index_dataset(_cfg(tmp_path / "full"), _dataset(corpus)).ref.open()
    kept = index_dataset(_cfg(tmp_path / "kept", "index.keep_patches=3"), _dataset(corpus)).ref
    assert kept.shapes["num_patches"] == 3 and kept.shapes["source_patches"] == 16
    index = kept.open()
    f, w = 4, 128
    rows_full = full.video_tokens.to_arrow().sort_by("video_id")
    rows_kept = index.video_tokens.to_arrow().sort_by("video_id")
    patches_full = fixed_list_to_numpy(rows_full.column("patches"), (NUM_VIDEOS, f, 16, w)[1:])
    patches_kept = fixed_list_to_numpy(rows_kept.column("patches"), (f, 3, w))
    where = fixed_list_to_numpy(rows_kept.column("patch_index"), (f, 3)).astype(np.int64)
    assert (np.diff(where, axis=-1) > 0).all() and where.min() >= 0 and where.max() < 16
    gathered = np.take_along_axis(patches_full, where[..., None], axis=2)
    np.testing.assert_array_equal(patches_kept, gathered)
    np.testing.assert_array_equal(
        fixed_list_to_numpy(rows_kept.column("cls"), (f, 128)),
        fixed_list_to_numpy(rows_full.column("cls"), (f, 128)))
    bank = index.load_token_bank("train")
    assert bank.video_patches.shape[1:] == (f, 3, w)


def test_segment_sampling_is_seeded_per_video(corpus):
    """decode_batch directly (no Ray): segment sampling draws per video id and seed."""
    from tasks.index import decode_batch

    ids = np.array(["videos/clip001", "videos/clip002"], dtype=object)
    batch = {"video_id": ids, "split": np.array(["train", "train"], dtype=object),
             "path": np.array([str(corpus["root"] / f"{v}.mp4") for v in ids], dtype=object),
             "known_hash": np.array(["", ""], dtype=object)}

    def frames(**kwargs):
        out = decode_batch(dict(batch), 4, 64, threads=2, **kwargs)
        assert list(out["status"]) == ["ok", "ok"]
        return out["frames"]

    first = frames(method="segment", seed=0)
    np.testing.assert_array_equal(first, frames(method="segment", seed=0))
    assert not np.array_equal(first, frames(method="segment", seed=1))
    assert not np.array_equal(first, frames(method="uniform"))


def test_a_table_of_another_sampling_is_refused(tmp_path):
    from crosstvr_core.storage import EncoderMismatchError, TokenIndex, TokenShapes

    shapes = TokenShapes(4, 8, 2, 8, 6, 8)
    TokenIndex(tmp_path / "db", "enc", shapes)
    segment = TokenShapes(4, 8, 2, 8, 6, 8, sampling="segment:0")
    with pytest.raises(EncoderMismatchError, match="segment:0.*another data.name"):
        TokenIndex(tmp_path / "db", "enc", segment)
