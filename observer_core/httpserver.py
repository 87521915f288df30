"""Deprecated: the HTTP server is the public package :mod:`observer_core.http`; import
from there. This module re-exports its names for the plugins written before it."""

from __future__ import annotations

import warnings

from .http import (
    LATER,
    STREAM,
    Connections,
    Handler,
    HeaderBytes,
    HeaderCount,
    HttpLimits,
    HttpServer,
    Later,
    Request,
    RequestBody,
    RequestBodyError,
    Response,
    Seconds,
    Size,
    Stream,
    UrlBytes,
    json_error,
)

__all__ = [
    "LATER",
    "STREAM",
    "Connections",
    "Handler",
    "HeaderBytes",
    "HeaderCount",
    "HttpLimits",
    "HttpServer",
    "Later",
    "Request",
    "RequestBody",
    "RequestBodyError",
    "Response",
    "Seconds",
    "Size",
    "Stream",
    "UrlBytes",
    "json_error",
]

warnings.warn(
    "observer_core.httpserver is deprecated: import from observer_core.http",
    DeprecationWarning,
    stacklevel=2,
)
