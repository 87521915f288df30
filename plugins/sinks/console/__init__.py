"""The ``console`` sink: write records to stdout, for debugging."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import ClassVar, Literal

import anyio
import msgspec

from observer_core import Finding, Op, Record, RegisterSink, Sink, SinkConfig, hookimpl

__all__ = ["ConsoleSink"]


class ConsoleConfig(SinkConfig, kw_only=True, forbid_unknown_fields=True):
    """Keys of ``[sinks.NAME]`` with ``plugin = "console"``."""

    format: Literal["text", "json"] = "text"
    accepts: list[str] = msgspec.field(
        default_factory=lambda: ["op", "diagnosis", "playbook", "escalation"]
    )


def _text(record: Record) -> str:
    if isinstance(record, Op):
        outcome = "ok  " if record.success else "FAIL"
        return (
            f"{record.timestamp} {outcome} [{record.source}] {record.endpoint} "
            f"{record.duration_ms}ms {record.input_summary} -> {record.output_summary}"
        )
    assert isinstance(record, Finding)
    return f"[{record.kind}] {msgspec.json.encode(record.data).decode()}"


def _json(record: Record) -> str:
    if isinstance(record, Finding):
        return msgspec.json.encode({"kind": record.kind, "data": record.data}).decode()
    return msgspec.json.encode(record).decode()


class ConsoleSink(Sink):
    """Prints each record on stdout: one readable line (text) or one JSON object (json)."""

    name: ClassVar[str] = "console"
    Config = ConsoleConfig
    config: ConsoleConfig

    async def write(self, records: Sequence[Record]) -> None:
        render: Callable[[Record], str] = _text if self.config.format == "text" else _json
        text = "".join(render(record) + "\n" for record in records)
        await anyio.to_thread.run_sync(_print, text)


def _print(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


@hookimpl
def observer_register_sinks(register: RegisterSink) -> None:
    register(ConsoleSink)
