"""ReadAhead gives read(plan) for every plan, reading the next one in another thread."""

import threading

import pytest

from crosstvr_core.training.read_ahead import ReadAhead


def test_items_are_read_once_each_and_the_next_one_ahead() -> None:
    reads: list[tuple[int, str]] = []
    started = {i: threading.Event() for i in range(4)}

    def read(plan: int) -> int:
        reads.append((plan, threading.current_thread().name))
        started[plan].set()
        return plan * 10

    items = ReadAhead([0, 1, 2, 3], read)
    assert len(items) == 4
    assert items[0] == 0
    assert started[1].wait(5)  # item 1 is being read before anyone asked for it
    assert [items[i] for i in (1, 2, 3)] == [10, 20, 30]
    assert sorted(plan for plan, _ in reads) == [0, 1, 2, 3]  # each read exactly once
    assert all(name.startswith("read-ahead") for plan, name in reads if plan > 0)
    assert items[1] == 10  # out of order: read again, still right
    with pytest.raises(IndexError, match="item 4 of 4"):
        items[4]


def test_a_failed_read_raises_in_the_step_that_needs_it() -> None:
    def read(plan: int) -> int:
        if plan == 1:
            raise OSError("table gone")
        return plan

    items = ReadAhead([0, 1], read)
    assert items[0] == 0
    with pytest.raises(OSError, match="table gone"):
        items[1]
