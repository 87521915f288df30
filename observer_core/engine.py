"""The daemon's engine: :class:`Engine` builds the components of a config and runs them.

Its parts live in ``observer_core._engine`` (one job each, see its docstring); this module
is where the rest of the core, the tools and the tests import the engine from.
"""

from __future__ import annotations

from ._engine.core import Engine, StartupError
from ._engine.dispatch import MAX_PENDING_OPS, SINK_QUEUE_MAX
from ._engine.instance import Instance
from ._engine.introspect import RECENT_MAX, or_none, preview

__all__ = [
    "MAX_PENDING_OPS",
    "RECENT_MAX",
    "SINK_QUEUE_MAX",
    "Engine",
    "Instance",
    "StartupError",
    "or_none",
    "preview",
]
