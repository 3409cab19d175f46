"""Fast checks of the stage-2 re-ranker module, its token selector and negative samplers."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from bank_fixtures import EMBED, FRAMES, PATCHES, make_model, random_bank

from crosstvr_core.models.reranker import CrossTVRReranker
from crosstvr_core.models.token_selection import PatchTokenSelector, hard_top_k
from crosstvr_core.token_bank import TokenBank
from crosstvr_core.training.negatives import (
    halves_swapped_frame_order,
    play_backwards,
    random_negative_texts,
    random_negative_videos,
    sample_hard_negative_texts,
    sample_hard_negative_videos,
    scores_from_candidates,
    time_reversed_frame_order,
)

pytestmark = pytest.mark.usefixtures("one_thread")


ATTENTIONS = ["decoupled", "spatial_only", "temporal_only", "joint"]
# every attention variant with the default form, plus the paper's form and the ablations
VARIANTS = [{"attention": a} for a in ATTENTIONS] + [
    {"cross_attention_from": "queries_and_text"},
    {"attention": "joint", "cross_attention_from": "queries_and_text"},
    {"share_parameters": False},
    {"num_selected_patches": "all"},
    {"grounding_heads": 2},
]


def pair_inputs(bank: TokenBank, text_rows: list[int], video_rows: list[int]) -> dict:
    return {
        **bank.text_batch(torch.tensor(text_rows)),
        **bank.video_batch(torch.tensor(video_rows)),
    }


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
@pytest.mark.parametrize("layers", [1, 2])
def test_output_shape_and_finite(layers: int, variant: dict) -> None:
    bank = random_bank()
    model = make_model(layers=layers, **variant)
    model.fit_input_stats(bank)
    logits = model(**pair_inputs(bank, [0, 1, 2, 3], [0, 1, 2, 5]))
    assert logits.shape == (4,)
    assert torch.isfinite(logits).all()
    model.train()
    logits = model(**pair_inputs(bank, [0, 1, 2, 3], [0, 1, 2, 5]))
    logits.sum().backward()  # every trainable path is connected
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
@pytest.mark.parametrize("layers", [1, 2])
def test_padding_values_do_not_matter(layers: int, variant: dict) -> None:
    bank = random_bank()
    model = make_model(layers=layers, **variant)
    inputs = pair_inputs(bank, [0, 1, 2, 3], [0, 1, 2, 4])
    assert (~inputs["text_mask"]).any() and (~inputs["frame_mask"]).any()
    reference = model(**inputs)

    changed = {name: value.clone() for name, value in inputs.items()}
    changed["text_tokens"][~changed["text_mask"]] = 1e4
    changed["video_cls"][~changed["frame_mask"]] = -1e4
    changed["video_patches"][~changed["frame_mask"]] = 1e4
    torch.testing.assert_close(model(**changed), reference, rtol=0, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_all_frames_masked_is_finite_and_ignores_padding(variant: dict) -> None:
    bank = random_bank()
    model = make_model(layers=2, **variant)
    inputs = pair_inputs(bank, [0, 1], [0, 1])
    inputs["frame_mask"][0] = False
    reference = model(**inputs)
    assert torch.isfinite(reference).all()
    inputs["video_patches"][0] = 1e4
    inputs["video_cls"][0] = -1e4
    torch.testing.assert_close(model(**inputs), reference, rtol=0, atol=1e-5)
    model.train()  # dropout-free, but the training path (perturbed top-M) must agree
    assert torch.isfinite(model(**inputs)).all()


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_frame_order_matters_except_spatial_only(attention: str) -> None:
    bank = random_bank()
    model = make_model(attention=attention)
    with torch.no_grad():  # untrained 0.02-scale embeddings make the effect tiny, not absent
        model.temporal_pos.normal_()
    inputs = pair_inputs(bank, [0, 2], [1, 3])  # videos with all frames real
    assert inputs["frame_mask"].all()
    reversed_inputs = dict(inputs)
    reversed_inputs["video_cls"] = inputs["video_cls"].flip(1)
    reversed_inputs["video_patches"] = inputs["video_patches"].flip(1)
    change = (model(**inputs) - model(**reversed_inputs)).abs().min()
    if attention == "spatial_only":  # a mean over frames is blind to order by construction
        assert change < 1e-5
    else:
        assert change > 1e-5


def test_parameter_sharing_and_variants_build_what_they_use() -> None:
    shared, separate = make_model(layers=2), make_model(layers=2, share_parameters=False)
    assert shared.video_blocks is shared.frame_blocks
    assert separate.video_blocks is not separate.frame_blocks
    block_params = sum(p.numel() for p in separate.frame_blocks.parameters())
    count = sum(p.numel() for p in separate.parameters()) - sum(
        p.numel() for p in shared.parameters())
    assert count == block_params
    # shared weights are saved under both names and load back into a fresh model
    restored = make_model(layers=2, seed=5)
    restored.load_state_dict(shared.state_dict())
    bank = random_bank()
    inputs = pair_inputs(bank, [0, 1], [0, 1])
    torch.testing.assert_close(restored(**inputs), shared(**inputs))
    assert make_model(attention="spatial_only").video_blocks is None
    temporal = make_model(attention="temporal_only")
    assert temporal.frame_blocks is None and temporal.selector is None
    assert make_model().tokens_per_frame == 3 and make_model(
        num_selected_patches="all").tokens_per_frame == 1 + PATCHES


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="keeps 8 patches per frame"):
        make_model(num_selected_patches=8)
    with pytest.raises(ValueError, match="not divisible"):
        make_model(hidden=15)
    bank = random_bank()
    inputs = pair_inputs(bank, [0, 1], [0, 1])
    with pytest.raises(ValueError, match="token widths"):
        make_model()(**{**inputs, "text_tokens": inputs["text_tokens"][..., :-1]})
    with pytest.raises(ValueError, match="patches"):
        make_model()(**{**inputs, "video_patches": inputs["video_patches"][:, :, :-1]})


def test_hard_top_k_keeps_the_best_patches_in_patch_order() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.3, 0.8, 0.0]])
    indicators = hard_top_k(scores, 2)  # [1, 2, 5]
    assert indicators.argmax(-1).tolist() == [[1, 3]]
    assert torch.equal(indicators.sum(-1), torch.ones(1, 2))


def test_perturbed_top_k_learns_which_patches_to_keep() -> None:
    """Gradient through the soft (perturbed) selection alone teaches the scorer to pick
    the patches that carry the signal: the hard top-M then selects exactly them."""
    torch.manual_seed(0)
    hidden, patches, kept = 8, 6, 2
    selector = PatchTokenSelector(hidden, kept, num_samples=50, sigma=0.05, scorer_hidden=8)
    signal = torch.zeros(hidden)
    signal[0] = 1.0
    optimizer = torch.optim.Adam(selector.parameters(), lr=1e-2)
    for _ in range(150):
        tokens = torch.randn(32, patches, hidden)
        targets = torch.stack([torch.randperm(patches)[:kept] for _ in range(32)])  # [N, M]
        tokens[torch.arange(32)[:, None], targets] += 5.0 * signal
        selected = selector.train()(tokens)  # [N, M, H]
        loss = -selected[..., 0].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    tokens = torch.randn(64, patches, hidden)
    targets = torch.stack([torch.randperm(patches)[:kept] for _ in range(64)]).sort(-1).values
    tokens[torch.arange(64)[:, None], targets] += 5.0 * signal
    chosen = hard_top_k(selector.eval().scorer(tokens), kept).argmax(-1)  # [N, M]
    assert (chosen == targets).float().mean() > 0.95  # chance: 1/3
    # eval selection is the hard top-M of the scores: deterministic, and real tokens
    out = selector(tokens)
    torch.testing.assert_close(out, tokens[torch.arange(64)[:, None], chosen])


def test_selector_keeps_all_patches_when_asked() -> None:
    tokens = torch.randn(5, 4, 8)
    selector = PatchTokenSelector(8, None, num_samples=10, sigma=0.05, scorer_hidden=8)
    assert selector.scorer is None and selector.output_count(4) == 4
    assert torch.equal(selector.train()(tokens), tokens)


def test_fit_input_stats_standardises_valid_positions() -> None:
    bank = random_bank(num_videos=40, offset=5.0)
    model = make_model()
    assert not model.has_input_stats
    model.fit_input_stats(bank)
    assert model.has_input_stats

    text = bank.text_tokens.float()[bank.text_mask]  # [n, Wt]
    cls = bank.video_cls.float()[bank.frame_mask]  # [n, D]
    patches = bank.video_patches.float()[bank.frame_mask].flatten(0, 1)  # [n*P, Wv]
    for values, kind in ((text, "text"), (cls, "cls"), (patches, "patch")):
        standard = (values - getattr(model, f"{kind}_mean")) / getattr(model, f"{kind}_std")
        assert standard.mean(0).abs().max() < 1e-4, kind
        assert (standard.std(0, unbiased=False) - 1).abs().max() < 1e-3, kind

    restored = make_model(seed=1)
    restored.load_state_dict(model.state_dict())
    assert restored.has_input_stats
    torch.testing.assert_close(restored.patch_std, model.patch_std)


def test_hard_negative_videos_never_positive_and_seeded() -> None:
    sim = torch.randn(32, 5)
    positive = torch.randint(0, 5, (32,))
    sim[torch.arange(32), positive] = 10.0  # the positive is the most similar
    draws = [
        sample_hard_negative_videos(sim, positive, 0.05, torch.Generator().manual_seed(7))
        for _ in range(2)
    ]
    assert torch.equal(draws[0], draws[1])
    assert (draws[0] != positive).all()
    # softmax at a low temperature picks the most similar non-positive video
    hardest = sim.scatter(1, positive[:, None], float("-inf")).argmax(1)
    sharp = sample_hard_negative_videos(sim, positive, 1e-4, torch.Generator().manual_seed(0))
    assert torch.equal(sharp, hardest)


def test_hard_negative_texts_never_own_caption_and_seeded() -> None:
    caption_video = torch.tensor([0, 0, 1, 1, 1, 2, 3])
    batch_videos = torch.tensor([0, 1, 2, 3, 1, 0])
    sim_cols = torch.randn(6, 7)
    sim_cols[caption_video[None, :] == batch_videos[:, None]] = 10.0
    draws = [
        sample_hard_negative_texts(
            sim_cols, caption_video, batch_videos, 0.05, torch.Generator().manual_seed(3)
        )
        for _ in range(2)
    ]
    assert torch.equal(draws[0], draws[1])
    assert (caption_video[draws[0]] != batch_videos).all()


def test_degenerate_rows() -> None:
    gen = torch.Generator().manual_seed(0)
    # two videos: the only candidate is the other one, whatever the similarities
    positive = torch.tensor([0, 1, 1])
    sim = torch.tensor([[1.0, float("-inf")], [float("nan"), 0.0], [0.0, 0.0]])
    assert torch.equal(sample_hard_negative_videos(sim, positive, 0.05, gen), 1 - positive)
    assert torch.equal(random_negative_videos(positive, 2, gen), 1 - positive)
    # one caption of another video left
    caption_video = torch.tensor([0, 0, 0, 1])
    texts = sample_hard_negative_texts(
        torch.zeros(2, 4), caption_video, torch.tensor([0, 1]), 0.05, gen
    )
    assert texts[0] == 3 and caption_video[texts[1]] == 0
    with pytest.raises(ValueError, match="no candidate"):
        sample_hard_negative_texts(torch.zeros(1, 2), torch.tensor([0, 0]), torch.tensor([0]), 1.0)


def test_random_negatives_never_positive_and_seeded() -> None:
    positive = torch.randint(0, 4, (200,))
    first = random_negative_videos(positive, 4, torch.Generator().manual_seed(1))
    second = random_negative_videos(positive, 4, torch.Generator().manual_seed(1))
    assert torch.equal(first, second) and (first != positive).all()
    assert set(first.tolist()) == {0, 1, 2, 3}
    caption_video = torch.arange(4).repeat_interleave(3)
    texts = random_negative_texts(caption_video, positive, torch.Generator().manual_seed(1))
    assert (caption_video[texts] != positive).all()


def test_scores_from_candidates_keeps_the_stored_top_k_only() -> None:
    scores = scores_from_candidates(
        ["c0", "c1"], [["v1", "v2", "vX"], ["v0"]], [[0.9, 0.5, 0.4], [0.7]],
        row_ids=["c1", "c0"], column_ids=["v0", "v1", "v2"],
    )
    inf = float("-inf")
    torch.testing.assert_close(scores, torch.tensor([[0.7, inf, inf], [inf, 0.9, 0.5]]))
    # sampling from it never leaves the top K (minus the positive)
    draws = sample_hard_negative_videos(scores[[1]].expand(50, -1), torch.ones(50, dtype=torch.long),
                                        1.0, torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {2}
    with pytest.raises(ValueError, match="no stored top-K"):
        scores_from_candidates(["c0"], [["v0"]], [[1.0]], ["c0", "c9"], ["v0"])


def test_time_reversed_frame_order_reverses_real_frames_only() -> None:
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 1, 1, 1], [1, 0, 1, 1], [1, 0, 0, 0]],
                        dtype=torch.bool)
    order = time_reversed_frame_order(mask)
    assert order.tolist() == [[3, 2, 1, 0], [1, 0, 2, 3], [0, 3, 2, 1], [3, 1, 2, 0],
                              [0, 1, 2, 3]]
    frames = torch.arange(20.0).view(5, 4)
    backwards = frames.gather(1, order)
    # the real frames hold the same values in reversed order; padding stays where it was
    for row in range(5):
        real = mask[row]
        assert backwards[row][real].tolist() == frames[row][real].flip(0).tolist()
        assert backwards[row][~real].tolist() == frames[row][~real].tolist()


def test_halves_swapped_frame_order_plays_the_second_half_first() -> None:
    mask = torch.tensor([[1] * 8, [1, 1, 1, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1, 1, 1],
                         [1, 1, 1, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    order = halves_swapped_frame_order(mask)
    assert order.tolist()[:2] == [[4, 5, 6, 7, 0, 1, 2, 3], [3, 4, 5, 0, 1, 2, 6, 7]]
    frames = torch.arange(40.0).view(5, 8)
    swapped = frames.gather(1, order)
    for row in range(5):  # real frames rotated by half their count, padding in place
        real, count = mask[row], int(mask[row].sum())
        assert swapped[row][real].tolist() == frames[row][real].roll(-(count // 2)).tolist()
        assert swapped[row][~real].tolist() == frames[row][~real].tolist()
    assert order[4].tolist() == list(range(8))  # one real frame: nothing to swap


# --------------------------------------------------------------------------- attention maps


def cross_attention_modules(model: CrossTVRReranker) -> list:
    return [block.cross_attn for blocks in (model.frame_blocks, model.video_blocks)
            if blocks is not None for block in blocks]


def test_recorded_weights_are_the_ones_the_kernel_applies() -> None:
    """weights @ values (then the output projection) gives the module's own output."""
    from crosstvr_core.models.reranker import Attention

    torch.manual_seed(0)
    attention = Attention(hidden=8, heads=2, dropout=0.0).eval()
    x, memory = torch.randn(3, 4, 8), torch.randn(3, 5, 8)
    padding = torch.tensor([[False] * 5, [False, False, False, True, True], [False] + [True] * 4])
    keys, values = attention.keys_values(memory)
    attention.keep_weights = []
    out = attention(x, keys, values, padding)
    (weights,) = attention.keep_weights  # [N, heads, T, S]
    assert torch.all(weights.masked_select(padding[:, None, None, :]) == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 2, 4))
    mixed = (weights @ values).transpose(1, 2).reshape(3, 4, 8)
    torch.testing.assert_close(attention.out(mixed), out)


def test_block_attention_is_one_attention_per_frame() -> None:
    """blocks=F (the frame level: a pair's frames end to end) gives, output and recorded
    weights, exactly what one separate attention per frame gives."""
    from crosstvr_core.models.reranker import Attention

    torch.manual_seed(0)
    attention = Attention(hidden=8, heads=2, dropout=0.0).eval()
    pairs, frames, rows, tokens = 3, 4, 2, 5
    x, memory = torch.randn(pairs, frames * rows, 8), torch.randn(pairs, frames * tokens, 8)
    keys, values = attention.keys_values(memory)
    attention.keep_weights = []
    grouped = attention(x, keys, values, None, blocks=frames)
    per_frame_keys, per_frame_values = attention.keys_values(
        memory.reshape(pairs * frames, tokens, 8))
    separate = attention(x.reshape(pairs * frames, rows, 8), per_frame_keys, per_frame_values,
                         None)
    grouped_weights, separate_weights = attention.keep_weights
    torch.testing.assert_close(grouped.reshape(pairs * frames, rows, 8), separate)
    torch.testing.assert_close(grouped_weights, separate_weights)
    assert grouped_weights.shape == (pairs * frames, 2, rows, tokens)


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
@pytest.mark.parametrize("layers", [1, 2])
def test_attention_maps_shapes_sums_and_padding(layers: int, variant: dict) -> None:
    bank = random_bank()
    model = make_model(layers=layers, **variant)
    model.fit_input_stats(bank)
    inputs = pair_inputs(bank, [0, 1, 2, 3], [0, 1, 2, 4])
    inputs["frame_mask"][3] = False  # a video without a real frame
    real = inputs["frame_mask"]
    assert (~real[0]).any() and real[1].all()
    frame_weights, patch_heat = model.attention_maps(**inputs)
    assert frame_weights.shape == (4, FRAMES) and patch_heat.shape == (4, FRAMES, PATCHES)
    assert torch.isfinite(frame_weights).all() and torch.isfinite(patch_heat).all()
    assert (frame_weights >= 0).all() and (patch_heat >= 0).all()
    torch.testing.assert_close(frame_weights[:3].sum(1), torch.ones(3))
    assert torch.all(frame_weights[~real] == 0) and torch.all(patch_heat[~real] == 0)
    heat_per_frame = patch_heat[real].sum(-1)  # the frame's attention minus its CLS share
    attention = variant.get("attention", "decoupled")
    if attention == "temporal_only":  # no patch tokens are read at all
        assert torch.all(patch_heat == 0)
    else:
        assert (heat_per_frame > 0).all() and (heat_per_frame < 1).all()
        kept = PATCHES if variant.get("num_selected_patches") == "all" else 2
        # exactly the kept patches of each real frame are warm
        assert ((patch_heat[real] > 0).sum(-1) == kept).all()
    if attention == "spatial_only":  # a plain mean over frames
        torch.testing.assert_close(frame_weights[:3], real[:3] / real[:3].sum(1, keepdim=True))


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_recording_leaves_outputs_bit_identical(variant: dict) -> None:
    bank = random_bank()
    model = make_model(layers=2, **variant)
    model.fit_input_stats(bank)
    inputs = pair_inputs(bank, [0, 1, 2], [0, 1, 4])
    reference = model(**inputs)
    modules = cross_attention_modules(model)
    for module in modules:
        module.keep_weights = []
    recorded = model(**inputs)
    assert torch.equal(recorded, reference)
    assert sum(len(m.keep_weights) for m in {id(m): m for m in modules}.values()) > 0
    for module in modules:
        module.keep_weights = None
    model.train()
    model.attention_maps(**inputs)
    # attention_maps restores what it changed: training mode, no recording
    assert model.training and all(m.keep_weights is None for m in modules)
    assert torch.equal(model.eval()(**inputs), reference)


def test_patch_heat_lands_on_the_selected_grid_positions() -> None:
    bank = random_bank()
    model = make_model()  # keeps 2 of 6 patches per frame
    inputs = pair_inputs(bank, [0, 1], [1, 3])
    _, patch_heat = model.attention_maps(**inputs)
    patches = (inputs["video_patches"] - model.patch_mean) / model.patch_std
    chosen = hard_top_k(model.selector.scorer(patches.flatten(0, 1)), 2).argmax(-1)
    warm = (patch_heat > 0).flatten(0, 1).nonzero()  # [(frame, patch)]
    assert warm[:, 1].view(-1, 2).tolist() == chosen.tolist()


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_identical_frames_get_identical_attention(attention: str) -> None:
    """Frame 2 a copy of frame 1, and nothing that tells them apart (no temporal blocks, no
    temporal positions): both frames get the same weight and the same heat."""
    bank = random_bank()
    model = make_model(attention=attention, temporal_layers=0, match_term=False)
    with torch.no_grad():
        model.temporal_pos.zero_()
    inputs = pair_inputs(bank, [0, 2], [1, 3])
    for name in ("video_cls", "video_patches"):
        inputs[name][:, 2] = inputs[name][:, 1]
    frame_weights, patch_heat = model.attention_maps(**inputs)
    torch.testing.assert_close(frame_weights[:, 2], frame_weights[:, 1])
    torch.testing.assert_close(patch_heat[:, 2], patch_heat[:, 1])
    if attention == "spatial_only":  # uniform over frames by construction
        assert not torch.allclose(patch_heat[:, 0], patch_heat[:, 1])
    else:  # not trivially equal
        assert not torch.allclose(frame_weights[:, 0], frame_weights[:, 1])
    # a frame switched off gets no weight, and the others share all of it
    inputs["frame_mask"][:, 0] = False
    frame_weights, patch_heat = model.attention_maps(**inputs)
    assert torch.all(frame_weights[:, 0] == 0) and torch.all(patch_heat[:, 0] == 0)
    torch.testing.assert_close(frame_weights.sum(1), torch.ones(2))


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_shared_videos_and_captions_score_as_their_own_pairs(variant: dict) -> None:
    """match over distinct videos and captions with per-pair indices (the training and
    scoring path, where keys are projected once per video) gives each pair's own logit."""
    bank = random_bank()
    model = make_model(layers=2, **variant)
    model.fit_input_stats(bank)
    text_rows, video_rows = [0, 0, 3, 5, 3, 1], [2, 4, 2, 2, 0, 4]
    reference = model(**pair_inputs(bank, text_rows, video_rows))
    captions, text_index = torch.unique(torch.tensor(text_rows), return_inverse=True)
    videos, video_index = torch.unique(torch.tensor(video_rows), return_inverse=True)
    text, video = bank.text_batch(captions), bank.video_batch(videos)
    visual = model.encode_video(**video)
    shared = model.match(text["text_tokens"], text["text_mask"], visual, video["frame_mask"],
                         text_index=text_index, video_index=video_index,
                         text_eot=text["text_eot"], video_cls=video["video_cls"],
                         text_words=text["text_words"])
    torch.testing.assert_close(shared, reference, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="do not pair up"):
        model.match(text["text_tokens"], text["text_mask"], visual, video["frame_mask"],
                    text_index=text_index, video_index=video_index[:-1])


def test_frozen_similarity_term_is_scaled_meanp_over_real_frames() -> None:
    """The term adds exp(scale) x cos(caption embedding, mean of the real frames' embeddings):
    the frozen encoder's meanP score; padded frames do not count, and without the caption
    embeddings the re-ranker says what is missing."""
    bank = random_bank()
    bank.frame_mask[1, -2:] = False
    model = make_model(frozen_similarity_term=True)
    model.fit_input_stats(bank)
    text_rows, video_rows = [0, 1, 2, 3], [1, 1, 4, 0]
    inputs = pair_inputs(bank, text_rows, video_rows)
    with_term = model(**inputs)
    scale = model.frozen_scale
    model.frozen_scale = None
    without_term = model(**inputs)
    model.frozen_scale = scale
    expected = []
    for t, v in zip(text_rows, video_rows, strict=True):
        frames = bank.video_cls[v][bank.frame_mask[v]].float().mean(0)
        expected.append(torch.nn.functional.cosine_similarity(bank.text_eot[t].float(), frames,
                                                              dim=0))
    torch.testing.assert_close(with_term - without_term, scale.exp() * torch.stack(expected),
                               rtol=1e-4, atol=1e-4)
    inputs.pop("text_eot")
    with pytest.raises(ValueError, match="text_eot"):
        model(**inputs)
    assert make_model(frozen_similarity_term=False).frozen_scale is None


def assert_batch_free(model: CrossTVRReranker, bank: TokenBank) -> None:
    """Captions of different lengths score the same in one batch (padded to the longest) as
    each alone (no padding)."""
    rows = list(range(bank.num_captions))
    assert len(set(bank.text_mask.sum(1).tolist())) > 1
    videos = bank.caption_video.tolist()
    together = model(**pair_inputs(bank, rows, videos))
    alone = torch.cat([model(**pair_inputs(bank, [r], [v])) for r, v in zip(rows, videos,
                                                                             strict=True)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


def test_recurrent_text_context_ignores_padding_length_and_reads_word_order() -> None:
    """With reranker.text_recurrent, a caption's logit does not depend on how much padding its
    batch adds (the GRU runs over the real tokens only), and swapping two of its words
    changes it (the GRU reads order)."""
    bank = random_bank()
    model = make_model(text_recurrent=True)
    model.fit_input_stats(bank)
    inputs = pair_inputs(bank, [0, 1, 2], [0, 1, 2])
    assert_batch_free(model, bank)
    # without text self-attention (no positions) only the GRU can see word order
    swapped = dict(inputs)
    swapped["text_tokens"] = inputs["text_tokens"].clone()
    swapped["text_tokens"][:, [1, 2]] = inputs["text_tokens"][:, [2, 1]]
    for recurrent in (False, True):
        # (the word-timing term pairs each token with its own frozen word: off here)
        bag = make_model(text_recurrent=recurrent, text_layers=0, word_timing_term=False)
        bag.fit_input_stats(bank)
        same = torch.allclose(bag(**swapped), bag(**inputs), atol=1e-5)
        assert same != recurrent
    model.train()
    model(**inputs).sum().backward()
    assert model.text_recurrent.weight_ih_l0.grad.abs().sum() > 0


def test_mention_order_starts_without_effect_and_ignores_padding_length() -> None:
    """reranker.grounding_mention_order adds a token's relative place in its caption to the
    grounding's expected time with a learned weight: at its initial 0 the logits are the
    plain model's; once learned, a caption's logit still does not depend on its batch's
    padding (the place is counted over real tokens)."""
    bank = random_bank()
    plain = make_model(grounding_heads=2)
    plain.fit_input_stats(bank)
    model = make_model(grounding_heads=2, grounding_mention_order=True)
    model.fit_input_stats(bank)
    inputs = pair_inputs(bank, [0, 1, 2], [0, 1, 2])
    torch.testing.assert_close(model(**inputs), plain(**inputs))
    with torch.no_grad():
        model.ground_mention.fill_(3.0)
    moved = model(**inputs)
    assert not torch.allclose(moved, plain(**inputs))
    assert_batch_free(model, bank)


def test_time_cursor_starts_without_effect_and_moves_later_tokens() -> None:
    """reranker.grounding_cursor: each real token moves the expected time of the tokens
    after it by a learned amount. At its initial 0 the logits are the plain model's; with
    every token moving it by 1 and nothing else read, the expected time of a caption's l-th
    real token is tanh(l); padding moves nothing, so a caption scores the same in any batch."""
    bank = random_bank()
    plain = make_model(grounding_heads=2)
    plain.fit_input_stats(bank)
    model = make_model(grounding_heads=2, grounding_cursor=True)
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == ["ground_cursor.bias", "ground_cursor.weight"] and not unexpected
    inputs = pair_inputs(bank, [0, 1, 2], [0, 1, 2])
    torch.testing.assert_close(model(**inputs), plain(**inputs))
    with torch.no_grad():
        model.ground_when.weight.zero_()
        model.ground_when.bias.zero_()
        model.ground_cursor.bias.fill_(1.0)
        text = model.encode_text(inputs["text_tokens"], inputs["text_mask"])
        visual = model.encode_video(inputs["video_cls"], inputs["video_patches"],
                                    inputs["frame_mask"])
        rows = torch.arange(3)
        expected, _, _ = model.grounding_times(text, inputs["text_mask"].bool(), rows, visual,
                                               inputs["frame_mask"].bool(), rows)
    mask = inputs["text_mask"].bool()
    for caption in range(3):
        real = mask[caption].nonzero().squeeze(1)
        want = torch.tanh(torch.arange(len(real), dtype=torch.float32))
        torch.testing.assert_close(expected[caption, real, 0], want)
        torch.testing.assert_close(expected[caption, real, 1], want)
    assert not torch.allclose(model(**inputs), plain(**inputs))
    assert_batch_free(model, bank)
    model.train()
    model(**inputs).sum().backward()
    assert model.ground_cursor.weight.grad.abs().sum() > 0


def _zero_started(option: str, **plain_kwargs):
    """(bank, plain model, model with `option` on and the plain weights, pair inputs): the
    option's module is the only thing the plain model lacks, and at its zero start the two
    give the same logits."""
    bank = random_bank()
    plain = make_model(**plain_kwargs)
    plain.fit_input_stats(bank)
    model = make_model(**plain_kwargs, **{option: True})
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == [f"{option}.bias", f"{option}.weight"]
    assert not unexpected
    inputs = pair_inputs(bank, [0, 1, 2], [0, 1, 2])
    torch.testing.assert_close(model(**inputs), plain(**inputs))
    return bank, plain, model, inputs


def test_caption_summary_starts_without_effect_and_reads_the_frozen_embedding() -> None:
    """reranker.caption_summary: at its zero init the plain model's logits; then the caption's
    frozen embedding reaches every real token (the logit moves with text_eot alone), padding
    stays zero, and it learns. Without text_eot it says what is missing."""
    bank, _, model, inputs = _zero_started("caption_summary")
    with torch.no_grad():
        model.caption_summary.weight.normal_()
        other = {**inputs, "text_eot": inputs["text_eot"].flip(0)}
        assert not torch.allclose(model(**inputs), model(**other))
        text = model.encode_text(inputs["text_tokens"], inputs["text_mask"], inputs["text_eot"])
    assert text[~inputs["text_mask"].bool()].abs().sum() == 0
    assert_batch_free(model, bank)
    model.train()
    model(**inputs).sum().backward()
    assert model.caption_summary.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="caption_summary needs text_eot"):
        model.encode_text(inputs["text_tokens"], inputs["text_mask"])


def test_word_features_reach_each_token_from_a_zero_start() -> None:
    """reranker.word_features: at its zero init the plain model's logits; then each token's
    own frozen embedding reaches it (the logit moves with text_words alone), padding stays
    zero, and it learns. Without text_words it says what is missing."""
    bank, plain, model, inputs = _zero_started("word_features", word_timing_term=False)
    assert model.reads_word_embeddings and not plain.reads_word_embeddings
    with torch.no_grad():
        model.word_features.weight.normal_()
        other = {**inputs, "text_words": inputs["text_words"].flip(1)}
        assert not torch.allclose(model(**inputs), model(**other))
        text = model.encode_text(inputs["text_tokens"], inputs["text_mask"], None,
                                 inputs["text_words"])
    assert text[~inputs["text_mask"].bool()].abs().sum() == 0
    assert_batch_free(model, bank)
    model.train()
    model(**inputs).sum().backward()
    assert model.word_features.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="word_features needs text_words"):
        model.encode_text(inputs["text_tokens"], inputs["text_mask"])


def test_word_timing_reads_frozen_time_and_flips_when_played_backwards() -> None:
    """reranker.word_timing_term: a token's observed time is where the frames' frozen
    embeddings look most like its own frozen embedding (nothing learned but a sharpness):
    a word shown only in the last frame is observed late, and in the first frame once the
    clip is played backwards, so the term changes sign."""
    bank = random_bank()  # with random word embeddings
    model = make_model(word_timing_term=True)
    model.fit_input_stats(bank)
    inputs = pair_inputs(bank, [0, 1, 2], [0, 1, 2])
    word = F.normalize(inputs["text_words"][0, 1], dim=0)
    cls = inputs["video_cls"].clone()
    cls[0] = -word  # every frame unlike the word ...
    cls[0, 2] = word  # ... but frame 2, the last real frame of clip 0
    inputs["video_cls"] = cls
    rows = torch.arange(3)
    with torch.no_grad():
        text = model.encode_text(inputs["text_tokens"], inputs["text_mask"])
        expected, importance, observed = model.word_times(
            text, inputs["text_mask"].bool(), rows, inputs["text_words"], cls,
            inputs["frame_mask"].bool(), rows)
        backwards = play_backwards(inputs)
        _, _, observed_back = model.word_times(
            text, inputs["text_mask"].bool(), rows, inputs["text_words"],
            backwards["video_cls"], inputs["frame_mask"].bool(), rows)
    assert observed[0, 1] > 0.99 and observed_back[0, 1] < -0.99
    torch.testing.assert_close(observed_back, -observed, atol=1e-5, rtol=0)
    torch.testing.assert_close(importance.sum(dim=1), torch.ones(3))
    term = model._word_timing_logit(expected, importance, observed)
    term_back = model._word_timing_logit(expected, importance, observed_back)
    torch.testing.assert_close(term_back, -term)
    model.train()
    model(**inputs).sum().backward()
    assert model.word_when.weight.grad.abs().sum() > 0
    assert model.word_sharpness.grad is not None


def test_log_term_scales_start_at_the_same_logits_and_learn_multiplicatively() -> None:
    """reranker.log_term_scales: the grounding and word-timing scales are stored as logs, so
    the untrained model gives the plain one's logits, and one AdamW step moves each scale
    by a factor (exp of about the learning rate) instead of by about the learning rate."""
    bank = random_bank()
    inputs = pair_inputs(bank, [0, 1, 2], [0, 1, 2])
    models = {}
    for log in (False, True):
        model = make_model(word_timing_term=True, grounding_term=True, log_term_scales=log)
        model.fit_input_stats(bank)
        models[log] = model
    plain, logged = models[False], models[True]
    assert logged.word_scale.item() == pytest.approx(math.log(2.0))
    assert logged.term_scale(logged.ground_scale).item() == pytest.approx(2.0)
    with torch.no_grad():
        torch.testing.assert_close(logged(**inputs), plain(**inputs))
    moved = {}
    for log, model in models.items():
        model.train()
        optimizer = torch.optim.AdamW([model.word_scale, model.ground_scale], lr=0.1)
        (-model(**inputs).sum()).backward()  # a gradient that wants every term louder
        before = model.term_scale(model.word_scale).item()
        optimizer.step()
        moved[log] = model.term_scale(model.word_scale).item() - before
    assert abs(moved[False]) == pytest.approx(0.1, rel=0.05)  # AdamW's first step: +-lr
    # in log space the same step is a factor exp(+-0.1): 2 x 0.105 up or 2 x 0.095 down
    assert abs(moved[True]) == pytest.approx(0.21, abs=0.02)


def test_centred_word_timing_is_not_drawn_to_a_frame_like_every_word() -> None:
    """reranker.word_timing_centred: every word of a caption shares one strong direction,
    and the first frame shows only that, the last frame only word 1's own part. Plain, the
    shared part draws word 1 to the first frame; centred (the caption's mean unit word
    embedding taken out), word 1 is observed in the last frame."""
    bank = random_bank()
    words = torch.zeros(1, 4, EMBED)
    words[0, :, 0] = 5.0  # the shared part ...
    for token in range(3):
        words[0, token, token + 1] = 1.0  # ... and each real token's own
    text_mask = torch.tensor([[True, True, True, False]])
    frames = torch.zeros(1, FRAMES, EMBED)
    frames[0, :, EMBED - 1] = 1.0  # frames between: neither
    frames[0, 0] = F.one_hot(torch.tensor(0), EMBED).float()
    frames[0, -1] = F.one_hot(torch.tensor(2), EMBED).float()  # word 1's own direction
    frame_mask = torch.ones(1, FRAMES, dtype=torch.bool)
    one = torch.zeros(1, dtype=torch.long)
    observed = {}
    for centred in (False, True):
        model = make_model(word_timing_centred=centred)
        model.fit_input_stats(bank)
        with torch.no_grad():
            model.word_sharpness.fill_(math.log(200.0))
            text = torch.zeros(1, 4, 16)
            _, _, observed[centred] = model.word_times(text, text_mask, one, words, frames,
                                                       frame_mask, one)
    assert observed[False][0, 1] < -0.9  # drawn to the first frame by what all words share
    assert observed[True][0, 1] > 0.9


def test_word_timing_without_word_embeddings_is_refused() -> None:
    bank = dataclasses.replace(random_bank(), text_words=None)
    model = make_model(word_timing_term=True)
    model.fit_input_stats(bank)
    with pytest.raises(ValueError, match="text_words"):
        model(**pair_inputs(bank, [0], [0]))


def test_word_presence_reads_whether_the_clip_shows_a_word_not_when() -> None:
    """reranker.word_presence_term: a token scores by how strongly any frame's frozen
    embedding looks like its own frozen embedding, less its cosine with the mean training
    frame. A clip that shows the word in one frame scores above one that never does; the
    order of the frames does not matter; gradients reach only importance, sharpness, scale."""
    bank = random_bank()
    model = make_model(word_timing_term=False, word_presence_term=True)
    model.fit_input_stats(bank)
    unit = F.normalize(bank.video_cls[bank.frame_mask].float(), dim=-1).mean(dim=0)
    torch.testing.assert_close(model.unit_cls_mean, unit, atol=1e-5, rtol=0)
    inputs = pair_inputs(bank, [0, 0], [0, 1])
    word = F.normalize(inputs["text_words"][0, 1].float(), dim=0)
    with torch.no_grad():  # the caption reads only its token 1
        model.word_presence.weight.zero_()
        model.word_presence.bias.zero_()
    mask = torch.zeros_like(inputs["text_mask"])
    mask[:, 1] = True
    cls = inputs["video_cls"].clone()
    cls[:] = -word  # no frame shows the word ...
    cls[0, 1] = word  # ... but frame 1 of clip 0
    rows = torch.arange(2)
    with torch.no_grad():
        text = model.encode_text(inputs["text_tokens"], inputs["text_mask"])
        term = model.word_presence_logit(text, mask.bool(), rows, inputs["text_words"], cls,
                                         inputs["frame_mask"].bool(), rows)
        term_shuffled = model.word_presence_logit(  # frames (and padding) in reverse
            text, mask.bool(), rows, inputs["text_words"], cls.flip(1),
            inputs["frame_mask"].bool().flip(1), rows)
    assert term[0] > term[1] + 10.0  # cosine 1 against -1, at scale 20
    torch.testing.assert_close(term_shuffled, term, atol=1e-4, rtol=0)
    model.train()
    model(**pair_inputs(bank, [0, 1], [0, 1])).sum().backward()
    assert model.word_presence.weight.grad.abs().sum() > 0
    assert model.presence_sharpness.grad is not None and model.presence_scale.grad is not None


def test_word_presence_without_word_embeddings_is_refused() -> None:
    bank = dataclasses.replace(random_bank(), text_words=None)
    model = make_model(word_timing_term=False, word_presence_term=True)
    model.fit_input_stats(bank)
    assert model.reads_word_embeddings
    with pytest.raises(ValueError, match="word_presence_term needs text_words"):
        model(**pair_inputs(bank, [0], [0]))


@pytest.mark.parametrize("match_video", ["temporal", "frames"])
def test_frame_pooled_match_term_reads_order_only_through_motion(match_video: str) -> None:
    """reranker.match_video=frames: the match term pools each frame's own summary (no
    attention over time), so without keypoints (whose motion it reads) a clip with its
    frames reordered gets the same term; the default (after the temporal blocks) tells them apart. Either way
    it reads which video it is."""
    bank = random_bank()
    model = make_model(match_video=match_video, keypoints=0).eval()
    model.fit_input_stats(bank)
    inputs = pair_inputs(bank, [0, 0, 1], [0, 1, 0])

    def match_term(video: dict) -> torch.Tensor:
        with torch.no_grad():
            text = model.encode_text(inputs["text_tokens"], inputs["text_mask"])
            visual = model.encode_video(video["video_cls"], video["video_patches"],
                                        video["frame_mask"])
            rows = torch.arange(3)
            return model._match_logit(text, inputs["text_mask"].bool(), rows, visual,
                                      (video["video_cls"], video["video_patches"]),
                                      video["frame_mask"].bool(), rows)

    forwards = match_term(inputs)
    backwards = match_term({name: inputs[name].flip(1)  # frames (and padding) in reverse
                            for name in ("video_cls", "video_patches", "frame_mask")})
    assert (forwards[0] - forwards[1]).abs() > 1e-3  # it reads which video
    if match_video == "frames":
        torch.testing.assert_close(backwards, forwards, atol=1e-5, rtol=0)
    else:
        assert (backwards - forwards).abs().max() > 1e-4


def test_frame_pooled_match_term_is_refused_without_the_frames() -> None:
    bank = random_bank()
    model = make_model(match_video="frames")
    model.fit_input_stats(bank)
    inputs = pair_inputs(bank, [0], [0])
    visual = model.encode_video(inputs["video_cls"], inputs["video_patches"],
                                inputs["frame_mask"])
    with pytest.raises(ValueError, match="match_video=frames needs"):
        model.match(inputs["text_tokens"], inputs["text_mask"], visual, inputs["frame_mask"],
                    video_cls=inputs["video_cls"], text_words=inputs["text_words"])


def test_word_timing_salience_weights_tokens_whose_frames_differ_and_keeps_the_sign_flip() -> None:
    """reranker.word_timing_salience: a token whose frozen similarity moves over the clip
    gets more of the word timing's importance than one that looks the same in every frame;
    played backwards, the saliences are unchanged, so the term still changes sign."""
    bank = random_bank()
    model = make_model(word_timing_salience=True)
    model.fit_input_stats(bank)
    inputs = pair_inputs(bank, [0], [1])  # clip 1: all four frames real
    words = torch.zeros_like(inputs["text_words"])
    words[0, :, 0] = 1.0  # every token: the same direction as every frame ...
    words[0, 1] = F.one_hot(torch.tensor(1), EMBED).float()  # ... but token 1
    cls = torch.zeros_like(inputs["video_cls"])
    cls[0, :, 0] = 1.0
    cls[0, -1, 1] = 1.0  # the last frame also shows token 1
    mask = inputs["text_mask"].bool()
    one = torch.zeros(1, dtype=torch.long)
    with torch.no_grad():
        model.word_when.weight.zero_()  # the text alone would weigh every token alike
        model.word_when.bias.zero_()
        text = model.encode_text(inputs["text_tokens"], mask)
        frame_mask = inputs["frame_mask"].bool()
        expected, importance, observed = model.word_times(text, mask, one, words, cls,
                                                          frame_mask, one)
        backwards = play_backwards({"video_cls": cls, "video_patches": inputs["video_patches"],
                                    "frame_mask": frame_mask})
        _, importance_back, observed_back = model.word_times(
            text, mask, one, words, backwards["video_cls"], frame_mask, one)
    others = importance[0, mask[0]].clone()
    assert importance[0, 1] > 2 * others[torch.arange(len(others)) != 1].max()
    torch.testing.assert_close(importance_back, importance)
    torch.testing.assert_close(model._word_timing_logit(expected, importance_back,
                                                        observed_back),
                               -model._word_timing_logit(expected, importance, observed))
