"""Patch tokens that stay in the Lance table and are read by row when a batch needs them.

Patch tokens are nearly all of a split's bytes (ViT-B/16, 12 frames, all 196 patches, fp16:
about 3.6 MB per video; the CLS and text tokens are a few percent of that). A split whose
patches do not fit the memory budget keeps them on disk: `DiskPatches` stands in for the
bank's `video_patches` tensor, and indexing it with row numbers reads exactly those rows
with one Lance `take`. Everything that reads a bank by rows (training steps, stage-1
encoding, pair scoring) then runs unchanged with bounded memory. Random access, not a
sequential stream, because a listwise step needs the stage-1 candidates of each caption,
which lie anywhere in the table.
"""

from __future__ import annotations

import numpy as np
import torch

from crosstvr_core.storage import TokenShapes, fixed_list_to_numpy


class DiskPatches:
    """`video_patches` [V, F, P, Wv] (fp16) of a bank, read from a Lance dataset by row.

    dataset: the `video_tokens` Lance dataset at a fixed version (reads stay consistent
    while the table is re-indexed); offsets [V]: the dataset row of each bank row.
    `patches[rows]` -> fp16 tensor [len(rows), F, P, Wv]; `subset(rows)` -> DiskPatches of
    those rows, reading nothing.
    """

    dtype = torch.float16
    ndim = 4

    def __init__(self, dataset, offsets: np.ndarray, shapes: TokenShapes) -> None:
        self._dataset = dataset
        self._offsets = np.asarray(offsets, dtype=np.int64)
        self._shapes = shapes
        self.shape = torch.Size((len(self._offsets), shapes.num_frames, shapes.num_patches,
                                 shapes.vision_width))

    def __len__(self) -> int:
        return len(self._offsets)

    @property
    def nbytes(self) -> int:
        """Bytes these rows would take in memory."""
        return int(np.prod(self.shape)) * 2

    def _offsets_of(self, rows) -> np.ndarray:
        if isinstance(rows, torch.Tensor):
            rows = rows.cpu().numpy()
        offsets = self._offsets[rows]
        return np.atleast_1d(offsets)

    def subset(self, rows) -> DiskPatches:
        """The rows `rows` (ints, a bool mask or a slice), still on disk."""
        return DiskPatches(self._dataset, self._offsets_of(rows), self._shapes)

    def __getitem__(self, rows) -> torch.Tensor:
        scalar = isinstance(rows, int) or (isinstance(rows, torch.Tensor) and rows.ndim == 0)
        offsets = self._offsets_of(rows)
        if len(offsets) == 0:
            return torch.empty((0, *self.shape[1:]), dtype=self.dtype)
        # one take of the distinct rows in table order (sequential reads), then the order
        # and repeats the caller asked for
        unique, inverse = np.unique(offsets, return_inverse=True)
        table = self._dataset.take(unique.tolist(), columns=["patches"])
        patches = torch.from_numpy(fixed_list_to_numpy(table.column("patches"), self.shape[1:]))
        if not np.array_equal(unique, offsets):
            patches = patches[torch.from_numpy(inverse.reshape(-1))]
        return patches[0] if scalar else patches

    def to_memory(self, chunk_rows: int = 256) -> torch.Tensor:
        """All rows as one fp16 tensor, read `chunk_rows` at a time into a preallocated
        tensor (the peak is the tensor plus one chunk, not several copies of it)."""
        out = torch.empty(self.shape, dtype=self.dtype)
        for start in range(0, len(self), chunk_rows):
            out[start:start + chunk_rows] = self[np.arange(start, min(start + chunk_rows,
                                                                      len(self)))]
        return out


def select_rows(patches: torch.Tensor | DiskPatches, rows: torch.Tensor
                ) -> torch.Tensor | DiskPatches:
    """Rows of a bank's patches that stay where they are: a tensor is indexed, patches on
    disk stay on disk."""
    return patches.subset(rows) if isinstance(patches, DiskPatches) else patches[rows]
