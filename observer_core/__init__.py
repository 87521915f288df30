"""observer-core: watch what AI agents and their gateway do, learn from it, feed it back.

The public API for plugins is what this module exports; nothing else in
``observer_core`` is promised to stay put.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .auth import Token, Tokens
from .components import (
    Analyzer,
    AnalyzerConfig,
    BatchTooLarge,
    Component,
    ComponentConfig,
    Context,
    Emit,
    Emitter,
    Every,
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
    EscalationRow,
    Finding,
    LogEntry,
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
    "EscalationRow",
    "EventDecoder",
    "Every",
    "Finding",
    "Gauge",
    "Installed",
    "InvalidEvent",
    "LogEntry",
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
