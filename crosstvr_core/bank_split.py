"""The re-ranker's validation videos: a split of their own, or cut from the train bank.

A dataset's own validation split (`data.val_split`) is used whole and the train bank stays
whole. Otherwise stage 1, the cross-fitted training lists and the re-ranker all hold out the
same seeded videos (`train.val_fraction`, `train.seed`), so validation measures retrieval of
videos none of them trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from crosstvr_core.disk_tokens import select_rows
from crosstvr_core.token_bank import TokenBank


@dataclass(frozen=True)
class BankSplit:
    """A bank cut by videos into a training part and a held-out validation part."""

    train: TokenBank
    val: TokenBank
    train_videos: torch.Tensor  # [V_train] rows of the original bank
    val_videos: torch.Tensor | None  # [V_val]; None: a split of its own (separate_validation)
    train_captions: torch.Tensor  # [T_train]
    val_captions: torch.Tensor | None  # [T_val]

    @property
    def held_out(self) -> bool:
        """True when the validation videos were cut from the train bank."""
        return self.val_videos is not None


def bank_subset(bank: TokenBank, video_rows: torch.Tensor) -> tuple[TokenBank, torch.Tensor]:
    """The videos `video_rows` [V'] and all their captions; returns (bank, caption rows)."""
    video_rows = video_rows.long()
    new_row = torch.full((bank.num_videos,), -1, dtype=torch.long)
    new_row[video_rows] = torch.arange(len(video_rows))
    caption_rows = (new_row[bank.caption_video] >= 0).nonzero().squeeze(1)  # [T']
    subset = TokenBank(
        video_ids=[bank.video_ids[i] for i in video_rows.tolist()],
        video_cls=bank.video_cls[video_rows],
        video_patches=select_rows(bank.video_patches, video_rows),
        frame_mask=bank.frame_mask[video_rows],
        caption_ids=[bank.caption_ids[i] for i in caption_rows.tolist()],
        text_eot=bank.text_eot[caption_rows],
        text_tokens=bank.text_tokens[caption_rows],
        text_mask=bank.text_mask[caption_rows],
        caption_video=new_row[bank.caption_video[caption_rows]],
        text_words=None if bank.text_words is None else bank.text_words[caption_rows],
    )
    return subset, caption_rows


def split_validation(bank: TokenBank, fraction: float, seed: int) -> BankSplit:
    """Hold out a seeded `fraction` of the videos (at least 2, leaving at least 2) with
    their captions, so validation measures retrieval of videos never trained on."""
    if not 0 < fraction < 1:
        raise ValueError(f"split_validation: fraction must be in (0, 1), got {fraction}")
    num_val = max(2, round(fraction * bank.num_videos))
    if bank.num_videos - num_val < 2:
        raise ValueError(
            f"split_validation: {bank.num_videos} videos are too few to hold out {num_val} "
            "and still train on 2 (set train.val_fraction=0 to train without validation)"
        )
    order = torch.randperm(bank.num_videos, generator=torch.Generator().manual_seed(seed))
    val_videos, train_videos = order[:num_val].sort().values, order[num_val:].sort().values
    train, train_captions = bank_subset(bank, train_videos)
    val, val_captions = bank_subset(bank, val_videos)
    return BankSplit(train, val, train_videos, val_videos, train_captions, val_captions)


def separate_validation(train: TokenBank, val: TokenBank) -> BankSplit:
    """Validation on a split of its own: every train video stays in training."""
    return BankSplit(train, val, torch.arange(train.num_videos), None,
                     torch.arange(train.num_captions), None)


def without_validation(bank: TokenBank, fraction: float, seed: int) -> TokenBank:
    """The bank minus the videos `split_validation(bank, fraction, seed)` holds out (all of
    it when fraction is 0), for models that must not see the validation videos."""
    return bank if fraction <= 0 else split_validation(bank, fraction, seed).train
