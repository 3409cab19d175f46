"""Sampled, square RGB frames of one video, decoded in a single ffmpeg pass.

Decoding dominates indexing cost (tens of thousands of videos), so each video costs one
ffprobe and one ffmpeg process: a `select` filter keeps only the sampled frame numbers, and
only those are scaled (shorter side to `size`) and centre-cropped, inside ffmpeg. Frames are
sampled uniformly (evaluation, indexing) or one at random per segment (training augmentation).
Damaged files often decode "successfully" (exit 0, fewer frames, concealed artefacts), so
ffmpeg runs with `-xerror` and the number of frames that came back is checked against what was
asked. Every failure is a `VideoDecodeError` with a short machine-readable `reason`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import subprocess
from dataclasses import dataclass
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
    (`num_frames_exact`), else round(duration x fps). `rotation` is the clockwise rotation
    (0/90/180/270) that ffmpeg would apply for display; `stream_index` is the absolute index
    of the stream in the file. `damage` is the demuxer's first report of a cut or damaged file
    (`damage_reason` "truncated" or "corrupt"); strict decoding refuses such a file.
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
        raise _fail(path, f"absurd frame dimensions {width}x{height}", "absurd_dimensions")

    fps = _rate(stream.get("avg_frame_rate")) or _rate(stream.get("r_frame_rate"))
    duration = _positive_float(stream.get("duration")) or _positive_float(
        (info.get("format") or {}).get("duration")
    )
    counted = int(_positive_float(stream.get("nb_frames")))
    packets = int(_positive_float(stream.get("nb_read_packets")))
    if counted and "nb_read_packets" in stream and packets < counted:
        raise _fail(
            path,
            f"truncated: the container indexes {counted} frames but only {packets} are in the file",
            "truncated",
        )
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


def _run_ffmpeg(
    path: str | Path,
    out: Any,
    size: int,
    *,
    strict: bool,
    timeout_s: float | None,
) -> np.ndarray:
    """Run a compiled ffmpeg-python graph that writes rgb24 frames to stdout: [k, size, size, 3]."""
    global_args = ["-hide_banner", "-nostdin", "-v", "error"] + (["-xerror"] if strict else [])
    compiled = out.compile()
    cmd = [compiled[0], *global_args, *compiled[1:]]
    try:
        result = subprocess.run(cmd, capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise _fail(path, f"ffmpeg timed out after {timeout_s:g}s", "timeout") from None
    if result.returncode != 0:
        detail = _stderr_tail(result.stderr)
        failed = f"ffmpeg failed (exit {result.returncode})"
        if _iso_bmff_cut_short(path):
            raise _fail(path, f"truncated: the file ends inside a box; {failed}: {detail}", "truncated")
        if b"partial file" in (result.stderr or b""):
            raise _fail(path, f"truncated: {failed} at the end of the file: {detail}", "truncated")
        damaged = any(
            marker in (result.stderr or b"")
            for marker in (b"corrupt", b"Invalid", b"error while decoding", b"concealing")
        )
        raise _fail(
            path,
            f"{failed}, corrupt or unsupported: {detail}",
            "corrupt" if damaged else "decode_failed",
        )
    damage = _damage(result.stderr) if strict else None
    if damage:
        raise _fail(path, f"{damage[0]}: {damage[1]}", damage[0])
    frame_bytes = size * size * 3
    if len(result.stdout) % frame_bytes:
        raise _fail(
            path, f"ffmpeg returned a partial frame ({len(result.stdout)} bytes)", "decode_failed"
        )
    return np.frombuffer(result.stdout, dtype=np.uint8).reshape(-1, size, size, 3)


def _input_args(threads: int | None, **extra: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"noautorotate": None, **extra}
    if threads is not None:
        args["threads"] = threads
    return args


def _raw_output(stream: Any, num_frames: int) -> Any:
    return stream.output(
        "pipe:",
        format="rawvideo",
        pix_fmt="rgb24",
        fps_mode="passthrough",
        **{"frames:v": num_frames},
    )


def _decode_by_select(
    path: str | Path,
    probe: VideoProbe,
    indices: list[int],
    size: int,
    *,
    strict: bool,
    timeout_s: float | None,
    threads: int | None,
) -> np.ndarray:
    """One pass over the whole file; `select` keeps frames numbered `indices` (display order)."""
    stream = ffmpeg.input(str(Path(path).resolve()), **_input_args(threads))
    stream = stream[str(probe.stream_index)]
    # ffmpeg-python escapes the commas itself; frame numbers are in display order.
    stream = stream.filter("select", "+".join(f"eq(n,{i})" for i in indices))
    out = _raw_output(_square_crop(stream, size, probe.rotation), len(indices))
    return _run_ffmpeg(path, out, size, strict=strict, timeout_s=timeout_s)


def _decode_by_seeking(
    path: str | Path,
    probe: VideoProbe,
    indices: list[int],
    size: int,
    *,
    strict: bool,
    timeout_s: float | None,
    threads: int | None,
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
            **_input_args(threads, ss=f"{start:.6f}", t=f"{2 * frame_time:.6f}"),
        )[str(probe.stream_index)]
        stream = stream.filter("trim", end_frame=1).filter("setpts", "PTS-STARTPTS")
        parts.append(_square_crop(stream, size, probe.rotation).filter("setsar", 1))
    joined = ffmpeg.concat(*parts, v=1, a=0) if len(parts) > 1 else parts[0]
    out = _raw_output(joined, len(indices))
    return _run_ffmpeg(path, out, size, strict=strict, timeout_s=timeout_s)


# --- public decode ----------------------------------------------------------------------------

#: Seek per sampled frame once a clip has more frames per sample than this. 250 is the default
#: keyframe interval of x264/x265/libvpx, so a seek then decodes at most about one GOP per
#: sample, never more than the single pass would. Measured in benchmarks/bench_decode.py.
SEEK_FRAMES_PER_SAMPLE = 250


def decode_frames(
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
) -> tuple[np.ndarray, np.ndarray, VideoProbe]:
    """F sampled frames, uint8 [F, size, size, 3] RGB, a validity mask [F], and the probe.

    `sampling` "uniform" spreads F frames evenly; "segment" takes one random frame from each of
    F equal segments (training augmentation; `seed` makes it reproducible). Clips with fewer
    than F frames are padded by repeating the nearest frame (mask False). `strict` runs ffmpeg
    with -xerror (any decode error fails the video); `threads` is ffmpeg's decoder thread count
    (None: ffmpeg's default, all cores). Clips longer than `seek_frames_per_sample` x F frames
    seek to each sample instead of decoding everything (None: never seek).
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if sampling not in ("uniform", "segment"):
        raise ValueError(f"sampling must be 'uniform' or 'segment', got {sampling!r}")
    if probe is None:
        probe = probe_video(path)
    else:
        _check_readable_file(path)
    if strict and probe.damage:
        raise _fail(path, f"{probe.damage_reason}: {probe.damage}", probe.damage_reason)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    def choose(num_available: int) -> list[int]:
        return sample_frame_indices(num_available, num_frames, sampling, rng)

    def decode(indices: list[int]) -> np.ndarray:
        kwargs = {"strict": strict, "timeout_s": timeout_s, "threads": threads}
        return _decode_by_select(path, probe, indices, size, **kwargs)

    indices = choose(probe.num_frames)
    frames = None
    long_clip = seek_frames_per_sample and probe.num_frames > seek_frames_per_sample * num_frames
    if long_clip and probe.fps > 0:
        seeking = _decode_by_seeking(
            path, probe, indices, size, strict=strict, timeout_s=timeout_s, threads=threads
        )
        # A seek that found nothing (e.g. a frame count that was only an estimate) falls back
        # to the single pass, whose frame-count checks below classify the problem.
        frames = seeking if len(seeking) == len(indices) else None
    if frames is None:
        frames = decode(indices)
    got = len(frames)
    if got == 0:
        raise _fail(
            path, f"no frames decoded (expected {len(indices)} of {probe.num_frames})", "no_frames"
        )
    if got < len(indices):
        if probe.num_frames_exact:
            raise _fail(
                path,
                f"truncated or corrupt: got {got} of {len(indices)} frames "
                f"(frame count {probe.num_frames} from the container)",
                "truncated",
            )
        # The frame count was an estimate and too high: the clip really has between
        # indices[got-1]+1 and indices[got] frames. One missing tail slot is padded like a short
        # clip; otherwise resample over the frames known to exist.
        available = indices[got - 1] + 1
        if got < len(indices) - 1:
            retry = choose(available)
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
                        "truncated",
                    )
    source, mask = _pad_slots(len(frames), num_frames)
    return np.ascontiguousarray(frames[source]), mask, probe


def decode_uniform_frames(
    path: str | Path,
    num_frames: int,
    size: int,
    probe: VideoProbe | None = None,
    *,
    strict: bool = True,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
    threads: int | None = None,
    seek_frames_per_sample: int | None = SEEK_FRAMES_PER_SAMPLE,
) -> tuple[np.ndarray, np.ndarray, VideoProbe]:
    """F uniformly sampled frames (indexing, evaluation); see `decode_frames`."""
    return decode_frames(
        path,
        num_frames,
        size,
        probe,
        sampling="uniform",
        strict=strict,
        timeout_s=timeout_s,
        threads=threads,
        seek_frames_per_sample=seek_frames_per_sample,
    )


def decode_segment_frames(
    path: str | Path,
    num_frames: int,
    size: int,
    seed: SeedLike,
    probe: VideoProbe | None = None,
    *,
    strict: bool = True,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
    threads: int | None = None,
    seek_frames_per_sample: int | None = SEEK_FRAMES_PER_SAMPLE,
) -> tuple[np.ndarray, np.ndarray, VideoProbe]:
    """One random frame from each of F equal segments (training augmentation); see `decode_frames`."""
    return decode_frames(
        path,
        num_frames,
        size,
        probe,
        sampling="segment",
        seed=seed,
        strict=strict,
        timeout_s=timeout_s,
        threads=threads,
        seek_frames_per_sample=seek_frames_per_sample,
    )


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
