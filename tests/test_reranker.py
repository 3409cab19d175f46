"""Fast checks of the stage-2 re-ranker, its negative samplers and its training loop."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from crosstvr_core.config import RerankerConfig, TrainConfig
from crosstvr_core.hard_negatives import (
    random_negative_texts,
    random_negative_videos,
    sample_hard_negative_texts,
    sample_hard_negative_videos,
)
from crosstvr_core.reranker import CrossTVRReranker
from crosstvr_core.reranker_training import score_pairs, train_reranker
from crosstvr_core.token_bank import TokenBank

FRAMES, PATCHES, LENGTH = 4, 3, 6
EMBED, VISION, TEXT = 12, 10, 8


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny tensors gain nothing from threads, and spin-waiting threads slow these tests
    down many times over when other processes hold the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_bank(
    num_videos: int = 6, captions_per_video: int = 2, seed: int = 0, offset: float = 3.0
) -> TokenBank:
    """Random fp16 tokens with an offset and scale (so standardisation has work to do),
    some padded frames and padded caption tokens."""
    gen = torch.Generator().manual_seed(seed)
    num_captions = num_videos * captions_per_video

    def tokens(*shape: int) -> torch.Tensor:
        return (offset + 2.0 * torch.randn(*shape, generator=gen)).half()

    frame_mask = torch.ones(num_videos, FRAMES, dtype=torch.bool)
    frame_mask[::2, -1] = False  # every other clip is one frame short
    lengths = torch.randint(2, LENGTH + 1, (num_captions,), generator=gen)
    return TokenBank(
        video_ids=[f"v{i}" for i in range(num_videos)],
        video_cls=tokens(num_videos, FRAMES, EMBED),
        video_patches=tokens(num_videos, FRAMES, PATCHES, VISION),
        frame_mask=frame_mask,
        caption_ids=[f"c{i}" for i in range(num_captions)],
        text_eot=tokens(num_captions, EMBED),
        text_tokens=tokens(num_captions, LENGTH, TEXT),
        text_mask=torch.arange(LENGTH)[None, :] < lengths[:, None],
        caption_video=torch.arange(num_videos).repeat_interleave(captions_per_video),
    )


def make_model(hidden: int = 16, layers: int = 1, seed: int = 0) -> CrossTVRReranker:
    torch.manual_seed(seed)
    cfg = RerankerConfig(hidden_size=hidden, num_heads=2, num_layers=layers, num_queries=3)
    return CrossTVRReranker(cfg, EMBED, VISION, TEXT, FRAMES, PATCHES).eval()


def pair_inputs(bank: TokenBank, text_rows: list[int], video_rows: list[int]) -> dict:
    return {
        **bank.text_batch(torch.tensor(text_rows)),
        **bank.video_batch(torch.tensor(video_rows)),
    }


@pytest.mark.parametrize("layers", [1, 2])
def test_output_shape_and_finite(layers: int) -> None:
    bank = random_bank()
    model = make_model(layers=layers)
    model.fit_input_stats(bank)
    logits = model(**pair_inputs(bank, [0, 1, 2, 3], [0, 1, 2, 5]))
    assert logits.shape == (4,)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("layers", [1, 2])
def test_padding_values_do_not_matter(layers: int) -> None:
    bank = random_bank()
    model = make_model(layers=layers)
    inputs = pair_inputs(bank, [0, 1, 2, 3], [0, 1, 2, 4])
    assert (~inputs["text_mask"]).any() and (~inputs["frame_mask"]).any()
    reference = model(**inputs)

    changed = {name: value.clone() for name, value in inputs.items()}
    changed["text_tokens"][~changed["text_mask"]] = 1e4
    changed["video_cls"][~changed["frame_mask"]] = -1e4
    changed["video_patches"][~changed["frame_mask"]] = 1e4
    torch.testing.assert_close(model(**changed), reference, rtol=0, atol=1e-6)


def test_all_frames_masked_is_finite() -> None:
    bank = random_bank()
    model = make_model(layers=2)
    inputs = pair_inputs(bank, [0, 1], [0, 1])
    inputs["frame_mask"][0] = False
    assert torch.isfinite(model(**inputs)).all()
    model.train()  # dropout-free, but the training path of attention must agree
    assert torch.isfinite(model(**inputs)).all()


def test_frame_order_matters() -> None:
    bank = random_bank()
    model = make_model()
    inputs = pair_inputs(bank, [0, 2], [1, 3])  # videos with all frames real
    assert inputs["frame_mask"].all()
    reversed_inputs = dict(inputs)
    reversed_inputs["video_cls"] = inputs["video_cls"].flip(1)
    reversed_inputs["video_patches"] = inputs["video_patches"].flip(1)
    assert (model(**inputs) - model(**reversed_inputs)).abs().min() > 1e-5


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


def toy_bank(num_videos: int = 16, captions_per_video: int = 2) -> TokenBank:
    """Videos whose tokens carry an id code that their captions' tokens also carry."""
    gen = torch.Generator().manual_seed(0)
    num_captions = num_videos * captions_per_video
    video_code = torch.randn(num_videos, 1, VISION, generator=gen)  # [V, 1, Wv]
    text_code = torch.randn(num_videos, 1, TEXT, generator=gen)  # [V, 1, Wt]
    caption_video = torch.arange(num_videos).repeat_interleave(captions_per_video)

    def noise(*shape: int) -> torch.Tensor:
        return 0.3 * torch.randn(*shape, generator=gen)

    patches = video_code[:, :, None] + noise(num_videos, FRAMES, PATCHES, VISION)
    return TokenBank(
        video_ids=[f"v{i}" for i in range(num_videos)],
        video_cls=noise(num_videos, FRAMES, EMBED).half(),
        video_patches=patches.half(),  # [V, F, P, Wv]
        frame_mask=torch.ones(num_videos, FRAMES, dtype=torch.bool),
        caption_ids=[f"c{i}" for i in range(num_captions)],
        text_eot=noise(num_captions, EMBED).half(),
        text_tokens=(text_code[caption_video] + noise(num_captions, LENGTH, TEXT)).half(),
        text_mask=torch.ones(num_captions, LENGTH, dtype=torch.bool),
        caption_video=caption_video,
    )


def toy_training(
    epochs: int, hard: bool = True, **kwargs: object
) -> tuple[CrossTVRReranker, list[dict]]:
    bank = toy_bank()
    sim = torch.randn(bank.num_captions, bank.num_videos, generator=torch.Generator())
    model = make_model(hidden=32)
    cfg = TrainConfig(epochs=epochs, batch_size=16, lr=3e-3, hard_negatives=hard, seed=3)
    return model, train_reranker(model, bank, sim, cfg, **{"progress": False, **kwargs})


def test_training_learns_a_toy_matching_problem() -> None:
    _, history = toy_training(epochs=40)
    first, last = history[0]["loss"], history[-1]["loss"]
    assert last < 0.5 * first, (first, last)
    assert history[-1]["accuracy"] > 0.9
    assert {"loss", "accuracy", "seconds", "lr", "epoch"} <= history[0].keys()


def test_training_is_deterministic_and_reports_each_epoch() -> None:
    seen: list[tuple[int, float, bool]] = []

    def on_epoch_end(epoch: int, record: dict, model: CrossTVRReranker) -> None:
        seen.append((epoch, record["loss"], model.training))

    histories = [toy_training(epochs=2, on_epoch_end=on_epoch_end, progress=True)[1]]
    histories += [toy_training(epochs=2, hard=hard)[1] for hard in (True, False)]
    assert [epoch for epoch, _, _ in seen] == [1, 2]
    assert [loss for _, loss, _ in seen] == [record["loss"] for record in histories[0]]
    drop_time = [
        [
            {k: v for k, v in record.items() if k not in ("seconds", "pairs_per_second")}
            for record in history
        ]
        for history in histories
    ]
    assert drop_time[0] == drop_time[1]
    assert drop_time[0] != drop_time[2]


def test_score_pairs_matches_forward_across_banks() -> None:
    text_bank, video_bank = random_bank(seed=1), random_bank(num_videos=5, seed=2)
    model = make_model(layers=2)
    model.fit_input_stats(text_bank)
    text_rows = torch.tensor([0, 3, 5, 7, 11, 2, 2])
    video_rows = torch.tensor([4, 0, 1, 2, 3, 3, 0])
    scores = score_pairs(model, text_bank, text_rows, video_bank, video_rows, batch_size=3)
    expected = model(
        **text_bank.text_batch(text_rows), **video_bank.video_batch(video_rows)
    ).detach()
    assert scores.shape == (7,) and scores.dtype == torch.float32
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)
