"""Reading the next step's tokens while the current step computes.

A step whose tokens come from disk (patches past the memory budget) would otherwise wait for
its reads. A training epoch draws every step's rows first (the draws are cheap and use the
loop's seeded generator in the same order as step by step, so the weights do not change);
`ReadAhead` then reads step i + 1's tokens in a background thread while step i runs. Lance
reads and torch kernels release the GIL, so the two overlap.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

Plan = TypeVar("Plan")
Item = TypeVar("Item")


class ReadAhead(Sequence, Generic[Plan, Item]):
    """items[i] = read(plans[i]); asking for item i starts reading the next `ahead` items.
    Meant to be walked in order (a training epoch); any order still gives the right items."""

    def __init__(self, plans: Sequence[Plan], read: Callable[[Plan], Item], ahead: int = 1
                 ) -> None:
        self._plans, self._read, self._ahead = plans, read, ahead
        self._pending: dict[int, Future] = {}
        self._pool: ThreadPoolExecutor | None = None

    def __len__(self) -> int:
        return len(self._plans)

    def _submit(self, index: int) -> None:
        if index < len(self) and index not in self._pending:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="read-ahead")
            self._pending[index] = self._pool.submit(self._read, self._plans[index])

    def __getitem__(self, index: int) -> Item:  # type: ignore[override]
        if not 0 <= index < len(self):
            raise IndexError(f"ReadAhead: item {index} of {len(self)}")
        future = self._pending.pop(index, None)
        for later in range(index + 1, index + 1 + self._ahead):
            self._submit(later)
        item = self._read(self._plans[index]) if future is None else future.result()
        if not self._pending and self._pool is not None:  # the last one: no thread left over
            self._pool.shutdown(wait=False)
            self._pool = None
        return item
