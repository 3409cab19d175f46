"""What the HTML gallery (gallery.py) shows, gathered from an index: frames, scores, attention.

The index keeps tokens, not pixels, so a clip's frames are decoded again for display, with the
same uniform sampling the index used (an index built with `sampling.method: segment` drew one
random frame per segment: the gallery then shows the segments' uniform frames instead). A clip
that no longer decodes (moved, deleted, damaged since indexing) is shown as grey frames with a
note, so one bad file never costs the whole gallery.

`two_stage_gallery` picks the evaluation queries worth a look (the re-ranker's biggest fixes
and breaks, and twins it ranks above the truth) and builds them with the re-ranker's attention
maps (CrossTVRReranker.attention_maps; an ensemble shows its first member's).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import torch

from crosstvr_core.data.video_decode import VideoDecodeError, decode_uniform_frames
from crosstvr_core.gallery import GalleryHit, GalleryQuery
from crosstvr_core.models.reranker_ensemble import Reranker
from crosstvr_core.synthetic import video_key
from crosstvr_core.token_bank import TokenBank

log = logging.getLogger(__name__)

GREY = 128  # the pixel value of frames that could not be decoded
# ffmpeg subprocesses at once, one decoder thread each (the Python threads only wait on
# pipes): a small clip costs ~0.12 CPU-s, mostly ffprobe and ffmpeg starting up
DECODE_WORKERS = min(4, os.cpu_count() or 1)


class GalleryVideo(NamedTuple):
    """One hit to show: its scores (None where the re-ranker did not score it) and whether it
    is the query's ground truth. A plain 6-tuple in this order works as well."""

    video_id: str
    uri: str
    stage1: float
    stage2: float | None
    fused: float | None
    is_truth: bool


def clip_frames_with_note(uri: str, num_frames: int, size: int) -> tuple[np.ndarray, str]:
    """(uint8 [F, S, S, 3] frames, "") for a clip that decodes; grey frames and a note
    naming the problem for one that does not (a missing file, a damaged one)."""
    try:
        frames, _mask, _probe = decode_uniform_frames(uri, num_frames, size, strict=False,
                                                      threads=1)
        return frames, ""
    except (VideoDecodeError, OSError) as exc:
        grey = np.full((num_frames, size, size, 3), GREY, dtype=np.uint8)
        return grey, f"not decodable now, grey frames shown ({exc})"


def clip_frames(uri: str, num_frames: int, size: int) -> np.ndarray:
    """The frames the index sampled from `uri`, decoded again for display: uint8 [F, S, S, 3]
    (grey frames, and a logged warning, for a clip that no longer decodes)."""
    frames, note = clip_frames_with_note(uri, num_frames, size)
    if note:
        log.warning("gallery: %s: %s", uri, note)
    return frames


FrameCache = dict[str, tuple[np.ndarray, str]]


def decode_clips(uris: Sequence[str], num_frames: int, size: int,
                 cache: FrameCache | None = None, workers: int = DECODE_WORKERS) -> FrameCache:
    """Decode every distinct uri not in `cache` yet (a few at once) into it; returns it."""
    cache = {} if cache is None else cache
    todo = list(dict.fromkeys(u for u in uris if u not in cache))
    if not todo:
        return cache
    with ThreadPoolExecutor(max(1, min(workers, len(todo)))) as pool:
        decoded = pool.map(lambda u: clip_frames_with_note(u, num_frames, size), todo)
        for uri, (frames, note) in zip(todo, decoded, strict=True):
            if note:
                log.warning("gallery: %s: %s", uri, note)
            cache[uri] = (frames, note)
    return cache


def heat_on_grid(patch_heat: np.ndarray, patch_index: np.ndarray | None,
                 grid_patches: int | None) -> np.ndarray | None:
    """Heat [F, P] over the stored patches -> [F, G] over the encoder's square patch grid.

    An index that keeps only some patches per frame (index.keep_patches) stores where each
    one sits in the grid (`patch_index` [F, P], `grid_patches` G). Without that, the stored
    patches are the grid; heat that cannot be placed on a square grid gives None."""
    if patch_index is not None and grid_patches:
        grid = np.zeros((patch_heat.shape[0], grid_patches), dtype=patch_heat.dtype)
        np.put_along_axis(grid, patch_index.astype(np.int64), patch_heat, axis=1)
        patch_heat = grid
    side = int(np.sqrt(patch_heat.shape[1]))
    return patch_heat if side * side == patch_heat.shape[1] else None


def gallery_hits(model: Reranker | None, query_tokens: torch.Tensor,
                 query_mask: torch.Tensor, videos: Sequence[GalleryVideo | tuple],
                 video_tokens: dict[str, torch.Tensor], frame_size: int, *,
                 frame_cache: FrameCache | None = None,
                 grid_patches: int | None = None,
                 query_eot: torch.Tensor | None = None,
                 query_words: torch.Tensor | None = None) -> list[GalleryHit]:
    """One GalleryHit per video, in order: frames decoded at `frame_size` (each uri once; a
    shared `frame_cache` spans calls), and, with a model, where it looked for this query.

    query_tokens [L, Wt], query_mask [L]: the caption's tokens (query_eot [D]: its frozen
    embedding, which a re-ranker with the caption summary reads; query_words [L, D]: its
    tokens' own frozen embeddings, for the word-timing term); video_tokens: "video_cls"
    [N, F, D], "video_patches" [N, F, P, Wv], "frame_mask" [N, F] aligned with `videos`, and
    optionally "patch_index" [N, F, P] with `grid_patches` (see heat_on_grid).
    """
    videos = [GalleryVideo(*v) for v in videos]
    if not videos:
        return []
    frame_mask = video_tokens["frame_mask"].bool()
    if frame_mask.shape[0] != len(videos):
        raise ValueError(f"gallery_hits: {len(videos)} videos, tokens of {frame_mask.shape[0]}")
    num_frames = frame_mask.shape[1]
    cache = decode_clips([v.uri for v in videos], num_frames, frame_size, frame_cache)

    weights = heat = None
    if model is not None:
        device = next(model.parameters()).device
        n = len(videos)
        weights, heat = model.attention_maps(
            query_tokens.float().to(device).expand(n, -1, -1),
            query_mask.bool().to(device).expand(n, -1),
            video_tokens["video_cls"].float().to(device),
            video_tokens["video_patches"].float().to(device),
            frame_mask.to(device),
            None if query_eot is None else query_eot.float().to(device).expand(n, -1),
            None if query_words is None else query_words.float().to(device).expand(n, -1, -1))
        weights, heat = weights.cpu().numpy(), heat.cpu().numpy()
    patch_index = video_tokens.get("patch_index")

    hits = []
    for row, video in enumerate(videos):
        frames, note = cache[video.uri]
        row_heat = None
        if heat is not None:
            row_heat = heat_on_grid(
                heat[row], None if patch_index is None else patch_index[row].numpy(),
                grid_patches)
        hits.append(GalleryHit(
            video_id=video.video_id, path=f"{video.uri} ({note})" if note else video.uri,
            frames=frames, stage1_score=float(video.stage1),
            stage2_score=None if video.stage2 is None else float(video.stage2),
            fused_score=None if video.fused is None else float(video.fused),
            is_truth=bool(video.is_truth),
            frame_weights=None if weights is None else weights[row],
            patch_heat=row_heat))
    return hits


# --------------------------------------------------------------------------- evaluation gallery


def pick_changed_queries(before: np.ndarray, after: np.ndarray, shown: int, count: int
                         ) -> tuple[list[int], list[int]]:
    """The queries the re-ranker fixed most and broke most, from the truth's 0-based rank
    per query before [T] and after [T] re-ranking.

    fixed: largest before - after, with the truth among the `shown` hits after (so it is on
    the page), nearest the top first on ties; broken: largest after - before, the truth among
    the `shown` hits before.
    """
    before, after = np.asarray(before), np.asarray(after)
    gain = before - after
    fixed = [i for i in np.lexsort((after, -gain)) if gain[i] > 0 and after[i] < shown]
    broken = [i for i in np.lexsort((before, gain)) if gain[i] < 0 and before[i] < shown]
    return [int(i) for i in fixed[:count]], [int(i) for i in broken[:count]]


def pick_twin_failures(fused: torch.Tensor, caption_video: torch.Tensor, video_ids: list[str],
                       metas: list[dict], count: int) -> dict[str, list[tuple[int, int]]]:
    """Per twin factor (caption meta `twin_<factor>`, synthetic.caption_rows): up to `count`
    (caption row, twin column) pairs where the two-stage score `fused` [T, V] ranks the
    one-factor twin above the caption's own video; near misses (truth ranked highest) first.
    Twins that are not among `video_ids` are skipped."""
    column = {video_key(v): j for j, v in enumerate(video_ids)}
    fused = fused.float().cpu().numpy()
    found: dict[str, list[tuple[int, int, int]]] = {}
    for row, meta in enumerate(metas):
        truth = int(caption_video[row])
        for key, twin in sorted(meta.items()):
            if not key.startswith("twin_") or not twin or video_key(str(twin)) not in column:
                continue
            twin_col = column[video_key(str(twin))]
            if fused[row, twin_col] > fused[row, truth]:
                truth_rank = _rank(fused[row], truth)
                found.setdefault(key.removeprefix("twin_"), []).append((truth_rank, row, twin_col))
    return {factor: [(row, col) for _, row, col in sorted(hits)[:count]]
            for factor, hits in sorted(found.items())}


def _rank(scores: torch.Tensor | np.ndarray, column: int) -> int:
    """0-based rank of `column` in one row of scores (ties: counted below)."""
    return int((scores > scores[column]).sum())


@torch.no_grad()
def _stage2_scores(model: Reranker, text: dict[str, torch.Tensor],
                   video_tokens: dict[str, torch.Tensor], fusion_score: str) -> torch.Tensor:
    """The re-ranker's score [N] of one caption (text: batch of 1) with N videos, in eval
    mode as evaluation scores it (sigmoid of the logit when fusion_score is "prob")."""
    device = next(model.parameters()).device
    n = video_tokens["frame_mask"].shape[0]
    was_training = model.training
    try:
        logits = model.eval()(
            text["text_tokens"].to(device).expand(n, -1, -1),
            text["text_mask"].to(device).expand(n, -1),
            *(video_tokens[name].to(device)
              for name in ("video_cls", "video_patches", "frame_mask")),
            text_eot=text["text_eot"].to(device).expand(n, -1),
            text_words=(text["text_words"].to(device).expand(n, -1, -1)
                        if "text_words" in text else None)).float().cpu()
    finally:
        model.train(was_training)
    return torch.sigmoid(logits) if fusion_score == "prob" else logits


def two_stage_gallery(model: Reranker, bank: TokenBank, stage1_sim: torch.Tensor,
                      fused_t2v: torch.Tensor, ranks: dict[str, np.ndarray], metas: list[dict],
                      uris: dict[str, str], texts: dict[str, str], *, top_k: int,
                      fusion_weight: float, fusion_score: str, frame_size: int,
                      shown: int = 5, num_changed: int = 4, num_twins: int = 2,
                      grid_patches: int | None = None, patch_index: torch.Tensor | None = None,
                      ) -> dict[str, list[GalleryQuery]]:
    """Gallery sections for a text->video evaluation (pipeline.evaluate_two_stage's outputs).

    Sections: the `num_changed` queries the re-ranker fixed most and broke most
    (pick_changed_queries on ranks "stage 1" / "two-stage"), and per twin factor
    `num_twins` queries whose twin it ranks above the truth. Each query shows the stage-1 top
    `shown` (before) and the two-stage top `shown` (after). A hit among the stage-1 top
    `top_k` (what the re-ranker scores) gets its stage-2 score (sigmoid of the logit when
    fusion_score is "prob") and fused score stage1 + fusion_weight * stage2 (without the
    lift that keeps candidates first in `fused_t2v`); every hit gets the attention maps.
    uris / texts: video id -> file, caption id -> text; patch_index [V, F, P] aligned with
    the bank's videos, for an index that keeps some patches (see heat_on_grid).

    The model runs on one torch thread here: batches of ~10 pairs gain nothing from more,
    and spinning threads on busy cores made them 50x slower (0.7 s instead of 0.01 s each).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _two_stage_gallery(
            model, bank, stage1_sim, fused_t2v, ranks, metas, uris, texts, top_k=top_k,
            fusion_weight=fusion_weight, fusion_score=fusion_score, frame_size=frame_size,
            shown=shown, num_changed=num_changed, num_twins=num_twins,
            grid_patches=grid_patches, patch_index=patch_index)
    finally:
        torch.set_num_threads(threads)


def _two_stage_gallery(model: Reranker, bank: TokenBank, stage1_sim: torch.Tensor,
                       fused_t2v: torch.Tensor, ranks: dict[str, np.ndarray],
                       metas: list[dict], uris: dict[str, str], texts: dict[str, str], *,
                       top_k: int, fusion_weight: float, fusion_score: str, frame_size: int,
                       shown: int, num_changed: int, num_twins: int,
                       grid_patches: int | None, patch_index: torch.Tensor | None,
                       ) -> dict[str, list[GalleryQuery]]:
    sim = stage1_sim.float()
    k = min(top_k, bank.num_videos, bank.num_captions)  # as evaluate_two_stage
    fixed, broken = pick_changed_queries(ranks["stage 1"], ranks["two-stage"], shown, num_changed)
    twins = pick_twin_failures(fused_t2v, bank.caption_video, bank.video_ids, metas, num_twins)

    def shown_columns(scores: torch.Tensor) -> list[int]:
        return scores.topk(min(shown, scores.numel())).indices.tolist()

    wanted = [*fixed, *broken, *(row for pairs in twins.values() for row, _ in pairs)]
    columns_of = {row: list(dict.fromkeys(shown_columns(sim[row]) + shown_columns(fused_t2v[row])))
                  for row in wanted}
    num_frames = bank.frame_mask.shape[1]
    cache = decode_clips([uris[bank.video_ids[c]] for cols in columns_of.values() for c in cols],
                         num_frames, frame_size)

    built: dict[int, tuple[list[GalleryHit], list[GalleryHit]]] = {}

    def build(row: int, note: str) -> GalleryQuery:
        """Caption `row` as a gallery query (its hits built once, whatever section asks)."""
        if row not in built:
            columns = columns_of[row]
            rows = torch.tensor(columns)
            video_tokens = bank.video_batch(rows)
            if patch_index is not None:
                video_tokens["patch_index"] = patch_index[rows]
            text = bank.text_batch(torch.tensor([row]))
            stage2 = _stage2_scores(model, text, video_tokens, fusion_score)
            candidates = set(sim[row].topk(k).indices.tolist())
            truth = int(bank.caption_video[row])
            videos = []
            for j, column in enumerate(columns):
                scored = column in candidates  # the re-ranker only scores these
                s1 = float(sim[row, column])
                s2 = float(stage2[j]) if scored else None
                videos.append(GalleryVideo(
                    bank.video_ids[column], uris[bank.video_ids[column]], s1, s2,
                    s1 + fusion_weight * s2 if scored else None, column == truth))
            hits = dict(zip(columns, gallery_hits(
                model, text["text_tokens"][0], text["text_mask"][0], videos, video_tokens,
                frame_size, frame_cache=cache, grid_patches=grid_patches,
                query_eot=text["text_eot"][0], query_words=text.get("text_words", [None])[0]),
                strict=True))
            built[row] = ([hits[c] for c in shown_columns(sim[row])],
                          [hits[c] for c in shown_columns(fused_t2v[row])])
        caption_id = bank.caption_ids[row]
        before, after = built[row]
        return GalleryQuery(query_id=caption_id, text=texts.get(caption_id, caption_id),
                            before=before, after=after, note=note)

    def moved(row: int) -> str:
        return (f"truth #{int(ranks['stage 1'][row]) + 1} at stage 1, "
                f"#{int(ranks['two-stage'][row]) + 1} after re-ranking")

    sections = {"fixed by the re-ranker": [build(r, moved(r)) for r in fixed],
                "broken by the re-ranker": [build(r, moved(r)) for r in broken]}
    for factor, pairs in twins.items():
        sections[f"{factor} twin ranked above the truth"] = [
            build(row, f"{factor} twin {bank.video_ids[col]} "
                       f"#{_rank(fused_t2v[row], col) + 1}, truth "
                       f"#{_rank(fused_t2v[row], int(bank.caption_video[row])) + 1} "
                       "after re-ranking")
            for row, col in pairs]
    return sections
