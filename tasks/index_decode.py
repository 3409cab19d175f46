"""The index step's decode stage: hash, skip unchanged files, decode the rest (Ray tasks).

Kept apart from `tasks.index` so a Ray worker that runs decode tasks imports only numpy and
`crosstvr_core.data.video_decode` (about 0.2 s of CPU), not torch, open_clip, Prefect and LanceDB
(about 10 s per worker process, which on a 2-core machine was most of a 600-clip index run).
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from crosstvr_core.data.video_decode import VideoDecodeError, decode_videos, file_content_hash


def _segment_seed(seed: int, video_id: str) -> int:
    """A per-video seed that does not depend on the order videos are processed in."""
    return int.from_bytes(hashlib.sha256(f"{seed}|{video_id}".encode()).digest()[:8], "little")


def _groups(items: list[int], parts: int) -> list[list[int]]:
    """`items` in at most `parts` contiguous, near-equal groups (none empty)."""
    parts = max(1, min(parts, len(items)))
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for k in range(parts):
        end = start + size + (k < extra)
        out.append(items[start:end])
        start = end
    return [g for g in out if g]


def decode_batch(batch: dict[str, np.ndarray], num_frames: int, size: int,
                 threads: int = 1, method: str = "uniform", seed: int = 0,
                 files_per_process: int = 16, min_decoded_fraction: float = 0.9,
                 allow_stills: bool = False) -> dict:
    """Stateless Ray task: hash, skip if unchanged, else decode F frames per video.

    The files to decode are split into at most `threads` groups decoded at once, none
    smaller than `files_per_process` files unless there are fewer; each group is probed and
    decoded `files_per_process` files per ffmpeg process (video_decode.decode_videos), so the
    task's Python threads only wait on pipes. A bad file never raises:
    its row comes back with status "failed", the error and its reason; a tolerated oddity
    (fewer frames than the container lists) comes back as `decode_warning`.
    """
    n = len(batch["video_id"])
    rows = [{"status": "ok", "error": "", "error_reason": "", "decode_warning": "",
             "content_hash": "", "probe": None, "frames": None, "mask": None}
            for _ in range(n)]
    todo = []
    for i in range(n):
        path = str(batch["path"][i])
        try:
            rows[i]["content_hash"] = file_content_hash(path)
        except VideoDecodeError as exc:
            rows[i].update(status="failed", error=str(exc), error_reason=exc.reason)
            continue
        except OSError as exc:  # the hash could not read the file
            rows[i].update(status="failed", error=f"{path}: {exc}", error_reason="unreadable")
            continue
        if rows[i]["content_hash"] == str(batch["known_hash"][i]):
            rows[i]["status"] = "skip"
        else:
            todo.append(i)

    def decode(group: list[int]) -> list:
        return decode_videos(
            [str(batch["path"][i]) for i in group], num_frames, size, sampling=method,
            seeds=[_segment_seed(seed, str(batch["video_id"][i])) if method == "segment"
                   else None for i in group],
            threads=1, files_per_process=files_per_process,
            min_decoded_fraction=min_decoded_fraction, allow_stills=allow_stills,
        )

    # a group per `threads`, but never a group smaller than a process's worth of files:
    # each group costs two ffmpeg start-ups however few files it holds
    groups = _groups(todo, min(threads, -(-len(todo) // files_per_process)))
    if len(groups) > 1:
        with ThreadPoolExecutor(len(groups)) as pool:
            results = list(pool.map(decode, groups))
    else:
        results = [decode(g) for g in groups]
    for group, decoded in zip(groups, results, strict=True):
        for i, result in zip(group, decoded, strict=True):
            if isinstance(result, VideoDecodeError):
                rows[i].update(status="failed", error=str(result), error_reason=result.reason)
            else:
                rows[i].update(frames=result.frames, mask=result.mask, probe=result.probe,
                               decode_warning=result.warning)
    out = {k: batch[k] for k in ("video_id", "path", "split")}
    frames = np.zeros((n, num_frames, size, size, 3), np.uint8)
    masks = np.zeros((n, num_frames), bool)
    for i, row in enumerate(rows):
        if row["frames"] is not None:
            frames[i], masks[i] = row["frames"], row["mask"]
    for key in ("status", "error", "error_reason", "decode_warning", "content_hash"):
        out[key] = np.array([row[key] for row in rows], dtype=object)
    for key in ("duration", "fps", "width", "height", "size_bytes"):
        out[key] = np.array([getattr(row["probe"], key, 0) if row["probe"] else 0
                             for row in rows], dtype=np.float64)
    out["frames"], out["frame_mask"] = frames, masks
    return out
