from pathlib import Path

import pytest

from crosstvr_core.config import STILLS_PRETRAINED, ConfigError, CrossTVRConfig, load_config


def test_defaults_are_the_embedded_benchmark():
    cfg = load_config()
    assert cfg.data.kind == "generated"
    assert cfg.encoder.name == "crosstvr-tiny-vit"
    assert cfg.encoder.pretrained == STILLS_PRETRAINED  # pretrained on generated stills
    assert cfg.eval.top_k == 15 and cfg.eval.fusion_weight is None


def test_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 3\n  lr: 0.01\ndata:\n  name: mine\n")
    cfg = load_config(path, ["train.epochs=5", "encoder.pretrained=openai", "train.lr=1e-4"])
    assert cfg.train.epochs == 5  # override wins over the file
    assert cfg.train.lr == pytest.approx(1e-4)
    assert cfg.data.name == "mine"
    assert cfg.encoder.pretrained == "openai"


def test_toml_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[eval]\ntop_k = 7\n")
    assert load_config(path).eval.top_k == 7


def test_null_override_and_flat_keys():
    cfg = load_config(None, ["ray.address=null"])
    assert cfg.ray.address is None
    flat = cfg.flat()
    assert flat["train.epochs"] == cfg.train.epochs and "reranker.hidden_size" in flat


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["train.epochs=0"], "train.epochs"),
        (["train.epoch=3"], "train.epoch"),
        (["nosuchsection.x=1"], "nosuchsection"),
        (["train.epochs"], "key=value"),
        (["eval.fusion_score=max"], "eval.fusion_score"),
    ],
)
def test_bad_overrides_name_the_key(overrides, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(None, overrides)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(bad)
    wrong = tmp_path / "c.json"
    wrong.write_text("{}")
    with pytest.raises(ConfigError, match="expected .yaml"):
        load_config(wrong)


def test_home_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("CROSSTVR_HOME", str(tmp_path))
    cfg = CrossTVRConfig()
    assert cfg.home_path == tmp_path.resolve()
    assert cfg.lance_uri.startswith(str(tmp_path.resolve()))


def test_task_retries_come_from_the_config():
    from tasks.index import index_task
    from tasks.retrieval import train_task
    from tasks.runtime import retrying

    cfg = load_config(None, ["orchestration.task_retries=3", "orchestration.index_retries=0",
                             "orchestration.retry_delay_s=1.5"])
    assert retrying(train_task, cfg).retries == 3
    assert retrying(index_task, cfg, kind="index").retries == 0
    assert retrying(index_task, cfg).retries == 3  # the kind decides, never the task's name
    assert retrying(train_task, cfg).retry_delay_seconds == 1.5


def _fields(model, prefix=""):
    """(dotted key, FieldInfo) of every field of model and of the sections inside it."""
    from pydantic import BaseModel

    for name, field in model.model_fields.items():
        yield prefix + name, field
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield from _fields(field.annotation, f"{prefix}{name}.")


def test_every_field_has_a_description():
    fields = dict(_fields(CrossTVRConfig))
    assert "reranker.hidden_size" in fields and "data" in fields  # walked into the sections
    missing = [key for key, field in fields.items() if not (field.description or "").strip()]
    assert not missing, f"config fields without Field(description=...): {missing}"


def test_explain_lists_every_key():
    from crosstvr_core.config import explain

    text = explain()
    missing = [key for key in CrossTVRConfig().flat() if f"| `{key}` |" not in text]
    assert not missing, f"explain() leaves out {missing}"
    assert "| current |" not in text  # no config given: no current column


def test_explain_shows_what_differs_from_the_default():
    from crosstvr_core.config import explain

    text = explain(load_config(None, ["train.epochs=3", "search.model=a|b"]))
    assert "| `train.epochs` | `int (>= 1)` | `6` | `3` |" in text
    assert r"`a\|b`" in text  # pipes escaped inside table cells
    row = next(line for line in text.splitlines() if line.startswith("| `eval.top_k` |"))
    assert "| current |" not in text.split("## `eval`")[1].split("## ")[0]  # unchanged section
    assert row.startswith("| `eval.top_k` | `int (>= 1)` | `15` | K:")


def test_configuration_doc_is_up_to_date():
    from crosstvr_core.config import EXPLAIN_COMMAND, explain

    doc = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
    assert doc.read_text() == explain(), (
        f"docs/configuration.md is stale: regenerate it with `{EXPLAIN_COMMAND}`")


def test_cli_config_explain(capsys):
    from crosstvr_core.config import explain
    from flows.cli import main

    assert main(["config", "--explain"]) == 0
    assert capsys.readouterr().out == explain()
    assert main(["config", "--explain", "train.epochs=2"]) == 0
    assert "| `train.epochs` | `int (>= 1)` | `6` | `2` |" in capsys.readouterr().out
