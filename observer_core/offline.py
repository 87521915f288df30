"""Running analyzers offline, on virtual cycles: what ``replay`` and ``test`` share.

An :class:`OfflineEngine` holds only analyzers (no source, no sink): their state lives in
memory (:class:`MemoryStateStore`, never ``state_dir``), their time is a
:class:`VirtualClock`, their outbound calls go through a :class:`ScriptedTransport`
(or the network, for ``replay --call-services``), and their findings go to a callback.
:class:`VirtualCycles` feeds it ops in order and runs cycle ``k`` once the ops up to
``first_timestamp + k * cycle_secs`` are in the ring; each cycle waits for the work
its analyzers spawned.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx
import msgspec

from .config import ConfigError, InstanceConfig, ObserverConfig
from .engine import Engine
from .records import Finding, Op, format_timestamp
from .state import StateStore

__all__ = [
    "DRY_RUN_REPLY",
    "Answer",
    "MemoryStateStore",
    "OfflineEngine",
    "ScriptedTransport",
    "VirtualClock",
    "VirtualCycles",
    "analyzers_only",
    "describe_request",
    "epoch_of",
]

_T = TypeVar("_T")

DRY_RUN_REPLY: dict[str, Any] = {
    "text": "(replay: not called)",
    "response": "(replay: not called)",
    "choices": [{"message": {"content": "(replay: not called)"}}],
}
"""What a call answers under ``replay`` without ``--call-services``: a success that each
built-in analyzer reads as an answer (``text`` for lakehouse, ``response`` for ollama and
escalation, ``choices`` for openai), so the analyzer carries on as if the service had
answered, and the call is not made again on the next cycle."""


def epoch_of(timestamp: str) -> float:
    """Unix seconds of a timestamp in the record's format."""
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


class VirtualClock:
    """A :class:`~observer_core.Clock` that reads what it was last set to: the end of
    the virtual cycle running."""

    __slots__ = ("_now", "_text")

    def __init__(self, now: float = 0.0) -> None:
        self._now = now
        self._text = _format_epoch(now)

    def set(self, now: float) -> None:
        self._now = now
        self._text = _format_epoch(now)

    def now(self) -> float:
        return self._now

    def timestamp(self) -> str:
        return self._text


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _format_epoch(seconds: float) -> str:
    """``seconds`` in the record's format, rounded to the millisecond (not truncated, so
    that a boundary computed in floating point does not fall a millisecond short)."""
    return format_timestamp(_EPOCH + timedelta(milliseconds=round(seconds * 1000)))


class MemoryStateStore(StateStore):
    """A :class:`StateStore` that keeps its files in memory: starts empty, writes nothing."""

    def __init__(self, instance: str) -> None:
        super().__init__(Path(f"<memory:{instance}>"))
        self._files: dict[str, bytes] = {}

    def make_root(self) -> Path:
        raise RuntimeError("state is kept in memory here: there is no state folder")

    def load(self, name: str, type: type[_T], default: _T) -> _T:
        data = self._files.get(name)
        return default if data is None else msgspec.json.decode(data, type=type)

    def write_bytes(self, name: str, data: bytes) -> None:
        self._files[name] = data

    async def save(self, name: str, value: Any) -> None:
        """Keep ``value`` (no worker thread: nothing touches the disk)."""
        self._files[name] = msgspec.json.encode(value)


def describe_request(request: httpx.Request) -> dict[str, Any]:
    """``{"method", "url", "body"}`` of a request: the body decoded when it is JSON.
    Headers are left out: they may hold an API key (SECURITY §11.4)."""
    content = request.content
    body: Any
    try:
        body = msgspec.json.decode(content) if content else None
    except msgspec.DecodeError:
        body = content.decode(errors="replace")
    return {"method": request.method, "url": str(request.url), "body": body}


Answer = Callable[[str, dict[str, Any]], httpx.Response]
"""Answers one call: ``(instance, described request)`` to a response, or raises an
``httpx.TransportError`` (what the analyzer sees as "unreachable")."""


class ScriptedTransport(httpx.AsyncBaseTransport):
    """An httpx transport that answers an instance's calls without the network."""

    def __init__(self, instance: str, answer: Answer) -> None:
        self.instance = instance
        self.answer = answer

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        response = self.answer(self.instance, describe_request(request))
        response.request = request
        return response


def analyzers_only(config: ObserverConfig, names: Sequence[str] | None) -> ObserverConfig:
    """``config`` with only its analyzers: the enabled ones, or those ``names`` names
    (``escalation`` or ``analyzers.escalation``; enabled or not), each without its
    ``fleet`` table: an offline run never touches a shared bucket."""
    analyzers = [item for item in config.instances if item.kind == "analyzers"]
    if names is None:
        chosen = [item for item in analyzers if item.enabled]
    else:
        by_name = {item.name: item for item in analyzers}
        by_name.update({item.qualified: item for item in analyzers})
        chosen = []
        for name in names:
            item = by_name.get(name)
            if item is None:
                known = ", ".join(item.name for item in analyzers) or "none"
                raise ConfigError(
                    f"{config.path.name}: no analyzer named {name!r} (configured: {known})"
                )
            if item not in chosen:
                chosen.append(item)
    return dataclasses.replace(config, instances=[_offline(item) for item in chosen])


def _offline(item: InstanceConfig) -> InstanceConfig:
    settings = item.config
    if getattr(settings, "fleet", None) is not None:
        settings = msgspec.structs.replace(settings, fleet=None)
    return dataclasses.replace(item, enabled=True, config=settings)


class OfflineEngine(Engine):
    """The engine with analyzers only, its state in memory, its time virtual, its
    outbound calls through ``transports(instance)`` (None: the network) and its
    findings handed to ``on_finding``."""

    def __init__(
        self,
        config: ObserverConfig,
        clock: VirtualClock,
        transports: Callable[[str], httpx.AsyncBaseTransport | None],
        on_finding: Callable[[Finding], None],
    ) -> None:
        self.clock = clock
        self._transports = transports
        self._on_finding = on_finding
        super().__init__(config)

    def _state_store(self, spec: InstanceConfig) -> StateStore:
        return MemoryStateStore(spec.qualified)

    def _transport(self, spec: InstanceConfig) -> httpx.AsyncBaseTransport | None:
        return self._transports(spec.qualified)

    async def publish(self, findings: Sequence[Finding]) -> None:
        for finding in findings:
            self._on_finding(finding)

    def push(self, ops: Sequence[Op]) -> None:
        """Commit ops as the daemon does once its sinks have them: into the ring, and to
        each analyzer's ``observe``."""
        self._accept(ops)

    async def run_virtual_cycle(self) -> None:
        """Run the next cycle's due analyzers and wait for the work they spawned."""
        self.cycle += 1
        async with anyio.create_task_group() as spawned:
            self._background = spawned
            try:
                await self.run_analyzers()
            finally:
                self._background = None

    def errors(self) -> int:
        """Instance errors counted so far (logged by the analyzers or the engine)."""
        return int(sum(self.metrics.instance_errors.values.values()))

    async def __aenter__(self) -> OfflineEngine:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.shutdown()


class VirtualCycles:
    """Feeds ops, in order, into an :class:`OfflineEngine` and runs its cycles: cycle
    ``k`` (from 1) runs once every op up to ``first_timestamp + k * cycle_secs`` is
    in the ring, with the clock at that instant. Ops must have canonical timestamps."""

    def __init__(self, engine: OfflineEngine, clock: VirtualClock, cycle_secs: float) -> None:
        self.engine = engine
        self.clock = clock
        self.cycle_secs = cycle_secs
        self._start: float | None = None
        self._boundary = ""
        """The current cycle's end, as a timestamp: an op after it belongs to a later cycle."""
        self._unseen = False
        """Ops are in the ring that no cycle has run on yet."""
        self.fed = 0

    def _end_of(self, cycle: int) -> float:
        assert self._start is not None
        return self._start + cycle * self.cycle_secs

    def _aim(self) -> None:
        """Point the boundary at the end of the next cycle."""
        self._boundary = _format_epoch(self._end_of(self.engine.cycle + 1))

    def _push(self, ops: Sequence[Op]) -> None:
        """Commit ``ops`` with the clock at the newest one's time (when the daemon would
        have committed them; never before the last cycle's end): what ``observe`` sees."""
        newest = epoch_of(max(op.timestamp for op in ops))
        self.clock.set(max(newest, self._end_of(self.engine.cycle)))
        self.engine.push(ops)
        self._unseen = True

    async def feed(self, ops: Sequence[Op]) -> None:
        """Push ``ops`` into the ring, running each cycle that ends before one of them."""
        if not ops:
            return
        if self._start is None:
            self._start = epoch_of(ops[0].timestamp)
            self._aim()
        start, boundary = 0, self._boundary
        for index, op in enumerate(ops):
            if op.timestamp > boundary:
                if index > start:
                    self._push(ops[start:index])
                start = index
                while op.timestamp > self._boundary:
                    await self.cycle()
                boundary = self._boundary
        self._push(ops[start:])
        self.fed += len(ops)

    async def cycle(self) -> None:
        """Run the next cycle with the clock at its end."""
        if self._start is None:
            self._start = self.clock.now()
            self._aim()
        self._unseen = False
        self.clock.set(self._end_of(self.engine.cycle + 1))
        await self.engine.run_virtual_cycle()
        self._aim()

    async def finish(self, at_least: int = 1) -> None:
        """Run the cycle holding the last ops, and more until ``at_least`` cycles ran."""
        if self._unseen:
            await self.cycle()
        while self.engine.cycle < at_least:
            await self.cycle()
