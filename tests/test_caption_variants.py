"""Caption variants: one-word hard negative captions, made from the corpus, in the lists."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from bank_fixtures import make_model, toy_bank

from crosstvr_core.config import TrainConfig
from crosstvr_core.token_bank import CaptionWords
from crosstvr_core.training.caption_variants import (
    CaptionVariants,
    WithCaptionVariants,
    caption_variant,
    embedding_too_close,
    encode_variants,
    make_variants,
    word_contexts,
)
from crosstvr_core.training.lists import lists_from_similarity
from crosstvr_core.training.reranker import listwise_loss, plan_listwise, read_pairs, train_reranker

pytestmark = pytest.mark.usefixtures("one_thread")

CORPUS = ["a red circle and a blue square", "a blue circle and a red square",
          "a green circle and a red square", "a red circle moves left",
          "a blue circle moves right", "a green circle moves left"]


def test_contexts_are_words_seen_between_the_same_neighbours() -> None:
    contexts = word_contexts(CORPUS, min_count=1)
    assert contexts[("a", "circle")] == ["blue", "green", "red"]
    assert contexts[("moves", "</s>")] == ["left", "right"]
    assert ("circle", "a") not in contexts  # "and" alone between them: nothing to swap
    # a word must be seen twice in a context at min_count 2
    assert word_contexts(CORPUS, min_count=2)[("a", "circle")] == ["blue", "green", "red"]
    assert ("moves", "</s>") not in word_contexts(CORPUS, min_count=2)


def test_a_variant_exchanges_two_words_or_replaces_one_from_its_context() -> None:
    contexts = word_contexts(CORPUS, min_count=1)
    rng = np.random.default_rng(0)
    text = "a red circle and a blue square"
    exchanged = caption_variant(text, contexts, rng, exchange_share=1.0)
    assert exchanged == "a blue circle and a red square"  # same words, bound the other way
    for _ in range(20):
        replaced = caption_variant(text, contexts, rng, exchange_share=0.0)
        changed = [(a, b) for a, b in zip(text.split(), replaced.split(), strict=True) if a != b]
        assert len(changed) == 1
        (old, new), = changed
        position = text.split().index(old)
        neighbours = ("a", "circle") if position == 1 else ("a", "square")
        assert new in contexts[neighbours]
    assert caption_variant("nothing here swaps", contexts, rng) is None


def test_variants_are_distinct_never_true_and_seeded() -> None:
    texts = CORPUS * 2
    true = [{t, "a green circle and a blue square"} for t in texts]
    made = make_variants(texts, 3, seed=4, true_texts=true, min_count=1)
    assert made == make_variants(texts, 3, seed=4, true_texts=true, min_count=1)
    assert made != make_variants(texts, 3, seed=5, true_texts=true, min_count=1)
    for text, variants, truth in zip(texts, made, true, strict=True):
        assert 1 <= len(variants) <= 3 and len(set(variants)) == len(variants)
        assert not set(variants) & truth and text not in variants


def test_words_the_text_tower_embeds_alike_are_never_swapped() -> None:
    vectors = {"red": [1.0, 0.0], "blue": [0.0, 1.0], "green": [0.99, 0.14]}
    too_close = embedding_too_close(lambda words: torch.tensor([vectors[w] for w in words]),
                                    list(vectors), max_similarity=0.9)
    assert too_close("red", "green") and not too_close("red", "blue")
    assert not too_close("red", "purple")  # outside the vocabulary: never too close
    made = make_variants(CORPUS, 4, seed=0, too_close=too_close, min_count=1)
    for text, variants in zip(CORPUS, made, strict=True):
        for variant in variants:
            pairs = {(a, b) for a, b in zip(text.split(), variant.split(), strict=True) if a != b}
            assert pairs and not any(too_close(a, b) for a, b in pairs), (text, variant)


def _variants_of(bank, rows: list[int], seed: int = 0) -> CaptionVariants:
    """Random encoded variants made from the captions `rows` of a toy bank."""
    gen = torch.Generator().manual_seed(seed)
    n, (length, width) = len(rows), bank.text_tokens.shape[1:]
    words = torch.randn(n, length, bank.text_words.table.shape[1], generator=gen)
    return CaptionVariants([f"variant {i}" for i in range(n)],
                           [bank.caption_ids[r] for r in rows],
                           torch.randn(n, bank.text_eot.shape[1], generator=gen).half(),
                           torch.randn(n, length, width, generator=gen).half(),
                           torch.ones(n, length, dtype=torch.bool),
                           CaptionWords.from_dense(words))


def test_a_bank_with_variants_reads_both_by_row() -> None:
    bank = toy_bank(num_videos=6)
    variants = _variants_of(bank, [0, 0, 3])
    source = WithCaptionVariants(bank, variants)
    own = bank.num_captions
    assert source.num_captions == own + 3 and source.num_videos == bank.num_videos
    assert source.caption_video[own:].tolist() == bank.caption_video[[0, 0, 3]].tolist()
    rows = torch.tensor([own + 2, 1, own, 5])
    got = source.text_batch(rows)
    want_bank, want_variant = bank.text_batch(torch.tensor([1, 5])), variants.text_batch(
        torch.tensor([2, 0]))
    for name in got:
        torch.testing.assert_close(got[name][[1, 3]], want_bank[name])
        torch.testing.assert_close(got[name][[0, 2]], want_variant[name])
    assert variants.rows_for(["c0", "c3", "c1"], 2).tolist() == [[0, 1], [2, -1], [-1, -1]]
    stray = CaptionVariants(["x"], ["not-a-caption"], variants.text_eot[:1],
                            variants.text_tokens[:1], variants.text_mask[:1],
                            variants.text_words[torch.tensor([0])])
    with pytest.raises(ValueError, match="not-a-caption"):
        WithCaptionVariants(bank, stray)


def test_variants_take_the_last_places_of_the_video_to_text_list() -> None:
    bank = toy_bank(num_videos=12)
    sim = torch.randn(bank.num_captions, bank.num_videos, generator=torch.Generator())
    lists = lists_from_similarity(sim, sim, 5)
    variants = _variants_of(bank, [0, 0, 2])
    source = WithCaptionVariants(bank, variants)
    found = variants.rows_for(bank.caption_ids, 2)
    variant_rows = torch.where(found >= 0, found + bank.num_captions, found)
    rows = torch.tensor([0, 1, 2])
    plan = plan_listwise(bank, lists, rows, 1.0, torch.Generator().manual_seed(0),
                         variant_rows=variant_rows)
    own = bank.num_captions
    assert plan.captions[:, 0].tolist() == rows.tolist()
    assert plan.captions[0, -2:].tolist() == [own, own + 1]
    assert plan.captions[2, -2].item() == own + 2 and plan.captions[2, -1].item() < own
    assert (plan.captions[1] < own).all()
    assert plan.caption_variant.tolist() == [[False] * 3 + [True] * 2, [False] * 5,
                                             [False] * 3 + [True, False]]
    model = make_model(hidden=32)
    model.fit_input_stats(bank)
    inputs = read_pairs(source, *plan.pairs())
    with torch.no_grad():
        _, stats = listwise_loss(model, plan, inputs, torch.device("cpu"), "fp32")
        v2t_rows, v2t_videos = plan.captions, bank.caption_video[rows]
        logits = model(**source.text_batch(v2t_rows.reshape(-1)),
                       **bank.video_batch(v2t_videos.repeat_interleave(5))).view(3, 5)
    beats = (logits[:, :1] > logits)[plan.caption_variant].float().mean()
    torch.testing.assert_close(stats[-1], beats, atol=1e-6, rtol=0)


def test_training_with_variants_reports_how_often_the_caption_wins() -> None:
    bank = toy_bank(num_videos=12)
    sim = torch.randn(bank.num_captions, bank.num_videos, generator=torch.Generator())
    lists = lists_from_similarity(sim, sim, 4)
    variants = _variants_of(bank, list(range(bank.num_captions)))
    cfg = TrainConfig(epochs=1, list_batch_size=4, list_size=4, caption_variants=1)
    history = train_reranker(make_model(hidden=32), bank, None, cfg, lists=lists,
                             progress=False, caption_variants=variants)
    assert 0 < history[-1]["pos_beats_caption_variants"] <= 1
    off = train_reranker(make_model(hidden=32), bank, None, cfg.model_copy(
        update={"caption_variants": 0}), lists=lists, progress=False, caption_variants=variants)
    assert off[-1]["pos_beats_caption_variants"] == 0


def test_encoded_variants_are_the_tokens_the_index_would_store(tiny_encoder) -> None:
    variants = [["a red circle on the left", "a blue circle on the left"], [],
                ["a green square"]]
    length = tiny_encoder.context_length
    encoded = encode_variants(tiny_encoder, variants, ["c0", "c1", "c2"], length,
                              with_words=True)
    assert encoded.source_ids == ["c0", "c0", "c2"] and len(encoded) == 3
    eot, tokens, lengths = tiny_encoder.encode_captions([t for v in variants for t in v])
    torch.testing.assert_close(encoded.text_eot, eot.half())
    torch.testing.assert_close(encoded.text_tokens, tokens.half())
    assert encoded.text_mask.sum(1).tolist() == lengths.tolist()
    assert encoded.text_words.shape == (3, length, tiny_encoder.embed_dim)
    none = encode_variants(tiny_encoder, [[]], ["c0"], length, with_words=True)
    assert len(none) == 0 and none.text_words.shape == (0, length, tiny_encoder.embed_dim)


def test_variants_of_held_out_validation_captions_never_train() -> None:
    """Variants are made from the whole train split; with validation videos held out of it,
    training keeps those of its own captions only (a toy run, as with no validation split)."""
    from crosstvr_core import pipeline
    from crosstvr_core.config import CrossTVRConfig

    bank = toy_bank(num_videos=16)
    variants = _variants_of(bank, list(range(bank.num_captions)))
    cfg = CrossTVRConfig.model_validate({"train": {
        "val_fraction": 0.25, "epochs": 1, "list_batch_size": 4, "list_size": 4,
        "caption_variants": 1, "loss": "listwise"}})
    held = pipeline.reranker_split(cfg, bank)
    kept = variants.restricted_to(held.train.caption_ids)
    assert kept.source_ids == held.train.caption_ids
    assert not set(kept.source_ids) & set(held.val.caption_ids)
    torch.testing.assert_close(kept.text_eot, variants.text_eot[
        [bank.caption_ids.index(c) for c in held.train.caption_ids]])
    assert variants.restricted_to(bank.caption_ids) is variants
    sim = torch.randn(bank.num_captions, bank.num_videos)
    lists = lists_from_similarity(sim[held.train_captions][:, held.train_videos],
                                  sim[held.train_captions][:, held.train_videos], 4)
    history = pipeline.train_stage2(cfg, make_model(hidden=32), bank, sim, lists, held,
                                    progress=False, variants=variants)
    assert len(history) == 1 and 0 < history[0]["pos_beats_caption_variants"] <= 1
