"""Counters and gauges, rendered in the Prometheus text format.

Small on purpose: the daemon needs a handful of labelled counters and gauges,
and plugins may add their own through :meth:`Metrics.counter` / :meth:`Metrics.gauge`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

__all__ = ["MAX_LABEL_BYTES", "MAX_LABEL_VALUES", "Counter", "Gauge", "Metrics", "cut_utf8"]

MAX_LABEL_BYTES = 128
"""A label value that comes from a client (``source``, ``endpoint``, ``model``, a field
name) is cut to this many bytes of UTF-8 (CONTRACT §11.3)."""
MAX_LABEL_VALUES = 64
"""Distinct values one such label takes; later ones are counted as ``other``."""

Labels = tuple[tuple[str, str], ...]
_F = TypeVar("_F", bound="_Family")


def cut_utf8(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8, never inside a character."""
    if len(text) * 4 <= limit:
        return text
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[:limit].decode(errors="ignore")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _format_labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{_escape(value)}"' for key, value in labels) + "}"


def _format_value(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class _Family:
    kind = ""

    def __init__(self, name: str, help_text: str) -> None:
        self.name = name
        self.help = help_text
        self.values: dict[Labels, float] = {}

    def samples(self) -> Iterable[tuple[Labels, float]]:
        return self.values.items()

    def get(self, **labels: str) -> float:
        """The current value for ``labels`` (0 when never touched)."""
        return self.values.get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> str:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        lines += [
            f"{self.name}{_format_labels(labels)} {_format_value(value)}"
            for labels, value in sorted(self.samples())
        ]
        return "\n".join(lines)


class Counter(_Family):
    """A monotonically increasing count, per label set."""

    kind = "counter"

    def inc(self, amount: float = 1, **labels: str) -> None:
        key = tuple(sorted(labels.items())) if labels else ()
        self.values[key] = self.values.get(key, 0.0) + amount


class Gauge(_Family):
    """A value that goes up and down; either set, or read from a callback at render time."""

    kind = "gauge"

    def __init__(
        self,
        name: str,
        help_text: str,
        read: Callable[[], Iterable[tuple[Labels, float]]] | None = None,
    ) -> None:
        super().__init__(name, help_text)
        self._read = read

    def set(self, value: float, **labels: str) -> None:
        self.values[tuple(sorted(labels.items()))] = value

    def samples(self) -> Iterable[tuple[Labels, float]]:
        return list(self._read()) if self._read else self.values.items()


class Metrics:
    """The daemon's metric families; ``render()`` gives the ``/metrics`` body."""

    MAX_SOURCE_LABELS = MAX_LABEL_VALUES

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}
        self._labels: dict[str, dict[str, str]] = {}
        """label name -> client value -> the label value it is shown as."""
        self._sources = self._labels["source"] = {}
        self.ops_received = self.counter(
            "observer_ops_received_total", "Ops accepted into the ring, by source and outcome."
        )
        self.cycles_skipped = self.counter(
            "observer_cycles_skipped_total", "Cycle ticks skipped because a cycle still ran."
        )
        self.cycles = self.counter("observer_cycles_total", "Cycles run.")
        self.cycle_duration = self.gauge(
            "observer_cycle_duration_seconds", "How long the last cycle took."
        )
        self.instance_errors = self.counter(
            "observer_instance_errors_total", "Errors raised by an instance after start."
        )
        self.sink_dropped = self.counter(
            "observer_sink_dropped_total", "Records a sink dropped because its queue was full."
        )
        self.requests_rejected = self.counter(
            "observer_requests_rejected_total", "HTTP requests answered with an error, by status."
        )
        self.input_rejected = self.counter(
            "observer_input_rejected_total", "Ops refused (not acknowledged), by reason."
        )

    def counter(self, name: str, help_text: str) -> Counter:
        """Get or create a counter family."""
        return self._get(name, lambda: Counter(name, help_text), Counter)

    def gauge(
        self,
        name: str,
        help_text: str,
        read: Callable[[], Iterable[tuple[Labels, float]]] | None = None,
    ) -> Gauge:
        """Get or create a gauge family (``read`` computes its samples at render time)."""
        return self._get(name, lambda: Gauge(name, help_text, read), Gauge)

    def _get(self, name: str, make: Callable[[], _F], kind: type[_F]) -> _F:
        family = self._families.get(name)
        if family is None:
            family = self._families[name] = make()
        if not isinstance(family, kind):
            raise ValueError(f"metric {name} is already a {family.kind}")
        return family

    def sample(self, name: str, /, **labels: str) -> float:
        """The value ``/metrics`` shows for family ``name`` with exactly ``labels``
        (0 when that label set has no sample yet); :class:`LookupError` when no family
        is called ``name``."""
        family = self._families.get(name)
        if family is None:
            known = ", ".join(sorted(self._families))
            raise LookupError(f"no metric named {name!r} (metrics: {known})")
        return dict(family.samples()).get(tuple(sorted(labels.items())), 0.0)

    def label(self, name: str, value: str) -> str:
        """A client-written ``value`` of label ``name``, bounded: cut to 128 bytes, and at
        most 64 distinct values per label name, the rest ``other``. Remembers at most 64
        values per name (each at most 128 bytes), so the memory it holds is bounded too."""
        seen = self._labels.get(name)
        if seen is None:
            seen = self._labels[name] = {}
        shown = seen.get(value)
        if shown is not None:
            return shown
        shown = cut_utf8(value, MAX_LABEL_BYTES)
        if shown in seen:
            return shown
        if len(seen) >= MAX_LABEL_VALUES:
            return "other"
        seen[shown] = shown
        return shown

    def source_label(self, source: str) -> str:
        """``source`` as a label value (see :meth:`label`)."""
        # A source seen before, without the call to label(): one per commit.
        shown = self._sources.get(source)
        return shown if shown is not None else self.label("source", source)

    def render(self) -> str:
        return "\n".join(family.render() for family in self._families.values()) + "\n"
