"""The re-ranker's logits for (caption, video) pairs: batched inference, each distinct video
and caption encoded once per batch. Validation, evaluation and search all score through it.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from crosstvr_core.models.reranker import CrossTVRReranker
from crosstvr_core.models.reranker_ensemble import Reranker, reranker_members
from crosstvr_core.precision import autocast
from crosstvr_core.token_bank import TokenSource


def match_distinct(model: CrossTVRReranker, video: dict[str, torch.Tensor],
                   text: dict[str, torch.Tensor], pair_video: torch.Tensor,
                   pair_text: torch.Tensor, device: torch.device, precision: str,
                   return_grounding: bool = False
                   ) -> torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
    """Float32 logits [N] of pairs (text row pair_text[i], video row pair_video[i]) over
    distinct videos `video` [U, ...] and captions `text` [C, ...]: each video is encoded once
    and each caption's text path runs once, however many pairs they are in. Gradients flow
    unless the caller turned them off (training calls this too). `return_grounding`: also
    the grounding term's times of every pair (model.match)."""
    video = {name: value.to(device, non_blocking=True) for name, value in video.items()}
    text = {name: value.to(device, non_blocking=True) for name, value in text.items()}
    pair_video, pair_text = pair_video.to(device), pair_text.to(device)
    with autocast(device, precision):
        visual = model.encode_video(**video)  # [U, F, T, H]
        logits, grounding = model.match(
            text["text_tokens"], text["text_mask"], visual, video["frame_mask"],
            text_index=pair_text, video_index=pair_video, text_eot=text.get("text_eot"),
            video_cls=video["video_cls"], return_grounding=True, text_words=text.get("text_words"),
            video_patches=video["video_patches"])
    if return_grounding:
        return logits.float(), grounding
    return logits.float()


def score_pairs(
    model: Reranker,
    bank_text: TokenSource,
    text_rows: torch.Tensor,
    bank_video: TokenSource,
    video_rows: torch.Tensor,
    batch_size: int,
    device: str | torch.device = "cpu",
    progress: bool = False,
    precision: str = "bf16",
) -> torch.Tensor:
    """VTM logits [N] (float32, CPU) of pairs (bank_text row text_rows[i], bank_video row
    video_rows[i]); batched, eval mode, no grad. Each distinct video of a batch is encoded
    (standardised, projected, tokens selected) once, and each distinct caption's text path
    runs once, however many pairs they are in; an ensemble's members read the same batch and
    their logits are averaged. The model's train/eval mode is restored."""
    device = torch.device(device)
    text_rows, video_rows = text_rows.long().cpu(), video_rows.long().cpu()
    if text_rows.shape != video_rows.shape or text_rows.ndim != 1:
        raise ValueError(
            f"score_pairs: text_rows {tuple(text_rows.shape)} and video_rows "
            f"{tuple(video_rows.shape)} must be equal 1-D shapes"
        )
    was_training = model.training
    model.to(device).eval()
    members = reranker_members(model)
    scores = torch.empty(text_rows.shape[0], dtype=torch.float32)
    starts = range(0, text_rows.shape[0], batch_size)
    # inference mode only around the forward: moving the model inside it would turn its
    # parameters into inference tensors that a later training step cannot use
    with torch.inference_mode():
        for start in tqdm(starts, desc="re-ranker scoring", disable=not progress, leave=False):
            rows = slice(start, start + batch_size)
            videos, pair_video = torch.unique(video_rows[rows], return_inverse=True)  # [U], [n]
            captions, pair_text = torch.unique(text_rows[rows], return_inverse=True)  # [C], [n]
            video, text = bank_video.video_batch(videos), bank_text.text_batch(captions)
            scores[rows] = torch.stack([
                match_distinct(member, video, text, pair_video, pair_text, device, precision)
                for member in members]).mean(0).cpu()
    model.train(was_training)
    return scores
