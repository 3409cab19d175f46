"""Patch tokens left on disk read exactly what the in-memory bank holds, and a bank whose
patches stay on disk trains and scores exactly like the one loaded into memory."""

from pathlib import Path

import numpy as np
import pytest
import torch
from bank_fixtures import make_model, random_bank, write_bank_index

from crosstvr_core.bank_split import split_validation
from crosstvr_core.config import TrainConfig
from crosstvr_core.disk_tokens import DiskPatches
from crosstvr_core.retrieval.pair_scoring import score_pairs
from crosstvr_core.training.lists import lists_from_similarity
from crosstvr_core.training.reranker import train_reranker


@pytest.fixture()
def stored(tmp_path: Path):
    bank = random_bank(num_videos=8, captions_per_video=2)
    index = write_bank_index(tmp_path / "db.lancedb", bank)
    return bank, index


def test_rows_read_from_disk_equal_the_bank(stored) -> None:
    bank, index = stored
    loaded = index.load_token_bank("train", memory_budget_gb=1e-9)  # nothing fits
    patches = loaded.video_patches
    assert isinstance(patches, DiskPatches)
    assert patches.shape == bank.video_patches.shape and patches.dtype == torch.float16
    assert loaded.video_ids == bank.video_ids
    rows = torch.tensor([5, 0, 5, 2])  # any order, repeats
    assert torch.equal(patches[rows], bank.video_patches[rows])
    assert torch.equal(patches[3], bank.video_patches[3])
    assert torch.equal(patches[1:4], bank.video_patches[1:4])
    assert patches[torch.tensor([], dtype=torch.long)].shape == (0, *bank.video_patches.shape[1:])
    part = patches.subset(torch.tensor([6, 1]))
    assert isinstance(part, DiskPatches) and len(part) == 2
    assert torch.equal(part[torch.tensor([1, 0])], bank.video_patches[torch.tensor([1, 6])])
    assert torch.equal(patches.to_memory(chunk_rows=3), bank.video_patches)


def test_the_budget_picks_memory_or_disk(stored) -> None:
    bank, index = stored
    in_memory = index.load_token_bank("train", memory_budget_gb=1.0)
    assert isinstance(in_memory.video_patches, torch.Tensor)
    assert torch.equal(in_memory.video_patches, bank.video_patches)
    assert isinstance(index.load_token_bank("train").video_patches, torch.Tensor)  # no budget
    assert index.load_token_bank("test").num_videos == 0  # only the split's rows


def test_a_bank_on_disk_trains_and_scores_like_the_bank_in_memory(stored) -> None:
    _, index = stored
    memory = index.load_token_bank("train", memory_budget_gb=1.0)
    disk = index.load_token_bank("train", memory_budget_gb=1e-9)
    split = split_validation(disk, 0.25, seed=0)
    assert isinstance(split.train.video_patches, DiskPatches)  # a cut stays on disk
    cfg = TrainConfig(epochs=2, list_batch_size=4, list_size=3, lr=1e-3, seed=0,
                      val_fraction=0.0)
    sim = torch.randn(memory.num_captions, memory.num_videos,
                      generator=torch.Generator().manual_seed(1))
    weights = {}
    for name, bank in (("memory", memory), ("disk", disk)):
        model = make_model(word_timing_term=False)  # a stored index has no word embeddings
        history = train_reranker(model, bank, None, cfg, lists=lists_from_similarity(sim, sim, 3),
                                 progress=False)
        assert np.isfinite(history[-1]["loss"])
        weights[name] = model
        rows = torch.arange(bank.num_captions)
        weights[name + "_scores"] = score_pairs(model, bank, rows, bank, bank.caption_video[rows],
                                                batch_size=5)
    for (key, a), b in zip(weights["memory"].state_dict().items(),
                           weights["disk"].state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=key)
    torch.testing.assert_close(weights["memory_scores"], weights["disk_scores"], rtol=0, atol=0)
