import json

import numpy as np
import pytest

from crosstvr_core.retrieval.external_similarity import (
    ExternalSimilarityError,
    load_external_similarity,
)


def _write(tmp_path, sim, rows, cols):
    np.save(tmp_path / "sim.npy", sim)
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    (tmp_path / "cols.json").write_text(json.dumps(cols))
    return tmp_path / "sim.npy", tmp_path / "rows.json", tmp_path / "cols.json"


def test_reorders_to_the_dataset_and_drops_extra_ids(tmp_path):
    sim = np.arange(12, dtype=np.float32).reshape(3, 4)
    paths = _write(tmp_path, sim, ["c0", "c1", "c2"], ["v0", "v1", "v2", "v3"])
    out = load_external_similarity(*paths, caption_ids=["c2", "c0"], video_ids=["v3", "v1"])
    np.testing.assert_array_equal(out.numpy(), [[11, 9], [3, 1]])


@pytest.mark.parametrize(
    ("sim", "rows", "cols", "caption_ids", "needle"),
    [
        (np.zeros((2, 2)), ["a", "b"], ["x", "y"], ["a", "zz"], "missing"),
        (np.zeros((2, 3)), ["a", "b"], ["x", "y"], ["a"], "shape"),
        (np.full((2, 2), np.nan), ["a", "b"], ["x", "y"], ["a"], "NaN"),
        (np.zeros((2, 2)), ["a", "a"], ["x", "y"], ["a"], "duplicate"),
    ],
)
def test_mismatches_are_named(tmp_path, sim, rows, cols, caption_ids, needle):
    paths = _write(tmp_path, sim, rows, cols)
    with pytest.raises(ExternalSimilarityError, match=needle):
        load_external_similarity(*paths, caption_ids=caption_ids, video_ids=["x"])
