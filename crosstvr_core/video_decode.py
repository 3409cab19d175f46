"""Uniformly sampled, square RGB frames of one video, decoded in a single ffmpeg pass.

Decoding dominates indexing cost (tens of thousands of videos), so each video costs one
ffprobe and one ffmpeg process: a `select` filter keeps only the sampled frame numbers, and
only those are scaled (shorter side to `size`) and centre-cropped, inside ffmpeg. Damaged
files often decode "successfully" (exit 0, fewer frames, concealed artefacts), so ffmpeg runs
with `-xerror` and the number of frames that came back is checked against what was asked.
"""

from __future__ import annotations

import hashlib
import math
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ffmpeg
import numpy as np

MAX_DIMENSION = 16384
DEFAULT_TIMEOUT_S = 600.0
_STDERR_TAIL_LINES = 6
_LOG_CONTEXT = re.compile(r" @ 0x[0-9a-f]+\]")


class VideoDecodeError(RuntimeError):
    """A video that cannot be probed or decoded; the message names the file and the problem."""


@dataclass(frozen=True)
class VideoProbe:
    """What the decoder needs to know about a video's first real video stream.

    `width`/`height` are as displayed (swapped for a 90/270 degree rotation). `num_frames`
    is the container's frame count when it agrees with duration x fps
    (`num_frames_exact`), else round(duration x fps). `rotation` is the clockwise rotation
    (0/90/180/270) that ffmpeg would apply for display; `stream_index` is the absolute index
    of the stream in the file.
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


def _fail(path: str | Path, problem: str) -> VideoDecodeError:
    return VideoDecodeError(f"video '{path}': {problem}")


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
        raise _fail(path, "does not exist")
    if p.is_dir():
        raise _fail(path, "is a directory, not a video file")
    if not p.is_file():
        raise _fail(path, "is not a regular file")
    try:
        with open(p, "rb") as handle:
            handle.read(1)
    except PermissionError:
        raise _fail(path, "is not readable (permission denied)") from None
    except OSError as exc:
        raise _fail(path, f"cannot be read ({exc.strerror or exc})") from None
    size = p.stat().st_size
    if size == 0:
        raise _fail(path, "is empty (0 bytes)")
    return size


def probe_video(path: str | Path) -> VideoProbe:
    """Probe the first video stream (cover art excluded) and validate it is decodable."""
    size_bytes = _check_readable_file(path)
    try:
        info = ffmpeg.probe(str(Path(path).resolve()), v="error")
    except ffmpeg.Error as exc:
        raise _fail(path, f"not a readable media file ({_stderr_tail(exc.stderr, 2)})") from None
    streams = info.get("streams") or []
    videos = [
        s
        for s in streams
        if s.get("codec_type") == "video" and not (s.get("disposition") or {}).get("attached_pic")
    ]
    if not videos:
        kinds = sorted({str(s.get("codec_type")) for s in streams})
        if kinds == ["audio"]:
            raise _fail(path, "no video stream (audio only)")
        raise _fail(path, f"no video stream (streams: {', '.join(kinds) or 'none'})")
    stream = videos[0]
    rotation = _rotation(stream)
    width, height = int(stream.get("width") or 0), int(stream.get("height") or 0)
    if rotation in (90, 270):
        width, height = height, width
    if not (2 <= width <= MAX_DIMENSION and 2 <= height <= MAX_DIMENSION):
        raise _fail(path, f"absurd frame dimensions {width}x{height}")

    fps = _rate(stream.get("avg_frame_rate")) or _rate(stream.get("r_frame_rate"))
    duration = _positive_float(stream.get("duration")) or _positive_float(
        (info.get("format") or {}).get("duration")
    )
    counted = int(_positive_float(stream.get("nb_frames")))
    estimated = round(duration * fps) if duration and fps else 0
    # nb_frames counts stored samples: an edit list (e.g. a stream-copied cut) can hide many of
    # them, so it is trusted only when it agrees with the displayed duration.
    exact = counted > 0 and (
        not estimated or abs(counted - duration * fps) <= max(1.5, 0.01 * counted)
    )
    num_frames = counted if exact else estimated
    if num_frames < 1:
        raise _fail(
            path,
            f"zero frames (nb_frames={stream.get('nb_frames', 'n/a')}, "
            f"duration={duration:g}s, fps={fps:g})",
        )
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
    )


def uniform_frame_indices(num_available: int, num_frames: int) -> list[int]:
    """CLIP4Clip-style uniform sample: round(linspace(0, n - 1, F)); all frames when n < F."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if num_available < 0:
        raise ValueError(f"num_available must be >= 0, got {num_available}")
    if num_available <= num_frames:
        return list(range(num_available))
    return [int(i) for i in np.round(np.linspace(0, num_available - 1, num_frames))]


def _pad_slots(num_decoded: int, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Map F slots onto n < F decoded frames (nearest uniform position); repeats are masked."""
    if num_decoded >= num_frames:
        return np.arange(num_frames), np.ones(num_frames, dtype=bool)
    source = np.round(np.linspace(0, num_decoded - 1, num_frames)).astype(np.int64)
    mask = np.ones(num_frames, dtype=bool)
    mask[1:] = source[1:] != source[:-1]
    return source, mask


_ROTATE_FILTERS: dict[int, list[tuple[str, ...]]] = {
    90: [("transpose", "clock")],
    180: [("hflip",), ("vflip",)],
    270: [("transpose", "cclock")],
}


def _decode_indices(
    path: str | Path,
    probe: VideoProbe,
    indices: list[int],
    size: int,
    *,
    strict: bool,
    timeout_s: float | None,
    threads: int | None,
) -> np.ndarray:
    """One ffmpeg run: the frames numbered `indices` (display order), as [k, size, size, 3]."""
    input_args: dict[str, Any] = {"noautorotate": None}
    if threads is not None:
        input_args["threads"] = threads
    stream = ffmpeg.input(str(Path(path).resolve()), **input_args)[str(probe.stream_index)]
    # ffmpeg-python escapes the commas itself; frame numbers are in display order.
    stream = stream.filter("select", "+".join(f"eq(n,{i})" for i in indices))
    # Shorter displayed side -> size, aspect kept (sample aspect ratio included), then crop.
    stream = stream.filter(
        "scale",
        w=f"max({size},round({size}*dar))",
        h=f"max({size},round({size}/dar))",
        flags="bicubic",
    )
    stream = stream.filter("crop", size, size)
    # Rotation is applied after the crop, so only the kept size x size frames are turned.
    for spec in _ROTATE_FILTERS.get(probe.rotation, []):
        stream = stream.filter(*spec)
    out = stream.output(
        "pipe:",
        format="rawvideo",
        pix_fmt="rgb24",
        fps_mode="passthrough",
        **{"frames:v": len(indices)},
    )
    global_args = ["-hide_banner", "-nostdin", "-v", "error"] + (["-xerror"] if strict else [])
    compiled = out.compile()
    cmd = [compiled[0], *global_args, *compiled[1:]]
    try:
        result = subprocess.run(cmd, capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise _fail(path, f"ffmpeg timed out after {timeout_s:g}s") from None
    if result.returncode != 0:
        raise _fail(
            path,
            f"ffmpeg failed (exit {result.returncode}), corrupt or unsupported: "
            f"{_stderr_tail(result.stderr)}",
        )
    frame_bytes = size * size * 3
    if len(result.stdout) % frame_bytes:
        raise _fail(path, f"ffmpeg returned a partial frame ({len(result.stdout)} bytes)")
    return np.frombuffer(result.stdout, dtype=np.uint8).reshape(-1, size, size, 3)


def decode_uniform_frames(
    path: str | Path,
    num_frames: int,
    size: int,
    probe: VideoProbe | None = None,
    *,
    strict: bool = True,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
    threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray, VideoProbe]:
    """F uniformly sampled frames, uint8 [F, size, size, 3] RGB, a validity mask [F], the probe.

    Clips with fewer than F frames are padded by repeating the nearest frame (mask False).
    `strict` runs ffmpeg with -xerror (any decode error fails the video); `threads` is
    ffmpeg's decoder thread count (None: ffmpeg's default, all cores).
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if probe is None:
        probe = probe_video(path)
    else:
        _check_readable_file(path)

    def decode(indices: list[int]) -> np.ndarray:
        return _decode_indices(
            path, probe, indices, size, strict=strict, timeout_s=timeout_s, threads=threads
        )

    indices = uniform_frame_indices(probe.num_frames, num_frames)
    frames = decode(indices)
    got = len(frames)
    if got == 0:
        raise _fail(path, f"no frames decoded (expected {len(indices)} of {probe.num_frames})")
    if got < len(indices):
        if probe.num_frames_exact:
            raise _fail(
                path,
                f"truncated or corrupt: got {got} of {len(indices)} frames "
                f"(frame count {probe.num_frames} from the container)",
            )
        # The frame count was an estimate and too high: the clip really has between
        # indices[got-1]+1 and indices[got] frames. One missing tail slot is padded like a short
        # clip; otherwise resample uniformly over the frames known to exist.
        available = indices[got - 1] + 1
        if got < len(indices) - 1:
            retry = uniform_frame_indices(available, num_frames)
            position = {index: k for k, index in enumerate(indices[:got])}
            if all(index in position for index in retry):
                frames = frames[[position[index] for index in retry]]
            else:
                frames = decode(retry)
                if len(frames) < len(retry):
                    raise _fail(
                        path,
                        f"truncated or corrupt: got {len(frames)} of {len(retry)} frames "
                        f"on a second pass (estimated frame count {probe.num_frames})",
                    )
    source, mask = _pad_slots(len(frames), num_frames)
    return np.ascontiguousarray(frames[source]), mask, probe


def file_content_hash(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """sha256 hex of the file's bytes, streamed: unchanged videos are skipped on re-index."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(chunk_bytes):
                digest.update(chunk)
    except OSError as exc:
        raise _fail(path, f"cannot be read for hashing ({exc.strerror or exc})") from None
    return digest.hexdigest()
