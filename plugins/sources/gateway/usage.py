"""A model call's model and token usage, read from its request and reply (contract §13.2).

Used by the proxy and the Python API (the analyzers use :mod:`observer_core.genai`,
which holds the reply parsing and re-exported here):

- :func:`reply_usage` (from :mod:`observer_core.genai`): a parsed JSON reply's
  ``model`` and ``usage``
  (OpenAI's ``prompt_tokens`` / ``completion_tokens``, or ``input_tokens`` /
  ``output_tokens`` as OpenAI's Responses API writes them; Ollama's
  ``prompt_eval_count`` / ``eval_count``);
- :class:`SseUsage`: the same, read from a server-sent-event stream as it
  passes: each event up to 64 KiB is parsed (a larger one is skipped, and
  memory stays bounded), the last ``model`` and ``usage`` seen win, so the final
  chunk's usage (``stream_options={"include_usage": true}``) is found however
  long the stream;
- :func:`request_model`: the ``model`` a JSON request body asks for;
  :class:`RequestModel` reads it from a body that streams on to the gateway.

What is found becomes an op's ``attributes`` (:meth:`Usage.attributes`), under the
OpenTelemetry GenAI names that the engine counts (``observer_core.genai``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec

from observer_core.genai import Usage, count_own_call, decode_usage, model_name, reply_usage

__all__ = [
    "MAX_EVENT_BYTES",
    "MAX_REQUEST_BYTES",
    "REQUEST_BYTES_HELD",
    "HeldBytes",
    "RequestModel",
    "SseUsage",
    "Usage",
    "count_own_call",
    "model_name",
    "reply_usage",
    "request_model",
]
"""``Usage``, ``count_own_call``, ``model_name`` and ``reply_usage`` moved to
:mod:`observer_core.genai`; they are re-exported here for code that imported them here."""

MAX_EVENT_BYTES = 64 << 10
"""A server-sent event larger than this is skipped, not parsed."""
MAX_REQUEST_BYTES = 1 << 20
"""A request body larger than this is not read for its model."""
REQUEST_BYTES_HELD = 32 << 20
"""What the proxy's calls in flight keep of their request bodies, all together, to read
their model (a call past it is not read)."""


class _Request(msgspec.Struct):
    model: Any = None


_decode_request = msgspec.json.Decoder(_Request).decode


def request_model(body: Any, content_type: str) -> str | None:
    """The ``model`` a JSON request body names (None for another body, or one over 1 MiB)."""
    if "json" not in content_type.lower() or not isinstance(body, bytes):
        return None
    if not body or len(body) > MAX_REQUEST_BYTES:
        return None
    try:
        return model_name(_decode_request(body).model)
    except msgspec.MsgspecError:
        return None


class HeldBytes:
    """A number of bytes shared by the calls in flight: what they may keep, together."""

    def __init__(self, limit: int = REQUEST_BYTES_HELD) -> None:
        self.limit = limit
        self.held = 0

    def take(self, count: int) -> bool:
        """Hold ``count`` more bytes, if that stays within the limit."""
        if self.held + count > self.limit:
            return False
        self.held += count
        return True

    def give(self, count: int) -> None:
        """Let go of ``count`` bytes taken before."""
        self.held -= count


class RequestModel:
    """A request body streaming on to the gateway, chunk by chunk and unchanged, kept on
    the way (a JSON body up to 1 MiB, within ``held``) so that :meth:`model` can read the
    ``model`` it names once the call ends."""

    def __init__(self, chunks: AsyncIterator[bytes], content_type: str, held: HeldBytes) -> None:
        self._chunks = chunks
        self._held = held
        self._kept = bytearray()
        self._keeping = "json" in content_type.lower()
        self._ended = False
        self._model: str | None = None

    def __aiter__(self) -> RequestModel:
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk = await self._chunks.__anext__()
        except StopAsyncIteration:
            self._ended = True
            raise
        except BaseException:  # the body broke off (or the call was cancelled): unreadable
            self._stop_keeping()
            raise
        if self._keeping:
            if len(self._kept) + len(chunk) <= MAX_REQUEST_BYTES and self._held.take(len(chunk)):
                self._kept += chunk
            else:
                self._stop_keeping()
        return chunk

    def model(self) -> str | None:
        """The model the whole body named (None: not JSON, too large, not all sent, or it
        names none); what was kept is let go."""
        if self._keeping and self._ended:
            self._model = request_model(bytes(self._kept), "json")
        self._stop_keeping()
        return self._model

    def _stop_keeping(self) -> None:
        self._keeping = False
        self._held.give(len(self._kept))
        self._kept = bytearray()


class SseUsage:
    """Reads a ``text/event-stream`` body as it passes, chunk by chunk, for its usage.

    Lines end in CRLF, LF or CR; a blank line ends an event; an event's ``data:``
    lines are joined by newlines and parsed as JSON (``[DONE]`` and anything that is
    not JSON are passed over). An event over ``max_event_bytes`` is skipped
    (``skipped`` counts them): at most that much, plus a chunk, is held at once.
    :meth:`feed` never raises and never changes the chunk.
    """

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self.usage = Usage()
        self.skipped = 0
        self._max = max_event_bytes
        self._partial = bytearray()
        """The last line's bytes, when its end has not come yet (while skipping, only its
        last two: enough to know a line is open, and to join a CR to its LF)."""
        self._data: list[bytes] = []
        self._size = 0
        self._skipping = False

    def feed(self, chunk: bytes) -> None:
        """Read the next chunk of the stream."""
        if b"\n" not in chunk and b"\r" not in chunk:  # the line goes on: no copy, no split
            self._partial += chunk
            self._hold_partial()
            return
        lines = (bytes(self._partial) + chunk).splitlines(keepends=True)
        self._partial = bytearray()
        if lines and not lines[-1].endswith(b"\n"):  # unfinished, or a CR whose LF may follow
            self._partial += lines.pop()
        for line in lines:
            self._line(line.rstrip(b"\r\n"))
        self._hold_partial()

    def finish(self) -> Usage:
        """The stream has ended: read an event it left unfinished; the usage found."""
        if self._partial and not self._skipping:
            self._line(bytes(self._partial).rstrip(b"\r\n"))
        self._partial = bytearray()
        self._line(b"")
        return self.usage

    def _hold_partial(self) -> None:
        if not self._skipping and self._size + len(self._partial) > self._max:
            self._skip()
        if self._skipping and len(self._partial) > 2:
            del self._partial[:-2]

    def _skip(self) -> None:
        self._skipping = True
        self.skipped += 1
        self._data.clear()

    def _line(self, line: bytes) -> None:
        if not line:
            self._end_event()
            return
        if self._skipping:
            return
        self._size += len(line) + 1
        if self._size > self._max:
            self._skip()
        elif line.startswith(b"data:"):
            value = line[5:]
            self._data.append(value[1:] if value.startswith(b" ") else value)

    def _end_event(self) -> None:
        data, skipping = self._data, self._skipping
        self._data, self._size, self._skipping = [], 0, False
        if skipping or not data:
            return
        payload = data[0] if len(data) == 1 else b"\n".join(data)
        if payload == b"[DONE]":
            return
        found = decode_usage(payload)
        if found is not None:
            self.usage = self.usage.updated(found)
