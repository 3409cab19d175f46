"""The cached frozen-encoder tokens of one split, as tensors.

Training and evaluation of stage 1 and stage 2 read only this (never the image tower): it is
filled from the Lance tables once, then indexed by row. Tokens stay fp16 here, as stored,
and are cast to float32 per batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True)
class CaptionWords:
    """Each caption token's own frozen embedding, stored once per distinct token: ids
    [T, L] (int32) into table [U, D] (fp16). Dense [T, L, D] would double a bank's text
    memory for real CLIP (D = Wt = 512), while the vocabulary of a corpus is small."""

    ids: torch.Tensor
    table: torch.Tensor

    def __post_init__(self) -> None:
        if self.ids.ndim != 2 or self.table.ndim != 2:
            raise ValueError(f"CaptionWords: ids {tuple(self.ids.shape)} must be [T, L] and "
                             f"table {tuple(self.table.shape)} [U, D]")
        if self.ids.numel() and (self.ids.min() < 0 or self.ids.max() >= len(self.table)):
            raise ValueError(f"CaptionWords: ids point outside the {len(self.table)}-row table")

    @classmethod
    def from_dense(cls, words: torch.Tensor) -> CaptionWords:
        """From dense embeddings [T, L, D] (each distinct vector stored once)."""
        table, ids = torch.unique(words.flatten(0, 1), dim=0, return_inverse=True)
        return cls(ids.view(words.shape[:2]).int(), table.half())

    @property
    def shape(self) -> tuple[int, int, int]:
        return (*self.ids.shape, self.table.shape[1])

    def __getitem__(self, rows: torch.Tensor) -> CaptionWords:
        return CaptionWords(self.ids[rows], self.table)

    def dense(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Float32 embeddings [B, L, D] of caption rows (all captions without rows)."""
        ids = self.ids if rows is None else self.ids[rows]
        return self.table[ids.long()].float()


class TokenSource(Protocol):
    """What the re-ranker reads: float32 inputs of caption rows and video rows."""

    caption_video: torch.Tensor  # [T] video row of each caption

    @property
    def num_videos(self) -> int: ...

    @property
    def num_captions(self) -> int: ...

    def text_batch(self, rows: torch.Tensor) -> dict[str, torch.Tensor]: ...

    def video_batch(self, rows: torch.Tensor) -> dict[str, torch.Tensor]: ...


@dataclass
class TokenBank:
    """Video and caption tokens of one split, aligned by row index.

    Shapes (V videos, T captions, F frames, P patches, D embed dim, Wv / Wt widths):
      video_ids [V], video_cls [V, F, D] (projected frame CLS embeddings),
      video_patches [V, F, P, Wv] (unprojected patch tokens), frame_mask [V, F] (True = real
      frame, False = padding of a short clip), caption_ids [T], text_eot [T, D] (projected
      EOT embedding), text_tokens [T, L, Wt] (unprojected token features),
      text_mask [T, L] (True = real token), caption_video [T] (row of the caption's video);
      optional text_words (each token's own frozen embedding, [T, L, D] as CaptionWords,
      for the re-ranker's word-timing and word-presence terms; `attach_word_embeddings`).
    """

    video_ids: list[str]
    video_cls: torch.Tensor
    video_patches: torch.Tensor
    frame_mask: torch.Tensor
    caption_ids: list[str]
    text_eot: torch.Tensor
    text_tokens: torch.Tensor
    text_mask: torch.Tensor
    caption_video: torch.Tensor
    text_words: CaptionWords | None = None

    def __post_init__(self) -> None:
        v, f = self.frame_mask.shape
        t = len(self.caption_ids)
        checks = {
            "video_ids": len(self.video_ids) == v,
            "video_cls": self.video_cls.shape[:2] == (v, f),
            "video_patches": self.video_patches.shape[:2] == (v, f),
            "text_eot": self.text_eot.shape[0] == t,
            "text_tokens": self.text_tokens.shape[0] == t,
            "text_mask": self.text_mask.shape == self.text_tokens.shape[:2],
            "caption_video": self.caption_video.shape == (t,),
            "text_words": self.text_words is None
            or self.text_words.shape[:2] == self.text_tokens.shape[:2],
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"TokenBank: inconsistent shapes for {', '.join(bad)}")
        if t and (self.caption_video.min() < 0 or self.caption_video.max() >= v):
            raise ValueError("TokenBank: caption_video points outside the video rows")

    @property
    def num_videos(self) -> int:
        return len(self.video_ids)

    @property
    def num_captions(self) -> int:
        return len(self.caption_ids)

    def video_batch(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """Float32 visual inputs of the re-ranker for video rows [B]."""
        return {
            "video_cls": self.video_cls[rows].float(),
            "video_patches": self.video_patches[rows].float(),
            "frame_mask": self.frame_mask[rows],
        }

    def text_batch(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """Float32 text inputs of the re-ranker for caption rows [B]."""
        return {
            "text_eot": self.text_eot[rows].float(),
            "text_tokens": self.text_tokens[rows].float(),
            "text_mask": self.text_mask[rows],
            **({} if self.text_words is None else {"text_words": self.text_words.dense(rows)}),
        }
