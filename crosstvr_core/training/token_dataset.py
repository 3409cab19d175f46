"""Random access to the re-ranker's inputs over cached frozen-encoder tokens.

Training never runs the encoder: every pair's tokens are read by row from a token source,
either a TokenBank (the split loaded from Lance into memory) or `LanceTokenSource` (rows
read from the Lance tables by index, for corpora whose tokens do not fit in memory).
`VTMPairDataset` is the torch Dataset over such a source: item i is caption i with its own
video, and `pairs` fetches any (caption, video) pairs in one batch (the negatives).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import Dataset

from crosstvr_core.storage import TokenShapes, decode_caption_tokens, decode_video_tokens
from crosstvr_core.token_bank import TokenSource


class VTMPairDataset(Dataset):
    """(caption, video) pairs of a token source, by row, as re-ranker inputs.

    Item i: caption i and its own video: {"text_tokens" [L, Wt], "text_mask" [L],
    "video_cls" [F, D], "video_patches" [F, P, Wv], "frame_mask" [F], "text_row",
    "video_row"} (float32 tokens), so a DataLoader batches it into positive pairs.
    """

    def __init__(self, source: TokenSource) -> None:
        self.source = source

    def __len__(self) -> int:
        return self.source.num_captions

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"VTMPairDataset: caption row {index} of {len(self)}")
        text_row = torch.tensor([index % len(self)])
        video_row = self.source.caption_video[text_row]
        batch = self.pairs(text_row, video_row)
        item = {name: value[0] for name, value in batch.items()}
        return {**item, "text_row": text_row[0], "video_row": video_row[0]}

    def pairs(self, text_rows: torch.Tensor, video_rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """Model inputs of pairs (text_rows[i], video_rows[i]), both [N] -> batched tensors."""
        text_rows, video_rows = text_rows.long().cpu(), video_rows.long().cpu()
        if text_rows.shape != video_rows.shape or text_rows.ndim != 1:
            raise ValueError(
                f"pairs: text_rows {tuple(text_rows.shape)} and video_rows "
                f"{tuple(video_rows.shape)} must be equal 1-D shapes"
            )
        return {**self.source.text_batch(text_rows), **self.source.video_batch(video_rows)}


class LanceTokenSource:
    """Tokens read from the Lance tables by row index, never all at once.

    video_tokens / captions: the Lance datasets (`table.to_lance()`); video_ids and
    caption_ids fix the row order (e.g. a TokenBank's, or a split's ids). Only the id
    columns are scanned at construction; each batch is one `take` per table.
    """

    def __init__(self, video_tokens, captions, shapes: TokenShapes, video_ids: list[str],
                 caption_ids: list[str]) -> None:
        self.shapes = shapes
        self._video_tokens, self._captions = video_tokens, captions
        self._video_offsets = self._offsets(video_tokens, "video_id", video_ids, "video_tokens")
        self._caption_offsets = self._offsets(captions, "caption_id", caption_ids, "captions")
        caption_videos = captions.take(self._caption_offsets.tolist(), columns=["video_id"])
        row_of = {video_id: row for row, video_id in enumerate(video_ids)}
        missing = [v for v in caption_videos.column("video_id").to_pylist() if v not in row_of]
        if missing:
            raise ValueError(f"LanceTokenSource: captions of videos not asked for: {missing[:5]}")
        self.caption_video = torch.tensor(
            [row_of[v] for v in caption_videos.column("video_id").to_pylist()], dtype=torch.long
        )

    @staticmethod
    def _offsets(dataset, column: str, ids: list[str], table: str) -> np.ndarray:
        stored = dataset.to_table(columns=[column]).column(column).to_pylist()
        offset_of = {value: offset for offset, value in enumerate(stored)}
        missing = [i for i in ids if i not in offset_of]
        if missing:
            raise ValueError(f"LanceTokenSource: table '{table}' lacks {column} {missing[:5]}")
        return np.array([offset_of[i] for i in ids], dtype=np.int64)

    @property
    def num_videos(self) -> int:
        return len(self._video_offsets)

    @property
    def num_captions(self) -> int:
        return len(self._caption_offsets)

    def _take(self, dataset, offsets: np.ndarray, rows: torch.Tensor, columns: list[str]
              ) -> pa.Table:
        return dataset.take(offsets[rows.long().cpu().numpy()].tolist(), columns=columns)

    def video_batch(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        table = self._take(self._video_tokens, self._video_offsets, rows,
                           ["frame_mask", "cls", "patches"])
        return _float_tokens(decode_video_tokens(table, self.shapes))

    def text_batch(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        table = self._take(self._captions, self._caption_offsets, rows, ["tokens", "length"])
        return _float_tokens(decode_caption_tokens(table, self.shapes))


def _float_tokens(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stored fp16 tokens as the float32 the re-ranker reads; masks stay bool."""
    return {k: v if v.dtype == torch.bool else v.float() for k, v in batch.items()}
