"""The ``status`` source: ``GET /health``, ``/ready``, ``/stats``, ``/metrics``, ``/tap`` and
the status page (``/``) on an address of its own.

For an observer that takes no events over HTTP (a fleet node that consumes from
NATS, a tailer): it answers exactly as the ``http`` source does on those paths
(same token rule: every path but ``/health``, ``/ready`` and ``/`` needs the bearer
token when one is set) and nothing else; ``POST /event`` is a 404. It binds at start,
so a taken port stops the daemon (exit 1); like every listener, it is not started
under ``--once``.
"""

from __future__ import annotations

from typing import ClassVar

from observer_core import RegisterSource, hookimpl
from observer_core.listener import ListenerConfig, ListenerSource, Port

__all__ = ["StatusConfig", "StatusSource"]


class StatusConfig(ListenerConfig, kw_only=True, forbid_unknown_fields=True):
    """Keys of ``[sources.NAME]`` with ``plugin = "status"`` (those of ``http``)."""

    port: Port = 3801


class StatusSource(ListenerSource):
    """Serves the read routes (no ingest) for observers without an http source."""

    name: ClassVar[str] = "status"
    Config = StatusConfig
    config: StatusConfig


@hookimpl
def observer_register_sources(register: RegisterSource) -> None:
    register(StatusSource)
