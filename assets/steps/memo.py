"""Outputs kept in memory between the steps of a run (a bounded, content-keyed cache).

With the in-process executor every step of a run runs in one process, one after the
other. A step that has just computed an image's output (the decoded image, the
feature table, the sweep) leaves it here, keyed by the asset and the output's cache
key, so the next step reads its input from memory instead of decoding the stored
file again. The key is the content's own cache key, so an entry can never be stale:
the same key always means the same bytes in the store. Anything not found here is
read from the store. The cache holds at most :data:`BUDGET_BYTES`; the least
recently used entries are dropped first.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

__all__ = ["BUDGET_BYTES", "MEMO", "Memo"]

#: Largest total size of the values kept (bytes, as estimated by :func:`_size`).
BUDGET_BYTES = 768 * 1024 * 1024

T = TypeVar("T")


def _size(value: Any) -> int:
    """Rough size in bytes of a cached value (arrays, Arrow tables, dataclasses of them)."""
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    nbytes = getattr(value, "nbytes", None)  # pyarrow tables
    if isinstance(nbytes, int):
        return nbytes
    if hasattr(value, "__dataclass_fields__"):
        return sum(_size(getattr(value, name)) for name in value.__dataclass_fields__)
    if isinstance(value, (tuple, list)):
        return sum(_size(item) for item in value)
    if isinstance(value, dict):
        return sum(_size(item) for item in value.values())
    return sys.getsizeof(value)


class Memo:
    """A least-recently-used cache of step outputs, bounded in bytes.

    Parameters
    ----------
    budget : int
        Most bytes kept; a value larger than this is never kept.
    """

    def __init__(self, budget: int = BUDGET_BYTES) -> None:
        self.budget = budget
        self._items: OrderedDict[tuple[str, str], tuple[Any, int]] = OrderedDict()
        self._used = 0
        self._lock = threading.Lock()

    def get(self, asset: str, key: str) -> Any | None:
        """The value stored for ``(asset, key)``, or None."""
        with self._lock:
            item = self._items.get((asset, key))
            if item is None:
                return None
            self._items.move_to_end((asset, key))
            return item[0]

    def put(self, asset: str, key: str, value: Any) -> None:
        """Remember ``value`` for ``(asset, key)``, dropping the oldest entries to fit."""
        size = _size(value)
        with self._lock:
            old = self._items.pop((asset, key), None)
            if old is not None:
                self._used -= old[1]
            if size > self.budget:
                return
            self._items[asset, key] = (value, size)
            self._used += size
            while self._used > self.budget:
                _, (_, dropped) = self._items.popitem(last=False)
                self._used -= dropped

    def get_or_load(self, asset: str, key: str, load: Callable[[], T]) -> T:
        """The remembered value, or ``load()`` (then remembered)."""
        value = self.get(asset, key)
        if value is None:
            value = load()
            self.put(asset, key, value)
        return value

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._items.clear()
            self._used = 0


#: The process's cache, shared by the steps of the runs executed in it.
MEMO = Memo()
