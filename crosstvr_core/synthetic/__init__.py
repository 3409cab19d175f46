"""The generated fine-grained video benchmark: the one entry point for callers.

Scenes and test cubes live in `synthetic_scenes`, captions in `synthetic_grammar`, frames and
mp4 encoding in `synthetic_render`; this module puts them together into a dataset folder
(videos/<split>/<id>.mp4 + a captions JSONL) and scores the benchmark's own question: does a
retriever rank a caption's video above its one-factor near-duplicates? Everything is
deterministic from a seed. docs/benchmark-data.md describes the families and the grammar.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from crosstvr_core.synthetic.grammar import caption, captions_for, draw_style
from crosstvr_core.synthetic.render import encode_clips, encode_mp4, render_frames
from crosstvr_core.synthetic.scenes import (
    BACKGROUNDS,
    COLOURS,
    CUBE_FACTORS,
    CUBE_SPLITS,
    DIRECTIONS,
    FACTORS,
    KINDS,
    REGIONS,
    REVERSE,
    SHAPES,
    SIZES,
    SPLITS,
    SceneObject,
    VideoSpec,
    make_benchmark_specs,
    single_factor_difference,
    spec_from_json,
    spec_to_json,
)

# Part of the generated dataset's folder name: a new generator never reuses old clips.
GENERATOR_VERSION = "cubes-1"

__all__ = [
    "BACKGROUNDS", "COLOURS", "CUBE_FACTORS", "CUBE_SPLITS", "DIRECTIONS", "FACTORS", "GENERATOR_VERSION",
    "KINDS", "REGIONS",
    "REVERSE", "SHAPES", "SIZES", "SPLITS", "SceneObject", "VideoSpec", "caption",
    "caption_rows", "captions_for", "draw_style", "encode_clips", "encode_mp4",
    "make_benchmark_specs", "near_duplicate_accuracy", "near_duplicate_outcomes",
    "paired_twin_changes", "render_frames", "render_video",
    "render_videos", "single_factor_difference", "spec_from_json", "spec_to_json",
    "twin_accuracy", "twin_corner", "video_key", "video_relpath", "write_captions_file",
]


def video_relpath(spec: VideoSpec) -> str:
    """Where a spec's clip lives, relative to the dataset root."""
    return f"videos/{spec.split}/{spec.video_id}.mp4"


def render_videos(
    specs: Sequence[VideoSpec], root: str | Path, frame_size: int, num_frames: int, fps: int
) -> list[str]:
    """Render and encode the clips of `specs` that are not under `root` yet (one ffmpeg run).

    Returns every spec's relative path, in order; existing clips are kept, so an interrupted
    render resumes.
    """
    rels = [video_relpath(s) for s in specs]
    todo = [(s, Path(root) / rel) for s, rel in zip(specs, rels, strict=True)
            if not ((Path(root) / rel).is_file() and (Path(root) / rel).stat().st_size > 0)]
    if todo:
        encode_clips((render_frames(s, frame_size, num_frames) for s, _ in todo),
                     [path for _, path in todo], fps)
    return rels


def render_video(
    spec: VideoSpec, root: str | Path, frame_size: int, num_frames: int, fps: int
) -> str:
    """Render and encode one clip under `root` unless already there; returns its relative path."""
    return render_videos([spec], root, frame_size, num_frames, fps)[0]


def twin_corner(corner: str, factor_index: int) -> str:
    """The corner of the near-duplicate that flips one factor (bit) of a cube corner."""
    bits = list(corner)
    bits[factor_index] = "1" if bits[factor_index] == "0" else "0"
    return "".join(bits)


def caption_rows(specs: list[VideoSpec], captions_per_train_video: int, seed: int) -> list[dict]:
    """Captions table rows; validation and test videos get one caption each.

    Columns: video, caption, split, group, variant (the scene kind: "motion" or "events", the
    family report.per_family_recall groups by), corner, and for cube videos (validation,
    test) `twin_<factor>`: the relative path of the near-duplicate that differs in that
    factor only.
    """
    by_corner = {(s.split, s.group, s.corner): s for s in specs if s.split in CUBE_SPLITS}
    rows = []
    for spec in specs:
        count = captions_per_train_video if spec.split == "train" else 1
        twins = {}
        if spec.split in CUBE_SPLITS:
            for i, factor in enumerate(CUBE_FACTORS[spec.kind]):
                twin = by_corner.get((spec.split, spec.group, twin_corner(spec.corner, i)))
                if twin is None:
                    raise ValueError(f"caption_rows: {spec.split} video {spec.video_id!r} has "
                                     f"no {factor} near-duplicate among the specs")
                twins[f"twin_{factor}"] = video_relpath(twin)
        for text in captions_for(spec, count, seed):
            rows.append({"video": video_relpath(spec), "caption": text, "split": spec.split,
                         "group": spec.group, "variant": spec.kind, "corner": spec.corner,
                         **twins})
    return rows


def _tmp_sibling(path: Path, suffix: str) -> Path:
    """A unique temp name next to `path` (same filesystem, so os.replace is atomic)."""
    return path.with_name(f"{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{suffix}")


def write_captions_file(rows: list[dict], path: str | Path) -> None:
    """Write caption rows as JSONL atomically (temp file + os.replace)."""
    path = Path(path)
    for i, row in enumerate(rows):
        missing = [k for k in ("video", "caption", "split") if k not in row]
        if missing:
            raise ValueError(f"write_captions_file({path}): row {i} lacks {', '.join(missing)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path, path.suffix or ".jsonl")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def video_key(path_or_id: str) -> str:
    """'videos/test/x.mp4' and the dataset's id 'videos/test/x' name the same video."""
    return path_or_id[: -len(".mp4")] if path_or_id.endswith(".mp4") else path_or_id


def near_duplicate_outcomes(
    similarity: np.ndarray,
    caption_video: Sequence[int],
    video_ids: Sequence[str],
    caption_meta: Sequence[dict],
    direction: str = "t2v",
) -> dict[str, dict[int, bool]]:
    """Per factor, per caption row i that has a twin for it: whether caption i scores its
    own video above the one-factor twin (direction "t2v"), or whether its video scores
    caption i above the twin's caption ("v2t": column-wise; the twin's first caption
    stands for it).

    similarity [num_captions, num_videos]; caption_video[i] is caption i's video column;
    video_ids name the columns (dataset ids or relative paths); caption_meta[i] holds the
    `twin_<factor>` paths written by caption_rows. Captions without a twin for a factor do
    not count for it. A twin missing from `video_ids` is an error.
    """
    similarity = np.asarray(similarity)
    if similarity.ndim != 2 or similarity.shape[0] != len(caption_meta):
        raise ValueError(f"near_duplicate_outcomes: similarity {similarity.shape} does not fit "
                         f"{len(caption_meta)} captions")
    if similarity.shape[1] != len(video_ids) or len(caption_video) != len(caption_meta):
        raise ValueError(f"near_duplicate_outcomes: {len(video_ids)} video ids and "
                         f"{len(caption_video)} caption videos for a {similarity.shape} matrix")
    if direction not in ("t2v", "v2t"):
        raise ValueError(f"near_duplicate_outcomes: direction must be t2v or v2t, got {direction!r}")
    column = {video_key(v): j for j, v in enumerate(video_ids)}
    caption_of: dict[int, int] = {}
    for i, v in enumerate(caption_video):
        caption_of.setdefault(int(v), i)
    wins: dict[str, dict[int, bool]] = {}
    for i, meta in enumerate(caption_meta):
        own_video = int(caption_video[i])
        own = similarity[i, own_video]
        for factor in FACTORS:
            twin = meta.get(f"twin_{factor}")
            if not twin:
                continue
            if video_key(twin) not in column:
                raise ValueError(f"near_duplicate_outcomes: caption {i}'s {factor} twin "
                                 f"{twin!r} is not among the videos")
            twin_video = column[video_key(twin)]
            if direction == "t2v":
                other = similarity[i, twin_video]
            elif twin_video in caption_of:
                other = similarity[caption_of[twin_video], own_video]
            else:
                continue
            wins.setdefault(factor, {})[i] = bool(own > other)
    return dict(sorted(wins.items()))


def near_duplicate_accuracy(
    similarity: np.ndarray,
    caption_video: Sequence[int],
    video_ids: Sequence[str],
    caption_meta: Sequence[dict],
    direction: str = "t2v",
) -> dict[str, float]:
    """Per factor: % of `near_duplicate_outcomes` won, that is of test captions scoring their
    own video above its one-factor twin (t2v), or of videos scoring their own caption above
    the twin's (v2t); chance is 50."""
    return twin_accuracy(near_duplicate_outcomes(similarity, caption_video, video_ids,
                                                 caption_meta, direction))


def twin_accuracy(outcomes: dict[str, dict[int, bool]]) -> dict[str, float]:
    """Per factor, % of `near_duplicate_outcomes` won."""
    return {factor: 100.0 * float(np.mean(list(won.values())))
            for factor, won in outcomes.items()}


def paired_twin_changes(before: dict[str, dict[int, bool]], after: dict[str, dict[int, bool]]
                        ) -> dict[str, tuple[int, int]]:
    """Per factor, (gained, lost) from `before` to `after` (two `near_duplicate_outcomes` of
    the same captions): twins won only after, and twins won only before."""
    changes = {}
    for factor, old in before.items():
        new = after.get(factor, {})
        if set(new) != set(old):
            raise ValueError(f"paired_twin_changes: the {factor} twins differ between the two "
                             "outcomes (not the same captions)")
        changes[factor] = (sum(new[i] and not old[i] for i in old),
                           sum(old[i] and not new[i] for i in old))
    return changes
