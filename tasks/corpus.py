"""The configured corpus as a `RetrievalDataset`: the one place config meets dataset formats.

`data.kind` picks the format (crosstvr_core.data.datasets.known_formats(), or "generated" for the
embedded benchmark once rendered); the other `data.*` keys are the format's options. The
flow, the `crosstvr index` CLI and the scheduled re-index all resolve corpora here.
"""

from __future__ import annotations

import logging

from crosstvr_core.config import DataConfig
from crosstvr_core.data.datasets import (
    DatasetError,
    RetrievalDataset,
    load_dataset,
    scan_video_folder,
)

log = logging.getLogger(__name__)


def load_corpus(d: DataConfig) -> RetrievalDataset:
    """Read the corpus the `data` section describes."""
    root = d.root
    if not root:
        raise DatasetError(f"data.root: needed for data.kind '{d.kind}'")
    if d.kind == "generated":
        raise DatasetError(
            "data.kind 'generated': the flow's prepare-dataset step renders it; point "
            "data.kind/data.root at a folder, a manifest or a known format to index it here"
        )
    if d.kind == "folder" and not d.captions_file and not d.annotations:
        return scan_video_folder(root, d.name)
    annotations = d.annotations or d.captions_file
    dataset = load_dataset(
        d.kind, root, d.split, videos_dir=d.videos_dir, annotations=annotations,
        missing_videos=d.missing_videos, caption_mode=d.caption_mode,
        dataset_name=d.name,
    )
    if dataset.missing_videos:
        log.warning("%s", dataset.missing_report())
    return dataset
