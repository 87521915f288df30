"""The three component kinds, described once: one row each, read by discovery and the CLI.

A row says what a ``[KIND.NAME]`` table names (its base class and its ``Config``
base), which hook registers it, and which methods a class must override to be
one. Nothing else in the core keeps a table keyed by kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from . import hookspecs
from .components import (
    Analyzer,
    AnalyzerConfig,
    Component,
    ComponentConfig,
    Sink,
    SinkConfig,
    Source,
)

__all__ = ["ANALYZERS", "KINDS", "KIND_SPECS", "SINKS", "SOURCES", "KindSpec", "spec_of"]

C = TypeVar("C", bound=Component)


@dataclass(frozen=True, slots=True)
class KindSpec(Generic[C]):
    """One component kind: what its classes subclass, implement and are registered by."""

    kind: str
    """The config's table name: ``sources``, ``sinks`` or ``analyzers``."""
    base: type[C]
    config_base: type[ComponentConfig]
    hook: str
    """The hook that registers classes of this kind."""
    methods: tuple[str, ...]
    """A class must override at least one of these."""

    @property
    def singular(self) -> str:
        """``source``, ``sink``, ``analyzer``."""
        return self.kind.removesuffix("s")

    @property
    def with_article(self) -> str:
        """``a source``, ``an analyzer``."""
        return f"{'an' if self.singular[0] in 'aeiou' else 'a'} {self.singular}"

    def problem(self, cls: object) -> str | None:
        """Why ``cls`` cannot be registered as one of this kind, or None."""
        label = getattr(cls, "__qualname__", repr(cls))
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            hint = next(
                (
                    f" (it is a {other.base.__name__}: register it with {other.hook})"
                    for other in KIND_SPECS
                    if isinstance(cls, type) and issubclass(cls, other.base)
                ),
                "",
            )
            return (
                f"{label} was registered as {self.with_article} "
                f"but is not a {self.base.__name__}{hint}"
            )
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            return f"{label} has no `name` (a non-empty string)"
        config = getattr(cls, "Config", None)
        if not (isinstance(config, type) and issubclass(config, self.config_base)):
            return f"{label} ({name!r}) has no `Config` subclassing {self.config_base.__name__}"
        if all(getattr(cls, method) is getattr(self.base, method) for method in self.methods):
            return f"{label} ({name!r}) does not implement {' or '.join(self.methods)}()"
        return None


SOURCES = KindSpec(
    "sources",
    Source,
    ComponentConfig,
    hookspecs.observer_register_sources.__name__,
    ("run", "poll"),
)
SINKS = KindSpec("sinks", Sink, SinkConfig, hookspecs.observer_register_sinks.__name__, ("write",))
ANALYZERS = KindSpec(
    "analyzers",
    Analyzer,
    AnalyzerConfig,
    hookspecs.observer_register_analyzers.__name__,
    ("analyze",),
)
KIND_SPECS: tuple[KindSpec[Any], ...] = (SOURCES, SINKS, ANALYZERS)
KINDS: tuple[str, ...] = tuple(spec.kind for spec in KIND_SPECS)
"""The kinds' table names, in the order a config and the CLI list them."""


def spec_of(kind: str) -> KindSpec[Any]:
    """The row of ``kind`` (``sources``...); a ``KeyError`` naming the known ones otherwise."""
    for spec in KIND_SPECS:
        if spec.kind == kind:
            return spec
    raise KeyError(f"unknown component kind {kind!r} (known: {', '.join(KINDS)})")
