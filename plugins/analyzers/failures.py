"""What the analyzers that call out (``diagnosis``, ``escalation``) count as a failure."""

from __future__ import annotations

from observer_core import UNSET, Op

__all__ = ["is_failure"]


def is_failure(op: Op) -> bool:
    """A failed op, unless its client left (``attributes.client_left``, SECURITY §11.5):
    a user pressing Stop is not the gateway failing."""
    if op.success:
        return False
    return op.attributes is UNSET or op.attributes.get("client_left") is not True
