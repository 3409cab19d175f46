"""Training the seqTransf temporal head on cached frame embeddings, and scoring with it.

Both read only a TokenBank (frame CLS + caption EOT embeddings): the frozen encoder ran once
when the bank was filled, so an epoch is a few small transformer passes, not a CLIP pass.

Loss: CLIP's symmetric InfoNCE over the in-batch caption x video similarity times
exp(logit_scale); with `reversed_negatives`, every batch video played backwards is one more
text->video negative (time-reversal negatives, as in "Test of Time", Bagad et al. 2023). A batch is a shuffled slice of caption rows, so two captions of one video
can meet: each distinct video is encoded once and is one column of text->video, and in
video->text a video's other captions are masked as false negatives (never sampled away).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from crosstvr_core.config import Stage1Config
from crosstvr_core.models.temporal_head import TemporalHead
from crosstvr_core.precision import autocast
from crosstvr_core.token_bank import TokenBank
from crosstvr_core.training.loop import Trainer, adamw_warmup_cosine, run_epochs
from crosstvr_core.training.negatives import play_backwards

EpochCallback = Callable[[int, dict, TemporalHead], None]


def contrastive_loss(
    text: torch.Tensor, video: torch.Tensor, caption_video: torch.Tensor, scale: torch.Tensor,
    extra_videos: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE of captions [B, D] vs the batch's distinct videos [U, D] (unit
    vectors); caption_video [B] is the column of each caption's video.

    text->video: each caption against the U videos, each counted once, plus the negative-only
    columns extra_videos [E, D] when given (e.g. the batch videos played backwards).
    video->text: for each caption, its video against the B captions, the video's other
    captions masked as false negatives (a video with n captions gives n rows, one per
    positive).
    """
    logits = scale * (text @ video.T)  # [B, U]
    columns = logits if extra_videos is None else torch.cat(
        [logits, scale * (text @ extra_videos.T)], dim=1)  # [B, U + E]
    t2v = F.cross_entropy(columns, caption_video)
    by_video = logits.T[caption_video]  # [B, B]: row j = the video of caption j vs captions
    same = caption_video[:, None] == caption_video[None, :]  # [B, B]
    false_negative = same & ~torch.eye(len(same), dtype=torch.bool, device=same.device)
    by_video = by_video.masked_fill(false_negative, float("-inf"))
    target = torch.arange(len(by_video), device=by_video.device)
    return 0.5 * (t2v + F.cross_entropy(by_video, target))


def train_temporal_head(
    head: TemporalHead,
    bank: TokenBank,
    cfg: Stage1Config,
    *,
    device: str | torch.device = "cpu",
    on_epoch_end: EpochCallback | None = None,
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
) -> list[dict]:
    """Train `head` on the bank's caption/video pairs; no encoder is involved.

    Seeded by cfg.seed (caption order; the global seed too, for dropout): the same head
    init, bank and cfg give the same result on CPU. Returns one record per epoch (epoch
    counts from 1, as passed to `on_epoch_end`, which may switch the head to eval: each
    epoch switches it back); the head is left in eval mode on `device`. Each epoch ends
    with a checkpoint in `checkpoint_dir` when given; with `resume`, training continues
    after the latest one, giving the weights an uninterrupted run would have.
    """
    device = torch.device(device)
    num_captions = bank.num_captions
    if bank.num_videos < 2:
        raise ValueError("train_temporal_head: need at least 2 training videos")
    if cfg.reversed_negatives and head.frame_position is None:
        raise ValueError("stage1.reversed_negatives needs stage1.frame_positions: without frame "
                         "positions a clip played backwards scores exactly as the clip")
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    head.to(device)
    # the bank's embeddings are small (fp16, one vector per frame / caption): move them once
    video_cls = bank.video_cls.to(device)  # [V, F, D]
    # patch tokens are the bank's largest tensor: read per batch, only by a patch branch
    video_patches = bank.video_patches if head.vision_width else None  # [V, F, P, Wv]
    frame_mask = bank.frame_mask.to(device)  # [V, F]
    text_eot = bank.text_eot.to(device)  # [T, D]
    text_tokens, text_mask = bank.text_tokens.to(device), bank.text_mask.to(device)
    caption_video = bank.caption_video.to(device)  # [T]

    steps_per_epoch = math.ceil(num_captions / cfg.batch_size)
    optimizer, schedule = adamw_warmup_cosine(head.optimizer_groups(cfg.weight_decay), cfg.lr,
                                              cfg.epochs * steps_per_epoch, cfg.warmup_fraction)

    def batches(epoch: int) -> tuple[torch.Tensor, ...]:
        return torch.randperm(num_captions, generator=generator).to(device).split(
            cfg.batch_size)

    def step(rows: torch.Tensor, global_step: int
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        videos = caption_video[rows]  # [B]
        unique, inverse = torch.unique(videos, return_inverse=True)  # [U], [B]
        reversed_video = None
        patches = None if video_patches is None else video_patches[unique.cpu()].to(device)
        with autocast(device):
            features = head.frame_features(video_cls[unique], patches)  # [U, F, D]
            video = head.pool_frames(features, frame_mask[unique])  # [U, D]
            text = head.encode_text(text_eot[rows], text_tokens[rows], text_mask[rows])
            if cfg.reversed_negatives:  # the same frames backwards: only time differs
                back = play_backwards({"frame_mask": frame_mask[unique],
                                       "video_cls": features, "video_patches": None})
                reversed_video = head.pool_frames(back["video_cls"], frame_mask[unique])
                reversed_video = reversed_video.float()  # [U, D]
        loss = contrastive_loss(text.float(), video.float(), inverse, head.scale(),
                                reversed_video)
        return loss, {}

    def epoch_extras(epoch: int, seconds: float) -> dict:
        return {
            "logit_scale": head.scale().item(),  # the multiplier exp(logit_scale), <= 100
            "residual_gate": head.residual_gate.detach().abs().mean().item(),  # 0 = meanP
            "captions_per_second": num_captions / seconds,
        }

    history = run_epochs(
        head, Trainer(batches=batches, step=step, steps_per_epoch=steps_per_epoch,
                      epoch_extras=epoch_extras),
        optimizer, schedule, generator, epochs=cfg.epochs, grad_clip=cfg.grad_clip,
        name="seqTransf", checkpoint_dir=checkpoint_dir, resume=resume,
        on_epoch_end=on_epoch_end, progress=progress,
    )
    head.eval()
    return history


def _embed_batched(
    head: TemporalHead, count: int, embed: Callable[[slice, torch.device], torch.Tensor],
    batch_size: int, device: str | torch.device,
) -> torch.Tensor:
    """Run `embed(rows, device)` over row slices in eval mode, no grad -> [count, D] on device.
    The head's train/eval mode is restored."""
    device = torch.device(device)
    was_training = head.training
    head.to(device).eval()
    out = torch.empty(count, head.embed_dim, device=device)
    # inference mode only around the forward: moving the head inside it would turn its
    # parameters into inference tensors that a later training step cannot use
    with torch.inference_mode():
        for start in range(0, count, batch_size):
            rows = slice(start, start + batch_size)
            with autocast(device):
                out[rows] = embed(rows, device)
    head.train(was_training)
    return out


def temporal_video_embeddings(
    head: TemporalHead,
    bank: TokenBank,
    *,
    batch_size: int = 1024,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Unit video embeddings [V, D] (float32, on `device`); eval mode, no grad, batched."""
    return _embed_batched(
        head, bank.num_videos,
        lambda rows, dev: head(bank.video_cls[rows].to(dev), bank.frame_mask[rows].to(dev),
                               bank.video_patches[rows].to(dev) if head.vision_width else None),
        batch_size, device,
    )


def temporal_text_embeddings(
    head: TemporalHead, bank: TokenBank, *, batch_size: int = 1024,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Unit caption embeddings [T, D] (float32, on `device`); eval mode, no grad, batched."""
    return _embed_batched(
        head, bank.num_captions,
        lambda rows, dev: head.encode_text(bank.text_eot[rows].to(dev),
                                           bank.text_tokens[rows].to(dev),
                                           bank.text_mask[rows].to(dev)),
        batch_size, device,
    )


def temporal_similarity(
    head: TemporalHead,
    bank_text: TokenBank,
    bank_video: TokenBank | None = None,
    *,
    batch_size: int = 1024,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Cosine similarity [T, V] (float32, CPU) of the head's caption and video embeddings.
    Raw cosine: apply `dual_softmax` on top if the config asks for it."""
    bank_video = bank_text if bank_video is None else bank_video
    video = temporal_video_embeddings(head, bank_video, batch_size=batch_size, device=device)
    text = temporal_text_embeddings(head, bank_text, batch_size=batch_size, device=video.device)
    return (text @ video.T).cpu()
