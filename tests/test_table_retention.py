"""Old Lance versions are cleaned, except those a recorded run or a registered model names.

A real TokenIndex re-indexed several times (each pass replaces every row), a real SQLite
MLflow store whose runs carry the flow's lineage tags, and a registered model version.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pytest

from crosstvr_core.config import load_config
from crosstvr_core.storage import CAPTIONS, VIDEO_TOKENS, VIDEOS, TokenIndex, TokenShapes
from crosstvr_core.table_retention import TAG_PREFIX, clean_old_versions, local_bytes
from tasks.retention import RetentionError, clean_index_versions, recorded_versions
from tasks.tracking import checkout_run_tables, lineage_tags, use_experiment

SHAPES = TokenShapes(num_frames=2, embed_dim=16, num_patches=4, vision_width=32,
                     context_length=8, text_width=16)
ENCODER = "enc-retention"
NUM_VIDEOS = 60


def reindex(index: TokenIndex, seed: int) -> dict[str, int]:
    """One re-index pass that changes every video (new content hash, new tokens)."""
    rng = np.random.default_rng(seed)
    ids = [f"v{i:03d}" for i in range(NUM_VIDEOS)]
    n, s = len(ids), SHAPES
    hashes = [f"h{seed}-{i}" for i in ids]
    index.upsert(VIDEO_TOKENS, {
        "video_id": ids, "content_hash": hashes, "encoder_id": [ENCODER] * n,
        "frame_mask": np.ones((n, s.num_frames), bool),
        "cls": rng.normal(size=(n, s.num_frames, s.embed_dim)),
        "patches": rng.normal(size=(n, s.num_frames, s.num_patches, s.vision_width)),
    }, key="video_id")
    index.upsert(VIDEOS, {
        "video_id": ids, "corpus": ["c"] * n, "split": ["test"] * n, "uri": ids,
        "content_hash": hashes, "duration": [1.0] * n, "fps": [8.0] * n, "width": [64] * n,
        "height": [64] * n, "size_bytes": [1] * n, "num_frames_sampled": [2] * n,
        "status": ["ok"] * n, "error": [""] * n, "encoder_id": [ENCODER] * n,
        "indexed_at": [None] * n,
    }, key="video_id")
    index.upsert(CAPTIONS, {
        "caption_id": [f"{i}#0" for i in ids], "video_id": ids, "split": ["test"] * n,
        "text": [f"pass {seed} {i}" for i in ids], "meta": ["{}"] * n,
        "encoder_id": [ENCODER] * n, "eot": rng.normal(size=(n, s.embed_dim)),
        "tokens": rng.normal(size=(n, s.context_length, s.text_width)), "length": [3] * n,
    }, key="caption_id")
    index.compact()
    return index.versions()


def flow_run(experiment_id: str, uri: str, versions: dict[str, int], name: str) -> str:
    """A finished run tagged as the flows tag theirs (parent + one nested step run)."""
    tags = {"crosstvr.dataset": "retention", **lineage_tags(uri, ENCODER, versions)}
    with mlflow.start_run(experiment_id=experiment_id, run_name=name, tags=tags) as parent, \
            mlflow.start_run(experiment_id=experiment_id, run_name="stage1", nested=True,
                             tags=tags):
        pass
    return parent.info.run_id


def delete_flow_run(client: mlflow.MlflowClient, run_id: str) -> None:
    """Delete a flow run as a whole: its parent and its nested step runs."""
    parent = client.get_run(run_id)
    for child in client.search_runs([parent.info.experiment_id],
                                    f"tags.mlflow.parentRunId = '{run_id}'"):
        client.delete_run(child.info.run_id)
    client.delete_run(run_id)


@pytest.fixture()
def store(tmp_path):
    cfg = load_config(None, [f"home={tmp_path}", "data.name=retention",
                             "index.cleanup_min_age_s=0"])
    experiment_id = use_experiment(cfg)
    yield cfg, experiment_id, mlflow.MlflowClient()
    mlflow.set_tracking_uri(None)


def test_cleanup_keeps_what_runs_and_models_name_and_removes_the_rest(store):
    cfg, experiment_id, client = store
    index = TokenIndex(cfg.lance_uri, ENCODER, SHAPES)
    passes = [reindex(index, seed) for seed in range(6)]
    uri = index.uri
    kept_run = flow_run(experiment_id, uri, passes[0], "kept")
    # a registered model's run: protected even after the run itself is deleted
    registered_run = flow_run(experiment_id, uri, passes[2], "registered")
    client.create_registered_model("crosstvr-reranker")
    client.create_model_version("crosstvr-reranker", f"runs:/{registered_run}/reranker",
                                run_id=registered_run)
    delete_flow_run(client, registered_run)
    released_run = flow_run(experiment_id, uri, passes[3], "deleted")  # released by deletion
    delete_flow_run(client, released_run)
    flow_run(experiment_id, "/elsewhere/retention.lancedb", passes[4], "other db")

    protected, named_by = recorded_versions(uri, client)
    assert protected == {t: {passes[0][t], passes[2][t]} for t in passes[0]}
    assert kept_run in named_by[VIDEOS] and released_run not in named_by[VIDEOS]

    before = local_bytes(uri)
    dry = clean_index_versions(cfg, dry_run=True)
    assert dry.dry_run and local_bytes(uri) == before  # nothing touched
    report = clean_index_versions(cfg)
    after = local_bytes(uri)
    assert report.bytes_before == before and report.bytes_after == after
    print(f"\nretention: {report.summary()}")
    assert after < 0.6 * before, (before, after)  # 6 passes of every row -> 3 left
    for name, table in report.tables.items():
        assert table.removed == dry.tables[name].removed
        assert table.kept == sorted({passes[0][name], passes[2][name], passes[5][name]})
        assert table.bytes_removed > 0

    # protected versions check out, through the lineage of the runs that name them
    for run_id, seed in ((kept_run, 0), (registered_run, 2)):
        tables = checkout_run_tables(run_id, client)
        hashes = tables[VIDEOS].to_arrow().column("content_hash").to_pylist()
        assert len(hashes) == NUM_VIDEOS and all(h.startswith(f"h{seed}-") for h in hashes)
        assert tables[VIDEO_TOKENS].count_rows() == NUM_VIDEOS
    # the rest are gone, and say so
    with pytest.raises(ValueError, match="cannot be checked out"):
        checkout_run_tables(released_run, client)
    latest = TokenIndex(uri, ENCODER, SHAPES)
    assert latest.versions() == passes[5] and latest.videos.count_rows() == NUM_VIDEOS
    assert set(latest.video_tokens.tags.list()) == {
        f"{TAG_PREFIX}{passes[0][VIDEO_TOKENS]}", f"{TAG_PREFIX}{passes[2][VIDEO_TOKENS]}"}

    # idempotent; and a version is released once nothing names it any more
    assert all(not t.removed for t in clean_index_versions(cfg).tables.values())
    delete_flow_run(client, kept_run)
    again = clean_index_versions(cfg)
    assert all(t.removed == [passes[0][n]] for n, t in again.tables.items())
    assert set(latest.video_tokens.tags.list()) == {f"{TAG_PREFIX}{passes[2][VIDEO_TOKENS]}"}


def test_young_versions_and_other_tags_stay(tmp_path):
    index = TokenIndex(tmp_path / "db.lancedb", ENCODER, SHAPES)
    first = reindex(index, 0)
    reindex(index, 1)
    index.videos.tags.create("someones-release", first[VIDEOS])
    report = clean_old_versions(index.uri, {}, min_age_s=3600)  # all younger than an hour
    assert all(not t.removed for t in report.tables.values())
    report = clean_old_versions(index.uri, {}, min_age_s=0)
    assert first[VIDEOS] in report.tables[VIDEOS].kept  # a tag someone else set is theirs
    assert report.tables[VIDEO_TOKENS].kept == [index.video_tokens.version]


def test_no_tracking_store_no_cleanup(tmp_path, monkeypatch):
    """If the runs that protect versions cannot be listed, nothing is removed."""
    from process_helpers import free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    cfg = load_config(None, [f"home={tmp_path}", "data.name=nostore",
                             "index.cleanup_min_age_s=0",
                             f"tracking.tracking_uri=http://127.0.0.1:{free_port()}"])
    index = TokenIndex(cfg.lance_uri, ENCODER, SHAPES)
    reindex(index, 0)
    reindex(index, 1)
    versions = {t["version"] for t in index.videos.list_versions()}
    with pytest.raises(RetentionError, match="nothing was removed"):
        clean_index_versions(cfg)
    assert {t["version"] for t in index.videos.list_versions()} == versions
    mlflow.set_tracking_uri(None)
