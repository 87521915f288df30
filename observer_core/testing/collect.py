"""The ``collect`` sink, and :func:`plugin_of` for components a test defines inline."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar

import msgspec

from ..components import Analyzer, Component, Context, Sink, SinkConfig, Source
from ..hookspecs import RowFormat, hookimpl
from ..records import Finding, Op, Record

__all__ = [
    "BUILTIN_FINDING_KINDS",
    "COLLECT_PLUGIN",
    "CollectConfig",
    "CollectingSink",
    "plugin_of",
]

BUILTIN_FINDING_KINDS = ("diagnosis", "playbook", "escalation")
"""The finding kinds the built-in analyzers register: what a ``collect`` sink accepts, with
``op``, unless told otherwise. (The core knows no finding kind; this is the kit's default.)"""


class CollectConfig(SinkConfig, kw_only=True, forbid_unknown_fields=True):
    """Keys of ``[sinks.NAME]`` with ``plugin = "collect"`` (registered by ``observer_engine``)."""

    accepts: list[str] = msgspec.field(default_factory=lambda: ["op", *BUILTIN_FINDING_KINDS])
    """Record kinds it receives: ops and every built-in finding kind unless told otherwise."""
    holds_ack: bool = True
    """Ops wait for this sink before ``emit`` returns (as with ``jsonl``); false puts it
    behind its own queue (as ``gateway_log``)."""


class CollectingSink(Sink):
    """Keeps every record it receives in memory, for tests to look at."""

    name: ClassVar[str] = "collect"
    Config = CollectConfig
    config: CollectConfig

    def __init__(self, config: CollectConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        # holds_ack is per instance here; the engine reads it once the instance is built.
        setattr(self, "holds_ack", config.holds_ack)  # noqa: B010
        self.batches: list[list[Record]] = []
        """Each ``write`` call's records, in order."""
        self.calls: list[str] = []
        """The lifecycle calls it got, in order: open, flush, reopen, aclose."""
        self.failing: Exception | None = None
        """Set to an exception to make ``write`` raise it (a sink that is down)."""

    @property
    def records(self) -> list[Record]:
        return [record for batch in self.batches for record in batch]

    @property
    def ops(self) -> list[Op]:
        return [record for record in self.records if isinstance(record, Op)]

    def findings(self, kind: str | None = None) -> list[Finding]:
        """Findings received, all of them or those of one ``kind``."""
        return [
            record
            for record in self.records
            if isinstance(record, Finding) and (kind is None or record.kind == kind)
        ]

    async def open(self) -> None:
        self.calls.append("open")

    async def write(self, records: Sequence[Record]) -> None:
        if self.failing is not None:
            raise self.failing
        self.batches.append(list(records))

    async def flush(self) -> None:
        self.calls.append("flush")

    async def reopen(self) -> None:
        self.calls.append("reopen")

    async def aclose(self) -> None:
        self.calls.append("aclose")


class _CollectPlugin:
    @hookimpl
    def observer_register_sinks(self, register: Callable[[type[Sink]], None]) -> None:
        register(CollectingSink)


COLLECT_PLUGIN = _CollectPlugin()
"""The plugin object that registers the ``collect`` sink (``observer_engine`` adds it)."""


class _Components:
    """A plugin object that registers what it was given through every hook."""

    def __init__(
        self,
        components: Sequence[type[Component]],
        finding_kinds: Iterable[str],
        row_formats: Mapping[str, RowFormat],
    ) -> None:
        self.components = components
        self.finding_kinds = list(finding_kinds)
        self.row_formats = dict(row_formats)

    def _each(self, base: type[Component], register: Callable[[Any], None]) -> None:
        for cls in self.components:
            if issubclass(cls, base):
                register(cls)

    @hookimpl
    def observer_register_sources(self, register: Callable[[type[Source]], None]) -> None:
        self._each(Source, register)

    @hookimpl
    def observer_register_sinks(self, register: Callable[[type[Sink]], None]) -> None:
        self._each(Sink, register)

    @hookimpl
    def observer_register_analyzers(self, register: Callable[[type[Analyzer]], None]) -> None:
        self._each(Analyzer, register)

    @hookimpl
    def observer_register_finding_kinds(self, register: Callable[[str], None]) -> None:
        for kind in self.finding_kinds:
            register(kind)

    @hookimpl
    def observer_register_row_formats(self, register: Callable[[str, RowFormat], None]) -> None:
        for name, mapper in self.row_formats.items():
            register(name, mapper)


def plugin_of(
    *components: type[Component],
    finding_kinds: Iterable[str] = (),
    row_formats: Mapping[str, RowFormat] | None = None,
) -> object:
    """A plugin registering ``components`` by their kind (and finding kinds, row formats),
    for tests that define components inline: ``plugins=[plugin_of(MyAnalyzer)]``."""
    return _Components(components, finding_kinds, row_formats or {})
