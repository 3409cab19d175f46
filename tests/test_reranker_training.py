"""Re-ranker training: learning, reproducibility, resume after a kill, validation and early
stopping, the token dataset (TokenBank and Lance by row), and no encoder in the loop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from bank_fixtures import (
    FRAMES,
    PATCHES,
    VISION,
    make_model,
    random_bank,
    toy_bank,
    write_bank_index,
)
from torch.utils.data import DataLoader

from crosstvr_core.bank_split import split_validation, without_validation
from crosstvr_core.config import CrossTVRConfig, TrainConfig
from crosstvr_core.models.reranker import CrossTVRReranker
from crosstvr_core.retrieval.pair_scoring import score_pairs
from crosstvr_core.retrieval.stage1 import stage1_training_bank
from crosstvr_core.token_bank import TokenBank
from crosstvr_core.training.checkpoint import latest_checkpoint, load_checkpoint
from crosstvr_core.training.loop import WeightAverage
from crosstvr_core.training.negatives import play_backwards
from crosstvr_core.training.reranker import NegativeScores, Validation, train_reranker
from crosstvr_core.training.token_dataset import VTMPairDataset

pytestmark = pytest.mark.usefixtures("one_thread")


def toy_training(epochs: int, hard: bool = True, bank: TokenBank | None = None,
                 cfg: dict | None = None, **kwargs: object
                 ) -> tuple[CrossTVRReranker, list[dict]]:
    bank = bank or toy_bank()
    sim = torch.randn(bank.num_captions, bank.num_videos, generator=torch.Generator())
    model = make_model(hidden=32)
    # pinned, not the defaults: these tests are about 3 pairs per caption and a curriculum
    cfg = TrainConfig(**{"loss": "bce", "epochs": epochs, "batch_size": 16, "lr": 3e-3,
                         "hard_negatives": hard, "reversed_negatives": False,
                         "seed": 3, "random_negatives": 0, "hard_negative_warmup": 0.5,
                         **(cfg or {})})
    return model, train_reranker(model, bank, sim, cfg, **{"progress": False, **kwargs})


def without_time(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("seconds", "pairs_per_second", "checkpoint")}
            for r in history]


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


def test_training_learns_a_toy_matching_problem() -> None:
    _, history = toy_training(epochs=30)
    first, last = history[0]["loss"], history[-1]["loss"]
    # a constant predictor's loss with 1 positive in 3 pairs (the prior's entropy): 0.637
    prior = -(np.log(1 / 3) / 3 + 2 * np.log(2 / 3) / 3)
    assert last < 0.5 * first and last < 0.5 * prior, (first, last)
    assert history[-1]["accuracy"] > 0.9
    assert {"loss", "accuracy", "seconds", "lr", "epoch"} <= history[0].keys()


def test_reversed_negatives_add_the_positive_played_backwards() -> None:
    bank = toy_bank()
    inputs = VTMPairDataset(bank).pairs(torch.tensor([0, 1, 2]), torch.tensor([0, 0, 1]))
    inputs["frame_mask"][2, -1] = False  # a clip one frame short: its padding stays last
    out = play_backwards(inputs, slice(1, None))
    for name in ("video_cls", "video_patches"):
        assert torch.equal(out[name][0], inputs[name][0])  # rows before `start` untouched
        assert torch.equal(out[name][1], inputs[name][1].flip(0))
        assert torch.equal(out[name][2, :-1], inputs[name][2, :-1].flip(0))
        assert torch.equal(out[name][2, -1], inputs[name][2, -1])
    _, history = toy_training(epochs=2, cfg={"reversed_negatives": True, "random_negatives": 0})
    # 4 pairs per caption now: positive, hard video, hard caption, reversed positive
    assert history[-1]["pairs_per_second"] * history[-1]["seconds"] == pytest.approx(
        4 * bank.num_captions)
    assert np.isfinite(history[-1]["loss"])


def test_training_is_deterministic_and_reports_each_epoch() -> None:
    seen: list[tuple[int, float, bool]] = []

    def on_epoch_end(epoch: int, record: dict, model: CrossTVRReranker) -> None:
        seen.append((epoch, record["loss"], model.training))

    first, history = toy_training(epochs=2, on_epoch_end=on_epoch_end, progress=True)
    second, again = toy_training(epochs=2)
    _, random_only = toy_training(epochs=2, hard=False)
    assert [epoch for epoch, _, _ in seen] == [1, 2]
    assert [loss for _, loss, _ in seen] == [record["loss"] for record in history]
    assert without_time(history) == without_time(again)
    assert_same_weights(first, second)
    assert without_time(history) != without_time(random_only)


class Killed(Exception):
    pass


def test_resume_after_a_kill_gives_the_uninterrupted_weights(tmp_path: Path) -> None:
    straight, straight_history = toy_training(epochs=3, checkpoint_dir=tmp_path / "straight")

    def kill_after_first_epoch(epoch: int, record: dict, model: CrossTVRReranker) -> None:
        if epoch == 1:
            raise Killed

    run_dir = tmp_path / "killed"
    with pytest.raises(Killed):
        toy_training(epochs=3, checkpoint_dir=run_dir, on_epoch_end=kill_after_first_epoch)
    assert latest_checkpoint(run_dir).name == "epoch-0001.pt"
    (run_dir / "epoch-0002.pt.tmp").write_bytes(b"half a checkpoint")  # a kill mid-write
    resumed, history = toy_training(epochs=3, checkpoint_dir=run_dir, resume=True)
    assert_same_weights(straight, resumed)
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert without_time(history) == without_time(straight_history)
    state = load_checkpoint(latest_checkpoint(run_dir))
    assert state["epoch"] == 3 and {"optimizer", "schedule", "scaler", "rng"} <= state.keys()
    # a finished run resumes to the same weights without training again
    again, _ = toy_training(epochs=3, checkpoint_dir=run_dir, resume=True)
    assert_same_weights(straight, again)


def test_bad_checkpoint_is_named(tmp_path: Path) -> None:
    (tmp_path / "epoch-0001.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="epoch-0001.pt"):
        toy_training(epochs=2, checkpoint_dir=tmp_path, resume=True)


def test_validation_early_stopping_keeps_the_best_weights(tmp_path: Path) -> None:
    bank = toy_bank(num_videos=24)
    split = split_validation(bank, 0.25, seed=0)
    assert split.val.num_videos == 6 and split.train.num_videos == 18
    assert set(split.val.video_ids).isdisjoint(split.train.video_ids)
    assert split.val.num_captions == 12
    sim = torch.randn(bank.num_captions, bank.num_videos)
    val_sim = sim[split.val_captions][:, split.val_videos]
    validation = Validation(split.val, val_sim, top_k=4)
    snapshots: dict[int, dict] = {}

    def keep(epoch: int, record: dict, model: CrossTVRReranker) -> None:
        snapshots[epoch] = {k: v.clone() for k, v in model.state_dict().items()}

    model, history = toy_training(
        epochs=6, bank=split.train, validation=validation, on_epoch_end=keep,
        cfg={"early_stopping_patience": 1, "lr": 3e-2},
    )
    assert all({"val_t2v_R1", "val_v2t_R1", "val_stage1_t2v_R1", "val_mean_R1",
                "val_t2v_stage2_top1", "val_t2v_fusion_weight"} <= r.keys() for r in history)
    scores = [r["val_mean_R1"] for r in history]
    best_epoch = history[int(np.argmax(scores))]["epoch"]
    # held-out videos carry codes never trained on, so R@1 stalls and patience 1 stops it
    assert len(history) < 6 and history[-1]["early_stopped"]
    assert scores[-1] <= max(scores[:-1]) and best_epoch != history[-1]["epoch"]
    last = snapshots[history[-1]["epoch"]]
    assert any(not torch.equal(last[name], value) for name, value in snapshots[best_epoch].items())
    for name, value in model.state_dict().items():
        assert torch.equal(value, snapshots[best_epoch][name]), name
    assert model.training is False


def test_negatives_from_stored_top_k_train() -> None:
    """Negatives drawn only from stored top-K lists (-inf elsewhere) still teach: 30 steps
    on 4 captions it can fit bring the loss far down."""
    bank = toy_bank(num_videos=4, captions_per_video=1)
    top = torch.randn(bank.num_captions, bank.num_videos,
                      generator=torch.Generator().manual_seed(0)).topk(3, dim=1).indices
    videos = torch.full((bank.num_captions, bank.num_videos), float("-inf"))
    videos.scatter_(1, top, 1.0)  # [T, V]: each caption's stored top 3
    scores = NegativeScores(videos, torch.zeros(bank.num_videos, bank.num_captions))
    model = make_model(hidden=32)
    history = train_reranker(model, bank, scores,
                             TrainConfig(epochs=30, batch_size=4, lr=3e-3, loss="bce"),
                             progress=False)
    assert len(history) == 30  # one step per epoch
    first, last = history[0]["loss"], history[-1]["loss"]
    assert last < 0.2 * first, (first, last)
    assert history[-1]["accuracy"] == 1.0
    with pytest.raises(ValueError, match="negative scores"):
        train_reranker(model, bank, NegativeScores(videos[:, :-1], scores.captions_per_video),
                       TrainConfig(epochs=1, loss="bce"), progress=False)


def test_score_pairs_matches_forward_across_banks() -> None:
    text_bank, video_bank = random_bank(seed=1), random_bank(num_videos=5, seed=2)
    model = make_model(layers=2)
    model.fit_input_stats(text_bank)
    text_rows = torch.tensor([0, 3, 5, 7, 11, 2, 2])
    video_rows = torch.tensor([4, 0, 1, 2, 3, 3, 0])  # repeated videos are encoded once
    scores = score_pairs(model, text_bank, text_rows, video_bank, video_rows, batch_size=3)
    expected = model(
        **text_bank.text_batch(text_rows), **video_bank.video_batch(video_rows)
    ).detach()
    assert scores.shape == (7,) and scores.dtype == torch.float32
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)


def test_pair_dataset_random_access_and_dataloader() -> None:
    bank = random_bank()
    dataset = VTMPairDataset(bank)
    assert len(dataset) == bank.num_captions
    item = dataset[5]
    assert item["video_row"] == bank.caption_video[5]
    torch.testing.assert_close(item["text_tokens"], bank.text_tokens[5].float())
    torch.testing.assert_close(item["video_patches"], bank.video_patches[item["video_row"]].float())
    batch = next(iter(DataLoader(dataset, batch_size=4, shuffle=False)))
    assert batch["video_patches"].shape == (4, FRAMES, PATCHES, VISION)
    assert batch["text_row"].tolist() == [0, 1, 2, 3]
    with pytest.raises(IndexError, match="caption row 99"):
        dataset[99]


def test_training_never_calls_the_frozen_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every entry point of the encoder raises (and is counted); training still runs."""
    import open_clip

    from crosstvr_core.models.encoder import FrozenEncoder

    calls: list[str] = []

    def forbidden(name: str):
        def call(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"frozen encoder entry point {name} called during training")
        return call

    for name in ("encode_frames", "encode_captions", "_image_tokens", "preprocess_frames"):
        monkeypatch.setattr(FrozenEncoder, name, forbidden(name))
    for name in ("create_model", "create_model_and_transforms"):
        monkeypatch.setattr(open_clip, name, forbidden(name))
    model, history = toy_training(epochs=1)
    score_pairs(model, toy_bank(), torch.arange(4), toy_bank(), torch.arange(4), 4)
    assert calls == [] and len(history) == 1


def test_task_reads_negatives_from_the_stored_stage1_top_k(tmp_path: Path) -> None:
    """train.negative_source=stage1_top_k: the Lance table's lists become -inf-masked scores."""
    from tasks.retrieval import _stored_top_k_scores

    bank = random_bank()
    index = write_bank_index(tmp_path / "db.lancedb", bank)
    top = {c: [bank.video_ids[(i + 1) % bank.num_videos], bank.video_ids[(i + 2) % 6]]
           for i, c in enumerate(bank.caption_ids)}
    index.write_stage1_candidates("s1", "train", "caption", list(top), list(top.values()),
                                  np.array([[0.9, 0.5]] * len(top)))
    index.write_stage1_candidates("other", "train", "caption", list(top),
                                  [[bank.video_ids[0]]] * len(top), np.ones((len(top), 1)))
    index.write_stage1_candidates("s1", "train", "video", bank.video_ids,
                                  [[bank.caption_ids[0]]] * bank.num_videos,
                                  np.ones((bank.num_videos, 1)))
    scores = _stored_top_k_scores(index, "s1", bank, "train")
    assert scores.videos_per_caption.shape == (bank.num_captions, bank.num_videos)
    assert scores.captions_per_video.shape == (bank.num_videos, bank.num_captions)
    finite = torch.isfinite(scores.videos_per_caption)
    assert finite.sum(1).tolist() == [2] * bank.num_captions  # only the stored top 2
    assert scores.videos_per_caption[0, 1] == pytest.approx(0.9)
    assert torch.isfinite(scores.captions_per_video).sum() == bank.num_videos
    with pytest.raises(ValueError, match="no stored top-K"):
        _stored_top_k_scores(index, "missing-model", bank, "train")


def test_stage1_never_trains_on_the_rerankers_validation_videos() -> None:
    """Stage 1 learns from the train videos minus exactly those the re-ranker validates on,
    so the validation lists are those of unseen videos, as at test time."""
    bank = toy_bank(num_videos=20)
    held_out = split_validation(bank, 0.25, seed=3).val
    learned_from = without_validation(bank, 0.25, seed=3)
    assert learned_from.num_videos == 15
    assert not set(learned_from.video_ids) & set(held_out.video_ids)
    assert set(learned_from.video_ids) | set(held_out.video_ids) == set(bank.video_ids)
    assert without_validation(bank, 0.0, seed=3) is bank
    cfg = CrossTVRConfig.model_validate({"train": {"val_fraction": 0.25, "seed": 3}})
    assert stage1_training_bank(cfg, bank).video_ids == learned_from.video_ids
    cfg.stage1.train_on_validation_videos = True
    assert stage1_training_bank(cfg, bank) is bank


def test_a_validation_split_of_its_own_replaces_the_held_out_videos() -> None:
    """data.val_split: used whole when it can validate (not train or eval, 2+ videos, a
    caption); then training keeps every train video, stage 1 learns from all of them, and
    validation reads that split's own stage-1 similarity."""
    from crosstvr_core import pipeline

    train, val = toy_bank(num_videos=16), random_bank(num_videos=4, seed=1)
    cfg = CrossTVRConfig.model_validate({
        "data": {"val_split": "val"},
        "train": {"val_fraction": 0.25, "seed": 3, "loss": "bce", "epochs": 1,
                  "batch_size": 16, "random_negatives": 0, "hard_negative_warmup": 0},
        "eval": {"top_k": 3}})
    asked: list[str] = []

    def load(name: str) -> TokenBank:
        asked.append(name)
        return val

    assert pipeline.validation_bank(cfg, load) is val and asked == ["val"]
    for data in ({"val_split": None}, {"val_split": "train"}, {"val_split": "test"}):
        other = cfg.model_copy(update={"data": cfg.data.model_copy(update=data)})
        assert pipeline.validation_bank(other, load) is None
    assert asked == ["val"]  # the train and eval splits are never loaded as validation
    assert pipeline.validation_bank(cfg, lambda _: random_bank(num_videos=1)) is None

    split = pipeline.reranker_split(cfg, train, val)
    assert split.train is train and split.val is val and not split.held_out
    assert "a split of its own" in pipeline.describe_validation(split)
    assert stage1_training_bank(cfg, train, separate_val=True) is train
    held = pipeline.reranker_split(cfg, train)
    assert held.held_out and held.train.num_videos == 12

    sim = torch.randn(train.num_captions, train.num_videos)
    with pytest.raises(ValueError, match="val_stage1_sim"):
        pipeline.train_stage2(cfg, make_model(hidden=32), train, sim, None, split,
                              progress=False)
    # a stage-1 similarity that puts each validation caption's own video first: with the
    # fusion weight searched from 0, validation R@1 can be no worse than that stage 1's 100
    val_sim = torch.eye(val.num_videos)[val.caption_video] * 10
    history = pipeline.train_stage2(cfg, make_model(hidden=32), train, sim, None, split,
                                    val_stage1_sim=val_sim, progress=False)
    assert history[-1]["val_stage1_t2v_R1"] == 100.0
    # held out: full-size stage-1 negatives are cut to the training part once, inside
    history = pipeline.train_stage2(cfg, make_model(hidden=32), train, sim, None, held,
                                    negatives=NegativeScores.from_similarity(sim),
                                    progress=False)
    assert len(history) == 1 and "val_mean_R1" in history[0]


def test_training_runs_under_deterministic_algorithms_and_restores_the_setting() -> None:
    from crosstvr_core.training.loop import deterministic_algorithms

    assert not torch.are_deterministic_algorithms_enabled()
    with pytest.raises(RuntimeError, match="inside"), deterministic_algorithms():
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        raise RuntimeError("inside")
    assert not torch.are_deterministic_algorithms_enabled()


def test_weight_average_follows_the_moving_average_and_restores_the_live_weights() -> None:
    model = torch.nn.Linear(2, 1, bias=False)
    average = WeightAverage(model, decay=0.5)
    expected = model.weight.detach().clone()
    for step, value in enumerate([1.0, 2.0, 3.0], start=1):
        with torch.no_grad():
            model.weight.fill_(value)
        average.update(model)
        decay = min(0.5, (1 + step) / (10 + step))
        expected = decay * expected + (1 - decay) * value
    torch.testing.assert_close(average.shadow["weight"], expected)
    with average.applied(model):
        torch.testing.assert_close(model.weight.detach(), expected)
    assert torch.equal(model.weight.detach(), torch.full((1, 2), 3.0))
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(model, decay=1.0)


def test_resume_with_a_weight_average_gives_the_uninterrupted_average(tmp_path: Path) -> None:
    """train.weight_average: the final weights are the average (not the last step's), and a
    run killed after epoch 1 resumes to the same average."""
    cfg = {"weight_average": 0.9}
    straight, _ = toy_training(epochs=2, cfg=cfg, checkpoint_dir=tmp_path / "straight")
    plain, _ = toy_training(epochs=2)
    assert any(not torch.equal(a, b) for a, b in zip(straight.state_dict().values(),
                                                      plain.state_dict().values(), strict=True))

    def kill_after_first_epoch(epoch: int, record: dict, model: CrossTVRReranker) -> None:
        if epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        toy_training(epochs=2, cfg=cfg, checkpoint_dir=tmp_path / "killed",
                     on_epoch_end=kill_after_first_epoch)
    resumed, _ = toy_training(epochs=2, cfg=cfg, checkpoint_dir=tmp_path / "killed",
                              resume=True)
    assert_same_weights(straight, resumed)
