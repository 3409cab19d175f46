"""`crosstvr compare`: flow runs side by side, with the difference to their champion.

Reads parent runs only (one per flow run) from `mlflow.search_runs`. A run is compared with
the registered champion of ITS dataset + encoder pair (see tasks/registry.py): scores on
another corpus, or from another frozen encoder, are not comparable.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlflow

from tasks.registry import (
    DATASET_TAG,
    ENCODER_TAG,
    RERANKER_MODEL,
    ROLE_TAG,
    champion_version,
)

# (column title, metric key): stage 1 and two-stage, both directions
KEY_METRICS = (
    ("s1 t2v R1", "stage1/t2v_R1"), ("s1 t2v R5", "stage1/t2v_R5"),
    ("s1 v2t R1", "stage1/v2t_R1"), ("s1 v2t R5", "stage1/v2t_R5"),
    ("2s t2v R1", "twostage/t2v_R1"), ("2s t2v R5", "twostage/t2v_R5"),
    ("2s v2t R1", "twostage/v2t_R1"), ("2s v2t R5", "twostage/v2t_R5"),
)
# metrics compared with the champion
DELTA_METRICS = (("d t2v R1", "twostage/t2v_R1"), ("d v2t R1", "twostage/v2t_R1"))
FAMILY_PREFIX = "twostage/t2v_R1_"


@dataclass(frozen=True)
class RunRow:
    run_id: str
    name: str
    dataset: str
    encoder_id: str
    role: str
    metrics: dict[str, float]
    champion_metrics: dict[str, float] | None  # of the run's dataset + encoder champion
    is_champion: bool


def parent_runs(experiment_ids: list[str], dataset: str | None = None, limit: int = 20,
                client: mlflow.MlflowClient | None = None) -> list:
    """Newest first: parent runs (no mlflow.parentRunId) that logged a retrieval metric."""
    if limit < 1:
        raise ValueError(f"--limit {limit}: must be at least 1")
    client = client or mlflow.MlflowClient()
    quoted = None if dataset is None else dataset.replace("'", "''")
    filter_string = "" if dataset is None else f"tags.`{DATASET_TAG}` = '{quoted}'"
    found, token = [], None
    while len(found) < limit:
        page = client.search_runs(experiment_ids, filter_string=filter_string,
                                  order_by=["attributes.start_time DESC"], max_results=200,
                                  page_token=token)
        found += [r for r in page if "mlflow.parentRunId" not in r.data.tags
                  and any(key in r.data.metrics for _, key in KEY_METRICS)]
        token = page.token
        if not token:
            break
    return found[:limit]


def compare_rows(runs: list, client: mlflow.MlflowClient | None = None) -> list[RunRow]:
    """Each run with the metrics of its pair's champion (looked up once per pair)."""
    client = client or mlflow.MlflowClient()
    champions: dict[tuple[str, str], tuple[str, dict] | None] = {}
    rows = []
    for run in runs:
        dataset = run.data.tags.get(DATASET_TAG, "?")
        encoder_id = run.data.tags.get(ENCODER_TAG, "?")
        pair = (dataset, encoder_id)
        if pair not in champions:
            version = champion_version(dataset, encoder_id, RERANKER_MODEL, client)
            champions[pair] = None if version is None else (
                version.run_id, client.get_run(version.run_id).data.metrics)
        champion = champions[pair]
        rows.append(RunRow(
            run.info.run_id, run.info.run_name or "", dataset, encoder_id,
            run.data.tags.get(ROLE_TAG, "-"), dict(run.data.metrics),
            None if champion is None else champion[1],
            champion is not None and champion[0] == run.info.run_id))
    return rows


def _cell(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.1f}" if signed else f"{value:.1f}"


def compare_table(rows: list[RunRow]) -> str:
    """Plain-text table: key metrics, per-family two-stage t2v R@1, deltas to the champion.

    A `*` marks a pair's champion; a delta is `-` where the pair has no champion yet.
    """
    families = sorted({k.removeprefix(FAMILY_PREFIX) for r in rows for k in r.metrics
                       if k.startswith(FAMILY_PREFIX)})
    header = ["", "run", "id", "dataset", "role", *(t for t, _ in KEY_METRICS),
              *(f"2s R1 {f}" for f in families), *(t for t, _ in DELTA_METRICS)]
    lines = [header]
    for r in rows:
        deltas = []
        for _, key in DELTA_METRICS:
            mine = r.metrics.get(key)
            theirs = None if r.champion_metrics is None else r.champion_metrics.get(key)
            deltas.append(_cell(None if mine is None or theirs is None else mine - theirs, True))
        lines.append(["*" if r.is_champion else "", r.name[:28], r.run_id[:8], r.dataset[:24],
                      r.role, *(_cell(r.metrics.get(k)) for _, k in KEY_METRICS),
                      *(_cell(r.metrics.get(FAMILY_PREFIX + f)) for f in families), *deltas])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True))
                     .rstrip() for line in lines)


def compare_runs(experiment_ids: list[str], dataset: str | None = None, limit: int = 20) -> str:
    """The `crosstvr compare` output for the configured experiment."""
    runs = parent_runs(experiment_ids, dataset, limit)
    if not runs:
        where = f" on dataset '{dataset}'" if dataset else ""
        return f"no flow runs with retrieval metrics{where}"
    return compare_table(compare_rows(runs))
