"""The ablation flow's table: which columns a corpus gets, the gain over stage 1, its files."""

import csv
import io

import pytest

from flows.ablation import TABLE_METRICS, ablation_rows, csv_table, markdown_table
from flows.params import AblationVariant


def _metrics(t2v_r1: float, **twins: float) -> dict[str, float]:
    metrics = {key: 50.0 for _, key in TABLE_METRICS}
    metrics["twostage/t2v_R1"] = t2v_r1
    metrics.update({f"twostage/t2v_twin_acc_{factor}": value for factor, value in twins.items()})
    return metrics


def test_rows_carry_the_reranker_alone_the_gain_and_twins_every_variant_measured():
    results = [(AblationVariant(name="base"), _metrics(40.0, colour=90.0, order=60.0)),
               (AblationVariant(name="joint", overrides=["reranker.attention=joint"]),
                _metrics(35.5, colour=88.0))]  # order not measured: no order column
    rows = ablation_rows(results, stage1_t2v_r1=30.0)
    assert [row["variant"] for row in rows] == ["base", "joint"]
    assert rows[0]["overrides"] == "(base)"
    assert rows[1]["overrides"] == "reranker.attention=joint"
    assert rows[0]["gain t2v R@1"] == pytest.approx(10.0)
    assert rows[1]["gain t2v R@1"] == pytest.approx(5.5)
    assert rows[1]["t2v colour twins"] == 88.0
    assert "t2v order twins" not in rows[0]
    assert "stage 2 alone t2v R@1" in rows[0] and "stage 2 alone v2t R@1" in rows[0]


def test_a_corpus_without_twins_gets_no_twin_columns():
    rows = ablation_rows([(AblationVariant(name="base"), _metrics(12.0))], stage1_t2v_r1=10.0)
    assert not [title for title in rows[0] if "twins" in title]


def test_markdown_and_csv_tables_hold_every_row():
    rows = ablation_rows([(AblationVariant(name="base"), _metrics(40.25, colour=97.5)),
                          (AblationVariant(name="bce", overrides=["train.loss=bce"]),
                           _metrics(20.0, colour=91.0))], stage1_t2v_r1=22.0)
    lines = markdown_table(rows).splitlines()
    assert lines[0].startswith("| variant | overrides | t2v R@1 |")
    assert len(lines) == 2 + len(rows)
    assert "| bce | train.loss=bce | 20.0 |" in lines[3]
    parsed = list(csv.DictReader(io.StringIO(csv_table(rows))))
    assert [row["variant"] for row in parsed] == ["base", "bce"]
    assert float(parsed[0]["t2v R@1"]) == 40.25  # the csv keeps full precision
    assert float(parsed[1]["t2v colour twins"]) == 91.0
