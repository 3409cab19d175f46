"""Token tables of random tokens in any encoder's shapes, for the scale benchmarks.

Speed and memory at scale depend on the shapes and the row count, not on what the tokens
say, so the scale benchmarks (search over a million videos, training from a table larger
than memory) write random fp16 tokens in the real table layout, through the same storage
module the index step uses, and then run the real pipeline functions on them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa

from crosstvr_core.storage import TokenIndex, TokenShapes, fixed_list

_CHUNK_BYTES = 256 * 2**20  # random tokens generated per write


def write_random_token_index(uri: str, encoder_id: str, shapes: TokenShapes, videos: int,
                             split: str | None = None, captions_per_video: int = 0,
                             seed: int = 0, compact: bool = True,
                             progress: Callable[[int], None] | None = None) -> TokenIndex:
    """An index of `videos` ok videos ("v0000000", ...) with random tokens, in `split`, each
    with `captions_per_video` captions of random tokens ("<video>#<i>"); written in chunks of
    about 256 MB of tokens, then compacted as the index step leaves a table (`compact=False`
    keeps the appends' files: with wide rows they are large already, and compaction would
    rewrite the whole table once more). `progress(n)` after each chunk, n = videos written
    so far."""
    index = TokenIndex(uri, encoder_id, shapes)
    rng = np.random.default_rng(seed)
    f, d, p, w = shapes.num_frames, shapes.embed_dim, shapes.num_patches, shapes.vision_width
    chunk = max(1, _CHUNK_BYTES // (2 * f * (d + p * w)))
    for start in range(0, videos, chunk):
        n = min(chunk, videos - start)
        ids = [f"v{start + i:07d}" for i in range(n)]
        index.video_tokens.add(pa.table({
            "video_id": ids, "content_hash": ids, "encoder_id": [encoder_id] * n,
            "frame_mask": pa.FixedSizeListArray.from_arrays(pa.array(np.ones(n * f, bool)), f),
            "cls": fixed_list(_random(rng, (n, f * d))),
            "patches": fixed_list(_random(rng, (n, f * p * w))),
            "patch_index": fixed_list(np.tile(np.arange(p, dtype=np.int16), (n, f)), np.int16),
        }, schema=index.video_tokens.schema))
        _add_videos(index, ids, split)
        if captions_per_video:
            _add_captions(index, ids, split, captions_per_video, rng)
        if progress:
            progress(start + n)
    if compact:
        index.compact()  # as the index step leaves it: files merged, ids indexed
    return index


def _random(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32).astype(np.float16)


def _add_videos(index: TokenIndex, ids: list[str], split: str | None) -> None:
    schema = index.videos.schema
    columns = {name: [None] * len(ids) for name in schema.names}
    columns.update(video_id=ids, uri=[f"/videos/{i}.mp4" for i in ids], status=["ok"] * len(ids),
                   split=[split] * len(ids))
    index.videos.add(pa.table(columns, schema=schema))


def _add_captions(index: TokenIndex, ids: list[str], split: str | None, per_video: int,
                  rng: np.random.Generator) -> None:
    s, n = index.shapes, len(ids) * per_video
    video_ids = [vid for vid in ids for _ in range(per_video)]
    index.captions.add(pa.table({
        "caption_id": [f"{vid}#{i % per_video}" for i, vid in enumerate(video_ids)],
        "video_id": video_ids, "split": [split] * n, "text": ["random tokens"] * n,
        "meta": ["{}"] * n, "encoder_id": [index.encoder_id] * n,
        "eot": fixed_list(_random(rng, (n, s.embed_dim))),
        "tokens": fixed_list(_random(rng, (n, s.context_length * s.text_width))),
        "length": pa.array(rng.integers(4, s.context_length + 1, n), pa.int32()),
    }, schema=index.captions.schema))
