"""Reading a model call's usage from its request and reply (plugins/sources/gateway/usage.py):
every way a server-sent-event stream may be cut into chunks and lines, and the bounds."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from observer_plugins.sources.gateway.usage import (
    MAX_EVENT_BYTES,
    MAX_REQUEST_BYTES,
    REQUEST_BYTES_HELD,
    HeldBytes,
    RequestModel,
    SseUsage,
    Usage,
    reply_usage,
    request_model,
)

USAGE = {"prompt_tokens": 12, "completion_tokens": 34, "total_tokens": 46}


def _stream(newline: str) -> bytes:
    chunk: dict[str, Any] = {"id": "c", "model": "m-0613", "object": "chat.completion.chunk"}
    events = [
        ": a comment\nevent: message\nid: 1",
        "data: " + json.dumps({**chunk, "choices": [{"delta": {"content": "a"}}], "usage": None}),
        # one JSON value over two data: lines (the SSE way to carry a newline)
        'data: {"model": "m-0613", "choices": [],\ndata: "usage": ' + json.dumps(USAGE) + "}",
        "data: not json",
        "data: " + json.dumps({**chunk, "choices": [{"delta": {"content": "b"}}], "usage": None}),
        "data: [DONE]",
    ]
    return "".join(event.replace("\n", newline) + newline * 2 for event in events).encode()


def _feed(stream: bytes, size: int, reader: SseUsage | None = None) -> SseUsage:
    reader = reader or SseUsage()
    for start in range(0, len(stream), size):
        reader.feed(stream[start : start + size])
    reader.finish()
    return reader


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"], ids=["lf", "crlf", "cr"])
@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 1 << 20])
def test_stream_usage_whatever_the_chunks_and_line_ends(newline: str, size: int) -> None:
    reader = _feed(_stream(newline), size)
    assert reader.usage == Usage("m-0613", 12, 34)
    assert reader.skipped == 0


@pytest.mark.parametrize("size", [1000, 1 << 20])
def test_an_event_over_64_kib_is_skipped_and_memory_stays_bounded(size: int) -> None:
    later = {"prompt_tokens": 1, "completion_tokens": 1}
    big = ("data: " + json.dumps({"pad": "x" * MAX_EVENT_BYTES, "usage": later}) + "\n\n").encode()
    reader = SseUsage()
    held = 0
    stream = _stream("\n") + big
    for start in range(0, len(stream), size):
        reader.feed(stream[start : start + size])
        held = max(held, len(reader._partial) + sum(map(len, reader._data)))
    assert reader.finish() == Usage("m-0613", 12, 34)
    assert reader.skipped == 1
    assert held <= MAX_EVENT_BYTES + size


def test_an_event_the_stream_left_unfinished_is_read() -> None:
    reader = SseUsage()
    reader.feed(b'data: {"model": "m", "usage": {"prompt_tokens": 1, "completion_tokens": 2}}')
    assert reader.finish() == Usage("m", 1, 2)


@pytest.mark.parametrize(
    ("reply", "usage"),
    [
        ({"model": "m", "usage": USAGE}, Usage("m", 12, 34)),
        ({"model": "m", "usage": {"input_tokens": 5, "output_tokens": 6}}, Usage("m", 5, 6)),
        ({"model": "llama3", "prompt_eval_count": 7, "eval_count": 8}, Usage("llama3", 7, 8)),
        ({"model": "m", "usage": None}, Usage("m")),
        ({"usage": {"prompt_tokens": True, "completion_tokens": -1}}, Usage()),
        ({"usage": {"prompt_tokens": 1.5, "completion_tokens": "2"}}, Usage()),
        ({"model": ["not", "a", "name"], "usage": "none"}, Usage()),
        ([{"model": "m"}], Usage()),
        ({"model": "x" * 300}, Usage("x" * 256)),
        ({"model": "naïve-\ud800-m"}, Usage("naïve-?-m")),
    ],
)
def test_reply_usage(reply: Any, usage: Usage) -> None:
    assert reply_usage(reply) == usage


@pytest.mark.parametrize(
    ("body", "content_type", "model"),
    [
        (b'{"model": "m", "messages": []}', "application/json", "m"),
        (b'{"model": "m"}', "application/json; charset=utf-8", "m"),
        (b'{"model": "m"}', "text/plain", None),
        (b'{"model": 7}', "application/json", None),
        (b"[1, 2]", "application/json", None),
        (b"{", "application/json", None),
        (b'{"model": "m", "pad": "' + b"x" * (1 << 20) + b'"}', "application/json", None),
    ],
    ids=["json", "charset", "not-json", "not-a-name", "not-an-object", "broken", "over-1-mib"],
)
def test_request_model(body: bytes, content_type: str, model: str | None) -> None:
    assert request_model(body, content_type) == model


async def _chunks(*chunks: bytes, error: Exception | None = None) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk
    if error is not None:
        raise error


async def _relay(body: RequestModel) -> bytes:
    return b"".join([chunk async for chunk in body])


@pytest.mark.anyio
async def test_request_model_read_from_a_streamed_body_unchanged() -> None:
    held = HeldBytes()
    parts = (b'{"messages": [{"role": "user", "content": "hi"}],', b' "model": "m-stream"}')
    body = RequestModel(_chunks(*parts), "application/json", held)
    assert await _relay(body) == b"".join(parts)
    assert held.held == len(b"".join(parts))  # kept until the call ends
    assert body.model() == "m-stream"
    assert held.held == 0
    assert body.model() == "m-stream"  # asked again: the same answer


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("chunks", "content_type", "limit", "error"),
    [
        ((b'{"model": "m"}',), "text/plain", REQUEST_BYTES_HELD, None),
        (
            (b'{"model": "m",', b' "pad": "' + b"x" * MAX_REQUEST_BYTES + b'"}'),
            "application/json",
            REQUEST_BYTES_HELD,
            None,
        ),
        ((b'{"model": "m"}',), "application/json", 5, None),  # the shared budget is spent
        ((b'{"model": "m"}',), "application/json", REQUEST_BYTES_HELD, ValueError("broke off")),
    ],
    ids=["not-json", "over-1-mib", "over-the-budget", "broke-off"],
)
async def test_request_model_not_read(
    chunks: tuple[bytes, ...], content_type: str, limit: int, error: Exception | None
) -> None:
    held = HeldBytes(limit)
    body = RequestModel(_chunks(*chunks, error=error), content_type, held)
    if error is None:
        assert await _relay(body) == b"".join(chunks)
    else:
        with pytest.raises(ValueError):
            await _relay(body)
    assert held.held <= limit
    assert body.model() is None
    assert held.held == 0
