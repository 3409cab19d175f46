"""The real flow end to end on the tiny config: Prefect (test server), Ray, Lance, MLflow."""

from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from crosstvr_core.report import METRIC_KEYS
from crosstvr_core.retrieval.metrics import retrieval_metrics
from crosstvr_core.storage import TokenIndex
from tests.conftest import TINY_CONFIG

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def flow_result(prefect_server, ray_local, tmp_path_factory):
    from flows.full_benchmark import crosstvr

    home = tmp_path_factory.mktemp("flow-home")
    overrides = [f"home={home}"]
    result = crosstvr(config_file=str(TINY_CONFIG), overrides=overrides)
    return home, overrides, result


def test_flow_logs_every_metric_to_a_parent_run(flow_result):
    home, _, result = flow_result
    metrics = result["metrics"]
    for stage in ("stage1", "twostage"):
        for direction in ("t2v", "v2t"):
            for key in METRIC_KEYS:
                assert f"{stage}/{direction}_{key}" in metrics
    client = mlflow.MlflowClient(f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    parent = client.get_run(result["mlflow_run_id"])
    assert parent.data.metrics["twostage/t2v_R1"] == pytest.approx(metrics["twostage/t2v_R1"])
    assert "stage1_meanP/t2v_R1" in parent.data.metrics  # zero-shot baseline beside seqTransf
    assert "stage1/t2v_recall_at_5" in parent.data.metrics  # the re-ranker's ceiling (K=5)
    for stage in ("stage1", "twostage"):  # per factor of the generated benchmark's cubes
        for factor in ("colour", "position"):
            assert 0 <= parent.data.metrics[f"{stage}/t2v_twin_acc_{factor}"] <= 100
    assert parent.data.params["train.epochs"] == "2"  # the full resolved config
    assert parent.data.params["encoder.name"] == "crosstvr-tiny-vit"
    assert "prefect.flow_run_id" in parent.data.tags
    assert parent.data.tags["crosstvr.encoder_id"].startswith("crosstvr-tiny-vit|sha256:")
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    # a fresh home: the stills encoder (the default) is pretrained first, once
    assert {c.data.tags["mlflow.runName"] for c in children} == {
        "pretrain-encoder", "stage1", "train-reranker", "two-stage-eval"}
    assert parent.data.tags["crosstvr.pretrain.reused"] == "false"
    checkpoint = parent.data.tags["crosstvr.encoder_checkpoint"]
    assert "-stills-" in checkpoint
    pretrain = next(c for c in children if c.data.tags["mlflow.runName"] == "pretrain-encoder")
    assert pretrain.data.params["pretrain.steps"] == "4"  # tiny.yaml's
    assert "pretrain/i2t_top1" in pretrain.data.metrics
    encoder = client.get_model_version_by_alias("crosstvr-encoder", "champion")
    assert encoder.run_id == pretrain.info.run_id
    # the index encoded with that checkpoint
    sha = encoder.tags["crosstvr.checkpoint_sha256"]
    # (its captions cache the text tower's input embeddings: encoder.text_tokens auto)
    assert parent.data.tags["crosstvr.encoder_id"] == \
        f"crosstvr-tiny-vit|sha256:{sha[:16]}|64px|text=embedding"
    train = next(c for c in children if c.data.tags["mlflow.runName"] == "train-reranker")
    artifacts = {a.path for a in client.list_artifacts(train.info.run_id)}
    assert "figures" in artifacts and "training_history.json" in artifacts
    logged_models = mlflow.search_logged_models(
        experiment_ids=[parent.info.experiment_id], output_format="list")
    assert any(m.source_run_id == train.info.run_id for m in logged_models)


def test_logged_stage1_metrics_recompute_from_the_saved_similarity(flow_result):
    from crosstvr_core.config import load_config
    from tasks.index import load_encoder, token_shapes

    home, _, result = flow_result
    sim = torch.load(home / "runs" / result["mlflow_run_id"] / "stage1_test.pt")
    cfg = load_config(TINY_CONFIG, [f"home={home}"])
    encoder = load_encoder(cfg)
    bank = TokenIndex(cfg.lance_uri, encoder.encoder_id, token_shapes(cfg, encoder)) \
        .load_token_bank("test")
    expected = retrieval_metrics(sim, bank.caption_video)
    assert result["metrics"]["stage1/t2v_R5"] == pytest.approx(expected["t2v"]["R5"])
    assert result["metrics"]["stage1/v2t_MnR"] == pytest.approx(expected["v2t"]["MnR"])
    assert np.isfinite(list(result["metrics"].values())).all()


def test_stage1_candidates_are_exported_for_hard_negatives(flow_result):
    import lancedb

    from crosstvr_core.config import load_config

    home, _, _ = flow_result
    cfg = load_config(TINY_CONFIG, [f"home={home}"])
    table = lancedb.connect(cfg.lance_uri).open_table("stage1_candidates").to_arrow()
    rows = table.to_pylist()
    captions = [r for r in rows if r["query_kind"] == "caption" and r["split"] == "train"]
    assert captions and all(len(r["candidate_ids"]) == cfg.eval.top_k for r in captions)
    assert all(r["scores"] == sorted(r["scores"], reverse=True) for r in captions)
    assert all(r["stage1_model_id"].startswith("seqTransf|") for r in rows)


def test_rerunning_the_flow_skips_unchanged_videos(flow_result):
    from flows.full_benchmark import crosstvr

    home, overrides, _ = flow_result
    again = crosstvr(config_file=str(TINY_CONFIG), overrides=overrides + ["train.epochs=1"])
    client = mlflow.MlflowClient(f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    rerun = client.get_run(again["mlflow_run_id"])
    metrics = rerun.data.metrics
    assert metrics["index/videos_ok"] == 0 and metrics["index/videos_skip"] > 0
    assert metrics["index/captions_encoded"] == 0
    assert rerun.data.tags["crosstvr.pretrain.reused"] == "true"  # the encoder, too
    children = client.search_runs(
        [rerun.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{rerun.info.run_id}'")
    assert "pretrain-encoder" not in {c.data.tags["mlflow.runName"] for c in children}


def test_pretrain_flow_reuses_the_benchmarks_encoder(flow_result, capsys):
    from flows.cli import main
    from flows.pretrain import crosstvr_pretrain

    home, overrides, result = flow_result
    client = mlflow.MlflowClient(f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    checkpoint = client.get_run(result["mlflow_run_id"]).data.tags["crosstvr.encoder_checkpoint"]
    out = crosstvr_pretrain(config_file=str(TINY_CONFIG), overrides=overrides)
    assert out["reused"] and out["checkpoint"] == checkpoint and out["summary"] is None
    parent = client.get_run(out["mlflow_run_id"])
    assert parent.data.tags["crosstvr.flow"] == "pretrain"
    assert parent.data.tags["crosstvr.pretrain.reused"] == "true"
    assert main(["pretrain", "--config", str(TINY_CONFIG), *overrides]) == 0
    assert f"already pretrained on this machine: {checkpoint}" in capsys.readouterr().out


def test_stage1_and_reranker_training_never_run_the_encoder(flow_result, monkeypatch):
    """Train both heads again from the Lance cache with every encoder entry point disabled
    but one: the text tower, on single tokens (word timing) and on caption variants."""
    from crosstvr_core import pipeline
    from crosstvr_core.config import load_config
    from crosstvr_core.models.encoder import FrozenEncoder
    from tasks.index import IndexRef, load_encoder, token_shapes
    from tasks.retrieval import run_stage1, run_train_reranker
    from tasks.tracking import parent_run

    home, _, _ = flow_result
    cfg = load_config(TINY_CONFIG, [f"home={home}", "train.epochs=1", "stage1.epochs=1"])
    encoder = load_encoder(cfg)
    index = TokenIndex(cfg.lance_uri, encoder.encoder_id, token_shapes(cfg, encoder))
    ref = IndexRef(index.uri, encoder.encoder_id, token_shapes(cfg, encoder).__dict__,
                   index.versions(), {})
    calls = []

    def forbidden(*args, **kwargs):
        calls.append(args)
        raise AssertionError("the frozen encoder was called during training")

    texts: list[str] = []
    encode_captions = FrozenEncoder.encode_captions

    def record(self, batch):
        texts.extend(batch)
        return encode_captions(self, batch)

    image_tokens = FrozenEncoder._image_tokens

    def shape_probe_only(self, images):  # loading the encoder probes one blank image
        assert images.shape[0] == 1 and not images.any(), "a frame was encoded in training"
        return image_tokens(self, images)

    monkeypatch.setattr(FrozenEncoder, "encode_frames", forbidden)
    monkeypatch.setattr(FrozenEncoder, "_image_tokens", shape_probe_only)
    monkeypatch.setattr(FrozenEncoder, "encode_captions", record)
    with parent_run(cfg, "no-encoder-check", {}) as parent_id:
        run_dir = str(home / "runs" / "no-encoder")
        stage1 = run_stage1(cfg, ref, run_dir, parent_id)
        reranker = run_train_reranker(cfg, ref, stage1, run_dir, parent_id)
    assert calls == []
    # the text tower sees single tokens (word timing, each distinct one once per bank, plus
    # the load probe), single words (which caption variants may swap) and the variants
    # themselves; never a stored caption again
    stored = set(index.caption_texts().values())
    words = [t for t in texts if " " not in t]
    sentences = [t for t in texts if " " in t]
    assert cfg.reranker.word_timing_term and words
    assert cfg.train.caption_variants > 0 and sentences and not set(sentences) & stored
    variants = pipeline.caption_variants(cfg, index, index.load_token_bank("train"), encoder)
    assert set(sentences) <= set(variants.texts)
    assert stage1.metrics["stage1/t2v_R1"] >= 0 and reranker.checkpoint.endswith("reranker.pt")


def test_external_stage1_matrix_is_used_as_given(flow_result, tmp_path):
    """Feed meanP's own test matrix back as an 'external retriever': metrics must match."""
    import json

    from crosstvr_core.config import load_config
    from crosstvr_core.retrieval.stage1 import meanp_similarity
    from tasks.index import IndexRef, load_encoder, token_shapes
    from tasks.retrieval import run_stage1
    from tasks.tracking import parent_run

    home, _, _ = flow_result
    cfg = load_config(TINY_CONFIG, [f"home={home}"])
    encoder = load_encoder(cfg)
    index = TokenIndex(cfg.lance_uri, encoder.encoder_id, token_shapes(cfg, encoder))
    test = index.load_token_bank("test")
    sim = meanp_similarity(test).numpy()
    order = np.random.default_rng(0).permutation(test.num_videos)  # any column order works
    np.save(tmp_path / "sim.npy", sim[:, order])
    (tmp_path / "captions.json").write_text(json.dumps(test.caption_ids))
    (tmp_path / "videos.json").write_text(json.dumps([test.video_ids[i] for i in order]))
    cfg = load_config(TINY_CONFIG, [
        f"home={home}", "stage1.method=external",
        f"stage1.external_similarity={tmp_path / 'sim.npy'}",
        f"stage1.external_caption_ids={tmp_path / 'captions.json'}",
        f"stage1.external_video_ids={tmp_path / 'videos.json'}",
    ])
    ref = IndexRef(index.uri, encoder.encoder_id, token_shapes(cfg, encoder).__dict__,
                   index.versions(), {})
    with parent_run(cfg, "external-check", {}) as parent_id:
        result = run_stage1(cfg, ref, str(tmp_path / "run"), parent_id)
    for key in ("t2v_R1", "t2v_R5", "v2t_MnR", "t2v_recall_at_5"):
        assert result.metrics[f"stage1/{key}"] == pytest.approx(result.metrics[f"stage1_meanP/{key}"])


def test_experiment_script_gives_the_flows_numbers(flow_result):
    """experiments/two_stage.py runs the flow's steps in-process through the same library
    functions: on the flow's own index and config it reproduces the flow's metrics."""
    import sys
    from pathlib import Path

    from crosstvr_core.config import load_config

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
    import two_stage as experiment

    home, overrides, result = flow_result
    cfg = load_config(TINY_CONFIG, overrides)
    torch.set_num_threads(cfg.train.torch_threads)
    banks = experiment.load_banks(cfg)
    assert banks.val is not None  # the tiny benchmark validates on its own cube split
    mine = experiment.run(cfg, banks, progress=False)["metrics"]
    flow = result["metrics"]
    for key in ("stage1_meanP/t2v_R1", "stage1/t2v_R1", "stage1/v2t_MnR", "stage1_val/t2v_R1",
                "twostage/t2v_R1",
                "twostage/v2t_R1", "twostage/t2v_MnR", "stage2only/t2v_R1",
                "twostage/t2v_fusion_weight", "twostage/v2t_fusion_weight"):
        assert mine[key] == pytest.approx(flow[key]), key


# ------------------------------------------------------------------ search what was indexed


def _search_cli(flow_result, *args):
    import json

    from flows.cli import main

    home, overrides, _ = flow_result
    return main(["search", *args, "--config", str(TINY_CONFIG), *overrides]), json


def _test_captions(home):
    from crosstvr_core.config import load_config

    cfg = load_config(TINY_CONFIG, [f"home={home}"])
    index = TokenIndex.open_existing(cfg.lance_uri)
    bank = index.load_token_bank("test")
    texts = index.caption_texts()
    return cfg, index, bank, [(texts[c], bank.video_ids[int(v)])
                              for c, v in zip(bank.caption_ids, bank.caption_video, strict=True)]


def test_search_cli_answers_with_the_champion_models(flow_result, capsys):
    """`crosstvr search` over the whole index: stage-1 scores are the flow's own cosines,
    the fused order is stage 1 + w x stage 2, and it says which models and tables answered."""
    import json

    home, overrides, result = flow_result
    _, index, bank, captions = _test_captions(home)
    text, truth = captions[0]
    code, _ = _search_cli(flow_result, text, "-k", "5", "--json")
    assert code == 0
    answer = json.loads(capsys.readouterr().out)
    hits = answer["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert all(h["stage2"] is not None for h in hits)
    fused = [h["fused"] for h in hits]
    assert fused == sorted(fused, reverse=True)
    assert answer["answered_by"]["run"] == result["mlflow_run_id"]
    assert "version" in answer["answered_by"]["crosstvr-reranker"]
    assert answer["answered_by"]["lance.video_tokens"] == str(index.video_tokens.version)
    # golden: over the whole index, each test video's stage-1 score is the flow's own
    code, _ = _search_cli(flow_result, text, "-k", "1000", "--json", "--no-rerank")
    everything = json.loads(capsys.readouterr().out)["stage1_hits"]
    assert code == 0 and len(everything) == index.video_tokens.count_rows()
    sim = torch.load(next((home / "runs" / result["mlflow_run_id"]).rglob("stage1_test.pt")))
    column = {v: i for i, v in enumerate(bank.video_ids)}
    scores = {h["video_id"]: h["stage1"] for h in everything}
    for video, j in column.items():
        assert scores[video] == pytest.approx(float(sim[0, j]), abs=1e-4)
    stage1_scores = [h["stage1"] for h in everything]
    assert stage1_scores == sorted(stage1_scores, reverse=True)
    assert all(h["uri"] for h in hits)


def test_search_cli_refuses_bad_requests_with_a_message(flow_result, capsys):
    home, _, _ = flow_result
    cases = [
        (["a red circle", "--dataset", "no-such-dataset"], "no index"),
        (["   "], "empty"),
        (["a red circle", "--model", "0123456789abcdef"], "no MLflow run"),
        (["a red circle", "encoder.pretrained=null"], "encoder mismatch"),
    ]
    for args, message in cases:
        code, _ = _search_cli(flow_result, *args)
        err = capsys.readouterr().err
        assert code == 1, args
        assert message in err, (args, err)
        assert "Traceback" not in err


def test_search_cli_stage1_only_long_query_and_gallery(flow_result, capsys, tmp_path):
    import json

    long_query = " ".join(["a small red circle moves to the left"] * 20)
    code, _ = _search_cli(flow_result, long_query, "--no-rerank", "--json", "-k", "3",
                          "--html", str(tmp_path / "page"))
    assert code == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["truncated"] is True
    assert all(h["stage2"] is None for h in answer["hits"])
    assert [h["video_id"] for h in answer["hits"]] == \
        [h["video_id"] for h in answer["stage1_hits"]]
    page = (tmp_path / "page" / "index.html").read_text()
    assert "moves to the left" in page and "<img" in page


def test_batch_search_flow_stores_answers_once(flow_result, tmp_path):
    """crosstvr-search/batch: answers in the index's search_results table, R@K against the
    ground truth logged to MLflow, a gallery; a rerun with the same inputs is a no-op."""
    import json

    import lancedb

    from flows.search import crosstvr_search
    from tasks.search import RESULTS_TABLE

    home, overrides, _ = flow_result
    cfg, index, _, captions = _test_captions(home)
    queries = tmp_path / "queries.jsonl"
    queries.write_text("".join(json.dumps({"query": t, "video": v}) + "\n"
                               for t, v in captions[:6]))
    first = crosstvr_search(str(queries), k=4, config_file=str(TINY_CONFIG),
                            overrides=overrides)
    assert first["reused"] is False
    table = lancedb.connect(index.uri).open_table(RESULTS_TABLE)
    rows = table.to_arrow().to_pylist()
    assert len(rows) == 6 * 4
    by_query: dict[str, list] = {}
    for row in rows:
        by_query.setdefault(row["query_id"], []).append(row)
    r1 = 100.0 * sum(any(r["is_truth"] and r["rank"] == 1 for r in rs)
                     for rs in by_query.values()) / 6
    assert first["metrics"]["search/R1"] == pytest.approx(r1)
    client = mlflow.MlflowClient(f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    parent = client.get_run(first["mlflow_run_id"])
    assert parent.data.metrics["search/R1"] == pytest.approx(r1)
    step = client.get_run(first["mlflow_step_run"])
    assert "gallery" in {a.path for a in client.list_artifacts(step.info.run_id)}
    version = table.version
    again = crosstvr_search(str(queries), k=4, config_file=str(TINY_CONFIG),
                            overrides=overrides)
    assert again["reused"] is True and again["batch_key"] == first["batch_key"]
    assert lancedb.connect(index.uri).open_table(RESULTS_TABLE).version == version


# ------------------------------------------------------------------ the ablation deployment


def test_ablation_base_variant_reproduces_the_benchmark(flow_result):
    """crosstvr-ablation on the benchmark's own index (tests/test_params.py checks its runs
    and files): the variant without overrides is the benchmark's re-ranker, trained
    deterministically from the same tokens and the same stage 1, so its row carries the full
    flow's numbers, the re-ranker alone and the twins included."""
    from flows.ablation import crosstvr_ablation
    from flows.params import AblationVariant

    home, overrides, result = flow_result
    out = crosstvr_ablation(config_file=str(TINY_CONFIG), overrides=overrides,
                            variants=[AblationVariant(name="base", overrides=[]),
                                      AblationVariant(name="single",
                                                      overrides=["reranker.ensemble_size=1"])])
    flow = result["metrics"]
    assert out["stage1_t2v_R1"] == pytest.approx(flow["stage1/t2v_R1"])
    base, single_row = out["rows"]
    assert (base["variant"], base["overrides"]) == ("base", "(base)")
    for title, key in (("t2v R@1", "twostage/t2v_R1"), ("v2t R@1", "twostage/v2t_R1"),
                       ("t2v MnR", "twostage/t2v_MnR"),
                       ("stage 2 alone t2v R@1", "stage2only/t2v_R1"),
                       ("stage 2 alone v2t R@1", "stage2only/v2t_R1"),
                       ("t2v colour twins", "twostage/t2v_twin_acc_colour"),
                       ("t2v position twins", "twostage/t2v_twin_acc_position")):
        assert base[title] == pytest.approx(flow[key]), title
    assert base["gain t2v R@1"] == pytest.approx(flow["twostage/t2v_R1"]
                                                 - flow["stage1/t2v_R1"])
    # the paired twin comparison agrees with the two accuracies it explains
    for direction in ("t2v", "v2t"):
        for factor in ("colour", "position"):
            gained = flow[f"twostage/{direction}_twin_gained_{factor}"]
            lost = flow[f"twostage/{direction}_twin_lost_{factor}"]
            change = (flow[f"twostage/{direction}_twin_acc_{factor}"]
                      - flow[f"stage1/{direction}_twin_acc_{factor}"])
            assert np.sign(change) == np.sign(gained - lost), (direction, factor)
            assert 0.0 < flow[f"twostage/{direction}_twin_p_{factor}"] <= 1.0
    # the default ensemble of two through the flow's own tasks: its first member is the
    # single re-ranker, weight for weight; each member kept its own checkpoints and best epoch
    runs = Path(home) / "runs" / out["mlflow_run_id"]
    single = torch.load(runs / "single" / "reranker.pt")
    ensemble = torch.load(runs / "base" / "reranker.pt")
    assert len(ensemble["epoch"]) == 2 and isinstance(single["epoch"], int)
    for name, value in single["state_dict"].items():
        assert torch.equal(ensemble["state_dict"][f"members.0.{name}"], value), name
    assert any(not torch.equal(ensemble["state_dict"][f"members.1.{name}"], value)
               for name, value in single["state_dict"].items())
    assert sorted(p.name for p in (runs / "base" / "reranker_checkpoints").iterdir()) == [
        "member-0", "member-1"]
    assert 0.0 <= single_row["stage 2 alone t2v R@1"] <= 100.0
    client = mlflow.MlflowClient(f"sqlite:///{Path(home) / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_run(out["mlflow_run_id"]).info.experiment_id
    trained = client.search_runs([experiment], "metrics.`train/member1/best_epoch` >= 1")
    assert trained  # the benchmark's own training and the ablation's base variant
    for run in trained:
        assert {"train/ensemble_val_mean_R1", "train/member0/loss"} <= run.data.metrics.keys()
