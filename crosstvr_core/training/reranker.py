"""Training the re-ranker on cached tokens, and scoring (text, video) pairs with it.

Both read only cached tokens (a TokenBank through `VTMPairDataset`): the frozen encoders ran
once when the bank was filled, which is what makes a re-ranker over ViT-G-sized tokens
affordable (the paper's scalability claim).

Loss: binary VTM cross-entropy over, per caption, its positive video, one hard negative
video sampled from softmax(stage-1 similarity / tau) with the positive masked, and one hard
negative caption for its video sampled the same way (BLIP), plus optional random negatives.
A curriculum grows the share of hard negatives from 0 to 1. With `reversed_negatives`, the
caption's own video played backwards is one more negative: same frames, so only the
video-level (temporal) attention can reject it. AdamW, linear warm-up + cosine,
gradient clipping, autocast (+ GradScaler for fp16) on CUDA. Each epoch: an atomic
checkpoint (resumable bit for bit on CPU), optional validation on two-stage R@1 with early
stopping, the best weights kept.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from crosstvr_core.config import TrainConfig
from crosstvr_core.models.reranker import CrossTVRReranker
from crosstvr_core.models.reranker_ensemble import Reranker
from crosstvr_core.precision import autocast, grad_scaler
from crosstvr_core.retrieval.pair_scoring import match_distinct, score_pairs
from crosstvr_core.retrieval.two_stage import (
    choose_fusion_weight,
    fused_top1,
    relevance,
    stage2_only_top1,
    text_to_video_candidates,
    video_to_text_candidates,
)
from crosstvr_core.token_bank import TokenBank, TokenSource
from crosstvr_core.training.caption_variants import CaptionVariants, WithCaptionVariants
from crosstvr_core.training.lists import TrainingLists
from crosstvr_core.training.loop import (
    EarlyStopping,
    Trainer,
    adamw_warmup_cosine,
    run_epochs,
)
from crosstvr_core.training.negatives import (
    AS_RECORDED,
    BACKWARDS,
    HALVES_SWAPPED,
    NUM_ARRANGEMENTS,
    play_backwards,
    random_negative_texts,
    random_negative_videos,
    sample_hard_negative_texts,
    sample_hard_negative_videos,
    say_backwards,
    swap_caption_halves,
    swap_halves,
)
from crosstvr_core.training.read_ahead import ReadAhead
from crosstvr_core.training.token_dataset import VTMPairDataset

EpochCallback = Callable[[int, dict, CrossTVRReranker], None]
# train.order_contrast_with -> the arrangement applied to both words and frames
CONTRAST_ARRANGEMENTS = {"halves_swapped": HALVES_SWAPPED, "backwards": BACKWARDS}


def hard_negative_fraction(step: int, total_steps: int, warmup: float) -> float:
    """Share of hard negatives at `step`: 0 -> 1 linearly over the first `warmup` of training.

    From scratch, near-duplicate negatives alone keep the VTM loss at chance (the model cannot
    yet tell them apart, so it learns nothing); random negatives first teach it to read the
    tokens at all, then the hard ones sharpen it.
    """
    if warmup <= 0:
        return 1.0
    return min(1.0, step / (warmup * total_steps))


@dataclass(frozen=True)
class Validation:
    """Held-out captions and videos, scored each epoch as the two-stage evaluation does."""

    bank: TokenBank
    stage1_sim: torch.Tensor  # [T_val, V_val]
    top_k: int = 15
    fusion_weight: float | None = None  # None: chosen per direction (fusion_pick)
    fusion_score: str = "logit"  # "prob": + w * sigmoid(logit); "logit": + w * logit
    batch_size: int = 256
    fusion_pick: str = "likelihood"  # two_stage.choose_fusion_weight's `how`


@dataclass(frozen=True)
class NegativeScores:
    """Scores the hard negatives are sampled from: videos per caption [T, V] and captions
    per video [V, T] (the full stage-1 similarity, or -inf outside a stored top-K)."""

    videos_per_caption: torch.Tensor
    captions_per_video: torch.Tensor

    @classmethod
    def from_similarity(cls, stage1_sim: torch.Tensor) -> NegativeScores:
        sim = stage1_sim.detach().to("cpu", torch.float32)
        return cls(sim, sim.T)


def _sample_negatives(
    source: TokenSource,
    scores: NegativeScores,
    text_rows: torch.Tensor,
    positive_video: torch.Tensor,
    cfg: TrainConfig,
    generator: torch.Generator,
    hard_fraction: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(negative video per text [B], negative caption per positive video [B]).

    Each pair is hard with probability `hard_fraction` (the curriculum), else random.
    """
    neg_video = random_negative_videos(positive_video, source.num_videos, generator)
    neg_text = random_negative_texts(source.caption_video, positive_video, generator)
    if not cfg.hard_negatives or hard_fraction <= 0:
        return neg_video, neg_text
    tau = cfg.hard_negative_temperature
    hard_video = sample_hard_negative_videos(
        scores.videos_per_caption[text_rows], positive_video, tau, generator
    )
    hard_text = sample_hard_negative_texts(
        scores.captions_per_video[positive_video], source.caption_video, positive_video, tau,
        generator,
    )
    use_hard = torch.rand(len(text_rows), generator=generator) < hard_fraction  # [B]
    return torch.where(use_hard, hard_video, neg_video), torch.where(use_hard, hard_text, neg_text)


def _check_inputs(bank: TokenBank, scores: NegativeScores) -> None:
    want = (bank.num_captions, bank.num_videos)
    got = (tuple(scores.videos_per_caption.shape), tuple(scores.captions_per_video.shape))
    if got != (want, want[::-1]):
        raise ValueError(
            f"train_reranker: negative scores are {got[0]} and {got[1]}, the bank has "
            f"{want[0]} captions x {want[1]} videos"
        )
    if bank.num_videos < 2:
        raise ValueError("train_reranker: need at least 2 training videos for negatives")


def validate_two_stage(
    model: Reranker, val: Validation, device: torch.device, precision: str = "bf16"
) -> dict[str, float]:
    """Both directions on the held-out slice: stage-1 R@1, two-stage R@1 at the fusion weight
    (given, or chosen on this slice: then it is reported too), and how often the re-ranker's
    own score puts the right item first within the top K. `val_mean_R1` is what early
    stopping and model selection compare."""

    def scorer(text_rows: torch.Tensor, video_rows: torch.Tensor) -> torch.Tensor:
        logits = score_pairs(model, val.bank, text_rows, val.bank, video_rows, val.batch_size,
                             device=device, precision=precision)
        return torch.sigmoid(logits) if val.fusion_score == "prob" else logits

    k = min(val.top_k, val.bank.num_videos, val.bank.num_captions)
    truth = relevance(val.bank.caption_video, val.bank.num_videos)  # [T, V]
    sim = val.stage1_sim.float()
    out: dict[str, float] = {}
    for name, stage1, candidates, relevant in (
        ("t2v", sim, text_to_video_candidates, truth),
        ("v2t", sim.T, video_to_text_candidates, truth.T),
    ):
        top_idx, stage2 = candidates(sim, k, scorer)
        if val.fusion_weight is None:
            weight, r1 = choose_fusion_weight(stage1, top_idx, stage2, relevant,
                                              val.fusion_pick)
        else:
            weight = val.fusion_weight
            r1 = fused_top1(stage1, top_idx, stage2, relevant, weight)
        out[f"val_{name}_R1"] = r1
        out[f"val_{name}_fusion_weight"] = weight
        out[f"val_stage1_{name}_R1"] = fused_top1(stage1, top_idx, stage2, relevant, 0.0)
        out[f"val_{name}_stage2_top1"] = stage2_only_top1(top_idx, stage2, relevant)["top1"]
    out["val_mean_R1"] = (out["val_t2v_R1"] + out["val_v2t_R1"]) / 2
    return out


@dataclass(frozen=True)
class PairInputs:
    """What scoring a set of pairs reads: the distinct (video, frame arrangement) inputs
    [U, ...], the distinct captions' inputs [C, ...], and per pair its video and its caption
    among those (pair_video, pair_text [N])."""

    video: dict[str, torch.Tensor]
    text: dict[str, torch.Tensor]
    pair_video: torch.Tensor
    pair_text: torch.Tensor


def read_pairs(source: TokenSource, text_rows: torch.Tensor, video_rows: torch.Tensor,
               arrangement: torch.Tensor, text_arrangement: torch.Tensor | None = None
               ) -> PairInputs:
    """The inputs of pairs (caption text_rows[i], video video_rows[i] with its frames
    arranged by arrangement[i]: AS_RECORDED, BACKWARDS or HALVES_SWAPPED; a bool tensor
    means backwards where True), each distinct (video, arrangement) and caption read once.
    text_arrangement[i] (default: as written) arranges the caption's words with the same
    codes (`say_backwards`, `swap_caption_halves`). Reads tokens only (no model): it can run
    ahead of the step that uses it."""
    video, pair_video = _read_arranged(source.video_batch, video_rows, arrangement,
                                       (play_backwards, swap_halves))
    if text_arrangement is None:
        text_arrangement = torch.zeros_like(text_rows)
    text, pair_text = _read_arranged(source.text_batch, text_rows, text_arrangement,
                                     (say_backwards, swap_caption_halves))
    return PairInputs(video, text, pair_video, pair_text)


def _read_arranged(read: Callable[[torch.Tensor], dict], rows: torch.Tensor,
                   arrangement: torch.Tensor, rearrange: tuple[Callable, Callable]
                   ) -> tuple[dict, torch.Tensor]:
    """Each distinct (row, arrangement) read once and rearranged by rearrange
    (backwards, halves swapped): (inputs [U, ...], each pair's index among them [N])."""
    keys, index = torch.unique(rows * NUM_ARRANGEMENTS + arrangement.long(),
                               return_inverse=True)
    inputs = read(keys // NUM_ARRANGEMENTS)
    arranged = keys % NUM_ARRANGEMENTS  # [U]
    for code, function in zip((BACKWARDS, HALVES_SWAPPED), rearrange, strict=True):
        if (arranged == code).any():
            inputs = function(inputs, arranged == code)
    return inputs, index


def pair_logits(model: CrossTVRReranker, source: TokenSource, text_rows: torch.Tensor,
                video_rows: torch.Tensor, arrangement: torch.Tensor, device: torch.device,
                precision: str) -> torch.Tensor:
    """Logits [N] of pairs (caption text_rows[i], video video_rows[i] arranged by
    arrangement[i], see `read_pairs`); each distinct (video, arrangement) is encoded once and
    each distinct caption's text path runs once, with gradients."""
    inputs = read_pairs(source, text_rows, video_rows, arrangement)
    return match_distinct(model, inputs.video, inputs.text, inputs.pair_video,
                          inputs.pair_text, device, precision)


def _curriculum(lists: torch.Tensor, num_items: int, hard_fraction: float,
                generator: torch.Generator) -> torch.Tensor:
    """Each list entry [N, K] kept with probability hard_fraction, else a random item."""
    if hard_fraction >= 1:
        return lists
    random = torch.randint(num_items, lists.shape, generator=generator)
    easy = torch.rand(lists.shape, generator=generator) >= hard_fraction
    return torch.where(easy, random, lists)


def _with_positive_first(candidates: torch.Tensor, positive: torch.Tensor,
                         is_positive: torch.Tensor, num_items: int,
                         generator: torch.Generator) -> torch.Tensor:
    """[N, K] lists -> [N, K]: the positive at column 0, then the first K-1 entries that are
    not right answers (is_positive [N, K]); right answers elsewhere in the list are replaced
    by random items (a re-draw that is right again is rare and only weakens one column)."""
    random = torch.randint(num_items, candidates.shape, generator=generator)
    others = torch.where(is_positive, random, candidates)
    # stable sort puts the replaced entries last, so the real hard negatives come first
    order = torch.sort(is_positive.long(), dim=1, stable=True).indices
    others = others.gather(1, order)
    return torch.cat([positive.unsqueeze(1), others[:, :-1]], dim=1)


@dataclass(frozen=True)
class ListwiseBatch:
    """The rows of one listwise step, drawn before any token is read: per caption
    text_rows [B] its videos [B, K (+ rearranged positives)] with their frame arrangements,
    positive first; per caption's video its captions [B, K'], that caption first. With
    `order_contrast` > 0, four more pairs per caption (`order_contrast_pairs`)."""

    text_rows: torch.Tensor
    videos: torch.Tensor
    arrangement: torch.Tensor
    captions: torch.Tensor
    num_rearranged: int  # trailing columns of `videos` that are the positive rearranged
    order_contrast: float = 0.0  # weight of `order_contrast_loss`; 0: no such pairs
    contrast_arrangement: int = HALVES_SWAPPED
    caption_variant: torch.Tensor | None = None  # [B, K'] True where `captions` is a variant
    # train.stage1_residual: stage 1's calibrated logit of every list entry, added to the
    # re-ranker's before the softmax ([B, K (+ rearranged)] and [B, K'])
    video_offsets: torch.Tensor | None = None
    caption_offsets: torch.Tensor | None = None
    # train.stage1_distillation: its weight, and stage 1's calibrated logit of every entry of
    # the lists proper ([B, K] and [B, K'], rearranged columns not included)
    distillation: float = 0.0
    video_teacher: torch.Tensor | None = None
    caption_teacher: torch.Tensor | None = None

    def pairs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(text rows, video rows, frame arrangements, word arrangements) [N] of every pair:
        the text->video lists row by row, then the video->text lists, then the
        order-contrast pairs caption by caption."""
        batch, k_captions = self.captions.shape
        positive = self.videos[:, 0]
        list_pairs = self.videos.numel() + self.captions.numel()
        text = [self.text_rows.unsqueeze(1).expand_as(self.videos).reshape(-1),
                self.captions.reshape(-1)]
        video = [self.videos.reshape(-1),
                 positive.unsqueeze(1).expand(-1, k_captions).reshape(-1)]
        frames = [self.arrangement.reshape(-1), torch.zeros(batch * k_captions, dtype=torch.long)]
        words = [torch.zeros(list_pairs, dtype=torch.long)]
        if self.order_contrast > 0:
            codes = order_contrast_pairs(self.contrast_arrangement)  # [4, 2]
            text.append(self.text_rows.repeat_interleave(len(codes)))
            video.append(positive.repeat_interleave(len(codes)))
            words.append(codes[:, 0].repeat(batch))
            frames.append(codes[:, 1].repeat(batch))
        return torch.cat(text), torch.cat(video), torch.cat(frames), torch.cat(words)


def order_contrast_pairs(arrangement: int) -> torch.Tensor:
    """The order contrast's four pairs of a caption c and its clip v as (word arrangement,
    frame arrangement) [4, 2]: (c, v), (c, v'), (c', v), (c', v'), where ' is `arrangement`
    (BACKWARDS or HALVES_SWAPPED) applied to the words or to the frames."""
    if arrangement not in (BACKWARDS, HALVES_SWAPPED):
        raise ValueError(f"order contrast: arrangement {arrangement} is neither BACKWARDS nor "
                         "HALVES_SWAPPED")
    plain = AS_RECORDED
    return torch.tensor([[plain, plain], [plain, arrangement], [arrangement, plain],
                         [arrangement, arrangement]])


def order_contrast_loss(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [B, 4] of `order_contrast_pairs` -> (loss, accuracy): softplus of minus the
    interaction s(c, v) - s(c, v') - s(c', v) + s(c', v'). Anything that depends on the
    caption alone or on the clip alone cancels, so the loss is lowered only by matching
    what is named first with what is seen first; for a clip whose rearrangement looks the
    same (nothing happens) both sides are equal and it asks for nothing."""
    interaction = logits[:, 0] - logits[:, 1] - logits[:, 2] + logits[:, 3]
    return F.softplus(-interaction).mean(), (interaction > 0).float().mean()


def plan_listwise(bank: TokenSource, lists: TrainingLists, text_rows: torch.Tensor,
                  hard_fraction: float, generator: torch.Generator,
                  reversed_negative: bool = True, swapped_negative: bool = False,
                  order_contrast: float = 0.0, contrast_arrangement: int = HALVES_SWAPPED,
                  variant_rows: torch.Tensor | None = None,
                  stage1_offsets: tuple[float, float] | None = None,
                  distillation: tuple[float, float, float] | None = None) -> ListwiseBatch:
    """Draw one step's lists for captions text_rows [B]: text->video, each caption's
    stage-1 list of K videos, its own first, then (with `reversed_negative`) its own video
    played backwards and (with `swapped_negative`) its own video with its halves exchanged;
    video->text, each caption's video with its stage-1 list of K captions, that caption first
    and the video's other captions taken out. The curriculum swaps list entries for random
    items with probability 1 - hard_fraction. `order_contrast` > 0 adds the order
    contrast's pairs (`order_contrast_pairs` of contrast_arrangement) at that weight.
    variant_rows [T, P] (rows of `WithCaptionVariants`, -1: none): each caption's variants
    take the last columns of its video's caption list, the curriculum notwithstanding (a
    variant is hard from the first step, but it is one of K'). `stage1_offsets` (t2v, v2t
    multipliers of stage 1's scores): train.stage1_residual's offsets; `distillation`
    (weight, t2v, v2t multipliers): train.stage1_distillation's teacher logits."""
    positive = bank.caption_video[text_rows]  # [B]
    batch = len(text_rows)
    videos = _curriculum(lists.videos_per_caption[text_rows], bank.num_videos, hard_fraction,
                         generator)
    videos = _with_positive_first(videos, positive, videos == positive.unsqueeze(1),
                                  bank.num_videos, generator)  # [B, K]
    captions = _curriculum(lists.captions_per_video[positive], bank.num_captions,
                           hard_fraction, generator)
    captions = _with_positive_first(captions, text_rows,
                                    bank.caption_video[captions] == positive.unsqueeze(1),
                                    bank.num_captions, generator)  # [B, K']
    is_variant = None
    if variant_rows is not None and variant_rows.shape[1] > 0:
        mine = variant_rows[text_rows][:, : captions.shape[1] - 1]  # [B, P]
        cut = captions.shape[1] - mine.shape[1]
        captions = torch.cat([captions[:, :cut],
                              torch.where(mine >= 0, mine, captions[:, cut:])], dim=1)
        is_variant = torch.cat([torch.zeros(batch, cut, dtype=torch.bool), mine >= 0], dim=1)
    arrangement = torch.zeros_like(videos)  # AS_RECORDED
    rearranged = [code for code, wanted in ((BACKWARDS, reversed_negative),
                                            (HALVES_SWAPPED, swapped_negative)) if wanted]
    for code in rearranged:  # the positive again, its frames rearranged: one more column
        videos = torch.cat([videos, positive.unsqueeze(1)], dim=1)
        arrangement = torch.cat([arrangement, torch.full((batch, 1), code)], dim=1)
    video_offsets = caption_offsets = video_teacher = caption_teacher = None
    if stage1_offsets is not None or distillation is not None:
        by_caption, by_video = lists.stage1_scores()
        if is_variant is not None:
            raise ValueError("train.stage1_residual / stage1_distillation: caption variants "
                             "have no stage-1 score; set train.caption_variants=0")
        video_scores = by_caption[text_rows.unsqueeze(1), videos]
        caption_scores = by_video[captions, positive.unsqueeze(1)]
        if stage1_offsets is not None:
            video_offsets = stage1_offsets[0] * video_scores
            caption_offsets = stage1_offsets[1] * caption_scores
        if distillation is not None:
            listed = videos.shape[1] - len(rearranged)
            video_teacher = distillation[1] * video_scores[:, :listed]
            caption_teacher = distillation[2] * caption_scores
    return ListwiseBatch(text_rows, videos, arrangement, captions, len(rearranged),
                         order_contrast, contrast_arrangement, is_variant, video_offsets,
                         caption_offsets, 0.0 if distillation is None else distillation[0],
                         video_teacher, caption_teacher)


def negatives_distillation(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) of the softmaxes over each list's negatives: logits [B, K] of
    a list whose column 0 is the right item, which is left out (only how the wrong answers
    are ordered is passed on, never a vote against the label)."""
    teacher_logp = teacher[:, 1:].float().log_softmax(dim=1)
    student_logp = student[:, 1:].float().log_softmax(dim=1)
    return (teacher_logp.exp() * (teacher_logp - student_logp)).sum(dim=1).mean()


def grounding_consistency_loss(expected: torch.Tensor, observed: torch.Tensor,
                               text_mask: torch.Tensor) -> torch.Tensor:
    """Mean squared gap between each real caption token's expected time, read from the text
    alone [B, L, G], and its observed time in the pair's own clip [B, G, L], held fixed
    (text_mask [B, L]). The caption side is told, token by token, when what it names
    happens, a signal the ranking loss gives only through the logit and only while a clip
    and its reversal are not yet apart."""
    target = observed.detach().transpose(1, 2).to(expected.dtype)  # [B, L, G]
    mask = text_mask[:, : expected.shape[1]].unsqueeze(-1).to(expected.dtype)  # [B, L, 1]
    gap = (expected - target).square() * mask
    return gap.sum() / (mask.sum() * expected.shape[-1]).clamp(min=1.0)


def _own_clip_word_times(model: CrossTVRReranker, inputs: PairInputs, pairs: torch.Tensor,
                         device: torch.device, precision: str, option: str
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The word-timing term's (expected, importance, observed) times [P, L] of `pairs`
    (indices into inputs' pairs: each caption with its own clip), and their real tokens
    [P, L]; `option` names the setting that asked, for the error without the term."""
    if getattr(model, "word_when", None) is None:
        raise ValueError(f"{option} needs reranker.word_timing_term")
    text = {name: value.to(device) for name, value in inputs.text.items()}
    rows = inputs.pair_text.to(device)[pairs]
    videos = inputs.pair_video.to(device)[pairs]
    mask = text["text_mask"][rows].bool()
    words = text["text_words"][rows] if "text_words" in text else None
    with autocast(device, precision):
        states = model.encode_text(text["text_tokens"][rows], mask,
                                   text["text_eot"][rows] if "text_eot" in text else None, words)
    expected, importance, observed = model.word_times(
        states, mask, torch.arange(len(rows), device=device), words,
        inputs.video["video_cls"].to(device), inputs.video["frame_mask"].to(device).bool(),
        videos)
    return expected.float(), importance.float(), observed.float(), mask


def word_timing_consistency_loss(model: CrossTVRReranker, inputs: PairInputs,
                                 pairs: torch.Tensor, device: torch.device, precision: str
                                 ) -> torch.Tensor:
    """Mean squared gap, over the real tokens of the captions of `pairs` (indices into
    inputs' pairs: each caption with its own clip), between the word-timing term's expected
    time (read from the text) and the time the frozen encoder observes the token at in that
    clip (held fixed). The observed side is frozen and right for most named things, so the
    caption side is taught, word by word, that what is named first is seen first."""
    expected, _, observed, mask = _own_clip_word_times(model, inputs, pairs, device, precision,
                                                       "train.word_timing_consistency")
    weights = mask.float()
    gap = (expected - observed.detach()).square() * weights
    return gap.sum() / weights.sum().clamp(min=1.0)


def word_timing_ranking_loss(model: CrossTVRReranker, inputs: PairInputs,
                             pairs: torch.Tensor, device: torch.device, precision: str
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, share right): the word-timing term on its own must rank each caption's clip
    (`pairs`, as in word_timing_consistency_loss) above the same clip played backwards.
    Backwards, every observed time changes sign, so the term's logit z does too, and the
    two-way cross-entropy is softplus(-2 z) at the term's current scale (held fixed: the
    loss trains what the caption says about time and which words count, not how loudly the
    term speaks). In the full logit, the temporal states can already tell a clip from its
    reversal, which leaves the term untrained; this asks it to be right by itself."""
    expected, importance, observed, _ = _own_clip_word_times(
        model, inputs, pairs, device, precision, "train.word_timing_ranking")
    scale = model.term_scale(model.word_scale).detach().float()
    own = scale * (expected * importance * observed).sum(dim=1)
    return F.softplus(-2.0 * own).mean(), (own > 0).float().mean()


def listwise_loss(model: CrossTVRReranker, batch: ListwiseBatch, inputs: PairInputs,
                  device: torch.device, precision: str, grounding_consistency: float = 0.0,
                  word_timing_consistency: float = 0.0, word_timing_ranking: float = 0.0
                  ) -> tuple[torch.Tensor, list[float]]:
    """Softmax cross-entropy towards column 0 of both directions' lists, averaged, plus the
    order contrast, the grounding consistency, the word-timing consistency and the
    word-timing ranking (on each caption's positive pair) at their weights. Returns (loss,
    [t2v top-1 in list, positive probability, positive beats its first rearrangement (0
    without one), order contrast right (0 without it), grounding consistency, word-timing
    consistency, word-timing term alone right against the clip played backwards, the caption
    beats each of its variants in its video's list (0 without them)])."""
    logits, grounding = match_distinct(model, inputs.video, inputs.text, inputs.pair_video,
                                       inputs.pair_text, device, precision,
                                       return_grounding=True)
    videos, captions = batch.videos, batch.captions
    t2v = logits[: videos.numel()].view(videos.shape)
    v2t = logits[videos.numel(): videos.numel() + captions.numel()].view(captions.shape)
    if batch.video_offsets is not None:  # the loss sees stage 1 + stage 2, as fusion will
        t2v = t2v + batch.video_offsets.to(t2v.device, t2v.dtype)
        v2t = v2t + batch.caption_offsets.to(v2t.device, v2t.dtype)
    target = torch.zeros(len(videos), dtype=torch.long, device=t2v.device)
    loss = (F.cross_entropy(t2v, target) + F.cross_entropy(v2t, target)) / 2
    if batch.distillation > 0:  # stage 2's own logits, before any stage-1 offset
        listed = videos.shape[1] - batch.num_rearranged
        own_t2v = logits[: videos.numel()].view(videos.shape)[:, :listed]
        own_v2t = logits[videos.numel(): videos.numel() + captions.numel()].view(captions.shape)
        loss = loss + batch.distillation * (
            negatives_distillation(own_t2v, batch.video_teacher.to(own_t2v.device))
            + negatives_distillation(own_v2t, batch.caption_teacher.to(own_v2t.device))) / 2
    order_right = consistency = word_consistency = timing_right = t2v.new_tensor(0.0)
    positives = torch.arange(len(videos), device=logits.device) * videos.shape[1]
    if batch.order_contrast > 0:
        contrast = logits[videos.numel() + captions.numel():].view(len(videos), -1)
        order_loss, order_right = order_contrast_loss(contrast)
        loss = loss + batch.order_contrast * order_loss
    if grounding_consistency > 0:
        if grounding is None:
            raise ValueError("train.grounding_consistency needs reranker.grounding_term")
        expected, _, observed = grounding
        text_mask = inputs.text["text_mask"].to(logits.device)[
            inputs.pair_text.to(logits.device)[positives]].bool()
        consistency = grounding_consistency_loss(expected[positives].float(),
                                                 observed[positives].float(), text_mask)
        loss = loss + grounding_consistency * consistency
    if word_timing_consistency > 0:
        word_consistency = word_timing_consistency_loss(model, inputs, positives, device,
                                                        precision)
        loss = loss + word_timing_consistency * word_consistency
    if word_timing_ranking > 0:
        ranking, timing_right = word_timing_ranking_loss(model, inputs, positives, device,
                                                         precision)
        loss = loss + word_timing_ranking * ranking
    with torch.no_grad():
        first_rearranged = videos.shape[1] - batch.num_rearranged
        stats = [
            (t2v.argmax(dim=1) == 0).float().mean(),
            t2v.softmax(dim=1)[:, 0].mean(),
            (t2v[:, 0] > t2v[:, first_rearranged]).float().mean() if batch.num_rearranged
            else t2v.new_tensor(0.0),
            order_right,
            consistency.detach(),
            word_consistency.detach(),
            timing_right,
            _beats_variants(v2t, batch.caption_variant),
        ]
    return loss, stats


def _beats_variants(v2t: torch.Tensor, is_variant: torch.Tensor | None) -> torch.Tensor:
    """Share of (caption, its variant) in the video->text lists [B, K'] where the caption
    (column 0) scores higher; 0 without variants."""
    if is_variant is None or not is_variant.any():
        return v2t.new_tensor(0.0)
    is_variant = is_variant.to(v2t.device)
    return (v2t[:, :1] > v2t).float()[is_variant].mean()


def listwise_step(model: CrossTVRReranker, bank: TokenSource, lists: TrainingLists,
                  text_rows: torch.Tensor, hard_fraction: float, generator: torch.Generator,
                  device: torch.device, precision: str, reversed_negative: bool = True,
                  swapped_negative: bool = False, order_contrast: float = 0.0,
                  contrast_arrangement: int = HALVES_SWAPPED) -> tuple[torch.Tensor, list[float]]:
    """Symmetric listwise loss of one batch of captions text_rows [B]: `plan_listwise`, its
    tokens read, `listwise_loss`."""
    batch = plan_listwise(bank, lists, text_rows, hard_fraction, generator, reversed_negative,
                          swapped_negative, order_contrast, contrast_arrangement)
    return listwise_loss(model, batch, read_pairs(bank, *batch.pairs()), device, precision)


def _bce_step(model: CrossTVRReranker, dataset: VTMPairDataset, bank: TokenBank,
              scores: NegativeScores, text_rows: torch.Tensor, cfg: TrainConfig,
              generator: torch.Generator, hard_fraction: float, device: torch.device
              ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The paper's binary VTM loss of one batch (the ablation baseline). Returns (loss,
    [pair accuracy, positive probability, positive beats the hard negative video])."""
    batch = len(text_rows)
    positive_video = bank.caption_video[text_rows]  # [B]
    neg_video, neg_text = _sample_negatives(
        bank, scores, text_rows, positive_video, cfg, generator, hard_fraction
    )
    # (text, its video), (text, negative video), (negative text, video), then
    # cfg.random_negatives x (text, random video): easy pairs keep the loss informative
    # while the hard ones alone are still indistinguishable to an untrained model
    easy = [random_negative_videos(positive_video, bank.num_videos, generator)
            for _ in range(cfg.random_negatives)]
    # with cfg.reversed_negatives, a last block of (text, its video played backwards)
    backwards = [positive_video] if cfg.reversed_negatives else []
    pair_text = torch.cat([text_rows, text_rows, neg_text,
                           *[text_rows] * (len(easy) + len(backwards))])
    pair_video = torch.cat([positive_video, neg_video, positive_video, *easy, *backwards])
    labels = torch.zeros(pair_text.shape[0], device=device)  # [(3 + R (+1)) B]
    labels[:batch] = 1.0

    inputs = dataset.pairs(pair_text, pair_video)
    if backwards:
        inputs = play_backwards(inputs, slice(pair_text.shape[0] - batch, None))
    inputs = {name: value.to(device, non_blocking=True) for name, value in inputs.items()}
    with autocast(device, cfg.precision):
        logits = model(**inputs).float()  # [(3 + R) B]
    loss = F.binary_cross_entropy_with_logits(logits, labels)
    with torch.no_grad():
        pos, neg_video_logits = logits[:batch], logits[batch : 2 * batch]
        stats = [((logits > 0).float() == labels).float().mean(), torch.sigmoid(pos).mean(),
                 (pos > neg_video_logits).float().mean()]
    return loss, stats


def _check_lists(bank: TokenBank, lists: TrainingLists | None) -> None:
    if lists is None:
        raise ValueError("train_reranker: train.loss=listwise needs the stage-1 training lists")
    want = (bank.num_captions, bank.num_videos)
    got = (lists.videos_per_caption.shape[0], lists.captions_per_video.shape[0])
    if got != want:
        raise ValueError(f"train_reranker: lists for {got[0]} captions x {got[1]} videos, the "
                         f"bank has {want[0]} x {want[1]}")


def one_caption_per_video(caption_video: torch.Tensor, generator: torch.Generator
                          ) -> torch.Tensor:
    """Caption rows, one drawn at random per video, in random order: an epoch sees every
    video once (multi-caption corpora: every caption over the epochs)."""
    keys = torch.rand(len(caption_video), generator=generator)
    order = torch.argsort(caption_video.double() + keys.double() * 0.5)  # by video, random within
    first = torch.ones(len(order), dtype=torch.bool)
    first[1:] = caption_video[order][1:] != caption_video[order][:-1]
    chosen = order[first]
    return chosen[torch.randperm(len(chosen), generator=generator)]


def train_reranker(
    model: CrossTVRReranker,
    bank: TokenBank,
    stage1_sim: torch.Tensor | NegativeScores | None,
    cfg: TrainConfig,
    *,
    lists: TrainingLists | None = None,
    device: str | torch.device = "cpu",
    on_epoch_end: EpochCallback | None = None,
    progress: bool = True,
    validation: Validation | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    caption_variants: CaptionVariants | None = None,
) -> list[dict]:
    """Train on cached tokens: listwise (cfg.loss, the default) over `lists`, the stage-1
    top-K lists of the bank's captions and videos (training_lists); or a binary VTM loss over
    (positive, negative video, negative text) triples drawn from `stage1_sim` [T, V] (the
    bank's stage-1 similarity, or explicit NegativeScores). Fits the input statistics from
    `bank` first if the model has none. Seeded by cfg.seed: the same init, bank and cfg give
    identical weights on CPU.

    Each epoch (counted from 1): validation on two-stage R@1, the mean of both directions
    (`validate_two_stage`; the model keeps the fusion weights picked there), when `validation` is given
    (early stopping after cfg.early_stopping_patience epochs without a better score; the
    best weights are loaded at the end), then a checkpoint in `checkpoint_dir` (its path in
    the record as "checkpoint"), then `on_epoch_end(epoch, record, model)`. With `resume`,
    training continues after the latest checkpoint in `checkpoint_dir`, giving the weights
    an uninterrupted run would have. Returns every epoch's record (resumed ones included);
    the model is left in eval mode on `device`. `caption_variants` (listwise) put up to
    cfg.caption_variants variants of each caption among its video's captions.
    """
    device = torch.device(device)
    listwise = cfg.loss == "listwise"
    if listwise:
        _check_lists(bank, lists)
        batch_size = cfg.list_batch_size
    else:
        if stage1_sim is None:
            raise ValueError("train_reranker: train.loss=bce needs the stage-1 similarity")
        scores = (stage1_sim if isinstance(stage1_sim, NegativeScores)
                  else NegativeScores.from_similarity(stage1_sim))
        _check_inputs(bank, scores)
        batch_size = cfg.batch_size
    dataset = VTMPairDataset(bank)
    num_captions = bank.num_captions
    source, variant_rows = bank, None
    if listwise and caption_variants is not None and cfg.caption_variants > 0:
        source = WithCaptionVariants(bank, caption_variants)
        found = caption_variants.rows_for(bank.caption_ids, cfg.caption_variants)
        variant_rows = torch.where(found >= 0, found + num_captions, found)

    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    if not model.has_input_stats:
        model.fit_input_stats(bank)
    model.to(device)

    stage1_offsets = distillation = None
    if listwise and cfg.reads_stage1_scores:  # plan_listwise refuses caption variants
        t2v_scale, v2t_scale = lists.stage1_temperatures(bank.caption_video)
        if cfg.stage1_residual > 0:
            stage1_offsets = (cfg.stage1_residual * t2v_scale, cfg.stage1_residual * v2t_scale)
        if cfg.stage1_distillation > 0:
            distillation = (cfg.stage1_distillation, t2v_scale, v2t_scale)

    one_per_video = listwise and cfg.captions_per_epoch == "one_per_video"
    contrast_arrangement = CONTRAST_ARRANGEMENTS[cfg.order_contrast_with]
    rows_per_epoch = bank.num_videos if one_per_video else num_captions
    steps_per_epoch = math.ceil(rows_per_epoch / batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    optimizer, schedule = adamw_warmup_cosine(model.optimizer_groups(cfg.weight_decay), cfg.lr,
                                              total_steps, cfg.warmup_fraction)

    def batches(epoch: int) -> Sequence:
        order = (one_caption_per_video(bank.caption_video, generator) if one_per_video
                 else torch.randperm(num_captions, generator=generator))
        rows = order.split(batch_size)
        if not listwise:
            return rows
        first_step = (epoch - 1) * steps_per_epoch
        plans = [plan_listwise(bank, lists, text_rows, hard_fraction_at(first_step + i),
                               generator, cfg.reversed_negatives, cfg.swapped_negatives,
                               cfg.order_contrast, contrast_arrangement, variant_rows,
                               offsets_at(first_step + i), distillation)
                 for i, text_rows in enumerate(rows)]
        return ReadAhead(plans, lambda plan: (plan, read_pairs(source, *plan.pairs())))

    def offsets_at(step: int) -> tuple[float, float] | None:
        """Stage 1's offsets grow with the curriculum: on the easy lists of the first steps,
        which stage 1 already orders, they would leave stage 2 nothing to learn from."""
        if stage1_offsets is None:
            return None
        share = hard_fraction_at(step)
        return (share * stage1_offsets[0], share * stage1_offsets[1])

    def hard_fraction_at(step: int) -> float:
        fraction = hard_negative_fraction(step, total_steps, cfg.hard_negative_warmup)
        # hard mining off (the ablation): listwise lists of random items only
        return fraction if cfg.hard_negatives or not listwise else 0.0

    def step(batch, global_step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        names = ("accuracy", "pos_prob", "pos_beats_neg_video")
        if listwise:  # (ListwiseBatch, its PairInputs), read ahead
            loss, stats = listwise_loss(model, *batch, device, cfg.precision,
                                        cfg.grounding_consistency, cfg.word_timing_consistency,
                                        cfg.word_timing_ranking)
            names += ("order_contrast_right", "grounding_consistency",
                      "word_timing_consistency", "word_timing_alone_right",
                      "pos_beats_caption_variants")
        else:  # caption rows
            loss, stats = _bce_step(model, dataset, bank, scores, batch, cfg, generator,
                                    hard_fraction_at(global_step), device)
        return loss, dict(zip(names, stats, strict=True))

    if listwise:  # K + 1 (reversed) videos and K captions per caption
        pairs_per_caption = (2 * cfg.list_size + int(cfg.reversed_negatives)
                             + int(cfg.swapped_negatives)
                             + len(order_contrast_pairs(contrast_arrangement))
                             * (cfg.order_contrast > 0)) * (
            rows_per_epoch / num_captions)
    else:
        pairs_per_caption = 3 + cfg.random_negatives + int(cfg.reversed_negatives)

    def epoch_extras(epoch: int, seconds: float) -> dict:
        extras = {"hard_fraction": hard_fraction_at(epoch * steps_per_epoch - 1),
                  "pairs_per_second": pairs_per_caption * num_captions / seconds}
        if stage1_offsets is not None:
            extras.update(stage1_offset_t2v=stage1_offsets[0], stage1_offset_v2t=stage1_offsets[1])
        return extras

    def keep_fusion_weights(record: dict) -> None:
        model.set_fusion_weights(record["val_t2v_fusion_weight"],
                                 record["val_v2t_fusion_weight"])

    trainer = Trainer(
        batches=batches, step=step, steps_per_epoch=steps_per_epoch,
        epoch_extras=epoch_extras,
        validate=(None if validation is None
                  else lambda: validate_two_stage(model, validation, device, cfg.precision)),
        score_key="val_mean_R1", after_validation=keep_fusion_weights,
    )
    history = run_epochs(
        model, trainer, optimizer, schedule, generator, epochs=cfg.epochs,
        grad_clip=cfg.grad_clip, name="reranker", scaler=grad_scaler(device, cfg.precision),
        early_stopping=EarlyStopping(cfg.early_stopping_patience) if validation else None,
        checkpoint_dir=checkpoint_dir, resume=resume, on_epoch_end=on_epoch_end,
        progress=progress, weight_average=cfg.weight_average,
    )
    model.to(device).eval()
    return history

