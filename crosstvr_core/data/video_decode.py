"""Sampled, square RGB frames of videos, decoded by ffmpeg, one clip or a batch of clips at once.

Decoding dominates indexing cost (tens of thousands of videos). One clip costs one ffprobe and
one ffmpeg process: a `select` filter keeps only the candidate frame numbers, and only those
are scaled (shorter side to `size`) and centre-cropped, inside ffmpeg. Frames are sampled
uniformly (evaluation, indexing) or one at random per segment (training augmentation).

The container's frame count is a hint, not a contract: edit lists, B-frames and muxer rounding
often make it one or two frames more than what decodes. The pass that samples for the hint
therefore also counts every frame that decodes (a 2x2 crop of each, on a side branch: free),
and a clip whose count differs is sampled again from the frames that really decode. A
shortfall within `min_decoded_fraction` of the hint is a warning (`DecodedVideo.warning`);
fewer frames, or a file whose bytes end inside a box or chunk, is `truncated`. Damaged files
often decode "successfully" (exit 0, fewer frames, concealed artefacts), so ffmpeg runs with
`-xerror`.

Process start-up is most of the cost of a small clip (Debian's ffmpeg links ~215 libraries:
~60 ms of CPU per process here), so `decode_videos` probes and decodes many clips with two
ffmpeg processes in all: one demuxes every input (the frame counts and stream facts ffprobe
would give) and one decodes each input's samples to its own output. A clip the batch cannot
vouch for (a damage report, a count that disagrees with its duration, a rotation, a still,
more frames than `seek_frames_per_sample` x F) goes through the single-clip path, and a batch
that fails is split until the bad file is alone, so every file still gets its own reason.
Every failure is a `VideoDecodeError` with a short machine-readable `reason`.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import re
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import ffmpeg
import numpy as np

MAX_DIMENSION = 16384
DEFAULT_TIMEOUT_S = 600.0
_STDERR_TAIL_LINES = 6
_LOG_CONTEXT = re.compile(r" @ 0x[0-9a-f]+\]")


#: The stable values of `VideoDecodeError.reason`, so an index can store and group failures.
FAILURE_REASONS = frozenset(
    {
        "missing",  # the path does not exist
        "not_a_file",  # a directory or another non-regular file
        "unreadable",  # permission denied or another OS read error
        "empty",  # 0 bytes
        "not_a_video",  # no demuxer recognises it (e.g. a text file named .mp4)
        "no_video_stream",  # a media file without video (e.g. audio only)
        "absurd_dimensions",  # frame width/height outside [2, MAX_DIMENSION]
        "no_frames",  # a video stream that holds no frame
        "still_image",  # one picture (PNG, JPEG, a one-frame GIF/WebP), not a clip
        "unsupported_format",  # recognised, but this ffmpeg cannot decode it (animated WebP)
        "truncated",  # the file ends early (container boxes cut off, frames missing)
        "corrupt",  # ffmpeg -xerror stopped on damaged data
        "decode_failed",  # ffmpeg failed for another reason (unsupported codec, bad output)
        "timeout",  # ffmpeg ran past its time limit
    }
)


class VideoDecodeError(RuntimeError):
    """A video that cannot be probed or decoded.

    The message names the file and the problem; `reason` (one of FAILURE_REASONS) is what an
    index stores and what a run summary groups by.
    """

    def __init__(self, path: str | Path, problem: str, reason: str = "decode_failed") -> None:
        if reason not in FAILURE_REASONS:
            raise ValueError(f"unknown VideoDecodeError reason {reason!r}")
        super().__init__(f"video '{path}': {problem}")
        self.path, self.problem, self.reason = str(path), problem, reason

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across process boundaries (Ray)
        return (type(self), (self.path, self.problem, self.reason))


@dataclass(frozen=True)
class VideoProbe:
    """What the decoder needs to know about a video's first real video stream.

    `width`/`height` are as displayed (swapped for a 90/270 degree rotation). `num_frames`
    is the container's frame count when it agrees with duration x fps
    (`num_frames_exact`), else the packet count, else round(duration x fps): a hint of how
    many frames decode, which decoding checks. `container_frames` is the frame count the
    container stores (0: none), `num_packets` how many video packets the demuxer read (0: not
    counted). `rotation` is the clockwise rotation (0/90/180/270) that
    ffmpeg would apply for display; `stream_index` is the absolute index of the stream in the
    file; `format_name` is the demuxer's name (e.g. "mov,mp4,m4a,3gp,3g2,mj2", "png_pipe").
    `damage` is the demuxer's first report of a cut or damaged file (`damage_reason`
    "truncated" or "corrupt"); strict decoding refuses such a file.
    """

    path: str
    duration: float
    fps: float
    width: int
    height: int
    num_frames: int
    codec: str
    size_bytes: int
    num_frames_exact: bool = True
    rotation: int = 0
    stream_index: int = 0
    damage: str = ""
    damage_reason: str = ""
    num_packets: int = 0
    format_name: str = ""
    container_frames: int = 0

    @property
    def is_image(self) -> bool:
        """Read by an image demuxer (PNG, JPEG, WebP, GIF, APNG...), not a video container."""
        return self.format_name in _IMAGE_FORMATS or self.format_name.endswith("_pipe")

    @property
    def is_still(self) -> bool:
        """One picture: an image file of a single frame (a one-frame clip in a video container
        is still a clip)."""
        return self.is_image and self.num_frames <= 1


#: Demuxers of picture files; with one frame, such a file is a still image.
_IMAGE_FORMATS = frozenset({"image2", "image2pipe", "gif", "apng", "webp", "png", "jpeg"})


#: What demuxers print (at warning/error level, exit status 0) when a file is cut or damaged.
_DAMAGE_MARKERS: tuple[tuple[bytes, str], ...] = (
    (b"File ended prematurely", "truncated"),  # matroska / webm
    (b"partial file", "truncated"),  # mov / mp4
    (b"Packet corrupt", "corrupt"),  # avi, mpeg-ps (often a cut last packet)
    (b"corrupt input packet", "corrupt"),  # ffmpeg's report of the same
    (b"corrupt decoded frame", "corrupt"),
)


def _damage(stderr: bytes | None) -> tuple[str, str] | None:
    """(reason, message line) of the first damage marker in ffmpeg/ffprobe output, if any."""
    for line in (stderr or b"").splitlines():
        for marker, reason in _DAMAGE_MARKERS:
            if marker in line:
                text = _LOG_CONTEXT.sub("]", line.decode("utf-8", errors="replace").strip())
                return reason, text
    return None


def _fail(path: str | Path, problem: str, reason: str) -> VideoDecodeError:
    return VideoDecodeError(path, problem, reason)


def _stderr_tail(stderr: bytes | None, lines: int = _STDERR_TAIL_LINES) -> str:
    text = (stderr or b"").decode("utf-8", errors="replace")
    kept = [_LOG_CONTEXT.sub("]", line.strip()) for line in text.splitlines() if line.strip()]
    return " | ".join(kept[-lines:]) or "no message"


def _rate(value: Any) -> float:
    """'30000/1001' -> 29.97; '0/0', missing or malformed -> 0.0."""
    try:
        num, _, den = str(value).partition("/")
        rate = float(num) / float(den or 1)
    except (ValueError, ZeroDivisionError):
        return 0.0
    return rate if math.isfinite(rate) and rate > 0 else 0.0


def _positive_float(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if math.isfinite(number) and number > 0 else 0.0


def _rotation(stream: dict[str, Any]) -> int:
    """Clockwise display rotation, as ffmpeg's autorotate computes it (display matrix first)."""
    theta: float | None = None
    for side in stream.get("side_data_list") or []:
        if "rotation" in side:
            # ffprobe prints the display matrix angle counter-clockwise.
            theta = -float(side["rotation"])
            break
    if theta is None:
        tag = (stream.get("tags") or {}).get("rotate")
        if tag is not None:
            try:
                theta = float(tag)
            except ValueError:
                theta = None
    if theta is None:
        return 0
    return int(round(theta / 90.0)) * 90 % 360


def _check_readable_file(path: str | Path) -> int:
    """Fail early, with a plain message, on what ffprobe would report obscurely (or hang on)."""
    p = Path(path)
    if not p.exists():
        raise _fail(path, "does not exist", "missing")
    if p.is_dir():
        raise _fail(path, "is a directory, not a video file", "not_a_file")
    if not p.is_file():
        raise _fail(path, "is not a regular file", "not_a_file")
    try:
        with open(p, "rb") as handle:
            handle.read(1)
    except PermissionError:
        raise _fail(path, "is not readable (permission denied)", "unreadable") from None
    except OSError as exc:
        raise _fail(path, f"cannot be read ({exc.strerror or exc})", "unreadable") from None
    size = p.stat().st_size
    if size == 0:
        raise _fail(path, "is empty (0 bytes)", "empty")
    return size


def _iso_bmff_cut_short(path: str | Path) -> bool:
    """True when an MP4/MOV file's top-level boxes run past the end of the file.

    That is the signature of a cut download or copy (the `mdat` box, or the `moov` index that
    follows it, is missing bytes), which ffmpeg reports only as "moov atom not found" or as
    corrupt packets. Other containers return False: their failures stay "corrupt".
    """
    try:
        with open(path, "rb") as handle:
            file_size = handle.seek(0, 2)
            handle.seek(0)
            head = handle.read(8)
            if len(head) < 8 or head[4:8] != b"ftyp":
                return False
            offset = 0
            while offset + 8 <= file_size:
                handle.seek(offset)
                header = handle.read(16)
                box_size = int.from_bytes(header[0:4], "big")
                if box_size == 1 and len(header) == 16:  # 64-bit "largesize"
                    box_size = int.from_bytes(header[8:16], "big")
                elif box_size == 0:  # box extends to the end of the file
                    return False
                if box_size < 8:
                    return False  # not a box structure we can follow: leave it to ffmpeg
                offset += box_size
            return offset > file_size
    except OSError:
        return False


def _riff_cut_short(path: str | Path) -> bool:
    """True when a RIFF file's (AVI, WebP) top-level chunks run past the end of the file.

    An AVI keeps its frame index (`idx1`) at the end, so a cut AVI lost it and its header's
    frame count is all that is left; the RIFF sizes still say how long the file was.
    """
    try:
        with open(path, "rb") as handle:
            file_size = handle.seek(0, 2)
            handle.seek(0)
            if handle.read(4) != b"RIFF":
                return False
            offset = 0
            while offset + 8 <= file_size:
                handle.seek(offset)
                header = handle.read(8)
                if header[:4] != b"RIFF":  # trailing bytes that are not a RIFF segment
                    return False
                size = int.from_bytes(header[4:8], "little")
                offset += 8 + size + (size & 1)
            return offset > file_size + 1  # a missing pad byte after an odd chunk is tolerated
    except OSError:
        return False


def _cut_short(path: str | Path) -> bool:
    """The file's own structure (MP4/MOV boxes, RIFF chunks) says bytes are missing."""
    return _iso_bmff_cut_short(path) or _riff_cut_short(path)


def _is_animated_webp(path: str | Path) -> bool:
    """A WebP file with an animation (VP8X animation flag or an ANIM chunk)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(64)
    except OSError:
        return False
    if len(head) < 21 or head[:4] != b"RIFF" or head[8:12] != b"WEBP":
        return False
    if head[12:16] == b"VP8X" and head[20] & 0x02:
        return True
    return b"ANIM" in head


def _unsupported_webp(path: str | Path) -> VideoDecodeError:
    return _fail(
        path,
        "an animated WebP, which this ffmpeg cannot decode (its webp decoder skips the "
        "ANIM/ANMF chunks); convert it to GIF or MP4 with a WebP-aware tool to index it",
        "unsupported_format",
    )


def probe_video(path: str | Path) -> VideoProbe:
    """Probe the first video stream (cover art excluded) and validate it is decodable."""
    size_bytes = _check_readable_file(path)
    # -count_packets demuxes the file (no decoding: a few ms even for minutes of video) and
    # gives a frame count where the container stores none (mkv, webm, ogv, mpeg-ps); warnings
    # are kept because a cut mkv/webm/avi/mpeg only says so there.
    cmd = ["ffprobe", "-v", "warning", "-count_packets", "-show_format", "-show_streams"]
    cmd += ["-of", "json", str(Path(path).resolve())]
    try:
        result = subprocess.run(cmd, capture_output=True, timeout=DEFAULT_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise _fail(path, f"ffprobe timed out after {DEFAULT_TIMEOUT_S:g}s", "timeout") from None
    try:
        info = json.loads(result.stdout) if result.returncode == 0 else None
    except json.JSONDecodeError:
        info = None
    if info is None:
        if _is_animated_webp(path):
            raise _unsupported_webp(path)
        detail = _stderr_tail(result.stderr, 2)
        if _iso_bmff_cut_short(path):
            problem = f"truncated: the file ends inside a box, not a readable media file ({detail})"
            raise _fail(path, problem, "truncated") from None
        raise _fail(path, f"not a readable media file ({detail})", "not_a_video") from None
    streams = info.get("streams") or []
    videos = [
        s
        for s in streams
        if s.get("codec_type") == "video" and not (s.get("disposition") or {}).get("attached_pic")
    ]
    if not videos:
        kinds = sorted({str(s.get("codec_type")) for s in streams})
        if kinds == ["audio"]:
            raise _fail(path, "no video stream (audio only)", "no_video_stream")
        raise _fail(
            path, f"no video stream (streams: {', '.join(kinds) or 'none'})", "no_video_stream"
        )
    stream = videos[0]
    rotation = _rotation(stream)
    width, height = int(stream.get("width") or 0), int(stream.get("height") or 0)
    if rotation in (90, 270):
        width, height = height, width
    if not (2 <= width <= MAX_DIMENSION and 2 <= height <= MAX_DIMENSION):
        if _is_animated_webp(path):
            raise _unsupported_webp(path)
        raise _fail(path, f"absurd frame dimensions {width}x{height}", "absurd_dimensions")

    fps = _rate(stream.get("avg_frame_rate")) or _rate(stream.get("r_frame_rate"))
    duration = _positive_float(stream.get("duration")) or _positive_float(
        (info.get("format") or {}).get("duration")
    )
    counted = int(_positive_float(stream.get("nb_frames")))
    packets = int(_positive_float(stream.get("nb_read_packets")))
    # fewer packets than the container indexes is checked in decoding, against the tolerance
    # (an AVI of packed B-frames indexes one more frame than it stores, a cut one half of them)
    estimated = round(duration * fps) if duration and fps else 0
    # nb_frames counts stored samples: an edit list (e.g. a stream-copied cut) can hide many of
    # them, so it is trusted only when it agrees with the displayed duration.
    exact = counted > 0 and (
        not estimated or abs(counted - duration * fps) <= max(1.5, 0.01 * counted)
    )
    if exact:
        num_frames = counted
    elif not counted and packets:
        # One packet per frame for nearly every codec; better than duration x fps, which is
        # short for MPEG-PS (the last GOP is missing) and off for variable frame rates. Still
        # not "exact": an overestimate is resampled in decode_frames, never called corrupt.
        num_frames = packets
    else:
        num_frames = estimated
    if num_frames < 1:
        raise _fail(
            path,
            f"zero frames (nb_frames={stream.get('nb_frames', 'n/a')}, "
            f"duration={duration:g}s, fps={fps:g})",
            "no_frames",
        )
    damage = _damage(result.stderr)
    if not fps and duration:
        fps = num_frames / duration
    if not duration and fps:
        duration = num_frames / fps
    return VideoProbe(
        path=str(path),
        duration=duration,
        fps=fps,
        width=width,
        height=height,
        num_frames=num_frames,
        codec=str(stream.get("codec_name") or "unknown"),
        size_bytes=size_bytes,
        num_frames_exact=exact,
        rotation=rotation,
        stream_index=int(stream.get("index") or 0),
        damage=damage[1] if damage else "",
        damage_reason=damage[0] if damage else "",
        num_packets=packets,
        format_name=str((info.get("format") or {}).get("format_name") or ""),
        container_frames=counted,
    )


# --- which frames -----------------------------------------------------------------------------

Sampling = Literal["uniform", "segment"]
SeedLike = int | np.random.Generator | None


def uniform_frame_indices(num_available: int, num_frames: int) -> list[int]:
    """CLIP4Clip-style uniform sample: round(linspace(0, n - 1, F)); all frames when n < F."""
    _check_counts(num_available, num_frames)
    if num_available <= num_frames:
        return list(range(num_available))
    return [int(i) for i in np.round(np.linspace(0, num_available - 1, num_frames))]


def segment_frame_indices(num_available: int, num_frames: int, seed: SeedLike) -> list[int]:
    """TSN-style training sample: F equal segments over the clip, one random frame in each.

    Segment k is frames [floor(k n / F), floor((k + 1) n / F)), never empty when n >= F, so the
    indices are sorted and distinct. All frames when n <= F (the caller pads, as for uniform).
    `seed` is an int (reproducible), a numpy Generator (advanced), or None (fresh entropy).
    """
    _check_counts(num_available, num_frames)
    if num_available <= num_frames:
        return list(range(num_available))
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    edges = (np.arange(num_frames + 1) * num_available) // num_frames
    return [int(i) for i in rng.integers(edges[:-1], edges[1:])]


def sample_frame_indices(
    num_available: int, num_frames: int, sampling: Sampling = "uniform", seed: SeedLike = None
) -> list[int]:
    """The frame numbers to decode for one sampling scheme (see the two functions above)."""
    if sampling == "uniform":
        return uniform_frame_indices(num_available, num_frames)
    if sampling == "segment":
        return segment_frame_indices(num_available, num_frames, seed)
    raise ValueError(f"sampling must be 'uniform' or 'segment', got {sampling!r}")


def _check_counts(num_available: int, num_frames: int) -> None:
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if num_available < 0:
        raise ValueError(f"num_available must be >= 0, got {num_available}")


def _pad_slots(num_decoded: int, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Map F slots onto n < F decoded frames (nearest uniform position); repeats are masked."""
    if num_decoded >= num_frames:
        return np.arange(num_frames), np.ones(num_frames, dtype=bool)
    source = np.round(np.linspace(0, num_decoded - 1, num_frames)).astype(np.int64)
    mask = np.ones(num_frames, dtype=bool)
    mask[1:] = source[1:] != source[:-1]
    return source, mask


# --- one ffmpeg run ---------------------------------------------------------------------------

_ROTATE_FILTERS: dict[int, list[tuple[str, ...]]] = {
    90: [("transpose", "clock")],
    180: [("hflip",), ("vflip",)],
    270: [("transpose", "cclock")],
}


def _square_crop(stream: Any, size: int, rotation: int) -> Any:
    """Shorter displayed side -> size (sample aspect ratio included), centre crop, rotate."""
    stream = stream.filter(
        "scale",
        w=f"max({size},round({size}*dar))",
        h=f"max({size},round({size}/dar))",
        flags="bicubic",
    )
    stream = stream.filter("crop", size, size)
    # Rotation is applied after the crop, so only the kept size x size frames are turned.
    for spec in _ROTATE_FILTERS.get(rotation, []):
        stream = stream.filter(*spec)
    return stream


def _global_args(strict: bool) -> list[str]:
    return ["-hide_banner", "-nostdin", "-v", "error"] + (["-xerror"] if strict else [])


def _ffmpeg_error(path: str | Path, returncode: int, stderr: bytes | None) -> VideoDecodeError:
    """Why an ffmpeg run on one file failed, as a VideoDecodeError."""
    detail = _stderr_tail(stderr)
    failed = f"ffmpeg failed (exit {returncode})"
    if _iso_bmff_cut_short(path):
        return _fail(path, f"truncated: the file ends inside a box; {failed}: {detail}", "truncated")
    if b"partial file" in (stderr or b""):
        return _fail(path, f"truncated: {failed} at the end of the file: {detail}", "truncated")
    damaged = any(
        marker in (stderr or b"")
        for marker in (b"corrupt", b"Invalid", b"error while decoding", b"concealing")
    )
    return _fail(
        path, f"{failed}, corrupt or unsupported: {detail}", "corrupt" if damaged else "decode_failed"
    )


@dataclass(frozen=True)
class _FfmpegRun:
    """How every ffmpeg process of one decode runs: `strict` adds -xerror (any decode error
    fails the video), `timeout_s` bounds it, `threads` is the decoder's thread count."""

    strict: bool
    timeout_s: float | None
    threads: int | None


def _run_ffmpeg(path: str | Path, out: Any, run: _FfmpegRun) -> bytes:
    """Run a compiled ffmpeg-python graph that writes raw frames to stdout; its bytes."""
    compiled = out.compile()
    cmd = [compiled[0], *_global_args(run.strict), *compiled[1:]]
    try:
        result = subprocess.run(cmd, capture_output=True, timeout=run.timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise _fail(path, f"ffmpeg timed out after {run.timeout_s:g}s", "timeout") from None
    if result.returncode != 0:
        raise _ffmpeg_error(path, result.returncode, result.stderr)
    damage = _damage(result.stderr) if run.strict else None
    if damage:
        raise _fail(path, f"{damage[0]}: {damage[1]}", damage[0])
    return result.stdout


def _rgb_frames(path: str | Path, data: bytes, size: int) -> np.ndarray:
    """rgb24 bytes as [k, size, size, 3]."""
    frame_bytes = size * size * 3
    if len(data) % frame_bytes:
        raise _fail(path, f"ffmpeg returned a partial frame ({len(data)} bytes)", "decode_failed")
    return np.frombuffer(data, dtype=np.uint8).reshape(-1, size, size, 3)


def _input_args(threads: int | None, **extra: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"noautorotate": None, **extra}
    if threads is not None:
        args["threads"] = threads
    return args


def _raw_output(stream: Any, num_frames: int, target: str = "pipe:") -> Any:
    return stream.output(
        target,
        format="rawvideo",
        pix_fmt="rgb24",
        fps_mode="passthrough",
        **{"frames:v": num_frames},
    )


def _selected(path: str | Path, probe: VideoProbe, indices: list[int], threads: int | None) -> Any:
    """The file's video stream, keeping the frames numbered `indices` (display order)."""
    stream = ffmpeg.input(str(Path(path).resolve()), **_input_args(threads))
    stream = stream[str(probe.stream_index)]
    # ffmpeg-python escapes the commas itself; frame numbers are in display order.
    return stream.filter("select", "+".join(f"eq(n,{i})" for i in indices))


def _decode_by_select(
    path: str | Path,
    probe: VideoProbe,
    indices: list[int],
    size: int,
    run: _FfmpegRun,
) -> np.ndarray:
    """One pass over the whole file; `select` keeps frames numbered `indices` (display order)."""
    stream = _square_crop(_selected(path, probe, indices, run.threads), size, probe.rotation)
    data = _run_ffmpeg(path, _raw_output(stream, len(indices)), run)
    return _rgb_frames(path, data, size)


def _counted(stream: Any, target: str) -> Any:
    """One gray pixel per frame of `stream` (a 2x2 crop: no scaling work): the frame count."""
    small = stream.filter("crop", 2, 2, 0, 0).filter("scale", 1, 1, flags="neighbor")
    return small.output(target, format="rawvideo", pix_fmt="gray", fps_mode="passthrough")


def _sample_and_count(
    path: str | Path,
    probe: VideoProbe,
    indices: list[int],
    size: int,
    threads: int | None,
    frames_target: str,
    count_target: str,
) -> list[Any]:
    """Two outputs of one decode: the frames numbered `indices` (select + crop), and one pixel
    per decoded frame, so the pass also says how many frames really decode."""
    stream = ffmpeg.input(str(Path(path).resolve()), **_input_args(threads))
    branches = stream[str(probe.stream_index)].split()
    picked = branches[0].filter("select", "+".join(f"eq(n,{i})" for i in indices))
    picked = _square_crop(picked, size, probe.rotation)
    return [_raw_output(picked, len(indices), frames_target), _counted(branches[1], count_target)]


def _decode_and_count(
    path: str | Path,
    probe: VideoProbe,
    indices: list[int],
    size: int,
    run: _FfmpegRun,
) -> tuple[np.ndarray, int]:
    """`_decode_by_select`'s frames, and the number of frames the whole file decodes to."""
    with tempfile.TemporaryDirectory(prefix="crosstvr-count-", dir=_scratch_dir()) as scratch:
        count_file = os.path.join(scratch, "count.raw")
        outputs = _sample_and_count(path, probe, indices, size, run.threads, "pipe:",
                                    count_file)
        data = _run_ffmpeg(path, ffmpeg.merge_outputs(*outputs), run)
        count = os.path.getsize(count_file) if os.path.isfile(count_file) else 0
    return _rgb_frames(path, data, size), count


def _decode_by_seeking(
    path: str | Path,
    probe: VideoProbe,
    indices: list[int],
    size: int,
    run: _FfmpegRun,
) -> np.ndarray:
    """One ffmpeg process, one input per frame: seek to it, decode from its keyframe, take one.

    Each input reads at most a GOP plus one frame time, so a long clip costs about F GOPs of
    decoding instead of the whole file. Positions are times (index / fps), exact for constant
    frame rates and nearest-in-time for variable ones.
    """
    frame_time = 1.0 / probe.fps
    parts = []
    for index in indices:
        # A quarter frame early, so rounding never lands on the frame before.
        start = max(0.0, (index - 0.25) * frame_time)
        stream = ffmpeg.input(
            str(Path(path).resolve()),
            **_input_args(run.threads, ss=f"{start:.6f}", t=f"{2 * frame_time:.6f}"),
        )[str(probe.stream_index)]
        stream = stream.filter("trim", end_frame=1).filter("setpts", "PTS-STARTPTS")
        parts.append(_square_crop(stream, size, probe.rotation).filter("setsar", 1))
    joined = ffmpeg.concat(*parts, v=1, a=0) if len(parts) > 1 else parts[0]
    data = _run_ffmpeg(path, _raw_output(joined, len(indices)), run)
    return _rgb_frames(path, data, size)


# --- one clip -----------------------------------------------------------------------------------

#: Seek per sampled frame once a clip has more frames per sample than this. 250 is the default
#: keyframe interval of x264/x265/libvpx, so a seek then decodes at most about one GOP per
#: sample, never more than the single pass would. Measured in benchmarks/bench_decode.py.
SEEK_FRAMES_PER_SAMPLE = 250

#: Fewer decoded frames than this fraction of the container's count is a truncated file;
#: a smaller shortfall is sampled around and reported as a warning.
DEFAULT_MIN_DECODED_FRACTION = 0.9


@dataclass(frozen=True)
class DecodedVideo:
    """What decoding one video gives: F frames, which are real, and what was found.

    `frames` uint8 [F, size, size, 3] RGB; `mask` [F] is False for slots that repeat a frame
    (clips shorter than F). `decoded_frames` is the number of frames the sample was drawn
    from (the frames that decode, or the container's count when all of its frames did).
    `warning` is empty, or says what was off but tolerated (fewer frames than the container
    lists).
    """

    frames: np.ndarray
    mask: np.ndarray
    probe: VideoProbe
    decoded_frames: int
    warning: str = ""


class _Sampler:
    """The F frame numbers for any number of available frames, every one drawn from the same
    seed state: the sample for the count that turns out to decode equals a direct draw."""

    def __init__(self, num_frames: int, sampling: Sampling, seed: SeedLike) -> None:
        self.num_frames, self.sampling = num_frames, sampling
        self._caller = seed if isinstance(seed, np.random.Generator) else None
        self._start = None
        if sampling == "segment":
            self._start = copy.deepcopy(seed) if self._caller else np.random.default_rng(seed)
        self._after: dict[int, np.random.Generator] = {}

    def indices(self, available: int) -> list[int]:
        if self._start is None:
            return uniform_frame_indices(available, self.num_frames)
        rng = copy.deepcopy(self._start)
        indices = segment_frame_indices(available, self.num_frames, rng)
        self._after[available] = rng
        return indices

    def chose(self, available: int) -> None:
        """Advance a caller's Generator as one draw over `available` frames would have."""
        if self._caller is not None and available in self._after:
            self._caller.bit_generator.state = self._after[available].bit_generator.state


def minimum_decoded_frames(hint: int, min_decoded_fraction: float) -> int:
    """The fewest decoded frames a clip whose container lists `hint` frames may have."""
    return max(1, math.floor(min_decoded_fraction * hint + 1e-9))


def _check_decode_args(num_frames: int, size: int, sampling: str, fraction: float) -> None:
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if sampling not in ("uniform", "segment"):
        raise ValueError(f"sampling must be 'uniform' or 'segment', got {sampling!r}")
    if not 0 < fraction <= 1:
        raise ValueError(f"min_decoded_fraction must be in (0, 1], got {fraction}")


def _still(path: str | Path, probe: VideoProbe) -> VideoDecodeError:
    return _fail(
        path,
        f"a still image ({probe.codec} read by {probe.format_name}, one frame), not a video "
        "(index.allow_stills=true indexes stills as one-frame clips)",
        "still_image",
    )


def _shortfall(path: str | Path, probe: VideoProbe, decoded: int, fraction: float) -> str:
    """The warning when fewer frames decode than the container lists or stores (empty when
    none), or a `truncated` failure: too few of a trusted count, or bytes missing."""
    hint, stored = probe.num_frames, probe.container_frames
    if decoded >= max(hint, stored):
        return ""
    minimum = minimum_decoded_frames(hint, fraction)
    if probe.num_frames_exact and decoded < minimum:
        raise _fail(
            path,
            f"truncated: {decoded} of the {hint} frames the container lists decode "
            f"(fewer than {minimum}, min_decoded_fraction={fraction:g})",
            "truncated",
        )
    if _cut_short(path):
        raise _fail(
            path,
            f"truncated: {decoded} of {max(hint, stored)} frames decode and the file ends "
            "inside a box or chunk",
            "truncated",
        )
    if probe.num_frames_exact:
        return (f"{decoded} of the {hint} frames the container lists decode; sampled from "
                f"those {decoded}")
    if stored > decoded:
        # e.g. an edit list that hides frames: the duration, not the stored count, is trusted
        return (f"{decoded} frames decode, the container stores {stored} (its duration says "
                f"about {hint}); sampled from those {decoded}")
    if decoded < minimum:
        return (f"{decoded} frames decode, about {hint} were estimated from the duration; "
                f"sampled from those {decoded}")
    return ""


def _check_packets(path: str | Path, probe: VideoProbe, fraction: float) -> None:
    """A container that indexes more frames than the file holds packets for: truncated when
    too many are missing or the file's structure ends early (a cut file's demuxer often
    reports only a corrupt last packet); a few missing packets are decoding's to weigh."""
    counted, packets = probe.container_frames, probe.num_packets
    if not 0 < packets < counted:
        return
    if packets < minimum_decoded_frames(counted, fraction) or _cut_short(path):
        raise _fail(
            path,
            f"truncated: the container indexes {counted} frames but only {packets} are in the "
            "file",
            "truncated",
        )


def _decode_clip(
    path: str | Path,
    probe: VideoProbe,
    num_frames: int,
    size: int,
    sampler: _Sampler,
    run: _FfmpegRun,
    *,
    seek_frames_per_sample: int | None,
    min_decoded_fraction: float,
) -> tuple[np.ndarray, int, str]:
    """(frames in sample order, frames decodable, warning) for one probed clip."""
    hint, fraction = probe.num_frames, min_decoded_fraction
    long_clip = seek_frames_per_sample and hint > seek_frames_per_sample * num_frames
    if long_clip and probe.fps > 0:
        indices = sampler.indices(hint)
        frames = _decode_by_seeking(path, probe, indices, size, run)
        if len(frames) == len(indices):
            sampler.chose(hint)
            return frames, hint, _shortfall(path, probe, hint, fraction)
        # A seek that found nothing (a frame count above what decodes) falls back to the
        # single pass, which counts the frames there are.

    # One pass samples for the hint and counts the frames that decode; only a clip whose count
    # differs (an off-by-one container, a stale probe) is sampled again, from what decodes.
    indices = sampler.indices(hint)
    got, decoded = _decode_and_count(path, probe, indices, size, run)
    if decoded == 0 or len(got) == 0:
        raise _fail(path, f"no frames decoded (expected {len(indices)} of {hint})", "no_frames")
    warning = _shortfall(path, probe, decoded, fraction)
    frames = got
    if decoded != hint or len(got) != len(indices):
        wanted = sampler.indices(decoded)
        position = {index: k for k, index in enumerate(indices[: len(got)])}
        if all(index in position for index in wanted):
            frames = got[[position[index] for index in wanted]]
        else:
            frames = _decode_by_select(path, probe, wanted, size, run)
            if len(frames) < len(wanted):
                raise _fail(
                    path,
                    f"truncated or corrupt: got {len(frames)} of {len(wanted)} frames on a "
                    f"second pass over the {decoded} frames that decoded on the first",
                    "truncated",
                )
    sampler.chose(decoded)
    return frames, decoded, warning


def _finish(
    frames: np.ndarray, num_frames: int, probe: VideoProbe, decoded: int, warning: str
) -> DecodedVideo:
    source, mask = _pad_slots(len(frames), num_frames)
    return DecodedVideo(np.ascontiguousarray(frames[source]), mask, probe, decoded, warning)


def decode_video(
    path: str | Path,
    num_frames: int,
    size: int,
    probe: VideoProbe | None = None,
    *,
    sampling: Sampling = "uniform",
    seed: SeedLike = None,
    strict: bool = True,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
    threads: int | None = None,
    seek_frames_per_sample: int | None = SEEK_FRAMES_PER_SAMPLE,
    min_decoded_fraction: float = DEFAULT_MIN_DECODED_FRACTION,
    allow_stills: bool = False,
) -> DecodedVideo:
    """F sampled frames of one video, with what decoding found (`DecodedVideo`).

    `sampling` "uniform" spreads F frames evenly; "segment" takes one random frame from each of
    F equal segments (training augmentation; `seed` makes it reproducible). Frames are sampled
    from the frames that decode: a container count up to `1 - min_decoded_fraction` too high
    is a warning, more is `truncated`. Clips with fewer than F frames are padded by repeating
    the nearest frame (mask False). A still image fails as `still_image` unless
    `allow_stills` (then it is a one-frame clip). `strict` runs ffmpeg with -xerror (any
    decode error fails the video); `threads` is ffmpeg's decoder thread count (None: ffmpeg's
    default, all cores). Clips longer than `seek_frames_per_sample` x F frames seek to each
    sample instead of decoding everything (None: never seek).
    """
    _check_decode_args(num_frames, size, sampling, min_decoded_fraction)
    if probe is None:
        probe = probe_video(path)
    else:
        _check_readable_file(path)
    _check_packets(path, probe, min_decoded_fraction)
    if strict and probe.damage:
        raise _fail(path, f"{probe.damage_reason}: {probe.damage}", probe.damage_reason)
    if probe.is_still and not allow_stills:
        raise _still(path, probe)
    frames, decoded, warning = _decode_clip(
        path, probe, num_frames, size, _Sampler(num_frames, sampling, seed),
        _FfmpegRun(strict, timeout_s, threads), seek_frames_per_sample=seek_frames_per_sample,
        min_decoded_fraction=min_decoded_fraction,
    )  # fmt: skip
    if decoded <= 1 and probe.is_image and not allow_stills:
        raise _still(path, probe)
    return _finish(frames, num_frames, probe, decoded, warning)


def decode_frames(
    path: str | Path,
    num_frames: int,
    size: int,
    probe: VideoProbe | None = None,
    **kwargs: Any,
) -> tuple[np.ndarray, np.ndarray, VideoProbe]:
    """F sampled frames, uint8 [F, size, size, 3] RGB, a validity mask [F], and the probe.

    `decode_video` without what decoding found; the keyword arguments are `decode_video`'s.
    """
    decoded = decode_video(path, num_frames, size, probe, **kwargs)
    return decoded.frames, decoded.mask, decoded.probe


def decode_uniform_frames(
    path: str | Path,
    num_frames: int,
    size: int,
    probe: VideoProbe | None = None,
    **kwargs: Any,
) -> tuple[np.ndarray, np.ndarray, VideoProbe]:
    """F uniformly sampled frames (indexing, evaluation); see `decode_video`."""
    return decode_frames(path, num_frames, size, probe, sampling="uniform", **kwargs)


def decode_segment_frames(
    path: str | Path,
    num_frames: int,
    size: int,
    seed: SeedLike,
    probe: VideoProbe | None = None,
    **kwargs: Any,
) -> tuple[np.ndarray, np.ndarray, VideoProbe]:
    """One random frame from each of F equal segments (training augmentation); see `decode_video`."""
    return decode_frames(path, num_frames, size, probe, sampling="segment", seed=seed, **kwargs)


# --- many clips, few processes ------------------------------------------------------------------

_LEVEL = re.compile(r"\[(error|fatal|panic)\] ")
_INPUT_LINE = re.compile(r"^\[info\] Input #(\d+), (.+), from '.*':$")
_DURATION_LINE = re.compile(r"^\[info\]\s+Duration: (?:N/A|(\d+):(\d{2}):(\d{2}(?:\.\d+)?))")
_STREAM_LINE = re.compile(r"^\[info\]\s+Stream #(\d+):(\d+)\S*: (\w+): (\S+?)[\s,](.*)$")
_ROTATION_LINE = re.compile(r"^\[info\]\s+displaymatrix: rotation of (-?[\d.]+) degrees")
_MAPPING_LINE = re.compile(r"^\[info\]\s+Stream #(\d+):(\d+) -> #0:\d+ \(copy\)")
_PACKETS_LINE = re.compile(r"^\[verbose\]\s+Input stream #(\d+):(\d+) \(\w+\): (\d+) packets read")
_DIMENSIONS = re.compile(r"(?:^|, )(\d+)x(\d+)(?=[ ,]|$)")
_FPS = re.compile(r", (\d+(?:\.\d+)?)(k?) fps")
_NTSC_RATES = tuple(n * 1000 / 1001 for n in (24, 30, 48, 60, 120, 240))


@dataclass
class _InputFacts:
    """What ffmpeg's log says about one input: its header and how many packets it read."""

    format_name: str = ""
    duration: float | None = None
    streams: dict[int, tuple[str, str, str]] = field(default_factory=dict)  # kind, codec, rest
    rotated: set[int] = field(default_factory=set)
    mapped: int | None = None
    packets: dict[int, int] = field(default_factory=dict)


def _parse_demux_log(text: str) -> dict[int, _InputFacts]:
    """Input headers (ffmpeg's info dump), stream mapping and packet counts (verbose stats).

    Header lines are read only before the first output header, so an output stream's line
    is never taken for an input's.
    """
    facts: dict[int, _InputFacts] = {}
    current: tuple[int, int] | None = None
    headers = True
    for line in text.splitlines():
        if line.startswith("[info] Output #"):
            headers, current = False, None
        elif not headers:
            if (match := _MAPPING_LINE.match(line)) and int(match[1]) in facts:
                facts[int(match[1])].mapped = int(match[2])
            elif (match := _PACKETS_LINE.match(line)) and int(match[1]) in facts:
                facts[int(match[1])].packets[int(match[2])] = int(match[3])
        elif match := _INPUT_LINE.match(line):
            facts[int(match[1])] = _InputFacts(format_name=match[2])
            current = None
        elif (match := _DURATION_LINE.match(line)) and facts and match[1] is not None:
            facts[max(facts)].duration = (
                int(match[1]) * 3600 + int(match[2]) * 60 + float(match[3]))
        elif (match := _STREAM_LINE.match(line)) and int(match[1]) in facts:
            current = (int(match[1]), int(match[2]))
            facts[current[0]].streams[current[1]] = (match[3], match[4], match[5])
        elif (match := _ROTATION_LINE.match(line)) and current and float(match[1]) % 360:
            facts[current[0]].rotated.add(current[1])
    return facts


def _snap_rate(fps: float) -> float:
    """ffmpeg prints frame rates to two decimals: 29.97 is 30000/1001."""
    for rate in _NTSC_RATES:
        if abs(fps - rate) < 0.006:
            return rate
    return fps


def _probe_from_facts(path: str, facts: _InputFacts | None) -> VideoProbe | None:
    """A probe the batch can vouch for, or None: then the single-clip path decides.

    Vouched for: one mapped video stream, no rotation, at least 2 packets, sane dimensions,
    a frame rate, and a packet count that agrees with duration x fps (the duration is printed
    to 1/100 s). Anything else (stills, estimates, rotations, odd counts) is the single-clip
    path's, with ffprobe's full view.
    """
    if facts is None or facts.mapped is None or facts.duration is None:
        return None
    stream = facts.streams.get(facts.mapped)
    if stream is None or stream[0] != "Video" or facts.mapped in facts.rotated:
        return None
    _, codec, rest = stream
    packets = facts.packets.get(facts.mapped, 0)
    dims, rate = _DIMENSIONS.search(rest), _FPS.search(rest)
    if packets < 2 or dims is None or rate is None:
        return None
    width, height = int(dims[1]), int(dims[2])
    fps = float(rate[1]) * (1000 if rate[2] else 1)
    if not (2 <= width <= MAX_DIMENSION and 2 <= height <= MAX_DIMENSION) or fps <= 0:
        return None
    if abs(packets - facts.duration * fps) > 0.5 + 0.005 * fps:
        return None
    fps = _snap_rate(fps)
    return VideoProbe(
        path=path, duration=packets / fps, fps=fps, width=width, height=height,
        num_frames=packets, codec=codec, size_bytes=os.path.getsize(path),
        num_frames_exact=True, rotation=0, stream_index=facts.mapped, num_packets=packets,
        format_name=facts.format_name, container_frames=packets,
    )  # fmt: skip


def _suspect(stderr: bytes) -> bool:
    """An ffmpeg log that reports an error or damage somewhere (not attributable to an input)."""
    text = stderr.decode("utf-8", errors="replace")
    return bool(_LEVEL.search(text)) or _damage(stderr) is not None


def _scratch_dir() -> str | None:
    """Where a batch's raw frames go: memory when the machine has /dev/shm."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None


def _run_batch(cmd: list[str], timeout_s: float | None) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return None


def _probe_group(
    paths: list[str], members: list[int], out: list[VideoProbe | None], timeout_s: float | None
) -> None:
    """Demux the `members` in one ffmpeg (stream copy to null) and vouch for what it can.

    A run that fails or reports damage is split in two, or, when its fatal line names an
    input, run again without that input; a lone member is left to the single-clip path.
    """
    if len(members) < 2:
        return
    cmd = ["ffmpeg", "-hide_banner", "-nostdin", "-nostats", "-v", "level+verbose"]
    for i in members:
        cmd += ["-i", paths[i]]
    for k in range(len(members)):
        cmd += ["-map", f"{k}:V:0?"]
    cmd += ["-c", "copy", "-f", "null", "-"]
    result = _run_batch(cmd, timeout_s * len(members) if timeout_s else None)
    if result is None or result.returncode != 0 or _suspect(result.stderr):
        text = result.stderr.decode("utf-8", errors="replace") if result else ""
        named = [i for i in members if f"] {paths[i]}: " in text] if result else []
        if result is not None and result.returncode != 0 and named:
            _probe_group(paths, [i for i in members if i not in named], out, timeout_s)
        else:
            half = len(members) // 2
            _probe_group(paths, members[:half], out, timeout_s)
            _probe_group(paths, members[half:], out, timeout_s)
        return
    facts = _parse_demux_log(result.stderr.decode("utf-8", errors="replace"))
    for k, i in enumerate(members):
        out[i] = _probe_from_facts(paths[i], facts.get(k))


def _select_group(
    jobs: list[tuple[str, VideoProbe, list[int]]],
    members: list[int],
    out: list[np.ndarray | None],
    size: int,
    run: _FfmpegRun,
) -> None:
    """Decode each member's frames and count its decoded frames (as `_decode_and_count`) in
    one ffmpeg, two raw outputs per input; a run that fails is split until the bad file is
    alone. A member gets frames only when every sample came back and exactly the probe's
    count of frames decoded."""
    if not members:
        return
    with tempfile.TemporaryDirectory(prefix="crosstvr-decode-", dir=_scratch_dir()) as scratch:
        outputs = []
        for k, m in enumerate(members):
            path, probe, indices = jobs[m]
            outputs += _sample_and_count(path, probe, indices, size, run.threads,
                                         os.path.join(scratch, f"{k}.raw"),
                                         os.path.join(scratch, f"{k}.count"))
        compiled = ffmpeg.merge_outputs(*outputs).compile()
        cmd = [compiled[0], *_global_args(run.strict), *compiled[1:]]
        result = _run_batch(cmd, run.timeout_s * len(members) if run.timeout_s else None)
        failed = result is None or result.returncode != 0
        if failed or (run.strict and _damage(result.stderr)):
            if len(members) > 1:
                half = len(members) // 2
                for part in (members[:half], members[half:]):
                    _select_group(jobs, part, out, size, run)
            return
        frame_bytes = size * size * 3
        for k, m in enumerate(members):
            target, count = Path(scratch, f"{k}.raw"), Path(scratch, f"{k}.count")
            data = target.read_bytes() if target.is_file() else b""
            decoded = count.stat().st_size if count.is_file() else -1
            if len(data) == len(jobs[m][2]) * frame_bytes and decoded == jobs[m][1].num_frames:
                out[m] = np.frombuffer(data, dtype=np.uint8).reshape(-1, size, size, 3)


def _batchable(path: str) -> bool:
    """A file the batch may take: a name ffmpeg's log shows plainly, no bytes missing, not a
    format the single-clip path has its own failure for."""
    return not any(c in path for c in "\n\r'") and not _cut_short(path) and not (
        _is_animated_webp(path))


def decode_videos(
    paths: Sequence[str | Path],
    num_frames: int,
    size: int,
    *,
    sampling: Sampling = "uniform",
    seeds: Sequence[SeedLike] | None = None,
    strict: bool = True,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
    threads: int | None = None,
    seek_frames_per_sample: int | None = SEEK_FRAMES_PER_SAMPLE,
    min_decoded_fraction: float = DEFAULT_MIN_DECODED_FRACTION,
    allow_stills: bool = False,
    files_per_process: int = 16,
) -> list[DecodedVideo | VideoDecodeError]:
    """`decode_video` for many files, with two ffmpeg processes per `files_per_process` files.

    One process demuxes them all (stream copy to null: packet counts, streams, durations,
    rotations, demuxer damage), one decodes each vouched-for file's samples to its own output
    and counts its frames. The frames equal `decode_video`'s: the same filters on the same
    frame numbers. A file the
    batch cannot vouch for (see `_probe_from_facts`), and every file of a run that failed
    until the bad one is alone, goes through `decode_video`, so each failure keeps its own
    reason and message. Returns one `DecodedVideo` or `VideoDecodeError` per path, in order;
    `seeds` gives each file's "segment" seed.
    """
    _check_decode_args(num_frames, size, sampling, min_decoded_fraction)
    if files_per_process < 1:
        raise ValueError(f"files_per_process must be >= 1, got {files_per_process}")
    names = [str(Path(p).resolve()) for p in paths]
    seed_list = list(seeds) if seeds is not None else [None] * len(names)
    if len(seed_list) != len(names):
        raise ValueError(f"{len(seed_list)} seeds for {len(names)} paths")
    results: list[DecodedVideo | VideoDecodeError | None] = [None] * len(names)
    batchable = []
    for i, path in enumerate(paths):
        try:
            _check_readable_file(path)
        except VideoDecodeError as exc:
            results[i] = exc
            continue
        if files_per_process > 1 and _batchable(names[i]):
            batchable.append(i)
    for start in range(0, len(batchable), files_per_process):
        chunk = batchable[start:start + files_per_process]
        probes: list[VideoProbe | None] = [None] * len(names)
        _probe_group(names, chunk, probes, timeout_s)
        jobs, owners, samplers = [], [], []
        for i in chunk:
            probe = probes[i]
            long_clip = seek_frames_per_sample and probe and (
                probe.num_frames > seek_frames_per_sample * num_frames)
            if probe is None or long_clip:
                continue
            sampler = _Sampler(num_frames, sampling, seed_list[i])
            indices = sampler.indices(probe.num_frames)
            jobs.append((names[i], probe, indices))
            owners.append(i)
            samplers.append(sampler)
        decoded: list[np.ndarray | None] = [None] * len(jobs)
        _select_group(jobs, list(range(len(jobs))), decoded, size,
                      _FfmpegRun(strict, timeout_s, threads))
        for i, sampler, job, frames in zip(owners, samplers, jobs, decoded, strict=True):
            if frames is None:
                continue
            sampler.chose(job[1].num_frames)
            probe = dataclasses.replace(job[1], path=str(paths[i]))
            results[i] = _finish(frames, num_frames, probe, probe.num_frames, "")
    for i, path in enumerate(paths):
        if results[i] is None:
            try:
                results[i] = decode_video(
                    path, num_frames, size, sampling=sampling, seed=seed_list[i],
                    seek_frames_per_sample=seek_frames_per_sample,
                    min_decoded_fraction=min_decoded_fraction, allow_stills=allow_stills,
                    strict=strict, timeout_s=timeout_s, threads=threads,
                )  # fmt: skip
            except VideoDecodeError as exc:
                results[i] = exc
    return results  # type: ignore[return-value]


def file_content_hash(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """sha256 hex of the file's bytes, streamed: unchanged videos are skipped on re-index."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(chunk_bytes):
                digest.update(chunk)
    except FileNotFoundError:
        raise _fail(path, "does not exist", "missing") from None
    except OSError as exc:
        raise _fail(
            path, f"cannot be read for hashing ({exc.strerror or exc})", "unreadable"
        ) from None
    return digest.hexdigest()
