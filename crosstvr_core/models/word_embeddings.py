"""Each caption token's own frozen embedding: the token alone, through the frozen text tower.

CLIP-style encoders place a single word ("red", "circle", "dog") near the frames that show
it, so the frozen similarity of a caption word to each frame says *when* in a clip that
word is seen, with no training and nothing to memorise. The re-ranker's word-timing term
compares that observed time with the time its text side expects from the caption ("A,
then B": A early). The token features cached for stage 2 cannot give this: a last-layer
token has read its whole left context, and the input embedding is not in the image space.

Rows line up with the cached token features: the same tokenizer on the same text, start
and end markers and padding at zero.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from crosstvr_core.models.encoder import FrozenEncoder
from crosstvr_core.token_bank import CaptionWords, TokenBank

_ENCODE_CHUNK = 512


def _special_ids(tokenizer) -> set[int]:
    inner = getattr(tokenizer, "tokenizer", None)  # open_clip's HFTokenizer wraps one
    ids = getattr(tokenizer, "all_special_ids", None) or getattr(inner, "all_special_ids", [])
    return {int(i) for i in ids} | {0}


def _decode(tokenizer, token_id: int) -> str:
    decode = getattr(tokenizer, "decode", None) or tokenizer.tokenizer.decode
    return decode([token_id]).strip()


def single_token_embeddings(encoder: FrozenEncoder, token_ids: list[int]) -> torch.Tensor:
    """Unit-norm frozen embeddings [N, D] of token_ids, each encoded as a one-word caption
    (the token decoded to text and tokenized again, so any open_clip tokenizer works); a
    special token, or one that decodes to nothing, gets zeros."""
    specials = _special_ids(encoder.tokenizer)
    words = [None if t in specials else _decode(encoder.tokenizer, t) or None for t in token_ids]
    out = torch.zeros(len(token_ids), encoder.embed_dim)
    todo = [i for i, word in enumerate(words) if word]
    for start in range(0, len(todo), _ENCODE_CHUNK):
        chunk = todo[start: start + _ENCODE_CHUNK]
        eot, _, _ = encoder.encode_captions([words[i] for i in chunk])
        out[chunk] = F.normalize(eot.float(), dim=-1).cpu()
    return out


def caption_words(encoder: FrozenEncoder, texts: list[str], length: int,
                  known: dict[int, torch.Tensor] | None = None) -> CaptionWords:
    """Per caption and token position (the first `length`), that token's frozen embedding,
    as CaptionWords (one table row per distinct token); each distinct token is encoded once
    (and not at all when it is in `known`, token id -> embedding, which this call extends)."""
    ids = encoder.tokenize(list(texts))[:, :length].long()  # [C, L]
    if ids.shape[1] < length:
        ids = F.pad(ids, (0, length - ids.shape[1]))
    vocabulary, where = torch.unique(ids, return_inverse=True)
    known = {} if known is None else known
    new = [t for t in vocabulary.tolist() if t not in known]
    known.update(zip(new, single_token_embeddings(encoder, new), strict=True))
    table = torch.stack([known[t] for t in vocabulary.tolist()])  # [U, D]
    return CaptionWords(where.int(), table.half())


def caption_word_embeddings(encoder: FrozenEncoder, texts: list[str], length: int,
                            known: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
    """caption_words as dense float32 [C, length, D] (a batch of search queries)."""
    return caption_words(encoder, texts, length, known).dense()


def attach_word_embeddings(bank: TokenBank, encoder: FrozenEncoder, texts: dict[str, str],
                           known: dict[int, torch.Tensor] | None = None) -> TokenBank:
    """`bank` with text_words: its captions' (caption_id -> text in `texts`) token
    embeddings, aligned with its cached token features (`known`: caption_words)."""
    missing = [c for c in bank.caption_ids if c not in texts]
    if missing:
        raise ValueError(f"word embeddings: {len(missing)} captions have no text, e.g. "
                         f"{missing[:3]}")
    words = caption_words(encoder, [texts[c] for c in bank.caption_ids],
                          bank.text_tokens.shape[1], known)
    return dataclasses.replace(bank, text_words=words)
