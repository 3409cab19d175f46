"""MLflow wiring against a real SQLite tracking store."""

from __future__ import annotations

import mlflow
import pytest

from crosstvr_core.config import load_config
from tasks.tracking import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND, use_experiment


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """One SQLite store for the module (creating one takes seconds)."""
    yield tmp_path_factory.mktemp("tracking-home")
    mlflow.set_tracking_uri(None)


def config(home, experiment: str):
    return load_config(None, [f"home={home}", f"tracking.experiment={experiment}"])


def test_experiments_open_on_their_runs_table(home) -> None:
    """MLflow 3's UI shows the GenAI overview unless the experiment kind says model training."""
    experiment_id = use_experiment(config(home, "fresh"))
    client = mlflow.MlflowClient()
    assert mlflow.get_tracking_uri() == f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    tags = client.get_experiment(experiment_id).tags
    assert tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND == "custom_model_development"
    assert use_experiment(config(home, "fresh")) == experiment_id  # found again, unchanged

    # made before this tag was set (or by someone else): marked on first use
    older = client.create_experiment("older")
    assert EXPERIMENT_KIND_TAG not in client.get_experiment(older).tags
    assert use_experiment(config(home, "older")) == older
    assert client.get_experiment(older).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND

    # a kind someone chose is theirs to keep
    chosen = client.create_experiment("chosen", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    use_experiment(config(home, "chosen"))
    assert client.get_experiment(chosen).tags[EXPERIMENT_KIND_TAG] == "genai_development"
