"""What the ``http`` and ``status`` sources serve operators (contract §12.2, §12.3, §12.5).

``GET /ready`` (readiness), ``GET /tap`` (records as they flow, NDJSON) and ``GET /`` (the
status page). Shared by both listeners, so it lives in the core: plugins do not import
each other's internals. ``/ready`` and the page's HTML are open; ``/tap`` needs the token.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import AsyncIterator, Callable
from functools import cache, partial
from importlib.resources import files
from typing import ClassVar, Final

import msgspec

from .components import Observer
from .http import Request, Response
from .tap import TapError, TapFilter, TapSubscriber

__all__ = ["OperatorRoutes", "page_headers"]

_encode = msgspec.json.Encoder().encode

Reject = Callable[[int, str, "list[tuple[str, str]] | None"], Response]
"""Answers an error (and counts it): status, message, extra headers."""


@cache
def _page() -> tuple[bytes, str]:
    """The status page's HTML and its Content-Security-Policy (hashes of its inline parts)."""
    html = files("observer_core").joinpath("status_page.html").read_bytes()
    text = html.decode("utf-8")

    def hashes(tag: str) -> str:
        found = re.findall(rf"<{tag}>(.*?)</{tag}>", text, re.DOTALL)
        return " ".join(
            f"'sha256-{base64.b64encode(hashlib.sha256(part.encode()).digest()).decode()}'"
            for part in found
        )

    policy = (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
        "form-action 'none'"
    )
    return html, policy


def page_headers() -> list[tuple[str, str]]:
    """The headers the status page is served with (§11.4)."""
    return [
        ("Content-Security-Policy", _page()[1]),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "no-referrer"),
        ("Cache-Control", "no-store"),
    ]


class _TapStream:
    """One ``/tap`` response body: the subscriber's lines until the client leaves; closing
    it (the server always does) unsubscribes and frees the listener's slot."""

    def __init__(self, subscriber: TapSubscriber, release: Callable[[], None]) -> None:
        self._subscriber = subscriber
        self._lines = subscriber.lines()
        self._release: Callable[[], None] | None = release

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        return await self._lines.__anext__()

    async def aclose(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            self._subscriber.close()
            release()
            await self._lines.aclose()


class OperatorRoutes:
    """``/ready``, ``/tap`` and ``/`` for one listener, with its own bound on open taps."""

    routes: ClassVar[dict[str, str]] = {"/ready": "GET", "/tap": "GET", "/": "GET"}
    open_paths: ClassVar[frozenset[str]] = frozenset({"/ready", "/"})
    """Served without the token (as ``/health``)."""

    def __init__(self, observer: Observer, *, max_taps: int, tap_queue_max: int) -> None:
        self._observer = observer
        self._max_taps = max_taps
        self._tap_queue_max = tap_queue_max
        self._subscribers: set[TapSubscriber] = set()
        """The taps this listener serves now."""

    def handle(self, request: Request, reject: Reject) -> Response:
        """Answer one of :attr:`routes` (already checked: method, token)."""
        path = request.path
        if path == "/ready":
            return self._ready()
        if path == "/tap":
            return self._tap(request.query, reject)
        html, _ = _page()
        return Response(200, html, page_headers(), content_type="text/html; charset=utf-8")

    def _ready(self) -> Response:
        waiting = self._observer.ready()
        if waiting:
            return Response(503, _encode({"ready": False, "waiting_for": waiting}))
        return Response(200, b'{"ready":true}')

    def _tap(self, query: str, reject: Reject) -> Response:
        try:
            wanted = TapFilter.parse(query, self._observer.tap_kinds)
        except TapError as exc:
            return reject(400, str(exc), None)
        if len(self._subscribers) >= self._max_taps:
            return reject(
                503,
                f"too many taps open ({self._max_taps}, the key max_taps); retry later",
                [("Retry-After", "5")],
            )
        subscriber = self._observer.tap.subscribe(wanted, self._tap_queue_max)
        self._subscribers.add(subscriber)
        return Response(
            200,
            headers=[("Cache-Control", "no-store"), ("X-Accel-Buffering", "no")],
            content_type="application/x-ndjson",
            stream=_TapStream(subscriber, partial(self._subscribers.discard, subscriber)),
        )

    def close(self) -> None:
        """End every tap of this listener (at shutdown): each gets what is queued for it,
        then the end of its response."""
        for subscriber in self._subscribers:
            subscriber.end()


TAP_QUEUE_MAX: Final = 1000
"""Default ``tap_queue_max``: records one tap may fall behind by before they are dropped."""
MAX_TAPS: Final = 16
"""Default ``max_taps``: taps open at once on one listener."""
