"""`crosstvr` command line: run the flow, print results, show the resolved config."""

from __future__ import annotations

import argparse
import sys

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


def cmd_config(args: argparse.Namespace) -> int:
    print(yaml.safe_dump(load_config(args.config, args.overrides).model_dump(), sort_keys=False))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="crosstvr", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the full-benchmark flow in this process")
    _config_args(run)
    run.set_defaults(func=cmd_run)
    results = sub.add_parser("results", help="print the results of a flow run from MLflow")
    results.add_argument("--flow-run-id", required=True)
    _config_args(results)
    results.set_defaults(func=cmd_results)
    config = sub.add_parser("config", help="print the resolved config")
    _config_args(config)
    config.set_defaults(func=cmd_config)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"crosstvr: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
