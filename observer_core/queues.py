"""A bounded queue that drops its oldest items when full, and counts them."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

import anyio

__all__ = ["DropOldestQueue"]

_T = TypeVar("_T")


class DropOldestQueue(Generic[_T]):
    """Single-consumer FIFO with a size bound; ``on_drop(n)`` is told of every drop."""

    def __init__(self, maxlen: int, on_drop: Callable[[int], None]) -> None:
        self._items: deque[_T] = deque()
        self._maxlen = maxlen
        self._on_drop = on_drop
        self._ready = anyio.Event()
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    def put_many(self, items: Iterable[_T]) -> None:
        self._items.extend(items)
        overflow = len(self._items) - self._maxlen
        if overflow > 0:
            for _ in range(overflow):
                self._items.popleft()
            self._on_drop(overflow)
        if self._items:
            self._ready.set()

    async def get_batch(self, limit: int) -> list[_T]:
        """Wait for at least one item; return up to ``limit`` of them, oldest first.

        Returns an empty list once the queue is closed and empty.
        """
        while not self._items:
            if self._closed:
                return []
            await self._ready.wait()
            self._ready = anyio.Event()
        count = min(limit, len(self._items))
        return [self._items.popleft() for _ in range(count)]

    def close(self) -> None:
        """No more items will come: wake the consumer so it can finish."""
        self._closed = True
        self._ready.set()

    def drain(self) -> list[_T]:
        """Take everything queued now, without waiting."""
        items = list(self._items)
        self._items.clear()
        return items
