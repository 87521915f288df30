"""The ring: the newest ``ring_size`` ops, with sequence numbers that never repeat."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence

from .components import Window
from .records import Op

__all__ = ["Ring"]


class Ring:
    """A bounded FIFO of ops. ``extend`` is O(1) per op; the oldest fall off."""

    def __init__(self, size: int) -> None:
        self._ops: deque[Op] = deque(maxlen=size)
        self.size: Callable[[], int] = self._ops.__len__
        """``len(ring)`` without a Python call (the ingest path asks once per request)."""
        self.pushed = 0
        """How many ops were ever pushed: the next op's sequence number."""

    def __len__(self) -> int:
        return len(self._ops)

    def __iter__(self) -> Iterator[Op]:
        return iter(self._ops)

    @property
    def capacity(self) -> int:
        """The most ops it holds (``ring_size``)."""
        return self._ops.maxlen or 0

    def resize(self, size: int) -> None:
        """Hold at most ``size`` ops from now on, keeping the newest (a config reload);
        sequence numbers continue."""
        self._ops = deque(self._ops, maxlen=size)
        self.size = self._ops.__len__

    def extend(self, ops: Sequence[Op]) -> None:
        self._ops.extend(ops)
        self.pushed += len(ops)

    def window(self, cycle: int) -> Window:
        """A snapshot for analyzers: the ops, oldest first, and the first one's sequence."""
        ops = list(self._ops)
        return Window(ops=ops, first_seq=self.pushed - len(ops), cycle=cycle)
