"""Frames of a generated scene (numpy) and their encoding to real mp4 (ffmpeg, libx264).

Speed matters (thousands of clips per benchmark): frames are painted with numpy slices over
all the frames an object is visible in at once, and one ffmpeg process encodes a whole batch
of clips. A process start costs more than encoding a small clip (~70 ms of CPU for Debian's
ffmpeg), so the batch is piped as one raw stream with a keyframe at every clip start and cut
into one mp4 per clip by the segment muxer; each file decodes on its own like any mp4.
"""

from __future__ import annotations

import functools
import itertools
import os
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import ffmpeg
import numpy as np
from PIL import Image, ImageDraw

from crosstvr_core.synthetic.scenes import (
    BACKGROUNDS,
    COLOURS,
    DIRECTIONS,
    SIZES,
    VideoSpec,
    band_centre,
    region_centre,
)

X264_OPTIONS = {"preset": "ultrafast", "crf": 18, "pix_fmt": "yuv420p"}


@functools.lru_cache(maxsize=128)
def shape_mask(shape: str, size: int) -> np.ndarray:
    """Binary [size, size] mask of a shape (no anti-aliasing: colours stay pure)."""
    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    last = size - 1
    bar = max(1, round(size * 0.4))
    if shape == "circle":
        draw.ellipse([0, 0, last, last], fill=255)
    elif shape == "ring":
        draw.ellipse([0, 0, last, last], fill=255)
        inset = max(2, round(size * 0.28))
        draw.ellipse([inset, inset, last - inset, last - inset], fill=0)
    elif shape == "square":
        inset = max(1, size // 10)
        draw.rectangle([inset, inset, last - inset, last - inset], fill=255)
    elif shape == "triangle":
        draw.polygon([(last / 2, 0), (0, last), (last, last)], fill=255)
    elif shape == "diamond":
        draw.polygon([(last / 2, 0), (last, last / 2), (last / 2, last), (0, last / 2)], fill=255)
    elif shape == "cross":
        lo = (size - bar) // 2
        draw.rectangle([lo, 0, lo + bar - 1, last], fill=255)
        draw.rectangle([0, lo, last, lo + bar - 1], fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    mask = np.asarray(img) > 127
    mask.setflags(write=False)
    return mask


def background(spec: VideoSpec, size: int) -> np.ndarray:
    """[size, size, 3] uint8: the named grey level, a seeded tint and gradient, static noise."""
    rng = np.random.default_rng([spec.seed, 7])
    low, high = BACKGROUNDS[spec.background]
    level = rng.uniform(low, high) + rng.uniform(-8, 8, size=3)  # [3]
    ramp = np.linspace(-1.0, 1.0, size, dtype=np.float32) * rng.uniform(-12, 12)
    ramp = ramp[:, None] if rng.integers(2) else ramp[None, :]  # [size, 1] or [1, size]
    noise = rng.normal(0.0, 2.5, size=(size, size, 1)).astype(np.float32)
    image = level.astype(np.float32) + (ramp[..., None] + noise)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _origin(frac: float, frame_size: int, side: int, jitter: int) -> int:
    """Top-left coordinate that centres an object of `side` px at `frac` of the frame."""
    return int(np.clip(round(frac * frame_size - side / 2) + jitter, 0, frame_size - side))


def render_frames(spec: VideoSpec, frame_size: int = 64, num_frames: int = 16) -> np.ndarray:
    """The clip of `spec` as uint8 [T, H, W, 3] RGB.

    Motion: the mover's track is one increasing ramp, reversed for the opposite direction,
    so a direction reversal gives exactly the reversed frames. Events: the first half shows
    the phase-one state, the last half the phase-two state (an odd clip keeps a middle frame
    with the still objects only), so an order swap gives exactly the same frame multiset.
    Each object gets a small seeded jitter, shared by the members of a test cube.
    """
    if frame_size < 16 or frame_size % 2:
        raise ValueError(f"{spec.video_id}: frame_size must be even and >= 16, got {frame_size}")
    if num_frames < 2:
        raise ValueError(f"{spec.video_id}: num_frames must be >= 2, got {num_frames}")
    frames = np.repeat(background(spec, frame_size)[None], num_frames, axis=0)
    rng = np.random.default_rng([spec.seed, 11])
    reach = max(1, frame_size // 32)
    jitters = rng.integers(-reach, reach + 1, size=(len(spec.objects), 2))
    half = num_frames // 2
    first, second = slice(0, half), slice(num_frames - half, num_frames)
    # Stills first, so that a moving or changing object is drawn over them.
    for index in sorted(range(len(spec.objects)), key=lambda i: spec.objects[i].role != "still"):
        obj = spec.objects[index]
        side = max(4, round(SIZES[obj.size] * frame_size))
        mask = shape_mask(obj.shape, side)
        jx, jy = (int(j) for j in jitters[index])
        if obj.role == "mover":
            axis, sign = DIRECTIONS[obj.direction]
            track = np.round(np.linspace(0, frame_size - side, num_frames)).astype(int)
            if sign < 0:
                track = track[::-1]
            across = _origin(band_centre(obj.place), frame_size, side, jy if axis == "x" else jx)
            for t, along in enumerate(track):
                x, y = (int(along), across) if axis == "x" else (across, int(along))
                frames[t, y : y + side, x : x + side][mask] = COLOURS[obj.colour]
            continue
        fx, fy = region_centre(obj.place)
        x, y = _origin(fx, frame_size, side, jx), _origin(fy, frame_size, side, jy)
        paint = {
            "still": ((slice(0, num_frames), obj.colour),),
            "leaves": ((first, obj.colour),),
            "arrives": ((second, obj.colour),),
            "changes": ((first, obj.colour), (second, obj.colour_after)),
        }[obj.role]
        for frame_range, colour in paint:
            frames[frame_range, y : y + side, x : x + side][:, mask] = COLOURS[colour]
    return frames


# --------------------------------------------------------------------------- mp4


def _check_frames(frames: np.ndarray, where: str) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"{where}: frames must be uint8 [T, H, W, 3], got {frames.dtype} "
                         f"{frames.shape}")
    t, h, w, _ = frames.shape
    if t < 1 or h % 2 or w % 2:
        raise ValueError(f"{where}: need >= 1 frame and even H, W; got {frames.shape}")
    return np.ascontiguousarray(frames)


def _ffmpeg_failed(where: str, stderr: bytes) -> RuntimeError:
    tail = stderr.decode(errors="replace")[-2000:].strip()
    return RuntimeError(f"ffmpeg failed to encode {where}: {tail}")


def encode_clips(clips: Iterable[np.ndarray], paths: Sequence[str | Path], fps: int) -> None:
    """Encode same-shaped uint8 [T, H, W, 3] RGB clips to H.264 yuv420p mp4s, one ffmpeg run.

    `clips` may be a generator (clips are streamed, not held). Each clip starts on a keyframe
    and the segment muxer cuts the stream there; files appear at `paths` only when complete.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        return
    if fps < 1:
        raise ValueError(f"encode_clips({paths[0]}): fps must be >= 1, got {fps}")
    clip_iter = iter(clips)
    first = _check_frames(next(clip_iter), f"encode_clips({paths[0]})")
    t, h, w, _ = first.shape
    for parent in {p.parent for p in paths}:
        parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=".encode-", dir=paths[0].parent))
    segment_frames = ",".join(str(t * i) for i in range(1, len(paths)))
    output = {
        "vcodec": "libx264", **X264_OPTIONS, "threads": 1, "g": t, "keyint_min": t,
        "sc_threshold": 0, "force_key_frames": f"expr:eq(mod(n,{t}),0)", "f": "segment",
        "reset_timestamps": 1, "segment_format": "mp4",
        "segment_format_options": "movflags=+faststart", "loglevel": "error",
    }
    if segment_frames:
        output["segment_frames"] = segment_frames
    args = (
        ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{w}x{h}", framerate=fps)
        .output(str(workdir / "clip%06d.mp4"), **output)
        .compile()
    )
    try:
        with tempfile.TemporaryFile() as stderr:
            try:
                proc = subprocess.Popen(args, stdin=subprocess.PIPE, stderr=stderr)
            except FileNotFoundError as exc:
                raise RuntimeError(
                    f"cannot encode {paths[0]}: the ffmpeg binary is not on PATH"
                ) from exc
            written = 0
            try:
                for frames in itertools.chain([first], clip_iter):
                    where = f"encode_clips({paths[min(written, len(paths) - 1)]})"
                    frames = _check_frames(frames, where)
                    if frames.shape != first.shape:
                        raise ValueError(f"{where}: clip shape {frames.shape} differs from the "
                                         f"batch's {first.shape}")
                    if written == len(paths):
                        raise ValueError(f"{where}: more clips than the {len(paths)} paths")
                    proc.stdin.write(frames.tobytes())
                    written += 1
            except BrokenPipeError:
                pass  # ffmpeg stopped early; its stderr says why
            finally:
                proc.stdin.close()
                code = proc.wait()
            stderr.seek(0)
            if code != 0:
                raise _ffmpeg_failed(str(paths[0]), stderr.read())
        if written != len(paths):
            raise ValueError(f"encode_clips({paths[0]}): got {written} clips for {len(paths)} "
                             "paths")
        segments = sorted(workdir.glob("clip*.mp4"))
        if len(segments) != len(paths):
            raise RuntimeError(f"encode_clips({paths[0]}): ffmpeg wrote {len(segments)} files "
                               f"for {len(paths)} clips")
        for segment, path in zip(segments, paths, strict=True):
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(segment, path)
    finally:
        for leftover in workdir.glob("*"):
            leftover.unlink(missing_ok=True)
        workdir.rmdir()


def encode_mp4(frames: np.ndarray, path: str | Path, fps: int) -> None:
    """Encode one uint8 [T, H, W, 3] RGB clip to an H.264 yuv420p mp4 at `path`, atomically."""
    path = Path(path)
    frames = _check_frames(frames, f"encode_mp4({path})")
    path.parent.mkdir(parents=True, exist_ok=True)
    encode_clips([frames], [path], fps)
