"""Results people read (tables) and look at (figures)."""

from __future__ import annotations

from collections import defaultdict

import matplotlib

matplotlib.use("Agg")  # headless: figures go to files and MLflow, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from crosstvr_core.retrieval.metrics import recall_at_k_curve  # noqa: E402

METRIC_KEYS = ("R1", "R5", "R10", "MdR", "MnR")
STAGES = (("stage1_meanP", "meanP"), ("stage1", "stage 1"), ("stage2only", "stage 2 only"),
          ("twostage", "two-stage"))


def metric_name(stage: str, direction: str, key: str) -> str:
    """The MLflow metric name, e.g. stage1/t2v_R1."""
    return f"{stage}/{direction}_{key}"


def flat_metrics(stage: str, metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    return {
        metric_name(stage, direction, key): value
        for direction, values in metrics.items()
        for key, value in values.items()
    }


def results_table(metrics: dict[str, float]) -> str:
    """A fixed-width table: rows stage x direction, columns R@1/5/10, MdR, MnR."""
    header = f"{'stage':<12} {'dir':<4} " + " ".join(f"{k:>7}" for k in METRIC_KEYS)
    lines = [header, "-" * len(header)]
    for stage, label in STAGES:
        for direction in ("t2v", "v2t"):
            values = [metrics.get(metric_name(stage, direction, k)) for k in METRIC_KEYS]
            if all(v is None for v in values):
                continue
            cells = " ".join(f"{v:7.1f}" if v is not None else f"{'-':>7}" for v in values)
            lines.append(f"{label:<12} {direction:<4} {cells}")
    twins = twin_table(metrics)
    return "\n".join(lines) + ("\n\n" + twins if twins else "")


def twin_table(metrics: dict[str, float]) -> str:
    """Twin accuracy per factor and direction, stage 1 against two-stage, with the twins
    only two-stage wins, only stage 1 wins, and the exact McNemar p-value of the two
    (pipeline.twin_changes_metrics); empty when the run's captions name no twins."""
    factors = sorted({key.rsplit("_", 1)[1] for key in metrics
                      if key.startswith("twostage/") and "_twin_acc_" in key})
    if not factors:
        return ""
    header = (f"{'twin':<10} {'dir':<4} {'stage 1':>8} {'two-stage':>10} {'won':>5} "
              f"{'lost':>5} {'p':>7}")
    lines = ["twins, two-stage against stage 1 caption by caption (won: only two-stage right; "
             "lost: only stage 1)", header, "-" * len(header)]
    for factor in factors:
        for d in ("t2v", "v2t"):
            cells = [metrics.get(f"stage1/{d}_twin_acc_{factor}"),
                     metrics.get(f"twostage/{d}_twin_acc_{factor}"),
                     metrics.get(f"twostage/{d}_twin_gained_{factor}"),
                     metrics.get(f"twostage/{d}_twin_lost_{factor}"),
                     metrics.get(f"twostage/{d}_twin_p_{factor}")]
            if all(c is None for c in cells):
                continue
            widths, formats = (8, 10, 5, 5), (".1f", ".1f", ".0f", ".0f")
            text = " ".join(f"{c:{w}{f}}" if c is not None else f"{'-':>{w}}"
                            for c, w, f in zip(cells, widths, formats, strict=False))
            p = cells[-1]
            p_text = "-" if p is None else "<0.001" if p < 0.001 else f"{p:.3f}"
            lines.append(f"{factor:<10} {d:<4} {text} {p_text:>7}")
    return "\n".join(lines)


def per_family_recall(ranks: np.ndarray, families: list[str], k: int = 1) -> dict[str, float]:
    """R@k per caption family (e.g. the generated benchmark's variant), plus 'all'."""
    by_family: dict[str, list[int]] = defaultdict(list)
    for rank, family in zip(ranks, families, strict=True):
        by_family[family or "unlabelled"].append(int(rank))
    out = {fam: float(100.0 * np.mean(np.asarray(r) < k)) for fam, r in sorted(by_family.items())}
    out["all"] = float(100.0 * np.mean(np.asarray(ranks) < k))
    return out


def recall_curve_figure(ranks_by_label: dict[str, np.ndarray], max_k: int, title: str):
    """Recall@K for K = 1..max_k, one line per system (e.g. stage 1 vs two-stage)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ks = np.arange(1, max_k + 1)
    for label, ranks in ranks_by_label.items():
        ax.plot(ks, recall_at_k_curve(ranks, max_k), marker=".", label=label)
    ax.set(xlabel="K", ylabel="recall@K (%)", title=title, ylim=(0, 100))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def rank_histogram_figure(ranks_by_label: dict[str, np.ndarray], title: str, bins: int = 30):
    """Distribution of the true item's rank (log-spaced bins), per system."""
    fig, ax = plt.subplots(figsize=(6, 4))
    top = max(int(np.max(r)) for r in ranks_by_label.values()) + 2
    edges = np.unique(np.geomspace(1, top, bins).astype(int))
    for label, ranks in ranks_by_label.items():
        ax.hist(np.asarray(ranks) + 1, bins=edges, alpha=0.5, label=label)
    ax.set(xscale="log", xlabel="rank of the true item (1 = top)", ylabel="queries", title=title)
    ax.legend()
    fig.tight_layout()
    return fig


def family_bar_figure(recall_by_label: dict[str, dict[str, float]], title: str):
    """Grouped bars: R@1 per family, one bar per system."""
    labels = list(recall_by_label)
    families = sorted({f for r in recall_by_label.values() for f in r})
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(1, len(labels))
    x = np.arange(len(families))
    for i, label in enumerate(labels):
        ax.bar(x + i * width, [recall_by_label[label].get(f, 0.0) for f in families], width,
               label=label)
    ax.set_xticks(x + width * (len(labels) - 1) / 2, families)
    ax.set(ylabel="t2v R@1 (%)", title=title, ylim=(0, 100))
    ax.legend()
    fig.tight_layout()
    return fig


def member_histories(history: list[dict]) -> dict[object, list[dict]]:
    """A training history's epoch records per ensemble member (their "member"; None for a
    single re-ranker), without the ensemble's own validation record."""
    members: dict[object, list[dict]] = {}
    for record in history:
        if record.get("member") != "ensemble":
            members.setdefault(record.get("member"), []).append(record)
    return members


def training_curve_figure(history: list[dict], title: str = "re-ranker training"):
    """Training loss per epoch; one line per member of an ensemble (records with "member")."""
    fig, ax = plt.subplots(figsize=(6, 4))
    curves = member_histories(history)
    for member, records in curves.items():
        epochs = [h.get("epoch", i + 1) for i, h in enumerate(records)]
        label = "VTM loss" if member is None else f"VTM loss, member {member}"
        ax.plot(epochs, [h["loss"] for h in records], marker="o", label=label)
    if len(curves) > 1:
        ax.legend()
    ax.set(xlabel="epoch", ylabel="loss", title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def pretraining_curve_figure(history: list[dict], title: str = "encoder pretraining on stills"):
    """Contrastive loss per logged step, and the learned temperature (logit scale) beside it."""
    fig, ax = plt.subplots(figsize=(6, 4))
    steps = [h["step"] for h in history]
    ax.plot(steps, [h["loss"] for h in history], marker=".", label="contrastive loss")
    ax.set(xlabel="step", ylabel="loss", title=title)
    ax.grid(alpha=0.3)
    scale = ax.twinx()
    scale.plot(steps, [h["logit_scale"] for h in history], color="tab:orange", alpha=0.7,
               label="logit scale")
    scale.set_ylabel("logit scale (1 / temperature)")
    fig.legend(loc="upper right")
    fig.tight_layout()
    return fig
