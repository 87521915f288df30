"""An alert rule's config, its per-cycle buckets, and the value it is evaluated on.

A :class:`Tracker` keeps one rule's buckets: the ops seen since the last cycle
go into the open bucket (``add``); each cycle closes it (``roll``) and drops
the buckets older than ``window_secs``. Buckets hold counts, failures, a
duration histogram (bins about 9 % wide, at most ~200) and up to 3 distinct
errors of at most 200 characters. A cycle shorter than ``window_secs / 600``
is merged into the previous bucket, so a rule holds at most about 600 buckets
whatever its window, however many ops arrive.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Literal

import msgspec

from observer_core import UNSET, Op

__all__ = ["Bucket", "Rule", "Tracker", "p95", "rule_problem"]

When = Literal["failure_rate", "p95_duration_ms", "ops_per_min", "silence_secs"]
Secs = Annotated[float, msgspec.Meta(ge=0, le=365 * 86400)]
Threshold = Annotated[float, msgspec.Meta(ge=0, le=1e12)]
SAMPLE_ERRORS = 3
ERROR_CHARS = 200
BINS_PER_DOUBLING = 8
MAX_BUCKETS = 600
"""Buckets per rule, about: shorter cycles are merged into the previous bucket."""
"""Duration histogram resolution: bin edges grow by 2^(1/8), about 9 %."""


class Rule(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One ``[[analyzers.NAME.rules]]`` table."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    when: When
    above: Threshold | None = None
    below: Threshold | None = None
    window_secs: Annotated[float, msgspec.Meta(gt=0, le=7 * 86400)] = 300
    """The time the value is computed over (and how long after start no decision is made)."""
    min_ops: Annotated[int, msgspec.Meta(ge=0, le=1_000_000_000)] = 0
    """No decision on fewer matching ops in the window (not for ``silence_secs``)."""
    for_secs: Secs = 0
    """How long the condition must hold (or stop holding) to fire (or resolve); 0: one cycle."""
    repeat_secs: Secs = 3600
    """While firing, say it again at most this often; 0: never again."""
    source: str | None = None
    endpoint: str | None = None
    """A glob (``/search*``), matched case-sensitively against the whole endpoint."""
    staffer_id: str | None = None

    @property
    def threshold(self) -> float:
        return self.above if self.above is not None else (self.below or 0.0)

    def holds(self, value: float) -> bool:
        """The condition: ``value`` above ``above``, or below ``below``."""
        return value > self.above if self.above is not None else value < (self.below or 0.0)


def rule_problem(rule: Rule) -> str | None:
    """What is wrong with ``rule`` beyond its types (``"above: ..."``), or None."""
    if (rule.above is None) == (rule.below is None):
        return "give exactly one of `above` or `below`"
    if rule.when == "silence_secs" and rule.below is not None:
        return "below: silence_secs takes only `above`"
    if rule.when == "failure_rate" and rule.threshold > 1:
        key = "above" if rule.above is not None else "below"
        return f"{key}: a failure_rate is between 0 and 1, got {rule.threshold}"
    return None


@dataclass(slots=True)
class Bucket:
    """What one cycle saw of a rule's ops."""

    start: float = 0.0
    end: float = 0.0
    count: int = 0
    failures: int = 0
    max_ms: float = 0.0
    histogram: dict[int, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def absorb(self, other: Bucket) -> None:
        """Add ``other`` (the next bucket in time) to this one."""
        self.end = other.end
        self.count += other.count
        self.failures += other.failures
        self.max_ms = max(self.max_ms, other.max_ms)
        for index, count in other.histogram.items():
            self.histogram[index] = self.histogram.get(index, 0) + count
        for error in other.errors:
            if error not in self.errors:
                self.errors.append(error)
        del self.errors[:-SAMPLE_ERRORS]


def _bin(duration_ms: float) -> int:
    if duration_ms <= 1:
        return 0
    return math.ceil(math.log2(duration_ms) * BINS_PER_DOUBLING)


def _edge(index: int) -> float:
    return float(2 ** (index / BINS_PER_DOUBLING))


def p95(buckets: list[Bucket]) -> float:
    """The 95th percentile duration over ``buckets``: the upper edge of the bin that holds
    it, never more than the longest duration seen."""
    merged: dict[int, int] = {}
    total = 0
    longest = 0.0
    for bucket in buckets:
        total += bucket.count
        longest = max(longest, bucket.max_ms)
        for index, count in bucket.histogram.items():
            merged[index] = merged.get(index, 0) + count
    rank = math.ceil(0.95 * total)
    seen = 0
    for index in sorted(merged):
        seen += merged[index]
        if seen >= rank:
            return min(_edge(index), longest)
    return longest


class Tracker:
    """One rule's buckets over its window, and when a matching op was last seen."""

    def __init__(self, rule: Rule, now: float) -> None:
        self.rule = rule
        self.buckets: deque[Bucket] = deque()
        self.open = Bucket(start=now)
        self.last_seen: float | None = None
        self._endpoint = re.compile(fnmatch.translate(rule.endpoint)) if rule.endpoint else None

    def matches(self, op: Op) -> bool:
        rule = self.rule
        if rule.source is not None and op.source != rule.source:
            return False
        if rule.staffer_id is not None and op.staffer_id != rule.staffer_id:
            return False
        return self._endpoint is None or self._endpoint.match(op.endpoint) is not None

    def add(self, op: Op, now: float) -> None:
        """Count a committed op that matches the rule in the open bucket."""
        bucket = self.open
        bucket.count += 1
        duration = float(op.duration_ms)
        bucket.max_ms = max(bucket.max_ms, duration)
        index = _bin(duration)
        bucket.histogram[index] = bucket.histogram.get(index, 0) + 1
        if not op.success:
            bucket.failures += 1
            error = op.error
            if error is not UNSET and len(bucket.errors) < SAMPLE_ERRORS:
                text = error[:ERROR_CHARS]
                if text not in bucket.errors:
                    bucket.errors.append(text)
        self.last_seen = now

    def roll(self, now: float) -> None:
        """Close the open bucket at ``now`` (merged into the last one when that is younger
        than ``window_secs / MAX_BUCKETS``); forget buckets that ended before the window."""
        closed, self.open = self.open, Bucket(start=now)
        closed.end = now
        last = self.buckets[-1] if self.buckets else None
        if last is not None and now - last.start < self.rule.window_secs / MAX_BUCKETS:
            last.absorb(closed)
        else:
            self.buckets.append(closed)
        horizon = now - self.rule.window_secs
        while self.buckets and self.buckets[0].end <= horizon:
            self.buckets.popleft()

    def value(self, now: float, started: float) -> float | None:
        """The rule's value over the window; None when there are too few ops to decide."""
        rule = self.rule
        if rule.when == "silence_secs":
            return now - (self.last_seen if self.last_seen is not None else started)
        buckets = list(self.buckets)
        count = sum(bucket.count for bucket in buckets)
        if count < rule.min_ops:
            return None
        if rule.when == "ops_per_min":
            return count * 60.0 / rule.window_secs
        if count == 0:
            return None
        if rule.when == "failure_rate":
            return sum(bucket.failures for bucket in buckets) / count
        return p95(buckets)

    def sample_errors(self) -> list[str]:
        """Up to 3 distinct errors from the window, newest first."""
        found: list[str] = []
        for error in _errors_newest_first(self.buckets):
            if error not in found:
                found.append(error)
                if len(found) == SAMPLE_ERRORS:
                    break
        return found


def _errors_newest_first(buckets: deque[Bucket]) -> Iterator[str]:
    for bucket in reversed(buckets):
        yield from reversed(bucket.errors)
