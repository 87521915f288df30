"""Whether the ingest path runs compiled: setup.py compiles these modules with mypyc at
install (docs/design.md, "Compiled by mypyc"); without a C compiler, or with
``OBSERVER_CORE_PURE=1``, the same modules run interpreted."""

from __future__ import annotations

from types import ModuleType

from ._engine import dispatch
from .http import _connection, _framing, _incoming, _shared

MODULES: tuple[ModuleType, ...] = (_connection, _framing, _incoming, _shared, dispatch)
"""The modules setup.py compiles (its ``COMPILED``)."""

INGEST_PATH = (
    "interpreted"
    if any((module.__file__ or "").endswith(".py") for module in MODULES)
    else "compiled"
)
"""``compiled`` or ``interpreted``: what the startup log says."""
