import json
import logging
import pickle

import pytest
from dataset_fixtures import (
    MSVD_SPLITS,
    tiny_video,
    write_jsonl,
    write_msrvtt,
    write_msvd,
    write_videos,
)

from crosstvr_core.data.annotation_formats import ANNOTATION_FORMATS
from crosstvr_core.data.datasets import (
    DatasetError,
    known_formats,
    load_dataset,
    load_folder_dataset,
)
from crosstvr_core.data.video_decode import probe_video


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
        ([{"video": "/data/a.mp4", "caption": "x", "split": "test"}],
         "escapes the root .* belong in a manifest"),
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


# --------------------------------------------------------------- load_dataset: the interface


def test_registry_names_every_format():
    assert known_formats() == ["activitynet", "didemo", "folder", "lsmdc", "manifest",
                               "msrvtt", "msvd", "vatex"]
    assert set(ANNOTATION_FORMATS) == set(known_formats())
    with pytest.raises(DatasetError, match="unknown dataset format 'msr-vtt'; known: "
                                           "activitynet, didemo, folder"):
        load_dataset("msr-vtt", ".")


def test_option_and_split_errors(tmp_path):
    write_msrvtt(tmp_path, with_videos=False)
    with pytest.raises(DatasetError, match="unknown split 'val'; known splits: train, test"):
        load_dataset("msrvtt", tmp_path, "val")
    with pytest.raises(DatasetError, match="missing_videos='ignore': expected one of skip"):
        load_dataset("msrvtt", tmp_path, missing_videos="ignore")
    with pytest.raises(DatasetError, match="caption_mode='story'"):
        load_dataset("msrvtt", tmp_path, caption_mode="story")
    with pytest.raises(DatasetError, match="videos directory '.*nope': not a directory"):
        load_dataset("msrvtt", tmp_path, videos_dir=tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no split's annotation files under .*expected "
                                           "MSRVTT_JSFUSION_test.csv, MSRVTT_data.json"):
        load_dataset("msrvtt", tmp_path / "empty")


def test_annotation_file_overrides(tmp_path):
    write_msrvtt(tmp_path)
    (tmp_path / "MSRVTT_train.7k.csv").write_text("video_id\nvideo1\n")
    ds = load_dataset("msrvtt", tmp_path, "train", annotations={"train_csv": "MSRVTT_train.7k.csv"})
    assert [v.video_id for v in ds.videos] == ["video1"]
    with pytest.raises(DatasetError, match=r"unknown annotation file role\(s\) \['train'\]; "
                                           r"known: \['data_json', 'test_csv', 'train_csv'\]"):
        load_dataset("msrvtt", tmp_path, annotations={"train": "x.csv"})
    with pytest.raises(DatasetError, match="reads several files: give annotations as a mapping"):
        load_dataset("msrvtt", tmp_path, annotations="x.csv")
    with pytest.raises(DatasetError, match="annotation file '.*gone.csv': not found"):
        load_dataset("msrvtt", tmp_path, "test", annotations={"test_csv": "gone.csv"})


def test_missing_videos_skipped_and_reported(tmp_path, caplog):
    write_msrvtt(tmp_path)
    (tmp_path / "videos" / "video1.webm").unlink()
    (tmp_path / "videos" / "video7725.mp4").unlink()
    with caplog.at_level(logging.WARNING, logger="crosstvr_core.data.datasets"):
        ds = load_dataset("msrvtt", tmp_path)
    assert ds.missing_videos == ["video7725", "video1"]
    assert ds.skipped_captions == 4
    assert [v.video_id for v in ds.videos] == ["video7579", "video0"]
    assert {c.video_id for c in ds.captions} == {"video7579", "video0"}
    report = ds.missing_report()
    assert "2 of 4 video(s) not found under" in report
    assert "(skipped with their 4 caption(s)): video7725, video1" in report
    assert report in caplog.text

    with pytest.raises(DatasetError, match=r"2 of 4 video\(s\) not found .*"
                                           r"missing_videos='error'\): video7725, video1"):
        load_dataset("msrvtt", tmp_path, missing_videos="error")

    kept = load_dataset("msrvtt", tmp_path, "test", missing_videos="keep")
    assert kept.videos[1].path == str(tmp_path / "videos" / "video7725")
    assert kept.missing_report() is None


def test_no_video_found_is_an_error_even_when_skipping(tmp_path):
    write_msrvtt(tmp_path, with_videos=False)
    (tmp_path / "videos").mkdir()
    with pytest.raises(DatasetError, match=r"2 of 2 video\(s\) not found .*none found"):
        load_dataset("msrvtt", tmp_path, "test")


def test_lookup_extension_priority_subfolders_and_ambiguity(tmp_path):
    write_msrvtt(tmp_path)
    tiny_video(tmp_path / "videos" / "video7579.webm")  # beside the .mp4: .mp4 wins
    tiny_video(tmp_path / "videos" / "deep" / "er" / "video7725.MKV")
    (tmp_path / "videos" / "video7725.mp4").unlink()
    ds = load_dataset("msrvtt", tmp_path, "test")
    assert [v.path.rsplit("/", 1)[-1] for v in ds.videos] == ["video7579.mp4", "video7725.MKV"]
    tiny_video(tmp_path / "videos" / "other" / "video7725.mp4")
    with pytest.raises(DatasetError, match="video 'video7725' matches files in several folders"):
        load_dataset("msrvtt", tmp_path, "test")


def test_found_paths_are_decodable_videos(tmp_path):
    write_msrvtt(tmp_path)
    ds = load_dataset("msrvtt", tmp_path, "train")
    probe = probe_video(ds.videos[1].path)  # the .webm
    assert (probe.width, probe.height, probe.num_frames) == (64, 64, 8)


def test_ids_escaping_the_videos_dir_and_videos_in_two_splits(tmp_path):
    captions = write_msvd(tmp_path)
    (tmp_path / "raw-captions.pkl").write_bytes(
        pickle.dumps({**captions, "../../etc/passwd": [["x"]]}))
    (tmp_path / "val_list.txt").write_text("../../etc/passwd\n")
    with pytest.raises(DatasetError, match="val_list.txt' line 1: video '../../etc/passwd' "
                                           "escapes the root"):
        load_dataset("msvd", tmp_path, "val")
    (tmp_path / "val_list.txt").write_text(MSVD_SPLITS["train"][0] + "\n")
    with pytest.raises(DatasetError, match=r"duplicate video id '-4wsuPCjDBc_5_15' \(is in split "
                                           r"'train' .* and 'val'\)"):
        load_dataset("msvd", tmp_path)


def test_folder_ids_without_extension_and_optional_split(tmp_path):
    write_videos(tmp_path / "clips", ["a.mp4", "b.avi"])
    write_jsonl(tmp_path / "captions.jsonl", [
        {"video": "clips/a", "caption": "a red circle", "group": 3},
        {"video": "clips/a", "caption": "a round red thing", "group": 3},
        {"video": "clips/b.avi", "caption": "a blue square", "group": 4},
        {"video": "clips/c", "caption": "not on disk", "group": 5},
    ])
    ds = load_dataset("folder", tmp_path)  # captions.jsonl is the default file
    assert ds.splits() == ["test"]  # no split column: a test corpus
    assert [v.path for v in ds.videos] == [str(tmp_path / "clips" / "a.mp4"),
                                           str(tmp_path / "clips" / "b.avi")]
    assert ds.missing_videos == ["clips/c"]
    assert ds.evaluation_mode("test") == "multi"
    assert ds.captions[2].meta == {"group": 4}
    paragraphs = load_dataset("folder", tmp_path, caption_mode="paragraph")
    assert paragraphs.captions[0].text == "a red circle a round red thing"  # file order
    with pytest.raises(DatasetError, match="unknown split 'train'; the file has test"):
        load_dataset("folder", tmp_path, "train")
    with pytest.raises(DatasetError, match="no captions in split 'train'"):
        ds.evaluation_mode("train")


def test_folder_unknown_caption_column_names_the_known_ones(tmp_path):
    write_jsonl(tmp_path / "captions.jsonl", [{"video": "a.mp4", "text": "x"}])
    with pytest.raises(DatasetError, match=r"missing column\(s\) \['caption'\]; found "
                                           r"\['video', 'text'\], known columns \['video', "
                                           r"'caption', 'split'\]"):
        load_dataset("folder", tmp_path)


def test_manifest_of_local_paths_and_file_uris(tmp_path):
    elsewhere = write_videos(tmp_path / "store", ["x.mp4", "y.webm"])
    write_videos(tmp_path / "lists" / "near", ["z.mkv"])
    write_jsonl(tmp_path / "lists" / "manifest.jsonl", [
        {"uri": str(elsewhere[0]), "caption": "an absolute path", "split": "train"},
        {"uri": elsewhere[1].as_uri(), "caption": "a file uri", "split": "test"},
        {"uri": "near/z.mkv", "caption": "relative to the manifest", "split": "test",
         "video_id": "zed"},
        {"uri": "file:///no/such/file.mp4", "caption": "gone", "split": "test"},
    ])
    ds = load_dataset("manifest", tmp_path / "lists")
    assert {v.video_id: v.path for v in ds.videos} == {
        "x": str(elsewhere[0]), "y": str(elsewhere[1]),
        "zed": str(tmp_path / "lists" / "near" / "z.mkv")}
    assert ds.videos[1].meta == {"uri": elsewhere[1].as_uri()}
    assert ds.missing_videos == ["file"]
    assert [c.video_id for c in ds.split_captions("train")] == ["x"]


@pytest.mark.parametrize(
    ("row", "needle"),
    [
        ({"uri": "s3://bucket/clips/a.mp4", "caption": "x"},
         "line 1: 's3://' URIs are not supported yet"),
        ({"uri": "gs://bucket/a.mp4", "caption": "x"}, "'gs://' URIs are not supported yet"),
        ({"uri": "ftp://host/a.mp4", "caption": "x"}, "unknown URI scheme 'ftp'"),
        ({"uri": "file://host/a.mp4", "caption": "x"}, "names host 'host'"),
        ({"uri": "../a.mp4", "caption": "x"}, "path '../a.mp4' escapes the manifest's folder"),
        ({"uri": "a.mp4", "caption": ""}, "empty caption"),
        ({"video": "a.mp4", "caption": "x"}, r"missing column\(s\) \['uri'\]"),
    ],
)
def test_manifest_errors(tmp_path, row, needle):
    write_jsonl(tmp_path / "m" / "manifest.jsonl", [row])
    with pytest.raises(DatasetError, match=needle):
        load_dataset("manifest", tmp_path / "m")


def test_manifest_duplicate_video_id(tmp_path):
    write_jsonl(tmp_path / "manifest.jsonl", [
        {"uri": "/data/a/clip.mp4", "caption": "x"}, {"uri": "/data/b/clip.mp4", "caption": "y"}])
    with pytest.raises(DatasetError, match="line 2: duplicate video id 'clip' for two files"):
        load_dataset("manifest", tmp_path)


def test_csv_with_byte_order_mark_and_summary(tmp_path):
    write_videos(tmp_path, ["a.mp4", "b.mp4"])
    (tmp_path / "captions.csv").write_text(
        "\ufeffvideo,caption,split\na.mp4,one,train\na.mp4,two,train\nb.mp4,three,test\n",
        encoding="utf-8")
    ds = load_dataset("folder", tmp_path)
    assert ds.summary() == {"test": {"videos": 1, "captions": 1, "evaluation": "single"},
                            "train": {"videos": 1, "captions": 2, "evaluation": "multi"}}
