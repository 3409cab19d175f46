"""One dataset interface: videos with paths and splits, captions with ids.

Every corpus becomes a `RetrievalDataset`; frame loading is written once (video_decode), never
per dataset. The generic format is a folder of videos plus a captions file (CSV or JSONL)
with columns `video` (path relative to the folder), `caption`, `split`; any other column is
kept as caption metadata (the generated benchmark stores `group` and `variant` there).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

REQUIRED_COLUMNS = ("video", "caption", "split")


class DatasetError(ValueError):
    """An annotation file or corpus that cannot be used; the message names it."""


@dataclass(frozen=True)
class VideoItem:
    video_id: str
    path: str  # absolute
    split: str


@dataclass(frozen=True)
class CaptionItem:
    caption_id: str
    video_id: str
    text: str
    split: str
    meta: dict = field(default_factory=dict, hash=False, compare=False)


@dataclass
class RetrievalDataset:
    name: str
    root: str
    videos: list[VideoItem]
    captions: list[CaptionItem]

    def split_videos(self, split: str) -> list[VideoItem]:
        return [v for v in self.videos if v.split == split]

    def split_captions(self, split: str) -> list[CaptionItem]:
        return [c for c in self.captions if c.split == split]


def _read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        raise DatasetError(f"captions file '{path}': not found")
    if path.suffix == ".jsonl":
        rows = []
        for line_no, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"captions file '{path}' line {line_no}: {exc}") from exc
            if not isinstance(row, dict):
                raise DatasetError(f"captions file '{path}' line {line_no}: not a JSON object")
            rows.append(row)
        return rows
    if path.suffix == ".csv":
        with path.open(newline="") as handle:
            return list(csv.DictReader(handle))
    raise DatasetError(f"captions file '{path}': expected .csv or .jsonl")


def _video_id(relative: str) -> str:
    """'videos/test/clip-7.mp4' -> 'videos/test/clip-7' (unique within the folder)."""
    return str(Path(relative).with_suffix(""))


def load_folder_dataset(root: str | Path, captions_file: str | Path, name: str) -> RetrievalDataset:
    """A folder of videos + a captions file (CSV/JSONL: video, caption, split, extras)."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(f"dataset root '{root}': not a directory")
    captions_path = Path(captions_file)
    if not captions_path.is_absolute():
        captions_path = root / captions_path
    rows = _read_rows(captions_path)
    if not rows:
        raise DatasetError(f"captions file '{captions_path}': no rows")
    missing = [c for c in REQUIRED_COLUMNS if c not in rows[0]]
    if missing:
        raise DatasetError(
            f"captions file '{captions_path}': missing column(s) {missing}; found "
            f"{sorted(rows[0])} (expected {list(REQUIRED_COLUMNS)} plus optional extras)"
        )
    videos: dict[str, VideoItem] = {}
    captions: list[CaptionItem] = []
    per_video: dict[str, int] = {}
    for line_no, row in enumerate(rows, start=1):
        where = f"captions file '{captions_path}' row {line_no}"
        relative, text, split = (str(row.get(c) or "").strip() for c in REQUIRED_COLUMNS)
        if not relative:
            raise DatasetError(f"{where}: empty video path")
        if not text:
            raise DatasetError(f"{where}: empty caption for video '{relative}'")
        if not split:
            raise DatasetError(f"{where}: empty split for video '{relative}'")
        path = (root / relative).resolve()
        if not path.is_relative_to(root):
            raise DatasetError(f"{where}: video path '{relative}' escapes the root '{root}'")
        video_id = _video_id(relative)
        known = videos.get(video_id)
        if known and known.split != split:
            raise DatasetError(
                f"{where}: video '{video_id}' is in split '{known.split}' and '{split}'"
            )
        if known and known.path != str(path):
            raise DatasetError(f"{where}: two files map to video id '{video_id}'")
        videos.setdefault(video_id, VideoItem(video_id, str(path), split))
        index = per_video.get(video_id, 0)
        per_video[video_id] = index + 1
        meta = {k: v for k, v in row.items() if k not in REQUIRED_COLUMNS}
        captions.append(CaptionItem(f"{video_id}#{index}", video_id, text, split, meta))
    return RetrievalDataset(name, str(root), list(videos.values()), captions)
