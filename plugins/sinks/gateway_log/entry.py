"""The log entry (contract §2): the public record of the ``gateway_log`` sink.

``diagnosis`` and ``playbook`` findings carry one as their ``data``, and it is exactly
the body ``gateway_log`` POSTs to the gateway's ``/log``. An analyzer of any
distribution that wants its findings posted there imports it from here
(``from observer_plugins.sinks.gateway_log.entry import LogEntry``).
"""

from __future__ import annotations

import msgspec

__all__ = ["LogEntry"]


class LogEntry(msgspec.Struct):
    """The body POSTed to the gateway's ``/log``: carried by diagnosis and playbook findings."""

    operation: str
    approach: str
    result: str
    context: str
