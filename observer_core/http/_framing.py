"""The bytes of HTTP/1.1 framing: status lines, header lines, the sizes a request head is
counted by, and the checks of a request target."""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Final

from ..http_guard import BROWSER_HEADERS
from ._messages import json_error

METHODS: Final = {m.encode(): m for m in ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}
"""The usual methods, by their bytes (HEAD is not one: its request is ``unusual``)."""
SPECIAL_HEADERS: Final = frozenset(
    (b"content-length", b"host", b"transfer-encoding", b"expect", b"connection", *BROWSER_HEADERS)
)
_COMMON_HEADERS = (
    b"accept",
    b"accept-encoding",
    b"accept-language",
    b"authorization",
    b"cache-control",
    b"connection",
    b"content-length",
    b"content-type",
    b"cookie",
    b"expect",
    b"host",
    b"origin",
    b"referer",
    b"sec-fetch-site",
    b"traceparent",
    b"transfer-encoding",
    b"user-agent",
)
HEADER_NAMES: Final = {
    spelling: name for name in _COMMON_HEADERS for spelling in (name, name.title(), name.upper())
}
"""Common header names as clients spell them (lower-case, ``Content-Length``, upper-case),
to their lower-case form: one lookup per header rather than ``bytes.lower()`` and a hash of
its new result (other spellings are lowered)."""
LENGTH_CACHE_MAX: Final = 1024  # Content-Length values (and lines) remembered, per listener
LENGTH_KEY_MAX: Final = 10  # ... of at most this many digits: at most ~100 KiB each cache
TARGET_CACHE_MAX: Final = 256  # request targets whose (path, query) split is remembered ...
TARGET_CACHE_KEY_MAX: Final = 512  # ... if no longer than this: the cache holds at most 128 KiB
# The request line is method SP target SP HTTP/x.y (10 bytes besides method and target; the
# shortest method has 3); a header line is name ":" value CRLF (whitespace around the value
# is not counted: it is not kept); the head ends with CRLF.
LINE_EXTRA: Final = 10
FIELD_EXTRA: Final = 3
MIN_METHOD: Final = 3
BAD_TARGET: Final = re.compile(rb"[\x00-\x1f#\x7f]")  # a fragment, or a control character
STATUS_LINES: Final = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}
NO_BODY_STATUSES: Final = frozenset((*range(100, 200), 204, 304))
CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
CRLF: Final = b"\r\n"
LAST_CHUNK: Final = b"0\r\n\r\n"


def header_line(name: str, value: str) -> bytes:
    line = f"{name}: {value}"
    if "\r" in line or "\n" in line:
        raise ValueError(f"CR or LF in response header {name!r}")
    return line.encode("latin-1") + CRLF


BUSY_BODY: Final = json_error(503, "too many connections").body
BUSY: Final = b"".join(
    (
        STATUS_LINES[503],
        b"Content-Type: application/json\r\nConnection: close\r\n",
        b"Content-Length: %d\r\n\r\n" % len(BUSY_BODY),
        BUSY_BODY,
    )
)


def response_head(
    prefix: bytes, headers: list[tuple[str, str]], framing: bytes, keep_alive: bool, http10: bool
) -> list[bytes]:
    """A response's head, as parts to join: ``prefix`` (status line, Server, Content-Type),
    the handler's ``headers``, ``framing`` (Content-Length or Transfer-Encoding, or none) and
    the Connection header the answer needs (none for HTTP/1.1 keep-alive)."""
    parts = [prefix]
    for name, value in headers:
        parts.append(header_line(name, value))
    parts.append(framing)
    if not keep_alive:
        parts.append(b"Connection: close\r\n\r\n")
    elif http10:
        parts.append(b"Connection: keep-alive\r\n\r\n")
    else:
        parts.append(CRLF)
    return parts


def chunk_of(data: bytes) -> bytes:
    """``data`` framed as one chunk of a chunked body (not empty: that ends the body)."""
    return b"%x\r\n%s\r\n" % (len(data), data)
