"""A running component, and the one place an instance's error is logged and counted."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from ..components import Component, Context, NotAccepted, Sink
from ..config import InstanceConfig

__all__ = ["WRITE_TIMEOUT", "Instance", "fail", "guard", "holds_ack", "quietly"]

log = logging.getLogger("observer_core")

WRITE_TIMEOUT = 30.0
"""Seconds a finding write or a sink's probe may take."""


class Instance:
    """A running component with its config and context."""

    __slots__ = ("component", "ctx", "spec")

    def __init__(self, spec: InstanceConfig, component: Component, ctx: Context) -> None:
        self.spec = spec
        self.component = component
        self.ctx = ctx


def fail(ctx: Context, what: str, exc: BaseException | None = None) -> None:
    """Log an error of ``ctx``'s instance and count it in ``observer_instance_errors_total``:
    the one place the engine does both. ``what`` is the whole message; with ``exc`` (one
    nobody expected) its traceback is logged too."""
    ctx.logger.error(what, exc_info=exc)
    ctx.metrics.instance_errors.inc(instance=ctx.instance)


async def guard(
    ctx: Context,
    what: str,
    timeout: float | None,
    fn: Callable[..., Awaitable[Any]],
    *args: Any,
    refusal_is_error: bool = True,
) -> Any:
    """``await fn(*args)`` within ``timeout`` seconds (None: no limit), its failure the
    instance's own (:func:`fail`); None then. Unless ``refusal_is_error``, a
    :class:`NotAccepted` (ops the engine cannot take yet) is only a warning."""
    try:
        with anyio.fail_after(timeout) if timeout else contextlib.nullcontext():
            return await fn(*args)
    except TimeoutError:
        fail(ctx, f"{what} timed out after {timeout}s")
    except NotAccepted as exc:
        if refusal_is_error:
            fail(ctx, f"{what} failed", exc)
        else:
            ctx.logger.warning("%s: ops not accepted yet: %s", what, exc)
    except Exception as exc:
        fail(ctx, f"{what} failed", exc)
    return None


async def quietly(work: Awaitable[Any], ctx: Context | None = None) -> None:
    """Await ``work`` while closing: its failure is the instance's error, or a warning."""
    try:
        await work
    except Exception as exc:
        if ctx is not None:
            fail(ctx, repr(exc))
        else:
            log.warning("while closing: %r", exc)


def holds_ack(item: Instance) -> bool:
    """An op sink whose write must succeed before ops are accepted."""
    return isinstance(item.component, Sink) and item.component.holds_ack
