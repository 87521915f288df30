"""``json_inbox``: each JSON file dropped into a folder becomes one op.

A file holds one event, exactly as ``POST /event`` takes it (same defaults,
same strict types). Once per cycle the source takes the oldest files, at most
``max_files``, hands their ops to the engine and, only once ``emit`` returned
(every ack-holding sink has them), moves the files to ``done/``. A file that
is not a valid event, or is too big, moves to ``failed/`` and is logged and
counted. The names being moved are saved in ``state_dir`` first, so a stop
between ``emit`` and the move is finished at the next start instead of
handing the same ops on twice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Annotated, ClassVar

import anyio
import msgspec
from observer_core import (
    ComponentConfig,
    Context,
    Emit,
    EventDecoder,
    InvalidEvent,
    Op,
    RegisterSource,
    Source,
    hookimpl,
)

__all__ = ["JsonInbox", "JsonInboxConfig"]

MOVING = "moving.json"
"""State file: the files whose ops were accepted, while they are moved to done/."""


class JsonInboxConfig(ComponentConfig, kw_only=True, forbid_unknown_fields=True):
    """Keys of ``[sources.NAME]`` with ``plugin = "json_inbox"``."""

    path: str
    """The folder to watch, relative to the config file's folder."""
    pattern: str = "*.json"
    """Which files in it are events (a glob)."""
    max_files: Annotated[int, msgspec.Meta(ge=1)] = 100
    """Files taken per cycle, oldest first; the rest wait for the next cycle."""
    max_file_bytes: Annotated[int, msgspec.Meta(ge=1)] = 1_048_576
    """A bigger file is not read: it goes to failed/."""


@dataclass
class _Batch:
    """What one poll took: the ops, the files they came from, and the files refused."""

    ops: list[Op] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)


class JsonInbox(Source):
    """Turns each JSON file dropped into a folder into one op, then moves it to done/."""

    name: ClassVar[str] = "json_inbox"
    Config = JsonInboxConfig
    config: JsonInboxConfig

    def __init__(self, config: JsonInboxConfig, ctx: Context) -> None:
        super().__init__(config, ctx)  # no I/O here: open() is where resources are taken
        self.inbox = ctx.resolve_path(config.path)
        self.done = self.inbox / "done"
        self.failed = self.inbox / "failed"
        self.decoder = EventDecoder(max_field_bytes=ctx.max_field_bytes)
        self.files = ctx.metrics.counter(
            "observer_json_inbox_files_total", "Files a json_inbox source took, by outcome."
        )

    async def open(self) -> None:
        """Create the folders; finish a move that a stop interrupted."""
        await anyio.to_thread.run_sync(self._prepare)
        self.ctx.status["inbox"] = str(self.inbox)

    def _prepare(self) -> None:
        self.failed.mkdir(parents=True, exist_ok=True)
        self.done.mkdir(exist_ok=True)
        leftover = self.ctx.state.load(MOVING, list[str], [])
        if leftover:
            self._move(leftover, self.done)
            self.ctx.state.save_sync(MOVING, [])
            self.ctx.logger.info("moved %d file(s) accepted before the stop", len(leftover))

    async def poll(self, emit: Emit) -> None:
        """Hand on the ops of the oldest files, then move those files to done/."""
        batch = await anyio.to_thread.run_sync(self._take)
        for name, problem in batch.refused:
            self.ctx.logger.warning("%s: %s; moved to %s", name, problem, self.failed)
        if batch.refused:
            self.files.inc(len(batch.refused), outcome="failed")
        if not batch.ops:
            return
        await emit(batch.ops)  # NotAccepted: the files stay where they are for the next cycle
        with anyio.CancelScope(shield=True):  # accepted: a shutdown now waits for the move
            await self.ctx.state.save(MOVING, batch.names)
            await anyio.to_thread.run_sync(self._move, batch.names, self.done)
            await self.ctx.state.save(MOVING, [])
        self.files.inc(len(batch.names), outcome="accepted")

    def _take(self) -> _Batch:
        """(In a worker thread.) Read the oldest files; move the ones that are not events."""
        batch = _Batch()
        for name in self._oldest():
            try:
                op = self._read(self.inbox / name)
            except FileNotFoundError:
                continue  # taken away since the listing
            except (OSError, InvalidEvent) as exc:
                batch.refused.append((name, str(exc)))
                self._move([name], self.failed)
            else:
                batch.ops.append(op)
                batch.names.append(name)
        return batch

    def _oldest(self) -> list[str]:
        found: list[tuple[int, str]] = []
        with os.scandir(self.inbox) as entries:
            for entry in entries:
                if not fnmatch(entry.name, self.config.pattern) or not entry.is_file():
                    continue
                try:
                    found.append((entry.stat().st_mtime_ns, entry.name))
                except FileNotFoundError:
                    continue
        return [name for _, name in sorted(found)[: self.config.max_files]]

    def _read(self, path: Path) -> Op:
        size = path.stat().st_size
        if size > self.config.max_file_bytes:
            raise InvalidEvent(f"{size} bytes, more than max_file_bytes")
        return self.decoder.decode(path.read_bytes())

    def _move(self, names: list[str], folder: Path) -> None:
        for name in names:
            try:
                os.replace(self.inbox / name, folder / name)
            except FileNotFoundError:
                continue  # already moved (the state file outlived the move)


@hookimpl
def observer_register_sources(register: RegisterSource) -> None:
    register(JsonInbox)
