"""What a listener refuses from browsers (contract §11.4): cross-site writes and DNS rebinding.

A web page a local browser opens can send requests to 127.0.0.1. `BrowserGuard` looks at
a request's headers, before its body is read, and says what to answer instead:

- an unsafe method (anything but GET, HEAD, OPTIONS) with ``Sec-Fetch-Site: cross-site``,
  or with an ``Origin`` that is not the listener's own, is ``403``;
- a listener bound to a loopback address answers ``400`` to a ``Host`` that is not a
  loopback name or address (``localhost``, ``127.x.y.z``, ``[::1]``, any port) nor a name
  in ``allowed_hosts``: a page whose name was rebound to 127.0.0.1 sends its own name;
- a listener bound elsewhere checks ``Host`` only when ``allowed_hosts`` is set.

Clients that are not browsers send no ``Origin`` and a plain ``Host``: they are unaffected,
and a request without ``Host`` (HTTP/1.0) is not the guard's business. The usual request
(``Host: 127.0.0.1:3800``, no ``Origin``) need not be checked at all: a server that notes
the ``Host`` values and whether any of `BROWSER_HEADERS` came (as it parses the head) and
finds one ``Host`` at most, in `BrowserGuard.quick_hosts`, knows `BrowserGuard.check` would
pass it (measured: the call and its pass over the headers were 84 of the ~1,100 bytecodes of
a ``POST /event``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from typing import Annotated, Final, TypeAlias

import msgspec

__all__ = [
    "BROWSER_HEADERS",
    "AllowedHosts",
    "BrowserGuard",
    "is_loopback_host",
    "normalize_allowed_hosts",
]

MAX_ALLOWED_HOSTS: Final = 64
"""Entries an ``allowed_hosts`` key may have."""

AllowedHosts: TypeAlias = Annotated[
    list[Annotated[str, msgspec.Meta(max_length=255)]],
    msgspec.Meta(max_length=MAX_ALLOWED_HOSTS),
]
"""The type of a listener's ``allowed_hosts`` config key: at most 64 names of at most 255
characters (check them with `normalize_allowed_hosts`)."""

SAFE_METHODS: Final = frozenset(("GET", "HEAD", "OPTIONS"))
"""Methods a browser may send cross-site without the guard objecting (no side effects)."""

BROWSER_HEADERS: Final = frozenset((b"origin", b"sec-fetch-site"))
"""Header names (lower-case) besides ``Host`` that `BrowserGuard.check` looks at."""

_LOOPBACK_NAMES: Final = ("localhost", "127.0.0.1", "[::1]")
"""Loopback spellings whose ``Host`` values are precomputed (others are parsed)."""

_ACCEPTED_CACHE_MAX: Final = 64
"""Other ``Host`` values found acceptable, remembered (never more: client input)."""

_HOST_NAME: Final = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")
"""An ``allowed_hosts`` name (or IPv4 address), lower-cased, without a trailing dot."""

_SHOWN_MAX: Final = 100
"""How much of a client's header value an error message quotes."""


def _shown(value: bytes) -> str:
    """A header value for an error message: cut short, control characters escaped."""
    text = value[:_SHOWN_MAX].decode("latin-1")
    escaped = text.encode("unicode_escape").decode("ascii").replace("'", "\\'")
    return f"'{escaped}'" + ("..." if len(value) > _SHOWN_MAX else "")


def _split_host(host: str) -> str | None:
    """The name or address of a ``Host`` value (``uri-host [":" port]``) as the guard compares
    it: lower-case, without its port or a trailing dot, an IPv6 address in brackets and in
    its usual (compressed) spelling. None if malformed."""
    if host.startswith("["):
        end = host.find("]")
        rest = host[end + 1 :]
        if end < 0 or (rest and not rest.startswith(":")):
            return None
        try:
            name = f"[{ipaddress.IPv6Address(host[1:end])}]"
        except ValueError:
            return None
        port = rest[1:]
    else:
        name, colon, port = host.partition(":")
        if colon and ":" in port:
            return None  # an IPv6 address without brackets, or garbage
        name = name.lower().removesuffix(".")
    if port and not (len(port) <= 5 and port.isascii() and port.isdigit() and int(port) <= 65535):
        return None
    return name or None


def _is_loopback_name(name: str) -> bool:
    """Whether ``name`` (as `_split_host` gives it: lower-case, IPv6 in brackets) is
    ``localhost``, an IPv4 address in 127.0.0.0/8 written the usual way, or the IPv6
    loopback address (also IPv4-mapped)."""
    if name == "localhost":
        return True
    try:
        if name.startswith("[") and name.endswith("]"):
            address6 = ipaddress.IPv6Address(name[1:-1])
            mapped = address6.ipv4_mapped
            return address6.is_loopback or (mapped is not None and mapped.is_loopback)
        return ipaddress.IPv4Address(name).is_loopback
    except ValueError:
        return False


def is_loopback_host(host: str) -> bool:
    """Whether a bind address or host name is loopback: ``localhost``, ``127.x.y.z``, or
    ``::1`` with or without brackets (``0.0.0.0``, ``::`` and other names are not)."""
    return _is_loopback_name(_bind_name(host))


def _bind_name(bind_host: str) -> str:
    """A listener's bind address as `_split_host` spells names (IPv6 in brackets)."""
    bare = bind_host.removeprefix("[").removesuffix("]")
    return (_split_host(f"[{bare}]" if ":" in bare else bare) or "") if bare else ""


def normalize_allowed_hosts(names: Iterable[str]) -> tuple[str, ...]:
    """The ``allowed_hosts`` entries as the guard compares them (see `_split_host`), without
    duplicates. Raises ValueError naming a bad entry: not a host name (letters, digits,
    ``-``, ``_``, dots; an IDN in its ``xn--`` form) nor an IP address, or with a scheme,
    port or path."""
    result: list[str] = []
    for entry in names:
        if not isinstance(entry, str):
            raise ValueError(f"allowed_hosts: {entry!r} is not a string")
        name = entry.lower()
        try:
            name = f"[{ipaddress.IPv6Address(name.removeprefix('[').removesuffix(']'))}]"
        except ValueError:
            name = name.removesuffix(".")
            if not _HOST_NAME.fullmatch(name):
                raise ValueError(
                    f"allowed_hosts: {entry!r} is not a host name or address (give the name "
                    'alone, e.g. "observer.example.com": no scheme, port or path)'
                ) from None
        result.append(name)
    return tuple(dict.fromkeys(result))


class BrowserGuard:
    """The §11.4 checks of one listener. ``bind_host`` and ``port`` are where it listens (the
    bound port, once known, if 0 was asked for); ``allowed_hosts`` are further names (or
    addresses) clients may call it by, as in the listener's config (ValueError if bad)."""

    __slots__ = (
        "_accepted",
        "_allowed",
        "_check_host",
        "_fast_hosts",
        "_host_rule",
        "_origins",
        "loopback",
        "quick_hosts",
    )

    def __init__(self, bind_host: str, port: int, allowed_hosts: Sequence[str] = ()) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} is out of range 0-65535")
        allowed = normalize_allowed_hosts(allowed_hosts)
        bound = _bind_name(bind_host)
        self.loopback = _is_loopback_name(bound)
        """Whether the listener is bound to a loopback address (then Host is always checked)."""
        self._check_host = self.loopback or bool(allowed)
        self._allowed = frozenset(allowed)
        names = [*(_LOOPBACK_NAMES if self.loopback else ()), *allowed]
        if bound and not self.loopback and bound not in ("0.0.0.0", "[::]"):
            names.append(bound)  # a listener's own address is one of its origins
        self._fast_hosts = frozenset(
            spelled.encode() for name in names for spelled in (name, f"{name}:{port}")
        )
        """``Host`` values accepted without parsing."""
        self.quick_hosts: frozenset[bytes | None] | None = (
            self._fast_hosts | {None} if self._check_host else None
        )
        """Values of a request's one ``Host`` header (None: it has none) with which ``check``
        passes it if it has no `BROWSER_HEADERS`; None when every value does (the listener
        checks no ``Host``)."""
        self._origins = frozenset(
            f"{scheme}://{host}".encode()
            for name in names
            for scheme, default in (("http", 80), ("https", 443))
            for host in ((name, f"{name}:{port}") if port == default else (f"{name}:{port}",))
        )
        """The listener's own origins, as browsers write them."""
        self._accepted: set[bytes] = set()
        self._host_rule = (
            "a loopback name or address, nor in allowed_hosts"
            if self.loopback
            else "in allowed_hosts"
        ) + " (a guard against DNS rebinding: add the name to the listener's allowed_hosts)"

    def check(self, method: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, str] | None:
        """(status, message) to answer instead of serving the request, or None to serve it.
        ``headers`` as the server hands them on: names lower-cased, values as sent."""
        host: bytes | None = None
        origin: bytes | None = None
        cross_site = False
        hosts = 0
        for name, value in headers:
            if name == b"host":
                host = value
                hosts += 1
            elif name == b"origin":
                origin = value
            elif name == b"sec-fetch-site":
                cross_site = value.strip().lower() == b"cross-site"
        if hosts > 1:
            return 400, "bad request: more than one Host header"
        if host and self._check_host and host not in self._fast_hosts and not self._host_ok(host):
            return 400, f"Host {_shown(host)} is not {self._host_rule}"
        if method in SAFE_METHODS:
            return None
        if cross_site:
            return 403, f"cross-site {method} refused (Sec-Fetch-Site: cross-site)"
        if origin is not None and not self._own_origin(origin, host):
            return (
                403,
                f"cross-origin {method} refused: Origin {_shown(origin)} is not this listener's",
            )
        return None

    def _host_ok(self, host: bytes) -> bool:
        """Whether a ``Host`` value not among the precomputed ones is acceptable."""
        if host in self._accepted:
            return True
        name = _split_host(host.decode("latin-1").strip())
        ok = name is not None and (
            name in self._allowed or (self.loopback and _is_loopback_name(name))
        )
        if ok and len(self._accepted) < _ACCEPTED_CACHE_MAX:
            self._accepted.add(host)
        return ok

    def _own_origin(self, origin: bytes, host: bytes | None) -> bool:
        """Whether ``Origin`` is the listener's: one of its names and port, or the scheme and
        authority the browser addressed (the request's ``Host``, which passed its check)."""
        origin = origin.strip().lower()
        if origin in self._origins:
            return True
        if not host:
            return False
        scheme, sep, authority = origin.partition(b"://")
        return bool(sep) and scheme in (b"http", b"https") and authority == host.strip().lower()
