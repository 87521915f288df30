"""A running component, and the one place an instance's error is logged and counted."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc

from ..components import Component, Context, NotAccepted, Sink
from ..config import InstanceConfig

__all__ = [
    "WRITE_TIMEOUT",
    "Instance",
    "StartupError",
    "cannot_start",
    "fail",
    "guard",
    "holds_ack",
    "quietly",
]

log = logging.getLogger("observer_core")

WRITE_TIMEOUT = 30.0
"""Seconds a finding write or a sink's probe may take."""


class StartupError(Exception):
    """An enabled instance could not start; the message names it."""


def cannot_start(name: str, exc: BaseException) -> StartupError:
    """``[sources.http] cannot start: Address already in use``: the error for instance
    ``name`` whose ``open()`` raised ``exc``."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        reason = f"{exc.strerror}{where}"
    else:
        reason = str(exc) or type(exc).__name__
    return StartupError(f"[{name}] cannot start: {reason}")


class Instance:
    """A running component with its config and context, and the cancel scopes of its
    background tasks (a push source's ``run``, a sink's ``run``, work it started with
    ``ctx.spawn``): one instance can be stopped (a config reload) without the daemon's task
    groups ending."""

    __slots__ = ("component", "ctx", "scopes", "spec", "stopped", "tasks_done")

    def __init__(self, spec: InstanceConfig, component: Component, ctx: Context) -> None:
        self.spec = spec
        self.component = component
        self.ctx = ctx
        self.scopes: set[anyio.CancelScope] = set()
        self.tasks_done = anyio.Event()
        self.stopped = False
        """Set by :meth:`stop_tasks`: a task started after it is cancelled at once."""

    def start_task(self, group: anyio.abc.TaskGroup, work: Callable[[], Awaitable[Any]]) -> None:
        """Start one background task of this instance in ``group``, under its own scope
        (registered now, so :meth:`stop_tasks` sees a task that has not begun yet)."""
        scope = anyio.CancelScope()
        if self.stopped:
            scope.cancel()
        if not self.scopes:  # every earlier task ended: wait anew for this one
            self.tasks_done = anyio.Event()
        self.scopes.add(scope)
        group.start_soon(self._scoped, scope, work)

    async def _scoped(self, scope: anyio.CancelScope, work: Callable[[], Awaitable[Any]]) -> None:
        try:
            with scope:
                await work()
        finally:
            self.scopes.discard(scope)
            if not self.scopes:
                self.tasks_done.set()

    async def stop_tasks(self) -> None:
        """Cancel this instance's background tasks and wait until they have ended; any it
        starts later (a ``ctx.spawn`` from its ``flush`` or ``aclose``) is cancelled too."""
        self.stopped = True
        if self.scopes:
            for scope in list(self.scopes):
                scope.cancel()
            await self.tasks_done.wait()


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
