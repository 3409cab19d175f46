"""Two-stage retrieval: stage-1 top K re-scored by the re-ranker, fused by a weighted sum.

For each query the K best stage-1 candidates get `stage1 + w * stage2`; they are ranked
above every other item, and the order outside the top K stays stage 1's. Both directions:
text->video re-scores the top-K videos per caption, video->text the top-K captions per video.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from crosstvr_core.retrieval.stage1 import top_k_candidates

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


def text_to_video_candidates(stage1: torch.Tensor, k: int, score_pairs: PairScorer
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """stage1 [T, V] -> (top-K video rows per caption [T, K], their stage-2 scores [T, K])."""
    _, top_idx = top_k_candidates(stage1, k)  # [T, K]
    text_rows = torch.arange(stage1.shape[0]).unsqueeze(1).expand_as(top_idx)
    return top_idx, score_pairs(text_rows.reshape(-1), top_idx.reshape(-1)).view_as(top_idx)


def video_to_text_candidates(stage1: torch.Tensor, k: int, score_pairs: PairScorer
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """stage1 [T, V] -> (top-K caption rows per video [V, K], their stage-2 scores [V, K])."""
    _, top_idx = top_k_candidates(stage1.T, k)  # [V, K]
    video_rows = torch.arange(stage1.shape[1]).unsqueeze(1).expand_as(top_idx)
    return top_idx, score_pairs(top_idx.reshape(-1), video_rows.reshape(-1)).view_as(top_idx)


def relevance(caption_video: torch.Tensor, num_videos: int) -> torch.Tensor:
    """[T, V] True where video v is caption t's own (its transpose serves video->text)."""
    truth = torch.zeros(len(caption_video), num_videos, dtype=torch.bool)
    truth[torch.arange(len(caption_video)), caption_video.long()] = True
    return truth


def rerank_text_to_video(
    stage1: torch.Tensor, k: int, score_pairs: PairScorer, weight: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """stage1 [T, V] -> (fused [T, V], stage-2 scores [T, K] of the candidates)."""
    top_idx, stage2 = text_to_video_candidates(stage1, k, score_pairs)
    return fuse_top_k(stage1, top_idx, stage2, weight), stage2


def rerank_video_to_text(
    stage1: torch.Tensor, k: int, score_pairs: PairScorer, weight: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """stage1 [T, V] -> (fused [T, V] built column-wise, stage-2 scores [V, K]).

    Each video re-scores its own top-K captions; the result is returned as a text x video
    matrix so the same metric code reads both directions.
    """
    top_idx, stage2 = video_to_text_candidates(stage1, k, score_pairs)
    return fuse_top_k(stage1.T, top_idx, stage2, weight).T, stage2


# fusion weights tried on validation: 0 is stage 1 alone, the largest is stage 2 alone
# within the top K (stage 1 then only breaks ties)
FUSION_WEIGHT_GRID = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 1e4)
STAGE2_ONLY_WEIGHT = 1e4


def candidate_hits(top_idx: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """[N, K] True where candidate top_idx[n, k] is a right answer of query n; truth [N, M]
    is a boolean relevance matrix over every item."""
    return truth.gather(1, top_idx)


def stage2_only_top1(top_idx: torch.Tensor, stage2: torch.Tensor, truth: torch.Tensor
                     ) -> dict[str, float]:
    """How often the re-ranker's own score puts a right item first within the stage-1 top K:
    over all queries (`top1`, %), over queries with a right item in the list
    (`top1_when_listed`, %), and what a random order of the list would give (`chance`, %)."""
    hits = candidate_hits(top_idx, truth)  # [N, K]
    first = hits.gather(1, stage2.argmax(dim=1, keepdim=True)).squeeze(1).float()  # [N]
    listed = hits.any(dim=1)
    chance = hits.float().mean(dim=1)  # a random pick within the list
    return {
        "top1": 100.0 * float(first.mean()),
        "top1_when_listed": 100.0 * float(first[listed].mean()) if listed.any() else 0.0,
        "chance": 100.0 * float(chance.mean()),
    }


def fused_top1(stage1: torch.Tensor, top_idx: torch.Tensor, stage2: torch.Tensor,
               truth: torch.Tensor, weight: float) -> float:
    """R@1 (%) of `stage1 + weight * stage2` over the top K (rows are queries; truth [N, M])."""
    fused = stage1.float().gather(1, top_idx) + weight * stage2.float()
    first = top_idx.gather(1, fused.argmax(dim=1, keepdim=True))  # [N, 1]
    return 100.0 * float(truth.gather(1, first).float().mean())


def pick_fusion_weight(stage1: torch.Tensor, top_idx: torch.Tensor, stage2: torch.Tensor,
                       truth: torch.Tensor, grid: tuple[float, ...] = FUSION_WEIGHT_GRID
                       ) -> tuple[float, float]:
    """(weight, R@1) of the grid weight with the best fused R@1 on these (validation)
    queries; ties go to the smaller weight (closer to stage 1)."""
    best = (grid[0], -1.0)
    for weight in grid:
        r1 = fused_top1(stage1, top_idx, stage2, truth, weight)
        if r1 > best[1] + 1e-9:
            best = (weight, r1)
    return best
