"""Parsers for the annotation files of each text-video retrieval benchmark, as distributed.

Each parser reads one benchmark's files exactly as CLIP4Clip-family code receives them and
returns neutral `Annotations`: which videos belong to which split (with the relative names
their files may have under a videos directory) and the captions of each. Finding the files,
missing videos, paragraph mode and the dataset object itself are `crosstvr_core.data.datasets`'
job, so every format gets them the same way; frame loading is `video_decode`'s, never here.

| format        | files (under the annotation root)                         | splits            |
|---------------|-----------------------------------------------------------|-------------------|
| `msrvtt`      | `MSRVTT_JSFUSION_test.csv` (1k-A: `key,vid_key,video_id,sentence`), `MSRVTT_train.9k.csv` (`video_id`) + `MSRVTT_data.json` (`videos`, `sentences`) | train, test |
| `msvd`        | `{train,val,test}_list.txt` + `raw-captions.pkl` (id -> token lists)  | train, val, test |
| `didemo`      | `{train,val,test}_data.json` (list of {description, times, video}) | train, val, test |
| `activitynet` | `train.json` / `val_1.json` ({id: {duration, timestamps, sentences}}) + `train_ids.json` / `val_ids.json`; `test` is val_1, the split the field reports | train, test |
| `vatex`       | `vatex_training_v1.0.json`, `vatex_validation_v1.0.json`, `vatex_public_test_english_v1.1.json` (list of {videoID, enCap}) | train, val, test |
| `lsmdc`       | `LSMDC16_annos_training.csv`, `LSMDC16_annos_val.csv`, `LSMDC16_challenge_1000_publictect.csv` (tab-separated: clip id, 4 times, sentence) | train, val, test |
| `folder`      | one CSV/JSONL: `video` (path relative to the root, or an id), `caption`, optional `split`, extras kept as caption metadata | any |
| `manifest`    | one CSV/JSONL: `uri` (local path, `file://` URI; object stores later), `caption`, optional `split`, `video_id` | any |
"""

from __future__ import annotations

import csv
import io
import json
import os.path
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

VIDEO_EXTENSIONS = (
    ".mp4", ".avi", ".mkv", ".webm", ".mov", ".mpg", ".mpeg", ".m4v", ".ogv", ".flv", ".wmv",
    ".3gp", ".ts", ".gif", ".webp", ".apng", ".png",
)
# Animated pictures decode like clips (a still one fails as `still_image`). A folder scan or a
# look-up by id takes a .png only when it is an APNG: thumbnails are not videos.
ANIMATED_ONLY_EXTENSIONS = (".png",)
# URI schemes that will reach object stores through the same interface; refused for now
_REMOTE_SCHEMES = ("s3", "gs", "gcs", "az", "abfs", "abfss", "http", "https", "hf")


def is_animated_png(path: str | Path) -> bool:
    """A PNG file with an animation control chunk (acTL, before the image data): an APNG."""
    try:
        with open(path, "rb") as handle:
            if handle.read(8) != b"\x89PNG\r\n\x1a\n":
                return False
            while header := handle.read(8):
                if len(header) < 8 or header[4:8] == b"IDAT":
                    return False
                if header[4:8] == b"acTL":
                    return True
                handle.seek(int.from_bytes(header[:4], "big") + 4, 1)  # data + CRC
    except OSError:
        return False
    return False


def takes_video_file(path: str | Path, named: bool = False) -> bool:
    """Whether the index takes this file by its name: a VIDEO_EXTENSIONS suffix, and for a
    .png an animated one unless the annotation `named` the file itself."""
    suffix = Path(path).suffix.lower()
    if suffix not in VIDEO_EXTENSIONS:
        return False
    return named or suffix not in ANIMATED_ONLY_EXTENSIONS or is_animated_png(path)


def taken_extensions() -> str:
    """The extensions the index takes, for messages."""
    return ", ".join(e + (" (animated)" if e in ANIMATED_ONLY_EXTENSIONS else "")
                     for e in VIDEO_EXTENSIONS)


class DatasetError(ValueError):
    """An annotation file or corpus that cannot be used; the message names it."""


@dataclass(frozen=True)
class AnnotatedVideo:
    """A video as the annotation names it, before its file is looked up.

    `file_keys` are names relative to the videos directory, tried in order, with or without
    an extension (e.g. ActivityNet's 'v_abc' then 'abc'). `path` is an absolute local file
    named by a manifest, used as is. `where` says which file/row introduced it, for errors.
    """

    video_id: str
    split: str
    file_keys: tuple[str, ...]
    where: str
    path: str | None = None
    meta: dict = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class AnnotatedCaption:
    """One sentence of a video; `start` (seconds) orders sentences in paragraph mode."""

    video_id: str
    text: str
    split: str
    start: float | None = None
    meta: dict = field(default_factory=dict, hash=False, compare=False)


@dataclass
class Annotations:
    videos: list[AnnotatedVideo]
    captions: list[AnnotatedCaption]


@dataclass(frozen=True)
class AnnotationFormat:
    """A benchmark's files and parser.

    `files` maps a role to its default file name(s), the first that exists wins
    (overridable by `load_dataset(annotations=)`); `split_files` says which roles a split
    needs, or is None when the splits are read from the file itself (user formats).
    `parse(files, splits)` gets the resolved path of every role and the splits to read.
    `caption_mode` is the field's default protocol: 'sentence' or 'paragraph' (a video's
    sentences joined into one query).
    """

    name: str
    files: dict[str, tuple[str, ...]]
    split_files: dict[str, tuple[str, ...]] | None
    parse: Callable[[dict[str, Path], tuple[str, ...]], Annotations]
    caption_mode: str = "sentence"


# ---------------------------------------------------------------- shared readers and checks


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise DatasetError(f"annotation file '{path}': not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"annotation file '{path}': not valid JSON ({exc})") from exc


def _expect(value: Any, kind: type, where: str, what: str) -> Any:
    if not isinstance(value, kind):
        raise DatasetError(
            f"{where}: expected {what} ({kind.__name__}), found {type(value).__name__}"
        )
    return value


def _text(value: Any, where: str, what: str = "caption") -> str:
    if not isinstance(value, str):
        raise DatasetError(f"{where}: {what} is {type(value).__name__}, expected a string")
    text = " ".join(value.split())
    if not text:
        raise DatasetError(f"{where}: empty {what}")
    return text


def _plain_id(value: Any, where: str, what: str = "video id") -> str:
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise DatasetError(f"{where}: {what} is {type(value).__name__}, expected a string")
    text = str(value).strip()
    if not text:
        raise DatasetError(f"{where}: empty {what}")
    return text


def _check_columns(path: Path, found: list[str], required: tuple[str, ...],
                   optional: tuple[str, ...], extras_allowed: bool = False) -> None:
    known = list(required) + list(optional)
    missing = [c for c in required if c not in found]
    unknown = [c for c in found if c not in known]
    if missing or (unknown and not extras_allowed):
        problems = []
        if missing:
            problems.append(f"missing column(s) {missing}")
        if unknown and not extras_allowed:
            problems.append(f"unknown column(s) {unknown}")
        raise DatasetError(
            f"annotation file '{path}': {'; '.join(problems)}; found {found}, known columns "
            f"{known}" + (" (other columns are kept as caption metadata)" if extras_allowed else "")
        )


def _read_csv(path: Path, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> list[dict]:
    if not path.is_file():
        raise DatasetError(f"annotation file '{path}': not found")
    with path.open(newline="", encoding="utf-8-sig") as handle:  # -sig: spreadsheet exports
        reader = csv.DictReader(handle)
        _check_columns(path, list(reader.fieldnames or []), required, optional)
        rows = list(reader)
    for line_no, row in enumerate(rows, start=2):
        if None in row or any(v is None for v in row.values()):
            raise DatasetError(f"annotation file '{path}' line {line_no}: wrong number of fields")
    return rows


def _read_table(path: Path) -> list[tuple[str, dict]]:
    """CSV or JSONL rows as (where, row), for the user formats (folder, manifest)."""
    if not path.is_file():
        raise DatasetError(f"captions file '{path}': not found")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            where = f"captions file '{path}' line {line_no}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{where}: {exc}") from exc
            rows.append((where, _expect(row, dict, where, "a JSON object")))
        return rows
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as handle:
            return [(f"captions file '{path}' row {n}", row)
                    for n, row in enumerate(csv.DictReader(handle), start=1)]
    raise DatasetError(f"captions file '{path}': expected .csv or .jsonl, got '{suffix}'")


def _no_duplicates(ids: list[tuple[str, str]], what: str, why: str = "") -> None:
    """ids: (id, where) pairs; the first repeat is an error naming both places."""
    seen: dict[str, str] = {}
    for value, where in ids:
        if value in seen:
            raise DatasetError(f"{where}: duplicate {what} '{value}' (first at {seen[value]})"
                               + (f"; {why}" if why else ""))
        seen[value] = where


# ------------------------------------------------------------------------------- MSR-VTT

MSRVTT_TEST_COLUMNS = ("key", "vid_key", "video_id", "sentence")


def parse_msrvtt(files: dict[str, Path], splits: tuple[str, ...]) -> Annotations:
    """1k-A test: one caption per video from the JSFUSION csv. Train: the 9k csv's videos
    with every sentence of `MSRVTT_data.json` (the trainer picks all or one per epoch)."""
    out = Annotations([], [])
    if "test" in splits:
        path = files["test_csv"]
        rows = _read_csv(path, ("video_id", "sentence"), ("key", "vid_key"))
        ids = []
        for line_no, row in enumerate(rows, start=2):
            where = f"annotation file '{path}' line {line_no}"
            video_id = _plain_id(row["video_id"], where)
            ids.append((video_id, where))
            out.videos.append(AnnotatedVideo(video_id, "test", (video_id,), where))
            meta = {k: row[k] for k in ("key", "vid_key") if k in row}
            out.captions.append(AnnotatedCaption(
                video_id, _text(row["sentence"], where), "test", meta=meta))
        # 1k-A is single-caption: a repeated video is a broken file, not a second caption
        _no_duplicates(ids, "video id", "the 1k-A test has one caption per video")
        _no_duplicates([(r["key"], f"annotation file '{path}' line {n}")
                        for n, r in enumerate(rows, start=2) if "key" in r], "caption key")
    if "train" in splits:
        csv_path, json_path = files["train_csv"], files["data_json"]
        rows = _read_csv(csv_path, ("video_id",))
        ids = [(_plain_id(r["video_id"], f"annotation file '{csv_path}' line {n}"),
                f"annotation file '{csv_path}' line {n}") for n, r in enumerate(rows, start=2)]
        _no_duplicates(ids, "video id")
        data = _expect(_read_json(json_path), dict, f"annotation file '{json_path}'",
                       "an object with 'videos' and 'sentences'")
        for key in ("videos", "sentences"):
            if key not in data:
                raise DatasetError(f"annotation file '{json_path}': no '{key}' list "
                                   f"(found keys {sorted(data)[:10]})")
            _expect(data[key], list, f"annotation file '{json_path}' '{key}'", "a list")
        categories = {}
        for i, item in enumerate(data["videos"]):
            where = f"annotation file '{json_path}' videos[{i}]"
            item = _expect(item, dict, where, "an object")
            if "video_id" not in item:
                raise DatasetError(f"{where}: no 'video_id'")
            categories[str(item["video_id"])] = item.get("category")
        sentences: dict[str, list[AnnotatedCaption]] = {}
        sen_ids = []
        prefix = f"annotation file '{json_path}' sentences"  # 200k sentences: format once
        for i, item in enumerate(data["sentences"]):
            where = f"{prefix}[{i}]"
            item = _expect(item, dict, where, "an object with caption, video_id, sen_id")
            for key in ("caption", "video_id"):
                if key not in item:
                    raise DatasetError(f"{where}: no '{key}' (found keys {sorted(item)})")
            video_id = _plain_id(item["video_id"], where)
            meta = {}
            if "sen_id" in item:
                sen_ids.append((str(item["sen_id"]), where))
                meta["sen_id"] = item["sen_id"]
            sentences.setdefault(video_id, []).append(AnnotatedCaption(
                video_id, _text(item["caption"], where), "train", meta=meta))
        _no_duplicates(sen_ids, "sen_id")
        for video_id, where in ids:
            if video_id not in sentences:
                raise DatasetError(f"{where}: video '{video_id}' has no sentence in '{json_path}'")
            meta = {"category": categories[video_id]} if categories.get(video_id) is not None else {}
            out.videos.append(AnnotatedVideo(video_id, "train", (video_id,), where, meta=meta))
            out.captions.extend(sentences[video_id])
    return out


# ---------------------------------------------------------------------------------- MSVD


class _ContainersOnlyUnpickler(pickle.Unpickler):
    """raw-captions.pkl holds only dicts, lists and strings: refuse anything executable."""

    _ALLOWED = {("collections", "OrderedDict"), ("collections", "defaultdict"),
                ("builtins", "dict"), ("builtins", "list"), ("builtins", "str")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_caption_pickle(path: Path) -> dict:
    if not path.is_file():
        raise DatasetError(f"annotation file '{path}': not found")
    try:
        data = _ContainersOnlyUnpickler(io.BytesIO(path.read_bytes())).load()
    except Exception as exc:  # a corrupt or foreign pickle: say so with the file name
        raise DatasetError(f"annotation file '{path}': not a caption pickle ({exc})") from exc
    return _expect(data, dict, f"annotation file '{path}'", "a dict video id -> token lists")


def parse_msvd(files: dict[str, Path], splits: tuple[str, ...]) -> Annotations:
    """Split lists + tokenised captions (joined with spaces); evaluated multi-caption."""
    pickle_path = files["captions"]
    captions = _read_caption_pickle(pickle_path)
    out = Annotations([], [])
    for split in splits:
        list_path = files[f"{split}_list"]
        if not list_path.is_file():
            raise DatasetError(f"annotation file '{list_path}': not found")
        ids = []
        for line_no, line in enumerate(list_path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            where = f"annotation file '{list_path}' line {line_no}"
            video_id = line.strip()
            ids.append((video_id, where))
            if video_id not in captions:
                raise DatasetError(f"{where}: video '{video_id}' has no captions in '{pickle_path}'")
            token_lists = _expect(captions[video_id], list, f"'{pickle_path}' ['{video_id}']",
                                  "a list of token lists")
            if not token_lists:
                raise DatasetError(f"annotation file '{pickle_path}' ['{video_id}']: no captions")
            out.videos.append(AnnotatedVideo(video_id, split, (video_id,), where))
            for i, tokens in enumerate(token_lists):
                cap_where = f"annotation file '{pickle_path}' ['{video_id}'][{i}]"
                if isinstance(tokens, list):
                    if not all(isinstance(t, str) for t in tokens):
                        raise DatasetError(f"{cap_where}: tokens must be strings")
                    tokens = " ".join(tokens)
                out.captions.append(AnnotatedCaption(video_id, _text(tokens, cap_where), split))
        _no_duplicates(ids, "video id")
    return out


# --------------------------------------------------------------------------------- DiDeMo

DIDEMO_SEGMENT_S = 5.0  # DiDeMo times index 5-second segments of the (<= 30 s) video


def _strip_video_extension(name: str) -> str:
    suffix = Path(name).suffix
    return name[: -len(suffix)] if suffix.lower() in VIDEO_EXTENSIONS else name


def parse_didemo(files: dict[str, Path], splits: tuple[str, ...]) -> Annotations:
    """Moment descriptions; paragraph mode joins them in the order of their start time."""
    out = Annotations([], [])
    for split in splits:
        path = files[f"{split}_data"]
        items = _expect(_read_json(path), list, f"annotation file '{path}'",
                        "a list of {description, times, video}")
        seen: dict[str, str] = {}
        annotation_ids = []
        for i, item in enumerate(items):
            where = f"annotation file '{path}' [{i}]"
            item = _expect(item, dict, where, "an object with description, times, video")
            for key in ("description", "times", "video"):
                if key not in item:
                    raise DatasetError(f"{where}: no '{key}' (found keys {sorted(item)})")
            video_name = _plain_id(item["video"], where, "video")
            times = _expect(item["times"], list, f"{where} 'times'", "a list of [start, end]")
            if not times or not all(isinstance(t, list) and len(t) == 2 for t in times):
                raise DatasetError(f"{where} 'times': expected a non-empty list of [start, end] "
                                   f"segment pairs, found {times!r}")
            start = DIDEMO_SEGMENT_S * sum(float(t[0]) for t in times) / len(times)
            video_id = _strip_video_extension(video_name)
            if video_id not in seen:
                seen[video_id] = where
                out.videos.append(AnnotatedVideo(video_id, split, (video_name, video_id), where))
            meta = {"times": times}
            if "annotation_id" in item:
                annotation_ids.append((str(item["annotation_id"]), where))
                meta["annotation_id"] = item["annotation_id"]
            out.captions.append(AnnotatedCaption(
                video_id, _text(item["description"], where, "description"), split, start, meta))
        _no_duplicates(annotation_ids, "annotation_id")
    return out


# ---------------------------------------------------------------------------- ActivityNet


def parse_activitynet(files: dict[str, Path], splits: tuple[str, ...]) -> Annotations:
    """ActivityNet Captions; ids are 'v_<youtube id>', files named with or without 'v_'."""
    out = Annotations([], [])
    for split in splits:
        ids_path, captions_path = files[f"{split}_ids"], files[f"{split}_captions"]
        ids = _expect(_read_json(ids_path), list, f"annotation file '{ids_path}'",
                      "a list of video ids")
        data = _expect(_read_json(captions_path), dict, f"annotation file '{captions_path}'",
                       "an object {video id: {duration, timestamps, sentences}}")
        located = []
        for i, raw in enumerate(ids):
            where = f"annotation file '{ids_path}' [{i}]"
            video_id = _plain_id(raw, where)
            located.append((video_id, where))
            entry = data.get(video_id)
            if entry is None:
                raise DatasetError(f"{where}: video '{video_id}' not in '{captions_path}'")
            entry_where = f"annotation file '{captions_path}' ['{video_id}']"
            entry = _expect(entry, dict, entry_where, "{duration, timestamps, sentences}")
            for key in ("timestamps", "sentences"):
                if key not in entry:
                    raise DatasetError(f"{entry_where}: no '{key}' (found keys {sorted(entry)})")
            sentences = _expect(entry["sentences"], list, f"{entry_where} 'sentences'", "a list")
            stamps = _expect(entry["timestamps"], list, f"{entry_where} 'timestamps'", "a list")
            if len(stamps) != len(sentences) or not sentences:
                raise DatasetError(f"{entry_where}: {len(sentences)} sentences but "
                                   f"{len(stamps)} timestamps (need as many, at least one)")
            keys = (video_id, video_id[2:]) if video_id.startswith("v_") else (video_id,)
            meta = {"duration": entry["duration"]} if "duration" in entry else {}
            out.videos.append(AnnotatedVideo(video_id, split, keys, where, meta=meta))
            for j, (sentence, stamp) in enumerate(zip(sentences, stamps, strict=True)):
                cap_where = f"{entry_where} sentences[{j}]"
                if not (isinstance(stamp, list) and len(stamp) == 2):
                    raise DatasetError(f"{entry_where} timestamps[{j}]: expected [start, end], "
                                       f"found {stamp!r}")
                out.captions.append(AnnotatedCaption(
                    video_id, _text(sentence, cap_where), split, float(stamp[0]),
                    {"timestamp": stamp}))
        _no_duplicates(located, "video id")
    return out


# --------------------------------------------------------------------------------- VATEX


def _vatex_clip(video_id: str) -> tuple[str, dict]:
    """'abc_000010_000020' -> ('abc', {clip_start: 10, clip_end: 20}); ids may contain '_'."""
    parts = video_id.rsplit("_", 2)
    if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
        return parts[0], {"clip_start": int(parts[1]), "clip_end": int(parts[2])}
    return video_id, {}


def parse_vatex(files: dict[str, Path], splits: tuple[str, ...]) -> Annotations:
    """English captions (10 per clip), evaluated multi-caption. Clips are looked up by the
    full videoID, else by the YouTube id (the clip's start/end are kept in the video meta)."""
    out = Annotations([], [])
    for split in splits:
        path = files[split]
        items = _expect(_read_json(path), list, f"annotation file '{path}'",
                        "a list of {videoID, enCap}")
        ids = []
        for i, item in enumerate(items):
            where = f"annotation file '{path}' [{i}]"
            item = _expect(item, dict, where, "an object with videoID, enCap")
            for key in ("videoID", "enCap"):
                if key not in item:
                    raise DatasetError(f"{where}: no '{key}' (found keys {sorted(item)}); "
                                       "the private test file has no English captions")
            video_id = _plain_id(item["videoID"], where)
            ids.append((video_id, where))
            captions = _expect(item["enCap"], list, f"{where} 'enCap'", "a list of captions")
            if not captions:
                raise DatasetError(f"{where} 'enCap': no captions")
            youtube_id, clip = _vatex_clip(video_id)
            keys = (video_id, youtube_id) if youtube_id != video_id else (video_id,)
            out.videos.append(AnnotatedVideo(video_id, split, keys, where, meta=clip))
            for j, text in enumerate(captions):
                out.captions.append(AnnotatedCaption(
                    video_id, _text(text, f"{where} enCap[{j}]"), split))
        _no_duplicates(ids, "videoID")
    return out


# --------------------------------------------------------------------------------- LSMDC

LSMDC_FIELDS = ("clip_id", "start_aligned", "end_aligned", "start_extracted", "end_extracted",
                "sentence")


def lsmdc_movie(clip_id: str) -> str:
    """'0001_American_Beauty_00.00.51.926-00.00.54.129' -> '0001_American_Beauty'."""
    return clip_id.rsplit("_", 1)[0]


def parse_lsmdc(files: dict[str, Path], splits: tuple[str, ...]) -> Annotations:
    """Tab-separated, no header; a clip id may carry several sentences. Clips are found at
    '<movie>/<clip id>.<ext>' or directly as '<clip id>.<ext>'."""
    out = Annotations([], [])
    for split in splits:
        path = files[split]
        if not path.is_file():
            raise DatasetError(f"annotation file '{path}': not found")
        seen: set[str] = set()
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            where = f"annotation file '{path}' line {line_no}"
            fields = line.rstrip("\r\n").split("\t")
            if len(fields) != len(LSMDC_FIELDS):
                raise DatasetError(f"{where}: {len(fields)} tab-separated fields, expected "
                                   f"{len(LSMDC_FIELDS)} ({', '.join(LSMDC_FIELDS)})")
            row = dict(zip(LSMDC_FIELDS, fields, strict=True))
            clip_id = _plain_id(row["clip_id"], where, "clip id")
            if clip_id not in seen:
                seen.add(clip_id)
                keys = (f"{lsmdc_movie(clip_id)}/{clip_id}", clip_id)
                out.videos.append(AnnotatedVideo(clip_id, split, keys, where))
            meta = {k: row[k] for k in LSMDC_FIELDS[1:5]}
            out.captions.append(AnnotatedCaption(
                clip_id, _text(row["sentence"], where), split, meta=meta))
    return out


# ------------------------------------------------------------------- user folder / manifest

FOLDER_COLUMNS = ("video", "caption")
MANIFEST_COLUMNS = ("uri", "caption")


def _cell(row: dict, key: str) -> str:
    value = row.get(key)
    return "" if value is None else str(value).strip()


def _user_rows(path: Path, required: tuple[str, ...], optional: tuple[str, ...],
               extras_allowed: bool) -> list[tuple[str, dict]]:
    rows = _read_table(path)
    if not rows:
        raise DatasetError(f"captions file '{path}': no rows")
    found = list(rows[0][1])
    _check_columns(path, found, required, optional, extras_allowed)
    return rows


DEFAULT_SPLIT = "test"  # a user corpus without splits is evaluated (zero-shot)


def _caption_and_split(where: str, row: dict, item: str) -> tuple[str, str]:
    """A user row's caption and split (DEFAULT_SPLIT without the column), neither empty."""
    text = _cell(row, "caption")
    if not text:
        raise DatasetError(f"{where}: empty caption for {item}")
    split = _cell(row, "split") if "split" in row else DEFAULT_SPLIT
    if not split:
        raise DatasetError(f"{where}: empty split for {item}")
    return text, split


def parse_folder(files: dict[str, Path], splits: tuple[str, ...] = ()) -> Annotations:
    """A folder of videos + a captions file. `video` is a path relative to the folder (its
    id is the path without extension) or an id looked up with any video extension."""
    path = files["captions"]
    rows = _user_rows(path, FOLDER_COLUMNS, ("split",), extras_allowed=True)
    out = Annotations([], [])
    videos: dict[str, AnnotatedVideo] = {}
    for where, row in rows:
        relative = _cell(row, "video")
        if not relative:
            raise DatasetError(f"{where}: empty video path")
        text, split = _caption_and_split(where, row, f"video '{relative}'")
        video_id = _strip_video_extension(relative.replace("\\", "/"))
        known = videos.get(video_id)
        if known and known.split != split:
            raise DatasetError(
                f"{where}: video '{video_id}' is in split '{known.split}' and '{split}'")
        if known and known.file_keys != (relative,):
            raise DatasetError(f"{where}: two files map to video id '{video_id}' "
                               f"('{known.file_keys[0]}' and '{relative}')")
        if not known:
            videos[video_id] = AnnotatedVideo(video_id, split, (relative,), where)
        meta = {k: v for k, v in row.items() if k not in ("video", "caption", "split")}
        out.captions.append(AnnotatedCaption(video_id, " ".join(text.split()), split, meta=meta))
    out.videos = list(videos.values())
    return out


def local_path_of_uri(uri: str, base: Path, where: str) -> Path:
    """A manifest entry as a local file: absolute path, `file://` URI, or a path relative to
    the manifest's folder (which it may not leave). Object-store URIs are refused for now."""
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise DatasetError(f"{where}: file URI '{uri}' names host '{parsed.netloc}'; "
                               "only local files are supported")
        return Path(unquote(parsed.path))
    if len(scheme) > 1:  # one letter is a Windows drive, not a scheme
        if scheme in _REMOTE_SCHEMES:
            raise DatasetError(f"{where}: '{scheme}://' URIs are not supported yet ('{uri}'); "
                               "use local paths or file:// URIs")
        raise DatasetError(f"{where}: unknown URI scheme '{scheme}' in '{uri}'")
    candidate = Path(uri)
    if candidate.is_absolute():
        return candidate
    resolved = Path(_normalised(base / candidate))
    if not resolved.is_relative_to(base):
        raise DatasetError(f"{where}: path '{uri}' escapes the manifest's folder '{base}'")
    return resolved


def _normalised(path: Path) -> str:
    return os.path.normpath(str(path))


def parse_manifest(files: dict[str, Path], splits: tuple[str, ...] = ()) -> Annotations:
    """A manifest of URIs + captions; the video id is the `video_id` column or the file stem."""
    path = files["captions"]
    rows = _user_rows(path, MANIFEST_COLUMNS, ("split", "video_id"), extras_allowed=True)
    base = path.parent.resolve()
    out = Annotations([], [])
    videos: dict[str, AnnotatedVideo] = {}
    for where, row in rows:
        uri = _cell(row, "uri")
        if not uri:
            raise DatasetError(f"{where}: empty uri")
        text, split = _caption_and_split(where, row, f"'{uri}'")
        local = local_path_of_uri(uri, base, where)
        video_id = _cell(row, "video_id") or _strip_video_extension(local.name)
        known = videos.get(video_id)
        if known and known.path != str(local):
            raise DatasetError(f"{where}: duplicate video id '{video_id}' for two files "
                               f"('{known.path}' and '{local}'; first at {known.where})")
        if known and known.split != split:
            raise DatasetError(
                f"{where}: video '{video_id}' is in split '{known.split}' and '{split}'")
        if not known:
            videos[video_id] = AnnotatedVideo(video_id, split, (), where, path=str(local),
                                              meta={"uri": uri})
        meta = {k: v for k, v in row.items() if k not in ("uri", "caption", "split", "video_id")}
        out.captions.append(AnnotatedCaption(video_id, " ".join(text.split()), split, meta=meta))
    out.videos = list(videos.values())
    return out


# ------------------------------------------------------------------------------ registry



def _one(**names: str) -> dict[str, tuple[str, ...]]:
    return {role: (name,) for role, name in names.items()}


ANNOTATION_FORMATS: dict[str, AnnotationFormat] = {
    f.name: f
    for f in (
        AnnotationFormat(
            "msrvtt",
            _one(test_csv="MSRVTT_JSFUSION_test.csv", train_csv="MSRVTT_train.9k.csv",
                 data_json="MSRVTT_data.json"),
            {"train": ("train_csv", "data_json"), "test": ("test_csv",)},
            parse_msrvtt,
        ),
        AnnotationFormat(
            "msvd",
            _one(train_list="train_list.txt", val_list="val_list.txt",
                 test_list="test_list.txt", captions="raw-captions.pkl"),
            {s: (f"{s}_list", "captions") for s in ("train", "val", "test")},
            parse_msvd,
        ),
        AnnotationFormat(
            "didemo",
            {f"{s}_data": (f"{s}_data.json",) for s in ("train", "val", "test")},
            {s: (f"{s}_data",) for s in ("train", "val", "test")},
            parse_didemo, caption_mode="paragraph",
        ),
        AnnotationFormat(
            "activitynet",
            _one(train_ids="train_ids.json", train_captions="train.json",
                 test_ids="val_ids.json", test_captions="val_1.json"),
            {s: (f"{s}_ids", f"{s}_captions") for s in ("train", "test")},
            parse_activitynet, caption_mode="paragraph",
        ),
        AnnotationFormat(
            "vatex",
            _one(train="vatex_training_v1.0.json", val="vatex_validation_v1.0.json",
                 test="vatex_public_test_english_v1.1.json"),
            {s: (s,) for s in ("train", "val", "test")},
            parse_vatex,
        ),
        AnnotationFormat(
            "lsmdc",
            _one(train="LSMDC16_annos_training.csv", val="LSMDC16_annos_val.csv",
                 test="LSMDC16_challenge_1000_publictect.csv"),
            {s: (s,) for s in ("train", "val", "test")},
            parse_lsmdc,
        ),
        AnnotationFormat(
            "folder", {"captions": ("captions.jsonl", "captions.csv")}, None, parse_folder),
        AnnotationFormat(
            "manifest", {"captions": ("manifest.jsonl", "manifest.csv")}, None, parse_manifest),
    )
}
