"""Retrieval metrics exactly as the text-video retrieval field computes them.

rank = number of gallery items scored strictly higher than the true one (0-based, so ties
count in the query's favour, as CLIP4Clip's `np.where(sorted == true)` on distinct scores);
R@K = 100 * mean(rank < K); MdR = median(rank) + 1; MnR = mean(rank) + 1.
With several captions per video: text->video ranks every caption; video->text scores each
video against each caption group by the max over its captions (`caption_video` maps a
caption row to its video column).
"""

from __future__ import annotations

import math

import numpy as np
import torch

DEFAULT_KS = (1, 5, 10)


class MetricsInputError(ValueError):
    """A similarity matrix or caption mapping that cannot be scored; the message says why."""


def _as_numpy(sim) -> np.ndarray:
    if isinstance(sim, torch.Tensor):
        sim = sim.detach().float().cpu().numpy()
    sim = np.asarray(sim, dtype=np.float64)
    if sim.ndim != 2:
        raise MetricsInputError(f"similarity: expected a 2-D text x video matrix, got {sim.ndim}-D")
    if not np.isfinite(sim).all():
        raise MetricsInputError(f"similarity: {int((~np.isfinite(sim)).sum())} NaN/inf scores")
    return sim


def _caption_video(sim: np.ndarray, caption_video) -> np.ndarray:
    num_texts, num_videos = sim.shape
    if caption_video is None:
        if num_texts != num_videos:
            raise MetricsInputError(
                f"similarity is {num_texts}x{num_videos}: pass caption_video for several "
                "captions per video"
            )
        return np.arange(num_texts)
    caption_video = np.asarray(
        caption_video.cpu() if isinstance(caption_video, torch.Tensor) else caption_video
    ).astype(np.int64)
    if caption_video.shape != (num_texts,):
        raise MetricsInputError(
            f"caption_video: expected {num_texts} entries (one per caption), got "
            f"{caption_video.shape}"
        )
    bad = np.flatnonzero((caption_video < 0) | (caption_video >= num_videos))
    if bad.size:
        raise MetricsInputError(
            f"caption_video: caption row {int(bad[0])} points at video {int(caption_video[bad[0]])}"
            f", outside 0..{num_videos - 1}"
        )
    orphans = np.setdiff1d(np.arange(num_videos), caption_video)
    if orphans.size:
        raise MetricsInputError(
            f"caption_video: {orphans.size} video(s) have no caption (first: column "
            f"{int(orphans[0])})"
        )
    return caption_video


def ranks_of_truth(scores: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """0-based rank of truth[i] in row i: count of items scored strictly higher."""
    true_scores = scores[np.arange(len(truth)), truth]
    return (scores > true_scores[:, None]).sum(axis=1)


def summarize_ranks(ranks: np.ndarray, ks=DEFAULT_KS) -> dict[str, float]:
    ranks = np.asarray(ranks)
    out = {f"R{k}": float(100.0 * np.mean(ranks < k)) for k in ks}
    out["MdR"] = float(np.median(ranks) + 1)
    out["MnR"] = float(np.mean(ranks) + 1)
    return out


def text_to_video_ranks(sim, caption_video=None) -> np.ndarray:
    sim = _as_numpy(sim)
    return ranks_of_truth(sim, _caption_video(sim, caption_video))


def video_to_text_ranks(sim, caption_video=None) -> np.ndarray:
    """Per caption group: video v scored by the max over the group's captions."""
    sim = _as_numpy(sim)
    caption_video = _caption_video(sim, caption_video)
    num_videos = sim.shape[1]
    # group_scores[v, g] = max over captions c of video g of sim[c, v]
    group_scores = np.full((num_videos, num_videos), -np.inf)
    np.maximum.at(group_scores.T, caption_video, sim)
    return ranks_of_truth(group_scores, np.arange(num_videos))


def retrieval_metrics(sim, caption_video=None, ks=DEFAULT_KS) -> dict[str, dict[str, float]]:
    """{"t2v": {R1, R5, R10, MdR, MnR}, "v2t": {...}} for a text x video similarity."""
    return {
        "t2v": summarize_ranks(text_to_video_ranks(sim, caption_video), ks),
        "v2t": summarize_ranks(video_to_text_ranks(sim, caption_video), ks),
    }


def recall_at_k_curve(ranks: np.ndarray, max_k: int) -> np.ndarray:
    """R@1..R@max_k in percent, for recall curves."""
    ranks = np.asarray(ranks)
    return np.array([100.0 * np.mean(ranks < k) for k in range(1, max_k + 1)])


def mcnemar_exact_p(gained: int, lost: int) -> float:
    """Two-sided exact McNemar p-value of a paired comparison in which `gained` queries are
    right only under the new method and `lost` only under the old: the binomial test of
    min(gained, lost) of their sum at 1/2. Why: two accuracies a few queries apart are only
    told apart by the queries that changed, not by the totals."""
    if gained < 0 or lost < 0:
        raise MetricsInputError(f"mcnemar_exact_p: counts must be >= 0, got {gained}, {lost}")
    n = gained + lost
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(gained, lost) + 1)) / 2.0 ** n
    return min(1.0, 2.0 * tail)
