"""Re-ranker ensembles: members seeded one after another, trained as single re-rankers of
their seeds would be, scored as the mean of their logits, fused with weights of their own."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from bank_fixtures import EMBED, FRAMES, PATCHES, TEXT, VISION, random_bank, toy_bank

from crosstvr_core import pipeline
from crosstvr_core.config import CrossTVRConfig
from crosstvr_core.models.reranker_ensemble import (
    RerankerEnsemble,
    new_reranker,
    reranker_members,
)
from crosstvr_core.report import training_curve_figure
from crosstvr_core.retrieval.pair_scoring import score_pairs
from crosstvr_core.token_bank import TokenBank

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPES = {"embed_dim": EMBED, "vision_width": VISION, "text_width": TEXT,
          "num_frames": FRAMES, "num_patches": PATCHES}
SMALL = {"hidden_size": 16, "num_heads": 2, "num_queries": 3, "num_selected_patches": 2}


def config(members: int, seed: int = 3, **train: object) -> CrossTVRConfig:
    return CrossTVRConfig.model_validate({
        "data": {"val_split": "val"},
        "reranker": {**SMALL, "ensemble_size": members},
        "train": {"seed": seed, "loss": "bce", "epochs": 2, "batch_size": 16, "lr": 3e-3,
                  "random_negatives": 0, "hard_negative_warmup": 0, **train},
        "eval": {"top_k": 3}})


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


def test_members_are_the_single_rerankers_of_consecutive_seeds() -> None:
    one = new_reranker(config(1).reranker, 5, **SHAPES)
    two = new_reranker(config(2).reranker, 5, **SHAPES)
    assert not isinstance(one, RerankerEnsemble) and reranker_members(one) == [one]
    assert isinstance(two, RerankerEnsemble) and len(reranker_members(two)) == 2
    assert_same_weights(two.members[0], one)
    assert_same_weights(two.members[1], new_reranker(config(1).reranker, 6, **SHAPES))
    assert not torch.equal(two.members[0].temporal_pos, two.members[1].temporal_pos)
    with pytest.raises(ValueError, match="at least 2 members"):
        RerankerEnsemble([one])


def test_an_ensemble_scores_the_mean_of_its_members_logits() -> None:
    text_bank, video_bank = random_bank(seed=1), random_bank(num_videos=5, seed=2)
    ensemble = new_reranker(config(3).reranker, 0, **SHAPES).eval()
    ensemble.fit_input_stats(text_bank)
    assert ensemble.has_input_stats
    assert ensemble.reads_word_embeddings == ensemble.members[0].reads_word_embeddings
    text_rows = torch.tensor([0, 3, 5, 7, 11, 2, 2])
    video_rows = torch.tensor([4, 0, 1, 2, 3, 3, 0])
    scores = score_pairs(ensemble, text_bank, text_rows, video_bank, video_rows, batch_size=3)
    each = torch.stack([score_pairs(m, text_bank, text_rows, video_bank, video_rows, 3)
                        for m in ensemble.members])
    assert each.std(0).min() > 1e-3  # the members disagree, so the mean is a real test
    torch.testing.assert_close(scores, each.mean(0), rtol=1e-5, atol=1e-5)
    inputs = {**text_bank.text_batch(text_rows), **video_bank.video_batch(video_rows)}
    with torch.no_grad():
        torch.testing.assert_close(ensemble(**inputs), each.mean(0), rtol=1e-4, atol=1e-4)
        for got, want in zip(ensemble.attention_maps(**inputs),
                             ensemble.members[0].attention_maps(**inputs), strict=True):
            torch.testing.assert_close(got, want)
    ensemble.set_fusion_weights(0.25, 0.5)
    assert (ensemble.fusion_weight_t2v, ensemble.fusion_weight_v2t) == (0.25, 0.5)


def _train(cfg: CrossTVRConfig, train: TokenBank, val: TokenBank, **kwargs: object):
    model = pipeline.build_reranker(cfg, SHAPES)
    sim = torch.randn(train.num_captions, train.num_videos, generator=torch.Generator())
    val_sim = torch.randn(val.num_captions, val.num_videos, generator=torch.Generator())
    split = pipeline.reranker_split(cfg, train, val)
    history = pipeline.train_stage2(cfg, model, train, sim, None, split,
                                    val_stage1_sim=val_sim, progress=False, **kwargs)
    return model, history


def test_ensemble_training_trains_each_member_as_its_own_seed_would(tmp_path: Path) -> None:
    train, val = toy_bank(num_videos=12), random_bank(num_videos=4, seed=1)
    seen: list[tuple[object, int]] = []
    ensemble, history = _train(config(2), train, val, checkpoint_dir=tmp_path,
                               on_epoch_end=lambda e, r, m: seen.append((r["member"], e)))
    for i in range(2):
        single, single_history = _train(config(1, seed=3 + i), train, val)
        assert_same_weights(ensemble.members[i], single)
        assert [r["loss"] for r in history if r.get("member") == i] == [
            r["loss"] for r in single_history]
    assert seen == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["member-0", "member-1"]
    # the ensemble validates once more and keeps the fusion weights picked for its mean
    last = history[-1]
    assert last["member"] == "ensemble" and "epoch" not in last
    assert (ensemble.fusion_weight_t2v, ensemble.fusion_weight_v2t) == pytest.approx(
        (last["val_t2v_fusion_weight"], last["val_v2t_fusion_weight"]))  # a float32 buffer
    # a rerun in the same directory resumes each member from its checkpoints: same weights
    again, _ = _train(config(2), train, val, checkpoint_dir=tmp_path)
    assert_same_weights(again, ensemble)
    assert len(training_curve_figure(history).axes[0].lines) == 2
