"""Caption variants: hard negative captions that differ from a true caption in one word.

A video's stage-1 list of captions rarely holds one that differs from its own only in an
object's colour, so a list-wise loss never asks the re-ranker to bind a colour to its
object, and twins that differ in one word are what it gets wrong (NegCLIP, Yuksekgonul et
al. 2023, makes such negatives by swapping words with a parser). Here the corpus itself says
which words can stand in for which, with no parser and no word lists, so any language and
any annotation style work: a word may be *replaced* by another that the corpus uses between
the same two neighbours ("a large _ circle": red, blue, ...), or two such words of one caption
*exchange* places ("a red circle and a blue square" -> "a blue circle and a red square": the
same words, bound the other way). A change the frozen text tower can barely see (its
single-word embeddings nearly equal: synonyms such as "large" and "big") is not made, since
the variant may still be true.

The variants are encoded by the frozen text tower like any caption and appended to a bank's
captions as a `TokenSource` (`WithCaptionVariants`); the video->text training lists put a
caption's variants among its video's negatives.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from crosstvr_core.models.encoder import FrozenEncoder
from crosstvr_core.models.word_embeddings import caption_words
from crosstvr_core.token_bank import CaptionWords, TokenBank

START, END = "<s>", "</s>"
Context = tuple[str, str]
# (word, substitute) -> True when the two may mean the same (no negative made)
TooClose = Callable[[str, str], bool]


def word_contexts(texts: Sequence[str], min_count: int = 2) -> dict[Context, list[str]]:
    """(left neighbour, right neighbour) -> the words the corpus puts between them at least
    `min_count` times, sorted; only contexts with two or more such words are kept."""
    counts: dict[Context, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for text in texts:
        words = [START, *text.split(), END]
        for i in range(1, len(words) - 1):
            counts[(words[i - 1], words[i + 1])][words[i]] += 1
    table = {}
    for context, seen in counts.items():
        kept = sorted(word for word, n in seen.items() if n >= min_count)
        if len(kept) >= 2:
            table[context] = kept
    return table


def _context(words: list[str], i: int) -> Context:
    return (words[i - 1] if i > 0 else START, words[i + 1] if i + 1 < len(words) else END)


def caption_variant(text: str, contexts: dict[Context, list[str]], rng: np.random.Generator,
                    too_close: TooClose | None = None, exchange_share: float = 0.5
                    ) -> str | None:
    """One variant of `text`: with probability `exchange_share` (when the caption has such a
    pair) two of its words that can stand in for each other exchange places, else one word is
    replaced by another of its context. None when no change is possible."""
    words = text.split()
    options = [contexts.get(_context(words, i), []) for i in range(len(words))]

    def allowed(word: str, other: str) -> bool:
        return word != other and not (too_close is not None and too_close(word, other))

    exchanges = [(i, j) for i in range(len(words)) for j in range(i + 1, len(words))
                 if words[j] in options[i] and words[i] in options[j]
                 and allowed(words[i], words[j])]
    replacements = [(i, other) for i, choices in enumerate(options) for other in choices
                    if words[i] in choices and allowed(words[i], other)]
    if exchanges and (not replacements or rng.random() < exchange_share):
        i, j = exchanges[rng.integers(len(exchanges))]
        words[i], words[j] = words[j], words[i]
    elif replacements:
        i, other = replacements[rng.integers(len(replacements))]
        words[i] = other
    else:
        return None
    return " ".join(words)


def make_variants(texts: Sequence[str], per_caption: int, seed: int,
                  true_texts: Sequence[set[str]] | None = None,
                  too_close: TooClose | None = None, min_count: int = 2,
                  attempts: int = 8) -> list[list[str]]:
    """Up to `per_caption` distinct variants of each caption, none of them equal to a true
    caption of its video (true_texts[i]: the texts of caption i's video, default itself).
    The contexts come from `texts` themselves (word_contexts); seeded."""
    contexts = word_contexts(texts, min_count)
    rng = np.random.default_rng(seed)
    out = []
    for i, text in enumerate(texts):
        forbidden = set(true_texts[i]) if true_texts is not None else set()
        forbidden.add(text)
        made: list[str] = []
        for _ in range(attempts * per_caption):
            if len(made) == per_caption:
                break
            variant = caption_variant(text, contexts, rng, too_close)
            if variant is None:
                break
            if variant not in forbidden and variant not in made:
                made.append(variant)
        out.append(made)
    return out


def embedding_too_close(embed: Callable[[list[str]], torch.Tensor], words: Sequence[str],
                        max_similarity: float, chunk: int = 256) -> TooClose:
    """TooClose from a frozen text tower: two words whose one-word captions embed (embed:
    texts -> [N, D], `chunk` at a time) at a cosine above `max_similarity` may mean the same
    thing. Words outside `words` are never too close."""
    vocabulary = sorted(set(words))
    parts = [F.normalize(embed(vocabulary[i: i + chunk]).float().cpu(), dim=-1)
             for i in range(0, len(vocabulary), chunk)]
    unit = torch.cat(parts) if parts else torch.zeros(0, 1)
    row = {word: i for i, word in enumerate(vocabulary)}

    def too_close(word: str, other: str) -> bool:
        if word not in row or other not in row:
            return False
        return float(unit[row[word]] @ unit[row[other]]) > max_similarity

    return too_close


@dataclass(frozen=True)
class CaptionVariants:
    """Encoded variants, each with the caption id it was made from: text inputs as a bank
    stores them (eot [N, D], tokens [N, L, Wt] fp16, mask [N, L], optional words)."""

    texts: list[str]
    source_ids: list[str]
    text_eot: torch.Tensor
    text_tokens: torch.Tensor
    text_mask: torch.Tensor
    text_words: CaptionWords | None = None

    def __post_init__(self) -> None:
        n = len(self.texts)
        if not (len(self.source_ids) == n == len(self.text_eot) == len(self.text_tokens)
                == len(self.text_mask)):
            raise ValueError("CaptionVariants: texts, source ids and inputs differ in length")

    def __len__(self) -> int:
        return len(self.texts)

    def restricted_to(self, caption_ids: Sequence[str]) -> CaptionVariants:
        """The variants made from `caption_ids` only: those of a bank's training part when
        some of its videos are held out for validation."""
        keep_ids = set(caption_ids)
        keep = [i for i, source in enumerate(self.source_ids) if source in keep_ids]
        if len(keep) == len(self):
            return self
        rows = torch.tensor(keep, dtype=torch.long)
        return CaptionVariants([self.texts[i] for i in keep], [self.source_ids[i] for i in keep],
                               self.text_eot[rows], self.text_tokens[rows], self.text_mask[rows],
                               None if self.text_words is None else self.text_words[rows])

    def rows_for(self, caption_ids: Sequence[str], per_caption: int) -> torch.Tensor:
        """Per caption of a bank, the rows of up to `per_caption` of its variants [T, P],
        -1 where it has fewer."""
        mine: dict[str, list[int]] = defaultdict(list)
        for row, source in enumerate(self.source_ids):
            mine[source].append(row)
        out = torch.full((len(caption_ids), per_caption), -1, dtype=torch.long)
        for i, caption in enumerate(caption_ids):
            rows = mine.get(caption, [])[:per_caption]
            out[i, : len(rows)] = torch.tensor(rows, dtype=torch.long)
        return out

    def text_batch(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """Float32 text inputs of variant rows [B], as TokenBank.text_batch gives them."""
        return {
            "text_eot": self.text_eot[rows].float(),
            "text_tokens": self.text_tokens[rows].float(),
            "text_mask": self.text_mask[rows],
            **({} if self.text_words is None else {"text_words": self.text_words.dense(rows)}),
        }


class WithCaptionVariants:
    """A bank whose caption rows continue with the variants (row num_captions + i is
    variant i), as a TokenSource. Lists and epochs are drawn from `bank`; only reading
    goes through this. A variant counts as a caption of its source caption's video."""

    def __init__(self, bank: TokenBank, variants: CaptionVariants) -> None:
        row_of = {caption: i for i, caption in enumerate(bank.caption_ids)}
        missing = [s for s in variants.source_ids if s not in row_of]
        if missing:
            raise ValueError(f"caption variants: {len(missing)} are made from captions the bank "
                             f"does not hold, e.g. {missing[:3]}")
        if (bank.text_words is None) != (variants.text_words is None):
            raise ValueError("caption variants: the bank and its variants must both have word "
                             "embeddings or both lack them")
        self.bank, self.variants = bank, variants
        sources = torch.tensor([row_of[s] for s in variants.source_ids], dtype=torch.long)
        self.caption_video = torch.cat([bank.caption_video, bank.caption_video[sources]])

    @property
    def num_videos(self) -> int:
        return self.bank.num_videos

    @property
    def num_captions(self) -> int:
        return self.bank.num_captions + len(self.variants)

    def video_batch(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.bank.video_batch(rows)

    def text_batch(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        own = self.bank.num_captions
        is_variant = rows >= own
        if not is_variant.any():
            return self.bank.text_batch(rows)
        if is_variant.all():
            return self.variants.text_batch(rows - own)
        first = self.bank.text_batch(rows[~is_variant])
        second = self.variants.text_batch(rows[is_variant] - own)
        out = {}
        for name, value in first.items():
            merged = value.new_empty((len(rows), *value.shape[1:]))
            merged[~is_variant], merged[is_variant] = value, second[name]
            out[name] = merged
        return out


def encode_variants(encoder: FrozenEncoder, variants: Sequence[Sequence[str]],
                    source_ids: Sequence[str], length: int, with_words: bool,
                    known_words: dict[int, torch.Tensor] | None = None,
                    chunk: int = 256) -> CaptionVariants:
    """The variants of each source caption (variants[i] made from source_ids[i]) through the
    frozen text tower, stored as a bank stores captions (first `length` tokens, fp16), with
    each token's own embedding when `with_words` (caption_words; `known_words` is reused)."""
    texts = [text for made in variants for text in made]
    sources = [source for source, made in zip(source_ids, variants, strict=True)
               for _ in made]
    eots, tokens, masks = [], [], []
    for start in range(0, len(texts), chunk):
        eot, token, lengths = encoder.encode_captions(texts[start: start + chunk])
        token = token[:, :length]
        if token.shape[1] < length:
            token = F.pad(token, (0, 0, 0, length - token.shape[1]))
        eots.append(eot.cpu().half())
        tokens.append(token.cpu().half())
        masks.append(torch.arange(length)[None, :] < lengths[:, None])
    width = encoder.text_width
    return CaptionVariants(
        texts, sources,
        torch.cat(eots) if eots else torch.zeros(0, encoder.embed_dim).half(),
        torch.cat(tokens) if tokens else torch.zeros(0, length, width).half(),
        torch.cat(masks) if masks else torch.zeros(0, length, dtype=torch.bool),
        _words(encoder, texts, length, known_words) if with_words else None)


def _words(encoder: FrozenEncoder, texts: list[str], length: int,
           known: dict[int, torch.Tensor] | None) -> CaptionWords:
    if not texts:
        return CaptionWords(torch.zeros(0, length, dtype=torch.int32),
                            torch.zeros(0, encoder.embed_dim).half())
    return caption_words(encoder, texts, length, known)
