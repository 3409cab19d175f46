"""The benchmark's steps as library functions: stage 1, training lists, re-ranker training,
two-stage scoring and evaluation.

The Prefect tasks (tasks/retrieval.py) wrap these with Lance reads and MLflow logging; the
research scripts in experiments/ call the very same functions on banks they load, so a number
from an experiment and a number from the flow come from one code path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from crosstvr_core import synthetic
from crosstvr_core.bank_split import BankSplit, separate_validation, split_validation
from crosstvr_core.config import CrossTVRConfig
from crosstvr_core.models.encoder import EncoderSpec, FrozenEncoder, load_frozen_encoder
from crosstvr_core.models.reranker import reranker_shape_kwargs
from crosstvr_core.models.reranker_ensemble import Reranker, new_reranker, reranker_members
from crosstvr_core.models.temporal_head import TemporalHead, dual_softmax
from crosstvr_core.models.word_embeddings import attach_word_embeddings
from crosstvr_core.report import flat_metrics, per_family_recall
from crosstvr_core.retrieval.metrics import (
    mcnemar_exact_p,
    retrieval_metrics,
    text_to_video_ranks,
    video_to_text_ranks,
)
from crosstvr_core.retrieval.pair_scoring import score_pairs
from crosstvr_core.retrieval.stage1 import meanp_similarity, stage1_training_bank
from crosstvr_core.retrieval.two_stage import (
    STAGE2_ONLY_WEIGHT,
    fuse_top_k,
    relevance,
    stage2_only_top1,
    text_to_video_candidates,
    video_to_text_candidates,
)
from crosstvr_core.storage import TokenIndex
from crosstvr_core.token_bank import TokenBank
from crosstvr_core.training.caption_variants import (
    CaptionVariants,
    embedding_too_close,
    encode_variants,
    make_variants,
    word_contexts,
)
from crosstvr_core.training.encoder_pretraining import resolve_pretrained, resolve_text_tokens
from crosstvr_core.training.lists import (
    TrainingLists,
    cross_fitted_similarity,
    lists_from_similarity,
)
from crosstvr_core.training.reranker import (
    EpochCallback,
    NegativeScores,
    Validation,
    train_reranker,
    validate_two_stage,
)
from crosstvr_core.training.stage1 import temporal_similarity, train_temporal_head

Stage1Scorer = Callable[[TokenBank, TokenBank], torch.Tensor]


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


# --------------------------------------------------------------------------- stage 1


def fit_stage1(cfg: CrossTVRConfig, bank: TokenBank, *, on_epoch_end: EpochCallback | None = None,
               progress: bool = True, checkpoint_dir: str | Path | None = None
               ) -> TemporalHead | None:
    """The trained stage-1 head on `bank` (seqTransf), or None for the zero-shot meanP.
    With `checkpoint_dir`, each epoch is checkpointed there and a rerun resumes from it."""
    if cfg.stage1.method != "seqTransf":
        return None
    head = TemporalHead.for_bank(cfg.stage1, bank)
    train_temporal_head(head, bank, cfg.stage1, device=device(), on_epoch_end=on_epoch_end,
                        progress=progress, checkpoint_dir=checkpoint_dir,
                        resume=checkpoint_dir is not None)
    return head.eval()


def stage1_scorer(head: TemporalHead | None) -> Stage1Scorer:
    """(captions of one bank, videos of another) -> cosine [T, V] of this stage 1."""
    if head is None:
        return meanp_similarity
    return lambda text, video: temporal_similarity(head, text, video, device=device())


def validation_bank(cfg: CrossTVRConfig, load: Callable[[str], TokenBank]) -> TokenBank | None:
    """The split `data.val_split` as loaded by `load(split name)`, when it can validate: not
    the train or eval split, at least 2 videos and a caption. None: hold out
    train.val_fraction of the train videos instead (reranker_split)."""
    name = cfg.data.val_split
    if not name or name in (cfg.data.train_split, cfg.data.eval_split):
        return None
    bank = load(name)
    return bank if bank.num_videos >= 2 and bank.num_captions > 0 else None


def reranker_split(cfg: CrossTVRConfig, train: TokenBank, val: TokenBank | None = None
                   ) -> BankSplit | None:
    """The re-ranker's training part and its validation videos: the split `val` when given
    (validation_bank), else a held-out train.val_fraction of `train` (None: no validation)."""
    if val is not None:
        return separate_validation(train, val)
    if cfg.train.val_fraction <= 0:
        return None
    return split_validation(train, cfg.train.val_fraction, cfg.train.seed)


def describe_validation(split: BankSplit | None) -> str:
    """What validates, in words, for run parameters and logs."""
    if split is None:
        return "none"
    where = "held out of the train split" if split.held_out else "a split of its own"
    return f"{split.val.num_videos} videos, {split.val.num_captions} captions, {where}"


def list_recall(lists: TrainingLists, bank: TokenBank) -> dict[str, float]:
    """% of captions whose video is in their training list, and of videos with one of their
    captions in theirs: how hard the lists are (compare with the test recall@K)."""
    videos = (lists.videos_per_caption == bank.caption_video.unsqueeze(1)).any(1)
    captions = (bank.caption_video[lists.captions_per_video]
                == torch.arange(bank.num_videos).unsqueeze(1)).any(1)
    return {"t2v_positive_listed": 100.0 * float(videos.float().mean()),
            "v2t_positive_listed": 100.0 * float(captions.float().mean())}


def training_lists(cfg: CrossTVRConfig, bank: TokenBank, stage1_sim: torch.Tensor, *,
                   progress: bool = False) -> TrainingLists:
    """The stage-1 top-K lists the re-ranker trains on, for `bank` (its training part).

    train.lists_from "cross_fitted" (seqTransf): each list from a head that never saw that
    caption's or that video's fold; "zero_shot": from the meanP similarity, which never saw
    any caption; "stage1" (or a zero-shot stage 1): the lists of `stage1_sim` [T, V].
    """
    k = cfg.train.list_size
    source = cfg.train.lists_from
    keep = cfg.train.reads_stage1_scores  # the scores stay with the lists only when read
    if source == "zero_shot":
        sim = meanp_similarity(bank, bank)
        return lists_from_similarity(sim, sim, k, keep)
    if cfg.stage1.method == "seqTransf" and source == "cross_fitted":
        epochs = cfg.train.fold_epochs or cfg.stage1.epochs
        fold_cfg = cfg.model_copy(update={"stage1": cfg.stage1.model_copy(
            update={"epochs": epochs})})

        def train_fold(seen: TokenBank) -> Stage1Scorer:
            return stage1_scorer(fit_stage1(fold_cfg, seen, progress=progress))

        by_caption, by_video = cross_fitted_similarity(bank, cfg.train.stage1_folds,
                                                       cfg.train.seed, train_fold)
        return lists_from_similarity(by_caption, by_video, k, keep)
    return lists_from_similarity(stage1_sim, stage1_sim, k, keep)


# --------------------------------------------------------------------------- stage 2


def encoder_spec(cfg: CrossTVRConfig) -> EncoderSpec:
    return EncoderSpec(cfg.encoder.name, resolve_pretrained(cfg), cfg.encoder.precision,
                       resolve_text_tokens(cfg))


def load_encoder(cfg: CrossTVRConfig, device: str = "cpu") -> FrozenEncoder:
    """The configured frozen encoder (the one the index was built with)."""
    return load_frozen_encoder(
        encoder_spec(cfg), init_seed=cfg.encoder.init_seed,
        weights_dir=cfg.home_path / "weights", device=device,
    )


def reranker_banks(cfg: CrossTVRConfig, index: TokenIndex,
                   *banks: TokenBank | None) -> list[TokenBank | None]:
    """The banks as the configured re-ranker reads them: with each caption token's own
    frozen embedding when reranker.word_timing_term, word_presence_term or word_features is
    on (the frozen text tower encodes each distinct token once), unchanged otherwise."""
    r = cfg.reranker
    if not (r.word_timing_term or r.word_presence_term or r.word_features):
        return list(banks)
    encoder, texts, known = load_encoder(cfg), index.caption_texts(), {}
    return [None if bank is None else attach_word_embeddings(bank, encoder, texts, known)
            for bank in banks]


def caption_variants(cfg: CrossTVRConfig, index: TokenIndex, bank: TokenBank,
                     encoder: FrozenEncoder | None = None) -> CaptionVariants | None:
    """train.caption_variants variants of each caption of `bank` (the training split),
    through the frozen text tower the index was built with; None when off. Which words may
    stand in for which comes from the bank's own captions, so no test caption is read."""
    t = cfg.train
    if t.caption_variants <= 0 or t.loss != "listwise":
        return None
    encoder = encoder or load_encoder(cfg)
    texts = index.caption_texts()
    missing = [c for c in bank.caption_ids if c not in texts]
    if missing:
        raise ValueError(f"caption variants: {len(missing)} captions have no text, e.g. "
                         f"{missing[:3]}")
    own = [texts[c] for c in bank.caption_ids]
    of_video: dict[int, set[str]] = {}
    for video, text in zip(bank.caption_video.tolist(), own, strict=True):
        of_video.setdefault(video, set()).add(text)
    too_close = None
    if t.caption_variant_max_similarity < 1:
        words = {w for choices in word_contexts(own).values() for w in choices}
        too_close = embedding_too_close(lambda batch: encoder.encode_captions(batch)[0], words,
                                        t.caption_variant_max_similarity)
    made = make_variants(own, t.caption_variants, t.seed,
                         [of_video[v] for v in bank.caption_video.tolist()], too_close)
    return encode_variants(encoder, made, bank.caption_ids, bank.text_tokens.shape[1],
                           bank.text_words is not None)


def build_reranker(cfg: CrossTVRConfig, shapes: dict) -> Reranker:
    """A fresh re-ranker sized for the index's token shapes, initialised from train.seed
    (whatever ran before, the same config gives the same initial weights); an ensemble of
    reranker.ensemble_size members from train.seed, train.seed + 1, ..."""
    return new_reranker(cfg.reranker, cfg.train.seed, **reranker_shape_kwargs(shapes))


def train_stage2(cfg: CrossTVRConfig, model: Reranker, train: TokenBank,
                 stage1_train_sim: torch.Tensor, lists: TrainingLists | None,
                 split: BankSplit | None, *, val_stage1_sim: torch.Tensor | None = None,
                 negatives: NegativeScores | None = None,
                 on_epoch_end: EpochCallback | None = None,
                 checkpoint_dir: str | Path | None = None, progress: bool = True,
                 variants: CaptionVariants | None = None) -> list[dict]:
    """Train the re-ranker on the split's training part (all of `train` without a split),
    validating on its validation videos: with the stage-1 similarity [T, V] of `train` when
    they were held out of it, with `val_stage1_sim` [T_val, V_val] when they are a split of
    their own. `lists` are the training part's (training_lists); `negatives` (bce only)
    default to the stage-1 similarity; `variants` (caption_variants) of `train`'s captions
    join the video->text lists.

    An ensemble trains its members one after another, member i as a single re-ranker of
    seed train.seed + i would train (its checkpoints under `checkpoint_dir/member-i`, its
    records marked "member": i), then validates the averaged logits once more for the
    ensemble's own fusion weights (a last record, "member": "ensemble")."""
    t, e = cfg.train, cfg.eval
    bank, validation = train, None
    negatives = negatives or NegativeScores.from_similarity(stage1_train_sim)
    if split is not None:
        bank = split.train
        if variants is not None:  # those of held-out validation captions never train
            variants = variants.restricted_to(bank.caption_ids)
        negatives = NegativeScores(
            negatives.videos_per_caption[split.train_captions][:, split.train_videos],
            negatives.captions_per_video[split.train_videos][:, split.train_captions])
        if split.held_out:
            val_sim = stage1_train_sim[split.val_captions][:, split.val_videos]
        elif val_stage1_sim is None:
            raise ValueError("train_stage2: validation on a split of its own needs "
                             "val_stage1_sim, its stage-1 similarity")
        else:
            val_sim = val_stage1_sim
        validation = Validation(split.val, val_sim, e.top_k, e.fusion_weight, e.fusion_score,
                                e.batch_size, e.fusion_pick)
    members = reranker_members(model)
    history: list[dict] = []
    for i, member in enumerate(members):
        member.fit_input_stats(bank)
        if len(members) == 1:
            member_train, member_dir, callback = t, checkpoint_dir, on_epoch_end
        else:
            member_train = t.model_copy(update={"seed": t.seed + i})
            member_dir = None if checkpoint_dir is None else Path(checkpoint_dir) / f"member-{i}"
            callback = None if on_epoch_end is None else _as_member(on_epoch_end, i)
        records = train_reranker(member, bank, negatives if t.loss == "bce" else None,
                                 member_train, lists=lists, device=device(),
                                 on_epoch_end=callback, validation=validation,
                                 checkpoint_dir=member_dir, resume=member_dir is not None,
                                 progress=progress, caption_variants=variants)
        history += records if len(members) == 1 else [{**r, "member": i} for r in records]
    if len(members) > 1 and validation is not None:
        record = validate_two_stage(model, validation, torch.device(device()), t.precision)
        model.set_fusion_weights(record["val_t2v_fusion_weight"],
                                 record["val_v2t_fusion_weight"])
        history.append({"member": "ensemble", **record})
    elif len(members) > 1:  # nothing to fit them on: the members' own, averaged
        model.set_fusion_weights(*torch.stack([m.fusion_weights for m in members]).mean(0).tolist())
    if e.fusion_weight is not None:
        model.set_fusion_weights(e.fusion_weight, e.fusion_weight)
    return history


def _as_member(on_epoch_end: EpochCallback, member: int) -> EpochCallback:
    """The epoch callback of one ensemble member: its records say which member they are."""
    return lambda epoch, record, model: on_epoch_end(epoch, {**record, "member": member}, model)


# --------------------------------------------------------------------------- evaluation


@dataclass
class TwoStageResult:
    """Evaluation of one split: flat metrics and the fused matrices [T, V] per direction."""

    metrics: dict[str, float]
    fused_t2v: torch.Tensor
    fused_v2t: torch.Tensor
    ranks: dict[str, np.ndarray]  # "stage 1" / "two-stage" text->video ranks
    v2t_ranks: dict[str, np.ndarray]
    families: list[str]
    twins: dict[str, dict[str, float]]  # label -> factor -> accuracy


def twin_outcomes(matrix: torch.Tensor, bank: TokenBank, metas: list[dict],
                  direction: str) -> dict[str, dict[int, bool]]:
    """`synthetic.near_duplicate_outcomes` of a [T, V] score matrix over `bank`."""
    return synthetic.near_duplicate_outcomes(matrix.float().numpy(), bank.caption_video.numpy(),
                                             bank.video_ids, metas, direction=direction)


def _twin_accuracy(matrix: torch.Tensor, bank: TokenBank, metas: list[dict],
                   direction: str) -> dict[str, float]:
    return synthetic.twin_accuracy(twin_outcomes(matrix, bank, metas, direction))


def twin_changes_metrics(before: dict[str, dict[int, bool]], after: dict[str, dict[int, bool]],
                         direction: str) -> dict[str, float]:
    """Two-stage (`after`) against stage 1 (`before`, both `twin_outcomes` of one direction)
    on the twins, caption by caption: per factor the twins won only by two-stage
    (`twostage/<d>_twin_gained_<f>`), only by stage 1 (`..._lost_<f>`), and the exact
    McNemar p-value of the difference (`..._p_<f>`). "At least stage 1's accuracy" a few
    captions apart is noise unless that p-value is small."""
    metrics = {}
    for factor, (gained, lost) in synthetic.paired_twin_changes(before, after).items():
        metrics[f"twostage/{direction}_twin_gained_{factor}"] = float(gained)
        metrics[f"twostage/{direction}_twin_lost_{factor}"] = float(lost)
        metrics[f"twostage/{direction}_twin_p_{factor}"] = mcnemar_exact_p(gained, lost)
    return metrics


def evaluate_two_stage(cfg: CrossTVRConfig, model: Reranker, bank: TokenBank,
                       stage1_sim: torch.Tensor, metas: list[dict] | None = None, *,
                       progress: bool = False) -> TwoStageResult:
    """Stage 1 vs two-stage on `bank` in both directions, with the model's fusion weights
    (picked on validation, or eval.fusion_weight): R@K/MdR/MnR, the re-ranker's own top-1
    within the top K (`stage2only/*`), per scene kind and per twin factor."""
    e = cfg.eval
    k = min(e.top_k, bank.num_videos, bank.num_captions)

    def scorer(text_rows: torch.Tensor, video_rows: torch.Tensor) -> torch.Tensor:
        logits = score_pairs(model, bank, text_rows, bank, video_rows, e.batch_size,
                             device=device(), progress=progress, precision=cfg.train.precision)
        return torch.sigmoid(logits) if e.fusion_score == "prob" else logits

    sim = stage1_sim.float()
    truth = relevance(bank.caption_video, bank.num_videos)
    t2v_idx, t2v_s2 = text_to_video_candidates(sim, k, scorer)
    v2t_idx, v2t_s2 = video_to_text_candidates(sim, k, scorer)
    w_t2v, w_v2t = model.fusion_weight_t2v, model.fusion_weight_v2t
    fused_t2v = fuse_top_k(sim, t2v_idx, t2v_s2, w_t2v)
    fused_v2t = fuse_top_k(sim.T, v2t_idx, v2t_s2, w_v2t).T
    only_t2v = fuse_top_k(sim, t2v_idx, t2v_s2, STAGE2_ONLY_WEIGHT)
    only_v2t = fuse_top_k(sim.T, v2t_idx, v2t_s2, STAGE2_ONLY_WEIGHT).T

    metrics = flat_metrics("twostage", {
        "t2v": retrieval_metrics(fused_t2v, bank.caption_video)["t2v"],
        "v2t": retrieval_metrics(fused_v2t, bank.caption_video)["v2t"]})
    metrics.update(flat_metrics("stage2only", {
        "t2v": retrieval_metrics(only_t2v, bank.caption_video)["t2v"],
        "v2t": retrieval_metrics(only_v2t, bank.caption_video)["v2t"]}))
    for name, idx, s2, relevant in (("t2v", t2v_idx, t2v_s2, truth), ("v2t", v2t_idx, v2t_s2, truth.T)):
        top1 = stage2_only_top1(idx, s2, relevant)
        metrics[f"stage2only/{name}_top1_in_top{k}"] = top1["top1"]
        metrics[f"stage2only/{name}_top1_in_top{k}_when_listed"] = top1["top1_when_listed"]
        metrics[f"stage2only/{name}_chance_in_top{k}"] = top1["chance"]
    metrics["twostage/t2v_fusion_weight"] = w_t2v
    metrics["twostage/v2t_fusion_weight"] = w_v2t

    ranks = {"stage 1": text_to_video_ranks(sim, bank.caption_video),
             "two-stage": text_to_video_ranks(fused_t2v, bank.caption_video)}
    v2t_ranks = {"stage 1": video_to_text_ranks(sim, bank.caption_video),
                 "two-stage": video_to_text_ranks(fused_v2t, bank.caption_video)}
    metas = metas or [{} for _ in range(bank.num_captions)]
    families = [m.get("variant", "") for m in metas]
    for label, key in (("stage 1", "stage1"), ("two-stage", "twostage")):
        for family, value in per_family_recall(ranks[label], families).items():
            metrics[f"{key}/t2v_R1_{family}"] = value
    twins: dict[str, dict[str, float]] = {}
    if any(k.startswith("twin_") for m in metas for k in m):
        matrices = {"stage 1": (sim, sim), "two-stage": (fused_t2v, fused_v2t),
                    "stage 2 only": (only_t2v, only_v2t)}
        outcomes: dict[str, dict[str, dict]] = {}
        for label, (t2v, v2t) in matrices.items():
            key = {"stage 1": "stage1", "two-stage": "twostage", "stage 2 only": "stage2only"}[label]
            outcomes[label] = {d: twin_outcomes(m, bank, metas, d)
                               for d, m in (("t2v", t2v), ("v2t", v2t))}
            twins[label] = synthetic.twin_accuracy(outcomes[label]["t2v"])
            for direction in ("t2v", "v2t"):
                for factor, value in synthetic.twin_accuracy(outcomes[label][direction]).items():
                    metrics[f"{key}/{direction}_twin_acc_{factor}"] = value
        for direction in ("t2v", "v2t"):
            metrics.update(twin_changes_metrics(outcomes["stage 1"][direction],
                                                outcomes["two-stage"][direction], direction))
    return TwoStageResult(metrics, fused_t2v, fused_v2t, ranks, v2t_ranks, families, twins)


def stage1_metrics(sim: torch.Tensor, bank: TokenBank, k: int, prefix: str,
                   metas: list[dict] | None = None) -> dict[str, float]:
    """R@K/MdR/MnR both directions, recall within the top K (the re-ranker's ceiling), and
    twin accuracy per factor when the captions name twins."""
    metrics = flat_metrics(prefix, retrieval_metrics(sim, bank.caption_video))
    t2v = text_to_video_ranks(sim, bank.caption_video)
    v2t = video_to_text_ranks(sim, bank.caption_video)
    metrics[f"{prefix}/t2v_recall_at_{k}"] = float(100.0 * np.mean(t2v < k))
    metrics[f"{prefix}/v2t_recall_at_{k}"] = float(100.0 * np.mean(v2t < k))
    if metas and any(key.startswith("twin_") for m in metas for key in m):
        for direction in ("t2v", "v2t"):
            for factor, value in _twin_accuracy(sim, bank, metas, direction).items():
                metrics[f"{prefix}/{direction}_twin_acc_{factor}"] = value
    return metrics


def stage1_test_similarity(cfg: CrossTVRConfig, head: TemporalHead | None,
                           test: TokenBank) -> torch.Tensor:
    sim = stage1_scorer(head)(test, test)
    if cfg.stage1.dual_softmax:
        sim = dual_softmax(sim, cfg.stage1.dual_softmax_temperature)
    return sim


def fit_stage1_for_reranking(cfg: CrossTVRConfig, train: TokenBank, *,
                             separate_val: bool = False,
                             on_epoch_end: EpochCallback | None = None,
                             progress: bool = True,
                             checkpoint_dir: str | Path | None = None) -> TemporalHead | None:
    """The stage 1 whose lists are re-ranked: trained on the train split minus the
    re-ranker's held-out validation videos (all of it when `separate_val`: the validation
    videos are a split of their own; stage1_training_bank)."""
    return fit_stage1(cfg, stage1_training_bank(cfg, train, separate_val),
                      on_epoch_end=on_epoch_end,
                      progress=progress, checkpoint_dir=checkpoint_dir)
