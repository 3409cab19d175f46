"""Tiny generated test clips (ffmpeg lavfi sources), so no binary video is ever committed.

Other tests import these helpers: `make_clip` renders one clip, `CODEC_MATRIX` names the
container/codec pairs the decoder must read, and `make_*` build the edge cases (variable frame
rate, rotation, truncation, garbled bytes, audio only, absurd dimensions, container counts above
what decodes, animated and still pictures).
"""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import numpy as np

HAVE_FFMPEG = shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None


def ramp_source(size: str = "64x48", rate: int = 10, duration: float = 2, step: int = 10) -> str:
    """A grey clip whose brightness rises by `step` luma levels per frame (frame n: 16+n*step)."""
    return (
        f"color=c=black:s={size}:r={rate}:d={duration},"
        f"geq=lum='16+N*{step}':cb=128:cr=128"
    )


def ramp_frame_numbers(frames: np.ndarray, step: int = 10) -> np.ndarray:
    """Invert `ramp_source`: the source frame number of each decoded RGB frame [F, H, W, 3].

    Limited-range luma 16 + n*step becomes full-range grey n*step*255/219 after RGB conversion.
    """
    means = frames.reshape(len(frames), -1).mean(axis=1)
    return np.round(means * 219 / 255 / step).astype(int)


def ffmpeg_cli(*args: str) -> bytes:
    """Run the ffmpeg CLI quietly; its stdout."""
    cmd = ["ffmpeg", "-v", "error", "-nostdin", "-y", *args]
    return subprocess.run(cmd, check=True, capture_output=True).stdout


def make_clip(path: Path, source: str, *args: str, pix_fmt: str | None = "yuv420p") -> Path:
    """Render a lavfi source to `path` (pix_fmt None: keep the encoder's own, or no video)."""
    fmt = ("-pix_fmt", pix_fmt) if pix_fmt else ()
    ffmpeg_cli("-f", "lavfi", "-i", source, *args, *fmt, str(path))
    return path


#: name -> (file suffix, encoder arguments, ffprobe codec name, pixel format or None).
CODEC_MATRIX: dict[str, tuple[str, tuple[str, ...], str, str | None]] = {
    "mp4_h264": (".mp4", ("-c:v", "libx264"), "h264", "yuv420p"),
    "avi_mpeg4": (".avi", ("-c:v", "mpeg4", "-q:v", "2"), "mpeg4", "yuv420p"),
    "mpg_mpeg1": (".mpg", ("-c:v", "mpeg1video", "-q:v", "2"), "mpeg1video", "yuv420p"),
    "mpg_mpeg2": (".mpg", ("-c:v", "mpeg2video", "-q:v", "2"), "mpeg2video", "yuv420p"),
    "mov_mjpeg": (".mov", ("-c:v", "mjpeg", "-q:v", "2"), "mjpeg", "yuvj420p"),
    "webm_vp9": (
        ".webm",
        ("-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-crf", "20", "-b:v", "0"),
        "vp9",
        "yuv420p",
    ),
    "ogv_theora": (".ogv", ("-c:v", "libtheora", "-q:v", "9"), "theora", "yuv420p"),
    "mkv_h264": (".mkv", ("-c:v", "libx264"), "h264", "yuv420p"),
    "mkv_ffv1": (".mkv", ("-c:v", "ffv1"), "ffv1", "yuv420p"),
}


def available_encoders() -> set[str]:
    """The encoder names this machine's ffmpeg was built with."""
    listing = subprocess.run(
        ["ffmpeg", "-hide_banner", "-encoders"], capture_output=True, text=True, check=True
    ).stdout
    rows = [line.split() for line in listing.split("------", 1)[-1].splitlines()]
    return {row[1] for row in rows if len(row) >= 2}


def make_matrix_clip(directory: Path, name: str, source: str) -> Path:
    suffix, args, _, pix_fmt = CODEC_MATRIX[name]
    return make_clip(directory / f"{name}{suffix}", source, *args, pix_fmt=pix_fmt)


def make_vfr_clip(path: Path, rate: int = 25, seconds: float = 4) -> Path:
    """Variable frame rate: every frame for the first 20, then every 4th (gaps of 4 frame times)."""
    keep = "select='lt(n\\,20)+not(mod(n\\,4))'"
    source = ramp_source(rate=rate, duration=seconds, step=2)
    return make_clip(path, source, "-vf", keep, "-fps_mode", "vfr", "-c:v", "libx264")


def make_rotated_clip(src: Path, dst: Path, degrees: int) -> Path:
    """Stream copy with a display-rotation tag (ffmpeg 5.1 writes it as a display matrix)."""
    ffmpeg_cli("-i", str(src), "-c", "copy", "-metadata:s:v:0", f"rotate={degrees}", str(dst))
    return dst


def make_truncated(src: Path, dst: Path, keep: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


def make_garbled(src: Path, dst: Path, num_bytes: int = 2000, seed: int = 0) -> Path:
    """Overwrite `num_bytes` in the middle of the file with random bytes."""
    data = bytearray(src.read_bytes())
    middle = len(data) // 2
    rng = random.Random(seed)
    data[middle : middle + num_bytes] = bytes(rng.getrandbits(8) for _ in range(num_bytes))
    dst.write_bytes(bytes(data))
    return dst


def make_y4m(path: Path, width: int, height: int, frames: int = 2) -> Path:
    """A raw greyscale y4m file with any header dimensions (encoders refuse absurd sizes)."""
    header = f"YUV4MPEG2 W{width} H{height} F10:1 Ip A1:1 Cmono\n".encode()
    path.write_bytes(header + (b"FRAME\n" + bytes(width * height)) * frames)
    return path


# --- files whose container count is a hint, and pictures -----------------------------------


def make_edit_list_cut(src: Path, dst: Path, rate: int) -> Path:
    """Stream-copy `src` from one frame time in: the mp4's edit list hides the first frame, so
    the container lists every stored frame (nb_frames N) and N - 1 decode (source 1..N-1)."""
    ffmpeg_cli("-ss", f"{1 / rate:.6f}", "-i", str(src), "-c", "copy", str(dst))
    return dst


def make_raw_h264_mp4(path: Path, source: str) -> Path:
    """H.264 with 3 B-frames muxed from a raw elementary stream (no timestamps): the mp4
    lists every packet, and two fewer frames decode."""
    raw = path.with_suffix(".h264")
    make_clip(raw, source, "-c:v", "libx264", "-bf", "3", "-f", "h264")
    ffmpeg_cli("-r", "25", "-i", str(raw), "-c", "copy", str(path))
    raw.unlink()
    return path


def make_avi_with_dropped_frame(path: Path, source: str, drop: int) -> Path:
    """MPEG-4 in AVI with source frame `drop` left out: the muxer writes an empty chunk in its
    place, so the index lists one frame more than decodes."""
    keep = f"select='not(eq(n\\,{drop}))'"
    return make_clip(path, source, "-vf", keep, "-fps_mode", "passthrough", "-c:v", "mpeg4",
                     "-q:v", "2")


def make_xvid_avi(path: Path, frames: int = 209) -> Path:
    """libxvid with packed B-frames in AVI (needs the libxvid encoder): on this testsrc the
    index lists 209 frames and 208 decode."""
    return make_clip(path, "testsrc=size=64x64:rate=25", "-frames:v", str(frames),
                     "-c:v", "libxvid", "-bf", "1")


def make_animation(path: Path, source: str) -> Path:
    """An animated picture file by extension: .gif, .apng (or .png: an APNG named .png), .webp
    (libwebp_anim)."""
    suffix = path.suffix.lower()
    if suffix == ".gif":
        return make_clip(path, source, pix_fmt=None)
    if suffix in (".apng", ".png"):
        return make_clip(path, source, "-plays", "0", "-f", "apng", pix_fmt=None)
    if suffix == ".webp":
        return make_clip(path, source, "-c:v", "libwebp_anim", "-loop", "0", pix_fmt=None)
    raise ValueError(f"no animation format for {path.name}")


def make_still(path: Path, source: str, codec: str | None = None) -> Path:
    """One picture (the source's first frame), by `path`'s extension, or encoded with `codec`
    (png, mjpeg, ...) whatever the name: a still named like a video."""
    forced = ("-c:v", codec, "-f", "image2", "-update", "1") if codec else ()
    return make_clip(path, source, "-frames:v", "1", *forced, pix_fmt=None)
