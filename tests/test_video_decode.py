"""video_decode: uniform sampling, square crops, padding of short clips, and loud failures.

Every clip is generated here with the ffmpeg CLI (lavfi sources), so nothing binary is committed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
from video_fixtures import (
    CODEC_MATRIX,
    HAVE_FFMPEG,
    available_encoders,
    ffmpeg_cli,
    make_animation,
    make_avi_with_dropped_frame,
    make_clip,
    make_edit_list_cut,
    make_garbled,
    make_matrix_clip,
    make_raw_h264_mp4,
    make_rotated_clip,
    make_still,
    make_truncated,
    make_vfr_clip,
    make_xvid_avi,
    make_y4m,
    ramp_frame_numbers,
    ramp_source,
)

from crosstvr_core.data.video_decode import (
    FAILURE_REASONS,
    DecodedVideo,
    VideoDecodeError,
    VideoProbe,
    decode_frames,
    decode_segment_frames,
    decode_uniform_frames,
    decode_video,
    decode_videos,
    file_content_hash,
    minimum_decoded_frames,
    probe_video,
    segment_frame_indices,
    uniform_frame_indices,
)

pytestmark = pytest.mark.skipif(not HAVE_FFMPEG, reason="needs the ffmpeg and ffprobe binaries")

RAMP = ramp_source()  # 64x48, 10 fps, 2 s: frame n has luma 16 + 10 n
# 128x64: green | red | blue | green; a centre crop keeps only red (left) and blue (right).
SPLIT = (
    "nullsrc=s=128x64:r=10:d=1,format=gbrp,"
    "geq=r='255*between(X,16,63)':g='255*(lt(X,16)+gte(X,112))':b='255*between(X,64,111)'"
)


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
        "single": make_clip(d / "single.mp4", RAMP, "-frames:v", "1"),
        "plain": make_clip(d / "plain.mp4", testsrc, "-t", "3"),
        "faststart": make_clip(d / "faststart.mp4", testsrc, "-t", "3", "-movflags", "+faststart"),
        "long": make_clip(d / "long.mp4", testsrc, "-t", "6", "-g", "50"),
    }
    # A stream-copied cut: an edit list hides the pre-roll, so nb_frames overstates the frames.
    out["cut"] = d / "cut.mp4"
    ffmpeg_cli("-ss", "1.3", "-i", str(out["long"]), "-t", "2", "-c", "copy", str(out["cut"]))
    out["rotated"] = make_rotated_clip(out["testsrc"], d / "rotated.mp4", 90)
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
    decoded = decode_video(clips["ramp"], 8, 32, probe=guess)
    assert decoded.decoded_frames == 20 and decoded.mask.all()
    assert ramp_frame_numbers(decoded.frames).tolist() == uniform_frame_indices(20, 8)
    assert "20 frames decode, about 40 were estimated" in decoded.warning
    # One frame too many (the common rounding miss): sampled from the 20 in the same pass.
    plus_one = dataclasses.replace(guess, num_frames=true.num_frames + 1)
    decoded = decode_video(clips["ramp"], 8, 32, probe=plus_one)
    assert decoded.mask.all() and decoded.warning == ""  # an estimate 1 off is no news
    assert ramp_frame_numbers(decoded.frames).tolist() == uniform_frame_indices(20, 8)
    # A short clip whose count is overestimated: the frames that came back are all there is.
    short = probe_video(clips["short"])
    short_guess = dataclasses.replace(short, num_frames=5, num_frames_exact=False)
    frames, mask, _ = decode_uniform_frames(clips["short"], 8, 32, probe=short_guess)
    assert mask.sum() == 3 and np.all(np.diff(frame_means(frames)[mask]) > 4)
    # The same shortfall on a trusted count is a truncated file: found from the packets the
    # demuxer read, or, when they were not counted, from the frames that decode.
    trusted = dataclasses.replace(guess, num_frames_exact=True, container_frames=40)
    with pytest.raises(VideoDecodeError, match=r"indexes 40 frames but only 20 are in the file"):
        decode_uniform_frames(clips["ramp"], 8, 32, probe=trusted)
    uncounted = dataclasses.replace(trusted, num_packets=0)
    with pytest.raises(VideoDecodeError, match=r"truncated: 20 of the 40 frames the container"):
        decode_uniform_frames(clips["ramp"], 8, 32, probe=uncounted)


def test_decode_rejects_bad_arguments(clips: dict[str, Path]) -> None:
    with pytest.raises(ValueError):
        decode_uniform_frames(clips["testsrc"], 0, 32)
    with pytest.raises(ValueError):
        decode_uniform_frames(clips["testsrc"], 8, 0)


# --- segment sampling ------------------------------------------------------------------------


def test_segment_indices_fall_in_their_segments() -> None:
    for available in (9, 20, 75, 1001):
        for wanted in (1, 3, 8, 9):
            if available < wanted:
                continue
            idx = segment_frame_indices(available, wanted, seed=available * 31 + wanted)
            assert len(idx) == wanted and idx == sorted(set(idx))
            for k, index in enumerate(idx):
                assert k * available // wanted <= index < (k + 1) * available // wanted


def test_segment_indices_are_seeded() -> None:
    a = segment_frame_indices(1000, 12, seed=7)
    assert a == segment_frame_indices(1000, 12, seed=7)
    others = {tuple(segment_frame_indices(1000, 12, seed=s)) for s in range(8)}
    assert len(others) == 8  # 83 choices per segment: distinct seeds give distinct samples
    gen = np.random.default_rng(3)  # a Generator is advanced: consecutive epochs differ
    assert segment_frame_indices(1000, 12, gen) != segment_frame_indices(1000, 12, gen)
    assert segment_frame_indices(5, 8, seed=0) == [0, 1, 2, 3, 4]  # short: all, caller pads
    with pytest.raises(ValueError):
        segment_frame_indices(10, 0, seed=0)


def test_segment_decode_returns_the_sampled_frames(clips: dict[str, Path]) -> None:
    for seed in (0, 1, 2):
        frames, mask, probe = decode_segment_frames(clips["ramp"], 8, 32, seed)
        assert frames.shape == (8, 32, 32, 3) and mask.all()
        expected = segment_frame_indices(probe.num_frames, 8, seed)
        assert ramp_frame_numbers(frames).tolist() == expected
    again, _, _ = decode_segment_frames(clips["ramp"], 8, 32, 2, probe=probe)
    assert np.array_equal(again, frames)
    uniform, _, _ = decode_frames(clips["ramp"], 8, 32, probe, sampling="uniform")
    assert ramp_frame_numbers(uniform).tolist() == uniform_frame_indices(20, 8)
    with pytest.raises(ValueError, match="sampling"):
        decode_frames(clips["ramp"], 8, 32, probe, sampling="random")  # type: ignore[arg-type]


def test_segment_decode_of_a_short_clip_pads_like_uniform(clips: dict[str, Path]) -> None:
    frames, mask, _ = decode_segment_frames(clips["short"], 8, 32, seed=5)
    assert mask.sum() == 3 and ramp_frame_numbers(frames[mask]).tolist() == [0, 1, 2]


def test_segment_decode_with_an_overestimated_count(clips: dict[str, Path]) -> None:
    true = probe_video(clips["ramp"])
    guess = dataclasses.replace(true, num_frames=3 * true.num_frames, num_frames_exact=False)
    frames, mask, _ = decode_segment_frames(clips["ramp"], 8, 32, 0, probe=guess)
    numbers = ramp_frame_numbers(frames)
    assert mask.all() and np.all(np.diff(numbers) > 0) and numbers[-1] < 20


# --- containers, codecs and odd inputs ---------------------------------------------------------


@pytest.fixture(scope="module")
def encoders() -> set[str]:
    return available_encoders()


@pytest.mark.parametrize("name", sorted(CODEC_MATRIX))
def test_codec_matrix(tmp_path: Path, encoders: set[str], name: str) -> None:
    suffix, args, codec, _ = CODEC_MATRIX[name]
    encoder = args[args.index("-c:v") + 1]
    if encoder not in encoders:
        pytest.skip(f"this ffmpeg has no {encoder} encoder")
    clip = make_matrix_clip(tmp_path, name, ramp_source(rate=25, duration=1, step=8))
    probe = probe_video(clip)
    assert probe.codec == codec and (probe.width, probe.height) == (64, 48)
    assert probe.num_frames == 25, probe  # container count, or packets where there is none
    assert probe.fps == pytest.approx(25, rel=0.01) and not probe.damage
    frames, mask, _ = decode_uniform_frames(clip, 8, 32, probe=probe)
    assert frames.shape == (8, 32, 32, 3) and mask.all()
    numbers = ramp_frame_numbers(frames, step=8)
    assert np.abs(numbers - uniform_frame_indices(25, 8)).max() <= 1, numbers
    seg, seg_mask, _ = decode_segment_frames(clip, 8, 32, 4, probe=probe)
    assert seg_mask.all()
    assert np.abs(ramp_frame_numbers(seg, 8) - segment_frame_indices(25, 8, 4)).max() <= 1


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_variable_frame_rate(tmp_path: Path, suffix: str) -> None:
    clip = make_vfr_clip(tmp_path / f"vfr{suffix}")  # frames 0..19 then every 4th: 40 frames
    probe = probe_video(clip)
    assert probe.num_frames == 40
    frames, mask, _ = decode_uniform_frames(clip, 8, 32, probe=probe)
    assert mask.all()
    # Frame numbers in display order, whatever the timestamps: source frames 0..19, 20, 24, ...
    source = [*range(20), *range(20, 100, 4)]
    expected = [source[i] for i in uniform_frame_indices(40, 8)]
    assert np.abs(ramp_frame_numbers(frames, step=2) - expected).max() <= 1


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_rotated_stream_matches_ffmpeg_autorotate(
    clips: dict[str, Path], tmp_path: Path, degrees: int
) -> None:
    clip = make_rotated_clip(clips["testsrc"], tmp_path / f"rot{degrees}.mp4", degrees)
    probe = probe_video(clip)
    assert probe.rotation in ((90, 270) if degrees != 180 else (180,))
    shape = (64, 96) if degrees != 180 else (96, 64)
    assert (probe.width, probe.height) == shape  # as displayed
    # size 64 = the displayed short side, so no resampling: must equal ffmpeg's own autorotate.
    frames, _, _ = decode_uniform_frames(clip, 8, 64)
    select = "+".join(f"eq(n\\,{i})" for i in uniform_frame_indices(probe.num_frames, 8))
    raw = ("-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:")
    ref = ffmpeg_cli("-i", str(clip), "-vf", f"select={select},crop=64:64", *raw)
    assert np.array_equal(np.frombuffer(ref, np.uint8).reshape(8, 64, 64, 3), frames)


@pytest.mark.parametrize("size", [32, 55, 80])
def test_odd_frame_size(tmp_path: Path, size: int) -> None:
    clip = make_clip(tmp_path / "odd.mp4", "testsrc=size=97x55:rate=10", "-t", "1",
                     "-c:v", "libx264", pix_fmt="yuv444p")
    frames, mask, probe = decode_uniform_frames(clip, 4, size)
    assert (probe.width, probe.height) == (97, 55)
    assert frames.shape == (4, size, size, 3) and mask.all()
    assert frames.std() > 10  # real picture content, not a blank crop


def test_single_frame_clip(clips: dict[str, Path]) -> None:
    frames, mask, probe = decode_uniform_frames(clips["single"], 8, 32)
    assert probe.num_frames == 1 and mask.tolist() == [True] + [False] * 7
    assert all(np.array_equal(frame, frames[0]) for frame in frames)


@pytest.mark.parametrize("sampling", ["uniform", "segment"])
def test_long_clip_seeks_to_the_same_frames(tmp_path: Path, sampling: str) -> None:
    # 8 s at 25 fps (200 frames), a keyframe every 25: forced into the seeking path with a low
    # threshold, it must return exactly the frames of the single pass.
    clip = make_clip(tmp_path / "long.mp4", "testsrc=size=96x64:rate=25", "-t", "8", "-g", "25")
    probe = probe_video(clip)
    kwargs = {"sampling": sampling, "seed": 3}
    single, _, _ = decode_frames(clip, 8, 48, probe, seek_frames_per_sample=None, **kwargs)
    seeking, mask, _ = decode_frames(clip, 8, 48, probe, seek_frames_per_sample=10, **kwargs)
    assert mask.all() and np.array_equal(single, seeking)


def test_long_clip_seeking_falls_back_when_the_count_is_too_high(clips: dict[str, Path]) -> None:
    true = probe_video(clips["ramp"])
    guess = dataclasses.replace(true, num_frames=4 * true.num_frames, num_frames_exact=False)
    frames, mask, _ = decode_frames(clips["ramp"], 8, 32, guess, seek_frames_per_sample=2)
    numbers = ramp_frame_numbers(frames)
    assert mask.all() and np.all(np.diff(numbers) > 0) and numbers[-1] < 20


# --- the container's frame count is a hint ---------------------------------------------------

RAMP25 = ramp_source(rate=25, duration=2, step=4)  # 50 frames: frame n has luma 16 + 4 n


@pytest.fixture(scope="module")
def quirks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Playable files whose container lists more frames than decode."""
    d = tmp_path_factory.mktemp("quirks")
    src = make_clip(d / "src.mp4", RAMP25, "-c:v", "libx264")
    return {
        "src": src,
        "edit_list": make_edit_list_cut(src, d / "edit_list.mp4", rate=25),  # 50 listed, 49
        "dropped_avi": make_avi_with_dropped_frame(d / "dropped.avi", RAMP25, drop=47),
        "raw_h264": make_raw_h264_mp4(d / "raw.mp4", RAMP25),  # 50 stored, 48 decode
    }


def test_minimum_decoded_frames() -> None:
    assert [minimum_decoded_frames(n, 0.9) for n in (1, 2, 5, 10, 16, 50, 250)] == [
        1, 1, 4, 9, 14, 45, 225]
    assert minimum_decoded_frames(50, 1.0) == 50
    with pytest.raises(ValueError, match="min_decoded_fraction"):
        decode_video(Path("x.mp4"), 8, 32, min_decoded_fraction=0)


def test_edit_list_hiding_a_frame_samples_what_decodes(quirks: dict[str, Path]) -> None:
    """The container lists 50 frames (its duration agrees within a frame), 49 decode: sampled
    from those 49 in one pass, with a warning; the old code failed it as truncated."""
    probe = probe_video(quirks["edit_list"])
    assert probe.num_frames == probe.container_frames == 50 and probe.num_frames_exact
    decoded = decode_video(quirks["edit_list"], 8, 32, probe=probe)
    assert decoded.decoded_frames == 49 and decoded.mask.all()
    assert decoded.warning == "49 of the 50 frames the container lists decode; sampled from those 49"
    # the edit list hides source frame 0: decoded frame k is source frame k + 1
    assert ramp_frame_numbers(decoded.frames, 4).tolist() == [
        1 + i for i in uniform_frame_indices(49, 8)]
    segment = decode_video(quirks["edit_list"], 8, 32, probe=probe, sampling="segment", seed=6)
    assert ramp_frame_numbers(segment.frames, 4).tolist() == [
        1 + i for i in segment_frame_indices(49, 8, 6)]
    # the same file, strictly: every listed frame must decode
    with pytest.raises(VideoDecodeError, match="49 of the 50 frames") as info:
        decode_video(quirks["edit_list"], 8, 32, probe=probe, min_decoded_fraction=1.0)
    assert info.value.reason == "truncated"


def test_avi_with_a_dropped_frame(quirks: dict[str, Path]) -> None:
    decoded = decode_video(quirks["dropped_avi"], 8, 32)
    assert decoded.probe.num_frames == 50 and decoded.decoded_frames == 49
    assert decoded.mask.all() and "49 of the 50 frames" in decoded.warning
    source = [n for n in range(50) if n != 47]  # the dropped frame is an empty chunk
    assert ramp_frame_numbers(decoded.frames, 4).tolist() == [
        source[i] for i in uniform_frame_indices(49, 8)]


def test_b_frames_without_timestamps(quirks: dict[str, Path]) -> None:
    """A raw H.264 stream muxed to mp4: 50 packets stored, 48 frames decode (the duration
    says 48, so the stored count is not trusted, but it is reported)."""
    decoded = decode_video(quirks["raw_h264"], 8, 32)
    assert decoded.probe.container_frames == 50 and decoded.decoded_frames == 48
    assert decoded.mask.all() and "the container stores 50" in decoded.warning


def test_xvid_packed_b_frames(tmp_path: Path, encoders: set[str]) -> None:
    if "libxvid" not in encoders:
        pytest.skip("this ffmpeg has no libxvid encoder")
    decoded = decode_video(make_xvid_avi(tmp_path / "xvid.avi"), 8, 32)
    assert decoded.probe.num_frames == 209 and decoded.decoded_frames == 208
    assert decoded.mask.all() and "208 of the 209" in decoded.warning


def test_a_larger_shortfall_within_the_tolerance(clips: dict[str, Path]) -> None:
    """A trusted count 4 above the 20 frames: the pass counts 20, within the tolerance asked
    for, and the sample is drawn from those 20 (a second pass)."""
    true = probe_video(clips["ramp"])
    over = dataclasses.replace(true, num_frames=24, container_frames=0, num_packets=0)
    decoded = decode_video(clips["ramp"], 8, 32, probe=over, min_decoded_fraction=0.8)
    assert decoded.decoded_frames == 20 and "20 of the 24" in decoded.warning
    assert ramp_frame_numbers(decoded.frames).tolist() == uniform_frame_indices(20, 8)
    with pytest.raises(VideoDecodeError, match="truncated: 20 of the 24 frames"):
        decode_video(clips["ramp"], 8, 32, probe=over)  # 0.9 x 24 = 21.6: too few


def test_a_seeded_generator_advances_as_one_draw(quirks: dict[str, Path]) -> None:
    rng, reference = np.random.default_rng(4), np.random.default_rng(4)
    first = decode_video(quirks["edit_list"], 8, 32, sampling="segment", seed=rng)
    assert ramp_frame_numbers(first.frames, 4).tolist() == [
        1 + i for i in segment_frame_indices(49, 8, reference)]
    assert rng.integers(1 << 30) == reference.integers(1 << 30)


def test_long_clip_with_an_overstated_count_seeks_then_counts(tmp_path: Path) -> None:
    """The seeking path on a clip whose last listed frame does not decode: it falls back to
    the single pass, which samples the frames that decode, as without seeking."""
    src = make_clip(tmp_path / "long.mp4", RAMP25, "-c:v", "libx264", "-g", "10")
    clip = make_edit_list_cut(src, tmp_path / "cut.mp4", rate=25)
    single = decode_video(clip, 4, 32, seek_frames_per_sample=None)
    seeking = decode_video(clip, 4, 32, seek_frames_per_sample=2)
    assert single.decoded_frames == seeking.decoded_frames == 49
    assert np.array_equal(single.frames, seeking.frames) and seeking.warning == single.warning


def test_a_cut_avi_within_the_tolerance_is_still_truncated(tmp_path: Path) -> None:
    """10% cut off an AVI: 47 of 50 frames would pass the tolerance, but the RIFF chunk sizes
    say bytes are missing, so it is a truncated file, not an off-by-a-few count. (Cut 5% off,
    only its index goes: all 50 frames decode, and it indexes.)"""
    clip = make_matrix_clip(tmp_path, "avi_mpeg4", RAMP25)
    cut = make_truncated(clip, tmp_path / "cut.avi", keep=0.9)
    problem = "the container indexes 50 frames but only 47 are in the file"
    assert_fails(cut, problem, "truncated")
    assert_fails(cut, problem, "truncated", strict=False)
    index_only = make_truncated(clip, tmp_path / "no_index.avi", keep=0.95)
    assert decode_video(index_only, 8, 32).decoded_frames == 50


# --- pictures: animations are clips, stills are not ------------------------------------------


@pytest.mark.parametrize("name", ["anim.gif", "anim.apng", "apng_named.png"])
def test_animations_decode_like_clips(tmp_path: Path, name: str) -> None:
    clip = make_animation(tmp_path / name, RAMP25)
    decoded = decode_video(clip, 8, 32)
    assert decoded.decoded_frames == 50 and decoded.mask.all() and decoded.warning == ""
    numbers = ramp_frame_numbers(decoded.frames, 4)  # a GIF's palette moves grey by a level
    assert np.abs(numbers - uniform_frame_indices(50, 8)).max() <= 1, numbers


def test_animated_webp_says_this_ffmpeg_cannot_decode_it(tmp_path: Path) -> None:
    clip = make_animation(tmp_path / "anim.webp", RAMP25)
    assert_fails(clip, "an animated WebP, which this ffmpeg cannot decode", "unsupported_format")


@pytest.mark.parametrize(
    ("name", "codec"),
    [("png_named.mp4", "png"), ("jpeg_named.mp4", "mjpeg"), ("still.png", None),
     ("still.gif", None), ("still.webp", None)],
)
def test_a_still_image_is_not_a_video(tmp_path: Path, name: str, codec: str | None) -> None:
    still = make_still(tmp_path / name, RAMP25, codec)
    assert_fails(still, "a still image", "still_image")
    decoded = decode_video(still, 8, 32, allow_stills=True)  # or one frame, repeated
    assert decoded.decoded_frames == 1 and decoded.mask.tolist() == [True] + [False] * 7


def test_a_one_frame_clip_in_a_video_container_is_a_clip(clips: dict[str, Path]) -> None:
    assert decode_video(clips["single"], 8, 32).decoded_frames == 1



# --- failures ------------------------------------------------------------------------------


def assert_fails(path: Path, problem: str, reason: str, **kwargs: object) -> VideoDecodeError:
    """Decoding `path` raises VideoDecodeError naming the file, the problem and its reason."""
    with pytest.raises(VideoDecodeError) as info:
        decode_uniform_frames(path, 8, 32, **kwargs)
    error = info.value
    assert str(path) in str(error) and problem in str(error), str(error)
    assert error.reason == reason, (error.reason, str(error))
    assert error.path == str(path)
    return error


def test_missing_path(tmp_path: Path) -> None:
    assert_fails(tmp_path / "nope.mp4", "does not exist", "missing")


def test_directory(tmp_path: Path) -> None:
    (tmp_path / "dir.mp4").mkdir()
    assert_fails(tmp_path / "dir.mp4", "is a directory", "not_a_file")


def test_zero_byte_file(tmp_path: Path) -> None:
    (tmp_path / "empty.mp4").touch()
    assert_fails(tmp_path / "empty.mp4", "empty (0 bytes)", "empty")


@pytest.mark.parametrize("name", ["notes.mp4", "notes.avi", "notes.mkv", "noise.webm"])
def test_not_a_video(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    if name.startswith("noise"):
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes())
    else:
        path.write_text("this is not a video\n" * 50)
    assert_fails(path, "not a readable media file", "not_a_video")


@pytest.mark.parametrize("args", [["-c:a", "aac"], ["-c:a", "aac", "-f", "ipod"]])
def test_audio_only(tmp_path: Path, args: list[str]) -> None:
    # An .mp4 holding only audio, and an .m4a (ipod muxer) renamed to .mp4.
    clip = make_clip(tmp_path / "sound.mp4", "sine=d=1", *args, pix_fmt=None)
    assert_fails(clip, "no video stream (audio only)", "no_video_stream")


@pytest.mark.parametrize(("width", "height"), [(1, 16), (16, 1), (20000, 2)])
def test_absurd_dimensions(tmp_path: Path, width: int, height: int) -> None:
    clip = make_y4m(tmp_path / "odd.y4m", width, height)
    assert_fails(clip, f"absurd frame dimensions {width}x{height}", "absurd_dimensions")


def test_truncated_plain_mp4(clips: dict[str, Path], tmp_path: Path) -> None:
    # moov atom at the end: the cut file has no index at all.
    clip = make_truncated(clips["plain"], tmp_path / "half_plain.mp4")
    assert_fails(clip, "truncated: the file ends inside a box", "truncated")


def test_truncated_faststart_mp4(clips: dict[str, Path], tmp_path: Path) -> None:
    # moov first: the index lists every frame, but half of the packets are gone. Plain ffmpeg
    # would exit 0 with a fraction of the frames; the probe's packet count catches it first.
    clip = make_truncated(clips["faststart"], tmp_path / "half_fast.mp4")
    assert_fails(clip, "the container indexes 75 frames but only", "truncated")
    assert_fails(clip, "the container indexes 75 frames but only", "truncated", strict=False)


def test_truncated_faststart_mp4_with_a_stale_probe(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    # The probe came from the intact file (e.g. cached): ffmpeg itself must still fail it.
    clip = tmp_path / "fast.mp4"
    clip.write_bytes(clips["faststart"].read_bytes())
    probe = probe_video(clip)
    make_truncated(clips["faststart"], clip)
    assert_fails(clip, "truncated: the file ends inside a box; ffmpeg failed", "truncated",
                 probe=probe)
    # Without -xerror only the frame-count check is left.
    assert_fails(clip, "frames the container lists decode (fewer than 67", "truncated",
                 probe=probe, strict=False)


@pytest.mark.parametrize(
    ("name", "reason", "problem"),
    [
        ("mkv_h264", "truncated", "File ended prematurely"),  # no frame index: demuxer warning
        ("webm_vp9", "truncated", "File ended prematurely"),
        ("avi_mpeg4", "truncated", "the container indexes 75 frames but only"),
        ("mpg_mpeg2", "corrupt", "corrupt"),  # MPEG-PS cannot tell a cut from damage
    ],
)
def test_truncated_other_containers(tmp_path: Path, name: str, reason: str, problem: str) -> None:
    clip = make_matrix_clip(tmp_path, name, "testsrc=size=160x120:rate=25:d=3")
    cut = make_truncated(clip, tmp_path / f"cut{clip.suffix}")
    assert_fails(cut, problem, reason)
    if reason != "truncated" or "indexes" not in problem:
        # Without -xerror the readable part is accepted: the caller asked for leniency.
        frames, _, _ = decode_uniform_frames(cut, 8, 32, strict=False)
        assert frames.shape == (8, 32, 32, 3)


@pytest.mark.parametrize("name", ["plain", "faststart"])
def test_garbled_bytes(clips: dict[str, Path], tmp_path: Path, name: str) -> None:
    clip = make_garbled(clips[name], tmp_path / f"garbled_{name}.mp4")
    error = assert_fails(clip, "ffmpeg failed (exit", "corrupt")
    assert "corrupt" in str(error)


def test_unreadable_file(clips: dict[str, Path], tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("running as root, which can read a chmod 000 file")
    clip = tmp_path / "locked.mp4"
    clip.write_bytes(clips["testsrc"].read_bytes())
    clip.chmod(0)
    try:
        assert_fails(clip, "permission denied", "unreadable")
        with pytest.raises(VideoDecodeError) as info:
            file_content_hash(clip)
        assert info.value.reason == "unreadable"
    finally:
        clip.chmod(0o644)


def test_error_reasons_are_stable_and_pickle() -> None:
    error = VideoDecodeError("/x/a.mp4", "no video stream (audio only)", "no_video_stream")
    assert str(error) == "video '/x/a.mp4': no video stream (audio only)"
    again = pickle.loads(pickle.dumps(error))  # crosses Ray process boundaries intact
    assert (again.path, again.problem, again.reason, str(again)) == (
        error.path, error.problem, error.reason, str(error)
    )
    assert {"missing", "empty", "unreadable", "no_video_stream", "not_a_video", "truncated",
            "corrupt", "absurd_dimensions", "decode_failed"} <= FAILURE_REASONS
    with pytest.raises(ValueError, match="unknown VideoDecodeError reason"):
        VideoDecodeError("a.mp4", "x", "oops")


# --- hashing and timing --------------------------------------------------------------------


def test_file_content_hash(clips: dict[str, Path]) -> None:
    path = clips["plain"]
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert file_content_hash(path) == expected
    assert file_content_hash(str(path), chunk_bytes=1000) == expected


def test_file_content_hash_missing(tmp_path: Path) -> None:
    with pytest.raises(VideoDecodeError, match="nope.mp4") as info:
        file_content_hash(tmp_path / "nope.mp4")
    assert info.value.reason == "missing"


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


# --- many clips, few processes ------------------------------------------------------------


def _same(batch: DecodedVideo | VideoDecodeError, single: DecodedVideo | VideoDecodeError) -> None:
    """A batch result equals the single-clip result: frames, mask, counts, warning, reason."""
    if isinstance(single, VideoDecodeError):
        assert isinstance(batch, VideoDecodeError), (batch, single)
        assert (batch.reason, batch.problem) == (single.reason, single.problem)
        return
    assert isinstance(batch, DecodedVideo), (batch, single)
    assert np.array_equal(batch.frames, single.frames) and np.array_equal(batch.mask, single.mask)
    assert (batch.decoded_frames, batch.warning) == (single.decoded_frames, single.warning)
    for key in ("path", "width", "height", "num_frames", "codec", "size_bytes", "rotation"):
        assert getattr(batch.probe, key) == getattr(single.probe, key), key
    assert batch.probe.fps == pytest.approx(single.probe.fps, rel=1e-6)
    assert batch.probe.duration == pytest.approx(single.probe.duration, abs=1e-3)


@pytest.fixture()
def count_processes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ffmpeg/ffprobe processes started (video_decode's and the fixtures'), by name."""
    import crosstvr_core.data.video_decode as module

    started: list[str] = []
    real_run = module.subprocess.run

    def run(cmd, *args, **kwargs):
        started.append(Path(cmd[0]).name)
        return real_run(cmd, *args, **kwargs)

    monkeypatch.setattr(module.subprocess, "run", run)
    return started


@pytest.fixture(scope="module")
def mixed(clips: dict[str, Path], quirks: dict[str, Path],
          tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Clean clips and every kind of file the batch must hand to the single-clip path."""
    d = tmp_path_factory.mktemp("mixed")
    (d / "notes.mp4").write_text("this is not a video\n" * 50)
    (d / "empty.mp4").touch()
    return [
        clips["testsrc"], clips["ramp"], quirks["edit_list"], clips["ramp_mkv"],
        make_garbled(clips["plain"], d / "garbled.mp4"), clips["split"], d / "notes.mp4",
        clips["rotated"], make_clip(d / "sound.mp4", "sine=d=1", "-c:a", "aac", pix_fmt=None),
        clips["short"], d / "empty.mp4", quirks["dropped_avi"], d / "gone.mp4",
        make_animation(d / "anim.gif", RAMP25), make_still(d / "still.mp4", RAMP25, "png"),
        make_truncated(clips["faststart"], d / "half.mp4"), clips["cut"], clips["single"],
        make_animation(d / "anim.webp", RAMP25), quirks["raw_h264"], clips["plain"],
    ]


@pytest.mark.parametrize("sampling", ["uniform", "segment"])
def test_a_batch_decodes_what_one_clip_at_a_time_does(mixed: list[Path], sampling: str) -> None:
    seeds = list(range(len(mixed)))
    batch = decode_videos(mixed, 8, 32, sampling=sampling, seeds=seeds, threads=1,
                          files_per_process=6)
    assert len(batch) == len(mixed)
    for path, seed, result in zip(mixed, seeds, batch, strict=True):
        try:
            single = decode_video(path, 8, 32, sampling=sampling, seed=seed, threads=1)
        except VideoDecodeError as exc:
            single = exc
        _same(result, single)
    reasons = {p.name: r.reason for p, r in zip(mixed, batch, strict=True)
               if isinstance(r, VideoDecodeError)}
    assert reasons == {
        "garbled.mp4": "corrupt", "notes.mp4": "not_a_video", "sound.mp4": "no_video_stream",
        "empty.mp4": "empty", "gone.mp4": "missing", "still.mp4": "still_image",
        "half.mp4": "truncated", "anim.webp": "unsupported_format",
    }


def test_an_off_by_one_clip_costs_two_passes_a_clean_one_one(
    quirks: dict[str, Path], count_processes: list[str]
) -> None:
    count_processes.clear()
    decode_video(quirks["src"], 8, 32)
    assert count_processes == ["ffprobe", "ffmpeg"]
    count_processes.clear()
    decode_video(quirks["edit_list"], 8, 32)
    assert count_processes == ["ffprobe", "ffmpeg", "ffmpeg"]  # 49 decode: sampled again


def test_clean_clips_cost_two_processes_per_batch(
    tmp_path: Path, count_processes: list[str]
) -> None:
    paths = [make_clip(tmp_path / f"c{i}.mp4", f"testsrc2=size=64x64:rate=8,hue=h={i * 40}",
                       "-frames:v", "16", "-c:v", "libx264") for i in range(8)]
    count_processes.clear()
    batch = decode_videos(paths, 8, 64, threads=1, files_per_process=8)
    assert count_processes == ["ffmpeg", "ffmpeg"]  # one demux, one decode; no ffprobe
    assert all(isinstance(r, DecodedVideo) and r.mask.all() for r in batch)
    count_processes.clear()
    _same(batch[3], decode_video(paths[3], 8, 64, threads=1))
    assert count_processes == ["ffprobe", "ffmpeg"]


def test_a_bad_file_is_split_out_of_its_batch(
    clips: dict[str, Path], tmp_path: Path, count_processes: list[str]
) -> None:
    """A corrupt file fails the batch's decode (-xerror): the batch is halved until it is
    alone, so it gets its own reason and the others are decoded in few processes."""
    paths = [make_clip(tmp_path / f"c{i}.mp4", f"testsrc=size=96x64:rate=10,hue=h={i * 40}",
                       "-t", "3", "-c:v", "libx264") for i in range(7)]
    paths.insert(5, make_garbled(clips["plain"], tmp_path / "garbled.mp4"))
    count_processes.clear()
    batch = decode_videos(paths, 8, 32, threads=1, files_per_process=8)
    assert [r.reason for r in batch if isinstance(r, VideoDecodeError)] == ["corrupt"]
    assert all(isinstance(r, DecodedVideo) for i, r in enumerate(batch) if i != 5)
    assert len(count_processes) <= 10, count_processes  # against 16 one clip at a time
    for path, result in zip(paths[:2], batch, strict=False):
        _same(result, decode_video(path, 8, 32, threads=1))


def test_one_file_per_process_is_the_single_clip_path(
    clips: dict[str, Path], count_processes: list[str]
) -> None:
    count_processes.clear()
    batch = decode_videos([clips["ramp"], clips["testsrc"]], 8, 32, files_per_process=1)
    assert count_processes == ["ffprobe", "ffmpeg"] * 2
    _same(batch[0], decode_video(clips["ramp"], 8, 32))
