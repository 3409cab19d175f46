"""Token banks, small re-rankers and Lance indexes built from them, shared by the tests.

`token_bank` assembles a TokenBank from tensors (ids v<i> / c<i>, tokens fp16 as stored);
`random_bank` and `toy_bank` fill it with random tokens and with learnable id codes;
`write_bank_index` writes a bank into the Lance tables, as the index step would.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from crosstvr_core.config import RerankerConfig
from crosstvr_core.models.reranker import CrossTVRReranker
from crosstvr_core.storage import TokenIndex, TokenShapes
from crosstvr_core.token_bank import CaptionWords, TokenBank

FRAMES, PATCHES, LENGTH = 4, 6, 6
EMBED, VISION, TEXT = 12, 10, 8


def token_bank(video_cls: torch.Tensor, video_patches: torch.Tensor, frame_mask: torch.Tensor,
               text_eot: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor,
               caption_video: torch.Tensor, video_ids: list[str] | None = None) -> TokenBank:
    """A bank of these tensors: tokens stored fp16, ids v<i> (or `video_ids`) and c<i>."""
    num_videos, num_captions = frame_mask.shape[0], text_mask.shape[0]
    # each token's own frozen embedding (the word-timing term): random, zero at padding
    words = torch.randn(*text_mask.shape, video_cls.shape[-1],
                        generator=torch.Generator().manual_seed(num_captions))
    return TokenBank(
        video_ids=video_ids or [f"v{i}" for i in range(num_videos)],
        video_cls=video_cls.half(),
        video_patches=video_patches.half(),
        frame_mask=frame_mask,
        caption_ids=[f"c{i}" for i in range(num_captions)],
        text_eot=text_eot.half(),
        text_tokens=text_tokens.half(),
        text_mask=text_mask,
        caption_video=caption_video,
        text_words=CaptionWords.from_dense(words * text_mask[..., None]),
    )


def length_mask(lengths: torch.Tensor, length: int) -> torch.Tensor:
    """Text mask [T, L] of captions with `lengths` [T] real tokens."""
    return torch.arange(length)[None, :] < lengths[:, None]


def random_bank(
    num_videos: int = 6, captions_per_video: int = 2, seed: int = 0, offset: float = 3.0
) -> TokenBank:
    """Random fp16 tokens with an offset and scale (so standardisation has work to do),
    some padded frames and padded caption tokens."""
    gen = torch.Generator().manual_seed(seed)
    num_captions = num_videos * captions_per_video

    def tokens(*shape: int) -> torch.Tensor:
        return offset + 2.0 * torch.randn(*shape, generator=gen)

    frame_mask = torch.ones(num_videos, FRAMES, dtype=torch.bool)
    frame_mask[::2, -1] = False  # every other clip is one frame short
    lengths = torch.randint(2, LENGTH + 1, (num_captions,), generator=gen)
    return token_bank(
        tokens(num_videos, FRAMES, EMBED), tokens(num_videos, FRAMES, PATCHES, VISION),
        frame_mask, tokens(num_captions, EMBED), tokens(num_captions, LENGTH, TEXT),
        length_mask(lengths, LENGTH),
        torch.arange(num_videos).repeat_interleave(captions_per_video),
    )


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
    return token_bank(
        noise(num_videos, FRAMES, EMBED), patches,  # [V, F, P, Wv]
        torch.ones(num_videos, FRAMES, dtype=torch.bool), noise(num_captions, EMBED),
        text_code[caption_video] + noise(num_captions, LENGTH, TEXT),
        torch.ones(num_captions, LENGTH, dtype=torch.bool), caption_video,
    )


def make_model(hidden: int = 16, layers: int = 1, seed: int = 0, patches: int = PATCHES,
               **cfg) -> CrossTVRReranker:
    """A small seeded re-ranker (eval mode) for banks of these shapes (`patches` per frame)."""
    torch.manual_seed(seed)
    cfg = RerankerConfig(
        **{"hidden_size": hidden, "num_heads": 2, "num_layers": layers, "num_queries": 3,
           "num_selected_patches": 2, **cfg}
    )
    return CrossTVRReranker(cfg, EMBED, VISION, TEXT, FRAMES, patches).eval()


def write_bank_index(path: Path, bank: TokenBank, encoder_id: str = "toy-encoder",
                     split: str = "train") -> TokenIndex:
    """The bank's videos (all ok, in `split`), video tokens and captions in a Lance index
    (every patch in grid order), as the index step would write them."""
    frames, patches, vision = bank.video_patches.shape[1:]
    length, text = bank.text_tokens.shape[1:]
    shapes = TokenShapes(frames, bank.video_cls.shape[2], patches, vision, length, text)
    index = TokenIndex(path, encoder_id, shapes)
    n = bank.num_videos
    index.upsert("videos", pa.table({
        "video_id": bank.video_ids, "corpus": ["toy"] * n, "split": [split] * n,
        "uri": bank.video_ids, "content_hash": ["h"] * n, "duration": [1.0] * n,
        "fps": [8.0] * n, "width": [64] * n, "height": [64] * n, "size_bytes": [10] * n,
        "num_frames_sampled": [frames] * n, "status": ["ok"] * n, "error": [""] * n,
        "encoder_id": [encoder_id] * n,
        "indexed_at": pa.array([None] * n, pa.timestamp("us", tz="UTC")),
    }), "video_id")
    index.upsert("video_tokens", {
        "video_id": bank.video_ids, "content_hash": ["h"] * bank.num_videos,
        "encoder_id": [encoder_id] * bank.num_videos, "frame_mask": bank.frame_mask.numpy(),
        "cls": bank.video_cls.numpy(), "patches": bank.video_patches.numpy(),
    }, "video_id")
    index.upsert("captions", {
        "caption_id": bank.caption_ids,
        "video_id": [bank.video_ids[v] for v in bank.caption_video.tolist()],
        "split": [split] * bank.num_captions, "text": ["t"] * bank.num_captions,
        "meta": ["{}"] * bank.num_captions, "encoder_id": [encoder_id] * bank.num_captions,
        "eot": bank.text_eot.numpy(), "tokens": bank.text_tokens.numpy(),
        "length": bank.text_mask.sum(1).numpy().astype(np.int32),
    }, "caption_id")
    return index
