"""The `crosstvr-ablation` flow: re-ranker variants on the SAME cached tokens and stage 1.

Index and stage 1 run once; each variant (overrides of `reranker.*`, `train.*`, `eval.*`)
trains and evaluates its own re-ranker from the same Lance tokens and the same stage-1
similarities, so the table differs only by the variant. Served as the deployment
`crosstvr-ablation/ablation`; the variants are a parameter, the paper's table by default.

MLflow: the parent run holds the index and stage-1 steps, one nested run per variant, and
under each variant its `train-reranker` and `two-stage-eval` runs; the parent logs the table
(`ablation/ablation.md`, `ablation/ablation.csv`) and a bar chart of two-stage t2v R@1.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import mlflow
from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.params import AblationParams, AblationVariant, validate_params
from tasks.index import index_task, log_index_run
from tasks.prepare_dataset import prepare_dataset_task
from tasks.pretrain import ensure_stills_encoder_task
from tasks.retrieval import eval_task, stage1_task, train_task
from tasks.runtime import ray_runtime, retrying
from tasks.tracking import (
    FLOW_RUN_TAG,
    log_metrics_to,
    parent_run,
    step_run,
    tag_index_lineage,
)

# (column title, metric key) of the ablation table
TABLE_METRICS = (("t2v R@1", "twostage/t2v_R1"), ("t2v R@5", "twostage/t2v_R5"),
                 ("v2t R@1", "twostage/v2t_R1"), ("v2t R@5", "twostage/v2t_R5"),
                 ("t2v MnR", "twostage/t2v_MnR"),
                 # the re-ranker's own ranking of stage 1's top K: what it learned, unfused
                 ("stage 2 alone t2v R@1", "stage2only/t2v_R1"),
                 ("stage 2 alone v2t R@1", "stage2only/v2t_R1"))
TWIN_PREFIX = "twostage/t2v_twin_acc_"


def twin_columns(results: list[tuple[AblationVariant, dict]]) -> list[tuple[str, str]]:
    """(title, key) of the two-stage t2v twin accuracy per factor, for the factors every
    variant measured (a corpus whose captions name no twins has none)."""
    keys = [{k for k in metrics if k.startswith(TWIN_PREFIX)} for _, metrics in results]
    common = set.intersection(*keys) if keys else set()
    return [(f"t2v {key[len(TWIN_PREFIX):]} twins", key) for key in sorted(common)]


def ablation_rows(results: list[tuple[AblationVariant, dict]], stage1_t2v_r1: float
                  ) -> list[dict]:
    """One row per variant: its overrides, two-stage metrics, the re-ranker alone, twin
    accuracy per factor where measured, and the gain over stage 1."""
    columns = [*TABLE_METRICS, *twin_columns(results)]
    rows = []
    for variant, metrics in results:
        row = {"variant": variant.name, "overrides": " ".join(variant.overrides) or "(base)"}
        row.update({title: metrics[key] for title, key in columns})
        row["gain t2v R@1"] = metrics["twostage/t2v_R1"] - stage1_t2v_r1
        rows.append(row)
    return rows


def _fmt(value) -> str:
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def markdown_table(rows: list[dict]) -> str:
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(row[h]) for h in header) + " |" for row in rows]
    return "\n".join(lines)


def csv_table(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def ablation_figure(rows: list[dict], stage1_t2v_r1: float):
    """Bars: two-stage t2v R@1 per variant; a dashed line at stage 1's."""
    import matplotlib

    matplotlib.use("Agg")  # headless: the figure goes to MLflow, never a window
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5.0, 0.8 * len(rows) + 2), 4))
    names = [row["variant"] for row in rows]
    values = [row["t2v R@1"] for row in rows]
    bars = ax.bar(range(len(rows)), values, color="tab:blue")
    ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.axhline(stage1_t2v_r1, color="tab:gray", linestyle="--", label="stage 1")
    ax.set_xticks(range(len(rows)), names, rotation=30, ha="right")
    ax.set(ylabel="two-stage t2v R@1 (%)", title="re-ranker ablation (same tokens, same stage 1)",
           ylim=(0, max(100.0, *values)))
    ax.legend()
    fig.tight_layout()
    return fig


@flow(name="crosstvr-ablation", log_prints=True)
def crosstvr_ablation(config_file: str | None = None, overrides: list[str] | None = None,
                      variants: list[AblationVariant] | None = None) -> dict:
    """Index + stage 1 once, then train and evaluate every re-ranker variant; returns the rows."""
    given = {} if variants is None else {"variants": variants}
    params = validate_params(AblationParams, "crosstvr-ablation", config_file=config_file,
                             overrides=overrides, **given)
    cfg = params.config
    tags = {FLOW_RUN_TAG: str(flow_run.get_id() or "local"), "crosstvr.dataset": cfg.data.name,
            "crosstvr.flow": "ablation"}
    logger = get_run_logger()
    with ray_runtime(cfg.ray), parent_run(cfg, f"ablation-{flow_run.get_name() or 'local'}",
                                          tags) as parent_id:
        mlflow.log_dict({"variants": [v.model_dump() for v in params.variants]},
                        "ablation/variants.json")
        run_dir = cfg.home_path / "runs" / parent_id
        dataset = retrying(prepare_dataset_task, cfg)(cfg)
        # the stills-pretrained encoder (the default): made once per machine, then reused
        retrying(ensure_stills_encoder_task, cfg)(cfg, parent_id)
        indexed = retrying(index_task, cfg, kind="index")(cfg, dataset)
        log_index_run(indexed)
        index = indexed.ref
        tag_index_lineage(parent_id, index)
        stage1 = retrying(stage1_task, cfg)(cfg, index, str(run_dir), parent_id)
        results, base = [], cfg.flat()
        for variant in params.variants:
            variant_cfg = params.variant_config(variant.name)
            variant_dir = str(run_dir / variant.name)
            with step_run(variant_cfg, parent_id, f"variant-{variant.name}") as variant_id:
                changed = {k: v for k, v in variant_cfg.flat().items() if base.get(k) != v}
                mlflow.log_params({"ablation.variant": variant.name,
                                   "ablation.overrides": " ".join(variant.overrides), **changed})
                # train/eval nest under the variant's (active) run and log their metrics to it
                reranker = retrying(train_task, variant_cfg)(
                    variant_cfg, index, stage1, variant_dir, variant_id)
                metrics = retrying(eval_task, variant_cfg)(
                    variant_cfg, index, stage1, reranker, variant_dir, variant_id)
            results.append((variant, metrics))
            log_metrics_to(parent_id, {f"ablation/{variant.name}/t2v_R1":
                                       metrics["twostage/t2v_R1"]})
            logger.info("variant %s: two-stage t2v R@1 %.1f", variant.name,
                        metrics["twostage/t2v_R1"])
        stage1_r1 = stage1.metrics["stage1/t2v_R1"]
        rows = ablation_rows(results, stage1_r1)
        table = markdown_table(rows)
        mlflow.log_text(table + "\n", "ablation/ablation.md")
        mlflow.log_text(csv_table(rows), "ablation/ablation.csv")
        mlflow.log_figure(ablation_figure(rows, stage1_r1), "ablation/t2v_R1_per_variant.png")
        Path(run_dir, "ablation.md").write_text(table + "\n")
    logger.info("ablation (%s), stage 1 t2v R@1 %.1f:\n%s", cfg.data.name, stage1_r1, table)
    return {"mlflow_run_id": parent_id, "rows": rows, "stage1_t2v_R1": stage1_r1}
