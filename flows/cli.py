"""`crosstvr` command line: run the flows (benchmark, encoder pretraining), index a corpus,
search it, print results, compare runs, register a run's models, clean old table versions,
show the resolved config."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from crosstvr_core.config import ConfigError, load_config
from crosstvr_core.report import results_table


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML or TOML config file")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=3")


def run_ui_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    if tracking_uri.startswith("http"):
        return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"{tracking_uri} (open with: mlflow ui --backend-store-uri {tracking_uri}) run {run_id}"


def cmd_results(args: argparse.Namespace) -> int:
    import mlflow

    from tasks.tracking import FLOW_RUN_TAG, tracking_uri, use_experiment

    cfg = load_config(args.config, args.overrides)
    experiment_id = use_experiment(cfg)
    runs = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=f"tags.`{FLOW_RUN_TAG}` = '{args.flow_run_id}'",
        output_format="list",
    )
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    if not parents:
        print(f"no MLflow run tagged {FLOW_RUN_TAG}={args.flow_run_id}", file=sys.stderr)
        return 1
    run = parents[0]
    print(f"dataset: {run.data.tags.get('crosstvr.dataset')}   "
          f"encoder: {run.data.tags.get('crosstvr.encoder_id')}")
    print(results_table(run.data.metrics))
    recall = {k: v for k, v in run.data.metrics.items() if "recall_at" in k or "_R1_" in k}
    for key in sorted(recall):
        print(f"  {key:<32} {recall[key]:6.1f}")
    print(f"MLflow run: {run_ui_url(tracking_uri(cfg), experiment_id, run.info.run_id)}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from flows.full_benchmark import crosstvr

    load_config(args.config, args.overrides)  # fail before starting anything
    result = crosstvr(config_file=args.config, overrides=list(args.overrides))
    print(results_table(result["metrics"]))
    return 0


def _print_pretrain_summary(summary: dict) -> None:
    before, after = summary["random_init"], summary["pretrained"]
    print(f"pretrained in {summary['seconds']:.0f} s, {summary['steps']} steps, final loss "
          f"{summary['final_loss']:.4f}")
    for key in after:
        print(f"  held-out stills {key}: {before.get(key, float('nan')):5.1f} (random init) -> "
              f"{after[key]:5.1f}")


def cmd_pretrain(args: argparse.Namespace) -> int:
    from flows.pretrain import crosstvr_pretrain

    load_config(args.config, args.overrides)  # fail before starting anything
    result = crosstvr_pretrain(config_file=args.config, overrides=list(args.overrides))
    if result["reused"]:
        print(f"already pretrained on this machine: {result['checkpoint']}")
    else:
        _print_pretrain_summary(result["summary"])
        print(f"checkpoint: {result['checkpoint']}")
        if result["model_version"]:
            print(f"registered crosstvr-encoder v{result['model_version']} (@champion)")
    return 0


def ensure_encoder_for_cli(cfg) -> None:
    """`crosstvr index` with encoder.pretrained = "stills": pretrain first if this machine
    lacks the checkpoint (its own MLflow run), saying so; otherwise nothing to do."""
    from crosstvr_core.config import STILLS_PRETRAINED
    from crosstvr_core.training.encoder_pretraining import stills_checkpoint
    from tasks.pretrain import ensure_stills_encoder

    if cfg.encoder.pretrained != STILLS_PRETRAINED or stills_checkpoint(cfg).is_file():
        return
    print(f"encoder.pretrained={STILLS_PRETRAINED}: no checkpoint on this machine yet; "
          f"pretraining it first ({cfg.pretrain.steps} steps, once per machine; "
          "encoder.pretrained=null indexes with a random init instead)")
    ref = ensure_stills_encoder(cfg)
    if ref.summary:
        _print_pretrain_summary(ref.summary)
    print(f"encoder checkpoint: {ref.checkpoint}")


def _index_overrides(args: argparse.Namespace) -> list[str]:
    """`crosstvr index` arguments as config overrides (later ones win over the file)."""
    overrides = list(args.overrides)
    source = args.source
    if source and "=" in source and not Path(source).exists():
        overrides.insert(0, source)  # an override, not a path
        source = None
    derived = []
    if args.dataset:
        if source:
            raise ConfigError("give either SOURCE or --dataset/--root, not both")
        if not args.root:
            raise ConfigError("--dataset needs --root DIR (where its annotation files are)")
        derived += [f"data.kind={args.dataset}", f"data.root={Path(args.root).resolve()}"]
    elif source:
        path = Path(source).resolve()
        if path.is_dir():
            derived += ["data.kind=folder", f"data.root={path}"]
            if args.captions:
                derived.append(f"data.captions_file={Path(args.captions).resolve()}")
        elif path.is_file():
            derived += ["data.kind=manifest", f"data.root={path.parent}",
                        f"data.captions_file={path}"]
        else:
            raise ConfigError(f"SOURCE '{source}': no such folder or manifest file")
    else:
        raise ConfigError("give a SOURCE (folder of videos or manifest) or --dataset/--root")
    if args.split:
        derived.append(f"data.split={args.split}")
    if args.name:
        derived.append(f"data.name={args.name}")
    elif source:
        derived.append(f"data.name={Path(source).resolve().stem}")
    return derived + overrides


def print_index_summary(counts: dict, failures: dict[str, list[tuple[str, str]]],
                        versions: dict, uri: str, seconds: float) -> None:
    print(f"indexed {counts['videos_ok']}  skipped (unchanged) {counts['videos_skip']}  "
          f"failed {counts['videos_failed']}  removed {counts['videos_removed']}  "
          f"in {seconds:.1f} s")
    if counts["videos_retried"]:
        print(f"retried {counts['videos_retried']} previously failed video(s): "
              f"{counts['videos_still_failing']} still fail")
    for reason, items in sorted(failures.items(), key=lambda kv: -len(kv[1])):
        print(f"  failed [{reason}] x{len(items)}")
        for video_id, error in items[:3]:
            print(f"    {video_id}: {error}")
        if len(items) > 3:
            print(f"    ... and {len(items) - 3} more")
    print(f"captions encoded {counts['captions_encoded']}  unchanged "
          f"{counts['captions_unchanged']}  removed {counts['captions_removed']}")
    print(f"tables: {uri}  versions {versions}")


def cmd_index(args: argparse.Namespace) -> int:
    import time

    from crosstvr_core.data.datasets import DatasetError
    from tasks.corpus import load_corpus
    from tasks.index import IndexStepError, index_dataset
    from tasks.runtime import apply_offline_env, ray_runtime

    cfg = load_config(args.config, _index_overrides(args))
    try:
        dataset = load_corpus(cfg.data)
    except DatasetError as exc:
        print(f"crosstvr index: {exc}", file=sys.stderr)
        return 2
    print(f"corpus '{dataset.name}' ({dataset.format_name}): {len(dataset.videos)} videos, "
          f"{len(dataset.captions)} captions -> {cfg.lance_uri}")
    apply_offline_env()
    ensure_encoder_for_cli(cfg)
    start = time.monotonic()
    with ray_runtime(cfg.ray):
        try:
            result = index_dataset(cfg, dataset)
        except IndexStepError as exc:
            print(f"crosstvr index: {exc}", file=sys.stderr)
            return 1
    ref = result.ref
    print_index_summary(ref.counts, result.failures, ref.versions, ref.uri,
                        time.monotonic() - start)
    return 3 if ref.counts["videos_failed"] and not (
        ref.counts["videos_ok"] or ref.counts["videos_skip"]) else 0


def cmd_register(args: argparse.Namespace) -> int:
    from tasks.registry import RegistryError, register_run_models
    from tasks.tracking import use_experiment

    use_experiment(load_config(args.config, args.overrides))  # the tracking store
    try:
        registrations = register_run_models(args.run_id)
    except RegistryError as exc:
        print(f"crosstvr register: {exc}", file=sys.stderr)
        return 1
    for reg in registrations:
        print(f"registered {reg.model_name} v{reg.version} as {reg.role} ({reg.pair_alias})")
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    from tasks.retention import RetentionError, clean_index_versions

    cfg = load_config(args.config, args.overrides)
    try:
        report = clean_index_versions(cfg, dry_run=args.dry_run)
    except RetentionError as exc:
        print(f"crosstvr cleanup: {exc}", file=sys.stderr)
        return 1
    for name, table in sorted(report.tables.items()):
        print(f"  {name:<28} latest v{table.latest}  kept {table.kept}  "
              f"{'would remove' if report.dry_run else 'removed'} {len(table.removed)}"
              + (f"  named but gone {table.protected_missing}" if table.protected_missing
                 else ""))
    print(report.summary())
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from flows.compare import compare_runs
    from tasks.tracking import use_experiment

    cfg = load_config(args.config, args.overrides)
    print(compare_runs([use_experiment(cfg)], args.dataset, args.limit))
    return 0


def _print_search(result, answered: dict[str, str], rerank: bool) -> None:
    print(f'query: "{result.query}"' + ("  (longer than the text context: cut)"
                                       if result.truncated else ""))
    print(f"{'rank':>4}  {'video id':<24} {'stage 1':>8} {'stage 2':>8} {'fused':>8}  path")
    for hit in result.hits:
        stage2 = "-" if hit.stage2 is None else f"{hit.stage2:8.3f}"
        print(f"{hit.rank:>4}  {hit.video_id:<24} {hit.stage1:8.4f} {stage2:>8} "
              f"{hit.fused:8.4f}  {hit.uri}")
    if not rerank:
        print("(stage 1 only: --no-rerank)")


def cmd_search(args: argparse.Namespace) -> int:
    """One query against an index: stage 1 over every video, the re-ranker over its top K."""
    import json
    import os

    # an answer, not logs: no model-download bars, no Lance notices about new tables
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("LANCE_LOG", "error")

    from crosstvr_core.models.encoder import EncoderError
    from crosstvr_core.retrieval.text_search import SearchError
    from crosstvr_core.storage import EncoderMismatchError, IndexNotFoundError, SchemaMismatchError
    from tasks.registry import RegistryError
    from tasks.search import answered_by, open_searcher, write_search_gallery

    overrides = list(args.overrides)
    if args.dataset:
        overrides.append(f"data.name={args.dataset}")
    if args.model:
        overrides.append(f"search.model={args.model}")
    cfg = load_config(args.config, overrides)
    k = args.k or cfg.search.k
    rerank = cfg.search.rerank and not args.no_rerank
    try:
        searcher = open_searcher(cfg)
        results = searcher.search([args.query], k, rerank=rerank, candidates=cfg.eval.top_k)
    except (SearchError, RegistryError, IndexNotFoundError, EncoderError, EncoderMismatchError,
            SchemaMismatchError) as exc:
        print(f"crosstvr search: {exc}", file=sys.stderr)
        return 1
    answered = answered_by(searcher)
    if args.json:
        print(json.dumps({"query": results[0].query, "truncated": results[0].truncated,
                          "answered_by": answered,
                          "hits": [hit.__dict__ for hit in results[0].hits],
                          "stage1_hits": [hit.__dict__ for hit in results[0].stage1_hits]},
                         indent=1))
    else:
        _print_search(results[0], answered, rerank)
        for key, value in answered.items():
            print(f"  {key}: {value}")
    if args.html:
        page = write_search_gallery(searcher, [("q000001", results[0], None)], Path(args.html),
                                    title=f"crosstvr search: {results[0].query}")
        print(f"gallery: {page}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"'{text}': expected a whole number >= 1")
    return int(text)


def cmd_config(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.explain:
        from crosstvr_core.config import explain

        print(explain(cfg), end="")
        return 0
    print(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="crosstvr", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the full-benchmark flow in this process")
    _config_args(run)
    run.set_defaults(func=cmd_run)
    pretrain = sub.add_parser(
        "pretrain", help="pretrain the embedded encoder on generated stills (once per machine) "
        "with the crosstvr-pretrain flow in this process")
    _config_args(pretrain)
    pretrain.set_defaults(func=cmd_pretrain)
    results = sub.add_parser("results", help="print the results of a flow run from MLflow")
    results.add_argument("--flow-run-id", required=True)
    _config_args(results)
    results.set_defaults(func=cmd_results)
    index = sub.add_parser(
        "index", help="index a corpus into Lance (decode, frozen tokens) in this process",
        description="Index SOURCE (a folder of videos, or a manifest CSV/JSONL of uri, "
        "caption, split) or a known dataset format (--dataset msrvtt --root DIR). "
        "Unchanged videos are skipped; failed ones are retried.",
    )
    index.add_argument("source", nargs="?", help="folder of videos or manifest file")
    index.add_argument("--captions", help="captions CSV/JSONL for a folder (video, caption, split)")
    index.add_argument("--dataset", help="a known format: msrvtt, msvd, didemo, activitynet, "
                       "vatex, lsmdc, folder, manifest")
    index.add_argument("--root", help="with --dataset: the folder holding its annotation files")
    index.add_argument("--split", help="index only this split")
    index.add_argument("--name", help="database name under <home>/lance (default: folder name)")
    _config_args(index)
    index.set_defaults(func=cmd_index)
    search = sub.add_parser(
        "search", help="which indexed videos show this? one text query, stage 1 + re-ranker",
        description="Encode QUERY with the index's frozen text tower, find the stage-1 top "
        "K over every indexed video, re-rank them with the registered re-ranker.")
    search.add_argument("query")
    search.add_argument("--dataset", help="the indexed dataset (data.name)")
    search.add_argument("-k", type=_positive_int, help="results to show (search.k)")
    search.add_argument("--model", help="champion | candidate | an MLflow run id (search.model)")
    search.add_argument("--no-rerank", action="store_true", help="stage 1 only")
    search.add_argument("--html", help="also write a gallery page into this folder")
    search.add_argument("--json", action="store_true", help="print the answer as JSON")
    _config_args(search)
    search.set_defaults(func=cmd_search)
    compare = sub.add_parser("compare", help="flow runs from MLflow with key metrics and the "
                             "difference to their dataset + encoder champion")
    compare.add_argument("--dataset", help="only runs on this dataset (data.name)")
    compare.add_argument("--limit", type=_positive_int, default=20, help="newest N runs")
    _config_args(compare)
    compare.set_defaults(func=cmd_compare)
    register = sub.add_parser(
        "register", help="register a finished flow run's models (completes a registration "
        "the tracking server cut short)")
    register.add_argument("run_id", help="the MLflow parent run id of a crosstvr flow run")
    _config_args(register)
    register.set_defaults(func=cmd_register)
    cleanup = sub.add_parser(
        "cleanup", help="remove old Lance table versions of a dataset that no run or "
        "registered model names (index.cleanup_min_age_s)")
    cleanup.add_argument("--dry-run", action="store_true", help="only say what would go")
    _config_args(cleanup)
    cleanup.set_defaults(func=cmd_cleanup)
    config = sub.add_parser("config", help="print the resolved config")
    config.add_argument("--explain", action="store_true",
                        help="print every key as Markdown: type, default, description (and the "
                        "current value where the resolved config differs)")
    _config_args(config)
    config.set_defaults(func=cmd_config)
    # overrides may also follow options (`index DIR --name x train.epochs=3`)
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any("=" not in e or e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"crosstvr: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
