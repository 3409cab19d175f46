"""Typed flow parameters, and the flow that takes the richest ones: the ablation.

* A bad parameter fails a flow run at once (Prefect state Failed, message naming it) before
  a Ray runtime or an MLflow run starts.
* The ablation flow on the tiny config: 2 variants, 1 epoch, index and stage 1 once; its
  table, figure, nested runs, and lineage (every step run names the Lance versions it read,
  and `checkout_run_tables` opens exactly them).
"""

from __future__ import annotations

import csv
import io

import mlflow
import pytest

from flows.params import (
    PAPER_ABLATION,
    AblationParams,
    FlowParameterError,
    RunParams,
    validate_params,
)
from tests.conftest import TINY_CONFIG


def test_good_parameters_resolve_the_config():
    params = validate_params(RunParams, "crosstvr", config_file=str(TINY_CONFIG),
                             overrides=["train.epochs=3"])
    assert params.config.train.epochs == 3 and params.config.data.name == "tiny-generated"
    assert validate_params(RunParams, "crosstvr", overrides=None).overrides == []


@pytest.mark.parametrize(("params", "named"), [
    ({"overrides": ["train.epochz=3"]}, "train.epochz"),
    ({"overrides": ["train.epochs=zero"]}, "train.epochs"),
    ({"overrides": ["reranker.attention=diagonal"]}, "reranker.attention"),
    ({"overrides": ["epochs"]}, "override 'epochs': expected key=value"),
    ({"config_file": "no/such.yaml"}, "config_file: config file 'no/such.yaml': not found"),
    ({"overrides": "train.epochs=3"}, "overrides"),  # a string, not a list
    ({"surprise": 1}, "surprise"),
])
def test_a_bad_parameter_is_named(params, named):
    with pytest.raises(FlowParameterError, match="bad parameter") as err:
        validate_params(RunParams, "crosstvr", **params)
    assert named in str(err.value) and "flow 'crosstvr'" in str(err.value)


def test_ablation_variants_are_validated_one_by_one():
    params = validate_params(AblationParams, "crosstvr-ablation", config_file=str(TINY_CONFIG))
    assert [v.name for v in params.variants] == [v.name for v in PAPER_ABLATION]
    assert params.variant_config("joint").reranker.attention == "joint"
    assert params.variant_config("unshared").reranker.share_parameters is False
    assert params.variant_config("no_hard_negatives").train.hard_negatives is False
    assert params.variant_config("patches_4").reranker.num_selected_patches == 4
    assert params.variant_config("bce_loss").train.loss == "bce"
    for variants, named in [
        ([{"name": "x", "overrides": ["reranker.num_querys=2"]}], "variant 'x'"),
        ([{"name": "x", "overrides": ["sampling.num_frames=2"]}], "shared index or stage 1"),
        ([{"name": "x"}, {"name": "x"}], "duplicate names ['x']"),
        ([], "at least one"),
        ([{"name": "a b"}], "variants.0.name"),
    ]:
        with pytest.raises(FlowParameterError, match="bad parameter") as err:
            validate_params(AblationParams, "crosstvr-ablation", variants=variants)
        assert named in str(err.value)


@pytest.mark.integration
def test_a_bad_override_fails_the_flow_run_at_once(prefect_server, tmp_path):
    from prefect.states import State

    from flows.full_benchmark import crosstvr

    state = crosstvr(config_file=str(TINY_CONFIG),
                     overrides=[f"home={tmp_path}", "train.epochz=3"], return_state=True)
    assert isinstance(state, State) and state.is_failed()
    assert "train.epochz" in state.message
    with pytest.raises(FlowParameterError, match="train.epochz"):
        state.result()
    assert not (tmp_path / "mlflow").exists()  # nothing started: no MLflow store, no run


@pytest.fixture(scope="module")
def ablation(prefect_server, ray_local, tmp_path_factory):
    from flows.ablation import crosstvr_ablation

    home = tmp_path_factory.mktemp("ablation-home")
    variants = [{"name": "decoupled", "overrides": []},
                # hard negatives from the stored stage-1 top K, found through Stage1Ref
                {"name": "joint_unshared", "overrides": ["reranker.attention=joint",
                                                         "reranker.share_parameters=false",
                                                         "train.negative_source=stage1_top_k"]}]
    result = crosstvr_ablation(
        config_file=str(TINY_CONFIG),
        overrides=[f"home={home}", "train.epochs=1", "stage1.epochs=1", "train.val_fraction=0",
                   "tracking.log_model=false"],
        variants=variants)
    client = mlflow.MlflowClient(f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    return home, result, client


@pytest.mark.integration
def test_ablation_logs_one_table_and_figure(ablation):
    _, result, client = ablation
    rows = result["rows"]
    assert [r["variant"] for r in rows] == ["decoupled", "joint_unshared"]
    for row in rows:
        assert 0.0 <= row["t2v R@1"] <= 100.0
        assert row["gain t2v R@1"] == pytest.approx(row["t2v R@1"] - result["stage1_t2v_R1"])
    parent = client.get_run(result["mlflow_run_id"])
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "ablation")}
    assert {"ablation/ablation.md", "ablation/ablation.csv",
            "ablation/t2v_R1_per_variant.png", "ablation/variants.json"} <= artifacts
    local = client.download_artifacts(parent.info.run_id, "ablation/ablation.csv")
    with open(local) as f:
        table = list(csv.DictReader(io.StringIO(f.read())))
    assert [r["variant"] for r in table] == ["decoupled", "joint_unshared"]
    assert float(table[1]["t2v R@1"]) == pytest.approx(rows[1]["t2v R@1"])
    assert parent.data.metrics["ablation/joint_unshared/t2v_R1"] == pytest.approx(
        rows[1]["t2v R@1"])


@pytest.mark.integration
def test_ablation_shares_index_and_stage1_across_variants(ablation):
    _, result, client = ablation
    parent_id = result["mlflow_run_id"]
    experiment = client.get_run(parent_id).info.experiment_id
    children = client.search_runs([experiment],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    names = sorted(c.data.tags["mlflow.runName"] for c in children)
    # stage 1 once; the stills encoder pretrained once (a fresh home) before the index
    assert names == ["pretrain-encoder", "stage1", "variant-decoupled", "variant-joint_unshared"]
    for child in children:
        if not child.data.tags["mlflow.runName"].startswith("variant-"):
            continue
        steps = client.search_runs(
            [experiment], filter_string=f"tags.mlflow.parentRunId = '{child.info.run_id}'")
        assert sorted(s.data.tags["mlflow.runName"] for s in steps) == [
            "train-reranker", "two-stage-eval"]
        evaluation = next(s for s in steps if s.data.tags["mlflow.runName"] == "two-stage-eval")
        variant = child.data.params["ablation.variant"]
        row = next(r for r in result["rows"] if r["variant"] == variant)
        assert evaluation.data.metrics["twostage/t2v_R1"] == pytest.approx(row["t2v R@1"])
    joint = next(c for c in children if c.data.tags["mlflow.runName"] == "variant-joint_unshared")
    assert joint.data.params["reranker.attention"] == "joint"
    assert joint.data.params["reranker.share_parameters"] == "False"


@pytest.mark.integration
def test_every_step_run_records_and_can_check_out_the_data_it_read(ablation):
    from crosstvr_core.config import load_config
    from tasks.tracking import checkout_run_tables, run_lineage

    home, result, client = ablation
    parent_id = result["mlflow_run_id"]
    parent = client.get_run(parent_id)
    experiment = parent.info.experiment_id
    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    stage1 = client.search_runs([experiment], filter_string=(
        f"tags.mlflow.parentRunId = '{parent_id}' and tags.`crosstvr.step` = 'stage1'"))[0]
    lineage = run_lineage(stage1.info.run_id)
    cfg = load_config(TINY_CONFIG, [f"home={home}"])
    assert lineage["uri"] == cfg.lance_uri and lineage["dataset"] == "tiny-generated"
    assert lineage["encoder_id"] == parent.data.tags["crosstvr.encoder_id"]
    assert set(lineage["versions"]) == {"videos", "video_tokens", "captions"}
    assert lineage == run_lineage(parent_id)
    tables = checkout_run_tables(stage1.info.run_id)
    expected_rows = {name: t.count_rows() for name, t in tables.items()}
    assert expected_rows["video_tokens"] == 48 + 8 + 16  # tiny: 48 train, 8 val, 16 test

    # later writes make new versions; the checkout still shows what the run read
    import lancedb

    live = lancedb.connect(cfg.lance_uri).open_table("videos")
    live.delete("split = 'test'")
    assert live.count_rows() < expected_rows["videos"]
    again = checkout_run_tables(stage1.info.run_id)
    assert {name: t.count_rows() for name, t in again.items()} == expected_rows
    assert again["videos"].version == lineage["versions"]["videos"]
    with pytest.raises(ValueError, match="no Lance lineage tags"):
        run_lineage(_untagged_run(experiment))


def _untagged_run(experiment_id: str) -> str:
    with mlflow.start_run(experiment_id=experiment_id) as run:
        pass
    return run.info.run_id
