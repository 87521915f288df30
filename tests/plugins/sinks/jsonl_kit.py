"""Helpers shared by the jsonl sink's tests: open one on a folder, read what it wrote."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from observer_plugins.sinks.jsonl import JsonlConfig, JsonlSink

from observer_core.testing import make_context


async def open_sink(folder: Path, **keys: Any) -> JsonlSink:
    """A jsonl sink writing ``folder/ops.jsonl`` with the config ``keys``, opened."""
    sink = JsonlSink(JsonlConfig(path="ops.jsonl", **keys), make_context(folder))
    await sink.open()
    return sink


def read_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a JSONL file, decoded."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def ids(path: Path) -> list[int]:
    """The ``duration_ms`` of every line: what :func:`numbered_op` numbered them with."""
    return [line["duration_ms"] for line in read_lines(path)]
