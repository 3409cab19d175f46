"""Training the re-ranker on cached tokens, and scoring (text, video) pairs with it.

Both read only a TokenBank: the frozen encoders ran once when the bank was filled, which is
what makes a re-ranker over ViT-G-sized tokens affordable (the paper's scalability claim).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from crosstvr_core.config import TrainConfig
from crosstvr_core.hard_negatives import (
    random_negative_texts,
    random_negative_videos,
    sample_hard_negative_texts,
    sample_hard_negative_videos,
)
from crosstvr_core.reranker import CrossTVRReranker
from crosstvr_core.token_bank import TokenBank

EpochCallback = Callable[[int, dict, CrossTVRReranker], None]


def training_autocast(device: torch.device) -> AbstractContextManager:
    """bf16 autocast on CUDA (no loss scaling needed); plain fp32 elsewhere."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def warmup_cosine(total_steps: int, warmup_fraction: float) -> Callable[[int], float]:
    """LR factor per optimizer step: linear warm-up, then cosine decay to zero."""
    warmup = int(warmup_fraction * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _pair_inputs(
    bank_text: TokenBank,
    text_rows: torch.Tensor,
    bank_video: TokenBank,
    video_rows: torch.Tensor,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """Float32 model inputs of pairs (text_rows[i], video_rows[i]), moved to device."""
    inputs = {**bank_text.text_batch(text_rows), **bank_video.video_batch(video_rows)}
    return {name: value.to(device, non_blocking=True) for name, value in inputs.items()}


def _sample_negatives(
    bank: TokenBank,
    stage1_sim: torch.Tensor,
    text_rows: torch.Tensor,
    positive_video: torch.Tensor,
    cfg: TrainConfig,
    generator: torch.Generator,
    hard_fraction: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(negative video per text [B], negative caption per positive video [B]).

    Each pair is hard with probability `hard_fraction` (the curriculum), else random.
    """
    neg_video = random_negative_videos(positive_video, bank.num_videos, generator)
    neg_text = random_negative_texts(bank.caption_video, positive_video, generator)
    if not cfg.hard_negatives or hard_fraction <= 0:
        return neg_video, neg_text
    tau = cfg.hard_negative_temperature
    hard_video = sample_hard_negative_videos(stage1_sim[text_rows], positive_video, tau, generator)
    hard_text = sample_hard_negative_texts(
        stage1_sim[:, positive_video].T, bank.caption_video, positive_video, tau, generator
    )
    use_hard = torch.rand(len(text_rows), generator=generator) < hard_fraction  # [B]
    return torch.where(use_hard, hard_video, neg_video), torch.where(use_hard, hard_text, neg_text)


def hard_negative_fraction(step: int, total_steps: int, warmup: float) -> float:
    """Share of hard negatives at `step`: 0 -> 1 linearly over the first `warmup` of training.

    From scratch, near-duplicate negatives alone keep the VTM loss at chance (the model cannot
    yet tell them apart, so it learns nothing); random negatives first teach it to read the
    tokens at all, then the hard ones sharpen it.
    """
    if warmup <= 0:
        return 1.0
    return min(1.0, step / (warmup * total_steps))


def train_reranker(
    model: CrossTVRReranker,
    bank: TokenBank,
    stage1_sim: torch.Tensor,
    cfg: TrainConfig,
    *,
    device: str | torch.device = "cpu",
    on_epoch_end: EpochCallback | None = None,
    progress: bool = True,
) -> list[dict]:
    """Train with a binary VTM loss over (positive, negative video, negative text) triples.

    stage1_sim [T, V]: stage-1 similarity of the bank's captions to its videos, the
    distribution hard negatives are drawn from. Fits the input statistics from `bank` first
    if the model has none. Returns one record per epoch (epoch counts from 1, as passed to
    `on_epoch_end`, which may switch the model to eval: each epoch switches it back to
    train); the model is left in eval mode on `device`.
    """
    device = torch.device(device)
    num_captions, num_videos = bank.num_captions, bank.num_videos
    if tuple(stage1_sim.shape) != (num_captions, num_videos):
        raise ValueError(
            f"train_reranker: stage1_sim is {tuple(stage1_sim.shape)}, the bank has "
            f"{num_captions} captions x {num_videos} videos"
        )
    if num_videos < 2:
        raise ValueError("train_reranker: need at least 2 training videos for negatives")
    stage1_sim = stage1_sim.detach().to("cpu", torch.float32)

    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    if not model.has_input_stats:
        model.fit_input_stats(bank)
    model.to(device)

    steps_per_epoch = math.ceil(num_captions / cfg.batch_size)
    optimizer = torch.optim.AdamW(model.optimizer_groups(cfg.weight_decay), lr=cfg.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(cfg.epochs * steps_per_epoch, cfg.warmup_fraction)
    )

    history: list[dict] = []
    metric_names = ("loss", "accuracy", "pos_prob", "pos_beats_neg_video", "grad_norm")
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        start = time.perf_counter()
        order = torch.randperm(num_captions, generator=generator)
        totals = dict.fromkeys(metric_names, 0.0)
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"reranker epoch {epoch}/{cfg.epochs}",
            disable=not progress,
            leave=False,
        )
        for step in bar:
            text_rows = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]  # [B]
            batch = text_rows.shape[0]
            positive_video = bank.caption_video[text_rows]  # [B]
            hard_fraction = hard_negative_fraction(
                (epoch - 1) * steps_per_epoch + step, cfg.epochs * steps_per_epoch,
                cfg.hard_negative_warmup,
            )
            neg_video, neg_text = _sample_negatives(
                bank, stage1_sim, text_rows, positive_video, cfg, generator, hard_fraction
            )
            # (text, its video), (text, negative video), (negative text, video), then
            # cfg.random_negatives x (text, random video): easy pairs keep the loss informative
            # while the hard ones alone are still indistinguishable to an untrained model
            easy = [random_negative_videos(positive_video, num_videos, generator)
                    for _ in range(cfg.random_negatives)]
            pair_text = torch.cat([text_rows, text_rows, neg_text, *[text_rows] * len(easy)])
            pair_video = torch.cat([positive_video, neg_video, positive_video, *easy])
            labels = torch.zeros(pair_text.shape[0], device=device)  # [(3 + R) B]
            labels[:batch] = 1.0

            inputs = _pair_inputs(bank, pair_text, bank, pair_video, device)
            with training_autocast(device):
                logits = model(**inputs)  # [3B]
            logits = logits.float()
            loss = F.binary_cross_entropy_with_logits(logits, labels)

            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            schedule.step()

            with torch.no_grad():
                pos, neg_video_logits = logits[:batch], logits[batch : 2 * batch]
                metrics = torch.stack(
                    [
                        loss,
                        ((logits > 0).float() == labels).float().mean(),
                        torch.sigmoid(pos).mean(),
                        (pos > neg_video_logits).float().mean(),
                        grad_norm.float(),
                    ]
                ).tolist()  # one device sync per step
            for name, value in zip(totals, metrics, strict=True):
                totals[name] += value
            bar.set_postfix(loss=f"{totals['loss'] / (step + 1):.4f}")
        bar.close()

        seconds = time.perf_counter() - start
        record = {
            "epoch": epoch,
            **{name: value / steps_per_epoch for name, value in totals.items()},
            "lr": schedule.get_last_lr()[0],
            "hard_fraction": hard_fraction,
            "seconds": seconds,
            "pairs_per_second": (3 + cfg.random_negatives) * num_captions / seconds,
        }
        history.append(record)
        if on_epoch_end is not None:
            on_epoch_end(epoch, record, model)
    model.eval()
    return history


def score_pairs(
    model: CrossTVRReranker,
    bank_text: TokenBank,
    text_rows: torch.Tensor,
    bank_video: TokenBank,
    video_rows: torch.Tensor,
    batch_size: int,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> torch.Tensor:
    """VTM logits [N] (float32, CPU) of pairs (bank_text row text_rows[i], bank_video row
    video_rows[i]); batched, eval mode, no grad. The model's train/eval mode is restored."""
    device = torch.device(device)
    text_rows, video_rows = text_rows.long().cpu(), video_rows.long().cpu()
    if text_rows.shape != video_rows.shape or text_rows.ndim != 1:
        raise ValueError(
            f"score_pairs: text_rows {tuple(text_rows.shape)} and video_rows "
            f"{tuple(video_rows.shape)} must be equal 1-D shapes"
        )
    was_training = model.training
    model.to(device).eval()
    scores = torch.empty(text_rows.shape[0], dtype=torch.float32)
    starts = range(0, text_rows.shape[0], batch_size)
    # inference mode only around the forward: moving the model inside it would turn its
    # parameters into inference tensors that a later training step cannot use
    with torch.inference_mode():
        for start in tqdm(starts, desc="re-ranker scoring", disable=not progress, leave=False):
            rows = slice(start, start + batch_size)
            inputs = _pair_inputs(bank_text, text_rows[rows], bank_video, video_rows[rows], device)
            with training_autocast(device):
                scores[rows] = model(**inputs).float().cpu()
    model.train(was_training)
    return scores
