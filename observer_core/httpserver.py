"""Deprecated: the HTTP server is the public package :mod:`observer_core.http`; import
from there. This module re-exports its names for the plugins written before it."""

from __future__ import annotations

import warnings

from . import http as _http
from .http import *  # noqa: F403  (its public names, re-exported as they are)

__all__ = list(_http.__all__)

warnings.warn(
    "observer_core.httpserver is deprecated: import from observer_core.http",
    DeprecationWarning,
    stacklevel=2,
)
