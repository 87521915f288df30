"""The jsonl sink's slow-write guard: when to write(2) on the event loop, and when not.

A write(2) into the page cache takes microseconds, so the sink makes it inline, before
the ack, as Redis does with its append-only file. Under dirty-page throttling (a slow or
saturated disk) the kernel makes the writer sleep instead; the loop must not sleep with
it. The guard times every inline write: one slower than ``max_seconds`` sends the writes
to the writer thread for a cool-down, after which one write probes inline again. Each
slow probe in a row doubles the cool-down, up to ``MAX_COOLDOWN_FACTOR`` times the first,
so a disk that stays slow costs the loop one slow write every so often, not one per ack.
"""

from __future__ import annotations

__all__ = ["MAX_COOLDOWN_FACTOR", "InlineGuard"]

MAX_COOLDOWN_FACTOR = 32
"""A disk slow probe after probe waits at most this many first cool-downs between probes."""


class InlineGuard:
    """Decides, from the duration of the last inline writes, whether the next may be inline.

    Times are ``time.perf_counter()`` seconds, passed in so the guard holds no clock."""

    def __init__(self, max_seconds: float, cooldown_seconds: float) -> None:
        self.max_seconds = max_seconds
        self._cooldown = cooldown_seconds
        self._first_cooldown = cooldown_seconds
        self._thread_until = 0.0
        self.fallbacks = 0
        """How often a slow write sent the writes to the thread."""

    def inline(self, now: float) -> bool:
        """Whether a write starting ``now`` may run on the event loop."""
        return now >= self._thread_until

    def timed(self, started: float, ended: float) -> float | None:
        """Account for an inline write; the cool-down (seconds) it starts when it was too slow,
        else ``None``."""
        if ended - started <= self.max_seconds:
            self._cooldown = self._first_cooldown
            return None
        cooldown = self._cooldown
        self._thread_until = ended + cooldown
        self._cooldown = min(cooldown * 2, self._first_cooldown * MAX_COOLDOWN_FACTOR)
        self.fallbacks += 1
        return cooldown
