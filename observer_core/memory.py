"""Keys an analyzer remembers across cycles, bounded in bytes (CONTRACT §11.3).

A ``sig_hash``, a playbook group or a failure signature comes from a client and may be up
to ``max_field_bytes`` long; kept as is, 100,000 of them could hold gigabytes.
:func:`memory_key` keeps a short key as it is and a long one as a fixed-size digest.
"""

from __future__ import annotations

import hashlib

__all__ = ["MAX_KEY_BYTES", "memory_key"]

MAX_KEY_BYTES = 64
"""Keys up to this many bytes (UTF-8) are kept as they are; longer ones as a digest."""
_DIGEST_PREFIX = "sha256:"
_DIGEST_HEX = MAX_KEY_BYTES - len(_DIGEST_PREFIX) - 1
"""Hex digits of the digest kept (56: 224 bits), so a digest key is 63 bytes."""


def memory_key(text: str) -> str:
    """``text`` itself when at most 64 bytes of UTF-8, else ``"sha256:"`` and the first 56
    hex digits of the SHA-256 of its UTF-8 (63 ASCII characters): every key returned is at
    most 64 bytes. Distinct long keys stay distinct but for a 224-bit collision."""
    if len(text) * 4 <= MAX_KEY_BYTES:
        return text
    data = text.encode(errors="surrogatepass")
    if len(data) <= MAX_KEY_BYTES:
        return text
    return _DIGEST_PREFIX + hashlib.sha256(data).hexdigest()[:_DIGEST_HEX]
