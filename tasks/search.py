"""Search what was indexed: the champion models of an index's dataset + encoder answer text
queries, one at a time (`crosstvr search`) or as a batch (the crosstvr-search/batch
deployment, which stores its answers in a Lance table and logs them to MLflow)."""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from crosstvr_core.config import CrossTVRConfig
from crosstvr_core.retrieval.text_search import (
    QueryResult,
    SearchError,
    TextSearcher,
    check_same_encoder,
    index_versions,
)
from crosstvr_core.storage import TokenIndex
from tasks.index import load_encoder
from tasks.registry import load_search_models
from tasks.tracking import use_experiment

RESULTS_TABLE = "search_results"


def open_searcher(cfg: CrossTVRConfig) -> TextSearcher:
    """The index of cfg.data.name, the configured encoder (it must be the index's), and the
    models cfg.search.model names, from the tracking store cfg points at."""
    index = TokenIndex.open_existing(cfg.lance_uri, cfg.index.storage_options or None)
    encoder = load_encoder(cfg)
    check_same_encoder(index, encoder)  # before any model is fetched
    use_experiment(cfg)
    models = load_search_models(cfg.data.name, index.encoder_id, cfg.search.model)
    return TextSearcher(index, encoder, models, brute_force_below=cfg.search.exact_below,
                        fusion_score=cfg.eval.fusion_score, batch_size=cfg.eval.batch_size)


def answered_by(searcher: TextSearcher) -> dict[str, str]:
    """Which models and which table versions answered, for people and for lineage."""
    info = searcher.gallery_info
    out = dict(searcher.models.provenance)
    out.update({f"lance.{name}": str(v) for name, v in index_versions(searcher.index).items()})
    how = ("exact" if info.exact else "ANN, recall@15 not recorded" if info.build_recall is None
           else f"ANN, recall@15 {info.build_recall:.3f}")
    out["stage1 gallery"] = f"{info.table} ({info.size} videos, {how})"
    return out


# ----------------------------------------------------------------------------- batch


@dataclass(frozen=True)
class BatchQuery:
    query_id: str
    query: str
    truth: str | None  # the ground-truth video id, when the file gives one


def read_queries(path: str | Path) -> list[BatchQuery]:
    """Queries from a .txt (one per line), .csv or .jsonl file (`query`, optional `video`
    with the ground-truth video id, optional `query_id`)."""
    path = Path(path)
    if not path.is_file():
        raise SearchError(f"queries file {path} does not exist")
    suffix = path.suffix.lower()
    rows: list[dict] = []
    if suffix == ".txt":
        rows = [{"query": line} for line in path.read_text().splitlines() if line.strip()]
    elif suffix == ".csv":
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or "query" not in reader.fieldnames:
                raise SearchError(f"queries file {path}: a CSV needs a 'query' column, has "
                                  f"{reader.fieldnames}")
            rows = list(reader)
    elif suffix == ".jsonl":
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise SearchError(f"queries file {path} line {number}: not JSON ({err})") from err
            if not isinstance(row, dict) or "query" not in row:
                raise SearchError(f"queries file {path} line {number}: needs a 'query' field")
            rows.append(row)
    else:
        raise SearchError(f"queries file {path}: use .txt (one query per line), .csv or .jsonl "
                          f"(a 'query' column and an optional 'video'), not '{suffix}'")
    if not rows:
        raise SearchError(f"queries file {path} holds no query")
    out = []
    for number, row in enumerate(rows, 1):
        text = str(row.get("query") or "").strip()
        if not text:
            raise SearchError(f"queries file {path}: query #{number} is empty")
        out.append(BatchQuery(str(row.get("query_id") or f"q{number:06d}"), text,
                              str(row["video"]) if row.get("video") else None))
    ids = [q.query_id for q in out]
    if len(set(ids)) != len(ids):
        raise SearchError(f"queries file {path}: query ids repeat")
    return out


def results_schema() -> pa.Schema:
    return pa.schema([
        ("batch_key", pa.string()),  # hash of the inputs and versions: a rerun is a no-op
        ("query_id", pa.string()),
        ("query", pa.string()),
        ("rank", pa.int32()),
        ("video_id", pa.string()),
        ("stage1_score", pa.float32()),
        ("stage2_score", pa.float32()),  # null when not re-ranked
        ("fused_score", pa.float32()),
        ("is_truth", pa.bool_()),
        ("models", pa.string()),  # JSON: which model versions answered
        ("video_tokens_version", pa.int64()),
    ])


def batch_key(queries: list[BatchQuery], k: int, rerank: bool, answered: dict[str, str]
              ) -> str:
    """What a batch's answers depend on: the queries, k, re-ranking, models, table versions."""
    payload = json.dumps({"queries": [q.__dict__ for q in queries], "k": k, "rerank": rerank,
                          "answered": answered}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def results_rows(key: str, queries: list[BatchQuery], results: list[QueryResult],
                 answered: dict[str, str], tokens_version: int) -> pa.Table:
    """One row per (query, rank) of the final order."""
    models = json.dumps(answered, sort_keys=True)
    columns: dict[str, list] = {name: [] for name in results_schema().names}
    for query, result in zip(queries, results, strict=True):
        for hit in result.hits:
            for name, value in (("batch_key", key), ("query_id", query.query_id),
                                ("query", query.query), ("rank", hit.rank),
                                ("video_id", hit.video_id), ("stage1_score", hit.stage1),
                                ("stage2_score", hit.stage2), ("fused_score", hit.fused),
                                ("is_truth", hit.video_id == query.truth),
                                ("models", models), ("video_tokens_version", tokens_version)):
                columns[name].append(value)
    return pa.table(columns, schema=results_schema())


def recall_at(queries: list[BatchQuery], results: list[QueryResult], ks=(1, 5, 10),
              stage1: bool = False) -> dict[str, float]:
    """R@K (%) over the queries with a ground truth; {} when none has one."""
    judged = [(q, r) for q, r in zip(queries, results, strict=True) if q.truth]
    if not judged:
        return {}
    out = {}
    for k in ks:
        hits = [q.truth in [h.video_id for h in (r.stage1_hits if stage1 else r.hits)[:k]]
                for q, r in judged]
        out[f"R{k}"] = 100.0 * sum(hits) / len(hits)
    return out


def write_search_gallery(searcher: TextSearcher,
                         items: list[tuple[str, QueryResult, str | None]], out_dir: Path,
                         title: str) -> Path:
    """A gallery page of (query id, result, ground-truth video id or None) items: each
    query's stage-1 and re-ranked lists as frame strips, with the re-ranker's attention."""
    from crosstvr_core.gallery import GalleryQuery, write_gallery
    from crosstvr_core.gallery_data import gallery_hits
    from crosstvr_core.retrieval.text_search import candidate_tokens

    model = searcher.models.reranker
    queries = []
    for query_id, result, truth in items:
        encoded = searcher.encode([result.query])

        def hits(found, encoded=encoded, truth=truth):
            ids = [h.video_id for h in found]
            if not ids:
                return []
            videos = [(h.video_id, h.uri, h.stage1, h.stage2, h.fused, h.video_id == truth)
                      for h in found]
            return gallery_hits(model, encoded["tokens"][0], encoded["mask"][0], videos,
                                candidate_tokens(searcher.index, ids),
                                searcher.encoder.image_size, query_eot=encoded["eot"][0],
                                query_words=encoded.get("words", [None])[0])

        reranked = any(h.stage2 is not None for h in result.hits)
        queries.append(GalleryQuery(query_id, result.query, hits(result.stage1_hits),
                                    hits(result.hits) if reranked else None,
                                    "longer than the text context: cut" if result.truncated
                                    else ""))
    answered = answered_by(searcher)
    subtitle = "; ".join(f"{k}: {v}" for k, v in answered.items())
    return write_gallery(queries, Path(out_dir), title, subtitle)


class SearchActor:
    """A Ray Data actor holding one opened searcher (encoder, models, stage-1 gallery):
    query batches in, one row per (query, rank) out."""

    def __init__(self, cfg_json: str, k: int, rerank: bool) -> None:
        cfg = CrossTVRConfig.model_validate_json(cfg_json)
        import torch

        torch.set_num_threads(max(1, int(cfg.ray.encode_num_cpus)))
        self.searcher = open_searcher(cfg)
        self.k, self.rerank, self.pool = k, rerank, cfg.eval.top_k

    def __call__(self, batch: dict) -> dict:
        queries = [str(q) for q in batch["query"]]
        results = self.searcher.search(queries, self.k, rerank=self.rerank,
                                       candidates=self.pool)
        out: dict[str, list] = {name: [] for name in ("position", "list", "rank", "video_id",
                                                      "uri", "stage1", "stage2", "fused")}
        for position, result in zip(batch["position"], results, strict=True):
            for kind, found in (("final", result.hits), ("stage1", result.stage1_hits)):
                for hit in found:
                    for name, value in (("position", int(position)), ("list", kind),
                                        ("rank", hit.rank), ("video_id", hit.video_id),
                                        ("uri", hit.uri), ("stage1", hit.stage1),
                                        ("stage2", float("nan") if hit.stage2 is None
                                         else hit.stage2),
                                        ("fused", hit.fused)):
                        out[name].append(value)
        return out


def search_on_ray(cfg: CrossTVRConfig, queries: list[BatchQuery], k: int, rerank: bool
                  ) -> list[QueryResult]:
    """The queries through a pool of SearchActors on the current Ray runtime (the indexing
    one), reassembled in query order."""
    import ray

    from crosstvr_core.retrieval.text_search import SearchHit

    items = [{"position": i, "query": q.query} for i, q in enumerate(queries)]
    batch = max(1, min(256, len(items) // max(1, cfg.ray.encode_pool_size)))
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // batch, 200)))
    ds = ds.map_batches(SearchActor, batch_size=batch, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=cfg.ray.encode_pool_size),
                        num_cpus=cfg.ray.encode_num_cpus, num_gpus=cfg.ray.encode_num_gpus,
                        fn_constructor_kwargs={"cfg_json": cfg.model_dump_json(), "k": k,
                                               "rerank": rerank})
    lists: dict[tuple[int, str], list[SearchHit]] = {}
    for row in ds.iter_rows():
        video = str(row["video_id"])
        stage2 = None if row["stage2"] != row["stage2"] else float(row["stage2"])  # NaN
        lists.setdefault((int(row["position"]), str(row["list"])), []).append(
            SearchHit(int(row["rank"]), video, str(row["uri"]), float(row["stage1"]),
                      stage2, float(row["fused"])))
    return [QueryResult(q.query,
                        sorted(lists.get((i, "stage1"), []), key=lambda h: h.rank),
                        sorted(lists.get((i, "final"), []), key=lambda h: h.rank), False)
            for i, q in enumerate(queries)]


def _results_table(index: TokenIndex):
    if RESULTS_TABLE in index.db.list_tables().tables:
        return index.db.open_table(RESULTS_TABLE)
    return index.db.create_table(RESULTS_TABLE, schema=results_schema(), exist_ok=True)


def run_batch_search(cfg: CrossTVRConfig, queries_file: str, parent_run_id: str,
                     gallery_queries: int = 12) -> dict:
    """Answer a queries file on the Ray runtime, store the answers in the index's
    `search_results` table (one commit: a killed run leaves no partial version), log R@K
    (when the file gives ground truth) and a gallery. Same inputs and versions: a no-op."""
    import tempfile

    import mlflow

    from tasks.tracking import log_metrics_to, step_run

    queries = read_queries(queries_file)
    searcher = open_searcher(cfg)  # builds the stage-1 gallery once, before the actors
    rerank = cfg.search.rerank and searcher.models.reranker is not None
    k = cfg.search.k
    answered = answered_by(searcher)
    key = batch_key(queries, k, rerank, answered)
    table = _results_table(searcher.index)
    summary = {"batch_key": key, "queries": len(queries), "answered_by": answered,
               "table": f"{searcher.index.uri}/{RESULTS_TABLE}"}
    if table.count_rows(f"batch_key = '{key}'"):
        summary.update(reused=True, table_version=table.version)
        return summary
    with step_run(cfg, parent_run_id, "batch-search") as run_id:
        results = search_on_ray(cfg, queries, k, rerank)
        table.add(results_rows(key, queries, results, answered,
                               searcher.index.video_tokens.version))
        metrics = {f"search/{name}": v for name, v in recall_at(queries, results).items()}
        metrics.update({f"search/stage1_{name}": v
                        for name, v in recall_at(queries, results, stage1=True).items()})
        metrics["search/queries"] = float(len(queries))
        mlflow.log_metrics(metrics)
        mlflow.log_dict(answered, "answered_by.json")
        chosen = [q for q in queries if q.truth][:gallery_queries] or queries[:gallery_queries]
        by_id = {q.query_id: r for q, r in zip(queries, results, strict=True)}
        with tempfile.TemporaryDirectory() as tmp:
            write_search_gallery(searcher, [(q.query_id, by_id[q.query_id], q.truth)
                                            for q in chosen], Path(tmp),
                                 title=f"crosstvr batch search: {Path(queries_file).name}")
            mlflow.log_artifacts(tmp, "gallery")
    log_metrics_to(parent_run_id, metrics)
    summary.update(reused=False, table_version=table.version, metrics=metrics,
                   mlflow_step_run=run_id)
    return summary
