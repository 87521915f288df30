"""Shared secrets a listener asks of its clients (CONTRACT §11.1).

A ``token`` key (``listen_token`` for the gateway proxy) is one string or a
list of them, so a token can be rotated without refusing anyone: add the new
one, move the clients, remove the old. :class:`Tokens` matches what a client
sent against all of them in constant time.
"""

from __future__ import annotations

import hmac
from typing import Annotated, TypeAlias

import msgspec

__all__ = ["Token", "Tokens"]

_OneToken = Annotated[str, msgspec.Meta(min_length=1)]

Token: TypeAlias = _OneToken | Annotated[list[_OneToken], msgspec.Meta(min_length=1)]
"""A config key's type: a non-empty token, or a non-empty list of non-empty tokens.
Empty is refused (a ``${VAR:-}`` left empty must not silently turn auth off)."""


class Tokens:
    """The tokens a listener accepts: none (no auth), one, or several during a rotation."""

    __slots__ = ("_expected",)

    def __init__(self, token: str | list[str] | None) -> None:
        tokens = [token] if isinstance(token, str) else list(token or [])
        if any(not candidate for candidate in tokens):
            raise ValueError("a token cannot be empty")
        self._expected = tuple(candidate.encode() for candidate in tokens)

    def __bool__(self) -> bool:
        """Whether any token is required."""
        return bool(self._expected)

    def matches(self, given: bytes) -> bool:
        """Whether ``given`` is one of the tokens; every one is compared, each in constant
        time, so the time taken tells nothing of which (or how much of one) matched."""
        found = False
        for expected in self._expected:
            found |= hmac.compare_digest(given, expected)
        return found
