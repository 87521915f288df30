"""observer-core: watch what AI agents and their gateway do, learn from it, feed it back.

The public API for plugins is what this module exports; nothing else in
``observer_core`` is promised to stay put.
"""

from __future__ import annotations

import importlib
import warnings
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from .auth import Token, Tokens
from .components import (
    Analyzer,
    AnalyzerConfig,
    BatchTooLarge,
    Clock,
    Component,
    ComponentConfig,
    Context,
    Emit,
    Emitter,
    Every,
    Handed,
    Installed,
    NotAccepted,
    Observer,
    OnAccepted,
    Sink,
    SinkConfig,
    Source,
    Window,
)
from .delivery import DurableQueue, MaxAttempts, QueueMax, Rejected, RetryLater, post_json
from .hookspecs import (
    RegisterAnalyzer,
    RegisterFindingKind,
    RegisterRowFormat,
    RegisterSink,
    RegisterSource,
    RowFormat,
    hookimpl,
)
from .ingest import EventDecoder, InvalidEvent, UnknownFields, split_lines
from .memory import memory_key
from .metrics import Counter, Gauge, Metrics
from .queues import DropOldestQueue
from .records import (
    UNSET,
    Finding,
    Op,
    Record,
    UnsetType,
    format_timestamp,
    is_failure,
    now_timestamp,
    parse_timestamp,
)
from .redact import redact_config, redact_url
from .state import StateStore, atomic_write
from .urls import check_http_url

_MOVED = {
    "LogEntry": "observer_plugins.sinks.gateway_log.entry",
    "EscalationRow": "observer_plugins.analyzers.escalation",
}
"""Plugin records the core exported once, and the public module of their owner now."""


def __getattr__(name: str) -> Any:
    """The moved names of :data:`_MOVED`, with a ``DeprecationWarning`` naming their home.

    The core imports no plugin: the owner's module is imported only when code asks for
    one of these names."""
    home = _MOVED.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"observer_core.{name} moved to {home}; import it from there",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(importlib.import_module(home), name)


try:
    __version__ = version("observer-core")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+local"

__all__ = [
    "UNSET",
    "Analyzer",
    "AnalyzerConfig",
    "BatchTooLarge",
    "Clock",
    "Component",
    "ComponentConfig",
    "Context",
    "Counter",
    "DropOldestQueue",
    "DurableQueue",
    "Emit",
    "Emitter",
    "EventDecoder",
    "Every",
    "Finding",
    "Gauge",
    "Handed",
    "Installed",
    "InvalidEvent",
    "MaxAttempts",
    "Metrics",
    "NotAccepted",
    "Observer",
    "OnAccepted",
    "Op",
    "QueueMax",
    "Record",
    "RegisterAnalyzer",
    "RegisterFindingKind",
    "RegisterRowFormat",
    "RegisterSink",
    "RegisterSource",
    "Rejected",
    "RetryLater",
    "RowFormat",
    "Sink",
    "SinkConfig",
    "Source",
    "StateStore",
    "Token",
    "Tokens",
    "UnknownFields",
    "UnsetType",
    "Window",
    "__version__",
    "atomic_write",
    "check_http_url",
    "format_timestamp",
    "hookimpl",
    "is_failure",
    "memory_key",
    "now_timestamp",
    "parse_timestamp",
    "post_json",
    "redact_config",
    "redact_url",
    "split_lines",
]
