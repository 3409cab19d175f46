"""The results tables printed by the flow, the CLI and logged as results.txt."""

from __future__ import annotations

from crosstvr_core.report import results_table, twin_table

METRICS = {"stage1/t2v_R1": 21.5, "stage1/t2v_R5": 85.0, "stage1/t2v_R10": 96.3,
           "stage1/t2v_MdR": 3.0, "stage1/t2v_MnR": 3.4, "twostage/t2v_R1": 78.9}


def test_results_table_has_a_row_per_stage_and_direction_present() -> None:
    table = results_table(METRICS).splitlines()
    assert table[0].split() == ["stage", "dir", "R1", "R5", "R10", "MdR", "MnR"]
    assert table[2].split() == ["stage", "1", "t2v", "21.5", "85.0", "96.3", "3.0", "3.4"]
    assert table[3].split() == ["two-stage", "t2v", "78.9", "-", "-", "-", "-"]
    assert len(table) == 4 and twin_table(METRICS) == ""  # no twins named: no twin table


def test_twin_table_puts_each_factor_against_stage1_with_the_paired_counts() -> None:
    metrics = dict(METRICS)
    metrics.update({"stage1/t2v_twin_acc_colour": 98.6, "twostage/t2v_twin_acc_colour": 97.7,
                    "twostage/t2v_twin_gained_colour": 2.0, "twostage/t2v_twin_lost_colour": 7.0,
                    "twostage/t2v_twin_p_colour": 0.1796875,
                    "stage1/t2v_twin_acc_order": 56.6, "twostage/t2v_twin_acc_order": 78.9,
                    "twostage/t2v_twin_gained_order": 83.0, "twostage/t2v_twin_lost_order": 26.0,
                    "twostage/t2v_twin_p_order": 1e-9})
    twins = twin_table(metrics).splitlines()
    rows = {tuple(line.split()[:2]): line.split()[2:] for line in twins[3:]}
    assert rows == {("colour", "t2v"): ["98.6", "97.7", "2", "7", "0.180"],
                    ("order", "t2v"): ["56.6", "78.9", "83", "26", "<0.001"]}
    assert results_table(metrics).endswith(twin_table(metrics))
