"""`crosstvr index`: a known dataset format, a bare folder of videos, and bad arguments."""

import lancedb
import pytest
from dataset_fixtures import write_msvd, write_videos

from crosstvr_core.datasets import load_dataset
from flows.cli import main


def _rows(db, table):
    return lancedb.connect(db).open_table(table).to_arrow().to_pylist()


def test_index_a_known_format(tmp_path, capsys, ray_local):
    root = tmp_path / "msvd"
    write_msvd(root)
    expected = load_dataset("msvd", root)
    code = main(["index", "--dataset", "msvd", "--root", str(root), "--name", "m",
                 f"home={tmp_path / 'home'}", "sampling.num_frames=2"])
    out = capsys.readouterr().out
    assert code == 0, out
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
                 f"home={tmp_path / 'home'}", "sampling.num_frames=2"]) == 0
    assert f"indexed 0  skipped (unchanged) {n}  failed 0" in capsys.readouterr().out


def test_index_a_bare_folder_of_videos(tmp_path, capsys, ray_local):
    write_videos(tmp_path / "clips", ["a.mp4", "sub/b.mkv", "c.webm"])
    (tmp_path / "clips" / "notes.txt").write_text("not a video")
    code = main(["index", str(tmp_path / "clips"), f"home={tmp_path / 'home'}",
                 "sampling.num_frames=2"])
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
