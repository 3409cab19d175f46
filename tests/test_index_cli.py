"""`crosstvr index`: a known dataset format, a bare folder of videos, and bad arguments."""

import lancedb
import pytest
from dataset_fixtures import write_msvd, write_videos

from crosstvr_core.data.datasets import load_dataset
from crosstvr_core.models.encoder import file_sha256
from flows.cli import main


def _rows(db, table):
    return lancedb.connect(db).open_table(table).to_arrow().to_pylist()


# the default encoder (pretrained on generated stills), pretrained in seconds; logging the
# encoder as an MLflow model is tested in test_encoder_pretraining
TINY_PRETRAIN = ["pretrain.num_stills=64", "pretrain.num_eval_stills=32", "pretrain.steps=2",
                 "pretrain.batch_size=32", "pretrain.torch_threads=1", "tracking.log_model=false"]


def test_index_a_known_format(tmp_path, capsys, ray_local):
    root = tmp_path / "msvd"
    write_msvd(root)
    expected = load_dataset("msvd", root)
    code = main(["index", "--dataset", "msvd", "--root", str(root), "--name", "m",
                 f"home={tmp_path / 'home'}", "sampling.num_frames=2", *TINY_PRETRAIN])
    out = capsys.readouterr().out
    assert code == 0, out
    # no stills checkpoint on this machine yet: pretrained first, then indexed with it
    assert "pretraining it first (2 steps" in out
    checkpoints = list((tmp_path / "home" / "weights").glob("crosstvr-tiny-vit-stills-*.pt"))
    assert len(checkpoints) == 1 and f"encoder checkpoint: {checkpoints[0]}" in out
    n = len(expected.videos)
    assert f"indexed {n}  skipped (unchanged) 0  failed 0" in out
    assert f"captions encoded {len(expected.captions)}" in out
    db = tmp_path / "home" / "lance" / "m.lancedb"
    videos = _rows(db, "videos")
    assert sorted(v["video_id"] for v in videos) == sorted(v.video_id for v in expected.videos)
    assert {v["split"] for v in videos} == set(expected.splits())
    assert len(_rows(db, "captions")) == len(expected.captions)

    # the same command again: everything unchanged
    assert main(["index", "--dataset", "msvd", "--root", str(root), "--name", "m",
                 f"home={tmp_path / 'home'}", "sampling.num_frames=2", *TINY_PRETRAIN]) == 0
    out = capsys.readouterr().out
    assert f"indexed 0  skipped (unchanged) {n}  failed 0" in out
    assert "pretraining" not in out  # the checkpoint is reused
    # the tokens are the pretrained checkpoint's (encoder_id carries its hash); its captions
    # cache the text tower's input embeddings (encoder.text_tokens: auto)
    assert {v["encoder_id"] for v in videos} == {
        f"crosstvr-tiny-vit|sha256:{file_sha256(checkpoints[0])[:16]}|64px|text=embedding"}


def test_index_a_bare_folder_of_videos(tmp_path, capsys, ray_local):
    write_videos(tmp_path / "clips", ["a.mp4", "sub/b.mkv", "c.webm"])
    (tmp_path / "clips" / "notes.txt").write_text("not a video")
    code = main(["index", str(tmp_path / "clips"), f"home={tmp_path / 'home'}",
                 "sampling.num_frames=2", "encoder.pretrained=null"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "indexed 3  skipped (unchanged) 0  failed 0" in out
    videos = _rows(tmp_path / "home" / "lance" / "clips.lancedb", "videos")
    assert sorted(v["video_id"] for v in videos) == ["a", "c", "sub/b"]


@pytest.mark.parametrize(("argv", "message"), [
    (["index", "--dataset", "msvd"], "--dataset needs --root"),
    (["index", "/no/such/folder"], "no such folder or manifest"),
    (["index"], "give a SOURCE"),
    (["index", "--dataset", "nope", "--root", "/tmp"], "data.kind"),
])
def test_bad_index_arguments_are_named(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err
