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


def fit_list_softmax(scores: list[torch.Tensor], hits: torch.Tensor, ridge: float = 1e-5
                     ) -> list[float]:
    """Multipliers (c_1, ..., c_n) of the listwise softmax of `sum_i c_i * scores[i]` over
    each list (rows of [N, K], hits [N, K] True at its right items) fit by maximum likelihood
    of the right items; lists without one are left out (all []: zeros). Convex in c; each
    score is scaled to unit spread within its lists first (an offset per list cancels in
    the softmax), and a small ridge keeps lists the scores separate perfectly finite."""
    listed = hits.any(dim=1)
    if not listed.any():
        return [0.0] * len(scores)
    hits = hits[listed]
    xs, spreads = [], []
    for score in scores:
        score = score.double()[listed]
        spread = float((score - score.mean(1, keepdim=True)).std()) or 1.0
        xs.append(score / spread)
        spreads.append(spread)
    params = torch.zeros(len(xs), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([params], max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = sum(c * x for c, x in zip(params, xs, strict=True))
        right = torch.logsumexp(logits.masked_fill(~hits, float("-inf")), dim=1)
        loss = (torch.logsumexp(logits, dim=1) - right).mean() + ridge * params.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return [float(c) / spread for c, spread in zip(params.detach(), spreads, strict=True)]


def fit_fusion_weight(stage1: torch.Tensor, top_idx: torch.Tensor, stage2: torch.Tensor,
                      truth: torch.Tensor, ridge: float = 1e-5) -> tuple[float, float]:
    """(weight, R@1) of the fusion learned on these (validation) queries: a listwise softmax
    over each query's top K of `a * stage1 + b * stage2`, fit by maximum likelihood of its
    right items, gives w = b / a.

    Why not the best R@1 of a grid: R@1 only counts which item lands first, so on a few
    hundred queries it cannot tell neighbouring weights apart and a tie or one caption
    decides. The likelihood also weighs how far a right item is from first; one confident
    stage-2 mistake against a clear stage-1 margin (a colour stage 1 reads well) costs it
    more than a close call. The loss is convex in (a, b); both scores are scaled to unit
    spread first, and a small ridge keeps a list the scores separate perfectly finite.
    Where stage 2 does not help (b <= 0) w is 0; where stage 1 orders the lists worse than
    nothing (a <= 0) w is stage 2 alone (STAGE2_ONLY_WEIGHT)."""
    s1 = stage1.double().gather(1, top_idx)
    hits = truth.gather(1, top_idx)
    listed = hits.any(dim=1)
    if not listed.any():  # nothing to learn from: stage 1 alone
        return 0.0, fused_top1(stage1, top_idx, stage2, truth, 0.0)
    a, b = fit_list_softmax([s1, stage2.double()], hits, ridge)
    if b <= 0:
        weight = 0.0
    elif a <= 0:
        weight = STAGE2_ONLY_WEIGHT
    else:
        weight = min(b / a, STAGE2_ONLY_WEIGHT)
    return weight, fused_top1(stage1, top_idx, stage2, truth, weight)


def choose_fusion_weight(stage1: torch.Tensor, top_idx: torch.Tensor, stage2: torch.Tensor,
                         truth: torch.Tensor, how: str = "likelihood") -> tuple[float, float]:
    """(weight, R@1) on validation queries: "likelihood" (fit_fusion_weight) or "recall"
    (pick_fusion_weight, the grid's best R@1)."""
    if how == "likelihood":
        return fit_fusion_weight(stage1, top_idx, stage2, truth)
    if how == "recall":
        return pick_fusion_weight(stage1, top_idx, stage2, truth)
    raise ValueError(f"fusion weight: unknown way to choose it {how!r} "
                     "(expected 'likelihood' or 'recall')")


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
