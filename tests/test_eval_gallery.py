"""The two-stage evaluation step logs its gallery to its own run and to the parent run.

A small real Lance index (tiny ffmpeg clips, random tokens, captions that name one-factor
twins) and a random re-ranker checkpoint stand in for the flow's earlier steps, so the real
step function runs in seconds; the flow tests run it after real training.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict

import mlflow
import numpy as np
import pyarrow as pa
import pytest
import torch
from video_fixtures import HAVE_FFMPEG, make_clip

from crosstvr_core.config import load_config
from crosstvr_core.models.reranker import reranker_shape_kwargs
from crosstvr_core.models.reranker_ensemble import new_reranker
from crosstvr_core.storage import TokenIndex, TokenShapes, fixed_list
from tasks.index import IndexRef
from tasks.retrieval import (
    GALLERY_ARTIFACTS,
    RerankerRef,
    Stage1Ref,
    display_frame_size,
    run_two_stage_eval,
)
from tasks.tracking import use_experiment
from tests.conftest import TINY_CONFIG

pytestmark = pytest.mark.skipif(not HAVE_FFMPEG, reason="needs the ffmpeg and ffprobe binaries")

NUM_VIDEOS = 8
# an index that keeps 4 of each frame's 16 patches (index.keep_patches): the heat goes back
# to the 4 x 4 grid through the stored patch_index
SHAPES = TokenShapes(num_frames=4, embed_dim=12, num_patches=4, vision_width=10,
                     context_length=5, text_width=8, source_patches=16)
ENCODER_ID = "test-encoder|sha256:0|48px"


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> tuple[list[str], object]:
    """The clips (the last one deleted since indexing: shown grey, never fatal) and one
    MLflow home for the module (a fresh SQLite store takes seconds to create)."""
    root = tmp_path_factory.mktemp("eval-gallery")
    uris = [str(make_clip(root / f"v{i}.mp4", f"testsrc2=size=48x48:rate=8,hue=h={40 * i}",
                          "-t", "1", "-c:v", "libx264", "-preset", "ultrafast"))
            for i in range(NUM_VIDEOS - 1)]
    return [*uris, str(root / "deleted-since-indexing.mp4")], root / "home"


def write_index(root, uris: list[str], rng: np.random.Generator) -> TokenIndex:
    ids = [f"videos/test/v{i}" for i in range(NUM_VIDEOS)]
    n, s = NUM_VIDEOS, SHAPES
    index = TokenIndex(root / "db", ENCODER_ID, s)
    positions = np.stack([rng.permutation(16)[:4] for _ in range(n * s.num_frames)])
    index.upsert("video_tokens", pa.table({
        "video_id": ids, "content_hash": ids, "encoder_id": [ENCODER_ID] * n,
        "frame_mask": fixed_list(np.ones((n, s.num_frames), bool), np.bool_),
        "cls": fixed_list(rng.normal(size=(n, s.num_frames, s.embed_dim))),
        "patches": fixed_list(rng.normal(size=(n, s.num_frames, s.num_patches, s.vision_width))),
        "patch_index": fixed_list(positions.reshape(n, -1), np.int16),
    }), key="video_id")
    index.upsert("videos", pa.table({
        "video_id": ids, "corpus": ["c"] * n, "split": ["test"] * n, "uri": uris,
        "content_hash": ids, "duration": [1.0] * n, "fps": [8.0] * n, "width": [48] * n,
        "height": [48] * n, "size_bytes": [1] * n, "num_frames_sampled": [4] * n,
        "status": ["ok"] * n, "error": [""] * n, "encoder_id": [ENCODER_ID] * n,
        "indexed_at": pa.array([None] * n, pa.timestamp("us", tz="UTC")),
    }), key="video_id")
    metas = [json.dumps({"variant": "motion", "twin_colour": f"videos/test/v{i ^ 1}.mp4",
                         "twin_position": f"videos/test/v{i ^ 2}.mp4"}) for i in range(n)]
    index.upsert("captions", pa.table({
        "caption_id": [f"{v}#0" for v in ids], "video_id": ids, "split": ["test"] * n,
        "text": [f"clip number {i}" for i in range(n)], "meta": metas,
        "encoder_id": [ENCODER_ID] * n,
        "eot": fixed_list(rng.normal(size=(n, s.embed_dim))),
        "tokens": fixed_list(rng.normal(size=(n, s.context_length, s.text_width))),
        "length": pa.array([3] * n, pa.int32()),
    }), key="caption_id")
    return index


@pytest.fixture
def eval_inputs(tmp_path, shared):
    uris, home = shared
    rng = np.random.default_rng(0)
    # a hand-made index without its encoder: no word embeddings to give the re-ranker
    cfg = load_config(TINY_CONFIG, [f"home={home}", "eval.top_k=4",
                                    "reranker.word_timing_term=false"])
    index = write_index(tmp_path, uris, rng)
    index_ref = IndexRef(index.uri, ENCODER_ID, asdict(SHAPES), index.versions(), {})
    kwargs = reranker_shape_kwargs(asdict(SHAPES))
    model = new_reranker(cfg.reranker, 0, **kwargs)  # the default: an ensemble
    torch.save({"state_dict": model.state_dict(), "kwargs": kwargs}, tmp_path / "reranker.pt")
    sim = torch.from_numpy(rng.random((NUM_VIDEOS, NUM_VIDEOS)).astype(np.float32))
    torch.save(sim, tmp_path / "stage1_test.pt")
    stage1_ref = Stage1Ref({"test": str(tmp_path / "stage1_test.pt")}, {}, f"meanP|{ENCODER_ID}")
    reranker_ref = RerankerRef(str(tmp_path / "reranker.pt"), kwargs, None)
    with mlflow.start_run(experiment_id=use_experiment(cfg), run_name="parent") as parent:
        pass
    (tmp_path / "run").mkdir()
    yield cfg, index_ref, stage1_ref, reranker_ref, tmp_path / "run", parent.info.run_id
    mlflow.set_tracking_uri(None)


def eval_run(client: mlflow.MlflowClient, parent_run_id: str):
    (run,) = client.search_runs(
        [client.get_run(parent_run_id).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")
    return run


def test_eval_step_logs_the_gallery_to_its_run_and_the_parent(eval_inputs) -> None:
    cfg, index_ref, stage1_ref, reranker_ref, run_dir, parent_run_id = eval_inputs
    metrics = run_two_stage_eval(cfg, index_ref, stage1_ref, reranker_ref, str(run_dir),
                                 parent_run_id)
    assert "twostage/t2v_R1" in metrics
    client = mlflow.MlflowClient()
    run = eval_run(client, parent_run_id)
    assert "crosstvr.gallery_error" not in run.data.tags
    assert run.data.metrics["gallery/queries"] > 0
    for run_id in (run.info.run_id, parent_run_id):
        logged = {a.path for a in client.list_artifacts(run_id, GALLERY_ARTIFACTS)}
        assert {f"{GALLERY_ARTIFACTS}/index.html", f"{GALLERY_ARTIFACTS}/images"} <= logged
    page = client.download_artifacts(run.info.run_id, f"{GALLERY_ARTIFACTS}/index.html",
                                     str(run_dir / "download"))
    with open(page, encoding="utf-8") as handle:
        html = handle.read()
    assert "broken by the re-ranker" in html and "clip number" in html
    assert "twin ranked above the truth" in html


def test_a_gallery_failure_is_a_warning_not_a_failed_step(eval_inputs, monkeypatch,
                                                          caplog) -> None:
    cfg, index_ref, stage1_ref, reranker_ref, run_dir, parent_run_id = eval_inputs

    def broken(*args, **kwargs):
        raise RuntimeError("no frames today")

    monkeypatch.setattr("tasks.retrieval.two_stage_gallery", broken)
    with caplog.at_level(logging.WARNING, logger="tasks.retrieval"):
        metrics = run_two_stage_eval(cfg, index_ref, stage1_ref, reranker_ref, str(run_dir),
                                     parent_run_id)
    assert "twostage/t2v_R1" in metrics
    assert "no gallery" in caplog.text and "no frames today" in caplog.text
    run = eval_run(mlflow.MlflowClient(), parent_run_id)
    assert "no frames today" in run.data.tags["crosstvr.gallery_error"]
    assert mlflow.MlflowClient().get_run(parent_run_id).data.metrics[
        "twostage/t2v_R1"] == pytest.approx(metrics["twostage/t2v_R1"])


def test_display_frame_size_is_the_encoders_input() -> None:
    assert display_frame_size("crosstvr-tiny-vit|sha256:abcd|64px") == 64
    assert display_frame_size("ViT-B-32|openai|224px|embedding") == 224
    assert display_frame_size("something-else") == 96
