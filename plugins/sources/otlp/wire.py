"""What both OTLP/HTTP encodings share: the codec shape, bounded gzip, ``google.rpc.Status``.

``google.rpc.Status`` is not in ``opentelemetry-proto``; its protobuf form is two fields
(``code`` = 1, varint; ``message`` = 2, string) and is written here by hand rather than
pulling in ``googleapis-common-protos`` for it.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Final

from .mapping import Span

__all__ = [
    "GRPC_CODES",
    "Codec",
    "InvalidBody",
    "ResourceSpans",
    "TooLarge",
    "inflate",
    "status_protobuf",
]

ResourceSpans = tuple["str | None", list[Span]]
"""The spans of one resource, with its ``service.name`` (None when it has none)."""

GRPC_CODES: Final = {400: 3, 401: 16, 404: 5, 405: 12, 413: 8, 415: 3, 500: 13, 503: 14}
"""The ``google.rpc.Code`` sent in the Status of each HTTP error status (else UNKNOWN, 2)."""


class InvalidBody(ValueError):
    """A body that is not an ``ExportTraceServiceRequest`` in its encoding (400)."""


class TooLarge(ValueError):
    """A gzip body that inflates past ``max_decompressed_bytes`` (413)."""


@dataclass(frozen=True, slots=True)
class Codec:
    """One encoding of OTLP/HTTP: its media type, the request decoder, and the answers."""

    content_type: str
    decode: Callable[[bytes, Collection[str]], list[ResourceSpans]]
    """Body to spans, keeping only the named span attributes; raises :class:`InvalidBody`."""
    response: Callable[[int, str], bytes]
    """``ExportTraceServiceResponse`` with ``partial_success`` (rejected spans, message)
    set when the count is not 0."""
    status: Callable[[int, str], bytes]
    """``google.rpc.Status`` of an error (gRPC code, message)."""


def inflate(body: bytes, limit: int) -> bytes:
    """Gunzip ``body`` (one or more members), never holding more than ``limit`` + 1
    inflated bytes: raises :class:`TooLarge` past ``limit``, :class:`InvalidBody` when
    it is not gzip or is cut short."""
    out = bytearray()
    data = body
    while True:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out += inflater.decompress(data, limit + 1 - len(out))
        except zlib.error as exc:
            raise InvalidBody(f"body is not valid gzip: {exc}") from None
        if len(out) > limit:
            raise TooLarge(f"body inflates past max_decompressed_bytes ({limit})")
        if not inflater.eof:
            raise InvalidBody("gzip body is cut short")
        data = inflater.unused_data
        if not data:
            return bytes(out)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def status_protobuf(code: int, message: str) -> bytes:
    """``google.rpc.Status{code, message}`` in the protobuf wire format."""
    text = message.encode()
    head = b"\x08" + _varint(code) if code else b""
    return head + b"\x12" + _varint(len(text)) + text if text else head
