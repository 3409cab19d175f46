"""The candidate lists the re-ranker trains on: stage-1 top-K lists like the ones it re-ranks.

At test time the re-ranker sees the top K of a stage 1 that never saw the test captions. A
stage 1 trained on the training captions has memorised them: its training lists hold the
positive first and unrelated videos after it, which teach nothing (the loss is at its floor
from step 0). Cross-fitting fixes that: the training videos are split into k folds, a stage 1
is trained on all folds but one, and it scores the captions and videos of the held-out fold.
Every training list then comes from a stage 1 that never saw that caption or that video.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from crosstvr_core.bank_split import bank_subset
from crosstvr_core.retrieval.two_stage import fit_list_softmax
from crosstvr_core.token_bank import TokenBank

# a stage 1 trained on a bank, returned as a scorer: (captions of bank A, videos of bank B)
# -> similarity [T_A, V_B]
Stage1Trainer = Callable[[TokenBank], Callable[[TokenBank, TokenBank], torch.Tensor]]


@dataclass(frozen=True)
class TrainingLists:
    """Per caption its stage-1 top-K video rows [T, K]; per video its top-K caption rows
    [V, K]; both best first, rows of the same bank. With the similarities they were drawn
    from ([T, V]: `by_caption` ranked the videos of each caption, `by_video` the captions of
    each video), what stage 1 scored every entry, for `train.stage1_residual` and
    `train.stage1_distillation`."""

    videos_per_caption: torch.Tensor
    captions_per_video: torch.Tensor
    by_caption: torch.Tensor | None = None
    by_video: torch.Tensor | None = None

    def subset(self, caption_rows: torch.Tensor, video_rows: torch.Tensor) -> TrainingLists:
        """The lists of a sub-bank (its captions and videos, renumbered); entries outside it
        are dropped and each list is refilled to K from the remaining order."""
        video_map = torch.full((int(self.captions_per_video.shape[0]),), -1, dtype=torch.long)
        video_map[video_rows] = torch.arange(len(video_rows))
        caption_map = torch.full((int(self.videos_per_caption.shape[0]),), -1, dtype=torch.long)
        caption_map[caption_rows] = torch.arange(len(caption_rows))
        scores = [None if sim is None else sim[caption_rows][:, video_rows]
                  for sim in (self.by_caption, self.by_video)]
        return TrainingLists(_remap(self.videos_per_caption[caption_rows], video_map),
                             _remap(self.captions_per_video[video_rows], caption_map), *scores)

    def stage1_scores(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(by_caption, by_video), or a clear error where the lists were made without them."""
        if self.by_caption is None or self.by_video is None:
            raise ValueError("train.stage1_residual / stage1_distillation: the training lists "
                             "kept no stage-1 scores (by_caption, by_video)")
        return self.by_caption, self.by_video

    def stage1_temperatures(self, caption_video: torch.Tensor) -> tuple[float, float]:
        """(text->video, video->text) multipliers that make stage 1's own scores of these
        lists their best listwise softmax (maximum likelihood of the right items): stage 1
        as a calibrated logit: the offset `train.stage1_residual` trains the re-ranker on, the
        teacher of `train.stage1_distillation`."""
        by_caption, by_video = self.stage1_scores()
        rows = torch.arange(len(caption_video)).unsqueeze(1)
        t2v_hits = self.videos_per_caption == caption_video.unsqueeze(1)
        (t2v,) = fit_list_softmax([by_caption[rows, self.videos_per_caption]], t2v_hits)
        videos = torch.arange(self.captions_per_video.shape[0]).unsqueeze(1)
        v2t_hits = caption_video[self.captions_per_video] == videos
        (v2t,) = fit_list_softmax([by_video[self.captions_per_video, videos]], v2t_hits)
        return t2v, v2t


def _remap(lists: torch.Tensor, mapping: torch.Tensor) -> torch.Tensor:
    """Rows of old ids [N, K] -> new ids, entries without one removed, padded by repeating
    each row's last kept entry (a list must keep K columns)."""
    new = mapping[lists]  # [N, K], -1 where dropped
    out = torch.empty_like(new)
    for i, row in enumerate(new):
        kept = row[row >= 0]
        if len(kept) == 0:
            kept = torch.zeros(1, dtype=torch.long)
        out[i] = torch.cat([kept, kept[-1:].expand(len(row) - len(kept))])
    return out


def lists_from_similarity(by_caption: torch.Tensor, by_video: torch.Tensor, k: int,
                          keep_scores: bool = False) -> TrainingLists:
    """Top-K lists from a caption-side similarity [T, V] (rows) and a video-side one [T, V]
    (columns); the two are the same matrix unless cross-fitted. `keep_scores` keeps both
    matrices with the lists (train.stage1_residual and stage1_distillation read them); off, they can be freed,
    which matters at hundreds of thousands of captions."""
    k_videos, k_captions = min(k, by_caption.shape[1]), min(k, by_video.shape[0])
    scores = (by_caption, by_video) if keep_scores else (None, None)
    return TrainingLists(by_caption.topk(k_videos, dim=1).indices,
                         by_video.T.topk(k_captions, dim=1).indices, *scores)


def fold_of_videos(num_videos: int, folds: int, seed: int) -> torch.Tensor:
    """A fold id in [0, folds) per video, balanced and seeded."""
    order = torch.randperm(num_videos, generator=torch.Generator().manual_seed(seed))
    fold = torch.empty(num_videos, dtype=torch.long)
    fold[order] = torch.arange(num_videos) % folds
    return fold


def cross_fitted_similarity(bank: TokenBank, folds: int, seed: int, train: Stage1Trainer
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(by_caption, by_video), both [T, V] over the whole bank: row c scored by the stage 1
    that did not see c's fold, column v by the one that did not see v's fold."""
    if folds < 2:
        raise ValueError(f"cross_fitted_similarity: need at least 2 folds, got {folds}")
    if bank.num_videos < folds:
        raise ValueError(f"cross_fitted_similarity: {bank.num_videos} videos for {folds} folds")
    fold = fold_of_videos(bank.num_videos, folds, seed)
    by_caption = torch.empty(bank.num_captions, bank.num_videos)
    by_video = torch.empty(bank.num_captions, bank.num_videos)
    caption_fold = fold[bank.caption_video]
    for f in range(folds):
        seen, _ = bank_subset(bank, torch.nonzero(fold != f).squeeze(1))
        score = train(seen)
        sim = score(bank, bank)  # [T, V]
        rows, cols = caption_fold == f, fold == f
        by_caption[rows] = sim[rows]
        by_video[:, cols] = sim[:, cols]
    return by_caption, by_video
