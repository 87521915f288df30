"""What the daemon shows of itself: ``/health``, ``/stats``, ``/ready``, ``/metrics`` and
the queue depths; read-only views over the other parts."""

from __future__ import annotations

from collections import Counter as Tally
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec
from msgspec import UNSET

from ..components import Sink
from ..config import ObserverSettings
from ..genai import tokens_by_model
from ..metrics import MAX_LABEL_BYTES, Metrics, cut_utf8
from ..records import Op
from ..redact import redact_config
from ..ring import Ring
from .instance import Instance

if TYPE_CHECKING:
    from .dispatch import Dispatcher

__all__ = ["RECENT_MAX", "Introspection", "preview"]

MAX_STATS_SOURCES = 64
"""``/stats`` ``by_source`` entries: the sources with the most ops (each name cut to 128
bytes); the rest under ``other``."""
RECENT_MAX = 20
"""How many of the newest failures and findings ``/stats`` shows."""
PREVIEW_CHARS = 200
"""How much of each client-written string ``/stats`` shows of them (§11.4: bounded)."""
PREVIEW_ITEMS = 10

QueueDepths = list[tuple[tuple[tuple[str, str], ...], float]]
"""A gauge's samples: each sink's waiting records, labelled by instance."""


class Introspection:
    """Answers ``/health``, ``/stats``, ``/ready`` and the queue-depth gauge."""

    def __init__(
        self,
        instances: Sequence[Instance],
        *,
        metrics: Metrics,
        ring: Ring,
        settings: ObserverSettings,
        dispatcher: Dispatcher,
        recent_findings: deque[dict[str, Any]],
        analyzer_runs: dict[str, dict[str, Any]],
        cycle: Callable[[], int],
        started_at: str,
        config: Callable[[], dict[str, Any]],
    ) -> None:
        self._instances = instances
        self._metrics = metrics
        self._ring = ring
        self._settings = settings
        self._dispatcher = dispatcher
        self._recent_findings = recent_findings
        self._analyzer_runs = analyzer_runs
        self._cycle = cycle
        self._started_at = started_at
        self._config = config
        self.opened: set[str] = set()
        """Instances that have started (``/ready`` waits for every one)."""
        self.down: set[str] = set()
        """Instances a reload could neither start nor restore (``/ready`` names them)."""

    def reconfigure(self, settings: ObserverSettings) -> None:
        """The ``[observer]`` settings a reload applied."""
        self._settings = settings

    def health(self) -> dict[str, Any]:
        checks: dict[str, Any] = {}
        for item in self._instances:
            checks.update(item.ctx.status.get("checks", {}))
        return {
            "status": "ok",
            "ops_in_ring": len(self._ring),
            "checks": redact_config(checks),
            "config": self._config(),
        }

    def stats(self) -> dict[str, Any]:
        ring = self._ring
        successes = 0
        by_source: Tally[str] = Tally()
        for op in ring:
            successes += op.success
            by_source[op.source] += 1
        return {
            "total": len(ring),
            "successes": successes,
            "failures": len(ring) - successes,
            "by_source": _top(by_source, MAX_STATS_SOURCES),
            "tokens_by_model": tokens_by_model(ring),
            "cycle": self._cycle(),
            "started_at": self._started_at,
            "instances": {
                item.spec.qualified: redact_config(item.ctx.status)
                for item in self._instances
                if item.ctx.status
            },
            **self.operator_stats(),
        }

    def recent_ops(self, source: str, limit: int) -> list[Op]:
        """The newest ``limit`` ops in the ring whose source is ``source``, oldest first."""
        return list(deque((op for op in self._ring if op.source == source), limit))

    def ready(self) -> list[str]:
        """What ``/ready`` waits for: instances not started yet, ack-holding sinks that
        cannot write. Empty when ready."""
        waiting = [
            item.spec.qualified
            for item in self._instances
            if item.spec.qualified not in self.opened
        ]
        waiting.extend(name for name in self._dispatcher.ack_failing if name not in waiting)
        waiting.extend(name for name in sorted(self.down) if name not in waiting)
        return waiting

    def operator_stats(self) -> dict[str, Any]:
        """What ``/stats`` adds for ``top`` and the status page (each part bounded)."""
        failed: deque[Op] = deque((op for op in self._ring if not op.success), RECENT_MAX)
        metrics = self._metrics
        sources: dict[str, dict[str, float]] = {}
        for labels, value in metrics.ops_received.values.items():
            tags = dict(labels)
            entry = sources.setdefault(tags.get("source", ""), {"ops": 0, "failures": 0})
            entry["ops"] += value
            if tags.get("outcome") == "failure":
                entry["failures"] += value
        depths = {dict(labels)["instance"]: depth for labels, depth in self.queue_depths()}
        records = self._dispatcher.sink_records
        sinks = {
            name: {
                "records": records.get(instance=name),
                "queue": depths.get(name, 0.0),
                "dropped": metrics.sink_dropped.get(instance=name),
                "errors": metrics.instance_errors.get(instance=name),
            }
            for name in (
                item.spec.qualified for item in self._instances if isinstance(item.component, Sink)
            )
        }
        return {
            "sources": sources,
            "sinks": sinks,
            "analyzers": {name: dict(run) for name, run in self._analyzer_runs.items()},
            "recent_failures": [
                preview(
                    {
                        "ts": op.timestamp,
                        "source": op.source,
                        "endpoint": op.endpoint,
                        "error": or_none(op.error),
                    }
                )
                for op in reversed(failed)
            ],
            "recent_findings": list(reversed(self._recent_findings)),
            "ring_size": self._settings.ring_size,
        }

    def queue_depths(self) -> QueueDepths:
        """Each sink's waiting records: its pump's queue plus what the sink itself holds."""
        depths = {
            pump.instance.spec.qualified: float(len(pump.queue)) for pump in self._dispatcher.pumps
        }
        for item in self._instances:
            sink = item.component
            if not isinstance(sink, Sink):
                continue
            own = sink.queue_depth()
            if own is not None:
                name = item.spec.qualified
                depths[name] = depths.get(name, 0.0) + own
        return [((("instance", name),), depth) for name, depth in depths.items()]


def _top(tally: Tally[str], limit: int) -> dict[str, int]:
    """The ``limit`` largest counts of ``tally``, each name cut to 128 bytes (as a metric
    label); when there are more, the largest ``limit - 1`` and the rest under ``other``."""
    if any(len(name) * 4 > MAX_LABEL_BYTES for name in tally):
        cut: Tally[str] = Tally()
        for name, count in tally.items():
            cut[cut_utf8(name, MAX_LABEL_BYTES)] += count
        tally = cut
    if len(tally) <= limit:
        return dict(tally)
    top = dict(tally.most_common(limit - 1))
    top["other"] = top.get("other", 0) + tally.total() - sum(top.values())
    return top


def or_none(value: Any) -> Any:
    """``value``, or None for a field the op does not have."""
    return None if value is UNSET else value


def preview(value: Any, depth: int = 4) -> Any:
    """``value`` as plain data with every string cut to ``PREVIEW_CHARS`` and every list to
    ``PREVIEW_ITEMS``: what ``/stats`` may show of client-written records, bounded in bytes."""
    if isinstance(value, str):
        return value if len(value) <= PREVIEW_CHARS else value[: PREVIEW_CHARS - 1] + "…"
    if isinstance(value, int | float | bool) or value is None:
        return value
    if depth == 0:
        return "…"
    if isinstance(value, dict):
        items = list(value.items())[: PREVIEW_ITEMS * 4]
        return {preview(key, 0): preview(item, depth - 1) for key, item in items}
    if isinstance(value, list | tuple):
        return [preview(item, depth - 1) for item in value[:PREVIEW_ITEMS]]
    return preview(msgspec.to_builtins(value), depth)
