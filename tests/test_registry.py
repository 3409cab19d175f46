"""Model registry aliases per dataset + encoder, loading the champion, and `crosstvr compare`.

The runs are shaped like the flow's (a tagged parent, a nested `train-reranker` run that logs
the re-ranker with mlflow.pytorch.log_model) but hold a tiny untrained re-ranker, so the
test takes seconds; the flow tests exercise the real path.
"""

from __future__ import annotations

import mlflow
import pytest
import torch

from crosstvr_core.config import load_config
from crosstvr_core.models.reranker import CrossTVRReranker
from tasks.registry import (
    CANDIDATE,
    CHAMPION,
    RERANKER_MODEL,
    STAGE1_MODEL,
    RegistryError,
    load_registered_reranker,
    pair_alias,
    register_run_models,
)
from tests.conftest import TINY_CONFIG

SHAPES = {"embed_dim": 16, "vision_width": 24, "text_width": 20, "num_frames": 3,
          "num_patches": 9}
ENC_A, ENC_B = "crosstvr-tiny-vit|sha256:aaaa|32", "ViT-B-32|openai|224"


def tiny_reranker(seed: int) -> CrossTVRReranker:
    torch.manual_seed(seed)
    cfg = load_config(TINY_CONFIG).reranker
    return CrossTVRReranker(cfg, **SHAPES).eval()


def pair_batch(batch: int = 3) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    text = torch.randn(batch, 7, SHAPES["text_width"], generator=g)
    text_mask = torch.ones(batch, 7, dtype=torch.bool)
    text_mask[0, 5:] = False
    cls = torch.randn(batch, SHAPES["num_frames"], SHAPES["embed_dim"], generator=g)
    patches = torch.randn(batch, SHAPES["num_frames"], SHAPES["num_patches"],
                          SHAPES["vision_width"], generator=g)
    frame_mask = torch.ones(batch, SHAPES["num_frames"], dtype=torch.bool)
    eot = torch.randn(batch, SHAPES["embed_dim"], generator=g)
    words = torch.randn(batch, 7, SHAPES["embed_dim"], generator=g)  # for the word timing
    return text, text_mask, cls, patches, frame_mask, eot, words


def fake_flow_run(experiment_id: str, dataset: str, encoder_id: str, t2v_r1: float,
                  seed: int, with_stage1: bool = False) -> tuple[str, CrossTVRReranker]:
    """A parent run as the flow leaves it: tags, metrics, nested runs with logged models."""
    model = tiny_reranker(seed)
    tags = {"crosstvr.dataset": dataset, "crosstvr.encoder_id": encoder_id}
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"run-{seed}", tags=tags) as p:
        mlflow.log_metrics({"twostage/t2v_R1": t2v_r1, "twostage/v2t_R1": t2v_r1 / 2,
                            "stage1/t2v_R1": 10.0, "twostage/t2v_R1_color": t2v_r1 + 1})
        with mlflow.start_run(experiment_id=experiment_id, run_name="train-reranker",
                              nested=True):
            mlflow.pytorch.log_model(model, name="reranker", serialization_format="pickle")
        if with_stage1:
            with mlflow.start_run(experiment_id=experiment_id, run_name="stage1", nested=True):
                mlflow.pytorch.log_model(torch.nn.Linear(2, 2), name="stage1_seqtransf",
                                         serialization_format="pickle")
    return p.info.run_id, model


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """Four runs: A 50 (champion), A 40 (candidate), A 60 (new champion), B 10 (champion)."""
    root = tmp_path_factory.mktemp("registry")
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    experiment_id = mlflow.create_experiment("registry-test",
                                             artifact_location=(root / "artifacts").as_uri())
    runs = {}
    for key, dataset, encoder_id, score, seed, stage1 in [
        ("a50", "tiny-generated", ENC_A, 50.0, 0, True),
        ("a40", "tiny-generated", ENC_A, 40.0, 1, False),
        ("a60", "tiny-generated", ENC_A, 60.0, 2, True),
        ("b10", "msrvtt 1k-A", ENC_B, 10.0, 3, False),
    ]:
        run_id, model = fake_flow_run(experiment_id, dataset, encoder_id, score, seed, stage1)
        runs[key] = (run_id, model, register_run_models(run_id))
    yield experiment_id, runs
    mlflow.set_tracking_uri(None)


def test_champion_per_dataset_and_encoder(registry):
    _, runs = registry
    client = mlflow.MlflowClient()
    roles = {k: {r.model_name: r.role for r in regs} for k, (_, _, regs) in runs.items()}
    assert roles["a50"] == {RERANKER_MODEL: CHAMPION, STAGE1_MODEL: CHAMPION}
    assert roles["a40"] == {RERANKER_MODEL: CANDIDATE}
    assert roles["a60"] == {RERANKER_MODEL: CHAMPION, STAGE1_MODEL: CHAMPION}
    assert roles["b10"] == {RERANKER_MODEL: CHAMPION}  # another pair: 10 < 60 does not matter
    a_champion = client.get_model_version_by_alias(
        RERANKER_MODEL, pair_alias(CHAMPION, "tiny-generated", ENC_A))
    assert a_champion.run_id == runs["a60"][0]
    assert a_champion.tags["crosstvr.dataset"] == "tiny-generated"
    assert a_champion.tags["crosstvr.encoder_id"] == ENC_A
    assert client.get_model_version_by_alias(
        RERANKER_MODEL, pair_alias(CANDIDATE, "tiny-generated", ENC_A)).run_id == runs["a40"][0]
    # the plain alias follows the latest crowned pair champion
    assert client.get_model_version_by_alias(RERANKER_MODEL, CHAMPION).run_id == runs["b10"][0]
    assert runs["a40"][2][0].previous_champion_score == pytest.approx(50.0)
    assert client.get_run(runs["a40"][0]).data.tags["crosstvr.registry_role"] == CANDIDATE


def test_loading_the_champion_gives_a_working_reranker(registry):
    _, runs = registry
    batch = pair_batch()
    loaded = load_registered_reranker()  # models:/crosstvr-reranker@champion
    with torch.no_grad():
        logits = loaded(*batch)
        expected = runs["b10"][1](*batch)
    assert logits.shape == (3,) and torch.isfinite(logits).all()
    torch.testing.assert_close(logits, expected)
    pair_champion = load_registered_reranker("tiny-generated", ENC_A)
    with torch.no_grad():
        torch.testing.assert_close(pair_champion(*batch), runs["a60"][1](*batch))
    plain = mlflow.pytorch.load_model(f"models:/{RERANKER_MODEL}@{CHAMPION}")
    assert isinstance(plain, CrossTVRReranker)


def test_a_run_without_dataset_tags_or_score_is_refused(registry):
    experiment_id, _ = registry
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_metric("twostage/t2v_R1", 99.0)
    with pytest.raises(RegistryError, match="crosstvr.dataset"):
        register_run_models(run.info.run_id)
    with mlflow.start_run(experiment_id=experiment_id, tags={
            "crosstvr.dataset": "d", "crosstvr.encoder_id": "e"}) as run:
        pass
    with pytest.raises(RegistryError, match="twostage/t2v_R1"):
        register_run_models(run.info.run_id)


def test_compare_table_shows_deltas_to_the_pair_champion(registry):
    from flows.compare import compare_runs

    experiment_id, runs = registry
    table = compare_runs([experiment_id], dataset="tiny-generated")
    lines = table.splitlines()
    assert len(lines) == 4  # header + 3 runs of that dataset, no nested runs
    assert "2s R1 color" in lines[0] and "d t2v R1" in lines[0]
    by_id = {run_id[:8]: line for run_id, *_ in runs.values() for line in lines
             if run_id[:8] in line}
    a40, a60 = by_id[runs["a40"][0][:8]], by_id[runs["a60"][0][:8]]
    assert a60.startswith("*") and a60.split()[-2:] == ["+0.0", "+0.0"]
    assert a40.split()[-2:] == ["-20.0", "-10.0"] and CANDIDATE in a40
    assert "41.0" in a40  # per-family column
    assert runs["b10"][0][:8] not in table
    assert len(compare_runs([experiment_id], limit=2).splitlines()) == 3
    assert compare_runs([experiment_id], dataset="nope").startswith("no flow runs")


def test_compare_cli(registry, capsys, tmp_path):
    from flows.cli import main

    experiment_id, runs = registry
    uri = mlflow.get_tracking_uri()
    code = main(["compare", "--dataset", "msrvtt 1k-A", f"tracking.tracking_uri={uri}",
                 "tracking.experiment=registry-test"])
    out = capsys.readouterr().out
    assert code == 0 and runs["b10"][0][:8] in out and "10.0" in out


def test_each_config_gets_its_own_store_after_another_run_in_the_process(tmp_path):
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; the next config's home must win."""
    import mlflow as _mlflow

    from crosstvr_core.config import load_config
    from tasks.tracking import tracking_uri, use_experiment

    first = load_config(None, [f"home={tmp_path / 'a'}"])
    use_experiment(first)
    assert "MLFLOW_TRACKING_URI" in __import__("os").environ  # what mlflow did
    second = load_config(None, [f"home={tmp_path / 'b'}"])
    assert tracking_uri(second) == f"sqlite:///{tmp_path / 'b' / 'mlflow' / 'mlflow.db'}"
    assert _mlflow.get_tracking_uri() != tracking_uri(second)
