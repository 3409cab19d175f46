"""Model registry: a finished run's re-ranker and stage-1 head become registered versions.

Champions are per dataset + encoder: a score on one corpus with one frozen encoder says
nothing about another. Each registered version carries the tags `crosstvr.dataset`,
`crosstvr.encoder_id` and its score (two-stage t2v R@1), and gets aliases:

* `champion-<pair>` when it beats that pair's current champion (or there is none), else
  `candidate-<pair>`, where <pair> = `<dataset slug>-<8 hex of sha1(encoder_id)>`;
* the plain `champion` follows the most recently crowned pair champion, so
  `models:/crosstvr-reranker@champion` always loads a working re-ranker; the plain
  `candidate` follows the most recent candidate.

Needs a DB-backed tracking store (SQLite, PostgreSQL, or an MLflow server over one).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from dataclasses import dataclass

import mlflow
from mlflow.exceptions import MlflowException
from prefect import task

from crosstvr_core.retrieval.text_search import SearchModels, stage1_key
from tasks.tracking import DATASET_TAG, ENCODER_TAG

RERANKER_MODEL = "crosstvr-reranker"
STAGE1_MODEL = "crosstvr-stage1"
# logged-model name (as tasks/retrieval.py logs it) -> registered model name
REGISTERED_NAMES = {"reranker": RERANKER_MODEL, "stage1_seqtransf": STAGE1_MODEL}
CHAMPION, CANDIDATE = "champion", "candidate"
SCORE_METRIC = "twostage/t2v_R1"
SCORE_TAG = "crosstvr.score.twostage_t2v_R1"
ROLE_TAG = "crosstvr.registry_role"
PREVIOUS_SCORE_TAG = "crosstvr.previous_champion_score"  # the pair champion's, when created


class RegistryError(ValueError):
    """A run cannot be registered; the message names the run and what is missing."""


@dataclass(frozen=True)
class Registration:
    model_name: str
    version: str
    role: str  # champion | candidate
    pair_alias: str
    score: float
    previous_champion_score: float | None


def pair_key(dataset: str, encoder_id: str) -> str:
    """Alias-safe key of a dataset + encoder pair (aliases allow only [A-Za-z0-9_-])."""
    slug = re.sub(r"[^\w\-]+", "_", dataset).strip("_")[:80] or "dataset"
    return f"{slug}-{hashlib.sha1(encoder_id.encode()).hexdigest()[:8]}"


def pair_alias(role: str, dataset: str, encoder_id: str) -> str:
    return f"{role}-{pair_key(dataset, encoder_id)}"


def _version_by_alias(client: mlflow.MlflowClient, name: str, alias: str):
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def champion_version(dataset: str, encoder_id: str, model_name: str = RERANKER_MODEL,
                     client: mlflow.MlflowClient | None = None):
    """The champion ModelVersion of a dataset + encoder pair, or None."""
    client = client or mlflow.MlflowClient()
    return _version_by_alias(client, model_name, pair_alias(CHAMPION, dataset, encoder_id))


def champion_score(dataset: str, encoder_id: str, model_name: str = RERANKER_MODEL,
                   client: mlflow.MlflowClient | None = None) -> float | None:
    version = champion_version(dataset, encoder_id, model_name, client)
    return None if version is None else float(version.tags[SCORE_TAG])


def _run_logged_models(client: mlflow.MlflowClient, parent) -> dict[str, str]:
    """Logged-model name -> model id, for models logged by the parent's nested step runs."""
    experiment_id = parent.info.experiment_id
    children = client.search_runs(
        [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    found: dict[str, str] = {}
    for run_id in [parent.info.run_id, *(c.info.run_id for c in children)]:
        for model in mlflow.search_logged_models(
                experiment_ids=[experiment_id], filter_string=f"source_run_id = '{run_id}'",
                output_format="list"):
            if model.name in REGISTERED_NAMES:
                found[model.name] = model.model_id
    return found


def ensure_registered_model(client: mlflow.MlflowClient, name: str,
                            description: str = "CrossTVR; aliases champion-<dataset>-<encoder "
                            "hash> per dataset + encoder pair, plain `champion` = the latest "
                            "crowned") -> None:
    """Create registered model `name` unless it exists (two runs may race to create it)."""
    try:
        client.get_registered_model(name)
    except MlflowException:
        with contextlib.suppress(MlflowException):  # else created concurrently
            client.create_registered_model(name, description=description)


def _versions_of_run(client: mlflow.MlflowClient, name: str, run_id: str) -> dict[str, object]:
    """model id -> the version of registered model `name` made from run `run_id` (by an
    earlier, interrupted registration of the same run)."""
    found = {}
    try:
        versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except MlflowException:  # no such registered model yet
        return found
    for version in versions:
        model_id = getattr(version, "model_id", None) or version.source.removeprefix("models:/")
        found.setdefault(model_id, version)
    return found


def register_run_models(parent_run_id: str, client: mlflow.MlflowClient | None = None
                        ) -> list[Registration]:
    """Register the re-ranker (and stage-1 head, if one was trained) of a finished flow run.

    Each becomes champion of its dataset + encoder pair when its two-stage t2v R@1 beats the
    pair's champion of the same registered model (strictly; the first one always does),
    otherwise candidate. Returns what was registered; tags the parent run with the role.

    Only a FINISHED run is registered: a run whose tracking server died before it ended
    never becomes a champion. Every model version is created before any alias moves, and a
    second call for the same run reuses the versions the first one made, so a registration
    cut short (the tracking server died part way) is completed by calling it again, never
    duplicated.
    """
    client = client or mlflow.MlflowClient()
    parent = client.get_run(parent_run_id)
    tags = parent.data.tags
    missing = [t for t in (DATASET_TAG, ENCODER_TAG) if not tags.get(t)]
    if missing:
        raise RegistryError(f"run {parent_run_id}: no tag {', '.join(missing)}; "
                            "register only runs of the crosstvr flow (it tags them)")
    if SCORE_METRIC not in parent.data.metrics:
        raise RegistryError(f"run {parent_run_id}: no metric '{SCORE_METRIC}' "
                            "(the two-stage evaluation did not finish)")
    if parent.info.status != "FINISHED":
        raise RegistryError(f"run {parent_run_id} is {parent.info.status}, not FINISHED: only "
                            "a run that ended successfully is registered")
    dataset, encoder_id = tags[DATASET_TAG], tags[ENCODER_TAG]
    score = float(parent.data.metrics[SCORE_METRIC])
    logged = _run_logged_models(client, parent)
    if "reranker" not in logged:
        raise RegistryError(f"run {parent_run_id}: no logged model 'reranker' "
                            "(tracking.log_model=false?)")
    try:
        return _register(client, parent_run_id, dataset, encoder_id, score, logged)
    except MlflowException as exc:
        raise RegistryError(
            f"run {parent_run_id} finished, but registering its models in "
            f"{mlflow.get_tracking_uri()} stopped part way: {exc.message[:400]}. Aliases move "
            "only after every version exists, so no alias names a version of an unfinished "
            f"run; `crosstvr register {parent_run_id}` completes it once the tracking server "
            "answers (it reuses the versions already made)") from exc


def _register(client: mlflow.MlflowClient, parent_run_id: str, dataset: str, encoder_id: str,
              score: float, logged: dict[str, str]) -> list[Registration]:
    planned = []
    for logged_name, model_id in sorted(logged.items()):  # 1. versions, no alias yet
        name = REGISTERED_NAMES[logged_name]
        ensure_registered_model(client, name)
        current = champion_version(dataset, encoder_id, name, client)
        version = _versions_of_run(client, name, parent_run_id).get(model_id)
        if current is not None and version is not None and \
                str(current.version) == str(version.version):  # crowned by an earlier attempt
            role, previous = CHAMPION, version.tags.get(PREVIOUS_SCORE_TAG)
            previous = None if previous in (None, "") else float(previous)
        else:
            previous = None if current is None else float(current.tags[SCORE_TAG])
            role = CHAMPION if previous is None or score > previous else CANDIDATE
        if version is None:
            version = client.create_model_version(
                name, f"models:/{model_id}", run_id=parent_run_id, model_id=model_id,
                tags={DATASET_TAG: dataset, ENCODER_TAG: encoder_id,
                      SCORE_TAG: f"{score:.6f}", ROLE_TAG: role,
                      PREVIOUS_SCORE_TAG: "" if previous is None else f"{previous:.6f}",
                      "crosstvr.parent_run_id": parent_run_id})
        elif version.tags.get(ROLE_TAG) != role:
            client.set_model_version_tag(name, str(version.version), ROLE_TAG, role)
        planned.append((name, str(version.version), role, previous))
    registrations = []
    for name, version, role, previous in planned:  # 2. then the aliases
        alias = pair_alias(role, dataset, encoder_id)
        client.set_registered_model_alias(name, alias, version)
        client.set_registered_model_alias(name, role, version)
        registrations.append(Registration(name, version, role, alias, score, previous))
    role = next(r.role for r in registrations if r.model_name == RERANKER_MODEL)
    client.set_tag(parent_run_id, ROLE_TAG, role)
    return registrations


# the flows register after their run has ended (FINISHED); retried like any step, and a
# retry completes what an interrupted attempt started
register_task = task(register_run_models, name="register-models")


def load_registered_reranker(dataset: str | None = None, encoder_id: str | None = None,
                             alias: str = CHAMPION):
    """The re-ranker under `alias` (plain, or of one dataset + encoder pair), in eval mode."""
    if (dataset is None) != (encoder_id is None):
        raise ValueError("load_registered_reranker: give both dataset and encoder_id, or neither")
    name = alias if dataset is None else pair_alias(alias, dataset, encoder_id)
    model = mlflow.pytorch.load_model(f"models:/{RERANKER_MODEL}@{name}", map_location="cpu")
    return model.eval()


def _run_models(client: mlflow.MlflowClient, run_id: str) -> dict[str, str]:
    """Logged-model name -> model id of a flow run (its parent run, when given a step run)."""
    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        raise RegistryError(f"no MLflow run '{run_id}' in this tracking store") from err
    parent_id = run.data.tags.get("mlflow.parentRunId")
    if parent_id:
        run = client.get_run(parent_id)
    return _run_logged_models(client, run)


def load_search_models(dataset: str, encoder_id: str, model: str,
                       client: mlflow.MlflowClient | None = None) -> SearchModels:
    """The stage-1 head and re-ranker that answer searches of a dataset + encoder pair.

    `model` is a registry alias (champion | candidate: this pair's) or a flow run id. The
    stage 1 always comes from the same run as the re-ranker, whose lists and fusion weights
    it was trained with; a run without a trained stage 1 searches with meanP."""
    client = client or mlflow.MlflowClient()
    provenance: dict[str, str] = {}
    if model in (CHAMPION, CANDIDATE):
        alias = pair_alias(model, dataset, encoder_id)
        version = _version_by_alias(client, RERANKER_MODEL, alias)
        if version is None:
            raise RegistryError(
                f"no registered '{RERANKER_MODEL}' with alias '{alias}' (dataset '{dataset}', "
                f"encoder '{encoder_id}'): run the crosstvr/full-benchmark deployment on "
                "this dataset first, or pass a run id")
        run_id = version.tags.get("crosstvr.parent_run_id") or version.run_id
        provenance[RERANKER_MODEL] = f"version {version.version} (@{alias})"
    else:
        run_id = model
    logged = _run_models(client, run_id)
    if "reranker" not in logged:
        raise RegistryError(f"run {run_id} logged no re-ranker (tracking.log_model=false, or "
                            "not a crosstvr benchmark run)")
    run = client.get_run(run_id)
    tags = run.data.tags
    if tags.get(DATASET_TAG) and (tags[DATASET_TAG], tags.get(ENCODER_TAG)) != (dataset,
                                                                             encoder_id):
        raise RegistryError(
            f"run {run_id} trained on dataset '{tags[DATASET_TAG]}' with encoder "
            f"'{tags.get(ENCODER_TAG)}', not '{dataset}' / '{encoder_id}'")
    reranker = mlflow.pytorch.load_model(f"models:/{logged['reranker']}",
                                         map_location="cpu").eval()
    stage1 = None
    if "stage1_seqtransf" in logged:
        stage1 = mlflow.pytorch.load_model(f"models:/{logged['stage1_seqtransf']}",
                                           map_location="cpu").eval()
    provenance.setdefault(RERANKER_MODEL, f"model {logged['reranker']}")
    provenance["stage1"] = (f"model {logged['stage1_seqtransf']}" if stage1 is not None
                            else "meanP (zero-shot)")
    provenance["run"] = run_id
    return SearchModels(stage1, reranker, stage1_key(stage1), provenance)
