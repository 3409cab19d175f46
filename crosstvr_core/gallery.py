"""A self-contained HTML gallery of retrieval results: what stage 1 found, what the re-ranker did.

One folder (index.html + images/) that opens from disk with no server, no JavaScript and nothing
fetched from the network, so it can be attached to a run, copied, or opened on an air-gapped box.
Each hit shows its sampled frames as one PNG strip, the re-ranker's attention over frames as bars
under the strip, and (when given) its attention over the patch grid blended over each frame.
"""

from __future__ import annotations

import hashlib
import html
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

MIN_FRAME_PX = 96  # small frames (e.g. 64 px) are upscaled by an integer factor to at least this
HEAT_ALPHA = 0.65  # opacity of the heat colour where attention is at its maximum


@dataclass(frozen=True)
class GalleryHit:
    """One retrieved clip as a person should see it: frames, scores, and where the re-ranker looked.

    frames: uint8 [F, S, S, 3]; frame_weights: [F] attention over frames (sums to 1 over the real
    frames); patch_heat: [F, P] attention over each frame's sqrt(P) x sqrt(P) patch grid.
    """

    video_id: str
    path: str
    frames: np.ndarray
    stage1_score: float
    stage2_score: float | None
    fused_score: float | None
    is_truth: bool = False
    frame_weights: np.ndarray | None = None
    patch_heat: np.ndarray | None = None

    def __post_init__(self) -> None:
        _validate_hit(self)


@dataclass(frozen=True)
class GalleryQuery:
    """One text query with its stage-1 top-k (`before`) and re-ranked list (`after`, None when off)."""

    query_id: str
    text: str
    before: list[GalleryHit]
    after: list[GalleryHit] | None
    note: str = ""


def _validate_hit(hit: GalleryHit) -> None:
    who = f"hit {hit.video_id!r}"
    frames = hit.frames
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
        raise ValueError(f"{who}: frames must be a uint8 numpy array, got "
                         f"{getattr(frames, 'dtype', type(frames).__name__)}")
    if frames.ndim != 4 or frames.shape[0] < 1 or frames.shape[1] != frames.shape[2] \
            or frames.shape[3] != 3 or frames.shape[1] < 1:
        raise ValueError(f"{who}: frames must be [F, S, S, 3] (square RGB), got {frames.shape}")
    num_frames = frames.shape[0]
    if hit.frame_weights is not None:
        weights = np.asarray(hit.frame_weights)
        if weights.shape != (num_frames,):
            raise ValueError(f"{who}: frame_weights must have length F={num_frames} (one per "
                             f"frame), got shape {weights.shape}")
        if not np.isfinite(weights).all():
            raise ValueError(f"{who}: frame_weights contain NaN/inf")
    if hit.patch_heat is not None:
        heat = np.asarray(hit.patch_heat)
        grid = math.isqrt(heat.shape[1]) if heat.ndim == 2 else 0
        if heat.ndim != 2 or heat.shape[0] != num_frames or grid < 1 or grid * grid != heat.shape[1]:
            raise ValueError(f"{who}: patch_heat must be [F={num_frames}, P] with P a square "
                             f"number (the patch grid), got shape {heat.shape}")
        if not np.isfinite(heat).all():
            raise ValueError(f"{who}: patch_heat contains NaN/inf")


def _upscale_factor(size: int) -> int:
    return max(1, math.ceil(MIN_FRAME_PX / size))


def frame_strip(frames: np.ndarray) -> np.ndarray:
    """The frames side by side, upscaled nearest-neighbour so small frames stay crisp: [H, F*H, 3]."""
    factor = _upscale_factor(frames.shape[1])
    big = frames.repeat(factor, axis=1).repeat(factor, axis=2)
    return np.concatenate(list(big), axis=1)


def heat_strip(frames: np.ndarray, patch_heat: np.ndarray) -> np.ndarray:
    """The frame strip with each frame's patch attention blended over it, red (low) to yellow (high).

    Heat is stretched per frame from its least to its most attended patch (the least keeps the
    frame's own colours, the most is fully coloured): attention over 16 to 49 patches is often
    nearly flat, and scaling by the peak alone would tint the whole frame.
    """
    strip = frame_strip(frames).astype(np.float32)
    side = strip.shape[0]
    grid = math.isqrt(patch_heat.shape[1])
    heat = np.clip(np.asarray(patch_heat, dtype=np.float32), 0.0, None).reshape(-1, grid, grid)
    low = heat.min(axis=(1, 2), keepdims=True)
    spread = heat.max(axis=(1, 2), keepdims=True) - low
    heat = np.divide(heat - low, spread, out=np.zeros_like(heat), where=spread > 0)
    maps = [np.asarray(Image.fromarray(h).resize((side, side), Image.BILINEAR))
            for h in heat]
    level = np.clip(np.concatenate(maps, axis=1), 0.0, 1.0)[..., None]
    colour = np.concatenate([np.full_like(level, 255.0), 255.0 * level, np.zeros_like(level)], -1)
    alpha = HEAT_ALPHA * level
    return np.round(strip * (1.0 - alpha) + colour * alpha).astype(np.uint8)


class _ImageWriter:
    """Writes each distinct strip once per gallery: the same clip in several lists shares a file."""

    def __init__(self, images_dir: Path) -> None:
        self.images_dir = images_dir
        self.written: dict[tuple[str, str, str], str] = {}

    def save(self, video_id: str, kind: str, pixels: np.ndarray) -> str:
        # Content digest: the same clip's plain strip is shared; its query-dependent heat is not.
        digest = hashlib.sha1(pixels.tobytes() + str(pixels.shape).encode()).hexdigest()[:12]
        key = (video_id, kind, digest)
        if key not in self.written:
            stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", video_id)[:60].strip("._") or "video"
            name = f"{stem}-{kind}-{digest}.png"
            Image.fromarray(pixels).save(self.images_dir / name)
            self.written[key] = f"images/{name}"
        return self.written[key]


_CSS = """
body{font-family:system-ui,sans-serif;margin:16px;color:#222;background:#fafafa}
h1{margin:0 0 4px}.subtitle{color:#555;margin:0 0 16px}
.query{background:#fff;border:1px solid #ddd;border-radius:6px;padding:12px;margin:0 0 20px}
.qtext{font-size:1.15em;margin:0 0 4px}.meta{color:#666;font-size:.9em;margin:0 0 8px}
.note{background:#fff3cd;padding:1px 6px;border-radius:3px}
.stages{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:12px}
.stage h4{margin:4px 0}.stage ol{list-style:none;padding:0;margin:0}
.hit{border:1px solid #ddd;border-radius:4px;padding:6px;margin:0 0 8px;overflow:hidden}
.hit.truth{border:3px solid #1a9c3c;background:#effaf1}
.truth-label{background:#1a9c3c;color:#fff;font-weight:bold;padding:1px 6px;border-radius:3px}
.rank{font-weight:bold;margin-right:6px}.path{color:#666;font-size:.8em;word-break:break-all}
.strip{max-width:100%;margin:4px 0 0}.strip img{display:block;width:100%;height:auto}
.weights{display:flex;height:14px;align-items:flex-end;background:#eee}
.weights span{flex:1;background:#3367d6;border-left:1px solid #fff;min-height:1px}
.score{display:flex;align-items:center;font-size:.8em;margin:2px 0}
.score .name{width:64px}.score .track{flex:1;background:#eee;height:9px;margin:0 6px}
.score .bar{height:9px}.score .value{width:64px;text-align:right;font-family:monospace}
.s1{background:#888}.s2{background:#d66b33}.fused{background:#7a3fbf}
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _score_ranges(query: GalleryQuery) -> dict[str, tuple[float, float]]:
    """Per score kind, min and max over all of the query's hits, so both columns share one scale."""
    hits = query.before + (query.after or [])
    ranges = {}
    for attr in ("stage1_score", "stage2_score", "fused_score"):
        values = [float(getattr(h, attr)) for h in hits if getattr(h, attr) is not None]
        if values:
            ranges[attr] = (min(values), max(values))
    return ranges


def _score_row(label: str, css: str, value: float | None, span: tuple[float, float] | None) -> str:
    if value is None or span is None:
        return (f'<div class="score"><span class="name">{label}</span><span class="track"></span>'
                f'<span class="value">&ndash;</span></div>')
    lo, hi = span
    width = 100.0 if hi <= lo else 3.0 + 97.0 * (float(value) - lo) / (hi - lo)
    return (f'<div class="score"><span class="name">{label}</span><span class="track">'
            f'<div class="bar {css}" style="width:{width:.1f}%"></div></span>'
            f'<span class="value">{float(value):.4f}</span></div>')


def _strip_html(src: str, alt: str, hit: GalleryHit, css: str) -> str:
    side = hit.frames.shape[1] * _upscale_factor(hit.frames.shape[1])
    width = side * hit.frames.shape[0]
    return (f'<div class="strip {css}" style="width:{width}px">'
            f'<img src="{_e(src)}" width="{width}" height="{side}" alt="{_e(alt)}">')


def _hit_html(hit: GalleryHit, rank: int, ranges: dict, images: _ImageWriter) -> str:
    src = images.save(hit.video_id, "frames", frame_strip(hit.frames))
    num_frames = hit.frames.shape[0]
    parts = [f'<li class="hit{" truth" if hit.is_truth else ""}">',
             f'<div><span class="rank">#{rank}</span><b>{_e(hit.video_id)}</b> ',
             '<span class="truth-label">ground truth</span>' if hit.is_truth else "",
             f'</div><div class="path">{_e(hit.path)}</div>',
             _strip_html(src, f"{num_frames} frames of {hit.video_id}", hit, "frames")]
    if hit.frame_weights is not None:
        weights = np.asarray(hit.frame_weights, dtype=np.float64)
        peak = max(float(weights.max()), 1e-12)
        bars = "".join(f'<span style="height:{100.0 * max(w, 0.0) / peak:.1f}%" '
                       f'title="frame {i}: {w:.3f}"></span>' for i, w in enumerate(weights))
        parts.append(f'<div class="weights" title="re-ranker attention over frames">{bars}</div>')
    parts.append("</div>")
    if hit.patch_heat is not None:
        heat_src = images.save(hit.video_id, "heat", heat_strip(hit.frames, hit.patch_heat))
        parts += [_strip_html(heat_src, f"re-ranker patch attention over {hit.video_id}", hit,
                              "heat"), "</div>"]
    parts += [_score_row("stage 1", "s1", hit.stage1_score, ranges.get("stage1_score")),
              _score_row("stage 2", "s2", hit.stage2_score, ranges.get("stage2_score")),
              _score_row("fused", "fused", hit.fused_score, ranges.get("fused_score")), "</li>"]
    return "".join(parts)


def _query_html(query: GalleryQuery, images: _ImageWriter) -> str:
    ranges = _score_ranges(query)
    columns = [("stage 1", query.before)]
    if query.after is not None:
        columns.append(("re-ranked", query.after))
    note = f' &middot; <span class="note">{_e(query.note)}</span>' if query.note else ""
    out = [f'<section class="query" id="q-{_e(query.query_id)}">',
           f'<p class="qtext">&ldquo;{_e(query.text)}&rdquo;</p>',
           f'<p class="meta">query {_e(query.query_id)}{note}</p><div class="stages">']
    for label, hits in columns:
        items = "".join(_hit_html(h, r, ranges, images) for r, h in enumerate(hits, start=1))
        out.append(f'<div class="stage"><h4>{label}</h4><ol>{items or "<li>no hits</li>"}</ol></div>')
    out.append("</div></section>")
    return "".join(out)


def _page_html(queries, title, subtitle, sections, images: _ImageWriter) -> str:
    head = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f"<style>{_CSS}</style></head><body><h1>{_e(title)}</h1>"
            + (f'<p class="subtitle">{_e(subtitle)}</p>' if subtitle else ""))
    if sections is None:
        body = "".join(_query_html(q, images) for q in queries)
    else:
        body = "".join(f'<h2 class="section">{_e(name)} ({len(qs)})</h2>'
                       + ("".join(_query_html(q, images) for q in qs) or "<p>none</p>")
                       for name, qs in sections.items())
    return head + body + "</body></html>\n"


def write_gallery(queries: list[GalleryQuery], out_dir: Path, title: str, subtitle: str = "",
                  sections: dict[str, list[GalleryQuery]] | None = None) -> Path:
    """Write out_dir/index.html and out_dir/images/*.png, replacing an earlier gallery there.

    Everything is built in a staging folder inside out_dir, then moved in by rename, so a crash
    leaves either the old or the new index.html, never a half-written one. With `sections`, the
    page groups those queries under their headings instead of listing `queries`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".gallery-staging-", dir=out_dir))
    try:
        (staging / "images").mkdir()
        page = _page_html(queries, title, subtitle, sections, _ImageWriter(staging / "images"))
        (staging / "index.html").write_text(page, encoding="utf-8")
        old_images = staging / "old-images"
        if (out_dir / "images").exists():
            os.replace(out_dir / "images", old_images)
        os.replace(staging / "images", out_dir / "images")
        os.replace(staging / "index.html", out_dir / "index.html")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir / "index.html"
