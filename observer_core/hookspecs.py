"""The hooks a plugin implements. Every hook *registers* things; the engine runs them.

A plugin is a module (or object) listed under the ``observer_core`` entry-point
group whose functions are decorated with :data:`hookimpl`::

    from observer_core import hookimpl, Source

    class MySource(Source):
        name = "my_source"
        ...

    @hookimpl
    def observer_register_sources(register: RegisterSource) -> None:
        register(MySource)

Each hook's ``register`` has a type of its own (:data:`RegisterSource`...), exported
from ``observer_core``, so a plugin's hook type-checks without ``Any``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

from .components import Analyzer, Sink, Source
from .records import Op

PROJECT = "observer_core"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

RowFormat = Callable[[Any], Op]
"""Maps one parsed JSON row to an :class:`Op`; raises ``ValueError`` (or
:class:`~observer_core.ingest.InvalidEvent`) naming the field when it cannot."""

RegisterSource = Callable[[type[Source]], None]
"""The ``register`` that :func:`observer_register_sources` gets."""
RegisterSink = Callable[[type[Sink]], None]
"""The ``register`` that :func:`observer_register_sinks` gets."""
RegisterAnalyzer = Callable[[type[Analyzer]], None]
"""The ``register`` that :func:`observer_register_analyzers` gets."""
RegisterFindingKind = Callable[[str], None]
"""The ``register`` that :func:`observer_register_finding_kinds` gets."""
RegisterRowFormat = Callable[[str, RowFormat], None]
"""The ``register`` that :func:`observer_register_row_formats` gets."""


@hookspec
def observer_register_sources(register: RegisterSource) -> None:
    """Register source classes.

    Call ``register(cls)`` once per class. ``cls`` subclasses
    :class:`~observer_core.Source`, has a unique ``name`` and a ``Config``
    struct whose every field has a default unless it is required, and overrides
    ``run(emit)`` (push), ``poll(emit)`` (per cycle) or both.
    """


@hookspec
def observer_register_sinks(register: RegisterSink) -> None:
    """Register sink classes.

    Call ``register(cls)`` once per class. ``cls`` subclasses
    :class:`~observer_core.Sink`, has a unique ``name``, a ``Config``
    subclassing :class:`~observer_core.SinkConfig` (``accepts`` with the kinds
    it takes by default) and implements ``write(records)``. Set
    ``holds_ack = True`` only if an event must wait for this sink before it is
    acknowledged.
    """


@hookspec
def observer_register_analyzers(register: RegisterAnalyzer) -> None:
    """Register analyzer classes.

    Call ``register(cls)`` once per class. ``cls`` subclasses
    :class:`~observer_core.Analyzer`, has a unique ``name``, a ``Config``
    subclassing :class:`~observer_core.AnalyzerConfig` (``every`` with its
    default), lists the finding kinds it emits in ``emits`` and implements
    ``analyze(window)``. Calls to other services go through ``ctx.spawn`` so
    they never stall the cycle.
    """


@hookspec
def observer_register_finding_kinds(register: RegisterFindingKind) -> None:
    """Register new finding kinds by name, so that sinks may list them in ``accepts``.

    Only ``op`` needs no registration: every analyzer, the built-ins included, registers
    the kinds it emits (``diagnosis``, ``playbook``, ``escalation``, ``alert``).
    """


@hookspec
def observer_register_row_formats(register: RegisterRowFormat) -> None:
    """Register named row formats: how one parsed JSON row maps to an op.

    Call ``register(name, mapper)``. Sources that read rows (``jsonl_tail``'s
    ``format`` key) look formats up by name; a mapper raises ``ValueError``
    naming the field when a row does not map, and the row is skipped and counted.
    """
