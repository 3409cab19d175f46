"""Two-stage retrieval: stage-1 top K re-scored by the re-ranker, fused by a weighted sum.

For each query the K best stage-1 candidates get `stage1 + w * stage2`; they are ranked
above every other item, and the order outside the top K stays stage 1's. Both directions:
text->video re-scores the top-K videos per caption, video->text the top-K captions per video.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from crosstvr_core.stage1 import top_k_candidates

# (text_rows [N], video_rows [N]) -> stage-2 scores [N]
PairScorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def fuse_top_k(
    stage1: torch.Tensor, top_idx: torch.Tensor, stage2: torch.Tensor, weight: float
) -> torch.Tensor:
    """Stage-1 matrix [N, M] with its top-K entries (top_idx [N, K]) replaced by the fused
    score [N, K], lifted above every non-candidate so they stay the first K."""
    stage1 = stage1.float()
    top_scores = stage1.gather(1, top_idx)
    fused = top_scores + weight * stage2.float()
    # after the lift the lowest candidate scores stage1.max() + 1 > every non-candidate
    lift = (stage1.max() - fused.min()).clamp(min=0) + 1.0
    out = stage1.clone()
    out.scatter_(1, top_idx, fused + lift)
    return out


def rerank_text_to_video(
    stage1: torch.Tensor, k: int, score_pairs: PairScorer, weight: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """stage1 [T, V] -> (fused [T, V], stage-2 scores [T, K] of the candidates)."""
    _, top_idx = top_k_candidates(stage1, k)  # [T, K]
    text_rows = torch.arange(stage1.shape[0]).unsqueeze(1).expand_as(top_idx)
    stage2 = score_pairs(text_rows.reshape(-1), top_idx.reshape(-1)).view_as(top_idx)
    return fuse_top_k(stage1, top_idx, stage2, weight), stage2


def rerank_video_to_text(
    stage1: torch.Tensor, k: int, score_pairs: PairScorer, weight: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """stage1 [T, V] -> (fused [T, V] built column-wise, stage-2 scores [V, K]).

    Each video re-scores its own top-K captions; the result is returned as a text x video
    matrix so the same metric code reads both directions.
    """
    by_video = stage1.T  # [V, T]
    _, top_idx = top_k_candidates(by_video, k)  # [V, K] caption rows
    video_rows = torch.arange(by_video.shape[0]).unsqueeze(1).expand_as(top_idx)
    stage2 = score_pairs(top_idx.reshape(-1), video_rows.reshape(-1)).view_as(top_idx)
    return fuse_top_k(by_video, top_idx, stage2, weight).T, stage2
