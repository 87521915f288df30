"""Small helpers every part of the kit uses: a free port, a bounded poll, a config file."""

from __future__ import annotations

import socket
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

__all__ = ["GiveUp", "free_port", "wait_for", "write_dedented"]

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
