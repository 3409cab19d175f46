"""Negative sampling for the re-ranker's video-text matching loss.

BLIP-style hard mining: the negatives a re-ranker must learn to reject are the ones stage 1
already confuses with the positive, so they are drawn from softmax(stage-1 similarity / tau)
with the positives masked out. Random negatives (uniform, positives excluded) are the
`hard_negatives=False` ablation. All samplers draw from an explicit `torch.Generator` on CPU,
so a seed fixes every negative of a training run.
"""

from __future__ import annotations

import torch


def _sample_from_candidates(
    logits: torch.Tensor, candidates: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """One column per row from softmax(logits) restricted to `candidates` [B, N] -> [B].

    A row whose candidate logits are all non-finite (e.g. -inf outside a stage-1 top-K)
    falls back to uniform over its candidates; a row without any candidate is an error,
    since no negative exists for it.
    """
    if logits.shape != candidates.shape:
        raise ValueError(f"logits {tuple(logits.shape)} vs candidates {tuple(candidates.shape)}")
    empty = ~candidates.any(dim=1)
    if empty.any():
        row = int(empty.nonzero()[0, 0])
        raise ValueError(f"negative sampling: row {row} has no candidate left after masking")
    logits = logits.detach().to("cpu", torch.float32).nan_to_num(nan=float("-inf"))
    candidates = candidates.to("cpu")
    logits = logits.masked_fill(~candidates, float("-inf"))
    no_finite = ~torch.isfinite(logits).any(dim=1, keepdim=True)  # [B, 1]
    # all candidates at -inf: uniform over candidates instead of softmax -> NaN
    logits = torch.where(no_finite & candidates, torch.zeros_like(logits), logits)
    # +inf logits (a degenerate similarity) would give NaN after softmax: clamp them
    logits = logits.clamp(max=torch.finfo(torch.float32).max)
    probs = torch.softmax(logits, dim=1)  # [B, N]
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)  # [B]


def sample_hard_negative_videos(
    sim_rows: torch.Tensor,
    positive_video: torch.Tensor,
    temperature: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One hard negative video per text: sim_rows [B, V], positive_video [B] -> [B]."""
    batch, num_videos = sim_rows.shape
    positive_video = positive_video.to("cpu")
    candidates = torch.ones(batch, num_videos, dtype=torch.bool)
    candidates[torch.arange(batch), positive_video] = False
    return _sample_from_candidates(sim_rows.float() / temperature, candidates, generator)


def sample_hard_negative_texts(
    sim_cols: torch.Tensor,
    caption_video: torch.Tensor,
    batch_videos: torch.Tensor,
    temperature: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One hard negative caption per video, every caption of that video masked.

    sim_cols [B, T] (similarity of each batch video to all captions), caption_video [T]
    (video row of each caption), batch_videos [B] -> caption rows [B].
    """
    candidates = caption_video.to("cpu")[None, :] != batch_videos.to("cpu")[:, None]  # [B, T]
    return _sample_from_candidates(sim_cols.float() / temperature, candidates, generator)


def random_negative_videos(
    positive_video: torch.Tensor, num_videos: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Uniform negative video per text, never the positive: positive_video [B] -> [B]."""
    if num_videos < 2:
        raise ValueError(f"negative sampling: need at least 2 videos, got {num_videos}")
    positive_video = positive_video.to("cpu")
    draw = torch.randint(0, num_videos - 1, positive_video.shape, generator=generator)
    return draw + (draw >= positive_video).long()  # skip over the positive


def random_negative_texts(
    caption_video: torch.Tensor,
    batch_videos: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Uniform negative caption per video, never one of its own: batch_videos [B] -> [B]."""
    candidates = caption_video.to("cpu")[None, :] != batch_videos.to("cpu")[:, None]  # [B, T]
    return _sample_from_candidates(torch.zeros(candidates.shape), candidates, generator)


def scores_from_candidates(
    query_ids: list[str],
    candidate_ids: list[list[str]],
    candidate_scores: list[list[float]],
    row_ids: list[str],
    column_ids: list[str],
) -> torch.Tensor:
    """A [len(row_ids), len(column_ids)] score matrix from stored stage-1 top-K lists
    (Lance table `stage1_candidates`): the stored score inside each row's top K, -inf
    outside, so the samplers above draw negatives from the top K only.

    Every row id must be a stored query (else the table is stale for this bank: an error
    naming the missing ids); candidates outside `column_ids` (e.g. held-out videos) are
    dropped, and a row left without candidates falls back to uniform in the sampler.
    """
    if not len(query_ids) == len(candidate_ids) == len(candidate_scores):
        raise ValueError("scores_from_candidates: query, candidate and score lists differ in length")
    stored = dict(zip(query_ids, zip(candidate_ids, candidate_scores, strict=True), strict=True))
    missing = [row_id for row_id in row_ids if row_id not in stored]
    if missing:
        raise ValueError(
            f"stage-1 candidates: {len(missing)} of {len(row_ids)} queries have no stored "
            f"top-K (first: {missing[:3]}); re-run stage 1 for this split"
        )
    column_of = {column_id: column for column, column_id in enumerate(column_ids)}
    scores = torch.full((len(row_ids), len(column_ids)), float("-inf"))
    for row, row_id in enumerate(row_ids):
        ids, values = stored[row_id]
        if len(ids) != len(values):
            raise ValueError(f"stage-1 candidates of '{row_id}': {len(ids)} ids, {len(values)} scores")
        for candidate, value in zip(ids, values, strict=True):
            if candidate in column_of:
                scores[row, column_of[candidate]] = float(value)
    return scores


# How a clip's real frames are arranged in a scored pair (pair_logits): as recorded, or one
# of the two temporal negatives below. The same codes say how a caption's words are
# arranged (as written, `say_backwards`, `swap_caption_halves`).
AS_RECORDED, BACKWARDS, HALVES_SWAPPED = 0, 1, 2
NUM_ARRANGEMENTS = 3


def _rearranged_real_frames(frame_mask: torch.Tensor, source_slot) -> torch.Tensor:
    """Frame index [B, F] putting real frame source_slot(i, n) at the i-th real slot (n real
    frames), padding in place. Gather a [B, F, ...] tensor with it along dim 1."""
    mask = frame_mask.bool()  # [B, F]
    frames = mask.shape[1]
    position = torch.arange(frames, device=mask.device).expand_as(mask)  # [B, F]
    # real frames first, in time order, then the padding (stable sort keeps both orders)
    real_first = torch.sort((~mask).long(), dim=1, stable=True).indices  # [B, F]
    count = mask.sum(dim=1, keepdim=True)  # [B, 1]
    slot = torch.where(position < count, source_slot(position, count.clamp(min=1)), position)
    source = real_first.gather(1, slot)  # [B, F]: the frame that lands in real slot order
    order = position.clone()
    order.scatter_(1, real_first, source)
    return order


def time_reversed_frame_order(frame_mask: torch.Tensor) -> torch.Tensor:
    """Frame index [B, F] that plays each video's real frames backwards, padding in place.

    A time-reversed clip has exactly the frames of the positive, so only a model that reads
    frame order can reject it: the cheapest negative for direction (a reversed motion).
    Videos with fewer than 2 real frames are unchanged. Gather along dim 1.
    """
    return _rearranged_real_frames(frame_mask, lambda i, n: n - 1 - i)


def halves_swapped_frame_order(frame_mask: torch.Tensor) -> torch.Tensor:
    """Frame index [B, F] that plays the second half of each video's real frames first
    (n real frames rotated by n // 2), padding in place.

    "A, then B" becomes "B, then A" with each part still played forwards: a negative for
    the order of events that a reversal does not give (reversing also reverses each event,
    and a model can reject it from the motion alone). Gather along dim 1.
    """
    return _rearranged_real_frames(frame_mask, lambda i, n: (i + n // 2) % n)


def rearrange_frames(video: dict[str, torch.Tensor | None],
                     rows: slice | torch.Tensor, frame_order) -> dict[str, torch.Tensor | None]:
    """Video inputs (frame_mask [B, F], video_cls [B, F, D], video_patches [B, F, P, Wv] or
    None) with the videos `rows` (a slice, or a bool mask [B]) reordered by
    frame_order(frame_mask) [N, F]; other rows and other keys are returned unchanged."""
    order = frame_order(video["frame_mask"][rows])  # [N, F]
    out = dict(video)
    for name in ("video_cls", "video_patches"):
        if video.get(name) is not None:
            out[name] = _reordered_rows(video[name], rows, order)
    return out


def _reordered_rows(values: torch.Tensor, rows: slice | torch.Tensor,
                    order: torch.Tensor) -> torch.Tensor:
    """A copy of values [B, L, ...] whose rows `rows` are gathered along dim 1 by order
    [N, L]; the other rows unchanged."""
    part = values[rows]  # [N, L, ...]
    out = values.clone()
    out[rows] = part.gather(1, order.view(*order.shape, *([1] * (part.ndim - 2))).expand_as(part))
    return out


def play_backwards(video: dict[str, torch.Tensor | None],
                   rows: slice | torch.Tensor = slice(None)) -> dict[str, torch.Tensor | None]:
    """The videos `rows` (default all) played backwards (`time_reversed_frame_order`)."""
    return rearrange_frames(video, rows, time_reversed_frame_order)


def swap_halves(video: dict[str, torch.Tensor | None],
                rows: slice | torch.Tensor = slice(None)) -> dict[str, torch.Tensor | None]:
    """The videos `rows` (default all) with their halves exchanged
    (`halves_swapped_frame_order`)."""
    return rearrange_frames(video, rows, halves_swapped_frame_order)


def _inner_tokens(text_mask: torch.Tensor) -> torch.Tensor:
    """Real tokens [C, L] except each caption's first and last (a tokenizer's start and end
    markers, which stay where they are)."""
    mask = text_mask.bool()
    position = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    first = torch.where(mask, position, mask.shape[1]).amin(dim=1, keepdim=True)
    last = torch.where(mask, position, -1).amax(dim=1, keepdim=True)
    return mask & (position > first) & (position < last)


def rearrange_words(text: dict[str, torch.Tensor], rows: slice | torch.Tensor,
                    word_order) -> dict[str, torch.Tensor]:
    """Text inputs (text_tokens [C, L, Wt], text_mask [C, L], ...) with the captions `rows`
    (a slice, or a bool mask [C]) saying their inner tokens (all but the first and the last
    real one: a tokenizer's start and end markers stay) in the order
    source_slot(i, n) -> i-th inner token (`_rearranged_real_frames`'s rule); other rows,
    the mask and text_eot (the frozen caption embedding) are returned unchanged."""
    inner = _inner_tokens(text["text_mask"][rows])  # [N, L]
    order = _rearranged_real_frames(inner, word_order)  # [N, L]
    return {**text, "text_tokens": _reordered_rows(text["text_tokens"], rows, order)}


def say_backwards(text: dict[str, torch.Tensor],
                  rows: slice | torch.Tensor = slice(None)) -> dict[str, torch.Tensor]:
    """The captions `rows` with their inner words in reverse order: the text side's
    counterpart of `play_backwards` (every two words named in the other order)."""
    return rearrange_words(text, rows, lambda i, n: n - 1 - i)


def swap_caption_halves(text: dict[str, torch.Tensor],
                        rows: slice | torch.Tensor = slice(None)) -> dict[str, torch.Tensor]:
    """The captions `rows` with their inner words rotated by half their count, so what was
    named in the second half is named first, each half's words in their order: the text
    side's counterpart of `swap_halves`."""
    return rearrange_words(text, rows, lambda i, n: (i + n // 2) % n)
