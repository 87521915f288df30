"""One component outside any engine: :func:`make_context`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..components import Context
from ..metrics import Metrics
from ..records import Op
from ..state import StateStore
from ..tap import TapHub
from .collect import BUILTIN_FINDING_KINDS

__all__ = ["make_context"]


class _StandaloneObserver:
    """The Observer a component sees when it runs outside an engine."""

    def __init__(self) -> None:
        self.tap = TapHub()
        self.tap_kinds = frozenset(("op", *BUILTIN_FINDING_KINDS))

    def ready(self) -> list[str]:
        return []

    def ring_len(self) -> int:
        return 0

    def stats(self) -> dict[str, Any]:
        return {}

    def recent_ops(self, source: str, limit: int) -> list[Op]:
        return []

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "ops_in_ring": 0, "checks": {}}

    def metrics_text(self) -> str:
        return ""


def make_context(
    directory: Path,
    instance: str = "sinks.test",
    *,
    published: list[Any] | None = None,
) -> Context:
    """A :class:`~observer_core.Context` for unit-testing one component outside the daemon.

    Paths resolve from ``directory``; state lives in ``directory/state``;
    ``publish`` appends to ``published``. ``spawn`` is not available (use the
    ``observer_daemon`` fixture for components that spawn work).
    """
    sink: list[Any] = [] if published is None else published

    async def publish(findings: Any) -> None:
        sink.extend(findings)

    def spawn(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("spawn() needs a running daemon")

    return Context(
        instance=instance,
        kind=instance.split(".")[0],
        config_dir=directory,
        logger=logging.getLogger(f"observer.{instance}"),
        metrics=Metrics(),
        state=StateStore(directory / "state" / instance),
        max_field_bytes=65536,
        observer=_StandaloneObserver(),
        spawn=spawn,
        publish=publish,
    )
