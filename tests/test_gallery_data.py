"""Gallery data from an index: frames decoded again, attention maps, and the evaluation picks.

Clips are tiny ffmpeg renders; the re-ranker is a small random one (as in test_reranker), so
every test takes well under a second apart from the decoding.
"""

from __future__ import annotations

from pathlib import Path

import bank_fixtures
import numpy as np
import pytest
import torch
from bank_fixtures import EMBED, FRAMES, TEXT, VISION, length_mask, token_bank
from video_fixtures import HAVE_FFMPEG, make_clip, make_garbled, ramp_frame_numbers, ramp_source

from crosstvr_core.gallery import write_gallery
from crosstvr_core.gallery_data import (
    GREY,
    GalleryVideo,
    clip_frames,
    clip_frames_with_note,
    gallery_hits,
    heat_on_grid,
    pick_changed_queries,
    pick_twin_failures,
    two_stage_gallery,
)
from crosstvr_core.models.reranker import CrossTVRReranker
from crosstvr_core.token_bank import TokenBank

pytestmark = [pytest.mark.skipif(not HAVE_FFMPEG, reason="needs the ffmpeg and ffprobe binaries"),
              pytest.mark.usefixtures("one_thread")]

PATCHES, LENGTH = 9, 5  # a 3 x 3 patch grid; the other sizes are bank_fixtures'


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[str]:
    """Three 1-second ramp clips (brightness rises with the frame number)."""
    root = tmp_path_factory.mktemp("gallery-clips")
    return [str(make_clip(root / f"clip{i}.mp4", ramp_source("48x48", rate=8, duration=1,
                                                               step=10 + 5 * i),
                          "-c:v", "libx264", "-preset", "ultrafast"))
            for i in range(3)]


def make_model(**cfg) -> CrossTVRReranker:
    """(The word-timing term's inputs are covered where a real encoder gives them: the search
    gallery in test_flow.)"""
    return bank_fixtures.make_model(patches=PATCHES, **{"num_selected_patches": 4,
                                                        "word_timing_term": False, **cfg})


def random_tokens(num_videos: int, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    frame_mask = torch.ones(num_videos, FRAMES, dtype=torch.bool)
    frame_mask[0, -1] = False  # a clip one frame short
    return {"video_cls": torch.randn(num_videos, FRAMES, EMBED, generator=gen),
            "video_patches": torch.randn(num_videos, FRAMES, PATCHES, VISION, generator=gen),
            "frame_mask": frame_mask}


def test_clip_frames_are_the_uniform_samples(clips) -> None:
    frames = clip_frames(clips[0], 4, 32)
    assert frames.shape == (4, 32, 32, 3) and frames.dtype == np.uint8
    numbers = ramp_frame_numbers(frames)  # 8 frames in the clip, 4 spread evenly
    assert list(numbers) == sorted(numbers) and numbers[0] < 2 and numbers[-1] > 5


def test_a_clip_that_no_longer_decodes_is_grey_with_a_note(clips, tmp_path, caplog) -> None:
    frames, note = clip_frames_with_note(str(tmp_path / "gone.mp4"), 3, 16)
    assert frames.shape == (3, 16, 16, 3) and np.all(frames == GREY)
    assert "not decodable" in note and "does not exist" in note
    garbled = make_garbled(Path(clips[0]), tmp_path / "garbled.mp4", num_bytes=4000)
    garbled.write_bytes(b"\0" * 64)  # nothing left of a video
    with caplog.at_level("WARNING"):
        assert np.all(clip_frames(str(garbled), 2, 16) == GREY)
    assert "garbled.mp4" in caplog.text


def test_gallery_hits_carry_scores_frames_and_attention(clips, tmp_path) -> None:
    model = make_model()
    tokens = random_tokens(3)
    videos = [("v0", clips[0], 0.9, 1.5, 2.4, False), ("v1", clips[1], 0.8, None, None, True),
              GalleryVideo("v2", str(tmp_path / "moved.mp4"), 0.7, -0.5, 0.2, False)]
    query = torch.randn(LENGTH, TEXT)
    mask = torch.tensor([True, True, True, False, False])
    cache: dict = {}
    hits = gallery_hits(model, query, mask, videos, tokens, 32, frame_cache=cache)
    assert [h.video_id for h in hits] == ["v0", "v1", "v2"]
    assert [h.is_truth for h in hits] == [False, True, False]
    assert hits[1].stage2_score is None and hits[0].fused_score == pytest.approx(2.4)
    assert set(cache) == {v[1] for v in videos}  # each clip decoded once, kept for later
    assert hits[0].frames.shape == (FRAMES, 32, 32, 3) and hits[0].path == clips[0]
    assert np.all(hits[2].frames == GREY) and "not decodable" in hits[2].path
    weights, heat = model.attention_maps(
        query.expand(3, -1, -1), mask.expand(3, -1), tokens["video_cls"],
        tokens["video_patches"], tokens["frame_mask"])
    for row, hit in enumerate(hits):
        np.testing.assert_allclose(hit.frame_weights, weights[row].numpy(), rtol=1e-6)
        np.testing.assert_allclose(hit.patch_heat, heat[row].numpy(), rtol=1e-6)
        assert hit.frame_weights.sum() == pytest.approx(1.0, abs=1e-5)
        assert ((hit.patch_heat > 0).sum(1)[tokens["frame_mask"][row].numpy()] == 4).all()
    assert hits[0].frame_weights[-1] == 0 and np.all(hits[0].patch_heat[-1] == 0)
    # without a model: frames and scores only
    plain = gallery_hits(None, query, mask, videos[:1], {k: v[:1] for k, v in tokens.items()}, 32,
                         frame_cache=cache)
    assert plain[0].frame_weights is None and plain[0].patch_heat is None


def test_gallery_attention_reads_the_query_embedding_the_caption_summary_needs(clips) -> None:
    """With reranker.caption_summary the maps are those of the scored pair: the query's
    frozen embedding goes in, and without it the model says so instead of guessing."""
    model = make_model(caption_summary=True)
    with torch.no_grad():
        model.caption_summary.weight.normal_()
    tokens = random_tokens(2)
    videos = [("v0", clips[0], 0.9, 1.5, 2.4, True), ("v1", clips[1], 0.8, 1.0, 1.8, False)]
    query = torch.randn(LENGTH, TEXT)
    mask = torch.tensor([True, True, True, False, False])
    eot = torch.randn(EMBED)
    hits = gallery_hits(model, query, mask, videos, tokens, 32, query_eot=eot)
    weights, _ = model.attention_maps(
        query.expand(2, -1, -1), mask.expand(2, -1), tokens["video_cls"],
        tokens["video_patches"], tokens["frame_mask"], eot.expand(2, -1))
    np.testing.assert_allclose(hits[0].frame_weights, weights[0].numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="caption_summary needs text_eot"):
        gallery_hits(model, query, mask, videos, tokens, 32)


def test_heat_of_kept_patches_goes_to_their_grid_places() -> None:
    heat = np.array([[0.5, 0.25], [0.1, 0.2]])
    placed = heat_on_grid(heat, np.array([[0, 8], [4, 3]]), 9)
    assert placed.shape == (2, 9)
    assert placed[0, 0] == 0.5 and placed[0, 8] == 0.25 and placed[1, 4] == 0.1
    assert placed[1, 3] == 0.2 and placed.sum() == pytest.approx(heat.sum())
    assert heat_on_grid(heat, None, None) is None  # 2 patches: not a square grid
    assert heat_on_grid(np.ones((2, 4)), None, None).shape == (2, 4)


def test_pick_changed_queries() -> None:
    before = np.array([6, 3, 0, 4, 1, 2, 9])
    after = np.array([0, 0, 4, 1, 1, 9, 2])
    fixed, broken = pick_changed_queries(before, after, shown=5, count=4)
    # most places gained first; of equal gains, the one whose truth ends higher
    assert fixed == [6, 0, 1, 3]
    # query 5 drops 7 places, query 2 drops 4; query 5's truth was shown before (2 < 5)
    assert broken == [5, 2]
    assert pick_changed_queries(before, after, shown=1, count=4) == ([0, 1], [2])


def test_pick_twin_failures() -> None:
    fused = torch.tensor([[0.2, 0.9, 0.1, 0.0],   # caption 0 (video 0): colour twin v1 above
                          [0.5, 0.6, 0.0, 0.0],   # caption 1 (video 1): its twin v0 below
                          [0.0, 0.0, 0.3, 0.4]])  # caption 2 (video 2): position twin v3 above
    metas = [{"twin_colour": "videos/test/v1.mp4", "twin_position": "videos/test/v2.mp4"},
             {"twin_colour": "videos/test/v0.mp4", "variant": "motion"},
             {"twin_position": "videos/test/v3.mp4", "twin_colour": "videos/test/gone.mp4"}]
    ids = [f"videos/test/v{i}" for i in range(4)]
    picks = pick_twin_failures(fused, torch.tensor([0, 1, 2]), ids, metas, count=2)
    assert picks == {"colour": [(0, 1)], "position": [(2, 3)]}


def fake_bank(num_videos: int, seed: int = 0) -> TokenBank:
    gen = torch.Generator().manual_seed(seed)
    tokens = random_tokens(num_videos, seed)
    lengths = torch.randint(2, LENGTH + 1, (num_videos,), generator=gen)
    return token_bank(
        tokens["video_cls"], tokens["video_patches"], tokens["frame_mask"],
        torch.randn(num_videos, EMBED, generator=gen),
        torch.randn(num_videos, LENGTH, TEXT, generator=gen), length_mask(lengths, LENGTH),
        torch.arange(num_videos), video_ids=[f"videos/test/v{i}" for i in range(num_videos)])


def test_two_stage_gallery_sections_and_page(clips, tmp_path) -> None:
    from crosstvr_core.retrieval.metrics import text_to_video_ranks
    from crosstvr_core.retrieval.two_stage import fuse_top_k

    num = 8
    bank = fake_bank(num)
    model = make_model(word_timing_term=True)  # the bank carries word embeddings
    model.set_fusion_weights(0.5, 0.5)
    gen = torch.Generator().manual_seed(3)
    sim = torch.rand(num, num, generator=gen)
    k = 6
    top = sim.topk(k, dim=1).indices
    stage2 = torch.stack([model(**bank.text_batch(torch.full((k,), i)),
                                **bank.video_batch(top[i])).detach() for i in range(num)])
    fused = fuse_top_k(sim, top, stage2, 0.5)
    ranks = {"stage 1": text_to_video_ranks(sim, bank.caption_video),
             "two-stage": text_to_video_ranks(fused, bank.caption_video)}
    metas = [{"twin_colour": f"videos/test/v{i ^ 1}.mp4"} for i in range(num)]
    uris = {v: clips[i % len(clips)] for i, v in enumerate(bank.video_ids)}
    sections = two_stage_gallery(
        model, bank, sim, fused, ranks, metas, uris, {"c0": "a red cube"}, top_k=k,
        fusion_weight=0.5, fusion_score="logit", frame_size=24, shown=3, num_changed=2,
        num_twins=2)
    fixed, broken = pick_changed_queries(ranks["stage 1"], ranks["two-stage"], 3, 2)
    assert [q.query_id for q in sections["fixed by the re-ranker"]] == [f"c{i}" for i in fixed]
    assert [q.query_id for q in sections["broken by the re-ranker"]] == [f"c{i}" for i in broken]
    twins = sections.get("colour twin ranked above the truth", [])
    assert len(twins) == len(pick_twin_failures(fused, bank.caption_video, bank.video_ids,
                                                metas, 2).get("colour", []))
    queries = [q for qs in sections.values() for q in qs]
    assert fixed and broken and twins, "the random scores must give every section something"
    for query in queries:
        row = int(query.query_id[1:])
        assert [h.video_id for h in query.before] == [
            bank.video_ids[c] for c in sim[row].topk(3).indices]
        assert [h.video_id for h in query.after] == [
            bank.video_ids[c] for c in fused[row].topk(3).indices]
        for hit in query.before + query.after:
            column = bank.video_ids.index(hit.video_id)
            assert hit.is_truth == (column == row)
            assert hit.stage1_score == pytest.approx(float(sim[row, column]))
            position = (top[row] == column).nonzero()
            if len(position):  # a candidate: the logit evaluation fused with stage 1
                s2 = float(stage2[row, position[0, 0]])
                assert hit.stage2_score == pytest.approx(s2, abs=1e-5)
                assert hit.fused_score == pytest.approx(float(sim[row, column]) + 0.5 * s2,
                                                        abs=1e-5)
            else:
                assert hit.stage2_score is None and hit.fused_score is None
            assert hit.frame_weights is not None and hit.patch_heat.shape == (FRAMES, PATCHES)
        assert query.note
    if any(q.query_id == "c0" for q in queries):
        assert next(q for q in queries if q.query_id == "c0").text == "a red cube"
    page = write_gallery(queries, tmp_path / "gallery", "evaluation", sections=sections)
    html = page.read_text()
    assert "fixed by the re-ranker" in html and "broken by the re-ranker" in html
    assert len(list((tmp_path / "gallery" / "images").glob("*.png"))) > 0
