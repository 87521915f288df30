"""The Python API for agents: call the gateway, and every call is recorded as an op.

Use :class:`ObservedGateway` (sync) or :class:`AsyncObservedGateway` (async) in
place of your own httpx calls::

    from observer_plugins.sources.gateway import ObservedGateway

    with ObservedGateway() as gateway:  # GATEWAY_URL, OBSERVER_URL, OBSERVER_TOKEN
        data = gateway.call("/search", {"q": "welders"}, "search welders")

``call`` takes an origin-form path (``/search``, ``/v1/x?y=1``): anything
else (a scheme, ``//``, a leading ``@``, a ``#``, whitespace) raises ValueError
and nothing is sent, so a path cannot address another host. It returns the
gateway's JSON unchanged (also for a non-2xx reply); it raises what httpx
raises: the transport error (``httpx.ConnectError``...), or
``json.JSONDecodeError`` when the body is not JSON, each after recording the
failed op.

Ops go to the daemon's ``POST /events`` (NDJSON, in batches) from a background
thread with its own ``httpx.Client`` and short timeouts, through a bounded
buffer: when the daemon is down or slow, the oldest ops are dropped and counted
(``dropped``); the agent's call is never slowed and never sees an error from
the observer. ``close()`` (or leaving the ``with`` block) sends what is left,
waiting at most ``flush_timeout`` seconds.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Generic, Self, TypeVar

import anyio.to_thread
import httpx
import msgspec

from observer_core import Op

from .outcome import Outcome, make_op
from .usage import Usage, model_name, reply_usage

__all__ = ["AsyncObservedGateway", "ObservedGateway", "OpRecorder"]

log = logging.getLogger("observer_plugins.gateway.client")

DEFAULT_GATEWAY_URL = "http://localhost:3700"
DEFAULT_OBSERVER_URL = "http://127.0.0.1:3800"
BATCH_MAX = 500
_RETRY_FIRST = 0.5
_RETRY_MAX = 10.0
_OBSERVER_TIMEOUT = httpx.Timeout(5.0, connect=1.0, pool=1.0)
_encode = msgspec.json.Encoder().encode
_NOT_IN_PATH = re.compile(r"[\x00-\x20\x7f#\\]")
"""What an origin-form path given to ``call`` may not hold: whitespace and control
characters, ``#`` (a fragment), ``\\`` (some parsers read it as ``/``). It must start
with one ``/``: ``@evil.example/x`` joined to the base URL would make the base a user
name and ``evil.example`` the host."""


class OpRecorder:
    """Sends ops to the daemon from a background thread, through a bounded buffer.

    ``record`` never blocks and never raises. Counters: ``sent`` (acknowledged by
    the daemon) and ``dropped`` (pushed out of a full buffer, refused by the daemon
    with a 4xx, or still unsent when ``close`` gave up).
    """

    def __init__(
        self,
        observer_url: str | None = None,
        token: str | None = None,
        *,
        buffer_size: int = 10000,
        flush_timeout: float = 5.0,
    ) -> None:
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be 1 or more, got {buffer_size}")
        base = observer_url or os.environ.get("OBSERVER_URL") or DEFAULT_OBSERVER_URL
        token = token if token is not None else os.environ.get("OBSERVER_TOKEN")
        self.events_url = base.rstrip("/") + "/events"
        self.flush_timeout = flush_timeout
        self.sent = 0
        self.dropped = 0
        self._buffer: deque[Op] = deque()
        self._limit = buffer_size
        self._in_flight = 0
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._closing = False
        self._stop = threading.Event()
        self._failing = False  # the last attempt to send failed
        self._abandoned = False  # close() is done: a late answer changes nothing
        self._warned = False
        headers = {"Content-Type": "application/x-ndjson"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(headers=headers, timeout=_OBSERVER_TIMEOUT)
        self._thread = threading.Thread(target=self._run, name="observer-ops", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    @property
    def pending(self) -> int:
        """Ops buffered or being sent."""
        with self._lock:
            return len(self._buffer) + self._in_flight

    def record(self, op: Op) -> None:
        """Queue ``op`` for the daemon (drops the oldest op when the buffer is full)."""
        with self._lock:
            if self._closing:
                self.dropped += 1
                return
            self._buffer.append(op)
            self._trim()
            self._wake.notify()

    def _trim(self) -> None:
        overflow = len(self._buffer) - self._limit
        for _ in range(max(overflow, 0)):
            self._buffer.popleft()
        self.dropped += max(overflow, 0)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far was sent (or dropped); False on timeout."""
        deadline = time.monotonic() + (self.flush_timeout if timeout is None else timeout)
        with self._lock:
            while self._buffer or self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return False
                if self._failing and not self._in_flight:
                    return False  # the daemon is down: do not wait for a retry
                self._wake.wait(min(left, 0.05))
        return True

    def close(self) -> None:
        """Send what is left (for at most ``flush_timeout`` seconds), then stop."""
        atexit.unregister(self.close)
        self.flush()
        with self._lock:
            self._closing = True
            self._wake.notify_all()
        self._stop.set()
        self._thread.join(timeout=self.flush_timeout)
        with self._lock:  # what is left, and a batch still stuck on a hung daemon, is lost
            self.dropped += len(self._buffer) + self._in_flight
            self._buffer.clear()
            self._in_flight = 0
            self._abandoned = True
        self._http.close()

    # -- the background thread -------------------------------------------------------

    def _run(self) -> None:
        delay = _RETRY_FIRST
        while (batch := self._take()) is not None:
            if self._send(batch):
                delay = _RETRY_FIRST
            else:  # the daemon is down or busy: back off (only close() cuts this short)
                self._stop.wait(delay)
                delay = min(delay * 2, _RETRY_MAX)

    def _take(self) -> list[Op] | None:
        with self._lock:
            while not self._buffer:
                if self._closing:
                    return None
                self._wake.wait()
            count = min(BATCH_MAX, len(self._buffer))
            batch = [self._buffer.popleft() for _ in range(count)]
            self._in_flight = count
            return batch

    def _send(self, batch: list[Op]) -> bool:
        """POST one batch; True when done with it (sent or refused), False to retry later."""
        status, detail = self._post(batch)
        with self._lock:
            if self._abandoned:  # close() gave up on this batch and counted it
                return True
            self._in_flight = 0
            if status == 200:
                self.sent += len(batch)
            elif status is not None and 400 <= status < 500 and status not in (408, 429):
                self.dropped += len(batch)  # refused for good: retrying cannot help
            elif self._closing:  # no more retries: give up on everything left
                self.dropped += len(batch) + len(self._buffer)
                self._buffer.clear()
            else:
                self._buffer.extendleft(reversed(batch))
                self._trim()
            retry = status is None or status >= 500 or status in (408, 429)
            self._failing = retry
            self._wake.notify_all()
        self._report(status, detail, retry)
        return not retry

    def _post(self, batch: list[Op]) -> tuple[int | None, str]:
        body = b"\n".join(_encode(op) for op in batch)
        try:
            reply = self._http.post(self.events_url, content=body)
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"
        return reply.status_code, reply.text[:200]

    def _report(self, status: int | None, detail: str, retry: bool) -> None:
        if status == 200:
            if self._warned:
                log.info("observer at %s takes ops again", self.events_url)
            self._warned = False
        elif not retry:
            log.warning("observer at %s refused %s ops: %s", self.events_url, status, detail)
        elif not self._warned:
            self._warned = True
            log.warning("observer at %s unreachable (%s); buffering ops", self.events_url, detail)


_C = TypeVar("_C", httpx.Client, httpx.AsyncClient)
_NO_USAGE = Usage()


@dataclass(frozen=True, slots=True)
class _Call:
    """One call being made: what its op needs."""

    endpoint: str
    description: str
    model: str | None
    """The model the request body asks for (``gen_ai.request.model``)."""
    started: float = field(default_factory=time.perf_counter)


def _model_of(body: Any) -> str | None:
    """The ``model`` a request body (a dict, before it is sent as JSON) names."""
    return model_name(body.get("model")) if isinstance(body, dict) else None


def _origin_of(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port


class _Observed(Generic[_C]):
    """What the sync and async forms share: settings, the recorder, turning a reply into an op."""

    def __init__(
        self,
        url: str | None = None,
        *,
        timeout: float = 300.0,
        client: _C | None = None,
        recorder: OpRecorder | None = None,
        observer_url: str | None = None,
        observer_token: str | None = None,
        buffer_size: int = 10000,
    ) -> None:
        self.url = (url or os.environ.get("GATEWAY_URL") or DEFAULT_GATEWAY_URL).rstrip("/")
        self._origin = _origin_of(httpx.URL(self.url))
        self._own_client = client is None
        self._http: _C = client or self._new_client(timeout)
        self._own_recorder = recorder is None
        self.recorder = recorder or OpRecorder(
            observer_url, observer_token, buffer_size=buffer_size
        )

    def _new_client(self, timeout: float) -> _C:
        raise NotImplementedError

    @property
    def dropped(self) -> int:
        """Ops that could not be delivered to the observer (buffer full, refused, unsent)."""
        return self.recorder.dropped

    def _target(self, endpoint: str) -> str:
        """``{url}{endpoint}``, once ``endpoint`` is known to be an origin-form path on it."""
        if (
            not isinstance(endpoint, str)
            or not endpoint.startswith("/")
            or endpoint.startswith("//")
            or _NOT_IN_PATH.search(endpoint)
        ):
            raise ValueError(
                "endpoint: expected an origin-form path such as '/search' (one leading '/', "
                f"no scheme or host, no '#', '\\' or whitespace), got {endpoint!r}"
            )
        target = f"{self.url}{endpoint}"
        if _origin_of(httpx.URL(target)) != self._origin:  # defence in depth
            raise ValueError(f"endpoint: {endpoint!r} would leave {self.url}")
        return target

    def _record(self, call: _Call, outcome: Outcome, usage: Usage = _NO_USAGE) -> None:
        duration = (time.perf_counter() - call.started) * 1000
        attributes = usage.attributes(call.model)
        op = make_op(call.endpoint, call.description, duration, outcome, attributes)
        self.recorder.record(op)

    def _conclude(self, call: _Call, reply: httpx.Response) -> Any:
        try:
            data = json.loads(reply.content)  # what httpx's .json() does, and raises
        except ValueError:
            status = reply.status_code
            failed = (
                Outcome.failed(f"HTTP {status} reply is not JSON")
                if 200 <= status < 300
                else Outcome.of_text(status, "")
            )
            self._record(call, failed)
            raise
        self._record(call, Outcome.of_json(reply.status_code, data), reply_usage(data))
        return data

    def _transport_failed(self, call: _Call, exc: httpx.HTTPError) -> None:
        self._record(call, Outcome.failed(str(exc) or type(exc).__name__))


class ObservedGateway(_Observed[httpx.Client]):
    """Calls the gateway with ``httpx.Client`` and records each call (see the module doc).

    Keywords: ``timeout`` (300 s), ``client`` (your own ``httpx.Client``),
    ``recorder`` (an :class:`OpRecorder` to share), ``observer_url``,
    ``observer_token``, ``buffer_size`` (10000).
    """

    def _new_client(self, timeout: float) -> httpx.Client:
        return httpx.Client(timeout=timeout, follow_redirects=False)

    def call(self, endpoint: str, body: Any, description: str) -> Any:
        """POST ``body`` as JSON to ``{url}{endpoint}``; return the reply's JSON unchanged.
        ValueError, with nothing sent, if ``endpoint`` is not an origin-form path."""
        target = self._target(endpoint)
        call = _Call(endpoint, description, _model_of(body))
        try:
            reply = self._http.post(target, json=body)
        except httpx.HTTPError as exc:
            self._transport_failed(call, exc)
            raise
        return self._conclude(call, reply)

    def close(self) -> None:
        """Close the HTTP client (when it is ours) and flush the ops still buffered."""
        if self._own_client:
            self._http.close()
        if self._own_recorder:
            self.recorder.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncObservedGateway(_Observed[httpx.AsyncClient]):
    """Calls the gateway with ``httpx.AsyncClient`` and records each call.

    Takes the keywords of :class:`ObservedGateway`. Recording happens on the
    recorder's thread, so no task outlives a call; use ``async with
    AsyncObservedGateway() as gateway:`` (or ``await aclose()``) so the last ops
    are flushed.
    """

    def _new_client(self, timeout: float) -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=timeout, follow_redirects=False)

    async def call(self, endpoint: str, body: Any, description: str) -> Any:
        """POST ``body`` as JSON to ``{url}{endpoint}``; return the reply's JSON unchanged.
        ValueError, with nothing sent, if ``endpoint`` is not an origin-form path."""
        target = self._target(endpoint)
        call = _Call(endpoint, description, _model_of(body))
        try:
            reply = await self._http.post(target, json=body)
        except httpx.HTTPError as exc:
            self._transport_failed(call, exc)
            raise
        return self._conclude(call, reply)

    async def aclose(self) -> None:
        """Close the HTTP client (when it is ours) and flush the ops still buffered."""
        if self._own_client:
            await self._http.aclose()
        if self._own_recorder:
            await anyio.to_thread.run_sync(self.recorder.close)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
