"""The Ray Data index step on real generated mp4s, real Ray, real Lance tables."""

import json
import shutil

import pytest

from crosstvr_core import synthetic
from crosstvr_core.config import load_config
from crosstvr_core.datasets import load_folder_dataset
from tasks.index import run_index


class _Ref:
    """Stands in for tasks.prepare_dataset.DatasetRef: loads the folder dataset."""

    def __init__(self, root, name="idx"):
        self.root, self.name = root, name

    def load(self):
        return load_folder_dataset(self.root, "captions.jsonl", self.name)


@pytest.fixture()
def corpus(tmp_path):
    specs = synthetic.make_benchmark_specs(num_train_videos=4, num_test_groups=1, seed=0)
    for spec in specs:
        synthetic.render_video(spec, tmp_path, frame_size=64, num_frames=8, fps=8)
    rows = synthetic.caption_rows(specs, captions_per_train_video=2, seed=0)
    (tmp_path / "videos" / "bad.mp4").write_text("this is not a video")
    rows.append({"video": "videos/bad.mp4", "caption": "a broken file", "split": "test",
                 "group": "", "variant": ""})
    synthetic.write_captions_file(rows, tmp_path / "captions.jsonl")
    return tmp_path


def _cfg(home):
    return load_config(None, [f"home={home}", "data.name=idx", "sampling.num_frames=4",
                              "ray.decode_batch_size=4"])


def test_index_then_reindex_is_an_upsert(corpus, tmp_path_factory, ray_local):
    cfg = _cfg(tmp_path_factory.mktemp("home"))
    ref = run_index(cfg, _Ref(corpus))
    assert ref.counts["videos_ok"] == 8 and ref.counts["videos_failed"] == 1
    assert ref.counts["captions_encoded"] == 4 * 2 + 4 + 1
    index = ref.open()
    videos = index.videos.to_arrow().to_pylist()
    bad = next(v for v in videos if v["video_id"] == "videos/bad")
    assert bad["status"] == "failed" and "bad.mp4" in bad["error"]
    assert index.video_tokens.count_rows() == 8  # no half row for the failed file
    bank = index.load_token_bank("test")
    assert bank.num_videos == 4 and bank.video_patches.shape[1:] == (4, 16, 128)
    assert bank.frame_mask.all()

    # unchanged corpus: nothing decoded or encoded again; the failed file is retried
    again = run_index(cfg, _Ref(corpus))
    assert again.counts["videos_skip"] == 8 and again.counts["videos_failed"] == 1
    assert again.counts["captions_encoded"] == 0 and again.counts["captions_unchanged"] == 13

    # one video changed, one removed: replaced and deleted, no duplicates
    first, second = sorted(p for p in (corpus / "videos" / "train").glob("*.mp4"))[:2]
    shutil.copy(second, first)
    rows = [json.loads(line) for line in (corpus / "captions.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["video"] != "videos/bad.mp4"]
    synthetic.write_captions_file(rows, corpus / "captions.jsonl")
    third = run_index(cfg, _Ref(corpus))
    assert third.counts["videos_ok"] == 1 and third.counts["videos_skip"] == 7
    assert third.counts["videos_removed"] == 1
    index = third.open()
    assert index.captions.count_rows() == 12  # the removed video's caption went with it
    ids = index.videos.to_arrow().column("video_id").to_pylist()
    assert len(ids) == len(set(ids)) == 8
    assert index.video_tokens.count_rows() == 8
