"""Stage 1: candidate selection by cosine similarity (CLIP4Clip meanP, zero-shot).

A video's embedding is the mean of its valid frames' projected CLS embeddings; a caption's
is its projected EOT embedding; the score is their cosine. Everything the re-ranker ever
sees comes from this matrix's top K, so its recall@K is the ceiling of the whole system.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from crosstvr_core.bank_split import without_validation
from crosstvr_core.config import CrossTVRConfig
from crosstvr_core.token_bank import TokenBank


def mean_pool_frames(video_cls: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """meanP: frame CLS embeddings [V, F, D] -> [V, D] L2-normalised mean of the unit frame
    embeddings over valid frames (frame_mask [V, F])."""
    frames = F.normalize(video_cls.float(), dim=-1)  # [V, F, D]
    mask = frame_mask.float().unsqueeze(-1)  # [V, F, 1]
    pooled = (frames * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # [V, D]
    return F.normalize(pooled, dim=-1)


def mean_pooled_video_embeddings(bank: TokenBank) -> torch.Tensor:
    """The bank's videos, meanP-pooled ([V, D])."""
    return mean_pool_frames(bank.video_cls, bank.frame_mask)


def text_embeddings(bank: TokenBank) -> torch.Tensor:
    """[T, D] L2-normalised EOT embeddings."""
    return F.normalize(bank.text_eot.float(), dim=-1)


def meanp_similarity(bank_text: TokenBank, bank_video: TokenBank | None = None) -> torch.Tensor:
    """Cosine similarity [T, V] between captions and mean-pooled videos."""
    bank_video = bank_video or bank_text
    return text_embeddings(bank_text) @ mean_pooled_video_embeddings(bank_video).T


def top_k_candidates(sim: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the k best columns (scores [N, k], indices [N, k]), best first."""
    k = min(k, sim.shape[1])
    return torch.topk(sim, k, dim=1)


def stage1_training_bank(cfg: CrossTVRConfig, train: TokenBank, separate_val: bool = False
                         ) -> TokenBank:
    """The train videos a trained stage 1 learns from: all but the re-ranker's held-out
    validation videos, unless `stage1.train_on_validation_videos` or the validation videos
    are a split of their own (`separate_val`), outside `train` already.

    The re-ranker validates on two-stage R@1 over those videos. A stage 1 trained on them
    has memorised their captions (validation R@1 89% against 31.8% on test, measured on
    the generated benchmark), so early stopping would compare re-rankers on candidate lists
    that look nothing like the test set's.
    """
    if cfg.stage1.train_on_validation_videos or separate_val:
        return train
    return without_validation(train, cfg.train.val_fraction, cfg.train.seed)
