"""The ``playbook`` analyzer: consolidate repeated successes into playbook entries.

On its cycles, when the ring holds at least ``min_successes`` successes (not
from ``exclude_sources``), it groups them by endpoint; every group of at least
``min_group`` that gained successes since its last entry emits a ``playbook``
finding carrying a ``LogEntry`` (``observer_plugins.sinks.gateway_log.entry``).

"Gained" is tracked by ring sequence number (the ring evicts, so counts lie)
and, across restarts, by the newest timestamp each entry covered (kept under
``state_dir``), so ops replayed after a restart are not posted again.

With a ``fleet`` table the playbook instances of every observer in a fleet post
each group once between them: an entry is emitted only by the observer that
moves the group's mark (the newest timestamp it covers) forward in a NATS
key-value bucket, compare-and-set. See ``docs/scaling.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Annotated, Any, ClassVar, TypeVar

import anyio
import msgspec

from observer_core import (
    Analyzer,
    AnalyzerConfig,
    Context,
    Every,
    Finding,
    Op,
    RegisterAnalyzer,
    RegisterFindingKind,
    Window,
    hookimpl,
    memory_key,
)

from ...fleet.claims import FleetConfig, FleetUnavailable, check_fleet, shared_memory
from ...sinks.gateway_log.entry import LogEntry

__all__ = ["KIND", "PlaybookAnalyzer", "PlaybookConfig", "round_half_away"]

KIND = "playbook"
"""The finding kind this analyzer registers and emits."""

_V = TypeVar("_V")
_STATE_FILE = "emitted.json"
_PATTERN_LIMIT = 200
_PATTERN_OPS = 3
_MAX_ENDPOINTS = 10000
"""Endpoints remembered; past it the least recently emitted are forgotten. Each is
remembered by its :func:`~observer_core.memory_key` (at most 64 bytes)."""


class PlaybookConfig(AnalyzerConfig, kw_only=True, forbid_unknown_fields=True):
    """Keys of ``[analyzers.NAME]`` with ``plugin = "playbook"``."""

    min_successes: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 5
    """Successes (outside ``exclude_sources``) the ring must hold before any entry."""
    min_group: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 3
    """Successes one endpoint needs for an entry."""
    exclude_sources: list[str] = msgspec.field(default_factory=lambda: ["overseer_correction"])
    every: Every = 5
    fleet: FleetConfig | None = None
    """Post each group once across the observers sharing it (NATS key-value)."""


class _Group:
    """The successes of one endpoint in this window, oldest first."""

    __slots__ = ("newest_seq", "ops")

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.newest_seq = -1


def round_half_away(value: float | Fraction) -> int:
    """Round to an integer, halves away from zero (as ``toFixed(0)``, not banker's)."""
    exact = Fraction(value)
    magnitude = math.floor(abs(exact) + Fraction(1, 2))
    return magnitude if exact >= 0 else -magnitude


def _put_newest(marks: dict[str, _V], key: str, value: _V) -> None:
    """Set ``key`` as the most recent entry; forget the oldest past ``_MAX_ENDPOINTS``."""
    marks.pop(key, None)
    marks[key] = value
    if len(marks) > _MAX_ENDPOINTS:
        del marks[next(iter(marks))]


def _mean(ops: Sequence[Op]) -> Fraction:
    durations = [op.duration_ms for op in ops]
    if all(isinstance(value, int) for value in durations):
        total: Fraction = Fraction(sum(durations))
    else:
        total = Fraction(math.fsum(durations))
    return total / len(ops)


def _newest(group: _Group) -> str:
    """The newest timestamp among the group's successes."""
    return max(op.timestamp for op in group.ops)


def playbook_entry(endpoint: str, ops: Sequence[Op]) -> LogEntry:
    """The log entry for one endpoint's successes (oldest first)."""
    count = len(ops)
    pattern = "; ".join(op.input_summary for op in ops[-_PATTERN_OPS:])
    return LogEntry(
        operation=f"consolidated: {count} successful {endpoint} calls",
        approach="common pattern: " + pattern[:_PATTERN_LIMIT],
        result=f"avg_duration={round_half_away(_mean(ops))}ms, {count} successes",
        context=f"endpoint={endpoint}",
    )


class PlaybookAnalyzer(Analyzer):
    """Emits one playbook entry per endpoint with new, repeated successes."""

    name: ClassVar[str] = "playbook"
    Config = PlaybookConfig
    emits: ClassVar[tuple[str, ...]] = (KIND,)
    config: PlaybookConfig

    def __init__(self, config: PlaybookConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self._excluded = frozenset(config.exclude_sources)
        self._next_seq: dict[str, int] = {}
        """Per endpoint: the first sequence number not covered by its last entry."""
        self._covered_ts: dict[str, str] = {}
        """Per endpoint: the newest timestamp its last entry covered (persisted)."""
        self._save_lock = anyio.Lock()
        self._fleet = shared_memory(config.fleet, ctx)

    @classmethod
    def validate_config(cls, config: Any, registry: object) -> None:
        check_fleet(config.fleet)

    async def open(self) -> None:
        covered = await anyio.to_thread.run_sync(
            self.ctx.state.load, _STATE_FILE, dict[str, str], {}
        )
        self._covered_ts = {memory_key(endpoint): ts for endpoint, ts in covered.items()}
        await self._fleet.open()

    async def aclose(self) -> None:
        await self._fleet.aclose()

    async def analyze(self, window: Window) -> Sequence[Finding]:
        groups = self._successes(window)
        if sum(len(group.ops) for group in groups.values()) < self.config.min_successes:
            return []
        findings = []
        for endpoint, group in groups.items():
            key = memory_key(endpoint)
            if len(group.ops) < self.config.min_group or not self._gained(key, group):
                continue
            try:
                if await self._fleet.advance(key, _newest(group)):
                    findings.append(Finding(KIND, playbook_entry(endpoint, group.ops)))
            except FleetUnavailable as exc:
                self.ctx.error("cannot reach the fleet, the rest waits for a later run: %s", exc)
                break
            self._remember(key, group)
        if findings:
            self.ctx.status["entries_emitted"] = self.ctx.status.get("entries_emitted", 0) + len(
                findings
            )
            self.ctx.spawn(self._save)
        return findings

    def _successes(self, window: Window) -> dict[str, _Group]:
        groups: dict[str, _Group] = {}
        excluded = self._excluded
        for seq, op in enumerate(window.ops, window.first_seq):
            if op.success and op.source not in excluded:
                group = groups.get(op.endpoint)
                if group is None:
                    group = groups[op.endpoint] = _Group()
                group.ops.append(op)
                group.newest_seq = seq
        return groups

    def _gained(self, key: str, group: _Group) -> bool:
        """Whether the group holds a success its endpoint's last entry did not cover
        (``key``: the endpoint's :func:`~observer_core.memory_key`)."""
        next_seq = self._next_seq.get(key)
        if next_seq is not None:
            return group.newest_seq >= next_seq
        covered = self._covered_ts.get(key)
        return covered is None or any(op.timestamp > covered for op in group.ops)

    def _remember(self, key: str, group: _Group) -> None:
        _put_newest(self._next_seq, key, group.newest_seq + 1)
        _put_newest(self._covered_ts, key, _newest(group))

    async def _save(self) -> None:
        async with self._save_lock:
            await self.ctx.state.save(_STATE_FILE, dict(self._covered_ts))


@hookimpl
def observer_register_analyzers(register: RegisterAnalyzer) -> None:
    register(PlaybookAnalyzer)


@hookimpl
def observer_register_finding_kinds(register: RegisterFindingKind) -> None:
    register(KIND)
