"""A third-party observer-core plugin for the tests: registers the row format ``shouty``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from observer_core import Op, hookimpl


def shouty(row: Any) -> Op:
    """``{"say": "hi"}`` becomes an op whose endpoint is ``shouty:HI``."""
    said = row.get("say") if isinstance(row, dict) else None
    if not isinstance(said, str):
        raise ValueError("say: expected a string")
    return Op(
        timestamp="2026-01-01T00:00:00.000Z",
        endpoint=f"shouty:{said.upper()}",
        input_summary=said,
        success=True,
        duration_ms=0,
        output_summary=f"{said.upper()}!",
        source="shouty",
    )


@hookimpl
def observer_register_row_formats(register: Callable[[str, Callable[[Any], Op]], None]) -> None:
    register("shouty", shouty)
