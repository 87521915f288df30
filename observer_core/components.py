"""The component base classes that plugins subclass, and the context they get.

A component is a small class with a ``name``, a typed ``Config`` (a
``msgspec.Struct`` with defaults), and async methods the engine calls:

- :class:`Source`: ``run(emit)`` for push sources (a listener), ``poll(emit)``
  for per-cycle sources (a tailer); either or both.
- :class:`Sink`: ``write(records)``; ``holds_ack = True`` when an event may be
  acknowledged only after this sink accepted it.
- :class:`Analyzer`: ``analyze(window)`` returns findings; long calls go to
  ``ctx.spawn`` so they run beside the cycle.

Every component gets ``open()`` (acquire resources: raising here means the
instance cannot start and the daemon exits 1) and ``aclose()``.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Protocol

import msgspec

from .records import Finding, Op, Record, now_timestamp
from .tap import TapHub

if TYPE_CHECKING:
    import httpx

    from .metrics import Metrics
    from .state import StateStore

__all__ = [
    "WALL_CLOCK",
    "Analyzer",
    "AnalyzerConfig",
    "BatchTooLarge",
    "Clock",
    "Component",
    "ComponentConfig",
    "Context",
    "Emit",
    "Emitter",
    "Every",
    "Handed",
    "Installed",
    "NotAccepted",
    "Observer",
    "OnAccepted",
    "Sink",
    "SinkConfig",
    "Source",
    "WallClock",
    "Window",
]


class NotAccepted(Exception):
    """Raised by ``emit`` when ops could not be accepted; the caller may retry later.

    ``retry_after`` is a hint in seconds (an HTTP source sends it as ``Retry-After``).
    """

    def __init__(self, reason: str, retry_after: int = 1) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class BatchTooLarge(NotAccepted):
    """Ops refused because the batch is larger than the engine ever holds: no retry can
    clear it (an HTTP source answers 413, not 503)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, retry_after=0)


Emit = Callable[[Sequence[Op]], Awaitable[None]]
"""Hand ops to the engine. Returns once every ack-holding op sink has accepted
them (and they are in the ring); raises :class:`NotAccepted` otherwise."""

OnAccepted = Callable[["NotAccepted | None"], object]
"""Called once submitted ops are accepted (with None) or refused (with the refusal)."""


class Emitter:
    """The ``emit`` the engine hands to sources. ``await emit(ops)`` as :data:`Emit`
    says; or, where a coroutine per call costs too much (an ingest listener),
    ``emit.submit(ops, on_accepted)``: it returns at once, raising :class:`NotAccepted`
    if the ops are refused outright, and ``on_accepted`` is called later, on the event
    loop, exactly once. Before ``submit``, while ``emit.lone`` is true,
    ``emit.commit_now(ops)`` commits a lone request's ops at once when that needs no wait
    (True: committed, answer now; False: nothing done, ``submit`` them; raises
    :class:`NotAccepted` as ``submit`` does). A source should not count on any of them:
    a test may hand it a plain ``Emit`` function."""

    __slots__ = ("_emit", "commit_now", "lone", "submit")

    def __init__(
        self,
        emit: Emit,
        submit: Callable[[Sequence[Op], OnAccepted], None],
        commit_now: Callable[[Sequence[Op]], bool] = lambda ops: False,
    ) -> None:
        self._emit = emit
        self.submit = submit
        self.commit_now = commit_now
        self.lone = False
        """The engine's traffic is lone (its dispatcher idle, its last commit one
        request's): ``commit_now`` may commit at once. Read per request: an attribute, not
        a call (measured: the call cost ~1,000 instructions per grouped POST /event)."""

    def __call__(self, ops: Sequence[Op]) -> Awaitable[None]:
        return self._emit(ops)


Every = Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
"""The type of an analyzer's ``every`` (cycles between runs), for a ``Config`` that
changes its default."""


class ComponentConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Base of every plugin's ``Config``: unknown keys are errors."""


class SinkConfig(ComponentConfig, kw_only=True, forbid_unknown_fields=True):
    """Base of a sink's ``Config``: ``accepts`` lists the record kinds it receives."""

    accepts: list[str] = msgspec.field(default_factory=lambda: ["op"])


class AnalyzerConfig(ComponentConfig, kw_only=True, forbid_unknown_fields=True):
    """Base of an analyzer's ``Config``: ``every = N`` runs it on cycles N, 2N, ..."""

    every: Every = 1


class Installed(Protocol):
    """What :meth:`Component.validate_config` may ask of the installed plugins."""

    @property
    def row_formats(self) -> Mapping[str, Callable[[Any], Any]]:
        """The registered row formats, by name."""
        ...

    @property
    def record_kinds(self) -> set[str]:
        """Kinds a sink may accept: ``op`` and every registered finding kind."""
        ...


class Observer(Protocol):
    """What the daemon shows to components that report on it (e.g. an HTTP source)."""

    tap: TapHub
    """Subscribers of ``GET /tap`` (contract §12.3)."""
    tap_kinds: frozenset[str]
    """The record kinds a tap may ask for."""

    def ring_len(self) -> int: ...
    def stats(self) -> dict[str, Any]: ...
    def recent_ops(self, source: str, limit: int) -> list[Op]:
        """The newest ``limit`` ops in the ring whose ``source`` is ``source``, oldest first."""
        ...

    def health(self) -> dict[str, Any]: ...
    def metrics_text(self) -> str: ...
    def ready(self) -> list[str]:
        """What ``/ready`` waits for (instance names); empty when ready."""
        ...


class Clock(Protocol):
    """Where components read the time: ``ctx.clock``. The daemon's is the wall clock;
    ``observer-core replay`` and ``observer-core test`` hand in a virtual one, so a
    component that reads time only from here behaves offline as it would have live."""

    def now(self) -> float:
        """Seconds since the Unix epoch (``time.time()`` on the wall clock)."""
        ...

    def timestamp(self) -> str:
        """:meth:`now` in the record's timestamp format (``2026-01-31T12:00:00.000Z``)."""
        ...


class WallClock:
    """The real time: what the daemon gives every component."""

    __slots__ = ()

    def now(self) -> float:
        return time.time()

    def timestamp(self) -> str:
        return now_timestamp()


WALL_CLOCK: Clock = WallClock()


@dataclass(slots=True)
class Window:
    """A snapshot of the ring for one analyzer run.

    ``ops[i]`` has the sequence number ``first_seq + i``; sequence numbers grow by
    one per op ever pushed and are never reused, so analyzers can remember what
    they have seen even as the ring evicts.
    """

    ops: Sequence[Op]
    first_seq: int
    cycle: int

    @property
    def next_seq(self) -> int:
        """The sequence number the next op pushed will get."""
        return self.first_seq + len(self.ops)

    def numbered(self) -> list[tuple[int, Op]]:
        """``(seq, op)`` pairs, oldest first."""
        return list(enumerate(self.ops, self.first_seq))


@dataclass(eq=False)
class Context:
    """What the engine gives a component: its identity, paths, logging and hooks back in.

    ``spawn`` runs a coroutine function in the daemon's task group, under this
    instance's own cancel scope (errors are logged and counted against this instance,
    never raised into the daemon; a reload that stops the instance cancels it);
    ``publish`` routes findings to the sinks that accept their kind. ``clock`` is
    where a component reads the time, and :meth:`http_client` is how it calls out:
    both are chosen by whoever runs it (the daemon, ``replay``, ``test``).
    """

    instance: str
    kind: str
    config_dir: Path
    logger: logging.Logger
    metrics: Metrics
    state: StateStore
    max_field_bytes: int
    observer: Observer
    spawn: Callable[..., None]
    publish: Callable[[Sequence[Finding]], Awaitable[None]]
    status: dict[str, Any] = field(default_factory=dict)
    row_formats: Mapping[str, Callable[[Any], Op]] = field(default_factory=dict)
    """The row formats plugins registered (``observer_register_row_formats``), by name."""
    clock: Clock = WALL_CLOCK
    """The time, for components: the wall clock in the daemon, virtual in replay and test."""
    transport: httpx.AsyncBaseTransport | None = None
    """What :meth:`http_client` sends through; None: the network (httpx's own transport)."""

    def __post_init__(self) -> None:
        self._clients: list[httpx.AsyncClient] = []
        """What :meth:`http_client` made, for :meth:`aclose_clients`."""

    def http_client(self, **options: Any) -> httpx.AsyncClient:
        """An ``httpx.AsyncClient`` for this component's outbound calls (``options`` as
        httpx takes them: ``headers``, ``timeout``, ...). The engine picks where its
        requests go: the network in the daemon, a recorder under ``replay`` (the call is
        reported as ``would_call`` and answered), canned replies under ``test``. The
        engine closes it after the component's ``aclose()``."""
        import httpx

        client = httpx.AsyncClient(transport=self.transport, **options)
        self._clients.append(client)
        return client

    async def aclose_clients(self) -> None:
        """Close every client :meth:`http_client` made (the engine calls this)."""
        clients, self._clients = self._clients, []
        for client in clients:
            await client.aclose()

    def resolve_path(self, path: str | Path) -> Path:
        """A path from the config, relative to the config file's folder."""
        candidate = Path(path).expanduser()
        return candidate if candidate.is_absolute() else self.config_dir / candidate

    def set_check(self, name: str, healthy: bool, since: str, **detail: Any) -> None:
        """Report a dependency's health in ``/health`` ``checks`` (and ``/stats``)."""
        self.status.setdefault("checks", {})[name] = {
            "healthy": healthy,
            "since": since,
            **detail,
        }

    def report_check(self, name: str, healthy: bool, **detail: Any) -> bool:
        """Report check ``name`` healthy or not, now, when that differs from what the check
        says (or it has none yet); True when it changed. ``since`` stays the moment of the
        change: a dependency re-reported as still down keeps when it went down."""
        current = self.status.get("checks", {}).get(name)
        if current is not None and current.get("healthy") == healthy:
            return False
        self.set_check(name, healthy, now_timestamp(), **detail)
        return True

    def error(self, message: str, *args: Any) -> None:
        """Log an error of this instance and count it in ``observer_instance_errors_total``."""
        self.logger.error(message, *args)
        self.metrics.instance_errors.inc(instance=self.instance)


class Component:
    """Shared shape of sources, sinks and analyzers."""

    kind: ClassVar[str]
    name: ClassVar[str]
    Config: ClassVar[type[ComponentConfig]] = ComponentConfig
    requires: ClassVar[tuple[str, ...]] = ()
    """Modules this component imports only when it starts (an optional extra's): a config
    that enables it without them is a config error naming ``install_hint``."""
    install_hint: ClassVar[str] = ""
    """How to install ``requires``, e.g. ``pip install 'observer-core[otlp]'``."""

    @classmethod
    def missing_requirement(cls) -> str | None:
        """The config error when a module of ``requires`` is not installed, else None."""
        for module in cls.requires:
            try:
                found = importlib.util.find_spec(module) is not None
            except ImportError:  # its parent package is missing
                found = False
            if not found:
                hint = f": {cls.install_hint}" if cls.install_hint else ""
                return f"plugin {cls.name!r} needs {module}, which is not installed{hint}"
        return None

    def __init__(self, config: Any, ctx: Context) -> None:
        self.config = config
        self.ctx = ctx

    @classmethod
    def validate_config(cls, config: Any, registry: Installed) -> None:
        """Check ``config`` against what is installed, at config load (e.g. a named format).

        Raise ``ValueError("key: problem")``; the loader reports it as a config error.
        """

    async def open(self) -> None:
        """Acquire resources (bind, open files). Raise to refuse to start."""

    async def aclose(self) -> None:
        """Release resources. Called once at shutdown, after the last write."""


class Handed(Protocol):
    """What a source hands its successor at a config reload (:meth:`Source.handover`), e.g.
    a bound listening socket. The engine closes it when no successor took it."""

    def close(self) -> None:
        """Release it: nobody took it over."""


class Source(Component):
    """Brings ops in. Override ``run`` (push), ``poll`` (per cycle), or both."""

    kind: ClassVar[str] = "source"

    def handover(self) -> Handed | None:
        """At a config reload that changes this instance, before it stops: what its
        successor (the instance of the same name, built with the new config) may take over
        with :meth:`take_over`, e.g. a duplicate of its bound listening socket, so the port
        never closes. It must stay valid after this instance's ``aclose()``. None (the
        default): nothing to hand over."""
        return None

    def take_over(self, handed: Handed) -> bool:
        """Before ``open()`` of the instance replacing another at a config reload: take
        what :meth:`handover` of the old one gave, if it fits this config (a socket bound
        to this ``host`` and ``port``); from then on it is this instance's to close. False
        (the default): not taken, and the engine closes it."""
        return False

    async def run(self, emit: Emit) -> None:
        """Serve until cancelled, handing ops to ``emit``. Not called under ``--once``."""

    async def poll(self, emit: Emit) -> None:
        """Called once per cycle, before the analyzers run: hand new ops to ``emit``."""

    @classmethod
    def is_push(cls) -> bool:
        return cls.run is not Source.run

    @classmethod
    def is_polled(cls) -> bool:
        return cls.poll is not Source.poll


class Sink(Component):
    """Receives records of the kinds its ``accepts`` lists."""

    kind: ClassVar[str] = "sink"
    Config: ClassVar[type[ComponentConfig]] = SinkConfig
    holds_ack: ClassVar[bool] = False
    """True when an op may be acknowledged only after ``write`` returned for it."""

    async def write(self, records: Sequence[Record]) -> None:
        """Accept a batch, in order: ops, or findings (the engine never mixes them in one
        batch). Raise when it cannot; the engine counts it."""
        raise NotImplementedError

    def write_now(self, records: Sequence[Record]) -> bool:
        """Write ``records`` at once, awaiting nothing, if this sink can (a ``write(2)``
        into the page cache, say): True once they are where ``write`` would have put them;
        False, having written nothing, when it cannot now (the engine then awaits
        ``write``). Raise as ``write`` does. Asked of an ack-holding sink, for a lone
        request's ops (``Emitter.commit_now``); by default, False.

        Runs on the event loop: a sink that implements it bounds how long it may take."""
        return False

    async def flush(self) -> None:
        """Make everything written so far durable (called at shutdown)."""

    async def probe(self) -> None:
        """Check that writes succeed again, changing nothing: ``/ready`` asks this every 5 s
        of an ack-holding sink whose last write failed. Default: write an empty batch."""
        await self.write([])

    async def reopen(self) -> None:
        """Reopen files (on SIGHUP, for logrotate)."""

    async def run(self) -> None:
        """Optional background work, e.g. delivering a persisted queue.

        Started once every instance is open, in ``run`` and ``--once`` alike;
        cancelled after ``flush()`` and before ``aclose()``. A sink that needs no
        background task leaves it alone.
        """

    def queue_depth(self) -> int | None:
        """Records this sink holds undelivered (``observer_sink_queue_depth``); None: no queue."""
        return None

    @classmethod
    def has_run(cls) -> bool:
        return cls.run is not Sink.run


class Analyzer(Component):
    """Reads the ring every ``every`` cycles and emits findings."""

    kind: ClassVar[str] = "analyzer"
    Config: ClassVar[type[ComponentConfig]] = AnalyzerConfig
    emits: ClassVar[tuple[str, ...]] = ()
    """The finding kinds this analyzer emits (``check`` warns when none reaches a sink)."""

    async def analyze(self, window: Window) -> Sequence[Finding]:
        """Look at the ring and return findings (may be empty)."""
        raise NotImplementedError

    def observe(self, ops: Sequence[Op]) -> None:
        """See each batch of ops as it is committed, before any cycle (optional): keep
        counts over a time window the ring cannot hold. Runs on the ingest path, so it
        must be quick and never block."""

    @classmethod
    def observes(cls) -> bool:
        return cls.observe is not Analyzer.observe
