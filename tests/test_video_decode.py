"""video_decode: uniform sampling, square crops, padding of short clips, and loud failures.

Every clip is generated here with the ffmpeg CLI (lavfi sources), so nothing binary is committed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from crosstvr_core.video_decode import (
    VideoDecodeError,
    VideoProbe,
    decode_uniform_frames,
    file_content_hash,
    probe_video,
    uniform_frame_indices,
)

pytestmark = pytest.mark.skipif(
    shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None,
    reason="needs the ffmpeg and ffprobe binaries",
)

RAMP = "color=c=black:s=64x48:r=10:d=2,geq=lum='16+N*10':cb=128:cr=128"  # brightness rises
# 128x64: green | red | blue | green; a centre crop keeps only red (left) and blue (right).
SPLIT = (
    "nullsrc=s=128x64:r=10:d=1,format=gbrp,"
    "geq=r='255*between(X,16,63)':g='255*(lt(X,16)+gte(X,112))':b='255*between(X,64,111)'"
)


def ffmpeg_cli(*args: str) -> bytes:
    """Run the ffmpeg CLI quietly; its stdout."""
    cmd = ["ffmpeg", "-v", "error", "-nostdin", "-y", *args]
    return subprocess.run(cmd, check=True, capture_output=True).stdout


def make_clip(path: Path, source: str, *args: str, pix_fmt: str | None = "yuv420p") -> Path:
    """Render a lavfi source to `path` (pix_fmt None: no video, e.g. an audio source)."""
    fmt = ("-pix_fmt", pix_fmt) if pix_fmt else ()
    ffmpeg_cli("-f", "lavfi", "-i", source, *args, *fmt, str(path))
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("clips")
    testsrc = "testsrc=size=160x120:rate=25"
    out = {
        "testsrc": make_clip(d / "testsrc.mp4", "testsrc=size=96x64:rate=10", "-t", "2"),
        "ramp": make_clip(d / "ramp.mp4", RAMP),
        "ramp_mkv": make_clip(d / "ramp.mkv", RAMP, "-c:v", "libx264"),
        "split": make_clip(d / "split.mp4", SPLIT),
        "short": make_clip(d / "short.mp4", RAMP, "-frames:v", "3"),
        "plain": make_clip(d / "plain.mp4", testsrc, "-t", "3"),
        "faststart": make_clip(d / "faststart.mp4", testsrc, "-t", "3", "-movflags", "+faststart"),
        "long": make_clip(d / "long.mp4", testsrc, "-t", "6", "-g", "50"),
    }
    # A stream-copied cut: an edit list hides the pre-roll, so nb_frames overstates the frames.
    out["cut"] = d / "cut.mp4"
    ffmpeg_cli("-ss", "1.3", "-i", str(out["long"]), "-t", "2", "-c", "copy", str(out["cut"]))
    out["rotated"] = d / "rotated.mp4"
    rotate = ("-c", "copy", "-metadata:s:v:0", "rotate=90")
    ffmpeg_cli("-i", str(out["testsrc"]), *rotate, str(out["rotated"]))
    return out


def frame_means(frames: np.ndarray) -> np.ndarray:
    return frames.reshape(len(frames), -1).mean(axis=1)


# --- sampling ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("available", "wanted", "expected"),
    [
        (20, 8, [0, 3, 5, 8, 11, 14, 16, 19]),
        (8, 8, list(range(8))),
        (100, 2, [0, 99]),
        (3, 8, [0, 1, 2]),  # fewer than wanted: the available ones, the caller pads
        (10, 1, [0]),
        (1, 1, [0]),
        (0, 4, []),
    ],
)
def test_uniform_frame_indices(available: int, wanted: int, expected: list[int]) -> None:
    assert uniform_frame_indices(available, wanted) == expected


def test_uniform_frame_indices_are_sorted_distinct_and_in_range() -> None:
    for available in (9, 17, 75, 1001):
        for wanted in (1, 2, 7, 8, 9, 16):
            idx = uniform_frame_indices(available, wanted)
            assert len(idx) == min(available, wanted)
            assert idx == sorted(set(idx))
            assert idx[0] == 0 and idx[-1] <= available - 1


def test_uniform_frame_indices_rejects_bad_counts() -> None:
    with pytest.raises(ValueError):
        uniform_frame_indices(10, 0)
    with pytest.raises(ValueError):
        uniform_frame_indices(-1, 4)


# --- probing and decoding ------------------------------------------------------------------


def test_probe_of_a_generated_clip(clips: dict[str, Path]) -> None:
    probe = probe_video(clips["testsrc"])
    assert isinstance(probe, VideoProbe)
    assert (probe.width, probe.height, probe.num_frames) == (96, 64, 20)
    assert probe.num_frames_exact and probe.codec == "h264" and probe.rotation == 0
    assert probe.fps == pytest.approx(10.0) and probe.duration == pytest.approx(2.0)
    assert probe.size_bytes == clips["testsrc"].stat().st_size
    assert probe.path == str(clips["testsrc"])


def test_decode_shape_dtype_mask(clips: dict[str, Path]) -> None:
    frames, mask, probe = decode_uniform_frames(clips["testsrc"], 8, 32)
    assert frames.shape == (8, 32, 32, 3) and frames.dtype == np.uint8
    assert frames.flags["C_CONTIGUOUS"]
    assert mask.dtype == np.bool_ and mask.all()
    assert probe.num_frames == 20
    # The passed-in probe is used as is (no second ffprobe needed).
    again, _, same = decode_uniform_frames(clips["testsrc"], 8, 32, probe=probe)
    assert same is probe and np.array_equal(again, frames)


def test_frames_come_back_in_temporal_order(clips: dict[str, Path]) -> None:
    frames, mask, _ = decode_uniform_frames(clips["ramp"], 8, 32)
    means = frame_means(frames)
    assert mask.all()
    assert np.all(np.diff(means) > 4), means  # 10 levels per source frame, >= 2 frames apart
    # Frame 0 (black) and frame 19 (brightest) are both sampled.
    assert means[0] < 25 and means[-1] > 130


def test_estimated_frame_count_mkv(clips: dict[str, Path]) -> None:
    frames, mask, probe = decode_uniform_frames(clips["ramp_mkv"], 8, 32)
    assert not probe.num_frames_exact and probe.num_frames == 20
    assert mask.all() and np.all(np.diff(frame_means(frames)) > 4)


def test_non_square_input_is_centre_cropped(clips: dict[str, Path]) -> None:
    frames, _, probe = decode_uniform_frames(clips["split"], 4, 32)
    assert (probe.width, probe.height) == (128, 64)
    assert frames.shape == (4, 32, 32, 3)
    rgb = frames.astype(int)
    left, right = rgb[:, :, :12], rgb[:, :, 20:]
    assert (left[..., 0] > 200).all() and (left[..., 1:] < 60).all()  # red survives
    assert (right[..., 2] > 200).all() and (right[..., :2] < 60).all()  # blue survives
    assert (rgb[..., 1] < 100).all()  # the green borders were cropped away


def test_portrait_input_is_centre_cropped(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "portrait.mp4", "testsrc=size=48x96:rate=10", "-t", "1")
    frames, mask, probe = decode_uniform_frames(clip, 4, 24)
    assert (probe.width, probe.height) == (48, 96)
    assert frames.shape == (4, 24, 24, 3) and mask.all()


def test_rotated_stream_matches_ffmpeg_autorotate(clips: dict[str, Path]) -> None:
    probe = probe_video(clips["rotated"])
    assert probe.rotation in (90, 270)
    assert (probe.width, probe.height) == (64, 96)  # as displayed
    # size 64 = the displayed short side, so no resampling: must equal ffmpeg's own autorotate.
    frames, _, _ = decode_uniform_frames(clips["rotated"], 8, 64)
    select = "+".join(f"eq(n\\,{i})" for i in uniform_frame_indices(probe.num_frames, 8))
    raw = ("-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:")
    ref = ffmpeg_cli("-i", str(clips["rotated"]), "-vf", f"select={select},crop=64:64", *raw)
    assert np.array_equal(np.frombuffer(ref, np.uint8).reshape(8, 64, 64, 3), frames)


def test_short_clip_is_padded_with_repeats(clips: dict[str, Path]) -> None:
    frames, mask, probe = decode_uniform_frames(clips["short"], 8, 32)
    assert probe.num_frames == 3
    assert frames.shape == (8, 32, 32, 3)
    assert mask.sum() == 3 and mask[0]
    means = frame_means(frames)
    real = means[mask]
    assert np.all(np.diff(real) > 4)  # the 3 real frames, in order
    for k in np.flatnonzero(~mask):  # each padded slot repeats its predecessor
        assert np.array_equal(frames[k], frames[k - 1])
    assert np.all(np.diff(means) >= 0)  # still temporally ordered


def test_edit_list_cut_is_not_mistaken_for_truncation(clips: dict[str, Path]) -> None:
    probe = probe_video(clips["cut"])
    assert not probe.num_frames_exact  # nb_frames (with the hidden pre-roll) is not trusted
    frames, mask, _ = decode_uniform_frames(clips["cut"], 8, 32, probe=probe)
    assert frames.shape == (8, 32, 32, 3) and mask.all()


def test_overestimated_frame_count_is_resampled(clips: dict[str, Path]) -> None:
    true = probe_video(clips["ramp"])
    guess = dataclasses.replace(true, num_frames=2 * true.num_frames, num_frames_exact=False)
    frames, mask, _ = decode_uniform_frames(clips["ramp"], 8, 32, probe=guess)
    assert mask.all() and np.all(np.diff(frame_means(frames)) > 4)
    # One frame too many (the common rounding miss): the missing last slot is padded.
    plus_one = dataclasses.replace(guess, num_frames=true.num_frames + 1)
    frames, mask, _ = decode_uniform_frames(clips["ramp"], 8, 32, probe=plus_one)
    assert mask.sum() == 7 and np.all(np.diff(frame_means(frames)) >= 0)
    # A short clip whose count is overestimated: the frames that came back are all there is.
    short = probe_video(clips["short"])
    short_guess = dataclasses.replace(short, num_frames=5, num_frames_exact=False)
    frames, mask, _ = decode_uniform_frames(clips["short"], 8, 32, probe=short_guess)
    assert mask.sum() == 3 and np.all(np.diff(frame_means(frames)[mask]) > 4)
    # The same shortfall on a trusted count is corruption.
    trusted = dataclasses.replace(guess, num_frames_exact=True)
    with pytest.raises(VideoDecodeError, match=r"truncated or corrupt: got \d+ of 8 frames"):
        decode_uniform_frames(clips["ramp"], 8, 32, probe=trusted)


def test_decode_rejects_bad_arguments(clips: dict[str, Path]) -> None:
    with pytest.raises(ValueError):
        decode_uniform_frames(clips["testsrc"], 0, 32)
    with pytest.raises(ValueError):
        decode_uniform_frames(clips["testsrc"], 8, 0)


# --- failures ------------------------------------------------------------------------------


def assert_fails(path: Path, problem: str, **kwargs: object) -> str:
    with pytest.raises(VideoDecodeError) as info:
        decode_uniform_frames(path, 8, 32, **kwargs)
    message = str(info.value)
    assert str(path) in message and problem in message, message
    return message


def test_missing_path(tmp_path: Path) -> None:
    assert_fails(tmp_path / "nope.mp4", "does not exist")


def test_directory(tmp_path: Path) -> None:
    (tmp_path / "dir.mp4").mkdir()
    assert_fails(tmp_path / "dir.mp4", "is a directory")


def test_zero_byte_file(tmp_path: Path) -> None:
    (tmp_path / "empty.mp4").touch()
    assert_fails(tmp_path / "empty.mp4", "empty (0 bytes)")


def test_text_file_named_mp4(tmp_path: Path) -> None:
    (tmp_path / "notes.mp4").write_text("this is not a video\n" * 50)
    assert_fails(tmp_path / "notes.mp4", "not a readable media file")


@pytest.mark.parametrize("args", [["-c:a", "aac"], ["-c:a", "aac", "-f", "ipod"]])
def test_audio_only(tmp_path: Path, args: list[str]) -> None:
    # An .mp4 holding only audio, and an .m4a (ipod muxer) renamed to .mp4.
    clip = make_clip(tmp_path / "sound.mp4", "sine=d=1", *args, pix_fmt=None)
    assert_fails(clip, "no video stream (audio only)")


def test_absurd_dimensions(tmp_path: Path) -> None:
    clip = tmp_path / "thin.y4m"  # a 1-pixel-wide raw video
    clip.write_bytes(b"YUV4MPEG2 W1 H16 F10:1 Ip A1:1 Cmono\n" + (b"FRAME\n" + bytes(16)) * 3)
    assert_fails(clip, "absurd frame dimensions 1x16")


def truncated(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def test_truncated_plain_mp4(clips: dict[str, Path], tmp_path: Path) -> None:
    # moov atom at the end: the cut file has no index at all.
    clip = truncated(clips["plain"], tmp_path / "half_plain.mp4")
    assert_fails(clip, "not a readable media file")


def test_truncated_faststart_mp4(clips: dict[str, Path], tmp_path: Path) -> None:
    # moov first: probes fine, plain ffmpeg exits 0 with a fraction of the frames.
    clip = truncated(clips["faststart"], tmp_path / "half_fast.mp4")
    assert probe_video(clip).num_frames_exact
    assert_fails(clip, "ffmpeg failed (exit")  # -xerror
    assert_fails(clip, "truncated or corrupt: got", strict=False)  # frame count check


@pytest.mark.parametrize("name", ["plain", "faststart"])
def test_garbled_bytes(clips: dict[str, Path], tmp_path: Path, name: str) -> None:
    data = bytearray(clips[name].read_bytes())
    middle = len(data) // 2
    rng = random.Random(0)
    data[middle : middle + 2000] = bytes(rng.getrandbits(8) for _ in range(2000))
    clip = tmp_path / f"garbled_{name}.mp4"
    clip.write_bytes(bytes(data))
    message = assert_fails(clip, "ffmpeg failed (exit")
    assert "corrupt" in message


def test_unreadable_file(clips: dict[str, Path], tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root can read a chmod 000 file")
    clip = tmp_path / "locked.mp4"
    clip.write_bytes(clips["testsrc"].read_bytes())
    clip.chmod(0)
    try:
        assert_fails(clip, "permission denied")
    finally:
        clip.chmod(0o644)


# --- hashing and timing --------------------------------------------------------------------


def test_file_content_hash(clips: dict[str, Path]) -> None:
    path = clips["plain"]
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert file_content_hash(path) == expected
    assert file_content_hash(str(path), chunk_bytes=1000) == expected


def test_file_content_hash_missing(tmp_path: Path) -> None:
    with pytest.raises(VideoDecodeError, match="nope.mp4"):
        file_content_hash(tmp_path / "nope.mp4")


def test_decode_timing_10s_320x240(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "ten.mp4", "testsrc=size=320x240:rate=25", "-t", "10")
    probe = probe_video(clip)
    timings = {}
    for label, threads in (("default threads", None), ("threads=1", 1)):
        start = time.perf_counter()
        frames, mask, _ = decode_uniform_frames(clip, 8, 224, probe=probe, threads=threads)
        timings[label] = time.perf_counter() - start
        assert frames.shape == (8, 224, 224, 3) and mask.all()
    start = time.perf_counter()
    probe_video(clip)
    timings["probe"] = time.perf_counter() - start
    print(
        f"\n10 s 320x240 clip ({probe.num_frames} frames), 8 frames at 224: "
        + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in timings.items())
    )
