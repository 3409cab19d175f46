"""Listwise re-ranker training, cross-fitted training lists and validation-picked fusion."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from bank_fixtures import FRAMES, make_model, random_bank, toy_bank

from crosstvr_core.config import TrainConfig
from crosstvr_core.models.reranker import CrossTVRReranker
from crosstvr_core.retrieval.metrics import retrieval_metrics
from crosstvr_core.retrieval.two_stage import (
    STAGE2_ONLY_WEIGHT,
    choose_fusion_weight,
    fit_fusion_weight,
    fuse_top_k,
    fused_top1,
    pick_fusion_weight,
    relevance,
    stage2_only_top1,
    text_to_video_candidates,
)
from crosstvr_core.token_bank import TokenBank
from crosstvr_core.training.lists import (
    TrainingLists,
    cross_fitted_similarity,
    fold_of_videos,
    lists_from_similarity,
)
from crosstvr_core.training.negatives import (
    AS_RECORDED,
    BACKWARDS,
    HALVES_SWAPPED,
    play_backwards,
    say_backwards,
    swap_caption_halves,
    swap_halves,
)
from crosstvr_core.training.reranker import (
    ListwiseBatch,
    PairInputs,
    Validation,
    grounding_consistency_loss,
    listwise_loss,
    listwise_step,
    negatives_distillation,
    order_contrast_loss,
    order_contrast_pairs,
    pair_logits,
    plan_listwise,
    read_pairs,
    train_reranker,
    word_timing_consistency_loss,
    word_timing_ranking_loss,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_cross_fitted_lists_come_from_a_stage1_that_never_saw_them() -> None:
    """Each caption row (video column) is scored by the model trained without its fold."""
    bank = toy_bank(num_videos=12)
    folds = fold_of_videos(bank.num_videos, 3, seed=5)
    assert sorted(torch.bincount(folds).tolist()) == [4, 4, 4]
    seen_by_call: list[set[str]] = []

    def train(seen):
        seen_by_call.append(set(seen.video_ids))
        marker = float(len(seen_by_call))
        return lambda text, video: torch.full((text.num_captions, video.num_videos), marker)

    by_caption, by_video = cross_fitted_similarity(bank, 3, seed=5, train=train)
    assert len(seen_by_call) == 3
    for row in range(bank.num_captions):
        model = int(by_caption[row, 0]) - 1  # which call scored this caption
        own_video = bank.video_ids[int(bank.caption_video[row])]
        assert own_video not in seen_by_call[model]
    for col in range(bank.num_videos):
        model = int(by_video[0, col]) - 1
        assert bank.video_ids[col] not in seen_by_call[model]
    with pytest.raises(ValueError, match="at least 2 folds"):
        cross_fitted_similarity(bank, 1, seed=0, train=train)


def test_lists_are_top_k_and_subset_renumbers() -> None:
    sim = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.8, 0.7]])  # 2 captions x 3 videos
    lists = lists_from_similarity(sim, sim, k=2)
    assert lists.videos_per_caption.tolist() == [[0, 2], [1, 2]]
    assert lists.captions_per_video.tolist() == [[0, 1], [1, 0], [1, 0]]
    sub = lists.subset(torch.tensor([1]), torch.tensor([1, 2]))  # caption 1, videos 1 and 2
    assert sub.videos_per_caption.tolist() == [[0, 1]]
    assert sub.captions_per_video.tolist() == [[0, 0], [0, 0]]


def test_stage2_only_and_fusion_helpers_agree_with_the_metrics() -> None:
    gen = torch.Generator().manual_seed(0)
    stage1 = torch.randn(20, 10, generator=gen)
    caption_video = torch.arange(20) % 10
    truth = relevance(caption_video, 10)

    def oracle(text_rows: torch.Tensor, video_rows: torch.Tensor) -> torch.Tensor:
        return (caption_video[text_rows] == video_rows).float()

    top_idx, stage2 = text_to_video_candidates(stage1, 5, oracle)
    listed = truth.gather(1, top_idx).any(1).float().mean() * 100
    only = stage2_only_top1(top_idx, stage2, truth)
    assert only["top1"] == pytest.approx(float(listed))  # a perfect re-ranker within the list
    assert only["top1_when_listed"] == pytest.approx(100.0)
    assert only["chance"] == pytest.approx(float(listed) / 5)
    for weight in (0.0, 0.5, 100.0):
        fused = fuse_top_k(stage1, top_idx, stage2, weight)
        r1 = retrieval_metrics(fused, caption_video)["t2v"]["R1"]
        assert fused_top1(stage1, top_idx, stage2, truth, weight) == pytest.approx(r1)
    weight, r1 = pick_fusion_weight(stage1, top_idx, stage2, truth)
    assert r1 == pytest.approx(float(listed)) and weight > 0
    stage1_r1 = retrieval_metrics(stage1, caption_video)["t2v"]["R1"]
    assert pick_fusion_weight(stage1, top_idx, -stage2, truth) == (0.0, pytest.approx(stage1_r1))


def test_likelihood_fusion_recovers_the_weight_the_right_items_were_drawn_with() -> None:
    # 4,000 lists of 8: the right item drawn from softmax(a * stage1 + b * stage2), a = 20,
    # b = 3, so the fitted w should be b / a = 0.15; R@1 cannot see it this finely
    gen = torch.Generator().manual_seed(0)
    queries, k = 4000, 8
    stage1 = 0.05 * torch.randn(queries, k, generator=gen)
    stage2 = torch.randn(queries, k, generator=gen)
    right = torch.multinomial(torch.softmax(20 * stage1 + 3 * stage2, dim=1), 1, generator=gen)
    truth = torch.zeros(queries, k, dtype=torch.bool).scatter_(1, right, True)
    top_idx = torch.arange(k).expand(queries, k)
    weight, r1 = fit_fusion_weight(stage1, top_idx, stage2, truth)
    assert weight == pytest.approx(0.15, rel=0.1)
    assert r1 == pytest.approx(fused_top1(stage1, top_idx, stage2, truth, weight))
    assert choose_fusion_weight(stage1, top_idx, stage2, truth) == (weight, r1)
    # stage 2 that only misleads: stage 1 alone; stage 1 that only misleads: stage 2 alone
    assert fit_fusion_weight(stage1, top_idx, -stage2, truth)[0] == 0.0
    right = torch.multinomial(torch.softmax(-20 * stage1 + 3 * stage2, dim=1), 1, generator=gen)
    truth = torch.zeros(queries, k, dtype=torch.bool).scatter_(1, right, True)
    assert fit_fusion_weight(stage1, top_idx, stage2, truth)[0] == STAGE2_ONLY_WEIGHT
    with pytest.raises(ValueError, match="'likelihood' or 'recall'"):
        choose_fusion_weight(stage1, top_idx, stage2, truth, "best")


def test_likelihood_fusion_on_perfect_and_empty_lists() -> None:
    gen = torch.Generator().manual_seed(1)
    stage1 = torch.randn(20, 10, generator=gen)
    caption_video = torch.arange(20) % 10
    truth = relevance(caption_video, 10)
    top_idx, stage2 = text_to_video_candidates(
        stage1, 5, lambda t, v: (caption_video[t] == v).float())  # a perfect re-ranker
    listed = 100.0 * float(truth.gather(1, top_idx).any(1).float().mean())
    weight, r1 = fit_fusion_weight(stage1, top_idx, stage2, truth)
    assert 0 < weight < float("inf") and r1 == pytest.approx(listed)
    nothing = torch.zeros_like(truth)  # no right item listed: nothing to fit, stage 1 alone
    assert fit_fusion_weight(stage1, top_idx, stage2, nothing) == (0.0, 0.0)


def test_listwise_training_learns_to_rank_the_lists() -> None:
    bank = toy_bank(num_videos=24)
    sim = torch.randn(bank.num_captions, bank.num_videos, generator=torch.Generator())
    lists = lists_from_similarity(sim, sim, 6)
    model = make_model(hidden=32)
    cfg = TrainConfig(epochs=8, list_batch_size=8, lr=3e-3, list_size=6, seed=1)
    history = train_reranker(model, bank, None, cfg, lists=lists, progress=False,
                             validation=Validation(bank, sim, top_k=bank.num_videos))
    first, last = history[0], history[-1]
    assert last["loss"] < 0.6 * first["loss"]
    assert last["accuracy"] > 0.8  # the positive first in its training list
    assert last["val_t2v_stage2_top1"] > 50 and last["val_v2t_stage2_top1"] > 50
    assert model.fusion_weights.tolist() == pytest.approx([  # kept in a float32 buffer
        history[int(np.argmax([r["val_mean_R1"] for r in history]))][k]
        for k in ("val_t2v_fusion_weight", "val_v2t_fusion_weight")], rel=1e-6)
    with pytest.raises(ValueError, match="training lists"):
        train_reranker(make_model(), bank, None, cfg, progress=False)
    wrong = TrainingLists(lists.videos_per_caption[:3], lists.captions_per_video)
    with pytest.raises(ValueError, match="lists for 3 captions"):
        train_reranker(make_model(), bank, None, cfg, lists=wrong, progress=False)


def test_time_is_visible_from_the_first_step() -> None:
    """An untrained re-ranker already scores a clip and its reversal differently (temporal
    positions at a useful scale, temporal self-attention, frame differences)."""
    bank = random_bank()
    model = make_model(hidden=32)
    model.fit_input_stats(bank)
    rows = torch.arange(bank.num_videos)
    video = bank.video_batch(rows)
    backwards = play_backwards(video)
    text = bank.text_batch(rows)
    with torch.no_grad():
        forward = model(**text, **video)
        reverse = model(**text, **backwards)
    gap = (forward - reverse).abs() / forward.abs().clamp(min=1e-3)
    assert float(gap.mean()) > 0.01
    assert FRAMES >= 2


def test_pair_logits_score_each_arrangement_of_the_frames() -> None:
    """The same video as recorded, backwards and with its halves swapped, in one call, gives
    what the model gives each rearranged clip on its own."""
    bank = random_bank()
    model = make_model(hidden=32).eval()
    model.fit_input_stats(bank)
    text, video = torch.tensor([0, 0, 0, 1]), torch.tensor([2, 2, 2, 2])
    codes = torch.tensor([AS_RECORDED, BACKWARDS, HALVES_SWAPPED, HALVES_SWAPPED])
    with torch.no_grad():
        got = pair_logits(model, bank, text, video, codes, torch.device("cpu"), "fp32")
        clip = bank.video_batch(video)
        want = model(**bank.text_batch(text), **swap_halves(play_backwards(clip, codes == 1),
                                                            codes == 2))
    torch.testing.assert_close(got, want)
    assert len({round(float(v), 5) for v in got[:3]}) == 3  # three different clips


def lists_and_model() -> tuple[TokenBank, TrainingLists, CrossTVRReranker]:
    """A 12-video toy bank, stage-1 lists of 4 from a fixed random similarity, and a small
    re-ranker fitted to the bank's input statistics: what one listwise step reads."""
    bank = toy_bank(num_videos=12)
    sim = torch.randn(bank.num_captions, bank.num_videos, generator=torch.Generator())
    lists = lists_from_similarity(sim, sim, 4, keep_scores=True)
    model = make_model(hidden=32)
    model.fit_input_stats(bank)
    return bank, lists, model


def test_swapped_negative_is_one_more_column_the_loss_sees() -> None:
    bank, lists, model = lists_and_model()
    rows = torch.arange(4)
    losses = {}
    for reversed_, swapped in ((True, False), (True, True), (False, True)):
        loss, stats = listwise_step(model, bank, lists, rows, 1.0, torch.Generator().manual_seed(0),
                                    torch.device("cpu"), "fp32", reversed_, swapped)
        assert torch.isfinite(loss) and 0 <= float(stats[2]) <= 1
        losses[reversed_, swapped] = float(loss)
    # one more candidate in the text->video softmax changes the loss
    assert losses[True, True] != losses[True, False]
    cfg = TrainConfig(epochs=1, list_batch_size=4, list_size=4, swapped_negatives=True,
                      reversed_negatives=True)
    history = train_reranker(make_model(hidden=32), bank, None, cfg, lists=lists,
                             progress=False)
    # K + 2 videos and K captions per caption and epoch (one caption per video per epoch)
    pairs = history[-1]["pairs_per_second"] * history[-1]["seconds"]
    assert pairs == pytest.approx((2 * 4 + 2) * bank.num_videos)


def test_caption_rearrangements_move_the_inner_words_only() -> None:
    tokens = torch.arange(3 * 8, dtype=torch.float32).view(3, 8, 1)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0, 0], [1] * 8, [1, 1, 1, 0, 0, 0, 0, 0]]).bool()
    text = {"text_tokens": tokens, "text_mask": mask, "text_eot": torch.ones(3, 2)}
    out = swap_caption_halves(text)
    # first and last real token stay; 4 inner words rotate by 2, 6 by 3, 1 by 0; padding stays
    assert out["text_tokens"].squeeze(-1).tolist() == [
        [0, 3, 4, 1, 2, 5, 6, 7], [8, 12, 13, 14, 9, 10, 11, 15],
        [16, 17, 18, 19, 20, 21, 22, 23]]
    assert out["text_mask"] is mask and out["text_eot"] is text["text_eot"]
    assert say_backwards(text)["text_tokens"].squeeze(-1).tolist() == [
        [0, 4, 3, 2, 1, 5, 6, 7], [8, 14, 13, 12, 11, 10, 9, 15],
        [16, 17, 18, 19, 20, 21, 22, 23]]
    only_second = swap_caption_halves(text, torch.tensor([False, True, False]))
    assert torch.equal(only_second["text_tokens"][[0, 2]], tokens[[0, 2]])
    assert torch.equal(only_second["text_tokens"][1], out["text_tokens"][1])
    assert torch.equal(text["text_tokens"], tokens)  # the input is not changed


def test_order_contrast_rewards_only_the_interaction() -> None:
    gen = torch.Generator().manual_seed(0)
    caption = torch.randn(5, 1, generator=gen) * 3  # per caption arrangement: c, c'
    clip = torch.randn(5, 1, generator=gen) * 3  # per clip arrangement: v, v'
    codes = order_contrast_pairs(BACKWARDS)
    words, frames = (codes[:, 0] == BACKWARDS).float(), (codes[:, 1] == BACKWARDS).float()
    offsets = caption * words + clip * frames  # no interaction at all
    loss, right = order_contrast_loss(offsets)
    assert float(loss) == pytest.approx(np.log(2.0), abs=1e-6) and float(right) == 0.0
    # named first, seen first: (c, v) and (c', v') each up by x
    x = 0.7
    aligned = offsets + x * (1 - (words - frames).abs())
    loss, right = order_contrast_loss(aligned)
    assert float(loss) == pytest.approx(float(torch.nn.functional.softplus(
        torch.tensor(-2 * x))), abs=1e-6) and float(right) == 1.0
    with pytest.raises(ValueError, match="neither"):
        order_contrast_pairs(AS_RECORDED)


@pytest.mark.parametrize("arranged", [HALVES_SWAPPED, BACKWARDS])
def test_order_contrast_pairs_are_scored_and_weighted_as_planned(arranged: int) -> None:
    bank, lists, model = lists_and_model()
    rows = torch.tensor([0, 3, 5])
    cpu = torch.device("cpu")
    plan = plan_listwise(bank, lists, rows, 1.0, torch.Generator().manual_seed(0),
                         order_contrast=0.5, contrast_arrangement=arranged)
    text_rows, video_rows, frames, words = plan.pairs()
    tail = slice(-len(rows) * 4, None)
    positive = bank.caption_video[rows]
    assert text_rows[tail].tolist() == rows.repeat_interleave(4).tolist()
    assert video_rows[tail].tolist() == positive.repeat_interleave(4).tolist()
    assert frames[tail].tolist() == [AS_RECORDED, arranged] * 2 * len(rows)
    assert words[tail].tolist() == [AS_RECORDED, AS_RECORDED, arranged, arranged] * len(rows)
    assert not words[: -len(rows) * 4].any()
    inputs = read_pairs(bank, text_rows[tail], video_rows[tail], frames[tail], words[tail])
    assert inputs.text["text_tokens"].shape[0] == 2 * len(rows)  # c and c', once each
    say, play = {HALVES_SWAPPED: (swap_caption_halves, swap_halves),
                 BACKWARDS: (say_backwards, play_backwards)}[arranged]
    with torch.no_grad():
        want_text = say(bank.text_batch(text_rows[tail]), words[tail] == arranged)
        want_video = play(bank.video_batch(video_rows[tail]), frames[tail] == arranged)
        direct = model(**want_text, **want_video).view(-1, 4)
        # the caption said in another order scores differently from the caption itself
        assert not torch.allclose(direct[:, 0], direct[:, 2])
        through_inputs = pair_logits(model, bank, text_rows[tail], video_rows[tail],
                                     frames[tail], cpu, "fp32")
        torch.testing.assert_close(direct[:, [0, 1]], through_inputs.view(-1, 4)[:, [0, 1]])
        base, _ = listwise_step(model, bank, lists, rows, 1.0, torch.Generator().manual_seed(0),
                                cpu, "fp32")
        total, stats = listwise_step(model, bank, lists, rows, 1.0,
                                     torch.Generator().manual_seed(0), cpu, "fp32",
                                     order_contrast=0.5, contrast_arrangement=arranged)
    contrast, right = order_contrast_loss(direct)
    torch.testing.assert_close(total, base + 0.5 * contrast)
    assert float(stats[3]) == float(right)


def test_training_with_the_order_contrast_scores_its_pairs() -> None:
    bank = toy_bank(num_videos=12)
    sim = torch.randn(bank.num_captions, bank.num_videos, generator=torch.Generator())
    lists = lists_from_similarity(sim, sim, 4)
    cfg = TrainConfig(epochs=1, list_batch_size=4, list_size=4, order_contrast=1.0,
                      order_contrast_with="backwards")
    history = train_reranker(make_model(hidden=32), bank, None, cfg, lists=lists,
                             progress=False)
    # K + 1 (backwards) videos, K captions and 4 contrast pairs per caption and epoch
    pairs = history[-1]["pairs_per_second"] * history[-1]["seconds"]
    assert pairs == pytest.approx((2 * 4 + 1 + 4) * bank.num_videos)
    assert 0 <= history[-1]["order_contrast_right"] <= 1


def test_grounding_consistency_is_the_gap_over_real_tokens_towards_a_fixed_target() -> None:
    expected = torch.zeros(2, 3, 2, requires_grad=True)  # [B, L, G]
    observed = torch.full((2, 2, 3), 0.5, requires_grad=True)  # [B, G, L]
    mask = torch.tensor([[True, True, False], [True, False, False]])
    loss = grounding_consistency_loss(expected, observed, mask)
    assert float(loss) == pytest.approx(0.25)  # (0 - 0.5)^2 on each real token and head
    loss.backward()
    assert observed.grad is None  # the clip side is the teacher, never pulled towards text
    assert expected.grad[0, 2].abs().sum() == 0 and expected.grad[1, 1:].abs().sum() == 0
    longer = torch.cat([mask, torch.zeros(2, 4, dtype=torch.bool)], dim=1)  # untrimmed mask
    assert float(grounding_consistency_loss(expected, observed, longer)) == pytest.approx(0.25)


def one_listwise_batch() -> tuple[TokenBank, CrossTVRReranker, torch.Tensor, ListwiseBatch,
                                  PairInputs]:
    """Captions 0, 3 and 5 of lists_and_model's bank planned as one listwise batch, read:
    (bank, model, their rows, the plan, its inputs)."""
    bank, lists, model = lists_and_model()
    rows = torch.tensor([0, 3, 5])
    plan = plan_listwise(bank, lists, rows, 1.0, torch.Generator().manual_seed(0))
    return bank, model, rows, plan, read_pairs(bank, *plan.pairs())


def test_grounding_consistency_reads_each_captions_own_pair_at_its_weight() -> None:
    """The step's loss is the listwise loss plus the weight times the consistency of each
    caption with its own video, computed here straight from the model's grounding times."""
    bank, model, rows, plan, inputs = one_listwise_batch()
    cpu = torch.device("cpu")
    with torch.no_grad():
        base, _ = listwise_loss(model, plan, inputs, cpu, "fp32")
        total, stats = listwise_loss(model, plan, inputs, cpu, "fp32", grounding_consistency=0.7)
        text = bank.text_batch(rows)
        video = bank.video_batch(bank.caption_video[rows])
        own = torch.arange(len(rows))
        expected, _, observed = model.grounding_times(
            model.encode_text(text["text_tokens"], text["text_mask"]),
            text["text_mask"].bool(), own, model.encode_video(**video), video["frame_mask"],
            own)
    direct = grounding_consistency_loss(expected, observed, text["text_mask"].bool())
    assert float(direct) > 0
    torch.testing.assert_close(total, base + 0.7 * direct)
    torch.testing.assert_close(stats[4], direct)
    without = make_model(hidden=32, grounding_term=False)
    without.fit_input_stats(bank)
    with pytest.raises(ValueError, match="grounding_term"):
        listwise_loss(without, plan, inputs, cpu, "fp32", grounding_consistency=0.7)


def test_word_timing_consistency_pulls_expected_time_towards_the_frozen_observed_time() -> None:
    """The step's loss is the listwise loss plus the weight times the mean squared gap
    between each real token's expected time and its frozen observed time in the caption's
    own clip; the observed side gets no gradient (it is frozen anyway), the text side does."""
    bank, model, rows, plan, inputs = one_listwise_batch()
    cpu = torch.device("cpu")
    with torch.no_grad():
        base, _ = listwise_loss(model, plan, inputs, cpu, "fp32")
        total, stats = listwise_loss(model, plan, inputs, cpu, "fp32",
                                     word_timing_consistency=0.5)
        text = bank.text_batch(rows)
        video = bank.video_batch(bank.caption_video[rows])
        own = torch.arange(len(rows))
        mask = text["text_mask"].bool()
        expected, _, observed = model.word_times(
            model.encode_text(text["text_tokens"], mask), mask, own, text["text_words"],
            video["video_cls"], video["frame_mask"].bool(), own)
    direct = ((expected - observed).square() * mask).sum() / mask.sum()
    assert float(direct) > 0
    torch.testing.assert_close(total, base + 0.5 * direct)
    torch.testing.assert_close(stats[5], direct)
    model.train()
    loss = word_timing_consistency_loss(model, inputs, torch.arange(len(rows)) * plan.videos.shape[1],
                                        cpu, "fp32")
    loss.backward()
    assert model.word_when.weight.grad.abs().sum() > 0
    assert model.word_sharpness.grad is None  # the observed side is the teacher
    without = make_model(hidden=32, word_timing_term=False)
    without.fit_input_stats(bank)
    with pytest.raises(ValueError, match="word_timing_term"):
        listwise_loss(without, plan, inputs, cpu, "fp32", word_timing_consistency=0.5)


def test_word_timing_ranking_is_the_terms_own_choice_between_a_clip_and_its_reversal() -> None:
    """The step's loss is the listwise loss plus the weight times the two-way cross-entropy
    of the word-timing term alone between each caption's own clip and that clip played
    backwards, computed here from the model on the reversed frames; it trains the caption
    side and the importance, not the term's scale."""
    bank, model, rows, plan, inputs = one_listwise_batch()
    cpu = torch.device("cpu")
    own = torch.arange(len(rows))
    with torch.no_grad():
        model.word_when.bias.add_(torch.tensor([0.3, 0.0]))  # a caption side that says when
        base, _ = listwise_loss(model, plan, inputs, cpu, "fp32")
        total, stats = listwise_loss(model, plan, inputs, cpu, "fp32", word_timing_ranking=0.4)
        text = bank.text_batch(rows)
        mask = text["text_mask"].bool()
        states = model.encode_text(text["text_tokens"], mask)
        terms = []
        for video in (bank.video_batch(bank.caption_video[rows]),
                      play_backwards(bank.video_batch(bank.caption_video[rows]))):
            terms.append(model._word_timing_logit(*model.word_times(
                states, mask, own, text["text_words"], video["video_cls"],
                video["frame_mask"].bool(), own)))
    forwards, backwards = terms
    torch.testing.assert_close(backwards, -forwards)  # reversed: every observed time flips
    direct = torch.nn.functional.cross_entropy(torch.stack([forwards, backwards], dim=1),
                                               torch.zeros(len(rows), dtype=torch.long))
    assert float(direct) != pytest.approx(float(np.log(2)))  # the term says something
    torch.testing.assert_close(total, base + 0.4 * direct)
    torch.testing.assert_close(stats[6], (forwards > 0).float().mean())
    model.train()
    loss, _ = word_timing_ranking_loss(model, inputs, own * plan.videos.shape[1], cpu, "fp32")
    loss.backward()
    assert model.word_when.weight.grad.abs().sum() > 0
    assert model.word_scale.grad is None  # how loudly the term speaks is not its business
    without = make_model(hidden=32, word_timing_term=False)
    without.fit_input_stats(bank)
    with pytest.raises(ValueError, match="word_timing_ranking needs"):
        listwise_loss(without, plan, inputs, cpu, "fp32", word_timing_ranking=0.4)


def test_stage1_temperature_is_the_likelihood_fit_of_stage1_on_its_own_lists() -> None:
    """Right items drawn from softmax(12 * stage 1) over each caption's list: the fitted
    text->video multiplier is 12."""
    gen = torch.Generator().manual_seed(0)
    videos, k = 3000, 6
    sim = 0.1 * torch.randn(videos, videos, generator=gen)  # one caption per video
    lists = lists_from_similarity(sim, sim, k)
    assert lists.by_caption is None  # not kept unless asked for
    scores = sim.gather(1, lists.videos_per_caption)  # [T, K]
    right = torch.multinomial(torch.softmax(12 * scores, dim=1), 1, generator=gen).squeeze(1)
    own = lists.videos_per_caption[torch.arange(videos), right]  # the video caption c is of
    t2v, _ = TrainingLists(lists.videos_per_caption, lists.captions_per_video, sim, sim
                           ).stage1_temperatures(own)
    assert t2v == pytest.approx(12.0, rel=0.1)
    with pytest.raises(ValueError, match="kept no stage-1 scores"):
        TrainingLists(lists.videos_per_caption, lists.captions_per_video
                      ).stage1_temperatures(own)


def test_stage1_residual_puts_stage1_scores_into_the_listwise_loss() -> None:
    """With offsets, every list entry's logit is the re-ranker's plus the multiplier times
    stage 1's score of that entry (the rearranged positive: the positive's); the loss is the
    cross-entropy of those sums in both directions."""
    bank, lists, model = lists_and_model()
    assert lists.by_caption is not None and lists.by_video is not None
    rows = torch.tensor([0, 3, 5])
    plain = plan_listwise(bank, lists, rows, 1.0, torch.Generator().manual_seed(0))
    plan = plan_listwise(bank, lists, rows, 1.0, torch.Generator().manual_seed(0),
                         stage1_offsets=(2.0, 3.0))
    assert torch.equal(plan.videos, plain.videos) and torch.equal(plan.captions, plain.captions)
    positive = bank.caption_video[rows]
    for i, row in enumerate(rows.tolist()):
        for j, video in enumerate(plan.videos[i].tolist()):
            assert float(plan.video_offsets[i, j]) == pytest.approx(
                2.0 * float(lists.by_caption[row, video]))
        for j, caption in enumerate(plan.captions[i].tolist()):
            assert float(plan.caption_offsets[i, j]) == pytest.approx(
                3.0 * float(lists.by_video[caption, positive[i]]))
    assert plan.video_offsets[:, -1].tolist() == plan.video_offsets[:, 0].tolist()  # reversed
    inputs = read_pairs(bank, *plan.pairs())
    cpu = torch.device("cpu")
    with torch.no_grad():
        loss, _ = listwise_loss(model, plan, inputs, cpu, "fp32")
        base, _ = listwise_loss(model, plain, inputs, cpu, "fp32")
        logits = pair_logits(model, bank, *plan.pairs()[:3], cpu, "fp32")
    t2v = logits[: plan.videos.numel()].view(plan.videos.shape) + plan.video_offsets
    v2t = logits[plan.videos.numel():].view(plan.captions.shape) + plan.caption_offsets
    target = torch.zeros(len(rows), dtype=torch.long)
    want = (torch.nn.functional.cross_entropy(t2v, target)
            + torch.nn.functional.cross_entropy(v2t, target)) / 2
    torch.testing.assert_close(loss, want)
    assert float(loss) != pytest.approx(float(base))
    # a subset keeps each entry's score under its new numbering
    captions, videos = torch.tensor([2, 3, 6, 7]), torch.tensor([1, 3])
    sub = lists.subset(captions, videos)
    assert torch.equal(sub.by_caption, lists.by_caption[captions][:, videos])
    variants = torch.full((bank.num_captions, 1), -1)
    variants[0, 0] = bank.num_captions  # caption 0 has one variant
    with pytest.raises(ValueError, match="caption variants have no stage-1 score"):
        plan_listwise(bank, lists, rows, 1.0, torch.Generator(), variant_rows=variants,
                      stage1_offsets=(1.0, 1.0))


def record_plans(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Have training's plan_listwise record the positional arguments of every call."""
    import crosstvr_core.training.reranker as training

    calls: list[tuple] = []

    def recording_plan(*args, **kwargs):
        calls.append(args)
        return plan_listwise(*args, **kwargs)

    monkeypatch.setattr(training, "plan_listwise", recording_plan)
    return calls


def test_training_on_stage1_plus_stage2_grows_the_offsets_with_the_curriculum(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The offsets are stage 1's fitted temperatures times train.stage1_residual times the
    step's share of hard list entries: none on the random lists of the first step."""
    calls = record_plans(monkeypatch)
    bank, lists, _ = lists_and_model()
    cfg = TrainConfig(epochs=2, list_batch_size=4, list_size=4, stage1_residual=0.5)
    history = train_reranker(make_model(hidden=32), bank, None, cfg, lists=lists,
                             progress=False)
    planned = [(args[3], args[10]) for args in calls]  # (hard fraction, stage1_offsets)
    t2v, v2t = lists.stage1_temperatures(bank.caption_video)
    assert planned[0] == (0.0, (0.0, 0.0))
    for share, offsets in planned:
        assert offsets == pytest.approx((share * 0.5 * t2v, share * 0.5 * v2t))
    assert max(share for share, _ in planned) > 0.5
    assert history[-1]["stage1_offset_t2v"] == pytest.approx(0.5 * t2v)
    assert history[-1]["stage1_offset_v2t"] == pytest.approx(0.5 * v2t)
    assert all(np.isfinite(r["loss"]) for r in history)
    off = train_reranker(make_model(hidden=32), bank, None,
                         cfg.model_copy(update={"stage1_residual": 0.0}), lists=lists,
                         progress=False)
    assert "stage1_offset_t2v" not in off[-1] and off[-1]["loss"] != history[-1]["loss"]


def test_pipeline_keeps_the_stage1_scores_with_the_lists_only_when_they_are_read() -> None:
    from crosstvr_core import pipeline
    from crosstvr_core.config import CrossTVRConfig

    bank, _, _ = lists_and_model()
    sim = torch.randn(bank.num_captions, bank.num_videos, generator=torch.Generator())
    for residual, distillation, kept in ((0.0, 0.0, False), (0.5, 0.0, True),
                                         (0.0, 0.5, True)):
        cfg = CrossTVRConfig(train={"lists_from": "stage1", "list_size": 4,
                                    "stage1_residual": residual,
                                    "stage1_distillation": distillation})
        lists = pipeline.training_lists(cfg, bank, sim)
        assert (lists.by_caption is not None) is kept
        assert torch.equal(lists.videos_per_caption, sim.topk(4, dim=1).indices)


def test_negatives_distillation_is_the_kl_over_the_negatives_alone() -> None:
    """KL(teacher || student) of the softmaxes over columns 1: (column 0 is the right item):
    zero when the two order and space the negatives alike (a shift per list is free), blind
    to column 0, and the textbook KL otherwise."""
    teacher = torch.tensor([[5.0, 2.0, 1.0, -1.0], [0.0, 0.5, 0.5, 3.0]])
    assert float(negatives_distillation(teacher + 7.0, teacher)) == pytest.approx(0.0, abs=1e-6)
    moved = teacher.clone()
    moved[:, 0] = torch.tensor([-9.0, 9.0])
    assert float(negatives_distillation(moved, teacher)) == pytest.approx(0.0, abs=1e-6)
    student = torch.tensor([[0.0, -1.0, 2.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    p, q = teacher[:, 1:].softmax(1), student[:, 1:].softmax(1)
    want = (p * (p.log() - q.log())).sum(1).mean()
    assert float(negatives_distillation(student, teacher)) == pytest.approx(float(want))
    assert float(want) > 0.1


def test_stage1_distillation_adds_the_negatives_kl_to_the_listwise_loss() -> None:
    """The teachers are stage 1's scores of the lists proper (not the rearranged clip) times
    the multipliers; the loss is the plain listwise loss plus the weight times the mean of
    both directions' negatives KL against the re-ranker's own logits."""
    bank, lists, model = lists_and_model()
    rows = torch.tensor([0, 3, 5])
    plain = plan_listwise(bank, lists, rows, 1.0, torch.Generator().manual_seed(0))
    plan = plan_listwise(bank, lists, rows, 1.0, torch.Generator().manual_seed(0),
                         distillation=(0.7, 2.0, 3.0))
    assert torch.equal(plan.videos, plain.videos) and torch.equal(plan.captions, plain.captions)
    listed = plan.videos.shape[1] - plan.num_rearranged
    assert plan.num_rearranged == 1 and plan.video_teacher.shape == (3, listed)
    positive = bank.caption_video[rows]
    for i, row in enumerate(rows.tolist()):
        for j, video in enumerate(plan.videos[i, :listed].tolist()):
            assert float(plan.video_teacher[i, j]) == pytest.approx(
                2.0 * float(lists.by_caption[row, video]))
        for j, caption in enumerate(plan.captions[i].tolist()):
            assert float(plan.caption_teacher[i, j]) == pytest.approx(
                3.0 * float(lists.by_video[caption, positive[i]]))
    assert plan.video_offsets is None  # distillation alone adds no offset
    inputs = read_pairs(bank, *plan.pairs())
    cpu = torch.device("cpu")
    with torch.no_grad():
        loss, _ = listwise_loss(model, plan, inputs, cpu, "fp32")
        base, _ = listwise_loss(model, plain, inputs, cpu, "fp32")
        logits = pair_logits(model, bank, *plan.pairs()[:3], cpu, "fp32")
    t2v = logits[: plan.videos.numel()].view(plan.videos.shape)[:, :listed]
    v2t = logits[plan.videos.numel():].view(plan.captions.shape)
    want = base + 0.7 * (negatives_distillation(t2v, plan.video_teacher)
                         + negatives_distillation(v2t, plan.caption_teacher)) / 2
    torch.testing.assert_close(loss, want)
    assert float(loss) > float(base)
    variants = torch.full((bank.num_captions, 1), -1)
    variants[0, 0] = bank.num_captions
    with pytest.raises(ValueError, match="caption variants have no stage-1 score"):
        plan_listwise(bank, lists, rows, 1.0, torch.Generator(), variant_rows=variants,
                      distillation=(1.0, 1.0, 1.0))


def test_training_with_stage1_distillation_passes_the_fitted_teacher(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """train.stage1_distillation plans every step with (weight, stage 1's fitted t2v and
    v2t temperatures) and trains to a different, finite loss."""
    calls = record_plans(monkeypatch)
    bank, lists, _ = lists_and_model()
    cfg = TrainConfig(epochs=1, list_batch_size=4, list_size=4, stage1_distillation=0.5)
    history = train_reranker(make_model(hidden=32), bank, None, cfg, lists=lists,
                             progress=False)
    planned = [args[11] for args in calls]  # distillation
    t2v, v2t = lists.stage1_temperatures(bank.caption_video)
    assert planned and all(d == pytest.approx((0.5, t2v, v2t)) for d in planned)
    assert np.isfinite(history[-1]["loss"])
    off = train_reranker(make_model(hidden=32), bank, None,
                         cfg.model_copy(update={"stage1_distillation": 0.0}), lists=lists,
                         progress=False)
    assert off[-1]["loss"] != pytest.approx(history[-1]["loss"])
