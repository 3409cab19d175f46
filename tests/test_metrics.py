"""Metrics against the field's formulas (CLIP4Clip's compute_metrics) and hand cases."""

import numpy as np
import pytest
import torch

from crosstvr_core.retrieval.metrics import (
    MetricsInputError,
    mcnemar_exact_p,
    retrieval_metrics,
    text_to_video_ranks,
    video_to_text_ranks,
)


def clip4clip_compute_metrics(x: np.ndarray) -> dict:
    """The reference formula (CLIP4Clip metrics.py): sort each row descending, find the
    diagonal's position."""
    sx = np.sort(-x, axis=1)
    d = np.diag(-x)[:, np.newaxis]
    ind = np.where((sx - d) == 0)[1]
    return {
        "R1": 100.0 * np.sum(ind == 0) / len(ind),
        "R5": 100.0 * np.sum(ind < 5) / len(ind),
        "R10": 100.0 * np.sum(ind < 10) / len(ind),
        "MdR": np.median(ind) + 1,
        "MnR": np.mean(ind) + 1,
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_single_caption_matches_reference_both_directions(seed):
    rng = np.random.default_rng(seed)
    sim = rng.normal(size=(57, 57)) + 2.0 * np.eye(57) * rng.random(57)
    ours = retrieval_metrics(sim)
    for direction, matrix in (("t2v", sim), ("v2t", sim.T)):
        ref = clip4clip_compute_metrics(matrix)
        for key, value in ref.items():
            assert ours[direction][key] == pytest.approx(value), (direction, key)


def test_hand_computed_case():
    sim = np.array([[0.9, 0.1, 0.2],
                    [0.8, 0.5, 0.1],
                    [0.3, 0.4, 0.2]])
    # t2v ranks: row0 true 0.9 -> 0; row1 true 0.5 (0.8 higher) -> 1; row2 true 0.2 -> 2
    assert text_to_video_ranks(sim).tolist() == [0, 1, 2]
    m = retrieval_metrics(sim)["t2v"]
    assert m["R1"] == pytest.approx(100 / 3)
    assert m["MdR"] == 2.0 and m["MnR"] == 2.0
    # v2t ranks: col0 true 0.9 -> 0; col1 true 0.5 -> 0; col2 true 0.2 vs (0.2, 0.1) -> 0
    assert video_to_text_ranks(sim).tolist() == [0, 0, 0]


def test_ties_count_in_the_querys_favour():
    sim = np.array([[0.5, 0.5], [0.1, 0.1]])
    assert text_to_video_ranks(sim).tolist() == [0, 0]


def test_multi_caption_both_directions():
    rng = np.random.default_rng(3)
    num_videos, per_video = 20, 3
    caption_video = np.repeat(np.arange(num_videos), per_video)
    sim = rng.normal(size=(num_videos * per_video, num_videos))
    t2v = text_to_video_ranks(sim, caption_video)
    expected_t2v = [(sim[c] > sim[c, v]).sum() for c, v in enumerate(caption_video)]
    assert t2v.tolist() == expected_t2v
    # v2t: group score = max over the group's captions
    group = sim.reshape(num_videos, per_video, num_videos).max(axis=1).T  # [video, group]
    expected_v2t = [(group[v] > group[v, v]).sum() for v in range(num_videos)]
    assert video_to_text_ranks(sim, caption_video).tolist() == expected_v2t
    m = retrieval_metrics(torch.tensor(sim), torch.tensor(caption_video), ks=(1, 3))
    assert set(m["t2v"]) == {"R1", "R3", "MdR", "MnR"}


@pytest.mark.parametrize(
    ("sim", "caption_video", "needle"),
    [
        (np.zeros(5), None, "2-D"),
        (np.array([[np.nan, 0.0], [0.0, 1.0]]), None, "NaN"),
        (np.zeros((3, 2)), None, "caption_video"),
        (np.zeros((3, 2)), [0, 1, 2], "outside"),
        (np.zeros((3, 3)), [0, 0, 1], "no caption"),
        (np.zeros((3, 2)), [0, 1], "one per caption"),
    ],
)
def test_bad_input_is_named(sim, caption_video, needle):
    with pytest.raises(MetricsInputError, match=needle):
        retrieval_metrics(sim, caption_video)


def test_mcnemar_exact_p_is_the_two_sided_binomial_test_of_the_changed_queries() -> None:
    """Golden check against scipy's exact binomial test, and the textbook value 7 vs 2."""
    stats = pytest.importorskip("scipy.stats")
    assert mcnemar_exact_p(7, 2) == pytest.approx(2 * (1 + 9 + 36) / 512)
    assert mcnemar_exact_p(0, 0) == 1.0 and mcnemar_exact_p(3, 3) == 1.0
    for gained, lost in ((7, 2), (2, 7), (0, 5), (12, 30), (1, 0), (40, 41)):
        want = stats.binomtest(min(gained, lost), gained + lost, 0.5).pvalue
        assert mcnemar_exact_p(gained, lost) == pytest.approx(want), (gained, lost)
    with pytest.raises(ValueError, match=">= 0"):
        mcnemar_exact_p(-1, 2)
