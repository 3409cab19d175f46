"""Stage 1 from any other retriever: a similarity matrix plus the id orders of its axes.

CrossTVR re-ranks the candidates of whatever dual encoder is best (the paper uses TS2-Net);
users export that model's caption x video similarity as `.npy` with two JSON lists giving
the caption id of each row and the video id of each column. The matrix is re-ordered to the
index's rows; anything that does not line up is refused with the ids that are wrong.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


class ExternalSimilarityError(ValueError):
    """An external similarity file that does not match the dataset; the message says how."""


def _read_ids(path: str | Path, what: str) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise ExternalSimilarityError(f"{what} ids '{path}': not found")
    try:
        ids = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ExternalSimilarityError(f"{what} ids '{path}': not JSON: {exc}") from exc
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ExternalSimilarityError(f"{what} ids '{path}': expected a JSON list of strings")
    if len(set(ids)) != len(ids):
        raise ExternalSimilarityError(f"{what} ids '{path}': duplicate ids")
    return ids


def _positions(wanted: list[str], available: list[str], what: str, path) -> list[int]:
    where = {item: i for i, item in enumerate(available)}
    missing = [item for item in wanted if item not in where]
    if missing:
        raise ExternalSimilarityError(
            f"{what} ids '{path}': {len(missing)} of the dataset's {what}s are missing "
            f"(first: {missing[:3]})"
        )
    return [where[item] for item in wanted]


def load_external_similarity(
    sim_path: str | Path, caption_ids_path: str | Path, video_ids_path: str | Path,
    caption_ids: list[str], video_ids: list[str],
) -> torch.Tensor:
    """The external matrix re-ordered to (caption_ids, video_ids): float32 [T, V].

    Rows/columns for ids the dataset does not have are dropped (e.g. videos that failed to
    index); ids the dataset has but the file lacks are an error.
    """
    sim_path = Path(sim_path)
    if not sim_path.is_file():
        raise ExternalSimilarityError(f"external similarity '{sim_path}': not found")
    try:
        sim = np.load(sim_path, allow_pickle=False)
    except ValueError as exc:
        raise ExternalSimilarityError(f"external similarity '{sim_path}': {exc}") from exc
    rows = _read_ids(caption_ids_path, "caption")
    cols = _read_ids(video_ids_path, "video")
    if sim.ndim != 2 or sim.shape != (len(rows), len(cols)):
        raise ExternalSimilarityError(
            f"external similarity '{sim_path}': shape {sim.shape} does not match "
            f"{len(rows)} caption ids x {len(cols)} video ids"
        )
    if not np.isfinite(sim).all():
        raise ExternalSimilarityError(f"external similarity '{sim_path}': NaN/inf entries")
    row_idx = _positions(caption_ids, rows, "caption", caption_ids_path)
    col_idx = _positions(video_ids, cols, "video", video_ids_path)
    return torch.from_numpy(np.ascontiguousarray(sim[np.ix_(row_idx, col_idx)], np.float32))
