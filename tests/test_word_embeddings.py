"""Each caption token's own frozen embedding, aligned with the cached token features."""

import pytest
import torch
import torch.nn.functional as F
from bank_fixtures import random_bank

from crosstvr_core.models.word_embeddings import (
    attach_word_embeddings,
    caption_word_embeddings,
    single_token_embeddings,
)


def test_each_position_holds_its_token_alone_through_the_text_tower(tiny_encoder):
    texts = ["a red circle then a blue square", "red"]
    length = 12
    words = caption_word_embeddings(tiny_encoder, texts, length)
    ids = tiny_encoder.tokenize(texts)[:, :length]
    assert words.shape == (2, length, tiny_encoder.embed_dim) and words.dtype == torch.float32
    red = ids[1, 1].item()
    with torch.no_grad():
        alone = F.normalize(tiny_encoder.model.encode_text(tiny_encoder.tokenize(["red"])),
                            dim=-1)[0]
    torch.testing.assert_close(words[1, 1].float(), alone, atol=2e-3, rtol=0)
    # the same word anywhere has the same embedding; "a" twice, "red" in both captions
    assert ids[0, 2].item() == red
    torch.testing.assert_close(words[0, 2], words[1, 1])
    torch.testing.assert_close(words[0, 1], words[0, 5])
    # start, end and padding are no word: zeros
    assert words[1, 0].abs().sum() == 0 and words[1, 2:].abs().sum() == 0
    assert words[0, 1:8].float().norm(dim=-1).min() > 0.99


def test_special_tokens_get_zeros(tiny_encoder):
    sot, eot = tiny_encoder.tokenize(["x"])[0, [0, 2]].tolist()
    table = single_token_embeddings(tiny_encoder, [sot, eot, 0])
    assert table.abs().sum() == 0


def test_attach_needs_every_caption_text(tiny_encoder):
    bank = random_bank()
    texts = {c: "a red circle" for c in bank.caption_ids[1:]}
    with pytest.raises(ValueError, match="c0"):
        attach_word_embeddings(bank, tiny_encoder, texts)


def test_a_bank_stores_each_distinct_token_once(tiny_encoder):
    """attach_word_embeddings keeps ids [T, L] and one table row per distinct token; a
    batch reads the same embeddings as the dense form, and a subset shares the table."""
    bank = random_bank()
    texts = {c: ("a red circle then a blue square" if i % 2 else "a red circle")
             for i, c in enumerate(bank.caption_ids)}
    attached = attach_word_embeddings(bank, tiny_encoder, texts)
    words = attached.text_words
    length = bank.text_tokens.shape[1]
    ids = tiny_encoder.tokenize([texts[c] for c in bank.caption_ids])[:, :length]
    assert words.ids.dtype == torch.int32 and words.shape == (*ids.shape, tiny_encoder.embed_dim)
    assert len(words.table) == len(torch.unique(ids))  # padding, markers and 6 words
    dense = caption_word_embeddings(tiny_encoder, [texts[c] for c in bank.caption_ids], length)
    rows = torch.tensor([3, 0])
    torch.testing.assert_close(attached.text_batch(rows)["text_words"], dense[rows])
    assert words[rows].table is words.table
