"""Reload outcomes (contract §12.1): ``state_dir/reload.json``, metrics, ``/health``.

Every load of the config gets the next generation: the one the daemon started with
is generation 1, and each reload (applied or refused) takes the next number, so
``observer-core reload`` sees its outcome as a newer generation in ``reload.json``.
``/health`` shows the generation now running, when it was loaded, and the error of
the last reload when it failed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Literal

import anyio
import msgspec

from .files import open_private, write_private_atomic
from .metrics import Metrics
from .records import now_timestamp
from .reload_plan import ConfigSnapshot

__all__ = ["RELOAD_FILE", "ReloadOutcome", "ReloadStatus", "read_outcome"]

RELOAD_FILE = "reload.json"
"""The file in ``state_dir`` holding the outcome of the last load of the config."""
MAX_OUTCOME_BYTES = 1 << 20
"""``reload.json`` is read only up to this size (a larger one is not ours)."""


class ReloadOutcome(msgspec.Struct, kw_only=True):
    """What ``reload.json`` holds."""

    generation: int
    result: Literal["success", "failure"]
    error: str | None = None
    at: str
    """When the outcome was reached (RFC 3339, UTC)."""
    pid: int = 0
    """The daemon that wrote it: ``reload`` signals only a daemon that has written one."""
    running: ConfigSnapshot = msgspec.field(default_factory=ConfigSnapshot)
    """The config running now (fingerprints, no secrets): what ``reload --dry-run``
    compares a file with."""


def read_outcome(state_dir: Path) -> ReloadOutcome | None:
    """The outcome in ``state_dir/reload.json``; None when there is none (or it cannot be
    read: a daemon that has not written one yet, or a torn file from elsewhere)."""
    try:
        fd = open_private(state_dir / RELOAD_FILE, os.O_RDONLY)
    except OSError:
        return None
    with open(fd, "rb") as handle:
        data = handle.read(MAX_OUTCOME_BYTES)
    try:
        return msgspec.json.decode(data, type=ReloadOutcome)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


class ReloadStatus:
    """The daemon's record of its config loads: written to ``reload.json``, counted in
    ``metrics`` and shown in ``/health``."""

    def __init__(self, state_dir: Path, metrics: Metrics, running: ConfigSnapshot) -> None:
        self.state_dir = state_dir
        self.running = running
        """The config running now."""
        self.generation = 0
        """The newest load's number (applied or not)."""
        self.running_generation = 0
        """The number of the config running now."""
        self.loaded_at: str | None = None
        self.last_error: str | None = None
        self._reloads = metrics.counter(
            "observer_config_reloads_total", "Config reloads, by result (success or failure)."
        )
        self._successful = metrics.gauge(
            "observer_config_last_reload_successful",
            "1 when the last config load (start or reload) was applied, else 0.",
        )
        self._success_at = metrics.gauge(
            "observer_config_last_reload_success_timestamp_seconds",
            "When a config was last applied (start or reload), as a Unix time.",
        )
        for result in ("success", "failure"):
            self._reloads.inc(0, result=result)

    async def started(self) -> ReloadOutcome:
        """The daemon runs its first config: generation 1, written to ``reload.json`` (not
        counted as a reload, but the gauges say it was applied, as Prometheus does)."""
        return await self._record(None, counted=False)

    async def succeeded(self, running: ConfigSnapshot) -> ReloadOutcome:
        """A reload was applied: ``running`` is the config now."""
        self.running = running
        return await self._record(None, counted=True)

    async def failed(self, error: str) -> ReloadOutcome:
        """A reload was refused or rolled back (``error`` says why, on one line)."""
        return await self._record(error, counted=True)

    async def _record(self, error: str | None, *, counted: bool) -> ReloadOutcome:
        self.generation += 1
        at = now_timestamp()
        result: Literal["success", "failure"] = "failure" if error else "success"
        if counted:
            self._reloads.inc(result=result)
        self._successful.set(0.0 if error else 1.0)
        self.last_error = error
        if error is None:
            self.running_generation, self.loaded_at = self.generation, at
            self._success_at.set(time.time())
        outcome = ReloadOutcome(
            generation=self.generation,
            result=result,
            error=error,
            at=at,
            pid=os.getpid(),
            running=self.running,
        )
        data = msgspec.json.encode(outcome)
        await anyio.to_thread.run_sync(write_private_atomic, self.state_dir / RELOAD_FILE, data)
        return outcome

    def health(self) -> dict[str, Any]:
        """``/health``'s ``config``: the generation running, when it was loaded, and the
        last reload's error (None after a success)."""
        return {
            "generation": self.running_generation,
            "loaded_at": self.loaded_at,
            "last_error": self.last_error,
        }
