"""Each benchmark's files, in their distributed shape, through `load_dataset`."""

import json
import pickle

import pytest
from dataset_fixtures import (
    ACTIVITYNET_TEST,
    LSMDC_TEST,
    MSRVTT_TEST,
    MSRVTT_TRAIN,
    MSVD_SPLITS,
    write_activitynet,
    write_didemo,
    write_lsmdc,
    write_msrvtt,
    write_msvd,
    write_vatex,
)

from crosstvr_core.data.datasets import DatasetError, load_dataset


def _names(dataset):
    return {v.video_id: v.path.rsplit("/", 1)[-1] for v in dataset.videos}


def test_msrvtt_1ka_test_is_single_caption_and_train_expands_every_sentence(tmp_path):
    write_msrvtt(tmp_path)
    test = load_dataset("msrvtt", tmp_path, "test")
    assert [v.video_id for v in test.videos] == ["video7579", "video7725"]
    assert [c.text for c in test.captions] == [r[3] for r in MSRVTT_TEST]
    assert test.captions[0].meta == {"key": "ret0", "vid_key": "msr7579"}
    assert test.evaluation_mode("test") == "single"
    assert test.caption_to_video("test") == {"video7579#0": "video7579",
                                             "video7725#0": "video7725"}

    train = load_dataset("msrvtt", tmp_path, "train")
    assert _names(train) == {"video0": "video0.mp4", "video1": "video1.webm"}
    # video9999 is in MSRVTT_data.json but not in the 9k split: its sentence stays out
    assert [c.text for c in train.captions] == [t for ts in MSRVTT_TRAIN.values() for t in ts]
    assert [c.meta["sen_id"] for c in train.captions] == [0, 1, 2, 3, 4]
    assert train.videos[0].meta == {"category": 9}
    assert train.evaluation_mode("train") == "multi"

    both = load_dataset("msrvtt", tmp_path)
    assert both.splits() == ["test", "train"]


def test_msvd_lists_and_token_pickle_multi_caption(tmp_path):
    captions = write_msvd(tmp_path)
    ds = load_dataset("msvd", tmp_path)
    assert ds.splits() == ["test", "train", "val"]
    assert [v.video_id for v in ds.split_videos("test")] == MSVD_SPLITS["test"]
    first = ds.split_captions("test")[0]
    assert first.text == " ".join(captions[first.video_id][0])
    assert ds.evaluation_mode("test") == "multi"
    assert len(ds.split_captions("test")) == 4
    assert ds.evaluation_mode("val") == "single"
    assert ds.videos[0].path.endswith(".avi")


def test_didemo_paragraph_in_temporal_order_and_sentence_mode(tmp_path):
    write_didemo(tmp_path)
    ds = load_dataset("didemo", tmp_path, "train")
    assert ds.caption_mode == "paragraph"
    assert _names(ds) == {"42148089@N00_8282457917_0b00eab4ea": "42148089@N00_8282457917_0b00eab4ea.mp4",
                          "94234486@N00_3442946166_bb6d7c1f12": "94234486@N00_3442946166_bb6d7c1f12.m4v"}
    first = ds.captions[0]
    # "a dog runs into view" starts at segment 0, before "the camera pans" (segment 3)
    assert first.text == "a dog runs into view the camera pans to the right"
    assert first.caption_id == "42148089@N00_8282457917_0b00eab4ea#paragraph"
    assert first.meta["sentences"] == 2
    assert ds.evaluation_mode("train") == "single"

    sentences = load_dataset("didemo", tmp_path, "train", caption_mode="sentence")
    assert len(sentences.captions) == 3
    assert sentences.captions[1].meta["start"] == pytest.approx(5 * 0.0)
    assert sentences.captions[0].meta["start"] == pytest.approx(5 * 3.0)
    assert sentences.evaluation_mode("train") == "multi"


def test_activitynet_ids_with_and_without_v_prefix_and_paragraphs(tmp_path):
    write_activitynet(tmp_path)
    ds = load_dataset("activitynet", tmp_path, "test")  # test = val_1.json
    assert _names(ds) == {"v_uqiMw7tQ1Cc": "v_uqiMw7tQ1Cc.mp4", "v_ehGHCYKzyZ8": "ehGHCYKzyZ8.mkv"}
    paragraph = ds.caption_to_video("test")
    assert paragraph == {"v_uqiMw7tQ1Cc#paragraph": "v_uqiMw7tQ1Cc",
                         "v_ehGHCYKzyZ8#paragraph": "v_ehGHCYKzyZ8"}
    assert ds.captions[0].text == ("A weight lifter stands ready. Then he throws the ball. "
                                   "The crowd cheers.")
    assert ds.videos[0].meta == {"duration": ACTIVITYNET_TEST["v_uqiMw7tQ1Cc"]["duration"]}
    assert load_dataset("activitynet", tmp_path).splits() == ["test", "train"]


def test_vatex_full_clip_id_then_youtube_id(tmp_path):
    write_vatex(tmp_path)
    ds = load_dataset("vatex", tmp_path)  # only the validation file is present
    assert ds.splits() == ["val"]
    assert _names(ds) == {"Ptf_2VRj-V0_000122_000132": "Ptf_2VRj-V0_000122_000132.mp4",
                          "al_b-3ZxZKg_000010_000020": "al_b-3ZxZKg.mp4"}
    assert ds.videos[1].meta == {"clip_start": 10, "clip_end": 20}
    assert ds.evaluation_mode("val") == "multi"
    assert len(ds.captions) == 4


def test_lsmdc_per_movie_folders_and_flat_clips(tmp_path):
    write_lsmdc(tmp_path)
    ds = load_dataset("lsmdc", tmp_path, "test")
    assert [v.video_id for v in ds.videos] == [r[0] for r in LSMDC_TEST]
    assert "/0001_American_Beauty/0001_American_Beauty_00.00.51.926" in ds.videos[0].path
    assert ds.videos[2].path.endswith("/videos/1004_Juno_00.02.11.300-00.02.14.200.avi")
    assert ds.captions[0].text == "SOMEONE sits at a computer."
    assert ds.captions[0].meta["start_aligned"] == "00.00.51.926"
    assert ds.evaluation_mode("test") == "single"


# ------------------------------------------------------------------------- malformed files


def _rewrite_json(path, edit):
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda p: (p / "MSRVTT_JSFUSION_test.csv").write_text(
            "key,vid_key,video_id,caption\nret0,msr1,video1,x\n"),
         r"missing column\(s\) \['sentence'\].*unknown column\(s\) \['caption'\].*known columns"),
        (lambda p: (p / "MSRVTT_JSFUSION_test.csv").write_text(
            "key,vid_key,video_id,sentence\nret0,msr1,video1,  \n"), "line 2: empty caption"),
        (lambda p: (p / "MSRVTT_JSFUSION_test.csv").write_text(
            "key,vid_key,video_id,sentence\nret0,msr1,video1,a\nret1,msr1,video1,b\n"),
         "line 3: duplicate video id 'video1'.*one caption per video"),
        (lambda p: (p / "MSRVTT_JSFUSION_test.csv").write_text(
            "key,vid_key,video_id,sentence\nret0,msr1,video1,a\nret0,msr2,video2,b\n"),
         "line 3: duplicate caption key 'ret0'"),
        (lambda p: (p / "MSRVTT_JSFUSION_test.csv").write_text(
            "key,vid_key,video_id,sentence\nret0,msr1,video1,a,extra\n"),
         "line 2: wrong number of fields"),
    ],
)
def test_msrvtt_test_csv_errors(tmp_path, edit, needle):
    write_msrvtt(tmp_path, with_videos=False)
    edit(tmp_path)
    with pytest.raises(DatasetError, match=needle) as info:
        load_dataset("msrvtt", tmp_path, "test")
    assert "MSRVTT_JSFUSION_test.csv" in str(info.value)


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda d: d["sentences"], r"expected an object with 'videos' and 'sentences' \(dict\), "
                                   "found list"),
        (lambda d: {**d, "sentences": {"0": d["sentences"][0]}},
         r"'sentences': expected a list \(list\), found dict"),
        (lambda d: {k: v for k, v in d.items() if k != "sentences"}, "no 'sentences' list"),
        (lambda d: {**d, "sentences": [{"video_id": "video0", "sen_id": 0}]},
         r"sentences\[0\]: no 'caption'"),
        (lambda d: {**d, "sentences": d["sentences"] + [d["sentences"][0]]},
         "duplicate sen_id '0'"),
        (lambda d: {**d, "sentences": d["sentences"][:2]}, "video 'video1' has no sentence"),
    ],
)
def test_msrvtt_data_json_nesting_errors(tmp_path, edit, needle):
    write_msrvtt(tmp_path, with_videos=False)
    _rewrite_json(tmp_path / "MSRVTT_data.json", edit)
    with pytest.raises(DatasetError, match=needle):
        load_dataset("msrvtt", tmp_path, "train")


def test_msvd_errors(tmp_path):
    captions = write_msvd(tmp_path)
    (tmp_path / "val_list.txt").write_text("-7KMZQEsJW4_205_208\nnot_in_pickle\n")
    with pytest.raises(DatasetError, match="line 2: video 'not_in_pickle' has no captions"):
        load_dataset("msvd", tmp_path, "val")
    (tmp_path / "val_list.txt").write_text("-7KMZQEsJW4_205_208\n-7KMZQEsJW4_205_208\n")
    with pytest.raises(DatasetError, match="line 2: duplicate video id"):
        load_dataset("msvd", tmp_path, "val")
    captions["-4wsuPCjDBc_5_15"] = [[]]
    (tmp_path / "raw-captions.pkl").write_bytes(pickle.dumps(captions))
    with pytest.raises(DatasetError, match=r"\['-4wsuPCjDBc_5_15'\]\[0\]: empty caption"):
        load_dataset("msvd", tmp_path, "train")
    (tmp_path / "raw-captions.pkl").write_bytes(pickle.dumps({"x": [[__import__("os").sep]],
                                                              "f": pickle.PickleError}))
    with pytest.raises(DatasetError, match="not a caption pickle.*refusing to load"):
        load_dataset("msvd", tmp_path, "train")


def test_didemo_activitynet_vatex_lsmdc_errors(tmp_path):
    write_didemo(tmp_path / "d")
    _rewrite_json(tmp_path / "d" / "train_data.json", lambda rows: {"rows": rows})
    with pytest.raises(DatasetError, match=r"train_data.json': expected a list of "
                                           r"\{description, times, video\} \(list\), found dict"):
        load_dataset("didemo", tmp_path / "d", "train")
    _rewrite_json(tmp_path / "d" / "train_data.json",
                  lambda d: [{**d["rows"][0], "times": [3, 4]}])
    with pytest.raises(DatasetError, match=r"\[0\] 'times': expected a non-empty list"):
        load_dataset("didemo", tmp_path / "d", "train")

    write_didemo(tmp_path / "d")
    _rewrite_json(tmp_path / "d" / "train_data.json", lambda rows: [rows[0], rows[0]])
    with pytest.raises(DatasetError, match=r"\[1\]: duplicate annotation_id '0'"):
        load_dataset("didemo", tmp_path / "d", "train")

    write_activitynet(tmp_path / "a")
    _rewrite_json(tmp_path / "a" / "val_1.json", lambda d: {
        k: {**v, "timestamps": v["timestamps"][:1]} for k, v in d.items()})
    with pytest.raises(DatasetError, match="3 sentences but 1 timestamps"):
        load_dataset("activitynet", tmp_path / "a", "test")
    write_activitynet(tmp_path / "a")
    _rewrite_json(tmp_path / "a" / "val_ids.json", lambda ids: [*ids, "v_unknown"])
    with pytest.raises(DatasetError, match=r"val_ids.json' \[2\]: video 'v_unknown' not in"):
        load_dataset("activitynet", tmp_path / "a", "test")

    write_vatex(tmp_path / "v")
    _rewrite_json(tmp_path / "v" / "vatex_validation_v1.0.json",
                  lambda rows: [{"videoID": rows[0]["videoID"]}])
    with pytest.raises(DatasetError, match=r"\[0\]: no 'enCap'.*private test"):
        load_dataset("vatex", tmp_path / "v", "val")
    _rewrite_json(tmp_path / "v" / "vatex_validation_v1.0.json",
                  lambda rows: [{"videoID": "a", "enCap": ["x"]}, {"videoID": "a", "enCap": ["y"]}])
    with pytest.raises(DatasetError, match="duplicate videoID 'a'"):
        load_dataset("vatex", tmp_path / "v", "val")

    write_lsmdc(tmp_path / "l")
    (tmp_path / "l" / "LSMDC16_challenge_1000_publictect.csv").write_text(
        "clip_1\t0\t1\tonly four fields\n")
    with pytest.raises(DatasetError, match="line 1: 4 tab-separated fields, expected 6"):
        load_dataset("lsmdc", tmp_path / "l", "test")
