"""Every file that plays indexes: a mixed corpus of real-world quirks through the index step.

Containers that list a frame or two more than decode (an edit list, an AVI with a dropped
frame, B-frames muxed without timestamps, xvid's packed B-frames), animated GIF / APNG, and
the files that must fail, each with its own reason. A second run adds nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from video_fixtures import (
    HAVE_FFMPEG,
    available_encoders,
    make_animation,
    make_avi_with_dropped_frame,
    make_clip,
    make_edit_list_cut,
    make_garbled,
    make_raw_h264_mp4,
    make_still,
    make_truncated,
    make_xvid_avi,
    ramp_source,
)

from crosstvr_core.config import load_config
from crosstvr_core.data.datasets import DatasetError, load_dataset, scan_video_folder
from tasks.index import index_dataset

pytestmark = pytest.mark.skipif(not HAVE_FFMPEG, reason="needs the ffmpeg and ffprobe binaries")

RAMP = ramp_source(size="64x64", rate=25, duration=2, step=4)


def _cfg(home: Path, *extra: str):
    return load_config(None, [f"home={home}", "data.name=quirks", "sampling.num_frames=4",
                              "ray.decode_batch_size=8", "encoder.pretrained=null", *extra])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("quirks")
    v = root / "videos"
    v.mkdir()
    for i in range(4):
        make_clip(v / f"clean{i}.mp4", f"testsrc2=size=64x64:rate=8,hue=h={i * 80}",
                  "-frames:v", "16", "-c:v", "libx264")
    src = make_clip(root / "src.mp4", RAMP, "-c:v", "libx264")
    make_edit_list_cut(src, v / "edit_list.mp4", rate=25)
    make_avi_with_dropped_frame(v / "dropped.avi", RAMP, drop=47)
    make_raw_h264_mp4(v / "raw_bframes.mp4", RAMP)
    for name in ("gif.gif", "apng.apng", "apng_named.png", "webp.webp"):
        make_animation(v / name, RAMP)
    make_still(v / "still_png.mp4", RAMP, "png")
    make_still(v / "still.gif", RAMP)
    faststart = make_clip(root / "fast.mp4", "testsrc=size=96x64:rate=25", "-t", "3",
                          "-movflags", "+faststart")
    make_truncated(faststart, v / "half.mp4")
    make_garbled(make_clip(root / "plain.mp4", "testsrc=size=160x120:rate=25", "-t", "3"),
                 v / "garbled.mp4")
    (v / "notes.mp4").write_text("this is not a video\n" * 50)
    (v / "empty.mp4").touch()
    ok = {f"clean{i}" for i in range(4)} | {"edit_list", "dropped", "raw_bframes", "gif", "apng",
                                            "apng_named"}
    if "libxvid" in available_encoders():
        make_xvid_avi(v / "xvid.avi")
        ok.add("xvid")
    # a video under an extension the index does not take: found, but not indexed
    (v / "mystery.xyz").write_bytes((v / "clean0.mp4").read_bytes())
    # the folder format: `video` is an id, looked up with any extension the index takes
    rows = [{"video": p.stem, "caption": f"clip {p.stem}"} for p in sorted(v.iterdir())]
    captions = root / "captions.jsonl"
    captions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    failed = {"still_png": "still_image", "still": "still_image", "half": "truncated",
              "garbled": "corrupt", "notes": "not_a_video", "empty": "empty",
              "webp": "unsupported_format"}
    return {"root": root, "captions": captions, "ok": ok, "failed": failed}


def test_a_file_under_an_extension_the_index_does_not_take_is_named(corpus: dict) -> None:
    dataset = load_dataset("folder", corpus["root"], annotations=corpus["captions"],
                           videos_dir=corpus["root"] / "videos")
    assert dataset.missing_videos == ["mystery"]
    assert dataset.untaken_files == {"mystery": str(corpus["root"] / "videos" / "mystery.xyz")}
    report = dataset.missing_report()
    assert "1 of them is a file with an extension the index does not take ('mystery.xyz')" in report
    assert "it takes .mp4, .avi," in report and ".gif, .webp, .apng, .png (animated)" in report
    with pytest.raises(DatasetError, match="extension the index does not take"):
        load_dataset("folder", corpus["root"], annotations=corpus["captions"],
                     videos_dir=corpus["root"] / "videos", missing_videos="error")


def test_a_folder_scan_takes_animated_pictures_not_thumbnails(tmp_path: Path) -> None:
    make_animation(tmp_path / "moving.png", RAMP)  # an APNG named .png
    make_still(tmp_path / "thumb.png", RAMP)  # a thumbnail: left alone
    make_animation(tmp_path / "clip.gif", RAMP)
    assert sorted(v.video_id for v in scan_video_folder(tmp_path, "s").videos) == [
        "clip", "moving"]
    empty = tmp_path / "none"
    empty.mkdir()
    (empty / "a.xyz").write_bytes(b"x")
    (empty / "b.xyz").write_bytes(b"x")
    with pytest.raises(DatasetError, match=r"no video files \(the index takes .mp4.*\), found "
                                           r"2 x .xyz"):
        scan_video_folder(empty, "s")


def test_every_file_that_plays_indexes(corpus: dict, tmp_path: Path, ray_local) -> None:
    cfg = _cfg(tmp_path / "home")
    dataset = load_dataset("folder", corpus["root"], annotations=corpus["captions"],
                           videos_dir=corpus["root"] / "videos")
    result = index_dataset(cfg, dataset)
    rows = {r["video_id"]: r for r in result.ref.open().videos.to_arrow().to_pylist()}
    assert {v for v, r in rows.items() if r["status"] == "ok"} == corpus["ok"]
    assert {v: r["error_reason"] for v, r in rows.items() if r["status"] == "failed"} == (
        corpus["failed"])
    assert "this ffmpeg cannot decode" in rows["webp"]["error"]
    warned = {v for v, r in rows.items() if r["decode_warning"]}
    assert warned == {"edit_list", "dropped", "raw_bframes"} | (corpus["ok"] & {"xvid"})
    assert rows["edit_list"]["decode_warning"].startswith("49 of the 50 frames")
    assert all(r["num_frames_sampled"] == 4 for r in rows.values() if r["status"] == "ok")
    assert result.ref.counts["videos_ok"] == len(corpus["ok"])

    # a second run adds nothing: the ok files are skipped, the failed ones fail the same way
    index = result.ref.open(pinned=False)
    tokens_before = index.video_tokens.count_rows()
    again = index_dataset(cfg, dataset).ref
    assert again.counts["videos_ok"] == 0 and again.counts["videos_skip"] == len(corpus["ok"])
    assert again.counts["videos_still_failing"] == len(corpus["failed"])
    after = again.open(pinned=False)
    assert after.video_tokens.count_rows() == tokens_before
    assert {r["video_id"]: (r["status"], r["error_reason"], r["decode_warning"])
            for r in after.videos.to_arrow().to_pylist()} == {
        v: (r["status"], r["error_reason"], r["decode_warning"]) for v, r in rows.items()}


def test_stills_index_when_allowed(corpus: dict, tmp_path: Path, ray_local) -> None:
    root = tmp_path / "stills"
    root.mkdir()
    for name in ("still_png.mp4", "still.gif", "clean0.mp4"):
        (root / name).write_bytes((corpus["root"] / "videos" / name).read_bytes())
    dataset = scan_video_folder(root, "stills")
    refused = index_dataset(_cfg(tmp_path / "a"), dataset).ref.counts
    assert (refused["videos_ok"], refused["videos_failed"]) == (1, 2)
    allowed = index_dataset(_cfg(tmp_path / "b", "index.allow_stills=true"), dataset).ref
    assert allowed.counts["videos_ok"] == 3
    masks = {r["video_id"]: r["num_frames_sampled"]
             for r in allowed.open().videos.to_arrow().to_pylist()}
    assert masks == {"still_png": 1, "still": 1, "clean0": 4}
