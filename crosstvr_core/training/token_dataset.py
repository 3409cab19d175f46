"""Random access to the re-ranker's inputs over cached frozen-encoder tokens.

Training never runs the encoder: every pair's tokens are read by row from a token source (a
TokenBank, whose patch tokens are in memory or, past the memory budget, read from the Lance
table by row). `VTMPairDataset` is the torch Dataset over such a source: item i is caption i
with its own video, and `pairs` fetches any (caption, video) pairs in one batch (the
negatives).
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

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
