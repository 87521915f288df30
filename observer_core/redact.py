"""Secrets never shown (CONTRACT §11.4): one place that masks them, for every display.

Whatever shows configuration or a URL (``/health``, ``/stats``, logs, metric labels,
``observer-core check --resolved``, dead-letter files) goes through :func:`redact_url`
or :func:`redact_config`. Masked with :data:`MASK`:

- the password of a URL (``http://user:********@host``; ``nats://`` alike, and a NATS
  URL's lone user part, which is a token: ``nats://********@host``);
- every value of a ``headers`` table;
- the path and query of a webhook URL (a ``webhook`` / ``webhook_url`` key, or the ``url``
  of a table whose ``plugin`` is ``webhook``): Slack-style webhooks carry their secret there;
- the value of every secret-named key: ``token``, ``*_token``, ``password``, ``*_key``,
  ``creds``, ``secret`` (and lists of them: a rotated ``token`` list).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "MASK",
    "SECRET_KEY",
    "redact_config",
    "redact_text",
    "redact_url",
    "redact_webhook",
]

MASK = "********"
SECRET_KEY = re.compile(r"^(token|password|secret|creds|.*_key|.*_token|.*_password)$")
"""Keys whose value is a secret, whole."""
_URL_KEY = re.compile(r"^(url|urls|.*_url|.*_urls|servers)$")
_WEBHOOK_KEY = re.compile(r"^(webhook|webhook_url)$")
_TOKEN_USER_SCHEMES = frozenset({"nats", "tls", "ws", "wss"})
"""Schemes where a user part alone is a token (``nats://TOKEN@host``)."""
_USERINFO_IN_TEXT = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^\s/@:]*):([^\s/@]*)@")
"""``scheme://user:password@`` anywhere in a text (a log line, an error message)."""


def redact_url(url: str) -> str:
    """``url`` with its password masked; a comma-separated list (NATS servers) part by part.
    Anything that does not parse as a URL comes back unchanged."""
    if "@" not in url:
        return url
    if "," in url:
        return ",".join(redact_url(part) for part in url.split(","))
    try:
        parts = urlsplit(url)
    except ValueError:
        return _USERINFO_IN_TEXT.sub(rf"\1\2:{MASK}@", url)
    netloc = parts.netloc
    userinfo, at, host = netloc.rpartition("@")
    if not at:
        return url
    user, colon, _password = userinfo.partition(":")
    if colon:
        userinfo = f"{user}:{MASK}"
    elif parts.scheme.lower() in _TOKEN_USER_SCHEMES:
        userinfo = MASK
    else:
        return url
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{host}"))


def redact_webhook(url: str) -> str:
    """A webhook URL with its path and query masked (and its password, if any)."""
    try:
        parts = urlsplit(redact_url(url))
    except ValueError:
        return MASK
    if not parts.path.strip("/") and not parts.query:
        return urlunsplit(parts._replace(fragment=""))
    return urlunsplit(parts._replace(path="/" + MASK, query="", fragment=""))


def redact_text(text: str) -> str:
    """Every ``scheme://user:password@`` in free text with the password masked."""
    if "://" not in text or "@" not in text:
        return text
    return _USERINFO_IN_TEXT.sub(rf"\1\2:{MASK}@", text)


def redact_config(value: Any, key: str = "", *, webhook: bool = False) -> Any:
    """A copy of a configuration (or status) value with every secret masked.

    ``key`` is the name ``value`` sits under; ``webhook`` says the enclosing table is a
    webhook plugin's (its ``url`` then loses path and query). Dicts and lists are walked.
    """
    if isinstance(value, dict):
        if key == "headers":
            return {name: MASK for name in value}
        inner = webhook or value.get("plugin") == "webhook"
        return {name: redact_config(item, str(name), webhook=inner) for name, item in value.items()}
    if SECRET_KEY.match(key) and value is not None:
        return [MASK for _ in value] if isinstance(value, list) else MASK
    if isinstance(value, list):
        return [redact_config(item, key, webhook=webhook) for item in value]
    if isinstance(value, str):
        if _WEBHOOK_KEY.match(key) or (webhook and key == "url"):
            return redact_webhook(value)
        if _URL_KEY.match(key):
            return redact_url(value)
        return redact_text(value)
    return value
