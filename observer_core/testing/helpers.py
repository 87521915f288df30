"""Small helpers every part of the kit uses: a free port, a bounded poll, a config file,
a minimal daemon config and a numbered op."""

from __future__ import annotations

import json
import socket
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ..records import Op

__all__ = ["GiveUp", "daemon_config", "free_port", "numbered_op", "wait_for", "write_dedented"]

_T = TypeVar("_T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class GiveUp(AssertionError):
    """Raised by a :func:`wait_for` predicate: fail now, the condition can no longer hold."""


def wait_for(
    predicate: Callable[[], _T], timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> _T:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
        except GiveUp:
            raise
        except Exception as exc:  # the condition may raise until it holds (e.g. connection refused)
            last_error = exc
        else:
            if result:
                return result
        time.sleep(interval)
    detail = f" (last error: {last_error!r})" if last_error else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}{detail}")


def write_dedented(path: Path, text: str) -> Path:
    """Write ``text``, dedented, to ``path`` (its folders created); return ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def _toml(value: str | float | bool) -> str:
    """``value`` as a TOML scalar."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, str) else repr(value)


def daemon_config(
    path: str = "ops.jsonl",
    *,
    cycle_secs: float = 60,
    state_dir: str | None = None,
    **sink_keys: str | float | bool,
) -> str:
    """A minimal daemon config: the ``http`` source on ``{port}`` (``DaemonFactory.start``
    fills it in) and a ``jsonl`` sink ``ops`` writing ``path`` with ``sink_keys``; append
    tables of your own to it."""
    observer = {"cycle_secs": cycle_secs} | ({"state_dir": state_dir} if state_dir else {})
    sink = {"plugin": "jsonl", "path": path} | sink_keys
    return "\n".join(
        [
            "[observer]",
            *(f"{key} = {_toml(value)}" for key, value in observer.items()),
            "[sources.http]",
            "port = {port}",
            "[sinks.ops]",
            *(f"{key} = {_toml(value)}" for key, value in sink.items()),
            "",
        ]
    )


def numbered_op(n: int) -> Op:
    """A successful op that carries ``n`` as its ``duration_ms`` and in its endpoint
    (``/e<n>``), to tell ops apart in what a sink wrote."""
    return Op(
        timestamp="2026-01-01T00:00:00.000Z",
        endpoint=f"/e{n}",
        input_summary="i",
        success=True,
        duration_ms=n,
        output_summary="o",
        source="test",
    )
