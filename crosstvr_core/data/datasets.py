"""One dataset interface for every corpus: videos with paths and splits, captions with ids.

    load_dataset("msrvtt", "/data/msrvtt", split="test", videos_dir="/data/msrvtt/videos")
    load_dataset("didemo", "/data/didemo")                 # every split whose files exist
    load_dataset("folder", "/data/mine", annotations="captions.jsonl")
    load_dataset("manifest", "/data", annotations="manifest.csv")

`name` is a format from `known_formats()` (the registry is
`crosstvr_core.data.annotation_formats.ANNOTATION_FORMATS`, with the files each reads, exactly as
the CLIP4Clip family distributes them): msrvtt, msvd, didemo, activitynet, vatex, lsmdc, and
for any user corpus `folder` (a folder of videos + a CSV/JSONL captions file: `video` path or
id, `caption`, optional `split`) or `manifest` (`uri`: local paths and `file://` now,
object-store URIs refused with "not supported yet" until they come through this interface).

What a `RetrievalDataset` knows:
* videos (id, absolute path, split) and captions (id `<video id>#<n>`, video id, text, split,
  meta); `caption_to_video(split)` is the mapping evaluation ranks against;
* `evaluation_mode(split)`: 'multi' when a video of the split has several captions (MSVD,
  VATEX: every caption is a query; video->text takes a video's best caption), else 'single'
  (MSR-VTT 1k-A, LSMDC test, anything in paragraph mode);
* `caption_mode`: 'sentence', or 'paragraph' (a video's sentences joined into one caption,
  in temporal order where times are given: the DiDeMo and ActivityNet protocol, their default);
* `missing_videos`: ids whose file was not found, skipped (`missing_report()` is the
  warning to print) or, with `missing_videos="error"`, a `DatasetError`.

Video files are looked up by id under `videos_dir` (default `<root>/videos` when it exists,
else `<root>`; the folder format's paths are relative to `<root>`) with any extension in
`VIDEO_EXTENSIONS`, directly or anywhere below (animated pictures count: GIF, WebP, APNG; a .png
only when animated, unless the annotation names the file). A file that is there under an
extension the index does not take is reported as such, with the extensions it takes. Frame
loading is not here: `video_decode` is the one decode path for every format.
"""

from __future__ import annotations

import glob
import logging
import os.path
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from crosstvr_core.data.annotation_formats import (
    ANNOTATION_FORMATS,
    VIDEO_EXTENSIONS,
    AnnotatedVideo,
    AnnotationFormat,
    Annotations,
    DatasetError,
    taken_extensions,
    takes_video_file,
)

__all__ = [
    "VIDEO_EXTENSIONS", "CaptionItem", "DatasetError", "RetrievalDataset",
    "VideoFileIndex", "VideoItem", "known_formats", "load_dataset", "load_folder_dataset",
    "scan_video_folder",
]

log = logging.getLogger(__name__)

CAPTION_MODES = ("sentence", "paragraph")
MISSING_VIDEO_POLICIES = ("skip", "error", "keep")
PARAGRAPH_SUFFIX = "paragraph"
_REPORTED_IDS = 5


def known_formats() -> list[str]:
    return sorted(ANNOTATION_FORMATS)


@dataclass(frozen=True)
class VideoItem:
    video_id: str
    path: str  # absolute
    split: str
    meta: dict = field(default_factory=dict, hash=False, compare=False)


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
    format_name: str = "folder"
    caption_mode: str = "sentence"
    videos_dir: str = ""
    missing_videos: list[str] = field(default_factory=list)
    skipped_captions: int = 0
    # missing video id -> the file that is there under an extension the index does not take
    untaken_files: dict[str, str] = field(default_factory=dict)

    def splits(self) -> list[str]:
        return sorted({v.split for v in self.videos})

    def summary(self) -> dict[str, dict]:
        """Per split: video and caption counts and the evaluation mode (for CLI output)."""
        return {split: {"videos": len(self.split_videos(split)),
                        "captions": len(self.split_captions(split)),
                        "evaluation": self.evaluation_mode(split)}
                for split in self.splits()}

    def split_videos(self, split: str) -> list[VideoItem]:
        return [v for v in self.videos if v.split == split]

    def split_captions(self, split: str) -> list[CaptionItem]:
        return [c for c in self.captions if c.split == split]

    def caption_to_video(self, split: str) -> dict[str, str]:
        return {c.caption_id: c.video_id for c in self._known_split_captions(split)}

    def captions_by_video(self, split: str) -> dict[str, list[CaptionItem]]:
        grouped: dict[str, list[CaptionItem]] = {}
        for caption in self._known_split_captions(split):
            grouped.setdefault(caption.video_id, []).append(caption)
        return grouped

    def evaluation_mode(self, split: str) -> Literal["single", "multi"]:
        """'multi' when some video of the split has several captions (each is a query)."""
        counts = Counter(c.video_id for c in self._known_split_captions(split))
        return "multi" if max(counts.values()) > 1 else "single"

    def missing_report(self) -> str | None:
        """The warning to print when videos were skipped; None when all were found."""
        if not self.missing_videos:
            return None
        return _missing_message(self.name, self.missing_videos, len(self.videos)
                                + len(self.missing_videos), self.videos_dir,
                                f"skipped with their {self.skipped_captions} caption(s)",
                                self.untaken_files)

    def _known_split_captions(self, split: str) -> list[CaptionItem]:
        captions = self.split_captions(split)
        if not captions:
            raise DatasetError(f"dataset '{self.name}': no captions in split '{split}' "
                               f"(splits: {', '.join(self.splits()) or 'none'})")
        return captions


class VideoFileIndex:
    """Finds a video file by id under one directory: `<dir>/<key>` as named, `<key>` plus
    any video extension, else a file of that name or stem anywhere below (one walk, done
    only when needed). Several extensions in one folder: the first in VIDEO_EXTENSIONS."""

    def __init__(self, videos_dir: Path):
        self.videos_dir = videos_dir
        self._below: dict[str, list[Path]] | None = None

    def checked_key(self, key: str, where: str) -> str:
        """A relative name that stays inside the directory (no absolute path, no '../')."""
        normalised = os.path.normpath(os.path.join(self.videos_dir, key))
        if os.path.isabs(key) or not Path(normalised).is_relative_to(self.videos_dir):
            hint = " (absolute paths and URIs belong in a manifest)" if os.path.isabs(key) else ""
            raise DatasetError(
                f"{where}: video '{key}' escapes the root '{self.videos_dir}'{hint}")
        return key

    def find(self, key: str, where: str) -> Path | None:
        direct = self.videos_dir / self.checked_key(key, where)
        if direct.suffix.lower() in VIDEO_EXTENSIONS and direct.is_file():
            return direct
        for extension in VIDEO_EXTENSIONS:
            candidate = direct.with_name(direct.name + extension)
            if candidate.is_file() and takes_video_file(candidate):
                return candidate
        matches = sorted(set(self._walk().get(direct.name, [])), key=_extension_rank)
        folders = sorted({str(m.parent) for m in matches})
        if len(folders) > 1:
            raise DatasetError(f"{where}: video '{key}' matches files in several folders under "
                               f"'{self.videos_dir}': {', '.join(str(m) for m in matches[:4])}")
        return matches[0] if matches else None

    def untaken(self, key: str) -> Path | None:
        """The file `key` names, or one of its stem in its folder, that the index does not
        take (another extension, or a .png that is not animated); None when there is none."""
        direct = self.videos_dir / key
        if direct.is_file():
            return direct  # named exactly, and `find` did not take it
        if direct.parent.is_dir():
            for candidate in sorted(direct.parent.glob(glob.escape(direct.name) + ".*")):
                if candidate.is_file() and not takes_video_file(candidate):
                    return candidate
        return None

    def _walk(self) -> dict[str, list[Path]]:
        if self._below is None:
            self._below = {}
            for folder, _, names in os.walk(self.videos_dir, followlinks=True):
                for name in names:
                    stem = os.path.splitext(name)[0]
                    path = Path(folder) / name
                    if takes_video_file(path):
                        self._below.setdefault(name, []).append(path)
                        self._below.setdefault(stem, []).append(path)
        return self._below


def _extension_rank(path: Path) -> tuple[int, str]:
    extension = path.suffix.lower()
    rank = VIDEO_EXTENSIONS.index(extension) if extension in VIDEO_EXTENSIONS else 99
    return rank, str(path)


def _missing_message(name: str, missing: list[str], total: int, videos_dir: str,
                     outcome: str, untaken: Mapping[str, str] | None = None) -> str:
    first = ", ".join(missing[:_REPORTED_IDS]) + (", ..." if len(missing) > _REPORTED_IDS else "")
    message = (f"dataset '{name}': {len(missing)} of {total} video(s) not found under "
               f"'{videos_dir}' ({outcome}): {first}")
    if untaken:
        files = [f"'{os.path.relpath(path, videos_dir)}'" for path in list(untaken.values())
                 [:_REPORTED_IDS]] + (["..."] if len(untaken) > _REPORTED_IDS else [])
        message += (f"; {len(untaken)} of them {'is a file' if len(untaken) == 1 else 'are files'}"
                    f" with an extension the index does not take ({', '.join(files)}): it "
                    f"takes {taken_extensions()}")
    return message


def _choose(option: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise DatasetError(f"{option}='{value}': expected one of {', '.join(allowed)}")
    return value


def _annotation_paths(fmt: AnnotationFormat, root: Path,
                      annotations: str | Path | Mapping[str, str | Path] | None) -> dict[str, Path]:
    """Each role's file: the override (relative to root), else the first default present."""
    if annotations is None:
        overrides: Mapping[str, str | Path] = {}
    elif isinstance(annotations, str | Path):
        if len(fmt.files) != 1:
            raise DatasetError(f"format '{fmt.name}' reads several files: give annotations as a "
                               f"mapping of {sorted(fmt.files)}, not '{annotations}'")
        overrides = {next(iter(fmt.files)): annotations}
    else:
        overrides = annotations
    unknown = sorted(set(overrides) - set(fmt.files))
    if unknown:
        raise DatasetError(f"format '{fmt.name}': unknown annotation file role(s) {unknown}; "
                           f"known: {sorted(fmt.files)}")
    paths = {}
    for role, defaults in fmt.files.items():
        if role in overrides:
            paths[role] = root / Path(overrides[role]).expanduser()
        else:
            present = [root / d for d in defaults if (root / d).is_file()]
            paths[role] = present[0] if present else root / defaults[0]
    return paths


def _splits_to_read(fmt: AnnotationFormat, paths: dict[str, Path], split: str | None,
                    root: Path) -> tuple[str, ...]:
    if fmt.split_files is None:  # user formats: the splits are in the file
        return ()
    if split is not None:
        if split not in fmt.split_files:
            raise DatasetError(f"format '{fmt.name}': unknown split '{split}'; known splits: "
                               f"{', '.join(fmt.split_files)}")
        return (split,)
    present = tuple(s for s, roles in fmt.split_files.items()
                    if all(paths[r].is_file() for r in roles))
    if not present:
        expected = sorted({paths[r].name for roles in fmt.split_files.values() for r in roles})
        raise DatasetError(f"format '{fmt.name}': no split's annotation files under '{root}' "
                           f"(expected {', '.join(expected)})")
    return present


def _default_videos_dir(fmt: AnnotationFormat, root: Path) -> Path:
    if fmt.name != "folder" and (root / "videos").is_dir():
        return root / "videos"
    return root


def _check_one_split_per_video(videos: list[AnnotatedVideo]) -> None:
    first: dict[str, AnnotatedVideo] = {}
    for video in videos:
        known = first.setdefault(video.video_id, video)
        if known is not video:
            what = "is in split" if known.split != video.split else "appears twice in split"
            raise DatasetError(f"{video.where}: duplicate video id '{video.video_id}' ({what} "
                               f"'{known.split}' at {known.where} and '{video.split}')")


def _locate(video: AnnotatedVideo, index: VideoFileIndex) -> Path | None:
    if video.path is not None:  # a manifest names the file itself
        return Path(video.path) if Path(video.path).is_file() else None
    for key in video.file_keys:
        found = index.find(key, video.where)
        if found is not None:
            return found
    return None


def _paragraphs(captions: list[CaptionItem], starts: dict[int, float | None]) -> list[CaptionItem]:
    """One caption per video: its sentences in temporal order (file order without times)."""
    grouped: dict[str, list[tuple[int, CaptionItem]]] = {}
    for position, caption in enumerate(captions):
        grouped.setdefault(caption.video_id, []).append((position, caption))
    out = []
    for video_id, members in grouped.items():
        if all(starts[p] is not None for p, _ in members):
            members = sorted(members, key=lambda m: (starts[m[0]], m[0]))
        first = members[0][1]
        out.append(CaptionItem(
            f"{video_id}#{PARAGRAPH_SUFFIX}", video_id, " ".join(c.text for _, c in members),
            first.split, {"sentences": len(members),
                          "sentence_ids": [c.caption_id for _, c in members]}))
    return out


def load_dataset(
    name: str,
    root: str | Path,
    split: str | None = None,
    *,
    videos_dir: str | Path | None = None,
    annotations: str | Path | Mapping[str, str | Path] | None = None,
    missing_videos: Literal["skip", "error", "keep"] = "skip",
    caption_mode: Literal["sentence", "paragraph"] | None = None,
    dataset_name: str | None = None,
) -> RetrievalDataset:
    """Read a corpus of format `name` whose annotation files are under `root`.

    split: one split, or None for every split whose files exist (user formats: all rows).
    annotations: file name overrides, relative to root: a path for the one-file formats
      (folder, manifest), else a mapping role -> file (roles: ANNOTATION_FORMATS[name].files).
    missing_videos: 'skip' (reported on the dataset), 'error', or 'keep' (listed with the
      expected path; decoding then records them as failed).
    caption_mode: None for the format's protocol; 'paragraph' joins a video's sentences.
    """
    fmt = ANNOTATION_FORMATS.get(name)
    if fmt is None:
        raise DatasetError(f"unknown dataset format '{name}'; known: {', '.join(known_formats())}")
    _choose("missing_videos", missing_videos, MISSING_VIDEO_POLICIES)
    mode = _choose("caption_mode", caption_mode or fmt.caption_mode, CAPTION_MODES)
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(f"dataset root '{root}': not a directory")
    paths = _annotation_paths(fmt, root, annotations)
    splits = _splits_to_read(fmt, paths, split, root)
    parsed = fmt.parse(paths, splits)
    if split is not None and fmt.split_files is None:
        parsed = _only_split(parsed, split, paths)
    if not parsed.videos:
        raise DatasetError(f"format '{name}' under '{root}': no videos in the annotations")
    videos_root = Path(videos_dir).expanduser().resolve() if videos_dir else \
        _default_videos_dir(fmt, root)
    if fmt.name != "manifest" and not videos_root.is_dir():
        raise DatasetError(f"videos directory '{videos_root}': not a directory")
    return _assemble(parsed, dataset_name or name, root, videos_root, fmt.name, mode,
                     missing_videos)


def _only_split(parsed: Annotations, split: str, paths: dict[str, Path]) -> Annotations:
    videos = [v for v in parsed.videos if v.split == split]
    if not videos:
        found = sorted({v.split for v in parsed.videos})
        raise DatasetError(f"captions file '{paths['captions']}': unknown split '{split}'; "
                           f"the file has {', '.join(found)}")
    return Annotations(videos, [c for c in parsed.captions if c.split == split])


def _assemble(parsed: Annotations, name: str, root: Path, videos_root: Path, format_name: str,
              caption_mode: str, missing_policy: str) -> RetrievalDataset:
    _check_one_split_per_video(parsed.videos)
    index = VideoFileIndex(videos_root)
    videos: list[VideoItem] = []
    missing: list[str] = []
    untaken: dict[str, str] = {}
    for video in parsed.videos:
        found = _locate(video, index)
        if found is None and missing_policy == "keep":
            found = Path(video.path) if video.path else videos_root / video.file_keys[0]
        if found is None:
            missing.append(video.video_id)
            other = next(filter(None, (index.untaken(k) for k in video.file_keys)), None)
            if other is not None:
                untaken[video.video_id] = str(other)
            continue
        videos.append(VideoItem(video.video_id, str(found), video.split, dict(video.meta)))
    if missing and (missing_policy == "error" or not videos):
        outcome = "missing_videos='error'" if missing_policy == "error" else "none found"
        raise DatasetError(_missing_message(name, missing, len(parsed.videos), str(videos_root),
                                            outcome, untaken))
    kept = {v.video_id for v in videos}
    captions: list[CaptionItem] = []
    starts: dict[int, float | None] = {}
    per_video: Counter[str] = Counter()
    skipped = 0
    for caption in parsed.captions:
        if caption.video_id not in kept:
            skipped += 1
            continue
        starts[len(captions)] = caption.start
        meta = dict(caption.meta)
        if caption.start is not None:
            meta.setdefault("start", caption.start)
        captions.append(CaptionItem(f"{caption.video_id}#{per_video[caption.video_id]}",
                                    caption.video_id, caption.text, caption.split, meta))
        per_video[caption.video_id] += 1
    if caption_mode == "paragraph":
        captions = _paragraphs(captions, starts)
    dataset = RetrievalDataset(name, str(root), videos, captions, format_name, caption_mode,
                               str(videos_root), missing, skipped, untaken)
    report = dataset.missing_report()
    if report:
        log.warning(report)
    return dataset


def load_folder_dataset(root: str | Path, captions_file: str | Path, name: str) -> RetrievalDataset:
    """A folder of videos + a captions file (CSV/JSONL: video, caption, split, extras).

    Videos are listed even when their file is absent (indexing records them as failed), as
    this loader always did; `load_dataset('folder', ...)` skips or refuses them instead."""
    return load_dataset("folder", root, annotations=captions_file, missing_videos="keep",
                        dataset_name=name, videos_dir=Path(root).expanduser().resolve())


def scan_video_folder(root: str | Path, name: str, split: str = "corpus") -> RetrievalDataset:
    """Every video file below `root`, without captions: a corpus to index before (or
    without) annotations. Ids are relative paths without extension, as in the folder format,
    so captions added later attach to the same rows."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(f"videos folder '{root}': not a directory")
    files = sorted(
        p for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    paths = [p for p in files if takes_video_file(p)]
    if not paths:
        others = Counter(p.suffix.lower() or "(none)" for p in files)
        found = (", found " + ", ".join(f"{n} x {e}" for e, n in others.most_common(6))
                 + (" (not animated)" if set(others) == {".png"} else "")) if others else ""
        raise DatasetError(
            f"videos folder '{root}': no video files (the index takes {taken_extensions()}"
            f"){found}"
        )
    videos, seen = [], {}
    for path in paths:
        video_id = str(path.relative_to(root).with_suffix(""))
        if video_id in seen:
            raise DatasetError(
                f"videos folder '{root}': '{seen[video_id].name}' and '{path.name}' both map to "
                f"video id '{video_id}'"
            )
        seen[video_id] = path
        videos.append(VideoItem(video_id, str(path), split))
    return RetrievalDataset(name, str(root), videos, [], format_name="videos", videos_dir=str(root))
