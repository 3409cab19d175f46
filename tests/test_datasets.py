import json

import pytest

from crosstvr_core.datasets import DatasetError, load_folder_dataset


def _write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_jsonl_and_csv_give_the_same_dataset(tmp_path):
    rows = [
        {"video": "v/a.mp4", "caption": "a red circle", "split": "train", "group": "g1"},
        {"video": "v/a.mp4", "caption": "a round red thing", "split": "train", "group": "g1"},
        {"video": "v/b.avi", "caption": "a blue square", "split": "test", "group": "g2"},
    ]
    _write_jsonl(tmp_path / "caps.jsonl", rows)
    (tmp_path / "caps.csv").write_text(
        "video,caption,split,group\n" + "".join(
            f"{r['video']},{r['caption']},{r['split']},{r['group']}\n" for r in rows))
    for name in ("caps.jsonl", "caps.csv"):
        ds = load_folder_dataset(tmp_path, name, "t")
        assert [v.video_id for v in ds.videos] == ["v/a", "v/b"]
        assert [c.caption_id for c in ds.captions] == ["v/a#0", "v/a#1", "v/b#0"]
        assert ds.captions[2].meta == {"group": "g2"}
        assert ds.videos[1].path == str(tmp_path / "v" / "b.avi")
        assert [c.video_id for c in ds.split_captions("test")] == ["v/b"]


@pytest.mark.parametrize(
    ("rows", "needle"),
    [
        ([{"video": "a.mp4", "text": "x", "split": "test"}], "missing column"),
        ([{"video": "a.mp4", "caption": " ", "split": "test"}], "empty caption"),
        ([{"video": "../a.mp4", "caption": "x", "split": "test"}], "escapes the root"),
        ([{"video": "a.mp4", "caption": "x", "split": "test"},
          {"video": "a.mp4", "caption": "y", "split": "train"}], "split"),
        ([{"video": "a.mp4", "caption": "x", "split": "test"},
          {"video": "a.avi", "caption": "y", "split": "test"}], "two files"),
    ],
)
def test_bad_annotations_are_named(tmp_path, rows, needle):
    _write_jsonl(tmp_path / "caps.jsonl", rows)
    with pytest.raises(DatasetError, match=needle):
        load_folder_dataset(tmp_path, "caps.jsonl", "t")


def test_missing_files(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_folder_dataset(tmp_path, "nope.jsonl", "t")
    with pytest.raises(DatasetError, match="not a directory"):
        load_folder_dataset(tmp_path / "nope", "caps.jsonl", "t")
