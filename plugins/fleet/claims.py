"""What analyzers on several observers share: "done once" memory in JetStream key-value.

An analyzer whose config has a ``fleet`` table coordinates with the analyzer of the
same instance name on every other observer of the fleet, through one NATS
key-value bucket:

- :meth:`Fleet.claim` / :meth:`Fleet.finish` / :meth:`Fleet.release`: one observer
  at a time works on a key (create-if-absent); a claim whose holder vanished is
  taken over after its lease; a finished key stays done (``escalation``).
- :meth:`Fleet.mark_new`: create-only markers, one per item, in a second bucket
  whose entries expire after a day (``diagnosis``: each failure once).
- :meth:`Fleet.advance`: a mark that only moves forward, compare-and-set
  (``playbook``: each group posted by one observer).

Keys are ``{instance}.{sha256 of the identity}`` (the identity itself is kept in
the value, for people reading the bucket with ``nats kv``). Every call is bounded
in time; NATS trouble raises :class:`FleetUnavailable`, and the analyzer then
does nothing that it could not prove it alone does.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import os
import re
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import anyio
import msgspec

from observer_core import Context

from .connection import Link, check_url, created_meanwhile, require_nats

if TYPE_CHECKING:
    from nats.js.kv import KeyValue

__all__ = [
    "Claim",
    "Fleet",
    "FleetConfig",
    "FleetUnavailable",
    "LocalFleet",
    "Outcome",
    "Shared",
    "check_fleet",
    "shared_memory",
]

CALL_TIMEOUT_SECS = 5.0
MARK_TTL_SECS = 86400.0
"""How long a :meth:`Fleet.mark_new` marker lives (longer than any ring lasts)."""
MARKS_AT_ONCE = 256
NO_STREAM_RETRIES = 20
NO_STREAM_RETRY_SECS = 0.05
_T = TypeVar("_T")
_WRONG_LAST_SEQUENCE = (10071, 10164)
"""JetStream's error codes for a compare-and-set that lost."""
_BUCKET = re.compile(r"[A-Za-z0-9_-]{1,200}")
_KEY_TOKEN = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")


class FleetConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An analyzer's ``fleet`` table: share its memory with the same instance elsewhere.

    No key holds a secret (``check --resolved`` prints nested tables as they are):
    the token is read from the environment variable ``token_env`` names.
    """

    url: str = "nats://127.0.0.1:4222"
    """The NATS server(s), comma-separated."""
    bucket: str = "observer_fleet"
    """The key-value bucket (created when missing; markers go to ``{bucket}_marks``)."""
    replicas: Annotated[int, msgspec.Meta(ge=1, le=5)] = 1
    creds: str = ""
    """A NATS ``.creds`` file (relative to the config file); empty: none."""
    token_env: str = ""
    """The environment variable holding a NATS token; empty: none."""


def check_fleet(fleet: FleetConfig | None) -> None:
    """Config errors (``fleet.KEY: ...``) for an analyzer's ``fleet`` table."""
    if fleet is None:
        return
    require_nats("fleet")
    check_url(fleet.url, "fleet.url")
    if not _BUCKET.fullmatch(fleet.bucket):
        raise ValueError(f"fleet.bucket: {fleet.bucket!r} is not a bucket name")


class FleetUnavailable(Exception):
    """NATS did not answer (or refused); nothing was decided."""


class Outcome(enum.Enum):
    WON = "won"
    """This observer holds the key now: do the work, then finish or release it."""
    DONE = "done"
    """Another observer (or this one, earlier) finished it."""
    BUSY = "busy"
    """Another observer holds it now."""


@dataclass(frozen=True, slots=True)
class Claim:
    outcome: Outcome
    at: float
    """When the key was last claimed or finished (Unix seconds)."""
    revision: int = 0


class _Value(msgspec.Struct, kw_only=True, omit_defaults=True):
    state: str
    by: str
    at: float
    what: str
    mark: str = ""


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:40]


class Fleet:
    """One analyzer instance's share of the fleet's key-value memory."""

    shared = True

    def __init__(self, config: FleetConfig, ctx: Context) -> None:
        self.config = config
        self._ctx = ctx
        self._link: Link | None = None
        instance = ctx.instance
        self._prefix = instance if _KEY_TOKEN.fullmatch(instance) else _digest(instance)
        self.node = f"{socket.gethostname()}:{os.getpid()}"
        self._buckets: dict[str, KeyValue] = {}
        self._lock = anyio.Lock()

    def key(self, identity: str) -> str:
        """The key of ``identity`` (a sig_hash, an endpoint...) for this instance."""
        return f"{self._prefix}.{_digest(identity)}"

    async def open(self) -> None:
        """Read the token, try to connect for a few seconds (calls retry when NATS is down)."""
        token = None
        if self.config.token_env:
            token = os.environ.get(self.config.token_env)
            if not token:
                raise RuntimeError(
                    f"fleet.token_env: the environment variable {self.config.token_env} is not "
                    "set (it should hold the NATS token)"
                )
        self._link = Link(self._ctx, self.config.url, token=token, creds=self.config.creds or None)
        await self._link.try_connect()

    @property
    def link(self) -> Link:
        assert self._link is not None, "open() first"
        return self._link

    async def aclose(self) -> None:
        if self._link is not None:
            await self._link.close()

    async def _bucket(self, name: str, ttl: float | None = None) -> KeyValue:
        """The bucket ``name`` (created when missing); FleetUnavailable when NATS is away."""
        if not (await self.link.try_connect() and self.link.connected):
            raise FleetUnavailable(f"NATS is unreachable at {self.link.url}")
        async with self._lock:
            found = self._buckets.get(name)
            if found is None:
                found = self._buckets[name] = await self._call(self._open_bucket(name, ttl))
            return found

    async def _open_bucket(self, name: str, ttl: float | None) -> KeyValue:
        from nats.js.errors import APIError, BucketNotFoundError

        js = self.link.js
        try:
            return await js.key_value(name)
        except BucketNotFoundError:
            pass
        try:
            return await js.create_key_value(
                bucket=name, history=1, ttl=ttl, replicas=self.config.replicas
            )
        except APIError as exc:
            if not created_meanwhile(exc):
                raise
        return await js.key_value(name)

    async def _call(self, work: Awaitable[_T]) -> _T:
        """Await ``work`` under the call timeout; NATS errors become FleetUnavailable."""
        from nats.errors import Error as NatsError

        try:
            with anyio.fail_after(CALL_TIMEOUT_SECS):
                return await work
        except TimeoutError:
            raise FleetUnavailable(f"NATS did not answer within {CALL_TIMEOUT_SECS}s") from None
        except NatsError as exc:
            raise FleetUnavailable(f"NATS: {exc!r}") from None

    # -- claims: one holder at a time, done once -------------------------------------

    async def claim(
        self, identity: str, *, lease_secs: float, again_after_secs: float = 0
    ) -> Claim:
        """Claim ``identity``; WON when this observer may do the work.

        A claim older than ``lease_secs`` whose holder never finished is taken over; a
        finished one is DONE, unless ``again_after_secs`` (> 0) have passed since.
        """
        return await self._call(self._claim(identity, lease_secs, again_after_secs))

    async def _claim(self, identity: str, lease_secs: float, again_after_secs: float) -> Claim:
        from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

        kv = await self._bucket(self.config.bucket)
        key, now = self.key(identity), time.time()
        mine = msgspec.json.encode(_Value(state="claimed", by=self.node, at=now, what=identity))
        try:
            return Claim(Outcome.WON, now, await _write(kv.create, key, mine))
        except KeyWrongLastSequenceError:
            pass
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:  # released in between: someone else is quicker
            return Claim(Outcome.BUSY, now)
        held = _decode(entry.value)
        if held.state == "done" and not (again_after_secs and now - held.at >= again_after_secs):
            return Claim(Outcome.DONE, held.at)
        if held.state != "done" and now - held.at < lease_secs:
            return Claim(Outcome.BUSY, held.at)
        try:
            return Claim(Outcome.WON, now, await _write(kv.update, key, mine, last=entry.revision))
        except KeyWrongLastSequenceError:
            return Claim(Outcome.BUSY, now)

    async def finish(self, identity: str) -> None:
        """Mark ``identity`` done (for every observer, for good)."""
        kv = await self._bucket(self.config.bucket)
        done = _Value(state="done", by=self.node, at=time.time(), what=identity)
        await self._call(_write(kv.put, self.key(identity), msgspec.json.encode(done)))

    async def release(self, identity: str, claim: Claim) -> None:
        """Give a claim up (the work failed) so that it can be claimed again."""
        kv = await self._bucket(self.config.bucket)
        await self._call(_delete_if_unchanged(kv, self.key(identity), claim.revision))

    # -- markers: each item once ------------------------------------------------------

    async def mark_new(self, identities: Sequence[str]) -> list[bool]:
        """Create a marker for each identity; True where this call created it (it was new)."""
        kv = await self._bucket(f"{self.config.bucket}_marks", ttl=MARK_TTL_SECS)
        value = msgspec.json.encode(_Value(state="done", by=self.node, at=time.time(), what=""))
        created: list[bool] = []
        for start in range(0, len(identities), MARKS_AT_ONCE):
            chunk = identities[start : start + MARKS_AT_ONCE]
            results = await self._call(
                asyncio.gather(
                    *(_write(kv.create, self.key(identity), value) for identity in chunk),
                    return_exceptions=True,
                )
            )
            for result in results:
                if isinstance(result, BaseException) and not _lost(result):
                    raise FleetUnavailable(f"NATS: {result!r}")
                created.append(not isinstance(result, BaseException))
        return created

    async def unmark(self, identities: Sequence[str]) -> None:
        """Remove markers this observer made but could not act on (so they are retried)."""
        kv = await self._bucket(f"{self.config.bucket}_marks", ttl=MARK_TTL_SECS)
        await self._call(
            asyncio.gather(*(_write(kv.delete, self.key(each)) for each in identities))
        )

    # -- marks that only move forward -----------------------------------------------------

    async def advance(self, identity: str, mark: str) -> bool:
        """Set ``identity``'s mark to ``mark`` if that moves it forward; True if this call did.

        Compare-and-set: of observers advancing to the same mark at once, one wins.
        """
        return bool(await self._call(self._advance(identity, mark)))

    async def _advance(self, identity: str, mark: str) -> bool:
        from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

        kv = await self._bucket(self.config.bucket)
        key = self.key(identity)
        value = msgspec.json.encode(
            _Value(state="done", by=self.node, at=time.time(), what=identity, mark=mark)
        )
        for _ in range(3):
            try:
                entry = await kv.get(key)
            except KeyNotFoundError:
                entry = None
            if entry is not None and _decode(entry.value).mark >= mark:
                return False
            try:
                if entry is None:
                    await _write(kv.create, key, value)
                else:
                    await _write(kv.update, key, value, last=entry.revision)
            except KeyWrongLastSequenceError:
                continue  # someone else moved it: look again
            return True
        return False


async def _write(send: Callable[..., Awaitable[_T]], *args: Any, **kwargs: Any) -> _T:
    """A key-value write. A bucket that another observer created a moment ago may not take
    writes yet (JetStream: "no stream"): try again shortly, for up to a second."""
    from nats.js.errors import NoStreamResponseError

    for _ in range(NO_STREAM_RETRIES):
        try:
            return await send(*args, **kwargs)
        except NoStreamResponseError:
            await anyio.sleep(NO_STREAM_RETRY_SECS)
    return await send(*args, **kwargs)


def _decode(value: bytes | None) -> _Value:
    return msgspec.json.decode(value or b"{}", type=_Value)


def _lost(exc: BaseException) -> bool:
    """Whether ``exc`` says a compare-and-set (or create-if-absent) lost."""
    from nats.js.errors import APIError, KeyWrongLastSequenceError

    if isinstance(exc, KeyWrongLastSequenceError):
        return True
    return isinstance(exc, APIError) and exc.err_code in _WRONG_LAST_SEQUENCE


async def _delete_if_unchanged(kv: KeyValue, key: str, revision: int) -> None:
    """Delete ``key`` if its revision is still ``revision`` (else someone took it over)."""
    from nats.js.errors import APIError

    try:
        await _write(kv.delete, key, last=revision)
    except APIError as exc:
        if not _lost(exc):
            raise


class LocalFleet:
    """The stand-in on a lone observer (no ``fleet`` table): every claim is won, every
    item is new, every mark moves; nothing is shared and nothing waits."""

    shared = False

    async def open(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def claim(
        self, identity: str, *, lease_secs: float, again_after_secs: float = 0
    ) -> Claim:
        return Claim(Outcome.WON, time.time())

    async def finish(self, identity: str) -> None:
        return None

    async def release(self, identity: str, claim: Claim) -> None:
        return None

    async def mark_new(self, identities: Sequence[str]) -> list[bool]:
        return [True] * len(identities)

    async def unmark(self, identities: Sequence[str]) -> None:
        return None

    async def advance(self, identity: str, mark: str) -> bool:
        return True


Shared = Fleet | LocalFleet


def shared_memory(config: FleetConfig | None, ctx: Context) -> Shared:
    """The fleet's memory when the analyzer has a ``fleet`` table, else the local stand-in."""
    return LocalFleet() if config is None else Fleet(config, ctx)
