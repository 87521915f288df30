"""The check of a config's outbound ``http(s)`` URL, written once for every plugin."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from .redact import redact_url

__all__ = ["check_http_url"]


def check_http_url(
    url: str, key: str = "url", shown: Callable[[str], str] = redact_url
) -> httpx.URL:
    """``url`` parsed, when it is an ``http://`` or ``https://`` URL with a host.

    Else ``ValueError`` naming ``key`` and showing the URL as ``shown`` writes it (the
    password masked by default; pass :func:`observer_core.redact.redact_webhook` for a URL
    whose path is a secret)."""
    if not url[:8].lower().startswith(("http://", "https://")):
        raise ValueError(f"{key}: expected an http:// or https:// URL, got {shown(url)!r}")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ValueError(
            f"{key}: not a valid URL ({type(exc).__name__}), got {shown(url)!r}"
        ) from None
    if not parsed.host:
        raise ValueError(f"{key}: the URL has no host, got {shown(url)!r}")
    return parsed
