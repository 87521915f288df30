"""The limits one listener holds a client to (contract §11.2), and their config types."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

UrlBytes = Annotated[int, msgspec.Meta(ge=64, le=1 << 20)]
HeaderBytes = Annotated[int, msgspec.Meta(ge=256, le=1 << 24)]
HeaderCount = Annotated[int, msgspec.Meta(ge=1, le=10000)]
Size = Annotated[int, msgspec.Meta(ge=1, le=1 << 40)]
Seconds = Annotated[float, msgspec.Meta(gt=0, le=86400)]
Connections = Annotated[int, msgspec.Meta(ge=1, le=100_000)]


class HttpLimits(msgspec.Struct, kw_only=True, frozen=True):
    """What one listener holds and waits for (contract §11.2). Each field is also the
    listener's config key of that name; past a limit the client gets an error naming it."""

    max_url_bytes: UrlBytes = 8192
    """Request line (method, target, version): 414 past it."""
    max_header_bytes: HeaderBytes = 32768
    """Request head (request line and header lines), chunked trailers included: 431."""
    max_headers: HeaderCount = 100
    """Header fields in one request (trailers included): 431."""
    max_body_bytes: Size = 1 << 20
    """Request body: 413."""
    header_timeout_secs: Seconds = 10.0
    """Time to receive a whole head (a new connection's first one too): 408."""
    body_timeout_secs: Seconds = 10.0
    """Time to receive a whole body, from the end of its head: 408."""
    idle_timeout_secs: Seconds = 60.0
    """How long a keep-alive connection may idle between requests: then it is closed."""
    send_timeout_secs: Seconds | None = None
    """How long a response write may stall, the client not reading it: then the connection
    is closed (nginx's ``send_timeout``). None: ``idle_timeout_secs``."""
    max_connections: Connections = 1024
    """Open connections: 503 past it."""
    max_inflight_bytes: Size = 64 << 20
    """Request body bytes held by the listener, all connections together: reading pauses."""

    @classmethod
    def of(cls, config: object, **overrides: Any) -> HttpLimits:
        """The limits set by ``config``'s attributes of the same names (others: defaults),
        then ``overrides``; checked against the bounds (ValueError naming the field)."""
        values = {
            name: getattr(config, name) for name in cls.__struct_fields__ if hasattr(config, name)
        }
        values.update(overrides)
        try:
            return msgspec.convert(values, cls)
        except msgspec.ValidationError as exc:
            raise ValueError(f"HTTP limits: {exc}") from None
