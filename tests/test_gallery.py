"""The HTML retrieval gallery: files, escaping, validation, and a real headless Chromium render."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crosstvr_core.gallery import (
    GalleryHit,
    GalleryQuery,
    frame_strip,
    heat_strip,
    write_gallery,
)

FRAMES, SIDE = 4, 64
HOSTILE = "a dog <script>alert('x')</script> & \"quoted\" runs"
# Saturated, far-apart colours: each clip's frames are solid squares with an inset of another colour.
PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (0, 128, 128), (128, 0, 0)]


def clip_frames(index: int) -> np.ndarray:
    frames = np.zeros((FRAMES, SIDE, SIDE, 3), dtype=np.uint8)
    for f in range(FRAMES):
        frames[f] = PALETTE[(index + f) % len(PALETTE)]
        frames[f, 20:44, 20:44] = PALETTE[(index + f + 5) % len(PALETTE)]
    return frames


def hit(index: int, score: float, *, truth=False, reranked=False, heat=False) -> GalleryHit:
    weights = np.array([0.1, 0.6, 0.2, 0.1]) if reranked else None
    patch_heat = None
    if heat:
        patch_heat = np.zeros((FRAMES, 16))
        patch_heat[:, 0] = 1.0  # top-left patch of every frame
    return GalleryHit(
        video_id=f"video{index}", path=f"/data/clips/video{index} <&>.mp4",
        frames=clip_frames(index), stage1_score=score,
        stage2_score=score * 2 if reranked else None, fused_score=score * 3 if reranked else None,
        is_truth=truth, frame_weights=weights, patch_heat=patch_heat,
    )


def reranked_query() -> GalleryQuery:
    before = [hit(0, 0.31), hit(1, 0.30), hit(2, 0.25, truth=True)]
    after = [hit(2, 0.25, truth=True, reranked=True, heat=True),
             hit(0, 0.31, reranked=True, heat=True), hit(1, 0.30, reranked=True)]
    return GalleryQuery("q-1", HOSTILE, before, after, note="fixed by re-ranker: rank 3 -> 1")


def stage1_only_query() -> GalleryQuery:
    return GalleryQuery("q-2", "a red car turns left", [hit(3, 0.5, truth=True), hit(4, 0.4)], None)


def img_tags(page: str) -> list[str]:
    return re.findall(r"<img\b[^>]*>", page)


def img_srcs(page: str) -> list[str]:
    return re.findall(r'<img\b[^>]*\bsrc="([^"]+)"', page)


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gallery")
    return write_gallery([reranked_query(), stage1_only_query()], out, title="val <queries>",
                         subtitle="stage 1 vs two-stage")


def test_every_image_exists_inside_the_folder_and_decodes(gallery):
    page = gallery.read_text()
    tags = img_tags(page)
    assert len(tags) == 3 + 3 + 2 + 2  # plain strips of every hit, plus 2 heat strips
    for tag in tags:
        assert re.search(r'\bwidth="\d+"', tag) and re.search(r'\bheight="\d+"', tag)
        assert re.search(r'\balt="[^"]+"', tag)
    for src in img_srcs(page):
        path = (gallery.parent / src).resolve()
        assert path.is_relative_to(gallery.parent.resolve()) and path.is_file(), src
        with Image.open(path) as image:
            image.verify()


def test_strips_are_deduplicated_per_clip(gallery):
    # 5 clips -> 5 plain strips (clips 0-2 appear in both columns); 2 heat strips.
    names = sorted(p.name for p in (gallery.parent / "images").iterdir())
    assert sum("-frames-" in n for n in names) == 5
    assert sum("-heat-" in n for n in names) == 2
    assert len(set(img_srcs(gallery.read_text()))) == 7


def test_page_is_offline_and_needs_no_javascript(gallery):
    page = gallery.read_text()
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page.lower() and "<link" not in page.lower() and "url(" not in page


def test_user_text_is_escaped(gallery):
    page = gallery.read_text()
    assert "alert('x')" not in page and "&lt;script&gt;" in page
    assert "&quot;quoted&quot;" in page and "&amp;" in page
    assert "val &lt;queries&gt;" in page and "video0 &lt;&amp;&gt;.mp4" in page


def test_columns_truth_weights_and_scores(gallery):
    page = gallery.read_text()
    assert page.count("<h4>stage 1</h4>") == 2 and page.count("<h4>re-ranked</h4>") == 1
    assert page.count('class="truth-label">ground truth<') == 3
    assert "fixed by re-ranker: rank 3 -&gt; 1" in page
    assert page.count('class="weights"') == 3
    assert 'style="height:100.0%" title="frame 1: 0.600"' in page
    assert "0.3100" in page and "0.6200" in page and "0.9300" in page  # printed scores
    assert "width:100.0%" in page and "width:3.0%" in page  # normalised within each query


def test_frame_strip_upscales_small_frames():
    strip = frame_strip(clip_frames(0))
    assert strip.shape == (128, FRAMES * 128, 3)  # 64 px frames -> 2x nearest neighbour
    assert (strip[:2, :2] == PALETTE[0]).all() and (strip[64, 64] == PALETTE[5]).all()
    assert frame_strip(np.zeros((2, 224, 224, 3), np.uint8)).shape == (224, 448, 3)


def test_heat_strip_colours_only_where_the_reranker_looked():
    frames = clip_frames(1)
    heat = np.zeros((FRAMES, 16))
    heat[:, 0] = 1.0
    plain, hot = frame_strip(frames).astype(int), heat_strip(frames, heat).astype(int)
    assert plain.shape == hot.shape
    assert np.abs(hot[:20, :20] - plain[:20, :20]).sum(-1).min() > 60  # hot top-left patch
    assert (hot[:20, :20, 0] >= hot[:20, :20, 2]).all()  # pushed to red/yellow
    assert (hot[80:, 80:128] == plain[80:, 80:128]).all()  # no heat: unchanged


@pytest.mark.parametrize(("change", "message"), [
    ({"frames": np.zeros((4, 64, 64, 3), np.float32)}, "uint8"),
    ({"frames": np.zeros((4, 64, 48, 3), np.uint8)}, r"\[F, S, S, 3\]"),
    ({"frames": np.zeros((64, 64, 3), np.uint8)}, r"\[F, S, S, 3\]"),
    ({"frame_weights": np.ones(3) / 3}, "frame_weights must have length F=4"),
    ({"patch_heat": np.zeros((4, 15))}, "P a square"),
    ({"patch_heat": np.zeros((3, 16))}, r"patch_heat must be \[F=4, P\]"),
    ({"patch_heat": np.zeros(16)}, "patch_heat"),
])
def test_invalid_hits_are_refused_with_a_reason(change, message):
    fields = {"video_id": "bad", "path": "p", "frames": clip_frames(0), "stage1_score": 0.1,
              "stage2_score": None, "fused_score": None}
    with pytest.raises(ValueError, match=message):
        GalleryHit(**(fields | change))


def test_sections_group_queries_and_rerun_replaces(tmp_path):
    first = write_gallery([reranked_query()], tmp_path, title="first")
    old_images = set((tmp_path / "images").iterdir())
    fixed, broken = stage1_only_query(), GalleryQuery("q-9", "a cat sleeps", [hit(7, 0.2)], None)
    second = write_gallery([fixed, broken], tmp_path, title="second",
                           sections={"fixed by the re-ranker": [fixed], "broken": [broken]})
    assert second == first
    page = second.read_text()
    assert "first" not in page and HOSTILE.split()[1] not in page
    assert '<h2 class="section">fixed by the re-ranker (1)</h2>' in page
    assert page.index("fixed by the re-ranker") < page.index("a red car") < page.index(
        "broken (1)") < page.index("a cat sleeps")
    new_images = set((tmp_path / "images").iterdir())
    assert not old_images & new_images and len(new_images) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "index.html"]


# --- a real browser ------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Test-only: loaded beside index.html, it counts images the browser failed to decode.
BROKEN_IMAGE_PROBE = (
    "<script>window.addEventListener('load', () => { const bad = [...document.images]"
    ".filter(i => !i.complete || i.naturalWidth === 0); "
    "document.body.dataset.brokenImages = String(bad.length); "
    "document.body.dataset.loadedImages = String(document.images.length - bad.length); });"
    "</script>"
)


def run_chromium(page: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (infra/install_chromium.sh could not install it): "
                    "no chromium or chromium-browser on PATH")
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-dev-shm-usage", "--allow-file-access-from-files",
               f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=5000",
               *args, page.resolve().as_uri()]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def test_chromium_renders_every_query_and_image(gallery, tmp_path):
    probe = gallery.parent / "probe.html"
    probe.write_text(gallery.read_text().replace("</body>", BROKEN_IMAGE_PROBE + "</body>"))
    try:
        dom = run_chromium(probe, tmp_path, "--dump-dom").stdout
    finally:
        probe.unlink()
    assert 'data-broken-images="0"' in dom, dom[:500]
    assert 'data-loaded-images="10"' in dom
    assert "a red car turns left" in dom and "&lt;script&gt;alert('x')&lt;/script&gt;" in dom
    assert set(img_srcs(dom)) == set(img_srcs(gallery.read_text()))


def test_chromium_screenshot_shows_the_frame_strips(gallery, tmp_path):
    shot = tmp_path / "shot.png"
    run_chromium(gallery, tmp_path, f"--screenshot={shot}", "--window-size=1280,2000")
    with Image.open(shot) as image:
        assert image.size == (1280, 2000)
        pixels = np.asarray(image.convert("RGB")).astype(int)
    assert pixels.std() > 20  # not blank
    colours = pixels.reshape(-1, 3)
    for colour in PALETTE[:5]:  # the first query's clips are on screen
        nearest = np.abs(colours - np.array(colour)).sum(axis=1).min()
        assert nearest <= 9, f"frame colour {colour} not in the screenshot (closest: {nearest})"
